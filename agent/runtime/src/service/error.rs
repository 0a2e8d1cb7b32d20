//! The errors of the service runtime.

use std::path::{Path, PathBuf};

/// What can go wrong defining, starting or controlling a managed service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A spec that breaks a rule; names the service and the field.
    #[error("service {service:?}: {field}: {reason}")]
    Spec {
        /// The service.
        service: String,
        /// The field at fault.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Two services with one name.
    #[error("service {0:?} is defined twice")]
    Duplicate(String),
    /// No such service.
    #[error("no service {0:?}")]
    Unknown(String),
    /// The request does not fit the service's state.
    #[error("service {service:?} is {state}: cannot {action}")]
    State {
        /// The service.
        service: String,
        /// Its state.
        state: String,
        /// What was asked.
        action: String,
    },
    /// A migration holds the service frozen: only it may thaw it.
    #[error("service {service:?} is held frozen by {owner}: cannot {action}")]
    Held {
        /// The service.
        service: String,
        /// Who froze it (a migration's id).
        owner: String,
        /// What was asked.
        action: String,
    },
    /// A cgroup operation failed.
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A virtual IP could not be added or removed.
    #[error("vip: {0}")]
    Vip(String),
    /// The image could not be prepared.
    #[error("image: {0}")]
    Image(String),
    /// The service's supervisor is gone (the agent is stopping).
    #[error("the service runtime is shutting down")]
    Shutdown,
}

impl ServiceError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ServiceError {
        ServiceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn cgroup(path: &Path, reason: impl std::fmt::Display) -> ServiceError {
        ServiceError::Cgroup {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}
