//! Ballast: a second state file, filled with incompressible bytes and dirtied at a set rate.
//!
//! `kvcheck` writes at most a few thousand small keys a second, a few thousand pages: too few
//! to give a migration benchmark dirty rates of tens of MB/s. With `--ballast FILE
//! --ballast-size BYTES --dirty-rate BYTES_PER_S`, `kvstore` also maps `FILE` (kept in the state
//! directory, so it is part of the state a migration moves) and a thread of its own writes
//! random whole pages into it, paced every [`TICK`], so the kernel sees `BYTES_PER_S` of
//! distinct dirty pages a second (as long as the rate is small against the file).
//!
//! - The file is created, or re-created when its size differs, with pseudo-random bytes written
//!   **4 KiB at a time** and then synced. ext4 caches a file in folios as large as the writes
//!   that made them (a 1 MiB write makes a 1 MiB folio here), and a store into a large folio
//!   dirties all of it: single-page writes keep the cache in single-page folios, so one paced
//!   page dirties one page. An existing file of the right size is used as it is (a service
//!   started from migrated state).
//! - Every paced write fills a whole page with new pseudo-random bytes, so no page is ever
//!   compressible or identical to what it was.
//! - Pacing: each tick adds `rate × elapsed` bytes of credit and writes the whole pages it
//!   covers. A tick that comes late (the process was frozen or stopped) counts for at most
//!   [`MAX_CATCH_UP`], so a thawed service does not dirty a burst of pages.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::Mapping;

/// Page size the ballast is written in.
pub const PAGE: u64 = 4096;
/// Interval between two paced steps.
pub const TICK: Duration = Duration::from_millis(10);
/// The longest time one step makes up for.
pub const MAX_CATCH_UP: Duration = Duration::from_millis(50);

/// A small, fast pseudo-random generator (xorshift64*): incompressible bytes, not secrets.
#[derive(Debug, Clone)]
pub struct Noise(u64);

impl Noise {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` (whose length is a multiple of 8) with fresh bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
    }
}

/// How many whole pages are due at each step to dirty `rate` bytes a second.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    credit: f64,
}

impl Pacer {
    /// A pacer for `rate` bytes a second.
    pub fn new(rate: f64) -> Pacer {
        Pacer {
            rate: rate.max(0.0),
            credit: 0.0,
        }
    }

    /// Pages to write for `elapsed` since the last step (at most [`MAX_CATCH_UP`] counts).
    pub fn due(&mut self, elapsed: Duration) -> u64 {
        self.credit += self.rate * elapsed.min(MAX_CATCH_UP).as_secs_f64();
        let pages = (self.credit / PAGE as f64).floor();
        self.credit -= pages * PAGE as f64;
        pages as u64
    }
}

/// The mapped ballast file.
pub struct Ballast {
    map: Mapping,
    pages: u64,
}

impl Ballast {
    /// Opens `path` with `size` bytes (rounded down to whole pages, at least one), creating or
    /// re-creating it with pseudo-random contents when it is absent or of another size.
    /// Returns the ballast and whether it was (re)written.
    pub fn open(path: &Path, size: u64) -> io::Result<(Ballast, bool)> {
        let size = (size / PAGE).max(1) * PAGE;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let written = file.metadata()?.len() != size;
        if written {
            file.set_len(0)?;
            file.set_len(size)?;
            let mut noise = Noise::new(size ^ 0x6b76_6261_6c6c_6173);
            let mut page = vec![0u8; PAGE as usize];
            for i in 0..size / PAGE {
                noise.fill(&mut page);
                file.write_all_at(&page, i * PAGE)?;
            }
            file.sync_all()?;
        }
        let len = usize::try_from(size).map_err(|_| io::Error::other("ballast too large"))?;
        let map = Mapping::new(&file, len)?;
        Ok((
            Ballast {
                map,
                pages: size / PAGE,
            },
            written,
        ))
    }

    /// Pages in the file.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Writes fresh bytes over page `index` (modulo the page count).
    pub fn dirty_page(&mut self, index: u64, noise: &mut Noise) {
        let at = ((index % self.pages) * PAGE) as usize;
        noise.fill(&mut self.map.as_mut_slice()[at..at + PAGE as usize]);
    }

    /// Writes the dirty pages back (`msync`).
    pub fn sync(&self) -> io::Result<()> {
        self.map.sync()
    }

    /// Starts the thread that dirties random pages at `rate` bytes a second until `stop` is
    /// set; it returns the ballast (for a last sync) and the pages it wrote.
    pub fn spawn(mut self, rate: f64, stop: Arc<AtomicBool>) -> JoinHandle<(Ballast, u64)> {
        std::thread::spawn(move || {
            let mut pacer = Pacer::new(rate);
            let mut noise = Noise::new(std::process::id() as u64 ^ 0x5eed);
            let mut written = 0u64;
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                let now = Instant::now();
                for _ in 0..pacer.due(now - last) {
                    let index = noise.next_u64();
                    self.dirty_page(index, &mut noise);
                    written += 1;
                }
                last = now;
            }
            (self, written)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_gives_the_rate_in_whole_pages_without_bursts_after_a_stall() {
        // 20 MB/s over 10 s of 10 ms ticks: 48,828 pages, at most one page of rounding off.
        let mut p = Pacer::new(20e6);
        let total: u64 = (0..1000).map(|_| p.due(TICK)).sum();
        assert!((48_827..=48_828).contains(&total), "{total}");
        // A tick 2 s late (frozen) makes up for 50 ms only.
        let late = p.due(Duration::from_secs(2));
        assert!(late <= (20e6 * 0.05 / 4096.0) as u64 + 1, "{late}");
        // Nothing at rate 0; fractions of a page carry over.
        assert_eq!(Pacer::new(0.0).due(Duration::from_secs(1)), 0);
        let mut slow = Pacer::new(4096.0 * 3.0); // 3 pages a second
        let pages: u64 = (0..101).map(|_| slow.due(TICK)).sum();
        assert_eq!(pages, 3);
    }

    #[test]
    fn ballast_is_filled_once_with_distinct_pages_and_dirtied_in_place() {
        let dir = std::env::temp_dir().join(format!("kv-ballast-{}", std::process::id()));
        let path = dir.join("ballast");
        let (mut b, written) = Ballast::open(&path, 64 * PAGE + 100).unwrap();
        assert!(written);
        assert_eq!(b.pages(), 64);
        let before = std::fs::read(&path).unwrap();
        assert_eq!(before.len(), 64 * PAGE as usize);
        assert_ne!(before[..4096], before[4096..8192]);
        b.dirty_page(3, &mut Noise::new(1));
        b.sync().unwrap();
        drop(b);
        let after = std::fs::read(&path).unwrap();
        let changed: Vec<usize> = (0..64)
            .filter(|i| before[i * 4096..(i + 1) * 4096] != after[i * 4096..(i + 1) * 4096])
            .collect();
        assert_eq!(changed, vec![3]);
        // Reopened at the same size: kept as it is.
        let (_, written) = Ballast::open(&path, 64 * PAGE).unwrap();
        assert!(!written);
        assert_eq!(std::fs::read(&path).unwrap(), after);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
