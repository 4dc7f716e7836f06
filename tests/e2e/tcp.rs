//! TCP through the sidecars: original destinations, bulk and concurrent transfers, fail closed, IPv6, exclusions, Service VIPs.

use super::*;

#[test]
fn connections_keep_their_original_destination_and_are_not_captured_twice() {
    if !ready_for("connections_keep_their_original_destination_and_are_not_captured_twice") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "od", Inject::Annotated);
    let client = up.ns("t/client");
    // Through both sidecars: the server application sees the port that was dialled.
    let (_, greeting) =
        connect(&client, SocketAddr::new(up.ip("t/server"), 9001)).expect("through two sidecars");
    assert!(greeting.contains("t/server port 9001"), "{greeting}");
    // To a pod without a sidecar the source address is the client's own.
    let (_, greeting) =
        connect(&client, SocketAddr::new(up.ip("t/plain"), 8080)).expect("to a plain pod");
    assert!(
        greeting.contains(&format!("from {}:", up.ip("t/client"))),
        "{greeting}"
    );
    // One flow per connection in each sidecar: the sidecar's own upstream connections are not
    // captured again (that would loop and multiply events).
    wait_for("both sidecars' events", Duration::from_secs(5), || {
        up.flows("t/client").len() >= 2 && !up.flows("t/server").is_empty()
    });
    let egress = up.flows("t/client");
    assert_eq!(egress.len(), 2, "{egress:#?}");
    assert!(
        egress
            .iter()
            .all(|e| e["direction"] == "egress" && e["verdict"] == "ALLOWED"),
        "{egress:#?}"
    );
    let ingress = up.flows("t/server");
    assert_eq!(ingress.len(), 1, "{ingress:#?}");
    assert_eq!(ingress[0]["direction"], "ingress");
    assert_eq!(ingress[0]["destination"]["port"], 9001);
    // The server's policy names no peer, so the client is not in its sidecar's view: the
    // event names it by address.
    assert_eq!(
        ingress[0]["source"]["ip"],
        up.ip("t/client").to_string().as_str()
    );
}

#[test]
fn a_gibibyte_arrives_intact_through_two_sidecars() {
    if !ready_for("a_gibibyte_arrives_intact_through_two_sidecars") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "gib", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/server"), 8080);
    let (reader, _) = connect(&up.ns("t/client"), dst).expect("connect");
    let stream = reader.into_inner();
    let mut writer = stream.try_clone().expect("clone");
    // 1024 blocks of 1 MiB: pseudo-random bytes, each block stamped with its index so that a
    // lost, repeated or reordered block is caught.
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for b in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let expected = block.clone();
    let sender = std::thread::spawn(move || {
        for i in 0u64..1024 {
            block[..8].copy_from_slice(&i.to_le_bytes());
            writer.write_all(&block).expect("write");
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut got = vec![0u8; 1 << 20];
    let mut want = expected;
    for i in 0u64..1024 {
        reader
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("block {i}: {e}"));
        want[..8].copy_from_slice(&i.to_le_bytes());
        assert!(got == want, "block {i} differs");
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("end");
    assert!(rest.is_empty(), "{} extra bytes", rest.len());
    sender.join().expect("sender");
    // The flow event comes when the connection has ended (on the kernel path, when the
    // client's socket is closed): waited for, not slept on.
    drop(reader);
    let f = wait_for_flow(&up, "t/client", "with the bytes sent", |e| {
        e["bytes_sent"].is_u64()
    });
    // The payload, on either path (the proxy counts what it relayed; on the kernel path the
    // client's socket counts what it sent).
    assert_eq!(f["bytes_sent"], 1u64 << 30, "{f:#}");
}

#[test]
fn half_close_is_passed_through() {
    if !ready_for("half_close_is_passed_through") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "half", Inject::Annotated);
    let (mut r, _) =
        connect(&up.ns("t/client"), SocketAddr::new(up.ip("t/server"), 8080)).expect("connect");
    r.get_mut().write_all(b"last words").expect("write");
    r.get_mut().shutdown(Shutdown::Write).expect("half-close");
    // The server sees end of stream only through the sidecars' half-close, echoes, then closes.
    let mut rest = String::new();
    r.read_to_string(&mut rest).expect("read to end");
    assert_eq!(rest, "last words");
}

#[test]
fn a_thousand_concurrent_connections_pass_one_sidecar() {
    if !ready_for("a_thousand_concurrent_connections_pass_one_sidecar") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "thou", Inject::Annotated);
    let dst = SocketAddr::new(up.ip("t/plain"), 8080);
    let ns = up.ns("t/client");
    let ok = run_in(&ns, move || {
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
        let mut open = Vec::new();
        for i in 0..1000 {
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            open.push(s);
        }
        // All 1000 are open at once; now each one round-trips.
        let mut ok = 0;
        for (i, s) in open.iter_mut().enumerate() {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let msg = format!("ping {i}\n");
            s.write_all(msg.as_bytes()).expect("write");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut greeting = String::new();
            let mut echo = String::new();
            r.read_line(&mut greeting).expect("greeting");
            r.read_line(&mut echo).expect("echo");
            if greeting.starts_with("podwall-sandbox") && echo == msg {
                ok += 1;
            } else {
                eprintln!("connection {i}: greeting {greeting:?}, echo {echo:?}");
            }
        }
        ok
    })
    .expect("in netns");
    assert_eq!(ok, 1000);
}

#[test]
fn a_listener_on_localhost_stays_private_and_one_on_the_pod_address_is_reached() {
    if !ready_for("a_listener_on_localhost_stays_private_and_one_on_the_pod_address_is_reached") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "lo", Inject::Annotated);
    let server_ip = up.ip("t/server");
    // Two listeners of the application in the server pod: one on 127.0.0.1, one on its address.
    let ns = up.ns("t/server");
    let listeners = run_in(&ns, move || {
        let private = std::net::TcpListener::bind(("127.0.0.1", 9100)).expect("bind lo");
        let public =
            std::net::TcpListener::bind(SocketAddr::new(server_ip, 9101)).expect("bind pod ip");
        (private, public)
    })
    .expect("netns");
    let public = listeners.1.try_clone().expect("clone");
    std::thread::spawn(move || {
        for s in public.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"public\n");
        }
    });
    let client = up.ns("t/client");
    let (_, line) =
        connect(&client, SocketAddr::new(server_ip, 9101)).expect("the pod address is reachable");
    assert_eq!(line, "public\n");
    let private = connect(&client, SocketAddr::new(server_ip, 9100));
    assert!(
        private.is_err(),
        "a 127.0.0.1 listener must not be reachable from another pod: {private:?}"
    );
    drop(listeners);
}

#[test]
fn audit_mode_lets_denied_connections_through_and_logs_them() {
    if !ready_for("audit_mode_lets_denied_connections_through_and_logs_them") {
        return;
    }
    let yaml = TWO_PODS.replace(
        "annotations: {podwall.io/inject: enabled}}\nspec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}",
        "annotations: {podwall.io/inject: enabled, podwall.io/enforcement: audit}}\nspec: {containers: [{name: s, ports: [{containerPort: 8080}, {containerPort: 9001}]}]}",
    ) + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n";
    let dir = topology(&yaml);
    let up = Up::new(dir.path(), "audit", Inject::Annotated);
    connect(&up.ns("t/client"), SocketAddr::new(up.ip("t/server"), 8080))
        .expect("audit mode lets it through");
    let flow = wait_for_flow(&up, "t/server", "of the audited connection", |e| {
        e["direction"] == "ingress"
    });
    assert_eq!(flow["verdict"], "AUDIT", "{flow:#?}");
    assert_eq!(flow["ingress"]["isolated_by"][0], "NetworkPolicy t/deny");
}

#[test]
fn without_a_policy_for_its_pod_the_sidecar_refuses_everything() {
    if !ready_for("without_a_policy_for_its_pod_the_sidecar_refuses_everything") {
        return;
    }
    let dir = topology(TWO_PODS);
    let up = Up::new(dir.path(), "fc", Inject::None);
    let ns = up.ns("t/client");
    // A sidecar for a pod the policy source does not know: not ready, and fails closed.
    let (mut sidecar, _empty) = sidecar_without_policy(&ns, "t", "client");
    let dst = SocketAddr::new(up.ip("t/plain"), 8080);
    let refused = connect(&ns, dst);
    let ready = run_in(&ns, || {
        let mut s = TcpStream::connect(("127.0.0.1", 15020)).expect("admin");
        s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .expect("netns");
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert!(refused.is_err(), "fail closed: {refused:?}");
    assert!(ready.contains(" 503 "), "{ready}");
}

#[test]
fn before_its_first_policy_the_sidecar_refuses_inbound_tcp_and_drops_udp_and_ping_both_ways() {
    if !ready_for(
        "before_its_first_policy_the_sidecar_refuses_inbound_tcp_and_drops_udp_and_ping_both_ways",
    ) {
        return;
    }
    let dir = topology(FAIL_CLOSED);
    let up = Up::new(dir.path(), "fc2", Inject::None);
    let (guarded, peer) = (up.ns("t/guarded"), up.ns("t/peer"));
    let (g_ip, p_ip) = (up.ip("t/guarded"), up.ip("t/peer"));
    // Without podwall everything passes (so what follows cannot pass by accident).
    assert!(connect(&peer, SocketAddr::new(g_ip, 8080)).is_ok());
    assert!(udp_echo(&guarded, SocketAddr::new(p_ip, 5300), b"x").is_some());
    assert!(pings(&peer, g_ip) && pings(&guarded, p_ip));
    // A sidecar whose pod the policy source does not know: no policy, ever.
    let (mut sidecar, _empty) = sidecar_without_policy(&guarded, "t", "guarded");
    let inbound_tcp = connect(&peer, SocketAddr::new(g_ip, 8080));
    let inbound_udp = udp_echo(&peer, SocketAddr::new(g_ip, 5300), b"x");
    let outbound_udp = udp_echo(&guarded, SocketAddr::new(p_ip, 5300), b"x");
    let (ping_in, ping_out) = (pings(&peer, g_ip), pings(&guarded, p_ip));
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    let inbound_err = inbound_tcp.err().unwrap_or_default();
    assert!(
        inbound_err.contains("reset") || inbound_err.contains("refused"),
        "inbound TCP refused at once: {inbound_err:?}"
    );
    assert!(inbound_udp.is_none(), "inbound UDP dropped");
    assert!(outbound_udp.is_none(), "outbound UDP dropped");
    assert!(!ping_in && !ping_out, "ping dropped both ways");
}

#[test]
fn ipv6_connections_are_redirected_judged_and_keep_their_original_destination() {
    if !ready_for("ipv6_connections_are_redirected_judged_and_keep_their_original_destination") {
        return;
    }
    let (c, s) = ("pw-e2e-v6c", "pw-e2e-v6s");
    let _pair = support::sandbox::V6Pair::new([c, s], ["fd77::1/64", "fd77::2/64"]);
    let policy = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        policy.path().join("state.yaml"),
        V6_PODS.to_string() + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: v6}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd77::2/128'}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("write");
    let _server = serve_in(s, "v6/server", "8080,9090", "");
    let _sidecar = v6_sidecar(c, "client", policy.path());
    let server_addr: IpAddr = "fd77::2".parse().expect("ip");
    let (_, greeting) = connect(c, SocketAddr::new(server_addr, 8080)).expect("allowed over IPv6");
    assert!(greeting.contains("port 8080 from [fd77::1]:"), "{greeting}");
    let denied = connect(c, SocketAddr::new(server_addr, 9090));
    assert!(denied.is_err(), "{denied:?}");
    v6_flow(policy.path(), "denying 9090", |e| {
        e["verdict"] == "DENIED"
            && e["destination"]["ip"] == "fd77::2"
            && e["destination"]["port"] == 9090
    });
}

#[test]
fn over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4() {
    if !ready_for("over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4")
        || !support::ready(
            "over_ipv6_inbound_tcp_udp_ping_and_dns_are_judged_like_over_ipv4",
            &["dnsmasq", "ping"],
            "dnsmasq and ping",
        )
    {
        return;
    }
    let (c, s) = ("pw-e2e-v6c2", "pw-e2e-v6s2");
    let _pair = support::sandbox::V6Pair::new([c, s], ["fd78::1/64", "fd78::2/64"]);
    let server_ip: IpAddr = "fd78::2".parse().expect("ip");
    let client_ip: IpAddr = "fd78::1".parse().expect("ip");
    // The client takes TCP 7070 from the server, and may send UDP 5300 and DNS to it.
    let policy = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        policy.path().join("state.yaml"),
        V6_PODS.replace("fd77", "fd78") + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client, namespace: v6}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd78::2/128'}}]\n    ports: [{port: 7070}]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd78::2/128'}}]\n    ports: [{port: 5300, protocol: UDP}, {port: 53, protocol: UDP}]\n",
    )
    .expect("write");
    let _server = serve_in(s, "v6/server", "8080", "5300,5301");
    let _client_server = serve_in(c, "v6/client", "7070,7071", "");
    let _dns = Running(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                s,
                "dnsmasq",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
            ])
            .args(["--listen-address=fd78::2", "--bind-interfaces", "--port=53"])
            .args(["--address=/api.example.com/192.0.2.10"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    // Without podwall, all of it passes (so the denials below are podwall's).
    wait_for("the server's UDP echo", Duration::from_secs(10), || {
        udp_echo(c, SocketAddr::new(server_ip, 5301), b"x").is_some()
    });
    assert!(
        pings(c, server_ip) && pings(s, client_ip),
        "ICMPv6 echo without podwall"
    );
    assert!(connect(s, SocketAddr::new(client_ip, 7071)).is_ok());
    let ask = move || {
        run_in(c, move || {
            let s = std::net::UdpSocket::bind("[::]:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(&dns_query("api.example.com."), "[fd78::2]:53")
                .ok()?;
            let mut buf = [0u8; 512];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(dns_answer(&buf[..n]))
        })
        .ok()
        .flatten()
    };
    wait_for("dnsmasq to answer", Duration::from_secs(10), || {
        ask().is_some_and(|a| a.answers.len() == 1)
    });

    let _sidecar = v6_sidecar(c, "client", policy.path());
    let dir = policy.path();
    // Inbound TCP: the allowed port reaches the client's server; another is reset.
    let (_, greeting) =
        connect(s, SocketAddr::new(client_ip, 7070)).expect("inbound 7070 over IPv6");
    // (Through the proxy, from the pod's own address: the sidecar connects to the application
    // locally. On the kernel path, from the peer itself.)
    let from = if support::sandbox::kernel_path() {
        "[fd78::2]"
    } else {
        "[fd78::1]"
    };
    assert!(
        greeting.contains(&format!("v6/client port 7070 from {from}:")),
        "{greeting}"
    );
    assert!(connect(s, SocketAddr::new(client_ip, 7071)).is_err());
    v6_flow(dir, "denying inbound 7071", |e| {
        e["verdict"] == "DENIED" && e["direction"] == "ingress" && e["destination"]["port"] == 7071
    });
    // UDP: 5300 echoes, 5301 is dropped, said so.
    assert_eq!(
        udp_echo(c, SocketAddr::new(server_ip, 5300), b"udp over v6").as_deref(),
        Some(&b"udp over v6"[..])
    );
    assert_eq!(udp_echo(c, SocketAddr::new(server_ip, 5301), b"x"), None);
    v6_flow(dir, "denying UDP 5301", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "UDP" && e["destination"]["port"] == 5301
    });
    // ICMPv6 echo: no rule without ports, so not either way.
    assert!(!pings(c, server_ip), "ping out of the pod");
    assert!(!pings(s, client_ip), "ping into the pod");
    v6_flow(dir, "denying the ping out", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "ICMP" && e["direction"] == "egress"
    });
    v6_flow(dir, "denying the ping in", |e| {
        e["verdict"] == "DENIED" && e["protocol"] == "ICMP" && e["direction"] == "ingress"
    });
    // DNS to an IPv6 resolver: captured, answered through the DNS proxy, logged with its name.
    let answer = ask().expect("an answer over IPv6");
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    let query = v6_flow(dir, "the DNS query", |e| {
        e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(query["destination"]["ip"], "fd78::2", "{query}");
    assert_eq!(query["verdict"], "ALLOWED", "{query}");
}

#[test]
fn excluded_ports_bypass_the_sidecar_in_both_directions() {
    if !ready_for("excluded_ports_bypass_the_sidecar_in_both_directions") {
        return;
    }
    // Every pod denies everything, both ways; port 9001 is excluded from capture in and out.
    let yaml = TWO_PODS.to_string()
        + "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: t}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let dir = topology(&yaml);
    let up = Up::with(
        dir.path(),
        Options {
            init_args: vec![
                "--exclude-outbound-ports=9001".into(),
                "--exclude-inbound-ports=9001".into(),
            ],
            ..options("excl", Inject::Annotated)
        },
    );
    let client = up.ns("t/client");
    let server = up.ip("t/server");
    assert!(
        connect(&client, SocketAddr::new(server, 8080)).is_err(),
        "judged: denied"
    );
    let (_, greeting) = connect(&client, SocketAddr::new(server, 9001))
        .expect("excluded: neither sidecar judges it");
    assert!(greeting.contains("t/server port 9001"), "{greeting}");
}

#[test]
fn a_service_ip_leads_round_robin_to_the_backends_policy_allows_and_none_means_denied() {
    if !ready_for(
        "a_service_ip_leads_round_robin_to_the_backends_policy_allows_and_none_means_denied",
    ) {
        return;
    }
    let dir = topology(SERVICES);
    let up = Up::new(dir.path(), "svc", Inject::Annotated);
    let client = up.ns("t/client");
    let vip: SocketAddr = "10.96.0.50:80".parse().expect("addr");
    // Round robin over both backends, each reached on its own named target port.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (_, greeting) = connect(&client, vip).unwrap_or_else(|e| {
            panic!(
                "the service answers: {e}; flows: {:#?}",
                up.flows("t/client")
            )
        });
        assert!(
            greeting.contains("api-a") && greeting.contains("port 8080")
                || greeting.contains("api-b") && greeting.contains("port 9090"),
            "{greeting}"
        );
        seen.insert(if greeting.contains("api-a") { "a" } else { "b" });
    }
    assert_eq!(seen.len(), 2, "both backends take connections");
    // Egress to db pods is not allowed: no backend of the db service may be used.
    let db: SocketAddr = "10.96.0.60:5432".parse().expect("addr");
    assert!(connect(&client, db).is_err(), "no allowed backend: refused");

    // Narrow the client's egress to zone a: every connection now lands on api-a.
    let narrow = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: client-egress, namespace: t}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {zone: a}}}]\n";
    // Same name, a file read after policies.json: this definition replaces the first.
    std::fs::write(up.sb().policy_dir().join("z-client-egress.yaml"), narrow)
        .expect("write policy");
    wait_for("the narrowed policy", Duration::from_secs(10), || {
        (0..4).all(|_| connect(&client, vip).is_ok_and(|(_, g)| g.contains("api-a")))
    });
    wait_for_flow(
        &up,
        "t/client",
        "an allowed connection through the service",
        |e| {
            e["service"]["name"] == "t/api"
                && e["verdict"] == "ALLOWED"
                && e["destination"]["pod"] == "api-a"
        },
    );
    let flows = up.flows("t/client");
    let via_service: Vec<_> = flows
        .iter()
        .filter(|e| e["service"]["name"] == "t/api")
        .collect();
    assert!(
        via_service
            .iter()
            .all(|e| e["service"]["address"] == "10.96.0.50:80"),
        "{via_service:#?}"
    );
    assert!(
        via_service
            .iter()
            .any(|e| e["verdict"] == "ALLOWED" && e["destination"]["pod"] == "api-a"),
        "{via_service:#?}"
    );
    let refused = flows
        .iter()
        .find(|e| e["service"]["name"] == "t/db")
        .expect("the db attempt is a flow event");
    assert_eq!(refused["verdict"], "DENIED");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("allows none of its 1 ready endpoints")),
        "{refused:#?}"
    );
}
