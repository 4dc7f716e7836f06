//! The sandbox as the end-to-end tests use it: a cluster of network namespaces that is removed
//! when the test ends, however it ends, and the small things every such test does in it.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use podwall_sandbox::{Inject, Options, Sandbox, run_in};

/// The binary under test.
pub(crate) const PODWALL: &str = env!("CARGO_BIN_EXE_podwall");

/// Whether a sandbox test may run (root, iproute2, iptables, setpriv).
pub(crate) fn ready_for(test: &str) -> bool {
    super::ready(
        test,
        &["ip", "iptables", "setpriv"],
        "iproute2, iptables and setpriv",
    )
}

/// The binary the sandbox runs init and sidecars with: `PODWALL_E2E_EXE` when set (to show that
/// a test fails against another build, e.g. an older one), else the one under test.
pub(crate) fn exe() -> PathBuf {
    std::env::var_os("PODWALL_E2E_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PODWALL))
}

/// Whether the suite runs on the kernel path (`PODWALL_L4_PATH=kernel`, which every `proxy
/// init` it runs reads): the kernel carries allowed TCP connections the proxy need not see.
pub(crate) fn kernel_path() -> bool {
    std::env::var("PODWALL_L4_PATH").is_ok_and(|p| p == "kernel")
}

pub(crate) fn options(name: &str, inject: Inject) -> Options {
    Options {
        name: name.to_string(),
        inject,
        exe: exe(),
        sidecar_args: Vec::new(),
        init_args: Vec::new(),
    }
}

/// A sandbox that is removed when the test ends, however it ends.
pub(crate) struct Up(Option<Sandbox>);

impl Up {
    pub(crate) fn new(dir: &Path, name: &str, inject: Inject) -> Self {
        Self::with(dir, options(name, inject))
    }
    pub(crate) fn with(dir: &Path, options: Options) -> Self {
        let sb =
            Sandbox::up(dir, &options).unwrap_or_else(|e| panic!("sandbox {}: {e}", options.name));
        Up(Some(sb))
    }
    pub(crate) fn sb(&self) -> &Sandbox {
        self.0.as_ref().expect("sandbox")
    }
    pub(crate) fn ns(&self, key: &str) -> String {
        self.sb()
            .pod(key)
            .unwrap_or_else(|| panic!("no pod {key}"))
            .netns
            .clone()
    }
    pub(crate) fn ip(&self, key: &str) -> IpAddr {
        self.sb()
            .pod(key)
            .unwrap_or_else(|| panic!("no pod {key}"))
            .ip
    }
    /// The pod's position in the sandbox (its logs are named after it).
    pub(crate) fn index(&self, key: &str) -> usize {
        self.sb()
            .record
            .pods
            .iter()
            .position(|p| p.key == key)
            .unwrap_or_else(|| panic!("no pod {key}"))
    }
    /// The pod's flow events, one per connection as on the proxy path: a kernel-carried
    /// connection's start event (`"phase": "start"`) is left out, its end event stays.
    pub(crate) fn flows(&self, key: &str) -> Vec<serde_json::Value> {
        self.flows_with_starts(key)
            .into_iter()
            .filter(|e| e["phase"] != "start")
            .collect()
    }

    /// Every flow event of the pod, kernel-carried connections' start events too.
    pub(crate) fn flows_with_starts(&self, key: &str) -> Vec<serde_json::Value> {
        flow_events(
            &self
                .sb()
                .logs_dir()
                .join(format!("{}-sidecar.flows.jsonl", self.index(key))),
        )
    }
}

/// The first event in the flow log at `path` that matches `f`, waiting for it (5 s at most,
/// then a panic naming `what` and showing the log).
pub(crate) fn event_in(
    path: &Path,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(e) = flow_events(path).into_iter().find(|e| f(e)) {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no flow event {what} in {}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every event in a sidecar's flow log (JSON lines), none while it has not been written.
pub(crate) fn flow_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(sb) = self.0.take() {
            let _ = sb.down();
        }
    }
}

/// A directory holding `yaml` as the sandbox's cluster.
pub(crate) fn topology(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cluster.yaml"), yaml).expect("write");
    dir
}

/// Connects from inside `ns` and returns the stream with the greeting line read.
pub(crate) fn connect(ns: &str, dst: SocketAddr) -> Result<(BufReader<TcpStream>, String), String> {
    run_in(ns, move || {
        let s =
            TcpStream::connect_timeout(&dst, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("closed without a greeting".into());
        }
        Ok((r, line))
    })
    .map_err(|e| e.to_string())?
}

/// Waits until `f` holds, or panics naming `what`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Two network namespaces joined by a veth pair (`eth0` on both sides) with an IPv6 address
/// each (`fd../64`, no duplicate address detection), removed when dropped.
pub(crate) struct V6Pair(pub(crate) [&'static str; 2]);

impl V6Pair {
    pub(crate) fn new(names: [&'static str; 2], addrs: [&str; 2]) -> Self {
        let ip = |args: &[&str]| {
            let ok = std::process::Command::new("ip").args(args).status();
            assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
        };
        for ns in names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
            ip(&["netns", "add", ns]);
        }
        let [a, b] = names;
        ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
        ]);
        for (ns, addr) in names.iter().zip(addrs) {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0", "nodad"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        V6Pair(names)
    }
}

impl Drop for V6Pair {
    fn drop(&mut self) {
        for ns in self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// The pids of processes in `ns` whose command line has all of `words`.
pub(crate) fn pids_in(ns: &str, words: &[&str]) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            words.iter().all(|w| args.iter().any(|a| a == w))
        })
        .collect()
}

/// The pid of the one sidecar running in `ns`.
pub(crate) fn sidecar_pid(ns: &str) -> i32 {
    let pids = pids_in(ns, &["proxy", "run"]);
    assert_eq!(pids.len(), 1, "one sidecar in {ns}: {pids:?}");
    pids[0]
}

/// Waits until the sidecar in `ns` answers its readiness probe with 200 (it has a policy).
pub(crate) fn wait_ready(ns: &str) {
    wait_for("the sidecar to be ready", Duration::from_secs(10), || {
        run_in(ns, || {
            use std::io::{Read, Write};
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", 15020)) else {
                return false;
            };
            let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.contains(" 200 ")
        })
        .unwrap_or(false)
    });
}

/// Kills the sidecar in `ns` and starts it again with the same command line, as the kubelet
/// does with a sidecar that crashed or ran out of memory (the app runs on meanwhile): its flow
/// events and log are appended to `flows` and `log`. Returns it once it is ready.
pub(crate) fn restart_sidecar(
    ns: &str,
    flows: &std::path::Path,
    log: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let pid = sidecar_pid(ns);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the sidecar's command");
    let args: Vec<std::ffi::OsString> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
        .collect();
    kill_sidecar(ns);
    let append = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("open for appending")
    };
    let sidecar = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(append(flows))
        .stderr(append(log))
        .process_group(0)
        .spawn()
        .expect("start the sidecar again");
    wait_ready(ns);
    sidecar
}

/// Kills the sidecar in `ns` (a crash, an OOM kill) and waits until it is gone, or a zombie
/// its parent (the sandbox) has not waited for yet.
pub(crate) fn kill_sidecar(ns: &str) {
    let pid = sidecar_pid(ns);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_for("the sidecar to die", Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    });
}
