//! Feedback on the policy objects themselves, written by the leading replica
//! ([`crate::leader`]):
//!
//! - a PodwallPolicy gets `status`: the condition `Valid` (False with the field and why: such a
//!   policy isolates the pods it selects and allows nothing, the safe side), the condition
//!   `Enforced` (False while selected pods run without the sidecar), `selectedPods` and
//!   `enforcingPods` (`kubectl get pwp` shows them as columns);
//! - a CiliumNetworkPolicy, whose status is Cilium's, gets a Warning Event instead (once per
//!   change of what is wrong), and every replica counts invalid policies by kind in
//!   `podwall_control_invalid_policies`.
//!
//! Statuses are computed from the current state and written only when they differ from what
//! this leader last wrote, so a new leader writes each once and then only changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use podwall_policy::feed::ObjectKey;
use podwall_policy::{Diagnostic, Loader, Origin, Severity};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::metrics::{KindLabel, ServerMetrics};
use crate::views::Views;

/// Every policy kind `podwall_control_invalid_policies` counts: the enforced ones, and the
/// network-policy-api v0.1 kinds, which are never enforced (each one counts as invalid).
pub const POLICY_KINDS: [&str; 7] = [
    "NetworkPolicy",
    "PodwallPolicy",
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "ClusterNetworkPolicy",
    "AdminNetworkPolicy",
    "BaselineAdminNetworkPolicy",
];

/// The errors that make a policy object invalid, found by reading it alone.
pub fn errors_of(object: &Value) -> Vec<Diagnostic> {
    let mut loader = Loader::new();
    loader.add_object(
        Origin {
            source: "api-server".into(),
            line: 0,
            item: None,
        },
        object.clone(),
    );
    let (_, report) = loader.finish();
    report
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

/// One condition, keeping its transition time while its status stays.
fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: &Value,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|p| p["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or_else(|| json!(now));
    json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": since, "observedGeneration": generation})
}

/// A PodwallPolicy's status: from its errors, how many pods it selects and how many of those
/// run the sidecar. `previous` (what was last written) keeps transition times.
pub fn podwall_policy_status(
    object: &Value,
    errors: &[Diagnostic],
    selected: usize,
    enforcing: usize,
    previous: Option<&Value>,
    now: &str,
) -> Value {
    let generation = object["metadata"]["generation"].clone();
    let valid = match errors.first() {
        None => condition(
            "Valid",
            true,
            "Valid",
            "the policy is read as written".into(),
            &generation,
            previous,
            now,
        ),
        Some(first) => {
            let field = first.field.as_deref().unwrap_or("spec");
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            condition(
                "Valid",
                false,
                "InvalidField",
                format!(
                    "{field}: {}{more}; the pods it selects are isolated in the directions it has rules for and it allows nothing",
                    first.message
                ),
                &generation,
                previous,
                now,
            )
        }
    };
    let enforced = if selected == 0 {
        condition(
            "Enforced",
            true,
            "NoPodsSelected",
            "it selects no pod".into(),
            &generation,
            previous,
            now,
        )
    } else if enforcing == selected {
        condition(
            "Enforced",
            true,
            "AllPodsProtected",
            format!("all {selected} selected pods run the podwall sidecar"),
            &generation,
            previous,
            now,
        )
    } else {
        condition(
            "Enforced",
            false,
            "PodsWithoutSidecar",
            format!(
                "{} of {selected} selected pods run without the podwall sidecar: it is NOT enforced for them",
                selected - enforcing
            ),
            &generation,
            previous,
            now,
        )
    };
    json!({"observedGeneration": generation, "selectedPods": selected,
        "enforcingPods": enforcing, "conditions": [valid, enforced]})
}

/// A Warning Event on an invalid CiliumNetworkPolicy (its status is Cilium's to write).
pub fn invalid_policy_event(object: &Value, errors: &[Diagnostic], now: &str) -> Event {
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or_default().to_string();
    let name = meta["name"].as_str().unwrap_or_default().to_string();
    let message = errors
        .iter()
        .map(|d| format!("{}: {}", d.field.as_deref().unwrap_or("spec"), d.message))
        .collect::<Vec<_>>()
        .join("; ");
    let time = now.parse().ok().map(Time);
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.podwall-")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: object["apiVersion"].as_str().map(str::to_string),
            kind: object["kind"].as_str().map(str::to_string),
            name: Some(name),
            namespace: Some(namespace),
            uid: meta["uid"].as_str().map(str::to_string),
            ..ObjectReference::default()
        },
        reason: Some("InvalidPolicy".into()),
        type_: Some("Warning".into()),
        message: Some(format!(
            "podwall: {message}; the pods it selects are isolated in the directions it has rules for and it allows nothing"
        )),
        source: Some(EventSource {
            component: Some("podwall-control".into()),
            ..EventSource::default()
        }),
        reporting_component: Some("podwall.io/control-plane".into()),
        count: Some(1),
        first_timestamp: time.clone(),
        last_timestamp: time,
        ..Event::default()
    }
}

/// What the leader wrote, so it writes only changes: by object and uid (a policy deleted and
/// created again is another object, whose status and Event are written anew).
#[derive(Default)]
struct Written {
    statuses: HashMap<(ObjectKey, String), Value>,
    events: HashMap<(ObjectKey, String), String>,
}

fn podwall_policy_resource() -> ApiResource {
    ApiResource {
        group: "podwall.io".into(),
        version: "v1alpha1".into(),
        api_version: "podwall.io/v1alpha1".into(),
        kind: "PodwallPolicy".into(),
        plural: "podwallpolicies".into(),
    }
}

/// How often the statuses are worked out again without a change (enforcing pods move with
/// pods and their sidecars).
pub const RECHECK: Duration = Duration::from_secs(30);

/// Runs until the process ends: every replica counts invalid policies; the leader writes. The
/// state is looked at on every change and every `recheck`.
pub async fn run(
    client: kube::Client,
    views: Arc<Views>,
    metrics: Arc<ServerMetrics>,
    mut leader: watch::Receiver<bool>,
    recheck: Duration,
) {
    let mut changes = views.store().subscribe();
    let mut written = Written::default();
    loop {
        if views.store().loaded()
            && let Some(index) = views.index().await
        {
            // No election any more (its task gone): not leading, whatever it said last.
            let leading = *leader.borrow_and_update() && leader.has_changed().is_ok();
            if !leading {
                written = Written::default();
            }
            let reach: HashMap<&ObjectKey, (usize, usize)> = index
                .policy_reach()
                .into_iter()
                .map(|(k, s, e)| (k, (s, e)))
                .collect();
            let mut invalid: HashMap<&str, i64> = HashMap::new();
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let mut seen = std::collections::HashSet::new();
            for (key, object) in index.objects.iter() {
                let kind = key.kind.as_str();
                if POLICY_KINDS.contains(&kind)
                    && !matches!(kind, "PodwallPolicy" | "CiliumNetworkPolicy")
                {
                    // Counted (the log says why, each time the state is read); no status or
                    // Event of podwall's on these.
                    if !errors_of(object).is_empty() {
                        *invalid.entry(kind).or_default() += 1;
                    }
                    continue;
                }
                if !matches!(kind, "PodwallPolicy" | "CiliumNetworkPolicy") {
                    continue;
                }
                let id = (
                    key.clone(),
                    object["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                seen.insert(id.clone());
                let errors = errors_of(object);
                if !errors.is_empty() {
                    *invalid.entry(kind).or_default() += 1;
                }
                if !leading {
                    continue;
                }
                if kind == "PodwallPolicy" {
                    let (selected, enforcing) = reach.get(key).copied().unwrap_or_default();
                    let previous = written.statuses.get(&id);
                    let status =
                        podwall_policy_status(object, &errors, selected, enforcing, previous, &now);
                    if previous == Some(&status) {
                        continue;
                    }
                    let api: Api<DynamicObject> = Api::namespaced_with(
                        client.clone(),
                        &key.namespace,
                        &podwall_policy_resource(),
                    );
                    match api
                        .patch_status(
                            &key.name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": status})),
                        )
                        .await
                    {
                        Ok(_) => {
                            written.statuses.insert(id, status);
                        }
                        Err(e) => {
                            tracing::warn!(policy = %format!("{}/{}", key.namespace, key.name), error = %e, "cannot write PodwallPolicy status");
                        }
                    }
                } else if !errors.is_empty() {
                    let event = invalid_policy_event(object, &errors, &now);
                    let message = event.message.clone().unwrap_or_default();
                    if written.events.get(&id) == Some(&message) {
                        continue;
                    }
                    let api: Api<Event> = Api::namespaced(client.clone(), &key.namespace);
                    match api.create(&PostParams::default(), &event).await {
                        Ok(_) => {
                            written.events.insert(id, message);
                        }
                        Err(e) => {
                            tracing::warn!(policy = %format!("{}/{}", key.namespace, key.name), error = %e, "cannot record an Event on an invalid CiliumNetworkPolicy");
                        }
                    }
                } else {
                    written.events.remove(&id);
                }
            }
            // Objects gone (or replaced by another uid) are forgotten.
            written.statuses.retain(|k, _| seen.contains(k));
            written.events.retain(|k, _| seen.contains(k));
            for kind in POLICY_KINDS {
                metrics
                    .invalid_policies
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .set(invalid.get(kind).copied().unwrap_or(0));
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Let a burst of changes settle.
                tokio::time::sleep(Duration::from_secs(1)).await;
                changes.borrow_and_update();
            }
            // No election (the sender gone): never leading, never woken by it.
            _ = async {
                if leader.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {}
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pwp(spec: Value) -> Value {
        json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
            "metadata": {"name": "api", "namespace": "prod", "generation": 3, "uid": "u-1"},
            "spec": spec})
    }

    #[test]
    fn a_valid_policy_says_how_many_pods_it_selects_and_enforce_it() {
        let p = pwp(
            json!({"endpointSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"fromEndpoints": [{}]}]}),
        );
        let errors = errors_of(&p);
        assert!(errors.is_empty(), "{errors:?}");
        let status = podwall_policy_status(&p, &errors, 3, 2, None, "2026-12-05T10:00:00Z");
        assert_eq!(status["selectedPods"], 3);
        assert_eq!(status["enforcingPods"], 2);
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["conditions"][0]["type"], "Valid");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(status["conditions"][1]["status"], "False");
        assert_eq!(status["conditions"][1]["reason"], "PodsWithoutSidecar");
        assert!(
            status["conditions"][1]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("1 of 3")),
            "{status}"
        );
        // Later, all pods protected: Enforced moves and takes a new time; Valid keeps its own.
        let later = podwall_policy_status(&p, &errors, 3, 3, Some(&status), "2026-12-05T11:00:00Z");
        assert_eq!(
            later["conditions"][0]["lastTransitionTime"],
            "2026-12-05T10:00:00Z"
        );
        assert_eq!(
            later["conditions"][1]["lastTransitionTime"],
            "2026-12-05T11:00:00Z"
        );
        assert_eq!(later["conditions"][1]["status"], "True");
    }

    #[test]
    fn an_invalid_policy_names_the_field_and_says_it_allows_nothing() {
        let p = pwp(
            json!({"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
            "rules": {"http": [{"path": "/(unclosed"}]}}]}]}),
        );
        let errors = errors_of(&p);
        assert!(!errors.is_empty());
        let status = podwall_policy_status(&p, &errors, 1, 1, None, "2026-12-05T10:00:00Z");
        let valid = &status["conditions"][0];
        assert_eq!(valid["status"], "False");
        assert_eq!(valid["reason"], "InvalidField");
        let message = valid["message"].as_str().expect("message");
        assert!(message.contains("http[0].path"), "{message}");
        assert!(message.contains("allows nothing"), "{message}");

        let mut cnp = p.clone();
        cnp["apiVersion"] = json!("cilium.io/v2");
        cnp["kind"] = json!("CiliumNetworkPolicy");
        let errors = errors_of(&cnp);
        let event = invalid_policy_event(&cnp, &errors, "2026-12-05T10:00:00Z");
        assert_eq!(
            event.involved_object.kind.as_deref(),
            Some("CiliumNetworkPolicy")
        );
        assert_eq!(event.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert!(
            event
                .message
                .as_deref()
                .is_some_and(|m| m.contains("http[0].path")),
            "{event:?}"
        );
    }
}
