//! The DNS phase: queries per second and latency through the sidecar's DNS proxy against the
//! same queries sent straight to the resolver (dnsmasq), and the sidecar's memory per 10,000
//! names learned for a toFQDNs rule.

use std::io::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use podwall_sandbox::run_in;
use serde::Serialize;

const RESOLVER: &str = "10.67.0.53:53";
const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
status: {podIP: 10.67.0.1, hostIP: 192.168.67.1}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: dns, ports: [{containerPort: 53, protocol: UDP}, {containerPort: 53, protocol: TCP}]}]}
status: {podIP: 10.67.0.53, hostIP: 192.168.67.1}
---
# The client may ask the cluster DNS anything, and reach names under bench.example on 80: every
# answer for them is learned.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': kube-system, k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: '53', protocol: ANY}]}]
  - toFQDNs: [{matchPattern: '*.bench.example'}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
---
apiVersion: sandbox.podwall.io/v1alpha1
kind: ExternalHost
metadata: {name: bench}
spec: {address: 203.0.113.7, names: [www.bench.example], domains: [bench.example], ttl: 300}
"#;

/// What the DNS phase measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DnsResult {
    /// Queries answered per second, straight to the resolver.
    pub(crate) direct_qps: f64,
    /// Median and 99th percentile latency, ms.
    pub direct_p50_ms: f64,
    /// 99th percentile.
    pub direct_p99_ms: f64,
    /// The same through the sidecar.
    pub(crate) podwall_qps: f64,
    /// Median latency through the sidecar, ms.
    pub podwall_p50_ms: f64,
    /// 99th percentile through the sidecar, ms.
    pub podwall_p99_ms: f64,
    /// The sidecar's CPU per query, µs.
    pub(crate) podwall_cpu_us_per_query: f64,
    /// Names the sidecar held after the memory run.
    pub(crate) names_learned: u64,
    /// The sidecar's RSS growth for them, MB.
    pub(crate) rss_growth_mb: f64,
    /// The sidecar's RSS before, MB.
    pub(crate) rss_before_mb: f64,
}

/// A query for `name` (A), ID 0, recursion desired, no EDNS.
fn query(name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    if let Ok(n) = Name::from_str(name) {
        m.add_query(Query::query(n, RecordType::A));
    }
    m.to_vec().unwrap_or_default()
}

/// `workers` clients in `ns` asking `name` over UDP as fast as answers come, for `duration`:
/// (answers per second, p50 ms, p99 ms, answers).
fn load(ns: &str, workers: usize, duration: Duration) -> Result<(f64, f64, f64, u64), String> {
    let resolver: SocketAddr = RESOLVER.parse().map_err(|e| format!("{e}"))?;
    run_in(ns, move || {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                    s.connect(resolver).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.to_string())?;
                    let mut q = query("www.bench.example.");
                    let mut buf = [0u8; 512];
                    let mut lat = Vec::new();
                    let end = Instant::now() + duration;
                    let mut id: u16 = (w as u16) << 12;
                    while Instant::now() < end {
                        id = id.wrapping_add(1);
                        q[..2].copy_from_slice(&id.to_be_bytes());
                        let t = Instant::now();
                        s.send(&q).map_err(|e| e.to_string())?;
                        loop {
                            match s.recv(&mut buf) {
                                Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => break,
                                Ok(_) => continue,
                                Err(e) => return Err(format!("no answer: {e}")),
                            }
                        }
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| "a worker panicked".to_string())??);
        }
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Ok((
            all.len() as f64 / duration.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            all.len() as u64,
        ))
    })
    .map_err(|e| e.to_string())?
}

/// Asks `count` distinct names under bench.example, four at a time.
fn many_names(ns: &str, count: u32) -> Result<(), String> {
    let resolver: SocketAddr = RESOLVER.parse().map_err(|e| format!("{e}"))?;
    run_in(ns, move || {
        let handles: Vec<_> = (0..4u32)
            .map(|w| {
                std::thread::spawn(move || -> Result<(), String> {
                    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                    s.connect(resolver).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.to_string())?;
                    let mut buf = [0u8; 512];
                    for i in (w..count).step_by(4) {
                        let name = format!("n{i}.bench.example.");
                        s.send(&query(&name)).map_err(|e| e.to_string())?;
                        s.recv(&mut buf)
                            .map_err(|e| format!("no answer for {name}: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a worker panicked".to_string())??;
        }
        Ok(())
    })
    .map_err(|e| e.to_string())?
}

fn metric(ns: &str, name: &str) -> Option<f64> {
    let text = run_in(ns, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 15020)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).ok()?;
        Some(out)
    })
    .ok()??;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Runs the DNS phase.
pub(crate) fn run(podwall: &Path, duration: Duration, workers: usize) -> Result<DnsResult, String> {
    crate::in_sandbox(podwall, "benchdns", TOPOLOGY, |sb, _| {
        let ns = sb.pod("bench/client").ok_or("no client")?.netns.clone();
        let mut r = DnsResult::default();
        eprintln!("[dns] direct: {workers} clients asking dnsmasq");
        (r.direct_qps, r.direct_p50_ms, r.direct_p99_ms, _) = load(&ns, workers, duration)?;

        crate::init_rules(sb, podwall, &[])?;
        let sidecar = crate::start_sidecar(sb, podwall, 1)?;
        eprintln!("[dns] podwall: the same through the sidecar's DNS proxy");
        let c0 = sidecar.cpu();
        let (qps, p50, p99, answered) = load(&ns, workers, duration)?;
        r.podwall_cpu_us_per_query = (sidecar.cpu() - c0) / answered.max(1) as f64 * 1e6;
        (r.podwall_qps, r.podwall_p50_ms, r.podwall_p99_ms) = (qps, p50, p99);

        eprintln!("[dns] memory: 10,000 names learned");
        r.rss_before_mb = sidecar.status_mb("VmRSS:").unwrap_or(0.0);
        many_names(&ns, 10_000)?;
        r.rss_growth_mb = sidecar.status_mb("VmRSS:").unwrap_or(0.0) - r.rss_before_mb;
        r.names_learned = metric(&ns, "podwall_fqdn_cache_names").unwrap_or(0.0) as u64;
        drop(sidecar);
        let _ = crate::init_rules(sb, podwall, &["--remove"]);
        Ok(r)
    })
}

/// The DNS table.
pub(crate) fn table(r: &DnsResult, workers: usize) -> String {
    let ratio = if r.direct_qps > 0.0 {
        format!("{:.2}x", r.podwall_qps / r.direct_qps)
    } else {
        "-".into()
    };
    format!(
        "\nDNS over UDP, {workers} clients asking one name (dnsmasq as the resolver):\n\
         {:<28} {:>12} {:>9} {:>9} {:>16} {:>10}\n\
         {:<28} {:>12.0} {:>9.3} {:>9.3} {:>16} {:>10}\n\
         {:<28} {:>12.0} {:>9.3} {:>9.3} {:>16.2} {:>10}\n\
         added latency p50 / p99: {:.3} / {:.3} ms\n\
         name cache: {} names learned for a toFQDNs pattern; sidecar RSS {:.1} MB -> +{:.2} MB ({:.0} bytes per name)\n",
        "",
        "queries/s",
        "p50 ms",
        "p99 ms",
        "proxy us/query",
        "/direct",
        "direct",
        r.direct_qps,
        r.direct_p50_ms,
        r.direct_p99_ms,
        "-",
        "1.00x",
        "podwall DNS proxy",
        r.podwall_qps,
        r.podwall_p50_ms,
        r.podwall_p99_ms,
        r.podwall_cpu_us_per_query,
        ratio,
        r.podwall_p50_ms - r.direct_p50_ms,
        r.podwall_p99_ms - r.direct_p99_ms,
        r.names_learned,
        r.rss_before_mb,
        r.rss_growth_mb,
        r.rss_growth_mb * 1024.0 * 1024.0 / r.names_learned.max(1) as f64,
    )
}
