use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StorageError,
    StorageHelper, Vote,
};

use super::*;
use crate::{Cmd, Ha, Member, NodeId, Outcome, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(dir.path()).await.expect("open the store");
        Ok((dir, log, sm))
    }
}

/// openraft's own conformance suite for `RaftLogStorage` and `RaftStateMachine`.
#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn ent(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload,
    }
}

fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    ent(term, index, EntryPayload::Blank)
}

fn define(service: &str, node: &str) -> Cmd {
    Cmd::Define {
        service: service.into(),
        node: node.into(),
        spec: format!("image = \"{service}\""),
        ha: Ha::Restart,
    }
}

fn members(ids: &[NodeId]) -> Membership<NodeId, Member> {
    let nodes: BTreeMap<NodeId, Member> = ids
        .iter()
        .map(|i| {
            (
                *i,
                Member {
                    name: format!("n{i}"),
                    addr: format!("127.0.0.1:{}", 9000 + i),
                },
            )
        })
        .collect();
    let voters: BTreeSet<NodeId> = ids.iter().copied().collect();
    Membership::new(vec![voters], nodes)
}

async fn entries(log: &mut LogStore) -> Vec<Entry<TypeConfig>> {
    log.try_get_log_entries(..).await.expect("read the log")
}

fn indexes(es: &[Entry<TypeConfig>]) -> Vec<u64> {
    es.iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn appended_entries_the_vote_and_committed_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = vec![
        ent(1, 1, EntryPayload::Membership(members(&[1, 2, 3]))),
        blank(1, 2),
        ent(1, 3, EntryPayload::Normal(define("kv", "n1"))),
        ent(2, 4, EntryPayload::Normal(Cmd::Noop)),
    ];
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.blocking_append(written[..2].to_vec()).await.unwrap();
        log.blocking_append(written[2..].to_vec()).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        assert_eq!(entries(&mut log).await, written);
    }
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(entries(&mut log).await, written);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    let st = log.get_log_state().await.unwrap();
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (None, Some(log_id(2, 1, 4)))
    );
    // A reader handed out earlier sees later appends.
    let mut reader = log.get_log_reader().await;
    log.blocking_append([blank(2, 5)]).await.unwrap();
    assert_eq!(
        indexes(&reader.try_get_log_entries(4..).await.unwrap()),
        [4, 5]
    );
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_the_entries_before_it_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        for i in 1..=5 {
            log.blocking_append([ent(
                1,
                i,
                EntryPayload::Normal(define(&format!("s{i}"), "a")),
            )])
            .await
            .unwrap();
        }
    }
    // A crash in the middle of the last record's write: its last bytes never reached the disk.
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        assert_eq!(indexes(&entries(&mut log).await), [1, 2, 3, 4]);
        // The file was cut back to its last good record: a new entry 5 lands cleanly.
        log.blocking_append([blank(2, 5)]).await.unwrap();
    }
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        let es = entries(&mut log).await;
        assert_eq!(indexes(&es), [1, 2, 3, 4, 5]);
        assert_eq!(es[4], blank(2, 5));
    }
    // Garbage after the last record (a preallocated, never written block) and a record whose
    // bits flipped are dropped the same way.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xff; 100]);
    std::fs::write(&path, &bytes).unwrap();
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        assert_eq!(indexes(&entries(&mut log).await), [1, 2, 3, 4, 5]);
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert_eq!(indexes(&entries(&mut log).await), [1, 2, 3, 4]);
}

#[tokio::test]
async fn truncate_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        log.blocking_append((1..=10).map(|i| blank(1, i)))
            .await
            .unwrap();
        log.truncate(log_id(1, 1, 8)).await.unwrap();
        log.purge(log_id(1, 1, 3)).await.unwrap();
        assert_eq!(indexes(&entries(&mut log).await), [4, 5, 6, 7]);
    }
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        assert_eq!(indexes(&entries(&mut log).await), [4, 5, 6, 7]);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(
            (st.last_purged_log_id, st.last_log_id),
            (Some(log_id(1, 1, 3)), Some(log_id(1, 1, 7)))
        );
        // A new leader's entries replace the truncated ones, after the purge's rewrite.
        log.blocking_append([blank(2, 8), blank(2, 9)])
            .await
            .unwrap();
        log.truncate(log_id(2, 1, 9)).await.unwrap();
    }
    {
        let (mut log, _sm) = open(dir.path()).await.unwrap();
        let es = entries(&mut log).await;
        assert_eq!(indexes(&es), [4, 5, 6, 7, 8]);
        assert_eq!(es[4], blank(2, 8));
        // Everything purged: the log remembers where it ended.
        log.purge(log_id(2, 1, 8)).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path()).await.unwrap();
    assert!(entries(&mut log).await.is_empty());
    let st = log.get_log_state().await.unwrap();
    assert_eq!(
        (st.last_purged_log_id, st.last_log_id),
        (Some(log_id(2, 1, 8)), Some(log_id(2, 1, 8)))
    );
    // The next entry follows the purged one; an entry that does not follow the last is refused.
    log.blocking_append([blank(2, 9), blank(2, 10)])
        .await
        .unwrap();
    assert!(log.blocking_append([blank(3, 10)]).await.is_err());
    assert_eq!(indexes(&entries(&mut log).await), [9, 10]);
}

#[tokio::test]
async fn applying_define_and_a_migration_updates_the_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    let mut rx = sm.watch();
    assert!(rx.borrow_and_update().services.is_empty());

    let out = sm
        .apply([
            ent(1, 1, EntryPayload::Membership(members(&[1, 2]))),
            ent(1, 2, EntryPayload::Normal(define("kv", "a"))),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        [Outcome::Applied { epoch: 1 }, Outcome::Applied { epoch: 2 }]
    );
    assert!(rx.has_changed().unwrap());
    {
        let p = rx.borrow_and_update();
        let kv = &p.services["kv"];
        assert_eq!((kv.node.as_deref(), kv.epoch, p.applied), (Some("a"), 2, 2));
    }

    let begin = Cmd::MigrateBegin {
        service: "kv".into(),
        from: "a".into(),
        to: "b".into(),
        expect: 2,
    };
    let out = sm
        .apply([ent(1, 3, EntryPayload::Normal(begin))])
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Applied { epoch: 3 }]);
    {
        let p = rx.borrow_and_update();
        let kv = &p.services["kv"];
        let intent = kv.intent.as_ref().expect("an intent in flight");
        assert_eq!(
            (kv.node.as_deref(), intent.epoch, intent.to.as_str()),
            (Some("a"), 3, "b")
        );
    }

    let commit = |intent| Cmd::MigrateCommit {
        service: "kv".into(),
        intent,
    };
    let out = sm
        .apply([
            blank(2, 4),
            ent(2, 5, EntryPayload::Normal(commit(3))),
            // Replayed: stale, and it changes nothing.
            ent(2, 6, EntryPayload::Normal(commit(3))),
        ])
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Outcome::Applied { epoch: 4 },
            Outcome::Applied { epoch: 5 },
            Outcome::Stale { current: 5 },
        ]
    );
    let p = rx.borrow_and_update().clone();
    let kv = &p.services["kv"];
    assert_eq!(
        (kv.node.as_deref(), kv.epoch, kv.intent.is_none(), p.applied),
        (Some("b"), 5, true, 6)
    );
    assert_eq!(sm.placement(), p);
    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 1, 6)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1, 1)));
}

#[tokio::test]
async fn a_snapshot_survives_a_reopen_and_installs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (snap, placement) = {
        let (_log, mut sm) = open(dir.path()).await.unwrap();
        sm.apply([
            ent(1, 1, EntryPayload::Membership(members(&[1, 2, 3]))),
            ent(1, 2, EntryPayload::Normal(define("kv", "a"))),
            ent(1, 3, EntryPayload::Normal(define("web", "b"))),
            ent(
                1,
                4,
                EntryPayload::Normal(Cmd::Cordon {
                    node: "c".into(),
                    on: true,
                }),
            ),
        ])
        .await
        .unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, 4)));
        // Applied after the snapshot: not in it, and not kept across a restart by itself.
        sm.apply([ent(1, 5, EntryPayload::Normal(define("db", "a")))])
            .await
            .unwrap();
        let mut p = (*sm.placement()).clone();
        p.services.remove("db");
        p.applied = 4;
        (snap, p)
    };
    let (_log, mut sm) = open(dir.path()).await.unwrap();
    assert_eq!(*sm.placement(), placement);
    assert_eq!(*sm.watch().borrow(), Arc::new(placement.clone()));
    let (applied, mem) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 4)));
    assert_eq!(mem.membership(), &members(&[1, 2, 3]));
    let cur = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(cur.meta, snap.meta);
    assert_eq!(cur.snapshot.get_ref(), snap.snapshot.get_ref());

    // Installed on an empty node, it replaces its state and its watchers see it.
    let other = tempfile::tempdir().unwrap();
    let (_log2, mut sm2) = open(other.path()).await.unwrap();
    let mut rx = sm2.watch();
    let mut data = sm2.begin_receiving_snapshot().await.unwrap();
    *data = *cur.snapshot;
    sm2.install_snapshot(&cur.meta, data).await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(**rx.borrow_and_update(), placement);
    drop(sm2);
    drop(_log2);
    let (_log2, sm2) = open(other.path()).await.unwrap();
    assert_eq!(*sm2.placement(), placement);
}

/// The restart path openraft takes: the state machine comes back from its snapshot and the
/// committed entries after it are re-applied from the log before anything else happens.
#[tokio::test]
async fn a_restarted_node_re_applies_its_committed_entries() {
    let dir = tempfile::tempdir().unwrap();
    // As openraft writes it: the log starts at index 0 with the first membership.
    let log_entries = vec![
        ent(0, 0, EntryPayload::Membership(members(&[1]))),
        ent(1, 1, EntryPayload::Normal(define("kv", "a"))),
        ent(
            1,
            2,
            EntryPayload::Normal(Cmd::MigrateBegin {
                service: "kv".into(),
                from: "a".into(),
                to: "b".into(),
                expect: 1,
            }),
        ),
        ent(
            1,
            3,
            EntryPayload::Normal(Cmd::MigrateCommit {
                service: "kv".into(),
                intent: 2,
            }),
        ),
        // Appended but never committed: not applied after the restart.
        ent(1, 4, EntryPayload::Normal(define("web", "a"))),
    ];
    {
        let (mut log, mut sm) = open(dir.path()).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.blocking_append(log_entries.clone()).await.unwrap();
        sm.apply(log_entries[..2].to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(log_entries[2..4].to_vec()).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        // The node dies here: entries 2 and 3 were applied only in memory.
    }
    let (mut log, mut sm) = open(dir.path()).await.unwrap();
    let rx = sm.watch();
    assert_eq!(rx.borrow().services["kv"].node.as_deref(), Some("a"));
    let state = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .unwrap();
    assert_eq!(state.committed, Some(log_id(1, 1, 3)));
    let p = rx.borrow();
    let kv = &p.services["kv"];
    assert_eq!((kv.node.as_deref(), kv.epoch, p.applied), (Some("b"), 3, 3));
    assert!(!p.services.contains_key("web"));
}

#[tokio::test]
async fn a_second_open_of_a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let held = open(dir.path()).await.unwrap();
    let err = open(dir.path()).await.err().expect("a second open fails");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(held);
    open(dir.path())
        .await
        .expect("open after the first is closed");
}

#[tokio::test]
async fn damaged_files_are_errors_that_name_the_file() {
    let check = |dir: &Path, file: &str, content: &[u8]| {
        let d = dir.join(format!("bad-{file}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(file), content).unwrap();
        d
    };
    let root = tempfile::tempdir().unwrap();
    for (file, content) in [
        (VOTE_FILE, &b"{\"vote\": 3"[..]),
        (SNAPSHOT_FILE, &b"[]"[..]),
        (LOG_FILE, &b"not a log at all"[..]),
    ] {
        let d = check(root.path(), file, content);
        let err = open(&d).await.err().expect("a damaged file is an error");
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Corrupt { .. })
                && msg.contains(&*d.join(file).to_string_lossy()),
            "{msg}"
        );
        // Nothing was overwritten.
        assert_eq!(std::fs::read(d.join(file)).unwrap(), content);
    }
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    assert_eq!(crc32(&[]), 0);
}

/// A wire to nobody: the group below has one member, which never sends.
#[derive(Clone)]
struct Nowhere;

impl crate::Wire for Nowhere {
    async fn raft(&self, to: &Member, _rpc: crate::RaftRpc) -> Result<crate::RaftReply, String> {
        Err(format!("{to} is unreachable: a one-node group"))
    }

    async fn coord(
        &self,
        to: &Member,
        _rpc: crate::rpc::CoordRpc,
    ) -> Result<crate::rpc::CoordReply, String> {
        Err(format!("{to} is unreachable: a one-node group"))
    }
}

async fn start_raft(
    dir: &Path,
) -> (
    openraft::Raft<TypeConfig>,
    tokio::sync::watch::Receiver<Arc<crate::Placement>>,
) {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let (log, sm) = open(dir).await.unwrap();
    let rx = sm.watch();
    let net = crate::network::Network { wire: Nowhere };
    let raft = openraft::Raft::new(crate::node_id("n1"), Arc::new(config), net, log, sm)
        .await
        .unwrap();
    (raft, rx)
}

/// The whole path with openraft driving: a one-node group commits placements through the
/// store, and after a restart its state is back from the log before it is leader again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_group_commits_through_the_store_and_recovers_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = crate::node_id("n1");
    let deadline = Some(std::time::Duration::from_secs(20));
    let writes = 50;
    let mut took = Vec::new();
    {
        let (raft, rx) = start_raft(dir.path()).await;
        let me = Member {
            name: "n1".into(),
            addr: "127.0.0.1:1".into(),
        };
        raft.initialize(BTreeMap::from([(id, me)])).await.unwrap();
        raft.wait(deadline)
            .state(openraft::ServerState::Leader, "leader")
            .await
            .unwrap();
        for i in 0..writes {
            let t = std::time::Instant::now();
            let r = raft
                .client_write(define(&format!("s{i}"), "n1"))
                .await
                .unwrap();
            took.push(t.elapsed());
            assert_eq!(
                r.data,
                Outcome::Applied {
                    epoch: r.log_id.index
                }
            );
        }
        assert_eq!(rx.borrow().services.len(), writes);
        raft.shutdown().await.unwrap();
    }
    took.sort();
    eprintln!(
        "commit latency over {writes} writes on one node: p50 {:?}, p99 {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100]
    );

    let (raft, rx) = start_raft(dir.path()).await;
    // Raft::new re-applied the committed entries: every placement is back at its epoch.
    {
        let p = rx.borrow();
        assert_eq!(p.services.len(), writes);
        assert!(p.services["s0"].epoch >= 1);
    }
    raft.wait(deadline)
        .state(openraft::ServerState::Leader, "leader again")
        .await
        .unwrap();
    let r = raft.client_write(define("after", "n1")).await.unwrap();
    assert!(matches!(r.data, Outcome::Applied { .. }));
    assert_eq!(rx.borrow().services.len(), writes + 1);
    raft.shutdown().await.unwrap();
}
