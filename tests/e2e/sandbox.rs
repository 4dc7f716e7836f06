//! The sandbox itself: every example as the analyzer predicts, the demo, the upstream ClusterNetworkPolicy conformance subset, the init rules, cleanup.

use super::*;

#[test]
fn every_example_behaves_in_the_sandbox_as_the_analyzer_predicts() {
    if !ready_for("every_example_behaves_in_the_sandbox_as_the_analyzer_predicts") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let up = Up::new(dir, "ex", Inject::All);
        let report = up.sb().probe().expect("probe");
        checked += report.attempts.len();
        assert!(
            report.attempts.iter().any(|a| a.observed),
            "{}: nothing connected at all",
            dir.display()
        );
        for a in report.mismatches() {
            failures.push(format!(
                "{}: {} -> {} TCP/{}: observed {} predicted {} ({})",
                dir.display(),
                a.from,
                a.to,
                a.port,
                a.observed,
                a.predicted,
                a.detail
            ));
        }
        // And as written by hand in expected.yaml, an oracle that is not the engine: every
        // probed TCP port its matrices cover.
        let expected: serde_json::Value = serde_saphyr::from_str(
            &std::fs::read_to_string(dir.join("expected.yaml")).expect("expected.yaml"),
        )
        .expect("expected.yaml parses");
        let covered: Vec<u64> = expected["matrices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["protocol"] == "TCP")
            .filter_map(|m| m["port"].as_u64())
            .collect();
        let mut missing: Vec<u16> = report
            .attempts
            .iter()
            .map(|a| a.port)
            .filter(|p| !covered.contains(&u64::from(*p)))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            failures.push(format!(
                "{}: expected.yaml has no matrix for the probed TCP ports {missing:?}",
                dir.display()
            ));
        }
        for m in expected["matrices"].as_array().into_iter().flatten() {
            if m["protocol"] != "TCP" {
                continue;
            }
            let allowed: Vec<&str> = m["allowed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            for a in report
                .attempts
                .iter()
                .filter(|a| m["port"] == a.port && a.from != a.to)
            {
                let want = allowed.contains(&format!("{} -> {}", a.from, a.to).as_str());
                if a.observed != want {
                    failures.push(format!(
                        "{}: {} -> {} TCP/{}: observed {}, expected.yaml says {want} ({})",
                        dir.display(),
                        a.from,
                        a.to,
                        a.port,
                        a.observed,
                        a.detail
                    ));
                }
            }
        }
        // A denial is a reset at once (the README's promise), never a timeout that would
        // look the same to this probe.
        for a in report.attempts.iter().filter(|a| !a.observed) {
            assert!(
                a.detail.contains("reset") || a.detail.contains("refused"),
                "{}: {} -> {} TCP/{} was denied by something other than a reset: {}",
                dir.display(),
                a.from,
                a.to,
                a.port,
                a.detail
            );
        }
        // The application saw the port the client dialled.
        for a in report
            .attempts
            .iter()
            .filter(|a| a.observed && a.detail.starts_with("podwall-sandbox"))
        {
            assert!(
                a.detail.contains(&format!(" port {} ", a.port)),
                "{}: {}",
                dir.display(),
                a.detail
            );
        }
    }
    assert!(checked > 100, "only {checked} connections tried");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_demo_command_shows_enforcement_and_cleans_up() {
    if !ready_for("the_demo_command_shows_enforcement_and_cleans_up") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/three-tier");
    let out = Command::new(PODWALL)
        .args(["sandbox", "demo"])
        .arg(&dir)
        .args(["--name", "demo"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("behaved as the analyzer predicts"),
        "{stdout}"
    );
    // A refused cell in a row of the table (the legend line, which names "· refused", does
    // not count).
    assert!(
        stdout
            .lines()
            .filter(|l| !l.contains("refused"))
            .any(|l| l.contains('·')),
        "some connections are refused: {stdout}"
    );
    assert!(!Path::new("/run/podwall/sandbox/demo").exists());
    assert!(!Path::new("/run/netns/pw-demo-node").exists());
}

#[test]
fn upstream_cluster_network_policy_conformance_cases_hold_with_real_sidecars() {
    if !ready_for("upstream_cluster_network_policy_conformance_cases_hold_with_real_sidecars") {
        return;
    }
    use support::cnp_conformance::{cases, initial, read_objects};
    // The topology without its host-network pods (no TCP probe here reaches them); each pod
    // also listens on the undeclared TCP ports upstream's servers listen on (an extra container
    // with unnamed ports: named-port rules see no difference).
    let topology: Vec<serde_json::Value> =
        read_objects(&support::cnp_conformance::dir().join("topology.yaml"))
            .into_iter()
            .filter(|v| v["spec"]["hostNetwork"] != true)
            .map(|mut v| {
                let listening = v["metadata"]["annotations"]["cnp-conformance/listening"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let ports: Vec<serde_json::Value> = listening
                    .split(',')
                    .filter_map(|p| p.strip_suffix("/TCP"))
                    .filter_map(|p| p.parse::<u16>().ok())
                    .map(|p| serde_json::json!({"containerPort": p}))
                    .collect();
                if let Some(containers) = v["spec"]["containers"].as_array_mut()
                    && !ports.is_empty()
                {
                    containers.push(serde_json::json!({"name": "listener", "ports": ports}));
                }
                v
            })
            .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cluster.json"),
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": topology}).to_string(),
    )
    .expect("write");
    let up = Up::new(dir.path(), "cnpc", Inject::All);
    let policy_dir = up.sb().policy_dir();
    let pods: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(policy_dir.join("cluster.json")).expect("cluster.json"),
    )
    .expect("json")["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|v| v["kind"] == "Pod")
        .cloned()
        .collect();
    // Written whole, then renamed: the control plane never reads half a file.
    let write = |name: &str, items: Vec<serde_json::Value>| {
        let tmp = policy_dir.join(format!(".{name}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        )
        .expect("write");
        std::fs::rename(&tmp, policy_dir.join(name)).expect("rename");
    };
    let mut failures = Vec::new();
    let mut probed = 0;
    for case in cases()
        .iter()
        .filter(|c| CONFORMANCE_IN_SANDBOX.contains(&c.id.as_str()))
    {
        let mut objects = initial(case);
        for (i, step) in case.steps.iter().enumerate() {
            step.apply(&mut objects, &case.id);
            let of = |kinds: &[&str]| -> Vec<serde_json::Value> {
                objects
                    .values()
                    .filter(|v| kinds.iter().any(|k| v["kind"] == *k))
                    .cloned()
                    .collect()
            };
            let mut state = of(&["Namespace", "Node"]);
            state.extend(pods.iter().cloned());
            write("cluster.json", state);
            write(
                "policies.json",
                of(&["ClusterNetworkPolicy", "NetworkPolicy"]),
            );
            for c in step
                .checks
                .iter()
                .filter(|c| c.protocol == "TCP" && !c.suspect && !c.to.starts_with("service:"))
            {
                if up.sb().pod(&c.to).is_none() || up.sb().pod(&c.from).is_none() {
                    continue;
                }
                probed += 1;
                let dst = SocketAddr::new(up.ip(&c.to), c.port);
                // As upstream: polled until it holds (the sidecars take the new policy).
                let start = Instant::now();
                let mut got = !c.allowed;
                while start.elapsed() < Duration::from_secs(10) {
                    got = connect(&up.ns(&c.from), dst).is_ok();
                    if got == c.allowed {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if got != c.allowed {
                    failures.push(format!(
                        "{} step {i} ({}): {} -> {} TCP/{}: expected {}",
                        case.id,
                        step.note,
                        c.from,
                        c.to,
                        c.port,
                        if c.allowed { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
    println!("{probed} conformance probes through real sidecars");
    assert!(probed >= 60, "only {probed} probes ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn init_twice_leaves_one_rule_set_and_remove_takes_it_away() {
    if !ready_for("init_twice_leaves_one_rule_set_and_remove_takes_it_away") {
        return;
    }
    let ns = "pw-e2e-init";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip")
            .success()
    );
    let init = |extra: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, PODWALL, "proxy", "init"])
            .args(extra)
            .output()
            .expect("init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dry = init(&["--dry-run"]);
    assert!(
        dry.contains("-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001"),
        "{dry}"
    );
    assert!(
        all_rules(ns).iter().all(|l| !l.contains("PODWALL")),
        "dry run changes nothing"
    );
    init(&["--exclude-outbound-cidrs", "10.96.0.0/12"]);
    let once = all_rules(ns);
    init(&["--exclude-outbound-cidrs", "10.96.0.0/12"]);
    let twice = all_rules(ns);
    assert_eq!(once, twice);
    // One jump of each kind: in nat OUTPUT, mangle PREROUTING (inbound: new connections and
    // SYNs on entries conntrack reopened; DNS), OUTPUT (DNS)
    // and POSTROUTING (egress), filter INPUT (spoofing, guard three times: new or invalid
    // TCP, DNS, a SYN-ACK from a connection's opener; packet filter) and OUTPUT
    // (forged sources, packet filter).
    let jumps: Vec<&String> = twice
        .iter()
        .filter(|l| {
            l.starts_with("-A ") && !l.starts_with("-A PODWALL") && l.contains("-j PODWALL_")
        })
        .collect();
    // (On the kernel path, three more: mangle OUTPUT's for new TCP connections, and mangle
    // OUTPUT's and PREROUTING's for SYNs that reopen a kernel-carried connection's entry. No
    // raw table: a hook every packet would pay for.)
    let kernel = support::sandbox::kernel_path();
    assert_eq!(jumps.len(), 13 + 3 * usize::from(kernel), "{jumps:#?}");
    assert!(
        twice.iter().all(|l| !l.contains("PODWALL_TRACK")),
        "{twice:#?}"
    );
    let mut distinct = jumps.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), jumps.len(), "no jump twice: {jumps:#?}");
    assert!(
        twice
            .iter()
            .any(|l| l == "-A PODWALL_OUTPUT -d 10.96.0.0/12 -j RETURN"),
        "{twice:#?}"
    );
    // Switching the TCP path and back leaves the same set (each path's own chains come and
    // go with it).
    let (other, this) = if kernel {
        ("--l4-path=proxy", "--l4-path=kernel")
    } else {
        ("--l4-path=kernel", "--l4-path=proxy")
    };
    let ours = |rules: Vec<String>| -> Vec<String> {
        rules
            .into_iter()
            .filter(|l| l.contains("PODWALL"))
            .collect()
    };
    init(&[other, "--exclude-outbound-cidrs", "10.96.0.0/12"]);
    assert_ne!(
        ours(all_rules(ns)),
        ours(twice.clone()),
        "{other} changes the rules"
    );
    init(&[this, "--exclude-outbound-cidrs", "10.96.0.0/12"]);
    assert_eq!(ours(all_rules(ns)), ours(twice.clone()), "back to {this}");
    init(&["--remove"]);
    assert!(
        all_rules(ns).iter().all(|l| !l.contains("PODWALL")),
        "{:#?}",
        all_rules(ns)
    );
    init(&["--remove"]);
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

#[test]
fn tcp_packets_never_walk_the_packet_filter_chains_and_every_other_protocol_does() {
    if !ready_for("tcp_packets_never_walk_the_packet_filter_chains_and_every_other_protocol_does") {
        return;
    }
    let ns = "pw-e2e-filter";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    let sh = |script: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", script])
            .output()
            .expect("bash")
    };
    assert!(
        Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .expect("ip")
            .success()
    );
    // A link where nobody answers for 10.77.0.2: packets to it pass every OUTPUT hook and
    // then wait for ARP in vain. The range is excluded from the redirect so TCP goes out as
    // it is, not to the proxy's port.
    let setup = sh(
        "ip link set lo up && ip link add d0 type veth peer name d1 \
         && ip link set d0 up && ip link set d1 up && ip addr add 10.77.0.1/24 dev d0",
    );
    assert!(setup.status.success(), "{setup:?}");
    let init = sh(&format!(
        "{PODWALL} proxy init --exclude-outbound-cidrs 10.77.0.0/24"
    ));
    assert!(init.status.success(), "{init:?}");
    let out_jumps = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    let rules: Vec<&str> = out_jumps.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(rules, ["! -p tcp -j PODWALL_FILTER_OUT"]);

    // TCP: a connection attempt sends SYNs (nobody answers).
    let _ = sh("timeout 2 bash -c 'exec 3<>/dev/tcp/10.77.0.2/80' 2>/dev/null");
    let after_tcp = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    assert!(
        after_tcp.iter().all(|(_, packets)| *packets == 0),
        "TCP went into the packet filter: {after_tcp:?}"
    );

    // UDP: one datagram takes the jump.
    let _ = sh("echo x > /dev/udp/10.77.0.2/9999");
    let after_udp = jump_counts(ns, "OUTPUT", "PODWALL_FILTER_OUT");
    assert_eq!(after_udp[0].1, 1, "{after_udp:?}");

    let _ = sh(&format!("{PODWALL} proxy init --remove"));
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

#[test]
fn down_after_a_killed_up_removes_everything() {
    if !ready_for("down_after_a_killed_up_removes_everything") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/three-tier");
    let mut up = Command::new(PODWALL)
        .args(["sandbox", "up"])
        .arg(&dir)
        .args(["--name", "crash", "--inject", "all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("up");
    // Kill it mid-way: once some namespaces exist.
    wait_for("up to create namespaces", Duration::from_secs(20), || {
        Path::new("/run/netns/pw-crash-1").exists()
    });
    let _ = up.kill();
    let _ = up.wait();
    let out = Command::new(PODWALL)
        .args(["sandbox", "down", "--name", "crash"])
        .output()
        .expect("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("pw-crash-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!Path::new("/run/podwall/sandbox/crash").exists());
    // No server or sidecar of that sandbox survives.
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("--sandbox crash") || c.contains("/run/podwall/sandbox/crash/"))
        .collect();
    assert!(survivors.is_empty(), "{survivors:#?}");
}
