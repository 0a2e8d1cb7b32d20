//! The errors of state migration.

use std::path::{Path, PathBuf};

/// What can go wrong moving a service's state.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The declared state cannot be moved as it is.
    #[error("state: {0}")]
    BadState(String),
    /// The peer failed or said something unexpected.
    #[error("peer: {0}")]
    Peer(String),
    /// The copies differ after the final round.
    #[error("the copy differs from the source in {}: {:?}", .0.len(), .0)]
    Mismatch(Vec<String>),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] godwit_transport::TransportError),
}

impl MigrateError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> MigrateError {
        MigrateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
