//! Subcommand glue: turn parsed arguments into calls on the crates, print, pick the exit code.

pub(crate) mod analyze;
pub(crate) mod control;
pub(crate) mod inject;
pub(crate) mod logging;
pub(crate) mod proxy;
pub(crate) mod sandbox;
