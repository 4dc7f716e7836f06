//! Sets of IP addresses as sorted, disjoint ranges: an ipBlock (CIDR minus its exceptions), or
//! the union of several, answered with one binary search.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::IpBlock;

/// A set of addresses of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IpSet {
    v4: Vec<(u128, u128)>,
    v6: Vec<(u128, u128)>,
}

fn bounds(net: &IpNet) -> (bool, u128, u128) {
    match net.trunc() {
        IpNet::V4(n) => (
            true,
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (false, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn key(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(ip) => (true, u128::from(u32::from(ip))),
        // An IPv4-mapped IPv6 address is the IPv4 peer it stands for.
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => (true, u128::from(u32::from(v4))),
            None => (false, u128::from(ip)),
        },
    }
}

impl IpSet {
    /// Adds a block: its CIDR with the exceptions cut out.
    pub(crate) fn add_block(&mut self, block: &IpBlock) {
        let (v4, lo, hi) = bounds(&block.cidr);
        let mut pieces = vec![(lo, hi)];
        for except in &block.except {
            let (ev4, elo, ehi) = bounds(except);
            if ev4 != v4 {
                continue;
            }
            pieces = pieces
                .into_iter()
                .flat_map(|(lo, hi)| {
                    let mut out = Vec::with_capacity(2);
                    if ehi < lo || elo > hi {
                        out.push((lo, hi));
                    } else {
                        if elo > lo {
                            out.push((lo, elo - 1));
                        }
                        if ehi < hi {
                            out.push((ehi + 1, hi));
                        }
                    }
                    out
                })
                .collect();
        }
        let ranges = if v4 { &mut self.v4 } else { &mut self.v6 };
        ranges.extend(pieces);
        normalize(ranges);
    }

    /// Adds every address of another set.
    pub(crate) fn merge(&mut self, other: &IpSet) {
        if !other.v4.is_empty() {
            self.v4.extend_from_slice(&other.v4);
            normalize(&mut self.v4);
        }
        if !other.v6.is_empty() {
            self.v6.extend_from_slice(&other.v6);
            normalize(&mut self.v6);
        }
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (v4, k) = key(ip);
        let ranges = if v4 { &self.v4 } else { &self.v6 };
        let i = ranges.partition_point(|(lo, _)| *lo <= k);
        i > 0 && ranges[i - 1].1 >= k
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Sorts and merges overlapping or touching ranges.
fn normalize(ranges: &mut Vec<(u128, u128)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str, except: &[&str]) -> IpBlock {
        IpBlock {
            cidr: cidr.parse().expect("test cidr"),
            except: except
                .iter()
                .map(|e| e.parse().expect("test cidr"))
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn except_ranges_are_cut_out_of_the_block() {
        let mut set = IpSet::default();
        set.add_block(&block("172.17.0.0/16", &["172.17.1.0/24"]));
        assert!(set.contains(ip("172.17.0.255")));
        assert!(!set.contains(ip("172.17.1.0")));
        assert!(!set.contains(ip("172.17.1.255")));
        assert!(set.contains(ip("172.17.2.0")));
        assert!(!set.contains(ip("172.18.0.0")));
    }

    #[test]
    fn everything_except_the_metadata_address() {
        let mut set = IpSet::default();
        set.add_block(&block(
            "0.0.0.0/0",
            &["169.254.169.254/32", "100.100.100.200/32"],
        ));
        assert!(set.contains(ip("0.0.0.0")));
        assert!(set.contains(ip("255.255.255.255")));
        assert!(set.contains(ip("169.254.169.253")));
        assert!(!set.contains(ip("169.254.169.254")));
        assert!(!set.contains(ip("100.100.100.200")));
        assert!(
            !set.contains(ip("2001:db8::1")),
            "an IPv4 block never matches IPv6"
        );
    }

    #[test]
    fn ipv6_blocks_and_mapped_addresses() {
        let mut set = IpSet::default();
        set.add_block(&block("2001:db8::/32", &["2001:db8:1::/48"]));
        set.add_block(&block("10.0.0.0/8", &[]));
        assert!(set.contains(ip("2001:db8::1")));
        assert!(!set.contains(ip("2001:db8:1::1")));
        assert!(set.contains(ip("::ffff:10.1.2.3")));
    }

    #[test]
    fn host_bits_in_the_cidr_are_ignored() {
        let mut set = IpSet::default();
        set.add_block(&block("10.0.0.7/24", &[]));
        assert!(set.contains(ip("10.0.0.1")));
        assert!(!set.contains(ip("10.0.1.1")));
    }

    #[test]
    fn unions_merge_adjacent_ranges() {
        let mut set = IpSet::default();
        set.add_block(&block("10.0.0.0/25", &[]));
        set.add_block(&block("10.0.0.128/25", &[]));
        assert_eq!(set.v4.len(), 1);
        assert!(set.contains(ip("10.0.0.200")));
    }
}
