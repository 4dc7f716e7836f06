//! End-to-end: the interception boundary against the app it guards.
//!
//! Each test is one door a compromised app container tried (issue "The wall holds against the
//! app it guards"), walked through again in the sandbox by `tests/fixtures/hostile_app.py`
//! running as an app of an injected pod runs: root, with the runtime's default capabilities
//! less NET_RAW (which injection drops), and NET_RAW only where a test says so. Beside every
//! attack, the traffic policy allows still flows. `PODWALL_E2E_EXE=<older podwall>` runs the
//! same tests against another build's rules and sidecar (they fail against the rules of
//! before this boundary).

use std::io::BufRead;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use podwall_sandbox::{Inject, run_in};

mod support;
use support::hostile::{app, app_listening, last_line};
use support::sandbox::{Up, connect, sidecar_pid, topology, wait_for};

/// An injected app beside a pod without a sidecar (its victim), the cluster DNS and a host
/// outside. With `policy`, the app may reach the victim's TCP 8080 and the cluster DNS, and be
/// reached on TCP 8080 from the victim; nothing else, in either direction. Without it, the
/// app's traffic is all allowed (but still passes its sidecar).
fn boundary(policy: bool) -> String {
    let pods = r#"
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: b, labels: {app: app}, annotations: {podwall.io/inject: enabled}}
spec: {containers: [{name: a, ports: [{containerPort: 8080}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.76.0.1, hostIP: 192.168.76.1}
---
apiVersion: v1
kind: Pod
metadata: {name: victim, namespace: b, labels: {app: victim}}
spec: {containers: [{name: v, ports: [{containerPort: 8080}, {containerPort: 9001}, {containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.76.0.2, hostIP: 192.168.76.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.76.0.53, hostIP: 192.168.76.1}
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: api}
spec: {address: 203.0.113.10, names: [api.example.com], ports: [80]}
"#;
    let rules = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: app, namespace: b}
spec:
  podSelector: {matchLabels: {app: app}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: victim}}}]
    ports: [{port: 8080}]
  egress:
  - to: [{podSelector: {matchLabels: {app: victim}}}]
    ports: [{port: 8080}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#;
    if policy {
        format!("{pods}{rules}")
    } else {
        pods.to_string()
    }
}

/// The boundary topology (`boundary(policy)`) up as sandbox `name`, with `path` as extra init
/// and sidecar flags (`--l4-path=kernel`); the directory it was read from lives as long.
fn boundary_up(name: &str, policy: bool, path: &[&str]) -> (tempfile::TempDir, Up) {
    let dir = topology(&boundary(policy));
    let flags: Vec<String> = path.iter().map(|f| f.to_string()).collect();
    let up = Up::with(
        dir.path(),
        podwall_sandbox::Options {
            init_args: flags.clone(),
            sidecar_args: flags,
            ..support::sandbox::options(name, Inject::Annotated)
        },
    );
    (dir, up)
}

const APP: &str = "b/app";
const VICTIM: &str = "b/victim";
const VICTIM_IP: &str = "10.76.0.2";
const DNS_IP: &str = "10.76.0.53";

fn ready(test: &str) -> bool {
    support::hostile::ready(test)
}

fn open_files(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The flow events of the app's sidecar that match `f`, waiting a little for them.
fn flows_matching(up: &Up, f: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for _ in 0..40 {
        found = up.flows(APP).into_iter().filter(|e| f(e)).collect();
        if !found.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    found
}

#[test]
fn a_root_app_that_takes_the_proxy_group_or_uid_is_captured_like_any_other_process() {
    if !ready("a_root_app_that_takes_the_proxy_group_or_uid_is_captured_like_any_other_process") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bids", Inject::Annotated);
    let ns = up.ns(APP);
    // What the exemption rests on: the app cannot mark a socket, make one transparent, or
    // write frames below netfilter.
    assert_eq!(
        app(&ns, "", &[], &["mark"]),
        "mark denied, transparent denied, packet denied"
    );
    // Legitimate traffic flows.
    assert!(
        app(&ns, "", &[], &["tcp", VICTIM_IP, "8080"])
            .starts_with("connected podwall-sandbox b/victim"),
        "the allowed port"
    );
    assert_eq!(
        app(&ns, "", &[], &["dns", DNS_IP, "api.example.com"]),
        "rcode 0"
    );
    // The proxy's group (as a setgid binary of that group would give), its uid, and the group
    // as a supplementary one: captured, judged, denied.
    for ids in [
        &["--regid", "1337", "--clear-groups"][..],
        &["--reuid", "1337", "--regid", "1337", "--clear-groups"][..],
        &["--groups", "1337"][..],
        &["--regid", "1337", "--groups", "1337"][..],
    ] {
        let tcp = app(&ns, "", ids, &["tcp", VICTIM_IP, "9001"]);
        assert!(
            tcp.starts_with("failed"),
            "{ids:?}: TCP to a denied port: {tcp}"
        );
        assert_eq!(
            app(&ns, "", ids, &["udp", VICTIM_IP, "5300"]),
            "no echo",
            "{ids:?}: UDP to a denied port"
        );
        // DNS to a server no rule allows: the DNS proxy refuses it (it never left the pod).
        assert_eq!(
            app(&ns, "", ids, &["dns", VICTIM_IP, "api.example.com"]),
            "rcode 5",
            "{ids:?}: DNS to a resolver policy denies"
        );
        assert!(
            app(&ns, "", ids, &["tcp", VICTIM_IP, "8080"]).starts_with("connected"),
            "{ids:?}: the allowed port still works"
        );
    }
    let denied = flows_matching(&up, |e| {
        e["verdict"] == "DENIED" && e["destination"]["port"] == 9001
    });
    assert!(denied.len() >= 4, "one denial per attempt: {denied:?}");
}

#[test]
fn every_other_ip_protocol_is_judged_both_ways_and_a_rule_without_ports_allows_it() {
    if !ready("every_other_ip_protocol_is_judged_both_ways_and_a_rule_without_ports_allows_it") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bproto", Inject::Annotated);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let victim_ip = VICTIM_IP;
    // Egress UDP-Lite (no capability needed): denied, and said so.
    let (listener, out) = app_listening(&victim, ",+net_raw", &["listen-udplite", "7000", "2"]);
    assert_eq!(app(&ns, "", &[], &["udplite", victim_ip, "7000"]), "sent");
    assert_eq!(
        last_line(listener, out),
        "nothing",
        "UDP-Lite out of the pod"
    );
    let lite = flows_matching(&up, |e| e["ip_protocol"] == 136);
    assert_eq!(lite[0]["protocol"], "OTHER", "{lite:?}");
    assert_eq!(lite[0]["verdict"], "DENIED", "{lite:?}");
    assert_eq!(lite[0]["direction"], "egress", "{lite:?}");

    // Ingress UDP-Lite from the victim: the app's default-deny ingress holds. (The kernel's
    // conntrack finds the checksum of UDP-Lite that crossed the veth wrong and calls the packet
    // INVALID, which the rules drop without asking the sidecar: no flow event for it.)
    let (listener, out) = app_listening(&ns, "", &["listen-udplite", "7001", "2"]);
    assert_eq!(
        app(&victim, ",+net_raw", &[], &["udplite", "10.76.0.1", "7001"]),
        "sent"
    );
    assert_eq!(last_line(listener, out), "nothing", "UDP-Lite into the pod");
    // Ingress of another protocol number: judged, denied, said so.
    let (listener, out) = app_listening(&ns, ",+net_raw", &["listen-raw", "253", "2"]);
    assert_eq!(
        app(
            &victim,
            ",+net_raw",
            &[],
            &["raw", "253", victim_ip, "10.76.0.1"]
        ),
        "sent"
    );
    assert_eq!(
        last_line(listener, out),
        "nothing",
        "IP protocol 253 into the pod"
    );
    let inbound = flows_matching(&up, |e| e["ip_protocol"] == 253);
    assert_eq!(inbound[0]["direction"], "ingress", "{inbound:?}");
    assert_eq!(inbound[0]["verdict"], "DENIED", "{inbound:?}");

    // Any protocol number, raw, from an app granted NET_RAW (but no mark): judged and dropped.
    let (listener, out) = app_listening(&victim, ",+net_raw", &["listen-raw", "253", "2"]);
    assert_eq!(
        app(
            &ns,
            ",+net_raw",
            &[],
            &["raw", "253", "10.76.0.1", victim_ip]
        ),
        "sent"
    );
    assert_eq!(
        last_line(listener, out),
        "nothing",
        "IP protocol 253 out of the pod"
    );
    assert!(!flows_matching(&up, |e| e["ip_protocol"] == 253).is_empty());

    // A rule without ports allows every protocol: UDP-Lite to the victim now arrives.
    std::fs::write(
        up.sb().policy_dir().join("any-protocol.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: any-protocol, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: victim}}}]\n",
    )
    .expect("policy");
    let mut arrived = false;
    for _ in 0..20 {
        let (listener, out) =
            app_listening(&victim, ",+net_raw", &["listen-udplite", "7002", "0.5"]);
        app(&ns, "", &[], &["udplite", victim_ip, "7002"]);
        if last_line(listener, out) == "received" {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "UDP-Lite under a rule without ports");
    let allowed = flows_matching(&up, |e| {
        e["ip_protocol"] == 136 && e["verdict"] == "ALLOWED"
    });
    assert_eq!(
        allowed[0]["egress"]["policy"], "NetworkPolicy b/any-protocol",
        "{allowed:?}"
    );
}

/// The link-local address of `dev` in `ns`, once duplicate address detection let it be used.
fn link_local(ns: &str, dev: &str) -> String {
    let mut found = None;
    wait_for(
        &format!("a usable link-local address on {dev}"),
        Duration::from_secs(10),
        || {
            let out = Command::new("ip")
                .args([
                    "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
                ])
                .output()
                .expect("ip");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            found = text
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .map(|a| a.split('/').next().unwrap_or_default().to_string());
            found.is_some() && !text.contains("tentative")
        },
    );
    found.expect("address")
}

#[test]
fn broadcast_and_multicast_are_no_side_door_to_the_link() {
    if !ready("broadcast_and_multicast_are_no_side_door_to_the_link") {
        return;
    }
    // The app may reach anywhere outside the cluster: as addresses, 255.255.255.255 and
    // 224.0.0.1 are outside it. But they reach whoever listens on the link: the node here,
    // every pod on a node's bridge in a cluster. No policy names those.
    let anywhere = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: app, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 192.168.0.0/16]}}]\n";
    let dir = topology(&format!("{}{anywhere}", boundary(false)));
    let up = Up::new(dir.path(), "bbcast", Inject::Annotated);
    let node = up.sb().record.node.clone();
    let heard = |from_pod: &str, to: &str, port: u16| {
        let socket = run_in(&node, move || {
            // (Every interface is in 224.0.0.1, and a socket on the wildcard address hears
            // the groups its host is in.)
            let s = UdpSocket::bind(("0.0.0.0", port))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("netns")
        .expect("listen on the node");
        let port = port.to_string();
        // "sent", or refused by the rules at once (EPERM): either way, nothing may arrive.
        let said = app(&up.ns(from_pod), "", &[], &["broadcast", to, &port]);
        let mut buf = [0u8; 16];
        (socket.recv_from(&mut buf).map(|(_, from)| from).ok(), said)
    };
    for (to, port) in [("224.0.0.1", 7782), ("255.255.255.255", 7781)] {
        let (from, said) = heard(APP, to, port);
        assert_eq!(from, None, "the node heard the app at {to} ({said})");
        // The same from the pod without a sidecar arrives: the node does listen.
        let (from, said) = heard(VICTIM, to, port + 10);
        assert!(
            from.is_some(),
            "the node did not hear the victim at {to} ({said})"
        );
    }
}

#[test]
fn node_ports_host_ports_external_and_balancer_ips_lead_only_to_pods_the_app_may_reach() {
    if !ready("node_ports_host_ports_external_and_balancer_ips_lead_only_to_pods_the_app_may_reach")
    {
        return;
    }
    // "Anywhere outside the cluster" and the victim's 9001: the node's address and the
    // Service's external and balancer addresses are outside it as addresses, but the node
    // (standing in for kube-proxy and the portmap plugin) takes each to a pod. Only the
    // victim's 9001 is allowed.
    let extra = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: hp, namespace: b, labels: {app: hp}}
spec: {containers: [{name: h, ports: [{containerPort: 8080, hostPort: 18080}]}]}
status: {podIP: 10.76.0.3, hostIP: 192.168.76.1}
---
apiVersion: v1
kind: Service
metadata: {name: victim-web, namespace: b}
spec:
  type: LoadBalancer
  clusterIP: 10.96.76.80
  externalIPs: [203.0.113.80]
  selector: {app: victim}
  ports: [{name: web, port: 8080, nodePort: 30080}, {name: echo, port: 5300, protocol: UDP, nodePort: 30053}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.80}]}}
---
apiVersion: v1
kind: Service
metadata: {name: victim-open, namespace: b}
spec:
  type: NodePort
  clusterIP: 10.96.76.91
  selector: {app: victim}
  ports: [{port: 9001, nodePort: 30091}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: app, namespace: b}
spec:
  podSelector: {matchLabels: {app: app}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
  - to: [{podSelector: {matchLabels: {app: victim}}}]
    ports: [{port: 9001}]
"#;
    let dir = topology(&format!("{}{extra}", boundary(false)));
    let up = Up::new(dir.path(), "bnodeport", Inject::Annotated);
    let ns = up.ns(APP);
    // An address of the node that no object lists (node-local DNS's), where the node answers
    // NodePorts all the same, as kube-proxy does unless its --nodeport-addresses is set.
    let node_ns = up.sb().record.node.clone();
    let added = Command::new("ip")
        .args([
            "-n",
            &node_ns,
            "addr",
            "add",
            "169.254.20.10/32",
            "dev",
            "lo",
        ])
        .status()
        .expect("ip");
    assert!(added.success(), "an unlisted address on the node");
    for to in ["192.168.76.1:30091", "169.254.20.10:30091"] {
        let (_, greeting) = connect(&ns, to.parse().expect("addr")).unwrap_or_else(|e| {
            panic!(
                "the victim's allowed port through the node at {to}: {e}; flows: {:#?}",
                up.flows(APP)
            )
        });
        assert!(greeting.contains("b/victim port 9001"), "{to}: {greeting}");
    }
    for (to, what) in [
        ("192.168.76.1:30080", "b/victim-web"),
        ("169.254.20.10:30080", "b/victim-web"),
        ("203.0.113.80:8080", "b/victim-web"),
        ("198.51.100.80:8080", "b/victim-web"),
        ("192.168.76.1:18080", "b/hp (hostPort)"),
    ] {
        let to: SocketAddr = to.parse().expect("addr");
        if let Ok((_, greeting)) = connect(&ns, to) {
            panic!("{to} led the app to a pod it may not reach: {greeting}");
        }
        let refused = flows_matching(&up, |e| {
            e["service"]["address"] == to.to_string() && e["verdict"] == "DENIED"
        });
        assert!(
            refused.iter().any(|e| e["service"]["name"] == what),
            "{to}: no denial naming {what}: {:#?}",
            up.flows(APP)
        );
    }
    // A UDP NodePort the same: the first datagram is judged by where it leads.
    let echoes = |ns: &str, to: &str| {
        let to: SocketAddr = to.parse().expect("addr");
        run_in(ns, move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.send_to(b"anyone there", to)?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).map(|(n, _)| buf[..n].to_vec())
        })
        .expect("netns")
        .is_ok_and(|echo| echo == b"anyone there")
    };
    for to in ["192.168.76.1:30053", "169.254.20.10:30053"] {
        assert!(
            !echoes(&ns, to),
            "the UDP NodePort at {to} led to the victim"
        );
        assert!(
            !flows_matching(&up, |e| {
                e["service"]["address"] == to && e["verdict"] == "DENIED"
            })
            .is_empty(),
            "no denial of the UDP NodePort at {to}: {:#?}",
            up.flows(APP)
        );
    }
    // The same from a pod without a sidecar arrive: the node does take them there.
    let plain = up.ns("kube-system/coredns");
    for (to, greets) in [
        ("192.168.76.1:30080", "b/victim port 8080"),
        ("169.254.20.10:30080", "b/victim port 8080"),
        ("203.0.113.80:8080", "b/victim port 8080"),
        ("198.51.100.80:8080", "b/victim port 8080"),
        ("192.168.76.1:18080", "b/hp port 8080"),
    ] {
        let (_, greeting) = connect(&plain, to.parse().expect("addr"))
            .unwrap_or_else(|e| panic!("{to} from a pod without a sidecar: {e}"));
        assert!(greeting.contains(greets), "{greeting}");
    }
    assert!(echoes(&plain, "192.168.76.1:30053"));
    assert!(echoes(&plain, "169.254.20.10:30053"));
}

#[test]
fn ipv6_link_local_is_no_side_door_to_the_node() {
    if !ready("ipv6_link_local_is_no_side_door_to_the_node") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bv6", Inject::Annotated);
    let node = up.sb().record.node.clone();
    let (app_i, victim_i) = (up.index(APP), up.index(VICTIM));
    // The node listens on every IPv6 address and greets whoever connects.
    let listener = run_in(&node, || std::net::TcpListener::bind("[::]:7777"))
        .expect("netns")
        .expect("listen");
    let (reached, greeted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let _ = std::io::Write::write_all(&mut stream, b"podwall-node\n");
            if reached.send(stream.peer_addr().ok()).is_err() {
                break;
            }
        }
    });
    link_local(&up.ns(APP), "eth0");
    link_local(&up.ns(VICTIM), "eth0");
    // The node's side of each pod's link.
    let to_app = link_local(&node, &format!("v{app_i}"));
    let to_victim = link_local(&node, &format!("v{victim_i}"));
    // A pod without a sidecar reaches the node over link-local: the path works.
    let plain = app(
        &up.ns(VICTIM),
        "",
        &[],
        &["tcp", &format!("{to_victim}%eth0"), "7777"],
    );
    assert_eq!(plain, "connected podwall-node");
    assert!(greeted.recv_timeout(Duration::from_secs(1)).is_ok());
    // The injected app does not: IPv4 policy denies the node, and the pod has no global IPv6
    // address.
    let attempt = app(
        &up.ns(APP),
        "",
        &[],
        &["tcp", &format!("{to_app}%eth0"), "7777"],
    );
    assert!(attempt.starts_with("failed"), "{attempt}");
    assert!(
        greeted.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing reached the node from the app"
    );
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &up.ns(APP),
            "ip6tables-save",
            "-t",
            "filter",
        ])
        .output()
        .expect("ip6tables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains("-A PODWALL_FILTER_OUT -j DROP"), "{rules}");
    // IPv4 still flows.
    assert!(app(&up.ns(APP), "", &[], &["tcp", VICTIM_IP, "8080"]).starts_with("connected"));
}

#[test]
fn a_sidecar_port_bound_by_the_app_while_the_sidecar_is_down_receives_nothing() {
    if !ready("a_sidecar_port_bound_by_the_app_while_the_sidecar_is_down_receives_nothing") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "btake", Inject::Annotated);
    let ns = up.ns(APP);
    let app_addr = SocketAddr::new(up.ip(APP), 8080);
    // Allowed inbound works while the sidecar runs.
    assert!(connect(&up.ns(VICTIM), app_addr).is_ok());
    // The sidecar dies (OOM kill, crash); the app takes its inbound port.
    support::sandbox::kill_sidecar(&ns);
    let (listener, out) = app_listening(&ns, "", &["listen-tcp", "15006", "3"]);
    let attempt = connect(&up.ns(VICTIM), app_addr);
    assert!(
        attempt.is_err(),
        "nothing answered for the pod: {attempt:?}"
    );
    assert_eq!(
        last_line(listener, out),
        "nothing",
        "the app received no redirected connection"
    );
    // The admin port (not redirected: the kubelet probes it) is the sidecar's alone too.
    let (admin, admin_out) = app_listening(&ns, "", &["listen-tcp", "15020", "2"]);
    let probe = app(&up.ns(VICTIM), "", &[], &["tcp", "10.76.0.1", "15020"]);
    assert!(probe.starts_with("failed"), "{probe}");
    assert_eq!(
        last_line(admin, admin_out),
        "nothing",
        "the app answered on the admin port"
    );
    // And no outgoing connection can hold a sidecar port when the sidecar (re)starts.
    let reserved = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "cat",
            "/proc/sys/net/ipv4/ip_local_reserved_ports",
        ])
        .output()
        .expect("cat");
    let reserved = String::from_utf8_lossy(&reserved.stdout);
    for port in ["15001", "15006", "15020", "15053"] {
        assert!(
            reserved.split(',').any(|p| p.trim() == port),
            "{port} in {reserved}"
        );
    }
}

#[test]
fn nothing_sent_to_the_sidecars_ports_directly_reaches_or_wedges_them() {
    if !ready("nothing_sent_to_the_sidecars_ports_directly_reaches_or_wedges_them") {
        return;
    }
    // Open egress: the app may reach anything, so only the listeners' own guard stands.
    let dir = topology(&boundary(false));
    let up = Up::new(dir.path(), "bdirect", Inject::Annotated);
    let ns = up.ns(APP);
    let pid = sidecar_pid(&ns);
    let files = open_files(pid);
    let pod_ip = up.ip(APP).to_string();
    // Datagrams straight to the DNS port, which would be forwarded to the sidecar itself.
    assert_eq!(
        app(&ns, "", &[], &["flood-udp", "127.0.0.1", "15053", "600"]),
        "sent"
    );
    assert_eq!(
        app(&ns, "", &[], &["flood-udp", &pod_ip, "15053", "600"]),
        "sent"
    );
    // Connections straight to each listener.
    for (host, port) in [
        ("127.0.0.1", "15053"),
        ("127.0.0.1", "15001"),
        (pod_ip.as_str(), "15006"),
        (pod_ip.as_str(), "15001"),
    ] {
        let r = app(&ns, "", &[], &["tcp", host, port]);
        assert!(r.starts_with("failed"), "{host}:{port}: {r}");
        let r = app(&ns, "", &[], &["dns-tcp", host, "loop.example.com", port]);
        assert_eq!(r, "no answer", "{host}:{port}");
    }
    // DNS still answers, UDP and TCP, and the sidecar holds no more files than before.
    assert_eq!(
        app(&ns, "", &[], &["dns", DNS_IP, "api.example.com"]),
        "rcode 0"
    );
    assert_eq!(
        app(&ns, "", &[], &["dns-tcp", DNS_IP, "api.example.com"]),
        "rcode 0"
    );
    assert!(app(&ns, "", &[], &["tcp", VICTIM_IP, "9001"]).starts_with("connected"));
    assert!(
        open_files(pid) <= files + 4,
        "files before {files}, after {}",
        open_files(pid)
    );
}

#[test]
fn a_tcp_dns_client_cannot_make_the_sidecar_hold_memory_or_connections_without_bound() {
    if !ready("a_tcp_dns_client_cannot_make_the_sidecar_hold_memory_or_connections_without_bound") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bdnstcp", Inject::Annotated);
    let ns = up.ns(APP);
    // TCP to port 53 of any address reaches the DNS proxy, before any judgement. A length
    // prefix promising 64 KiB, then silence: the proxy does not set 64 KiB aside for each.
    let long = format!("ffff{}", "00".repeat(1000));
    assert_eq!(
        app(&ns, "", &[], &["dns-tcp-hold", DNS_IP, "300", &long]),
        "closed 300",
        "connections that promised more than any query were held"
    );
    // Silent connections: past the most served at once (256), each is closed as it comes.
    let held = app(&ns, "", &[], &["dns-tcp-hold", DNS_IP, "300", ""]);
    let closed: usize = held
        .strip_prefix("closed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{held}"));
    assert!(closed >= 300 - 256, "{held}: every one was held");
    // Once they are gone, DNS over TCP answers.
    wait_for("DNS over TCP to answer", Duration::from_secs(15), || {
        app(&ns, "", &[], &["dns-tcp", DNS_IP, "api.example.com"]) == "rcode 0"
    });
}

#[test]
fn a_forged_loopback_packet_never_reaches_a_sidecar_socket() {
    if !ready("a_forged_loopback_packet_never_reaches_a_sidecar_socket") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bspoof", Inject::Annotated);
    let ns = up.ns(APP);
    let pod_ip = up.ip(APP);
    // Two sockets in the pod: one marked as the sidecar marks its own (its DNS upstream
    // socket, say), one of the app's.
    let (marked, plain) = run_in(&ns, move || {
        let marked = UdpSocket::bind(SocketAddr::new(pod_ip, 40123)).expect("bind");
        nix::sys::socket::setsockopt(&marked, nix::sys::socket::sockopt::Mark, &0x1337)
            .expect("mark");
        let plain = UdpSocket::bind(SocketAddr::new(pod_ip, 40124)).expect("bind");
        for s in [&marked, &plain] {
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
        }
        (marked, plain)
    })
    .expect("netns");
    // An app that kept NET_RAW forges the cluster resolver's answers on loopback.
    let pod = pod_ip.to_string();
    // Sent through the IP layer: refused on the way out (no unmarked loopback packet leaves
    // with a source that is not the pod's).
    for port in ["40123", "40124"] {
        let r = app(
            &ns,
            ",+net_raw",
            &[],
            &["spoof-udp", DNS_IP, "53", &pod, port],
        );
        assert!(r.contains("Operation not permitted"), "{r}");
    }
    let mut buf = [0u8; 64];
    assert!(marked.recv_from(&mut buf).is_err());
    assert!(plain.recv_from(&mut buf).is_err());
    // Written below it, on lo (AF_PACKET): dropped on the way in before a sidecar socket.
    for port in ["40123", "40124"] {
        assert_eq!(
            app(
                &ns,
                ",+net_raw",
                &[],
                &["spoof-udp-l2", DNS_IP, "53", &pod, port]
            ),
            "sent"
        );
    }
    assert!(
        marked.recv_from(&mut buf).is_err(),
        "the forged packet reached a sidecar socket"
    );
    let (n, from) = plain
        .recv_from(&mut buf)
        .expect("the app's own socket gets its packet");
    assert_eq!(
        (&buf[..n], from.to_string().as_str()),
        (&b"forged"[..], "10.76.0.53:53")
    );
}

#[test]
fn dns_is_refused_before_the_first_policy_like_everything_else() {
    if !ready("dns_is_refused_before_the_first_policy_like_everything_else") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bfirst", Inject::None);
    let ns = up.ns(APP);
    // Before the sidecar: the cluster DNS answers.
    assert_eq!(
        app(&ns, "", &[], &["dns", DNS_IP, "api.example.com"]),
        "rcode 0"
    );
    // A sidecar whose control plane never answers (nothing listens there).
    let exe = support::sandbox::exe().display().to_string();
    let status = Command::new("ip")
        .args(["netns", "exec", &ns, &exe, "proxy", "init"])
        .status()
        .expect("init");
    assert!(status.success());
    let mut sidecar = podwall_sandbox::sidecar_in(&ns, &exe)
        .args(["proxy", "run", "--policy-source=control:192.168.76.1:1"])
        .args(["--pod-namespace", "b", "--pod-name", "app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sidecar");
    wait_for("the sidecar to listen", Duration::from_secs(10), || {
        run_in(&ns, || {
            std::net::TcpStream::connect(("127.0.0.1", 15020)).is_ok()
        })
        .unwrap_or(false)
    });
    let udp = app(&ns, "", &[], &["dns", DNS_IP, "api.example.com"]);
    let tcp = app(&ns, "", &[], &["dns-tcp", DNS_IP, "api.example.com"]);
    let elsewhere = app(&ns, "", &[], &["dns", VICTIM_IP, "api.example.com"]);
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert_eq!(udp, "rcode 5", "REFUSED, not forwarded");
    assert_eq!(tcp, "rcode 5");
    assert_eq!(elsewhere, "rcode 5");
}

#[test]
fn a_socket_bound_to_loopback_cannot_open_an_unredirected_flow() {
    if !ready("a_socket_bound_to_loopback_cannot_open_an_unredirected_flow") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "blo", Inject::Annotated);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    // TCP: a SYN routed out of lo (SO_BINDTODEVICE needs no capability) used to leave a
    // conntrack entry without the redirect, which a second connect from the same port then rode
    // straight out of the pod.
    let r = app(&ns, "", &[], &["lo-tcp", VICTIM_IP, "9001", "40555"]);
    assert!(r.starts_with("failed"), "TCP to a denied port: {r}");
    let r = app(&ns, "", &[], &["lo-tcp", VICTIM_IP, "8080", "40556"]);
    assert!(
        r.starts_with("connected podwall-sandbox b/victim"),
        "the allowed port: {r}"
    );
    // UDP: a datagram out of lo used to open a flow that the peer's datagrams then answered.
    let (peer, peer_out) = app_listening(
        &victim,
        ",+net_raw",
        &["udp-peer", "6000", "10.76.0.1", "40600", "4"],
    );
    let r = app(&ns, "", &[], &["lo-udp", VICTIM_IP, "6000", "40600", "3"]);
    assert_eq!(r, "nothing", "the peer reached the app");
    assert_eq!(
        last_line(peer, peer_out),
        "peer nothing",
        "the app reached the peer"
    );
}

#[test]
fn captured_dns_is_no_channel_to_the_address_the_app_names() {
    if !ready("captured_dns_is_no_channel_to_the_address_the_app_names") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bdns53", Inject::Annotated);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    // A socket bound to eth0 escaped the capture's routing with the capture's mark.
    let (listener, out) = app_listening(&victim, ",+net_raw", &["udp-listen", "53", "3"]);
    assert_eq!(
        app(&ns, "", &[], &["bound-udp", "eth0", VICTIM_IP, "53"]),
        "no reply"
    );
    assert_eq!(
        last_line(listener, out),
        "nothing",
        "UDP to port 53 left the pod"
    );
    // A "query" the sidecar refused used to open the flow back in from the address it named.
    let (peer, peer_out) = app_listening(
        &victim,
        ",+net_raw",
        &["udp-peer", "53", "10.76.0.1", "40700", "4"],
    );
    assert_eq!(
        app(&ns, "", &[], &["dns-prime", VICTIM_IP, "40700", "3"]),
        "nothing",
        "the named address answered the app from port 53"
    );
    let _ = last_line(peer, peer_out);
    // The cluster DNS still answers.
    assert_eq!(
        app(&ns, "", &[], &["dns", DNS_IP, "api.example.com"]),
        "rcode 0"
    );
}

#[test]
fn tcp_the_sidecar_did_not_open_never_leaves_the_pod() {
    if !ready("tcp_the_sidecar_did_not_open_never_leaves_the_pod") {
        return;
    }
    // Open egress: the connection itself is allowed; what follows it must still pass the proxy.
    zombie_segment_stays_in("bzombie", &[]);
}

#[test]
fn on_the_kernel_path_tcp_the_judge_did_not_admit_never_leaves_the_pod() {
    if !ready("on_the_kernel_path_tcp_the_judge_did_not_admit_never_leaves_the_pod") {
        return;
    }
    // The connection is allowed and the kernel carries it; once conntrack has forgotten it, the
    // app's next segment belongs to no admitted connection and must not leave.
    zombie_segment_stays_in("bzombk", &["--l4-path=kernel"]);
}

#[test]
fn on_the_kernel_path_a_reset_connections_four_tuple_opened_again_is_not_let_through_unjudged() {
    if !ready(
        "on_the_kernel_path_a_reset_connections_four_tuple_opened_again_is_not_let_through_unjudged",
    ) {
        return;
    }
    // The kernel carries the app's connection; the server resets it. Conntrack keeps the entry
    // (CLOSE, ten seconds) and files a new SYN on the same 4-tuple under it, not as NEW: the
    // old entry's mark would let it out unjudged. The rules send it to the judge, which lets
    // through only that connection's own SYN sent again.
    let (_dir, up) = boundary_up("bstale", false, &["--l4-path=kernel"]);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let (mut server, _out) = app_listening(&victim, "", &["rst-server", "7070", "30"]);
    let first = app(
        &ns,
        "",
        &[],
        &["from-port", "41000", VICTIM_IP, "7070", "3"],
    );
    assert!(first.starts_with("connected"), "allowed at first: {first}");
    // From now on the app may reach nothing; a fresh connection shows the policy is in force.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: app-deny, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  policyTypes: [Egress]\n";
    std::fs::write(up.sb().policy_dir().join("deny.yaml"), deny).expect("write policy");
    wait_for("the denial to apply", Duration::from_secs(5), || {
        app(
            &ns,
            "",
            &[],
            &["from-port", "41001", VICTIM_IP, "7070", "1"],
        )
        .starts_with("failed")
    });
    // The old 4-tuple again, within conntrack's ten seconds.
    let again = app(
        &ns,
        "",
        &[],
        &["from-port", "41000", VICTIM_IP, "7070", "2"],
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        again.starts_with("failed"),
        "a SYN on a reset connection's 4-tuple passed unjudged: {again}"
    );
}

#[test]
fn an_app_cannot_answer_a_denied_peers_unanswered_syn_with_its_own() {
    if !ready("an_app_cannot_answer_a_denied_peers_unanswered_syn_with_its_own") {
        return;
    }
    simultaneous_open_stays_out("bsimul", &[]);
}

#[test]
fn on_the_kernel_path_an_app_cannot_answer_a_denied_peers_unanswered_syn_with_its_own() {
    if !ready("on_the_kernel_path_an_app_cannot_answer_a_denied_peers_unanswered_syn_with_its_own")
    {
        return;
    }
    simultaneous_open_stays_out("bksimul", &["--l4-path=kernel"]);
}

/// The victim, which policy lets the app neither reach nor be reached by on these ports,
/// dials the app's port 9100 with a TCP-MD5 key: its SYN is judged, denied and handed to the
/// proxy to refuse, whose listener drops it unread (it has no key), which leaves conntrack an
/// entry of an unanswered connection into the pod. The app dials the victim back from 9100
/// with the key: its SYN is that entry's reply direction (TCP's simultaneous open), and must
/// not leave the pod to open a connection nobody judged, both ways.
fn simultaneous_open_stays_out(name: &str, path: &[&str]) {
    let (_dir, up) = boundary_up(name, true, path);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let (dialer, dialer_out) = app_listening(
        &victim,
        "",
        &["md5-dial", "41500", "10.76.0.1", "9100", "k3y", "6"],
    );
    // Its SYN is in conntrack.
    std::thread::sleep(Duration::from_millis(500));
    let said = app(
        &ns,
        "",
        &[],
        &["md5-dial", "9100", VICTIM_IP, "41500", "k3y", "3"],
    );
    let answer = said.lines().last().unwrap_or_default();
    let victim_saw = last_line(dialer, dialer_out);
    assert!(
        answer.starts_with("failed"),
        "the app answered a denied peer: {answer}"
    );
    assert!(
        victim_saw.starts_with("failed"),
        "the denied peer got a connection: {victim_saw}"
    );
}

#[test]
fn on_the_kernel_path_a_revoked_connection_ends_though_the_app_hides_its_socket() {
    if !ready("on_the_kernel_path_a_revoked_connection_ends_though_the_app_hides_its_socket") {
        return;
    }
    hidden_socket_is_reset("bhide", false);
}

#[test]
fn on_the_kernel_path_a_decoy_freed_on_a_carried_connections_four_tuple_does_not_end_it() {
    if !ready(
        "on_the_kernel_path_a_decoy_freed_on_a_carried_connections_four_tuple_does_not_end_it",
    ) {
        return;
    }
    hidden_socket_is_reset("bdecoy", true);
}

/// The kernel carries the app's connection to the victim, which sends it a line every 100 ms.
/// The app binds its socket to eth0 (a lookup by addresses alone no longer finds it) and makes
/// it transparent (NET_RAW: TPROXY would hand it a segment of the same addresses), then
/// answers each line. A policy change denies the connection: it must end at once, not carry on
/// once its conntrack entry is gone. With `decoy`, the app first opens a second socket on the
/// same 4-tuple (unbound: the kernel lets it connect beside one bound to an interface) and
/// closes it at once: its freed socket must not pass for the connection's end, which would
/// leave the connection unrecorded, and not reset by the policy change. Both ends are reset.
fn hidden_socket_is_reset(name: &str, decoy: bool) {
    let (_dir, up) = boundary_up(name, false, &["--l4-path=kernel"]);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let (server, server_out) = app_listening(&victim, "", &["tick-server", "7070", "12"]);
    let mut args = vec!["hide", VICTIM_IP, "7070", "10"];
    if decoy {
        args.push("decoy");
    }
    let (hider, mut hider_out) = app_listening(&ns, ",+net_raw", &args);
    if decoy {
        let mut line = String::new();
        let _ = hider_out.read_line(&mut line);
        assert_eq!(line.trim(), "decoy sent");
        // The sidecar hears of the decoy's end.
        std::thread::sleep(Duration::from_millis(300));
    }
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: app-deny, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  policyTypes: [Egress]\n";
    std::fs::write(up.sb().policy_dir().join("deny.yaml"), deny).expect("write policy");
    let outcome = last_line(hider, hider_out);
    let peer = last_line(server, server_out);
    assert_eq!(outcome, "reset", "the revoked connection carried on");
    // The peer's end is reset too, not left open to time out.
    assert_eq!(peer, "reset", "the victim's end of the revoked connection");
    // Its end says why.
    let revoked = flows_matching(&up, |e| {
        e["destination"]["port"] == 7070
            && e["phase"] == "end"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("policy change"))
    });
    assert!(!revoked.is_empty(), "{:#?}", up.flows(APP));
    // And it is the connection's one end: a socket freed on its addresses (the decoy) is not.
    let ends: Vec<_> = up
        .flows(APP)
        .into_iter()
        .filter(|e| e["destination"]["port"] == 7070)
        .collect();
    assert_eq!(ends.len(), 1, "{ends:#?}");
}

#[test]
fn on_the_kernel_path_an_upload_closed_before_the_peer_answers_ends_at_once_with_its_bytes() {
    if !ready(
        "on_the_kernel_path_an_upload_closed_before_the_peer_answers_ends_at_once_with_its_bytes",
    ) {
        return;
    }
    // The app sends and closes; the victim reads it all and says nothing. The app's socket is
    // freed (a time-wait socket in FIN_WAIT2 stands for it) without having received a byte,
    // which is no sign of a decoy: its end, with what it sent, is written at once, not once
    // conntrack forgets the half-closed connection a minute later.
    let (_dir, up) = boundary_up("bupload", false, &["--l4-path=kernel"]);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let (sink, sink_out) = app_listening(&victim, "", &["sink", "7071", "4"]);
    assert_eq!(
        app(&ns, "", &[], &["upload", VICTIM_IP, "7071", "5000"]),
        "sent"
    );
    let ends = flows_matching(&up, |e| {
        e["destination"]["port"] == 7071 && e["phase"] == "end"
    });
    assert_eq!(last_line(sink, sink_out), "drained 5000");
    assert_eq!(
        ends.len(),
        1,
        "no end within 2 s: {:#?}",
        up.flows_with_starts(APP)
    );
    assert_eq!(ends[0]["bytes_sent"], 5000, "{ends:#?}");
}

#[test]
fn on_the_kernel_path_freed_sockets_that_never_connected_cannot_crowd_out_a_connections_end() {
    if !ready(
        "on_the_kernel_path_freed_sockets_that_never_connected_cannot_crowd_out_a_connections_end",
    ) {
        return;
    }
    // The app uploads on a kernel-carried connection, then, while the sidecar gets no CPU (a
    // busy node, a CPU limit: here it is stopped), frees a hundred thousand sockets it never
    // connected, each one heard of as a freed socket, and closes the connection behind them.
    // The connection's end must still come with what it carried, not lost to a full buffer
    // (to be written long after, without bytes).
    let (_dir, up) = boundary_up("bfrees", false, &["--l4-path=kernel"]);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let (sink, sink_out) = app_listening(&victim, "", &["sink", "7072", "0"]);
    let (uploader, uploader_out) = app_listening(
        &ns,
        "",
        &["upload-behind-frees", VICTIM_IP, "7072", "5000", "100000"],
    );
    let sidecar = nix::unistd::Pid::from_raw(sidecar_pid(&ns));
    nix::sys::signal::kill(sidecar, nix::sys::signal::Signal::SIGSTOP).expect("stop");
    let done = last_line(uploader, uploader_out);
    nix::sys::signal::kill(sidecar, nix::sys::signal::Signal::SIGCONT).expect("continue");
    assert_eq!(done, "done");
    assert_eq!(last_line(sink, sink_out), "drained 5000");
    let ends = flows_matching(&up, |e| {
        e["destination"]["port"] == 7072 && e["phase"] == "end"
    });
    assert_eq!(
        ends.len(),
        1,
        "no end within 2 s: {:#?}",
        up.flows_with_starts(APP)
    );
    assert_eq!(ends[0]["bytes_sent"], 5000, "{ends:#?}");
}

#[test]
fn a_denied_peer_that_opens_its_four_tuple_again_at_once_is_judged_again() {
    if !ready("a_denied_peer_that_opens_its_four_tuple_again_at_once_is_judged_again") {
        return;
    }
    reopened_four_tuple_stays_out("breopen", &[]);
}

#[test]
fn on_the_kernel_path_a_denied_peer_that_opens_its_four_tuple_again_at_once_is_judged_again() {
    if !ready(
        "on_the_kernel_path_a_denied_peer_that_opens_its_four_tuple_again_at_once_is_judged_again",
    ) {
        return;
    }
    reopened_four_tuple_stays_out("breopenk", &["--l4-path=kernel"]);
}

/// The victim connects to the app's port 7070, which policy denies: the sidecar refuses it
/// with a reset, and conntrack keeps the entry (CLOSE, ten seconds). The victim's SYN on the
/// same 4-tuple at once is filed under that entry, not as NEW, so no rule for new connections
/// sees it: it must not reach the app's listener unjudged. `path`: extra init and sidecar
/// flags.
fn reopened_four_tuple_stays_out(name: &str, path: &[&str]) {
    let (_dir, up) = boundary_up(name, true, path);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    let app_ip = up.ip(APP).to_string();
    let (listener, listener_out) = app_listening(&ns, "", &["listen-tcp", "7070", "6"]);
    for attempt in ["first", "again"] {
        let out = app(
            &victim,
            "",
            &[],
            &["from-port", "41000", &app_ip, "7070", "2"],
        );
        assert!(out.starts_with("failed"), "{attempt}: {out}");
    }
    assert_eq!(
        last_line(listener, listener_out),
        "nothing",
        "a denied peer reached the app by opening its 4-tuple again"
    );
}

/// An app connects (allowed), waits for conntrack to forget the half-closed connection, then
/// sends a secret: the victim's wire must not see it. `path`: extra init and sidecar flags.
fn zombie_segment_stays_in(name: &str, path: &[&str]) {
    let (_dir, up) = boundary_up(name, false, path);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    // Conntrack forgets a half-closed connection after a while (a second here); the app's
    // next segment then carries no redirect and conntrack calls it INVALID.
    let set = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait")
        .status()
        .expect("sysctl");
    assert!(set.success());
    let (server, server_out) = app_listening(&victim, ",+net_raw", &["close-server", "7070"]);
    let (sniffer, sniffed) = app_listening(
        &victim,
        ",+net_raw",
        &["sniff", "eth0", "SECRET-EXFILTRATED", "8"],
    );
    assert_eq!(
        app(&ns, "", &[], &["zombie", VICTIM_IP, "7070", "3"]),
        "sent"
    );
    assert_eq!(last_line(server, server_out), "closed");
    assert_eq!(
        last_line(sniffer, sniffed),
        "not seen",
        "a segment the proxy never relayed reached the victim"
    );
}

#[test]
fn a_connection_from_an_address_that_is_not_the_pods_never_leaves_it() {
    if !ready("a_connection_from_an_address_that_is_not_the_pods_never_leaves_it") {
        return;
    }
    forged_source_stays_in(["pw-e2e-frp", "pw-e2e-frh"], &[]);
}

#[test]
fn on_the_kernel_path_a_connection_from_an_address_that_is_not_the_pods_never_leaves_it() {
    if !ready(
        "on_the_kernel_path_a_connection_from_an_address_that_is_not_the_pods_never_leaves_it",
    ) {
        return;
    }
    // The egress rules let a kernel-carried connection's packets out unchecked: the judge must
    // never give the kernel one whose source the pod does not own.
    forged_source_stays_in(["pw-e2e-frkp", "pw-e2e-frkh"], &["--l4-path=kernel"]);
}

/// An IPv6 pod whose policy lets it reach its neighbour's TCP 8080; its app opens that
/// connection from an address of the pod's network that is not its own (`IPV6_FREEBIND`, no
/// capability): no frame from that address leaves the pod, while the same connection from the
/// pod's own address does. `path`: extra init and sidecar flags.
fn forged_source_stays_in(names: [&'static str; 2], path: &[&str]) {
    const OWN: &str = "fd79::1";
    const FORGED: &str = "fd79::99";
    const PEER: &str = "fd79::2";
    let _pair = support::sandbox::V6Pair::new(names, ["fd79::1/64", "fd79::2/64"]);
    let pod = names[0];
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("state.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: v6, labels: {app: app}}\nstatus: {podIP: 'fd79::1'}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: app, namespace: v6}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd79::2/128'}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("policy");
    let init = Command::new("ip")
        .args(["netns", "exec", pod])
        .arg(support::sandbox::exe())
        .args(["proxy", "init"])
        .args(path)
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut sidecar =
        podwall_sandbox::sidecar_in(pod, &support::sandbox::exe().display().to_string())
            .args(["proxy", "run", "--pod-namespace", "v6", "--pod-name", "app"])
            .arg(format!(
                "--policy-source=dir:{}",
                dir.path().join("state.yaml").display()
            ))
            .args(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sidecar");
    support::sandbox::wait_ready(pod);
    // Watched on the pod's own interface, as frames leave it (after every rule).
    let leaves = |source: &str| {
        let (sniffer, sniffed) =
            app_listening(pod, ",+net_raw", &["sniff-from", "eth0", source, "4"]);
        let r = app(
            pod,
            "",
            &[],
            &["freebind-connect", source, PEER, "8080", "2"],
        );
        (r, last_line(sniffer, sniffed))
    };
    let (forged, seen) = leaves(FORGED);
    let (own, own_seen) = leaves(OWN);
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert_eq!(
        seen, "not seen",
        "a packet from an address the pod does not own left it ({forged})"
    );
    // Nobody listens on the neighbour: the connection is refused there, after leaving.
    assert_eq!(own_seen, "seen", "the allowed connection left: {own}");
}

#[test]
fn an_ipv6_packet_the_app_sends_itself_from_a_forged_source_opens_no_flow() {
    if !ready("an_ipv6_packet_the_app_sends_itself_from_a_forged_source_opens_no_flow") {
        return;
    }
    let (pod, host) = ("pw-e2e-v6p", "pw-e2e-v6h");
    let _pair = support::sandbox::V6Pair::new([pod, host], ["fd78::1/64", "fd78::2/64"]);
    // A pod with a global IPv6 address, its rules in place, no policy yet: nothing may pass.
    let init = Command::new("ip")
        .args(["netns", "exec", pod])
        .arg(support::sandbox::exe())
        .args(["proxy", "init"])
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (echo, echo_out) = app_listening(host, ",+net_raw", &["udp6-echo", "6000", "3"]);
    let r = app(
        pod,
        "",
        &[],
        &["v6-prime-udp", "fd78::1", "fd78::2", "6000"],
    );
    let host_saw = last_line(echo, echo_out);
    assert_eq!(r, "no answer");
    assert_eq!(host_saw, "nothing", "the app's datagram reached the host");
}

/// An HTTP GET with curl from inside `ns`: the status code (000 when nothing answered).
fn http_status(ns: &str, url: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "3",
        ])
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_admin_port_gives_metrics_only_to_peers_ingress_policy_allows() {
    if !ready("the_admin_port_gives_metrics_only_to_peers_ingress_policy_allows") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "badmin", Inject::Annotated);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    // The counters move with what the app does: a denied peer could read them as a channel.
    assert_eq!(
        http_status(&victim, "http://10.76.0.1:15020/metrics"),
        "403"
    );
    let denied = flows_matching(&up, |e| {
        e["destination"]["port"] == 15020 && e["verdict"] == "DENIED"
    });
    assert_eq!(denied[0]["source"]["pod"], "victim", "{denied:?}");
    // Probes answer anyone; the pod itself reads its metrics.
    assert_eq!(http_status(&victim, "http://10.76.0.1:15020/ready"), "200");
    assert_eq!(http_status(&ns, "http://127.0.0.1:15020/metrics"), "200");
    // A policy that allows the peer on the admin port lets it scrape.
    std::fs::write(
        up.sb().policy_dir().join("scrape.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: scrape, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: victim}}}]\n    ports: [{port: 15020}]\n",
    )
    .expect("policy");
    wait_for("the scrape policy", Duration::from_secs(10), || {
        http_status(&victim, "http://10.76.0.1:15020/metrics") == "200"
    });
}

#[test]
fn sctp_is_judged_by_port_both_ways() {
    if !ready("sctp_is_judged_by_port_both_ways") {
        return;
    }
    let dir = topology(&boundary(true));
    let up = Up::new(dir.path(), "bsctp", Inject::Annotated);
    let (ns, victim) = (up.ns(APP), up.ns(VICTIM));
    // The app may send SCTP to the victim's port 5000 and no other.
    std::fs::write(
        up.sb().policy_dir().join("sctp.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sctp, namespace: b}\nspec:\n  podSelector: {matchLabels: {app: app}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: victim}}}]\n    ports: [{port: 5000, protocol: SCTP}]\n",
    )
    .expect("policy");
    let init = |from: &str, src: &str, dst: &str, port: &str| {
        let (listener, out) = app_listening(
            if from == ns.as_str() { &victim } else { &ns },
            ",+net_raw",
            &["listen-raw", "132", "1"],
        );
        assert_eq!(
            app(from, ",+net_raw", &[], &["sctp-init", src, dst, port]),
            "sent"
        );
        last_line(listener, out)
    };
    let mut arrived = false;
    for _ in 0..20 {
        if init(&ns, "10.76.0.1", VICTIM_IP, "5000") == "received" {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "SCTP to the allowed port");
    assert_eq!(
        init(&ns, "10.76.0.1", VICTIM_IP, "5001"),
        "nothing",
        "SCTP to another port"
    );
    assert_eq!(
        init(&victim, VICTIM_IP, "10.76.0.1", "5000"),
        "nothing",
        "SCTP into the pod, which allows only TCP 8080 in"
    );
    let sctp = |direction: &str, port: u16, verdict: &str| {
        flows_matching(&up, |e| {
            e["protocol"] == "SCTP"
                && e["direction"] == direction
                && e["destination"]["port"] == port
                && e["verdict"] == verdict
        })
    };
    let allowed = sctp("egress", 5000, "ALLOWED");
    assert_eq!(
        allowed[0]["egress"]["policy"], "NetworkPolicy b/sctp",
        "{allowed:?}"
    );
    assert!(
        !sctp("egress", 5001, "DENIED").is_empty(),
        "{:?}",
        up.flows(APP)
    );
    assert!(
        !sctp("ingress", 5000, "DENIED").is_empty(),
        "{:?}",
        up.flows(APP)
    );
}
