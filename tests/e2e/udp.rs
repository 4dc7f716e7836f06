//! UDP and ping judged by the packet filter, both ways, and in audit.

use super::*;

#[test]
fn udp_flows_and_ping_are_judged_by_policy_in_both_directions() {
    if !support::ready(
        "udp_flows_and_ping_are_judged_by_policy_in_both_directions",
        &["ip", "iptables", "setpriv", "ping"],
        "iproute2, iptables, setpriv and ping",
    ) {
        return;
    }
    let dir = topology(UDP_TOPOLOGY);
    let up = Up::new(dir.path(), "udp", Inject::Annotated);
    let (client, other) = (up.ns("u/client"), up.ns("u/other"));
    let server = up.ip("u/server");
    let allowed = SocketAddr::new(server, 5300);
    // Allowed both ways: the datagram and its echo arrive whole (the sandbox server echoes).
    let mut echo = None;
    for _ in 0..5 {
        echo = udp_echo(&client, allowed, b"hello over udp");
        if echo.is_some() {
            break;
        }
    }
    assert_eq!(echo.as_deref(), Some(&b"hello over udp"[..]));
    // The server's ingress allows only port 5300, and only from the client.
    assert_eq!(udp_echo(&other, SocketAddr::new(server, 5301), b"x"), None);
    assert_eq!(udp_echo(&other, allowed, b"x"), None);
    // The client's egress allows only the server's 5300.
    assert_eq!(udp_echo(&client, SocketAddr::new(server, 5301), b"x"), None);
    // The client's egress allows only the server: a pod without a sidecar is refused at the
    // client's own side.
    assert_eq!(
        udp_echo(&client, SocketAddr::new(up.ip("u/plain"), 5300), b"x"),
        None
    );
    // And the same client flow still works afterwards (the filter keeps judging).
    assert!(udp_echo(&client, allowed, b"again").is_some());

    let other_ip = up.ip("u/other").to_string();
    let plain_ip = up.ip("u/plain").to_string();
    wait_for_flow(&up, "u/server", "the denial of other", |e| {
        e["protocol"] == "UDP"
            && e["verdict"] == "DENIED"
            && e["source"]["ip"] == other_ip.as_str()
            && e["destination"]["port"] == 5300
    });
    let flows = up.flows("u/server");
    let udp = |e: &&serde_json::Value| e["protocol"] == "UDP";
    let denied_other = flows
        .iter()
        .filter(udp)
        .find(|e| {
            e["verdict"] == "DENIED"
                && e["source"]["ip"] == other_ip
                && e["destination"]["port"] == 5300
        })
        .unwrap_or_else(|| panic!("no denial of other in {flows:#?}"));
    assert_eq!(denied_other["direction"], "ingress");
    assert_eq!(denied_other["destination"]["port"], 5300);
    assert_eq!(
        denied_other["ingress"]["isolated_by"][0],
        "NetworkPolicy u/server-udp"
    );
    assert!(
        flows.iter().filter(udp).any(|e| e["verdict"] == "ALLOWED"
            && e["source"]["pod"] == "client"
            && e["destination"]["port"] == 5300),
        "{flows:#?}"
    );
    assert!(
        flows
            .iter()
            .filter(udp)
            .any(|e| e["verdict"] == "DENIED" && e["destination"]["port"] == 5301),
        "{flows:#?}"
    );
    let client_flows = up.flows("u/client");
    assert!(
        client_flows
            .iter()
            .filter(udp)
            .any(|e| e["verdict"] == "DENIED"
                && e["direction"] == "egress"
                && e["destination"]["port"] == 5301),
        "{client_flows:#?}"
    );
    let denied_plain = client_flows
        .iter()
        .filter(udp)
        .find(|e| e["verdict"] == "DENIED" && e["destination"]["ip"] == plain_ip)
        .unwrap_or_else(|| panic!("no egress denial in {client_flows:#?}"));
    assert_eq!(denied_plain["direction"], "egress");
    assert_eq!(
        denied_plain["egress"]["isolated_by"][0],
        "NetworkPolicy u/client-egress"
    );

    // Ping: only a rule without ports allows it, and both sides must.
    let pinger = up.ns("u/pinger");
    assert!(
        (0..5).any(|_| pings(&pinger, server)),
        "the server's rule for the pinger has no ports"
    );
    assert!(
        pings(&up.ns("u/server"), up.ip("u/pinger")),
        "neither the server's egress nor the pinger's ingress is isolated"
    );
    assert!(!pings(&other, server), "no ingress rule for other");
    assert!(
        !pings(&client, server),
        "the client's rules name UDP 5300 only"
    );
    for verdict in ["ALLOWED", "DENIED"] {
        wait_for_flow(&up, "u/server", "both pings' events", |e| {
            e["protocol"] == "ICMP" && e["verdict"] == verdict && e["direction"] == "ingress"
        });
    }
    let flows = up.flows("u/server");
    let icmp = |e: &&serde_json::Value| e["protocol"] == "ICMP";
    assert!(
        flows.iter().filter(icmp).any(|e| e["verdict"] == "ALLOWED"
            && e["direction"] == "ingress"
            && e["source"]["pod"] == "pinger"),
        "{flows:#?}"
    );
    assert!(
        flows.iter().filter(icmp).any(|e| e["verdict"] == "DENIED"
            && e["direction"] == "ingress"
            && e["source"]["ip"] == other_ip),
        "{flows:#?}"
    );
    assert!(
        up.flows("u/client")
            .iter()
            .filter(icmp)
            .any(|e| e["verdict"] == "DENIED" && e["direction"] == "egress"),
        "the client's own sidecar drops its ping"
    );

    // A policy change ends the running flows it denies, and only those.
    let (cut, kept) = (udp_socket(&client), udp_socket(&pinger));
    let kept_dst = SocketAddr::new(server, 5301);
    assert!((0..5).any(|_| echoes(&cut, allowed)), "client flow before");
    assert!(
        (0..5).any(|_| echoes(&kept, kept_dst)),
        "pinger flow before"
    );
    let file = up.sb().policy_dir().join("policies.json");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read policies"))
            .expect("json");
    let server_udp = list["items"]
        .as_array_mut()
        .expect("items")
        .iter_mut()
        .find(|p| p["metadata"]["name"] == "server-udp")
        .expect("server-udp");
    server_udp["spec"]["ingress"][0]["ports"][0]["port"] = 5399.into();
    std::fs::write(&file, list.to_string()).expect("write policies");
    wait_for(
        "the client's running flow to be cut",
        Duration::from_secs(10),
        || !echoes(&cut, allowed),
    );
    assert!(
        echoes(&kept, kept_dst),
        "a flow the new policy allows keeps running"
    );
    wait_for_flow(&up, "u/server", "the revoked flow", |e| {
        e["protocol"] == "UDP"
            && e["verdict"] == "DENIED"
            && e["source"]["pod"] == "client"
            && e["error"]
                .as_str()
                .is_some_and(|m| m.contains("policy change"))
    });
}

#[test]
fn with_the_audit_flag_udp_the_policy_denies_passes_both_ways_and_is_logged_as_audit() {
    if !support::ready(
        "with_the_audit_flag_udp_the_policy_denies_passes_both_ways_and_is_logged_as_audit",
        &["ip", "iptables", "setpriv"],
        "iproute2, iptables and setpriv",
    ) {
        return;
    }
    let dir = topology(UDP_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--audit".into()],
            ..options("udpaud", Inject::Annotated)
        },
    );
    let (client, other) = (up.ns("u/client"), up.ns("u/other"));
    let server = up.ip("u/server");
    // Enforced, both are dropped (the test above): the client's egress allows only 5300, the
    // server's ingress only the client. Audited, each echo comes back, answered by the server.
    let echo =
        |ns: &str, dst: SocketAddr, payload: &[u8]| (0..5).find_map(|_| udp_echo(ns, dst, payload));
    assert_eq!(
        echo(&client, SocketAddr::new(server, 5301), b"audited egress").as_deref(),
        Some(&b"audited egress"[..])
    );
    assert_eq!(
        echo(&other, SocketAddr::new(server, 5300), b"audited ingress").as_deref(),
        Some(&b"audited ingress"[..])
    );
    let egress = wait_for_flow(&up, "u/client", "the audited egress", |e| {
        e["protocol"] == "UDP" && e["destination"]["port"] == 5301
    });
    assert_eq!(egress["verdict"], "AUDIT", "{egress}");
    assert_eq!(egress["egress"]["allowed"], false, "{egress}");
    let other_ip = up.ip("u/other").to_string();
    let ingress = wait_for_flow(&up, "u/server", "the audited ingress", |e| {
        e["protocol"] == "UDP" && e["source"]["ip"] == other_ip.as_str()
    });
    assert_eq!(ingress["verdict"], "AUDIT", "{ingress}");
    assert_eq!(ingress["ingress"]["allowed"], false, "{ingress}");
    // What the policy allows stays ALLOWED.
    assert!(echo(&client, SocketAddr::new(server, 5300), b"allowed").is_some());
    let allowed = wait_for_flow(&up, "u/client", "the allowed flow", |e| {
        e["protocol"] == "UDP" && e["destination"]["port"] == 5300
    });
    assert_eq!(allowed["verdict"], "ALLOWED", "{allowed}");
}
