//! A pod's compiled rule table for one direction.
//!
//! The ports of every rule that applies are cut into disjoint segments per protocol; each segment
//! holds the rules that cover it and the union of their peers. A query is a binary search for the
//! port's segment, then a bit test (identities) or a binary search (addresses) on the union:
//! its cost depends on the pod's own rules on that port, never on the number of policies or pods
//! in the cluster. Only for an allowed connection are the segment's rules scanned, in order, to
//! name the first one that allows it.

use fixedbitset::FixedBitSet;

use super::ipset::IpSet;
use super::rule::{CompiledPeer, CompiledRule, PeerView};
use crate::model::{Entity, Protocol};
use crate::state::PolicyId;
use crate::verdict::FqdnId;

/// A rule's index in the engine's rule list; lower ids come from policies earlier in the
/// canonical order, so "the first rule that allows" never depends on input order.
pub(crate) type RuleId = u32;

/// The union of several rules' peers, and the rules in order.
#[derive(Debug, Default)]
pub(crate) struct PeerMatcher {
    pub(crate) rules: Vec<RuleId>,
    any_peer: bool,
    identities: FixedBitSet,
    addresses: IpSet,
    external: IpSet,
    entities: Vec<Entity>,
    /// DNS name selectors (sorted).
    fqdn: Vec<FqdnId>,
    /// Some rule here carries HTTP rules.
    pub(crate) has_http: bool,
    /// Some rule here carries DNS rules.
    pub(crate) has_dns: bool,
}

impl PeerMatcher {
    fn new(rules: Vec<RuleId>, all: &[CompiledRule], identities: usize) -> Self {
        let mut m = PeerMatcher {
            identities: FixedBitSet::with_capacity(identities),
            ..PeerMatcher::default()
        };
        for &id in &rules {
            let rule = &all[id as usize];
            m.any_peer |= rule.all_peers;
            m.has_http |= rule.http;
            m.has_dns |= rule.dns.is_some();
            for peer in &rule.peers {
                match peer {
                    CompiledPeer::Identities(set) => m.identities.union_with(set),
                    CompiledPeer::Addresses(set) => m.addresses.merge(set),
                    CompiledPeer::ExternalAddresses(set) => m.external.merge(set),
                    CompiledPeer::Entity(e) => {
                        if !m.entities.contains(e) {
                            m.entities.push(*e);
                        }
                    }
                    CompiledPeer::Fqdn(id) => m.fqdn.push(*id),
                }
            }
        }
        m.fqdn.sort_unstable();
        m.fqdn.dedup();
        m.rules = rules;
        m
    }

    pub(crate) fn admits(&self, peer: &PeerView<'_>) -> bool {
        self.any_peer
            || peer
                .identity
                .is_some_and(|id| self.identities.contains(id as usize))
            || peer.ip.is_some_and(|ip| self.addresses.contains(ip))
            || (peer.is_world() && peer.ip.is_some_and(|ip| self.external.contains(ip)))
            || self.entities.iter().any(|e| peer.in_entity(*e))
            || (peer.is_world()
                && !self.fqdn.is_empty()
                && peer
                    .names
                    .iter()
                    .any(|n| self.fqdn.binary_search(n).is_ok()))
    }

    /// The DNS name selectors of this port's toFQDNs rules.
    pub(crate) fn fqdn(&self) -> &[FqdnId] {
        &self.fqdn
    }

    /// The first rule that allows the peer.
    pub(crate) fn first_allowing(
        &self,
        peer: &PeerView<'_>,
        all: &[CompiledRule],
    ) -> Option<RuleId> {
        if !self.admits(peer) {
            return None;
        }
        self.rules
            .iter()
            .copied()
            .find(|&id| all[id as usize].matching_peer(peer).is_some())
    }

    /// Every rule that allows the peer, in order.
    pub(crate) fn all_allowing<'a>(
        &'a self,
        peer: &'a PeerView<'a>,
        all: &'a [CompiledRule],
    ) -> impl Iterator<Item = RuleId> + 'a {
        self.rules
            .iter()
            .copied()
            .filter(move |&id| all[id as usize].matching_peer(peer).is_some())
    }
}

/// Ports `lo..=hi` of one protocol and who may use them.
#[derive(Debug)]
pub(crate) struct Segment {
    lo: u16,
    hi: u16,
    matcher: PeerMatcher,
}

/// A named port in an egress rule: resolved per connection against the destination pod.
#[derive(Debug)]
pub(crate) struct NamedPort {
    pub(crate) protocol: Protocol,
    pub(crate) name: String,
    pub(crate) matcher: PeerMatcher,
}

/// Where a rule applies, before segmentation.
#[derive(Debug, Clone)]
pub(crate) enum PortEntry {
    Range {
        protocol: Protocol,
        lo: u16,
        hi: u16,
        rule: RuleId,
    },
    Named {
        protocol: Protocol,
        name: String,
        rule: RuleId,
    },
}

/// A pod's rules for one direction in which it is isolated.
#[derive(Debug)]
pub(crate) struct DirectionTable {
    /// The policies that isolate the pod in this direction.
    pub(crate) isolated_by: Vec<PolicyId>,
    segments: [Vec<Segment>; Protocol::COUNT],
    named: Vec<NamedPort>,
}

impl DirectionTable {
    pub(crate) fn build(
        isolated_by: Vec<PolicyId>,
        entries: Vec<PortEntry>,
        rules: &[CompiledRule],
        identities: usize,
    ) -> Self {
        let mut ranges: [Vec<(u16, u16, RuleId)>; Protocol::COUNT] = Default::default();
        let mut named: Vec<(Protocol, String, Vec<RuleId>)> = Vec::new();
        for entry in entries {
            match entry {
                PortEntry::Range {
                    protocol,
                    lo,
                    hi,
                    rule,
                } => ranges[protocol.index()].push((lo, hi, rule)),
                PortEntry::Named {
                    protocol,
                    name,
                    rule,
                } => {
                    match named
                        .iter_mut()
                        .find(|(p, n, _)| *p == protocol && *n == name)
                    {
                        Some((_, _, ids)) => ids.push(rule),
                        None => named.push((protocol, name, vec![rule])),
                    }
                }
            }
        }
        let segments = ranges.map(|r| segment(r, rules, identities));
        let named = named
            .into_iter()
            .map(|(protocol, name, mut ids)| {
                ids.sort_unstable();
                ids.dedup();
                NamedPort {
                    protocol,
                    name,
                    matcher: PeerMatcher::new(ids, rules, identities),
                }
            })
            .collect();
        DirectionTable {
            isolated_by,
            segments,
            named,
        }
    }

    /// The matcher for a numeric port.
    pub(crate) fn port(&self, protocol: Protocol, port: u16) -> Option<&PeerMatcher> {
        let segs = &self.segments[protocol.index()];
        let i = segs.partition_point(|s| s.lo <= port);
        (i > 0 && segs[i - 1].hi >= port).then(|| &segs[i - 1].matcher)
    }

    /// The matcher for a named port.
    pub(crate) fn named(&self, protocol: Protocol, name: &str) -> Option<&PeerMatcher> {
        self.named
            .iter()
            .find(|n| n.protocol == protocol && n.name == name)
            .map(|n| &n.matcher)
    }

    /// Every toFQDNs selector of the table's rules (unsorted, with repeats).
    pub(crate) fn fqdn(&self) -> Vec<FqdnId> {
        self.segments
            .iter()
            .flatten()
            .map(|s| &s.matcher)
            .chain(self.named.iter().map(|n| &n.matcher))
            .flat_map(|m| m.fqdn().iter().copied())
            .collect()
    }

    /// Every rule of the table (sorted, once each).
    pub(crate) fn rule_ids(&self) -> Vec<RuleId> {
        let mut ids: Vec<RuleId> = self
            .segments
            .iter()
            .flatten()
            .map(|s| &s.matcher)
            .chain(self.named.iter().map(|n| &n.matcher))
            .flat_map(|m| m.rules.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether any named-port rule is present (egress only).
    pub(crate) fn has_named(&self) -> bool {
        !self.named.is_empty()
    }
}

/// Cuts possibly overlapping port ranges into disjoint segments, merging neighbours that carry
/// the same rules.
fn segment(
    entries: Vec<(u16, u16, RuleId)>,
    rules: &[CompiledRule],
    identities: usize,
) -> Vec<Segment> {
    if entries.is_empty() {
        return Vec::new();
    }
    // Boundaries as u32 so that 65535 + 1 does not overflow.
    let mut cuts: Vec<u32> = entries
        .iter()
        .flat_map(|&(lo, hi, _)| [u32::from(lo), u32::from(hi) + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces: Vec<(u32, u32, Vec<RuleId>)> = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let mut ids: Vec<RuleId> = entries
            .iter()
            .filter(|&&(l, h, _)| u32::from(l) <= lo && hi <= u32::from(h))
            .map(|&(_, _, r)| r)
            .collect();
        if ids.is_empty() {
            continue;
        }
        ids.sort_unstable();
        ids.dedup();
        match pieces.last_mut() {
            Some(last) if last.1 + 1 == lo && last.2 == ids => last.1 = hi,
            _ => pieces.push((lo, hi, ids)),
        }
    }
    pieces
        .into_iter()
        .map(|(lo, hi, ids)| Segment {
            lo: lo as u16,
            hi: hi as u16,
            matcher: PeerMatcher::new(ids, rules, identities),
        })
        .collect()
}
