//! Building blocks of the compiled engine: identities, address sets, resolved rules and per-pod
//! rule tables. [`Engine`](crate::Engine) assembles them.

pub(crate) mod identity;
pub(crate) mod ipset;
pub(crate) mod rule;
pub(crate) mod table;
