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
    /// The path to the target could not be measured.
    #[error("path: {0}")]
    Path(godwit_transport::TransportError),
    /// The service's image could not be pushed to the target.
    #[error("image: {0}")]
    Image(#[from] godwit_image::ImageError),
    /// The service manager failed.
    #[error(transparent)]
    Service(#[from] godwit_runtime::service::ServiceError),
    /// The service cannot be moved as it is now (not here, not running, or the target is
    /// this node): nothing was tried.
    #[error("{0}")]
    Unmovable(String),
    /// The caller may not start this migration: audited, nothing tried.
    #[error("{0}")]
    Refused(String),
    /// A node's transport address is unknown.
    #[error("{0}")]
    NoRoute(String),
    /// A step of the service's hold or resume failed (`what`: freeze, stop, recording ...).
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        source: Box<MigrateError>,
    },
    /// The journal could not record the migration.
    #[error("journal: {0}")]
    Journal(Box<MigrateError>),
    /// After the decision the target gave the service back: it runs on the source again.
    #[error("hand-off: {0}; the service runs here again")]
    GivenBack(String),
    /// After the decision the hand-off went unanswered: resolved in the background, and the
    /// service runs nowhere until the target answers.
    #[error("hand-off: {0}; unresolved, the service runs nowhere until the target answers")]
    Unresolved(String),
}

impl MigrateError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> MigrateError {
        MigrateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
