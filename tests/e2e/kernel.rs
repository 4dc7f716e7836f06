//! The kernel path for TCP (`proxy init --l4-path kernel`): each new connection's first packet
//! is judged by the sidecar, which lets the kernel carry what needs no bytes inspected and
//! hands the rest to the proxy.

use super::*;
use std::io::ErrorKind;

/// Whether `ns` has an established TCP socket between `a` and `b`, either way round (a socket
/// of a dual-stack listener shows IPv4 addresses mapped into IPv6: `[::ffff:10.0.0.2]:8080`).
fn established_between(ns: &str, a: SocketAddr, b: SocketAddr) -> bool {
    let (code, out) = in_pod(ns, &["ss", "-Htn", "state", "established"]);
    assert_eq!(code, 0, "ss: {out}");
    let unmapped = |word: &str| {
        word.parse::<SocketAddr>().ok().map(|s| match s.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(s, |v4| SocketAddr::new(IpAddr::V4(v4), s.port())),
            IpAddr::V4(_) => s,
        })
    };
    out.lines().any(|l| {
        let ends: Vec<SocketAddr> = l.split_whitespace().filter_map(unmapped).collect();
        ends.contains(&a) && ends.contains(&b)
    })
}

/// Client and server with sidecars on the kernel path; the client may reach the server on
/// 8080 only (9001 is open on the server but denied by the client's egress).
fn kernel_two_pods(name: &str) -> (tempfile::TempDir, Up) {
    kernel_two_pods_with(name, &[])
}

/// The same, with `extra` flags for init and sidecar alike.
fn kernel_two_pods_with(name: &str, extra: &[&str]) -> (tempfile::TempDir, Up) {
    let yaml = TWO_PODS.to_string()
        + r#"---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: t}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 8080}]
"#;
    let dir = topology(&yaml);
    let flags: Vec<String> = std::iter::once("--l4-path=kernel")
        .chain(extra.iter().copied())
        .map(String::from)
        .collect();
    let up = Up::with(
        dir.path(),
        Options {
            init_args: flags.clone(),
            sidecar_args: flags,
            ..options(name, Inject::Annotated)
        },
    );
    (dir, up)
}

/// The peer address a sandbox server's greeting names (`... from IP:PORT`).
fn greeted_from(greeting: &str) -> SocketAddr {
    greeting
        .trim()
        .rsplit_once(" from ")
        .and_then(|(_, peer)| peer.parse().ok())
        .unwrap_or_else(|| panic!("no peer in {greeting:?}"))
}

#[test]
fn on_the_kernel_path_an_allowed_connection_keeps_its_addresses_end_to_end_and_a_denied_one_is_reset()
 {
    if !ready_for(
        "on_the_kernel_path_an_allowed_connection_keeps_its_addresses_end_to_end_and_a_denied_one_is_reset",
    ) {
        return;
    }
    let (_dir, up) = kernel_two_pods("kpath");
    let client = up.ns("t/client");
    let server = up.ip("t/server");
    let (r, greeting) = connect(&client, SocketAddr::new(server, 8080))
        .unwrap_or_else(|e| panic!("allowed: {e}; flows: {:#?}", up.flows("t/client")));
    // Through a proxy on either side the server would see another source (the client's
    // sidecar connects from a port of its own; the server's sidecar from the server pod's own
    // address): the kernel carried it both ways.
    let local = r.get_ref().local_addr().expect("local address");
    assert_eq!(greeted_from(&greeting), local, "{greeting}");
    close_cleanly(r);
    // Its start, written as it was admitted.
    let event = up
        .flows_with_starts("t/client")
        .into_iter()
        .find(|e| e["destination"]["port"] == 8080 && e["phase"] == "start")
        .unwrap_or_else(|| panic!("no start event: {:#?}", up.flows_with_starts("t/client")));
    assert_eq!(event["verdict"], "ALLOWED", "{event:#}");
    assert_eq!(event["direction"], "egress", "{event:#}");
    // Its end, heard as the client's socket was freed: the bytes both ways (the client sent
    // nothing; the greeting came back, and TCP counts the server's FIN as one more) and how
    // long it lasted, under the same verdict.
    let end = wait_for_flow(&up, "t/client", "the allowed egress's end", |e| {
        e["destination"]["port"] == 8080 && e["phase"] == "end"
    });
    assert_eq!(end["verdict"], "ALLOWED", "{end:#}");
    assert_eq!(end["source"]["port"], local.port(), "{end:#}");
    let fin = greeting.len() as u64 + 1;
    assert_eq!(
        (end["bytes_sent"].as_u64(), end["bytes_received"].as_u64()),
        (Some(0), Some(fin)),
        "{end:#}"
    );
    assert!(
        end["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{end:#}"
    );
    assert_eq!(
        event["egress"]["policy"], "NetworkPolicy t/client-out",
        "{event:#}"
    );
    // The server's sidecar hears the same connection end at its pod's socket: what the source
    // sent, and the greeting it received back, in the connection's direction.
    let ingress_end = wait_for_flow(&up, "t/server", "the allowed ingress's end", |e| {
        e["destination"]["port"] == 8080
            && e["verdict"] == "ALLOWED"
            && e["direction"] == "ingress"
            && e["phase"] == "end"
    });
    assert_eq!(
        ingress_end["source"]["port"],
        local.port(),
        "{ingress_end:#}"
    );
    assert_eq!(
        (
            ingress_end["bytes_sent"].as_u64(),
            ingress_end["bytes_received"].as_u64()
        ),
        (Some(1), Some(greeting.len() as u64)),
        "the client's FIN, and the greeting: {ingress_end:#}"
    );
    // Denied: the proxy took it and reset it at once (not left to time out), and said why.
    let started = Instant::now();
    let refused = connect(&client, SocketAddr::new(server, 9001)).expect_err("denied");
    assert!(
        refused.contains("reset") && started.elapsed() < Duration::from_secs(2),
        "{refused} after {:?}",
        started.elapsed()
    );
    let denied = wait_for_flow(&up, "t/client", "the denied egress", |e| {
        e["destination"]["port"] == 9001 && e["verdict"] == "DENIED"
    });
    assert_eq!(denied["direction"], "egress", "{denied:#}");
}

#[test]
fn on_the_kernel_path_a_policy_change_resets_a_connection_it_now_denies_and_spares_the_listener() {
    if !ready_for(
        "on_the_kernel_path_a_policy_change_resets_a_connection_it_now_denies_and_spares_the_listener",
    ) {
        return;
    }
    let (_dir, up) = kernel_two_pods("krev");
    let client = up.ns("t/client");
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let (mut r, greeting) = connect(&client, dst).expect("allowed before the change");
    let local = r.get_ref().local_addr().expect("local address");
    assert_eq!(
        greeted_from(&greeting),
        local,
        "carried by the kernel: {greeting}"
    );
    // Something each way before it is revoked.
    r.get_mut().write_all(b"still there\n").expect("write");
    let mut echo = String::new();
    r.read_line(&mut echo).expect("echo");
    assert_eq!(echo, "still there\n");
    // Both pods have it, socket and conntrack entry (what the checks after the revocation
    // look for).
    let server_end = SocketAddr::new(up.ip("t/server"), 8080);
    let tracked = |pod: &str| {
        let (code, out) = in_pod(
            &up.ns(pod),
            &[
                "conntrack",
                "-L",
                "-p",
                "tcp",
                "--sport",
                &local.port().to_string(),
                "--dport",
                "8080",
            ],
        );
        assert_eq!(code, 0, "conntrack -L in {pod}: {out}");
        out.contains("ESTABLISHED")
    };
    for pod in ["t/client", "t/server"] {
        assert!(
            established_between(&up.ns(pod), local, server_end),
            "{pod} has no socket of it"
        );
        assert!(tracked(pod), "{pod} has no conntrack entry of it");
    }
    // The server now takes nothing in: its sidecar ends the connection it carries.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    let deny_file = up.sb().policy_dir().join("deny.yaml");
    std::fs::write(&deny_file, deny).expect("write policy");
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = r.read(&mut buf);
    // Reset (by the peer's sidecar destroying its socket), or aborted (this pod's sidecar
    // destroying this one): not an orderly close, nor a read that times out.
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted)),
        "not reset: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Both ends are gone, and the kernel carries the connection no more: neither pod has a
    // socket or a conntrack entry of it that is still established.
    wait_for(
        "both sockets of the revoked connection to be gone",
        Duration::from_secs(3),
        || {
            ["t/client", "t/server"]
                .iter()
                .all(|pod| !established_between(&up.ns(pod), local, server_end))
        },
    );
    for pod in ["t/client", "t/server"] {
        assert!(!tracked(pod), "{pod} still carries it");
    }
    // Both sidecars judge it again (the client's judges the server's side too); the one that
    // ends it first says why in its end event, with what its pod's socket had carried: the
    // line the client sent, and the greeting and the echo back. (The other sees the reset as
    // an ordinary end.)
    let mut revoked = None;
    wait_for(
        "the revoked connection's end event",
        Duration::from_secs(5),
        || {
            revoked = ["t/client", "t/server"].iter().find_map(|pod| {
                up.flows(pod).into_iter().find(|e| {
                    e["phase"] == "end"
                        && e["source"]["port"] == local.port()
                        && e["error"]
                            .as_str()
                            .is_some_and(|m| m.contains("policy change"))
                })
            });
            revoked.is_some()
        },
    );
    let end = revoked.expect("waited for");
    assert_eq!(
        (end["bytes_sent"].as_u64(), end["bytes_received"].as_u64()),
        (
            Some(echo.len() as u64),
            Some((greeting.len() + echo.len()) as u64)
        ),
        "{end:#}"
    );
    // The app's server still listens: allowed again, a new connection is served.
    std::fs::remove_file(&deny_file).expect("remove policy");
    wait_for(
        "the server to take connections again",
        Duration::from_secs(10),
        || connect(&client, dst).is_ok(),
    );
}

#[test]
fn with_two_judge_queues_every_new_connection_is_judged_whichever_queue_it_lands_in() {
    if !ready_for(
        "with_two_judge_queues_every_new_connection_is_judged_whichever_queue_it_lands_in",
    ) {
        return;
    }
    // The init rules spread new flows over queues 1337 and 1338 by the CPU their first packet
    // is on; a queue the sidecar did not read would hold (and drop) what lands in it. The
    // client connects from each CPU in turn.
    let (_dir, up) = kernel_two_pods_with("kqueues", &["--packet-queues=2"]);
    let client = up.ns("t/client");
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ports = Vec::new();
    for i in 0..8 {
        let cpu = i % cpus;
        let opened = podwall_sandbox::run_in(&client, move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).map_err(|e| e.to_string())?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .map_err(|e| e.to_string())?;
            let s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut greeting = String::new();
            BufReader::new(&s)
                .read_line(&mut greeting)
                .map_err(|e| e.to_string())?;
            let local = s.local_addr().map_err(|e| e.to_string())?;
            Ok::<_, String>((greeting, local))
        })
        .expect("run in the client");
        let (greeting, local) =
            opened.unwrap_or_else(|e| panic!("connection {i} from CPU {cpu}: {e}"));
        assert_eq!(greeted_from(&greeting), local, "carried by the kernel");
        ports.push(local.port());
    }
    for port in ports {
        wait_for_flow(&up, "t/client", "each connection's end", |e| {
            e["source"]["port"] == port && e["phase"] == "end"
        });
    }
    let refused = connect(&client, SocketAddr::new(dst.ip(), 9001)).expect_err("denied");
    assert!(refused.contains("reset"), "{refused}");
}

#[test]
fn on_the_kernel_path_a_connection_conntrack_forgets_while_its_socket_is_open_gets_its_end() {
    if !ready_for(
        "on_the_kernel_path_a_connection_conntrack_forgets_while_its_socket_is_open_gets_its_end",
    ) {
        return;
    }
    let (_dir, up) = kernel_two_pods("kforget");
    let client = up.ns("t/client");
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let (r, _greeting) = connect(&client, dst).expect("allowed");
    let local = r.get_ref().local_addr().expect("local address");
    // Conntrack forgets the connection while the app still holds its socket: no socket is
    // freed, and the kernel carries the connection no more, so the sidecar must end it.
    let sport = local.port().to_string();
    let (code, out) = in_pod(
        &client,
        &[
            "conntrack",
            "-D",
            "-p",
            "tcp",
            "--sport",
            &sport,
            "--dport",
            "8080",
        ],
    );
    assert_eq!(code, 0, "conntrack -D: {out}");
    let started = Instant::now();
    let end = loop {
        let ends = up.flows("t/client");
        if let Some(end) = ends
            .into_iter()
            .find(|e| e["source"]["port"] == local.port() && e["phase"] == "end")
        {
            break end;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no end once conntrack forgot it: {:#?}",
            up.flows("t/client")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(end["verdict"], "ALLOWED", "{end:#}");
    assert_eq!(end["destination"]["port"], 8080, "{end:#}");
    // Written once: freeing the socket now ends nothing more.
    drop(r);
    std::thread::sleep(Duration::from_millis(300));
    let ends = up
        .flows("t/client")
        .into_iter()
        .filter(|e| e["source"]["port"] == local.port() && e["phase"] == "end")
        .count();
    assert_eq!(ends, 1, "{:#?}", up.flows("t/client"));
}

#[test]
fn on_the_kernel_path_a_syn_sent_again_is_judged_and_logged_once_on_each_side() {
    if !ready_for("on_the_kernel_path_a_syn_sent_again_is_judged_and_logged_once_on_each_side") {
        return;
    }
    // The server's answers are lost before its pod's conntrack sees them: every SYN the client
    // sends again is still NEW to conntrack on both sides, on a connection already judged.
    syn_sent_again("ksyn", "raw");
}

#[test]
fn on_the_kernel_path_a_syn_sent_again_after_the_servers_answer_left_its_pod_connects() {
    if !ready_for(
        "on_the_kernel_path_a_syn_sent_again_after_the_servers_answer_left_its_pod_connects",
    ) {
        return;
    }
    // The server's answers are lost after its pod's conntrack saw them: the SYNs the client
    // sends again are no longer NEW there, and look like a SYN reopening a reset connection's
    // entry. The server's kernel also gives up the half-open connection once its answer
    // cannot be sent, so only a SYN sent again that reaches it can open it anew.
    syn_sent_again("ksyn2", "filter");
}

/// A connection from the client to the server's 8080 whose SYN-ACKs are dropped in the
/// server's pod (in `table`'s OUTPUT) until the server's pod has received two of the client's
/// SYNs: it connects, carried by the kernel, with one start event on each side.
fn syn_sent_again(name: &str, table: &str) {
    let (_dir, up) = kernel_two_pods(name);
    let (client, server) = (up.ns("t/client"), up.ns("t/server"));
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let lose = |op: &str| {
        let (code, out) = in_pod(
            &server,
            &[
                "iptables",
                "-t",
                table,
                op,
                "OUTPUT",
                "-p",
                "tcp",
                "--sport",
                "8080",
                "--tcp-flags",
                "SYN,ACK",
                "SYN,ACK",
                "-j",
                "DROP",
            ],
        );
        assert_eq!(code, 0, "iptables {op}: {out}");
    };
    // What the server's pod receives of the client's SYNs, counted before conntrack.
    let client_ip = up.ip("t/client").to_string();
    let (code, out) = in_pod(
        &server,
        &[
            "iptables",
            "-t",
            "raw",
            "-I",
            "PREROUTING",
            "-s",
            &client_ip,
            "-p",
            "tcp",
            "--dport",
            "8080",
            "--syn",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let syns_in = || {
        let (_, out) = in_pod(
            &server,
            &[
                "iptables",
                "-t",
                "raw",
                "-L",
                "PREROUTING",
                "-v",
                "-n",
                "-x",
            ],
        );
        out.lines()
            .find(|l| l.contains("dpt:8080"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    lose("-I");
    let connecting = std::thread::spawn(move || {
        run_in(&client, move || {
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let local = s.local_addr().map_err(|e| e.to_string())?;
            let mut greeting = String::new();
            BufReader::new(s)
                .read_line(&mut greeting)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((local, greeting))
        })
        .expect("netns")
    });
    // The first SYN and at least one sent again have reached the server's pod.
    wait_for(
        "the client's SYN sent again",
        Duration::from_secs(5),
        || syns_in() >= 2,
    );
    lose("-D");
    let (local, greeting) = connecting
        .join()
        .expect("connecting thread")
        .expect("allowed, once the answer gets through");
    assert_eq!(
        greeted_from(&greeting),
        local,
        "carried by the kernel: {greeting}"
    );
    let starts = |pod: &str| {
        up.flows_with_starts(pod)
            .into_iter()
            .filter(|e| e["source"]["port"] == local.port() && e["phase"] == "start")
            .count()
    };
    wait_for("both start events", Duration::from_secs(5), || {
        starts("t/client") > 0 && starts("t/server") > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (starts("t/client"), starts("t/server")),
        (1, 1),
        "one start each: {:#?} {:#?}",
        up.flows_with_starts("t/client"),
        up.flows_with_starts("t/server")
    );
}

/// A sidecar in `ns` as `t/client` on the kernel path, reading its policy from `dir`, its flow
/// events written to `flows` and its log beside them (`.log`); returned once it has a policy.
fn restarted_client_sidecar(ns: &str, dir: &Path, flows: &Path) -> Running {
    let out = std::fs::File::create(flows).expect("flows file");
    let log = std::fs::File::create(flows.with_extension("log")).expect("log file");
    let child = podwall_sandbox::sidecar_in(ns, PODWALL)
        .args([
            "proxy",
            "run",
            "--pod-namespace",
            "t",
            "--pod-name",
            "client",
        ])
        .args(["--l4-path=kernel", "--poll-interval", "200ms"])
        .arg(format!("--policy-source=dir:{}", dir.display()))
        .stdout(out)
        .stderr(log)
        .spawn()
        .expect("sidecar");
    let running = Running(child);
    support::sandbox::wait_ready(ns);
    running
}

/// The end event, in the flow log at `flows`, of the connection from local port `port`.
fn end_in(flows: &Path, port: u16, what: &str) -> serde_json::Value {
    support::sandbox::event_in(flows, what, |e| {
        e["source"]["port"] == port && e["phase"] == "end"
    })
}

#[test]
fn on_the_kernel_path_a_restarted_sidecar_takes_in_the_connections_the_kernel_carries() {
    if !ready_for(
        "on_the_kernel_path_a_restarted_sidecar_takes_in_the_connections_the_kernel_carries",
    ) {
        return;
    }
    let (_dir, up) = kernel_two_pods("kadopt");
    let client = up.ns("t/client");
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let (mut kept, greeting) = connect(&client, dst).expect("allowed");
    let kept_local = kept.get_ref().local_addr().expect("local address");
    assert_eq!(greeted_from(&greeting), kept_local, "kernel: {greeting}");
    let (mut revoked, _) = connect(&client, dst).expect("allowed");
    let revoked_local = revoked.get_ref().local_addr().expect("local address");
    let logs = tempfile::tempdir().expect("tempdir");

    // The sidecar dies and comes back under the same policy: the kernel went on carrying both
    // connections meanwhile, and the new sidecar takes them in from conntrack.
    support::sandbox::kill_sidecar(&client);
    // While it is down the kernel carries what it carried, as behind a running sidecar, and
    // takes nothing new (nobody reads the judge's queue, which drops what it holds).
    for r in [&mut kept, &mut revoked] {
        r.get_mut()
            .write_all(b"while down\n")
            .expect("write while the sidecar is down");
        let mut echo = String::new();
        r.read_line(&mut echo)
            .expect("echo while the sidecar is down");
        assert_eq!(echo, "while down\n");
    }
    let new = connect(&client, dst);
    assert!(
        new.is_err(),
        "a new connection while the sidecar was down: {new:?}"
    );
    let first = logs.path().join("first.jsonl");
    let sidecar = restarted_client_sidecar(&client, &up.sb().policy_dir(), &first);
    wait_for(
        "the new sidecar to take the connections in",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(first.with_extension("log"))
                .is_ok_and(|log| log.contains("took in the kernel-carried TCP connections"))
        },
    );
    for r in [&mut kept, &mut revoked] {
        r.get_mut().write_all(b"still there\n").expect("write");
        let mut echo = String::new();
        r.read_line(&mut echo).expect("echo");
        assert_eq!(echo, "still there\n");
    }
    // It knows the connection it did not admit: its end is written when its socket goes.
    close_cleanly(kept);
    let end = end_in(&first, kept_local.port(), "the taken-in connection's end");
    assert_eq!(end["verdict"], "ALLOWED", "{end:#}");
    assert_eq!(end["direction"], "egress", "{end:#}");
    assert_eq!(
        end["egress"]["policy"], "NetworkPolicy t/client-out",
        "{end:#}"
    );
    drop(sidecar);

    // It comes back again under a policy that no longer allows port 8080: the connection it
    // takes in is judged at once and ended.
    let denying = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        up.sb().policy_dir().join("cluster.json"),
        denying.path().join("cluster.json"),
    )
    .expect("copy the pods");
    std::fs::write(
        denying.path().join("policy.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-out, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: server}}}]\n    ports: [{port: 9001}]\n",
    )
    .expect("write policy");
    let second = logs.path().join("second.jsonl");
    let started = Instant::now();
    let _sidecar = restarted_client_sidecar(&client, denying.path(), &second);
    revoked
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let read = revoked.read(&mut buf);
    let ended = match &read {
        Ok(0) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => false,
    };
    assert!(ended, "still open: {read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let ended = end_in(
        &second,
        revoked_local.port(),
        "the revoked connection's end",
    );
    assert!(
        ended["error"]
            .as_str()
            .is_some_and(|m| m.contains("policy change")),
        "{ended:#}"
    );
}
