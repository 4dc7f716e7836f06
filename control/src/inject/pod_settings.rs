//! Per-pod settings of the sidecar, from the pod's annotations (as Istio's
//! `traffic.sidecar.istio.io/*`): what the injection config says for every pod, one pod may
//! change. A value that does not parse refuses the pod naming the annotation; injection never
//! guesses.
//!
//! The exclusions let traffic of the pod pass unjudged, and audit mode lets would-be denials
//! pass. Whoever may create pods in a namespace may already write that namespace's
//! NetworkPolicies, so they open nothing its owner could not; a cluster where that is not so
//! turns them off (`allowPodExclusions: false`, `allowPodAudit: false`).

use serde_json::{Value, json};

use super::{InjectConfig, InjectError};

/// `--fqdn-min-ttl` of the sidecar (a duration: `30s`, `5m`; at most [`MAX_FQDN_MIN_TTL`]).
pub const FQDN_MIN_TTL: &str = "podwall.io/fqdn-min-ttl";
/// The longest min TTL a pod may ask for: an address keeps being allowed for at least this long
/// after the name stopped answering with it.
pub const MAX_FQDN_MIN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Audit mode for the pod (`audit`): read by the sidecar, frozen by the webhook like the rest,
/// and allowed only while the cluster allows it (`allowPodAudit`).
pub const ENFORCEMENT: &str = "podwall.io/enforcement";
/// `--threads` of the sidecar (1 to 64).
pub const THREADS: &str = "podwall.io/threads";
/// Outbound CIDRs the init rules leave alone, added to the config's (`10.0.0.0/8,fd00::/8`).
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "podwall.io/exclude-outbound-cidrs";
/// Outbound ports the init rules leave alone, added to the config's (`5432,6379`).
pub const EXCLUDE_OUTBOUND_PORTS: &str = "podwall.io/exclude-outbound-ports";
/// Inbound ports the init rules leave alone, added to the config's.
pub const EXCLUDE_INBOUND_PORTS: &str = "podwall.io/exclude-inbound-ports";
/// The sidecar's CPU request (a Kubernetes quantity: `50m`).
pub const CPU_REQUEST: &str = "podwall.io/proxy-cpu-request";
/// The sidecar's CPU limit.
pub const CPU_LIMIT: &str = "podwall.io/proxy-cpu-limit";
/// The sidecar's memory request (`64Mi`).
pub const MEMORY_REQUEST: &str = "podwall.io/proxy-memory-request";
/// The sidecar's memory limit.
pub const MEMORY_LIMIT: &str = "podwall.io/proxy-memory-limit";

/// Every per-pod setting; none may change on a running injected pod (the containers do not,
/// and audit mode is a pod's to choose when it is created).
pub const ALL: [&str; 10] = [
    ENFORCEMENT,
    FQDN_MIN_TTL,
    THREADS,
    EXCLUDE_OUTBOUND_CIDRS,
    EXCLUDE_OUTBOUND_PORTS,
    EXCLUDE_INBOUND_PORTS,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
];

/// The injection config for one pod: `cfg` with the pod's annotations applied.
pub fn for_pod(cfg: &InjectConfig, metadata: &Value) -> Result<InjectConfig, InjectError> {
    let annotations = &metadata["annotations"];
    let mut out = cfg.clone();
    let get = |name: &'static str| -> Result<Option<&str>, InjectError> {
        match annotations.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim())),
            Some(other) => Err(bad(name, &other.to_string(), "a string")),
        }
    };
    if let Some(v) = get(FQDN_MIN_TTL)? {
        match humantime::parse_duration(v) {
            Ok(d) if d <= MAX_FQDN_MIN_TTL => out.fqdn_min_ttl = Some(v.to_string()),
            _ => {
                return Err(bad(
                    FQDN_MIN_TTL,
                    v,
                    "a duration of at most 1h, such as 30s or 5m",
                ));
            }
        }
    }
    match get(ENFORCEMENT)? {
        None | Some("enforce") => {}
        Some("audit") if cfg.allow_pod_audit => {}
        Some(v @ "audit") => {
            return Err(InjectError::Annotation {
                annotation: ENFORCEMENT.into(),
                value: v.into(),
                expected: "absent: audit mode by pod annotation is turned off in this cluster (allowPodAudit)",
            });
        }
        Some(v) => return Err(bad(ENFORCEMENT, v, "audit (or enforce, the default)")),
    }
    if let Some(v) = get(THREADS)? {
        match v.parse::<u16>() {
            Ok(n @ 1..=64) => out.threads = Some(n),
            _ => return Err(bad(THREADS, v, "a number of threads from 1 to 64")),
        }
    }
    let exclusions = [
        EXCLUDE_OUTBOUND_CIDRS,
        EXCLUDE_OUTBOUND_PORTS,
        EXCLUDE_INBOUND_PORTS,
    ];
    for name in exclusions {
        let Some(v) = get(name)? else { continue };
        if !cfg.allow_pod_exclusions {
            return Err(InjectError::Annotation {
                annotation: name.into(),
                value: v.into(),
                expected: "absent: exclusions by pod annotation are turned off in this cluster (allowPodExclusions)",
            });
        }
        let items = v.split(',').map(str::trim).filter(|s| !s.is_empty());
        if name == EXCLUDE_OUTBOUND_CIDRS {
            for cidr in items {
                let net: ipnet::IpNet = cidr
                    .parse()
                    .map_err(|_| bad(name, v, "comma-separated CIDRs such as 10.1.0.0/16"))?;
                if !out.exclude_outbound_cidrs.contains(&net.to_string()) {
                    out.exclude_outbound_cidrs.push(net.to_string());
                }
            }
        } else {
            let list = if name == EXCLUDE_OUTBOUND_PORTS {
                &mut out.exclude_outbound_ports
            } else {
                &mut out.exclude_inbound_ports
            };
            for port in items {
                match port.parse::<u16>() {
                    Ok(p @ 1..) => {
                        if !list.contains(&p) {
                            list.push(p);
                        }
                    }
                    _ => return Err(bad(name, v, "comma-separated ports from 1 to 65535")),
                }
            }
        }
    }
    for (name, kind, resource) in [
        (CPU_REQUEST, "requests", "cpu"),
        (CPU_LIMIT, "limits", "cpu"),
        (MEMORY_REQUEST, "requests", "memory"),
        (MEMORY_LIMIT, "limits", "memory"),
    ] {
        let Some(v) = get(name)? else { continue };
        if !is_quantity(v) {
            return Err(bad(
                name,
                v,
                "a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi",
            ));
        }
        if !out.resources.is_object() {
            out.resources = json!({});
        }
        if !out.resources[kind].is_object() {
            out.resources[kind] = json!({});
        }
        out.resources[kind][resource] = json!(v);
    }
    Ok(out)
}

/// Checks the pod's `podwall.io/observe-http` (read by the sidecar, not by injection): port
/// numbers, or names of the pod's TCP container ports in `spec`. A mistake refuses the pod
/// when it is created rather than leaving its requests unobserved with a line in a log.
pub fn check_observe_http(metadata: &Value, spec: &Value) -> Result<(), InjectError> {
    let name = podwall_policy::OBSERVE_HTTP_ANNOTATION;
    let value = match metadata["annotations"].get(name) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(bad(name, &other.to_string(), "a string")),
    };
    // The ports the sidecar resolves names against: the app containers' and those of init
    // containers that keep running (native sidecars).
    let named = |port_name: &str| {
        let init = spec["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["restartPolicy"].as_str() == Some("Always"));
        spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(init)
            .filter_map(|c| c["ports"].as_array())
            .flatten()
            .find(|p| {
                p["name"].as_str() == Some(port_name)
                    && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
            })
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
    };
    podwall_policy::parse_observe_http(value, named)
        .map(|_| ())
        .map_err(|_| {
            bad(
                name,
                value,
                "comma-separated port numbers (1-65535) or names of the pod's TCP container ports",
            )
        })
}

fn bad(annotation: &str, value: &str, expected: &'static str) -> InjectError {
    InjectError::Annotation {
        annotation: annotation.into(),
        value: value.into(),
        expected,
    }
}

/// A Kubernetes resource quantity: a decimal number, then an optional suffix (binary `Ki`..`Ei`,
/// decimal `n u m k M G T P E`, or an exponent `e3`).
fn is_quantity(s: &str) -> bool {
    let number_end = s
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && *c == '+')))
        .map_or(s.len(), |(i, _)| i);
    let (number, suffix) = s.split_at(number_end);
    let digits = number.trim_start_matches('+');
    let valid_number = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    let valid_suffix = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    valid_number && valid_suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(annotations: Value) -> Value {
        json!({"annotations": annotations})
    }

    #[test]
    fn observe_http_names_ports_by_number_or_container_port_name_and_refuses_others() {
        let spec = json!({"containers": [{"name": "app", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]});
        let with = |v: Value| meta(json!({podwall_policy::OBSERVE_HTTP_ANNOTATION: v}));
        check_observe_http(&with(json!("80, http")), &spec).expect("valid");
        // A run-once init container's port is no port of the running pod.
        let init = json!({"containers": [], "initContainers": [
            {"name": "setup", "ports": [{"name": "setup", "containerPort": 9000}]},
            {"name": "side", "restartPolicy": "Always", "ports": [{"name": "side", "containerPort": 9001}]}]});
        check_observe_http(&with(json!("side")), &init).expect("a native sidecar's port");
        check_observe_http(&with(json!("setup")), &init).expect_err("a run-once init container's");
        check_observe_http(&meta(json!({})), &spec).expect("absent");
        for bad in [
            json!("dns"),
            json!("metrics"),
            json!("0"),
            json!("80;81"),
            json!(80),
        ] {
            let err = check_observe_http(&with(bad.clone()), &spec).expect_err("refused");
            assert!(
                err.to_string()
                    .contains(podwall_policy::OBSERVE_HTTP_ANNOTATION),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_pods_annotations_change_its_sidecar_only() {
        let cfg = InjectConfig {
            exclude_outbound_ports: vec![25],
            ..InjectConfig::default()
        };
        let pod = for_pod(
            &cfg,
            &meta(json!({
                FQDN_MIN_TTL: "30s", THREADS: "2",
                EXCLUDE_OUTBOUND_CIDRS: "10.1.0.0/16, fd00::/8",
                EXCLUDE_OUTBOUND_PORTS: "5432,25", EXCLUDE_INBOUND_PORTS: "9090",
                CPU_REQUEST: "50m", MEMORY_LIMIT: "256Mi",
            })),
        )
        .expect("valid");
        assert_eq!(pod.fqdn_min_ttl.as_deref(), Some("30s"));
        assert_eq!(pod.threads, Some(2));
        assert_eq!(pod.exclude_outbound_cidrs, ["10.1.0.0/16", "fd00::/8"]);
        assert_eq!(pod.exclude_outbound_ports, [25, 5432]);
        assert_eq!(pod.exclude_inbound_ports, [9090]);
        assert_eq!(
            pod.resources,
            json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}})
        );
        assert_eq!(
            for_pod(&cfg, &meta(json!({"other": "x"}))).expect("valid"),
            cfg
        );
    }

    #[test]
    fn a_value_that_does_not_parse_refuses_the_pod_naming_the_annotation() {
        let cfg = InjectConfig::default();
        for (name, value) in [
            (THREADS, "0"),
            (THREADS, "many"),
            (FQDN_MIN_TTL, "30"),
            (FQDN_MIN_TTL, "1000years"),
            (ENFORCEMENT, "off"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33"),
            (EXCLUDE_OUTBOUND_PORTS, "0"),
            (EXCLUDE_INBOUND_PORTS, "80,http"),
            (CPU_LIMIT, "lots"),
            (MEMORY_REQUEST, "64MB"),
        ] {
            let err = for_pod(&cfg, &meta(json!({name: value}))).expect_err(value);
            let text = err.to_string();
            assert!(text.contains(name) && text.contains(value), "{text}");
        }
        let err = for_pod(&cfg, &meta(json!({THREADS: 2}))).expect_err("a number");
        assert!(err.to_string().contains("a string"), "{err}");
    }

    #[test]
    fn exclusions_and_audit_by_pod_can_be_turned_off_for_the_cluster() {
        let cfg = InjectConfig {
            allow_pod_exclusions: false,
            allow_pod_audit: false,
            ..InjectConfig::default()
        };
        let err = for_pod(&cfg, &meta(json!({ENFORCEMENT: "audit"}))).expect_err("turned off");
        assert!(err.to_string().contains("allowPodAudit"), "{err}");
        assert!(
            for_pod(
                &InjectConfig::default(),
                &meta(json!({ENFORCEMENT: "audit"}))
            )
            .is_ok()
        );
        let err =
            for_pod(&cfg, &meta(json!({EXCLUDE_OUTBOUND_PORTS: "5432"}))).expect_err("turned off");
        assert!(err.to_string().contains("allowPodExclusions"), "{err}");
        assert!(for_pod(&cfg, &meta(json!({THREADS: "2"}))).is_ok());
    }

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        for ok in ["1", "0.5", "100m", "64Mi", "1Gi", "1e3", "+2", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "64MB", "1.2.3", "-1", "1e", "ten", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
