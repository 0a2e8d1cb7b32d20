//! The content-addressed chunk store and image manifests.
//!
//! ```text
//! <root>/chunks/<2 hex>/<64 hex>   one chunk, named by the SHA-256 of its bytes
//! <root>/manifests/<64 hex>.json   one image, named by the SHA-256 of its manifest
//! <root>/tmp/                      files being written (renamed into place when complete)
//! ```
//!
//! Files are cut with FastCDC (16/64/256 KiB min/avg/max, as casync does), so an edit moves
//! only the chunks around it and versions of an image share the rest. A chunk is written only
//! after its bytes hash to its name, and hashed again when read: a corrupt chunk is an error,
//! never data. A manifest is committed only when all its chunks are present.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ring::digest::{digest, Context, SHA256};
use serde::{Deserialize, Serialize};

use super::error::ImageError;

/// Smallest chunk FastCDC cuts (except a file's last).
pub const MIN_CHUNK: u32 = 16 << 10;
/// Average chunk size.
pub const AVG_CHUNK: u32 = 64 << 10;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 256 << 10;
/// Version of the manifest format.
pub(crate) const MANIFEST_FORMAT: u32 = 1;

/// A SHA-256 digest, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(hex(digest(&SHA256, data).as_ref()))
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Digest(s.to_ascii_lowercase()))
        } else {
            Err(ImageError::BadDigest(s.to_string()))
        }
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's name.
    pub digest: Digest,
    /// Its length in bytes.
    pub len: u32,
}

/// What an entry of an image is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file: its chunks in order.
    File {
        /// Total length.
        size: u64,
        /// Its chunks, in order.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link (never followed when an image is written out).
    Symlink {
        /// Where it points.
        target: String,
    },
}

/// One file, directory or link of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Path relative to the image root, `/`-separated, normalised.
    pub path: String,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// What it is.
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// An image: its entries, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format version (1).
    pub format: u32,
    /// Entries, sorted by path, each once.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Parses a manifest as a peer sends it (its canonical JSON) and validates it
    /// ([`Manifest::validate`]); anything else is a [`ImageError::BadManifest`].
    pub fn parse(json: &[u8]) -> Result<Manifest, ImageError> {
        let manifest: Manifest =
            serde_json::from_slice(json).map_err(|e| ImageError::BadManifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The image's id: the SHA-256 of its canonical JSON.
    pub fn id(&self) -> Digest {
        Digest::of(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// Every chunk reference, in order (with repeats).
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        self.entries.iter().flat_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => chunks.as_slice(),
            _ => &[],
        })
    }

    /// Bytes of file data.
    pub fn size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// Checks what a manifest from a peer must satisfy before anything of it is written:
    /// known format; paths relative, normalised, sorted and unique; no entry below a file or
    /// a link (so writing the image out cannot escape its directory); modes within `0o7777`;
    /// chunk lengths within bounds and adding up to the file size.
    pub fn validate(&self) -> Result<(), ImageError> {
        let bad = |path: &str, why: &str| ImageError::BadManifest(format!("{path:?}: {why}"));
        if self.format != MANIFEST_FORMAT {
            return Err(ImageError::BadManifest(format!(
                "format {} (this agent reads {MANIFEST_FORMAT})",
                self.format
            )));
        }
        let mut not_dirs: BTreeSet<&str> = BTreeSet::new();
        let mut previous: Option<&str> = None;
        for e in &self.entries {
            let p = e.path.as_str();
            if p.is_empty()
                || p.starts_with('/')
                || p.ends_with('/')
                || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
                || p.contains('\0')
            {
                return Err(bad(p, "not a normalised relative path"));
            }
            if previous.is_some_and(|q| q >= p) {
                return Err(bad(p, "entries not sorted or repeated"));
            }
            previous = Some(p);
            let mut ancestor = p;
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if not_dirs.contains(parent) {
                    return Err(bad(p, "below a file or a symbolic link"));
                }
                ancestor = parent;
            }
            if e.mode > 0o7777 {
                return Err(bad(p, "mode out of range"));
            }
            match &e.kind {
                EntryKind::Dir => {}
                EntryKind::Symlink { target } => {
                    if target.is_empty() || target.contains('\0') {
                        return Err(bad(p, "bad link target"));
                    }
                    not_dirs.insert(p);
                }
                EntryKind::File { size, chunks } => {
                    let mut sum = 0u64;
                    for c in chunks {
                        if c.len == 0 || c.len > MAX_CHUNK {
                            return Err(bad(p, "chunk length out of bounds"));
                        }
                        sum += u64::from(c.len);
                    }
                    if sum != *size {
                        return Err(bad(p, "chunk lengths do not add up to the size"));
                    }
                    not_dirs.insert(p);
                }
            }
        }
        Ok(())
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImportStats {
    /// Regular files.
    pub files: u64,
    /// Bytes of file data.
    pub bytes: u64,
    /// Chunk references.
    pub chunks: u64,
    /// Chunks the store did not hold before.
    pub new_chunks: u64,
    /// Bytes of those.
    pub new_bytes: u64,
}

/// A chunk store with its manifests, in one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for d in ["chunks", "manifests", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    fn chunk_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("chunks")
            .join(&d.as_str()[..2])
            .join(d.as_str())
    }

    fn manifest_path(&self, id: &Digest) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.json"))
    }

    /// Writes `data` to `path` through a temporary file and a rename.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("f"),
            std::process::id(),
            next_tmp()
        ));
        let mut f = File::create(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        f.write_all(data).map_err(|e| ImageError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ImageError::io(&tmp, e))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ImageError::io(parent, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| ImageError::io(path, e))
    }

    /// True when the store holds chunk `d`.
    pub fn has_chunk(&self, d: &Digest) -> bool {
        self.chunk_path(d).exists()
    }

    /// Stores a chunk after checking that `data` hashes to `expected`; returns whether it was
    /// new. A mismatch stores nothing.
    pub fn put_chunk(&self, expected: &Digest, data: &[u8]) -> Result<bool, ImageError> {
        let got = Digest::of(data);
        if &got != expected {
            return Err(ImageError::CorruptChunk {
                digest: expected.clone(),
                got,
            });
        }
        if self.has_chunk(expected) {
            return Ok(false);
        }
        self.write_atomic(&self.chunk_path(expected), data)?;
        Ok(true)
    }

    /// Reads a chunk and checks its hash.
    pub fn read_chunk(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.chunk_path(d);
        let data = std::fs::read(&p).map_err(|e| ImageError::io(&p, e))?;
        let got = Digest::of(&data);
        if &got != d {
            return Err(ImageError::CorruptChunk {
                digest: d.clone(),
                got,
            });
        }
        Ok(data)
    }

    /// The distinct chunks of `manifest` this store lacks, in first-use order.
    pub fn missing(&self, manifest: &Manifest) -> Vec<ChunkRef> {
        let mut seen = BTreeSet::new();
        manifest
            .chunks()
            .filter(|c| seen.insert(c.digest.clone()) && !self.has_chunk(&c.digest))
            .cloned()
            .collect()
    }

    /// Records `manifest` as an image once every chunk is present; returns its id.
    pub fn commit(&self, manifest: &Manifest) -> Result<Digest, ImageError> {
        manifest.validate()?;
        if let Some(c) = self.missing(manifest).first() {
            return Err(ImageError::MissingChunk(c.digest.clone()));
        }
        let id = manifest.id();
        let json = serde_json::to_vec(manifest).unwrap_or_default();
        self.write_atomic(&self.manifest_path(&id), &json)?;
        Ok(id)
    }

    /// True when image `id` is committed here.
    pub fn has_image(&self, id: &Digest) -> bool {
        self.manifest_path(id).exists()
    }

    /// The manifest of image `id`.
    pub fn manifest(&self, id: &Digest) -> Result<Manifest, ImageError> {
        let p = self.manifest_path(id);
        let data = std::fs::read(&p).map_err(|_| ImageError::UnknownImage(id.clone()))?;
        let m: Manifest = serde_json::from_slice(&data)
            .map_err(|e| ImageError::BadManifest(format!("{}: {e}", p.display())))?;
        if &m.id() != id {
            return Err(ImageError::BadManifest(format!(
                "{} does not hash to its name",
                p.display()
            )));
        }
        Ok(m)
    }

    /// The committed images.
    pub fn list(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = std::fs::read_dir(self.root.join("manifests"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Digest::parse(name.strip_suffix(".json")?).ok()
            })
            .collect();
        out.sort();
        out
    }

    /// Chunks the directory tree at `src` into the store and commits it as an image.
    /// Sockets, devices and FIFOs are refused: an image holds files, directories and links.
    pub fn import_dir(&self, src: &Path) -> Result<(Digest, ImportStats), ImageError> {
        let mut entries = Vec::new();
        let mut stats = ImportStats::default();
        self.walk(src, src, &mut entries, &mut stats)?;
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            entries,
        };
        let id = self.commit(&manifest)?;
        Ok((id, stats))
    }

    fn walk(
        &self,
        root: &Path,
        dir: &Path,
        out: &mut Vec<Entry>,
        stats: &mut ImportStats,
    ) -> Result<(), ImageError> {
        let rd = std::fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))?;
        for item in rd {
            let item = item.map_err(|e| ImageError::io(dir, e))?;
            let path = item.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| ImageError::io(&path, e))?;
            let rel = relative(root, &path)?;
            let mode = meta.mode() & 0o7777;
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                self.walk(root, &path, out, stats)?;
                EntryKind::Dir
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| ImageError::io(&path, e))?;
                EntryKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if ft.is_file() {
                let (size, chunks) = self.chunk_file(&path, stats)?;
                stats.files += 1;
                EntryKind::File { size, chunks }
            } else {
                return Err(ImageError::Unsupported(path));
            };
            out.push(Entry {
                path: rel,
                mode,
                kind,
            });
        }
        Ok(())
    }

    fn chunk_file(
        &self,
        path: &Path,
        stats: &mut ImportStats,
    ) -> Result<(u64, Vec<ChunkRef>), ImageError> {
        let f = File::open(path).map_err(|e| ImageError::io(path, e))?;
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let cdc = fastcdc::v2020::StreamCDC::new(
            f,
            MIN_CHUNK as usize,
            AVG_CHUNK as usize,
            MAX_CHUNK as usize,
        );
        for chunk in cdc {
            let chunk = chunk.map_err(|e| ImageError::io(path, std::io::Error::other(e)))?;
            let d = Digest::of(&chunk.data);
            if self.put_chunk(&d, &chunk.data)? {
                stats.new_chunks += 1;
                stats.new_bytes += chunk.data.len() as u64;
            }
            size += chunk.data.len() as u64;
            chunks.push(ChunkRef {
                digest: d,
                len: chunk.data.len() as u32,
            });
        }
        stats.chunks += chunks.len() as u64;
        stats.bytes += size;
        Ok((size, chunks))
    }

    /// Writes image `id` out as a new directory `dest` (built beside it, then renamed), every
    /// chunk checked against its hash. Links are created, never followed.
    pub fn export(&self, id: &Digest, dest: &Path) -> Result<(), ImageError> {
        let manifest = self.manifest(id)?;
        manifest.validate()?;
        if dest.exists() {
            return Err(ImageError::Exists(dest.to_path_buf()));
        }
        let staging = dest.with_extension(format!("godwit-staging-{}", next_tmp()));
        std::fs::create_dir_all(&staging).map_err(|e| ImageError::io(&staging, e))?;
        let result = self.write_tree(&manifest, &staging);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        std::fs::rename(&staging, dest).map_err(|e| ImageError::io(dest, e))
    }

    fn write_tree(&self, manifest: &Manifest, root: &Path) -> Result<(), ImageError> {
        let mut dirs = Vec::new();
        for e in &manifest.entries {
            let path = root.join(&e.path);
            match &e.kind {
                EntryKind::Dir => {
                    std::fs::create_dir_all(&path).map_err(|err| ImageError::io(&path, err))?;
                    dirs.push((path, written_mode(e.mode)));
                }
                EntryKind::Symlink { target } => {
                    ensure_parent(&path)?;
                    std::os::unix::fs::symlink(target, &path)
                        .map_err(|err| ImageError::io(&path, err))?;
                }
                EntryKind::File { chunks, .. } => {
                    ensure_parent(&path)?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .map_err(|err| ImageError::io(&path, err))?;
                    for c in chunks {
                        let data = self.read_chunk(&c.digest)?;
                        f.write_all(&data)
                            .map_err(|err| ImageError::io(&path, err))?;
                    }
                    f.set_permissions(std::fs::Permissions::from_mode(written_mode(e.mode)))
                        .map_err(|err| ImageError::io(&path, err))?;
                }
            }
        }
        // Directory modes last, so a read-only directory is filled first.
        for (path, mode) in dirs.into_iter().rev() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|err| ImageError::io(&path, err))?;
        }
        Ok(())
    }

    /// The SHA-256 of a file's bytes (for checks after an export).
    pub fn file_digest(path: &Path) -> Result<Digest, ImageError> {
        let mut f = File::open(path).map_err(|e| ImageError::io(path, e))?;
        let mut ctx = Context::new(&SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(|e| ImageError::io(path, e))?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(Digest(hex(ctx.finish().as_ref())))
    }
}

/// The mode an image's file or directory is written out with: without setuid, setgid, sticky
/// and write access for others, whatever the manifest says. The copy belongs to root and is
/// shared by every service of that image: a setuid bit there would make a root program of a
/// peer's (or an image author's) file for every local user; a service cannot use one anyway
/// (its processes run with `no_new_privs`).
pub(crate) fn written_mode(mode: u32) -> u32 {
    mode & 0o775
}

fn ensure_parent(path: &Path) -> Result<(), ImageError> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p).map_err(|e| ImageError::io(p, e)),
        None => Ok(()),
    }
}

fn relative(root: &Path, path: &Path) -> Result<String, ImageError> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| ImageError::Unsupported(path.to_path_buf()))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(
                s.to_str()
                    .ok_or_else(|| ImageError::Unsupported(path.to_path_buf()))?
                    .to_string(),
            ),
            _ => return Err(ImageError::Unsupported(path.to_path_buf())),
        }
    }
    Ok(parts.join("/"))
}

fn next_tmp() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
