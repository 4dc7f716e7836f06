//! Where cluster state comes from: files and directories of YAML (the sandbox, tests, local
//! mode), and the API server in a cluster. Everything after the source is the same code.

pub mod dir_objects;
pub mod dir_watch;
pub mod files;
pub mod kube;

pub use files::{
    Fingerprint, SETTLED_AFTER, SourceError, SourceFile, fingerprint_paths, load_paths, read_paths,
};
