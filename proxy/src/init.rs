//! `podwall proxy init`: the iptables rules that hand the pod's traffic to the sidecar.
//!
//! In the `nat` table of the pod's network namespace:
//!
//! - `PODWALL_INBOUND` (jumped to from `PREROUTING` for TCP): every TCP connection into the pod
//!   goes to the inbound listener, except the admin port (kubelet probes it) and excluded ports.
//! - `PODWALL_OUTPUT` (jumped to from `OUTPUT`): connections the proxy itself opens (its uid, and
//!   gid when set) and everything on loopback are left alone, so nothing loops and a pod still
//!   talks to itself directly; then excluded CIDRs and ports; then DNS over TCP (53) to the DNS
//!   port; then every other TCP connection to the outbound listener.
//!
//! DNS over UDP needs its original destination (the resolver the pod asked), which a `REDIRECT`ed
//! datagram loses. So, by default (`DnsCapture::Tproxy`), in the `mangle` table:
//!
//! - `PODWALL_DNS_OUTPUT` (from `OUTPUT`): UDP to port 53, not from the proxy, not on loopback,
//!   not to excluded CIDRs, gets the mark `0x539`;
//! - a routing rule sends marked packets to table 133, where everything is local, so they come
//!   back in through `lo`;
//! - `PODWALL_DNS_PREROUTING` (from `PREROUTING`) hands them to the DNS port with `TPROXY`,
//!   addresses untouched: the sidecar reads the original destination from the datagram and
//!   answers from it (which needs `NET_ADMIN` in the sidecar for `IP_TRANSPARENT`).
//!
//! `DnsCapture::Redirect` redirects UDP 53 in `nat` like TCP instead (no capability needed; the
//! sidecar then assumes the pod asked its configured resolver).
//!
//! UDP and SCTP other than DNS, and ping, cannot be proxied like TCP, so the sidecar judges
//! their flows as packets instead, in the `filter` table:
//!
//! - `PODWALL_FILTER_OUT` (from `OUTPUT`) and `PODWALL_FILTER_IN` (from `INPUT`), jumped to only
//!   for UDP, SCTP and ICMP (TCP never walks them, the proxy judges it): the first packet
//!   of each new UDP or SCTP flow or ping (conntrack state `NEW`) goes to NFQUEUE queue
//!   `packet_queue`, where the sidecar accepts or drops it; later packets of an accepted flow
//!   pass in the kernel. The proxy's own packets, loopback, DNS (the DNS proxy judges it) and
//!   excluded CIDRs are left alone. Without a sidecar bound to the queue the kernel drops the
//!   packets: fail closed.
//!
//! The rules go in with one `iptables-restore --noflush`, so they change atomically; declaring
//! the chains flushes them, and the jumps are only added when missing, so running `init` again
//! leaves exactly one set. The same rules are written for IPv6 with `ip6tables` when the pod has
//! an IPv6 address. This follows what istio-iptables and linkerd2-proxy-init do, with one
//! difference: the admin port is excluded here, not left to a flag.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::IpNet;

/// The table the redirects live in.
const TABLE: &str = "nat";
/// The table the DNS marks and TPROXY live in.
const MANGLE: &str = "mangle";
/// Chain for connections into the pod.
pub const INBOUND_CHAIN: &str = "PODWALL_INBOUND";
/// Chain for connections out of the pod.
pub const OUTPUT_CHAIN: &str = "PODWALL_OUTPUT";
/// Chain marking the pod's DNS datagrams.
pub const DNS_OUTPUT_CHAIN: &str = "PODWALL_DNS_OUTPUT";
/// Chain handing marked DNS datagrams to the sidecar.
pub const DNS_PREROUTING_CHAIN: &str = "PODWALL_DNS_PREROUTING";
/// Chain queueing new UDP/SCTP flows out of the pod.
pub const FILTER_OUT_CHAIN: &str = "PODWALL_FILTER_OUT";
/// Chain queueing new UDP/SCTP flows into the pod.
pub const FILTER_IN_CHAIN: &str = "PODWALL_FILTER_IN";
/// The table of the packet filter's chains.
const FILTER: &str = "filter";
/// The mark on captured DNS datagrams.
pub const DNS_MARK: u32 = 0x539;
/// The routing table that makes marked datagrams local.
pub const DNS_TABLE: u32 = 133;

/// How DNS over UDP reaches the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsCapture {
    /// TPROXY: the original destination is kept (the default).
    Tproxy,
    /// nat REDIRECT: the original destination is lost.
    Redirect,
}
/// `multiport` takes at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    fn tool(self, suffix: &str) -> String {
        match self {
            Family::V4 => format!("iptables{suffix}"),
            Family::V6 => format!("ip6tables{suffix}"),
        }
    }

    fn matches(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// What to capture and what to leave alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The uid the proxy runs as: its own connections are never captured.
    pub proxy_uid: u32,
    /// The gid the proxy runs as, also excluded when set.
    pub proxy_gid: Option<u32>,
    /// Where inbound TCP goes.
    pub inbound_port: u16,
    /// Where outbound TCP goes.
    pub outbound_port: u16,
    /// Where DNS (UDP and TCP 53) goes.
    pub dns_port: u16,
    /// The admin port (probes, metrics): never captured inbound.
    pub admin_port: u16,
    /// Whether DNS is captured at all.
    pub capture_dns: bool,
    /// How DNS over UDP is captured.
    pub dns_capture: DnsCapture,
    /// Inbound ports left alone.
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound TCP ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (e.g. the control plane).
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// The NFQUEUE queue new UDP/SCTP flows go to; `None` leaves them alone (not enforced).
    pub packet_queue: Option<u16>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_port: 15006,
            outbound_port: 15001,
            dns_port: 15053,
            admin_port: 15020,
            capture_dns: true,
            dns_capture: DnsCapture::Tproxy,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            packet_queue: Some(DEFAULT_PACKET_QUEUE),
        }
    }
}

/// The NFQUEUE queue the sidecar reads by default.
pub const DEFAULT_PACKET_QUEUE: u16 = 1337;

/// Setting up or removing the rules failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A tool could not be started (not installed?).
    #[error("cannot run {tool}: {source} (is iptables installed?)")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Failed {
        /// The tool and arguments.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
}

fn ports_rules(out: &mut Vec<String>, chain: &str, proto: &str, ports: &[u16], target: &str) {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    for chunk in ports.chunks(MULTIPORT_MAX) {
        let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
        if chunk.len() == 1 {
            out.push(format!(
                "-A {chain} -p {proto} --dport {} -j {target}",
                list[0]
            ));
        } else {
            out.push(format!(
                "-A {chain} -p {proto} -m multiport --dports {} -j {target}",
                list.join(",")
            ));
        }
    }
}

impl InitConfig {
    /// The rules of both chains for one family, in `iptables-restore` syntax.
    pub fn chain_rules(&self, family: Family) -> Vec<String> {
        let mut r = Vec::new();
        // Inbound.
        let mut skip_in = vec![self.admin_port];
        skip_in.extend(&self.exclude_inbound_ports);
        ports_rules(&mut r, INBOUND_CHAIN, "tcp", &skip_in, "RETURN");
        r.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        // Outbound.
        r.push(format!(
            "-A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        ));
        if let Some(gid) = self.proxy_gid {
            r.push(format!(
                "-A {OUTPUT_CHAIN} -m owner --gid-owner {gid} -j RETURN"
            ));
        }
        r.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
        for net in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            r.push(format!("-A {OUTPUT_CHAIN} -d {} -j RETURN", net.trunc()));
        }
        ports_rules(
            &mut r,
            OUTPUT_CHAIN,
            "tcp",
            &self.exclude_outbound_ports,
            "RETURN",
        );
        if self.capture_dns {
            let protos: &[&str] = match self.dns_capture {
                DnsCapture::Redirect => &["udp", "tcp"],
                DnsCapture::Tproxy => &["tcp"],
            };
            for proto in protos {
                r.push(format!(
                    "-A {OUTPUT_CHAIN} -p {proto} --dport 53 -j REDIRECT --to-ports {}",
                    self.dns_port
                ));
            }
        }
        r.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        r
    }

    /// The jumps from the built-in chains into ours.
    fn jumps() -> [(&'static str, String); 2] {
        [
            ("PREROUTING", format!("-p tcp -j {INBOUND_CHAIN}")),
            ("OUTPUT", format!("-j {OUTPUT_CHAIN}")),
        ]
    }

    /// Whether the mangle rules (TPROXY for DNS) are wanted.
    fn tproxy(&self) -> bool {
        self.capture_dns && self.dns_capture == DnsCapture::Tproxy
    }

    /// The mangle chains' rules for one family (empty without TPROXY capture).
    pub fn dns_rules(&self, family: Family) -> Vec<String> {
        if !self.tproxy() {
            return Vec::new();
        }
        let mut r = vec![format!(
            "-A {DNS_OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        )];
        if let Some(gid) = self.proxy_gid {
            r.push(format!(
                "-A {DNS_OUTPUT_CHAIN} -m owner --gid-owner {gid} -j RETURN"
            ));
        }
        r.push(format!("-A {DNS_OUTPUT_CHAIN} -o lo -j RETURN"));
        for net in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            r.push(format!(
                "-A {DNS_OUTPUT_CHAIN} -d {} -j RETURN",
                net.trunc()
            ));
        }
        r.push(format!(
            "-A {DNS_OUTPUT_CHAIN} -p udp --dport 53 -j MARK --set-xmark {DNS_MARK:#x}/0xffffffff"
        ));
        let on_ip = match family {
            Family::V4 => "127.0.0.1",
            Family::V6 => "::1",
        };
        r.push(format!(
            "-A {DNS_PREROUTING_CHAIN} -p udp -m mark --mark {DNS_MARK:#x} -j TPROXY --on-port {} --on-ip {on_ip} --tproxy-mark {DNS_MARK:#x}/0xffffffff",
            self.dns_port
        ));
        r
    }

    /// The packet filter's rules for one family (empty without a packet queue).
    pub fn filter_rules(&self, family: Family) -> Vec<String> {
        let Some(queue) = self.packet_queue else {
            return Vec::new();
        };
        let mut r = vec![format!(
            "-A {FILTER_OUT_CHAIN} -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        )];
        if let Some(gid) = self.proxy_gid {
            r.push(format!(
                "-A {FILTER_OUT_CHAIN} -m owner --gid-owner {gid} -j RETURN"
            ));
        }
        r.push(format!("-A {FILTER_OUT_CHAIN} -o lo -j RETURN"));
        for net in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|n| family.matches(n))
        {
            r.push(format!(
                "-A {FILTER_OUT_CHAIN} -d {} -j RETURN",
                net.trunc()
            ));
        }
        if self.capture_dns {
            r.push(format!("-A {FILTER_OUT_CHAIN} -p udp --dport 53 -j RETURN"));
        }
        r.push(format!("-A {FILTER_IN_CHAIN} -i lo -j RETURN"));
        // Ping too: echo requests start ICMP flows (replies and errors are conntrack's
        // ESTABLISHED and RELATED, and neighbour discovery is never queued).
        let echo = match family {
            Family::V4 => "icmp --icmp-type echo-request",
            Family::V6 => "ipv6-icmp --icmpv6-type echo-request",
        };
        for chain in [FILTER_OUT_CHAIN, FILTER_IN_CHAIN] {
            for proto in ["udp", "sctp", echo] {
                r.push(format!(
                    "-A {chain} -p {proto} -m conntrack --ctstate NEW -j NFQUEUE --queue-num {queue}"
                ));
            }
        }
        r
    }

    /// One jump per protocol the packet filter judges, so a TCP packet (nearly all of a pod's
    /// packets, and judged by the proxy instead) costs the hook three protocol compares rather
    /// than a walk through the chain with its owner matches.
    fn filter_jumps(family: Family) -> Vec<(&'static str, String)> {
        let icmp = match family {
            Family::V4 => "icmp",
            Family::V6 => "ipv6-icmp",
        };
        let mut jumps = Vec::new();
        for (builtin, chain) in [("OUTPUT", FILTER_OUT_CHAIN), ("INPUT", FILTER_IN_CHAIN)] {
            for proto in ["udp", "sctp", icmp] {
                jumps.push((builtin, format!("-p {proto} -j {chain}")));
            }
        }
        jumps
    }

    fn dns_jumps() -> [(&'static str, String); 2] {
        [
            ("OUTPUT", format!("-p udp -j {DNS_OUTPUT_CHAIN}")),
            ("PREROUTING", format!("-p udp -j {DNS_PREROUTING_CHAIN}")),
        ]
    }

    /// The `iptables-restore --noflush` input that installs the rules, given what
    /// `iptables-save` printed for `nat`, `mangle` and `filter` (jumps already present are not
    /// added again).
    pub fn restore_input(&self, family: Family, saved: &Saved) -> String {
        let (saved_nat, saved_mangle) = (saved.nat.as_str(), saved.mangle.as_str());
        let mut s = format!("*{TABLE}\n:{INBOUND_CHAIN} - [0:0]\n:{OUTPUT_CHAIN} - [0:0]\n");
        for rule in self.chain_rules(family) {
            let _ = writeln!(s, "{rule}");
        }
        reconcile_jumps(
            &mut s,
            saved_nat,
            &Self::jumps(),
            &[INBOUND_CHAIN, OUTPUT_CHAIN],
        );
        s.push_str("COMMIT\n");
        if self.tproxy() {
            let _ = write!(
                s,
                "*{MANGLE}\n:{DNS_OUTPUT_CHAIN} - [0:0]\n:{DNS_PREROUTING_CHAIN} - [0:0]\n"
            );
            for rule in self.dns_rules(family) {
                let _ = writeln!(s, "{rule}");
            }
            reconcile_jumps(
                &mut s,
                saved_mangle,
                &Self::dns_jumps(),
                &[DNS_OUTPUT_CHAIN, DNS_PREROUTING_CHAIN],
            );
            s.push_str("COMMIT\n");
        }
        if self.packet_queue.is_some() {
            let _ = write!(
                s,
                "*{FILTER}\n:{FILTER_OUT_CHAIN} - [0:0]\n:{FILTER_IN_CHAIN} - [0:0]\n"
            );
            for rule in self.filter_rules(family) {
                let _ = writeln!(s, "{rule}");
            }
            reconcile_jumps(
                &mut s,
                &saved.filter,
                &Self::filter_jumps(family),
                &[FILTER_OUT_CHAIN, FILTER_IN_CHAIN],
            );
            s.push_str("COMMIT\n");
        }
        s
    }

    /// The `ip` commands that route marked DNS datagrams back in (TPROXY capture only).
    pub fn route_commands(&self, family: Family) -> Vec<Vec<String>> {
        if !self.tproxy() {
            return Vec::new();
        }
        let (flag, local) = match family {
            Family::V4 => ("-4", "0.0.0.0/0"),
            Family::V6 => ("-6", "::/0"),
        };
        let table = DNS_TABLE.to_string();
        vec![
            [
                "ip", flag, "route", "replace", "local", local, "dev", "lo", "table", &table,
            ]
            .map(String::from)
            .to_vec(),
            [
                "ip",
                flag,
                "rule",
                "add",
                "fwmark",
                &format!("{DNS_MARK:#x}"),
                "lookup",
                &table,
            ]
            .map(String::from)
            .to_vec(),
        ]
    }

    /// Installs the rules for one family, idempotently.
    pub fn apply(&self, family: Family) -> Result<(), InitError> {
        let saved = Saved {
            nat: run(&family.tool("-save"), &["-t", TABLE], None)?,
            mangle: if self.tproxy() {
                run(&family.tool("-save"), &["-t", MANGLE], None)?
            } else {
                String::new()
            },
            filter: if self.packet_queue.is_some() {
                run(&family.tool("-save"), &["-t", FILTER], None)?
            } else {
                String::new()
            },
        };
        for cmd in self.route_commands(family) {
            // `rule add` is not idempotent: skip it when the rule is there.
            if cmd[2] == "rule" && has_dns_rule(family)? {
                continue;
            }
            let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
            run("ip", &args, None)?;
        }
        run(
            &family.tool("-restore"),
            &["--noflush"],
            Some(&self.restore_input(family, &saved)),
        )?;
        Ok(())
    }
}

/// Adds the wanted jumps that `saved` (one table's `iptables-save`) lacks, and deletes jumps into
/// `ours` that are not wanted (left by an older version's rules), so `init` always leaves exactly
/// the current set.
fn reconcile_jumps(s: &mut String, saved: &str, wanted: &[(&str, String)], ours: &[&str]) {
    let wanted: Vec<String> = wanted
        .iter()
        .map(|(chain, jump)| format!("-A {chain} {jump}"))
        .collect();
    for line in saved.lines().map(str::trim) {
        let into_ours = line.starts_with("-A ")
            && ours
                .iter()
                .any(|chain| line.ends_with(&format!(" -j {chain}")));
        if into_ours && !wanted.iter().any(|w| w == line) {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    for line in &wanted {
        if !saved.lines().any(|l| l.trim() == line) {
            let _ = writeln!(s, "{line}");
        }
    }
}

/// What `iptables-save` printed for the tables the rules live in.
#[derive(Clone, Debug, Default)]
pub struct Saved {
    /// `-t nat`.
    pub nat: String,
    /// `-t mangle`.
    pub mangle: String,
    /// `-t filter`.
    pub filter: String,
}

/// Whether the routing rule for marked DNS datagrams is installed.
fn has_dns_rule(family: Family) -> Result<bool, InitError> {
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    let rules = run("ip", &[flag, "rule", "show"], None)?;
    Ok(rules.lines().any(|l| {
        l.contains(&format!("fwmark {DNS_MARK:#x}")) && l.contains(&format!("lookup {DNS_TABLE}"))
    }))
}

/// Removes the jumps and chains for one family; nothing happens where they are absent.
pub fn remove(family: Family) -> Result<(), InitError> {
    let saved = run(&family.tool("-save"), &["-t", TABLE], None)?;
    let mut s = format!("*{TABLE}\n");
    for line in saved.lines() {
        let line = line.trim();
        if line.starts_with("-A PREROUTING ") && line.ends_with(&format!("-j {INBOUND_CHAIN}"))
            || line.starts_with("-A OUTPUT ") && line.ends_with(&format!("-j {OUTPUT_CHAIN}"))
        {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
        if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
            let _ = writeln!(s, "-F {chain}\n-X {chain}");
        }
    }
    s.push_str("COMMIT\n");
    run(&family.tool("-restore"), &["--noflush"], Some(&s))?;
    // The DNS capture: mangle chains, routing rule and table.
    let saved = run(&family.tool("-save"), &["-t", MANGLE], None)?;
    let mut s = format!("*{MANGLE}\n");
    for line in saved.lines() {
        let line = line.trim();
        if line.starts_with("-A ")
            && (line.ends_with(&format!("-j {DNS_OUTPUT_CHAIN}"))
                || line.ends_with(&format!("-j {DNS_PREROUTING_CHAIN}")))
        {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    for chain in [DNS_OUTPUT_CHAIN, DNS_PREROUTING_CHAIN] {
        if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
            let _ = writeln!(s, "-F {chain}\n-X {chain}");
        }
    }
    s.push_str("COMMIT\n");
    run(&family.tool("-restore"), &["--noflush"], Some(&s))?;
    // The packet filter.
    let saved = run(&family.tool("-save"), &["-t", FILTER], None)?;
    let mut s = format!("*{FILTER}\n");
    for line in saved.lines() {
        let line = line.trim();
        if line.starts_with("-A OUTPUT ") && line.ends_with(&format!("-j {FILTER_OUT_CHAIN}"))
            || line.starts_with("-A INPUT ") && line.ends_with(&format!("-j {FILTER_IN_CHAIN}"))
        {
            let _ = writeln!(s, "-D{}", &line[2..]);
        }
    }
    for chain in [FILTER_OUT_CHAIN, FILTER_IN_CHAIN] {
        if saved.lines().any(|l| l.starts_with(&format!(":{chain} "))) {
            let _ = writeln!(s, "-F {chain}\n-X {chain}");
        }
    }
    s.push_str("COMMIT\n");
    run(&family.tool("-restore"), &["--noflush"], Some(&s))?;
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    while has_dns_rule(family)? {
        run(
            "ip",
            &[
                flag,
                "rule",
                "del",
                "fwmark",
                &format!("{DNS_MARK:#x}"),
                "lookup",
                &DNS_TABLE.to_string(),
            ],
            None,
        )?;
    }
    let _ = run(
        "ip",
        &[flag, "route", "flush", "table", &DNS_TABLE.to_string()],
        None,
    );
    Ok(())
}

/// Whether the namespace has an IPv6 address beyond loopback and link-local ones.
pub fn has_ipv6(addresses: &[IpAddr]) -> bool {
    addresses.iter().any(|a| match a {
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => false,
    })
}

/// The addresses of this network namespace's interfaces, from `/proc/net/if_inet6` (IPv6 only;
/// enough to decide whether IPv6 rules are needed).
pub fn ipv6_addresses() -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(|n| IpAddr::V6(std::net::Ipv6Addr::from(n)))
        .collect()
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InitError> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| InitError::Spawn {
                tool: tool.to_string(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            tool: tool.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(InitError::Failed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_capture_inbound_outbound_and_dns_but_not_the_proxy_or_loopback() {
        let rules = InitConfig::default().chain_rules(Family::V4);
        assert_eq!(
            rules,
            [
                "-A PODWALL_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A PODWALL_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A PODWALL_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A PODWALL_OUTPUT -o lo -j RETURN",
                "-A PODWALL_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                "-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn exclusions_come_before_redirects_and_cidrs_go_to_their_family() {
        let cfg = InitConfig {
            proxy_gid: Some(1337),
            exclude_inbound_ports: (1..=16).collect(),
            exclude_outbound_ports: vec![443, 6443, 443],
            exclude_outbound_cidrs: vec![
                "10.96.0.0/12".parse().expect("net"),
                "fd00::/8".parse().expect("net"),
            ],
            capture_dns: false,
            ..InitConfig::default()
        };
        let v4 = cfg.chain_rules(Family::V4);
        assert!(v4.contains(&"-A PODWALL_INBOUND -p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15 -j RETURN".to_string()), "{v4:#?}");
        assert!(
            v4.contains(
                &"-A PODWALL_INBOUND -p tcp -m multiport --dports 16,15020 -j RETURN".to_string()
            ),
            "{v4:#?}"
        );
        assert!(v4.contains(&"-A PODWALL_OUTPUT -m owner --gid-owner 1337 -j RETURN".to_string()));
        assert!(v4.contains(&"-A PODWALL_OUTPUT -d 10.96.0.0/12 -j RETURN".to_string()));
        assert!(!v4.iter().any(|r| r.contains("fd00::")));
        assert!(v4.contains(
            &"-A PODWALL_OUTPUT -p tcp -m multiport --dports 443,6443 -j RETURN".to_string()
        ));
        assert!(
            !v4.iter().any(|r| r.contains("--dport 53")),
            "DNS capture off"
        );
        let v6 = cfg.chain_rules(Family::V6);
        assert!(v6.contains(&"-A PODWALL_OUTPUT -d fd00::/8 -j RETURN".to_string()));
        let last = v4.last().expect("rules");
        assert_eq!(
            last,
            "-A PODWALL_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
        );
    }

    #[test]
    fn jumps_are_only_added_when_missing() {
        let cfg = InitConfig::default();
        let empty = Saved {
            nat: "*nat\nCOMMIT\n".into(),
            mangle: "*mangle\nCOMMIT\n".into(),
            filter: "*filter\nCOMMIT\n".into(),
        };
        let fresh = cfg.restore_input(Family::V4, &empty);
        assert!(fresh.contains("-A PREROUTING -p tcp -j PODWALL_INBOUND\n"));
        assert!(fresh.contains("-A OUTPUT -j PODWALL_OUTPUT\n"));
        assert!(fresh.starts_with("*nat\n:PODWALL_INBOUND - [0:0]\n:PODWALL_OUTPUT - [0:0]\n"));
        assert!(fresh.contains("-A OUTPUT -p udp -j PODWALL_DNS_OUTPUT\n"));
        assert!(fresh.contains("-A PREROUTING -p udp -j PODWALL_DNS_PREROUTING\n"));
        for proto in ["udp", "sctp", "icmp"] {
            assert!(fresh.contains(&format!("-A OUTPUT -p {proto} -j PODWALL_FILTER_OUT\n")));
            assert!(fresh.contains(&format!("-A INPUT -p {proto} -j PODWALL_FILTER_IN\n")));
        }
        // No unconditional jump: TCP never enters the packet filter's chains.
        assert!(
            !fresh.contains("-A OUTPUT -j PODWALL_FILTER_OUT"),
            "{fresh}"
        );
        assert!(!fresh.contains("-A INPUT -j PODWALL_FILTER_IN"), "{fresh}");
        let installed = Saved {
            nat: "*nat\n:PODWALL_INBOUND - [0:0]\n-A PREROUTING -p tcp -j PODWALL_INBOUND\n-A OUTPUT -j PODWALL_OUTPUT\nCOMMIT\n".into(),
            mangle: "*mangle\n-A OUTPUT -p udp -j PODWALL_DNS_OUTPUT\n-A PREROUTING -p udp -j PODWALL_DNS_PREROUTING\nCOMMIT\n".into(),
            filter: "*filter\n-A INPUT -p udp -j PODWALL_FILTER_IN\n-A INPUT -p sctp -j PODWALL_FILTER_IN\n-A INPUT -p icmp -j PODWALL_FILTER_IN\n-A OUTPUT -p udp -j PODWALL_FILTER_OUT\n-A OUTPUT -p sctp -j PODWALL_FILTER_OUT\n-A OUTPUT -p icmp -j PODWALL_FILTER_OUT\nCOMMIT\n".into(),
        };
        let again = cfg.restore_input(Family::V4, &installed);
        assert!(!again.contains("-A PREROUTING"), "{again}");
        assert!(!again.contains("-A OUTPUT -"), "{again}");
        assert!(!again.contains("-A INPUT -"), "{again}");
        assert!(!again.contains("-D "), "{again}");
    }

    #[test]
    fn jumps_left_by_older_rules_are_replaced_by_the_current_ones() {
        let cfg = InitConfig::default();
        let older = Saved {
            nat: "*nat\n-A PREROUTING -p tcp -j PODWALL_INBOUND\n-A OUTPUT -j PODWALL_OUTPUT\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n".into(),
            mangle: "*mangle\nCOMMIT\n".into(),
            // Every packet used to walk the filter chains.
            filter: "*filter\n-A INPUT -j PODWALL_FILTER_IN\n-A OUTPUT -j PODWALL_FILTER_OUT\n-A OUTPUT -j OTHER\nCOMMIT\n".into(),
        };
        let input = cfg.restore_input(Family::V4, &older);
        assert!(input.contains("-D INPUT -j PODWALL_FILTER_IN\n"), "{input}");
        assert!(
            input.contains("-D OUTPUT -j PODWALL_FILTER_OUT\n"),
            "{input}"
        );
        assert!(
            input.contains("-A OUTPUT -p udp -j PODWALL_FILTER_OUT\n"),
            "{input}"
        );
        // Nobody else's jumps are touched, and current jumps stay.
        assert!(!input.contains("OTHER"), "{input}");
        assert!(!input.contains("KUBE-SERVICES"), "{input}");
        assert!(!input.contains("-D PREROUTING"), "{input}");
        assert!(!input.contains("-D OUTPUT -j PODWALL_OUTPUT"), "{input}");
    }

    #[test]
    fn udp_dns_is_marked_and_tproxied_keeping_its_destination() {
        let cfg = InitConfig {
            exclude_outbound_cidrs: vec!["10.96.0.1/32".parse().expect("net")],
            ..InitConfig::default()
        };
        assert_eq!(
            cfg.dns_rules(Family::V4),
            [
                "-A PODWALL_DNS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A PODWALL_DNS_OUTPUT -o lo -j RETURN",
                "-A PODWALL_DNS_OUTPUT -d 10.96.0.1/32 -j RETURN",
                "-A PODWALL_DNS_OUTPUT -p udp --dport 53 -j MARK --set-xmark 0x539/0xffffffff",
                "-A PODWALL_DNS_PREROUTING -p udp -m mark --mark 0x539 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x539/0xffffffff",
            ]
        );
        assert!(cfg.dns_rules(Family::V6)[3].contains("--on-ip ::1"));
        let routes = cfg.route_commands(Family::V4);
        assert_eq!(
            routes[0].join(" "),
            "ip -4 route replace local 0.0.0.0/0 dev lo table 133"
        );
        assert_eq!(
            routes[1].join(" "),
            "ip -4 rule add fwmark 0x539 lookup 133"
        );
        let redirect = InitConfig {
            dns_capture: DnsCapture::Redirect,
            ..InitConfig::default()
        };
        assert!(redirect.dns_rules(Family::V4).is_empty());
        assert!(redirect.route_commands(Family::V4).is_empty());
        assert!(redirect.chain_rules(Family::V4).contains(
            &"-A PODWALL_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053".to_string()
        ));
        assert!(
            !redirect
                .restore_input(Family::V4, &Saved::default())
                .contains("*mangle")
        );
    }

    #[test]
    fn new_udp_sctp_and_ping_flows_are_queued_except_the_proxy_loopback_dns_and_excluded_cidrs() {
        let cfg = InitConfig {
            exclude_outbound_cidrs: vec!["10.96.0.1/32".parse().expect("net")],
            ..InitConfig::default()
        };
        assert_eq!(
            cfg.filter_rules(Family::V4),
            [
                "-A PODWALL_FILTER_OUT -m owner --uid-owner 1337 -j RETURN",
                "-A PODWALL_FILTER_OUT -o lo -j RETURN",
                "-A PODWALL_FILTER_OUT -d 10.96.0.1/32 -j RETURN",
                "-A PODWALL_FILTER_OUT -p udp --dport 53 -j RETURN",
                "-A PODWALL_FILTER_IN -i lo -j RETURN",
                "-A PODWALL_FILTER_OUT -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_OUT -p sctp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_OUT -p icmp --icmp-type echo-request -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_IN -p udp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_IN -p sctp -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
                "-A PODWALL_FILTER_IN -p icmp --icmp-type echo-request -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337",
            ]
        );
        assert!(
            cfg.filter_rules(Family::V6).contains(
                &"-A PODWALL_FILTER_IN -p ipv6-icmp --icmpv6-type echo-request -m conntrack --ctstate NEW -j NFQUEUE --queue-num 1337".to_string()
            )
        );
        let off = InitConfig {
            packet_queue: None,
            ..InitConfig::default()
        };
        assert!(off.filter_rules(Family::V4).is_empty());
        assert!(
            !off.restore_input(Family::V4, &Saved::default())
                .contains("*filter")
        );
    }

    #[test]
    fn ipv6_counts_only_with_a_global_address() {
        assert!(!has_ipv6(&[
            "10.0.0.1".parse().expect("ip"),
            "::1".parse().expect("ip"),
            "fe80::1".parse().expect("ip")
        ]));
        assert!(has_ipv6(&["fd00::5".parse().expect("ip")]));
    }
}
