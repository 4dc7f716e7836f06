//! podwall's control plane.
//!
//! It owns where cluster state comes from (a directory of YAML today; the API server's watch in
//! the control-plane issue), and later the per-pod policy computation, the stream to sidecars and
//! the injection webhook. Everything after the source is the same code whatever the source is.
//! It must never touch packets.

pub mod auth;
pub mod inject;
pub mod server;
pub mod source;
pub mod status;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod views;
pub mod webhook;
