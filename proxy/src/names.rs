//! What the pod's DNS answers taught: the names each address is valid for, as toFQDNs rules
//! need them, bounded and expiring ([`podwall_fqdn::cache`]), with their metrics.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use podwall_fqdn::cache::{Cache, CacheConfig};

use crate::metrics::FqdnMetrics;
use crate::pod_policy::PodPolicy;

/// The pod's name cache, with its metrics.
#[derive(Debug)]
pub(crate) struct Names {
    cache: Mutex<Cache>,
    metrics: FqdnMetrics,
}

impl Names {
    /// An empty cache.
    pub(crate) fn new(config: CacheConfig, metrics: FqdnMetrics) -> Self {
        Names {
            cache: Mutex::new(Cache::new(config)),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The names `ip` is valid for now.
    pub(crate) fn names_for(&self, ip: IpAddr) -> Vec<Arc<str>> {
        self.lock().names_for(ip, Instant::now())
    }

    /// Learns from an answer to the pod: each name on the answer's CNAME chain that the pod's
    /// toFQDNs selectors match gets the addresses its own resolution leads to (its own and
    /// those of the names its CNAMEs lead to, not those of a name before it). Returns how
    /// many were new.
    pub(crate) fn learn(
        &self,
        policy: &PodPolicy,
        answer: &podwall_fqdn::message::Answer,
    ) -> usize {
        if policy.own_fqdn.is_empty() || answer.learnable().is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut cache = self.lock();
        let mut added = 0;
        for (i, name) in answer.names.iter().enumerate() {
            let ids = policy.fqdn_ids(std::slice::from_ref(name));
            if ids.is_empty() {
                continue;
            }
            let addresses = answer.learnable_for(i);
            if addresses.is_empty() {
                continue;
            }
            let l = cache.learn(name, &ids, &addresses, now);
            added += l.added;
            self.metrics
                .evicted
                .inc_by((l.evicted_names + l.evicted_ips) as u64);
        }
        // Expired entries go in the periodic sweep ([`Names::expire`]), not on every answer:
        // a sweep walks every name.
        self.metrics.learned.inc_by(added as u64);
        self.gauges(&cache);
        added
    }

    /// After a policy change: names are matched against the new selectors.
    pub(crate) fn reselect(&self, policy: &PodPolicy) {
        let mut cache = self.lock();
        cache.reselect(|name| policy.fqdn_ids(&[name]));
        self.gauges(&cache);
    }

    /// Drops what expired (run now and then, so the gauges stay true).
    pub(crate) fn expire(&self) {
        let mut cache = self.lock();
        cache.expire(Instant::now());
        self.gauges(&cache);
    }

    fn gauges(&self, cache: &Cache) {
        self.metrics.names.set(cache.len() as i64);
        self.metrics.addresses.set(cache.addresses() as i64);
    }
}
