//! A migration's progress as it runs, for `godwit migrate` to show: the phase, the round, the
//! bytes so far, and the dirty rate, bandwidth and time left the rounds measured.
//!
//! The migrator emits one [`Progress`] at each phase change and after each round (the driver
//! reports through [`super::Source::progress`]); the `"control"` service forwards them to the
//! caller as they come.

use serde::{Deserialize, Serialize};

use super::drive::DriveReport;

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Connecting to the target and pushing the service's image (missing chunks only).
    Image,
    /// Measuring the path and choosing the compression: the model's inputs.
    Measure,
    /// A live round starts (`round` is its number; the figures are those of the rounds
    /// before it).
    Round,
    /// Freezing (or stopping) the service.
    Freeze,
    /// The frozen round.
    FinalRound,
    /// Comparing the hash trees.
    Verify,
    /// The target commits the copy, the source records the decision.
    Commit,
    /// The target starts the service; the source's instance goes.
    Handoff,
}

impl Phase {
    /// How `godwit migrate` names it.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Image => "image",
            Phase::Measure => "measure",
            Phase::Round => "round",
            Phase::Freeze => "freeze",
            Phase::FinalRound => "final round",
            Phase::Verify => "verify",
            Phase::Commit => "commit",
            Phase::Handoff => "hand-off",
        }
    }
}

/// One update. The figures are the migration's so far; `None` is not measured yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Where it is.
    pub phase: Phase,
    /// The current (or last) round, 0 for the full copy.
    pub round: u32,
    /// Bytes of state sent in the rounds that ended.
    pub bytes: u64,
    /// Of which on the wire (after compression).
    pub wire_bytes: u64,
    /// The dirty rate the termination check uses, bytes per second.
    pub dirty_bytes_per_second: Option<f64>,
    /// The bandwidth it uses, bytes per second (the path's after compression until a round
    /// measured one).
    pub bandwidth_bytes_per_second: Option<f64>,
    /// Seconds until the cut-over starts, by the model (`None` when it cannot say).
    pub eta_seconds: Option<f64>,
    /// Seconds since the migration started.
    pub elapsed_seconds: f64,
}

impl Progress {
    /// An update for `phase` with nothing measured yet.
    pub fn at(phase: Phase) -> Progress {
        Progress {
            phase,
            round: 0,
            bytes: 0,
            wire_bytes: 0,
            dirty_bytes_per_second: None,
            bandwidth_bytes_per_second: None,
            eta_seconds: None,
            elapsed_seconds: 0.0,
        }
    }

    /// The driver's figures so far, at `phase`: the round about to run (from the freeze on,
    /// the frozen one), the bytes of the rounds that ended, the last measured dirty rate and
    /// bandwidth, and the time left in the live rounds (the model's estimate before round 0).
    pub fn of(report: &DriveReport, phase: Phase) -> Progress {
        let ran = report.rounds.len() as u32;
        let dirty = report.dirty_rates.last().copied().flatten();
        let bandwidth = report
            .round_bandwidths
            .last()
            .copied()
            .flatten()
            .or(Some(report.estimate.input.bandwidth_bytes_per_s))
            .filter(|b| *b > 0.0);
        let eta_seconds = match (phase, report.rounds.last()) {
            (Phase::Round, None) => report.estimate.total_duration_s,
            (Phase::Round, Some(last)) => eta_live(dirty, bandwidth, last.seconds),
            _ => None,
        };
        Progress {
            phase,
            round: match phase {
                Phase::Round | Phase::Freeze | Phase::FinalRound => ran,
                _ => ran.saturating_sub(1),
            },
            bytes: report.bytes,
            wire_bytes: report.wire_bytes,
            dirty_bytes_per_second: dirty,
            bandwidth_bytes_per_second: bandwidth,
            eta_seconds,
            elapsed_seconds: 0.0,
        }
    }

    /// An update during a live round, `seconds` after it started, with what it sent so far
    /// (`bytes`, `wire_bytes`) added to the figures of the rounds before it; the time left
    /// counts down from the round's start (round 0: the rest of its copy at the bandwidth, then
    /// the model's later rounds).
    pub fn during(report: &DriveReport, bytes: u64, wire_bytes: u64, seconds: f64) -> Progress {
        let mut p = Progress::of(report, Phase::Round);
        p.bytes += bytes;
        p.wire_bytes += wire_bytes;
        p.eta_seconds = match (report.rounds.is_empty(), p.bandwidth_bytes_per_second) {
            (true, Some(b)) => {
                let e = &report.estimate;
                let left = (e.input.state_bytes - bytes as f64).max(0.0) / b;
                let later = e
                    .total_duration_s
                    .map(|t| t - e.input.state_bytes / b - e.input.rtt_s);
                Some(left + later.unwrap_or(0.0).max(0.0))
            }
            _ => p.eta_seconds.map(|t| (t - seconds).max(0.0)),
        };
        p
    }

    /// One line for a terminal.
    pub fn line(&self) -> String {
        let mb = |b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.1}", b / 1e6));
        format!(
            "[{:>6.1} s] {:<11} round {:>2}  sent {:>8.1} MiB (wire {:>8.1} MiB)  dirty {:>6} MB/s  \
             bandwidth {:>7} MB/s  eta {}",
            self.elapsed_seconds,
            self.phase.label(),
            self.round,
            self.bytes as f64 / 1048576.0,
            self.wire_bytes as f64 / 1048576.0,
            mb(self.dirty_bytes_per_second),
            mb(self.bandwidth_bytes_per_second),
            self.eta_seconds
                .map_or("-".to_string(), |s| format!("{s:.1} s")),
        )
    }
}

/// Where a migration's updates go (nowhere without a sink): each stamped with the time since
/// the migration started, the last kept so that a phase change carries the figures so far.
#[derive(Debug)]
pub(crate) struct Reporter {
    sink: Option<tokio::sync::mpsc::UnboundedSender<Progress>>,
    started: std::time::Instant,
    last: Progress,
}

impl Reporter {
    /// Updates to `sink`, timed from now.
    pub(crate) fn new(sink: Option<tokio::sync::mpsc::UnboundedSender<Progress>>) -> Reporter {
        Reporter {
            sink,
            started: std::time::Instant::now(),
            last: Progress::at(Phase::Image),
        }
    }

    /// Sends `p` (a caller that went away is no error: the migration goes on).
    pub(crate) fn send(&mut self, mut p: Progress) {
        p.elapsed_seconds = self.started.elapsed().as_secs_f64();
        self.last = p.clone();
        if let Some(sink) = &self.sink {
            let _ = sink.send(p);
        }
    }

    /// A phase change with the last figures.
    pub(crate) fn phase(&mut self, phase: Phase) {
        let p = Progress {
            phase,
            ..self.last.clone()
        };
        self.send(p);
    }
}

/// The model's time left in the live rounds: the next round copies what is dirtied meanwhile
/// (`dirty x last round's seconds`) at `bandwidth`, and each later one `q = dirty / bandwidth`
/// times the one before, so `T / (1 - q)`. `None` when the rounds do not converge (`q >= 1`)
/// or a figure is missing.
pub fn eta_live(dirty: Option<f64>, bandwidth: Option<f64>, last_round_s: f64) -> Option<f64> {
    let (d, b) = (dirty?, bandwidth?);
    let q = (b > 0.0).then(|| d / b)?;
    (q < 1.0).then(|| d * last_round_s / b / (1.0 - q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_geometric_sum_of_the_rounds_left() {
        // 10 MB/s dirtied, 100 MB/s through, last round 2 s: next 0.2 s, then 0.02 s ...
        let eta = eta_live(Some(10e6), Some(100e6), 2.0).unwrap();
        assert!((eta - 0.2 / 0.9).abs() < 1e-9, "{eta}");
        assert_eq!(
            eta_live(Some(100e6), Some(100e6), 2.0),
            None,
            "no convergence"
        );
        assert_eq!(eta_live(None, Some(100e6), 2.0), None);
        assert_eq!(eta_live(Some(0.0), Some(100e6), 2.0), Some(0.0));
    }

    #[test]
    fn during_a_round_the_bytes_grow_and_the_time_left_falls() {
        use godwit_core::policy::{estimate, PrecopyInput};
        let input = PrecopyInput {
            state_bytes: 1e9,
            dirty_bytes_per_s: 1e7,
            bandwidth_bytes_per_s: 1e8,
            rtt_s: 0.0,
            downtime_target_s: 0.1,
            max_rounds: 10,
            scan_share: 1.0,
            round_bandwidth_bytes_per_s: 0.0,
            live_overhead_s: 0.0,
            later_dirty_bytes_per_s: 0.0,
            frozen_bandwidth_bytes_per_s: 0.0,
            stop_s: 0.0,
        };
        let report = DriveReport::new(
            estimate(input),
            super::super::drive::SwitchMode::Transitional,
        );
        // Round 0, 400 MB of 1000 sent: 6 s of it left, plus the later rounds' 1.11 s.
        let p = Progress::during(&report, 400_000_000, 410_000_000, 4.0);
        assert_eq!((p.phase, p.round, p.bytes), (Phase::Round, 0, 400_000_000));
        assert_eq!(p.wire_bytes, 410_000_000);
        let later = report.estimate.total_duration_s.unwrap() - 10.0;
        assert!(
            (p.eta_seconds.unwrap() - (6.0 + later)).abs() < 1e-9,
            "{p:?}"
        );
        let q = Progress::during(&report, 900_000_000, 910_000_000, 9.0);
        assert!(q.eta_seconds.unwrap() < p.eta_seconds.unwrap());
    }

    #[test]
    fn a_line_names_the_phase_round_and_figures() {
        let p = Progress {
            round: 3,
            bytes: 256 << 20,
            wire_bytes: 128 << 20,
            dirty_bytes_per_second: Some(5e6),
            bandwidth_bytes_per_second: Some(120e6),
            eta_seconds: Some(1.5),
            elapsed_seconds: 4.0,
            ..Progress::at(Phase::Round)
        };
        let line = p.line();
        for part in [
            "round  3",
            "256.0 MiB",
            "128.0 MiB",
            "5.0 MB/s",
            "120.0 MB/s",
            "1.5 s",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
    }
}
