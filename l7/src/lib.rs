//! HTTP inspection for podwall's L7 rules (Cilium's `toPorts[].rules.http`).
//!
//! [`path`] normalises request paths so that what rules check is what the application gets;
//! [`rules`] compiles a pod's HTTP rules into one automaton per field and checks requests.
//! The sidecar serves connections whose peer and port carry HTTP rules with hyper and asks
//! these for every request; `podwall analyze check --http-*` asks the same code offline.
//!
//! It must never know about iptables or where connections come from.

pub use http;

pub mod path;
pub mod request;
pub mod rules;
pub mod serve;

pub use path::{PathError, normalize};
pub use rules::{HeaderAction, HttpMatch, HttpPolicy, RequestView};

use podwall_policy::{Direction, Engine, HttpRule, PodId, RuleRef};

/// Every HTTP rule of the policies that select `pod`, in either direction, with its rule.
pub fn pod_http_rules(engine: &Engine, pod: PodId) -> Vec<(RuleRef, &[HttpRule])> {
    let state = engine.state();
    let mut out = Vec::new();
    for pid in engine.policies_selecting(pod) {
        let policy = state.policy(pid);
        for direction in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in policy
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                if let Some(http) = &rule.http {
                    out.push((
                        RuleRef {
                            policy: pid,
                            direction,
                            index: i as u32,
                        },
                        http.as_slice(),
                    ));
                }
            }
        }
    }
    out
}

/// One side's HTTP decision for a request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpSide {
    /// Whether HTTP rules apply on this side at all.
    pub enforced: bool,
    /// Whether the request passes this side.
    pub allowed: bool,
    /// The policy whose HTTP rule allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// That rule (`spec.ingress[0].toPorts[0].rules.http[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The entry that matched, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<HttpRule>,
    /// The rules that could have allowed it, when none did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}

/// An HTTP request judged on both sides of an allowed connection.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpExplanation {
    /// The method.
    pub method: String,
    /// The path as the rules saw it (normalised), or as given when it was refused.
    pub path: String,
    /// The host, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Whether the request reaches the application.
    pub allowed: bool,
    /// What the client gets instead: 403 (denied by rules) or 400 (malformed path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the path was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The source's egress HTTP rules.
    pub egress: HttpSide,
    /// The destination's ingress HTTP rules.
    pub ingress: HttpSide,
}

/// A request to judge offline.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// The host, if any.
    pub host: Option<String>,
    /// The headers.
    pub headers: http::HeaderMap,
}

/// Judges a request on a connection the engine allowed at L4: each side whose HTTP rules apply
/// must allow it. Fails only if the rules do not compile (they were validated when loaded).
pub fn explain_request(
    engine: &Engine,
    verdict: &podwall_policy::Verdict,
    req: &Request,
) -> Result<HttpExplanation, regex::Error> {
    // Admitted as the sidecar admits it: `host` is the request's Host header.
    let mut headers = req.headers.clone();
    if let Some(host) = &req.host
        && let Ok(value) = http::HeaderValue::from_bytes(host.as_bytes())
    {
        headers.append(http::header::HOST, value);
    }
    let authority = req
        .target
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_string()));
    let admitted = request::admit(&req.target, authority.as_deref(), &headers);
    let path = admitted
        .as_ref()
        .map(|a| a.path.clone())
        .map_err(Clone::clone);
    let host = admitted
        .as_ref()
        .ok()
        .and_then(|a| a.host)
        .map(str::to_string)
        .or_else(|| req.host.clone());
    let mut out = HttpExplanation {
        method: req.method.clone(),
        path: path
            .as_deref()
            .map_or_else(|_| req.target.clone(), str::to_string),
        host: host.clone(),
        allowed: false,
        status: None,
        error: None,
        egress: unenforced(),
        ingress: unenforced(),
    };
    for (side, slot) in [
        (&verdict.egress, &mut out.egress),
        (&verdict.ingress, &mut out.ingress),
    ] {
        let (Some(rules), Some(pod)) = (&side.http, side.pod) else {
            continue;
        };
        slot.enforced = true;
        slot.allowed = false;
        let Ok(path) = &path else {
            continue;
        };
        let policy = HttpPolicy::compile(&pod_http_rules(engine, pod))?;
        let view = RequestView {
            method: &req.method,
            path,
            host: host.as_deref(),
            headers: &headers,
        };
        match policy.check(&view, &policy.mask(rules)) {
            Some(m) => {
                let info = engine.rule_info(m.rule, None);
                let spec = &engine
                    .state()
                    .policy(m.rule.policy)
                    .rules(m.rule.direction)
                    .unwrap_or_default()[m.rule.index as usize];
                slot.allowed = true;
                slot.policy = Some(info.policy);
                slot.rule = Some(format!("{}.rules.http[{}]", info.field, m.entry));
                slot.matched = spec.http.as_ref().and_then(|h| h.get(m.entry)).cloned();
            }
            None => {
                slot.candidates = rules
                    .iter()
                    .map(|r| {
                        let info = engine.rule_info(*r, None);
                        format!("{} {}", info.policy, info.field)
                    })
                    .collect();
            }
        }
    }
    if let Err(e) = &path {
        out.status = Some(400);
        out.error = Some(e.to_string());
        return Ok(out);
    }
    out.allowed = (!out.egress.enforced || out.egress.allowed)
        && (!out.ingress.enforced || out.ingress.allowed);
    if !out.allowed {
        out.status = Some(403);
    }
    Ok(out)
}

fn unenforced() -> HttpSide {
    HttpSide {
        enforced: false,
        allowed: true,
        policy: None,
        rule: None,
        matched: None,
        candidates: Vec::new(),
    }
}

impl std::fmt::Display for HttpExplanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self
            .host
            .as_deref()
            .map(|h| format!(" (host {h})"))
            .unwrap_or_default();
        match (self.allowed, self.status) {
            (true, _) => writeln!(f, "\nHTTP {} {}{host}: ALLOWED", self.method, self.path)?,
            (false, Some(400)) => writeln!(
                f,
                "\nHTTP {} {}{host}: REFUSED with 400 ({})",
                self.method,
                self.path,
                self.error.as_deref().unwrap_or("malformed")
            )?,
            (false, _) => writeln!(
                f,
                "\nHTTP {} {}{host}: DENIED, the client gets 403 Access denied",
                self.method, self.path
            )?,
        }
        for (name, side) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            if !side.enforced {
                writeln!(f, "  {name}: no HTTP rules apply")?;
            } else if side.allowed {
                writeln!(
                    f,
                    "  {name}: allowed by {} {}",
                    side.policy.as_deref().unwrap_or("?"),
                    side.rule.as_deref().unwrap_or("?")
                )?;
            } else {
                writeln!(
                    f,
                    "  {name}: no HTTP rule matches; rules that apply: {}",
                    side.candidates.join("; ")
                )?;
            }
        }
        Ok(())
    }
}
