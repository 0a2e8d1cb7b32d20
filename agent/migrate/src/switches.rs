//! This node's past transitional switch latencies as a migration target: the input of the
//! class label (MISSION: a target is positive iff the p90 of its past transitional switch
//! latencies is at most `L_max`; no history is positive).
//!
//! A switch latency is a committed move's client-visible downtime as its source measured it
//! (`MigrationReport::downtime_seconds`: from the freeze to the service healthy on this node
//! with its VIP, the frozen source killed), the figure the move's downtime target is checked
//! against. The source sends it with the move's mode in its last message to the target
//! (`Forget`), once the service runs here; the target keeps it only if its journal shows the
//! service started here by that migration from that source, so each move counts once.
//!
//! Only transitional moves count. An intermittent move's downtime is its whole stop, copy and
//! start: a figure of the service's size and the link, not of how this node takes a live
//! cut-over; counting it would label a node negative for having received a large service.
//!
//! The last 16 are kept in `<data_dir>/switch-latencies.json`, written (a temporary
//! file renamed over it) at each new figure and read at start. A file that does not parse is
//! reported once, moved aside to `switch-latencies.json.bad` (nothing is lost) and the history
//! starts empty.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::drive::SwitchMode;

/// Latencies kept: the most recent (as many as a gossip summary carries).
const KEPT: usize = 16;

/// A latency longer than this is no figure (a clock step, a move that hung), seconds.
const LONGEST_S: f64 = 3600.0;

/// The file's name under the node's data directory.
const FILE: &str = "switch-latencies.json";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OnDisk {
    /// Transitional switch latencies, seconds, oldest first.
    transitional_s: Vec<f64>,
}

/// The history, shared by the target's hand-off (which records), the gossip summary and the
/// local policy (which read it).
#[derive(Debug, Default)]
pub struct SwitchHistory {
    /// Where it is kept; `None`: in memory only.
    path: Option<PathBuf>,
    latencies_s: Mutex<VecDeque<f64>>,
}

fn keep(v: &mut VecDeque<f64>, s: f64) -> bool {
    if !(s.is_finite() && (0.0..=LONGEST_S).contains(&s)) {
        return false;
    }
    v.push_back(s);
    while v.len() > KEPT {
        v.pop_front();
    }
    true
}

impl SwitchHistory {
    /// Where the history of a node whose data directory is `data_dir` is kept.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// The figures kept at `path`: none when there is no file; `Err` says why a file there
    /// is not a history. Figures out of range are dropped, the newest 16 kept.
    pub fn read(path: &Path) -> Result<VecDeque<f64>, String> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
            Err(e) => return Err(e.to_string()),
        };
        let on_disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let mut v = VecDeque::new();
        for s in on_disk.transitional_s {
            keep(&mut v, s);
        }
        Ok(v)
    }

    /// The history kept at `path` (see [`Self::path`]). A file that cannot be read or parsed
    /// is reported here, once, and moved aside; the history then starts empty.
    pub fn open(path: PathBuf) -> SwitchHistory {
        let latencies = match Self::read(&path) {
            Ok(v) => v,
            Err(error) => {
                let aside = path.with_extension("json.bad");
                let moved = std::fs::rename(&path, &aside).is_ok();
                warn!(
                    path = %path.display(),
                    %error,
                    moved_to = %if moved { aside.display().to_string() } else { "-".into() },
                    "the switch latency history is not readable: starting without one"
                );
                VecDeque::new()
            }
        };
        SwitchHistory {
            path: Some(path),
            latencies_s: Mutex::new(latencies),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<f64>> {
        self.latencies_s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a committed move into this node in `mode` that kept the service from its
    /// clients for `seconds`, and writes the history; `false` when it is not recorded (an
    /// intermittent move, or not a figure). A failed write is logged: the figure stays in
    /// memory.
    pub fn record(&self, mode: SwitchMode, seconds: f64) -> bool {
        if mode != SwitchMode::Transitional {
            return false;
        }
        let snapshot = {
            let mut v = self.lock();
            if !keep(&mut v, seconds) {
                return false;
            }
            v.iter().copied().collect::<Vec<f64>>()
        };
        if let Some(path) = &self.path {
            if let Err(error) = store(path, &snapshot) {
                warn!(path = %path.display(), %error, "cannot write the switch latency history");
            }
        }
        true
    }

    /// The latencies kept, seconds, oldest first.
    pub fn latencies_s(&self) -> Vec<f64> {
        self.lock().iter().copied().collect()
    }

    /// The latencies kept, whole milliseconds, oldest first (as gossip carries them).
    pub fn latencies_ms(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .map(|s| (s * 1e3).round().clamp(0.0, f64::from(u32::MAX)) as u32)
            .collect()
    }
}

fn store(path: &Path, latencies_s: &[f64]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec(&OnDisk {
        transitional_s: latencies_s.to_vec(),
    })
    .map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitional_figures_are_kept_and_only_the_newest() {
        let h = SwitchHistory::default();
        assert!(h.latencies_s().is_empty(), "no move: no history");
        assert!(
            !h.record(SwitchMode::Intermittent, 0.5),
            "intermittent: not counted"
        );
        for bad in [f64::NAN, -0.1, 1e9] {
            assert!(!h.record(SwitchMode::Transitional, bad), "{bad}");
        }
        assert!(h.latencies_s().is_empty());
        for i in 0..40 {
            assert!(h.record(SwitchMode::Transitional, f64::from(i) / 100.0));
        }
        let v = h.latencies_s();
        assert_eq!(v.len(), KEPT, "bounded");
        assert_eq!(v[0], 0.24, "the oldest dropped first");
        assert_eq!(*v.last().unwrap(), 0.39);
        assert_eq!(h.latencies_ms()[0], 240);
    }

    #[test]
    fn the_history_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = SwitchHistory::path(dir.path());
        let h = SwitchHistory::open(path.clone());
        assert!(h.latencies_s().is_empty(), "no file: no history");
        h.record(SwitchMode::Transitional, 0.096);
        h.record(SwitchMode::Intermittent, 1.77);
        h.record(SwitchMode::Transitional, 2.5);
        drop(h);
        let again = SwitchHistory::open(path.clone());
        assert_eq!(again.latencies_s(), [0.096, 2.5]);
        assert_eq!(again.latencies_ms(), [96, 2500]);
        // A file written by hand with more than kept and nonsense: the newest sane ones.
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        std::fs::write(
            &path,
            format!(r#"{{"transitional_s":[{},-3]}}"#, many.join(",")),
        )
        .unwrap();
        let v = SwitchHistory::read(&path).unwrap();
        assert_eq!(v.len(), KEPT);
        assert_eq!(v.front(), Some(&4.0));
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_the_history_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = SwitchHistory::path(dir.path());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(SwitchHistory::read(&path).is_err(), "it says why");
        let h = SwitchHistory::open(path.clone());
        assert!(h.latencies_s().is_empty());
        let aside = path.with_extension("json.bad");
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"{not json",
            "nothing is lost"
        );
        assert!(!path.exists());
        h.record(SwitchMode::Transitional, 0.2);
        assert_eq!(SwitchHistory::open(path).latencies_s(), [0.2]);
    }
}
