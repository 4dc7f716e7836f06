//! podwall's sidecar proxy.
//!
//! It will own the pod's traffic: iptables redirection, the inbound and outbound listeners, the
//! original destination, L4 enforcement with the compiled policy, the NFQUEUE packet filter, flow
//! events and metrics. It must never know about the API server: its policy comes from a source
//! (a directory, or the control plane's stream).
//!
//! Nothing is implemented yet; the sidecar issue builds it.
