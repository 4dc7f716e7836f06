//! Whether this node's kernel can hold the rules the init container installs: `podwall check
//! --node`, run on a node (as root, e.g. from `kubectl debug node/NAME --profile=sysadmin`).
//!
//! Each feature is tried for real, by installing one rule that needs it in a network namespace
//! of its own (made for the probe and gone with it), so the node's own rules are never touched
//! and a missing module (xt_NFQUEUE, xt_TPROXY) fails exactly as the init container would.

use std::process::Command;

/// One probed feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// What was tried (`NFQUEUE (IPv4)`).
    pub name: String,
    /// Whether the kernel took the rule.
    pub ok: bool,
    /// iptables' complaint when it did not.
    pub detail: String,
    /// Whether podwall needs it (IPv6 features only matter where pods have IPv6).
    pub required: bool,
}

/// The rules the init container relies on beyond plain redirects, one per feature, and
/// whether it is probed for IPv6 too (where pods have IPv6 only: not required).
const PROBES: [(&str, &[&str], bool); 4] = [
    (
        "NAT REDIRECT",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            "15001",
        ],
        false,
    ),
    (
        "TPROXY",
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "TPROXY",
            "--on-port",
            "15006",
            "--tproxy-mark",
            "0x1/0x1",
        ],
        true,
    ),
    (
        "NFQUEUE",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "1337",
        ],
        true,
    ),
    (
        "connmark and socket marks",
        &[
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-m",
            "mark",
            "--mark",
            "0x1337",
            "-j",
            "CONNMARK",
            "--save-mark",
        ],
        false,
    ),
];

/// The probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No network namespace to probe in.
    #[error("cannot make a network namespace to probe in ({0}): run as root with CAP_SYS_ADMIN")]
    Namespace(#[source] nix::Error),
    /// The probing thread died.
    #[error("the probe thread panicked")]
    Panicked,
}

/// Tries every feature in a fresh network namespace; an error when no namespace can be made
/// (not root, or no CAP_SYS_ADMIN).
pub fn probe() -> Result<Vec<Feature>, ProbeError> {
    // Namespaces belong to threads: a thread of its own takes the new one and spawns iptables
    // from it; the process's other threads stay where they are.
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(ProbeError::Namespace)?;
        let v4 = PROBES
            .iter()
            .map(|(name, args, _)| (format!("{name} (IPv4)"), "iptables", *args, true));
        let v6 = PROBES
            .iter()
            .filter(|(_, _, v6)| *v6)
            .map(|(name, args, _)| (format!("{name} (IPv6)"), "ip6tables", *args, false));
        Ok(v4
            .chain(v6)
            .map(|(name, tool, args, required)| {
                let (ok, detail) = match Command::new(tool).args(args).output() {
                    Ok(out) if out.status.success() => (true, String::new()),
                    Ok(out) => (
                        false,
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ),
                    Err(e) => (false, format!("{tool}: {e}")),
                };
                Feature {
                    name,
                    ok,
                    detail,
                    required,
                }
            })
            .collect())
    })
    .join()
    .map_err(|_| ProbeError::Panicked)?
}
