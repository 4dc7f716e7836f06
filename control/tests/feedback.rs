//! What the control plane writes back for operators, against an in-process API server: one
//! leader among replicas (and another once it stops renewing), PodwallPolicy status from it,
//! Events on invalid CiliumNetworkPolicies, and each replica's status ConfigMap.

use std::sync::Arc;
use std::time::Duration;

use podwall_control::leader::Election;
use podwall_control::metrics::ServerMetrics;
use podwall_control::protection::SidecarEvidence;
use podwall_control::replica::{ReplicaStatus, Reporter, STATUS_KEY};
use podwall_control::source::kube::{NoObserver, feed, watched_kinds};
use podwall_control::store::Store;
use podwall_control::testing::FakeApiServer;
use podwall_control::views::Views;
use serde_json::{Value, json};
use tokio::sync::watch;

fn pod(name: &str, injected: bool) -> Value {
    let mut containers = vec![json!({"name": "app"})];
    let mut inits = vec![];
    let mut annotations = json!({});
    if injected {
        inits.push(json!({"name": "podwall-init"}));
        inits.push(json!({"name": "podwall-proxy", "restartPolicy": "Always"}));
        annotations["podwall.io/status"] = json!("injected");
    }
    containers.truncate(1);
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "prod", "labels": {"app": "web"}, "annotations": annotations},
        "spec": {"containers": containers, "initContainers": inits},
        "status": {"phase": "Running", "podIP": format!("10.0.0.{}", name.len())}})
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_policy_status_and_events_and_each_replica_its_report() {
    let api = FakeApiServer::start().await;
    api.serve_builtins();
    api.serve("podwall.io/v1alpha1", "PodwallPolicy", "podwallpolicies");
    api.serve(
        "cilium.io/v2",
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
    );
    api.serve(
        "policy.networking.k8s.io/v1alpha2",
        "ClusterNetworkPolicy",
        "clusternetworkpolicies",
    );
    api.serve(
        "policy.networking.k8s.io/v1alpha1",
        "AdminNetworkPolicy",
        "adminnetworkpolicies",
    );
    api.serve("v1", "ConfigMap", "configmaps");
    api.serve("v1", "Event", "events");
    api.serve("coordination.k8s.io/v1", "Lease", "leases");
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}));
    api.apply(pod("web-1", true));
    api.apply(pod("web-2", false));
    api.apply(
        json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": "web-http", "namespace": "prod", "generation": 2, "uid": "u-pwp"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                "rules": {"http": [{"method": "GET", "path": "/"}]}}]}]}}),
    );
    api.apply(
        json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": "broken", "namespace": "prod", "generation": 1, "uid": "u-broken"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                "rules": {"http": [{"path": "/(unclosed"}]}}]}]}}),
    );
    api.apply(
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "bad-cidr", "namespace": "prod", "uid": "u-cnp"},
        "spec": {"endpointSelector": {}, "egress": [{"toCIDR": ["10.0.0.0/99"]}]}}),
    );

    // A cluster policy out of range, and a kind podwall never enforces: neither in silence.
    api.apply(
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "too-high", "uid": "u-cnp2"},
        "spec": {"tier": "Admin", "priority": 2000, "subject": {"namespaces": {}}}}),
    );
    api.apply(
        json!({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
        "metadata": {"name": "old-api", "uid": "u-anp"},
        "spec": {"priority": 10, "subject": {"namespaces": {}}}}),
    );
    let client =
        kube::Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client");
    let store = Arc::new(Store::new());
    tokio::spawn(feed(
        client.clone(),
        watched_kinds(),
        store.clone(),
        Arc::new(NoObserver),
    ));
    let views = Arc::new(Views::new(store.clone(), SidecarEvidence::Container));
    let metrics = ServerMetrics::new();

    // Two replicas; one leads.
    let election = |identity: &str| Election {
        lease_duration: Duration::from_secs(2),
        renew: Duration::from_millis(300),
        ..Election::new("podwall-system", "podwall-control-leader", identity)
    };
    let (a_tx, a_rx) = watch::channel(false);
    let (b_tx, b_rx) = watch::channel(false);
    let a = tokio::spawn(podwall_control::leader::run(
        client.clone(),
        election("replica-a"),
        a_tx,
    ));
    // b starts once a holds the lease.
    eventually("replica-a leads", || (*a_rx.borrow()).then_some(())).await;
    let mut b_looks = b_rx.clone();
    tokio::spawn(podwall_control::leader::run(
        client.clone(),
        election("replica-b"),
        b_tx,
    ));
    for rx in [a_rx.clone(), b_rx.clone()] {
        tokio::spawn(podwall_control::policy_status::run(
            client.clone(),
            views.clone(),
            metrics.clone(),
            rx,
            Duration::from_millis(200),
        ));
    }
    // Each look at the Lease publishes its outcome: after two of b's, a still leads alone.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), b_looks.changed())
            .await
            .expect("replica-b looks at the Lease")
            .expect("replica-b runs");
    }
    assert!(*a_rx.borrow() && !*b_rx.borrow(), "exactly one leader");

    // PodwallPolicy status, written once by the leader.
    let status_of = |name: &str| {
        api.objects("podwall.io/v1alpha1", "PodwallPolicy")
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
            .map(|p| p["status"].clone())
            .filter(|s| !s.is_null())
    };
    let web = eventually("web-http gets a status", || status_of("web-http")).await;
    assert_eq!(web["selectedPods"], 2, "{web}");
    assert_eq!(web["enforcingPods"], 1, "{web}");
    assert_eq!(web["observedGeneration"], 2);
    assert_eq!(web["conditions"][0]["status"], "True");
    assert_eq!(web["conditions"][1]["reason"], "PodsWithoutSidecar");
    let broken = eventually("broken gets a status", || status_of("broken")).await;
    assert_eq!(broken["conditions"][0]["status"], "False");
    assert!(
        broken["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("path")),
        "{broken}"
    );
    // The invalid CiliumNetworkPolicy gets one Warning Event (its status is Cilium's).
    let events = eventually("an Event on the CNP", || {
        let e = api.objects("v1", "Event");
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events[0]["involvedObject"]["kind"], "CiliumNetworkPolicy");
    assert_eq!(events[0]["involvedObject"]["uid"], "u-cnp");
    assert_eq!(events[0]["reason"], "InvalidPolicy");
    let metrics_text = metrics.encode();
    assert!(
        metrics_text.contains("podwall_control_invalid_policies{kind=\"CiliumNetworkPolicy\"} 1"),
        "{metrics_text}"
    );
    for kind in ["ClusterNetworkPolicy", "AdminNetworkPolicy"] {
        assert!(
            metrics_text.contains(&format!(
                "podwall_control_invalid_policies{{kind=\"{kind}\"}} 1"
            )),
            "{kind}: {metrics_text}"
        );
    }
    // Nothing changes: nothing is written again (over several rechecks). A pass looks at
    // every policy in turn, so once a second new policy has its status, the pass that wrote
    // the first one's has looked at all the others.
    let writes = |log: &[String]| {
        log.iter()
            .filter(|l| l.starts_with("patch PodwallPolicy") || l.starts_with("post Event"))
            .filter(|l| !l.contains("/marker-"))
            .count()
    };
    let before = writes(&api.log());
    for marker in ["marker-1", "marker-2", "marker-3"] {
        api.apply(
            json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
            "metadata": {"name": marker, "namespace": "prod", "generation": 1, "uid": marker},
            "spec": {"endpointSelector": {"matchLabels": {"app": "none"}}}}),
        );
        eventually("a new policy gets its status", || status_of(marker)).await;
    }
    assert_eq!(writes(&api.log()), before, "{:?}", api.log());
    for marker in ["marker-1", "marker-2", "marker-3"] {
        api.delete("podwall.io/v1alpha1", "PodwallPolicy", "prod", marker);
    }

    // Deleted and created again (another object, another uid, the same status): written anew.
    api.delete("podwall.io/v1alpha1", "PodwallPolicy", "prod", "broken");
    let again = json!({"apiVersion": "podwall.io/v1alpha1", "kind": "PodwallPolicy",
        "metadata": {"name": "broken", "namespace": "prod", "generation": 1, "uid": "u-broken-2"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                "rules": {"http": [{"path": "/(unclosed"}]}}]}]}});
    api.apply(again.clone());
    eventually("the new broken gets its status", || status_of("broken")).await;

    // The sidecar of web-2 appears: Enforced turns True, written by the leader.
    api.apply(pod("web-2", true));
    eventually("web-http enforced on both pods", || {
        status_of("web-http").filter(|s| s["enforcingPods"] == 2)
    })
    .await;

    // The leader stops renewing: the other replica takes over after the lease lapses.
    a.abort();
    eventually("replica-b takes over", || (*b_rx.borrow()).then_some(())).await;
    let lease = &api.objects("coordination.k8s.io/v1", "Lease")[0];
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // A replica's report, in its own ConfigMap.
    let (_, leader_rx) = watch::channel(true);
    let reporter = Reporter {
        namespace: "podwall-system".into(),
        pod: "replica-b".into(),
        pod_uid: Some("uid-b".into()),
        views: views.clone(),
        metrics: metrics.clone(),
        kinds: vec!["Pod".into()],
        webhook_cert: None,
        leader: leader_rx,
        every: Duration::from_millis(200),
    };
    tokio::spawn(reporter.publish(client.clone()));
    let cm = eventually("the report", || {
        api.objects("v1", "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "replica-b-status")
    })
    .await;
    assert_eq!(cm["metadata"]["labels"]["podwall.io/status"], "replica");
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], "uid-b");
    let report: ReplicaStatus =
        serde_json::from_str(cm["data"][STATUS_KEY].as_str().expect("json")).expect("a report");
    assert!(report.ready && report.leader);
    assert_eq!(report.watches[0].kind, "Pod");
    let prod = &report.namespaces["prod"];
    assert_eq!(prod.len(), 2, "{prod:?}");
    assert!(prod.iter().all(|p| p.selected && p.injected), "{prod:?}");
    // Rewritten in place, not created again.
    eventually("rewritten", || {
        api.log()
            .iter()
            .any(|l| l == "patch ConfigMap podwall-system/replica-b-status")
            .then_some(())
    })
    .await;
}
