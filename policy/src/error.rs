//! The crate's error type: input that cannot be read at all.
//!
//! Objects that can be read but are invalid are not errors here: they become
//! [`Diagnostic`](crate::Diagnostic)s, are left out, and everything else still loads.

/// Input podwall cannot read at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source is not YAML (or JSON) at all.
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml {
        /// The file or source name.
        source_name: String,
        /// The parser's message, with line and column.
        message: String,
    },
}
