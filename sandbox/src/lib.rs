//! podwall's sandbox: a small cluster on one Linux machine.
//!
//! Every Pod in a directory of YAML becomes a network namespace, wired to a shared "node"
//! namespace by a veth pair (the pod's address as a /32, routed by the node, like Calico's
//! routed model); a small server listens on each of its container ports; pods annotated
//! `podwall.io/inject: enabled` get the init rules and a sidecar fed from the same state. `probe`
//! then tries every pod-to-pod TCP connection and compares what happened with what the analyzer
//! predicts. It is the demo, the end-to-end test bed and the benchmark bed.
//!
//! Everything a sandbox creates is named after it (`pw-<name>-...`) and recorded under
//! `/run/podwall/sandbox/<name>`, so `down` removes it all, also after a crashed `up`.

pub mod external;
mod netns;
pub mod probe;
pub mod server;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podwall_policy::{ClusterState, Protocol};
use serde::{Deserialize, Serialize};

pub use netns::run_in;

/// The annotation that asks for the sidecar.
pub const INJECT_ANNOTATION: &str = "podwall.io/inject";
/// Where sandboxes record themselves.
pub const RUN_DIR: &str = "/run/podwall/sandbox";
/// The sidecar's uid in the sandbox, as in a cluster.
pub const PROXY_UID: u32 = 1337;
/// The sidecar's admin port.
pub const ADMIN_PORT: u16 = 15020;
/// The control plane's port (in the node's namespace).
pub const CONTROL_PORT: u16 = 15010;
/// Addresses given to pods that have none.
const POD_POOL: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 0);
/// The node address of pods that name none.
const DEFAULT_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 88, 1);

/// Something the sandbox could not do.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A tool could not be run.
    #[error("cannot run {command}: {source}")]
    Tool {
        /// What was run.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// What was run.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// The input cannot be read.
    #[error(transparent)]
    Source(#[from] podwall_control::source::SourceError),
    /// A file of the sandbox's own cannot be written or read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something did not come up in time.
    #[error("{what} did not become ready within {seconds}s (see {log})")]
    NotReady {
        /// What.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// Its log.
        log: String,
    },
    /// No sandbox of that name.
    #[error("no sandbox named {0:?} is up (nothing under {RUN_DIR})")]
    NotFound(String),
    /// The sandbox needs root.
    #[error("the sandbox needs root (network namespaces and iptables)")]
    NotRoot,
    /// A sandbox document is wrong.
    #[error("{0}")]
    Invalid(String),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::File {
        path: path.display().to_string(),
        source,
    }
}

/// Which pods get a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inject {
    /// Pods annotated `podwall.io/inject: enabled` (as the webhook does).
    Annotated,
    /// Every pod (for tests and benchmarks).
    All,
    /// None.
    None,
}

/// How to build the sandbox.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names every resource (`pw-<name>-...`); several sandboxes can coexist.
    pub name: String,
    /// Which pods get a sidecar.
    pub inject: Inject,
    /// The podwall binary to run servers and sidecars with.
    pub exe: PathBuf,
    /// Extra arguments for every `podwall proxy run`.
    pub sidecar_args: Vec<String>,
    /// Extra arguments for every `podwall proxy init` (exclusions, the DNS capture).
    pub init_args: Vec<String>,
}

/// One pod of a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRecord {
    /// `namespace/name`.
    pub key: String,
    /// The network namespace it lives in (the node's for host-network pods).
    pub netns: String,
    /// Its address.
    pub ip: IpAddr,
    /// Its node's address.
    pub host_ip: IpAddr,
    /// Whether it has a sidecar.
    pub injected: bool,
    /// Whether it uses the node's network.
    pub host_network: bool,
    /// TCP ports its server listens on.
    pub tcp: Vec<u16>,
    /// UDP ports its server listens on.
    pub udp: Vec<u16>,
}

/// What `up` recorded, for `probe` and `down`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The sandbox's name.
    pub name: String,
    /// The directory it was built from.
    pub source: PathBuf,
    /// The node namespace.
    pub node: String,
    /// Every pod.
    pub pods: Vec<PodRecord>,
    /// Hosts outside the cluster, each in a namespace of its own.
    #[serde(default)]
    pub externals: Vec<ExternalRecord>,
    /// The pod running the cluster DNS (dnsmasq), if the topology has one.
    #[serde(default)]
    pub dns: Option<String>,
}

/// One external host of a sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExternalRecord {
    /// As declared.
    pub host: external::ExternalHost,
    /// Its namespace.
    pub netns: String,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// What it is made of.
    pub record: Record,
    dir: PathBuf,
    children: Vec<Child>,
}

fn prefix(name: &str) -> String {
    format!("pw-{name}-")
}

fn sandbox_dir(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(name)
}

/// 128 random bits, hex.
fn random_token() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(file_error(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Gives addresses to pods that have none and a node to pods that name none.
fn assign_addresses(state: &mut ClusterState) {
    let mut used: BTreeSet<IpAddr> = state
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let mut next = u32::from(POD_POOL) + 1;
    for pod in &mut state.pods {
        if pod.host_ips.is_empty() {
            pod.host_ips.push(IpAddr::V4(DEFAULT_NODE));
        }
        if pod.host_network {
            pod.ips = vec![pod.host_ips[0]];
            continue;
        }
        if !pod.ips.iter().any(IpAddr::is_ipv4) {
            while used.contains(&IpAddr::V4(Ipv4Addr::from(next))) {
                next += 1;
            }
            let ip = IpAddr::V4(Ipv4Addr::from(next));
            used.insert(ip);
            pod.ips.insert(0, ip);
        }
    }
}

/// `program` in the namespace `ns` under `setpriv` with `options` (ids, capabilities).
fn setpriv_in(ns: &str, options: &[&str], program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "setpriv"])
        .args(options)
        .arg(program);
    cmd
}

/// `program` in the namespace `ns`, as the proxy's uid and gid, with no supplementary groups:
/// how the peer proxies the bench compares run (the bench exempts that uid for them; podwall's
/// own rules exempt no id).
pub fn as_proxy_in(ns: &str, program: &str) -> Command {
    let uid = PROXY_UID.to_string();
    setpriv_in(
        ns,
        &["--reuid", &uid, "--regid", &uid, "--clear-groups"],
        program,
    )
}

/// The capabilities a container runtime (containerd, CRI-O, Docker) grants a container by
/// default, without `NET_RAW`, which injection drops from every app container of a protected
/// pod: what an app of an injected pod has, in `setpriv --bounding-set` spelling.
pub const APP_CAPABILITIES: &str = "-all,+chown,+dac_override,+fsetid,+fowner,+mknod,+setgid,+setuid,+setfcap,+setpcap,+net_bind_service,+sys_chroot,+kill,+audit_write";

/// `program` in the namespace `ns` as an app container of an injected pod runs: root, with the
/// runtime's default capabilities less `NET_RAW` ([`APP_CAPABILITIES`]).
pub fn app_in(ns: &str, program: &str) -> Command {
    setpriv_in(
        ns,
        &["--inh-caps", "-all", "--bounding-set", APP_CAPABILITIES],
        program,
    )
}

/// The sidecar in the namespace `ns`, with `CAP_NET_ADMIN` and `CAP_NET_BIND_SERVICE` (what a
/// sidecar container is granted): the packet filter reads NFQUEUE and prunes conntrack, the
/// transparent sockets take TPROXY's connections and each DNS query's original destination,
/// the DNS reply leaves from the resolver's port 53, and the mark on its sockets exempts them.
pub fn sidecar_in(ns: &str, program: &str) -> Command {
    // As injection runs it: root in the proxy's group, with only NET_ADMIN and
    // NET_BIND_SERVICE left in the bounding set, which is what a root process keeps across
    // exec. (Kubernetes gives added capabilities to no non-root process.)
    let gid = PROXY_UID.to_string();
    setpriv_in(
        ns,
        &[
            "--reuid",
            "0",
            "--regid",
            &gid,
            "--clear-groups",
            "--inh-caps",
            "-all",
            "--bounding-set",
            "-all,+net_admin,+net_bind_service",
        ],
        program,
    )
}

/// Every policy object under `dir`, as written, in one `kind: List`.
fn policy_documents(dir: &Path) -> Result<serde_json::Value, SandboxError> {
    // Services and EndpointSlices too: sidecars resolve service IPs with them.
    const KINDS: [&str; 8] = [
        "NetworkPolicy",
        "CiliumNetworkPolicy",
        "CiliumClusterwideNetworkPolicy",
        "PodwallPolicy",
        "ClusterNetworkPolicy",
        // ClusterNetworkPolicy `nodes` peers match their addresses.
        "Node",
        "Service",
        "EndpointSlice",
    ];
    let mut items = Vec::new();
    for file in podwall_control::source::read_paths(&[dir.to_path_buf()])? {
        let objects = podwall_policy::objects(&file.name, &file.text)
            .map_err(podwall_control::source::SourceError::from)?;
        items.extend(objects.into_iter().map(|(_, v)| v).filter(|v| {
            v.get("kind")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|k| KINDS.contains(&k))
        }));
    }
    Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, SandboxError> {
    let out = fs::File::create(log).map_err(file_error(log))?;
    let err = out.try_clone().map_err(file_error(log))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for `sandbox up` does not reach the pods.
        .process_group(0)
        .spawn()
        .map_err(|source| SandboxError::Tool {
            command: format!("{cmd:?}"),
            source,
        })
}

fn wait_until(
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), SandboxError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(SandboxError::NotReady {
        what: what.to_string(),
        seconds: timeout.as_secs(),
        log: log.display().to_string(),
    })
}

/// `GET /ready` on the sidecar's admin port answers 200.
fn sidecar_ready(ns: &str) -> bool {
    run_in(ns, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok()
            && (buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"))
    })
    .unwrap_or(false)
}

/// The server answers on every TCP port.
fn server_ready(ns: &str, ip: IpAddr, ports: &[u16]) -> bool {
    let ports = ports.to_vec();
    run_in(ns, move || {
        ports.iter().all(|p| {
            TcpStream::connect_timeout(&SocketAddr::new(ip, *p), Duration::from_millis(200)).is_ok()
        })
    })
    .unwrap_or(false)
}

impl Sandbox {
    /// Builds the sandbox described by the YAML under `dir`.
    pub fn up(dir: &Path, opts: &Options) -> Result<Sandbox, SandboxError> {
        if !is_root() {
            return Err(SandboxError::NotRoot);
        }
        down(&opts.name)?;
        let (mut state, _report) = podwall_control::source::load_paths(&[dir.to_path_buf()])?;
        assign_addresses(&mut state);

        let sdir = sandbox_dir(&opts.name);
        let policy_dir = sdir.join("policy");
        let logs = sdir.join("logs");
        for d in [&policy_dir, &logs] {
            fs::create_dir_all(d).map_err(file_error(d))?;
        }
        // The sidecars read the pods with the sandbox's addresses, and the policies and services
        // exactly as they were written.
        let cluster_file = policy_dir.join("cluster.json");
        let text = serde_json::to_string_pretty(&podwall_policy::render::cluster_list(&state))
            .unwrap_or_default();
        fs::write(&cluster_file, text).map_err(file_error(&cluster_file))?;
        let policies_file = policy_dir.join("policies.json");
        let text = serde_json::to_string_pretty(&policy_documents(dir)?).unwrap_or_default();
        fs::write(&policies_file, text).map_err(file_error(&policies_file))?;

        let p = prefix(&opts.name);
        let node = format!("{p}node");
        let pods: Vec<PodRecord> = state
            .pods
            .iter()
            .enumerate()
            .map(|(i, pod)| PodRecord {
                key: pod.key(),
                netns: if pod.host_network {
                    node.clone()
                } else {
                    format!("{p}{i}")
                },
                ip: pod.ips[0],
                host_ip: pod.host_ips[0],
                injected: !pod.host_network
                    && match opts.inject {
                        Inject::All => true,
                        Inject::None => false,
                        Inject::Annotated => {
                            pod.annotations.get(INJECT_ANNOTATION).map(String::as_str)
                                == Some("enabled")
                        }
                    },
                host_network: pod.host_network,
                tcp: pod
                    .ports
                    .iter()
                    .filter(|c| c.protocol == Protocol::Tcp)
                    .map(|c| c.port)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                udp: pod
                    .ports
                    .iter()
                    .filter(|c| c.protocol == Protocol::Udp)
                    .map(|c| c.port)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
            })
            .collect();
        let mut pods = pods;
        // The cluster DNS: dnsmasq takes port 53 of the first pod labelled k8s-app=kube-dns.
        let dns = state
            .pods
            .iter()
            .position(|p| {
                !p.host_network && p.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
            })
            .map(|i| {
                pods[i].tcp.retain(|p| *p != 53);
                pods[i].udp.retain(|p| *p != 53);
                pods[i].key.clone()
            });
        let externals = external::read(dir)?
            .into_iter()
            .enumerate()
            .map(|(i, host)| ExternalRecord {
                host,
                netns: format!("{p}x{i}"),
            })
            .collect();
        let record = Record {
            name: opts.name.clone(),
            source: dir.to_path_buf(),
            node: node.clone(),
            pods,
            externals,
            dns,
        };
        // Recorded before anything is created, so that `down` finds it all after a crash.
        let record_file = sdir.join("state.json");
        fs::write(
            &record_file,
            serde_json::to_string_pretty(&record).unwrap_or_default(),
        )
        .map_err(file_error(&record_file))?;
        let mut sandbox = Sandbox {
            record,
            dir: sdir,
            children: Vec::new(),
        };
        sandbox.build(opts, &policy_dir, &logs)?;
        Ok(sandbox)
    }

    fn build(
        &mut self,
        opts: &Options,
        policy_dir: &Path,
        logs: &Path,
    ) -> Result<(), SandboxError> {
        let node = self.record.node.clone();
        netns::ip(&["netns", "add", &node])?;
        netns::ip(&["-n", &node, "link", "set", "lo", "up"])?;
        netns::exec(&node, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
        for (i, pod) in self.record.pods.iter().enumerate() {
            if pod.host_network {
                continue;
            }
            let (ns, veth) = (pod.netns.as_str(), format!("v{i}"));
            let (ip, host) = (format!("{}/32", pod.ip), format!("{}/32", pod.host_ip));
            let host_ip = pod.host_ip.to_string();
            netns::ip(&["netns", "add", ns])?;
            netns::ip(&[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            netns::ip(&["-n", &node, "addr", "add", &host, "dev", &veth])?;
            netns::ip(&["-n", &node, "link", "set", &veth, "up"])?;
            netns::ip(&["-n", &node, "route", "add", &ip, "dev", &veth])?;
            netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // What container runtimes set in every pod (and injection asks for): ping
            // without NET_RAW, through ICMP datagram sockets.
            netns::exec(
                ns,
                "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range",
            )?;
            netns::ip(&["-n", ns, "addr", "add", &ip, "dev", "eth0"])?;
            netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            netns::ip(&[
                "-n", ns, "route", "add", &host_ip, "dev", "eth0", "scope", "link",
            ])?;
            netns::ip(&[
                "-n", ns, "route", "add", "default", "via", &host_ip, "dev", "eth0",
            ])?;
        }
        // Hosts outside the cluster: a namespace each, routed by the node like pods.
        let node_side = self
            .record
            .pods
            .first()
            .map(|p| p.host_ip)
            .unwrap_or(IpAddr::V4(DEFAULT_NODE));
        for (i, ext) in self.record.externals.iter().enumerate() {
            let (ns, veth) = (ext.netns.as_str(), format!("x{i}"));
            let ip = format!("{}/32", ext.host.address);
            let gw = node_side.to_string();
            netns::ip(&["netns", "add", ns])?;
            netns::ip(&[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            netns::ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{gw}/32"),
                "dev",
                &veth,
            ])?;
            netns::ip(&["-n", &node, "link", "set", &veth, "up"])?;
            netns::ip(&["-n", &node, "route", "add", &ip, "dev", &veth])?;
            netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            netns::ip(&["-n", ns, "addr", "add", &ip, "dev", "eth0"])?;
            netns::ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            netns::ip(&[
                "-n", ns, "route", "add", &gw, "dev", "eth0", "scope", "link",
            ])?;
            netns::ip(&[
                "-n", ns, "route", "add", "default", "via", &gw, "dev", "eth0",
            ])?;
        }
        // Every namespace resolves through the cluster DNS (`ip netns exec` mounts this file
        // over /etc/resolv.conf), and dnsmasq serves the external hosts' names.
        if let Some(dns_key) = self.record.dns.clone() {
            let dns_pod = self
                .record
                .pods
                .iter()
                .find(|p| p.key == dns_key)
                .cloned()
                .ok_or_else(|| SandboxError::Invalid(format!("no pod {dns_key}")))?;
            let conf = external::resolv_conf(dns_pod.ip);
            let namespaces: Vec<String> = self
                .record
                .pods
                .iter()
                .filter(|p| !p.host_network)
                .map(|p| p.netns.clone())
                .chain(self.record.externals.iter().map(|e| e.netns.clone()))
                .collect();
            for ns in namespaces {
                let d = Path::new("/etc/netns").join(&ns);
                fs::create_dir_all(&d).map_err(file_error(&d))?;
                let f = d.join("resolv.conf");
                fs::write(&f, &conf).map_err(file_error(&f))?;
            }
            let hosts: Vec<external::ExternalHost> = self
                .record
                .externals
                .iter()
                .map(|e| e.host.clone())
                .collect();
            let log = logs.join("dns.log");
            let queries = logs.join("dns-queries.log");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &dns_pod.netns, "dnsmasq"])
                .args(external::dnsmasq_args(&hosts, dns_pod.ip, &queries));
            self.children.push(spawn_logged(&mut cmd, &log)?);
            wait_until(
                &format!("dnsmasq in {dns_key}"),
                &log,
                Duration::from_secs(10),
                || server_ready(&dns_pod.netns, dns_pod.ip, &[53]),
            )?;
        }
        // kube-proxy's part, in the node's namespace as on a cluster node: a Service's virtual
        // IP leads to one of its ready backends, in turn (a sidecar on the proxy path
        // picks its own before the node sees the connection; on the kernel path it is the node
        // that picks).
        let state = podwall_control::source::load_paths(&[policy_dir.to_path_buf()])?.0;
        let services = service_rules(&state.services);
        if !services.is_empty() {
            let file = logs.join("node-services.rules");
            fs::write(&file, &services).map_err(file_error(&file))?;
            netns::exec(
                &node,
                &format!("iptables-restore --noflush < '{}'", file.display()),
            )?;
        }
        // Node addresses of host-network pods.
        for pod in self.record.pods.iter().filter(|p| p.host_network) {
            let addr = format!("{}/32", pod.ip);
            let _ = netns::ip(&["-n", &node, "addr", "add", &addr, "dev", "lo"]);
        }

        let exe = opts.exe.to_string_lossy().to_string();
        let pods = self.record.pods.clone();
        for (i, pod) in pods.iter().enumerate() {
            if pod.tcp.is_empty() && pod.udp.is_empty() {
                continue;
            }
            let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            // The app of an injected pod runs as injection leaves it (no NET_RAW).
            let mut cmd = if pod.injected {
                app_in(&pod.netns, &exe)
            } else {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &pod.netns, &exe]);
                c
            };
            cmd.args(["sandbox", "serve", "--pod", &pod.key]);
            if !pod.tcp.is_empty() {
                cmd.args(["--tcp", &join(&pod.tcp)]);
            }
            if !pod.udp.is_empty() {
                cmd.args(["--udp", &join(&pod.udp)]);
            }
            let log = logs.join(format!("{i}-server.log"));
            self.children.push(spawn_logged(&mut cmd, &log)?);
        }
        // The control plane, in the node's namespace, serves every sidecar its pod's feed from
        // the policy directory; each sidecar proves its pod with a token of its own.
        let injected: Vec<(usize, &PodRecord)> = pods
            .iter()
            .enumerate()
            .filter(|(_, p)| p.injected)
            .collect();
        let mut tokens = String::new();
        let token_dir = self.dir.join("tokens");
        fs::create_dir_all(&token_dir).map_err(file_error(&token_dir))?;
        for (i, pod) in &injected {
            let token = random_token()?;
            tokens.push_str(&format!("{token} {}\n", pod.key));
            let f = token_dir.join(format!("{i}"));
            fs::write(&f, &token).map_err(file_error(&f))?;
        }
        let tokens_file = token_dir.join("control-tokens");
        fs::write(&tokens_file, tokens).map_err(file_error(&tokens_file))?;
        if !injected.is_empty() {
            let log = logs.join("control.log");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &node, &exe, "control", "run"])
                .arg(format!("--source=dir:{}", policy_dir.display()))
                .arg(format!("--listen=0.0.0.0:{CONTROL_PORT}"))
                .arg(format!("--tokens={}", tokens_file.display()))
                .arg("--poll-interval=200ms");
            self.children.push(spawn_logged(&mut cmd, &log)?);
            let node_ip = pods
                .iter()
                .find(|p| !p.host_network)
                .map(|p| p.host_ip)
                .unwrap_or(IpAddr::V4(DEFAULT_NODE));
            wait_until("the control plane", &log, Duration::from_secs(15), || {
                server_ready(&node, node_ip, &[CONTROL_PORT])
            })?;
        }
        for (i, pod) in injected {
            let log = logs.join(format!("{i}-init.log"));
            // As injection does: init saves the pod's name files before the app starts, and
            // the sidecar reads them there, not what the app may have made of /etc since.
            let pod_files = self.dir.join("pod-files").join(i.to_string());
            let mut init = Command::new("ip");
            init.args(["netns", "exec", &pod.netns, &exe, "proxy", "init"])
                .arg(format!("--save-pod-files={}", pod_files.display()))
                .args(&opts.init_args);
            let status = spawn_logged(&mut init, &log)?
                .wait()
                .map_err(file_error(&log))?;
            if !status.success() {
                let stderr = fs::read_to_string(&log).unwrap_or_default();
                return Err(SandboxError::Failed {
                    command: format!("podwall proxy init in {}", pod.netns),
                    stderr,
                });
            }
            let (ns_name, pod_name) = pod.key.split_once('/').unwrap_or(("default", &pod.key));
            let mut cmd = sidecar_in(&pod.netns, &exe);
            cmd.args([
                "proxy",
                "run",
                "--pod-namespace",
                ns_name,
                "--pod-name",
                pod_name,
                "--poll-interval",
                "200ms",
            ])
            .arg(format!(
                "--policy-source=control:{}:{CONTROL_PORT}",
                pod.host_ip
            ))
            .arg(format!(
                "--token-file={}",
                token_dir.join(format!("{i}")).display()
            ))
            .arg(format!("--pod-files={}", pod_files.display()))
            // The sandbox's feed is plain HTTP/2 on the node's own namespace.
            .arg("--insecure-plaintext-feed")
            .args(&opts.sidecar_args);
            let flows = logs.join(format!("{i}-sidecar.flows.jsonl"));
            let log = logs.join(format!("{i}-sidecar.log"));
            let out = fs::File::create(&flows).map_err(file_error(&flows))?;
            let err = fs::File::create(&log).map_err(file_error(&log))?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|source| SandboxError::Tool {
                    command: "ip netns exec ... podwall proxy run".into(),
                    source,
                })?;
            self.children.push(child);
        }
        for (i, ext) in self.record.externals.clone().iter().enumerate() {
            if ext.host.ports.is_empty() {
                continue;
            }
            let ports: Vec<String> = ext.host.ports.iter().map(u16::to_string).collect();
            let mut cmd = Command::new("ip");
            cmd.args([
                "netns",
                "exec",
                &ext.netns,
                &exe,
                "sandbox",
                "serve",
                "--pod",
                &format!("external/{}", ext.host.name),
                "--tcp",
                &ports.join(","),
            ]);
            let log = logs.join(format!("x{i}-server.log"));
            self.children.push(spawn_logged(&mut cmd, &log)?);
            wait_until(
                &format!("server of external host {}", ext.host.name),
                &log,
                Duration::from_secs(15),
                || server_ready(&ext.netns, ext.host.address, &ext.host.ports),
            )?;
        }
        for (i, pod) in pods.iter().enumerate() {
            if !pod.tcp.is_empty() {
                let log = logs.join(format!("{i}-server.log"));
                wait_until(
                    &format!("server of {}", pod.key),
                    &log,
                    Duration::from_secs(15),
                    || server_ready(&pod.netns, pod.ip, &pod.tcp),
                )?;
            }
            if pod.injected {
                let log = logs.join(format!("{i}-sidecar.log"));
                wait_until(
                    &format!("sidecar of {}", pod.key),
                    &log,
                    Duration::from_secs(15),
                    || sidecar_ready(&pod.netns),
                )?;
            }
        }
        Ok(())
    }

    /// A sandbox that is up, from its record.
    pub fn open(name: &str) -> Result<Sandbox, SandboxError> {
        let dir = sandbox_dir(name);
        let file = dir.join("state.json");
        let text =
            fs::read_to_string(&file).map_err(|_| SandboxError::NotFound(name.to_string()))?;
        let record: Record = serde_json::from_str(&text).map_err(|e| SandboxError::File {
            path: file.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        Ok(Sandbox {
            record,
            dir,
            children: Vec::new(),
        })
    }

    /// The directory of YAML the sidecars read: write a file there to change the policy.
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policy")
    }

    /// Where the sandbox keeps server and sidecar logs and flow events.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// The cluster state the sidecars enforce (with the sandbox's addresses).
    pub fn state(&self) -> Result<ClusterState, SandboxError> {
        Ok(podwall_control::source::load_paths(&[self.policy_dir()])?.0)
    }

    /// A pod by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodRecord> {
        self.record.pods.iter().find(|p| p.key == key)
    }

    /// Removes everything this sandbox created.
    pub fn down(mut self) -> Result<(), SandboxError> {
        let name = self.record.name.clone();
        let result = down(&name);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }
}

/// Removes every resource of the sandbox `name`: processes in its namespaces, the namespaces,
/// its directory. Nothing there is fine.
pub fn down(name: &str) -> Result<(), SandboxError> {
    if !is_root() {
        return Err(SandboxError::NotRoot);
    }
    let mut namespaces: BTreeSet<String> = netns::list(&prefix(name)).into_iter().collect();
    if let Ok(sb) = Sandbox::open(name) {
        namespaces.insert(sb.record.node.clone());
        namespaces.extend(sb.record.pods.iter().map(|p| p.netns.clone()));
    }
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids: Vec<i32> = namespaces.iter().flat_map(|ns| netns::pids(ns)).collect();
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && pids.iter().any(|&p| kill(Pid::from_raw(p), None).is_ok()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for ns in &namespaces {
        if Path::new("/run/netns").join(ns).exists() {
            netns::ip(&["netns", "del", ns])?;
        }
    }
    // resolv.conf files written for the namespaces.
    if let Ok(entries) = fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix(name)) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = sandbox_dir(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(file_error(&dir))?;
    }
    Ok(())
}

/// The node's nat rules standing in for kube-proxy (IPv4 Services with ready backends), in
/// `iptables-restore` syntax; empty when there are none. NodePorts are answered at every
/// address of the node, listed or not, as kube-proxy's iptables mode does unless its
/// `--nodeport-addresses` is set, after the addresses of Services and host ports.
fn service_rules(services: &podwall_policy::services::ServiceTable) -> String {
    use podwall_policy::services::ServicePort;
    use std::fmt::Write as _;
    let mut rules = String::new();
    let mut lead = |to: &str, protocol, port: u16, service: &ServicePort| {
        let proto = match protocol {
            podwall_policy::Protocol::Tcp => "tcp",
            podwall_policy::Protocol::Udp => "udp",
            podwall_policy::Protocol::Sctp => "sctp",
            _ => return,
        };
        let backends: Vec<_> = service
            .backends
            .iter()
            .filter(|(ip, _)| ip.is_ipv4())
            .collect();
        let n = backends.len();
        for (i, (ip, target)) in backends.iter().enumerate() {
            // Each rule takes every (backends left)-th connection that reaches it: round robin
            // (kube-proxy picks at random; tests want to see every backend in a few tries).
            let pick = if i + 1 < n {
                format!("-m statistic --mode nth --every {} --packet 0 ", n - i)
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A PODWALL_SANDBOX_SERVICES {to} -p {proto} --dport {port} {pick}-j DNAT --to-destination {ip}:{target}"
            );
        }
    };
    for ((vip, port, protocol), service) in services.fixed_addresses() {
        if vip.is_ipv4() {
            lead(&format!("-d {vip}/32"), protocol, port, service);
        }
    }
    let mut node_ports: Vec<_> = services.node_ports().filter(|(_, _, v4, _)| *v4).collect();
    node_ports.sort_by_key(|(port, protocol, _, _)| (*port, *protocol as u8));
    for (port, protocol, _, service) in node_ports {
        lead("-m addrtype --dst-type LOCAL", protocol, port, service);
    }
    if rules.is_empty() {
        return rules;
    }
    format!(
        "*nat\n:PODWALL_SANDBOX_SERVICES - [0:0]\n-A PREROUTING -j PODWALL_SANDBOX_SERVICES\n{rules}COMMIT\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwall_policy::Loader;

    #[test]
    fn node_ports_are_answered_at_every_node_address_after_the_services_own_addresses() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {app: a}}\nstatus: {podIP: 10.88.0.1, hostIP: 192.168.88.1}\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                    spec: {type: NodePort, clusterIP: 10.96.0.9, selector: {app: a}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n";
        let mut loader = Loader::new();
        loader.add_yaml("t.yaml", text).expect("yaml");
        let (state, _) = loader.finish();
        let rules = service_rules(&state.services);
        let lines: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A PODWALL_SANDBOX_SERVICES"))
            .collect();
        assert_eq!(
            lines,
            [
                "-A PODWALL_SANDBOX_SERVICES -d 10.96.0.9/32 -p tcp --dport 80 -j DNAT --to-destination 10.88.0.1:8080",
                "-A PODWALL_SANDBOX_SERVICES -m addrtype --dst-type LOCAL -p tcp --dport 30080 -j DNAT --to-destination 10.88.0.1:8080",
            ],
            "{rules}"
        );
    }

    #[test]
    fn pods_without_addresses_get_free_ones_and_a_node() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.88.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c}\nstatus: {podIP: 'fd00::3', hostIP: 192.168.1.7}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: h}\nspec: {hostNetwork: true}\nstatus: {hostIP: 192.168.1.9}\n";
        let mut loader = Loader::new();
        loader.add_yaml("t.yaml", text).expect("yaml");
        let (mut state, _) = loader.finish();
        assign_addresses(&mut state);
        let ip = |i: usize| {
            state.pods[i]
                .ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(ip(0), ["10.88.0.1"], "kept");
        assert_eq!(ip(1), ["10.88.0.2"], "the next free one");
        assert_eq!(
            ip(2),
            ["10.88.0.3", "fd00::3"],
            "an IPv4 address first, the IPv6 one kept"
        );
        assert_eq!(
            ip(3),
            ["192.168.1.9"],
            "a host-network pod has its node's address"
        );
        assert_eq!(
            state.pods[1].host_ips[0].to_string(),
            "192.168.88.1",
            "the default node"
        );
        assert_eq!(state.pods[2].host_ips[0].to_string(), "192.168.1.7");
    }
}
