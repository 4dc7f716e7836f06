//! podwall's benchmark bed: network-namespace testbeds and load runs against the direct path
//! and peer proxies.
//!
//! Nothing is implemented yet; it comes with the sidecar. Micro-benchmarks live in each crate's
//! `benches/` (the policy engine's in `policy/benches/engine.rs`).
