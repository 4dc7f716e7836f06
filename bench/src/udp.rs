//! The UDP phase: what the packet filter costs. Each new flow's first packet makes a round trip
//! through NFQUEUE to the sidecar; the rest of the flow stays in the kernel. Measured against
//! the same traffic without the sidecar: new flows per second (a new socket, so a new source
//! port and conntrack entry, per request) and datagrams per second on long-lived flows.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use podwall_sandbox::run_in;
use serde::Serialize;

use crate::Proxy;

const SERVER: &str = "10.68.0.2:5300";
const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
status: {podIP: 10.68.0.1, hostIP: 192.168.68.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {containers: [{name: echo, ports: [{containerPort: 5300, protocol: UDP}]}]}
status: {podIP: 10.68.0.2, hostIP: 192.168.68.1}
---
# The client is isolated for egress and may send UDP to the server's 5300: every new flow is
# judged against a rule, not waved through as unisolated.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: bench}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: UDP, port: 5300}]
"#;

/// One path's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct UdpPath {
    /// New flows per second (request and echo on a fresh socket).
    pub(crate) new_flows_per_s: f64,
    /// Median time for one new flow's request and echo, ms.
    pub(crate) new_flow_p50_ms: f64,
    /// 99th percentile.
    pub(crate) new_flow_p99_ms: f64,
    /// Requests that got no echo within a second (the rate leaves out the time spent waiting).
    pub(crate) new_flows_lost: u64,
    /// The sidecar's CPU per new flow, µs.
    pub(crate) proxy_cpu_us_per_new_flow: Option<f64>,
    /// Request/echo pairs per second on long-lived flows.
    pub(crate) datagrams_per_s: f64,
    /// The sidecar's CPU per datagram on those flows, µs (it should see none of them).
    pub(crate) proxy_cpu_us_per_datagram: Option<f64>,
}

/// What the UDP phase measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct UdpResult {
    /// Without a sidecar or init rules.
    pub(crate) direct: UdpPath,
    /// Through the init rules and the sidecar's packet filter.
    pub(crate) podwall: UdpPath,
}

/// Latencies, sorted, to (per second, p50 ms, p99 ms).
fn summarise(mut all: Vec<Duration>, over: Duration) -> (f64, f64, f64) {
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    (all.len() as f64 / over.as_secs_f64(), pct(0.50), pct(0.99))
}

/// Source ports for the new-flow runs: each request gets one of its own, so that every flow is
/// new to conntrack (ephemeral ports would come round again within the 30 s an entry lives,
/// and a reused port's flow is no longer new).
const NEW_FLOW_PORTS: std::ops::Range<u16> = 10_000..60_000;

/// `workers` clients in `ns`. With `fresh`, each request goes on a new socket bound to a port
/// not used before in this run (until the ports or `duration` run out); otherwise each client
/// keeps one socket for `duration`. Returns the latencies of answered requests, the requests
/// lost, and the time the run took without the waits for lost answers (a lost datagram costs its
/// client a whole timeout, which would otherwise swamp a run this short).
fn load(
    ns: &str,
    workers: usize,
    duration: Duration,
    fresh: bool,
) -> Result<(Vec<Duration>, u64, Duration), String> {
    let server: SocketAddr = SERVER.parse().map_err(|e| format!("{e}"))?;
    run_in(ns, move || {
        let open = move |port: u16| -> Result<UdpSocket, String> {
            let s = UdpSocket::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"))?;
            s.connect(server).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| e.to_string())?;
            Ok(s)
        };
        let per_worker = NEW_FLOW_PORTS.len() / workers;
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                std::thread::spawn(move || -> Result<(Vec<Duration>, u64, Duration), String> {
                    let started = Instant::now();
                    let mut waited = Duration::ZERO;
                    let mut lat = Vec::new();
                    let mut lost = 0;
                    let mut buf = [0u8; 64];
                    let first = NEW_FLOW_PORTS.start as usize + w * per_worker;
                    let mut ports = (first..first + per_worker).map(|p| p as u16);
                    let long_lived = if fresh { None } else { Some(open(0)?) };
                    let end = Instant::now() + duration;
                    while Instant::now() < end {
                        let t = Instant::now();
                        let fresh_socket;
                        let s = match &long_lived {
                            Some(s) => s,
                            None => {
                                let Some(port) = ports.next() else { break };
                                // A port something in the pod holds (the DNS proxy's 15053).
                                let Ok(s) = open(port) else { continue };
                                fresh_socket = s;
                                &fresh_socket
                            }
                        };
                        s.send(b"podwall-bench").map_err(|e| e.to_string())?;
                        match s.recv(&mut buf) {
                            Ok(_) => lat.push(t.elapsed()),
                            Err(_) => {
                                lost += 1;
                                waited += t.elapsed();
                            }
                        }
                    }
                    Ok((lat, lost, started.elapsed().saturating_sub(waited)))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut lost = 0;
        let mut busy = Duration::ZERO;
        for h in handles {
            let (l, n, b) = h.join().map_err(|_| "a worker panicked".to_string())??;
            all.extend(l);
            lost += n;
            busy += b;
        }
        Ok((all, lost, busy / workers.max(1) as u32))
    })
    .map_err(|e| e.to_string())?
}

fn measure(
    name: &str,
    ns: &str,
    workers: usize,
    duration: Duration,
    sidecar: Option<&Proxy>,
) -> Result<UdpPath, String> {
    let mut p = UdpPath::default();
    eprintln!(
        "[udp {name}] new flows ({workers} clients, a fresh socket and source port per request, {} at most)",
        NEW_FLOW_PORTS.len()
    );
    let c0 = sidecar.map(Proxy::cpu);
    let (lat, lost, took) = load(ns, workers, duration, true)?;
    let n = lat.len();
    (p.new_flows_per_s, p.new_flow_p50_ms, p.new_flow_p99_ms) = summarise(lat, took);
    p.new_flows_lost = lost;
    if let (Some(s), Some(c0)) = (sidecar, c0) {
        p.proxy_cpu_us_per_new_flow = Some((s.cpu() - c0) / n.max(1) as f64 * 1e6);
    }
    eprintln!("[udp {name}] long-lived flows ({workers} clients, one socket each)");
    let c0 = sidecar.map(Proxy::cpu);
    let (lat, _, took) = load(ns, workers, duration, false)?;
    let n = lat.len();
    (p.datagrams_per_s, _, _) = summarise(lat, took);
    if let (Some(s), Some(c0)) = (sidecar, c0) {
        p.proxy_cpu_us_per_datagram = Some((s.cpu() - c0) / n.max(1) as f64 * 1e6);
    }
    Ok(p)
}

/// Runs the UDP phase.
pub(crate) fn run(podwall: &Path, duration: Duration, workers: usize) -> Result<UdpResult, String> {
    crate::in_sandbox(podwall, "benchudp", TOPOLOGY, |sb, _| {
        let ns = sb.pod("bench/client").ok_or("no client")?.netns.clone();
        let direct = measure("direct", &ns, workers, duration, None)?;
        // (The direct runs leave no conntrack entries in the pod: nothing there tracks until
        // the init rules do.)
        crate::init_rules(sb, podwall, &[])?;
        let sidecar = crate::start_sidecar(sb, podwall, 1)?;
        let podwall_path = measure("podwall", &ns, workers, duration, Some(&sidecar));
        drop(sidecar);
        let _ = crate::init_rules(sb, podwall, &["--remove"]);
        Ok(UdpResult {
            direct,
            podwall: podwall_path?,
        })
    })
}

/// The UDP table.
pub(crate) fn table(r: &UdpResult, workers: usize) -> String {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let (d, p) = (&r.direct, &r.podwall);
    format!(
        "\nUDP through the packet filter, {workers} clients (request and echo):\n\
         {:<34} {:>12} {:>12} {:>10}\n\
         {:<34} {:>12.0} {:>12.0} {:>10}\n\
         {:<34} {:>12.3} {:>12.3} {:>10}\n\
         {:<34} {:>12.3} {:>12.3} {:>10}\n\
         {:<34} {:>12} {:>12} {:>10}\n\
         {:<34} {:>12} {:>12} {:>10}\n\
         {:<34} {:>12.0} {:>12.0} {:>10}\n\
         {:<34} {:>12} {:>12} {:>10}\n",
        "",
        "direct",
        "podwall",
        "/direct",
        "new flows per second",
        d.new_flows_per_s,
        p.new_flows_per_s,
        ratio(p.new_flows_per_s, d.new_flows_per_s),
        "  p50 (ms)",
        d.new_flow_p50_ms,
        p.new_flow_p50_ms,
        ratio(p.new_flow_p50_ms, d.new_flow_p50_ms),
        "  p99 (ms)",
        d.new_flow_p99_ms,
        p.new_flow_p99_ms,
        ratio(p.new_flow_p99_ms, d.new_flow_p99_ms),
        "  lost (no echo within 1 s)",
        d.new_flows_lost,
        p.new_flows_lost,
        "",
        "  proxy CPU per new flow (us)",
        "-",
        us(p.proxy_cpu_us_per_new_flow),
        "",
        "datagrams per second, long-lived",
        d.datagrams_per_s,
        p.datagrams_per_s,
        ratio(p.datagrams_per_s, d.datagrams_per_s),
        "  proxy CPU per datagram (us)",
        "-",
        us(p.proxy_cpu_us_per_datagram),
        "",
    )
}
