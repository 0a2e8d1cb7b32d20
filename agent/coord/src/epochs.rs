//! The highest epoch this node has seen for each service, on disk: a node fsyncs the epoch
//! before it starts a service at it, and refuses anything older, so that no restart, replay
//! or lagging replica makes it run a service at a placement the log has moved past.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The epochs of one node (`<data_dir>/coord/epochs.json`).
#[derive(Debug)]
pub struct EpochStore {
    path: PathBuf,
    seen: Mutex<BTreeMap<String, u64>>,
}

/// Refused: the log placed the service at a newer epoch than the one offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("epoch {offered} of {service} is older than {seen}, seen before")]
pub struct Stale {
    pub service: String,
    pub offered: u64,
    pub seen: u64,
}

impl EpochStore {
    /// Opens (or creates) the store at `path`. A file that cannot be read is an error: starting
    /// with an empty store would forget epochs already promised.
    pub fn open(path: &Path) -> std::io::Result<EpochStore> {
        let seen = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(EpochStore {
            path: path.to_path_buf(),
            seen: Mutex::new(seen),
        })
    }

    /// The highest epoch seen for `service`.
    pub fn get(&self, service: &str) -> Option<u64> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(service)
            .copied()
    }

    /// Admits `epoch` for `service`: refused when older than one seen; otherwise recorded and
    /// fsynced before this returns.
    pub fn admit(&self, service: &str, epoch: u64) -> Result<(), AdmitError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(service) {
            Some(s) if *s > epoch => {
                return Err(AdmitError::Stale(Stale {
                    service: service.to_string(),
                    offered: epoch,
                    seen: *s,
                }))
            }
            Some(s) if *s == epoch => return Ok(()),
            _ => {}
        }
        let mut next = seen.clone();
        next.insert(service.to_string(), epoch);
        write_synced(&self.path, &serde_json::to_vec(&next).unwrap_or_default())
            .map_err(AdmitError::Io)?;
        *seen = next;
        Ok(())
    }
}

/// Why an epoch was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Stale(Stale),
    #[error("recording the epoch: {0}")]
    Io(std::io::Error),
}

/// Writes `data` to `path` durably: a temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_epoch_is_refused_across_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("epochs.json");
        let s = EpochStore::open(&p).unwrap();
        s.admit("kv", 5).unwrap();
        s.admit("kv", 5).unwrap();
        drop(s);
        let s = EpochStore::open(&p).unwrap();
        assert_eq!(s.get("kv"), Some(5));
        assert!(matches!(
            s.admit("kv", 4),
            Err(AdmitError::Stale(Stale { seen: 5, .. }))
        ));
        s.admit("kv", 9).unwrap();
        assert_eq!(EpochStore::open(&p).unwrap().get("kv"), Some(9));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("epochs.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(EpochStore::open(&p).is_err());
    }
}
