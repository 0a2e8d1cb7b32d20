//! Moving a service's state to a peer in rounds, then verifying and committing it there
//! (transport service `"state"`).
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
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::MigrateError;
use super::journal::{now_ms, Journal, TargetEntry, TargetPhase};
use super::scan::{
    block_digest, file_digests, hash_tree, start_write_back, tree_of, tree_root, BlockDigest,
    FileMeta, StateScan, BLOCK, UNKNOWN,
};
use godwit_probe::bpf::InodeKey;
use godwit_probe::{DirtyTracker, Tracked};
use godwit_transport::{encode_piece, open, Channel, Peer, PeerInfo, Piece, Services};

/// Name of the state service.
pub const SERVICE: &str = "state";

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Begin {
        migration: String,
        service: String,
        /// The service's spec (JSON) when a managed service moves: the target's journal keeps
        /// it, so it can start the service once the move is decided even without the source.
        spec: Option<String>,
    },
    /// The listing; the changed blocks follow as placed pieces (file = index in `files`),
    /// in any order, up to the end marker.
    Round {
        round: u32,
        files: Vec<FileMeta>,
    },
    RoundDone {
        round: u32,
        bytes: u64,
    },
    /// The hash tree: every file's node (from the block digests the rounds kept, or from a
    /// full re-hash of the files when `full`) and the root over them.
    Verify {
        tree: Vec<(String, String)>,
        root: String,
        full: bool,
    },
    /// After a failed comparison: the receiver's block digests of these files (re-hashed from
    /// its copy when `full`), so the sender can resend what differs.
    Digests {
        files: Vec<String>,
        full: bool,
    },
    DigestsAre {
        files: Vec<(String, Vec<BlockDigest>)>,
    },
    Verified {
        /// The receiver's root; equal to the sender's when nothing differs.
        root: String,
        mismatches: Vec<String>,
        /// Time the receiver took to hash its copy, seconds.
        hash_seconds: f64,
    },
    Commit,
    Committed {
        path: String,
        /// Time to fsync the staging copy, seconds.
        sync_seconds: f64,
        /// Time to put it in place (exchange, parent fsync) and record the vote, seconds.
        exchange_seconds: f64,
    },
    Decided,
    Owned,
    Abort {
        reason: String,
    },
    Aborted,
    Failed {
        reason: String,
    },
}

/// What one round moved.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
        Self::begin_with_spec(peer, migration, service, None, scan, level).await
    }

    /// [`StateSender::begin`] for a managed service whose spec (JSON) the target keeps.
    pub async fn begin_with_spec(
        peer: &Peer,
        migration: &str,
        service: &str,
        spec: Option<String>,
        scan: StateScan,
        level: Option<i32>,
    ) -> Result<StateSender, MigrateError> {
        let mut ch = open(peer, SERVICE).await?;
        ch.send(&Msg::Begin {
            migration: migration.to_string(),
            service: service.to_string(),
            spec,
        })
        .await?;
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
                if let Ok(f) = File::open(root.join(rel)) {
                    let _ = f.sync_data();
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
            let direct = t.direct.contains(key);
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
    pub async fn abort(mut self, reason: &str) {
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

/// Registers the receiving side: state of service `S` is staged under `root/S.staging-<id>`
/// and committed to `root/S`. No journal: a commit is final at once (tests, tools).
pub fn register(services: &Services, root: PathBuf) {
    register_with(services, root, None);
}

/// The target's side of the migration journal: where each step is recorded, and where the
/// ids of migrations left prepared or owned (awaiting a decision or a start) are sent.
#[derive(Debug, Clone)]
pub struct TargetHooks {
    /// The journal.
    pub journal: Arc<Journal>,
    /// Ids of migrations left `Prepared` or `Owned` when the transfer's channel ends.
    pub pending: tokio::sync::mpsc::UnboundedSender<String>,
    /// This node's services: the service's process is forked ahead when the transfer
    /// begins ([`Manager::park`]), so the cut-over's start only execs it.
    ///
    /// [`Manager::park`]: godwit_runtime::service::Manager::park
    pub manager: Option<Arc<godwit_runtime::service::Manager>>,
}

/// [`register`] with the journal: the commit is a prepared vote until the source's decision.
pub fn register_with(services: &Services, root: PathBuf, hooks: Option<TargetHooks>) {
    let root = Arc::new(root);
    services.register(SERVICE, move |peer, ch| {
        receive(peer, ch, root.clone(), hooks.clone())
    });
}

/// Forks the service's process ahead of its start on this node ([`Manager::park`]), in the
/// background: the spec as the target starts it (`autostart`), unless the service is defined
/// here already. A failure only costs the cut-over the cgroup join it would have saved.
///
/// [`Manager::park`]: godwit_runtime::service::Manager::park
fn park_ahead(
    hooks: Option<&TargetHooks>,
    service: &str,
    spec: Option<&str>,
) -> Option<tokio::task::JoinHandle<()>> {
    let manager = hooks?.manager.clone()?;
    let mut spec: godwit_runtime::service::ServiceSpec = serde_json::from_str(spec?).ok()?;
    if spec.name != service || manager.spec(service).is_some() {
        return None;
    }
    spec.autostart = true;
    Some(tokio::spawn(async move {
        if let Err(e) = manager.park(spec).await {
            info!(error = %e, "no process forked ahead of the start");
        }
    }))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !s.starts_with('.')
}

/// How a transfer ended on the receiving side.
enum Outcome {
    /// Aborted before the commit, or the channel ended: the staging copy goes.
    Aborted,
    /// Committed; the decision may come later (or never: the journal's watcher decides).
    Prepared(PathBuf),
    /// Committed and decided: the service is this node's.
    Owned(PathBuf),
    /// Committed, then aborted by the source: the copy was dropped.
    Dropped,
}

async fn receive(peer: PeerInfo, mut ch: Channel, root: Arc<PathBuf>, hooks: Option<TargetHooks>) {
    let (migration, service, spec) = match ch.recv::<Msg>().await {
        Ok(Some(Msg::Begin {
            migration,
            service,
            spec,
        })) => (migration, service, spec),
        _ => return,
    };
    let spec_json = spec.clone();
    if !valid_name(&migration) || !valid_name(&service) {
        let _ = ch
            .send(&Msg::Failed {
                reason: format!("bad migration or service name {migration:?} / {service:?}"),
            })
            .await;
        return;
    }
    let staging = root.join(format!("{service}.staging-{migration}"));
    let dest = root.join(&service);
    if let Some(h) = &hooks {
        let _g = h.journal.lock().await;
        let begun = if h.journal.target(&migration).is_some() {
            Err(MigrateError::Peer(format!(
                "migration {migration} was seen before"
            )))
        } else {
            h.journal.put_target(&TargetEntry {
                migration: migration.clone(),
                service: service.clone(),
                from: peer.node.clone(),
                phase: TargetPhase::Staging,
                staging: staging.clone(),
                dest: dest.clone(),
                spec,
                at_unix_ms: now_ms(),
            })
        };
        if let Err(e) = begun {
            let _ = ch
                .send(&Msg::Failed {
                    reason: e.to_string(),
                })
                .await;
            return;
        }
    }
    let parking = park_ahead(hooks.as_ref(), &service, spec_json.as_deref());
    let mut rx = Receiver {
        staging: staging.clone(),
        files: BTreeMap::new(),
        digests: BTreeMap::new(),
        migration: migration.clone(),
        hooks: hooks.clone(),
        syncing: None,
    };
    let outcome = rx.run(&mut ch, &dest).await;
    match &outcome {
        Ok(Outcome::Owned(path)) => {
            info!(peer = %peer.node, service, migration, path = %path.display(), "state committed and decided");
        }
        Ok(Outcome::Prepared(path)) => {
            info!(peer = %peer.node, service, migration, path = %path.display(), "state committed; awaiting the decision");
        }
        Ok(Outcome::Aborted) => {
            info!(peer = %peer.node, service, migration, "state transfer aborted by the sender");
        }
        Ok(Outcome::Dropped) => {
            info!(peer = %peer.node, service, migration, "committed state dropped: the sender aborted");
        }
        Err(e) => {
            warn!(peer = %peer.node, service, migration, error = %e, "state transfer failed");
            let _ = ch
                .send(&Msg::Failed {
                    reason: e.to_string(),
                })
                .await;
        }
    }
    if !matches!(outcome, Ok(Outcome::Prepared(_) | Outcome::Owned(_))) {
        // No start here for this migration: the child forked ahead goes.
        if let (Some(parking), Some(m)) = (parking, hooks.as_ref().and_then(|h| h.manager.as_ref()))
        {
            let _ = parking.await;
            m.unpark(&service).await;
        }
    }
    match (&outcome, &hooks) {
        (Ok(Outcome::Prepared(_) | Outcome::Owned(_)), Some(h)) => {
            let _ = h.pending.send(migration);
        }
        (Ok(Outcome::Prepared(_) | Outcome::Owned(_) | Outcome::Dropped), None) => {}
        (Ok(Outcome::Dropped), Some(_)) => {}
        (Ok(Outcome::Aborted) | Err(_), _) => {
            let _ = std::fs::remove_dir_all(&staging);
            if let Some(h) = &hooks {
                let _g = h.journal.lock().await;
                // Unless a commit got as far as being recorded (then the watcher decides).
                if h.journal
                    .target(&migration)
                    .is_some_and(|e| e.phase == TargetPhase::Staging)
                {
                    let _ = h.journal.remove_target(&migration);
                } else {
                    let _ = h.pending.send(migration);
                }
            }
        }
    }
}

struct Receiver {
    staging: PathBuf,
    files: BTreeMap<String, File>,
    /// The digest of every block of every file as written here (`UNKNOWN` where nothing was
    /// written since the listing sized it): the leaves of this side's hash tree.
    digests: BTreeMap<String, Vec<BlockDigest>>,
    migration: String,
    hooks: Option<TargetHooks>,
    /// The staging copy's fsync, started when the hash check is asked for (the frozen round is
    /// in by then), so the commit waits only for what is left of it.
    syncing: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Runs the transfer.
    async fn run(&mut self, ch: &mut Channel, dest: &Path) -> Result<Outcome, MigrateError> {
        let _ = std::fs::remove_dir_all(&self.staging);
        std::fs::create_dir_all(&self.staging).map_err(|e| MigrateError::io(&self.staging, e))?;
        let mut listed: Vec<FileMeta> = Vec::new();
        // The tree of what was written, as of the last round.
        let mut our_tree: Option<Vec<(String, String)>> = None;
        let mut committed: Option<PathBuf> = None;
        loop {
            let msg = ch.recv::<Msg>().await;
            if let Some(path) = &committed {
                // Prepared: only the decision or an abort may follow.
                return match msg {
                    Ok(Some(Msg::Decided)) => {
                        if let Some(h) = &self.hooks {
                            let _g = h.journal.lock().await;
                            match h.journal.target(&self.migration).map(|e| e.phase) {
                                Some(TargetPhase::Prepared) => {
                                    h.journal.set_target(&self.migration, TargetPhase::Owned)?;
                                }
                                // The hand-off, sent at the same time, got here first.
                                Some(TargetPhase::Owned | TargetPhase::Started) => {}
                                other => {
                                    return Err(MigrateError::Peer(format!(
                                        "decision for a migration that is {other:?} here"
                                    )))
                                }
                            }
                        }
                        ch.send(&Msg::Owned).await?;
                        Ok(Outcome::Owned(path.clone()))
                    }
                    Ok(Some(Msg::Abort { .. })) => {
                        if let Some(h) = &self.hooks {
                            let _g = h.journal.lock().await;
                            if h.journal.target(&self.migration).map(|e| e.phase)
                                == Some(TargetPhase::Prepared)
                            {
                                let _ = std::fs::remove_dir_all(path);
                                h.journal
                                    .set_target(&self.migration, TargetPhase::Returned)?;
                            }
                        }
                        let _ = ch.send(&Msg::Aborted).await;
                        Ok(Outcome::Dropped)
                    }
                    _ => Ok(Outcome::Prepared(path.clone())),
                };
            }
            match msg? {
                Some(Msg::Round { round, files }) => {
                    self.apply_listing(&files)?;
                    let bytes = self.write_pieces(ch, &files).await?;
                    listed = files;
                    ch.send(&Msg::RoundDone { round, bytes }).await?;
                    // This copy's hash tree, while the sender decides whether the round was
                    // the last: a hash check right after it then waits only for the sender's.
                    our_tree = Some(self.tree(&listed));
                }
                Some(Msg::Verify {
                    tree,
                    root: _,
                    full,
                }) => {
                    let t = Instant::now();
                    if self.syncing.is_none() {
                        // Best effort: the commit syncs everything again, and finds it clean.
                        let staging = self.staging.clone();
                        self.syncing = Some(tokio::task::spawn_blocking(move || {
                            let _ = sync_tree(&staging);
                        }));
                    }
                    let staging = self.staging.clone();
                    let ours = if full {
                        let listed = listed.clone();
                        tokio::task::spawn_blocking(move || hash_tree(&staging, &listed))
                            .await
                            .map_err(|e| MigrateError::BadState(e.to_string()))??
                    } else {
                        match our_tree.take() {
                            Some(t) => t,
                            None => self.tree(&listed),
                        }
                    };
                    let root = tree_root(&ours);
                    let ours: BTreeMap<String, String> = ours.into_iter().collect();
                    let theirs: BTreeMap<String, String> = tree.into_iter().collect();
                    let names: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
                    let mismatches = names
                        .into_iter()
                        .filter(|n| ours.get(*n) != theirs.get(*n))
                        .cloned()
                        .collect();
                    ch.send(&Msg::Verified {
                        root,
                        mismatches,
                        hash_seconds: t.elapsed().as_secs_f64(),
                    })
                    .await?;
                }
                Some(Msg::Digests { files, full }) => {
                    let mut out = Vec::new();
                    for rel in files {
                        let Some(size) = listed.iter().find(|f| f.rel == rel).and_then(|f| f.size)
                        else {
                            continue;
                        };
                        let digests = if full {
                            let path = self.staging.join(&rel);
                            tokio::task::block_in_place(|| file_digests(&path, size))?
                        } else {
                            self.digests.get(&rel).cloned().unwrap_or_default()
                        };
                        out.push((rel, digests));
                    }
                    ch.send(&Msg::DigestsAre { files: out }).await?;
                }
                Some(Msg::Commit) => {
                    let t = Instant::now();
                    if let Some(early) = self.syncing.take() {
                        let _ = early.await;
                    }
                    let waited = t.elapsed().as_secs_f64();
                    let (path, sync_seconds, exchange_seconds) = match &self.hooks {
                        None => tokio::task::block_in_place(|| self.commit(dest))?,
                        Some(h) => {
                            let h = h.clone();
                            let _g = h.journal.lock().await;
                            if h.journal.target(&self.migration).map(|e| e.phase)
                                != Some(TargetPhase::Staging)
                            {
                                return Err(MigrateError::Peer(
                                    "the migration was given up here".into(),
                                ));
                            }
                            let (path, sync, exchange) =
                                tokio::task::block_in_place(|| self.commit(dest))?;
                            // The vote: durable before the source hears "Committed".
                            let t = Instant::now();
                            h.journal
                                .set_target(&self.migration, TargetPhase::Prepared)?;
                            (path, sync, exchange + t.elapsed().as_secs_f64())
                        }
                    };
                    ch.send(&Msg::Committed {
                        path: path.display().to_string(),
                        sync_seconds: sync_seconds + waited,
                        exchange_seconds,
                    })
                    .await?;
                    if self.hooks.is_none() {
                        return Ok(Outcome::Owned(path));
                    }
                    committed = Some(path);
                }
                Some(Msg::Abort { .. }) | None => {
                    let _ = ch.send(&Msg::Aborted).await;
                    return Ok(Outcome::Aborted);
                }
                Some(other) => {
                    return Err(MigrateError::Peer(format!("unexpected {other:?}")));
                }
            }
        }
    }

    /// Makes the staging copy match the listing: directories, file sizes and modes; removes
    /// what is no longer listed.
    fn apply_listing(&mut self, files: &[FileMeta]) -> Result<(), MigrateError> {
        let keep: BTreeSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        for f in files {
            let ok = !f.rel.is_empty()
                && f.rel
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
                && !f.rel.starts_with('/');
            if !ok {
                return Err(MigrateError::BadState(format!("bad path {:?}", f.rel)));
            }
        }
        self.digests.retain(|rel, _| {
            files
                .iter()
                .any(|f| f.size.is_some() && f.rel == rel.as_str())
        });
        // Remove what is gone, deepest first.
        let mut present = Vec::new();
        collect(&self.staging, "", &mut present)?;
        present.sort_by(|a, b| b.cmp(a));
        for rel in present {
            if !keep.contains(rel.as_str()) {
                self.files.remove(&rel);
                let p = self.staging.join(&rel);
                let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
            }
        }
        for f in files {
            let p = self.staging.join(&f.rel);
            match f.size {
                None => {
                    if p.is_file() {
                        self.files.remove(&f.rel);
                        std::fs::remove_file(&p).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    std::fs::create_dir_all(&p).map_err(|e| MigrateError::io(&p, e))?;
                }
                Some(size) => {
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| MigrateError::io(parent, e))?;
                    }
                    let file = self.file(&f.rel)?;
                    let old = file.metadata().map_err(|e| MigrateError::io(&p, e))?.len();
                    if old != size {
                        file.set_len(size).map_err(|e| MigrateError::io(&p, e))?;
                    }
                    // Digests follow the size: the blocks both sizes hold whole keep theirs;
                    // the others are unknown until written (the sender sends them all, as
                    // their digests changed or are new on its side too).
                    let d = self.digests.entry(f.rel.clone()).or_default();
                    if old != size || d.len() as u64 != size.div_ceil(BLOCK) {
                        d.truncate((old.min(size) / BLOCK) as usize);
                        d.resize(size.div_ceil(BLOCK) as usize, UNKNOWN);
                    }
                }
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode | 0o200))
                .map_err(|e| MigrateError::io(&p, e))?;
        }
        Ok(())
    }

    fn file(&mut self, rel: &str) -> Result<&File, MigrateError> {
        if !self.files.contains_key(rel) {
            let p = self.staging.join(rel);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&p)
                .map_err(|e| MigrateError::io(&p, e))?;
            self.files.insert(rel.to_string(), f);
        }
        Ok(&self.files[rel])
    }

    /// This side's hash tree: the node of every listed file from the digests of what was
    /// written here.
    fn tree(&self, listed: &[FileMeta]) -> Vec<(String, String)> {
        tree_of(listed, &self.digests)
    }

    /// Writes the pieces that follow a round's listing where they go, digesting each block, on
    /// a blocking thread while this task reads the next pieces from the stream; then writes the
    /// touched files back. Returns the bytes written.
    async fn write_pieces(
        &mut self,
        ch: &mut Channel,
        listed: &[FileMeta],
    ) -> Result<u64, MigrateError> {
        // Per index of the listing: the file (a duplicate handle), its size and its digests.
        let mut targets: Vec<Option<Target>> = Vec::with_capacity(listed.len());
        for f in listed {
            targets.push(match f.size {
                Some(size) => {
                    let file = self
                        .file(&f.rel)?
                        .try_clone()
                        .map_err(|e| MigrateError::io(&self.staging.join(&f.rel), e))?;
                    let digests = self.digests.remove(&f.rel).unwrap_or_default();
                    Some(Target {
                        rel: f.rel.clone(),
                        file: Arc::new(file),
                        size,
                        digests,
                        unsynced: None,
                        unsynced_bytes: 0,
                    })
                }
                None => None,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(PIPELINE_PIECES);
        let staging = self.staging.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let result = write_all_pieces(&staging, &mut targets, rx);
            (targets, result)
        });
        let mut reading: Result<(), MigrateError> = Ok(());
        // Buffered: small pieces come in batches, and a read on a QUIC stream has a fixed cost.
        // The sender sends nothing after the end marker until it has the round's answer, so
        // the buffer holds nothing beyond it (checked).
        let mut stream = ch.pieces(BATCH_BYTES);
        loop {
            match stream.next().await {
                Ok(Some(piece)) => {
                    if tx.send(piece).await.is_err() {
                        break; // the writer failed: its error says why
                    }
                }
                Ok(None) => {
                    if stream.has_buffered() {
                        reading = Err(MigrateError::Peer(
                            "data after the end of a round's pieces".into(),
                        ));
                    }
                    break;
                }
                Err(e) => {
                    reading = Err(e.into());
                    break;
                }
            }
        }
        drop(tx);
        let (targets, written) = writer
            .await
            .map_err(|e| MigrateError::BadState(format!("the writing thread: {e}")))?;
        for t in targets.into_iter().flatten() {
            self.digests.insert(t.rel, t.digests);
        }
        reading?;
        written
    }

    /// Replaces `dest` with the staging copy: every file and directory of the copy is made
    /// durable first, then the copy takes `dest`'s name in one rename (an exchange with the
    /// previous state when there is one, which is removed after), and the parent directory is
    /// made durable, all before the caller answers "Committed" (the source deletes its own copy
    /// afterwards).
    /// Returns the path and the seconds spent syncing and exchanging.
    fn commit(&mut self, dest: &Path) -> Result<(PathBuf, f64, f64), MigrateError> {
        let t = Instant::now();
        self.files.clear();
        sync_tree(&self.staging)?;
        let synced = t.elapsed().as_secs_f64();
        let t = Instant::now();
        swap_into_place(&self.staging, dest)?;
        Ok((dest.to_path_buf(), synced, t.elapsed().as_secs_f64()))
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

/// `fsync`s every file and directory under `root`, and `root` itself.
pub(crate) fn sync_tree(root: &Path) -> Result<(), MigrateError> {
    let mut rels = Vec::new();
    collect(root, "", &mut rels)?;
    for rel in rels.iter().map(String::as_str).chain(std::iter::once("")) {
        let p = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        // Directories open read-only too; fsync on either makes its entries durable.
        let f = File::open(&p).map_err(|e| MigrateError::io(&p, e))?;
        f.sync_all().map_err(|e| MigrateError::io(&p, e))?;
    }
    Ok(())
}

/// `fsync`s the directory `dir` (so renames in it are durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MigrateError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| MigrateError::io(dir, e))
}

/// Puts the directory `staging` at `dest` as atomically as the filesystem allows: with
/// `renameat2(RENAME_EXCHANGE)` when `dest` exists (one step: a crash leaves either the old or
/// the new state at `dest`, never neither), else a plain rename; on filesystems without the
/// exchange, the old state is renamed aside first. The parent is fsynced before the old state
/// is removed.
pub(crate) fn swap_into_place(staging: &Path, dest: &Path) -> Result<(), MigrateError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let parent = dest
        .parent()
        .ok_or_else(|| MigrateError::BadState(format!("{} has no parent", dest.display())))?;
    let old = if dest.symlink_metadata().is_ok() {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| MigrateError::BadState(format!("NUL in {}", p.display())))
        };
        let (a, b) = (c(staging)?, c(dest)?);
        // SAFETY: both paths are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            // The old state now sits at the staging name.
            staging.to_path_buf()
        } else {
            let err = std::io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
                return Err(MigrateError::io(dest, err));
            }
            // No exchange on this filesystem: rename the old aside, the new in.
            let aside = dest.with_extension(format!("previous-{}", std::process::id()));
            std::fs::rename(dest, &aside).map_err(|e| MigrateError::io(dest, e))?;
            if let Err(e) = std::fs::rename(staging, dest) {
                let _ = std::fs::rename(&aside, dest);
                return Err(MigrateError::io(dest, e));
            }
            aside
        }
    } else {
        std::fs::rename(staging, dest).map_err(|e| MigrateError::io(dest, e))?;
        sync_dir(parent)?;
        return Ok(());
    };
    sync_dir(parent)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Batches of pieces (sending side) or pieces (receiving side) queued between reading and
/// writing: at most about 1 MiB each.
const PIPELINE_PIECES: usize = 16;
/// The sending side hands pieces over in batches of about this many bytes ...
const BATCH_BYTES: usize = 256 << 10;
/// ... and writes the pieces up to this size in one stream write per batch (larger ones on
/// their own, without a copy).
const SMALL_PIECE: usize = 64 << 10;
/// The receiving side starts a file's write-back each time this many bytes were written to it.
const WRITEBACK_BATCH: u64 = 1 << 20;

/// A regular file of a round's listing, on the receiving side.
struct Target {
    rel: String,
    file: Arc<File>,
    size: u64,
    /// Its block digests as written here.
    digests: Vec<BlockDigest>,
    /// Written since its write-back was last started: the span and the bytes in it.
    unsynced: Option<(u64, u64)>,
    unsynced_bytes: u64,
}

impl Target {
    /// Has the write-back of what was written since the last call started, by `flusher`.
    fn kick(&mut self, flusher: &std::sync::mpsc::Sender<(Arc<File>, u64, u64)>) {
        if let Some((from, to)) = self.unsynced.take() {
            let _ = flusher.send((self.file.clone(), from, to - from));
        }
        self.unsynced_bytes = 0;
    }
}

/// A thread that starts the write-backs it is sent until the sending side goes: starting one
/// can block while the disk's queue is full, which must hold up neither the writing of the
/// pieces nor the round's answer (the commit's fsync waits for whatever is left).
fn spawn_flusher() -> std::sync::mpsc::Sender<(Arc<File>, u64, u64)> {
    let (tx, rx) = std::sync::mpsc::channel::<(Arc<File>, u64, u64)>();
    let _ = std::thread::Builder::new()
        .name("godwit-writeback".into())
        .spawn(move || {
            for (file, at, len) in rx {
                start_write_back(&file, at, len);
            }
        });
    tx
}

/// The receiving side's writing thread: each piece is checked against the listing (whole
/// blocks from a block boundary, the last cut at the listed size), decompressed, written at
/// its offset and digested block by block. Its write-back to disk starts soon (every
/// [`WRITEBACK_BATCH`] bytes of a file, and at the end of the round), so the disk
/// works while the network does and the commit's fsync (with the source frozen) finds little
/// left to write; no round waits for the disk (only the commit must be durable).
fn write_all_pieces(
    staging: &Path,
    targets: &mut [Option<Target>],
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<u64, MigrateError> {
    let mut z =
        godwit_transport::Decompressor::new().map_err(|e| MigrateError::BadState(e.to_string()))?;
    let mut buf = Vec::new();
    let mut written = 0u64;
    let flusher = spawn_flusher();
    while let Some(piece) = rx.blocking_recv() {
        let Some(Some(t)) = targets.get_mut(piece.file as usize) else {
            return Err(MigrateError::Peer(format!(
                "a piece for entry {}, not a listed file",
                piece.file
            )));
        };
        let (at, len) = (piece.offset, u64::from(piece.raw_len));
        let whole =
            at % BLOCK == 0 && at + len <= t.size && (len % BLOCK == 0 || at + len == t.size);
        if !whole || len == 0 {
            return Err(MigrateError::Peer(format!(
                "a piece of {len} bytes at {at} of {:?} ({} bytes): not whole blocks",
                t.rel, t.size
            )));
        }
        let data = piece.data(&mut z, &mut buf)?;
        t.file
            .write_all_at(data, at)
            .map_err(|e| MigrateError::io(&staging.join(&t.rel), e))?;
        // The write-back starts once a file has a writeback batch's worth written since the
        // last start (one call for a span of scattered pages, not one per page), and for the
        // rest at the end of the round.
        t.unsynced = Some(match t.unsynced {
            Some((from, to)) => (from.min(at), to.max(at + len)),
            None => (at, at + len),
        });
        t.unsynced_bytes += len;
        if t.unsynced_bytes >= WRITEBACK_BATCH {
            t.kick(&flusher);
        }
        let first = (at / BLOCK) as usize;
        for (i, block) in data.chunks(BLOCK as usize).enumerate() {
            t.digests[first + i] = block_digest(block);
        }
        written += len;
    }
    for t in targets.iter_mut().flatten() {
        t.kick(&flusher);
    }
    Ok(written)
}

/// Every path under `dir`, relative, `/`-separated.
fn collect(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), MigrateError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(MigrateError::io(dir, e)),
    };
    for e in rd {
        let e = e.map_err(|e| MigrateError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(&e.path(), &rel, out)?;
        }
        out.push(rel);
    }
    Ok(())
}

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
