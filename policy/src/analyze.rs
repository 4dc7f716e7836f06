//! The offline analyzer: connectivity matrices and lint findings over a whole cluster state.

pub mod graph;
pub mod lint;
pub mod matrix;
