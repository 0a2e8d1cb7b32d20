//! The state file: a fixed-layout hash table kept in a `MAP_SHARED` file mapping.
//!
//! Every byte of the store's data lives in the mapping, so its state is the file's page cache:
//! a write dirties the pages of one slot and of the header, and nothing else. The process can be
//! killed at any instruction; the kernel keeps the dirty pages, and [`Store::open`] on the same
//! file recovers every completed write.
//!
//! # Layout (format version 1, little-endian)
//!
//! ```text
//! offset 0      header, 4096 bytes (one page)
//!   0..8        magic "GODWITKV"
//!   8..12       format version (u32) = 1
//!   12..16      slot length (u32) = 512
//!   16..24      slot count (u64)
//!   24..28      CRC-32 of bytes 0..24
//!   28..32      reserved
//!   32..40      live keys (u64)       \
//!   40..48      write sequence (u64)   > advisory: rewritten after every write and
//!   48..56      live bytes (u64)      /  recomputed from the slots on open
//!   56..4096    zero
//! offset 4096   slot[0], slot[1], ... slot[slot count - 1], 512 bytes each
//!
//! slot (512 bytes)
//!   0..2        key length (u16); 0 = empty. Written last when a key is inserted
//!   2..8        reserved
//!   8..72       key (up to 64 bytes)
//!   72..288     version 0
//!   288..504    version 1
//!   504..512    reserved
//!
//! version (216 bytes)
//!   0..8        sequence number of the write (u64); 0 = never written
//!   8..10       value length (u16)
//!   10..12      reserved
//!   12..16      CRC-32 of key, sequence, value length and value
//!   16..216     value (up to 200 bytes)
//! ```
//!
//! The file is `4096 + 512 × slot count` bytes. Keys go to slot `FNV-1a(key) mod slot count` and
//! probe linearly; there are no deletes, so an empty slot ends every probe. At most 90% of the
//! slots are filled, which keeps probes short.
//!
//! # Crash consistency
//!
//! One writer at a time (the server holds a lock), and each write is made so that a kill between
//! any two stores leaves the previous state readable:
//!
//! - an insert writes the key and version 0, then the key length: a torn insert is a slot with
//!   key length 0 and stray bytes, which recovery zeroes;
//! - an overwrite writes the value into the older of the two versions; the version with the
//!   larger sequence and a valid CRC is current, so a torn overwrite leaves the previous value.
//!
//! A single writer leaves at most one torn write, so recovery treats more than one, an occupied
//! slot without an intact version, or a header that does not match the file as corruption.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use thiserror::Error;

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"GODWITKV";
/// The layout version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the header, one page.
pub const HEADER_LEN: u64 = 4096;
/// Length of one slot.
pub const SLOT_LEN: u64 = 512;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 200;
/// Smallest state file: the header and one page of slots.
pub const MIN_FILE_LEN: u64 = HEADER_LEN + 8 * SLOT_LEN;
/// Largest state file.
pub const MAX_FILE_LEN: u64 = 16 << 30;
/// Size of a state file created without an explicit size.
pub const DEFAULT_FILE_LEN: u64 = 64 << 20;

const HDR_VERSION: usize = 8;
const HDR_SLOT_LEN: usize = 12;
const HDR_SLOT_COUNT: usize = 16;
const HDR_CRC: usize = 24;
const HDR_KEYS: usize = 32;
const HDR_SEQ: usize = 40;
const HDR_BYTES: usize = 48;

const SLOT_KEY_LEN: usize = 0;
const SLOT_KEY: usize = 8;
const SLOT_VERSIONS: [usize; 2] = [72, 288];
const VERSION_LEN: usize = 216;
const VER_SEQ: usize = 0;
const VER_LEN: usize = 8;
const VER_CRC: usize = 12;
const VER_VALUE: usize = 16;

/// Errors of the state file and of the values stored in it.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A system call on the state file failed.
    #[error("cannot {op} state file {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The state file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another process holds the state file's lock.
    #[error("state file {path} is in use by another process")]
    InUse {
        /// The state file.
        path: PathBuf,
    },
    /// The file does not start with the magic.
    #[error("{path} is not a kvstore state file (bad magic)")]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// The file has another layout version.
    #[error("state file {path} has format version {found}; this build reads version {expected}")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        found: u32,
        /// [`FORMAT_VERSION`].
        expected: u32,
    },
    /// The file has the magic but its contents are inconsistent.
    #[error("state file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The requested size of a new file is out of range.
    #[error("size: {size} bytes is outside {min}..={max}")]
    Size {
        /// The requested size.
        size: u64,
        /// [`MIN_FILE_LEN`].
        min: u64,
        /// [`MAX_FILE_LEN`].
        max: u64,
    },
    /// A key or value is empty, too long or not printable.
    #[error("{field}: {problem}")]
    Field {
        /// `key` or `value`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The table holds as many keys as it may.
    #[error("store full: {keys} keys, the limit for this file")]
    Full {
        /// Keys held.
        keys: u64,
    },
}

impl StoreError {
    /// Whether the state file itself is unusable (foreign, another version or corrupt).
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            Self::Foreign { .. } | Self::Version { .. } | Self::Corrupt { .. }
        )
    }

    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks a key: 1 to [`MAX_KEY`] printable ASCII bytes without spaces.
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    let field = "key";
    if key.is_empty() {
        return Err(StoreError::Field {
            field,
            problem: "empty".into(),
        });
    }
    if key.len() > MAX_KEY {
        return Err(StoreError::Field {
            field,
            problem: format!("{} bytes, the limit is {MAX_KEY}", key.len()),
        });
    }
    if let Some(at) = key.iter().position(|b| !b.is_ascii_graphic()) {
        return Err(StoreError::Field {
            field,
            problem: format!("byte {at} is not printable ASCII without spaces"),
        });
    }
    Ok(())
}

/// Checks a value: 1 to [`MAX_VALUE`] printable ASCII bytes, spaces allowed.
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    let field = "value";
    if value.is_empty() {
        return Err(StoreError::Field {
            field,
            problem: "empty".into(),
        });
    }
    if value.len() > MAX_VALUE {
        return Err(StoreError::Field {
            field,
            problem: format!("{} bytes, the limit is {MAX_VALUE}", value.len()),
        });
    }
    if let Some(at) = value
        .iter()
        .position(|&b| !(b == b' ' || b.is_ascii_graphic()))
    {
        return Err(StoreError::Field {
            field,
            problem: format!("byte {at} is not printable ASCII"),
        });
    }
    Ok(())
}

/// FNV-1a, 64 bits: the slot hash.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE) over the concatenation of `parts`.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A shared, writable mapping of a whole file.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; `&`/`&mut` access goes through
// `as_slice`/`as_mut_slice`, so Rust's borrow rules serialise access within the process.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn new(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping at an address the kernel chooses; the fd is valid for the call
        // and the length is the file's length, checked non-zero by the caller.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the lifetime of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` writable bytes for the lifetime of `self`, and `&mut self`
        // makes this the only reference into it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        // SAFETY: msync over exactly the range this value mapped.
        let rc = unsafe { libc::msync(self.ptr.as_ptr().cast(), self.len, libc::MS_SYNC) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no slice into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Figures of a store, as `STATS` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Live keys.
    pub keys: u64,
    /// The sequence number of the last write (0 before the first).
    pub seq: u64,
    /// Bytes of live keys and values.
    pub bytes: u64,
    /// Slots in the table.
    pub slots: u64,
    /// Length of the state file.
    pub file_len: u64,
}

/// What [`Store::open`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The file was created (or was empty) and has been initialised.
    pub created: bool,
    /// Torn writes found and cleared (0 or 1).
    pub torn: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VersionState {
    Empty,
    Valid { seq: u64, len: usize },
    Torn,
}

enum Probe {
    Occupied(usize),
    Vacant(usize),
    Full,
}

/// An open state file. Holds an exclusive `flock` on it while alive.
pub struct Store {
    path: PathBuf,
    map: Mapping,
    slots: usize,
    max_keys: u64,
    keys: u64,
    seq: u64,
    bytes: u64,
    // Keeps the lock; closed after the mapping is dropped.
    _file: File,
}

impl Store {
    /// Opens the state file at `path`, creating it (and its directory) with `create_len` bytes
    /// if it is absent or empty, and recovers its figures from the slots.
    pub fn open(path: &Path, create_len: u64) -> Result<(Self, Opened), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(StoreError::io("create the directory of", path))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::InUse {
                    path: path.to_owned(),
                }
            } else {
                StoreError::io("lock", path)(err)
            });
        }
        let mut len = file.metadata().map_err(StoreError::io("stat", path))?.len();
        let created = len == 0;
        if created {
            if !(MIN_FILE_LEN..=MAX_FILE_LEN).contains(&create_len) {
                return Err(StoreError::Size {
                    size: create_len,
                    min: MIN_FILE_LEN,
                    max: MAX_FILE_LEN,
                });
            }
            let slots = (create_len - HEADER_LEN) / SLOT_LEN;
            len = HEADER_LEN + slots * SLOT_LEN;
            file.set_len(len).map_err(StoreError::io("size", path))?;
            let mut header = [0u8; 28];
            put(&mut header, 0, &MAGIC);
            put(&mut header, HDR_VERSION, &FORMAT_VERSION.to_le_bytes());
            put(&mut header, HDR_SLOT_LEN, &(SLOT_LEN as u32).to_le_bytes());
            put(&mut header, HDR_SLOT_COUNT, &slots.to_le_bytes());
            let crc = crc32(&[&header[..HDR_CRC]]);
            put(&mut header, HDR_CRC, &crc.to_le_bytes());
            file.write_all_at(&header, 0)
                .map_err(StoreError::io("initialise", path))?;
        }
        let slots = check_header(&file, path, len)?;
        let map_len = usize::try_from(len).map_err(|_| StoreError::Size {
            size: len,
            min: MIN_FILE_LEN,
            max: MAX_FILE_LEN,
        })?;
        let map = Mapping::new(&file, map_len).map_err(StoreError::io("map", path))?;
        let mut store = Self {
            path: path.to_owned(),
            map,
            slots,
            max_keys: (slots as u64 * 9 / 10).max(1),
            keys: 0,
            seq: 0,
            bytes: 0,
            _file: file,
        };
        let torn = store.recover()?;
        Ok((store, Opened { created, torn }))
    }

    /// The figures `STATS` reports.
    pub fn stats(&self) -> Stats {
        Stats {
            keys: self.keys,
            seq: self.seq,
            bytes: self.bytes,
            slots: self.slots as u64,
            file_len: self.map.len as u64,
        }
    }

    /// The path of the state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        match self.probe(key) {
            Probe::Occupied(i) => {
                let slot = self.slot(i);
                let (v, _, len) = current_version(slot)?;
                let at = SLOT_VERSIONS[v] + VER_VALUE;
                Some(&slot[at..at + len])
            }
            Probe::Vacant(_) | Probe::Full => None,
        }
    }

    /// Stores `value` under `key` and returns the write's sequence number. When this returns,
    /// the write is in the mapped file.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        check_key(key)?;
        check_value(value)?;
        let seq = self.seq + 1;
        match self.probe(key) {
            Probe::Occupied(i) => {
                let (cur, _, old_len) =
                    current_version(self.slot(i)).ok_or_else(|| StoreError::Corrupt {
                        path: self.path.clone(),
                        reason: format!("slot {i} lost its intact version while open"),
                    })?;
                write_version(self.slot_mut(i), 1 - cur, key, seq, value);
                self.bytes = self.bytes - old_len as u64 + value.len() as u64;
            }
            Probe::Vacant(i) => {
                if self.keys >= self.max_keys {
                    return Err(StoreError::Full { keys: self.keys });
                }
                let slot = self.slot_mut(i);
                put(slot, SLOT_KEY, key);
                write_version(slot, 0, key, seq, value);
                // The key length commits the insert: everything above must be in memory first.
                fence(Ordering::Release);
                put(slot, SLOT_KEY_LEN, &(key.len() as u16).to_le_bytes());
                self.keys += 1;
                self.bytes += (key.len() + value.len()) as u64;
            }
            Probe::Full => return Err(StoreError::Full { keys: self.keys }),
        }
        self.seq = seq;
        self.write_counters();
        Ok(seq)
    }

    /// Writes the mapping's dirty pages to the file and waits for them (`msync(MS_SYNC)`).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.map.sync().map_err(StoreError::io("msync", &self.path))
    }

    /// The file offset of the slot that holds `key`, if it is stored.
    pub fn slot_offset(&self, key: &[u8]) -> Option<u64> {
        match self.probe(key) {
            Probe::Occupied(i) => Some(HEADER_LEN + i as u64 * SLOT_LEN),
            Probe::Vacant(_) | Probe::Full => None,
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        let at = HEADER_LEN as usize + i * SLOT_LEN as usize;
        &self.map.as_slice()[at..at + SLOT_LEN as usize]
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let at = HEADER_LEN as usize + i * SLOT_LEN as usize;
        &mut self.map.as_mut_slice()[at..at + SLOT_LEN as usize]
    }

    fn probe(&self, key: &[u8]) -> Probe {
        let mut i = (fnv1a64(key) % self.slots as u64) as usize;
        for _ in 0..self.slots {
            let slot = self.slot(i);
            let key_len = usize::from(get_u16(slot, SLOT_KEY_LEN));
            if key_len == 0 {
                return Probe::Vacant(i);
            }
            if slot[SLOT_KEY..SLOT_KEY + key_len] == *key {
                return Probe::Occupied(i);
            }
            i = (i + 1) % self.slots;
        }
        Probe::Full
    }

    fn write_counters(&mut self) {
        let (keys, seq, bytes) = (self.keys, self.seq, self.bytes);
        let header = self.map.as_mut_slice();
        put(header, HDR_KEYS, &keys.to_le_bytes());
        put(header, HDR_SEQ, &seq.to_le_bytes());
        put(header, HDR_BYTES, &bytes.to_le_bytes());
    }

    /// Scans every slot, clears the torn write if there is one, and recomputes the counters.
    fn recover(&mut self) -> Result<u32, StoreError> {
        let path = self.path.clone();
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (mut keys, mut seq, mut bytes) = (0u64, 0u64, 0u64);
        let mut torn: Vec<(usize, Option<usize>)> = Vec::new();
        for i in 0..self.slots {
            let slot = self.slot(i);
            let key_len = usize::from(get_u16(slot, SLOT_KEY_LEN));
            if key_len == 0 {
                if slot.iter().any(|&b| b != 0) {
                    torn.push((i, None));
                }
                continue;
            }
            if key_len > MAX_KEY {
                return Err(corrupt(format!(
                    "slot {i}: key length {key_len} over the limit of {MAX_KEY}"
                )));
            }
            let key = &slot[SLOT_KEY..SLOT_KEY + key_len];
            let states = [0, 1].map(|v| version_state(slot, v, key));
            let valid: Vec<(u64, usize)> = states
                .iter()
                .filter_map(|s| match *s {
                    VersionState::Valid { seq, len } => Some((seq, len)),
                    _ => None,
                })
                .collect();
            let (top_seq, len) = match valid[..] {
                [] => return Err(corrupt(format!("slot {i}: no intact version of its value"))),
                [one] => one,
                [a, b] if a.0 == b.0 => {
                    return Err(corrupt(format!(
                        "slot {i}: two versions with sequence {}",
                        a.0
                    )))
                }
                [a, b] => a.max(b),
                _ => unreachable!("two versions per slot"),
            };
            if let Some(v) = states.iter().position(|s| *s == VersionState::Torn) {
                torn.push((i, Some(v)));
            }
            keys += 1;
            seq = seq.max(top_seq);
            bytes += (key_len + len) as u64;
        }
        if torn.len() > 1 {
            return Err(corrupt(format!(
                "{} slots hold partial writes (slots {:?}); a single writer leaves at most one",
                torn.len(),
                torn.iter().map(|t| t.0).take(8).collect::<Vec<_>>()
            )));
        }
        if keys > self.max_keys {
            return Err(corrupt(format!(
                "{keys} keys in {} slots, over the fill limit",
                self.slots
            )));
        }
        for &(i, version) in &torn {
            let slot = self.slot_mut(i);
            match version {
                None => slot.fill(0),
                Some(v) => slot[SLOT_VERSIONS[v]..SLOT_VERSIONS[v] + VERSION_LEN].fill(0),
            }
        }
        (self.keys, self.seq, self.bytes) = (keys, seq, bytes);
        self.write_counters();
        Ok(torn.len() as u32)
    }
}

/// The pages (4 KiB, from the start of the file) that hold an occupied slot, read with `pread`
/// and without the lock, so it works while a server has the file open: the page cache is
/// shared, so it sees every write the server has made.
pub fn occupied_pages(path: &Path) -> Result<Vec<u64>, StoreError> {
    let file = File::open(path).map_err(StoreError::io("open", path))?;
    let len = file.metadata().map_err(StoreError::io("stat", path))?.len();
    let slots = check_header(&file, path, len)?;
    let mut pages = Vec::new();
    let mut page = vec![0u8; 4096];
    let per_page = page.len() / SLOT_LEN as usize;
    for p in 0..slots.div_ceil(per_page) {
        let at = HEADER_LEN + (p * page.len()) as u64;
        file.read_exact_at(&mut page[..(len - at).min(4096) as usize], at)
            .map_err(StoreError::io("read", path))?;
        let occupied = (0..per_page)
            .take(slots - p * per_page)
            .any(|s| get_u16(&page, s * SLOT_LEN as usize + SLOT_KEY_LEN) != 0);
        if occupied {
            pages.push(at / 4096);
        }
    }
    Ok(pages)
}

/// Validates the header against the file and returns the slot count.
fn check_header(file: &File, path: &Path, len: u64) -> Result<usize, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let mut header = [0u8; 28];
    let got = file
        .read_at(&mut header, 0)
        .map_err(StoreError::io("read", path))?;
    if got < MAGIC.len() || header[..8] != MAGIC {
        return Err(StoreError::Foreign {
            path: path.to_owned(),
        });
    }
    if len < HEADER_LEN {
        return Err(corrupt(format!(
            "{len} bytes, shorter than the {HEADER_LEN}-byte header"
        )));
    }
    let version = get_u32(&header, HDR_VERSION);
    if version != FORMAT_VERSION {
        return Err(StoreError::Version {
            path: path.to_owned(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    if crc32(&[&header[..HDR_CRC]]) != get_u32(&header, HDR_CRC) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let slot_len = get_u32(&header, HDR_SLOT_LEN);
    if u64::from(slot_len) != SLOT_LEN {
        return Err(corrupt(format!(
            "slot length {slot_len}, expected {SLOT_LEN}"
        )));
    }
    let slots = get_u64(&header, HDR_SLOT_COUNT);
    let expected = slots
        .checked_mul(SLOT_LEN)
        .and_then(|s| s.checked_add(HEADER_LEN));
    if slots == 0 || expected != Some(len) {
        return Err(corrupt(format!(
            "{len} bytes, but the header declares {slots} slots ({} bytes)",
            expected.map_or_else(|| "overflow".into(), |e| e.to_string())
        )));
    }
    usize::try_from(slots).map_err(|_| corrupt(format!("{slots} slots do not fit in memory")))
}

fn version_state(slot: &[u8], v: usize, key: &[u8]) -> VersionState {
    let ver = &slot[SLOT_VERSIONS[v]..SLOT_VERSIONS[v] + VERSION_LEN];
    if ver.iter().all(|&b| b == 0) {
        return VersionState::Empty;
    }
    let seq = get_u64(ver, VER_SEQ);
    let len = usize::from(get_u16(ver, VER_LEN));
    if seq == 0 || len == 0 || len > MAX_VALUE {
        return VersionState::Torn;
    }
    let crc = crc32(&[
        key,
        &ver[VER_SEQ..VER_SEQ + 8],
        &ver[VER_LEN..VER_LEN + 2],
        &ver[VER_VALUE..VER_VALUE + len],
    ]);
    if crc == get_u32(ver, VER_CRC) {
        VersionState::Valid { seq, len }
    } else {
        VersionState::Torn
    }
}

/// The current version of an occupied slot: (index, sequence, value length).
fn current_version(slot: &[u8]) -> Option<(usize, u64, usize)> {
    let key_len = usize::from(get_u16(slot, SLOT_KEY_LEN));
    let key = &slot[SLOT_KEY..SLOT_KEY + key_len];
    (0..2)
        .filter_map(|v| match version_state(slot, v, key) {
            VersionState::Valid { seq, len } => Some((v, seq, len)),
            _ => None,
        })
        .max_by_key(|&(_, seq, _)| seq)
}

fn write_version(slot: &mut [u8], v: usize, key: &[u8], seq: u64, value: &[u8]) {
    let at = SLOT_VERSIONS[v];
    let ver = &mut slot[at..at + VERSION_LEN];
    let seq_bytes = seq.to_le_bytes();
    let len_bytes = (value.len() as u16).to_le_bytes();
    let crc = crc32(&[key, &seq_bytes, &len_bytes, value]);
    put(ver, VER_VALUE, value);
    ver[VER_VALUE + value.len()..].fill(0);
    put(ver, VER_SEQ, &seq_bytes);
    put(ver, VER_LEN, &len_bytes);
    put(ver, VER_CRC, &crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("godwit-kvstore-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn slot_of(path: &Path, key: &[u8]) -> u64 {
        let (store, _) = Store::open(path, MIN_FILE_LEN).expect("open");
        store.slot_offset(key).expect("key stored")
    }

    #[test]
    fn layout_constants_fit() {
        assert_eq!(SLOT_VERSIONS[0], SLOT_KEY + MAX_KEY);
        assert_eq!(VER_VALUE + MAX_VALUE, VERSION_LEN);
        assert_eq!(SLOT_VERSIONS[1], SLOT_VERSIONS[0] + VERSION_LEN);
        assert!(SLOT_VERSIONS[1] + VERSION_LEN <= SLOT_LEN as usize);
        assert_eq!(HEADER_LEN % SLOT_LEN, 0, "slots never straddle a page");
        // The CRC-32 check value of "123456789".
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xcbf4_3926);
    }

    #[test]
    fn field_limits() {
        let long_key = vec![b'k'; MAX_KEY + 1];
        let long_value = vec![b'v'; MAX_VALUE + 1];
        let cases: [(&[u8], bool, &str); 8] = [
            (b"a", true, ""),
            (&[b'k'; MAX_KEY], true, ""),
            (&long_key, false, "key: 65 bytes, the limit is 64"),
            (b"", false, "key: empty"),
            (b"a b", false, "key: byte 1 is not printable"),
            (b"a\x01", false, "key: byte 1 is not printable"),
            (b"\xc3\xa9", false, "key: byte 0 is not printable"),
            (b"~!@#", true, ""),
        ];
        for (key, ok, message) in cases {
            match check_key(key) {
                Ok(()) => assert!(ok, "{key:?} accepted"),
                Err(e) => {
                    assert!(!ok, "{key:?} refused: {e}");
                    assert!(e.to_string().starts_with(message), "{e}");
                }
            }
        }
        assert!(check_value(b"with spaces inside").is_ok());
        assert!(check_value(&[b'v'; MAX_VALUE]).is_ok());
        let e = check_value(&long_value).unwrap_err().to_string();
        assert_eq!(e, "value: 201 bytes, the limit is 200");
        assert!(check_value(b"tab\there").is_err());
        assert!(check_value(b"").is_err());
    }

    #[test]
    fn set_get_overwrite_and_reopen() {
        let dir = TempDir::new("reopen");
        let path = dir.0.join("data/state");
        {
            let (mut store, opened) = Store::open(&path, 1 << 20).expect("create");
            assert_eq!(
                opened,
                Opened {
                    created: true,
                    torn: 0
                }
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
            assert_eq!(store.stats().slots, ((1 << 20) - HEADER_LEN) / SLOT_LEN);
            assert_eq!(store.set(b"a", b"one").unwrap(), 1);
            assert_eq!(store.set(b"b", b"two").unwrap(), 2);
            assert_eq!(store.set(b"a", b"three").unwrap(), 3);
            assert_eq!(store.set(b"a", b"four four").unwrap(), 4);
            assert_eq!(store.get(b"a"), Some(&b"four four"[..]));
            assert_eq!(store.get(b"b"), Some(&b"two"[..]));
            assert_eq!(store.get(b"c"), None);
            let stats = store.stats();
            assert_eq!((stats.keys, stats.seq, stats.bytes), (2, 4, 1 + 9 + 1 + 3));
            assert!(store.set(b"bad key", b"x").is_err());
            assert!(store.set(b"k", &[b'v'; MAX_VALUE + 1]).is_err());
            assert_eq!(
                store.stats().seq,
                4,
                "refused writes take no sequence number"
            );
            // Dropped without msync: the page cache holds the state.
        }
        let (store, opened) = Store::open(&path, 0).expect("reopen");
        assert_eq!(
            opened,
            Opened {
                created: false,
                torn: 0
            }
        );
        assert_eq!(store.get(b"a"), Some(&b"four four"[..]));
        assert_eq!(store.get(b"b"), Some(&b"two"[..]));
        let stats = store.stats();
        assert_eq!((stats.keys, stats.seq, stats.bytes), (2, 4, 14));
        store.sync().expect("msync");
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = TempDir::new("lock");
        let path = dir.0.join("state");
        let (_store, _) = Store::open(&path, MIN_FILE_LEN).expect("create");
        let err = Store::open(&path, MIN_FILE_LEN).err().expect("locked");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }

    #[test]
    fn fills_to_ninety_percent_then_refuses() {
        let dir = TempDir::new("full");
        let path = dir.0.join("state");
        let (mut store, _) = Store::open(&path, HEADER_LEN + 100 * SLOT_LEN).expect("create");
        for i in 0..90 {
            store.set(format!("k{i}").as_bytes(), b"v").expect("fits");
        }
        let err = store.set(b"one-more", b"v").unwrap_err();
        assert!(matches!(err, StoreError::Full { keys: 90 }), "{err}");
        store
            .set(b"k7", b"overwrite still works")
            .expect("overwrite");
        for i in 0..90 {
            assert!(store.get(format!("k{i}").as_bytes()).is_some(), "k{i}");
        }
    }

    #[test]
    fn size_out_of_range_is_refused() {
        let dir = TempDir::new("size");
        let err = Store::open(&dir.0.join("state"), 100)
            .err()
            .expect("too small");
        assert!(
            err.to_string().starts_with("size: 100 bytes is outside"),
            "{err}"
        );
    }

    /// A torn overwrite (the newer version half written) leaves the previous value; a torn
    /// insert (stray bytes, key length 0) leaves nothing; two torn writes are corruption.
    #[test]
    fn torn_writes_are_recovered_and_two_are_corruption() {
        let dir = TempDir::new("torn");
        let path = dir.0.join("state");
        {
            let (mut store, _) = Store::open(&path, 1 << 16).expect("create");
            store.set(b"x", b"old").unwrap();
            store.set(b"y", b"kept").unwrap();
        }
        let x = slot_of(&path, b"x");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        // Overwrite of x torn after its value and sequence, before its CRC.
        let v1 = x + SLOT_VERSIONS[1] as u64;
        file.write_all_at(b"new", v1 + VER_VALUE as u64).unwrap();
        file.write_all_at(&9u64.to_le_bytes(), v1).unwrap();
        file.write_all_at(&3u16.to_le_bytes(), v1 + VER_LEN as u64)
            .unwrap();
        {
            let (store, opened) = Store::open(&path, 0).expect("one torn write recovers");
            assert_eq!(opened.torn, 1);
            assert_eq!(store.get(b"x"), Some(&b"old"[..]));
            assert_eq!(store.stats().seq, 2);
        }
        {
            let (_, opened) = Store::open(&path, 0).expect("reopen");
            assert_eq!(opened.torn, 0, "the torn version was cleared");
        }
        // Now two: a torn insert in an empty slot and a torn overwrite of x.
        let y = slot_of(&path, b"y");
        let empty = (0..120)
            .map(|i| HEADER_LEN + i * SLOT_LEN)
            .find(|&o| o != x && o != y)
            .unwrap();
        file.write_all_at(b"half-inserted", empty + SLOT_KEY as u64)
            .unwrap();
        file.write_all_at(&[7u8; 16], v1).unwrap();
        let err = Store::open(&path, 0).err().expect("two torn writes");
        assert!(err.is_bad_file());
        assert!(
            err.to_string().contains("2 slots hold partial writes"),
            "{err}"
        );
    }

    #[test]
    fn foreign_short_and_mismatched_files_are_refused() {
        let dir = TempDir::new("foreign");
        let path = dir.0.join("state");
        std::fs::write(&path, b"hello, this is not a kvstore file").unwrap();
        let err = Store::open(&path, 0).err().expect("foreign");
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(err.is_bad_file());

        std::fs::remove_file(&path).unwrap();
        drop(Store::open(&path, 1 << 16).expect("create"));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len((1 << 16) - 512).unwrap();
        let err = Store::open(&path, 0).err().expect("truncated");
        assert!(
            err.to_string()
                .contains("but the header declares 120 slots"),
            "{err}"
        );

        file.set_len(1 << 16).unwrap();
        file.write_all_at(&[0xff], HDR_SLOT_COUNT as u64).unwrap();
        let err = Store::open(&path, 0).err().expect("bad crc");
        assert!(
            err.to_string().contains("header checksum mismatch"),
            "{err}"
        );

        file.write_all_at(&2u32.to_le_bytes(), HDR_VERSION as u64)
            .unwrap();
        let err = Store::open(&path, 0).err().expect("version");
        assert!(matches!(err, StoreError::Version { found: 2, .. }), "{err}");
    }

    #[test]
    fn an_occupied_slot_without_an_intact_version_is_corruption() {
        let dir = TempDir::new("noversion");
        let path = dir.0.join("state");
        {
            let (mut store, _) = Store::open(&path, 1 << 16).expect("create");
            store.set(b"key", b"value").unwrap();
        }
        let at = slot_of(&path, b"key");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        // Flip a byte of the only version's value.
        file.write_all_at(b"X", at + (SLOT_VERSIONS[0] + VER_VALUE) as u64)
            .unwrap();
        let err = Store::open(&path, 0).err().expect("corrupt");
        assert!(err.to_string().contains("no intact version"), "{err}");
    }
}
