//! Lease time: `CLOCK_BOOTTIME`, which keeps counting while the machine is suspended (Rust's
//! `Instant` is `CLOCK_MONOTONIC`, which stops). A node that slept through its lease must wake
//! up fenced, not believe it still holds it.

use std::time::Duration;

/// Where a node reads lease time.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// `CLOCK_BOOTTIME`: what the agent uses.
    #[default]
    Boot,
    /// tokio's clock, in milliseconds since `origin`. It stops while the machine sleeps, so it
    /// is only for tests: a simulation pauses tokio's clock and advances it itself, and lease
    /// time must follow it.
    Tokio {
        /// What counts as zero.
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// Now, on this clock.
    pub fn now(&self) -> BootTime {
        match self {
            Clock::Boot => BootTime::now(),
            Clock::Tokio { origin } => BootTime(origin.elapsed().as_millis() as u64),
        }
    }
}

/// A point on `CLOCK_BOOTTIME`, in milliseconds since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BootTime(pub u64);

impl BootTime {
    /// Now.
    pub fn now() -> BootTime {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux
        // this agent supports.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
        BootTime(ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000)
    }

    /// This time plus `d`.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, d: Duration) -> BootTime {
        BootTime(self.0.saturating_add(d.as_millis() as u64))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: BootTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_moves_forward_with_sleep() {
        let a = BootTime::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = BootTime::now();
        assert!(b.since(a) >= Duration::from_millis(19), "{a:?} {b:?}");
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
