//! The Raft group's storage on disk: the log and the vote ([`LogStore`]), and the placement
//! state machine with its snapshots ([`StateMachine`]), all in one directory.
//!
//! | file | holds | written |
//! | --- | --- | --- |
//! | `log` | the log: a magic, then length-prefixed, checksummed records | appended, `fdatasync` before Raft hears it |
//! | `vote.json` | the vote and the last committed log id | temp file, `fsync`, rename, `fsync` of the directory |
//! | `snapshot.json` | the last snapshot: placement, last applied log id, membership | the same |
//! | `lock` | an exclusive `flock`, so two agents never share a directory | once |
//!
//! **Durability.** Raft counts a node's acknowledgement towards a commit, so nothing is
//! acknowledged before it is on disk: an append calls its `LogFlushed` callback only after
//! `fdatasync`; a vote returns only after its rename is synced. Truncating the log cuts the file
//! and syncs it; purging rewrites it to a temp file and renames it.
//!
//! **Recovery.** A crash can leave a half-written record at the end of the log; on open a record
//! that is cut short, fails its checksum or does not decode ends the log, and it and anything
//! after it are dropped (logged), never fatal. Such a record was never acknowledged. Any other
//! damage (a bad magic, a hole in the indexes, an unreadable vote or snapshot) is an error that
//! names the file.
//!
//! **State.** The state machine lives in memory and is persisted by its snapshots. A restarted
//! node loads the last snapshot and, since the committed log id is saved, openraft re-applies
//! the committed entries after it before the node serves anything.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

mod log;
mod sm;
#[cfg(test)]
mod tests;

pub use log::{LogReader, LogStore};
pub use sm::{SnapshotBuilder, StateMachine};

/// The log file's name in the store's directory.
pub const LOG_FILE: &str = "log";
/// The vote file's name.
pub const VOTE_FILE: &str = "vote.json";
/// The snapshot file's name.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
const LOCK_FILE: &str = "lock";

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The file (or directory).
        path: PathBuf,
        /// What was being done: "open", "read", "write", "sync", ...
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A file holds something this store did not write.
    #[error("{} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process holds the directory.
    #[error("{} is locked by another process (is another agent using this directory?)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An append that does not follow the last entry (openraft truncates before it rewrites).
    #[error("{}: entry {got} appended after entry {last}; truncate first", path.display())]
    OutOfOrder {
        /// The log file.
        path: PathBuf,
        /// The last entry's index.
        last: u64,
        /// The index offered.
        got: u64,
    },
    /// A blocking I/O task died.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl StoreError {
    pub(crate) fn io<'a>(
        path: &'a Path,
        op: &'static str,
    ) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// Opens (or creates) the store in `dir`: the log with its vote, and the state machine restored
/// from its last snapshot. A torn tail of the log is dropped; anything else damaged is an error.
/// Fails with [`StoreError::Locked`] while another process has the directory open.
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir, "create"))?;
        let lock = lock_dir(&dir)?;
        let log = LogStore::open(&dir, lock)?;
        let sm = StateMachine::open(&dir)?;
        Ok((log, sm))
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Takes the directory's lock; it is held as long as the returned file is open.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StoreError::io(&path, "open"))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            StoreError::Locked { path }
        } else {
            StoreError::Io {
                path,
                op: "lock",
                source: err,
            }
        });
    }
    Ok(f)
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new content:
/// a temp file, `fsync`, rename, `fsync` of the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(StoreError::io(&tmp, "create"))?;
    f.write_all(bytes).map_err(StoreError::io(&tmp, "write"))?;
    f.sync_all().map_err(StoreError::io(&tmp, "sync"))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(StoreError::io(&path, "rename into"))?;
    sync_dir(dir)
}

/// Makes the directory's entries (a created or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir, "sync"))
}

/// Reads `dir/name`, `None` when it does not exist. A leftover `name.tmp` (a crash before its
/// rename) is removed: the file it was to replace is still whole.
pub(crate) fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => tracing::info!(file = %tmp.display(), "removed an unfinished temp file"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&tmp, "remove")(e)),
    }
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&path, "read")(e)),
    }
}

/// A [`StoreError`] as openraft wants it: any storage failure stops the Raft node.
pub(crate) fn to_storage(
    e: &StoreError,
    verb: openraft::ErrorVerb,
    subject: openraft::ErrorSubject<crate::NodeId>,
) -> openraft::StorageError<crate::NodeId> {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}

/// CRC-32 (IEEE 802.3, reflected, the one zlib computes) over the concatenation of `parts`.
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for p in parts {
        for &b in *p {
            c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}
