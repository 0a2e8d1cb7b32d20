//! The errors of the image store and of image pushes.

use std::path::{Path, PathBuf};

use super::store::Digest;

/// What can go wrong storing, reading, writing out or pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not 64 hex digits.
    #[error("{0:?} is not a SHA-256 digest (64 hex digits)")]
    BadDigest(String),
    /// A chunk's bytes do not hash to its name.
    #[error("chunk {digest} is corrupt: its bytes hash to {got}")]
    CorruptChunk {
        /// The name it should have.
        digest: Digest,
        /// What its bytes hash to.
        got: Digest,
    },
    /// A chunk an image needs is not in the store.
    #[error("chunk {0} is missing")]
    MissingChunk(Digest),
    /// No such image in the store.
    #[error("no image {0} in the store")]
    UnknownImage(Digest),
    /// A manifest that breaks the rules (see `Manifest::validate`).
    #[error("bad manifest: {0}")]
    BadManifest(String),
    /// A file type an image cannot hold.
    #[error("{0}: only files, directories and symbolic links go into an image")]
    Unsupported(PathBuf),
    /// The destination exists.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The peer refused or the push failed.
    #[error("push: {0}")]
    Push(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] godwit_transport::TransportError),
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
