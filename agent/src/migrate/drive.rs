//! The pre-copy driver: chooses the mode from the latency-aware model, runs live rounds until
//! the termination check says freeze, then the frozen round, the hash check and the commit.
//! Any failure before the commit gives the service back to the source (thawed or restarted).
//!
//! The service side (freeze, thaw, stop, start) comes in through [`Source`], so the driver
//! works the same for the exec driver's services and in tests.

use std::future::Future;
use std::time::Instant;

use serde::Serialize;
use tracing::{info, warn};

use super::error::MigrateError;
use super::transfer::{RoundStats, StateSender};
use crate::policy::{self as precopy, PrecopyEstimate, PrecopyInput, StartDecision, StopReason};

/// How a service is switched over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Live rounds, then a short frozen round.
    Transitional,
    /// Stop, copy everything, start on the target.
    Intermittent,
    /// Transitional when the model says iterating meets the target, intermittent otherwise.
    Auto,
}

/// What the driver needs from the service being moved, on the source node.
pub trait Source {
    /// Freezes the service (its cgroup) and returns once it is frozen.
    fn freeze(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Thaws it (after a failed transfer).
    fn thaw(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops it (intermittent mode).
    fn stop(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts it again (after a failed intermittent transfer).
    fn start(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// What happened, predicted against actual.
#[derive(Debug, Clone, Serialize)]
pub struct DriveReport {
    /// The model's estimate before the move.
    pub estimate: PrecopyEstimate,
    /// The mode used.
    pub mode: Mode,
    /// Every round; the last ran with the service frozen or stopped.
    pub rounds: Vec<RoundStats>,
    /// Why the live rounds ended (transitional mode).
    pub stop: Option<StopReason>,
    /// From freezing (or stopping) the service to the commit on the target, seconds: the
    /// agent's view of the service's unavailability so far (the target still has to start
    /// it).
    pub frozen_seconds: f64,
    /// Bytes of state sent in all rounds.
    pub bytes: u64,
    /// Bytes on the wire in all rounds.
    pub wire_bytes: u64,
    /// Files compared by hash at the end.
    pub verified_files: usize,
    /// Where the state now lives on the target.
    pub committed_path: Option<String>,
    /// Wall time of the whole transfer, seconds.
    pub total_seconds: f64,
}

/// The mode `Auto` resolves to for an estimate.
pub fn choose_mode(requested: Mode, estimate: &PrecopyEstimate) -> Mode {
    match requested {
        Mode::Auto if estimate.start == StartDecision::Iterate => Mode::Transitional,
        Mode::Auto => Mode::Intermittent,
        m => m,
    }
}

/// Moves the state with `sender` while `source` keeps serving, and commits it on the target.
/// On failure before the commit the service is thawed (or restarted) on the source and the
/// target's staging copy is dropped; the report so far comes with the error.
pub async fn drive<S: Source + Send>(
    mut sender: StateSender,
    source: &mut S,
    input: PrecopyInput,
    requested: Mode,
) -> Result<DriveReport, (MigrateError, DriveReport)> {
    let started = Instant::now();
    let estimate = precopy::estimate(input);
    let mode = choose_mode(requested, &estimate);
    info!(
        ?mode,
        start = ?estimate.start,
        live_rounds = estimate.live_rounds,
        predicted_downtime_s = ?estimate.predicted_downtime_s,
        "state migration starts"
    );
    let mut report = DriveReport {
        estimate,
        mode,
        rounds: Vec::new(),
        stop: None,
        frozen_seconds: 0.0,
        bytes: 0,
        wire_bytes: 0,
        verified_files: 0,
        committed_path: None,
        total_seconds: 0.0,
    };
    macro_rules! fail {
        ($err:expr, $resume:expr) => {{
            let err: MigrateError = $err;
            warn!(error = %err, "state migration failed before the commit; the source resumes");
            sender.abort(&err.to_string()).await;
            if let Err(e) = $resume.await {
                warn!(error = %e, "the source did not resume");
            }
            report.total_seconds = started.elapsed().as_secs_f64();
            return Err((err, report));
        }};
    }
    let record = |report: &mut DriveReport, r: RoundStats| {
        report.bytes += r.bytes;
        report.wire_bytes += r.wire_bytes;
        report.rounds.push(r);
    };
    let frozen_at;
    match mode {
        Mode::Transitional | Mode::Auto => {
            let mut previous: Option<RoundStats> = None;
            loop {
                let round = report.rounds.len() as u32;
                if let Some(p) = &previous {
                    // What the next round would copy: what was dirtied while the last one ran.
                    let rate = if input.dirty_bytes_per_s > 0.0 {
                        input.dirty_bytes_per_s
                    } else {
                        p.bytes as f64 / p.seconds.max(1e-3)
                    };
                    let remaining = rate * p.seconds;
                    let prev = Some(p.bytes as f64);
                    if let Some(reason) = precopy::should_freeze(round, remaining, prev, &input) {
                        report.stop = Some(reason);
                        break;
                    }
                }
                match sender.round().await {
                    Ok(r) => {
                        previous = Some(r.clone());
                        record(&mut report, r);
                    }
                    Err(e) => fail!(e, async { Ok::<(), String>(()) }),
                }
            }
            if let Err(e) = source.freeze().await {
                fail!(
                    MigrateError::BadState(format!("freeze: {e}")),
                    source.thaw()
                );
            }
            frozen_at = Instant::now();
            match sender.round().await {
                Ok(r) => record(&mut report, r),
                Err(e) => fail!(e, source.thaw()),
            }
            match sender.verify().await {
                Ok(n) => report.verified_files = n,
                Err(e) => fail!(e, source.thaw()),
            }
        }
        Mode::Intermittent => {
            if let Err(e) = source.stop().await {
                fail!(MigrateError::BadState(format!("stop: {e}")), source.start());
            }
            frozen_at = Instant::now();
            match sender.round().await {
                Ok(r) => record(&mut report, r),
                Err(e) => fail!(e, source.start()),
            }
            match sender.verify().await {
                Ok(n) => report.verified_files = n,
                Err(e) => fail!(e, source.start()),
            }
        }
    }
    match sender.commit().await {
        Ok(path) => report.committed_path = Some(path),
        Err(e) => {
            // The commit's outcome on the target is unknown: the caller must resolve it (the
            // target reports whether it holds the state) before resuming the source.
            report.frozen_seconds = frozen_at.elapsed().as_secs_f64();
            report.total_seconds = started.elapsed().as_secs_f64();
            return Err((e, report));
        }
    }
    report.frozen_seconds = frozen_at.elapsed().as_secs_f64();
    report.total_seconds = started.elapsed().as_secs_f64();
    info!(
        rounds = report.rounds.len(),
        bytes = report.bytes,
        frozen_ms = (report.frozen_seconds * 1e3).round(),
        "state committed on the target"
    );
    Ok(report)
}
