//! Where cluster state comes from.

pub mod dir_watch;
pub mod files;

pub use files::{SourceError, load_paths, read_paths};
