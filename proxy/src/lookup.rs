//! The sidecar's own name lookups (the control plane's `HOST` in `control:HOST:PORT`).
//!
//! The pod's DNS goes through the sidecar's DNS proxy, which refuses everything until the first
//! policy arrives, and that policy comes from the control plane: the sidecar cannot ask its own
//! proxy for the control plane's address. So it reads `/etc/hosts`, then asks the pod's
//! resolvers itself, from marked sockets ([`crate::exempt`]) that the capture lets pass, with
//! the pod's search list and `ndots` as the C library would read them from `/etc/resolv.conf`.
//!
//! Both files are read once, when the sidecar starts: the kubelet mounts the pod's hosts and
//! resolv.conf files writable into every container, and an app that rewrote them could send
//! the sidecar to another control plane, or make its own DNS server one the sidecar trusts
//! (whose answers teach toFQDNs addresses). A sidecar that starts again (killed, out of
//! memory) starts after the app did, so injection has `proxy init`, which runs before any app
//! container, copy both into a directory only it and the sidecar mount ([`save_pod_files`]),
//! and the sidecar read them there (`proxy run --pod-files`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use podwall_fqdn::forward;
use podwall_fqdn::message::encode_query;

/// How long one resolver has for one question.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/etc/resolv.conf` says about where and how to look names up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResolvConf {
    /// `nameserver` lines, in order.
    pub nameservers: Vec<IpAddr>,
    /// The `search` list (the last `search` or `domain` line wins, as in glibc).
    pub search: Vec<String>,
    /// `options ndots:N` (1 when absent): names with fewer dots try the search list first.
    pub ndots: usize,
}

impl ResolvConf {
    /// Reads resolv.conf text; unknown lines are ignored, as the C library does.
    pub(crate) fn parse(text: &str) -> Self {
        let mut conf = ResolvConf {
            ndots: 1,
            ..Default::default()
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => {
                    conf.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for opt in words {
                        if let Some(n) = opt.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                            conf.ndots = n;
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// `/etc/resolv.conf` of this process (empty when unreadable).
    pub(crate) fn system() -> Self {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| Self::parse(&t))
            .unwrap_or_else(|_| Self::parse(""))
    }

    /// The names to ask, in order: an absolute name as it is; a name with at least `ndots`
    /// dots first as it is, then with each search domain; a shorter one the other way round.
    pub(crate) fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// The addresses `/etc/hosts`-formatted `text` gives `name` (case-insensitive), in order.
pub(crate) fn hosts_entries(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.trim_end_matches('.');
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// What the sidecar looks names up with, and whose DNS answers it believes: the pod's
/// `/etc/hosts` and `/etc/resolv.conf` as they were when the sidecar started, or as `proxy
/// init` saved them.
#[derive(Clone, Debug, Default)]
pub struct SystemNames {
    /// `resolv.conf`.
    pub(crate) conf: ResolvConf,
    /// `hosts`.
    pub(crate) hosts: String,
}

/// The files [`save_pod_files`] copies, by name, from `/etc`.
const POD_FILES: [&str; 2] = ["resolv.conf", "hosts"];

/// A file of the pod's name setup could not be saved or read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PodFilesError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Copies the pod's `/etc/resolv.conf` and `/etc/hosts` into `dir` (created if need be; a
/// missing hosts file is saved empty), each written whole before it takes its name.
pub fn save_pod_files(dir: &Path) -> Result<(), PodFilesError> {
    save_pod_files_from(Path::new("/etc"), dir)
}

fn save_pod_files_from(etc: &Path, dir: &Path) -> Result<(), PodFilesError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PodFilesError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    for name in POD_FILES {
        let from = etc.join(name);
        let text = match std::fs::read(&from) {
            Ok(text) => text,
            Err(e) if name == "hosts" && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(failed(&from)(e)),
        };
        let to = dir.join(name);
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, text).map_err(failed(&partial))?;
        std::fs::rename(&partial, &to).map_err(failed(&to))?;
    }
    Ok(())
}

impl SystemNames {
    /// Reads both files now: from `saved` (what [`save_pod_files`] wrote, both of which must
    /// be there), or from `/etc` (a file missing there counts as empty).
    pub fn read(saved: Option<&Path>) -> Result<Self, PodFilesError> {
        let Some(dir) = saved else {
            return Ok(SystemNames {
                conf: ResolvConf::system(),
                hosts: std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            });
        };
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PodFilesError { path, source })
        };
        Ok(SystemNames {
            conf: ResolvConf::parse(&read("resolv.conf")?),
            hosts: read("hosts")?,
        })
    }

    /// The `nameserver`s.
    pub fn nameservers(&self) -> &[IpAddr] {
        &self.conf.nameservers
    }
}

/// A name could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name:?} through {resolvers:?}: {why}")]
pub(crate) struct LookupError {
    /// The name.
    pub name: String,
    /// The resolvers asked.
    pub resolvers: Vec<IpAddr>,
    /// What the last attempt said.
    pub why: String,
}

/// The addresses of `host` (an IP address is its own answer), each with `port`.
pub(crate) async fn resolve(
    host: &str,
    port: u16,
    names: &SystemNames,
) -> Result<Vec<SocketAddr>, LookupError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let conf = &names.conf;
    let listed = hosts_entries(&names.hosts, host);
    if !listed.is_empty() {
        return Ok(listed
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect());
    }
    let fail = |why: String| LookupError {
        name: host.to_string(),
        resolvers: conf.nameservers.clone(),
        why,
    };
    if conf.nameservers.is_empty() {
        return Err(fail("no nameserver in /etc/resolv.conf".into()));
    }
    let mut why = String::from("no address");
    for name in conf.candidates(host) {
        for qtype in [RecordType::A, RecordType::AAAA] {
            for &server in &conf.nameservers {
                match ask(&name, qtype, SocketAddr::new(server, 53)).await {
                    Ok(ips) if !ips.is_empty() => {
                        return Ok(ips
                            .into_iter()
                            .map(|ip| SocketAddr::new(ip, port))
                            .collect());
                    }
                    // This name does not exist (or has no such record): the next candidate
                    // or type, not the next server.
                    Ok(_) => break,
                    Err(e) => why = format!("{name} at {server}: {e}"),
                }
            }
        }
    }
    Err(fail(why))
}

/// One question to one resolver: UDP, then TCP when the answer was truncated.
async fn ask(name: &str, qtype: RecordType, server: SocketAddr) -> Result<Vec<IpAddr>, String> {
    let (bytes, question) = encode_query(name, qtype).map_err(|e| e.to_string())?;
    let socket = crate::exempt::udp_connected(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = forward::udp(socket, &bytes, &question, ASK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if reply.answer.truncated {
        let stream = tokio::time::timeout(ASK_TIMEOUT, crate::exempt::connect(server))
            .await
            .map_err(|_| format!("connect to {server}: timed out"))?
            .map_err(|e| format!("connect to {server}: {e}"))?;
        reply = forward::tcp(stream, &bytes, &question, ASK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
    }
    match reply.answer.rcode {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(reply
            .answer
            .addresses
            .into_iter()
            .map(|(ip, _)| ip)
            .collect()),
        other => Err(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sidecar_reads_the_name_files_init_saved_not_what_the_app_made_of_etc_since() {
        let etc = tempfile::tempdir().expect("tempdir");
        let saved = tempfile::tempdir().expect("tempdir");
        let dir = saved.path().join("pod-files");
        std::fs::write(
            etc.path().join("resolv.conf"),
            "nameserver 10.96.0.10\nsearch t.svc.cluster.local\n",
        )
        .expect("write");
        std::fs::write(etc.path().join("hosts"), "10.0.0.9 control\n").expect("write");
        save_pod_files_from(etc.path(), &dir).expect("saved");
        // The app rewrites both afterwards: the saved copies do not change.
        std::fs::write(etc.path().join("resolv.conf"), "nameserver 6.6.6.6\n").expect("write");
        std::fs::write(etc.path().join("hosts"), "6.6.6.6 control\n").expect("write");
        let names = SystemNames::read(Some(&dir)).expect("read");
        assert_eq!(
            names.nameservers(),
            &["10.96.0.10".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(names.conf.search, ["t.svc.cluster.local"]);
        assert_eq!(
            hosts_entries(&names.hosts, "control"),
            ["10.0.0.9".parse::<IpAddr>().expect("ip")]
        );
        // No partial file is left behind.
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["hosts", "resolv.conf"]);
    }

    #[test]
    fn a_pod_without_a_hosts_file_saves_it_empty_and_missing_saved_files_are_an_error_naming_them()
    {
        let etc = tempfile::tempdir().expect("tempdir");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(etc.path().join("resolv.conf"), "nameserver 10.96.0.10\n").expect("write");
        save_pod_files_from(etc.path(), dir.path()).expect("saved");
        assert_eq!(SystemNames::read(Some(dir.path())).expect("read").hosts, "");
        // A pod without resolv.conf: init fails, naming the file.
        let bare = tempfile::tempdir().expect("tempdir");
        let e = save_pod_files_from(bare.path(), dir.path()).expect_err("no resolv.conf");
        assert_eq!(e.path, bare.path().join("resolv.conf"));
        // The sidecar told to read files nobody saved fails, naming the file (it does not fall
        // back to /etc, which the app may have rewritten).
        let empty = tempfile::tempdir().expect("tempdir");
        let e = SystemNames::read(Some(empty.path())).expect_err("nothing saved");
        assert_eq!(e.path, empty.path().join("resolv.conf"));
        assert!(e.to_string().contains("resolv.conf"), "{e}");
    }

    #[test]
    fn resolv_conf_gives_servers_search_list_and_ndots() {
        let conf = ResolvConf::parse(
            "# kubelet\nnameserver 10.96.0.10\nnameserver fd00::a\nsearch default.svc.cluster.local svc.cluster.local cluster.local.\noptions ndots:5 timeout:1\n",
        );
        assert_eq!(
            conf.nameservers,
            [
                "10.96.0.10".parse::<IpAddr>().expect("ip"),
                "fd00::a".parse().expect("ip")
            ]
        );
        assert_eq!(conf.ndots, 5);
        assert_eq!(
            conf.candidates("podwall.podwall-system.svc"),
            [
                "podwall.podwall-system.svc.default.svc.cluster.local",
                "podwall.podwall-system.svc.svc.cluster.local",
                "podwall.podwall-system.svc.cluster.local",
                "podwall.podwall-system.svc",
            ]
        );
        assert_eq!(
            conf.candidates("control.example.com."),
            ["control.example.com"]
        );
        let plain = ResolvConf::parse("nameserver 1.1.1.1\ndomain corp\n");
        assert_eq!(plain.ndots, 1);
        assert_eq!(plain.candidates("a.b"), ["a.b", "a.b.corp"]);
        assert_eq!(plain.candidates("host"), ["host.corp", "host"]);
    }

    #[test]
    fn hosts_file_entries_match_any_alias_case_insensitively() {
        let hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost # loopback\n10.0.0.9 control Control.Example.com\n# 10.0.0.8 control\n";
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            hosts_entries(hosts, "localhost"),
            [ip("127.0.0.1"), ip("::1")]
        );
        assert_eq!(
            hosts_entries(hosts, "control.example.com."),
            [ip("10.0.0.9")]
        );
        assert_eq!(hosts_entries(hosts, "control"), [ip("10.0.0.9")]);
        assert!(hosts_entries(hosts, "other").is_empty());
    }

    #[tokio::test]
    async fn an_address_needs_no_lookup_and_no_nameserver_is_an_error_naming_the_name() {
        let names = SystemNames {
            conf: ResolvConf::parse(""),
            hosts: "10.0.0.9 control\n".into(),
        };
        assert_eq!(
            resolve("[fd00::1]", 15010, &names).await.expect("literal"),
            ["[fd00::1]:15010".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            resolve("control", 15010, &names).await.expect("hosts"),
            ["10.0.0.9:15010".parse::<SocketAddr>().expect("addr")]
        );
        let err = resolve("podwall.podwall-system.svc", 15010, &names)
            .await
            .expect_err("nowhere to ask");
        assert!(
            err.to_string().contains("podwall.podwall-system.svc"),
            "{err}"
        );
        assert!(err.to_string().contains("no nameserver"), "{err}");
    }
}
