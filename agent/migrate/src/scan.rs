//! What a service's state is on disk, and which of its blocks changed since the last look.
//!
//! A service declares its state as paths under a root (files and directories, memory-mapped
//! files included). [`StateScan`] lists them, and for each regular file keeps a digest of every
//! 4 KiB block as last sent. Comparing a fresh read against those digests gives the blocks that
//! changed, whatever wrote them (`O_DIRECT`, mmap, a lost probe event): this is the scan that
//! backs up, or stands in for, the probe's dirty-page tracking.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

use super::error::MigrateError;

/// Block size of state transfer: one page.
pub const BLOCK: u64 = 4096;

/// One entry of the state as the receiver must reproduce it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Path relative to the state root, `/`-separated.
    pub rel: String,
    /// Permission bits.
    pub mode: u32,
    /// `None` for a directory, the length for a file.
    pub size: Option<u64>,
}

/// A run of blocks of one file that must be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// The file.
    pub rel: String,
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub blocks: u64,
}

/// Digest of a block: the first 16 bytes of its SHA-256.
pub(crate) type BlockDigest = [u8; 16];

/// The digest a block has before anything was recorded for it (never a real one in practice:
/// a SHA-256 prefix of zeros).
pub(crate) const UNKNOWN: BlockDigest = [0u8; 16];

/// The digest of one block's bytes.
pub(crate) fn block_digest(data: &[u8]) -> BlockDigest {
    let d = digest(&SHA256, data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// A file's node in the state's hash tree: the SHA-256 of its size and of its blocks' digests,
/// in order, hex. Its leaves are the block digests the rounds keep, so both sides get it
/// without reading the file again.
pub fn file_node(size: u64, digests: &[BlockDigest]) -> String {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(&size.to_le_bytes());
    ctx.update(&(digests.len() as u64).to_le_bytes());
    ctx.update(digests.as_flattened());
    hex(ctx.finish().as_ref())
}

/// [`file_node`] of a file of `size` bytes whose first blocks have `digests` and the rest
/// (never written) [`UNKNOWN`], without allocating them: a receiver's digests grow only as
/// data arrives.
pub(crate) fn file_node_padded(size: u64, digests: &[BlockDigest]) -> String {
    let blocks = size.div_ceil(BLOCK);
    let known = &digests[..digests.len().min(blocks as usize)];
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(&size.to_le_bytes());
    ctx.update(&blocks.to_le_bytes());
    ctx.update(known.as_flattened());
    for _ in known.len() as u64..blocks {
        ctx.update(&UNKNOWN);
    }
    hex(ctx.finish().as_ref())
}

/// The root of the tree over `nodes` (path and node of every file, sorted by path), hex.
pub fn tree_root(nodes: &[(String, String)]) -> String {
    let mut ctx = ring::digest::Context::new(&SHA256);
    for (rel, node) in nodes {
        ctx.update(&(rel.len() as u64).to_le_bytes());
        ctx.update(rel.as_bytes());
        ctx.update(node.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The state of one service and the block digests last sent.
#[derive(Debug)]
pub struct StateScan {
    root: PathBuf,
    paths: Vec<String>,
    sent: BTreeMap<String, Vec<BlockDigest>>,
    /// Write back (clean) every range of a file read in full just before reading it: see
    /// [`StateScan::clean_before_read`].
    clean_before_read: bool,
}

impl StateScan {
    /// The state under `root` made of `paths` (relative to it; a directory means everything
    /// below it).
    pub fn new(root: &Path, paths: &[String]) -> Result<StateScan, MigrateError> {
        for p in paths {
            let ok = !p.is_empty()
                && !p.starts_with('/')
                && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            if !ok {
                return Err(MigrateError::BadState(format!(
                    "{p:?}: state paths are relative to the state root, without '..'"
                )));
            }
        }
        Ok(StateScan {
            root: root.to_path_buf(),
            paths: paths.to_vec(),
            sent: BTreeMap::new(),
            clean_before_read: false,
        })
    }

    /// For the next passes: every file read in full is written back (cleaned) window by window
    /// just ahead of the read, the next window's write-back started while this one is read.
    /// Dirty-page tracking needs a page clean before it is read, so that a later write raises an
    /// event; cleaning the whole state first (round 0) would keep the link idle meanwhile.
    pub fn clean_before_read(&mut self, on: bool) {
        self.clean_before_read = on;
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This scan with its digests moved out, for a round's reading thread; give it back with
    /// [`StateScan::restore`].
    pub(crate) fn take_for_round(&mut self) -> StateScan {
        StateScan {
            root: self.root.clone(),
            paths: self.paths.clone(),
            sent: std::mem::take(&mut self.sent),
            clean_before_read: self.clean_before_read,
        }
    }

    /// Records `digests` as what the peer holds of `rel` (after a failed comparison), so the
    /// next full comparison of the file sends every block that differs from them.
    pub(crate) fn set_sent(&mut self, rel: &str, digests: Vec<BlockDigest>) {
        self.sent.insert(rel.to_string(), digests);
    }

    /// Takes back the digests of a scan from [`StateScan::take_for_round`].
    pub(crate) fn restore(&mut self, from: StateScan) {
        self.sent = from.sent;
    }

    /// Lists the state now: directories and regular files, sorted by path. A declared path
    /// that does not exist is simply absent; links and special files are refused.
    pub fn list(&self) -> Result<Vec<FileMeta>, MigrateError> {
        let mut out = BTreeMap::new();
        for p in &self.paths {
            let path = self.root.join(p);
            if std::fs::symlink_metadata(&path).is_ok() {
                self.walk(p, &path, &mut out)?;
            }
        }
        // Parents of declared paths, so the receiver can create them.
        let mut parents = BTreeSet::new();
        for rel in out.keys() {
            let mut cur = rel.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                parents.insert(parent.to_string());
                cur = parent;
            }
        }
        for parent in parents {
            if !out.contains_key(&parent) {
                let mode = std::fs::metadata(self.root.join(&parent))
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0o755);
                out.insert(
                    parent.clone(),
                    FileMeta {
                        rel: parent,
                        mode,
                        size: None,
                    },
                );
            }
        }
        Ok(out.into_values().collect())
    }

    fn walk(
        &self,
        rel: &str,
        path: &Path,
        out: &mut BTreeMap<String, FileMeta>,
    ) -> Result<(), MigrateError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| MigrateError::io(path, e))?;
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            out.insert(
                rel.to_string(),
                FileMeta {
                    rel: rel.to_string(),
                    mode,
                    size: None,
                },
            );
            let rd = std::fs::read_dir(path).map_err(|e| MigrateError::io(path, e))?;
            for e in rd {
                let e = e.map_err(|e| MigrateError::io(path, e))?;
                let name = e.file_name().into_string().map_err(|_| {
                    MigrateError::BadState(format!("{}: a name that is not UTF-8", path.display()))
                })?;
                self.walk(&format!("{rel}/{name}"), &e.path(), out)?;
            }
        } else if meta.is_file() {
            out.insert(
                rel.to_string(),
                FileMeta {
                    rel: rel.to_string(),
                    mode,
                    size: Some(meta.len()),
                },
            );
        } else {
            return Err(MigrateError::BadState(format!(
                "{}: only files and directories can be state",
                path.display()
            )));
        }
        Ok(())
    }

    /// Forgets the digests of files not in `files` (removed, or no longer regular files).
    fn forget_missing(&mut self, files: &[FileMeta]) {
        let present: BTreeSet<&str> = files
            .iter()
            .filter(|f| f.size.is_some())
            .map(|f| f.rel.as_str())
            .collect();
        self.sent.retain(|rel, _| present.contains(rel.as_str()));
    }

    /// Reads every file of `files` and returns the runs of blocks that differ from what was
    /// last sent (all of them the first time), recording the new digests as sent. Also
    /// forgets files that are gone.
    pub fn changed(&mut self, files: &[FileMeta]) -> Result<Vec<Extent>, MigrateError> {
        self.changed_pages(files, &BTreeMap::new())
    }

    /// As [`StateScan::changed`], but for the files in `pages` reads only the listed blocks
    /// (the pages the probe saw dirtied); the other files are compared in full. A listed block
    /// whose content did not change (rewritten with the same bytes) is not sent.
    pub fn changed_pages(
        &mut self,
        files: &[FileMeta],
        pages: &BTreeMap<String, BTreeSet<u64>>,
    ) -> Result<Vec<Extent>, MigrateError> {
        let mut extents: Vec<Extent> = Vec::new();
        self.stream_changed(files, Some(pages), &mut |run| {
            let rel = &files[run.file as usize].rel;
            let (first, blocks) = (run.offset / BLOCK, (run.data.len() as u64).div_ceil(BLOCK));
            match extents.last_mut() {
                Some(e) if &e.rel == rel && e.first + e.blocks == first => e.blocks += blocks,
                _ => extents.push(Extent {
                    rel: rel.clone(),
                    first,
                    blocks,
                }),
            }
            true
        })?;
        Ok(extents)
    }

    /// The pass a round makes: reads the candidate blocks of every regular file of `files`
    /// (for a file in `pages` that was sent before, only the listed blocks: the pages the probe
    /// saw dirtied; for any other, every block), compares each block's digest with the one
    /// last sent, records the new digests, and hands every run of changed blocks to `emit` as
    /// soon as it is read, so the caller can send it while the pass goes on. A run holds at
    /// most `RUN_BLOCKS` (256) blocks of one file; its data is cut at the file's listed size (a
    /// file that shrank since the listing reads as zeros up to it). `emit` returns false to
    /// stop early (the pass then ends with what it recorded so far). Forgets the digests of
    /// files that are gone.
    pub fn stream_changed(
        &mut self,
        files: &[FileMeta],
        pages: Option<&BTreeMap<String, BTreeSet<u64>>>,
        emit: &mut dyn FnMut(ChangedRun) -> bool,
    ) -> Result<PassStats, MigrateError> {
        use std::os::unix::fs::FileExt;
        self.forget_missing(files);
        let mut stats = PassStats::default();
        let mut buf = vec![0u8; (RUN_BLOCKS * BLOCK) as usize];
        for (index, f) in files.iter().enumerate() {
            let Some(size) = f.size else { continue };
            let path = self.root.join(&f.rel);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Removed since it was listed: the next round's listing says so.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MigrateError::io(&path, e)),
            };
            let blocks = size.div_ceil(BLOCK);
            let listed = pages
                .and_then(|p| p.get(&f.rel))
                .filter(|_| self.sent.contains_key(&f.rel));
            let runs: Vec<(u64, u64)> = match listed {
                Some(list) => page_runs(list.range(..blocks).copied()),
                None => (0..blocks)
                    .step_by(RUN_BLOCKS as usize)
                    .map(|first| (first, RUN_BLOCKS.min(blocks - first)))
                    .collect(),
            };
            stats.scanned_files += usize::from(listed.is_none());
            // Cleaned up to here (with `clean_before_read`, files read in full).
            let mut cleaned = if self.clean_before_read && listed.is_none() {
                Some(0u64)
            } else {
                None
            };
            let digests = self.sent.entry(f.rel.clone()).or_default();
            // A block past the old end has no digest yet (`UNKNOWN`), so it is sent.
            digests.resize(blocks as usize, UNKNOWN);
            for (first, n) in runs {
                let start = first * BLOCK;
                let len = ((first + n) * BLOCK).min(size) - start;
                if let Some(upto) = cleaned.as_mut() {
                    if start + len > *upto {
                        let end = (start + len).next_multiple_of(CLEAN_WINDOW).min(size);
                        clean_range(&file, *upto, end - *upto)
                            .map_err(|e| MigrateError::io(&path, e))?;
                        *upto = end;
                        if end < size {
                            start_write_back(&file, end, CLEAN_WINDOW);
                        }
                    }
                }
                let data = &mut buf[..len as usize];
                let mut filled = 0;
                while filled < data.len() {
                    match file.read_at(&mut data[filled..], start + filled as u64) {
                        Ok(0) => break,
                        Ok(k) => filled += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(MigrateError::io(&path, e)),
                    }
                }
                data[filled..].fill(0);
                stats.read_bytes += len;
                // Runs of changed blocks within what was read.
                let mut changed: Option<u64> = None;
                for b in first..=first + n {
                    let differs = b < first + n && {
                        let at = ((b - first) * BLOCK) as usize;
                        let d = block_digest(&data[at..(at + BLOCK as usize).min(data.len())]);
                        let slot = &mut digests[b as usize];
                        let differs = *slot != d;
                        *slot = d;
                        differs
                    };
                    match (changed, differs) {
                        (None, true) => changed = Some(b),
                        (Some(from), false) => {
                            changed = None;
                            let lo = ((from - first) * BLOCK) as usize;
                            let hi = (((b - first) * BLOCK) as usize).min(data.len());
                            stats.sent_blocks += b - from;
                            stats.sent_bytes += (hi - lo) as u64;
                            let run = ChangedRun {
                                file: index as u32,
                                offset: from * BLOCK,
                                data: data[lo..hi].to_vec(),
                            };
                            if !emit(run) {
                                return Ok(stats);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(stats)
    }
}

/// Blocks read at most at once, and sent at most in one run: 1 MiB.
pub(crate) const RUN_BLOCKS: u64 = 256;

/// With `clean_before_read`, a file is cleaned this much at a time ahead of the read.
const CLEAN_WINDOW: u64 = 16 << 20;

/// Writes back every dirty page of `len` bytes at `at` of `file` and waits for it
/// (`SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER`: also pages already under write-back and
/// dirtied again). Where the call is not supported, the whole file's `fdatasync`.
fn clean_range(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor this function borrows; no memory is passed.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        file.sync_data()
    }
}

/// Starts writing `len` bytes at `at` of `file` (`len` 0: to its end) back to disk without
/// waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Best effort: what it does not
/// start, a later `fsync` writes.
pub(crate) fn start_write_back(file: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `clean_range`.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Pages of a file in the page cache that are dirty now (`cachestat(2)`, Linux 6.5), and
/// the file's pages; `None` where the kernel lacks the call.
pub(crate) fn dirty_pages(file: &File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture (the unified table, from 6.5).
    const SYS_CACHESTAT: libc::c_long = 451;
    let size = file.metadata().ok()?.len();
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both live and of the layouts the
    // call defines, for the duration of the call; the descriptor is borrowed.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    (r == 0).then(|| {
        (
            stat.nr_dirty,
            size.div_ceil(godwit_probe::procfs::page_size()),
        )
    })
}

/// The share of the state's pages that are dirty in the page cache now, over `files` under
/// `root` (`None` where the kernel cannot say, or there is no page). A page already dirty
/// takes writes without a fault or a new page-cache event, so the probe's rate misses them
/// (it counts clean-to-dirty changes), while the rounds after round 0, which follow pages the
/// rounds themselves cleaned, see them: their rate is the probe's over `1 - share`.
pub(crate) fn dirty_share(root: &Path, files: &[FileMeta]) -> Option<f64> {
    let (mut dirty, mut pages, mut known) = (0u64, 0u64, false);
    for f in files.iter().filter(|f| f.size.is_some()) {
        // Not through a link: only the state's own files.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(root.join(&f.rel));
        let Ok(file) = opened else {
            continue;
        };
        if let Some((d, n)) = dirty_pages(&file) {
            (dirty, pages, known) = (dirty + d, pages + n, true);
        }
    }
    (known && pages > 0).then(|| (dirty as f64 / pages as f64).min(1.0))
}

/// A run of changed blocks of one file, as read: what a round sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRun {
    /// The file's index in the round's listing.
    pub file: u32,
    /// Byte offset in the file (a multiple of [`BLOCK`]).
    pub offset: u64,
    /// The blocks' bytes (the last block cut at the file's listed size).
    pub data: Vec<u8>,
}

/// What a pass read and found changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Blocks found changed (sent).
    pub sent_blocks: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Regular files compared in full (not from a list of pages).
    pub scanned_files: usize,
}

/// Sorted page numbers as runs (first, count) of consecutive pages, at most [`RUN_BLOCKS`]
/// each: a large folio the probe reports whole is one read.
fn page_runs(pages: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == p && *n < RUN_BLOCKS => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

impl StateScan {
    /// The hash tree of the state as last sent, from the block digests the rounds recorded
    /// (nothing is read): the node of every regular file of `files`, by path. A file with no
    /// digests yet (never read) has the node of an empty digest list, which matches no copy
    /// of a non-empty file.
    pub fn tree(&self, files: &[FileMeta]) -> Vec<(String, String)> {
        tree_of(files, &self.sent)
    }
}

/// The hash tree of `files` from recorded block digests (by path; none recorded: an empty
/// list): the node of every regular file, in order.
pub(crate) fn tree_of(
    files: &[FileMeta],
    digests: &BTreeMap<String, Vec<BlockDigest>>,
) -> Vec<(String, String)> {
    files
        .iter()
        .filter_map(|f| {
            let size = f.size?;
            let d = digests.get(&f.rel).map(Vec::as_slice).unwrap_or(&[]);
            Some((f.rel.clone(), file_node_padded(size, d)))
        })
        .collect()
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The digest of every block of the file at `path`, read up to `size` bytes (a missing file
/// has none, a shorter one fewer).
pub(crate) fn file_digests(path: &Path, size: u64) -> Result<Vec<BlockDigest>, MigrateError> {
    let mut buf = vec![0u8; BLOCK as usize];
    let mut digests = Vec::with_capacity(size.div_ceil(BLOCK) as usize);
    match File::open(path) {
        Ok(file) => {
            let mut file = std::io::BufReader::with_capacity(1 << 20, file.take(size));
            loop {
                let n = read_full(&mut file, &mut buf).map_err(|e| MigrateError::io(path, e))?;
                if n == 0 {
                    break;
                }
                digests.push(block_digest(&buf[..n]));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(MigrateError::io(path, e)),
    }
    Ok(digests)
}

/// The hash tree of the state under `root` as it is on disk: every regular file of `files`
/// read in full and its node computed from its blocks (the full re-hash; the same nodes as
/// [`StateScan::tree`] when the copy is exact). A file is read up to its listed size; one that
/// is shorter or missing gets a node that matches nothing listed.
pub fn hash_tree(root: &Path, files: &[FileMeta]) -> Result<Vec<(String, String)>, MigrateError> {
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.size.is_some()) {
        let size = f.size.unwrap_or(0);
        let digests = file_digests(&root.join(&f.rel), size)?;
        out.push((f.rel.clone(), file_node(size, &digests)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_share_of_dirty_pages_is_what_the_page_cache_holds_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![7u8; 64 * 4096]).unwrap();
        file.sync_data().unwrap();
        let meta = [FileMeta {
            rel: "state".into(),
            mode: 0o600,
            size: Some(64 * 4096),
        }];
        if dirty_pages(&file).is_none() {
            eprintln!("no cachestat(2) on this kernel: nothing to check");
            return;
        }
        assert_eq!(dirty_share(dir.path(), &meta), Some(0.0));
        // A quarter of the pages written again, not yet written back: at least those are
        // dirty (the page cache marks a large folio dirty whole).
        use std::os::unix::fs::FileExt;
        for page in (0..64).step_by(4) {
            file.write_at(&[1u8; 100], page * 4096).unwrap();
        }
        let share = dirty_share(dir.path(), &meta).unwrap();
        assert!((0.25..=1.0).contains(&share), "{share}");
        file.sync_data().unwrap();
        assert_eq!(dirty_share(dir.path(), &meta), Some(0.0));
        // A link in the state is not followed.
        std::os::unix::fs::symlink(&path, dir.path().join("link")).unwrap();
        let link = [FileMeta {
            rel: "link".into(),
            ..meta[0].clone()
        }];
        assert_eq!(dirty_share(dir.path(), &link), None);
    }
}
