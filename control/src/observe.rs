//! `podwall observe`: the flow events of many sidecars as one stream, filtered and shown as
//! operators read them (like `hubble observe`).
//!
//! Flow events are what every sidecar writes on its stdout, one JSON line each; nothing new runs
//! on the data path. Where they come from ([`Source`]): a file a log pipeline exported, the
//! sandbox's sidecars (their flow files), or a cluster, where the API server streams the logs of
//! every `podwall-proxy` container the filters select (the kubelet reads them from the node: a
//! slow observer costs the sidecars nothing, as its stdout goes to the node's log files).
//!
//! A flow between two pods that both run the sidecar is seen twice, once by each side; each
//! line says which side saw it.

pub mod source;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::Value;

/// Allowed, denied or audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allowed,
    /// Denied.
    Denied,
    /// Would have been denied; passed in audit mode.
    Audit,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "ALLOWED",
            Verdict::Denied => "DENIED",
            Verdict::Audit => "AUDIT",
        }
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "ALLOWED" => Ok(Verdict::Allowed),
            "DENIED" => Ok(Verdict::Denied),
            "AUDIT" => Ok(Verdict::Audit),
            _ => Err(format!("{s:?}: expected ALLOWED, DENIED or AUDIT")),
        }
    }
}

/// What a flow event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowType {
    /// A connection or a packet-filter flow.
    L3L4,
    /// An HTTP request under HTTP rules.
    Http,
    /// A DNS query through the DNS proxy.
    Dns,
}

impl std::str::FromStr for FlowType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "l3l4" | "l4" => Ok(FlowType::L3L4),
            "http" | "l7" => Ok(FlowType::Http),
            "dns" => Ok(FlowType::Dns),
            _ => Err(format!("{s:?}: expected l3l4, http or dns")),
        }
    }
}

/// One end as a filter names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// `namespace/pod`.
    Pod(String, String),
    /// `namespace/` (any pod of it).
    Namespace(String),
    /// An address range.
    Cidr(ipnet::IpNet),
    /// A DNS name the destination was learned for (`*.example.com` matches subdomains).
    Fqdn(String),
}

impl std::str::FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Peer::Cidr(net));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Peer::Cidr(ipnet::IpNet::from(ip)));
        }
        match s.split_once('/') {
            Some((ns, "")) => Ok(Peer::Namespace(ns.to_string())),
            Some((ns, pod)) if !ns.is_empty() => Ok(Peer::Pod(ns.to_string(), pod.to_string())),
            Some(_) => Err(format!(
                "{s:?}: expected NAMESPACE/POD, NAMESPACE/, a CIDR or a DNS name"
            )),
            None if s.contains('.') => Ok(Peer::Fqdn(s.trim_end_matches('.').to_lowercase())),
            None => Err(format!(
                "{s:?}: expected NAMESPACE/POD, NAMESPACE/ (a whole namespace), a CIDR or a DNS name"
            )),
        }
    }
}

/// Which flows to show; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Either end in one of these namespaces.
    pub namespaces: Vec<String>,
    /// Either end one of these pods (`namespace/name`, or a name in `namespaces`).
    pub pods: Vec<String>,
    /// The source.
    pub from: Vec<Peer>,
    /// The destination.
    pub to: Vec<Peer>,
    /// The destination port.
    pub port: Option<u16>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `OTHER`.
    pub protocol: Option<String>,
    /// The verdict.
    pub verdict: Option<Verdict>,
    /// The kind of event.
    pub flow_type: Option<FlowType>,
    /// HTTP requests whose path starts with this.
    pub http_path: Option<String>,
    /// HTTP requests with this method.
    pub http_method: Option<String>,
    /// Events at or after this time.
    pub since: Option<SystemTime>,
}

fn end(flow: &Value, which: &str) -> (Option<String>, Option<String>, Option<IpAddr>) {
    let e = &flow[which];
    (
        e["namespace"].as_str().map(str::to_string),
        e["pod"].as_str().map(str::to_string),
        e["ip"].as_str().and_then(|ip| ip.parse().ok()),
    )
}

/// The DNS names the destination was learned for.
fn names(flow: &Value) -> Vec<String> {
    let mut out: Vec<String> = ["egress", "ingress"]
        .iter()
        .filter_map(|s| flow[s]["names"].as_array())
        .flatten()
        .filter_map(|n| n.as_str().map(|n| n.trim_end_matches('.').to_lowercase()))
        .collect();
    if let Some(q) = flow["l7"]["dns"]["query"].as_str() {
        out.push(q.trim_end_matches('.').to_lowercase());
    }
    if let Some(h) = flow["l7"]["http"]["host"].as_str() {
        out.push(h.split(':').next().unwrap_or(h).to_lowercase());
    }
    out
}

fn peer_matches(peer: &Peer, flow: &Value, which: &str) -> bool {
    let (ns, pod, ip) = end(flow, which);
    match peer {
        Peer::Pod(n, p) => ns.as_deref() == Some(n) && pod.as_deref() == Some(p),
        Peer::Namespace(n) => ns.as_deref() == Some(n),
        Peer::Cidr(net) => ip.is_some_and(|ip| net.contains(&ip)),
        Peer::Fqdn(name) => {
            which == "destination"
                && names(flow).iter().any(|n| match name.strip_prefix("*.") {
                    Some(suffix) => n.ends_with(&format!(".{suffix}")),
                    None => n == name,
                })
        }
    }
}

/// The kind of a flow event.
pub fn flow_type(flow: &Value) -> FlowType {
    if flow["l7"]["http"].is_object() {
        FlowType::Http
    } else if flow["l7"]["dns"].is_object() {
        FlowType::Dns
    } else {
        FlowType::L3L4
    }
}

/// When it happened.
pub fn time(flow: &Value) -> Option<SystemTime> {
    flow["time"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

impl Filter {
    /// Whether a flow event passes.
    pub fn matches(&self, flow: &Value) -> bool {
        let ends = ["source", "destination"].map(|w| end(flow, w));
        if !self.namespaces.is_empty()
            && !ends
                .iter()
                .any(|(ns, _, _)| ns.as_ref().is_some_and(|n| self.namespaces.contains(n)))
        {
            return false;
        }
        if !self.pods.is_empty()
            && !ends.iter().any(|(ns, pod, _)| {
                let (Some(ns), Some(pod)) = (ns, pod) else {
                    return false;
                };
                self.pods.iter().any(|want| match want.split_once('/') {
                    Some((n, p)) => n == ns && p == pod,
                    None => {
                        want == pod && (self.namespaces.is_empty() || self.namespaces.contains(ns))
                    }
                })
            })
        {
            return false;
        }
        if !self.from.is_empty() && !self.from.iter().any(|p| peer_matches(p, flow, "source")) {
            return false;
        }
        if !self.to.is_empty() && !self.to.iter().any(|p| peer_matches(p, flow, "destination")) {
            return false;
        }
        if let Some(port) = self.port
            && flow["destination"]["port"].as_u64() != Some(u64::from(port))
        {
            return false;
        }
        if let Some(p) = &self.protocol
            && !flow["protocol"]
                .as_str()
                .is_some_and(|f| f.eq_ignore_ascii_case(p))
        {
            return false;
        }
        if let Some(v) = self.verdict
            && flow["verdict"].as_str() != Some(v.as_str())
        {
            return false;
        }
        if let Some(t) = self.flow_type
            && flow_type(flow) != t
        {
            return false;
        }
        let http = &flow["l7"]["http"];
        if let Some(path) = &self.http_path
            && !http["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(path.as_str()))
        {
            return false;
        }
        if let Some(method) = &self.http_method
            && !http["method"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        if let Some(since) = self.since
            && time(flow).is_none_or(|t| t < since)
        {
            return false;
        }
        true
    }
}

fn endpoint(flow: &Value, which: &str) -> String {
    let e = &flow[which];
    let port = e["port"].as_u64().unwrap_or(0);
    let at = match (e["namespace"].as_str(), e["pod"].as_str()) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => {
            let ip = e["ip"].as_str().unwrap_or("?");
            if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.to_string()
            }
        }
    };
    if port == 0 {
        at
    } else {
        format!("{at}:{port}")
    }
}

/// Why, in a few words: the deciding side's policy and rule, or the policies that isolate the
/// side that refused, or the sidecar's own reason.
pub fn why(flow: &Value) -> String {
    let verdict = flow["verdict"].as_str().unwrap_or("?");
    if let Some(r) = flow["reason"].as_str() {
        return r.to_string();
    }
    let side = |s: &str| &flow[s];
    let refused: Vec<&str> = ["egress", "ingress"]
        .into_iter()
        .filter(|s| side(s)["allowed"] == false)
        .collect();
    if verdict != "ALLOWED" && !refused.is_empty() {
        return refused
            .iter()
            .map(|s| {
                let by: Vec<&str> = side(s)["isolated_by"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let what = if *s == "egress" {
                    "the source's egress"
                } else {
                    "the destination's ingress"
                };
                let mut text = if by.is_empty() {
                    format!("{what}: {}", side(s)["reason"].as_str().unwrap_or("denied"))
                } else {
                    format!("no rule of {} allows {what}", by.join(", "))
                };
                if let Some(n) = side(s)["nearest"].as_str() {
                    text.push_str(&format!("; closest: {n}"));
                }
                text
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let allowed_by: Vec<String> = ["egress", "ingress"]
        .iter()
        .filter_map(|s| {
            let p = side(s)["policy"].as_str()?;
            Some(match side(s)["rule"].as_str() {
                Some(r) => format!("{p} {r}"),
                None => p.to_string(),
            })
        })
        .collect();
    if allowed_by.is_empty() {
        "no policy isolates either side".into()
    } else {
        format!("allowed by {}", allowed_by.join(" and "))
    }
}

/// What an L7 event adds: `GET /api 200`, `A example.com NOERROR`.
fn l7(flow: &Value) -> Option<String> {
    let http = &flow["l7"]["http"];
    if http.is_object() {
        return Some(format!(
            "{} {}{} {}",
            http["method"].as_str().unwrap_or("?"),
            http["host"]
                .as_str()
                .map(|h| format!("{h} "))
                .unwrap_or_default(),
            http["path"].as_str().unwrap_or("?"),
            http["status"]
        ));
    }
    let dns = &flow["l7"]["dns"];
    dns.is_object().then(|| {
        format!(
            "{} {} {}",
            dns["qtype"].as_str().unwrap_or("?"),
            dns["query"].as_str().unwrap_or("?"),
            dns["rcode"].as_str().unwrap_or("?")
        )
    })
}

/// One line for people: `time src -> dst PROTO VERDICT (why) [seen at egress]`.
pub fn compact(flow: &Value) -> String {
    let time = flow["time"]
        .as_str()
        .and_then(|t| t.split('T').nth(1))
        .unwrap_or("?")
        .trim_end_matches('Z');
    let mut line = format!(
        "{time} {} -> {} {} {}",
        endpoint(flow, "source"),
        endpoint(flow, "destination"),
        flow["protocol"].as_str().unwrap_or("?"),
        flow["verdict"].as_str().unwrap_or("?"),
    );
    if let Some(l7) = l7(flow) {
        line.push_str(&format!(" {l7}"));
    }
    line.push_str(&format!(" ({})", why(flow)));
    if let Some(d) = flow["direction"].as_str() {
        line.push_str(&format!(" [{d}]"));
    }
    printable(&line)
}

/// A line safe for a terminal: an app chooses what its requests and DNS queries carry (paths,
/// names), and a control character in them (an escape sequence) must not reach the operator's
/// terminal as one.
fn printable(line: &str) -> String {
    line.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// The header of `-o table`.
pub const TABLE_HEADER: &str = "TIME                      SOURCE                               DESTINATION                          PROTO  VERDICT  TYPE   SEEN AT  SUMMARY";

/// One row of `-o table`.
pub fn table_row(flow: &Value) -> String {
    let t = match flow_type(flow) {
        FlowType::L3L4 => "l3l4",
        FlowType::Http => "http",
        FlowType::Dns => "dns",
    };
    printable(&format!(
        "{:<25} {:<36} {:<36} {:<6} {:<8} {:<6} {:<8} {}",
        flow["time"].as_str().unwrap_or("?"),
        endpoint(flow, "source"),
        endpoint(flow, "destination"),
        flow["protocol"].as_str().unwrap_or("?"),
        flow["verdict"].as_str().unwrap_or("?"),
        t,
        flow["direction"].as_str().unwrap_or("?"),
        l7(flow)
            .map(|l| format!("{l}; {}", why(flow)))
            .unwrap_or_else(|| why(flow))
    ))
}

/// Keeps the last `n` lines that passed (for `--last N`).
#[derive(Debug)]
pub struct Last {
    n: usize,
    kept: VecDeque<Value>,
}

impl Last {
    /// Keeps at most `n`.
    pub fn new(n: usize) -> Self {
        Last {
            n,
            kept: VecDeque::with_capacity(n.min(4096)),
        }
    }

    /// Offers one.
    pub fn push(&mut self, flow: Value) {
        if self.n == 0 {
            return;
        }
        if self.kept.len() == self.n {
            self.kept.pop_front();
        }
        self.kept.push_back(flow);
    }

    /// What was kept, oldest first.
    pub fn take(self) -> Vec<Value> {
        self.kept.into()
    }
}

/// Pod names by address, to name the ends a sidecar could only give by address (a peer that
/// is not in its policy view).
#[derive(Debug, Clone, Default)]
pub struct PodNames(HashMap<IpAddr, (String, String)>);

impl PodNames {
    /// From Pod objects (`status.podIP`, `status.podIPs`); host-network pods are left out (their
    /// address is the node's).
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut map = HashMap::new();
        for p in pods {
            // Finished pods keep their address in status, which a running pod may have now.
            let finished = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if p["kind"].as_str().is_some_and(|k| k != "Pod")
                || p["spec"]["hostNetwork"].as_bool() == Some(true)
                || finished
            {
                continue;
            }
            let (Some(ns), Some(name)) = (
                p["metadata"]["namespace"].as_str(),
                p["metadata"]["name"].as_str(),
            ) else {
                continue;
            };
            let ips = p["status"]["podIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str())
                .chain(p["status"]["podIP"].as_str());
            for ip in ips.filter_map(|i| i.parse::<IpAddr>().ok()) {
                map.insert(ip, (ns.to_string(), name.to_string()));
            }
        }
        PodNames(map)
    }

    /// Names the ends of `flow` given only by address.
    pub fn fill(&self, flow: &mut Value) {
        for end in ["source", "destination"] {
            let e = &mut flow[end];
            if e["pod"].is_string() {
                continue;
            }
            let Some(ip) = e["ip"].as_str().and_then(|i| i.parse::<IpAddr>().ok()) else {
                continue;
            };
            if let Some((ns, pod)) = self.0.get(&ip) {
                e["namespace"] = Value::from(ns.as_str());
                e["pod"] = Value::from(pod.as_str());
            }
        }
    }
}

/// Parses one log line: a flow event, or `None` (other log lines, such as the sidecar's own
/// messages when its logs are mixed in).
pub fn parse(line: &str) -> Option<Value> {
    let line = line.trim();
    // `kubectl logs --timestamps` and the API server with timestamps put one first.
    let json = match line.find('{') {
        Some(0) => line,
        Some(i) if !line[..i].contains('"') => &line[i..],
        _ => return None,
    };
    let v: Value = serde_json::from_str(json).ok()?;
    (v["verdict"].is_string() && v["source"].is_object() && v["destination"].is_object())
        .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn denied() -> Value {
        json!({"time":"2026-11-22T06:35:52.277Z","verdict":"DENIED","direction":"egress","protocol":"TCP",
            "source":{"namespace":"t","pod":"client","ip":"10.200.0.1","port":47736},
            "destination":{"namespace":"t","pod":"server","ip":"10.200.0.2","port":9090},
            "egress":{"allowed":false,"reason":"no-rule-matched","isolated_by":["NetworkPolicy t/client-egress"]},
            "ingress":{"allowed":true,"reason":"not-isolated"},"bytes_sent":0,"bytes_received":0,"duration_ms":0.05})
    }

    fn http() -> Value {
        json!({"time":"2026-11-22T06:36:00.000Z","verdict":"ALLOWED","direction":"ingress","protocol":"TCP",
            "source":{"namespace":"shop","pod":"web","ip":"10.1.0.10","port":50000},
            "destination":{"namespace":"shop","pod":"api","ip":"10.1.0.11","port":8080},
            "egress":{"allowed":true,"reason":"not-isolated"},
            "ingress":{"allowed":true,"reason":"rule","policy":"PodwallPolicy shop/api","rule":"spec.ingress[0]"},
            "l7":{"http":{"method":"GET","host":"api","path":"/api/v1/items","status":200}},
            "bytes_sent":0,"bytes_received":0,"duration_ms":1.0})
    }

    fn dns() -> Value {
        json!({"time":"2026-11-22T06:37:00.000Z","verdict":"ALLOWED","direction":"egress","protocol":"UDP",
            "source":{"namespace":"ci","pod":"runner","ip":"10.3.0.5","port":40000},
            "destination":{"ip":"10.96.0.10","port":53},
            "egress":{"allowed":true,"reason":"rule","policy":"CiliumNetworkPolicy ci/dns","rule":"spec.egress[0]"},
            "l7":{"dns":{"query":"api.github.com.","qtype":"A","rcode":"NOERROR","ips":["140.82.112.5"],"reason":"dns-rule"}},
            "bytes_sent":0,"bytes_received":0,"duration_ms":0.3})
    }

    #[test]
    fn a_flow_reads_as_one_line_naming_both_ends_the_verdict_and_why() {
        assert_eq!(
            compact(&denied()),
            "06:35:52.277 t/client:47736 -> t/server:9090 TCP DENIED (no rule of NetworkPolicy t/client-egress allows the source's egress) [egress]"
        );
        assert_eq!(
            compact(&http()),
            "06:36:00.000 shop/web:50000 -> shop/api:8080 TCP ALLOWED GET api /api/v1/items 200 (allowed by PodwallPolicy shop/api spec.ingress[0]) [ingress]"
        );
        assert!(compact(&dns()).contains("-> 10.96.0.10:53 UDP ALLOWED A api.github.com. NOERROR"));
        assert!(table_row(&denied()).contains("DENIED"));
    }

    #[test]
    fn filters_select_by_ends_ports_verdicts_types_and_l7_fields() {
        let all = [denied(), http(), dns()];
        let pass = |f: &Filter| -> Vec<usize> {
            all.iter()
                .enumerate()
                .filter(|(_, v)| f.matches(v))
                .map(|(i, _)| i)
                .collect()
        };
        assert_eq!(pass(&Filter::default()), [0, 1, 2]);
        let f = |build: fn(&mut Filter)| {
            let mut f = Filter::default();
            build(&mut f);
            f
        };
        assert_eq!(pass(&f(|f| f.namespaces = vec!["shop".into()])), [1]);
        assert_eq!(pass(&f(|f| f.pods = vec!["t/server".into()])), [0]);
        assert_eq!(
            pass(&f(|f| f.from = vec!["t/".parse().expect("peer")])),
            [0]
        );
        assert_eq!(
            pass(&f(|f| f.to = vec!["10.96.0.0/12".parse().expect("peer")])),
            [2]
        );
        assert_eq!(
            pass(&f(|f| f.to = vec!["api.github.com".parse().expect("peer")])),
            [2]
        );
        assert_eq!(
            pass(&f(|f| f.to = vec!["*.github.com".parse().expect("peer")])),
            [2]
        );
        assert_eq!(pass(&f(|f| f.port = Some(9090))), [0]);
        assert_eq!(pass(&f(|f| f.protocol = Some("udp".into()))), [2]);
        assert_eq!(pass(&f(|f| f.verdict = Some(Verdict::Denied))), [0]);
        assert_eq!(pass(&f(|f| f.flow_type = Some(FlowType::Http))), [1]);
        assert_eq!(pass(&f(|f| f.flow_type = Some(FlowType::L3L4))), [0]);
        assert_eq!(pass(&f(|f| f.http_path = Some("/api/".into()))), [1]);
        assert_eq!(
            pass(&f(|f| f.http_method = Some("post".into()))),
            Vec::<usize>::new()
        );
        let since = Filter {
            since: Some(humantime::parse_rfc3339("2026-11-22T06:36:30Z").expect("time")),
            ..Filter::default()
        };
        assert_eq!(pass(&since), [2]);
        assert!("nothing".parse::<Peer>().is_err());
    }

    #[test]
    fn what_an_app_put_in_a_path_or_name_cannot_drive_the_operators_terminal() {
        let mut f = http();
        f["l7"]["http"]["path"] = json!("/x\u{1b}[2J\u{1b}]0;owned\u{7}");
        for line in [compact(&f), table_row(&f)] {
            assert!(!line.chars().any(char::is_control), "{line:?}");
            assert!(line.contains("\\u{1b}[2J"), "shown, escaped: {line}");
        }
    }

    #[test]
    fn an_end_given_by_address_is_named_from_the_pods() {
        let names = PodNames::from_pods(&[
            json!({"kind": "Pod", "metadata": {"namespace": "t", "name": "client"},
                "status": {"podIP": "10.200.0.1"}}),
            json!({"kind": "Pod", "metadata": {"namespace": "kube-system", "name": "node-agent"},
                "spec": {"hostNetwork": true}, "status": {"podIP": "10.200.0.2"}}),
        ]);
        let mut f = denied();
        f["source"] = json!({"ip": "10.200.0.1", "port": 1234});
        f["destination"] = json!({"ip": "10.200.0.2", "port": 80});
        names.fill(&mut f);
        assert_eq!(f["source"]["pod"], "client");
        assert!(
            f["destination"].get("pod").is_none(),
            "a host-network address is the node's"
        );
    }

    #[test]
    fn only_flow_events_are_read_from_a_log_with_or_without_timestamps() {
        let line = denied().to_string();
        assert!(parse(&line).is_some());
        assert!(parse(&format!("2026-11-22T06:35:52.300Z {line}")).is_some());
        assert!(parse("{\"level\":\"INFO\",\"message\":\"feed connected\"}").is_none());
        assert!(parse("podwall: something").is_none());
        let mut last = Last::new(2);
        for i in 0..5 {
            last.push(json!(i));
        }
        assert_eq!(last.take(), [json!(3), json!(4)]);
    }
}
