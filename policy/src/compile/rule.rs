//! A rule with its peers resolved: selectors become identity sets, ipBlocks become address sets.

use std::net::IpAddr;

use fixedbitset::FixedBitSet;

use super::identity::{Identities, IdentityId};
use super::ipset::IpSet;
use crate::model::Direction;
use crate::model::{Entity, FqdnSelector, NamespaceScope, Peer, Rule};
use crate::state::{ClusterState, PolicyId};
use crate::verdict::FqdnId;

/// Every DNS name selector of the compiled policies, each once: rules refer to them by id, and
/// the sidecar matches names against the list once per name, not once per rule.
#[derive(Debug, Default)]
pub(crate) struct FqdnTable {
    pub(crate) list: Vec<FqdnSelector>,
    index: std::collections::HashMap<FqdnSelector, FqdnId>,
}

impl FqdnTable {
    pub(crate) fn intern(&mut self, selector: &FqdnSelector) -> FqdnId {
        if let Some(id) = self.index.get(selector) {
            return *id;
        }
        let id = FqdnId(self.list.len() as u32);
        self.list.push(selector.clone());
        self.index.insert(selector.clone(), id);
        id
    }
}

/// Who is on the other end of a connection, as rules see it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PeerView<'a> {
    /// The peer's identity when it is a pod (not host-network).
    pub(crate) identity: Option<IdentityId>,
    /// The peer's address, when known.
    pub(crate) ip: Option<IpAddr>,
    /// The address is a node's (some pod's host address).
    pub(crate) is_node: bool,
    /// The address is the node of the pod whose policy is evaluated.
    pub(crate) is_own_node: bool,
    /// The DNS name selectors whose names resolved to this address for the pod whose policy is
    /// evaluated (sorted; empty unless the caller knows).
    pub(crate) names: &'a [FqdnId],
}

impl PeerView<'_> {
    /// Outside the cluster: neither a pod nor a node.
    pub(crate) fn is_world(&self) -> bool {
        self.identity.is_none() && !self.is_node
    }

    /// Whether a Cilium entity covers this peer.
    pub(crate) fn in_entity(&self, entity: Entity) -> bool {
        match entity {
            Entity::All => true,
            Entity::World => self.is_world(),
            Entity::Cluster => !self.is_world(),
            Entity::Host => self.is_own_node,
            Entity::RemoteNode => self.is_node && !self.is_own_node,
            Entity::KubeApiserver => false,
        }
    }
}

/// One peer of a rule, resolved.
#[derive(Debug)]
pub(crate) enum CompiledPeer {
    Identities(FixedBitSet),
    Addresses(IpSet),
    /// Addresses, counted only outside the cluster (Cilium CIDR rules).
    ExternalAddresses(IpSet),
    Entity(Entity),
    /// Addresses outside the cluster learned for a DNS name selector.
    Fqdn(FqdnId),
}

impl CompiledPeer {
    pub(crate) fn matches(&self, peer: &PeerView<'_>) -> bool {
        match self {
            CompiledPeer::Identities(set) => {
                peer.identity.is_some_and(|id| set.contains(id as usize))
            }
            CompiledPeer::Addresses(set) => peer.ip.is_some_and(|ip| set.contains(ip)),
            CompiledPeer::ExternalAddresses(set) => {
                peer.is_world() && peer.ip.is_some_and(|ip| set.contains(ip))
            }
            CompiledPeer::Entity(e) => peer.in_entity(*e),
            CompiledPeer::Fqdn(id) => peer.is_world() && peer.names.binary_search(id).is_ok(),
        }
    }
}

/// A rule of a policy with its peers resolved against the cluster state.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) policy: PolicyId,
    pub(crate) direction: Direction,
    pub(crate) index: u32,
    /// Empty `from`/`to`: every peer, pod or not.
    pub(crate) all_peers: bool,
    /// The rule carries HTTP rules.
    pub(crate) http: bool,
    /// The rule's DNS rules, when it has some.
    pub(crate) dns: Option<Vec<FqdnId>>,
    pub(crate) peers: Vec<CompiledPeer>,
}

impl CompiledRule {
    pub(crate) fn compile(
        state: &ClusterState,
        identities: &Identities,
        policy: PolicyId,
        direction: Direction,
        index: u32,
        rule: &Rule,
        fqdn: &mut FqdnTable,
    ) -> Self {
        let peers = rule
            .peers
            .iter()
            .map(|peer| match peer {
                Peer::Pods { namespaces, pods } => {
                    let mut set = FixedBitSet::with_capacity(identities.len());
                    for (ns_index, ns) in state.namespaces.iter().enumerate() {
                        let in_scope = match namespaces {
                            NamespaceScope::Named(name) => &ns.name == name,
                            NamespaceScope::Selected(sel) => sel.matches(&ns.labels),
                        };
                        if !in_scope {
                            continue;
                        }
                        for &id in &identities.by_namespace[ns_index] {
                            if pods.matches(&identities.list[id as usize].labels) {
                                set.insert(id as usize);
                            }
                        }
                    }
                    CompiledPeer::Identities(set)
                }
                Peer::IpBlock(block) => {
                    let mut set = IpSet::default();
                    set.add_block(block);
                    CompiledPeer::Addresses(set)
                }
                Peer::ExternalCidr(block) => {
                    let mut set = IpSet::default();
                    set.add_block(block);
                    CompiledPeer::ExternalAddresses(set)
                }
                Peer::Entity(e) => CompiledPeer::Entity(*e),
                Peer::Fqdn(selector) => CompiledPeer::Fqdn(fqdn.intern(selector)),
                Peer::Nodes(selector) => {
                    let mut set = IpSet::default();
                    for node in state.nodes.iter().filter(|n| selector.matches(&n.labels)) {
                        for ip in &node.addresses {
                            set.add_block(&crate::model::IpBlock {
                                cidr: ipnet::IpNet::from(*ip),
                                except: Vec::new(),
                            });
                        }
                    }
                    CompiledPeer::Addresses(set)
                }
            })
            .collect();
        let dns = rule
            .dns
            .as_ref()
            .map(|list| list.iter().map(|s| fqdn.intern(s)).collect());
        CompiledRule {
            policy,
            direction,
            index,
            // An inert rule (it fails closed by matching nothing) has no peer to match.
            all_peers: rule.peers.is_empty() && !rule.inert,
            http: rule.http.is_some(),
            dns,
            peers,
        }
    }

    /// The index of the first peer that matches (`Some(None)` when the rule matches every peer).
    pub(crate) fn matching_peer(&self, peer: &PeerView<'_>) -> Option<Option<usize>> {
        if self.all_peers {
            return Some(None);
        }
        self.peers.iter().position(|p| p.matches(peer)).map(Some)
    }

    /// True when some peer of the rule selects at least one pod or address.
    pub(crate) fn can_match_anything(&self) -> bool {
        self.all_peers
            || self.peers.iter().any(|p| match p {
                CompiledPeer::Identities(set) => !set.is_clear(),
                CompiledPeer::Addresses(set) | CompiledPeer::ExternalAddresses(set) => {
                    !set.is_empty()
                }
                CompiledPeer::Entity(e) => *e != Entity::KubeApiserver,
                // Names are learned at run time.
                CompiledPeer::Fqdn(_) => true,
            })
    }
}
