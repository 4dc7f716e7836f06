//! `podwall-bench`: client pod -> server pod in network namespaces, measured directly, through
//! the podwall sidecar and through haproxy in the same slot (same iptables redirect, same uid),
//! in one run. Needs root, iperf3, wrk, nginx and haproxy.
//!
//! `cargo build --release && target/release/podwall-bench --json bench.json`

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
mod dns;
mod observe;
mod udp;

use podwall_sandbox::{Inject, Options, Sandbox, as_proxy_in, run_in, sidecar_in};
use serde::Serialize;

/// Measure the sidecar against the direct path and haproxy.
#[derive(Parser, Debug)]
#[command(name = "podwall-bench", version)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Concurrent HTTP connections (wrk).
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The podwall binary (default: next to this one).
    #[arg(long)]
    podwall: Option<PathBuf>,
    /// Sidecar worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Skip haproxy and nginx.
    #[arg(long)]
    no_haproxy: bool,
    /// Which measurements: `l4` (bulk, keep-alive, new connections, RSS), `l7` (keep-alive
    /// through HTTP rules), `dns` (queries through the DNS proxy, memory per learned name), `udp`
    /// (new UDP flows through the packet filter, long-lived flows beside it), `observe` (the
    /// sidecar's cost per flow with and without `podwall observe --follow` reading its log),
    /// or all.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// Runs of each L4 measurement per path, each next to the same run from a twin client pod
    /// without rules or sidecar (the twin first in every other round, so an even count
    /// balances the order); a path's ratios to direct are to those interleaved runs.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    All,
    L4,
    L7,
    Dns,
    Udp,
    Observe,
}

const CLIENT: &str = "bench/client";
/// The client's twin: no rules, no sidecar; the direct runs interleaved with each path's.
const TWIN: &str = "bench/twin";
const SERVER: &str = "bench/server";
const IPERF_PORT: u16 = 5201;
const HTTP_PORT: u16 = 8080;
const TOPOLOGY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
status: {podIP: 10.66.0.1, hostIP: 192.168.66.1}
---
apiVersion: v1
kind: Pod
metadata: {name: twin, namespace: bench, labels: {app: twin}}
status: {podIP: 10.66.0.3, hostIP: 192.168.66.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
status: {podIP: 10.66.0.2, hostIP: 192.168.66.1}
---
# Enforced on every connection: the client may reach the server's two ports, nothing else.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: bench}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: 5201}, {port: 8080}]
"#;

/// What was measured for one path.
#[derive(Clone, Debug, Default, Serialize)]
struct PathResult {
    name: String,
    bulk_gbit_s: f64,
    bulk_proxy_cpu_s_per_gb: Option<f64>,
    keepalive_rps: f64,
    keepalive_p50_ms: f64,
    keepalive_p99_ms: f64,
    keepalive_proxy_cpu_us_per_request: Option<f64>,
    /// The user-space part of that (the rest is the kernel: TCP, including the softirq work of
    /// delivering the proxy's writes, billed to the proxy).
    keepalive_proxy_user_us_per_request: Option<f64>,
    new_conn_rps: f64,
    new_conn_p50_ms: f64,
    new_conn_p99_ms: f64,
    new_conn_proxy_cpu_us_per_request: Option<f64>,
    rss_idle_mb: Option<f64>,
    rss_peak_mb: Option<f64>,
    rss_1000_connections_mb: Option<f64>,
    /// After the load, just before the 1000 connections are opened.
    rss_before_1000_mb: Option<f64>,
    /// Of the idle RSS, and of it holding 1000 connections, what is the process's own memory
    /// (`RssAnon`: not code and data mapped from files, which the page cache shares).
    rss_idle_anon_mb: Option<f64>,
    rss_1000_connections_anon_mb: Option<f64>,
    /// Idle again after one connection went through (and `IDLE_SETTLE`): what a sidecar in
    /// service holds between connections, the code its connection path runs included.
    rss_warm_idle_mb: Option<f64>,
    rss_warm_idle_anon_mb: Option<f64>,
    /// The twin pod's direct runs interleaved with this path's (means): the base of its ratios.
    paired_direct: Option<Paired>,
}

/// Direct figures measured between a path's runs (see [`Rounds`]).
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Paired {
    bulk_gbit_s: f64,
    keepalive_rps: f64,
    new_conn_rps: f64,
}

/// A proxy process to watch: its CPU time and memory.
struct Proxy {
    child: Child,
}

impl Proxy {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    /// utime + stime in seconds.
    fn cpu(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }
    /// utime and stime in seconds.
    fn cpu_split(&self) -> (f64, f64) {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces, so split after the last ')').
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        (ticks(11) / clock_ticks(), ticks(12) / clock_ticks())
    }
    fn status_mb(&self, key: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

fn netns_cmd(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

fn output(mut cmd: Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iperf3 bulk throughput in Gbit/s.
fn iperf(ns: &str, dst: &str, seconds: u64) -> Result<f64, String> {
    let out = output(netns_cmd(
        ns,
        &[
            "iperf3",
            "-c",
            dst,
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    ))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3 said: {out}"))
}

/// wrk: (requests per second, p50 ms, p99 ms, requests).
fn wrk(
    ns: &str,
    url: &str,
    seconds: u64,
    connections: u32,
    close: bool,
) -> Result<(f64, f64, f64, f64), String> {
    let c = connections.to_string();
    let d = format!("{seconds}s");
    let mut args = vec!["wrk", "-t1", "-c", &c, "-d", &d, "--latency"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = output(netns_cmd(ns, &args))?;
    let ms = |s: &str| -> f64 {
        let s = s.trim();
        if let Some(v) = s.strip_suffix("us") {
            v.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(v) = s.strip_suffix("ms") {
            v.parse().unwrap_or(0.0)
        } else if let Some(v) = s.strip_suffix('s') {
            v.parse::<f64>().unwrap_or(0.0) * 1000.0
        } else {
            0.0
        }
    };
    let mut rps = 0.0;
    let (mut p50, mut p99, mut total) = (0.0, 0.0, 0.0);
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = ms(v);
        } else if t.contains("requests in") {
            total = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        }
    }
    if rps == 0.0 {
        return Err(format!("wrk said: {out}"));
    }
    Ok((rps, p50, p99, total))
}

fn start_servers(sb: &Sandbox, dir: &Path) -> Result<Vec<Child>, String> {
    let ns = &sb.pod(SERVER).ok_or("no server pod")?.netns;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  server {{ listen {HTTP_PORT} reuseport backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            tmp = dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = netns_cmd(
        ns,
        &[
            "nginx",
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .map_err(|e| format!("nginx: {e}"))?;
    let iperf = netns_cmd(ns, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null())
        // It complains about the readiness probe's empty connection.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3: {e}"))?;
    let ip = sb.pod(SERVER).ok_or("no server pod")?.ip;
    let ns2 = ns.clone();
    let start = Instant::now();
    loop {
        let ok = run_in(&ns2, move || {
            [IPERF_PORT, HTTP_PORT].iter().all(|p| {
                TcpStream::connect_timeout(&SocketAddr::new(ip, *p), Duration::from_millis(200))
                    .is_ok()
            })
        })
        .unwrap_or(false);
        if ok {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("servers did not start".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(vec![nginx, iperf])
}

/// How long a proxy is left alone before its idle RSS is read: past podwall's start-up (it
/// gives back start-up-only code two seconds after a policy is applied) and the first seconds
/// of its periodic work, so that the figure is the steady one, not a flattering early one.
const IDLE_SETTLE: Duration = Duration::from_secs(10);

/// One HTTP request on a connection of its own from `ns` to `dst` through the path (haproxy
/// forwards it to the port its instance serves, which need not answer HTTP), answer read until
/// the server closes or 2 s pass.
fn one_request(ns: &str, dst: SocketAddr) {
    let done = run_in(ns, move || {
        let mut c = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut answer);
        Ok::<_, std::io::Error>(())
    });
    if let Err(e) | Ok(Err(e)) = done.map_err(|e| std::io::Error::other(e.to_string())) {
        eprintln!("warm-up connection to {dst} failed: {e}");
    }
}

/// Holds 1000 idle connections through the proxy and reads its RSS meanwhile.
fn rss_with_1000(ns: &str, dst: SocketAddr, proxy: &Proxy) -> Option<(f64, Option<f64>)> {
    let conns = run_in(ns, move || {
        if let Ok((_, hard)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            let _ = nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_NOFILE,
                hard,
                hard,
            );
        }
        (0..1000)
            .filter_map(|_| TcpStream::connect_timeout(&dst, Duration::from_secs(5)).ok())
            .collect::<Vec<_>>()
    })
    .ok()?;
    // Each connection carries one request, so every one has moved bytes both ways.
    for mut c in &conns {
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n");
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss = if conns.len() == 1000 {
        proxy
            .status_mb("VmRSS:")
            .map(|all| (all, proxy.status_mb("RssAnon:")))
    } else {
        None
    };
    drop(conns);
    rss
}

/// One metric of a path, run `--rounds` times, each run next to the same traffic from the twin
/// pod (no rules, no sidecar) when `twin` is given: on a shared machine the rate drifts by more
/// over the minutes between paths than the gaps it measures, so each path is compared with the
/// direct runs interleaved with its own. Latencies are the means of each run's percentiles.
struct Rounds<'a> {
    args: &'a Args,
    twin: Option<&'a str>,
    proxy: Option<&'a Proxy>,
}

/// What [`Rounds::run`] returns: the mean of the path's runs, of the twin's, and the proxy's
/// user and system CPU seconds over the path's runs only.
struct RoundsResult<T> {
    path: T,
    direct: Option<T>,
    user_s: f64,
    system_s: f64,
}

impl Rounds<'_> {
    fn run<T: Copy + Default + std::ops::Add<Output = T> + std::ops::Div<f64, Output = T>>(
        &self,
        client: &str,
        one: impl Fn(&str) -> Result<T, String>,
    ) -> Result<RoundsResult<T>, String> {
        let rounds = self.args.rounds.max(1);
        let (mut path, mut direct) = (T::default(), T::default());
        let (mut user_s, mut system_s) = (0.0, 0.0);
        for round in 0..rounds {
            // The twin first, then the path, then the other way round: what a run leaves
            // behind (TIME_WAIT sockets, conntrack entries) falls on both sides alike.
            let twin_first = round % 2 == 0;
            if let (Some(twin), true) = (self.twin, twin_first) {
                direct = direct + one(twin)?;
            }
            let c0 = self.proxy.map(Proxy::cpu_split);
            path = path + one(client)?;
            if let (Some(p), Some((u0, s0))) = (self.proxy, c0) {
                let (u1, s1) = p.cpu_split();
                user_s += u1 - u0;
                system_s += s1 - s0;
            }
            if let (Some(twin), false) = (self.twin, twin_first) {
                direct = direct + one(twin)?;
            }
        }
        let n = rounds as f64;
        Ok(RoundsResult {
            path: path / n,
            direct: self.twin.map(|_| direct / n),
            user_s,
            system_s,
        })
    }
}

/// wrk's figures, summable over rounds.
#[derive(Clone, Copy, Default)]
struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
    requests: f64,
}

impl std::ops::Add for Wrk {
    type Output = Wrk;
    fn add(self, o: Wrk) -> Wrk {
        Wrk {
            rps: self.rps + o.rps,
            p50: self.p50 + o.p50,
            p99: self.p99 + o.p99,
            requests: self.requests + o.requests,
        }
    }
}

impl std::ops::Div<f64> for Wrk {
    type Output = Wrk;
    /// The mean of rates and latencies; `requests` stays the total (CPU is summed too).
    fn div(self, n: f64) -> Wrk {
        Wrk {
            rps: self.rps / n,
            p50: self.p50 / n,
            p99: self.p99 / n,
            requests: self.requests,
        }
    }
}

fn wrk_run(ns: &str, url: &str, args: &Args, close: bool) -> Result<Wrk, String> {
    let (rps, p50, p99, requests) = wrk(ns, url, args.duration, args.connections, close)?;
    Ok(Wrk {
        rps,
        p50,
        p99,
        requests,
    })
}

/// Bulk, keep-alive and new connections from the client pod, through `proxy` (or the peer
/// `haproxy_for` starts) when given; `twin` interleaves the direct runs of each metric.
fn measure(
    name: &str,
    sb: &Sandbox,
    args: &Args,
    proxy: Option<&Proxy>,
    haproxy_for: Option<&dyn Fn(u16) -> Result<Proxy, String>>,
    twin: Option<&str>,
) -> Result<PathResult, String> {
    let client = sb.pod(CLIENT).ok_or("no client")?.netns.clone();
    let server_ip = sb.pod(SERVER).ok_or("no server")?.ip;
    let url = format!("http://{server_ip}:{HTTP_PORT}/");
    let mut r = PathResult {
        name: name.to_string(),
        ..PathResult::default()
    };
    let mut paired = Paired::default();
    eprintln!(
        "[{name}] bulk TCP (iperf3, {}s x {})",
        args.duration, args.rounds
    );
    // haproxy cannot read the original destination: one instance per server port.
    let mut held: Option<Proxy> = match haproxy_for {
        Some(f) => Some(f(IPERF_PORT)?),
        None => None,
    };
    let p = held.as_ref().or(proxy);
    if let Some(p) = p {
        // Idle means settled (see IDLE_SETTLE and proxy/src/resident.rs).
        std::thread::sleep(IDLE_SETTLE);
        r.rss_idle_mb = p.status_mb("VmRSS:");
        r.rss_idle_anon_mb = p.status_mb("RssAnon:");
        // The first connection faults in the code of the connection path (64 KiB at a time,
        // shared with every process mapping the binary); what holding 1,000 adds is over this.
        one_request(&client, SocketAddr::new(server_ip, HTTP_PORT));
        std::thread::sleep(IDLE_SETTLE);
        r.rss_warm_idle_mb = p.status_mb("VmRSS:");
        r.rss_warm_idle_anon_mb = p.status_mb("RssAnon:");
    }
    let rounds = Rounds {
        args,
        twin,
        proxy: p,
    };
    let dst = server_ip.to_string();
    let bulk = rounds.run(&client, |ns| iperf(ns, &dst, args.duration))?;
    r.bulk_gbit_s = bulk.path;
    paired.bulk_gbit_s = bulk.direct.unwrap_or_default();
    if p.is_some() {
        let gb = r.bulk_gbit_s / 8.0 * (args.duration * args.rounds.max(1) as u64) as f64;
        r.bulk_proxy_cpu_s_per_gb = Some((bulk.user_s + bulk.system_s) / gb);
    }
    if let Some(f) = haproxy_for {
        drop(held.take()); // frees 127.0.0.1:15001 for the next instance
        held = Some(f(HTTP_PORT)?);
    }
    let p = held.as_ref().or(proxy);
    let rounds = Rounds {
        args,
        twin,
        proxy: p,
    };
    eprintln!(
        "[{name}] keep-alive HTTP (wrk, {} connections)",
        args.connections
    );
    let ka = rounds.run(&client, |ns| wrk_run(ns, &url, args, false))?;
    (r.keepalive_rps, r.keepalive_p50_ms, r.keepalive_p99_ms) =
        (ka.path.rps, ka.path.p50, ka.path.p99);
    paired.keepalive_rps = ka.direct.map(|d| d.rps).unwrap_or_default();
    if p.is_some() && ka.path.requests > 0.0 {
        r.keepalive_proxy_cpu_us_per_request =
            Some((ka.user_s + ka.system_s) / ka.path.requests * 1e6);
        r.keepalive_proxy_user_us_per_request = Some(ka.user_s / ka.path.requests * 1e6);
    }
    eprintln!("[{name}] a new connection per request (wrk, Connection: close)");
    let nc = rounds.run(&client, |ns| wrk_run(ns, &url, args, true))?;
    (r.new_conn_rps, r.new_conn_p50_ms, r.new_conn_p99_ms) =
        (nc.path.rps, nc.path.p50, nc.path.p99);
    paired.new_conn_rps = nc.direct.map(|d| d.rps).unwrap_or_default();
    if twin.is_some() {
        r.paired_direct = Some(paired);
    }
    if let Some(p) = p {
        if nc.path.requests > 0.0 {
            r.new_conn_proxy_cpu_us_per_request =
                Some((nc.user_s + nc.system_s) / nc.path.requests * 1e6);
        }
        r.rss_peak_mb = p.status_mb("VmHWM:");
        // Just before: what holding them adds, apart from what the load left resident (code
        // it faulted in, the allocator's high-water mark).
        r.rss_before_1000_mb = p.status_mb("VmRSS:");
        eprintln!("[{name}] 1000 connections held");
        let held = rss_with_1000(&client, SocketAddr::new(server_ip, HTTP_PORT), p);
        r.rss_1000_connections_mb = held.map(|(all, _)| all);
        r.rss_1000_connections_anon_mb = held.and_then(|(_, anon)| anon);
    }
    Ok(r)
}

/// `podwall proxy init` in the client pod, with `extra` flags (on the TCP path
/// `PODWALL_L4_PATH` names, the proxy path when unset).
fn init_rules(sb: &Sandbox, podwall: &Path, extra: &[&str]) -> Result<(), String> {
    init_rules_on(sb, podwall, None, extra)
}

/// The same, on TCP path `path` (`proxy` or `kernel`) when given.
fn init_rules_on(
    sb: &Sandbox,
    podwall: &Path,
    path: Option<&str>,
    extra: &[&str],
) -> Result<(), String> {
    let ns = &sb.pod(CLIENT).ok_or("no client")?.netns;
    let mut cmd = netns_cmd(ns, &[&podwall.display().to_string(), "proxy", "init"]);
    if let Some(path) = path {
        cmd.env("PODWALL_L4_PATH", path);
    }
    cmd.args(extra);
    output(cmd).map(|_| ())
}

/// Lets the peers (haproxy, nginx, run as uid 1337 by `as_proxy_in`) stand in the sidecar's
/// slot: they cannot mark their sockets as podwall's sidecar does, so their uid is exempted and
/// the listener guard opened, in the client pod only and only for their runs (podwall's own
/// runs come first, on the rules `proxy init` writes). Never do this in a cluster: any root
/// process can take a uid.
fn exempt_peers(sb: &Sandbox) -> Result<(), String> {
    let ns = &sb.pod(CLIENT).ok_or("no client")?.netns;
    let uid = podwall_sandbox::PROXY_UID.to_string();
    for (table, chain, rule) in [
        (
            "nat",
            "PODWALL_OUTPUT",
            vec!["-m", "owner", "--uid-owner", &uid],
        ),
        (
            "filter",
            "PODWALL_FILTER_OUT",
            vec!["-m", "owner", "--uid-owner", &uid],
        ),
        ("filter", "PODWALL_GUARD", vec![]),
        (
            "mangle",
            "PODWALL_EGRESS",
            vec!["-m", "owner", "--uid-owner", &uid],
        ),
    ] {
        // A chain an older podwall (`--podwall`) does not write has nothing to exempt.
        if output(netns_cmd(ns, &["iptables", "-t", table, "-S", chain])).is_err() {
            continue;
        }
        let mut args = vec!["iptables", "-t", table, "-I", chain, "1"];
        args.extend(rule);
        args.extend(["-j", "RETURN"]);
        output(netns_cmd(ns, &args))?;
    }
    Ok(())
}

/// Builds a sandbox named `name` from `topology` (no sidecar injected), runs `body` in it with
/// its work directory, then takes both down whatever happened.
fn in_sandbox<T>(
    podwall: &Path,
    name: &str,
    topology: &str,
    body: impl FnOnce(&Sandbox, &Path) -> Result<T, String>,
) -> Result<T, String> {
    let work = std::env::temp_dir().join(format!("podwall-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    std::fs::write(work.join("cluster.yaml"), topology).map_err(|e| e.to_string())?;
    let sb = Sandbox::up(
        &work,
        &Options {
            name: name.into(),
            inject: Inject::None,
            exe: podwall.to_path_buf(),
            sidecar_args: Vec::new(),
            init_args: Vec::new(),
        },
    )
    .map_err(|e| e.to_string())?;
    let result = body(&sb, &work);
    let _ = sb.down();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Where the sidecar's log goes (the last run's), so that a failed phase can be explained.
fn sidecar_log() -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join("podwall-bench-sidecar.log");
    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn start_sidecar(sb: &Sandbox, podwall: &Path, threads: usize) -> Result<Proxy, String> {
    start_sidecar_logging(sb, podwall, threads, Stdio::null())
}

/// The client's sidecar with its flow events (stdout) sent to `flows`.
fn start_sidecar_logging(
    sb: &Sandbox,
    podwall: &Path,
    threads: usize,
    flows: Stdio,
) -> Result<Proxy, String> {
    start_sidecar_on(sb, podwall, threads, None, flows)
}

/// The client's sidecar on TCP path `path` when given (as `init_rules_on` put the rules).
fn start_sidecar_on(
    sb: &Sandbox,
    podwall: &Path,
    threads: usize,
    path: Option<&str>,
    flows: Stdio,
) -> Result<Proxy, String> {
    let ns = &sb.pod(CLIENT).ok_or("no client")?.netns;
    let mut cmd = sidecar_in(ns, &podwall.display().to_string());
    if let Some(path) = path {
        cmd.env("PODWALL_L4_PATH", path);
    }
    let child = cmd
        .args([
            "proxy",
            "run",
            "--pod-namespace",
            "bench",
            "--pod-name",
            "client",
            "--threads",
            &threads.to_string(),
        ])
        .arg(format!("--policy-source=dir:{}", sb.policy_dir().display()))
        .stdout(flows)
        .stderr(sidecar_log()?)
        .spawn()
        .map_err(|e| format!("sidecar: {e}"))?;
    let p = Proxy { child };
    wait_listening(ns, 15020)?;
    // Ready means a policy is loaded.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let ready = run_in(ns, || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", 15020)) else {
                return false;
            };
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
            out.contains(" 200 ")
        })
        .unwrap_or(false);
        if ready {
            return Ok(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the sidecar did not become ready".into())
}

/// Keep-alive HTTP only (the L7 comparison).
fn measure_keepalive(
    name: &str,
    sb: &Sandbox,
    args: &Args,
    proxy: Option<&Proxy>,
) -> Result<PathResult, String> {
    let client = sb.pod(CLIENT).ok_or("no client")?.netns.clone();
    let server_ip = sb.pod(SERVER).ok_or("no server")?.ip;
    eprintln!(
        "[{name}] keep-alive HTTP (wrk, {} connections)",
        args.connections
    );
    let c0 = proxy.map(Proxy::cpu_split);
    let (rps, p50, p99, total) = wrk(
        &client,
        &format!("http://{server_ip}:{HTTP_PORT}/"),
        args.duration,
        args.connections,
        false,
    )?;
    let mut r = PathResult {
        name: name.to_string(),
        keepalive_rps: rps,
        keepalive_p50_ms: p50,
        keepalive_p99_ms: p99,
        ..PathResult::default()
    };
    if let (Some(p), Some((u0, s0))) = (proxy, c0) {
        let (u1, s1) = p.cpu_split();
        r.keepalive_proxy_cpu_us_per_request = Some((u1 - u0 + s1 - s0) / total * 1e6);
        r.keepalive_proxy_user_us_per_request = Some((u1 - u0) / total * 1e6);
        r.rss_peak_mb = p.status_mb("VmHWM:");
    }
    Ok(r)
}

/// HTTP rules on the client's egress to the server's HTTP port: every request is checked.
const L7_POLICY: &str = r#"
apiVersion: podwall.io/v1alpha1
kind: PodwallPolicy
metadata: {name: client-egress-l7, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts:
    - ports: [{port: "5201", protocol: TCP}]
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/.*"}
        - {method: POST, path: /api/v1/orders}
"#;

fn wait_listening(ns: &str, port: u16) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if run_in(ns, move || TcpStream::connect(("127.0.0.1", port)).is_ok()).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on {port} in {ns}"))
}

fn run(args: &Args) -> Result<Vec<PathResult>, String> {
    let podwall = podwall_binary(args)?;
    in_sandbox(&podwall, "bench", TOPOLOGY, |sb, work| {
        let _servers = start_servers(sb, work)?;
        let client_ns = sb.pod(CLIENT).ok_or("no client")?.netns.clone();
        let server_ip = sb.pod(SERVER).ok_or("no server")?.ip;
        let l4 = args.only != Only::L7;
        let l7 = args.only != Only::L4;
        let twin = sb.pod(TWIN).ok_or("no twin")?.netns.clone();
        // A new connection per request opens tens of thousands a second from one address to
        // one server port: whichever end closes first holds each 4-tuple in TIME_WAIT for 60 s,
        // and without reuse the 28,000 ephemeral ports run out within a run, so a path would
        // measure its closing order rather than its cost (haproxy's server side measured 4,560
        // requests per second so, 25,000 with reuse). Reuse is the usual setting for clients
        // and proxies that connect at such rates; every client pod gets it.
        for ns in [&client_ns, &twin] {
            output(netns_cmd(ns, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]))?;
        }
        let mut results = vec![if l4 {
            measure("direct", sb, args, None, None, None)?
        } else {
            measure_keepalive("direct", sb, args, None)?
        }];

        // The sidecar on each TCP path in turn, on the rules `proxy init` writes for it.
        if l4 {
            for (name, path) in [("podwall", "proxy"), ("podwall-kernel", "kernel")] {
                init_rules_on(sb, &podwall, Some(path), &["--capture-dns", "false"])?;
                let sidecar =
                    start_sidecar_on(sb, &podwall, args.threads, Some(path), Stdio::null())?;
                results.push(measure(name, sb, args, Some(&sidecar), None, Some(&twin))?);
                drop(sidecar);
            }
        }
        // The proxy path's rules for the rest: the HTTP rules, and the peers in its slot.
        init_rules_on(sb, &podwall, Some("proxy"), &["--capture-dns", "false"])?;

        // The same sidecar enforcing HTTP rules on every request.
        if l7 {
            let policies = sb.policy_dir().join("policies.json");
            let l4 = std::fs::read_to_string(&policies).map_err(|e| e.to_string())?;
            std::fs::remove_file(&policies).map_err(|e| e.to_string())?;
            std::fs::write(sb.policy_dir().join("l7.yaml"), L7_POLICY)
                .map_err(|e| e.to_string())?;
            let sidecar = start_sidecar(sb, &podwall, args.threads)?;
            results.push(measure_keepalive("podwall-l7", sb, args, Some(&sidecar))?);
            drop(sidecar);
            std::fs::remove_file(sb.policy_dir().join("l7.yaml")).map_err(|e| e.to_string())?;
            std::fs::write(&policies, l4).map_err(|e| e.to_string())?;
        }

        if !args.no_haproxy {
            exempt_peers(sb)?;
        }
        // nginx as an HTTP reverse proxy in the same slot.
        if l7 && !args.no_haproxy {
            let ngx = work.join("nginx-l7");
            std::fs::create_dir_all(&ngx).map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&ngx, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| e.to_string())?;
            let conf = ngx.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  upstream u {{ server {server_ip}:{HTTP_PORT}; keepalive 64; }}\n  server {{ listen 127.0.0.1:15001 reuseport backlog=4096; keepalive_requests 10000000;\n    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
                    d = ngx.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            let child = as_proxy_in(&client_ns, "nginx")
                .args([
                    "-c",
                    &conf.display().to_string(),
                    "-p",
                    &ngx.display().to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("nginx: {e}"))?;
            let nginx = Proxy { child };
            wait_listening(&client_ns, 15001)?;
            results.push(measure_keepalive("nginx-l7", sb, args, Some(&nginx))?);
            drop(nginx);
        }

        if l4 && !args.no_haproxy {
            // Same slot: the same redirect to 15001, haproxy as uid 1337, forwarding to the
            // server port under test (it cannot read the original destination).
            let ns = client_ns.clone();
            let start_haproxy = move |port: u16| -> Result<Proxy, String> {
                let cfg = work.join(format!("haproxy-{port}.cfg"));
                std::fs::write(
                    &cfg,
                    format!(
                        "global\n  maxconn 8000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend f\n  bind 127.0.0.1:15001\n  default_backend b\nbackend b\n  server s {server_ip}:{port}\n"
                    ),
                )
                .map_err(|e| e.to_string())?;
                let child = as_proxy_in(&ns, "haproxy")
                    .args(["-db", "-f", &cfg.display().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("haproxy: {e}"))?;
                let p = Proxy { child };
                wait_listening(&ns, 15001).map_err(|e| {
                    format!(
                        "haproxy did not start ({e}); run `haproxy -c -f {}`",
                        cfg.display()
                    )
                })?;
                Ok(p)
            };
            results.push(measure(
                "haproxy",
                sb,
                args,
                None,
                Some(&start_haproxy),
                Some(&twin),
            )?);
        }
        init_rules(sb, &podwall, &["--remove"])?;
        Ok(results)
    })
}

fn table(results: &[PathResult], rounds: usize) -> String {
    let direct = &results[0];
    let haproxy = results.iter().find(|r| r.name == "haproxy");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>12} {:>12} {:>12}   {:>8} {:>8} {:>8}",
        "", "direct", "podwall", "podwall", "haproxy", "proxy/", "kernel/", "kernel/"
    );
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>12} {:>12} {:>12}   {:>8} {:>8} {:>8}",
        "", "", "proxy path", "kernel path", "", "direct", "direct", "haproxy"
    );
    let get = |name: &str| results.iter().find(|r| r.name == name);
    type F = fn(&PathResult) -> Option<f64>;
    type B = Option<fn(&Paired) -> f64>;
    let rows: [(&str, F, B); 18] = [
        (
            "bulk TCP (Gbit/s)",
            |r| Some(r.bulk_gbit_s),
            Some(|p| p.bulk_gbit_s),
        ),
        ("  proxy CPU-s per GB", |r| r.bulk_proxy_cpu_s_per_gb, None),
        (
            "keep-alive HTTP (req/s)",
            |r| Some(r.keepalive_rps),
            Some(|p| p.keepalive_rps),
        ),
        ("  p50 (ms)", |r| Some(r.keepalive_p50_ms), None),
        ("  p99 (ms)", |r| Some(r.keepalive_p99_ms), None),
        (
            "  proxy CPU per request (us)",
            |r| r.keepalive_proxy_cpu_us_per_request,
            None,
        ),
        (
            "new connection per request (req/s)",
            |r| Some(r.new_conn_rps),
            Some(|p| p.new_conn_rps),
        ),
        ("  p50 (ms)", |r| Some(r.new_conn_p50_ms), None),
        ("  p99 (ms)", |r| Some(r.new_conn_p99_ms), None),
        (
            "  proxy CPU per request (us)",
            |r| r.new_conn_proxy_cpu_us_per_request,
            None,
        ),
        ("proxy RSS idle (MB)", |r| r.rss_idle_mb, None),
        (
            "proxy RSS idle after one conn (MB)",
            |r| r.rss_warm_idle_mb,
            None,
        ),
        ("proxy RSS peak under load (MB)", |r| r.rss_peak_mb, None),
        ("proxy RSS after load (MB)", |r| r.rss_before_1000_mb, None),
        (
            "proxy RSS holding 1000 conns (MB)",
            |r| r.rss_1000_connections_mb,
            None,
        ),
        ("  RssAnon idle (MB)", |r| r.rss_idle_anon_mb, None),
        (
            "  RssAnon idle after one conn (MB)",
            |r| r.rss_warm_idle_anon_mb,
            None,
        ),
        (
            "  RssAnon holding 1000 conns (MB)",
            |r| r.rss_1000_connections_anon_mb,
            None,
        ),
    ];
    for (label, f, paired) in rows {
        let cell = |r: Option<&PathResult>| {
            r.and_then(f)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        let pw = get("podwall").and_then(f);
        let kernel = get("podwall-kernel").and_then(f);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        // A path's own interleaved direct runs where it has them, else the standalone run.
        let base = |path: Option<&PathResult>| match (paired, path.and_then(|r| r.paired_direct)) {
            (Some(g), Some(p)) => Some(g(&p)),
            _ => f(direct),
        };
        let _ = writeln!(
            out,
            "{label:<34} {:>12} {:>12} {:>12} {:>12}   {:>8} {:>8} {:>8}",
            cell(Some(direct)),
            cell(get("podwall")),
            cell(get("podwall-kernel")),
            cell(haproxy),
            ratio(pw, base(get("podwall"))),
            ratio(kernel, base(get("podwall-kernel"))),
            // Both over their own interleaved direct runs where they have them: the two paths
            // ran minutes apart.
            match (base(get("podwall-kernel")), base(haproxy)) {
                (Some(kd), Some(hd)) if paired.is_some() && kd != 0.0 && hd != 0.0 =>
                    ratio(kernel.map(|k| k / kd), haproxy.and_then(f).map(|h| h / hd)),
                _ => ratio(kernel, haproxy.and_then(f)),
            },
        );
    }
    let _ = writeln!(
        out,
        "(means of {} runs. Rates: each path's ratio to direct is to the direct runs interleaved \
         with its own, from a twin pod, and kernel/haproxy compares the two so normalised; the \
         direct column was measured first, before any rules)",
        rounds.max(1)
    );
    out
}

fn l7_table(results: &[PathResult]) -> String {
    let get = |n: &str| results.iter().find(|r| r.name == n);
    let mut out = String::from("\nHTTP keep-alive through HTTP rules (every request checked):\n");
    let _ = writeln!(
        out,
        "{:<28} {:>12} {:>9} {:>9} {:>14} {:>12} {:>10} {:>10}",
        "", "req/s", "p50 ms", "p99 ms", "proxy us/req", "of it user", "/direct", "/nginx-l7"
    );
    let direct = get("direct").map(|r| r.keepalive_rps);
    let nginx = get("nginx-l7").map(|r| r.keepalive_rps);
    for (label, name) in [
        ("direct", "direct"),
        ("podwall, L4 only", "podwall"),
        ("podwall, HTTP rules", "podwall-l7"),
        ("nginx reverse proxy", "nginx-l7"),
    ] {
        let Some(r) = get(name) else { continue };
        let ratio = |b: Option<f64>| {
            b.filter(|b| *b > 0.0)
                .map(|b| format!("{:.2}x", r.keepalive_rps / b))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "{label:<28} {:>12.0} {:>9.2} {:>9.2} {:>14} {:>12} {:>10} {:>10}",
            r.keepalive_rps,
            r.keepalive_p50_ms,
            r.keepalive_p99_ms,
            r.keepalive_proxy_cpu_us_per_request
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.keepalive_proxy_user_us_per_request
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into()),
            ratio(direct),
            ratio(nginx),
        );
    }
    out
}

fn podwall_binary(args: &Args) -> Result<PathBuf, String> {
    let podwall = match &args.podwall {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("podwall"),
    };
    if !podwall.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release) or pass --podwall",
            podwall.display()
        ));
    }
    Ok(podwall)
}

/// Everything measured, as written with `--json`.
#[derive(Serialize)]
struct Report {
    paths: Vec<PathResult>,
    dns: Option<dns::DnsResult>,
    udp: Option<udp::UdpResult>,
    observe: Option<observe::ObserveResult>,
}

/// A phase with a sandbox of its own (`dns`, `udp`): runs it with `--connections` clients
/// (at most 64) and prints its table.
fn own_phase<R>(
    args: &Args,
    name: &str,
    run: fn(&Path, Duration, usize) -> Result<R, String>,
    table: fn(&R, usize) -> String,
) -> Result<R, String> {
    let workers = args.connections.clamp(1, 64) as usize;
    let result = podwall_binary(args)
        .and_then(|podwall| run(&podwall, Duration::from_secs(args.duration), workers))
        .map_err(|e| format!("{name}: {e}"))?;
    print!("{}", table(&result, workers));
    Ok(result)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut report = Report {
        paths: Vec::new(),
        dns: None,
        udp: None,
        observe: None,
    };
    if matches!(args.only, Only::All | Only::L4 | Only::L7) {
        match run(&args) {
            Ok(results) => {
                let l4: Vec<PathResult> = results
                    .iter()
                    .filter(|r| !r.name.ends_with("-l7"))
                    .cloned()
                    .collect();
                if args.only != Only::L7 {
                    print!("{}", table(&l4, args.rounds));
                }
                if args.only != Only::L4 {
                    print!("{}", l7_table(&results));
                }
                report.paths = results;
            }
            Err(e) => {
                eprintln!("podwall-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let phases = (|| -> Result<(), String> {
        if matches!(args.only, Only::All | Only::Dns) {
            report.dns = Some(own_phase(&args, "dns", dns::run, dns::table)?);
        }
        if matches!(args.only, Only::All | Only::Udp) {
            report.udp = Some(own_phase(&args, "udp", udp::run, udp::table)?);
        }
        if matches!(args.only, Only::All | Only::Observe) {
            report.observe = Some(own_phase(&args, "observe", observe::run, observe::table)?);
        }
        Ok(())
    })();
    if let Err(e) = phases {
        eprintln!("podwall-bench: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        )
    {
        eprintln!("podwall-bench: {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
