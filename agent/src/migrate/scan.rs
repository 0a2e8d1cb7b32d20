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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
pub type BlockDigest = [u8; 16];

/// The digest a block has before anything was recorded for it (never a real one in practice:
/// a SHA-256 prefix of zeros).
pub const UNKNOWN: BlockDigest = [0u8; 16];

/// The digest of one block's bytes.
pub fn block_digest(data: &[u8]) -> BlockDigest {
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
        })
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
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
        self.forget_missing(files);
        self.compare_full(files)
    }

    /// Compares every file of `files` in full against the digests last sent.
    fn compare_full(&mut self, files: &[FileMeta]) -> Result<Vec<Extent>, MigrateError> {
        let mut extents = Vec::new();
        let mut buf = vec![0u8; BLOCK as usize];
        for f in files.iter().filter(|f| f.size.is_some()) {
            let path = self.root.join(&f.rel);
            // Only up to the listed size: what the round sends (a file growing meanwhile is
            // compared again at its new size next round; a block read past the listing would
            // be recorded as sent without being sent).
            let size = f.size.unwrap_or(0);
            let mut file = match File::open(&path) {
                Ok(file) => std::io::BufReader::with_capacity(1 << 20, file.take(size)),
                // Removed since it was listed: the next round's listing says so.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MigrateError::io(&path, e)),
            };
            let old = self.sent.remove(&f.rel).unwrap_or_default();
            let mut new = Vec::with_capacity(old.len());
            let mut run: Option<(u64, u64)> = None;
            for index in 0..size.div_ceil(BLOCK) {
                // A file that shrank since the listing reads as zeros up to its listed size,
                // as the round sends it.
                let len = (size - index * BLOCK).min(BLOCK) as usize;
                let n = read_full(&mut file, &mut buf[..len])
                    .map_err(|e| MigrateError::io(&path, e))?;
                buf[n..len].fill(0);
                let d = block_digest(&buf[..len]);
                let differs = old.get(index as usize) != Some(&d);
                new.push(d);
                match (&mut run, differs) {
                    (Some((_, len)), true) => *len += 1,
                    (None, true) => run = Some((index, 1)),
                    (Some((first, len)), false) => {
                        extents.push(Extent {
                            rel: f.rel.clone(),
                            first: *first,
                            blocks: *len,
                        });
                        run = None;
                    }
                    (None, false) => {}
                }
            }
            if let Some((first, blocks)) = run {
                extents.push(Extent {
                    rel: f.rel.clone(),
                    first,
                    blocks,
                });
            }
            self.sent.insert(f.rel.clone(), new);
        }
        Ok(extents)
    }

    /// As [`StateScan::changed`], but for the files in `pages` reads only the listed blocks
    /// (the pages the probe saw dirtied); the other files are compared in full. A listed block
    /// whose content did not change (rewritten with the same bytes) is not sent.
    pub fn changed_pages(
        &mut self,
        files: &[FileMeta],
        pages: &BTreeMap<String, BTreeSet<u64>>,
    ) -> Result<Vec<Extent>, MigrateError> {
        self.forget_missing(files);
        let (full, partial): (Vec<FileMeta>, Vec<FileMeta>) =
            files.iter().cloned().partition(|f| {
                f.size.is_none() || !pages.contains_key(&f.rel) || !self.sent.contains_key(&f.rel)
            });
        let mut extents = self.compare_full(&full)?;
        for f in &partial {
            let path = self.root.join(&f.rel);
            let size = f.size.unwrap_or(0);
            let blocks = size.div_ceil(BLOCK);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MigrateError::io(&path, e)),
            };
            let list: Vec<u64> = pages[&f.rel]
                .iter()
                .copied()
                .filter(|&p| p < blocks)
                .collect();
            let fresh = digest_pages_parallel(&file, &list, size)
                .map_err(|e| MigrateError::io(&path, e))?;
            let digests = self.sent.entry(f.rel.clone()).or_default();
            digests.resize(blocks as usize, UNKNOWN);
            let mut run: Option<(u64, u64)> = None;
            for (&page, d) in list.iter().zip(fresh) {
                if digests[page as usize] == d {
                    continue;
                }
                digests[page as usize] = d;
                match &mut run {
                    Some((first, n)) if *first + *n == page => *n += 1,
                    _ => {
                        if let Some((first, blocks)) = run.take() {
                            extents.push(Extent {
                                rel: f.rel.clone(),
                                first,
                                blocks,
                            });
                        }
                        run = Some((page, 1));
                    }
                }
            }
            if let Some((first, blocks)) = run {
                extents.push(Extent {
                    rel: f.rel.clone(),
                    first,
                    blocks,
                });
            }
        }
        Ok(extents)
    }
}

impl StateScan {
    /// The hash tree of the state as last sent, from the block digests the rounds recorded
    /// (nothing is read): the node of every regular file of `files`, by path. A file with no
    /// digests yet (never read) has the node of an empty digest list, which matches no copy
    /// of a non-empty file.
    pub fn tree(&self, files: &[FileMeta]) -> Vec<(String, String)> {
        files
            .iter()
            .filter_map(|f| {
                let size = f.size?;
                let digests = self.sent.get(&f.rel).map(Vec::as_slice).unwrap_or(&[]);
                Some((f.rel.clone(), file_node(size, digests)))
            })
            .collect()
    }
}

/// The digests of `pages` (sorted) of `file`, listed as `size` bytes long, in order: runs of
/// consecutive pages (a large folio is one) are read with one call each, and past the end of
/// a file that shrank since the listing, a page reads as zeros, as the round sends it.
fn digest_pages(file: &File, pages: &[u64], size: u64) -> std::io::Result<Vec<BlockDigest>> {
    use std::os::unix::fs::FileExt;
    const RUN: u64 = 256;
    let mut buf = vec![0u8; (RUN * BLOCK) as usize];
    let mut out = Vec::with_capacity(pages.len());
    let mut i = 0;
    while i < pages.len() {
        let start = pages[i];
        let mut end = start + 1;
        while end - start < RUN && pages.get(i + (end - start) as usize) == Some(&end) {
            end += 1;
        }
        i += (end - start) as usize;
        let len = ((end * BLOCK).min(size) - start * BLOCK) as usize;
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..len], start * BLOCK + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[filled..len].fill(0);
        for at in (0..len).step_by(BLOCK as usize) {
            out.push(block_digest(&buf[at..len.min(at + BLOCK as usize)]));
        }
    }
    Ok(out)
}

/// [`digest_pages`] on every core for a long list: the frozen round's reading is mostly
/// hashing (the probe reports whole folios, so many more pages than were written).
fn digest_pages_parallel(
    file: &File,
    pages: &[u64],
    size: u64,
) -> std::io::Result<Vec<BlockDigest>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads < 2 || pages.len() < 1024 {
        return digest_pages(file, pages, size);
    }
    let chunk = pages.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = pages
            .chunks(chunk)
            .map(|part| scope.spawn(move || digest_pages(file, part, size)))
            .collect();
        let mut out = Vec::with_capacity(pages.len());
        for part in parts {
            out.extend(
                part.join()
                    .map_err(|_| std::io::Error::other("digest thread panicked"))??,
            );
        }
        Ok(out)
    })
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

/// The hash tree of the state under `root` as it is on disk: every regular file of `files`
/// read in full and its node computed from its blocks (the full re-hash; the same nodes as
/// [`StateScan::tree`] when the copy is exact). A file is read up to its listed size; one that
/// is shorter or missing gets a node that matches nothing listed.
pub fn hash_tree(root: &Path, files: &[FileMeta]) -> Result<Vec<(String, String)>, MigrateError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; BLOCK as usize];
    for f in files.iter().filter(|f| f.size.is_some()) {
        let size = f.size.unwrap_or(0);
        let path = root.join(&f.rel);
        let mut digests = Vec::with_capacity(size.div_ceil(BLOCK) as usize);
        match File::open(&path) {
            Ok(file) => {
                let mut file = std::io::BufReader::with_capacity(1 << 20, file.take(size));
                loop {
                    let n =
                        read_full(&mut file, &mut buf).map_err(|e| MigrateError::io(&path, e))?;
                    if n == 0 {
                        break;
                    }
                    digests.push(block_digest(&buf[..n]));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(MigrateError::io(&path, e)),
        }
        out.push((f.rel.clone(), file_node(size, &digests)));
    }
    Ok(out)
}
