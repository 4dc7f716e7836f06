//! podwall's DNS proxy and FQDN name matching.
//!
//! It will intercept the pod's DNS, apply DNS rules, and learn name -> address mappings for
//! toFQDNs egress rules, with TTLs.
//!
//! Nothing is implemented yet; the FQDN issue builds it.
