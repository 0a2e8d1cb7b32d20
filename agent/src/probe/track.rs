//! Dirty-page tracking of chosen files, for state migration.
//!
//! The sampler thread owns the BPF probe, so requests reach it through a channel: track these
//! files (their inodes go into the `tracked` map and every clean-to-dirty transition of their
//! pages puts `(index, pages)` on the `dirty_ranges` ring), flush (hand over every range
//! collected since the last flush, after draining the ring), and untrack (when the
//! [`Tracked`] handle drops). A flush reports whether ranges may have been lost (the kernel's
//! lost-range counter moved, or a file's pending list overflowed); the caller must then fall
//! back to comparing content.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use super::bpf::InodeKey;
use super::sampler::Sampler;

/// Ranges kept per tracked file between two flushes before it counts as overflowed.
const MAX_PENDING_RANGES: usize = 1 << 20;
/// How long a request waits for the sampler thread.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// A request to the sampler thread.
#[derive(Debug)]
pub enum TrackCommand {
    /// Start tracking these files.
    Track {
        /// Regular files.
        paths: Vec<PathBuf>,
        /// Their inode keys, or why they cannot be tracked.
        reply: Sender<io::Result<Vec<InodeKey>>>,
    },
    /// Stop tracking.
    Untrack {
        /// Keys from `Track`.
        keys: Vec<InodeKey>,
    },
    /// Hand over the ranges collected for `keys`.
    Flush {
        /// Keys from `Track`.
        keys: Vec<InodeKey>,
        /// The ranges.
        reply: Sender<Flushed>,
    },
}

/// Dirtied pages since the previous flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flushed {
    /// `(first page, pages)` ranges, by file.
    pub ranges: HashMap<InodeKey, Vec<(u64, u32)>>,
    /// Ranges may be missing: compare content instead of trusting `ranges`.
    pub lost: bool,
}

/// The sampler's side: ranges waiting for a flush.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    ranges: HashMap<InodeKey, Vec<(u64, u32)>>,
    overflowed: HashSet<InodeKey>,
    lost_seen: u64,
}

impl Pending {
    /// Files being tracked.
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Records a range if its file is tracked.
    pub(crate) fn push(&mut self, key: InodeKey, index: u64, nr: u32) {
        if let Some(v) = self.ranges.get_mut(&key) {
            if v.len() < MAX_PENDING_RANGES {
                v.push((index, nr));
            } else {
                self.overflowed.insert(key);
            }
        }
    }
}

/// Handles one request on the sampler thread.
pub(crate) fn handle(sampler: &mut Sampler, cmd: TrackCommand) {
    match cmd {
        TrackCommand::Track { paths, reply } => {
            let result = match sampler.bpf_mut() {
                None => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the probe runs on procfs: no dirty-page tracking",
                )),
                Some(probe) => paths
                    .iter()
                    .map(|p| probe.track_inode(p))
                    .collect::<io::Result<Vec<_>>>(),
            };
            if let Ok(keys) = &result {
                for k in keys {
                    sampler.pending_mut().ranges.entry(*k).or_default();
                }
            }
            let _ = reply.send(result);
        }
        TrackCommand::Untrack { keys } => {
            if let Some(probe) = sampler.bpf_mut() {
                for k in &keys {
                    probe.untrack_inode(k);
                }
            }
            let pending = sampler.pending_mut();
            for k in &keys {
                pending.ranges.remove(k);
                pending.overflowed.remove(k);
            }
        }
        TrackCommand::Flush { keys, reply } => {
            sampler.drain_events();
            let lost_now = sampler
                .bpf_mut()
                .map(|p| p.kernel_stats().dirty_ranges_lost)
                .unwrap_or(0);
            let pending = sampler.pending_mut();
            let mut out = Flushed {
                lost: lost_now > pending.lost_seen,
                ..Flushed::default()
            };
            pending.lost_seen = lost_now;
            for k in keys {
                if let Some(v) = pending.ranges.get_mut(&k) {
                    out.ranges.insert(k, std::mem::take(v));
                }
                out.lost |= pending.overflowed.remove(&k);
            }
            let _ = reply.send(out);
        }
    }
}

/// A handle to ask the sampler thread for dirty-page tracking. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DirtyTracker {
    tx: Sender<TrackCommand>,
}

impl DirtyTracker {
    /// A tracker and the receiver to pass to [`super::spawn`].
    pub fn channel() -> (DirtyTracker, Receiver<TrackCommand>) {
        let (tx, rx) = channel();
        (DirtyTracker { tx }, rx)
    }

    fn gone() -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the sampler thread is not running",
        )
    }

    /// Starts tracking `paths` (regular files). Blocks up to a few seconds.
    pub fn track(&self, paths: Vec<PathBuf>) -> io::Result<Tracked> {
        let (reply, rx) = channel();
        self.tx
            .send(TrackCommand::Track {
                paths: paths.clone(),
                reply,
            })
            .map_err(|_| Self::gone())?;
        let keys = rx.recv_timeout(REPLY_TIMEOUT).map_err(|_| Self::gone())??;
        Ok(Tracked {
            tracker: self.clone(),
            files: paths.into_iter().zip(keys).collect(),
        })
    }
}

/// Files being tracked; dropping it stops the tracking.
#[derive(Debug)]
pub struct Tracked {
    tracker: DirtyTracker,
    files: Vec<(PathBuf, InodeKey)>,
}

impl Tracked {
    /// The tracked files and their keys.
    pub fn files(&self) -> &[(PathBuf, InodeKey)] {
        &self.files
    }

    /// Every range dirtied since the previous flush (or since tracking started), after the
    /// sampler drained the ring. Blocks up to a few seconds.
    pub fn flush(&self) -> io::Result<Flushed> {
        let (reply, rx) = channel();
        self.tracker
            .tx
            .send(TrackCommand::Flush {
                keys: self.files.iter().map(|(_, k)| *k).collect(),
                reply,
            })
            .map_err(|_| DirtyTracker::gone())?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| DirtyTracker::gone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.tracker.tx.send(TrackCommand::Untrack {
            keys: self.files.iter().map(|(_, k)| *k).collect(),
        });
    }
}
