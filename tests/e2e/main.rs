//! End-to-end: the sandbox and the sidecar in real network namespaces with real iptables.
//!
//! Every test needs root. Outside CI a test without root prints why it skips; with `CI=true` it
//! fails instead, so CI cannot pass by skipping.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podwall_sandbox::{Inject, Options, run_in};

#[path = "../support/mod.rs"]
mod support;

mod changes;
mod dns;
mod http;
mod kernel;
mod observe;
mod sandbox;
mod tcp;
mod udp;
use support::Running;
use support::sandbox::{PODWALL, Up, connect, options, ready_for, topology, wait_for};

/// Two sidecar pods (client, server) and one without (plain), no policy: everything allowed.
const TWO_PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.77.0.1, hostIP: 192.168.77.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}
status: {podIP: 10.77.0.2, hostIP: 192.168.77.1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: t, labels: {app: plain}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.77.0.3, hostIP: 192.168.77.1}
"#;

/// Half-closes and reads to the end before closing, so nothing unread turns the close into a
/// reset (which the sidecar would rightly log as an error).
fn close_cleanly(mut r: BufReader<TcpStream>) {
    let _ = r.get_mut().shutdown(Shutdown::Write);
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
}

/// The server logs HTTP on 8080 (the sandbox's server) and 7000 (a listener that never speaks).
const OBSERVED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: t, labels: {app: server}, annotations: {podwall.io/inject: enabled, podwall.io/observe-http: "8080,7000"}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}]}]}
status: {podIP: 10.78.0.2, hostIP: 192.168.78.1}
"#;

/// Upstream conformance cases run in the sandbox with real sidecars (TCP probes between pods;
/// the analyzer's test holds every probe).
const CONFORMANCE_IN_SANDBOX: [&str; 8] = [
    "admin-egress-tcp",
    "admin-ingress-tcp",
    "admin-gress",
    "admin-priority-field",
    "admin-integration",
    "admin-pod-selector",
    "baseline-ingress-tcp",
    "baseline-gress",
];

/// The init rules and a listening sidecar in `ns` for pod `namespace/name`, which its policy
/// source (an empty directory, kept alive by the returned guard) does not know.
fn sidecar_without_policy(
    ns: &str,
    namespace: &str,
    name: &str,
) -> (std::process::Child, tempfile::TempDir) {
    let empty = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        empty.path().join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    )
    .expect("write");
    let init = Command::new("ip")
        .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
        .status()
        .expect("init");
    assert!(init.success());
    let sidecar = podwall_sandbox::sidecar_in(ns, PODWALL)
        .args(["proxy", "run"])
        .arg(format!("--policy-source=dir:{}", empty.path().display()))
        .args(["--pod-namespace", namespace, "--pod-name", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sidecar");
    wait_for("the sidecar to listen", Duration::from_secs(10), || {
        run_in(ns, || TcpStream::connect(("127.0.0.1", 15020)).is_ok()).unwrap_or(false)
    });
    (sidecar, empty)
}

const FAIL_CLOSED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: guarded, namespace: t, labels: {app: guarded}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.1, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: t, labels: {app: peer}}
spec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.2, hostIP: 192.168.79.1}
"#;

/// Every rule and chain of every table in `ns`, as `iptables-save` prints them (table headers
/// kept, so the same rule in two tables stays two lines).
fn all_rules(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(':') || l.starts_with('*'))
        .map(String::from)
        .collect()
}

/// The packets that went through each jump from `chain` (filter table) into `target`, by the
/// jump's rule, from `iptables-save -c`.
fn jump_counts(ns: &str, chain: &str, target: &str) -> Vec<(String, u64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-save", "-c", "-t", "filter"])
        .output()
        .expect("iptables-save");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| {
            // "[packets:bytes] -A OUTPUT -p udp -j PODWALL_FILTER_OUT"
            let (counters, rule) = l.strip_prefix('[')?.split_once("] ")?;
            let rule = rule.strip_prefix(&format!("-A {chain} "))?;
            rule.ends_with(&format!("-j {target}")).then(|| {
                let packets = counters.split(':').next().unwrap_or("0");
                (rule.to_owned(), packets.parse().unwrap_or(u64::MAX))
            })
        })
        .collect()
}

/// The sandbox's server in `ns` for `pod` on `tcp` and `udp` ports (comma-separated).
fn serve_in(ns: &str, pod: &str, tcp: &str, udp: &str) -> Running {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", ns, PODWALL, "sandbox", "serve", "--pod", pod,
    ])
    .args(["--tcp", tcp]);
    if !udp.is_empty() {
        cmd.args(["--udp", udp]);
    }
    Running(
        cmd.stdout(std::process::Stdio::null())
            .spawn()
            .expect("server"),
    )
}

/// Installs the capture in `ns` (IPv6 too) and runs pod `v6/NAME`'s sidecar there with the
/// policy in `dir/state.yaml`, its flow events in `dir/flows.jsonl`; returns once it is ready.
fn v6_sidecar(ns: &str, name: &str, dir: &Path) -> Running {
    if !Command::new("sh")
        .args(["-c", "command -v ip6tables"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        panic!("ip6tables is part of the iptables package and must be there");
    }
    let init = Command::new("ip")
        .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
        .output()
        .expect("init");
    assert!(
        String::from_utf8_lossy(&init.stderr).contains("ip6tables rules installed"),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let sidecar = podwall_sandbox::sidecar_in(ns, PODWALL)
        .args(["proxy", "run", "--pod-namespace", "v6", "--pod-name", name])
        .arg(format!(
            "--policy-source=dir:{}",
            dir.join("state.yaml").display()
        ))
        .stdout(std::fs::File::create(dir.join("flows.jsonl")).expect("flows"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("sidecar");
    let sidecar = Running(sidecar);
    support::sandbox::wait_ready(ns);
    sidecar
}

/// The first flow event in `dir/flows.jsonl` that matches `f`, waiting for it.
fn v6_flow(dir: &Path, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    support::sandbox::event_in(&dir.join("flows.jsonl"), what, f)
}

const V6_PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: v6, labels: {app: client}}\nstatus: {podIP: 'fd77::1'}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: v6, labels: {app: server}}\nstatus: {podIP: 'fd77::2'}\n";

/// How long after `resolved` new connections from `ns` to `dst` stay allowed (polled until one
/// is refused, at most `limit`).
fn allowed_for(ns: &str, dst: SocketAddr, resolved: Instant, limit: Duration) -> Duration {
    while connect(ns, dst).is_ok() {
        assert!(
            resolved.elapsed() < limit,
            "new connections to {dst} are still allowed after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    resolved.elapsed()
}

/// The guides' L7 example in the sandbox; returns it with the frontend's namespace and the API's
/// address.
fn l7_sandbox(name: &str) -> (Up, String, IpAddr) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/l7-api");
    let up = Up::new(&dir, name, Inject::Annotated);
    let ns = up.ns("production/frontend");
    let api = up.ip("production/api");
    (up, ns, api)
}

fn curl(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn app_log(up: &Up, key: &str) -> String {
    let i = up
        .sb()
        .record
        .pods
        .iter()
        .position(|p| p.key == key)
        .expect("pod");
    std::fs::read_to_string(up.sb().logs_dir().join(format!("{i}-server.log"))).unwrap_or_default()
}

/// Sends one HTTP/1.1 request on a kept-alive connection and returns the response's status,
/// having read its whole body.
fn exchange(s: &mut BufReader<TcpStream>, method: &str, path: &str) -> u16 {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: api\r\n\r\n");
    s.get_mut()
        .write_all(request.as_bytes())
        .expect("write request");
    let mut status = String::new();
    s.read_line(&mut status).expect("status line");
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status:?}"));
    let mut length = None;
    loop {
        let mut header = String::new();
        s.read_line(&mut header).expect("header");
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.expect("a response with Content-Length")];
    s.read_exact(&mut body).expect("body");
    code
}

/// Opens an HTTP/1.1 connection from `ns` and sends `first` on it at once (the test server
/// greets clients that stay silent), asserting each status; the connection stays open.
fn keep_alive(
    ns: &str,
    dst: SocketAddr,
    first: &'static [(&'static str, &'static str, u16)],
) -> BufReader<TcpStream> {
    run_in(ns, move || {
        let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut s = BufReader::new(s);
        for &(method, path, status) in first {
            assert_eq!(exchange(&mut s, method, path), status, "{method} {path}");
        }
        s
    })
    .expect("in the namespace")
}

/// Writes `bytes` on a new connection from `ns` to `dst` and returns the status codes of the
/// responses read until the server closes (or 3 s of silence).
fn raw_statuses(ns: &str, dst: SocketAddr, bytes: &'static [u8]) -> Vec<String> {
    let answer = run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .expect("netns");
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| answer[i + 9..].chars().take(3).collect())
        .collect()
}

const GRPC_TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: g}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: g, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: g, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.2}
---
apiVersion: podwall.io/v1alpha1
kind: PodwallPolicy
metadata: {name: echo, namespace: g}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /demo.Echo/Allowed}
"#;

/// A gRPC server with two unary methods that echo their request, without generated code.
const GRPC_SERVER: &str = r#"
import grpc, time
from concurrent import futures
echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
handler = grpc.method_handlers_generic_handler("demo.Echo", {"Allowed": echo, "Forbidden": echo})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:50051")
server.start()
print("serving", flush=True)
time.sleep(120)
"#;

/// Calls Allowed, Forbidden, Allowed on one channel and prints each outcome.
const GRPC_CLIENT: &str = r#"
import grpc, sys
channel = grpc.insecure_channel(sys.argv[1] + ":50051")
grpc.channel_ready_future(channel).result(timeout=10)
for method in ["Allowed", "Forbidden", "Allowed"]:
    try:
        reply = channel.unary_unary("/demo.Echo/" + method)(b"hello", timeout=5)
        print(method, "OK", reply.decode())
    except grpc.RpcError as e:
        print(method, e.code().name)
"#;

/// Whether python3 has grpcio; in CI its absence is a failure, elsewhere a printed skip.
fn has_grpc() -> bool {
    let has = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 with grpcio is needed (.ci/run installs it)");
        }
        eprintln!("skipping the gRPC test: python3 -m pip install grpcio");
    }
    has
}

/// Starts `GRPC_SERVER` in the topology's server pod and waits until it listens.
fn start_grpc_server(up: &Up) -> std::process::Child {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &up.ns("g/server"),
            "python3",
            "-c",
            GRPC_SERVER,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("grpc server");
    let mut first = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("server started");
    server
}

/// A gRPC client that keeps one channel across a policy change: two calls, then (after a line
/// on stdin) calls `Forbidden` until it passes and `Allowed` once more.
const GRPC_CLIENT_ACROSS_A_CHANGE: &str = r#"
import grpc, sys, time
channel = grpc.insecure_channel(sys.argv[1] + ":50051")
grpc.channel_ready_future(channel).result(timeout=10)
def call(method):
    try:
        channel.unary_unary("/demo.Echo/" + method)(b"hello", timeout=5)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
print("Allowed", call("Allowed"), flush=True)
print("Forbidden", call("Forbidden"), flush=True)
sys.stdin.readline()
deadline = time.time() + 15
while call("Forbidden") != "OK" and time.time() < deadline:
    time.sleep(0.2)
print("Forbidden", call("Forbidden"), flush=True)
print("Allowed", call("Allowed"), flush=True)
"#;

// ---------------------------------------------------------------------------------------------
// toFQDNs and the DNS proxy, with dnsmasq as the cluster DNS and curl / glibc as the clients.

/// dnsmasq and curl on top of the usual tools.
fn ready_for_dns(test: &str) -> bool {
    if !ready_for(test) {
        return false;
    }
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("dnsmasq") && have("curl") && have("getent") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs dnsmasq, curl and getent; with CI=true it must run, not skip");
    }
    eprintln!("skipping {test}: needs dnsmasq, curl and getent");
    false
}

/// A runner with a sidecar allowed two names on port 80 (and UDP/53 to one outside resolver),
/// the cluster DNS, and the outside hosts. `api.example.com` has a 2-second TTL.
const FQDN_TOPOLOGY: &str = r#"
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
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.78.0.53, hostIP: 192.168.78.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: runner-egress, namespace: t}
spec:
  endpointSelector: {matchLabels: {app: runner}}
  egress:
  - toFQDNs: [{matchName: api.example.com}, {matchPattern: '*.cdn.example.net'}, {matchName: big.example.com}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
  - toCIDR: [203.0.113.53/32]
    toPorts: [{ports: [{port: '53', protocol: UDP}]}]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: api}
spec: {address: 203.0.113.10, names: [api.example.com], ports: [80], ttl: 2}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: cdn}
spec: {address: 203.0.113.20, names: [www.cdn.example.net, evil.example.org], ports: [80], ttl: 60}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: other}
spec: {address: 198.51.100.20, names: [other.example.org], ports: [80], ttl: 60}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: big}
spec:
  address: 203.0.113.30
  names: [big.example.com]
  ports: [80]
  ttl: 60
  extraAddresses: [203.0.113.31, 203.0.113.32, 203.0.113.33, 203.0.113.34, 203.0.113.35, 203.0.113.36, 203.0.113.37, 203.0.113.38, 203.0.113.39, 203.0.113.40, 203.0.113.41, 203.0.113.42, 203.0.113.43, 203.0.113.44, 203.0.113.45, 203.0.113.46, 203.0.113.47, 203.0.113.48, 203.0.113.49, 203.0.113.50, 203.0.113.51, 203.0.113.52, 203.0.113.54, 203.0.113.55, 203.0.113.56, 203.0.113.57, 203.0.113.58, 203.0.113.59, 203.0.113.60, 203.0.113.61, 203.0.113.62, 203.0.113.63, 203.0.113.64, 203.0.113.65, 203.0.113.66]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: resolver}
spec: {address: 203.0.113.53}
"#;

/// Runs a program in a pod's namespace the way its containers do (`ip netns exec`, which
/// mounts the sandbox's resolv.conf): exit code and output.
fn in_pod(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn curl_in(ns: &str, url: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["curl", "-sS", "--max-time", "5"];
    args.extend(extra);
    args.push(url);
    in_pod(ns, &args)
}

/// DNS flow events of a pod's sidecar.
fn dns_events(up: &Up, key: &str) -> Vec<serde_json::Value> {
    up.flows(key)
        .into_iter()
        .filter(|e| !e["l7"]["dns"].is_null())
        .collect()
}

fn wait_for_flow(
    up: &Up,
    key: &str,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(e) = up.flows(key).into_iter().find(|e| f(e)) {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no flow event {what} in {:#?}", up.flows(key));
}

/// FQDN_TOPOLOGY's runner and hosts, judged by ClusterNetworkPolicies instead of its
/// CiliumNetworkPolicy: `domainNames` through the DNS proxy and the learned names.
fn domain_names_topology() -> String {
    let without_cnp = FQDN_TOPOLOGY
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: CiliumNetworkPolicy"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    without_cnp
        + r#"
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: allowed-names}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t}}}
  egress:
  - name: cdn
    action: Accept
    to: [{domainNames: ["*.EXAMPLE.net."]}]
    protocols: [{tcp: {destinationPort: {number: 80}}}]
  - name: resolver
    action: Accept
    to: [{networks: [203.0.113.53/32]}]
    protocols: [{udp: {destinationPort: {number: 53}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: nothing-else-out}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: t}}}
  egress:
  - {name: deny-all, action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#
}

fn dns_query(name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str(name).expect("name"),
        RecordType::A,
    ));
    m.to_vec().expect("encodes")
}

fn dns_answer(bytes: &[u8]) -> hickory_proto::op::Message {
    hickory_proto::op::Message::from_vec(bytes).expect("a DNS message")
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: t, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.78.0.1, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-a, namespace: t, labels: {app: api, zone: a}}
spec: {containers: [{name: s, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.78.0.2, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-b, namespace: t, labels: {app: api, zone: b}}
spec: {containers: [{name: s, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.78.0.3, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: t, labels: {app: db}}
spec: {containers: [{name: s, ports: [{containerPort: 5432}]}]}
status: {podIP: 10.78.0.4, hostIP: 192.168.78.1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: t}
spec: {clusterIP: 10.96.0.50, selector: {app: api}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: t}
spec: {clusterIP: 10.96.0.60, selector: {app: db}, ports: [{port: 5432}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: t}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: api}}}]
"#;

/// UDP: the server takes datagrams on 5300 from the client only; the client may send UDP only
/// to the server's 5300; `plain` (no sidecar) listens on 5300 too.
const UDP_TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: u}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: u, labels: {app: client}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.1, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: u, labels: {app: other}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.2, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: u, labels: {app: server}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: s, ports: [{containerPort: 5300, protocol: UDP}, {containerPort: 5301, protocol: UDP}]}]}
status: {podIP: 10.79.0.3, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: u, labels: {app: plain}}
spec: {containers: [{name: s, ports: [{containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.79.0.4, hostIP: 192.168.79.1}
---
apiVersion: v1
kind: Pod
metadata: {name: pinger, namespace: u, labels: {app: pinger}, annotations: {podwall.io/inject: enabled}}
status: {podIP: 10.79.0.5, hostIP: 192.168.79.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-udp, namespace: u}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: UDP, port: 5300}]
  - from: [{podSelector: {matchLabels: {app: pinger}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: u}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: UDP, port: 5300}]
"#;

/// Whether one ping from inside `ns` to `dst` is answered within a second (iputils' ping).
fn pings(ns: &str, dst: IpAddr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1",
        ])
        .arg(dst.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A UDP socket opened inside `ns` (it stays there), one flow per socket.
fn udp_socket(ns: &str) -> std::net::UdpSocket {
    let s = run_in(ns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    s
}

/// One datagram on `s`'s flow to `dst`: whether its echo came back.
fn echoes(s: &std::net::UdpSocket, dst: SocketAddr) -> bool {
    let mut buf = [0u8; 64];
    s.send_to(b"ping", dst).is_ok()
        && s.recv_from(&mut buf)
            .is_ok_and(|(n, from)| from == dst && &buf[..n] == b"ping")
}

/// Sends one datagram from inside `ns` and returns the echo, if one comes within a second.
fn udp_echo(ns: &str, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let payload = payload.to_vec();
    run_in(ns, move || {
        let any: SocketAddr = if dst.is_ipv6() {
            "[::]:0".parse().ok()?
        } else {
            "0.0.0.0:0".parse().ok()?
        };
        let s = std::net::UdpSocket::bind(any).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.send_to(&payload, dst).ok()?;
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        (from == dst).then(|| buf[..n].to_vec())
    })
    .ok()
    .flatten()
}
