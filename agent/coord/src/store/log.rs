//! The log and the vote: [`LogStore`] (openraft's `RaftLogStorage`) and [`LogReader`].
//!
//! The `log` file is a magic, then records: `len: u32 LE`, `crc32(len ‖ payload): u32 LE`,
//! `payload` (JSON of a [`Record`]). A `Purged` record, written only as the first record by a
//! purge's rewrite, keeps the last purged log id; `Entry` records follow in index order.
//! Every entry is also kept in memory (the placement log is small), which is what readers see.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};

use super::{crc32, read_optional, to_storage, write_atomic, StoreError};
use super::{LOG_FILE, VOTE_FILE};
use crate::{NodeId, TypeConfig};

const MAGIC: &[u8; 8] = b"GWRLOG\x00\x01";
/// A record header: length and checksum.
const HEADER: usize = 8;
/// Larger than any record this store writes; a length beyond it is damage.
const MAX_RECORD: usize = 64 << 20;

/// One record of the log file.
#[derive(Serialize, Deserialize)]
enum Record {
    Purged(LogId<NodeId>),
    Entry(Entry<TypeConfig>),
}

/// [`Record`] by reference, for writing (serializes identically).
#[derive(Serialize)]
#[serde(rename = "Record")]
enum RecordRef<'a> {
    Purged(&'a LogId<NodeId>),
    Entry(&'a Entry<TypeConfig>),
}

/// Appends one framed record with `payload` to `out`.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32(&[&len, payload]).to_le_bytes());
    out.extend_from_slice(payload);
}

fn encode(r: &RecordRef<'_>) -> Vec<u8> {
    // Serializing these plain types to JSON cannot fail (string keys, no non-finite floats).
    serde_json::to_vec(r).expect("a log record serializes to JSON")
}

/// The file scanned: its good records with their offsets, where the good part ends, and why
/// the rest (if any) was not read.
struct Scan {
    records: Vec<(u64, Record)>,
    valid_len: u64,
    torn: Option<String>,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut pos = MAGIC.len();
    let torn = loop {
        let rest = &bytes[pos..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() < HEADER {
            break Some(format!("a record header cut short ({} bytes)", rest.len()));
        }
        let len_b: [u8; 4] = rest[..4].try_into().expect("four bytes");
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("four bytes"));
        let len = u32::from_le_bytes(len_b) as usize;
        if len > MAX_RECORD || rest.len() - HEADER < len {
            break Some(format!(
                "a record of {len} bytes runs past the end ({} left)",
                rest.len() - HEADER
            ));
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32(&[&len_b, payload]) != crc {
            break Some("a record fails its checksum".to_string());
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(r) => records.push((pos as u64, r)),
            Err(e) => break Some(format!("a record does not decode: {e}")),
        }
        pos += HEADER + len;
    };
    Scan {
        records,
        valid_len: pos as u64,
        torn,
    }
}

/// The log file, owned by the writer: every write goes through here, one at a time.
struct Segment {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// The file's length: where the next record goes.
    len: u64,
    /// Each entry's record offset, to cut the file at an index.
    offsets: BTreeMap<u64, u64>,
    /// Held for the directory's lock; released when the store is dropped.
    _lock: File,
}

impl Segment {
    fn open_file(path: &Path) -> Result<File, StoreError> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(StoreError::io(path, "open"))
    }

    /// Appends `buf` (framed records; `offs` gives each entry's offset within it) and syncs the
    /// data. On failure the file is cut back to where it was.
    fn append(&mut self, buf: &[u8], offs: &[(u64, u64)]) -> Result<(), StoreError> {
        let res = self
            .file
            .write_all(buf)
            .map_err(StoreError::io(&self.path, "append to"))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(StoreError::io(&self.path, "sync"))
            });
        if let Err(e) = res {
            if let Err(e2) = self.file.set_len(self.len) {
                tracing::error!(file = %self.path.display(), error = %e2, "cannot cut back a failed append");
            }
            return Err(e);
        }
        for (index, off) in offs {
            self.offsets.insert(*index, self.len + off);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Cuts the file before the entry at `index` (and everything after it).
    fn truncate(&mut self, index: u64) -> Result<(), StoreError> {
        let Some((_, &off)) = self.offsets.range(index..).next() else {
            return Ok(());
        };
        self.file
            .set_len(off)
            .and_then(|()| self.file.sync_all())
            .map_err(StoreError::io(&self.path, "truncate"))?;
        self.offsets.split_off(&index);
        self.len = off;
        Ok(())
    }

    /// Rewrites the file without the entries up to `upto`, recording `upto` as purged.
    fn purge(&mut self, upto: &LogId<NodeId>) -> Result<(), StoreError> {
        let from = self
            .offsets
            .range(upto.index + 1..)
            .next()
            .map_or(self.len, |(_, off)| *off);
        let mut tail = vec![0u8; (self.len - from) as usize];
        self.file
            .read_exact_at(&mut tail, from)
            .map_err(StoreError::io(&self.path, "read"))?;
        let mut buf = MAGIC.to_vec();
        frame(&mut buf, &encode(&RecordRef::Purged(upto)));
        let head = buf.len() as u64;
        buf.extend_from_slice(&tail);
        write_atomic(&self.dir, LOG_FILE, &buf)?;
        self.file = Self::open_file(&self.path)?;
        self.len = buf.len() as u64;
        self.offsets = self
            .offsets
            .split_off(&(upto.index + 1))
            .into_iter()
            .map(|(i, off)| (i, off - from + head))
            .collect();
        Ok(())
    }
}

/// The vote and the committed log id, as `vote.json` holds them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct VoteFile {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// What readers see: every entry not purged.
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    purged: Option<LogId<NodeId>>,
}

/// The Raft log and vote on disk (openraft's [`RaftLogStorage`]). See the module docs of
/// [`crate::store`] for the files and what is synced when.
pub struct LogStore {
    dir: PathBuf,
    mem: Arc<RwLock<Mem>>,
    seg: Arc<Mutex<Segment>>,
    vote: VoteFile,
}

/// Reads the log while the writer appends: openraft's replication tasks hold one each.
#[derive(Clone)]
pub struct LogReader {
    mem: Arc<RwLock<Mem>>,
}

impl LogStore {
    /// Opens (or creates) the log and vote files in `dir`; `lock` is the directory's lock.
    pub(super) fn open(dir: &Path, lock: File) -> Result<LogStore, StoreError> {
        let vote_path = dir.join(VOTE_FILE);
        let vote = match read_optional(dir, VOTE_FILE)? {
            None => VoteFile::default(),
            Some(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: vote_path.clone(),
                detail: e.to_string(),
            })?,
        };

        let path = dir.join(LOG_FILE);
        let bytes = match read_optional(dir, LOG_FILE)? {
            Some(b) => b,
            None => {
                write_atomic(dir, LOG_FILE, MAGIC)?;
                MAGIC.to_vec()
            }
        };
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC[..] {
            return Err(StoreError::Corrupt {
                path,
                detail: "not a godwit raft log (bad magic)".into(),
            });
        }
        let scan = scan(&bytes);
        let file = Segment::open_file(&path)?;
        if let Some(why) = &scan.torn {
            tracing::warn!(
                file = %path.display(),
                offset = scan.valid_len,
                dropped_bytes = bytes.len() as u64 - scan.valid_len,
                reason = %why,
                "dropped a torn tail of the raft log"
            );
            file.set_len(scan.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io(&path, "truncate"))?;
        }

        let mut mem = Mem::default();
        let mut offsets = BTreeMap::new();
        for (off, rec) in scan.records {
            match rec {
                Record::Purged(id) => {
                    if !mem.entries.is_empty() {
                        return Err(StoreError::Corrupt {
                            path,
                            detail: format!("a purge record at offset {off} after entries"),
                        });
                    }
                    mem.purged = Some(id);
                }
                Record::Entry(e) => {
                    let i = e.log_id.index;
                    if let Some((last, _)) = mem.entries.last_key_value() {
                        if i <= *last {
                            return Err(StoreError::Corrupt {
                                path,
                                detail: format!("entry {i} at offset {off} after entry {last}"),
                            });
                        }
                    }
                    offsets.insert(i, off);
                    mem.entries.insert(i, e);
                }
            }
        }
        tracing::info!(
            dir = %dir.display(),
            entries = mem.entries.len(),
            last = ?mem.entries.last_key_value().map(|(i, _)| *i),
            purged = ?mem.purged.as_ref().map(|p| p.index),
            vote = ?vote.vote,
            "raft log opened"
        );
        Ok(LogStore {
            dir: dir.to_owned(),
            mem: Arc::new(RwLock::new(mem)),
            seg: Arc::new(Mutex::new(Segment {
                dir: dir.to_owned(),
                path,
                file,
                len: scan.valid_len,
                offsets,
                _lock: lock,
            })),
            vote,
        })
    }

    /// Runs `f` on the segment in a blocking task (file I/O and fsync stay off the runtime).
    async fn on_segment<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Segment) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let seg = self.seg.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = seg.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn write_vote_file(&mut self, next: VoteFile) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&next).expect("a vote serializes to JSON");
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, VOTE_FILE, &bytes))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.vote = next;
        Ok(())
    }

    fn mem_read(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().unwrap_or_else(|p| p.into_inner())
    }

    fn mem_write(&self) -> std::sync::RwLockWriteGuard<'_, Mem> {
        self.mem.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The entries of `mem` in `range`, cloned.
fn read_range(mem: &RwLock<Mem>, range: impl RangeBounds<u64>) -> Vec<Entry<TypeConfig>> {
    let lo = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    if lo >= hi {
        return Vec::new();
    }
    let mem = mem.read().unwrap_or_else(|p| p.into_inner());
    mem.entries.range(lo..hi).map(|(_, e)| e.clone()).collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = self.mem_read();
        let last = mem.entries.last_key_value().map(|(_, e)| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: last.or(mem.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let next = VoteFile {
            vote: Some(*vote),
            ..self.vote.clone()
        };
        self.write_vote_file(next)
            .await
            .map_err(|e| to_storage(&e, ErrorVerb::Write, ErrorSubject::Vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if committed == self.vote.committed {
            return Ok(());
        }
        let next = VoteFile {
            committed,
            ..self.vote.clone()
        };
        self.write_vote_file(next)
            .await
            .map_err(|e| to_storage(&e, ErrorVerb::Write, ErrorSubject::Store))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut buf = Vec::new();
        let mut offs = Vec::with_capacity(entries.len());
        // Indexes only grow within the file (truncate cuts it at an entry's offset). openraft
        // appends consecutive entries after the last; its test suite also appends below a
        // purge point, which is harmless here.
        let mut last = self.mem_read().entries.last_key_value().map(|(i, _)| *i);
        for e in &entries {
            let got = e.log_id.index;
            if let Some(last) = last.filter(|l| got <= *l) {
                let err = StoreError::OutOfOrder {
                    path: self.dir.join(LOG_FILE),
                    last,
                    got,
                };
                callback.log_io_completed(Err(io::Error::other(err.to_string())));
                return Err(to_storage(&err, ErrorVerb::Write, ErrorSubject::Logs));
            }
            last = Some(got);
            offs.push((got, buf.len() as u64));
            frame(&mut buf, &encode(&RecordRef::Entry(e)));
        }
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        if let Err(err) = self.on_segment(move |s| s.append(&buf, &offs)).await {
            callback.log_io_completed(Err(io::Error::other(err.to_string())));
            return Err(to_storage(&err, ErrorVerb::Write, ErrorSubject::Logs));
        }
        {
            let mut mem = self.mem_write();
            for e in entries {
                mem.entries.insert(e.log_id.index, e);
            }
        }
        // On disk: only now may Raft count this node's copy.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let index = log_id.index;
        self.on_segment(move |s| s.truncate(index))
            .await
            .map_err(|e| to_storage(&e, ErrorVerb::Delete, ErrorSubject::Logs))?;
        self.mem_write().entries.split_off(&index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        if self
            .mem_read()
            .purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        self.on_segment(move |s| s.purge(&log_id))
            .await
            .map_err(|e| to_storage(&e, ErrorVerb::Delete, ErrorSubject::Logs))?;
        let mut mem = self.mem_write();
        mem.entries = mem.entries.split_off(&(log_id.index + 1));
        mem.purged = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_stops_at_the_first_bad_record_and_keeps_the_good_ones() {
        let mut buf = MAGIC.to_vec();
        let id = openraft::testing::log_id::<NodeId>(1, 1, 7);
        frame(&mut buf, &encode(&RecordRef::Purged(&id)));
        let good = buf.len();
        frame(&mut buf, &encode(&RecordRef::Purged(&id)));
        // Whole: two records.
        let s = scan(&buf);
        assert_eq!(
            (s.records.len(), s.valid_len, s.torn.is_none()),
            (2, buf.len() as u64, true)
        );
        // Cut anywhere in the second record: one record, the rest dropped.
        for cut in good..buf.len() {
            let s = scan(&buf[..cut]);
            assert_eq!(
                (s.records.len(), s.valid_len),
                (1, good as u64),
                "cut at {cut}"
            );
            assert_eq!(s.torn.is_some(), cut > good, "cut at {cut}");
        }
        // A flipped bit in the second payload fails its checksum.
        let mut bad = buf.clone();
        *bad.last_mut().expect("non-empty") ^= 0x10;
        let s = scan(&bad);
        assert_eq!(s.records.len(), 1);
        assert!(
            s.torn.as_deref().is_some_and(|t| t.contains("checksum")),
            "{:?}",
            s.torn
        );
    }
}
