//! The audit log (`<data_dir>/migrations.log`, one JSON line per migration, refusal or
//! recovery) and the migration counters: what a migration reports, predicted against actual.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::drive::DriveReport;
use super::model::Observed;

/// A migration as reported and audited: predicted against actual.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct MigrationReport {
    /// Its id.
    pub id: String,
    /// The service.
    pub service: String,
    /// From this node.
    pub from: String,
    /// To that node.
    pub to: String,
    /// Who asked.
    pub requested_by: String,
    /// `committed`, `failed: ...`, or `refused: ...` (the caller may not start migrations:
    /// nothing was tried).
    pub result: String,
    /// Start and end, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// End.
    pub finished_unix_ms: u64,
    /// Image chunks sent (0 when the target had them).
    pub image_chunks_sent: u64,
    /// Path measured before the move: RTT, milliseconds.
    pub rtt_ms: f64,
    /// Path measured before the move: bytes per second (incompressible data).
    pub bandwidth_bytes_per_second: f64,
    /// The bandwidth after compression the model used: what the chosen zstd level is
    /// expected to move, bytes of state per second.
    pub effective_bandwidth_bytes_per_second: f64,
    /// The zstd level and the measurements it was chosen from.
    pub compression: Option<godwit_transport::LevelChoice>,
    /// Dirty rate the probe reported for the service, bytes per second.
    pub dirty_bytes_per_second: f64,
    /// State size, bytes.
    pub state_bytes: u64,
    /// The share of the state's pages dirty in the page cache just before the move
    /// (`cachestat`); before the model has learned `D'/D` from a move, it gives it.
    #[serde(default)]
    pub state_dirty_share: Option<f64>,
    /// The pre-copy run: estimate, mode, rounds, frozen time.
    pub transfer: Option<DriveReport>,
    /// Rounds the model predicted (live rounds plus the frozen one).
    pub predicted_rounds: Option<u32>,
    /// Committed moves from this node the model had learned from when it predicted (0: a
    /// first move, on the measured inputs and the defaults alone).
    #[serde(default)]
    pub learned_moves: usize,
    /// Rounds run.
    pub actual_rounds: usize,
    /// From the freeze (or stop) to the service healthy on the target, seconds.
    pub downtime_seconds: Option<f64>,
    /// The downtime target asked for, seconds.
    pub downtime_target_s: f64,
    /// The downtime predicted before the move for the mode it ran in, seconds: the hold to
    /// the end of the frozen round (with the service's own stop, intermittent), the rest of
    /// the cut-over, and the service's own start on the target. A stop or start not measured
    /// yet is not in it (see `stop_estimate_s`, `start_estimate_s`).
    pub predicted_downtime_s: Option<f64>,
    /// The service's own stop (SIGTERM until its cgroup was empty) as expected before the
    /// move: the median of its last stops on this node, seconds; `None`: never measured.
    pub stop_estimate_s: Option<f64>,
    /// Its own start (exec until its first passing check), likewise.
    pub start_estimate_s: Option<f64>,
    /// Set when the move committed but its downtime exceeded the target:
    /// `missed its downtime target: 1.77 s against 300 ms`.
    pub downtime_target_missed: Option<String>,
    /// The cut-over's cost outside the frozen round's copy, as expected before the move (the
    /// median of the last committed moves from this node, or a default), seconds.
    pub cutover_estimate_s: f64,
    /// The downtime target less that cost and the service's own start (at least a quarter of
    /// the target): the budget the pre-copy model gives the frozen round, seconds.
    pub frozen_round_target_s: f64,
    /// The frozen round's own cost beyond moving its bytes, as expected before the move (the
    /// median of the last committed moves from this node, or a default); the model's `RTT` is
    /// the path's plus this, seconds.
    pub round_overhead_estimate_s: f64,
    /// What a live round costs beyond that (the model's `o_l`), as expected before the move,
    /// seconds.
    pub live_overhead_estimate_s: f64,
    /// Wall time of the whole migration, seconds.
    pub total_seconds: f64,
}

/// Migration counters, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationStats {
    /// Migrations committed.
    pub committed: u64,
    /// Migrations that failed.
    pub failed: u64,
    /// Requests refused before anything was tried (no certificate: the HTTP API; a caller or
    /// fencing token not allowed).
    pub refused: u64,
    /// Committed moves whose downtime exceeded their target.
    pub downtime_target_missed: u64,
    /// The last one.
    pub last: Option<MigrationReport>,
    /// What the last few committed moves showed of the model's own figures, oldest first.
    pub learned: std::collections::VecDeque<Observed>,
}

/// A duration as a person reads it: `300 ms` below a second, `1.77 s` from one on.
pub(super) fn human_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// What a committed move whose measured downtime was `downtime_s` says of its target
/// `target_s`: `Some("missed its downtime target: 1.77 s against 300 ms")` when it exceeded
/// it, `None` when it met it.
pub(super) fn missed_target(downtime_s: f64, target_s: f64) -> Option<String> {
    (downtime_s > target_s).then(|| {
        format!(
            "missed its downtime target: {} against {}",
            human_seconds(downtime_s),
            human_seconds(target_s)
        )
    })
}

/// Appends `report` to the audit log at `path` (one JSON line).
pub(super) fn append(path: &Path, report: &MigrationReport) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let line = serde_json::to_string(report).map_err(std::io::Error::other)?;
    writeln!(f, "{line}")
}

/// How many refusals a window may append to the audit log; the rest are counted and the
/// count is appended with the next one that fits.
pub(super) const REFUSALS_PER_WINDOW: u32 = 20;
/// The window.
pub(super) const REFUSAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Bounds the audit lines refusals write: a caller that floods the agent with requests it
/// may not make fills neither the disk nor the log. Every refusal is still counted.
#[derive(Debug, Default)]
pub struct RefusalLimiter {
    window: Option<std::time::Instant>,
    written: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    /// Whether a refusal at `now` may be written, and how many were left out before it
    /// (to say so in its line).
    pub(super) fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.window {
            Some(start) if now.duration_since(start) < REFUSAL_WINDOW => {}
            _ => {
                self.window = Some(now);
                self.written = 0;
            }
        }
        if self.written >= REFUSALS_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;

    #[test]
    fn a_missed_target_is_said_plainly() {
        assert_eq!(
            missed_target(1.77, 0.3).as_deref(),
            Some("missed its downtime target: 1.77 s against 300 ms")
        );
        assert_eq!(
            missed_target(0.4, 0.3).as_deref(),
            Some("missed its downtime target: 400 ms against 300 ms")
        );
        assert_eq!(missed_target(0.3, 0.3), None);
        assert_eq!(missed_target(0.096, 0.3), None);
        assert_eq!(human_seconds(2.0), "2.00 s");
    }

    #[test]
    fn the_audit_line_says_a_missed_target() {
        let dir = std::env::temp_dir().join(format!("godwit-audit-{}", std::process::id()));
        let path = dir.join("migrations.log");
        let report = MigrationReport {
            id: "redis-1".into(),
            result: "committed".into(),
            downtime_seconds: Some(1.77),
            downtime_target_s: 0.3,
            downtime_target_missed: missed_target(1.77, 0.3),
            ..Default::default()
        };
        append(&path, &report).unwrap();
        let line = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            line.contains(
                r#""downtime_target_missed":"missed its downtime target: 1.77 s against 300 ms""#
            ),
            "{line}"
        );
        assert!(line.contains(r#""result":"committed""#), "{line}");
    }

    #[test]
    fn refusals_beyond_the_window_are_counted_not_written() {
        let mut l = RefusalLimiter::default();
        let t = std::time::Instant::now();
        for _ in 0..REFUSALS_PER_WINDOW {
            assert_eq!(l.admit(t), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(l.admit(t), None);
        }
        // The next window writes again, and says how many were left out.
        let later = t + REFUSAL_WINDOW;
        assert_eq!(l.admit(later), Some(1000));
        assert_eq!(l.admit(later), Some(0));
    }
}
