//! DNS and toFQDNs end to end: resolving through the DNS proxy, learning, TTLs and caps, DNS over TCP, forged and truncated answers, redirect capture, audit.

use super::*;

#[test]
fn with_dns_captured_by_redirect_names_still_resolve_and_are_judged() {
    if !ready_for_dns("with_dns_captured_by_redirect_names_still_resolve_and_are_judged") {
        return;
    }
    // NAT REDIRECT instead of TPROXY (a sidecar without NET_ADMIN): the query's original
    // resolver is lost, and the sidecar asks the pod's configured one.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/allow-github-api");
    let up = Up::with(
        &dir,
        Options {
            init_args: vec!["--dns-capture=redirect".into()],
            sidecar_args: vec!["--dns-capture=redirect".into()],
            ..options("ghredir", Inject::Annotated)
        },
    );
    let ns = up.ns("production/ci-runner");
    let (code, body) = curl_in(&ns, "http://api.github.com:443/repos", &[]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("external/github-api GET /repos"), "{body}");
    let (code, out) = curl_in(&ns, "http://example.com:443/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "production/ci-runner", "refusing example.com", |e| {
        e["l7"]["dns"]["query"] == "example.com"
    });
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED");
    // Every rule is still in place (the same rule set but for the capture of UDP DNS).
    let rules = Command::new("ip")
        .args(["netns", "exec", &ns, "iptables-save", "-t", "nat"])
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-p udp") && rules.contains("--dport 53") && rules.contains("REDIRECT"),
        "{rules}"
    );
}

#[test]
fn the_github_example_resolves_and_reaches_its_names_and_refuses_the_rest() {
    if !ready_for_dns("the_github_example_resolves_and_reaches_its_names_and_refuses_the_rest") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/allow-github-api");
    let up = Up::new(&dir, "gh", Inject::Annotated);
    let ns = up.ns("production/ci-runner");
    // The sandbox server answers HTTP on any port: plain HTTP to 443 shows the Host check too.
    let (code, body) = curl_in(&ns, "http://api.github.com:443/repos", &[]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("external/github-api GET /repos"), "{body}");
    let (code, body) = curl_in(&ns, "http://github.com:443/", &[]);
    assert_eq!(code, 0, "{body}");
    // Port 80 of the same host: not in the rule.
    let (code, _) = curl_in(&ns, "http://api.github.com:80/", &[]);
    assert_ne!(code, 0);
    // Another name: REFUSED by the DNS proxy (dnsmasq would have answered it).
    let (code, out) = curl_in(&ns, "http://example.com:443/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "production/ci-runner", "refusing example.com", |e| {
        e["l7"]["dns"]["query"] == "example.com"
    });
    assert_eq!(refused["verdict"], "DENIED");
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED");
    let learned = wait_for_flow(
        &up,
        "production/ci-runner",
        "learning api.github.com",
        |e| e["l7"]["dns"]["query"] == "api.github.com" && e["l7"]["dns"]["qtype"] == "A",
    );
    assert_eq!(learned["verdict"], "ALLOWED");
    assert_eq!(learned["l7"]["dns"]["reason"], "implicit-for-toFQDNs");
    assert_eq!(learned["l7"]["dns"]["ips"][0], "203.0.113.10");
    // The original destination of the query (coredns, by address: no rule of the runner's
    // names it, so it is not in the runner's view).
    assert_eq!(
        learned["destination"]["ip"],
        up.ip("kube-system/coredns").to_string().as_str(),
        "{learned}"
    );
}

#[test]
fn cluster_policy_domain_names_allow_resolved_names_only_with_the_to_fqdns_trust_rules() {
    if !ready_for_dns(
        "cluster_policy_domain_names_allow_resolved_names_only_with_the_to_fqdns_trust_rules",
    ) {
        return;
    }
    let dir = topology(&domain_names_topology());
    let up = Up::new(dir.path(), "cnpdn", Inject::Annotated);
    let ns = up.ns("t/runner");
    // A name the wildcard covers (two labels below it), resolved by the pod: allowed.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/cdn GET /"), "{out}");
    let allowed = wait_for_flow(&up, "t/runner", "the allowed connection", |e| {
        e["destination"]["ip"] == "203.0.113.20" && e["verdict"] == "ALLOWED"
    });
    assert_eq!(allowed["egress"]["reason"], "cluster-accept", "{allowed}");
    assert_eq!(allowed["egress"]["rule_name"], "cdn");
    assert_eq!(allowed["egress"]["names"][0], "www.cdn.example.net");
    // A name no domainNames entry covers: the pod may not reach the resolver for it (only
    // names the policies select pass implicitly), so the DNS proxy refuses it ...
    let (code, out) = curl_in(&ns, "http://api.example.com/", &[]);
    assert_eq!(code, 6, "could not resolve: {out}");
    let refused = wait_for_flow(&up, "t/runner", "refusing api.example.com", |e| {
        e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(refused["l7"]["dns"]["rcode"], "REFUSED", "{refused}");
    // ... and its address, known otherwise, meets the Deny.
    let (code, out) = curl_in(
        &ns,
        "http://api.example.com/",
        &["--resolve", "api.example.com:80:203.0.113.10"],
    );
    assert_ne!(code, 0, "{out}");
    let denied = wait_for_flow(&up, "t/runner", "the denied connection", |e| {
        e["destination"]["ip"] == "203.0.113.10" && e["verdict"] == "DENIED"
    });
    assert_eq!(denied["egress"]["reason"], "cluster-deny", "{denied}");
    assert_eq!(denied["egress"]["rule_name"], "deny-all");
    // The CDN's address asked for under another name: the Host check refuses it, as for
    // toFQDNs.
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Access denied"), "{out}");
    // Never resolved: denied.
    let (code, out) = curl_in(&ns, "http://198.51.100.20/", &[]);
    assert_ne!(code, 0, "{out}");
}

#[test]
fn with_the_audit_flag_dns_refusals_name_checks_and_connections_pass_as_audit() {
    if !ready_for_dns("with_the_audit_flag_dns_refusals_name_checks_and_connections_pass_as_audit")
    {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--audit".into()],
            ..options("fqaud", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    // A name no rule covers: enforced, the DNS proxy refuses it; audited, it is answered and the
    // connection to its address passes, each logged as AUDIT.
    let (code, out) = curl_in(&ns, "http://other.example.org/", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/other GET /"), "{out}");
    let query = wait_for_flow(&up, "t/runner", "the audited query", |e| {
        e["l7"]["dns"]["query"] == "other.example.org"
    });
    assert_eq!(query["verdict"], "AUDIT", "{query}");
    assert_ne!(query["l7"]["dns"]["rcode"], "REFUSED", "{query}");
    let conn = wait_for_flow(&up, "t/runner", "the audited connection", |e| {
        e["destination"]["ip"] == "198.51.100.20" && e["l7"].is_null()
    });
    assert_eq!(conn["verdict"], "AUDIT", "{conn}");
    // The CDN's address under another name: the Host check would answer 403; audited, the
    // request reaches the server and is logged as AUDIT.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external/cdn GET /"), "not refused: {out}");
    let request = wait_for_flow(&up, "t/runner", "the audited request", |e| {
        e["l7"]["http"]["host"] == "evil.example.org"
    });
    assert_eq!(request["verdict"], "AUDIT", "{request}");
}

#[test]
fn an_address_never_resolved_or_asked_for_under_another_name_is_denied() {
    if !ready_for_dns("an_address_never_resolved_or_asked_for_under_another_name_is_denied") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "fqn", Inject::Annotated);
    let ns = up.ns("t/runner");
    // By address, never resolved: reset.
    let (code, out) = curl_in(&ns, "http://203.0.113.10/", &[]);
    assert_ne!(code, 0, "{out}");
    // Resolved: allowed.
    let (code, out) = curl_in(&ns, "http://api.example.com/", &[]);
    assert_eq!(code, 0, "{out}");
    // The CDN address, learned for www.cdn.example.net, asked for as evil.example.org: the
    // Host check refuses it.
    let (code, out) = curl_in(&ns, "http://www.cdn.example.net/", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = curl_in(
        &ns,
        "http://evil.example.org/",
        &["--resolve", "evil.example.org:80:203.0.113.20"],
    );
    // Every request's Host is checked: a 403 for this one, as HTTP rules answer.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Access denied"), "{out}");
    let denied = wait_for_flow(&up, "t/runner", "the Host check", |e| {
        e["verdict"] == "DENIED" && e["l7"]["http"]["host"] == "evil.example.org"
    });
    assert!(
        denied["error"]
            .as_str()
            .is_some_and(|r| r.contains("not a name the toFQDNs rules allow")),
        "{denied}"
    );
    assert_eq!(denied["egress"]["names"][0], "www.cdn.example.net");
    // TLS: the SNI of the ClientHello is read (nothing is terminated). The sandbox server
    // does not speak TLS, so curl fails either way, and the flow events tell the two apart:
    // an allowed name passes the SNI check and is then cut for the server's answer, which is
    // not TLS.
    let _ = curl_in(&ns, "https://www.cdn.example.net:80/", &["-k"]);
    wait_for_flow(&up, "t/runner", "the SNI check passing", |e| {
        e["reason"].as_str().is_some_and(|r| {
            r.starts_with("TLS SNI www.cdn.example.net")
                && r.contains("did not answer the ClientHello with TLS")
        })
    });
    let _ = curl_in(
        &ns,
        "https://evil.example.org:80/",
        &["-k", "--resolve", "evil.example.org:80:203.0.113.20"],
    );
    wait_for_flow(&up, "t/runner", "the SNI check refusing", |e| {
        e["verdict"] == "DENIED"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("TLS SNI evil.example.org"))
    });
    // A name outside the rules is refused at DNS, whatever the resolver would say.
    let (code, _) = curl_in(&ns, "http://other.example.org/", &[]);
    assert_eq!(code, 6);
}

#[test]
fn ttl_expiry_stops_new_connections_but_not_open_ones() {
    if !ready_for_dns("ttl_expiry_stops_new_connections_but_not_open_ones") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    // The sandbox's server greets a silent client: a server-first protocol, which a
    // toFQDNs-only address admits with the flag.
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--allow-unnamed-fqdn-connections".into()],
            ..options("ttl", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("203.0.113.10"), "{out}");
    let dst: SocketAddr = "203.0.113.10:80".parse().expect("addr");
    let (mut open, greeting) = connect(&ns, dst).expect("allowed while the answer is fresh");
    assert!(greeting.starts_with("podwall-sandbox"), "{greeting}");
    // The answer's TTL is 2 s: new connections are refused once it has passed, not before.
    let expired_after = allowed_for(&ns, dst, Instant::now(), Duration::from_secs(10));
    assert!(
        expired_after >= Duration::from_millis(1500),
        "refused after {expired_after:?}, before the answer's TTL of 2 s"
    );
    open.get_mut().write_all(b"still here\n").expect("write");
    let mut echo = String::new();
    open.read_line(&mut echo)
        .expect("the open connection keeps working");
    assert_eq!(echo, "still here\n");
    // Resolving again opens it again.
    let (code, _) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0);
    assert!(connect(&ns, dst).is_ok());
}

/// A DNS query for `name` (type A, ID 0x4242) without EDNS, as a stub resolver sends it.
#[test]
fn the_fqdn_ttl_floor_and_per_name_cap_flags_reach_the_sidecars_cache() {
    if !ready_for_dns("the_fqdn_ttl_floor_and_per_name_cap_flags_reach_the_sidecars_cache") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec![
                "--allow-unnamed-fqdn-connections".into(),
                "--fqdn-min-ttl=6s".into(),
                "--fqdn-max-ips-per-name=4".into(),
                // Most of big.example.com's addresses have no host behind them.
                "--connect-timeout=300ms".into(),
            ],
            ..options("ttlcap", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    // api.example.com answers with a TTL of 2 s; the floor keeps its address for 6.
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "api.example.com"]);
    assert_eq!(code, 0, "{out}");
    let resolved = Instant::now();
    let dst: SocketAddr = "203.0.113.10:80".parse().expect("addr");
    let kept = allowed_for(&ns, dst, resolved, Duration::from_secs(15));
    assert!(
        kept >= Duration::from_secs(5),
        "refused after {kept:?}: the 6 s floor did not hold the 2 s answer"
    );
    // big.example.com has 36 addresses; 4 are kept, so connections to 4 of them are allowed
    // (most have no host behind them: the verdict is read from each one's flow event).
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "big.example.com"]);
    assert_eq!(code, 0, "{out}");
    let addresses: std::collections::BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(addresses.len(), 36, "{out}");
    let mut allowed = Vec::new();
    for a in &addresses {
        let ip: IpAddr = a.parse().expect("an address");
        let _ = connect(&ns, SocketAddr::new(ip, 80));
        let event = wait_for_flow(&up, "t/runner", "the connection's event", |e| {
            e["destination"]["ip"] == a.as_str() && e["l7"].is_null()
        });
        if event["verdict"] == "ALLOWED" {
            allowed.push(a.clone());
        }
    }
    assert_eq!(allowed.len(), 4, "the per-name cap: {allowed:?}");
}

#[test]
fn dns_over_tcp_is_judged_and_learned_from() {
    if !ready_for_dns("dns_over_tcp_is_judged_and_learned_from") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    // The sandbox's server greets a silent client: a server-first protocol, which a
    // toFQDNs-only address admits with the flag.
    let up = Up::with(
        dir.path(),
        Options {
            sidecar_args: vec!["--allow-unnamed-fqdn-connections".into()],
            ..options("dtcp", Inject::Annotated)
        },
    );
    let ns = up.ns("t/runner");
    let resolver = SocketAddr::new(up.ip("kube-system/coredns"), 53);
    let ask = |name: &'static str| {
        run_in(&ns, move || {
            let mut s = TcpStream::connect_timeout(&resolver, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let q = dns_query(name);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend(q);
            s.write_all(&framed).map_err(|e| e.to_string())?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).map_err(|e| e.to_string())?;
            let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut body).map_err(|e| e.to_string())?;
            Ok::<_, String>(body)
        })
        .expect("in netns")
        .expect("a TCP answer")
    };
    let ok = dns_answer(&ask("api.example.com."));
    assert_eq!(ok.metadata.id, 0x4242);
    assert_eq!(ok.answers.len(), 1);
    let refused = dns_answer(&ask("other.example.org."));
    assert_eq!(
        refused.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );
    assert!(connect(&ns, "203.0.113.10:80".parse().expect("addr")).is_ok());
    let e = wait_for_flow(&up, "t/runner", "a TCP DNS event", |e| {
        e["protocol"] == "TCP" && e["l7"]["dns"]["query"] == "api.example.com"
    });
    assert_eq!(e["l7"]["dns"]["learned"], 1);
}

#[test]
fn a_truncated_answer_is_passed_on_and_the_retry_over_tcp_teaches_every_address() {
    if !ready_for_dns(
        "a_truncated_answer_is_passed_on_and_the_retry_over_tcp_teaches_every_address",
    ) {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "dtc", Inject::Annotated);
    let ns = up.ns("t/runner");
    // 36 addresses do not fit in 512 bytes: glibc gets TC over UDP and asks again over TCP.
    let (code, out) = in_pod(&ns, &["getent", "ahostsv4", "big.example.com"]);
    assert_eq!(code, 0, "{out}");
    let addresses: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(addresses.len(), 36, "{out}");
    let events = dns_events(&up, "t/runner");
    assert!(
        events.iter().any(|e| e["protocol"] == "UDP"
            && e["l7"]["dns"]["query"] == "big.example.com"
            && e["l7"]["dns"]["truncated"] == true),
        "{events:#?}"
    );
    let tcp = wait_for_flow(&up, "t/runner", "the TCP retry", |e| {
        e["protocol"] == "TCP" && e["l7"]["dns"]["query"] == "big.example.com"
    });
    assert_eq!(tcp["l7"]["dns"]["ips"].as_array().map(Vec::len), Some(36));
}

#[test]
fn a_forged_answer_from_another_port_teaches_nothing() {
    if !ready_for_dns("a_forged_answer_from_another_port_teaches_nothing") {
        return;
    }
    let dir = topology(FQDN_TOPOLOGY);
    let up = Up::new(dir.path(), "dsp", Inject::Annotated);
    let ns = up.ns("t/runner");
    let resolver_ns = up
        .sb()
        .record
        .externals
        .iter()
        .find(|e| e.host.name == "resolver")
        .expect("resolver host")
        .netns
        .clone();
    // A resolver that first answers from another port with a forged address, then properly.
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        run_in(&resolver_ns, move || {
            use hickory_proto::op::{Message, OpCode};
            use hickory_proto::rr::{RData, Record, rdata::A};
            let sock = std::net::UdpSocket::bind("203.0.113.53:53").expect("bind 53");
            let forger = std::net::UdpSocket::bind("203.0.113.53:5353").expect("bind 5353");
            let _ = bound_tx.send(());
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 512];
            let (n, client) = sock.recv_from(&mut buf).expect("a query");
            let q = Message::from_vec(&buf[..n]).expect("query");
            let answer = |ip: [u8; 4]| {
                let mut m = Message::response(q.metadata.id, OpCode::Query);
                m.add_queries(q.queries.iter().cloned());
                m.add_answer(Record::from_rdata(
                    q.queries[0].name().clone(),
                    60,
                    RData::A(A(ip.into())),
                ));
                m.to_vec().expect("encodes")
            };
            forger
                .send_to(&answer([203, 0, 113, 30]), client)
                .expect("forge");
            std::thread::sleep(Duration::from_millis(50));
            sock.send_to(&answer([203, 0, 113, 10]), client)
                .expect("answer");
        })
        .expect("in netns")
    });
    bound
        .recv_timeout(Duration::from_secs(5))
        .expect("the resolver listens");
    let reply = run_in(&ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.send_to(&dns_query("big.example.com."), "203.0.113.53:53")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok::<_, String>((buf[..n].to_vec(), from))
    })
    .expect("in netns")
    .expect("an answer");
    server.join().expect("resolver thread");
    let (bytes, from) = reply;
    assert_eq!(
        from,
        "203.0.113.53:53".parse::<SocketAddr>().expect("addr"),
        "the reply comes from the resolver asked"
    );
    let answer = dns_answer(&bytes);
    assert_eq!(answer.answers.len(), 1);
    let e = wait_for_flow(&up, "t/runner", "the relayed query", |e| {
        e["l7"]["dns"]["query"] == "big.example.com"
    });
    assert_eq!(e["l7"]["dns"]["ips"], serde_json::json!(["203.0.113.10"]));
    // The forged address was never learned: the runner may not reach it.
    assert!(connect(&ns, "203.0.113.30:80".parse().expect("addr")).is_err());
}
