//! What a pod's DNS answers taught: which addresses which names resolved to, until when.
//!
//! One cache per pod (the sidecar's), holding only names that some `toFQDNs` selector of the
//! pod matches, each with the selectors it matches. An address is valid for
//! `max(TTL, min_ttl)` seconds from the answer; a later answer extends it. Bounds: at most
//! `max_ips_per_name` addresses per name (the ones expiring first go; Cilium keeps 50) and
//! `max_names` names (the least recently answered go). Expired entries are dropped as answers
//! arrive and by [`Cache::expire`].
//!
//! Time is passed in, so the cache is plain data and its behaviour testable to the second.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwall_policy::FqdnId;

/// Limits and the TTL floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Names kept at most; beyond, the least recently answered is forgotten.
    pub max_names: usize,
    /// Addresses kept per name at most; beyond, those expiring first are forgotten.
    pub max_ips_per_name: usize,
    /// TTLs below this are raised to it (Cilium's `--tofqdns-min-ttl`, 0 by default).
    pub min_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_names: 10_000,
            max_ips_per_name: 50,
            min_ttl: Duration::ZERO,
        }
    }
}

#[derive(Debug)]
struct Entry {
    selectors: Vec<FqdnId>,
    ips: Vec<(IpAddr, Instant)>,
    /// Position in the recency order.
    stamp: u64,
}

/// What one answer changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    /// Addresses newly valid for the name.
    pub added: usize,
    /// Names forgotten to make room.
    pub evicted_names: usize,
    /// Addresses forgotten to keep within the per-name cap.
    pub evicted_ips: usize,
}

/// Names to addresses with expiry, and the reverse index a connection needs.
#[derive(Debug, Default)]
pub struct Cache {
    config: CacheConfig,
    names: HashMap<Arc<str>, Entry>,
    by_ip: HashMap<IpAddr, Vec<Arc<str>>>,
    recency: BTreeMap<u64, Arc<str>>,
    clock: u64,
}

impl Cache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            ..Cache::default()
        }
    }

    /// Its limits.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// Records that `name` (canonical), matching `selectors`, resolved to `addresses` (each with
    /// its TTL in seconds) at `now`. Names no selector matches are not kept.
    pub fn learn(
        &mut self,
        name: &str,
        selectors: &[FqdnId],
        addresses: &[(IpAddr, u32)],
        now: Instant,
    ) -> Learned {
        let mut out = Learned::default();
        if selectors.is_empty() || addresses.is_empty() {
            return out;
        }
        self.clock += 1;
        let stamp = self.clock;
        let key: Arc<str> = match self.names.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => {
                while self.names.len() >= self.config.max_names.max(1) {
                    if !self.evict_oldest() {
                        break;
                    }
                    out.evicted_names += 1;
                }
                let k: Arc<str> = Arc::from(name);
                self.names.insert(
                    k.clone(),
                    Entry {
                        selectors: Vec::new(),
                        ips: Vec::new(),
                        stamp: 0,
                    },
                );
                k
            }
        };
        let min_ttl = self.config.min_ttl;
        let cap = self.config.max_ips_per_name.max(1);
        let Some(entry) = self.names.get_mut(&key) else {
            return out;
        };
        self.recency.remove(&entry.stamp);
        entry.stamp = stamp;
        self.recency.insert(stamp, key.clone());
        entry.selectors = selectors.to_vec();
        let mut dropped = Vec::new();
        entry.ips.retain(|(ip, until)| {
            let keep = *until > now;
            if !keep {
                dropped.push(*ip);
            }
            keep
        });
        for &(ip, ttl) in addresses {
            // A min TTL near Duration::MAX must not overflow the clock (a year is forever here).
            let until = now
                .checked_add(Duration::from_secs(u64::from(ttl)).max(min_ttl))
                .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400));
            match entry.ips.iter_mut().find(|(i, _)| *i == ip) {
                Some((_, u)) => *u = (*u).max(until),
                None => {
                    if until > now {
                        entry.ips.push((ip, until));
                        out.added += 1;
                    }
                }
            }
        }
        if entry.ips.len() > cap {
            entry
                .ips
                .sort_by_key(|(_, until)| std::cmp::Reverse(*until));
            for (ip, _) in entry.ips.drain(cap..) {
                dropped.push(ip);
                out.evicted_ips += 1;
            }
        }
        let kept: Vec<IpAddr> = entry.ips.iter().map(|(ip, _)| *ip).collect();
        let empty = kept.is_empty();
        for ip in dropped {
            if !kept.contains(&ip) {
                self.unindex(ip, &key);
            }
        }
        for ip in kept {
            let names = self.by_ip.entry(ip).or_default();
            if !names.iter().any(|n| **n == *key) {
                names.push(key.clone());
            }
        }
        if empty {
            self.forget(&key);
        }
        out
    }

    /// The selectors whose names `ip` is valid for at `now` (sorted, no repeats).
    pub fn selectors_for(&self, ip: IpAddr, now: Instant) -> Vec<FqdnId> {
        let mut out = Vec::new();
        for name in self.by_ip.get(&ip).into_iter().flatten() {
            if let Some(e) = self.names.get(name)
                && e.ips.iter().any(|(i, until)| *i == ip && *until > now)
            {
                out.extend_from_slice(&e.selectors);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The names `ip` is valid for at `now`.
    pub fn names_for(&self, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        self.by_ip
            .get(&ip)
            .into_iter()
            .flatten()
            .filter(|n| {
                self.names
                    .get(*n)
                    .is_some_and(|e| e.ips.iter().any(|(i, u)| *i == ip && *u > now))
            })
            .cloned()
            .collect()
    }

    /// Drops everything expired at `now`; returns how many addresses went.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut gone = Vec::new();
        for (name, e) in &mut self.names {
            e.ips.retain(|(ip, until)| {
                let keep = *until > now;
                if !keep {
                    gone.push((*ip, name.clone()));
                }
                keep
            });
        }
        let count = gone.len();
        for (ip, name) in gone {
            self.unindex(ip, &name);
        }
        let empty: Vec<Arc<str>> = self
            .names
            .iter()
            .filter(|(_, e)| e.ips.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for n in empty {
            self.forget(&n);
        }
        count
    }

    /// After a policy change: each name's selectors again; names no selector matches go.
    pub fn reselect(&mut self, selectors_of: impl Fn(&str) -> Vec<FqdnId>) {
        let mut gone = Vec::new();
        for (name, e) in &mut self.names {
            e.selectors = selectors_of(name);
            if e.selectors.is_empty() {
                gone.push(name.clone());
            }
        }
        for n in gone {
            self.forget(&n);
        }
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// How many (name, address) pairs are held.
    pub fn addresses(&self) -> usize {
        self.names.values().map(|e| e.ips.len()).sum()
    }

    /// An estimate of the heap the cache holds, in bytes (for the metrics and the bench).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let arc = size_of::<Arc<str>>();
        let names: usize = self
            .names
            .iter()
            .map(|(n, e)| {
                // The Arc'd string with its two counters, the entry's vectors.
                n.len()
                    + 2 * size_of::<usize>()
                    + e.selectors.capacity() * size_of::<FqdnId>()
                    + e.ips.capacity() * size_of::<(IpAddr, Instant)>()
            })
            .sum();
        // hashbrown: one control byte per bucket plus the slot (about 8/7 buckets per item).
        let table = |len: usize, slot: usize| len * 8 / 7 * (slot + 1);
        names
            + table(self.names.capacity(), arc + size_of::<Entry>())
            + table(self.by_ip.capacity(), size_of::<(IpAddr, Vec<Arc<str>>)>())
            + self
                .by_ip
                .values()
                .map(|v| v.capacity() * arc)
                .sum::<usize>()
            + self.recency.len() * (size_of::<u64>() + arc + 16)
    }

    fn evict_oldest(&mut self) -> bool {
        let Some((_, name)) = self.recency.pop_first() else {
            return false;
        };
        self.forget(&name);
        true
    }

    fn forget(&mut self, name: &Arc<str>) {
        if let Some(e) = self.names.remove(name) {
            self.recency.remove(&e.stamp);
            for (ip, _) in e.ips {
                self.unindex(ip, name);
            }
        }
    }

    fn unindex(&mut self, ip: IpAddr, name: &str) {
        if let Some(names) = self.by_ip.get_mut(&ip) {
            names.retain(|n| **n != *name);
            if names.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const S0: FqdnId = FqdnId(0);
    const S1: FqdnId = FqdnId(1);

    #[test]
    fn an_address_is_valid_for_its_ttl_and_then_not() {
        let mut c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        let l = c.learn("api.github.com", &[S0], &[(ip("140.82.112.5"), 2)], t0);
        assert_eq!(l.added, 1);
        assert_eq!(c.selectors_for(ip("140.82.112.5"), t0), [S0]);
        assert_eq!(
            c.selectors_for(ip("140.82.112.5"), t0 + Duration::from_millis(1999)),
            [S0]
        );
        assert!(
            c.selectors_for(ip("140.82.112.5"), t0 + Duration::from_secs(2))
                .is_empty()
        );
        assert!(c.selectors_for(ip("140.82.112.6"), t0).is_empty());
        assert_eq!(c.expire(t0 + Duration::from_secs(3)), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn the_ttl_floor_raises_short_ttls() {
        let mut c = Cache::new(CacheConfig {
            min_ttl: Duration::from_secs(30),
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 0)], t0);
        assert_eq!(
            c.selectors_for(ip("192.0.2.1"), t0 + Duration::from_secs(29)),
            [S0]
        );
    }

    #[test]
    fn a_ttl_of_zero_without_a_floor_teaches_nothing() {
        let mut c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        let l = c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 0)], t0);
        assert_eq!(l.added, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn a_later_answer_extends_and_never_shortens() {
        let mut c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 10)], t0);
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 1)], t0);
        assert_eq!(
            c.selectors_for(ip("192.0.2.1"), t0 + Duration::from_secs(5)),
            [S0]
        );
        c.learn(
            "a.com",
            &[S0],
            &[(ip("192.0.2.1"), 20)],
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            c.selectors_for(ip("192.0.2.1"), t0 + Duration::from_secs(24)),
            [S0]
        );
    }

    #[test]
    fn two_names_on_one_address_give_both_selectors_until_each_expires() {
        let mut c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        c.learn("a.example.com", &[S0], &[(ip("203.0.113.1"), 5)], t0);
        c.learn("b.example.com", &[S1], &[(ip("203.0.113.1"), 50)], t0);
        assert_eq!(c.selectors_for(ip("203.0.113.1"), t0), [S0, S1]);
        assert_eq!(
            c.selectors_for(ip("203.0.113.1"), t0 + Duration::from_secs(10)),
            [S1]
        );
        let names = c.names_for(ip("203.0.113.1"), t0 + Duration::from_secs(10));
        assert_eq!(names.len(), 1);
        assert_eq!(&*names[0], "b.example.com");
    }

    #[test]
    fn names_without_selectors_are_not_kept() {
        let mut c = Cache::new(CacheConfig::default());
        c.learn("x.com", &[], &[(ip("192.0.2.1"), 60)], Instant::now());
        assert!(c.is_empty());
    }

    #[test]
    fn the_per_name_cap_keeps_the_addresses_that_live_longest() {
        let mut c = Cache::new(CacheConfig {
            max_ips_per_name: 2,
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        let l = c.learn(
            "cdn.com",
            &[S0],
            &[
                (ip("192.0.2.1"), 10),
                (ip("192.0.2.2"), 30),
                (ip("192.0.2.3"), 20),
            ],
            t0,
        );
        assert_eq!(l.evicted_ips, 1);
        assert!(c.selectors_for(ip("192.0.2.1"), t0).is_empty());
        assert_eq!(c.selectors_for(ip("192.0.2.2"), t0), [S0]);
        assert_eq!(c.selectors_for(ip("192.0.2.3"), t0), [S0]);
        assert_eq!(c.addresses(), 2);
    }

    #[test]
    fn the_least_recently_answered_name_makes_room() {
        let mut c = Cache::new(CacheConfig {
            max_names: 2,
            ..CacheConfig::default()
        });
        let t0 = Instant::now();
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 60)], t0);
        c.learn("b.com", &[S0], &[(ip("192.0.2.2"), 60)], t0);
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 60)], t0); // a is fresh again
        let l = c.learn("c.com", &[S0], &[(ip("192.0.2.3"), 60)], t0);
        assert_eq!(l.evicted_names, 1);
        assert_eq!(c.len(), 2);
        assert!(c.selectors_for(ip("192.0.2.2"), t0).is_empty(), "b went");
        assert_eq!(c.selectors_for(ip("192.0.2.1"), t0), [S0]);
        assert_eq!(c.selectors_for(ip("192.0.2.3"), t0), [S0]);
    }

    #[test]
    fn a_policy_change_reselects_and_drops_names_nothing_matches_any_more() {
        let mut c = Cache::new(CacheConfig::default());
        let t0 = Instant::now();
        c.learn("a.com", &[S0], &[(ip("192.0.2.1"), 60)], t0);
        c.learn("b.com", &[S0], &[(ip("192.0.2.2"), 60)], t0);
        c.reselect(|n| if n == "a.com" { vec![S1] } else { vec![] });
        assert_eq!(c.selectors_for(ip("192.0.2.1"), t0), [S1]);
        assert!(c.selectors_for(ip("192.0.2.2"), t0).is_empty());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_heap_estimate_grows_with_the_names_held() {
        let fill = |n: u32| {
            let mut c = Cache::new(CacheConfig::default());
            let t0 = Instant::now();
            for i in 0..n {
                let [_, _, a, b] = i.to_be_bytes();
                let addr = IpAddr::from([198, 18, a, b]);
                c.learn(&format!("host-{i}.example.com"), &[S0], &[(addr, 300)], t0);
            }
            c
        };
        let (small, big) = (fill(100), fill(1000));
        assert_eq!(big.len(), 1000);
        assert!(small.heap_bytes() > 100 * 20, "{}", small.heap_bytes());
        assert!(big.heap_bytes() > 5 * small.heap_bytes());
    }
}
