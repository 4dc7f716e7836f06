//! HTTP/1.1 and HTTP/2 inspection for podwall's L7 rules.
//!
//! It will serve connections whose (peer, port) carries HTTP rules with hyper, check every
//! request, answer denied ones with 403 and forward the rest. It must never know about iptables.
//!
//! Nothing is implemented yet; the HTTP rules issue builds it.
