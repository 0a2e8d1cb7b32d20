//! The pre-copy driver: chooses the mode from the latency-aware model, runs live rounds until
//! the termination check says freeze, then the frozen round, the hash check and the commit.
//! Any failure before the commit gives the service back to the source (thawed or restarted).
//!
//! The service side (freeze, thaw, stop, start) comes in through [`Source`], so the driver
//! works the same for the exec driver's services and in tests.

use std::future::Future;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::MigrateError;
use super::journal::SourcePhase;
use super::progress::{Phase, Progress};
use super::scan::BLOCK;
use super::source_machine::{self, Halt, Handed, SourceEffect, SourceEvent, SourceState};
use super::transfer::{RoundStats, StateSender, Verified};
use godwit_core::policy::{
    self as precopy, PrecopyEstimate, PrecopyInput, StartDecision, StopReason,
};

/// How often a live round reports its progress while it runs.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How a service is switched over: the policy's mode. A request asks for one or for none
/// (`None`, auto: transitional when the model says iterating meets the target, intermittent
/// otherwise).
pub use godwit_core::policy::SwitchMode;

/// What the driver needs from the service being moved, on the source node: the I/O of the
/// source's effects ([`SourceEffect`]) that the state machine ([`source_machine::step`])
/// returns.
pub trait Source {
    /// Freezes the service (its cgroup) and returns once it is frozen.
    fn freeze(&mut self) -> impl Future<Output = Result<(), MigrateError>> + Send;
    /// Thaws it (after a failed transfer).
    fn thaw(&mut self) -> impl Future<Output = Result<(), MigrateError>> + Send;
    /// Stops it (intermittent mode).
    fn stop(&mut self) -> impl Future<Output = Result<(), MigrateError>> + Send;
    /// Starts it again (after a failed intermittent transfer).
    fn start(&mut self) -> impl Future<Output = Result<(), MigrateError>> + Send;
    /// Records the move's phase durably (the migration journal): the stop before it happens,
    /// the decision before the target is told. An error aborts: the source resumes.
    fn record(
        &mut self,
        _phase: SourcePhase,
    ) -> impl Future<Output = Result<(), MigrateError>> + Send {
        std::future::ready(Ok(()))
    }
    /// Decided: hands the service over to the target (which starts it), while the driver
    /// tells the target of the decision on the state channel. Returns what the target said.
    fn hand_over(&mut self) -> impl Future<Output = Handed> + Send {
        std::future::ready(Handed::Started)
    }
    /// Kills the frozen instance (the target runs the service, or may).
    fn kill(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
    /// The effects left once the driver is done (removing the journal entry or the copy here,
    /// resolving an unanswered hand-off, resuming a given-back service): the caller runs them
    /// after it has taken the cut-over's figures. Dropped by default.
    fn then(&mut self, _effects: Vec<SourceEffect>) {}
    /// Where the transfer is: at each phase and before each round (after the previous one's
    /// figures are in). For `godwit migrate` to show; ignored by default.
    fn progress(&mut self, _progress: Progress) {}
}

/// What happened, predicted against actual.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriveReport {
    /// The model's estimate before the move.
    pub estimate: PrecopyEstimate,
    /// The mode used.
    pub mode: SwitchMode,
    /// Every round; the last ran with the service frozen or stopped.
    pub rounds: Vec<RoundStats>,
    /// Why the live rounds ended (transitional mode).
    pub stop: Option<StopReason>,
    /// From freezing (or stopping) the service to the end of the cut-over (the target runs
    /// it, or the hand-off failed), seconds: the agent's view of the service's unavailability.
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
    /// The dirty rate the termination check used after each live round, bytes per second
    /// (`None` while unknown): measured as the bytes dirtied between two rounds' starts over
    /// that time, the probe's distinct dirty pages or the changed blocks, whichever is more.
    pub dirty_rates: Vec<Option<f64>>,
    /// The rate `B_r` the termination check used after each live round, bytes per second (the
    /// model's input).
    pub round_bandwidths: Vec<Option<f64>>,
    /// The frozen round's latency term the termination check used after each live round,
    /// seconds (the model's input `RTT`).
    pub round_overheads_s: Vec<f64>,
    /// The line `t = overhead + bytes/rate` through this move's live rounds after round 0
    /// (least squares): the next moves from this node learn `B_r` and the live rounds' fixed
    /// cost from it.
    pub round_fit: Option<RoundFit>,
    /// Where the frozen time went, phase by phase.
    pub cutover: Cutover,
    /// The model's `s` as this move measured it: of the pages dirtied while round 0 ran, the
    /// share round 1 sent (the others changed before round 0 read them). `None` without the
    /// probe's tracking or a round 1.
    pub scan_share: Option<f64>,
}

/// A line `t = overhead_s + bytes/bytes_per_s` fitted on rounds' sizes and times.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundFit {
    /// Seconds per round whatever its size.
    pub overhead_s: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
}

/// The cut-over phase by phase, seconds: where the service's unavailability goes. The driver
/// fills in the phases up to the decision; the migrator adds the source's kill and the
/// hand-off (the target's figures come from the target's own clocks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cutover {
    /// Freezing (or stopping) the service until the kernel says it is frozen.
    pub freeze_s: f64,
    /// Of which the service's own stop (intermittent: SIGTERM until its cgroup was empty).
    pub stop_s: Option<f64>,
    /// The frozen round: listing, probe flush, write-back, read, send, written on the target.
    pub final_round_s: f64,
    /// The hash comparison, round trip.
    pub verify_s: f64,
    /// Of which hashing here.
    pub verify_source_hash_s: f64,
    /// Of which hashing on the target (its clock).
    pub verify_target_hash_s: Option<f64>,
    /// The commit on the target, round trip.
    pub commit_s: f64,
    /// Of which fsyncing the staging copy (the target's clock).
    pub commit_sync_s: Option<f64>,
    /// Of which the exchange into place, the parent's fsync and the journal's vote.
    pub commit_exchange_s: Option<f64>,
    /// Recording the decision in the journal here.
    pub decide_s: f64,
    /// Telling the target on the state channel, round trip (at the same time as the hand-off).
    pub decided_s: f64,
    /// The hand-off, round trip: the target starts the service and answers once it passes its
    /// health check and its VIP is up there.
    pub handoff_s: f64,
    /// Then killing the frozen source: its connections are reset from the VIP, which it
    /// releases after, so clients reconnect at once and reach the target.
    pub kill_s: f64,
    /// On the target: from the hand-off's arrival until the process was spawned.
    pub target_spawn_s: Option<f64>,
    /// On the target: until the first health check passed.
    pub target_healthy_s: Option<f64>,
    /// On the target: until its VIP was up.
    pub target_vip_s: Option<f64>,
    /// On the target: the service's own start, from its exec to its first passing check (in
    /// the hand-off).
    pub target_start_s: Option<f64>,
}

impl DriveReport {
    /// A report with nothing done yet.
    pub fn new(estimate: PrecopyEstimate, mode: SwitchMode) -> DriveReport {
        DriveReport {
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
            dirty_rates: Vec::new(),
            round_bandwidths: Vec::new(),
            round_overheads_s: Vec::new(),
            round_fit: None,
            cutover: Cutover::default(),
            scan_share: None,
        }
    }

    fn verify(&mut self, v: Verified, began: Instant) {
        self.verified_files = v.files;
        self.cutover.verify_s = began.elapsed().as_secs_f64();
        self.cutover.verify_source_hash_s = v.source_hash_seconds;
        self.cutover.verify_target_hash_s = v.target_hash_seconds;
    }
}

/// The mode a request resolves to for an estimate: the one asked for, or without one
/// (auto) transitional when the model says to iterate.
pub fn choose_mode(requested: Option<SwitchMode>, estimate: &PrecopyEstimate) -> SwitchMode {
    match requested {
        Some(m) => m,
        None if estimate.start == StartDecision::Iterate => SwitchMode::Transitional,
        None => SwitchMode::Intermittent,
    }
}

/// Runs the driver's share of `effects` in order (holding and resuming the service, the
/// journal, the abort, the kill) and hands the rest to [`Source::then`]. A hold or a record
/// that fails ends the run with its error (nothing after it runs): the caller steps the
/// machine with [`SourceEvent::Failed`].
async fn apply<S: Source + Send>(
    effects: Vec<SourceEffect>,
    sender: &mut StateSender,
    source: &mut S,
    reason: &str,
) -> Result<(), MigrateError> {
    let mut later = Vec::new();
    for effect in effects {
        match effect {
            SourceEffect::Freeze => source.freeze().await.map_err(step("freeze"))?,
            SourceEffect::Stop => source.stop().await.map_err(step("stop"))?,
            SourceEffect::WriteJournal(SourcePhase::Committed) => source
                .record(SourcePhase::Committed)
                .await
                .map_err(step("recording the decision"))?,
            SourceEffect::WriteJournal(phase) => source
                .record(phase)
                .await
                .map_err(step(&format!("recording {phase:?}")))?,
            SourceEffect::AbortTransfer => sender.abort(reason).await,
            SourceEffect::Thaw => {
                if let Err(e) = source.thaw().await {
                    warn!(error = %e, "the source did not resume");
                }
            }
            SourceEffect::Start => {
                if let Err(e) = source.start().await {
                    warn!(error = %e, "the source did not resume");
                }
            }
            SourceEffect::KillFrozen => source.kill().await,
            other => later.push(other),
        }
    }
    source.then(later);
    Ok(())
}

/// Names the step of the source's hold that failed.
fn step(what: &str) -> impl FnOnce(MigrateError) -> MigrateError + '_ {
    move |e| MigrateError::Step {
        what: what.to_string(),
        source: Box::new(e),
    }
}

/// Moves the state with `sender` while `source` keeps serving, and commits it on the target.
/// On failure before the commit the service is thawed (or restarted) on the source and the
/// target's staging copy is dropped; the report so far comes with the error.
pub async fn drive<S: Source + Send>(
    mut sender: StateSender,
    source: &mut S,
    input: PrecopyInput,
    requested: Option<SwitchMode>,
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
    let mut report = DriveReport::new(estimate, mode);
    // Where the move stands; every phase change is the state machine's.
    let mut state = SourceState::Rounds;
    macro_rules! fail {
        ($err:expr) => {{
            let err: MigrateError = $err;
            warn!(error = %err, "state migration failed before the commit; the source resumes");
            match source_machine::step(state, SourceEvent::Failed) {
                Ok((_, effects)) => {
                    // Resuming has no effect that fails.
                    let _ = apply(effects, &mut sender, source, &err.to_string()).await;
                }
                Err(refused) => warn!(%refused, "no resume"),
            }
            report.total_seconds = started.elapsed().as_secs_f64();
            return Err((err, report));
        }};
    }
    // One event: the next state, then its effects (a failing one fails the move from there).
    macro_rules! go {
        ($event:expr) => {{
            match source_machine::step(state, $event) {
                Ok((next, effects)) => {
                    state = next;
                    if let Err(e) = apply(effects, &mut sender, source, "").await {
                        fail!(e)
                    }
                }
                Err(refused) => fail!(MigrateError::BadState(refused.to_string())),
            }
        }};
    }
    let record = |report: &mut DriveReport, r: RoundStats| {
        report.bytes += r.bytes;
        report.wire_bytes += r.wire_bytes;
        report.rounds.push(r);
    };
    let halt = match mode {
        SwitchMode::Transitional => {
            // The last round and when it started; the start before it.
            let mut previous: Option<(RoundStats, Instant)> = None;
            let mut before: Option<Instant> = None;
            // The probe's rate for the service until rounds measure one.
            let mut rate = (input.dirty_bytes_per_s > 0.0).then_some(input.dirty_bytes_per_s);
            loop {
                let round = report.rounds.len() as u32;
                if let Some((p, began)) = &previous {
                    if p.round == 1 && p.dirty_pages > 0 {
                        // Of the pages dirtied while round 0 ran, the share that changed after
                        // round 0 read them: the model's `s`, measured.
                        let dirtied = (p.dirty_pages * BLOCK).max(p.bytes) as f64;
                        report.scan_share = Some(p.bytes as f64 / dirtied);
                    }
                    if let Some(b) = before {
                        // Round p re-sent what was dirtied since round p-1 read it: the
                        // distinct pages the probe reported, or the blocks that changed (what
                        // the probe cannot see, O_DIRECT), over the time between their starts.
                        let dirtied = (p.dirty_pages * BLOCK).max(p.bytes) as f64;
                        rate = Some(dirtied / began.duration_since(b).as_secs_f64().max(1e-3));
                    }
                    report.dirty_rates.push(rate);
                    // The check takes the model's `B_r` and `RTT` (what the last moves
                    // measured, the same as the estimate) with this move's dirty rate and round
                    // times. The line `t = o + V/B_r` through this move's live rounds after
                    // round 0 is recorded for the next moves to learn from.
                    let points: Vec<(f64, f64)> = report.rounds[1..]
                        .iter()
                        .map(|r| (r.bytes as f64, r.seconds))
                        .collect();
                    if let Some((o, br)) = precopy::fit_rounds(&points) {
                        report.round_fit = Some(RoundFit {
                            overhead_s: o,
                            bytes_per_s: br,
                        });
                    }
                    report
                        .round_bandwidths
                        .push(Some(precopy::round_bandwidth(&input)));
                    report.round_overheads_s.push(input.rtt_s);
                    if let Some(rate) = rate {
                        // After round 0, what it sent in its new state is not sent again.
                        let share = if p.round == 0 {
                            precopy::scan_share(&input)
                        } else {
                            1.0
                        };
                        let remaining = share * rate * p.seconds;
                        let prev = Some(p.bytes as f64);
                        if let Some(reason) = precopy::should_freeze(round, remaining, prev, &input)
                        {
                            report.stop = Some(reason);
                            break;
                        }
                    } else if round >= input.max_rounds {
                        report.stop = Some(StopReason::MaxRounds);
                        break;
                    }
                    before = Some(*began);
                }
                source.progress(Progress::of(&report, Phase::Round));
                let began = Instant::now();
                // Progress within the round too (round 0 of a large state takes a while).
                let counters = sender.round_counters();
                let result = {
                    let running = sender.round();
                    tokio::pin!(running);
                    let mut tick = tokio::time::interval_at(
                        tokio::time::Instant::now() + PROGRESS_EVERY,
                        PROGRESS_EVERY,
                    );
                    loop {
                        tokio::select! {
                            r = &mut running => break r,
                            _ = tick.tick() => {
                                use std::sync::atomic::Ordering::Relaxed;
                                source.progress(Progress::during(
                                    &report,
                                    counters.bytes.load(Relaxed),
                                    counters.wire_bytes.load(Relaxed),
                                    began.elapsed().as_secs_f64(),
                                ));
                            }
                        }
                    }
                };
                match result {
                    Ok(r) => {
                        previous = Some((r.clone(), began));
                        record(&mut report, r);
                    }
                    Err(e) => fail!(e),
                }
            }
            Halt::Freeze
        }
        SwitchMode::Intermittent => Halt::Stop,
    };
    // The cut-over: frozen (transitional) or stopped (intermittent), the final round, the
    // hash check.
    source.progress(Progress::of(&report, Phase::Freeze));
    let frozen_at = Instant::now();
    go!(SourceEvent::Halt(halt));
    report.cutover.freeze_s = frozen_at.elapsed().as_secs_f64();
    source.progress(Progress::of(&report, Phase::FinalRound));
    let t = Instant::now();
    match sender.final_round().await {
        Ok(r) => record(&mut report, r),
        Err(e) => fail!(e),
    }
    report.cutover.final_round_s = t.elapsed().as_secs_f64();
    source.progress(Progress::of(&report, Phase::Verify));
    let t = Instant::now();
    match sender.verify().await {
        Ok(v) => report.verify(v, t),
        Err(e) => fail!(e),
    }
    // Until the target confirms the commit and the decision is durable here, any failure gives
    // the service back to the source: the target holds its copy as prepared and never runs it
    // without the decision (see `agent.rs`), so resuming here is safe whatever it did.
    source.progress(Progress::of(&report, Phase::Commit));
    let t = Instant::now();
    match sender.commit().await {
        Ok(c) => {
            report.cutover.commit_s = t.elapsed().as_secs_f64();
            report.cutover.commit_sync_s = c.sync_seconds;
            report.cutover.commit_exchange_s = c.exchange_seconds;
            report.committed_path = Some(c.path);
        }
        Err(e) => fail!(e),
    }
    let t = Instant::now();
    go!(SourceEvent::TargetCommitted);
    report.cutover.decide_s = t.elapsed().as_secs_f64();
    // Decided: the target owns the service now. Telling it is best effort, and the hand-off,
    // sent at the same time (no round trip in between), tells it again.
    let effects = match source_machine::step(state, SourceEvent::DecisionRecorded) {
        Ok((next, effects)) => {
            state = next;
            effects
        }
        Err(refused) => fail!(MigrateError::BadState(refused.to_string())),
    };
    debug_assert_eq!(effects, [SourceEffect::TellDecided, SourceEffect::HandOff]);
    let t = Instant::now();
    let told = async {
        let r = sender.decided().await;
        (r, t.elapsed().as_secs_f64())
    };
    // The hand-off's outcome is stepped as soon as it comes, and the kill (unless given back)
    // goes at once, while the decision's acknowledgement may still be on its way; what
    // follows the kill is the caller's, after the figures.
    let handing = async {
        let handed = source.hand_over().await;
        let handoff_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let rest = match source_machine::step(state, SourceEvent::HandedOff(handed)) {
            Ok((_, effects)) => {
                let (kill, rest): (Vec<_>, Vec<_>) = effects
                    .into_iter()
                    .partition(|e| *e == SourceEffect::KillFrozen);
                if !kill.is_empty() {
                    source.kill().await;
                }
                rest
            }
            Err(refused) => {
                warn!(%refused, "no effect of the hand-off");
                Vec::new()
            }
        };
        (rest, handoff_s, t.elapsed().as_secs_f64())
    };
    let ((told, told_s), (rest, handoff_s, kill_s)) = tokio::join!(told, handing);
    if let Err(e) = told {
        warn!(error = %e, "the target did not acknowledge the decision; the hand-off repeats it");
    }
    source.then(rest);
    report.cutover.decided_s = told_s;
    report.cutover.handoff_s = handoff_s;
    report.cutover.kill_s = kill_s;
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
