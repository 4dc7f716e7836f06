//! Where cluster state comes from.

pub mod files;

pub use files::{SourceError, load_paths, read_paths};
