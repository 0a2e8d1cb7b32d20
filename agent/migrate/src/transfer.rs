//! Moving a service's state to a peer in rounds, then verifying and committing it there
//! (transport service `"state"`): the sending side, [`StateSender`]. The receiving side is
//! `receiver.rs`, the messages `protocol.rs`.
//!
//! ```text
//! sender                                          receiver
//!   Begin { migration, service }     ─────────►   fresh staging directory
//!   Round { files } + pieces         ─────────►   metadata pass (create, truncate, remove),
//!                                    ◄─────────   then the pieces written in place; RoundDone
//!   ... more rounds (what changed since) ...
//!   Verify { hash tree, root }       ─────────►   its own tree (digests of the blocks it
//!                                    ◄─────────   wrote); Verified { root, mismatches }
//!   Commit                           ─────────►   staging renamed into place; Committed
//!   (or Abort at any point           ─────────►   staging removed; Aborted)
//! ```
//!
//! Nothing is visible at the destination until the commit, which is one rename; a transfer
//! that ends any other way (abort, error, lost connection) leaves the destination as it was
//! and removes the staging copy.
//!
//! A round is a pipeline on each side. The sender reads, digests and compresses on a blocking
//! thread ([`StateScan::stream_changed`]) while the async side writes the pieces already made
//! to the stream; the receiver reads pieces from the stream while a blocking thread
//! decompresses, writes and digests the ones already read. Each piece says where it goes
//! (file and offset), so nothing waits for a list of extents computed up front, and the state
//! is read once per round.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::MigrateError;
use super::protocol::{Msg, SERVICE};
use super::scan::{hash_tree, start_write_back, tree_root, FileMeta, StateScan, BLOCK};
use godwit_probe::bpf::InodeKey;
use godwit_probe::{DirtyTracker, Tracked};
use godwit_transport::{encode_piece, open, Channel, Peer, Piece};

/// What one round moved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundStats {
    /// 0 for the full copy.
    pub round: u32,
    /// Files and directories in the state.
    pub entries: usize,
    /// Blocks sent.
    pub blocks: u64,
    /// Bytes of state sent.
    pub bytes: u64,
    /// Bytes on the stream (after compression).
    pub wire_bytes: u64,
    /// Wall time of the round, seconds.
    pub seconds: f64,
    /// Files whose dirtied pages the probe reported, so only those pages were read.
    pub tracked_files: usize,
    /// Pages the probe reported dirtied since the previous round.
    pub dirty_pages: u64,
    /// Files compared in full (round 0, no probe, new or replaced files, lost events, or a
    /// size or mtime change the probe cannot vouch for).
    pub scanned_files: usize,
    /// Of the round's time: listing, the probe's flush and the write-back, seconds.
    pub prepare_seconds: f64,
    /// Reading, digesting and compressing the blocks to compare (overlapped with sending),
    /// seconds.
    pub read_seconds: f64,
    /// From the listing sent until the receiver said it wrote (and synced) every piece,
    /// seconds.
    pub send_seconds: f64,
}

/// Dirty-page tracking of the state's files by the probe.
#[derive(Debug)]
struct Tracking {
    tracker: DirtyTracker,
    handles: Vec<Tracked>,
    /// Tracked inode -> file.
    by_key: HashMap<InodeKey, String>,
    /// Size and mtime of each file when it was last listed.
    last: HashMap<String, (u64, i64, i64)>,
    /// The service's cgroup, whose processes are looked at for `O_DIRECT` descriptors.
    cgroup: Option<PathBuf>,
    /// Files the service had open with `O_DIRECT` at some round: the probe cannot see those
    /// writes, so they are compared in full from then on.
    direct: HashSet<InodeKey>,
    /// Files whose write-back failed at some round: pages that stayed dirty raise no event
    /// when written again, so these are compared in full from then on.
    unclean: HashSet<String>,
}

/// What a round learned from the probe: the pages to read per trusted file.
struct ProbeReport {
    pages: BTreeMap<String, BTreeSet<u64>>,
    dirty_pages: u64,
}

/// A passed hash comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Files compared.
    pub files: usize,
    /// Time spent hashing here, seconds.
    pub source_hash_seconds: f64,
    /// Time the receiver spent hashing, by its clock.
    pub target_hash_seconds: Option<f64>,
    /// Files that differed at the first comparison and were repaired: the blocks that differ
    /// from the receiver's copy resent (in `repair`), then compared again.
    pub repaired: Vec<String>,
    /// The repair round, when there was one.
    pub repair: Option<RoundStats>,
}

/// A commit on the receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// Where the state now lives there.
    pub path: String,
    /// Time the receiver spent fsyncing the copy, by its clock.
    pub sync_seconds: Option<f64>,
    /// Time the receiver spent putting it in place and recording its vote.
    pub exchange_seconds: Option<f64>,
}

/// The sending side of one state transfer.
#[derive(Debug)]
pub struct StateSender {
    ch: Channel,
    scan: StateScan,
    level: Option<i32>,
    round: u32,
    last_files: Vec<FileMeta>,
    tracking: Option<Tracking>,
    /// The next round runs with the service frozen or stopped: nothing writes any more, so
    /// the write-back that makes later writes visible is skipped.
    frozen: bool,
    /// Verify by re-hashing every file on both sides rather than from the rounds' digests.
    full_verify: bool,
    /// Files to compare in full next round, whatever the probe says (after a repair request).
    recompare: BTreeSet<String>,
    /// The current round's bytes and wire bytes sent so far, for progress within a round.
    in_round: Arc<RoundCounters>,
    /// Test hook: in this many of the next rounds, flip a byte of the data after it was
    /// digested.
    #[cfg(test)]
    pub(crate) corrupt_rounds: u32,
}

/// What the round running now has sent so far (reset when a round starts).
#[derive(Debug, Default)]
pub struct RoundCounters {
    /// Bytes of state.
    pub bytes: std::sync::atomic::AtomicU64,
    /// On the wire.
    pub wire_bytes: std::sync::atomic::AtomicU64,
}

impl StateSender {
    /// The running round's figures, readable while [`StateSender::round`] runs.
    pub fn round_counters(&self) -> Arc<RoundCounters> {
        self.in_round.clone()
    }

    /// Opens the transfer of `service`'s state (`scan`) to `peer`.
    pub async fn begin(
        peer: &Peer,
        migration: &str,
        service: &str,
        scan: StateScan,
        level: Option<i32>,
    ) -> Result<StateSender, MigrateError> {
        Self::begin_with_spec(peer, migration, service, None, false, scan, level).await
    }

    /// [`StateSender::begin`] for a managed service whose spec the target keeps; `replace`
    /// when the operator asked to replace a service of that name there.
    pub async fn begin_with_spec(
        peer: &Peer,
        migration: &str,
        service: &str,
        spec: Option<godwit_runtime::service::ServiceSpec>,
        replace: bool,
        scan: StateScan,
        level: Option<i32>,
    ) -> Result<StateSender, MigrateError> {
        let mut ch = open(peer, SERVICE).await?;
        ch.send(&Msg::Begin {
            migration: migration.to_string(),
            service: service.to_string(),
            spec: spec.map(Box::new),
            replace,
        })
        .await?;
        // Before any state moves: a target that will not take it says why.
        match ch.recv::<Msg>().await? {
            Some(Msg::Begun) => {}
            Some(Msg::Failed { reason }) => {
                return Err(MigrateError::Peer(format!("the target refused: {reason}")))
            }
            other => {
                return Err(MigrateError::Peer(format!(
                    "unexpected answer to the transfer's start: {other:?}"
                )))
            }
        }
        Ok(StateSender {
            ch,
            scan,
            level,
            round: 0,
            last_files: Vec::new(),
            tracking: None,
            frozen: false,
            full_verify: false,
            recompare: BTreeSet::new(),
            in_round: Arc::default(),
            #[cfg(test)]
            corrupt_rounds: 0,
        })
    }

    /// Uses the probe's dirty-page tracking from the next round on: each round then flushes
    /// the pages dirtied since the previous one, writes the files back (so that any later write
    /// dirties a page again and is seen), and reads only those pages. Must be called before
    /// round 0 to cover the whole transfer.
    pub fn track_with(&mut self, tracker: DirtyTracker) {
        self.tracking = Some(Tracking {
            tracker,
            handles: Vec::new(),
            by_key: HashMap::new(),
            last: HashMap::new(),
            cgroup: None,
            direct: HashSet::new(),
            unclean: HashSet::new(),
        });
    }

    /// With tracking on: every round, the processes of `cgroup` (the service's) are looked at
    /// for descriptors open with `O_DIRECT` on a state file. Such a file's writes bypass the
    /// page cache, which is all the probe sees; it is compared in full every round from then
    /// on. (The size-and-mtime test catches the rest, unless a file also got buffered writes
    /// in the same round from a descriptor opened and closed between two rounds.)
    pub fn watch_direct_io(&mut self, cgroup: PathBuf) {
        if let Some(t) = self.tracking.as_mut() {
            t.cgroup = Some(cgroup);
        }
    }

    /// Makes [`StateSender::verify`] re-hash every file on both sides (the full check: it also
    /// catches a write the rounds missed) instead of comparing the hash tree the rounds kept
    /// (which proves the copy equals what was read, block for block).
    pub fn full_verify(&mut self, full: bool) {
        self.full_verify = full;
    }

    /// Sends the last round, with the service frozen or stopped: as [`StateSender::round`],
    /// without writing the files back first (no later write is left to catch).
    pub async fn final_round(&mut self) -> Result<RoundStats, MigrateError> {
        self.frozen = true;
        self.round().await
    }

    /// Tracks files not tracked yet, flushes the dirtied pages, writes every file back, and
    /// returns the pages to read for each file the probe can vouch for. `None` when tracking
    /// is off or failed (then everything is compared in full).
    fn probe_round(&mut self, files: &[FileMeta]) -> Option<ProbeReport> {
        let round = self.round;
        let root = self.scan.root().to_path_buf();
        let t = self.tracking.as_mut()?;
        // Current identity, size and mtime of every regular file.
        let mut now: Vec<(String, InodeKey, u64, i64, i64)> = Vec::new();
        for f in files.iter().filter(|f| f.size.is_some()) {
            let path = root.join(&f.rel);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let Ok(key) = InodeKey::of_path(&path) else {
                continue;
            };
            now.push((
                f.rel.clone(),
                key,
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
            ));
        }
        let new: Vec<PathBuf> = now
            .iter()
            .filter(|(_, key, ..)| !t.by_key.contains_key(key))
            .map(|(rel, ..)| root.join(rel))
            .collect();
        if !new.is_empty() {
            match tokio::task::block_in_place(|| t.tracker.track(new)) {
                Ok(tracked) => {
                    for (path, key) in tracked.files() {
                        if let Ok(rel) = path.strip_prefix(&root) {
                            t.by_key.insert(*key, rel.display().to_string());
                        }
                    }
                    t.handles.push(tracked);
                }
                Err(e) => {
                    warn!(error = %e, "no dirty-page tracking: comparing state by content");
                    self.tracking = None;
                    return None;
                }
            }
        }
        if let Some(cg) = &t.cgroup {
            let found = direct_io_files(cg);
            for key in found.difference(&t.direct) {
                if let Some(rel) = t.by_key.get(key) {
                    info!(file = %rel, "the service writes this state file with O_DIRECT: compared in full from now on");
                }
            }
            t.direct.extend(found);
        }
        let mut lost = false;
        let mut ranges: HashMap<InodeKey, Vec<(u64, u32)>> = HashMap::new();
        for h in &t.handles {
            match tokio::task::block_in_place(|| h.flush()) {
                Ok(f) => {
                    lost |= f.lost;
                    for (k, v) in f.ranges {
                        ranges.entry(k).or_default().extend(v);
                    }
                }
                Err(_) => lost = true,
            }
        }
        // Write back: from here on, a write to any page raises a new event. Not needed in
        // the frozen round: nothing writes after it. In round 0, which reads every file in full,
        // the scan cleans each window just before it reads it instead, so the copy starts at
        // once (`clean_before_read`).
        self.scan.clean_before_read(round == 0);
        if !self.frozen && round > 0 {
            for (rel, ..) in &now {
                let cleaned = File::open(root.join(rel)).and_then(|f| f.sync_data());
                if let Err(e) = cleaned {
                    if t.unclean.insert(rel.clone()) {
                        warn!(file = %rel, error = %e, "write-back failed: this state file is compared in full from now on");
                    }
                }
            }
        }
        let mut report = ProbeReport {
            pages: BTreeMap::new(),
            dirty_pages: 0,
        };
        for (rel, key, size, sec, nsec) in &now {
            let got = ranges.get(key);
            let pages: BTreeSet<u64> = got
                .into_iter()
                .flatten()
                .flat_map(|&(index, nr)| index..index + u64::from(nr))
                .collect();
            report.dirty_pages += pages.len() as u64;
            let same_file = t.by_key.get(key) == Some(rel);
            // Same size: the dirty pages, unless the mtime moved with none (`O_DIRECT`).
            // Grown (an append-only file, a log): the dirty pages and everything from the old
            // end on (the old last block included). Shrunk: not vouched for.
            let (vouched, appended) = match t.last.get(rel) {
                Some(&(s, ms, mns)) if s == *size => {
                    ((ms, mns) == (*sec, *nsec) || !pages.is_empty(), None)
                }
                Some(&(s, ..)) if s < *size => (!pages.is_empty(), Some(s / BLOCK)),
                _ => (false, None),
            };
            let direct = t.direct.contains(key) || t.unclean.contains(rel);
            if round > 0 && !lost && same_file && vouched && !direct {
                let mut pages = pages;
                if let Some(from) = appended {
                    pages.extend(from..size.div_ceil(BLOCK));
                }
                report.pages.insert(rel.clone(), pages);
            }
            t.last.insert(rel.clone(), (*size, *sec, *nsec));
        }
        Some(report)
    }

    /// Sends one round: the listing, then every block that changed since the last round
    /// (everything in round 0), each as soon as it is read.
    pub async fn round(&mut self) -> Result<RoundStats, MigrateError> {
        let started = Instant::now();
        let files = self.scan.list()?;
        let mut probe = self.probe_round(&files);
        if let Some(p) = probe.as_mut() {
            for rel in &self.recompare {
                p.pages.remove(rel);
            }
        }
        self.recompare.clear();
        let prepare_seconds = started.elapsed().as_secs_f64();
        let t = Instant::now();
        let round = self.round;
        self.ch
            .send(&Msg::Round {
                round,
                files: files.clone(),
            })
            .await?;
        let (tracked_files, dirty_pages) = probe
            .as_ref()
            .map(|p| (p.pages.len(), p.dirty_pages))
            .unwrap_or((0, 0));
        // The reading side: a blocking thread that owns the scan for the round and hands over
        // compressed pieces through a bounded queue.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Piece>>(PIPELINE_PIECES);
        let mut scan = self.scan.take_for_round();
        let level = self.level;
        #[cfg(test)]
        let corrupt = self.corrupt_rounds > 0;
        #[cfg(test)]
        {
            self.corrupt_rounds = self.corrupt_rounds.saturating_sub(1);
        }
        #[cfg(not(test))]
        let corrupt = false;
        let listing = files.clone();
        // With the probe on, the next round starts by writing back what was dirtied meanwhile
        // (so later writes raise events again): started here, as soon as this round has read
        // everything, it runs while the data is still on its way, and the next round's
        // write-back waits only for what is left. Writing back early or often never hides a
        // write from the probe (a page cleaned and written again raises another event).
        let kick = self.tracking.is_some() && !self.frozen;
        let reader = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let mut waited = std::time::Duration::ZERO;
            let mut z = level.and_then(godwit_transport::Compressor::new);
            let mut corrupt = corrupt;
            let pages = probe.map(|p| p.pages);
            // Pieces go to the sending side in batches of about BATCH_BYTES.
            let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
            let result = scan.stream_changed(&listing, pages.as_ref(), &mut |run| {
                let mut data = run.data;
                if corrupt && !data.is_empty() {
                    // Test hook: damaged after it was digested here.
                    corrupt = false;
                    data[0] ^= 0xff;
                }
                let piece = Piece::pack(run.file, run.offset, data, z.as_mut());
                batch_bytes += piece.payload.len();
                batch.push(piece);
                if batch_bytes < BATCH_BYTES {
                    return true;
                }
                batch_bytes = 0;
                let w = Instant::now();
                let sent = tx.blocking_send(std::mem::take(&mut batch)).is_ok();
                waited += w.elapsed();
                sent
            });
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            if kick {
                // On a thread of its own: starting a write-back can block while the disk's
                // queue is full, and the round's end must not wait for it.
                let paths: Vec<PathBuf> = listing
                    .iter()
                    .filter(|f| f.size.is_some())
                    .map(|f| scan.root().join(&f.rel))
                    .collect();
                let _ = std::thread::Builder::new()
                    .name("godwit-writeback".into())
                    .spawn(move || {
                        for path in paths {
                            if let Ok(file) = File::open(path) {
                                start_write_back(&file, 0, 0);
                            }
                        }
                    });
            }
            (scan, result, began.elapsed().saturating_sub(waited))
        });
        let mut wire_bytes = 0u64;
        let mut sending: Result<(), MigrateError> = Ok(());
        // Small pieces (scattered dirty pages) go out in one stream write per batch; a large
        // one on its own.
        let mut encoded: Vec<u8> = Vec::with_capacity(2 * BATCH_BYTES);
        use std::sync::atomic::Ordering::Relaxed;
        self.in_round.bytes.store(0, Relaxed);
        self.in_round.wire_bytes.store(0, Relaxed);
        'batches: while let Some(batch) = rx.recv().await {
            for piece in batch {
                wire_bytes += piece.wire_len();
                self.in_round
                    .wire_bytes
                    .fetch_add(piece.wire_len(), Relaxed);
                self.in_round
                    .bytes
                    .fetch_add(u64::from(piece.raw_len), Relaxed);
                if piece.payload.len() <= SMALL_PIECE {
                    encode_piece(&piece, &mut encoded);
                    continue;
                }
                if let Err(e) = self.send_encoded(&mut encoded).await {
                    sending = Err(e);
                    break 'batches;
                }
                if let Err(e) = self.ch.write_piece(&piece).await {
                    sending = Err(e.into());
                    break 'batches;
                }
            }
            if let Err(e) = self.send_encoded(&mut encoded).await {
                sending = Err(e);
                break;
            }
        }
        drop(rx);
        let (scan, pass, read_time) = reader
            .await
            .map_err(|e| MigrateError::BadState(format!("the reading thread: {e}")))?;
        self.scan.restore(scan);
        sending?;
        let pass = pass?;
        self.ch.write_pieces_end().await?;
        let bytes = match self.ch.recv::<Msg>().await? {
            Some(Msg::RoundDone { round: r, bytes }) if r == round => bytes,
            Some(Msg::Failed { reason }) => return Err(MigrateError::Peer(reason)),
            other => return Err(MigrateError::Peer(format!("unexpected {other:?}"))),
        };
        if bytes != pass.sent_bytes {
            return Err(MigrateError::Peer(format!(
                "round {round}: sent {} bytes, the peer wrote {bytes}",
                pass.sent_bytes
            )));
        }
        self.round += 1;
        self.last_files = files;
        Ok(RoundStats {
            round,
            entries: self.last_files.len(),
            blocks: pass.sent_blocks,
            bytes,
            wire_bytes: wire_bytes + 21,
            seconds: started.elapsed().as_secs_f64(),
            tracked_files,
            dirty_pages,
            scanned_files: pass.scanned_files,
            prepare_seconds,
            read_seconds: read_time.as_secs_f64(),
            send_seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// Writes the encoded small pieces collected so far, if any, and empties `encoded`.
    async fn send_encoded(&mut self, encoded: &mut Vec<u8>) -> Result<(), MigrateError> {
        if encoded.is_empty() {
            return Ok(());
        }
        let r = self.ch.write_encoded_pieces(encoded).await;
        encoded.clear();
        r.map_err(MigrateError::from)
    }

    /// Compares the hash of every file here with the peer's staging copy. Run it after the
    /// final round, with the service frozen or stopped. Files that differ are repaired once:
    /// the peer's block digests of them are fetched, the blocks that differ from the source
    /// are resent, and everything is compared again; a difference left after that is an
    /// error.
    pub async fn verify(&mut self) -> Result<Verified, MigrateError> {
        match self.compare().await {
            Err(MigrateError::Mismatch(files)) if !files.iter().any(|f| f == "(root)") => {
                warn!(
                    ?files,
                    "the copy differs from the source: resending what differs"
                );
                let repair = self.repair(&files).await?;
                let mut v = self.compare().await?;
                v.repaired = files;
                v.repair = Some(repair);
                Ok(v)
            }
            other => other,
        }
    }

    /// Resends the blocks of `files` that differ between the source and the peer's copy.
    async fn repair(&mut self, files: &[String]) -> Result<RoundStats, MigrateError> {
        self.ch
            .send(&Msg::Digests {
                files: files.to_vec(),
                full: self.full_verify,
            })
            .await?;
        let theirs = match self.ch.recv::<Msg>().await? {
            Some(Msg::DigestsAre { files }) => files,
            Some(Msg::Failed { reason }) => return Err(MigrateError::Peer(reason)),
            other => return Err(MigrateError::Peer(format!("unexpected {other:?}"))),
        };
        for (rel, digests) in theirs {
            if files.contains(&rel) {
                self.scan.set_sent(&rel, digests);
                self.recompare.insert(rel);
            }
        }
        // Nothing writes now (the service is frozen or stopped): no write-back needed.
        self.frozen = true;
        self.round().await
    }

    /// One comparison of the hash trees; any difference is an error.
    async fn compare(&mut self) -> Result<Verified, MigrateError> {
        let t = Instant::now();
        let full = self.full_verify;
        let tree = if full {
            let (root, files) = (self.scan.root().to_path_buf(), self.last_files.clone());
            tokio::task::spawn_blocking(move || hash_tree(&root, &files))
                .await
                .map_err(|e| MigrateError::BadState(e.to_string()))??
        } else {
            self.scan.tree(&self.last_files)
        };
        let root = tree_root(&tree);
        let source_hash_seconds = t.elapsed().as_secs_f64();
        let n = tree.len();
        self.ch
            .send(&Msg::Verify {
                tree,
                root: root.clone(),
                full,
            })
            .await?;
        match self.ch.recv::<Msg>().await? {
            Some(Msg::Verified {
                root: theirs,
                mismatches,
                hash_seconds,
            }) if mismatches.is_empty() && theirs == root => Ok(Verified {
                files: n,
                source_hash_seconds,
                target_hash_seconds: Some(hash_seconds),
                repaired: Vec::new(),
                repair: None,
            }),
            Some(Msg::Verified { mismatches, .. }) if !mismatches.is_empty() => {
                Err(MigrateError::Mismatch(mismatches))
            }
            Some(Msg::Verified { .. }) => Err(MigrateError::Mismatch(vec!["(root)".into()])),
            Some(Msg::Failed { reason }) => Err(MigrateError::Peer(reason)),
            other => Err(MigrateError::Peer(format!("unexpected {other:?}"))),
        }
    }

    /// Makes the peer's copy the service's state there (one rename); returns its path. The
    /// peer holds it as prepared: it runs the service only once told [`StateSender::decided`]
    /// (or by the hand-off).
    pub async fn commit(&mut self) -> Result<Committed, MigrateError> {
        self.ch.send(&Msg::Commit).await?;
        match self.ch.recv::<Msg>().await? {
            Some(Msg::Committed {
                path,
                sync_seconds,
                exchange_seconds,
            }) => Ok(Committed {
                path,
                sync_seconds: Some(sync_seconds),
                exchange_seconds: Some(exchange_seconds),
            }),
            Some(Msg::Failed { reason }) => Err(MigrateError::Peer(reason)),
            other => Err(MigrateError::Peer(format!("unexpected {other:?}"))),
        }
    }

    /// Tells the peer the source's decision is durable: the committed copy is the service's
    /// now, and the peer may start it if no hand-off follows. Waits for its acknowledgement.
    pub async fn decided(&mut self) -> Result<(), MigrateError> {
        self.ch.send(&Msg::Decided).await?;
        match self.ch.recv::<Msg>().await? {
            Some(Msg::Owned) => Ok(()),
            Some(Msg::Failed { reason }) => Err(MigrateError::Peer(reason)),
            other => Err(MigrateError::Peer(format!("unexpected {other:?}"))),
        }
    }

    /// Tells the peer to drop its staging copy.
    pub async fn abort(&mut self, reason: &str) {
        if self
            .ch
            .send(&Msg::Abort {
                reason: reason.to_string(),
            })
            .await
            .is_ok()
        {
            let _ = self.ch.recv::<Msg>().await;
        }
    }
}

/// The files (as the probe keys them) that a process in `cgroup` or below has open with
/// `O_DIRECT`, from `/proc/<pid>/fdinfo`. Best effort: a process or descriptor that goes away
/// meanwhile is skipped.
fn direct_io_files(cgroup: &Path) -> HashSet<InodeKey> {
    let mut out = HashSet::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter(|l| !l.is_empty()) {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(info) = std::fs::read_to_string(fd.path()) else {
                    continue;
                };
                let direct = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u64::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|f| f & libc::O_DIRECT as u64 != 0);
                if direct {
                    let link = Path::new("/proc").join(pid).join("fd").join(fd.file_name());
                    if let Ok(key) = InodeKey::of_path(&link) {
                        out.insert(key);
                    }
                }
            }
        }
        if let Ok(children) = std::fs::read_dir(&dir) {
            dirs.extend(
                children
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Batches of pieces (sending side) or pieces (receiving side) queued between reading and
/// writing: at most about 1 MiB each.
pub(super) const PIPELINE_PIECES: usize = 16;
/// The sending side hands pieces over in batches of about this many bytes ...
pub(super) const BATCH_BYTES: usize = 256 << 10;
/// ... and writes the pieces up to this size in one stream write per batch (larger ones on
/// their own, without a copy).
const SMALL_PIECE: usize = 64 << 10;
#[cfg(test)]
mod direct_io_tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// This process's cgroup directory (cgroup v2, mounted alone or beside v1 as `unified`).
    fn own_cgroup() -> Option<PathBuf> {
        let line = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = line.lines().find_map(|l| l.strip_prefix("0::"))?;
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(|m| Path::new(m).join(rel.trim_start_matches('/')))
            .find(|d| d.join("cgroup.procs").exists())
    }

    #[test]
    fn a_file_open_with_o_direct_is_found_through_the_cgroup() {
        let Some(cg) = own_cgroup() else {
            eprintln!("no cgroup v2 here: skipped");
            return;
        };
        // On a disk filesystem: tmpfs refuses O_DIRECT.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (direct, buffered) = (dir.path().join("direct"), dir.path().join("buffered"));
        std::fs::write(&direct, vec![0u8; 8192]).unwrap();
        std::fs::write(&buffered, vec![0u8; 8192]).unwrap();
        let open_direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&direct);
        let Ok(_d) = open_direct else {
            eprintln!("no O_DIRECT on /var/tmp: skipped");
            return;
        };
        let _b = std::fs::OpenOptions::new()
            .write(true)
            .open(&buffered)
            .unwrap();
        let found = direct_io_files(&cg);
        assert!(
            found.contains(&InodeKey::of_path(&direct).unwrap()),
            "{found:?}"
        );
        assert!(!found.contains(&InodeKey::of_path(&buffered).unwrap()));
    }
}
