//! The errors of the transport module.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What can go wrong with certificates, connections and frames.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that must not be overwritten exists.
    #[error("{0} already exists: refusing to overwrite it")]
    Exists(PathBuf),
    /// A node name that cannot be a DNS label.
    #[error(
        "node name {0:?} cannot name a certificate: use 1 to 63 of a-z, 0-9 and '-', \
         not starting or ending with '-'"
    )]
    InvalidNodeName(String),
    /// A certificate or key could not be made or parsed.
    #[error("certificate: {0}")]
    Cert(String),
    /// The TLS configuration could not be built.
    #[error("tls: {0}")]
    Tls(String),
    /// The QUIC endpoint could not be opened.
    #[error("cannot open the transport on {addr}/udp: {reason}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        reason: String,
    },
    /// A connection could not be made or was refused.
    #[error("connection to {node} at {addr}: {reason}")]
    Connect {
        /// The node expected there.
        node: String,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        reason: String,
    },
    /// A peer was refused: its certificate, its name or its protocol version.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The connection or stream failed or closed.
    #[error("connection: {0}")]
    Connection(String),
    /// The work asked for is already running and runs one at a time (a path probe): try again
    /// when it is done.
    #[error("busy: {0}")]
    Busy(String),
    /// A frame could not be encoded or decoded.
    #[error("frame: {0}")]
    Frame(String),
}

impl TransportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> TransportError {
        TransportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn cert(e: impl std::fmt::Display) -> TransportError {
        TransportError::Cert(e.to_string())
    }

    pub fn connection(e: impl std::fmt::Display) -> TransportError {
        TransportError::Connection(e.to_string())
    }
}
