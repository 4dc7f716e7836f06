//! Sidecar injection: what the admission webhook and `podwall inject` add to a pod template.
//!
//! For a pod that asks for it (`podwall.io/inject: enabled`), injection adds:
//! - the init container `podwall-init` (`podwall proxy init`, NET_ADMIN and NET_RAW only, every
//!   other capability dropped) that installs the pod's redirect rules;
//! - the sidecar `podwall-proxy` (`podwall proxy run --policy-source control:ADDR`), as a native
//!   sidecar (an init container with `restartPolicy: Always`, so it starts before the app and
//!   stops after it) unless the configuration says the cluster is older than 1.29, else as a
//!   regular container; it runs as root with NET_ADMIN and NET_BIND_SERVICE only (NET_ADMIN lets
//!   it mark its sockets, which is what the init rules exempt), with its pod name and namespace
//!   from the downward API, a projected service-account token for audience `podwall`, probes on
//!   the admin port, and resources from the configuration;
//! - `NET_RAW` dropped from every app container: with it an app could mark its sockets as the
//!   sidecar's, or write frames below every rule of the pod (`AF_PACKET`). A pod annotated
//!   `podwall.io/allow-net-raw: "true"` keeps it, and is told it is not protected;
//! - the pod sysctls `net.ipv4.ping_group_range` (ping without NET_RAW) and
//!   `net.ipv4.ip_local_reserved_ports` (the sidecar's ports, from Kubernetes 1.27);
//! - the annotation `podwall.io/status: injected`, which makes injection idempotent.
//!
//! It refuses pods that would defeat enforcement: an app container (init and ephemeral ones
//! too) with NET_ADMIN or ALL, privileged, adding NET_RAW without the annotation, or running as
//! the proxy's uid or group (capability names compared as runtimes read them: any case, with or
//! without `CAP_`); and a pod that brings containers named as podwall's, or the status
//! annotation, that are not what injection adds. hostNetwork pods are skipped: they share the
//! node's network and no sidecar can own their traffic.

pub mod pod_settings;
pub mod uninject;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The annotation that asks for the sidecar.
pub const INJECT_ANNOTATION: &str = "podwall.io/inject";
/// Set on injected pods.
pub const STATUS_ANNOTATION: &str = "podwall.io/status";
/// The sidecar container's name (a native sidecar in `initContainers`, or a container).
pub const SIDECAR: &str = "podwall-proxy";
/// The init container's name.
pub const INIT: &str = "podwall-init";
/// The annotation with which a pod keeps NET_RAW in its app containers, and so runs without the
/// protection podwall promises (docs/limits.md).
pub const ALLOW_NET_RAW_ANNOTATION: &str = "podwall.io/allow-net-raw";
const TOKEN_VOLUME: &str = "podwall-token";
const TOKEN_DIR: &str = "/var/run/secrets/podwall";
/// Where the init container saves the pod's resolv.conf and hosts file for the sidecar
/// (`proxy init --save-pod-files`, `proxy run --pod-files`): an emptyDir that no app container
/// mounts, so a sidecar that starts again after the app does reads the kubelet's files, not
/// what the app made of them.
const POD_FILES_VOLUME: &str = "podwall-pod-files";
const POD_FILES_DIR: &str = "/var/run/podwall/pod-files";

/// What injection adds, from configuration (`--inject-config FILE`, YAML; every field optional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectConfig {
    /// The podwall image (one binary for init, sidecar and control plane).
    pub image: String,
    /// `IfNotPresent`, `Always`, `Never`.
    pub image_pull_policy: String,
    /// Where sidecars reach the control plane's feed (`HOST:PORT`).
    pub control_plane: String,
    /// The uid (and gid) the sidecar runs as; never an app's.
    pub proxy_uid: i64,
    /// The sidecar's admin port (probes, metrics).
    pub admin_port: u16,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`, Kubernetes
    /// 1.29 and later) or as a regular container; unset: native, unless the control plane finds
    /// an older API server.
    pub native_sidecar: Option<bool>,
    /// Set `net.ipv4.ip_local_reserved_ports` on injected pods (a safe sysctl from Kubernetes
    /// 1.27); unset: yes, unless the control plane finds an older API server.
    pub reserve_ports: Option<bool>,
    /// Audit mode for every injected pod: would-be denials pass, logged as AUDIT.
    pub audit: bool,
    /// Which TCP connections the sidecar relays (`proxy init/run --l4-path`): `kernel` (the
    /// default: each new connection is judged on its first packet and the kernel carries the
    /// ones nothing must inspect) or `proxy` (every one through the proxy). The kernel path
    /// needs the packet filter.
    pub l4_path: L4Path,
    /// Judge UDP, SCTP and ping flows (NFQUEUE). Off only for nodes whose kernel lacks
    /// `xt_NFQUEUE`/`nfnetlink_queue`: those flows then pass unjudged, their policies NOT
    /// enforced.
    pub packet_filter: bool,
    /// Let connections only a toFQDNs rule allows pass when they carry no server name to check
    /// (SSH, SMTP, any protocol that is neither TLS nor HTTP). Off: refused, since on an
    /// address many names share any of them could be reached that way.
    pub allow_unnamed_fqdn_connections: bool,
    /// kube-proxy answers NodePorts only at the node addresses Node objects list (its
    /// `--nodeport-addresses` is set): the sidecars then judge other addresses with a
    /// NodePort's number as plain addresses (`--node-ports-only-at-listed-addresses`).
    pub node_ports_only_at_listed_addresses: bool,
    /// Outbound CIDRs the init rules leave alone.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Outbound ports the init rules leave alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports the init rules leave alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// The sidecar's `resources` (Kubernetes shape).
    pub resources: Value,
    /// The sidecar's log format: `json` or `text`.
    pub log_format: String,
    /// The audience of the sidecar's token.
    pub token_audience: String,
    /// The CA (PEM) sidecars verify the control plane with; unset: the feed is plain HTTP/2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_ca: Option<String>,
    /// Lifetime of the sidecar's token (the kubelet renews it).
    pub token_expiration_seconds: i64,
    /// The sidecar's `--fqdn-min-ttl` (a duration, `30s`); unset: the sidecar's default.
    #[serde(rename = "fqdnMinTTL", skip_serializing_if = "Option::is_none")]
    pub fqdn_min_ttl: Option<String>,
    /// The sidecar's `--threads`; unset: the sidecar's default (one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u16>,
    /// Whether a pod may add exclusions of its own by annotation
    /// (`podwall.io/exclude-outbound-cidrs` and the port lists, see [`pod_settings`]).
    pub allow_pod_exclusions: bool,
    /// Whether a pod may put itself in audit mode (`podwall.io/enforcement: audit`).
    pub allow_pod_audit: bool,
}

/// The sidecar's path for TCP (see `docs/l4-path.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Path {
    /// Judged on the first packet; the proxy takes only what must be inspected.
    #[default]
    Kernel,
    /// Every connection through the proxy.
    Proxy,
}

impl InjectConfig {
    /// The path TCP takes: the kernel path needs the packet filter's queue, so without it every
    /// connection goes through the proxy.
    pub fn effective_l4_path(&self) -> L4Path {
        if self.packet_filter {
            self.l4_path
        } else {
            L4Path::Proxy
        }
    }

    /// The flags that init and sidecar must agree on: the path, and one judge queue per
    /// sidecar thread.
    fn shared_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if self.effective_l4_path() == L4Path::Kernel {
            flags.push("--l4-path=kernel".to_string());
        }
        if let Some(threads) = self.threads.filter(|t| *t > 1 && self.packet_filter) {
            flags.push(format!("--packet-queues={threads}"));
        }
        flags
    }

    /// Fills what configuration left unset from the API server's version: native sidecars
    /// (`restartPolicy: Always` on an init container) need 1.29; the reserved-ports sysctl is
    /// safe (allowed by every kubelet) from 1.27. A minor that does not read as a number
    /// (`"28+"` does) counts as new. Returns the two choices.
    pub fn fill_from_version(&mut self, major: &str, minor: &str) -> (bool, bool) {
        let minor: u32 = minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
        let at_least = |m: u32| major != "1" || minor >= m;
        let native = *self.native_sidecar.get_or_insert(at_least(29));
        let reserve = *self.reserve_ports.get_or_insert(at_least(27));
        (native, reserve)
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: "ghcr.io/podwall/podwall:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            // The chart's Service, installed as the docs do (release podwall, podwall-system).
            control_plane: "podwall.podwall-system.svc:15010".into(),
            proxy_uid: 1337,
            admin_port: 15020,
            native_sidecar: None,
            reserve_ports: None,
            audit: false,
            l4_path: L4Path::default(),
            packet_filter: true,
            allow_unnamed_fqdn_connections: false,
            node_ports_only_at_listed_addresses: false,
            exclude_outbound_cidrs: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_inbound_ports: Vec::new(),
            resources: json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}),
            log_format: "json".into(),
            token_audience: crate::auth::token_review::AUDIENCE.into(),
            token_expiration_seconds: 3600,
            control_plane_ca: None,
            fqdn_min_ttl: None,
            threads: None,
            allow_pod_exclusions: true,
            allow_pod_audit: true,
        }
    }
}

/// Why a pod must not get the sidecar as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// An app container runs as the proxy's uid.
    #[error(
        "container {container:?} ({field}) runs as uid {uid}, the podwall proxy's uid: run it as another uid"
    )]
    RunsAsProxyUid {
        /// The container.
        container: String,
        /// Where it says so (`spec.containers[0].securityContext.runAsUser`).
        field: String,
        /// The uid.
        uid: i64,
    },
    /// An app container runs in the proxy's group.
    #[error(
        "container {container:?} ({field}) runs as gid {gid}, the podwall proxy's group: run it in another group"
    )]
    RunsAsProxyGid {
        /// The container.
        container: String,
        /// Where it says so.
        field: String,
        /// The gid.
        gid: i64,
    },
    /// An app container could remove the pod's rules, or act as the sidecar.
    #[error(
        "container {container:?} has {what} ({field}): it could {why} (drop it, or do not inject this pod)"
    )]
    CanDefeatSidecar {
        /// The container.
        container: String,
        /// Where it says so.
        field: String,
        /// `the NET_ADMIN capability`, `privileged: true`, ...
        what: String,
        /// What it could do with it.
        why: &'static str,
    },
    /// A pod-level setting that would let the app reach around the sidecar.
    #[error("the pod sets {field}: {why} (remove it, or do not inject this pod)")]
    PodSetting {
        /// The field.
        field: String,
        /// What it allows.
        why: &'static str,
    },
    /// An app container asks for NET_RAW, which lets it mark its sockets as the sidecar's and
    /// send and receive frames below every rule of the pod.
    #[error(
        "container {container:?} adds the NET_RAW capability ({field}): with it an app can mark its sockets as the sidecar's and send frames below the pod's rules, so podwall cannot protect the pod; drop it (ping works without it), or annotate the pod {ALLOW_NET_RAW_ANNOTATION}: \"true\" to accept that"
    )]
    KeepsNetRaw {
        /// The container.
        container: String,
        /// Where it says so.
        field: String,
    },
    /// The pod brings a container named as podwall's own that is not what injection adds, or
    /// says it was injected without being so.
    #[error(
        "{what} is not what podwall injects ({why}): a pod may not bring its own, or it would look protected without being so"
    )]
    NotTheSidecar {
        /// The container or annotation.
        what: String,
        /// What differs.
        why: String,
    },
    /// The object is not a pod template podwall knows how to find.
    #[error("{0}")]
    NotAWorkload(String),
    /// A pod of a namespace that requires the sidecar asks not to have it.
    #[error(
        "its namespace is labelled podwall.io/inject=required: every pod there gets the podwall sidecar, and podwall.io/inject: disabled is refused"
    )]
    OptOutRefused,
    /// A per-pod setting's annotation whose value does not parse (see [`pod_settings`]).
    #[error("annotation {annotation} is {value:?}: it must be {expected}")]
    Annotation {
        /// The annotation.
        annotation: String,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A pod spec field of the wrong shape (the API server would refuse the pod).
    #[error("{field} must be {expected}")]
    Malformed {
        /// Where (`spec.containers`).
        field: String,
        /// What it must be.
        expected: &'static str,
    },
}

/// The shape injection relies on, as the API server checks it: an object spec whose
/// `containers` is a non-empty list of named containers, and whose other lists are lists.
fn check_shape(metadata: &Value, spec: &Value) -> Result<(), InjectError> {
    let malformed = |field: &str, expected| {
        Err(InjectError::Malformed {
            field: field.into(),
            expected,
        })
    };
    if !metadata.is_object() && !metadata.is_null() {
        return malformed("metadata", "an object");
    }
    if !spec.is_object() {
        return malformed("spec", "an object");
    }
    match spec.get("containers") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, c) in list.iter().enumerate() {
                if !c.get("name").is_some_and(Value::is_string) {
                    return malformed(&format!("spec.containers[{i}]"), "a container with a name");
                }
            }
        }
        _ => return malformed("spec.containers", "a list of at least one container"),
    }
    for list in ["initContainers", "ephemeralContainers", "volumes"] {
        if spec
            .get(list)
            .is_some_and(|v| !v.is_array() && !v.is_null())
        {
            return malformed(&format!("spec.{list}"), "a list");
        }
    }
    Ok(())
}

/// What injection did to one pod template.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// Already injected; nothing changed.
    AlreadyInjected,
    /// Not injected, and why (logged as a warning when the pod asked for it).
    Skipped(String),
}

/// Whether the pod says it was injected (`podwall.io/status: injected`): whatever the
/// injection config of its time, its app containers answer to podwall's checks.
pub fn says_injected(metadata: &Value) -> bool {
    metadata["annotations"][STATUS_ANNOTATION].as_str() == Some("injected")
}

/// Podwall's two containers of a pod spec, wherever they are, as they are.
pub fn podwall_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|l| spec[*l].as_array())
        .flatten()
        .filter(|c| matches!(c["name"].as_str(), Some(SIDECAR | INIT)))
        .collect()
}

/// Whether the pod template's metadata asks for the sidecar.
pub fn asks_for_sidecar(metadata: &Value) -> bool {
    metadata["annotations"][INJECT_ANNOTATION].as_str() == Some("enabled")
}

/// Capabilities no app container of a protected pod may add, and why.
const FORBIDDEN_CAPABILITIES: [(&str, &str); 6] = [
    ("ALL", "remove podwall's redirect rules"),
    ("NET_ADMIN", "remove podwall's redirect rules"),
    (
        "SYS_ADMIN",
        "enter other namespaces, mount and load programs below the pod's rules",
    ),
    ("BPF", "load programs below the pod's rules"),
    ("SYS_MODULE", "load kernel modules"),
    (
        "SYS_PTRACE",
        "take the sidecar's sockets (pidfd_getfd) where it can see its process",
    ),
];

/// The capabilities a `capabilities.add` or `.drop` list names, as runtimes read them.
fn capabilities(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(capability).collect())
        .unwrap_or_default()
}

/// A capability as container runtimes read it: upper case, with or without `CAP_`.
fn capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// Whether the pod accepts running with NET_RAW in its app containers (and so without the
/// protection podwall promises).
pub fn allows_net_raw(metadata: &Value) -> bool {
    metadata["annotations"][ALLOW_NET_RAW_ANNOTATION].as_str() == Some("true")
}

/// The app containers of a pod spec (podwall's own left out), with their field path.
fn app_containers(spec: &Value) -> impl Iterator<Item = (String, &Value)> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .filter_map(move |list| Some((list, spec.get(list)?.as_array()?)))
        .flat_map(|(list, cs)| {
            cs.iter()
                .enumerate()
                .map(move |(i, c)| (format!("spec.{list}[{i}]"), c))
        })
        .filter(|(_, c)| !matches!(c["name"].as_str(), Some(SIDECAR | INIT)))
}

/// Refuses one app container that could defeat enforcement: the proxy's ids, privileged,
/// NET_ADMIN or ALL, and NET_RAW unless the pod accepts it.
pub fn check_app_container(
    field: &str,
    c: &Value,
    pod_security: &Value,
    cfg: &InjectConfig,
    allow_net_raw: bool,
) -> Result<(), InjectError> {
    let container = c["name"].as_str().unwrap_or("?").to_string();
    let sc = &c["securityContext"];
    // The container's own setting wins over the pod's: name the one that applies.
    let setting = |key: &str| match sc[key].as_i64() {
        Some(v) => Some((format!("{field}.securityContext.{key}"), v)),
        None => pod_security[key]
            .as_i64()
            .map(|v| (format!("spec.securityContext.{key}"), v)),
    };
    if let Some((field, uid)) = setting("runAsUser")
        && uid == cfg.proxy_uid
    {
        return Err(InjectError::RunsAsProxyUid {
            container,
            field,
            uid,
        });
    }
    if let Some((field, gid)) = setting("runAsGroup")
        && gid == cfg.proxy_uid
    {
        return Err(InjectError::RunsAsProxyGid {
            container,
            field,
            gid,
        });
    }
    if sc["privileged"].as_bool() == Some(true) {
        return Err(InjectError::CanDefeatSidecar {
            container,
            field: format!("{field}.securityContext.privileged"),
            what: "privileged: true".into(),
            why: "remove podwall's redirect rules",
        });
    }
    // podwall's volumes are the init container's and the sidecar's alone: the token names
    // the pod to the control plane, and the saved name files say whom the sidecar believes.
    for list in ["volumeMounts", "volumeDevices"] {
        let ours = c[list].as_array().and_then(|m| {
            m.iter().enumerate().find_map(|(i, m)| {
                m["name"]
                    .as_str()
                    .filter(|n| [TOKEN_VOLUME, POD_FILES_VOLUME].contains(n))
                    .map(|n| (i, n.to_string()))
            })
        });
        if let Some((i, volume)) = ours {
            return Err(InjectError::CanDefeatSidecar {
                container,
                field: format!("{field}.{list}[{i}]"),
                what: format!("podwall's volume {volume:?}"),
                why: "read the sidecar's token, or rewrite the resolvers and control plane address it trusts",
            });
        }
    }
    let adds = capabilities(&sc["capabilities"]["add"]);
    let add_field = format!("{field}.securityContext.capabilities.add");
    if let Some((cap, why)) = adds
        .iter()
        .find_map(|c| FORBIDDEN_CAPABILITIES.iter().find(|(f, _)| f == c))
    {
        return Err(InjectError::CanDefeatSidecar {
            container,
            field: add_field,
            what: format!("the {cap} capability"),
            why,
        });
    }
    if !allow_net_raw && adds.iter().any(|c| c == "NET_RAW") {
        return Err(InjectError::KeepsNetRaw {
            container,
            field: add_field,
        });
    }
    Ok(())
}

fn check_containers(
    spec: &Value,
    cfg: &InjectConfig,
    allow_net_raw: bool,
) -> Result<(), InjectError> {
    if spec["hostPID"].as_bool() == Some(true) {
        return Err(InjectError::PodSetting {
            field: "spec.hostPID: true".into(),
            why: "its containers would see the node's processes, and with them other pods' sidecars and network namespaces",
        });
    }
    let pod_security = &spec["securityContext"];
    for (field, c) in app_containers(spec) {
        check_app_container(&field, c, pod_security, cfg, allow_net_raw)?;
    }
    Ok(())
}

/// Drops NET_RAW from a container (unless it drops it, or everything, already): without it an
/// app cannot mark its sockets as the sidecar's nor write frames below the pod's rules.
pub fn drop_net_raw(container: &mut Value) {
    let Some(c) = container.as_object_mut() else {
        return;
    };
    let sc = c.entry("securityContext").or_insert_with(|| json!({}));
    if !sc.is_object() {
        *sc = json!({});
    }
    let caps = &mut sc["capabilities"];
    if !caps.is_object() {
        *caps = json!({});
    }
    let drop = &mut caps["drop"];
    if !drop.is_array() {
        *drop = json!([]);
    }
    if let Value::Array(list) = drop
        && !list
            .iter()
            .filter_map(Value::as_str)
            .map(capability)
            .any(|c| c == "NET_RAW" || c == "ALL")
    {
        list.push(json!("NET_RAW"));
    }
}

/// Whether the spec holds podwall's containers, and whether they are what injection with
/// `cfg` adds: `Ok(false)` for neither (nor the status annotation), `Ok(true)` when the
/// status annotation says so and `podwall-init` is the first init container and the sidecar
/// the second (a native sidecar) or a container, each as injection writes it; an error naming
/// what is off otherwise. A container named as the sidecar that sleeps, runs a hook or an exec
/// probe, mounts something over the binary, or an init container that removes the rules,
/// would make an unprotected pod look protected.
///
/// What the API server and other webhooks may change is let through: fields the API server
/// defaults (probe timeouts, `terminationMessage*`, the env's `fieldRef.apiVersion`), the
/// image pinned by digest or tagged otherwise in the same repository, `resources`,
/// `imagePullPolicy`, and seccomp, AppArmor and SELinux settings.
pub fn genuine_injection(
    metadata: &Value,
    spec: &Value,
    cfg: &InjectConfig,
) -> Result<bool, InjectError> {
    let inits = spec["initContainers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let named = |name: &str| {
        ["initContainers", "containers", "ephemeralContainers"]
            .iter()
            .filter_map(|l| spec[*l].as_array())
            .flatten()
            .any(|c| c["name"] == name)
    };
    let status = metadata["annotations"][STATUS_ANNOTATION].as_str();
    if !named(INIT) && !named(SIDECAR) && status.is_none() {
        return Ok(false);
    }
    // What was injected followed the pod's own settings (read only now: a pod that neither
    // asks nor has podwall's containers answers to none of podwall's annotations).
    let cfg = &pod_settings::for_pod(cfg, metadata)?;
    let off = |what: &str, why: String| InjectError::NotTheSidecar {
        what: what.to_string(),
        why,
    };
    if status != Some("injected") {
        return Err(off(
            &format!("annotation {STATUS_ANNOTATION}"),
            format!("the pod has podwall's containers but {STATUS_ANNOTATION} is {status:?}"),
        ));
    }
    let init_what = format!("container {INIT:?}");
    let Some(init) = inits.first().filter(|c| c["name"] == INIT) else {
        return Err(off(
            &init_what,
            "it must be the first init container (the rules before anything else runs)".into(),
        ));
    };
    fits(&init_container(cfg), init, "").map_err(|why| off(&init_what, why))?;
    let sidecar_what = format!("container {SIDECAR:?}");
    let (found, mut expected) = match (
        inits.get(1).filter(|c| c["name"] == SIDECAR),
        containers.iter().find(|c| c["name"] == SIDECAR),
    ) {
        (Some(native), _) => {
            let mut e = sidecar_container(cfg);
            e["restartPolicy"] = json!("Always");
            (native, e)
        }
        (None, Some(regular)) => (regular, sidecar_container(cfg)),
        (None, None) => {
            return Err(off(
                &sidecar_what,
                "it must be the second init container (a native sidecar) or a container".into(),
            ));
        }
    };
    // The sidecar's CA comes from the injection config of its time; its presence is checked.
    if let (Some(e), Some(a)) = (expected["env"].as_array_mut(), found["env"].as_array()) {
        for (want, have) in e.iter_mut().zip(a) {
            if want["name"] == "PODWALL_CONTROL_CA" && have["name"] == "PODWALL_CONTROL_CA" {
                *want = have.clone();
            }
        }
    }
    fits(&expected, found, "").map_err(|why| off(&sidecar_what, why))?;
    // And the volumes they mount are podwall's kind: not a Secret, a hostPath or a claim
    // another writer shares under the same name (their settings may be defaulted).
    for expected in volumes(cfg) {
        let name = expected["name"].as_str().unwrap_or_default();
        let what = format!("volume {name:?}");
        let Some(found) = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
        else {
            return Err(off(&what, "it is missing".into()));
        };
        let kinds = |v: &Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().filter(|k| *k != "name").cloned().collect())
                .unwrap_or_default()
        };
        let only_tokens = found["projected"]["sources"].as_array().is_none_or(|s| {
            s.iter().all(|s| {
                s.as_object()
                    .is_some_and(|o| o.keys().all(|k| k == "serviceAccountToken"))
            })
        });
        if kinds(found) != kinds(&expected) || !only_tokens {
            return Err(off(
                &what,
                format!("it is {found}, not of the kind podwall injects ({expected})"),
            ));
        }
    }
    Ok(true)
}

/// Whether `actual` is `expected` up to what the API server and other webhooks may change
/// harmlessly (see [`genuine_injection`]); the first difference, by path, otherwise.
fn fits(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    // Fields another party may set or change without weakening the container.
    const FREE: [&str; 8] = [
        "resources",
        "imagePullPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "securityContext.seccompProfile",
        "securityContext.appArmorProfile",
        "securityContext.seLinuxOptions",
        "securityContext.capabilities.drop",
    ];
    // Fields the API server fills in when absent.
    const DEFAULTED: [&str; 4] = ["timeoutSeconds", "successThreshold", "scheme", "apiVersion"];
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in a {
                let here = at(key);
                if FREE.contains(&here.as_str()) || (value.is_null() && !e.contains_key(key)) {
                    continue;
                }
                match e.get(key) {
                    Some(want) => fits(want, value, &here)?,
                    None if DEFAULTED.contains(&key.as_str()) => {}
                    None => return Err(format!("it sets {here}, which podwall does not")),
                }
            }
            for key in e.keys() {
                let here = at(key);
                if !a.contains_key(key) && !FREE.contains(&here.as_str()) {
                    return Err(format!("{here} is missing"));
                }
            }
            if path == "securityContext"
                && !capabilities(&actual["capabilities"]["drop"]).contains(&"ALL".to_string())
            {
                return Err("securityContext.capabilities.drop must hold ALL".into());
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (e, a))| fits(e, a, &format!("{path}[{i}]"))),
        (Value::String(e), Value::String(a)) if path == "image" => {
            if same_repository(e, a) {
                Ok(())
            } else {
                Err(format!("image {a:?} is not from {e:?}'s repository"))
            }
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path} is {a}, not {e}")),
    }
}

/// Whether two image references name the same repository (any tag or digest).
fn same_repository(a: &str, b: &str) -> bool {
    fn repository(image: &str) -> &str {
        let name = image.split('@').next().unwrap_or(image);
        // A tag follows the last ':' after the last '/' (a registry port precedes it).
        match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => &name[..i],
            _ => name,
        }
    }
    repository(a) == repository(b)
}

fn init_container(cfg: &InjectConfig) -> Value {
    let mut args = vec![
        "proxy".to_string(),
        "init".into(),
        format!("--admin-port={}", cfg.admin_port),
        format!("--save-pod-files={POD_FILES_DIR}"),
    ];
    if !cfg.packet_filter {
        args.push("--no-packet-filter".into());
    }
    args.extend(cfg.shared_flags());
    if !cfg.exclude_outbound_cidrs.is_empty() {
        args.push(format!(
            "--exclude-outbound-cidrs={}",
            cfg.exclude_outbound_cidrs.join(",")
        ));
    }
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    if !cfg.exclude_outbound_ports.is_empty() {
        args.push(format!(
            "--exclude-outbound-ports={}",
            join(&cfg.exclude_outbound_ports)
        ));
    }
    if !cfg.exclude_inbound_ports.is_empty() {
        args.push(format!(
            "--exclude-inbound-ports={}",
            join(&cfg.exclude_inbound_ports)
        ));
    }
    json!({
        "name": INIT,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "args": args,
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "volumeMounts": [{"name": POD_FILES_VOLUME, "mountPath": POD_FILES_DIR}],
    })
}

/// The volumes injection adds: the sidecar's projected token, and the emptyDir for the pod's
/// name files as init saw them.
fn volumes(cfg: &InjectConfig) -> [Value; 2] {
    [
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.token_audience, "expirationSeconds": cfg.token_expiration_seconds, "path": "token"}}]}}),
        json!({"name": POD_FILES_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ]
}

fn sidecar_container(cfg: &InjectConfig) -> Value {
    let mut args = vec![
        "proxy".to_string(),
        "run".into(),
        format!("--policy-source=control:{}", cfg.control_plane),
        format!("--token-file={TOKEN_DIR}/token"),
        format!("--admin-port={}", cfg.admin_port),
        format!("--pod-files={POD_FILES_DIR}"),
    ];
    if cfg.audit {
        args.push("--audit".into());
    }
    if cfg.allow_unnamed_fqdn_connections {
        args.push("--allow-unnamed-fqdn-connections".into());
    }
    if cfg.node_ports_only_at_listed_addresses {
        args.push("--node-ports-only-at-listed-addresses".into());
    }
    if !cfg.packet_filter {
        args.push("--no-packet-filter".into());
    }
    if let Some(ttl) = &cfg.fqdn_min_ttl {
        args.push(format!("--fqdn-min-ttl={ttl}"));
    }
    if let Some(threads) = cfg.threads {
        args.push(format!("--threads={threads}"));
    }
    args.extend(cfg.shared_flags());
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": cfg.admin_port}, "periodSeconds": 5, "failureThreshold": 3});
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mut env = vec![];
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let mut e = field(path);
        e["name"] = json!(name);
        env.push(e);
    }
    env.push(json!({"name": "PODWALL_LOG_FORMAT", "value": cfg.log_format}));
    if let Some(ca) = &cfg.control_plane_ca {
        env.push(json!({"name": "PODWALL_CONTROL_CA", "value": ca}));
    }
    json!({
        "name": SIDECAR,
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "args": args,
        "env": env,
        "ports": [{"name": "podwall-admin", "containerPort": cfg.admin_port, "protocol": "TCP"}],
        // The sidecar holds no policy until its feed answers: it must be ready before the app
        // sends anything, and the startup probe keeps the app waiting until then.
        "startupProbe": {"httpGet": {"path": "/ready", "port": cfg.admin_port}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": probe("/ready"),
        "livenessProbe": probe("/live"),
        "resources": cfg.resources,
        "securityContext": {
            // Root, because Kubernetes hands added capabilities to no non-root process (no
            // ambient capabilities): as uid 1337 the sidecar would have none. The init rules
            // exempt the mark on its sockets (which NET_ADMIN lets it set), not its ids; every
            // other capability is dropped. Istio runs its TPROXY-mode sidecar the same way.
            "runAsUser": 0, "runAsGroup": cfg.proxy_uid, "runAsNonRoot": false,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            // NET_ADMIN: the packet filter (NFQUEUE, conntrack) and transparent DNS reply
            // sockets; NET_BIND_SERVICE: answering from port 53.
            "capabilities": {"add": ["NET_ADMIN", "NET_BIND_SERVICE"], "drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": POD_FILES_VOLUME, "mountPath": POD_FILES_DIR, "readOnly": true},
        ],
    })
}

/// What injection changes in the app's part of the pod: NET_RAW dropped from every app
/// container (unless the pod accepts keeping it), and the sysctls.
fn harden(spec: &mut Value, cfg: &InjectConfig, allow_net_raw: bool) {
    if !allow_net_raw {
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = spec.get_mut(list) {
                cs.iter_mut()
                    .filter(|c| !matches!(c["name"].as_str(), Some(SIDECAR | INIT)))
                    .for_each(drop_net_raw);
            }
        }
    }
    add_sysctls(spec, cfg);
}

/// The pod sysctls injection sets (both namespaced and "safe": kubelets allow them without
/// configuration): ping through ICMP datagram sockets for every group, since the apps lose
/// NET_RAW; and the sidecar's ports reserved from outgoing connections (from Kubernetes 1.27),
/// added to what the pod reserves itself.
fn add_sysctls(spec: &mut Value, cfg: &InjectConfig) {
    let ports = [
        SIDECAR_PORTS[0],
        SIDECAR_PORTS[1],
        SIDECAR_PORTS[2],
        cfg.admin_port,
    ];
    let Some(spec_map) = spec.as_object_mut() else {
        return;
    };
    let sc = spec_map
        .entry("securityContext")
        .or_insert_with(|| json!({}));
    if !sc.is_object() {
        *sc = json!({});
    }
    if !sc["sysctls"].is_array() {
        sc["sysctls"] = json!([]);
    }
    let Some(sysctls) = sc["sysctls"].as_array_mut() else {
        return;
    };
    let position =
        |sysctls: &Vec<Value>, name: &str| sysctls.iter().position(|s| s["name"] == name);
    if position(sysctls, PING_GROUP_RANGE).is_none() {
        sysctls.push(json!({"name": PING_GROUP_RANGE, "value": "0 2147483647"}));
    }
    if cfg.reserve_ports.unwrap_or(true) {
        match position(sysctls, RESERVED_PORTS) {
            Some(i) => {
                let current = sysctls[i]["value"].as_str().unwrap_or_default().to_string();
                let mut parts: Vec<String> = current
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect();
                for p in ports {
                    if !parts.iter().any(|x| *x == p.to_string()) {
                        parts.push(p.to_string());
                    }
                }
                sysctls[i]["value"] = json!(parts.join(","));
            }
            None => {
                let mut ports = ports.to_vec();
                ports.sort_unstable();
                ports.dedup();
                let value: Vec<String> = ports.iter().map(u16::to_string).collect();
                sysctls.push(json!({"name": RESERVED_PORTS, "value": value.join(",")}));
            }
        }
    }
}

/// The sidecar's outbound, inbound and DNS ports (`proxy run`'s defaults, which injection
/// keeps).
const SIDECAR_PORTS: [u16; 3] = [15001, 15006, 15053];
const PING_GROUP_RANGE: &str = "net.ipv4.ping_group_range";
const RESERVED_PORTS: &str = "net.ipv4.ip_local_reserved_ports";

fn push(spec: &mut Map<String, Value>, list: &str, item: Value, front: bool) {
    let entry = spec
        .entry(list.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    if let Value::Array(a) = entry {
        if front {
            a.insert(0, item);
        } else {
            a.push(item);
        }
    }
}

/// Injects into one pod template (`metadata` and `spec`), whether or not it asks for it.
pub fn inject_template(
    metadata: &mut Value,
    spec: &mut Value,
    cfg: &InjectConfig,
) -> Result<Outcome, InjectError> {
    check_shape(metadata, spec)?;
    let allow_net_raw = allows_net_raw(metadata);
    let genuine = genuine_injection(metadata, spec, cfg)?;
    let cfg = &pod_settings::for_pod(cfg, metadata)?;
    pod_settings::check_observe_http(metadata, spec)?;
    if spec["hostNetwork"].as_bool() == Some(true) {
        if genuine {
            return Err(InjectError::PodSetting {
                field: "spec.hostNetwork: true".into(),
                why: "podwall's init container would install its rules in the node's network namespace",
            });
        }
        return Ok(Outcome::Skipped(
            "hostNetwork pods share the node's network: no sidecar can own their traffic, so podwall cannot protect them".into(),
        ));
    }
    if genuine {
        // Reinvoked (a later webhook may have added containers), or injected offline: the app
        // containers still answer to the checks and lose NET_RAW, and the pod keeps its
        // sysctls.
        check_containers(spec, cfg, allow_net_raw)?;
        harden(spec, cfg, allow_net_raw);
        return Ok(Outcome::AlreadyInjected);
    }
    check_containers(spec, cfg, allow_net_raw)?;
    harden(spec, cfg, allow_net_raw);
    let Some(spec_map) = spec.as_object_mut() else {
        return Err(InjectError::NotAWorkload("spec is not an object".into()));
    };
    // Order: the rules first, then the sidecar (ready before anything else starts), then the
    // app's own init containers, whose traffic is then already enforced.
    if cfg.native_sidecar.unwrap_or(true) {
        let mut sidecar = sidecar_container(cfg);
        sidecar["restartPolicy"] = json!("Always");
        push(spec_map, "initContainers", sidecar, true);
    } else {
        push(spec_map, "containers", sidecar_container(cfg), false);
    }
    push(spec_map, "initContainers", init_container(cfg), true);
    for volume in volumes(cfg) {
        push(spec_map, "volumes", volume, false);
    }
    let Some(meta) = metadata.as_object_mut() else {
        return Err(InjectError::NotAWorkload(
            "metadata is not an object".into(),
        ));
    };
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    annotations[STATUS_ANNOTATION] = json!("injected");
    // Kubelet's probes come from the node, which policy always allows: no probe rewriting.
    Ok(Outcome::Injected)
}

/// Where a kind keeps its pod template: the JSON pointer of the template's object (whose
/// `metadata` and `spec` are the pod's), or `None` for kinds without one.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects into a workload object (offline, `podwall inject`): every kind with a pod template,
/// unless its pod template says `podwall.io/inject: disabled`. Other kinds pass unchanged.
pub fn inject_object(object: &mut Value, cfg: &InjectConfig) -> Result<Outcome, InjectError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(Outcome::Skipped(format!("{kind} has no pod template")));
    };
    let Some(template) = object.pointer_mut(pointer) else {
        return Err(InjectError::NotAWorkload(format!(
            "{kind} without {pointer}"
        )));
    };
    let Some(t) = template.as_object_mut() else {
        return Err(InjectError::NotAWorkload(format!(
            "{kind}: {pointer} is not an object"
        )));
    };
    let mut metadata = t.remove("metadata").unwrap_or_else(|| json!({}));
    let mut spec = t.remove("spec").unwrap_or_else(|| json!({}));
    let outcome = if metadata["annotations"][INJECT_ANNOTATION].as_str() == Some("disabled") {
        Ok(Outcome::Skipped(format!(
            "its pod template says {INJECT_ANNOTATION}: disabled"
        )))
    } else {
        inject_template(&mut metadata, &mut spec, cfg)
    };
    if matches!(outcome, Ok(Outcome::Injected))
        && let Some(a) = metadata.get_mut("annotations")
    {
        // So that the webhook, if installed too, sees a pod that asked and got it.
        a[INJECT_ANNOTATION] = json!("enabled");
    }
    t.insert("metadata".into(), metadata);
    t.insert("spec".into(), spec);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_sidecars_from_1_29_and_reserved_ports_from_1_27_unless_configured() {
        let fill =
            |major: &str, minor: &str| InjectConfig::default().fill_from_version(major, minor);
        assert_eq!(fill("1", "31"), (true, true));
        assert_eq!(fill("1", "29"), (true, true));
        assert_eq!(
            fill("1", "28+"),
            (false, true),
            "a managed 1.28 (EKS writes 28+)"
        );
        assert_eq!(fill("1", "28"), (false, true));
        assert_eq!(fill("1", "27"), (false, true));
        assert_eq!(fill("1", "26"), (false, false));
        assert_eq!(fill("2", "0"), (true, true));
        assert_eq!(fill("1", "unknown"), (true, true));
        // What the operator configured stays.
        let mut configured = InjectConfig {
            native_sidecar: Some(true),
            reserve_ports: Some(false),
            ..InjectConfig::default()
        };
        assert_eq!(configured.fill_from_version("1", "26"), (true, false));
    }

    fn pod(extra_spec: Value) -> Value {
        let mut spec = json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "prod", "annotations": {INJECT_ANNOTATION: "enabled"}},
            "spec": spec})
    }

    #[test]
    fn a_pod_gets_the_init_rules_and_a_native_sidecar_once() {
        let cfg = InjectConfig::default();
        let mut p = pod(json!({"initContainers": [{"name": "migrate", "image": "tool"}]}));
        assert_eq!(inject_object(&mut p, &cfg), Ok(Outcome::Injected));
        let inits: Vec<&str> = p["spec"]["initContainers"]
            .as_array()
            .expect("inits")
            .iter()
            .map(|c| c["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            inits,
            [INIT, SIDECAR, "migrate"],
            "rules, then the proxy, then the app's own"
        );
        let sidecar = &p["spec"]["initContainers"][1];
        assert_eq!(sidecar["restartPolicy"], "Always");
        // Root: the only way its capabilities take effect. No id exempts anything: the mark on
        // its sockets does.
        assert_eq!(sidecar["securityContext"]["runAsUser"], 0);
        assert_eq!(sidecar["securityContext"]["runAsGroup"], 1337);
        assert_eq!(
            sidecar["securityContext"]["capabilities"],
            json!({"add": ["NET_ADMIN", "NET_BIND_SERVICE"], "drop": ["ALL"]})
        );
        let init = &p["spec"]["initContainers"][0];
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert!(
            !init["args"]
                .as_array()
                .expect("args")
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with("--proxy-gid")))
        );
        assert!(sidecar["args"].as_array().expect("args").contains(&json!(
            "--policy-source=control:podwall.podwall-system.svc:15010"
        )));
        assert_eq!(
            sidecar["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            p["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "podwall"
        );
        assert_eq!(p["metadata"]["annotations"][STATUS_ANNOTATION], "injected");
        let once = p.clone();
        assert_eq!(inject_object(&mut p, &cfg), Ok(Outcome::AlreadyInjected));
        assert_eq!(p, once, "idempotent");
    }

    #[test]
    fn only_the_init_container_and_the_sidecar_share_the_pods_saved_name_files() {
        // The app may rewrite /etc/resolv.conf and /etc/hosts (the kubelet mounts them
        // writable): a sidecar that restarts reads the copies init saved before the app ran,
        // in a volume no app container mounts.
        let mut p = pod(json!({"initContainers": [{"name": "migrate", "image": "tool"}]}));
        assert_eq!(
            inject_object(&mut p, &InjectConfig::default()),
            Ok(Outcome::Injected)
        );
        let mounts_files = |c: &Value| {
            c["volumeMounts"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|m| m["name"] == POD_FILES_VOLUME && m["mountPath"] == POD_FILES_DIR)
            })
        };
        let args = |c: &Value| c["args"].as_array().cloned().unwrap_or_default();
        let spec = &p["spec"];
        let init = &spec["initContainers"][0];
        let sidecar = &spec["initContainers"][1];
        assert_eq!(init["name"], INIT);
        assert!(mounts_files(init));
        assert!(args(init).contains(&json!(format!("--save-pod-files={POD_FILES_DIR}"))));
        assert!(mounts_files(sidecar));
        assert!(
            sidecar["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["name"] == POD_FILES_VOLUME && m["readOnly"] == true),
            "the sidecar cannot change them either"
        );
        assert!(args(sidecar).contains(&json!(format!("--pod-files={POD_FILES_DIR}"))));
        for app in [&spec["initContainers"][2], &spec["containers"][0]] {
            assert!(!mounts_files(app), "{app}");
        }
        assert!(
            spec["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .any(|v| v["name"] == POD_FILES_VOLUME && v["emptyDir"].is_object())
        );
    }

    #[test]
    fn the_sidecar_gets_the_control_planes_ca_when_the_feed_is_tls() {
        let cfg = InjectConfig {
            control_plane_ca: Some("-----BEGIN CERTIFICATE-----\n...".into()),
            ..InjectConfig::default()
        };
        let mut p = pod(json!({}));
        assert_eq!(inject_object(&mut p, &cfg), Ok(Outcome::Injected));
        let env = p["spec"]["initContainers"][1]["env"]
            .as_array()
            .expect("env")
            .clone();
        assert!(
            env.iter().any(|e| e["name"] == "PODWALL_CONTROL_CA"
                && e["value"] == cfg.control_plane_ca.clone().expect("ca").as_str()),
            "{env:?}"
        );
        let mut plain = pod(json!({}));
        inject_object(&mut plain, &InjectConfig::default()).expect("injects");
        assert!(
            !plain.to_string().contains("PODWALL_CONTROL_CA"),
            "no CA, no TLS"
        );
    }

    #[test]
    fn without_native_sidecars_the_proxy_is_a_regular_container() {
        let cfg = InjectConfig {
            native_sidecar: Some(false),
            ..InjectConfig::default()
        };
        let mut p = pod(json!({}));
        assert_eq!(inject_object(&mut p, &cfg), Ok(Outcome::Injected));
        assert_eq!(p["spec"]["containers"][1]["name"], SIDECAR);
        assert!(p["spec"]["containers"][1].get("restartPolicy").is_none());
        assert_eq!(p["spec"]["initContainers"][0]["name"], INIT);
    }

    #[test]
    fn a_pod_spec_of_the_wrong_shape_is_refused_naming_the_field() {
        for (spec, field) in [
            (json!({"containers": "nginx"}), "spec.containers"),
            (json!({"containers": []}), "spec.containers"),
            (
                json!({"containers": [{"image": "nginx"}]}),
                "spec.containers[0]",
            ),
            (
                json!({"containers": [{"name": "app"}], "initContainers": "x"}),
                "spec.initContainers",
            ),
        ] {
            let mut p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": "prod"}, "spec": spec});
            match inject_object(&mut p, &InjectConfig::default()) {
                Err(InjectError::Malformed { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn unnamed_fqdn_connections_and_listed_node_ports_are_trusted_only_when_the_config_says_so() {
        let sidecar_args = |cfg: &InjectConfig| {
            let mut p = pod(json!({}));
            assert_eq!(inject_object(&mut p, cfg), Ok(Outcome::Injected));
            let sidecar = &p["spec"]["initContainers"][1];
            assert_eq!(sidecar["name"], SIDECAR);
            sidecar["args"].as_array().expect("args").clone()
        };
        for (field, flag) in [
            (
                "allowUnnamedFqdnConnections",
                "--allow-unnamed-fqdn-connections",
            ),
            (
                "nodePortsOnlyAtListedAddresses",
                "--node-ports-only-at-listed-addresses",
            ),
        ] {
            let flag = json!(flag);
            assert!(!sidecar_args(&InjectConfig::default()).contains(&flag));
            let cfg: InjectConfig = serde_json::from_value(json!({ field: true })).expect("config");
            assert!(sidecar_args(&cfg).contains(&flag), "{field}");
        }
    }

    #[test]
    fn the_packet_filter_is_turned_off_in_both_containers_together() {
        let off = InjectConfig {
            packet_filter: false,
            ..InjectConfig::default()
        };
        let mut unfiltered = pod(json!({}));
        assert_eq!(inject_object(&mut unfiltered, &off), Ok(Outcome::Injected));
        for (i, c) in [(0, INIT), (1, SIDECAR)] {
            let container = &unfiltered["spec"]["initContainers"][i];
            assert_eq!(container["name"], c);
            assert!(
                container["args"]
                    .as_array()
                    .expect("args")
                    .contains(&json!("--no-packet-filter")),
                "{c} must know the packet filter is off"
            );
        }
    }

    /// The args of podwall's init container and sidecar, after injecting `pod` with `cfg`.
    fn both_args(cfg: &InjectConfig, mut pod: Value) -> [Vec<String>; 2] {
        assert_eq!(inject_object(&mut pod, cfg), Ok(Outcome::Injected));
        [0, 1].map(|i| {
            pod["spec"]["initContainers"][i]["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect()
        })
    }

    #[test]
    fn init_and_sidecar_get_the_same_tcp_path_and_one_judge_queue_per_sidecar_thread() {
        // The default: the kernel path, one queue.
        for args in both_args(&InjectConfig::default(), pod(json!({}))) {
            assert!(args.contains(&"--l4-path=kernel".to_string()), "{args:?}");
            assert!(
                !args.iter().any(|a| a.starts_with("--packet-queues")),
                "{args:?}"
            );
        }
        let threads = InjectConfig {
            threads: Some(2),
            ..InjectConfig::default()
        };
        for args in both_args(&threads, pod(json!({}))) {
            assert!(args.contains(&"--packet-queues=2".to_string()), "{args:?}");
        }
        let proxy = InjectConfig {
            l4_path: L4Path::Proxy,
            ..InjectConfig::default()
        };
        for args in both_args(&proxy, pod(json!({}))) {
            assert!(!args.iter().any(|a| a.starts_with("--l4-path")), "{args:?}");
        }
        // Without the packet filter there is no judge: every connection through the proxy.
        let unfiltered = InjectConfig {
            packet_filter: false,
            threads: Some(4),
            ..InjectConfig::default()
        };
        for args in both_args(&unfiltered, pod(json!({}))) {
            assert!(!args.iter().any(|a| a.starts_with("--l4-path")), "{args:?}");
            assert!(
                !args.iter().any(|a| a.starts_with("--packet-queues")),
                "{args:?}"
            );
        }
        let config: InjectConfig = serde_json::from_str(r#"{"l4Path": "proxy"}"#).expect("config");
        assert_eq!(config.l4_path, L4Path::Proxy);
        assert!(serde_json::from_str::<InjectConfig>(r#"{"l4Path": "ebpf"}"#).is_err());
    }

    #[test]
    fn pods_that_would_defeat_enforcement_are_refused_and_host_network_skipped() {
        let cfg = InjectConfig::default();
        let mut as_proxy = pod(json!({"securityContext": {"runAsUser": 1337}}));
        assert!(matches!(
            inject_object(&mut as_proxy, &cfg),
            Err(InjectError::RunsAsProxyUid { uid: 1337, .. })
        ));
        let mut in_proxy_group = pod(json!({"securityContext": {"runAsGroup": 1337}}));
        assert!(matches!(
            inject_object(&mut in_proxy_group, &cfg),
            Err(InjectError::RunsAsProxyGid { gid: 1337, .. })
        ));
        let mut container_in_group = pod(json!({}));
        container_in_group["spec"]["containers"][0]["securityContext"] =
            json!({"runAsUser": 1000, "runAsGroup": 1337});
        let err = inject_object(&mut container_in_group, &cfg).expect_err("refused");
        assert!(err.to_string().contains("gid 1337"), "{err}");
        let mut net_admin = pod(json!({}));
        net_admin["spec"]["containers"][0]["securityContext"] =
            json!({"capabilities": {"add": ["NET_ADMIN"]}});
        let err = inject_object(&mut net_admin, &cfg).expect_err("refused");
        assert!(
            err.to_string()
                .contains("\"app\" has the NET_ADMIN capability"),
            "{err}"
        );
        let mut privileged = pod(json!({}));
        privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        assert!(inject_object(&mut privileged, &cfg).is_err());
        // An app container that mounts podwall's volumes (the webhook adds them before the
        // API server checks that each mount names a volume): the token, or the name files a
        // restarted sidecar trusts.
        for volume in [TOKEN_VOLUME, POD_FILES_VOLUME] {
            let mut mounts = pod(json!({}));
            mounts["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}, {"name": volume, "mountPath": "/x"}]);
            let err = inject_object(&mut mounts, &cfg).expect_err("refused");
            let said = err.to_string();
            assert!(
                said.contains(&format!("podwall's volume {volume:?}"))
                    && said.contains("spec.containers[0].volumeMounts[1]"),
                "{said}"
            );
        }
        let mut host = pod(json!({"hostNetwork": true}));
        assert!(matches!(
            inject_object(&mut host, &cfg),
            Ok(Outcome::Skipped(why)) if why.contains("hostNetwork")
        ));
        assert!(
            host["spec"].get("initContainers").is_none(),
            "left unchanged"
        );
    }

    #[test]
    fn every_workload_kind_has_its_template_injected() {
        let cfg = InjectConfig::default();
        let template = json!({"metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}});
        for (kind, pointer) in [
            ("Deployment", "/spec/template"),
            ("StatefulSet", "/spec/template"),
            ("DaemonSet", "/spec/template"),
            ("ReplicaSet", "/spec/template"),
            ("Job", "/spec/template"),
            ("CronJob", "/spec/jobTemplate/spec/template"),
        ] {
            let mut o = json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "x"}});
            let mut spec = json!({"template": template.clone()});
            if kind == "CronJob" {
                spec = json!({"schedule": "* * * * *", "jobTemplate": {"spec": spec}});
            }
            o["spec"] = spec;
            assert_eq!(inject_object(&mut o, &cfg), Ok(Outcome::Injected), "{kind}");
            let t = o.pointer(pointer).expect("template");
            assert_eq!(t["spec"]["initContainers"][1]["name"], SIDECAR, "{kind}");
            assert_eq!(t["metadata"]["annotations"][INJECT_ANNOTATION], "enabled");
        }
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let before = cm.clone();
        assert!(matches!(
            inject_object(&mut cm, &cfg),
            Ok(Outcome::Skipped(_))
        ));
        assert_eq!(cm, before);
    }
}
