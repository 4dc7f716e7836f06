//! Validation as the API server does it: every invalid field is reported with the file, the
//! object and the field path; the invalid policy is left out and everything else still loads.

mod common;

use common::{CLUSTER, load, tcp};
use podwall_policy::{Diagnostic, Engine, Severity};

fn policy(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bad, namespace: production}}\nspec:\n{}\n",
        spec.lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The errors for one policy spec; asserts the policy was left out.
fn errors(spec: &str) -> Vec<Diagnostic> {
    let (state, report) = load(&[&policy(spec)]);
    assert!(
        state.policies.is_empty(),
        "an invalid policy must be left out"
    );
    let errs: Vec<Diagnostic> = report
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert!(!errs.is_empty(), "expected errors for {spec}");
    for e in &errs {
        assert_eq!(e.object.as_deref(), Some("NetworkPolicy production/bad"));
        assert_eq!(
            e.origin.as_ref().map(|o| o.source.as_str()),
            Some("test-0.yaml")
        );
    }
    errs
}

fn assert_error(spec: &str, field: &str, message_part: &str) {
    let errs = errors(spec);
    assert!(
        errs.iter()
            .any(|e| e.field.as_deref() == Some(field) && e.message.contains(message_part)),
        "expected {field}: ...{message_part}... in {errs:#?}"
    );
}

#[test]
fn a_cidr_that_does_not_parse_is_rejected() {
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/33}}]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "valid CIDR",
    );
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.1}}]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "valid CIDR",
    );
}

#[test]
fn an_except_outside_its_cidr_is_rejected() {
    assert_error(
        "egress:\n- to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]",
        "spec.egress[0].to[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn an_except_equal_to_its_cidr_is_not_a_strict_subset() {
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn an_except_of_the_other_family_is_rejected() {
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "strict subset",
    );
}

#[test]
fn an_empty_cidr_is_required() {
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: ''}}]",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "Required value",
    );
}

#[test]
fn end_port_below_port_is_rejected() {
    assert_error(
        "ingress:\n- ports: [{port: 8080, endPort: 80}]",
        "spec.ingress[0].ports[0].endPort",
        "greater than or equal to `port`",
    );
}

#[test]
fn end_port_with_a_named_port_is_rejected() {
    assert_error(
        "ingress:\n- ports: [{port: http, endPort: 90}]",
        "spec.ingress[0].ports[0].endPort",
        "non-numeric",
    );
}

#[test]
fn end_port_without_port_is_rejected() {
    assert_error(
        "ingress:\n- ports: [{endPort: 90}]",
        "spec.ingress[0].ports[0].endPort",
        "not specified",
    );
}

#[test]
fn port_numbers_outside_1_to_65535_are_rejected() {
    assert_error(
        "ingress:\n- ports: [{port: 0}]",
        "spec.ingress[0].ports[0].port",
        "between 1 and 65535",
    );
    assert_error(
        "egress:\n- ports: [{port: 70000}]",
        "spec.egress[0].ports[0].port",
        "between 1 and 65535",
    );
    assert_error(
        "ingress:\n- ports: [{port: 80, endPort: 65536}]",
        "spec.ingress[0].ports[0].endPort",
        "between 1 and 65535",
    );
}

#[test]
fn port_names_must_be_iana_service_names() {
    // A quoted number is a string, hence a name, and names need a letter: the API server refuses it.
    assert_error(
        "ingress:\n- ports: [{port: '8080'}]",
        "spec.ingress[0].ports[0].port",
        "at least one letter",
    );
    assert_error(
        "ingress:\n- ports: [{port: HTTP}]",
        "spec.ingress[0].ports[0].port",
        "alpha-numeric",
    );
}

#[test]
fn unknown_protocols_are_rejected_and_protocol_names_are_case_sensitive() {
    assert_error(
        "ingress:\n- ports: [{port: 80, protocol: HTTP}]",
        "spec.ingress[0].ports[0].protocol",
        "Unsupported value: \"HTTP\"",
    );
    assert_error(
        "ingress:\n- ports: [{port: 80, protocol: tcp}]",
        "spec.ingress[0].ports[0].protocol",
        "Unsupported value: \"tcp\"",
    );
}

#[test]
fn unknown_selector_operators_are_rejected() {
    assert_error(
        "podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
        "spec.podSelector.matchExpressions[0].operator",
        "Unsupported value: \"Equals\"",
    );
}

#[test]
fn in_and_not_in_need_values_exists_must_have_none() {
    assert_error(
        "ingress:\n- from: [{podSelector: {matchExpressions: [{key: app, operator: In}]}}]",
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        "must be specified",
    );
    assert_error(
        "podSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}",
        "spec.podSelector.matchExpressions[0].values",
        "may not be specified",
    );
}

#[test]
fn malformed_label_keys_and_values_are_rejected() {
    assert_error(
        "podSelector: {matchLabels: {'-app': x}}",
        "spec.podSelector.matchLabels",
        "-app",
    );
    assert_error(
        "podSelector: {matchLabels: {app: 'has space'}}",
        "spec.podSelector.matchLabels",
        "has space",
    );
}

#[test]
fn a_peer_must_name_something() {
    assert_error(
        "ingress:\n- from: [{}]",
        "spec.ingress[0].from[0]",
        "must specify a peer",
    );
}

#[test]
fn ip_block_cannot_be_combined_with_a_selector() {
    assert_error(
        "ingress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
        "spec.ingress[0].from[0]",
        "may not specify both ipBlock and another peer",
    );
}

#[test]
fn policy_types_must_be_ingress_or_egress_at_most_twice() {
    assert_error(
        "policyTypes: [ingress]",
        "spec.policyTypes[0]",
        "Unsupported value: \"ingress\"",
    );
    assert_error(
        "policyTypes: [Ingress, Egress, Ingress]",
        "spec.policyTypes",
        "more than two",
    );
}

#[test]
fn every_error_in_a_policy_is_reported_at_once() {
    let errs =
        errors("ingress:\n- from: [{ipBlock: {cidr: nope}}]\n  ports: [{port: 0, protocol: ICMP}]");
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn wrong_types_are_reported_with_their_field_path() {
    assert_error(
        "ingress:\n- ports: [{port: [80]}]",
        "spec.ingress[0].ports[0].port",
        "left out",
    );
}

#[test]
fn a_missing_name_is_required() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: production}\nspec: {}\n";
    let (state, report) = load(&[text]);
    assert!(state.policies.is_empty());
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.field.as_deref() == Some("metadata.name")),
        "{:#?}",
        report.diagnostics
    );
}

#[test]
fn an_invalid_policy_is_left_out_and_the_rest_still_loads() {
    let good = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: production}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]\n";
    let bad = format!(
        "---\n{}",
        policy("podSelector: {}\ningress:\n- ports: [{port: 0}]")
    );
    let (state, report) = load(&[CLUSTER, &(bad + good)]);
    assert_eq!(state.policies.len(), 1);
    assert_eq!(state.policies[0].name.name, "db");
    assert!(report.has_errors());
    let origin = report.diagnostics[0].origin.as_ref().expect("origin");
    assert_eq!((origin.source.as_str(), origin.line), ("test-1.yaml", 1));
    let e = Engine::compile(state);
    assert!(
        !tcp(&e, "production/api", "production/db", 5432),
        "the valid policy is enforced"
    );
    assert!(
        tcp(&e, "production/api", "production/frontend", 80),
        "the invalid one is not"
    );
}

#[test]
fn an_old_api_version_is_reported_not_guessed() {
    let text = "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old, namespace: production}\nspec: {}\n";
    let (state, report) = load(&[text]);
    assert!(state.policies.is_empty());
    assert_eq!(report.diagnostics[0].field.as_deref(), Some("apiVersion"));
}

#[test]
fn messages_name_file_object_and_the_field_with_its_line() {
    let errs = errors("ingress:\n- ports: [{port: 80, endPort: 79}]");
    assert_eq!(
        errs[0].to_string(),
        "error[invalid-policy]: test-0.yaml:6: NetworkPolicy production/bad: spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`; the policy is left out"
    );
}

#[test]
fn a_policy_name_longer_than_a_dns_label_loads_as_the_api_server_accepts_it() {
    // The upstream e2e suite names NetworkPolicies with more than 63 characters.
    let name = "allow-ingress-access-from-updated-namespace-and-updated-pod-to-the-server";
    assert!(name.len() > 63);
    let text = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: production}}\nspec: {{podSelector: {{}}}}\n"
    );
    let (state, report) = load(&[CLUSTER, &text]);
    assert!(!report.has_errors(), "{:#?}", report.diagnostics);
    assert_eq!(state.policies.len(), 1);
    let too_long = text.replace(name, &"a".repeat(254));
    let (state, report) = load(&[CLUSTER, &too_long]);
    assert!(report.has_errors());
    assert!(state.policies.is_empty());
}
