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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
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
///
/// Every request also signals an eventfd that the sampler thread polls with its ring buffers,
/// so a flush is answered at once rather than at the thread's next timed wake-up (a flush of
/// the frozen round is on the service's downtime).
#[derive(Debug, Clone)]
pub struct DirtyTracker {
    tx: Sender<TrackCommand>,
    wake: Option<Arc<OwnedFd>>,
}

/// The sampler thread's end of a [`DirtyTracker`]: the requests, and the descriptor that
/// becomes readable when one is sent.
#[derive(Debug)]
pub struct TrackReceiver {
    rx: Receiver<TrackCommand>,
    wake: Option<Arc<OwnedFd>>,
}

impl TrackReceiver {
    /// The descriptor to poll with the others (`None`: no eventfd; poll on a timer).
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.wake.as_ref().map(|f| f.as_raw_fd())
    }

    /// The next request, if any; clears the wake-up signal first, so a request sent after
    /// this call signals again.
    pub fn try_recv(&self) -> Result<TrackCommand, TryRecvError> {
        if let Some(fd) = &self.wake {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into a u64 owned here from a non-blocking eventfd that
            // `self` keeps open; EAGAIN (nothing signalled) is the expected failure.
            unsafe {
                libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8);
            }
        }
        self.rx.try_recv()
    }
}

impl DirtyTracker {
    /// A tracker and the receiver to pass to [`super::spawn`].
    pub fn channel() -> (DirtyTracker, TrackReceiver) {
        let (tx, rx) = channel();
        // SAFETY: eventfd takes no pointers; a negative result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        let wake = if fd >= 0 {
            // SAFETY: `fd` is a fresh descriptor owned by nothing else.
            Some(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }))
        } else {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                "no eventfd: tracking requests wait for the sampler's next wake-up"
            );
            None
        };
        (
            DirtyTracker {
                tx,
                wake: wake.clone(),
            },
            TrackReceiver { rx, wake },
        )
    }

    fn send(&self, cmd: TrackCommand) -> io::Result<()> {
        self.tx.send(cmd).map_err(|_| Self::gone())?;
        if let Some(fd) = &self.wake {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a u64 on the stack to an eventfd kept open by `self`.
            unsafe {
                libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
            }
        }
        Ok(())
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
        self.send(TrackCommand::Track {
            paths: paths.clone(),
            reply,
        })?;
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
        self.tracker.send(TrackCommand::Flush {
            keys: self.files.iter().map(|(_, k)| *k).collect(),
            reply,
        })?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| DirtyTracker::gone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.tracker.send(TrackCommand::Untrack {
            keys: self.files.iter().map(|(_, k)| *k).collect(),
        });
    }
}
