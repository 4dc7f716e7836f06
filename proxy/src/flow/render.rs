//! Flow events as JSON lines: each event rendered with the names its policy snapshot gives
//! its pods, policies and rules, and the nearest miss of a denial.

use super::*;

/// The JSON line of a [`FlowEvent`] (or of a [`RequestFlow`]), with every id named from the
/// event's policy snapshot: built on the writer thread, borrowing, so naming allocates nothing
/// but a denial's list of isolating policies.
#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(serialize_with = "rfc3339")]
    time: SystemTime,
    verdict: FlowVerdict,
    direction: Direction,
    protocol: Protocol,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_protocol: Option<u8>,
    source: PeerLine<'a>,
    destination: PeerLine<'a>,
    egress: Option<SideLine<'a>>,
    ingress: Option<SideLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    bytes_sent: u64,
    bytes_received: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    l7: Option<L7Line<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a FlowService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<FlowPhase>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum L7Line<'a> {
    Event(&'a L7Event),
    Request { http: &'a HttpEvent },
}

#[derive(Serialize)]
struct PeerLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    ip: IpAddr,
    port: u16,
}

#[derive(Serialize)]
struct SideLine<'a> {
    allowed: bool,
    /// Why (see `podwall analyze check`): `rule`, `not-isolated`, `not-a-pod`, ...
    reason: &'static str,
    /// The policy whose rule allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Named<'a>>,
    /// That rule (`spec.egress[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    /// A ClusterNetworkPolicy's tier, priority, and the rule's action and `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<podwall_policy::Tier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<podwall_policy::Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_name: Option<&'a str>,
    /// For a denial: the policies that isolate the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    isolated_by: Vec<Named<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    names: &'a [Arc<str>],
    /// For a denial: the rule closest to allowing it, and what differed.
    #[serde(skip_serializing_if = "Option::is_none")]
    nearest: Option<String>,
}

/// A policy's name, written as its `Display` ("NetworkPolicy shop/api-allow").
struct Named<'a>(&'a PolicyName);

impl Serialize for Named<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// The rule closest to allowing a refused side, in words: judged again here, on the writer
/// thread, and only for denials.
fn nearest(engine: Option<&Engine>, e: &FlowEvent, side: &FlowSide) -> Option<String> {
    let engine = engine?;
    if side.decision != Decision::NoRuleMatched {
        return None;
    }
    let end = |p: &FlowPeer| match p.pod {
        Some(id) => podwall_policy::Endpoint::Pod(id),
        None => podwall_policy::Endpoint::Ip(p.ip),
    };
    let query = podwall_policy::Query {
        src: end(&e.source),
        dst: end(&e.destination),
        protocol: e.protocol,
        port: e.destination.port,
    };
    // An app repeating one denied connection costs one explanation per policy, not one per
    // connection: remembered per snapshot (by address) and query, a bounded number of them.
    let key = (
        e.snapshot.as_ref().map_or(0, |s| s.generation as usize),
        query,
        side.direction,
    );
    NEAREST.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(hit) = cache.get(&key) {
            return hit.clone();
        }
        let verdict = engine.verdict(&query);
        let text = engine
            .nearest_miss(&verdict, side.direction)
            .map(|miss| format!("{} {}: {}", miss.rule.policy, miss.rule.field, miss.differs));
        if cache.len() >= NEAREST_CACHED {
            cache.clear();
        }
        cache.insert(key, text.clone());
        text
    })
}

/// Explanations kept by the writer thread.
const NEAREST_CACHED: usize = 1024;

type NearestKey = (usize, podwall_policy::Query, podwall_policy::Direction);

thread_local! {
    /// The writer thread's explanations of recent denials.
    static NEAREST: std::cell::RefCell<std::collections::HashMap<NearestKey, Option<String>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl<'a> EventLine<'a> {
    fn of(e: &'a FlowEvent) -> Self {
        let engine = e.snapshot.as_deref().map(|p| &p.engine);
        let side = |s: &'a FlowSide| {
            let mut line = SideLine::of(engine, s);
            if e.verdict != FlowVerdict::Allowed {
                line.nearest = nearest(engine, e, s);
            }
            line
        };
        EventLine {
            time: e.time,
            verdict: e.verdict,
            direction: e.direction,
            protocol: e.protocol,
            ip_protocol: e.ip_protocol,
            source: PeerLine::of(engine, &e.source),
            destination: PeerLine::of(engine, &e.destination),
            egress: e.egress.as_ref().map(side),
            ingress: e.ingress.as_ref().map(side),
            reason: e.reason.as_deref(),
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            duration_ms: e.duration_ms,
            error: e.error.as_deref(),
            l7: e.l7.as_deref().map(L7Line::Event),
            service: e.service.as_ref(),
            phase: e.phase,
        }
    }
}

impl<'a> PeerLine<'a> {
    fn of(engine: Option<&'a Engine>, p: &FlowPeer) -> Self {
        let pod = engine.zip(p.pod).map(|(e, id)| e.state().pod(id));
        PeerLine {
            namespace: pod.map(|p| p.namespace.as_str()),
            pod: pod.map(|p| p.name.as_str()),
            ip: p.ip,
            port: p.port,
        }
    }
}

impl<'a> SideLine<'a> {
    fn of(engine: Option<&'a Engine>, side: &'a FlowSide) -> Self {
        let (reason, rule) = match side.decision {
            Decision::NotAPod => ("not-a-pod", None),
            Decision::HostNetwork => ("host-network", None),
            Decision::NotIsolated => ("not-isolated", None),
            Decision::SamePod => ("same-pod", None),
            Decision::OwnNode => ("own-node", None),
            Decision::Rule(r) => ("rule", Some(r)),
            Decision::NoRuleMatched => ("no-rule-matched", None),
            Decision::ClusterAccept(r) => ("cluster-accept", Some(r)),
            Decision::ClusterDeny(r) => ("cluster-deny", Some(r)),
        };
        let rule = engine
            .zip(rule)
            .map(|(e, r)| (e.state().policy(r.policy), r));
        let isolated_by = match (engine, side.pod) {
            (Some(e), Some(pod)) if side.decision == Decision::NoRuleMatched => e
                .isolated_by(pod, side.direction)
                .iter()
                .map(|id| Named(&e.state().policy(*id).name))
                .collect(),
            _ => Vec::new(),
        };
        let spec = rule.and_then(|(p, r)| {
            p.rules(r.direction)
                .unwrap_or_default()
                .get(r.index as usize)
        });
        // Only the policy and the rule's place: `podwall analyze check` explains it in full.
        SideLine {
            allowed: side.decision.allows(),
            reason,
            policy: rule.map(|(p, _)| Named(&p.name)),
            rule: spec.map(|rule| rule.field.as_str()),
            tier: rule.and_then(|(p, _)| p.cluster).map(|c| c.tier),
            priority: rule.and_then(|(p, _)| p.cluster).map(|c| c.priority),
            action: spec.and_then(|rule| rule.action),
            rule_name: spec.and_then(|rule| rule.name.as_deref()),
            isolated_by,
            names: &side.names,
            nearest: None,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl Serialize for FlowEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventLine::of(self).serialize(s)
    }
}

impl Serialize for RequestFlow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventLine {
            time: self.time,
            verdict: self.verdict,
            bytes_sent: 0,
            bytes_received: 0,
            duration_ms: self.duration.as_secs_f64() * 1000.0,
            error: self.error.as_deref(),
            l7: Some(L7Line::Request { http: &self.http }),
            ..EventLine::of(&self.connection)
        }
        .serialize(s)
    }
}
