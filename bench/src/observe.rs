//! The observer phase: what `podwall observe --follow` costs the sidecar. The sidecar writes
//! each flow event to stdout and never waits for a reader; an observer reads what stdout was
//! written to (here a file, as in the sandbox; on a cluster the kubelet's log, streamed by the
//! API server), so it should cost the sidecar nothing. Measured, not assumed: new connections
//! through the sidecar (one flow event each) with stdout discarded, written to a file, and
//! written to a file that `podwall observe --follow` reads and prints, and the observer's own
//! CPU per flow and memory.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{CLIENT, HTTP_PORT, Proxy, SERVER};

/// One run's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ObservePath {
    /// What the sidecar's stdout went to, and who read it.
    pub(crate) name: String,
    /// New connections per second (wrk, `Connection: close`).
    pub(crate) new_conn_rps: f64,
    /// The sidecar's CPU per connection, µs.
    pub(crate) proxy_cpu_us_per_conn: f64,
    /// Flow events the sidecar wrote (none counted when discarded).
    pub(crate) flows_written: Option<u64>,
    /// Lines the observer printed.
    pub(crate) observer_lines: Option<u64>,
    /// The observer's CPU per printed flow, µs.
    pub(crate) observer_cpu_us_per_flow: Option<f64>,
    /// The observer's peak resident memory, MB.
    pub(crate) observer_rss_peak_mb: Option<f64>,
}

/// Every run, in the order measured.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ObserveResult {
    pub(crate) paths: Vec<ObservePath>,
    /// `observe --sandbox --follow` over many sidecars.
    pub(crate) many: Option<ManySidecars>,
}

/// `podwall observe --sandbox NAME --follow --verdict DENIED --to m/p0` over a sandbox of
/// [`MANY`] pods, each with its sidecar: from the start of a denied connection to its line.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ManySidecars {
    /// Sidecars in the sandbox (all followed).
    pub(crate) sidecars: usize,
    /// Denied connections made (one from each of that many pods).
    pub(crate) attempts: usize,
    /// Their lines printed.
    pub(crate) printed: usize,
    /// From the connection's start to its line, ms: min, median, max.
    pub(crate) latency_ms: [f64; 3],
    /// The observer's peak resident memory, MB.
    pub(crate) observer_rss_peak_mb: Option<f64>,
}

/// Pods (and sidecars) in the many-sidecars run.
const MANY: usize = 50;
/// Denied connections timed in it.
const ATTEMPTS: usize = 10;

/// Where the sidecar's flow events go in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    Discarded,
    File,
    FileObserved,
}

pub(crate) fn run(
    podwall: &Path,
    duration: Duration,
    workers: usize,
) -> Result<ObserveResult, String> {
    // Addresses of its own, apart from the other phases' sandboxes.
    let topology = crate::TOPOLOGY
        .replace("10.66.", "10.69.")
        .replace("192.168.66.", "192.168.69.");
    let paths = crate::in_sandbox(podwall, "bench-observe", &topology, |sb, work| {
        let _servers = crate::start_servers(sb, work)?;
        crate::init_rules(sb, podwall, &["--capture-dns", "false"])?;
        let client = sb.pod(CLIENT).ok_or("no client")?.netns.clone();
        let server_ip = sb.pod(SERVER).ok_or("no server")?.ip;
        let url = format!("http://{server_ip}:{HTTP_PORT}/");
        let mut paths = Vec::new();
        // The file run twice, before and after the observed one: their difference is the
        // noise the observed run's difference must be read against.
        let runs = [
            ("stdout discarded", Sink::Discarded),
            ("stdout to a file", Sink::File),
            ("file + observe --follow", Sink::FileObserved),
            ("stdout to a file (again)", Sink::File),
        ];
        for (i, (name, sink)) in runs.into_iter().enumerate() {
            let flows = work.join(format!("flows-{i}.jsonl"));
            let stdout = match sink {
                Sink::Discarded => Stdio::null(),
                _ => Stdio::from(
                    std::fs::File::create(&flows)
                        .map_err(|e| format!("{}: {e}", flows.display()))?,
                ),
            };
            let sidecar = crate::start_sidecar_logging(sb, podwall, 1, stdout)?;
            let printed = work.join(format!("observed-{i}.txt"));
            let observer = if sink == Sink::FileObserved {
                let out = std::fs::File::create(&printed)
                    .map_err(|e| format!("{}: {e}", printed.display()))?;
                let child = std::process::Command::new(podwall)
                    .arg("observe")
                    .arg("-f")
                    .arg(&flows)
                    .arg("--state")
                    .arg(work.join("cluster.yaml"))
                    .args(["--follow", "-o", "compact"])
                    .stdout(out)
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("podwall observe: {e}"))?;
                Some(Proxy { child })
            } else {
                None
            };
            eprintln!("[observe] {name}: a new connection per request (wrk, Connection: close)");
            let c0 = sidecar.cpu();
            let o0 = observer.as_ref().map(Proxy::cpu);
            let (rps, _, _, total) =
                crate::wrk(&client, &url, duration.as_secs(), workers as u32, true)?;
            let proxy_cpu_us_per_conn = (sidecar.cpu() - c0) / total * 1e6;
            let count = |path: &Path| {
                std::fs::read_to_string(path)
                    .map(|t| t.lines().count() as u64)
                    .unwrap_or(0)
            };
            let written = (sink != Sink::Discarded).then(|| count(&flows));
            let mut path = ObservePath {
                name: name.into(),
                new_conn_rps: rps,
                proxy_cpu_us_per_conn,
                flows_written: written,
                ..ObservePath::default()
            };
            if let (Some(o), Some(o0)) = (&observer, o0) {
                // Until the observer has printed what was written (it polls the file), or a
                // few seconds.
                let start = Instant::now();
                while count(&printed) < written.unwrap_or(0)
                    && start.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let lines = count(&printed);
                path.observer_lines = Some(lines);
                if lines > 0 {
                    path.observer_cpu_us_per_flow = Some((o.cpu() - o0) / lines as f64 * 1e6);
                }
                path.observer_rss_peak_mb = o.status_mb("VmHWM:");
            }
            drop(observer);
            drop(sidecar);
            paths.push(path);
        }
        crate::init_rules(sb, podwall, &["--remove"])?;
        Ok(paths)
    })?;
    Ok(ObserveResult {
        paths,
        many: Some(many(podwall)?),
    })
}

/// A sandbox of [`MANY`] injected pods, p0 isolated for ingress (nothing may reach it); the
/// observer follows every sidecar, filtered to denials towards p0, and each of [`ATTEMPTS`]
/// pods tries p0 once.
fn many(podwall: &Path) -> Result<ManySidecars, String> {
    use std::io::BufRead as _;
    let mut topology = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: m}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p0-closed, namespace: m}\nspec:\n  podSelector: {matchLabels: {app: p0}}\n  policyTypes: [Ingress]\n",
    );
    for i in 0..MANY {
        topology.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: m, labels: {{app: p{i}}}}}\nspec: {{containers: [{{name: app, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{podIP: 10.70.0.{}, hostIP: 192.168.70.1}}\n",
            i + 1
        ));
    }
    let work = std::env::temp_dir().join(format!("podwall-obs50-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    std::fs::write(work.join("cluster.yaml"), topology).map_err(|e| e.to_string())?;
    eprintln!("[observe] a sandbox of {MANY} pods with sidecars");
    let sb = podwall_sandbox::Sandbox::up(
        &work,
        &podwall_sandbox::Options {
            name: "obs50".into(),
            inject: podwall_sandbox::Inject::All,
            exe: podwall.to_path_buf(),
            sidecar_args: Vec::new(),
            init_args: Vec::new(),
        },
    )
    .map_err(|e| e.to_string())?;
    let result = (|| -> Result<ManySidecars, String> {
        let target = sb.pod("m/p0").ok_or("no p0")?.ip;
        let mut child = std::process::Command::new(podwall)
            .args([
                "observe",
                "--sandbox",
                "obs50",
                "--follow",
                "--verdict",
                "DENIED",
                "--to",
                "m/p0",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("podwall observe: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let observer = Proxy { child };
        // Every sidecar has its policy and the observer has opened every log.
        std::thread::sleep(Duration::from_secs(3));
        let mut latencies = Vec::new();
        for i in 1..=ATTEMPTS {
            let pod = format!("m/p{i}");
            let ns = sb.pod(&pod).ok_or("no pod")?.netns.clone();
            let started = Instant::now();
            let _ = podwall_sandbox::run_in(&ns, move || {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::new(target, 8080),
                    Duration::from_secs(2),
                )
                .is_ok()
            });
            let deadline = started + Duration::from_secs(5);
            while let Ok((at, line)) =
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["source"]["pod"] == format!("p{i}").as_str() {
                    latencies.push(at.duration_since(started).as_secs_f64() * 1000.0);
                    break;
                }
            }
        }
        let printed = latencies.len();
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            latencies
                .get(((latencies.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Ok(ManySidecars {
            sidecars: MANY,
            attempts: ATTEMPTS,
            printed,
            latency_ms: [pick(0.0), pick(0.5), pick(1.0)],
            observer_rss_peak_mb: observer.status_mb("VmHWM:"),
        })
    })();
    let _ = sb.down();
    let _ = std::fs::remove_dir_all(&work);
    result
}

pub(crate) fn table(r: &ObserveResult, workers: usize) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "\nThe sidecar's cost per flow with and without an observer ({workers} wrk connections, a new connection per request, one flow event each):\n"
    );
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>13} {:>10} {:>11} {:>14} {:>14} {:>11}",
        "",
        "conn/s",
        "sidecar us/c",
        "/discard",
        "flows",
        "printed",
        "observer us/f",
        "observer MB"
    );
    let base = r.paths.first().map(|p| p.proxy_cpu_us_per_conn);
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    let int = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for p in &r.paths {
        let _ = writeln!(
            out,
            "{:<28} {:>10.0} {:>13.2} {:>10} {:>11} {:>14} {:>14} {:>11}",
            p.name,
            p.new_conn_rps,
            p.proxy_cpu_us_per_conn,
            base.filter(|b| *b > 0.0)
                .map(|b| format!("{:.2}x", p.proxy_cpu_us_per_conn / b))
                .unwrap_or_else(|| "-".into()),
            int(p.flows_written),
            int(p.observer_lines),
            opt(p.observer_cpu_us_per_flow),
            opt(p.observer_rss_peak_mb),
        );
    }
    if let Some(m) = &r.many {
        let _ = writeln!(
            out,
            "\nobserve --sandbox --follow over {} sidecars: {} of {} denials printed, {:.0}/{:.0}/{:.0} ms (min/median/max) from the connection's start to its line; observer peak {} MB",
            m.sidecars,
            m.printed,
            m.attempts,
            m.latency_ms[0],
            m.latency_ms[1],
            m.latency_ms[2],
            opt(m.observer_rss_peak_mb),
        );
    }
    out
}
