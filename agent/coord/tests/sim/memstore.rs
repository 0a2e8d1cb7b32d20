//! The simulation's storage: a log and vote that survive a node's restart (a [`Disk`] kept
//! beside the node, written before openraft hears back, as the on-disk store fsyncs), and a
//! state machine that does not (rebuilt from the committed log on restart, as the on-disk store
//! rebuilds it after its last snapshot).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use godwit_coord::{Member, NodeId, Outcome, Placement, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What a node keeps across a restart.
#[derive(Default)]
pub(crate) struct Disk {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    snapshot: Option<(SnapshotMeta<NodeId, Member>, Vec<u8>)>,
}

/// Opens the store kept in `disk`: its log, and a fresh state machine with its placement.
pub(crate) fn open(disk: &Arc<Mutex<Disk>>) -> (Log, Sm) {
    let (tx, _) = watch::channel(Arc::new(Placement::default()));
    let mut sm = Sm {
        disk: disk.clone(),
        state: State::default(),
        tx,
    };
    // Like the on-disk store: the state machine starts from the last snapshot, if any.
    let snap = disk.lock().unwrap().snapshot.clone();
    if let Some((_, data)) = snap {
        sm.state = serde_json::from_slice(&data).expect("a snapshot this store wrote");
        sm.tx.send_replace(Arc::new(sm.state.placement.clone()));
    }
    (Log(disk.clone()), sm)
}

#[derive(Clone)]
pub(crate) struct Log(Arc<Mutex<Disk>>);

fn lock(d: &Mutex<Disk>) -> std::sync::MutexGuard<'_, Disk> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl RaftLogReader<TypeConfig> for Log {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(lock(&self.0)
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for Log {
    type LogReader = Log;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let d = lock(&self.0);
        let last = d.log.values().next_back().map(|e| e.log_id).or(d.purged);
        Ok(LogState {
            last_purged_log_id: d.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Log {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        lock(&self.0).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.0).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        lock(&self.0).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.0).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut d = lock(&self.0);
            for e in entries {
                d.log.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut d = lock(&self.0);
        d.log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut d = lock(&self.0);
        d.purged = Some(log_id);
        d.log = d.log.split_off(&(log_id.index + 1));
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    placement: Placement,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

pub(crate) struct Sm {
    disk: Arc<Mutex<Disk>>,
    state: State,
    tx: watch::Sender<Arc<Placement>>,
}

impl Sm {
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Placement>> {
        self.tx.subscribe()
    }
}

pub(crate) struct Builder {
    disk: Arc<Mutex<Disk>>,
    state: State,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = serde_json::to_vec(&self.state).expect("a placement serializes");
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!("{}", self.state.last_applied.map_or(0, |l| l.index)),
        };
        lock(&self.disk).snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Sm {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            let index = e.log_id.index;
            self.state.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Normal(cmd) => self.state.placement.apply(index, &cmd),
                EntryPayload::Blank => {
                    self.state.placement.applied = index;
                    Outcome::Applied { epoch: index }
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(e.log_id), m);
                    self.state.placement.applied = index;
                    Outcome::Applied { epoch: index }
                }
            });
        }
        if !out.is_empty() {
            self.tx.send_replace(Arc::new(self.state.placement.clone()));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            disk: self.disk.clone(),
            state: self.state.clone(),
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
        let data = snapshot.into_inner();
        self.state = serde_json::from_slice(&data).expect("a snapshot this store built");
        lock(&self.disk).snapshot = Some((meta.clone(), data));
        self.tx.send_replace(Arc::new(self.state.placement.clone()));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(lock(&self.disk)
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
