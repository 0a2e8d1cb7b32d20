//! The migration journal: one small JSON file per migration and side under
//! `<data_dir>/migrations/`, written durably (temporary file, `fsync`, rename, `fsync` of the
//! directory) at every step that decides where the service may run. An agent that starts
//! reads it back and finishes or undoes what a crash cut short (`agent::recover`).
//!
//! The protocol is a two-phase commit with the source as coordinator:
//!
//! - the target's `Prepared` (the verified copy renamed into place) is a vote, not a licence
//!   to run the service;
//! - the source's `Committed` is the decision; before it, any failure or crash resumes the
//!   service on the source, and the target drops a prepared copy when no decision comes;
//! - after it the source never runs the service again unless the target says it gave it back
//!   (`Returned`), and the target, once it knows the decision (`Owned`), starts the service
//!   even if the source is gone.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::MigrateError;

/// Where a migration stands on its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourcePhase {
    /// Live rounds, or the last one with the service frozen (not journalled apart: a restart
    /// treats both the same).
    Copying,
    /// The service is stopped for the last round (intermittent mode).
    Frozen,
    /// The target confirmed its commit and the decision is made: the service is the target's.
    Committed,
}

/// A migration as its source records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// The migration's id.
    pub migration: String,
    /// The service.
    pub service: String,
    /// The target node.
    pub to: String,
    /// Its transport address.
    pub addr: std::net::SocketAddr,
    /// Where it stands.
    pub phase: SourcePhase,
    /// The service's spec here (JSON), to start it again after a crash.
    pub spec: String,
    /// The spec as handed to the target (JSON).
    pub target_spec: String,
    /// The service's cgroup directory, whose leftover processes a recovery kills.
    pub cgroup: PathBuf,
    /// Its state directory, removed once the target runs the service.
    pub state_dir: PathBuf,
    /// Last change, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The epoch of the migration's intent in the placement log (with a coordinator).
    #[serde(default)]
    pub intent: Option<u64>,
    /// The epoch the placement log committed the move at (with a coordinator): the target
    /// starts the service under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Where a migration stands on its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPhase {
    /// Rounds arrive in the staging directory.
    Staging,
    /// The verified copy is being put in place: the exchange with the destination may or may
    /// not have happened. A recovery exchanges back when it did (the destination is the
    /// staging directory, by inode), so the state that was there before is never lost.
    Committing,
    /// The verified copy is in place (fsynced, renamed); the source's decision is awaited.
    Prepared,
    /// The source decided: the service is this node's and starts here.
    Owned,
    /// Started and healthy here after the hand-off (or on its own, the source gone).
    Started,
    /// Given back (or never decided): the copy is dropped and the service never starts here.
    Returned,
}

/// A migration as its target records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEntry {
    /// The migration's id.
    pub migration: String,
    /// The service.
    pub service: String,
    /// The source node.
    pub from: String,
    /// Where it stands.
    pub phase: TargetPhase,
    /// The staging directory.
    pub staging: PathBuf,
    /// The committed state directory.
    pub dest: PathBuf,
    /// The staging directory's device and inode, which identify it wherever a rename puts it.
    #[serde(default)]
    pub staging_id: Option<(u64, u64)>,
    /// The service's spec (JSON) as the source sent it.
    pub spec: Option<String>,
    /// Last change, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// The journal directory, with one lock that orders every read-modify-write. Reading is
/// free; changing an entry takes a [`JournalGuard`] ([`Journal::lock`]), which owns the lock
/// for as long as the change takes.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (creates) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Journal, MigrateError> {
        std::fs::create_dir_all(dir).map_err(|e| MigrateError::io(dir, e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The only way to change migration `id`'s entries: waits for the journal's lock and
    /// holds it until the guard goes.
    pub async fn lock(&self, id: &str) -> JournalGuard<'_> {
        JournalGuard {
            journal: self,
            id: id.to_string(),
            _held: self.lock.lock().await,
        }
    }

    /// [`Journal::lock`] without waiting, for the recovery at start (before anything else
    /// uses the journal); `None` while someone holds it.
    pub fn try_lock(&self, id: &str) -> Option<JournalGuard<'_>> {
        Some(JournalGuard {
            journal: self,
            id: id.to_string(),
            _held: self.lock.try_lock().ok()?,
        })
    }

    fn path(&self, side: &str, id: &str) -> PathBuf {
        self.dir.join(format!("{side}-{id}.json"))
    }

    fn put<T: Serialize>(&self, side: &str, id: &str, entry: &T) -> Result<(), MigrateError> {
        let path = self.path(side, id);
        let tmp = self.dir.join(format!(".{side}-{id}.json.tmp"));
        let body =
            serde_json::to_vec_pretty(entry).map_err(|e| MigrateError::BadState(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| MigrateError::io(&tmp, e))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| MigrateError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| MigrateError::io(&path, e))?;
        super::receiver::sync_dir(&self.dir)
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, side: &str, id: &str) -> Option<T> {
        let body = std::fs::read(self.path(side, id)).ok()?;
        serde_json::from_slice(&body).ok()
    }

    fn remove(&self, side: &str, id: &str) -> Result<(), MigrateError> {
        let path = self.path(side, id);
        match std::fs::remove_file(&path) {
            Ok(()) => super::receiver::sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MigrateError::io(&path, e)),
        }
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, side: &str) -> Vec<T> {
        let prefix = format!("{side}-");
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix) && n.ends_with(".json"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|n| {
                let body = std::fs::read(self.dir.join(n)).ok()?;
                match serde_json::from_slice(&body) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!(file = %n, error = %e, "unreadable migration journal entry");
                        None
                    }
                }
            })
            .collect()
    }

    /// The source entry of migration `id`.
    pub fn source(&self, id: &str) -> Option<SourceEntry> {
        self.get("source", id)
    }

    /// Every source entry, by id.
    pub fn sources(&self) -> Vec<SourceEntry> {
        self.all("source")
    }

    /// The target entry of migration `id`.
    pub fn target(&self, id: &str) -> Option<TargetEntry> {
        self.get("target", id)
    }

    /// Every target entry, by id.
    pub fn targets(&self) -> Vec<TargetEntry> {
        self.all("target")
    }
}

/// One migration's entries, locked: reads see what the last change wrote, and every change
/// is durable (or an error) before the call returns. Dropping it releases the journal.
#[derive(Debug)]
pub struct JournalGuard<'a> {
    journal: &'a Journal,
    id: String,
    _held: tokio::sync::MutexGuard<'a, ()>,
}

impl JournalGuard<'_> {
    /// The migration's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn check(&self, migration: &str) -> Result<(), MigrateError> {
        if migration == self.id {
            Ok(())
        } else {
            Err(MigrateError::BadState(format!(
                "journal entry of {migration} written under the lock of {}",
                self.id
            )))
        }
    }

    /// The source entry.
    pub fn source(&self) -> Option<SourceEntry> {
        self.journal.source(&self.id)
    }

    /// Records `entry` (replacing the previous source entry) durably.
    pub fn put_source(&self, entry: &SourceEntry) -> Result<(), MigrateError> {
        self.check(&entry.migration)?;
        self.journal.put("source", &self.id, entry)
    }

    /// Forgets the source entry (the migration is over).
    pub fn remove_source(&self) -> Result<(), MigrateError> {
        self.journal.remove("source", &self.id)
    }

    /// The target entry.
    pub fn target(&self) -> Option<TargetEntry> {
        self.journal.target(&self.id)
    }

    /// The target entry's phase, `None` without one.
    pub fn target_phase(&self) -> Option<TargetPhase> {
        self.target().map(|e| e.phase)
    }

    /// Records `entry` (replacing the previous target entry) durably.
    pub fn put_target(&self, entry: &TargetEntry) -> Result<(), MigrateError> {
        self.check(&entry.migration)?;
        self.journal.put("target", &self.id, entry)
    }

    /// Forgets the target entry.
    pub fn remove_target(&self) -> Result<(), MigrateError> {
        self.journal.remove("target", &self.id)
    }

    /// Moves the target entry to `phase` (durably); returns the entry as it was, or `None`
    /// when there is none.
    pub fn set_target(&self, phase: TargetPhase) -> Result<Option<TargetEntry>, MigrateError> {
        let Some(mut e) = self.target() else {
            return Ok(None);
        };
        let was = e.clone();
        e.phase = phase;
        e.at_unix_ms = now_ms();
        self.put_target(&e)?;
        Ok(Some(was))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, phase: TargetPhase) -> TargetEntry {
        TargetEntry {
            migration: id.into(),
            service: "kv".into(),
            from: "n1".into(),
            phase,
            staging: "/nonexistent/kv.staging".into(),
            dest: "/nonexistent/kv".into(),
            staging_id: None,
            spec: None,
            at_unix_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_guard_changes_only_its_own_migration_and_every_change_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let g = j.lock("m1").await;
        assert!(g.put_target(&entry("m2", TargetPhase::Staging)).is_err());
        g.put_target(&entry("m1", TargetPhase::Staging)).unwrap();
        let was = g.set_target(TargetPhase::Prepared).unwrap().unwrap();
        assert_eq!(was.phase, TargetPhase::Staging);
        assert_eq!(g.target_phase(), Some(TargetPhase::Prepared));
        // Held: nobody else changes the journal meanwhile.
        assert!(j.try_lock("m2").is_none());
        drop(g);
        let g = j.try_lock("m1").unwrap();
        g.remove_target().unwrap();
        assert_eq!(g.target_phase(), None);
        assert_eq!(g.set_target(TargetPhase::Owned).unwrap(), None);
    }

    #[tokio::test]
    async fn a_write_that_fails_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j")).unwrap();
        let g = j.lock("m1").await;
        g.put_target(&entry("m1", TargetPhase::Staging)).unwrap();
        std::fs::remove_dir_all(dir.path().join("j")).unwrap();
        assert!(g.put_target(&entry("m1", TargetPhase::Prepared)).is_err());
        assert!(g
            .put_source(&SourceEntry {
                migration: "m1".into(),
                service: "kv".into(),
                to: "n2".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                phase: SourcePhase::Copying,
                spec: String::new(),
                target_spec: String::new(),
                cgroup: PathBuf::new(),
                state_dir: PathBuf::new(),
                at_unix_ms: 0,
                intent: None,
                epoch: None,
            })
            .is_err());
    }
}
