//! podwall's control plane.
//!
//! It owns where cluster state comes from (the API server's watch, or a directory of YAML), the
//! per-pod policy views and the feed that streams them to sidecars, the injection webhook, and
//! what operators read of its state: metrics, each replica's status and the policies' status.
//! Everything after the source is the same code whatever the source is. It never touches
//! packets. [`run::run`] assembles it from a [`run::Config`], as `podwall_proxy::run` does the
//! sidecar; the binary only parses flags.

pub mod auth;
pub mod certs;
pub mod inject;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod policy_status;
pub mod protection;
pub mod replica;
pub mod run;
pub mod server;
pub mod source;
pub mod store;
#[cfg(test)]
mod test_log;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unprotected;
pub mod views;
pub mod webhook;
