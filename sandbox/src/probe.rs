//! Trying every pod-to-pod TCP connection and setting what happened beside what the analyzer
//! predicts.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use podwall_policy::{Endpoint, Engine, Protocol, Query};
use serde::Serialize;

use crate::server::GREETING;
use crate::{PodRecord, Sandbox, SandboxError, run_in};

/// How long a connection attempt may take before it counts as blocked.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// How long to wait for the application's greeting before trying HTTP.
const GREETING_WAIT: Duration = Duration::from_millis(400);

/// One attempted connection.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// Source pod.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Always TCP for now.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// The destination's application answered.
    pub observed: bool,
    /// The analyzer says it is allowed.
    pub predicted: bool,
    /// The greeting, or what went wrong.
    pub detail: String,
}

/// Every attempt of a probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// Pods, sorted.
    pub pods: Vec<String>,
    /// Attempts, by port, source, destination.
    pub attempts: Vec<Attempt>,
}

/// Connects and reads the greeting: `Ok(greeting)` when the application answered.
fn try_connect(dst: SocketAddr, bind: Option<SocketAddr>) -> Result<String, String> {
    let stream = match bind {
        None => TcpStream::connect_timeout(&dst, TIMEOUT).map_err(|e| e.to_string())?,
        Some(src) => {
            // A host-network pod speaks from its own node address.
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| e.to_string())?;
            let SocketAddr::V4(src4) = src else {
                return Err("IPv6 source".into());
            };
            let SocketAddr::V4(dst4) = dst else {
                return Err("IPv6 destination".into());
            };
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(src4),
            )
            .map_err(|e| e.to_string())?;
            nix::sys::socket::connect(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(dst4),
            )
            .map_err(|e| e.to_string())?;
            TcpStream::from(sock)
        }
    };
    // A silent client gets the application's greeting. A sidecar that enforces HTTP rules on
    // this port waits for a request instead; then a request tells: any HTTP answer (even 403)
    // means the connection itself was allowed.
    stream
        .set_read_timeout(Some(GREETING_WAIT))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            let stream = reader.get_mut();
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(
                stream,
                format!("HEAD / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .map_err(|e| e.to_string())?;
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            return if line.starts_with("HTTP/1.") {
                Ok(format!("HTTP rules apply: {}", line.trim_end()))
            } else {
                Err("no greeting and no HTTP answer".into())
            };
        }
        Err(e) => return Err(e.to_string()),
    }
    if line.starts_with(GREETING) {
        Ok(line.trim_end().to_string())
    } else if line.is_empty() {
        Err("closed without a greeting".into())
    } else {
        Err(format!("unexpected answer {line:?}"))
    }
}

/// One HTTP request from one pod to another, observed and predicted.
#[derive(Clone, Debug, Serialize)]
pub struct HttpAttempt {
    /// Source pod.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Destination port.
    pub port: u16,
    /// The method.
    pub method: String,
    /// The request target as sent.
    pub path: String,
    /// The status the client got (0: no answer).
    pub observed: u16,
    /// The status the analyzer predicts (200 from the sandbox's servers when allowed).
    pub predicted: u16,
}

/// Sends one HTTP/1.1 request and returns the status (0 when there was no HTTP answer).
fn http_status(dst: SocketAddr, method: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&dst, TIMEOUT) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    if std::io::Write::write_all(&mut s, req.as_bytes()).is_err() {
        return 0;
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

impl Sandbox {
    /// Tries every pod-to-pod connection on every TCP port the destination declares.
    pub fn probe(&self) -> Result<ProbeReport, SandboxError> {
        let engine = Engine::compile(self.state()?);
        let mut pods: Vec<PodRecord> = self.record.pods.clone();
        pods.sort_by(|a, b| a.key.cmp(&b.key));
        let mut handles = Vec::new();
        for src in pods.clone() {
            let targets: Vec<(PodRecord, u16)> = pods
                .iter()
                .flat_map(|d| d.tcp.iter().map(move |p| (d.clone(), *p)))
                .collect();
            let bind = src.host_network.then(|| SocketAddr::new(src.ip, 0));
            let ns = src.netns.clone();
            handles.push(std::thread::spawn(move || {
                run_in(&ns, move || {
                    targets
                        .into_iter()
                        .map(|(dst, port)| {
                            let r = try_connect(SocketAddr::new(dst.ip, port), bind);
                            (src.key.clone(), dst.key.clone(), port, r)
                        })
                        .collect::<Vec<_>>()
                })
            }));
        }
        let mut attempts = Vec::new();
        for h in handles {
            let results = h.join().map_err(|_| SandboxError::Failed {
                command: "probe".into(),
                stderr: "a probe thread panicked".into(),
            })??;
            for (from, to, port, result) in results {
                let state = engine.state();
                let id = |k: &str| {
                    let (ns, name) = k.split_once('/').unwrap_or(("", k));
                    state.pod_by_name(ns, name)
                };
                let predicted = match (id(&from), id(&to)) {
                    (Some(s), Some(d)) => engine.allowed(&Query {
                        src: Endpoint::Pod(s),
                        dst: Endpoint::Pod(d),
                        protocol: Protocol::Tcp,
                        port,
                    }),
                    _ => false,
                };
                let (observed, detail) = match result {
                    Ok(g) => (true, g),
                    Err(e) => (false, e),
                };
                attempts.push(Attempt {
                    from,
                    to,
                    protocol: Protocol::Tcp,
                    port,
                    observed,
                    predicted,
                    detail,
                });
            }
        }
        attempts.sort_by(|a, b| (a.port, &a.from, &a.to).cmp(&(b.port, &b.from, &b.to)));
        Ok(ProbeReport {
            pods: pods.into_iter().map(|p| p.key).collect(),
            attempts,
        })
    }
}

impl Sandbox {
    /// Sends each `(method, path)` request from every pod to every TCP port of every other pod
    /// that accepts the connection, and sets the status beside the analyzer's prediction: 200
    /// when the request is allowed (the sandbox's servers answer 200), 403 when HTTP rules deny
    /// it, 400 for a path that is refused; pairs the policy does not connect are left out.
    pub fn probe_http(
        &self,
        requests: &[(String, String)],
    ) -> Result<Vec<HttpAttempt>, SandboxError> {
        let engine = Engine::compile(self.state()?);
        let state = engine.state();
        let id = |k: &str| {
            let (ns, name) = k.split_once('/').unwrap_or(("", k));
            state.pod_by_name(ns, name)
        };
        let mut out = Vec::new();
        let mut pods: Vec<PodRecord> = self.record.pods.clone();
        pods.sort_by(|a, b| a.key.cmp(&b.key));
        for src in &pods {
            for dst in pods.iter().filter(|d| d.key != src.key) {
                for &port in &dst.tcp {
                    let (Some(s), Some(d)) = (id(&src.key), id(&dst.key)) else {
                        continue;
                    };
                    let verdict = engine.verdict(&Query {
                        src: Endpoint::Pod(s),
                        dst: Endpoint::Pod(d),
                        protocol: Protocol::Tcp,
                        port,
                    });
                    if !verdict.allowed() {
                        continue;
                    }
                    for (method, path) in requests {
                        let request = podwall_l7::Request {
                            method: method.clone(),
                            target: path.clone(),
                            host: None,
                            headers: Default::default(),
                        };
                        let predicted =
                            match podwall_l7::explain_request(&engine, &verdict, &request) {
                                Ok(h) => h.status.unwrap_or(200),
                                Err(_) => 403,
                            };
                        let (addr, m, p) =
                            (SocketAddr::new(dst.ip, port), method.clone(), path.clone());
                        let observed = run_in(&src.netns, move || http_status(addr, &m, &p))?;
                        out.push(HttpAttempt {
                            from: src.key.clone(),
                            to: dst.key.clone(),
                            port,
                            method: method.clone(),
                            path: path.clone(),
                            observed,
                            predicted,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// HTTP attempts for people, mismatches last.
pub fn render_http(attempts: &[HttpAttempt]) -> String {
    let mut out = String::new();
    for a in attempts {
        let mark = if a.observed == a.predicted { " " } else { "!" };
        let _ = writeln!(
            out,
            "{mark} {} -> {}:{} {} {}: observed {}, predicted {}",
            a.from, a.to, a.port, a.method, a.path, a.observed, a.predicted
        );
    }
    let wrong = attempts
        .iter()
        .filter(|a| a.observed != a.predicted)
        .count();
    if wrong == 0 {
        let _ = writeln!(
            out,
            "all {} HTTP requests behaved as the analyzer predicts",
            attempts.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{wrong} of {} HTTP requests differ from the prediction (marked !)",
            attempts.len()
        );
    }
    out
}

impl ProbeReport {
    /// Attempts whose outcome differs from the prediction.
    pub fn mismatches(&self) -> Vec<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.observed != a.predicted)
            .collect()
    }

    /// Per port: the observed matrix beside the predicted one, then the differences.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ports: BTreeSet<u16> = self.attempts.iter().map(|a| a.port).collect();
        let n = self.pods.len();
        let num_w = n.to_string().len();
        let name_w = self
            .pods
            .iter()
            .map(|p| p.chars().count())
            .max()
            .unwrap_or(0);
        let cell = |a: Option<&Attempt>, observed: bool| match a {
            None => "   ",
            Some(a) if (if observed { a.observed } else { a.predicted }) => "  ✓",
            Some(_) => "  ·",
        };
        for port in ports {
            let _ = writeln!(
                out,
                "TCP/{port}: observed | predicted by the analyzer (✓ connected, · refused, blank: no listener)"
            );
            let header: String = (1..=n).map(|j| format!("{j:>3}")).collect();
            let _ = writeln!(
                out,
                "{:w$}  {header}   {header}",
                "",
                w = num_w + 2 + name_w
            );
            for (i, from) in self.pods.iter().enumerate() {
                let find = |to: &str| {
                    self.attempts
                        .iter()
                        .find(|a| a.port == port && &a.from == from && a.to == to)
                };
                let observed: String = self.pods.iter().map(|to| cell(find(to), true)).collect();
                let predicted: String = self.pods.iter().map(|to| cell(find(to), false)).collect();
                let _ = writeln!(
                    out,
                    "{:>num_w$}  {from:<name_w$} {observed}  | {predicted}",
                    i + 1
                );
            }
            out.push('\n');
        }
        let mismatches = self.mismatches();
        if mismatches.is_empty() {
            let _ = writeln!(
                out,
                "all {} connections behaved as the analyzer predicts",
                self.attempts.len()
            );
        } else {
            let _ = writeln!(
                out,
                "{} of {} connections differ from the prediction:",
                mismatches.len(),
                self.attempts.len()
            );
            for a in mismatches {
                let _ = writeln!(
                    out,
                    "  {} -> {} TCP/{}: observed {}, predicted {} ({})",
                    a.from,
                    a.to,
                    a.port,
                    if a.observed { "connected" } else { "refused" },
                    if a.predicted { "allowed" } else { "denied" },
                    a.detail
                );
            }
        }
        out
    }
}
