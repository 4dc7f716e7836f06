//! End-to-end: what the sidecar's DNS proxy learns for toFQDNs rules, against an app that
//! tries to choose it (issue "FQDN learning, name checks and HTTP rules that an attacker cannot
//! talk around"). dnsmasq is the pod's configured resolver; `tests/fixtures/resolver.py` plays
//! the resolvers a test needs to answer as it says; `tests/fixtures/hostile_app.py` is the app.

use std::time::Duration;

use podwall_sandbox::Inject;

mod support;
use support::Running;
use support::hostile::{app, app_listening, last_line, resolver};
use support::sandbox::{Up, options, topology, wait_for};

/// The sandbox with the sidecars these tests want: the hosts outside greet a silent client (a
/// server-first protocol), which a toFQDNs-only address admits with the flag; what these
/// tests check is which addresses are learned.
fn up(dir: &std::path::Path, name: &str) -> Up {
    Up::with(
        dir,
        podwall_sandbox::Options {
            sidecar_args: vec!["--allow-unnamed-fqdn-connections".into()],
            ..options(name, Inject::Annotated)
        },
    )
}

/// A runner allowed `api.example.com` and `www.shop.example` (a CNAME chain to
/// `edge.cdn.example`) on port 80, the cluster DNS (dnsmasq, its configured
/// resolver), a resolver it may reach at L4 only (203.0.113.53, "allow DNS to anywhere"), one
/// a `rules.dns` rule selects (203.0.113.54), and a host no rule allows (198.51.100.66).
const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: runner, namespace: t, labels: {app: runner}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.75.0.1, hostIP: 192.168.75.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.75.0.53, hostIP: 192.168.75.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: runner-egress, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: runner}}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchName: www.shop.example}]
    toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '443', protocol: TCP}]}]
  - toCIDR: [203.0.113.53/32]
    toPorts: [{ports: [{port: '53', protocol: UDP}]}]
  - toCIDR: [203.0.113.54/32]
    toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: api}
spec: {address: 203.0.113.10, names: [api.example.com, other.example.com], ports: [80]}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: shop}
spec: {address: 203.0.113.20, names: [edge.cdn.example], aliases: [www.shop.example, shop.cdn.example], ports: [80]}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: evil}
spec: {address: 198.51.100.66, ports: [80]}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: reachable-resolver}
spec: {address: 203.0.113.53}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: selected-resolver}
spec: {address: 203.0.113.54}
"#;

const RUNNER: &str = "t/runner";
const EVIL: &str = "198.51.100.66";

fn external_ns(up: &Up, name: &str) -> String {
    up.sb()
        .record
        .externals
        .iter()
        .find(|e| e.host.name == name)
        .unwrap_or_else(|| panic!("no external host {name}"))
        .netns
        .clone()
}

/// The runner's DNS flow events for `name`, once one is there.
fn dns_events(up: &Up, name: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    wait_for(
        &format!("a DNS event for {name}"),
        Duration::from_secs(10),
        || {
            found = up
                .flows(RUNNER)
                .into_iter()
                .filter(|e| e["l7"]["dns"]["query"] == name)
                .collect();
            !found.is_empty()
        },
    );
    found
}

#[test]
fn a_resolver_reachable_only_at_l4_is_not_believed() {
    if !support::hostile::ready("a_resolver_reachable_only_at_l4_is_not_believed") {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "dl4");
    let ns = up.ns(RUNNER);
    // The app's own resolver, reachable under "allow DNS to anywhere", names any address.
    let (r, _out) = resolver(
        &external_ns(&up, "reachable-resolver"),
        &["203.0.113.53", &format!("api.example.com={EVIL}")],
    );
    let _r = Running(r);
    assert_eq!(
        app(&ns, "", &[], &["dns", "203.0.113.53", "api.example.com"]),
        "rcode 0",
        "reachable: the query is answered"
    );
    let e = dns_events(&up, "api.example.com");
    assert_eq!(e[0]["l7"]["dns"]["ips"], serde_json::json!([EVIL]));
    assert_eq!(
        e[0]["l7"]["dns"]["not_learned"], "resolver-not-trusted",
        "{e:?}"
    );
    assert!(e[0]["l7"]["dns"].get("learned").is_none(), "{e:?}");
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(r.starts_with("failed"), "not believed: {r}");
    // The pod's configured resolver is believed: the real address opens.
    assert_eq!(
        app(&ns, "", &[], &["dns", "10.75.0.53", "api.example.com"]),
        "rcode 0"
    );
    let r = app(&ns, "", &[], &["tcp", "203.0.113.10", "80"]);
    assert!(
        r.starts_with("connected podwall-sandbox external/api"),
        "{r}"
    );
}

#[test]
fn a_sidecar_that_starts_again_believes_only_the_resolvers_of_before_the_app_rewrote_resolv_conf() {
    if !support::hostile::ready(
        "a_sidecar_that_starts_again_believes_only_the_resolvers_of_before_the_app_rewrote_resolv_conf",
    ) {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "drestart");
    let ns = up.ns(RUNNER);
    let (r, _out) = resolver(
        &external_ns(&up, "reachable-resolver"),
        &["203.0.113.53", &format!("api.example.com={EVIL}")],
    );
    let _r = Running(r);
    // The app names its own resolver in the pod's resolv.conf, which the kubelet mounts
    // writable into every container (`ip netns exec` mounts this file over /etc/resolv.conf),
    // then gets the sidecar killed (out of memory, say): the kubelet starts it again.
    let conf = format!("/etc/netns/{ns}/resolv.conf");
    let app_wrote = "nameserver 203.0.113.53\nnameserver 10.75.0.53\n";
    std::fs::write(&conf, app_wrote).expect("rewrite resolv.conf");
    assert_eq!(
        app(&ns, "", &[], &["cat", "/etc/resolv.conf"]),
        app_wrote.trim_end(),
        "the app sees its own resolv.conf"
    );
    let i = up.index(RUNNER);
    let logs = up.sb().logs_dir();
    let _sidecar = Running(support::sandbox::restart_sidecar(
        &ns,
        &logs.join(format!("{i}-sidecar.flows.jsonl")),
        &logs.join(format!("{i}-sidecar.log")),
    ));
    // The restarted sidecar still believes only the pod's resolver of before.
    assert_eq!(
        app(&ns, "", &[], &["dns", "203.0.113.53", "api.example.com"]),
        "rcode 0",
        "reachable: the query is answered"
    );
    let e = dns_events(&up, "api.example.com");
    assert_eq!(
        e[0]["l7"]["dns"]["not_learned"], "resolver-not-trusted",
        "{e:?}"
    );
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(r.starts_with("failed"), "the app's resolver believed: {r}");
}

#[test]
fn an_address_of_a_name_before_the_cname_is_not_learned_for_the_name_it_points_to() {
    if !support::hostile::ready(
        "an_address_of_a_name_before_the_cname_is_not_learned_for_the_name_it_points_to",
    ) {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "dcname");
    let ns = up.ns(RUNNER);
    // A believed resolver that passes "CNAME and other data" through: x.evil.example is a
    // CNAME to api.example.com and has an address of its own, the attacker's.
    let (r, _out) = resolver(
        &external_ns(&up, "selected-resolver"),
        &[
            "203.0.113.54",
            &format!("x.evil.example={EVIL}"),
            "api.example.com=203.0.113.10",
            "--cname",
            "x.evil.example=api.example.com",
        ],
    );
    let _r = Running(r);
    assert_eq!(
        app(&ns, "", &[], &["dns", "203.0.113.54", "x.evil.example"]),
        "rcode 0"
    );
    let e = dns_events(&up, "x.evil.example");
    assert_eq!(
        e[0]["l7"]["dns"]["ips"],
        serde_json::json!([EVIL, "203.0.113.10"]),
        "{e:?}"
    );
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(
        r.starts_with("failed"),
        "x.evil.example's address opened as api.example.com's: {r}"
    );
    // What api.example.com's own resolution leads to is learned for it.
    let r = app(&ns, "", &[], &["tcp", "203.0.113.10", "80"]);
    assert!(
        r.starts_with("connected podwall-sandbox external/api"),
        "{r}"
    );
}

#[test]
fn an_address_in_the_answer_to_a_txt_question_is_not_learned() {
    if !support::hostile::ready("an_address_in_the_answer_to_a_txt_question_is_not_learned") {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "dtxt");
    let ns = up.ns(RUNNER);
    // A resolver a rules.dns rule selects is believed, but only for what was asked.
    let (r, _out) = resolver(
        &external_ns(&up, "selected-resolver"),
        &[
            "203.0.113.54",
            &format!("api.example.com={EVIL}"),
            "--a-in-every-answer",
        ],
    );
    let _r = Running(r);
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &["dns-type", "203.0.113.54", "api.example.com", "16"]
        ),
        "rcode 0"
    );
    let e = dns_events(&up, "api.example.com");
    assert_eq!(e[0]["l7"]["dns"]["qtype"], "TXT");
    assert!(e[0]["l7"]["dns"].get("learned").is_none(), "{e:?}");
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(r.starts_with("failed"), "an A record in a TXT answer: {r}");
    // The same resolver's answer to an A question is learned (it is believed).
    assert_eq!(
        app(&ns, "", &[], &["dns", "203.0.113.54", "api.example.com"]),
        "rcode 0"
    );
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(
        r.starts_with("connected podwall-sandbox external/evil"),
        "{r}"
    );
}

#[test]
fn a_forged_answer_under_the_apps_own_query_id_is_not_learned() {
    if !support::hostile::ready("a_forged_answer_under_the_apps_own_query_id_is_not_learned") {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "dforge");
    let ns = up.ns(RUNNER);
    // A believed resolver that takes its time: the forger's window.
    let (r, _out) = resolver(
        &external_ns(&up, "selected-resolver"),
        &[
            "203.0.113.54",
            "api.example.com=203.0.113.10",
            "--delay",
            "2",
        ],
    );
    let _r = Running(r);
    // The app asks with a query ID it chose (0x4242) ...
    let query = std::thread::spawn({
        let ns = ns.clone();
        move || app(&ns, "", &[], &["dns", "203.0.113.54", "api.example.com"])
    });
    // ... reads the sidecar's upstream port from /proc/net/udp (no capability needed) ...
    let port = app(&ns, "", &[], &["upstream-port", "203.0.113.54"]);
    let port = port.strip_prefix("port ").expect("port").to_string();
    assert_ne!(port, "None", "the sidecar's upstream socket");
    // ... and an accomplice outside (a pod without the sidecar keeps NET_RAW) forges the
    // resolver's answer to that port under the app's ID, before the resolver answers.
    let forger = up.sb().record.node.clone();
    assert_eq!(
        app(
            &forger,
            ",+net_raw",
            &[],
            &[
                "forge-answer",
                "203.0.113.54",
                "10.75.0.1",
                &port,
                "0x4242",
                "api.example.com",
                EVIL,
            ],
        ),
        "sent"
    );
    assert_eq!(query.join().expect("query"), "rcode 0");
    let e = dns_events(&up, "api.example.com");
    assert_eq!(
        e[0]["l7"]["dns"]["ips"],
        serde_json::json!(["203.0.113.10"]),
        "the resolver's answer, not the forged one: {e:?}"
    );
    let r = app(&ns, "", &[], &["tcp", EVIL, "80"]);
    assert!(r.starts_with("failed"), "the forged address: {r}");
    let r = app(&ns, "", &[], &["tcp", "203.0.113.10", "80"]);
    assert!(r.starts_with("connected"), "the real one: {r}");
}

#[test]
fn the_sidecar_asks_upstream_from_a_port_the_app_used_for_dns_before() {
    if !support::hostile::ready("the_sidecar_asks_upstream_from_a_port_the_app_used_for_dns_before")
    {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = up(dir.path(), "dport");
    let ns = up.ns(RUNNER);
    // Two ephemeral ports only, both first used by the app to ask the resolver: their
    // conntrack entries are the app's captured DNS flows. The sidecar's next upstream socket
    // gets one of them, and the resolver's answer arrives on that entry. (Apps' resolvers
    // pick random source ports, so in a busy pod this happens by chance, often.)
    let sysctl = std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "sysctl", "-qw"])
        .arg("net.ipv4.ip_local_port_range=40000 40001")
        .status()
        .expect("sysctl");
    assert!(sysctl.success());
    for port in ["40000", "40001"] {
        assert_eq!(
            app(
                &ns,
                "",
                &[],
                &["dns-from", "10.75.0.53", "api.example.com", port]
            ),
            "rcode 0",
            "from port {port}"
        );
    }
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &["dns-from", "10.75.0.53", "api.example.com", "40100"]
        ),
        "rcode 0",
        "the sidecar's own query on a port the app used is answered"
    );
    // The app's flows stay the DNS proxy's: the resolver cannot answer the app directly on
    // them, also after the sidecar used the port.
    let entries = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--dport",
            "53",
        ])
        .output()
        .expect("conntrack");
    let entries = String::from_utf8_lossy(&entries.stdout);
    assert!(
        entries
            .lines()
            .any(|l| l.contains("sport=40100 dport=53") && l.contains("mark=1337")),
        "the app's last query is still marked as captured: {entries}"
    );
}

#[test]
fn legitimate_traffic_still_works_cname_chains_keep_alive_and_pipelining() {
    if !support::hostile::ready(
        "legitimate_traffic_still_works_cname_chains_keep_alive_and_pipelining",
    ) {
        return;
    }
    let dir = topology(TOPOLOGY);
    // As injected: no flag, every request's Host is checked.
    let up = Up::new(dir.path(), "dlegit", Inject::Annotated);
    let ns = up.ns(RUNNER);
    // The allowed name is a CNAME, through another, to the CDN's name: the chain's address is
    // learned for the name asked.
    assert_eq!(
        app(&ns, "", &[], &["dns", "10.75.0.53", "www.shop.example"]),
        "rcode 0"
    );
    let e = dns_events(&up, "www.shop.example");
    assert_eq!(
        e[0]["l7"]["dns"]["ips"],
        serde_json::json!(["203.0.113.20"])
    );
    assert_eq!(e[0]["l7"]["dns"]["learned"], 1, "{e:?}");
    // curl as a real client, by name (resolv.conf names the cluster DNS).
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
        ])
        .args(["-w", "%{http_code}", "http://www.shop.example/"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // Keep-alive and pipelined requests for allowed names all pass; a pipelined request for
    // another name on the same address is refused on its own, the ones before it answered.
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "http-two",
                "203.0.113.20",
                "80",
                "www.shop.example",
                "www.shop.example"
            ],
        ),
        "200 200"
    );
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "http-pipelined",
                "203.0.113.20",
                "80",
                "www.shop.example",
                "www.shop.example",
                "www.shop.example"
            ],
        ),
        "200 200 200"
    );
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "http-pipelined",
                "203.0.113.20",
                "80",
                "www.shop.example",
                "edge.cdn.example",
                "www.shop.example"
            ],
        ),
        "200 403 200"
    );
}

#[test]
fn a_client_hello_opens_only_tls_and_never_with_its_name_encrypted() {
    if !support::hostile::ready("a_client_hello_opens_only_tls_and_never_with_its_name_encrypted") {
        return;
    }
    let dir = topology(TOPOLOGY);
    let up = Up::new(dir.path(), "dhello", Inject::Annotated);
    let ns = up.ns(RUNNER);
    let api_ns = external_ns(&up, "api");
    assert_eq!(
        app(&ns, "", &[], &["dns", "10.75.0.53", "api.example.com"]),
        "rcode 0"
    );
    // An allowed ClientHello with SMTP behind it, to a server that answers junk with an error
    // line and reads on: the server gets the ClientHello, never the SMTP.
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "text"]);
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &["tls-then", "203.0.113.10", "443", "api.example.com"]
        ),
        "reset"
    );
    assert_eq!(
        last_line(listener, out),
        "accepted",
        "the SMTP words arrived"
    );
    // The same words behind a ClientHello to a TLS server pass: it is TLS's business.
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "tls"]);
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &["tls-then", "203.0.113.10", "443", "api.example.com"]
        ),
        "open"
    );
    assert_eq!(last_line(listener, out), "smuggled");
    // An encrypted ClientHello names the allowed site outside and any site inside.
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "tls"]);
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "tls-hello",
                "203.0.113.10",
                "443",
                "api.example.com",
                "0",
                "ech"
            ]
        ),
        "reset"
    );
    let _ = last_line(listener, out);
    let flows = up.flows(RUNNER);
    for why in [
        "did not answer the ClientHello with TLS",
        "encrypted ClientHello",
    ] {
        assert!(
            flows.iter().any(|e| e["verdict"] == "DENIED"
                && e["reason"].as_str().is_some_and(|r| r.contains(why))),
            "a flow event says {why:?}"
        );
    }
}

/// The sandbox with `sidecar_args`, once the runner resolved api.example.com: its directory,
/// itself, the runner's namespace and the api host's.
fn api_resolved(name: &str, sidecar_args: Vec<String>) -> (tempfile::TempDir, Up, String, String) {
    let dir = topology(TOPOLOGY);
    let up = Up::with(
        dir.path(),
        podwall_sandbox::Options {
            sidecar_args,
            ..options(name, Inject::Annotated)
        },
    );
    let ns = up.ns(RUNNER);
    let api_ns = external_ns(&up, "api");
    assert_eq!(
        app(&ns, "", &[], &["dns", "10.75.0.53", "api.example.com"]),
        "rcode 0"
    );
    (dir, up, ns, api_ns)
}

#[test]
fn the_server_name_is_judged_whenever_the_client_speaks_and_on_every_request() {
    if !support::hostile::ready(
        "the_server_name_is_judged_whenever_the_client_speaks_and_on_every_request",
    ) {
        return;
    }
    // The sidecar as injected: no server-first protocols on toFQDNs-only addresses.
    let (_dir, up, ns, api_ns) = api_resolved("dname", vec![]);
    // TLS to a server that waits for the client: the ClientHello is judged by its SNI however
    // long the client stayed silent first.
    for (sni, delay, expected) in [
        ("other.example.com", "1.2", "reset"),
        ("api.example.com", "1.2", "open"),
        ("other.example.com", "0", "reset"),
    ] {
        let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "tls"]);
        let r = app(
            &ns,
            "",
            &[],
            &["tls-hello", "203.0.113.10", "443", sni, delay],
        );
        assert_eq!(r, expected, "SNI {sni} after {delay} s");
        let _ = last_line(listener, out);
    }
    // HTTP: every request's Host, also after empty lines and on a kept-alive connection.
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "http-raw",
                "203.0.113.10",
                "80",
                "\\r\\nGET / HTTP/1.1\\r\\nHost: other.example.com\\r\\n\\r\\n",
            ],
        ),
        "403"
    );
    assert_eq!(
        app(
            &ns,
            "",
            &[],
            &[
                "http-two",
                "203.0.113.10",
                "80",
                "api.example.com",
                "other.example.com"
            ],
        ),
        "200 403"
    );
    // A protocol where the server speaks first (the sandbox's server greets a silent
    // client): no name to check, refused.
    let r = app(&ns, "", &[], &["tcp", "203.0.113.10", "80"]);
    assert!(r.starts_with("failed"), "{r}");
    denial_with_reason(&up, "spoke first");
    // Two ClientHellos, two requests and the server-first connection.
    assert_eq!(
        metric(&ns, "podwall_fqdn_server_name_denied_total"),
        Some(5.0)
    );
}

/// Waits for the runner's denial whose reason says `why`.
fn denial_with_reason(up: &Up, why: &str) -> serde_json::Value {
    let mut found = None;
    wait_for(
        &format!("a denial because {why}"),
        Duration::from_secs(10),
        || {
            found = up.flows(RUNNER).into_iter().find(|e| {
                e["verdict"] == "DENIED" && e["reason"].as_str().is_some_and(|r| r.contains(why))
            });
            found.is_some()
        },
    );
    found.expect("found")
}

#[test]
fn what_names_no_server_is_refused_and_without_the_check_any_name_passes() {
    if !support::hostile::ready(
        "what_names_no_server_is_refused_and_without_the_check_any_name_passes",
    ) {
        return;
    }
    let (_dir, up, ns, api_ns) = api_resolved("noname", vec![]);
    // A ClientHello without SNI: nothing to check, refused.
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "tls"]);
    let r = app(&ns, "", &[], &["tls-hello", "203.0.113.10", "443", "", "0"]);
    assert_eq!(r, "reset", "TLS without SNI");
    let _ = last_line(listener, out);
    denial_with_reason(&up, "TLS without SNI");
    // An HTTP/1.0 request without Host: 403, the server never asked.
    let r = app(
        &ns,
        "",
        &[],
        &[
            "http-raw",
            "203.0.113.10",
            "80",
            "GET / HTTP/1.0\\r\\n\\r\\n",
        ],
    );
    assert_eq!(r, "403", "HTTP without Host");
    // A head that never completes: refused once it had its time (5 s), or at once when the
    // client ends its side.
    // (A server listens: the sidecar connects to it while it waits for the client.)
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5"]);
    let r = app(
        &ns,
        "",
        &[],
        &["tls-partial", "203.0.113.10", "443", "close"],
    );
    assert!(
        r.starts_with("reset"),
        "a half ClientHello, then the end: {r}"
    );
    let _ = last_line(listener, out);
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5"]);
    let r = app(
        &ns,
        "",
        &[],
        &["tls-partial", "203.0.113.10", "443", "stall"],
    );
    let _ = last_line(listener, out);
    let waited: f64 = r
        .strip_prefix("reset after ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a half ClientHello, then silence: {r}"));
    assert!((4.0..9.0).contains(&waited), "refused after {waited} s");
    denial_with_reason(&up, "did not arrive in full");
    drop(up);

    // With the check off, the address's other name passes, over TLS and HTTP.
    let (_dir, _up, ns, api_ns) = api_resolved("nocheck", vec!["--check-server-name=false".into()]);
    let (listener, out) = app_listening(&api_ns, "", &["listen-tcp", "443", "5", "tls"]);
    let r = app(
        &ns,
        "",
        &[],
        &["tls-hello", "203.0.113.10", "443", "other.example.com", "0"],
    );
    assert_eq!(r, "open", "another SNI without the check");
    assert_eq!(last_line(listener, out), "accepted");
    let r = app(
        &ns,
        "",
        &[],
        &[
            "http-raw",
            "203.0.113.10",
            "80",
            "GET / HTTP/1.1\\r\\nHost: other.example.com\\r\\n\\r\\n",
        ],
    );
    assert_eq!(r, "200", "another Host without the check");
}

/// A counter from the pod's own sidecar (`/metrics` on the admin port, read from the pod).
fn metric(ns: &str, name: &str) -> Option<f64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "-m", "3"])
        .arg("http://127.0.0.1:15020/metrics")
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}
