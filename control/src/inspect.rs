//! `podwall status` and `podwall check`: what an operator's credentials can read of podwall's
//! state, joined into one picture, and judged line by line (PASS / WARN / FAIL, each with what
//! to do).
//!
//! [`gather`] reads the cluster (the control plane's Deployment, its replicas' status
//! ConfigMaps, the webhook configuration, the CRD, namespaces and pods for mesh conflicts, the
//! API server's version and groups); [`summarize`] and [`checks`] are pure, so every verdict is
//! tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Serialize;
use serde_json::Value;

use crate::replica::{PUBLISH_EVERY, ReplicaStatus, STATUS_KEY, STATUS_LABEL};

/// Everything read from the cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The control plane's namespace.
    pub namespace: String,
    /// The API server's `major.minor` and git version.
    pub server_version: Option<(u32, u32, String)>,
    /// API groups served (`cert-manager.io`, ...).
    pub api_groups: BTreeSet<String>,
    /// The control plane's Deployment(s).
    pub deployments: Vec<Value>,
    /// The replicas' reports.
    pub replicas: Vec<ReplicaStatus>,
    /// Status ConfigMaps that did not parse (name, why).
    pub unreadable_reports: Vec<(String, String)>,
    /// podwall's MutatingWebhookConfiguration(s).
    pub webhooks: Vec<Value>,
    /// The PodwallPolicy CRD.
    pub crd: Option<Value>,
    /// Namespaces (for labels).
    pub namespaces: Vec<Value>,
    /// Pods that ask for podwall's sidecar (annotation) or run it.
    pub podwall_pods: Vec<Value>,
    /// What could not be read (the operator's RBAC, an absent kind): what, why.
    pub unread: Vec<(String, String)>,
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

async fn list(
    client: &kube::Client,
    r: &ApiResource,
    namespace: Option<&str>,
    labels: Option<&str>,
    unread: &mut Vec<(String, String)>,
) -> Vec<Value> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, r),
        None => Api::all_with(client.clone(), r),
    };
    let mut params = ListParams::default();
    if let Some(l) = labels {
        params = params.labels(l);
    }
    match api.list(&params).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).ok())
            .collect(),
        Err(e) => {
            unread.push((
                format!("{} {}", r.plural, namespace.unwrap_or("(all)")),
                e.to_string(),
            ));
            Vec::new()
        }
    }
}

/// Reads what `podwall status` and `podwall check` judge.
pub async fn gather(client: &kube::Client, namespace: &str) -> Result<Observed, kube::Error> {
    let mut o = Observed {
        namespace: namespace.to_string(),
        ..Observed::default()
    };
    // The one read that must work: without it nothing else will.
    let info = client.apiserver_version().await?;
    let minor = info.minor.trim_end_matches('+').parse().unwrap_or(0);
    o.server_version = Some((info.major.parse().unwrap_or(0), minor, info.git_version));
    match client.list_api_groups().await {
        Ok(groups) => o.api_groups = groups.groups.into_iter().map(|g| g.name).collect(),
        Err(e) => o.unread.push(("API groups".into(), e.to_string())),
    }
    let podwall = Some("app.kubernetes.io/name=podwall");
    o.deployments = list(
        client,
        &resource("apps", "v1", "Deployment", "deployments"),
        Some(namespace),
        podwall,
        &mut o.unread,
    )
    .await;
    for cm in list(
        client,
        &resource("", "v1", "ConfigMap", "configmaps"),
        Some(namespace),
        Some(&format!("{STATUS_LABEL}=replica")),
        &mut o.unread,
    )
    .await
    {
        let name = cm["metadata"]["name"].as_str().unwrap_or("?").to_string();
        match cm["data"][STATUS_KEY]
            .as_str()
            .map(serde_json::from_str::<ReplicaStatus>)
        {
            Some(Ok(r)) => o.replicas.push(r),
            Some(Err(e)) => o.unreadable_reports.push((name, e.to_string())),
            None => o
                .unreadable_reports
                .push((name, format!("no {STATUS_KEY}"))),
        }
    }
    o.webhooks = list(
        client,
        &resource(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
        ),
        None,
        podwall,
        &mut o.unread,
    )
    .await;
    o.crd = list(
        client,
        &resource(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
        ),
        None,
        None,
        &mut o.unread,
    )
    .await
    .into_iter()
    .find(|c| c["metadata"]["name"] == "podwallpolicies.podwall.io");
    o.namespaces = list(
        client,
        &resource("", "v1", "Namespace", "namespaces"),
        None,
        None,
        &mut o.unread,
    )
    .await;
    o.podwall_pods = list(
        client,
        &resource("", "v1", "Pod", "pods"),
        None,
        None,
        &mut o.unread,
    )
    .await
    .into_iter()
    .filter(|p| {
        let a = &p["metadata"]["annotations"];
        a[crate::inject::INJECT_ANNOTATION].is_string()
            || a[crate::inject::STATUS_ANNOTATION].is_string()
    })
    .collect();
    Ok(o)
}

/// One replica, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaSummary {
    /// Its pod.
    pub name: String,
    /// It serves feeds.
    pub ready: bool,
    /// It writes policy status.
    pub leader: bool,
    /// Its state version.
    pub version: u64,
    /// Sidecars connected to it.
    pub sidecars: usize,
    /// Seconds since its report (negative: clock skew).
    pub age_seconds: i64,
    /// Its report is older than three publishing periods: it may be gone or stuck.
    pub stale: bool,
    /// Watch failures by kind, where there were any.
    pub watch_failures: BTreeMap<String, u64>,
}

/// One namespace's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceSummary {
    /// The namespace.
    pub namespace: String,
    /// Pods a policy selects.
    pub selected: usize,
    /// Pods running the sidecar.
    pub injected: usize,
    /// Sidecars connected to a replica.
    pub connected: usize,
    /// Selected pods without the sidecar (their policies are not enforced).
    pub unprotected: usize,
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodSummary {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
    /// A policy selects it.
    pub selected: bool,
    /// It runs the sidecar.
    pub injected: bool,
    /// Its sidecar's feed is open.
    pub connected: bool,
    /// The state version its sidecar holds.
    pub version: Option<u64>,
    /// The replica it is connected to.
    pub replica: Option<String>,
}

/// The joined picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The control plane's namespace.
    pub namespace: String,
    /// Ready and desired replicas of the control plane's Deployment, if found.
    pub deployment: Option<(String, i64, i64)>,
    /// Each replica's report.
    pub replicas: Vec<ReplicaSummary>,
    /// The webhook configuration's name, entries, and whether every entry has a CA bundle.
    pub webhook: Option<(String, usize, bool)>,
    /// When the webhook's certificate expires (from the freshest report).
    pub webhook_certificate_expires: Option<String>,
    /// The state version of the freshest ready replica.
    pub version: Option<u64>,
    /// Per namespace.
    pub namespaces: Vec<NamespaceSummary>,
    /// Per pod (selected or injected).
    pub pods: Vec<PodSummary>,
    /// What the reports leave unknown: no fresh ready replica, a stale replica (its sidecars
    /// cannot be told from disconnected ones), or reports too big for their lists.
    pub unknown: Vec<String>,
}

fn parse_time(t: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(t).ok()
}

/// Joins the replicas' reports (`now` for their age).
pub fn summarize(o: &Observed, now: SystemTime) -> Status {
    let stale_after = |r: &ReplicaStatus| -> i64 {
        let every = match r.interval_seconds {
            0 => PUBLISH_EVERY.as_secs(),
            s => s,
        };
        3 * every as i64
    };
    let age = |r: &ReplicaStatus| -> i64 {
        match parse_time(&r.updated) {
            Some(t) => match now.duration_since(t) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            },
            None => i64::MAX,
        }
    };
    let mut replicas: Vec<ReplicaSummary> = o
        .replicas
        .iter()
        .map(|r| ReplicaSummary {
            name: r.replica.clone(),
            ready: r.ready,
            leader: r.leader,
            version: r.version,
            sidecars: r.feeds.len(),
            age_seconds: age(r),
            stale: age(r) > stale_after(r),
            watch_failures: r
                .watches
                .iter()
                .filter(|w| w.failures > 0)
                .map(|w| (w.kind.clone(), w.failures))
                .collect(),
        })
        .collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));
    let fresh: Vec<&ReplicaStatus> = o
        .replicas
        .iter()
        .filter(|r| age(r) <= stale_after(r))
        .collect();
    // Coverage from the most recently written ready report (every replica watches the same
    // state; their version counters are their own and not comparable); feeds from all, a pod
    // seen on two replicas (reconnecting) on the one it connected to last.
    let newest = fresh
        .iter()
        .filter(|r| r.ready)
        .max_by_key(|r| parse_time(&r.updated));
    let mut feeds: BTreeMap<(String, String), (u64, String, String)> = BTreeMap::new();
    for r in &fresh {
        for f in &r.feeds {
            let entry = feeds
                .entry((f.namespace.clone(), f.pod.clone()))
                .or_insert((f.version, r.replica.clone(), f.since.clone()));
            if parse_time(&f.since) > parse_time(&entry.2) {
                *entry = (f.version, r.replica.clone(), f.since.clone());
            }
        }
    }
    let mut pods = Vec::new();
    let mut namespaces: BTreeMap<String, NamespaceSummary> = BTreeMap::new();
    if let Some(r) = newest.filter(|r| r.truncated) {
        // Counts only: the lists did not fit in the report.
        for (ns, c) in &r.counts {
            namespaces.insert(
                ns.clone(),
                NamespaceSummary {
                    namespace: ns.clone(),
                    selected: c.selected,
                    injected: c.injected,
                    connected: 0,
                    unprotected: c.unprotected,
                },
            );
        }
    }
    if let Some(r) = newest.filter(|r| !r.truncated) {
        for (ns, list) in &r.namespaces {
            let summary = namespaces
                .entry(ns.clone())
                .or_insert_with(|| NamespaceSummary {
                    namespace: ns.clone(),
                    ..NamespaceSummary::default()
                });
            for p in list {
                let feed = feeds.get(&(ns.clone(), p.pod.clone()));
                summary.selected += usize::from(p.selected);
                summary.injected += usize::from(p.injected);
                summary.connected += usize::from(p.injected && feed.is_some());
                summary.unprotected += usize::from(p.selected && !p.injected);
                pods.push(PodSummary {
                    namespace: ns.clone(),
                    pod: p.pod.clone(),
                    selected: p.selected,
                    injected: p.injected,
                    connected: feed.is_some(),
                    version: feed.map(|f| f.0),
                    replica: feed.map(|f| f.1.clone()),
                });
            }
        }
    }
    let deployment = o.deployments.first().map(|d| {
        (
            d["metadata"]["name"].as_str().unwrap_or("?").to_string(),
            d["status"]["readyReplicas"].as_i64().unwrap_or(0),
            d["spec"]["replicas"].as_i64().unwrap_or(1),
        )
    });
    let webhook = o.webhooks.first().map(|w| {
        let entries = w["webhooks"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ca = !entries.is_empty()
            && entries.iter().all(|e| {
                e["clientConfig"]["caBundle"]
                    .as_str()
                    .is_some_and(|b| !b.is_empty())
            });
        (
            w["metadata"]["name"].as_str().unwrap_or("?").to_string(),
            entries.len(),
            ca,
        )
    });
    let mut unknown = Vec::new();
    if newest.is_none() {
        unknown.push("no fresh report of a ready replica: pods and feeds are unknown".to_string());
    }
    if newest.is_some_and(|r| r.truncated) {
        unknown.push("the reports were too big for their pod lists: per-pod state and connected sidecars are unknown, namespace counts are right".to_string());
    }
    for r in replicas.iter().filter(|r| r.stale) {
        unknown.push(format!(
            "replica {}'s report is stale: sidecars connected to it look disconnected",
            r.name
        ));
    }
    Status {
        namespace: o.namespace.clone(),
        unknown,
        deployment,
        replicas,
        webhook,
        webhook_certificate_expires: fresh
            .iter()
            .find_map(|r| r.webhook_certificate_expires.clone()),
        version: newest.map(|r| r.version),
        namespaces: namespaces.into_values().collect(),
        pods,
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Fine.
    Pass,
    /// Works, with a gap worth knowing.
    Warn,
    /// Broken, or podwall cannot work here.
    Fail,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of `podwall check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// PASS, WARN or FAIL.
    pub level: Level,
    /// What was checked.
    pub check: String,
    /// What was found.
    pub detail: String,
    /// What to do, when not PASS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(level: Level, what: &str, detail: String, fix: Option<&str>) -> Check {
    Check {
        level,
        check: what.into(),
        detail,
        fix: fix.map(str::to_string),
    }
}

/// Container names and annotations of other meshes whose proxies run as uid 1337 (Istio) or
/// take the pod's traffic with iptables (Linkerd): with podwall in the same pod, one takes the
/// other's traffic, and the webhook refuses containers running as 1337.
fn other_mesh(pod: &Value) -> Option<&'static str> {
    let names = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| pod["spec"][l].as_array())
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect::<Vec<_>>();
    let annotations = &pod["metadata"]["annotations"];
    if names.contains(&"istio-proxy") || annotations["sidecar.istio.io/status"].is_string() {
        Some("Istio")
    } else if names.contains(&"linkerd-proxy")
        || annotations["linkerd.io/proxy-version"].is_string()
    {
        Some("Linkerd")
    } else {
        None
    }
}

/// The checks that hold before podwall is installed.
pub fn preflight(o: &Observed) -> Vec<Check> {
    let mut out = Vec::new();
    match &o.server_version {
        Some((1, minor, git)) if *minor >= 29 => out.push(check(
            Level::Pass,
            "Kubernetes version",
            format!("{git}: native sidecars (the sidecar starts before and stops after the app)"),
            None,
        )),
        Some((1, minor, git)) if *minor >= 27 => out.push(check(
            Level::Warn,
            "Kubernetes version",
            format!("{git}: no native sidecars; the sidecar runs as a regular container, so Job pods never complete"),
            Some("upgrade to 1.29+, or keep Jobs out of injection (podwall.io/inject: disabled)"),
        )),
        Some((_, _, git)) => out.push(check(
            Level::Warn,
            "Kubernetes version",
            format!("{git}: before 1.27 neither native sidecars nor the reserved-ports sysctl: an app can bind the sidecar's ports first"),
            Some("upgrade to 1.29+"),
        )),
        None => {}
    }
    if o.api_groups.contains("cert-manager.io") {
        out.push(check(
            Level::Pass,
            "cert-manager",
            "cert-manager.io is served: the chart's certificates will be issued".into(),
            None,
        ));
    } else {
        out.push(check(
            Level::Fail,
            "cert-manager",
            "cert-manager.io is not served: the webhook and the feed get no certificate".into(),
            Some("install cert-manager first (https://cert-manager.io/docs/installation/)"),
        ));
    }
    let conflicts: Vec<String> = o
        .podwall_pods
        .iter()
        .filter_map(|p| {
            other_mesh(p).map(|mesh| {
                format!(
                    "{}/{} ({mesh})",
                    p["metadata"]["namespace"].as_str().unwrap_or("?"),
                    p["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
        })
        .collect();
    let labelled: Vec<String> = o
        .namespaces
        .iter()
        .filter(|n| {
            let l = &n["metadata"]["labels"];
            l["podwall.io/inject"] == "enabled"
                && (l["istio-injection"] == "enabled" || l["istio.io/rev"].is_string())
        })
        .filter_map(|n| {
            n["metadata"]["name"]
                .as_str()
                .map(|s| format!("{s} (Istio)"))
        })
        .collect();
    let all: Vec<String> = conflicts.into_iter().chain(labelled).collect();
    if all.is_empty() {
        out.push(check(
            Level::Pass,
            "other meshes",
            "no pod or namespace asks for both podwall and another mesh's proxy".into(),
            None,
        ));
    } else {
        out.push(check(
            Level::Fail,
            "other meshes",
            format!(
                "podwall and another mesh's proxy in the same pods: {}",
                shortlist(&all)
            ),
            Some("one interception per pod: take these pods out of one of them (the other mesh's proxy runs as uid 1337, which podwall's webhook refuses)"),
        ));
    }
    out.push(check(
        Level::Warn,
        "node kernel (NFQUEUE, TPROXY)",
        "not checked from here".into(),
        Some("run `podwall check --node` on a node: kubectl debug node/NAME -it --profile=sysadmin --image=IMAGE -- podwall check --node"),
    ));
    out
}

fn shortlist(items: &[String]) -> String {
    let mut text = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        text.push_str(&format!(" and {} more", items.len() - 5));
    }
    text
}

/// Every check: preflight, then the installed control plane, webhook and pods.
pub fn checks(o: &Observed, status: &Status, now: SystemTime) -> Vec<Check> {
    let mut out: Vec<Check> = preflight(o)
        .into_iter()
        .filter(|c| c.check != "node kernel (NFQUEUE, TPROXY)")
        .collect();
    let installed = format!(
        "helm install podwall ./helm/podwall -n {} --create-namespace",
        o.namespace
    );
    match &o.crd {
        None => out.push(check(
            Level::Fail,
            "PodwallPolicy CRD",
            "podwallpolicies.podwall.io is not installed".into(),
            Some(&installed),
        )),
        Some(crd) if crd["spec"]["versions"][0]["subresources"]["status"].is_null() => {
            out.push(check(
                Level::Warn,
                "PodwallPolicy CRD",
                "installed, but older than this podwall (no status subresource): Helm does not upgrade CRDs".into(),
                Some("podwall crd | kubectl apply -f -"),
            ))
        }
        Some(_) => out.push(check(
            Level::Pass,
            "PodwallPolicy CRD",
            "installed and current".into(),
            None,
        )),
    }
    match &status.deployment {
        None => out.push(check(
            Level::Fail,
            "control plane",
            format!("no podwall Deployment in namespace {}", o.namespace),
            Some(&installed),
        )),
        Some((name, ready, want)) if ready >= want && *want > 0 => out.push(check(
            Level::Pass,
            "control plane",
            format!("Deployment {name}: {ready}/{want} replicas ready"),
            None,
        )),
        Some((name, 0, want)) => out.push(check(
            Level::Fail,
            "control plane",
            format!("Deployment {name}: 0/{want} replicas ready: no pod that asks for the sidecar can be created, no policy change reaches a sidecar"),
            Some("kubectl -n podwall-system describe deploy podwall; kubectl -n podwall-system logs deploy/podwall (docs/troubleshooting.md)"),
        )),
        Some((name, ready, want)) => out.push(check(
            Level::Warn,
            "control plane",
            format!("Deployment {name}: {ready}/{want} replicas ready"),
            Some("kubectl -n podwall-system get pods -l app.kubernetes.io/name=podwall"),
        )),
    }
    if status.replicas.is_empty() {
        out.push(check(
            Level::Fail,
            "replica reports",
            format!("no replica status ConfigMap (label {STATUS_LABEL}=replica) in {}", o.namespace),
            Some("the control plane writes them when it runs with POD_NAME and the chart's Role; check its log for \"cannot write the replica status\""),
        ));
    }
    for r in &status.replicas {
        if r.stale {
            out.push(check(
                Level::Warn,
                &format!("replica {}", r.name),
                format!("last report {}s ago", r.age_seconds),
                Some("the pod is gone or stuck: kubectl -n podwall-system get pods"),
            ));
        } else if !r.ready {
            out.push(check(
                Level::Fail,
                &format!("replica {}", r.name),
                "has not loaded the cluster state yet (serves no feed)".into(),
                Some("its log says which watch fails; its RBAC must list and watch every kind"),
            ));
        } else if !r.watch_failures.is_empty() {
            out.push(check(
                Level::Warn,
                &format!("replica {}", r.name),
                format!(
                    "watch failures: {}",
                    r.watch_failures
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some("retried with backoff; a growing count means RBAC or the API server is in the way (its log names it)"),
            ));
        } else {
            out.push(check(
                Level::Pass,
                &format!("replica {}", r.name),
                format!(
                    "ready{}, state version {}, {} sidecar(s) connected",
                    if r.leader { ", leader" } else { "" },
                    r.version,
                    r.sidecars
                ),
                None,
            ));
        }
    }
    match &status.webhook {
        None => out.push(check(
            Level::Fail,
            "injection webhook",
            "no MutatingWebhookConfiguration labelled app.kubernetes.io/name=podwall".into(),
            Some(&installed),
        )),
        Some((name, _, false)) => out.push(check(
            Level::Fail,
            "injection webhook",
            format!("{name}: an entry has no caBundle: the API server cannot call it, and with failurePolicy Fail pods there are not created"),
            Some("cert-manager's CA injector fills it: kubectl -n cert-manager logs deploy/cert-manager-cainjector"),
        )),
        Some((name, entries, true)) => out.push(check(
            Level::Pass,
            "injection webhook",
            format!("{name}: {entries} entries, CA bundle set"),
            None,
        )),
    }
    if let Some(expires) = status
        .webhook_certificate_expires
        .as_deref()
        .and_then(|e| parse_time(e).map(|t| (e, t)))
    {
        let (text, at) = expires;
        match at.duration_since(now) {
            Err(_) => out.push(check(
                Level::Fail,
                "webhook certificate",
                format!("expired {text}"),
                Some("cert-manager renews it: kubectl -n podwall-system describe certificate"),
            )),
            Ok(left) if left < Duration::from_secs(14 * 86400) => out.push(check(
                Level::Warn,
                "webhook certificate",
                format!("expires {text} (in {} days)", left.as_secs() / 86400),
                Some("cert-manager renews it before renewBefore; if it has not: kubectl -n podwall-system describe certificate"),
            )),
            Ok(left) => out.push(check(
                Level::Pass,
                "webhook certificate",
                format!("expires {text} (in {} days)", left.as_secs() / 86400),
                None,
            )),
        }
    }
    let unprotected: Vec<String> = status
        .pods
        .iter()
        .filter(|p| p.selected && !p.injected)
        .map(|p| format!("{}/{}", p.namespace, p.pod))
        .collect();
    let unprotected_count: usize = status.namespaces.iter().map(|n| n.unprotected).sum();
    if status.version.is_none() {
        out.push(check(
            Level::Warn,
            "unprotected pods",
            "unknown: no fresh report of a ready replica".into(),
            Some("see the replica lines above"),
        ));
    } else if unprotected_count > unprotected.len() {
        out.push(check(
            Level::Warn,
            "unprotected pods",
            format!("{unprotected_count} pod(s) a policy selects run without the sidecar (the reports are too big to name them)"),
            Some("podwall status; the control plane's log names each"),
        ));
    } else if unprotected.is_empty() {
        out.push(check(
            Level::Pass,
            "unprotected pods",
            "every pod a policy selects runs the sidecar".into(),
            None,
        ));
    } else {
        out.push(check(
            Level::Warn,
            "unprotected pods",
            format!(
                "{} pod(s) a policy selects run without the sidecar, their policies NOT enforced: {}",
                unprotected.len(),
                shortlist(&unprotected)
            ),
            Some("annotate their templates podwall.io/inject: enabled (or label the namespace podwall.io/inject=enabled) and recreate them"),
        ));
    }
    let disconnected: Vec<String> = status
        .pods
        .iter()
        .filter(|p| p.injected && !p.connected)
        .map(|p| format!("{}/{}", p.namespace, p.pod))
        .collect();
    let feeds_unknown: Vec<&String> = status
        .unknown
        .iter()
        .filter(|u| u.contains("stale") || u.contains("too big") || u.contains("no fresh"))
        .collect();
    if !feeds_unknown.is_empty() {
        out.push(check(
            Level::Warn,
            "sidecar feeds",
            format!(
                "unknown: {}",
                feeds_unknown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Some("kubectl -n podwall-system get pods; podwall status --namespace NS"),
        ));
    } else if !disconnected.is_empty() {
        out.push(check(
            Level::Warn,
            "sidecar feeds",
            format!(
                "{} injected pod(s) hold no feed (they enforce their last policy, or refuse everything before their first): {}",
                disconnected.len(),
                shortlist(&disconnected)
            ),
            Some("kubectl logs POD -c podwall-proxy (docs/troubleshooting.md: feed errors)"),
        ));
    } else if !status.pods.is_empty() {
        out.push(check(
            Level::Pass,
            "sidecar feeds",
            "every injected pod's sidecar is connected".into(),
            None,
        ));
    }
    for (what, why) in &o.unread {
        out.push(check(
            Level::Warn,
            "access",
            format!("could not read {what}: {why}"),
            Some("run with credentials that can list it, or ignore what depends on it"),
        ));
    }
    for (name, why) in &o.unreadable_reports {
        out.push(check(
            Level::Warn,
            "replica reports",
            format!("{name}: {why}"),
            Some("a control plane of another version wrote it; upgrade both together"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{FeedStatus, PodCoverage, WatchHealth};
    use serde_json::json;

    fn at(t: &str) -> SystemTime {
        humantime::parse_rfc3339(t).expect("time")
    }

    fn replica(name: &str, updated: &str, feeds: &[(&str, u64)]) -> ReplicaStatus {
        ReplicaStatus {
            replica: name.into(),
            updated: updated.into(),
            ready: true,
            interval_seconds: 10,
            leader: name.ends_with('a'),
            version: 42,
            watches: vec![WatchHealth {
                kind: "Pod".into(),
                lists: 1,
                failures: 0,
            }],
            webhook_certificate_expires: Some("2027-01-01T00:00:00Z".into()),
            feeds: feeds
                .iter()
                .map(|(pod, v)| FeedStatus {
                    namespace: "prod".into(),
                    pod: (*pod).into(),
                    version: *v,
                    since: updated.into(),
                })
                .collect(),
            counts: BTreeMap::new(),
            feeds_open: feeds.len(),
            namespaces: BTreeMap::from([(
                "prod".to_string(),
                vec![
                    PodCoverage {
                        pod: "web".into(),
                        selected: true,
                        injected: true,
                    },
                    PodCoverage {
                        pod: "db".into(),
                        selected: true,
                        injected: true,
                    },
                    PodCoverage {
                        pod: "cache".into(),
                        selected: true,
                        injected: false,
                    },
                ],
            )]),
            truncated: false,
        }
    }

    fn observed(replicas: Vec<ReplicaStatus>) -> Observed {
        Observed {
            namespace: "podwall-system".into(),
            server_version: Some((1, 31, "v1.31.2".into())),
            api_groups: BTreeSet::from(["cert-manager.io".to_string()]),
            deployments: vec![json!({"metadata": {"name": "podwall"},
                "spec": {"replicas": 2}, "status": {"readyReplicas": 2}})],
            replicas,
            webhooks: vec![json!({"metadata": {"name": "podwall-inject"},
                "webhooks": [{"clientConfig": {"caBundle": "LS0t"}}, {"clientConfig": {"caBundle": "LS0t"}}]})],
            crd: Some(json!({"spec": {"versions": [{"subresources": {"status": {}}}]}})),
            ..Observed::default()
        }
    }

    #[test]
    fn the_replicas_reports_join_into_one_picture() {
        let now = at("2026-12-05T12:00:20Z");
        let o = observed(vec![
            replica("podwall-a", "2026-12-05T12:00:15Z", &[("web", 42)]),
            replica("podwall-b", "2026-12-05T12:00:12Z", &[("db", 41)]),
            replica("podwall-old", "2026-12-05T11:50:00Z", &[("cache", 7)]),
        ]);
        let s = summarize(&o, now);
        assert_eq!(s.deployment, Some(("podwall".into(), 2, 2)));
        assert!(
            s.replicas
                .iter()
                .find(|r| r.name == "podwall-old")
                .is_some_and(|r| r.stale)
        );
        assert_eq!(
            s.namespaces,
            [NamespaceSummary {
                namespace: "prod".into(),
                selected: 3,
                injected: 2,
                connected: 2,
                unprotected: 1
            }]
        );
        let db = s.pods.iter().find(|p| p.pod == "db").expect("db");
        assert_eq!(
            (db.version, db.replica.as_deref()),
            (Some(41), Some("podwall-b"))
        );
        // A stale replica's feeds do not count.
        assert!(!s.pods.iter().any(|p| p.pod == "cache" && p.connected));
        let c = checks(&o, &s, now);
        let level = |what: &str| {
            c.iter()
                .find(|c| c.check == what)
                .map(|c| c.level)
                .unwrap_or_else(|| panic!("no check {what}: {c:?}"))
        };
        assert_eq!(level("control plane"), Level::Pass);
        assert_eq!(level("injection webhook"), Level::Pass);
        assert_eq!(level("unprotected pods"), Level::Warn);
        assert_eq!(level("replica podwall-old"), Level::Warn);
        assert_eq!(level("webhook certificate"), Level::Pass);
        let unprotected = c
            .iter()
            .find(|c| c.check == "unprotected pods")
            .expect("line");
        assert!(unprotected.detail.contains("prod/cache"), "{unprotected:?}");
    }

    #[test]
    fn what_stops_podwall_fails_with_what_to_do() {
        let now = at("2026-12-05T12:00:20Z");
        let mut o = observed(vec![]);
        o.api_groups.clear();
        o.deployments[0]["status"]["readyReplicas"] = json!(0);
        o.webhooks[0]["webhooks"][1]["clientConfig"]["caBundle"] = json!("");
        o.crd = None;
        o.podwall_pods = vec![json!({"metadata": {"namespace": "shop", "name": "cart",
            "annotations": {"podwall.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}})];
        let s = summarize(&o, now);
        let c = checks(&o, &s, now);
        for what in [
            "cert-manager",
            "PodwallPolicy CRD",
            "control plane",
            "replica reports",
            "injection webhook",
            "other meshes",
        ] {
            let line = c.iter().find(|c| c.check == what).expect(what);
            assert_eq!(line.level, Level::Fail, "{line:?}");
            assert!(line.fix.is_some(), "{line:?}");
        }
        let mesh = c.iter().find(|c| c.check == "other meshes").expect("mesh");
        assert!(mesh.detail.contains("shop/cart (Istio)"), "{mesh:?}");
        // An old cluster and an expiring certificate are warnings.
        let mut old = observed(vec![replica("podwall-a", "2026-12-05T12:00:15Z", &[])]);
        old.server_version = Some((1, 28, "v1.28.9".into()));
        old.replicas[0].webhook_certificate_expires = Some("2026-12-10T00:00:00Z".into());
        let s = summarize(&old, now);
        let c = checks(&old, &s, now);
        let level = |what: &str| c.iter().find(|c| c.check == what).map(|c| c.level);
        assert_eq!(level("Kubernetes version"), Some(Level::Warn));
        assert_eq!(level("webhook certificate"), Some(Level::Warn));
    }

    #[test]
    fn what_the_reports_cannot_tell_is_a_warning_never_a_pass() {
        let now = at("2026-12-05T12:00:20Z");
        // Nothing fresh: nothing about pods can be said.
        let o = observed(vec![replica("podwall-a", "2026-12-05T11:00:00Z", &[])]);
        let s = summarize(&o, now);
        let c = checks(&o, &s, now);
        for what in ["unprotected pods", "sidecar feeds"] {
            let line = c.iter().find(|c| c.check == what).expect(what);
            assert_eq!(line.level, Level::Warn, "{line:?}");
            assert!(line.detail.starts_with("unknown"), "{line:?}");
        }
        // A report too big for its lists keeps its counts.
        let mut big = replica("podwall-a", "2026-12-05T12:00:15Z", &[]);
        big.namespaces.clear();
        big.truncated = true;
        big.counts = BTreeMap::from([(
            "prod".to_string(),
            crate::replica::NamespaceCounts {
                selected: 900,
                injected: 899,
                unprotected: 1,
            },
        )]);
        let o = observed(vec![big]);
        let s = summarize(&o, now);
        assert_eq!(s.namespaces[0].selected, 900);
        assert_eq!(s.namespaces[0].unprotected, 1);
        let c = checks(&o, &s, now);
        let unprotected = c
            .iter()
            .find(|c| c.check == "unprotected pods")
            .expect("line");
        assert_eq!(unprotected.level, Level::Warn);
        assert!(
            unprotected.detail.starts_with("1 pod(s)"),
            "{unprotected:?}"
        );
        let feeds = c.iter().find(|c| c.check == "sidecar feeds").expect("line");
        assert!(feeds.detail.starts_with("unknown"), "{feeds:?}");
    }
}
