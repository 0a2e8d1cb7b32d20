//! The placement state machine as openraft drives it: [`StateMachine`] applies committed
//! entries to a [`Placement`], publishes each new state on a watch channel, and persists itself
//! only through snapshots (`snapshot.json`); after a restart openraft re-applies the committed
//! entries that follow the snapshot.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use super::{read_optional, to_storage, write_atomic, StoreError, SNAPSHOT_FILE};
use crate::{Member, NodeId, Outcome, Placement, TypeConfig};

/// Everything the state machine holds; a snapshot's data is this, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct State {
    placement: Placement,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

/// `snapshot.json`: a snapshot's id and its state.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    snapshot_id: String,
    state: State,
}

/// The last snapshot, as openraft hands it out.
#[derive(Clone)]
struct Current {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

impl Current {
    fn new(snapshot_id: String, state: &State) -> Current {
        Current {
            meta: SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            },
            data: serde_json::to_vec(state).expect("a placement serializes to JSON"),
        }
    }

    fn snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// The placement log's state machine (openraft's [`RaftStateMachine`]).
pub struct StateMachine {
    dir: PathBuf,
    state: State,
    /// The last snapshot; shared with the builders, which run beside `apply`.
    current: Arc<Mutex<Option<Current>>>,
    tx: watch::Sender<Arc<Placement>>,
}

/// Builds a snapshot of the state as it was when openraft asked for the builder.
pub struct SnapshotBuilder {
    dir: PathBuf,
    state: State,
    current: Arc<Mutex<Option<Current>>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, restored from its last snapshot if there is one.
    pub(super) fn open(dir: &Path) -> Result<StateMachine, StoreError> {
        let (state, current) = match read_optional(dir, SNAPSHOT_FILE)? {
            None => (State::default(), None),
            Some(b) => {
                let f: SnapshotFile =
                    serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                        path: dir.join(SNAPSHOT_FILE),
                        detail: e.to_string(),
                    })?;
                let current = Current::new(f.snapshot_id, &f.state);
                (f.state, Some(current))
            }
        };
        tracing::info!(
            dir = %dir.display(),
            last_applied = ?state.last_applied.map(|l| l.index),
            services = state.placement.services.len(),
            "placement state restored"
        );
        let (tx, _) = watch::channel(Arc::new(state.placement.clone()));
        Ok(StateMachine {
            dir: dir.to_owned(),
            state,
            current: Arc::new(Mutex::new(current)),
            tx,
        })
    }

    /// The placement as applied so far, and every later one: updated after each batch of
    /// committed entries and after a snapshot is installed. The agent reconciles its services
    /// from it. Before `Raft::new` returns it shows only the last snapshot; `Raft::new`
    /// re-applies the committed entries after it, so read it after that.
    pub fn watch(&self) -> watch::Receiver<Arc<Placement>> {
        self.tx.subscribe()
    }

    /// The placement as applied so far.
    pub fn placement(&self) -> Arc<Placement> {
        self.tx.borrow().clone()
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.state.placement.clone()));
    }
}

/// Persists `cur` as the last snapshot. A built one (`replace == false`) does not replace a
/// later one, installed meanwhile; an installed one always replaces.
async fn persist(
    dir: &Path,
    slot: &Mutex<Option<Current>>,
    cur: Current,
    state: State,
    replace: bool,
) -> Result<(), StoreError> {
    let mut slot = slot.lock().await;
    if let Some(have) = slot.as_ref() {
        if !replace && have.meta.last_log_id > cur.meta.last_log_id {
            return Ok(());
        }
    }
    let file = SnapshotFile {
        snapshot_id: cur.meta.snapshot_id.clone(),
        state,
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("a placement serializes to JSON");
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || write_atomic(&dir, SNAPSHOT_FILE, &bytes))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    *slot = Some(cur);
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let index = self.state.last_applied.map_or(0, |l| l.index);
        let cur = Current::new(format!("{index}-{unix_ms}"), &self.state);
        let snap = cur.snapshot();
        persist(&self.dir, &self.current, cur, self.state.clone(), false)
            .await
            .map_err(|e| {
                to_storage(
                    &e,
                    ErrorVerb::Write,
                    ErrorSubject::Snapshot(Some(snap.meta.signature())),
                )
            })?;
        tracing::info!(snapshot = %snap.meta, "built a snapshot of the placement log");
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            let index = e.log_id.index;
            self.state.last_applied = Some(e.log_id);
            let outcome = match e.payload {
                EntryPayload::Normal(cmd) => {
                    self.state
                        .placement
                        .apply_in(index, e.log_id.leader_id.term, &cmd)
                }
                EntryPayload::Blank => {
                    self.state.placement.applied = index;
                    Outcome::Applied { epoch: index }
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(e.log_id), m);
                    self.state.placement.applied = index;
                    Outcome::Applied { epoch: index }
                }
            };
            out.push(outcome);
        }
        if !out.is_empty() {
            self.publish();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            state: self.state.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let state: State = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(openraft::StorageIOError::new(
                subject(),
                ErrorVerb::Read,
                openraft::AnyError::new(&e),
            ))
        })?;
        if state.last_applied != meta.last_log_id || state.membership != meta.last_membership {
            let e = StoreError::Corrupt {
                path: self.dir.join(SNAPSHOT_FILE),
                detail: format!(
                    "a received snapshot's data (last applied {:?}) does not match its meta ({meta})",
                    state.last_applied
                ),
            };
            return Err(to_storage(&e, ErrorVerb::Read, subject()));
        }
        let cur = Current {
            meta: meta.clone(),
            data,
        };
        persist(&self.dir, &self.current, cur, state.clone(), true)
            .await
            .map_err(|e| to_storage(&e, ErrorVerb::Write, subject()))?;
        tracing::info!(snapshot = %meta, "installed a snapshot of the placement log");
        self.state = state;
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current.lock().await.as_ref().map(Current::snapshot))
    }
}
