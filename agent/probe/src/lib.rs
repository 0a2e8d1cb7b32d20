//! Everything that reads the host: BPF programs and their maps, the procfs/cgroupfs fallback,
//! node totals and energy, and the sampler that turns them into a [`Snapshot`] every interval.
//! Only this crate touches aya.

pub mod bpf;
pub mod cgroup;
mod config;
pub mod container;
pub mod energy;
pub mod model;
pub mod node;
pub mod procfs;
pub mod sampler;
pub mod track;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use config::{EnergyConfig, ProbeConfig, ProbeMode};
pub use sampler::{Sampler, SamplerConfig, SamplerError, SharedSnapshot, Snapshot};
pub use track::{DirtyTracker, Flushed, TrackCommand, TrackReceiver, Tracked};

/// Longest pause between two looks at the stop flag and the event rings.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// Longest pause while a migration tracks files (its requests wake the thread at once through
/// the tracker's eventfd; this bounds the wait where there is none).
const TRACK_WAIT: Duration = Duration::from_millis(20);
/// Shortest pause between two event-driven republications of the process list.
const REPUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Runs `sampler` on its own thread until `stop` is set: a sample every interval, and exec/exit
/// events applied as they arrive (the process list is republished within tens of milliseconds,
/// so new and ended processes are known well within a second). Each new sample is also offered
/// to `subscriber`, without waiting: a subscriber that falls behind misses samples rather than
/// slowing the sampler.
pub fn spawn(
    mut sampler: Sampler,
    shared: SharedSnapshot,
    stop: Arc<AtomicBool>,
    subscriber: Option<SyncSender<Arc<Snapshot>>>,
    tracking: Option<TrackReceiver>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("godwit-sampler".into())
        .spawn(move || {
            let interval = sampler.interval();
            let mut next = Instant::now();
            let mut last_publish = Instant::now();
            let mut pending_events = false;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now >= next {
                    sampler.drain_events();
                    let snap = Arc::new(sampler.sample());
                    if let Some(tx) = &subscriber {
                        let _ = tx.try_send(snap.clone());
                    }
                    *shared.write().unwrap_or_else(|e| e.into_inner()) = Some(snap);
                    pending_events = false;
                    last_publish = Instant::now();
                    next += interval;
                    if next < Instant::now() {
                        next = Instant::now() + interval;
                    }
                    continue;
                }
                // Answer flushes quickly while a migration tracks files.
                let wait = if sampler.pending_mut().is_empty() {
                    MAX_WAIT
                } else {
                    TRACK_WAIT
                };
                let mut fds = sampler.event_fds();
                fds.extend(tracking.as_ref().and_then(|t| t.wake_fd()));
                wait_readable(&fds, (next - now).min(wait));
                pending_events |= sampler.drain_events();
                if let Some(rx) = &tracking {
                    while let Ok(cmd) = rx.try_recv() {
                        track::handle(&mut sampler, cmd);
                    }
                }
                if pending_events && last_publish.elapsed() >= REPUBLISH_EVERY {
                    let current = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(current) = current {
                        let mut updated = (*current).clone();
                        updated.processes = sampler.live_process_view(&current);
                        *shared.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::new(updated));
                    }
                    pending_events = false;
                    last_publish = Instant::now();
                }
            }
            tracing::debug!("sampler stopped");
        })
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[std::os::fd::RawFd], timeout: Duration) {
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return;
    }
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pollfds is a valid, exclusively borrowed array of pollfd for the call's duration;
    // the descriptors belong to the probe, which outlives this call.
    unsafe {
        libc::poll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
}
