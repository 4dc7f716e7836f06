//! Network namespaces: creating them and their links with iproute2, and running code inside
//! one from this process (a thread that enters it with `setns`).

use std::fs::File;
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use crate::SandboxError;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Runs `ip ARGS`, failing with its message.
pub(crate) fn ip(args: &[&str]) -> Result<(), SandboxError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SandboxError::Tool {
            command: format!("ip {}", args.join(" ")),
            source,
        })?;
    if !out.status.success() {
        return Err(SandboxError::Failed {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Runs a shell command inside a namespace (sysctls).
pub(crate) fn exec(ns: &str, script: &str) -> Result<(), SandboxError> {
    ip(&["netns", "exec", ns, "sh", "-c", script])
}

/// Every namespace whose name starts with `prefix`.
pub(crate) fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The processes running in a namespace.
pub(crate) fn pids(ns: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs `f` on a thread inside the namespace and returns its result.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).map_err(|source| SandboxError::Tool {
        command: format!("open {path}"),
        source,
    })?;
    let ns_name = ns.to_string();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| SandboxError::Failed {
            command: format!("setns {ns_name}"),
            stderr: e.to_string(),
        })?;
        Ok(f())
    })
    .join()
    .map_err(|_| SandboxError::Failed {
        command: format!("thread in {ns}"),
        stderr: "panicked".into(),
    })?
}
