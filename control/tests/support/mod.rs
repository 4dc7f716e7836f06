//! Test support shared by the control-plane tests.

pub(crate) mod apiserver;
