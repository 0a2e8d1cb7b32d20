//! The API's Unix socket: made `root:group` mode 0660 (0600 when the group does not exist),
//! in a directory made when missing, replacing a stale socket but never a live one, and
//! removed when the agent stops.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::access::{group_id, Access};
use super::ApiError;

/// The bound socket, and who may act through it.
pub struct ApiSocket {
    pub listener: UnixListener,
    /// Where it is.
    pub path: PathBuf,
    /// Who may act on it.
    pub access: Access,
    /// Device and inode of the socket file this agent made, so that only that one is removed.
    id: (u64, u64),
}

/// Binds `path` and gives it to `group`. `Ok(None)`: this agent may not make the socket (an
/// unprivileged agent, a read-only directory), which it says once; it then serves reads over
/// TCP only. A socket another agent answers on, or a path that is not a socket, is an error.
pub fn bind(path: &Path, group: &str) -> Result<Option<ApiSocket>, ApiError> {
    let fail = |source: std::io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let not_allowed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
        ) || e.raw_os_error() == Some(libc::EPERM)
    };
    let degrade = |e: std::io::Error| {
        tracing::warn!(
            socket = %path.display(),
            error = %e,
            "cannot make the API socket: nothing can be changed through the API (reads stay \
             on the TCP address); run the agent as root, or set [api] socket to a directory it \
             may write"
        );
        Ok(None)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
        {
            return if not_allowed(&e) {
                degrade(e)
            } else {
                Err(fail(e))
            };
        }
    }
    remove_stale(path)?;
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if not_allowed(&e) => return degrade(e),
        Err(e) => return Err(fail(e)),
    };
    let gid = match group_id(group) {
        Ok(gid) => gid,
        Err(e) => {
            tracing::warn!(group, error = %e, "cannot look the API group up");
            None
        }
    };
    // The socket file starts as the umask leaves it; it is narrowed before any caller can be
    // allowed by its group (and every request that acts is checked against the caller's
    // credentials anyway).
    let mode = match gid {
        Some(gid) => match std::os::unix::fs::lchown(path, None, Some(gid)) {
            Ok(()) => 0o660,
            Err(e) => {
                tracing::warn!(
                    socket = %path.display(),
                    group,
                    error = %e,
                    "cannot give the API socket to its group: only root may act through it"
                );
                0o600
            }
        },
        None => {
            tracing::warn!(
                socket = %path.display(),
                group,
                "the API group does not exist: only root may act through the socket (mode \
                 0600); create it with `groupadd --system {group}` and restart the agent to let \
                 its members act",
            );
            0o600
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    let meta = std::fs::symlink_metadata(path).map_err(fail)?;
    tracing::debug!(socket = %path.display(), mode = format!("{mode:o}"), "API socket bound");
    Ok(Some(ApiSocket {
        listener,
        path: path.to_path_buf(),
        access: Access::new(group, gid),
        id: (meta.dev(), meta.ino()),
    }))
}

/// Removes a socket file nothing answers on (left by an agent that was killed). A socket that
/// answers belongs to a running agent, and a file that is not a socket to someone else: both
/// are errors.
fn remove_stale(path: &Path) -> Result<(), ApiError> {
    let fail = |source: std::io::Error| ApiError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ApiError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing a stale API socket");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(fail(e)),
    }
}

impl ApiSocket {
    /// Removes the socket file at shutdown, once its listener is closed: only if it is still
    /// the file this agent made and nothing answers on it (its inode may have been reused by
    /// another agent's socket).
    pub fn remove_file(path: &Path, id: (u64, u64)) {
        let same = std::fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == id);
        let answers = || std::os::unix::net::UnixStream::connect(path).is_ok();
        if same && !answers() {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove the API socket");
            }
        }
    }

    /// Device and inode of the socket file, for [`ApiSocket::remove_file`].
    pub fn file_id(&self) -> (u64, u64) {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[tokio::test]
    async fn binds_in_a_new_directory_replaces_a_stale_socket_and_keeps_a_live_one() {
        let d = dir();
        let path = d.path().join("run/godwit/api.sock");
        let sock = bind(&path, "no-such-group-here").unwrap().unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600, "no group: root only");
        let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.mode() & 0o777, 0o755);
        // A second agent on the same path is refused while the first answers.
        match bind(&path, "no-such-group-here") {
            Err(ApiError::SocketInUse(p)) => assert_eq!(p, path),
            other => panic!("expected SocketInUse, got {:?}", other.map(|s| s.is_some())),
        }
        // Dropped without removing the file: stale, replaced by the next bind.
        let id = sock.file_id();
        drop(sock);
        assert!(path.exists());
        let again = bind(&path, "no-such-group-here").unwrap().unwrap();
        // Only a file nothing answers on is removed: not the live agent's, whatever its inode.
        ApiSocket::remove_file(&path, id);
        ApiSocket::remove_file(&path, again.file_id());
        assert!(path.exists(), "a live agent's socket stays");
        let again_id = again.file_id();
        drop(again);
        ApiSocket::remove_file(&path, (again_id.0, again_id.1.wrapping_add(1)));
        assert!(path.exists(), "another file stays");
        ApiSocket::remove_file(&path, again_id);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let d = dir();
        let path = d.path().join("api.sock");
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(
            bind(&path, "godwit"),
            Err(ApiError::NotASocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[tokio::test]
    async fn an_existing_group_gets_the_socket_with_mode_0660() {
        let d = dir();
        let path = d.path().join("api.sock");
        // Group 0 exists everywhere; its name differs (root, wheel).
        let name = {
            // SAFETY: getgrgid returns a pointer into static storage or null; it is read at
            // once, on this thread.
            let g = unsafe { libc::getgrgid(0) };
            assert!(!g.is_null());
            // SAFETY: gr_name is a NUL-terminated string of the entry just returned.
            unsafe { std::ffi::CStr::from_ptr((*g).gr_name) }
                .to_string_lossy()
                .into_owned()
        };
        let _sock = bind(&path, &name).unwrap().unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), 0);
    }
}
