//! The compiled policy: built once from a [`ClusterState`], then asked for verdicts.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::compile::identity::Identities;
use crate::compile::rule::{CompiledRule, FqdnTable, PeerView};
use crate::compile::table::{DirectionTable, PeerMatcher, PortEntry, RuleId};
use crate::model::{
    Action, ContainerPort, Direction, FqdnSelector, Pod, PortMatch, PortSpec, Protocol, Tier,
};
use crate::state::{ClusterState, PodId, PolicyId};
use crate::verdict::{Decision, Endpoint, FqdnId, Query, RuleRef, SideVerdict, Verdict};

/// Every pod's rule tables, compiled from a cluster state.
///
/// Compiling evaluates each selector once per identity (namespace and labels), not per pod, and
/// shares one table between pods selected by the same policies. A verdict then costs a few
/// lookups in the two pods' tables, whatever the number of policies and pods.
#[derive(Debug)]
pub struct Engine {
    state: ClusterState,
    identities: Identities,
    rules: Vec<CompiledRule>,
    /// Per policy, the ids of its ingress and of its egress rules.
    policy_rules: Vec<[Range<RuleId>; 2]>,
    /// Per pod, the ingress and egress tables (`None`: not isolated in that direction).
    tables: Vec<[Option<Arc<DirectionTable>>; 2]>,
    /// Per pod, per tier (Admin, Baseline), the ingress and egress tables of the
    /// ClusterNetworkPolicies whose subject it is (`None`: none with rules that way). Their rule
    /// ids follow precedence (priority, then name, then rule order), so the first rule a
    /// connection matches is the lowest id.
    cluster_tables: Vec<[[Option<Arc<DirectionTable>>; 2]; 2]>,
    by_ip: HashMap<IpAddr, PodId>,
    /// Every node address (pods' host addresses): what Cilium's `host`, `remote-node` and
    /// `cluster` entities mean.
    nodes: HashSet<IpAddr>,
    /// Every DNS name selector (toFQDNs and DNS rules), each once.
    fqdn: FqdnTable,
}

/// The directions in which policy `pid` has rules for pods of identity `ident` (none when it
/// does not select them).
fn selected_directions<'a>(
    state: &'a ClusterState,
    pid: PolicyId,
    ident: &crate::compile::identity::Identity,
) -> impl Iterator<Item = Direction> + 'a {
    let policy = state.policy(pid);
    let ns_labels = &state.namespaces[ident.namespace].labels;
    let selects = policy.pod_selector.matches(&ident.labels)
        && policy
            .namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(ns_labels));
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .filter(move |d| selects && policy.rules(*d).is_some())
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::Baseline => 1,
    }
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// A query with its ends resolved.
struct Connection {
    query: Query,
    src_ip: Option<IpAddr>,
    dst_ip: Option<IpAddr>,
    same_pod: bool,
}

/// Pods selected by the same policies, with the same declared ports, share a table.
type TableKey = (Direction, Vec<PolicyId>, Vec<ContainerPort>);

impl Engine {
    /// Compiles every pod's tables.
    pub fn compile(state: ClusterState) -> Self {
        let identities = Identities::build(&state);

        let mut fqdn = FqdnTable::default();
        let mut rules = Vec::new();
        let mut policy_rules: Vec<[Range<RuleId>; 2]> = vec![[0..0, 0..0]; state.policies.len()];
        // Namespaced policies in the state's order, then cluster policies by precedence: rule
        // ids then say which cluster rule comes first.
        let mut order: Vec<PolicyId> = state.policy_ids().collect();
        order.sort_by(|&a, &b| {
            let (pa, pb) = (state.policy(a), state.policy(b));
            (pa.cluster, &pa.name.name, a).cmp(&(pb.cluster, &pb.name.name, b))
        });
        for &id in &order {
            let policy = state.policy(id);
            let mut ranges: [Range<RuleId>; 2] = [0..0, 0..0];
            for direction in [Direction::Ingress, Direction::Egress] {
                let start = rules.len() as RuleId;
                for (i, rule) in policy
                    .rules(direction)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    rules.push(CompiledRule::compile(
                        &state,
                        &identities,
                        id,
                        direction,
                        i as u32,
                        rule,
                        &mut fqdn,
                    ));
                }
                ranges[dir_index(direction)] = start..rules.len() as RuleId;
            }
            policy_rules[id.0 as usize] = ranges;
        }

        // Which policies select each identity, per direction.
        let mut policies_by_ns: HashMap<&str, Vec<PolicyId>> = HashMap::new();
        // Clusterwide policies of the NetworkPolicy tier (CiliumClusterwideNetworkPolicy) may
        // select pods of any namespace; ClusterNetworkPolicies have tiers of their own.
        let mut clusterwide: Vec<PolicyId> = Vec::new();
        for id in state.policy_ids() {
            let p = state.policy(id);
            if p.name.kind.cluster_scoped() {
                if p.cluster.is_none() {
                    clusterwide.push(id);
                }
                continue;
            }
            policies_by_ns
                .entry(p.name.namespace.as_str())
                .or_default()
                .push(id);
        }
        let selecting: Vec<[Vec<PolicyId>; 2]> = identities
            .list
            .iter()
            .map(|ident| {
                let ns = state.namespaces[ident.namespace].name.as_str();
                let mut sel: [Vec<PolicyId>; 2] = Default::default();
                for &pid in policies_by_ns
                    .get(ns)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .chain(&clusterwide)
                {
                    for direction in selected_directions(&state, pid, ident) {
                        sel[dir_index(direction)].push(pid);
                    }
                }
                sel
            })
            .collect();

        // Which cluster policies select each identity, per tier and direction, by precedence.
        // (The cluster policies of `order`, already by precedence.)
        let cluster: Vec<PolicyId> = order
            .iter()
            .copied()
            .filter(|&id| state.policy(id).cluster.is_some())
            .collect();
        let cluster_selecting: Vec<[[Vec<PolicyId>; 2]; 2]> = identities
            .list
            .iter()
            .map(|ident| {
                let mut sel: [[Vec<PolicyId>; 2]; 2] = Default::default();
                for &pid in &cluster {
                    let Some(scope) = state.policy(pid).cluster else {
                        continue;
                    };
                    for direction in selected_directions(&state, pid, ident) {
                        sel[tier_index(scope.tier)][dir_index(direction)].push(pid);
                    }
                }
                sel
            })
            .collect();

        let mut engine = Engine {
            identities,
            rules,
            policy_rules,
            tables: Vec::with_capacity(state.pods.len()),
            cluster_tables: Vec::with_capacity(state.pods.len()),
            by_ip: HashMap::new(),
            nodes: state
                .pods
                .iter()
                .flat_map(|p| p.host_ips.iter().copied())
                .chain(state.nodes.iter().flat_map(|n| n.addresses.iter().copied()))
                .collect(),
            fqdn,
            state,
        };
        let mut interned: HashMap<TableKey, Arc<DirectionTable>> = HashMap::new();
        for pod_id in engine.state.pod_ids() {
            let mut tables: [Option<Arc<DirectionTable>>; 2] = [None, None];
            if let Some(ident) = engine.identities.of_pod[pod_id.0 as usize] {
                for direction in [Direction::Ingress, Direction::Egress] {
                    let policies = &selecting[ident as usize][dir_index(direction)];
                    // Rules of every selecting policy count, but only once one of them isolates.
                    if !policies
                        .iter()
                        .any(|p| engine.state.policy(*p).default_deny.get(direction))
                    {
                        continue;
                    }
                    let table = engine.table(&mut interned, pod_id, direction, policies);
                    tables[dir_index(direction)] = Some(table);
                }
            }
            engine.tables.push(tables);
            let mut cluster_tables: [[Option<Arc<DirectionTable>>; 2]; 2] = Default::default();
            if let Some(ident) = engine.identities.of_pod[pod_id.0 as usize] {
                for tier in [Tier::Admin, Tier::Baseline] {
                    for direction in [Direction::Ingress, Direction::Egress] {
                        let policies = &cluster_selecting[ident as usize][tier_index(tier)]
                            [dir_index(direction)];
                        if policies.is_empty() {
                            continue;
                        }
                        let table = engine.table(&mut interned, pod_id, direction, policies);
                        cluster_tables[tier_index(tier)][dir_index(direction)] = Some(table);
                    }
                }
            }
            engine.cluster_tables.push(cluster_tables);
        }
        for pod_id in engine.state.pod_ids() {
            let pod = engine.state.pod(pod_id);
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                engine.by_ip.entry(*ip).or_insert(pod_id);
            }
        }
        engine
    }

    /// A pod's table for `policies` in `direction`, shared with every pod that has the same
    /// key (only ingress resolves named ports against the pod itself).
    fn table(
        &self,
        interned: &mut HashMap<TableKey, Arc<DirectionTable>>,
        pod_id: PodId,
        direction: Direction,
        policies: &[PolicyId],
    ) -> Arc<DirectionTable> {
        let pod = self.state.pod(pod_id);
        let ports = if direction == Direction::Ingress {
            pod.ports.clone()
        } else {
            Vec::new()
        };
        interned
            .entry((direction, policies.to_vec(), ports))
            .or_insert_with(|| Arc::new(self.build_table(pod, direction, policies)))
            .clone()
    }

    fn build_table(
        &self,
        pod: &Pod,
        direction: Direction,
        policies: &[PolicyId],
    ) -> DirectionTable {
        let mut entries = Vec::new();
        for &pid in policies {
            for rule_id in self.policy_rules[pid.0 as usize][dir_index(direction)].clone() {
                let compiled = &self.rules[rule_id as usize];
                let rule = &self.state.policy(pid).rules(direction).unwrap_or_default()
                    [compiled.index as usize];
                if rule.ports.is_empty() {
                    for protocol in Protocol::ALL {
                        entries.push(PortEntry::Range {
                            protocol,
                            lo: 1,
                            hi: u16::MAX,
                            rule: rule_id,
                        });
                    }
                    // Every protocol means ping and the protocols without ports too; they are
                    // asked as port 0.
                    for protocol in [Protocol::Icmp, Protocol::Other] {
                        entries.push(PortEntry::Range {
                            protocol,
                            lo: 0,
                            hi: 0,
                            rule: rule_id,
                        });
                    }
                }
                for spec in &rule.ports {
                    let protocol = spec.protocol;
                    match &spec.port {
                        PortMatch::Any => entries.push(PortEntry::Range {
                            protocol,
                            lo: 1,
                            hi: u16::MAX,
                            rule: rule_id,
                        }),
                        PortMatch::Range(lo, hi) => entries.push(PortEntry::Range {
                            protocol,
                            lo: *lo,
                            hi: *hi,
                            rule: rule_id,
                        }),
                        PortMatch::Named(name) => match direction {
                            // A named ingress port means this pod's port of that name; a pod
                            // without it cannot be reached through this rule.
                            Direction::Ingress => {
                                if let Some(port) = pod.named_port(name, protocol) {
                                    entries.push(PortEntry::Range {
                                        protocol,
                                        lo: port,
                                        hi: port,
                                        rule: rule_id,
                                    });
                                }
                            }
                            Direction::Egress => entries.push(PortEntry::Named {
                                protocol,
                                name: name.clone(),
                                rule: rule_id,
                            }),
                        },
                    }
                }
            }
        }
        let isolating = policies
            .iter()
            .copied()
            .filter(|p| self.state.policy(*p).default_deny.get(direction))
            .collect();
        DirectionTable::build(isolating, entries, &self.rules, self.identities.len())
    }

    /// The state this engine was compiled from.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The pod that has this address (host-network pods share their node's address and are not
    /// found here).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.by_ip.get(&ip).copied()
    }

    /// The Service port whose NodePort `ip:port` may be when `ip` is no pod's and none the
    /// Services and nodes the state knows (see [`ServiceTable::node_port`]): kube-proxy
    /// answers NodePorts at addresses of a node no object lists too.
    ///
    /// [`ServiceTable::node_port`]: crate::services::ServiceTable::node_port
    pub fn unlisted_node_port(
        &self,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Option<&crate::services::ServicePort> {
        let services = &self.state.services;
        // The NodePort first: one hash lookup, which almost every flow misses.
        let service = services.node_port(ip, port, protocol)?;
        let known = self.pod_by_ip(ip).is_some() || services.lookup(ip, port, protocol).is_some();
        (!known).then_some(service)
    }

    /// Resolves an address to its pod when it is a pod's.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint {
        match self.pod_by_ip(ip) {
            Some(pod) => Endpoint::Pod(pod),
            None => Endpoint::Ip(ip),
        }
    }

    /// The policies that isolate a pod in a direction (empty: not isolated).
    pub fn isolated_by(&self, pod: PodId, direction: Direction) -> &[PolicyId] {
        self.tables[pod.0 as usize][dir_index(direction)]
            .as_ref()
            .map(|t| t.isolated_by.as_slice())
            .unwrap_or_default()
    }

    /// The policies that select a pod (whatever they isolate), in order.
    pub fn policies_selecting(&self, pod: PodId) -> Vec<PolicyId> {
        let p = self.state.pod(pod);
        if p.host_network {
            return Vec::new();
        }
        let ns_labels = self.state.namespace(&p.namespace).map(|n| &n.labels);
        self.state
            .policy_ids()
            .filter(|&id| self.state.policy(id).selects(p, ns_labels))
            .collect()
    }

    /// The pods a policy applies to.
    pub fn selected_pods(&self, policy: PolicyId) -> Vec<PodId> {
        let p = self.state.policy(policy);
        self.state
            .pod_ids()
            .filter(|&id| {
                let pod = self.state.pod(id);
                p.selects(pod, self.state.namespace(&pod.namespace).map(|n| &n.labels))
            })
            .collect()
    }

    /// Whether the connection is allowed, and why, for each side.
    pub fn verdict(&self, query: &Query) -> Verdict {
        self.verdict_learned(query, &[])
    }

    /// [`verdict`](Self::verdict) for a destination address that the source pod's DNS answers
    /// gave for names matching the selectors `names` (sorted ids, see
    /// [`fqdn_selectors`](Self::fqdn_selectors)): toFQDNs rules with those selectors then match
    /// it, if it is outside the cluster.
    pub fn verdict_learned(&self, query: &Query, names: &[FqdnId]) -> Verdict {
        let c = self.connection(query);
        let egress = self.side(
            Direction::Egress,
            c.query.src,
            c.query.dst,
            c.dst_ip,
            &c.query,
            c.same_pod,
            names,
        );
        let ingress = self.side(
            Direction::Ingress,
            c.query.dst,
            c.query.src,
            c.src_ip,
            &c.query,
            c.same_pod,
            &[],
        );
        Verdict {
            query: c.query,
            src_ip: c.src_ip,
            dst_ip: c.dst_ip,
            egress,
            ingress,
            dst_names: names.to_vec(),
        }
    }

    /// Only whether the connection is allowed: the fast path, which does not name the rule.
    pub fn allowed(&self, query: &Query) -> bool {
        self.allowed_learned(query, &[])
    }

    /// [`allowed`](Self::allowed) with learned names, as [`verdict_learned`](Self::verdict_learned).
    pub fn allowed_learned(&self, query: &Query, names: &[FqdnId]) -> bool {
        let c = self.connection(query);
        self.side_allows(
            Direction::Egress,
            c.query.src,
            c.query.dst,
            c.dst_ip,
            &c.query,
            c.same_pod,
            names,
        ) && self.side_allows(
            Direction::Ingress,
            c.query.dst,
            c.query.src,
            c.src_ip,
            &c.query,
            c.same_pod,
            &[],
        )
    }

    /// Every DNS name selector of the compiled policies; [`FqdnId`] indexes this list.
    pub fn fqdn_selectors(&self) -> &[FqdnSelector] {
        &self.fqdn.list
    }

    /// A rule's DNS rules (`toPorts[].rules.dns`), if it has some.
    pub fn rule_dns(&self, rule: RuleRef) -> Option<&[FqdnId]> {
        self.rules[self.rule_id(rule) as usize].dns.as_deref()
    }

    /// A rule's toFQDNs selectors (empty when it has none).
    pub fn rule_fqdn(&self, rule: RuleRef) -> Vec<FqdnId> {
        use crate::compile::rule::CompiledPeer;
        self.rules[self.rule_id(rule) as usize]
            .peers
            .iter()
            .filter_map(|p| match p {
                CompiledPeer::Fqdn(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// The toFQDNs and `domainNames` selectors a pod's egress rules use (sorted): the names
    /// whose answers the pod's sidecar learns. Empty when no such rule applies to it.
    pub fn egress_fqdn(&self, pod: PodId) -> Vec<FqdnId> {
        let egress = dir_index(Direction::Egress);
        let cluster = &self.cluster_tables[pod.0 as usize];
        let mut ids: Vec<FqdnId> = [
            &self.tables[pod.0 as usize][egress],
            &cluster[tier_index(Tier::Admin)][egress],
            &cluster[tier_index(Tier::Baseline)][egress],
        ]
        .into_iter()
        .flatten()
        .flat_map(|t| t.fqdn())
        .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The name selectors whose queries a pod may send to its configured resolver although its
    /// egress to the resolver is refused (`denied_by`): the names the tier that refused it
    /// would still let the pod reach. For a NetworkPolicy's refusal, the pod's toFQDNs names
    /// and the Admin tier's `domainNames` (it passed or did not match); for a ClusterNetworkPolicy
    /// Deny, only the `domainNames` of Accept rules that come before that Deny (and, for a
    /// Baseline Deny, the Admin tier's): a guardrail that denies the resolver is not walked
    /// around by a namespace's own toFQDNs rules.
    pub fn implicit_dns_names(&self, pod: PodId, denied_by: Decision) -> Vec<FqdnId> {
        let egress = dir_index(Direction::Egress);
        let cluster = &self.cluster_tables[pod.0 as usize];
        let accepted_names = |table: &Option<Arc<DirectionTable>>, before: RuleId| {
            table
                .as_ref()
                .map(|t| t.rule_ids())
                .unwrap_or_default()
                .into_iter()
                .filter(|&id| id < before)
                .filter(|&id| {
                    let r = self.rule_ref(id);
                    self.state
                        .policy(r.policy)
                        .rules(r.direction)
                        .unwrap_or_default()[r.index as usize]
                        .action
                        == Some(Action::Accept)
                })
                .flat_map(|id| {
                    self.rules[id as usize]
                        .peers
                        .iter()
                        .filter_map(|p| match p {
                            crate::compile::rule::CompiledPeer::Fqdn(f) => Some(*f),
                            _ => None,
                        })
                })
                .collect::<Vec<_>>()
        };
        let admin = &cluster[tier_index(Tier::Admin)][egress];
        let baseline = &cluster[tier_index(Tier::Baseline)][egress];
        let mut ids = match denied_by {
            Decision::ClusterDeny(rule) => {
                let before = self.rule_id(rule);
                match self.state.policy(rule.policy).cluster.map(|c| c.tier) {
                    Some(Tier::Baseline) => {
                        let mut ids = accepted_names(admin, RuleId::MAX);
                        ids.extend(accepted_names(baseline, before));
                        ids
                    }
                    _ => accepted_names(admin, before),
                }
            }
            _ => {
                let mut ids = accepted_names(admin, RuleId::MAX);
                if let Some(t) = &self.tables[pod.0 as usize][egress] {
                    ids.extend(t.fqdn());
                }
                ids
            }
        };
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Resolves a query's ends: addresses that are pods' become those pods, and each end gets
    /// the address the connection uses. An address given by the caller is kept even when it
    /// belongs to a pod; for a pod given by name, its address in the other end's family is used.
    fn connection(&self, query: &Query) -> Connection {
        let (src_fixed, dst_fixed) = (fixed_ip(query.src), fixed_ip(query.dst));
        let src = self.resolve(query.src);
        let dst = self.resolve(query.dst);
        let dst_ip = dst_fixed.or_else(|| self.ip_of(dst, src_fixed));
        let src_ip = src_fixed.or_else(|| self.ip_of(src, dst_ip));
        Connection {
            query: Query { src, dst, ..*query },
            src_ip,
            dst_ip,
            same_pod: matches!((src, dst), (Endpoint::Pod(a), Endpoint::Pod(b)) if a == b),
        }
    }

    fn resolve(&self, e: Endpoint) -> Endpoint {
        match e {
            Endpoint::Ip(ip) => self.endpoint(ip),
            pod => pod,
        }
    }

    fn ip_of(&self, e: Endpoint, towards: Option<IpAddr>) -> Option<IpAddr> {
        match e {
            Endpoint::Ip(ip) => Some(ip),
            Endpoint::Pod(p) => self.state.pod(p).ip_towards(towards),
        }
    }

    /// The other end of a connection as the rules of `subject` (a pod, for the node entities)
    /// see it.
    fn peer_view<'a>(
        &self,
        e: Endpoint,
        ip: Option<IpAddr>,
        subject: Endpoint,
        names: &'a [FqdnId],
    ) -> PeerView<'a> {
        let own_nodes: &[IpAddr] = match subject {
            Endpoint::Pod(p) => &self.state.pod(p).host_ips,
            Endpoint::Ip(_) => &[],
        };
        let is_node = ip.is_some_and(|ip| self.nodes.contains(&ip));
        let is_own_node = ip.is_some_and(|ip| own_nodes.contains(&ip));
        match e {
            Endpoint::Pod(p) => PeerView {
                identity: self.identities.of_pod[p.0 as usize],
                ip,
                is_node,
                is_own_node,
                names,
            },
            Endpoint::Ip(ip) => PeerView {
                identity: None,
                ip: Some(ip),
                is_node,
                is_own_node,
                names,
            },
        }
    }

    /// The decisions that need no rule (not a pod, host network, same pod, not isolated, own
    /// node), or the table and peer that the rules must decide on.
    fn gate<'a>(
        &'a self,
        direction: Direction,
        subject: Endpoint,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        same_pod: bool,
        names: &'a [FqdnId],
    ) -> Result<(&'a DirectionTable, PeerView<'a>), Decision> {
        let Endpoint::Pod(pod_id) = subject else {
            return Err(Decision::NotAPod);
        };
        let pod = self.state.pod(pod_id);
        if pod.host_network {
            return Err(Decision::HostNetwork);
        }
        if same_pod {
            return Err(Decision::SamePod);
        }
        let Some(table) = &self.tables[pod_id.0 as usize][dir_index(direction)] else {
            return Err(Decision::NotIsolated);
        };
        if direction == Direction::Ingress && peer_ip.is_some_and(|ip| pod.host_ips.contains(&ip)) {
            return Err(Decision::OwnNode);
        }
        Ok((table, self.peer_view(peer, peer_ip, subject, names)))
    }

    /// The matchers that apply to the query's port: the numeric segment, and for egress the
    /// named ports the destination pod declares with that number.
    fn matchers<'a>(
        &'a self,
        table: &'a DirectionTable,
        direction: Direction,
        peer: Endpoint,
        query: &'a Query,
    ) -> impl Iterator<Item = &'a PeerMatcher> + 'a {
        let named = match peer {
            Endpoint::Pod(dst) if direction == Direction::Egress && table.has_named() => {
                let dst_pod = self.state.pod(dst);
                let ports: &[ContainerPort] = if dst_pod.host_network {
                    &[]
                } else {
                    &dst_pod.ports
                };
                ports
            }
            _ => &[],
        };
        table.port(query.protocol, query.port).into_iter().chain(
            named
                .iter()
                .filter(|cp| cp.port == query.port && cp.protocol == query.protocol)
                .filter_map(|cp| cp.name.as_deref().and_then(|n| table.named(cp.protocol, n))),
        )
    }

    /// One side: `subject`'s policies for `direction`, with `peer` on the other end, naming the
    /// first rule (in canonical order) that allows the connection.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &self,
        direction: Direction,
        subject: Endpoint,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        query: &Query,
        same_pod: bool,
        names: &[FqdnId],
    ) -> SideVerdict {
        let pod = match subject {
            Endpoint::Pod(p) => Some(p),
            Endpoint::Ip(_) => None,
        };
        let isolated =
            pod.is_some_and(|p| self.tables[p.0 as usize][dir_index(direction)].is_some());
        let mut http = None;
        let mut dns = None;
        if let Some(decision) =
            self.cluster_tier(Tier::Admin, direction, subject, peer, peer_ip, query, names)
        {
            return SideVerdict {
                direction,
                pod,
                isolated,
                decision,
                http,
                dns,
            };
        }
        let decision = match self.gate(direction, subject, peer, peer_ip, same_pod, names) {
            // Nothing of the NetworkPolicy tier decided: the Baseline tier may.
            Err(undecided @ (Decision::SamePod | Decision::NotIsolated)) if !isolated => self
                .cluster_tier(
                    Tier::Baseline,
                    direction,
                    subject,
                    peer,
                    peer_ip,
                    query,
                    names,
                )
                .unwrap_or(undecided),
            Err(decision) => decision,
            Ok((table, view)) => {
                let first = self
                    .matchers(table, direction, peer, query)
                    .filter_map(|m| m.first_allowing(&view, &self.rules))
                    .min();
                // HTTP (DNS) rules apply when every rule allowing this peer on this port has
                // some; one rule without them (an L4-only allow) switches that filtering off.
                let http_here = query.protocol == Protocol::Tcp
                    && self
                        .matchers(table, direction, peer, query)
                        .any(|m| m.has_http);
                let dns_here = direction == Direction::Egress
                    && self
                        .matchers(table, direction, peer, query)
                        .any(|m| m.has_dns);
                if first.is_some() && (http_here || dns_here) {
                    let mut allowing: Vec<RuleId> = self
                        .matchers(table, direction, peer, query)
                        .flat_map(|m| m.all_allowing(&view, &self.rules))
                        .collect();
                    allowing.sort_unstable();
                    allowing.dedup();
                    let refs = || allowing.iter().map(|r| self.rule_ref(*r)).collect();
                    if http_here && allowing.iter().all(|r| self.rules[*r as usize].http) {
                        http = Some(refs());
                    }
                    if dns_here
                        && allowing
                            .iter()
                            .all(|r| self.rules[*r as usize].dns.is_some())
                    {
                        dns = Some(refs());
                    }
                }
                first.map_or(Decision::NoRuleMatched, |rule| {
                    Decision::Rule(self.rule_ref(rule))
                })
            }
        };
        SideVerdict {
            direction,
            pod,
            isolated,
            decision,
            http,
            dns,
        }
    }

    /// Whether one side allows the connection, without finding which rule does: a bit test or
    /// a binary search per matcher.
    #[allow(clippy::too_many_arguments)]
    fn side_allows(
        &self,
        direction: Direction,
        subject: Endpoint,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        query: &Query,
        same_pod: bool,
        names: &[FqdnId],
    ) -> bool {
        if let Some(decision) =
            self.cluster_tier(Tier::Admin, direction, subject, peer, peer_ip, query, names)
        {
            return decision.allows();
        }
        let isolated = match subject {
            Endpoint::Pod(p) => self.tables[p.0 as usize][dir_index(direction)].is_some(),
            Endpoint::Ip(_) => false,
        };
        match self.gate(direction, subject, peer, peer_ip, same_pod, names) {
            Err(Decision::NotIsolated) | Err(Decision::SamePod) if !isolated => self
                .cluster_tier(
                    Tier::Baseline,
                    direction,
                    subject,
                    peer,
                    peer_ip,
                    query,
                    names,
                )
                .is_none_or(Decision::allows),
            Err(decision) => decision.allows(),
            Ok((table, view)) => self
                .matchers(table, direction, peer, query)
                .any(|m| m.admits(&view)),
        }
    }

    /// What a tier of ClusterNetworkPolicies decides for one side: the first rule (by
    /// precedence) that matches the peer and port, when its action is Accept or Deny; `None`
    /// when no rule matches or the first is a Pass (the next tier decides), and for what no
    /// policy judges (not a pod, host network, its own node's probes).
    #[allow(clippy::too_many_arguments)]
    fn cluster_tier(
        &self,
        tier: Tier,
        direction: Direction,
        subject: Endpoint,
        peer: Endpoint,
        peer_ip: Option<IpAddr>,
        query: &Query,
        names: &[FqdnId],
    ) -> Option<Decision> {
        let Endpoint::Pod(pod_id) = subject else {
            return None;
        };
        let table = self.cluster_tables[pod_id.0 as usize][tier_index(tier)][dir_index(direction)]
            .as_ref()?;
        let pod = self.state.pod(pod_id);
        if pod.host_network {
            return None;
        }
        // A pod reaching itself (through a Service: hairpin) is judged like any other pod:
        // upstream's hairpin conformance test expects a Deny to hold for it. Only
        // NetworkPolicy always allows it.
        if direction == Direction::Ingress && peer_ip.is_some_and(|ip| pod.host_ips.contains(&ip)) {
            return Some(Decision::OwnNode);
        }
        let view = self.peer_view(peer, peer_ip, subject, names);
        let first = self
            .matchers(table, direction, peer, query)
            .filter_map(|m| m.first_allowing(&view, &self.rules))
            .min()?;
        let rule = self.rule_ref(first);
        let policy = self.state.policy(rule.policy);
        let action = policy.rules(direction).unwrap_or_default()[rule.index as usize].action;
        match action {
            Some(Action::Accept) => Some(Decision::ClusterAccept(rule)),
            Some(Action::Pass) => None,
            // Deny, and a rule without an action (never made by the loader): denied.
            _ => Some(Decision::ClusterDeny(rule)),
        }
    }

    fn rule_ref(&self, id: RuleId) -> RuleRef {
        let r = &self.rules[id as usize];
        RuleRef {
            policy: r.policy,
            direction: r.direction,
            index: r.index,
        }
    }

    fn rule_id(&self, rule: RuleRef) -> RuleId {
        self.policy_rules[rule.policy.0 as usize][dir_index(rule.direction)].start + rule.index
    }

    /// Which peer of a rule (by index) matches the other end of the query; `Some(None)` when the
    /// rule has no peers (matches all), `None` when no peer matches.
    pub fn matching_peer(&self, rule: RuleRef, verdict: &Verdict) -> Option<Option<usize>> {
        let view = match rule.direction {
            Direction::Egress => self.peer_view(
                verdict.query.dst,
                verdict.dst_ip,
                verdict.query.src,
                &verdict.dst_names,
            ),
            Direction::Ingress => {
                self.peer_view(verdict.query.src, verdict.src_ip, verdict.query.dst, &[])
            }
        };
        self.rules[self.rule_id(rule) as usize].matching_peer(&view)
    }

    /// Which port spec of a rule (by index) matches the query; `Some(None)` when the rule has no
    /// ports (matches all), `None` when no port matches.
    pub fn matching_port(&self, rule: RuleRef, verdict: &Verdict) -> Option<Option<usize>> {
        let policy = self.state.policy(rule.policy);
        let spec = &policy.rules(rule.direction).unwrap_or_default()[rule.index as usize];
        if spec.ports.is_empty() {
            return Some(None);
        }
        // Named ports resolve against the destination pod, whichever side's rule it is.
        let dst_pod = match verdict.query.dst {
            Endpoint::Pod(p) => Some(self.state.pod(p)).filter(|p| !p.host_network),
            Endpoint::Ip(_) => None,
        };
        spec.ports
            .iter()
            .position(|p| port_matches(p, verdict.query.protocol, verdict.query.port, dst_pod))
            .map(Some)
    }

    /// Whether a rule's peers can select anything at all in this state.
    pub fn rule_can_match(&self, rule: RuleRef) -> bool {
        self.rules[self.rule_id(rule) as usize].can_match_anything()
    }

    /// Which pods a rule's peer (by index) selects. Empty for ipBlock peers.
    pub fn peer_pods(&self, rule: RuleRef, peer: usize) -> Vec<PodId> {
        use crate::compile::rule::CompiledPeer;
        match &self.rules[self.rule_id(rule) as usize].peers.get(peer) {
            Some(CompiledPeer::Identities(set)) => self
                .state
                .pod_ids()
                .filter(|p| {
                    self.identities.of_pod[p.0 as usize].is_some_and(|i| set.contains(i as usize))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The address an endpoint was given by, if it was given by address.
fn fixed_ip(e: Endpoint) -> Option<IpAddr> {
    match e {
        Endpoint::Ip(ip) => Some(ip),
        Endpoint::Pod(_) => None,
    }
}

/// Whether a port spec covers `protocol`/`port` towards `dst` (whose ports named ports mean).
pub fn port_matches(spec: &PortSpec, protocol: Protocol, port: u16, dst: Option<&Pod>) -> bool {
    if spec.protocol != protocol {
        return false;
    }
    match &spec.port {
        PortMatch::Any => true,
        PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&port),
        PortMatch::Named(name) => dst.and_then(|d| d.named_port(name, protocol)) == Some(port),
    }
}
