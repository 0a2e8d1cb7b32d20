//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): `READY=1` once the agent serves
//! and has taken its first sample, `WATCHDOG=1` only while the sampler keeps sampling, and
//! `STOPPING=1` at shutdown. A few datagrams on `$NOTIFY_SOCKET`; no library needed.
//!
//! The watchdog is petted from a task on the agent's runtime, so a runtime that no longer
//! runs its tasks (deadlocked, starved) stops petting as surely as a stalled sampler, and
//! systemd restarts the agent. The fence guard, not this, is what protects services from a
//! hung agent: systemd's restart comes `WatchdogSec` later than the guard's kill.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where systemd listens, and how often it wants to hear from a healthy agent.
#[derive(Debug)]
pub(super) struct Notifier {
    socket: Option<SocketAddr>,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    pet_every: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, and removes them from the
    /// environment, so that the services the agent starts cannot speak for it. Call before
    /// any thread starts.
    pub(super) fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec();
            match bytes.split_first() {
                Some((b'@', name)) => {
                    <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)
                        .ok()
                }
                Some((b'/', _)) => SocketAddr::from_pathname(std::path::Path::new(&p)).ok(),
                _ => None,
            }
        });
        let for_me = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let pet_every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_me)
            .map(|u| Duration::from_micros(u / 2));
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: called at start, before the runtime or any other thread exists.
            std::env::remove_var(var);
        }
        Notifier { socket, pet_every }
    }

    /// Sends `state` (newline-separated `KEY=value` lines); an error is logged, not fatal.
    fn send(&self, state: &str) {
        let Some(addr) = &self.socket else { return };
        let r = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = r {
            tracing::debug!(error = %e, "systemd notification not sent");
        }
    }

    /// `STOPPING=1`.
    pub(super) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// Says `READY=1` once a first sample exists, then pets the watchdog every half period
    /// while the last sample is younger than `stale_after`; stops at `cancel`.
    pub(super) async fn run(
        self: std::sync::Arc<Self>,
        snapshot: crate::probe::SharedSnapshot,
        stale_after: Duration,
        cancel: CancellationToken,
    ) {
        if self.socket.is_none() {
            return;
        }
        let tick = self
            .pet_every
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let mut ready = false;
        let mut last_pet = tokio::time::Instant::now();
        let mut stalled = false;
        loop {
            let age = snapshot
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    Duration::from_millis(now.saturating_sub(s.taken_at_unix_ms))
                });
            if let Some(age) = age {
                if !ready {
                    self.send("READY=1\nSTATUS=serving");
                    ready = true;
                }
                let healthy = age <= stale_after;
                if healthy == stalled {
                    stalled = !healthy;
                    if stalled {
                        tracing::error!(
                            last_sample_s = age.as_secs_f64(),
                            "the sampler stalled: the systemd watchdog is no longer petted"
                        );
                        self.send(&format!(
                            "STATUS=sampler stalled: last sample {:.0} s ago",
                            age.as_secs_f64()
                        ));
                    } else {
                        tracing::info!("the sampler samples again: petting the watchdog");
                        self.send("STATUS=serving");
                    }
                }
                if let Some(every) = self.pet_every {
                    if healthy && last_pet.elapsed() >= every.saturating_sub(tick) {
                        self.send("WATCHDOG=1");
                        last_pet = tokio::time::Instant::now();
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}
