//! What each control-plane replica tells operators about itself, in an object the API server
//! serves: a ConfigMap `<pod>-status` in the control plane's namespace (label
//! [`STATUS_LABEL`]), owned by the replica's pod so it goes when the pod goes, rewritten every
//! [`PUBLISH_EVERY`]. `podwall status` reads them with the operator's own credentials; nothing
//! about the cluster is served to whoever can reach the control plane's port.
//!
//! Each replica knows only the feeds it serves (sidecars spread over replicas through the
//! Service), so the status command joins the replicas' reports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::{KindLabel, ServerMetrics};
use crate::views::Views;

/// The label (with value `replica`) on every replica's status ConfigMap.
pub const STATUS_LABEL: &str = "podwall.io/status";
/// The ConfigMap key holding the JSON.
pub const STATUS_KEY: &str = "status.json";
/// How often a replica rewrites its status; a report older than three times this is stale.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(10);

/// One replica's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// The replica's pod.
    pub replica: String,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// Whether a first complete state is loaded (the replica serves feeds).
    pub ready: bool,
    /// How often the replica rewrites this (0: the default, [`PUBLISH_EVERY`]); a report older
    /// than three periods is stale.
    #[serde(default)]
    pub interval_seconds: u64,
    /// Whether this replica holds the lease (writes policy status and events).
    pub leader: bool,
    /// The store's version.
    pub version: u64,
    /// The API server's watches, by kind.
    pub watches: Vec<WatchHealth>,
    /// When the webhook's serving certificate expires (RFC 3339), if it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_certificate_expires: Option<String>,
    /// The sidecars connected to this replica.
    pub feeds: Vec<FeedStatus>,
    /// Per namespace, the pods a policy selects or that run the sidecar.
    pub namespaces: BTreeMap<String, Vec<PodCoverage>>,
    /// Per namespace, how many pods are selected, injected, and selected without the sidecar
    /// (kept when the lists are left out).
    #[serde(default)]
    pub counts: BTreeMap<String, NamespaceCounts>,
    /// How many sidecars are connected (kept when the feed list is left out).
    #[serde(default)]
    pub feeds_open: usize,
    /// The pod and feed lists were left out to stay within a ConfigMap's size; `counts` and
    /// `feeds_open` are still right.
    #[serde(default)]
    pub truncated: bool,
}

/// One namespace's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceCounts {
    /// Pods a policy selects.
    pub selected: usize,
    /// Pods running the sidecar.
    pub injected: usize,
    /// Selected pods without the sidecar.
    pub unprotected: usize,
}

/// One kind's watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchHealth {
    /// `Pod`, `NetworkPolicy`, ...
    pub kind: String,
    /// Complete lists (the first, and relists after `410 Gone`).
    pub lists: u64,
    /// Failures (each retried with backoff).
    pub failures: u64,
}

/// One connected sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedStatus {
    /// Its pod's namespace.
    pub namespace: String,
    /// Its pod.
    pub pod: String,
    /// The state version its view is at.
    pub version: u64,
    /// Since when (RFC 3339).
    pub since: String,
}

/// One pod: selected by a policy, running the sidecar, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCoverage {
    /// The pod's name.
    pub pod: String,
    /// A policy selects it.
    pub selected: bool,
    /// It runs podwall's sidecar.
    pub injected: bool,
}

/// Where this replica's report goes and what it is built from.
#[derive(Clone)]
pub struct Reporter {
    /// The control plane's namespace.
    pub namespace: String,
    /// This replica's pod name.
    pub pod: String,
    /// Its uid (the ConfigMap's owner, so it is deleted with the pod).
    pub pod_uid: Option<String>,
    /// The state and the feeds.
    pub views: Arc<Views>,
    /// Watch counters.
    pub metrics: Arc<ServerMetrics>,
    /// The kinds watched.
    pub kinds: Vec<String>,
    /// The webhook's certificate file, for its expiry.
    pub webhook_cert: Option<PathBuf>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
    /// How often the report is rewritten ([`PUBLISH_EVERY`]).
    pub every: Duration,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// When the first certificate of a PEM file expires.
pub fn certificate_expiry(pem: &[u8]) -> Option<SystemTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Above this the pod lists are left out (a ConfigMap holds at most 1 MiB).
const MAX_REPORT_BYTES: usize = 900 * 1024;

impl Reporter {
    /// The report now.
    pub async fn report(&self) -> ReplicaStatus {
        let store = self.views.store();
        let index = if store.loaded() {
            self.views.index().await
        } else {
            None
        };
        let mut namespaces: BTreeMap<String, Vec<PodCoverage>> = BTreeMap::new();
        let mut counts: BTreeMap<String, NamespaceCounts> = BTreeMap::new();
        if let Some(index) = &index {
            for (ns, pod, selected, injected) in index.pod_coverage() {
                let c = counts.entry(ns.to_string()).or_default();
                c.selected += usize::from(selected);
                c.injected += usize::from(injected);
                c.unprotected += usize::from(selected && !injected);
                namespaces
                    .entry(ns.to_string())
                    .or_default()
                    .push(PodCoverage {
                        pod: pod.to_string(),
                        selected,
                        injected,
                    });
            }
        }
        let watches = self
            .kinds
            .iter()
            .map(|kind| {
                let label = KindLabel { kind: kind.clone() };
                WatchHealth {
                    kind: kind.clone(),
                    lists: self.metrics.lists.get_or_create(&label).get(),
                    failures: self.metrics.watch_failures.get_or_create(&label).get(),
                }
            })
            .collect();
        let webhook_certificate_expires = self
            .webhook_cert
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|pem| certificate_expiry(&pem))
            .map(rfc3339);
        let mut feeds: Vec<FeedStatus> = self
            .views
            .feeds()
            .into_iter()
            .map(|f| FeedStatus {
                namespace: f.pod.namespace,
                pod: f.pod.name,
                version: f.version,
                since: rfc3339(f.since),
            })
            .collect();
        feeds.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        ReplicaStatus {
            replica: self.pod.clone(),
            updated: rfc3339(SystemTime::now()),
            ready: store.loaded(),
            interval_seconds: self.every.as_secs().max(1),
            leader: *self.leader.borrow(),
            version: index.map_or(0, |i| i.version),
            watches,
            webhook_certificate_expires,
            feeds_open: feeds.len(),
            feeds,
            namespaces,
            counts,
            truncated: false,
        }
    }

    /// The ConfigMap holding `status`.
    fn config_map(&self, status: &ReplicaStatus) -> ConfigMap {
        let mut json = serde_json::to_string(status).unwrap_or_default();
        if json.len() > MAX_REPORT_BYTES {
            let mut smaller = status.clone();
            smaller.namespaces.clear();
            smaller.feeds.clear();
            smaller.truncated = true;
            json = serde_json::to_string(&smaller).unwrap_or_default();
        }
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{}-status", self.pod)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (STATUS_LABEL.to_string(), "replica".to_string()),
                    ("app.kubernetes.io/name".to_string(), "podwall".to_string()),
                ])),
                owner_references: self.pod_uid.as_ref().map(|uid| {
                    vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Pod".into(),
                        name: self.pod.clone(),
                        uid: uid.clone(),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(STATUS_KEY.to_string(), json)])),
            ..ConfigMap::default()
        }
    }

    /// Writes the report every [`PUBLISH_EVERY`] until the process ends.
    pub async fn publish(self, client: kube::Client) {
        let api: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
        let mut failing = false;
        // The first report once the state is loaded (or after one period), not a "not ready"
        // one that stands for a whole period.
        let store = self.views.store().clone();
        let mut changes = store.subscribe();
        let first = tokio::time::Instant::now() + self.every;
        while !store.loaded() && tokio::time::Instant::now() < first {
            let _ = tokio::time::timeout_at(first, changes.changed()).await;
        }
        loop {
            let status = self.report().await;
            let cm = self.config_map(&status);
            let name = format!("{}-status", self.pod);
            let written = match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&cm))
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    api.create(&PostParams::default(), &cm).await.map(|_| ())
                }
                other => other.map(|_| ()),
            };
            match written {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(configmap = %name, "replica status written again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(configmap = %name, error = %e, "cannot write the replica status (podwall status will call this replica stale)");
                }
                Err(_) => {}
            }
            tokio::time::sleep(self.every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_expiry_is_read_from_its_pem() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["podwall.podwall-system.svc".into()])
            .expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let cert = params.self_signed(&key).expect("cert");
        let expiry = certificate_expiry(cert.pem().as_bytes()).expect("parsed");
        assert_eq!(rfc3339(expiry), "2031-03-04T00:00:00Z");
        assert_eq!(certificate_expiry(b"not a certificate"), None);
    }
}
