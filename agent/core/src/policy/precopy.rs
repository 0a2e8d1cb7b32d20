//! The latency-aware iterative pre-copy model (MISSION.md, "Iterative pre-copy model").
//!
//! State `V0` bytes, distinct-page dirty rate `D` bytes/s, path bandwidth `B` bytes/s (after
//! compression), round-trip time `RTT`, downtime target `T_down`. Round `i` copies `V_i` and lasts
//! `t_i = V_i/B + RTT`, during which `V_{i+1} = D*t_i` is dirtied. With `q = D/B` and the latency
//! floor `V* = D*RTT/(1-q)`:
//!
//! - `V_i = V* + (V0 - V*) q^i`
//! - the frozen round may copy at most `B*(T_down - RTT)` bytes;
//! - **start**: iterate only if `q < 1`, `V* < B*(T_down - RTT)` and a stop-and-copy
//!   (`V0/B + RTT`) would exceed `T_down`; otherwise switch intermittently;
//! - **termination** before round `i`: freeze when `V_i/B + RTT <= T_down`, when `i = n_max`, or
//!   when the measured `V_i >= V_{i-1}` (not converging);
//! - **rounds**: `n = ceil( ln((B*(T_down - RTT) - V*) / (V0 - V*)) / ln q )` live rounds (0 to
//!   n-1), then round `n` with the service frozen; predicted downtime `V_n/B + RTT`.
//!
//! **Round 0 reads while the service writes.** A page dirtied during round 0 before the
//! sequential read reaches it goes out in its new state in round 0 itself, so round 1 has only
//! a share `s` of round 0's dirtied pages to send: `V_1 = s * D * (V0/B + RTT)` (later rounds
//! read a small part of the state, so their overlap is negligible). Under writes spread
//! uniformly over the state, a write lands behind the read with probability 1/2 on average
//! over the file ([`UNIFORM_SCAN_SHARE`]); a workload writing a hot set or appending at the end
//! keeps it nearer 1. With `s = 1` the formulas are MISSION's as written. From round 1 on:
//! `V_i = V* + (V_1 - V*) q^(i-1)` and the live rounds are `n = 1 + ceil( ln((B*(T_down - RTT)
//! - V*) / (V_1 - V*)) / ln q )` (`n = 1` when `V_1` fits).
//!
//! **Rounds after round 0 move scattered pages.** Round 0 streams the state in order at the
//! path's `B`; a later round sends pages spread over it (one piece per run of dirty pages, one
//! write each on both sides), which goes slower. Those rounds take `t_i = V_i/B_r + RTT` with
//! their own rate `B_r <= B` (measured; `B` until then): `q = D/B_r`, `V* = D*RTT/(1-q)` and the
//! frozen round's budget `B_r*(T_down - RTT)`; round 0 keeps `t_0 = V0/B + RTT`, and so does a
//! stop-and-copy.
//!
//! **A live round costs more than the frozen one.** Besides the round trips, a live round
//! writes the state's dirty pages back to re-arm the probe, beside a service still running: its
//! latency term is `L = RTT + o_l`, the frozen round's `RTT`. `t_i = V_i/B_r + L` and `V* =
//! D*L/(1-q)` for the live rounds; the termination check and the predicted downtime keep
//! `V_i/B_r + RTT`. With `o_l = 0`, MISSION's model.
//!
//! **The frozen round has its own rate, and the later rounds their own dirty rate.** A frozen
//! round of a few MB moves slower per byte than the live rounds' fit (`B_f <= B_r`, measured
//! across the frozen rounds of the last moves; `B_r` until then): its time is `V_n/B_f + RTT`
//! and its budget `B_f*(T_down - RTT)`. From round 2 on the rounds see pages dirtied at `D'`
//! (a short round counts a rewritten page again after each clean): `V_{i+1} = D'*(V_i/B_r +
//! L)`, simulated under the termination check when `D' != D` (`D` until measured).
//!
//! **A stop is not a freeze.** An intermittent move stops the service (SIGTERM until its
//! processes are gone) where a transitional one freezes it, and a service may take long to
//! stop (a redis writes its whole dump on SIGTERM): a stop-and-copy holds the service for
//! `stop + V0/B + RTT`, and is chosen only when that fits `T_down`. `stop` is the service's own,
//! measured at its earlier stops (0 until measured: the caller says so). Both modes start the
//! service on the target, so its start is not the model's: the caller takes it off `T_down`
//! as it does the rest of the cut-over.
//!
//! Where the probe measured a writable-working-set curve (distinct bytes dirtied against window
//! length), [`estimate_with_curve`] iterates `V_{i+1} = W(t_i)` instead of the constant rate, and
//! the estimate says which model it used.

use serde::{Deserialize, Serialize};

use super::mode::SwitchMode;

/// Inputs of the model.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct PrecopyInput {
    /// `V0`, bytes.
    pub state_bytes: f64,
    /// `D`, bytes per second.
    pub dirty_bytes_per_s: f64,
    /// `B`, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// `RTT`, seconds.
    pub rtt_s: f64,
    /// `T_down`, seconds.
    pub downtime_target_s: f64,
    /// `n_max`: live rounds at most.
    pub max_rounds: u32,
    /// `s`: the share of what round 0 lasts long enough to see dirtied that round 1 must send
    /// (the rest was dirtied before round 0's read reached it). In `(0, 1]`; 1 without overlap.
    #[serde(default = "no_overlap")]
    pub scan_share: f64,
    /// `B_r`: the rate of the rounds after round 0, bytes per second (0 or invalid: `B`).
    #[serde(default)]
    pub round_bandwidth_bytes_per_s: f64,
    /// `o_l`: what a live round costs beyond the frozen one's latency term `RTT`, seconds (the
    /// write-back that re-arms the probe, a service still running beside it); 0 by default.
    #[serde(default)]
    pub live_overhead_s: f64,
    /// `D'`: the distinct-page dirty rate from round 2 on, bytes per second (0 or invalid:
    /// `D`). Short rounds see a page rewritten between two cleans counted again each time,
    /// where the probe's longer window counted it once.
    #[serde(default)]
    pub later_dirty_bytes_per_s: f64,
    /// `B_f`: the frozen round's own rate, bytes per second (0 or invalid: `B_r`). A frozen
    /// round of a few MB moves slower per byte than the live rounds' fit says.
    #[serde(default)]
    pub frozen_bandwidth_bytes_per_s: f64,
    /// `stop`: the service's own stop (SIGTERM until its processes are gone), seconds, which
    /// only a stop-and-copy pays (a transitional move freezes it). 0: not measured (or none).
    #[serde(default)]
    pub stop_s: f64,
}

/// `stop`, made valid: positive and finite, else 0.
pub fn stop_time(input: &PrecopyInput) -> f64 {
    let s = input.stop_s;
    if s.is_finite() && s > 0.0 {
        s
    } else {
        0.0
    }
}

/// `B_f`, made valid: the frozen round's rate when positive and below `B_r`, else `B_r`.
pub(super) fn frozen_bandwidth(input: &PrecopyInput) -> f64 {
    let br = round_bandwidth(input);
    let f = input.frozen_bandwidth_bytes_per_s;
    if f.is_finite() && f > 0.0 && f < br {
        f
    } else {
        br
    }
}

/// `D'`, made valid: the later rounds' rate when positive and finite, else `D`.
pub(super) fn later_dirty_rate(input: &PrecopyInput) -> f64 {
    let d = input.later_dirty_bytes_per_s;
    if d.is_finite() && d > 0.0 {
        d
    } else {
        input.dirty_bytes_per_s
    }
}

/// What round `i + 1` sends after round `i` copied `v` bytes: `s*D*(V0/B + L)` after round
/// 0, `D*(V_1/B_r + L)` after round 1, `D'*(V_i/B_r + L)` after the later ones.
fn next_round_bytes(input: &PrecopyInput, i: u32, v: f64) -> f64 {
    match i {
        0 => first_round_dirtied(input),
        1 => input.dirty_bytes_per_s * (v / round_bandwidth(input) + live_latency(input)),
        _ => later_dirty_rate(input) * (v / round_bandwidth(input) + live_latency(input)),
    }
}

/// `L = RTT + o_l`: a live round's latency term (the frozen round's is `RTT`).
pub(super) fn live_latency(input: &PrecopyInput) -> f64 {
    let o = input.live_overhead_s;
    input.rtt_s + if o.is_finite() && o > 0.0 { o } else { 0.0 }
}

/// `B_r`, made valid: the rounds' own rate when it is positive and at most `B`, else `B`.
pub fn round_bandwidth(input: &PrecopyInput) -> f64 {
    let b = input.bandwidth_bytes_per_s;
    let r = input.round_bandwidth_bytes_per_s;
    if r.is_finite() && r > 0.0 && r < b {
        r
    } else {
        b
    }
}

/// The least-squares line `t = o + V/B_r` through rounds' `(bytes, seconds)`: `(o, B_r)`.
/// `None` with fewer than two rounds of different sizes or no positive rate; `o` is at least 0
/// (the line through the origin when the fit's `o` would be negative).
pub fn fit_rounds(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(v, t)| v.is_finite() && t.is_finite() && *v >= 0.0 && *t >= 0.0)
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mv, mt) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = pts.iter().map(|p| (p.0 - mv).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mv) * (p.1 - mt)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let (mut o, mut k) = (mt - mv * sxy / sxx, sxy / sxx);
    if o < 0.0 {
        let vv: f64 = pts.iter().map(|p| p.0 * p.0).sum();
        (o, k) = (0.0, pts.iter().map(|p| p.0 * p.1).sum::<f64>() / vv);
    }
    (k > 0.0 && k.is_finite()).then(|| (o, 1.0 / k))
}

/// `s` under writes spread uniformly over the state: on average over the file, a write during
/// round 0 lands behind the read half the time.
pub const UNIFORM_SCAN_SHARE: f64 = 0.5;

fn no_overlap() -> f64 {
    1.0
}

/// `s`, made valid: outside `(0, 1]` (or not finite) it counts as 1.
pub fn scan_share(input: &PrecopyInput) -> f64 {
    if input.scan_share.is_finite() && input.scan_share > 0.0 && input.scan_share <= 1.0 {
        input.scan_share
    } else {
        1.0
    }
}

/// `V_1 = s * D * (V0/B + RTT)`: what round 1 sends.
pub(super) fn first_round_dirtied(input: &PrecopyInput) -> f64 {
    scan_share(input)
        * input.dirty_bytes_per_s
        * (input.state_bytes / input.bandwidth_bytes_per_s + live_latency(input))
}

/// The start condition's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartDecision {
    /// Iterate: live rounds, then a short frozen round.
    Iterate,
    /// `stop + V0/B + RTT <= T_down`: stopping and copying meets the target; no iteration
    /// needed.
    StopAndCopy,
    /// `q >= 1` (or the working-set curve does not shrink): rounds never get shorter.
    NotConverging,
    /// `V* >= B*(T_down - RTT)`: latency alone keeps every round above what the frozen round
    /// may copy (includes `T_down <= RTT`).
    FloorTooHigh,
    /// A missing, negative or non-finite input, or no bandwidth.
    MissingInputs,
}

/// Why the iteration (estimated or actual) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `V_i/B + RTT <= T_down`.
    FitsDowntime,
    /// `i = n_max`.
    MaxRounds,
    /// `V_i >= V_{i-1}`.
    NotConverging,
}

/// Which dirtying model produced an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirtyModel {
    ConstantRate,
    WorkingSet,
}

/// The model's estimate and the numbers behind it, reported before a migration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct PrecopyEstimate {
    pub input: PrecopyInput,
    pub model: DirtyModel,
    /// `q = D/B`.
    pub q: Option<f64>,
    /// `V*` (constant-rate model, `q < 1`).
    pub v_floor: Option<f64>,
    /// `B*(T_down - RTT)`: the most the frozen round may copy.
    pub frozen_budget_bytes: Option<f64>,
    pub start: StartDecision,
    /// The closed form's `ln(..)/ln q` before rounding up.
    pub rounds_closed_form: Option<f64>,
    /// Live rounds `n` (0 for stop-and-copy or no iteration).
    pub live_rounds: u32,
    pub stop: Option<StopReason>,
    /// Bytes the frozen (or single stop-and-copy) round copies: `V_n`.
    pub frozen_bytes: Option<f64>,
    /// `V_n/B + RTT` (or `stop + V0/B + RTT` without iteration: a stop-and-copy).
    pub predicted_downtime_s: Option<f64>,
    /// Bytes sent over all rounds.
    pub total_bytes: Option<f64>,
    /// Wall time of all rounds, seconds.
    pub total_duration_s: Option<f64>,
    pub meets_target: bool,
    /// Live rounds a transitional move runs when asked for although the start condition says
    /// not to iterate: the model's rounds under the termination check (the target is met,
    /// `n_max`, or a round that does not shrink). `None` where the estimate iterates anyway.
    #[serde(default)]
    pub forced_live_rounds: Option<u32>,
}

/// The live rounds the termination check lets the model's rounds run from `V0` (round 0),
/// whatever the start condition says: what a transitional move asked for runs. `None` with
/// invalid inputs.
pub(super) fn transitional_rounds(input: &PrecopyInput) -> Option<u32> {
    transitional_run(input).map(|(n, _)| n)
}

/// [`transitional_rounds`] and the bytes its frozen round copies.
fn transitional_run(input: &PrecopyInput) -> Option<(u32, f64)> {
    if !inputs_valid(input) {
        return None;
    }
    let (mut prev, mut v) = (input.state_bytes, first_round_dirtied(input));
    let mut round = 1u32;
    while should_freeze(round, v, Some(prev), input).is_none() {
        (prev, v) = (v, next_round_bytes(input, round, v));
        round += 1;
        if round > input.max_rounds.saturating_add(1) {
            break;
        }
    }
    Some((round, v))
}

/// How long a move in `mode` holds the service by `e` (the service frozen or stopped until
/// the frozen round is copied), seconds: intermittent, a stop-and-copy `stop + V0/B + RTT`
/// whatever the start condition said; transitional, the frozen round after the live rounds
/// (those the termination check lets run when the start condition would not iterate), no
/// stop. `None` with invalid inputs.
pub fn predicted_hold_s(e: &PrecopyEstimate, mode: SwitchMode) -> Option<f64> {
    let input = &e.input;
    if !inputs_valid(input) {
        return None;
    }
    match mode {
        SwitchMode::Intermittent => {
            Some(stop_time(input) + input.state_bytes / input.bandwidth_bytes_per_s + input.rtt_s)
        }
        SwitchMode::Transitional if e.start == StartDecision::Iterate => e.predicted_downtime_s,
        SwitchMode::Transitional => {
            transitional_run(input).map(|(_, v)| v / frozen_bandwidth(input) + input.rtt_s)
        }
    }
}

/// `q = D/B` (`None` without bandwidth).
pub fn dirty_ratio(dirty_bytes_per_s: f64, bandwidth_bytes_per_s: f64) -> Option<f64> {
    (bandwidth_bytes_per_s > 0.0 && dirty_bytes_per_s >= 0.0)
        .then(|| dirty_bytes_per_s / bandwidth_bytes_per_s)
        .filter(|q| q.is_finite())
}

/// `V* = D*RTT/(1 - q)` (`None` when `q >= 1`).
pub fn latency_floor(
    dirty_bytes_per_s: f64,
    bandwidth_bytes_per_s: f64,
    rtt_s: f64,
) -> Option<f64> {
    let q = dirty_ratio(dirty_bytes_per_s, bandwidth_bytes_per_s)?;
    (q < 1.0).then(|| dirty_bytes_per_s * rtt_s.max(0.0) / (1.0 - q))
}

/// `V_i = V* + (V0 - V*) q^i`.
pub fn remaining_after(v0: f64, v_floor: f64, q: f64, round: u32) -> f64 {
    v_floor + (v0 - v_floor) * q.powi(round.min(i32::MAX as u32) as i32)
}

/// `B_f*(T_down - RTT)` (`B_f = B_r` unless measured).
pub fn frozen_budget(input: &PrecopyInput) -> f64 {
    frozen_bandwidth(input) * (input.downtime_target_s - input.rtt_s)
}

fn inputs_valid(i: &PrecopyInput) -> bool {
    i.state_bytes.is_finite()
        && i.state_bytes >= 0.0
        && i.dirty_bytes_per_s.is_finite()
        && i.dirty_bytes_per_s >= 0.0
        && i.bandwidth_bytes_per_s.is_finite()
        && i.bandwidth_bytes_per_s > 0.0
        && i.rtt_s.is_finite()
        && i.rtt_s >= 0.0
        && i.downtime_target_s.is_finite()
        && i.downtime_target_s >= 0.0
}

/// The start condition for the constant-rate model.
pub fn start_condition(input: &PrecopyInput) -> StartDecision {
    if !inputs_valid(input) {
        return StartDecision::MissingInputs;
    }
    let b = input.bandwidth_bytes_per_s;
    if stop_time(input) + input.state_bytes / b + input.rtt_s <= input.downtime_target_s {
        return StartDecision::StopAndCopy;
    }
    match latency_floor(
        input.dirty_bytes_per_s,
        round_bandwidth(input),
        live_latency(input),
    ) {
        None => StartDecision::NotConverging,
        Some(v) if v >= frozen_budget(input) => StartDecision::FloorTooHigh,
        Some(_) => StartDecision::Iterate,
    }
}

/// The termination check before round `round`, which would copy `remaining` bytes; `previous`
/// is what round `round - 1` copied. `Some(reason)`: freeze now and copy `remaining` in the
/// final round. Works on measured figures as well as on the model's.
pub fn should_freeze(
    round: u32,
    remaining: f64,
    previous: Option<f64>,
    input: &PrecopyInput,
) -> Option<StopReason> {
    if input.bandwidth_bytes_per_s > 0.0
        && remaining / frozen_bandwidth(input) + input.rtt_s <= input.downtime_target_s
    {
        Some(StopReason::FitsDowntime)
    } else if previous.is_some_and(|p| remaining >= p) {
        Some(StopReason::NotConverging)
    } else if round >= input.max_rounds {
        Some(StopReason::MaxRounds)
    } else {
        None
    }
}

/// Live rounds `n`: the least `n` with `V_n <= budget`, from the closed form, corrected against
/// `V_n` itself for rounding. Returns `(n, closed-form value)`; requires `0 <= q < 1` and
/// `V* < budget < V0`.
pub fn estimated_rounds(v0: f64, v_floor: f64, q: f64, budget: f64) -> Option<(u32, f64)> {
    if !(0.0..1.0).contains(&q) || v_floor >= budget || v0 <= budget {
        return None;
    }
    let raw = if q == 0.0 {
        // nothing is dirtied after round 0 except the latency term, which V* < budget covers
        1.0
    } else {
        ((budget - v_floor) / (v0 - v_floor)).ln() / q.ln()
    };
    let mut n = if raw.is_finite() {
        raw.ceil().clamp(1.0, u32::MAX as f64 / 2.0) as u32
    } else {
        1
    };
    while n < u32::MAX / 2 && remaining_after(v0, v_floor, q, n) > budget {
        n += 1;
    }
    while n > 1 && remaining_after(v0, v_floor, q, n - 1) <= budget {
        n -= 1;
    }
    Some((n, raw))
}

fn no_iteration(input: PrecopyInput, model: DirtyModel, start: StartDecision) -> PrecopyEstimate {
    let valid = inputs_valid(&input);
    let b = input.bandwidth_bytes_per_s;
    let downtime = valid.then(|| stop_time(&input) + input.state_bytes / b + input.rtt_s);
    PrecopyEstimate {
        input,
        model,
        q: dirty_ratio(input.dirty_bytes_per_s, b),
        v_floor: latency_floor(input.dirty_bytes_per_s, b, live_latency(&input)),
        frozen_budget_bytes: valid.then(|| frozen_budget(&input)),
        start,
        rounds_closed_form: None,
        live_rounds: 0,
        stop: None,
        frozen_bytes: valid.then_some(input.state_bytes),
        predicted_downtime_s: downtime,
        total_bytes: valid.then_some(input.state_bytes),
        total_duration_s: downtime,
        meets_target: downtime.is_some_and(|d| d <= input.downtime_target_s),
        forced_live_rounds: transitional_rounds(&input),
    }
}

/// The constant-rate estimate.
pub fn estimate(input: PrecopyInput) -> PrecopyEstimate {
    let start = start_condition(&input);
    if start != StartDecision::Iterate {
        return no_iteration(input, DirtyModel::ConstantRate, start);
    }
    if later_dirty_rate(&input) != input.dirty_bytes_per_s {
        return estimate_later_rate(input);
    }
    let q = input.dirty_bytes_per_s / round_bandwidth(&input);
    let v_floor = input.dirty_bytes_per_s * live_latency(&input) / (1.0 - q);
    let budget = frozen_budget(&input);
    // Round 0 copies V0; from round 1 on the geometric series starts at V_1.
    let v1 = first_round_dirtied(&input);
    let (n, raw) = if v1 <= budget {
        let raw = if q > 0.0 && v1 > v_floor {
            1.0 + ((budget - v_floor) / (v1 - v_floor)).ln() / q.ln()
        } else {
            1.0
        };
        (1, raw)
    } else {
        estimated_rounds(v1, v_floor, q, budget)
            .map(|(n, raw)| (n + 1, raw + 1.0))
            .unwrap_or((input.max_rounds, f64::NAN))
    };
    let (n, stop) = if n > input.max_rounds {
        (input.max_rounds, StopReason::MaxRounds)
    } else {
        (n, StopReason::FitsDowntime)
    };
    let vs: Vec<f64> = (0..=n)
        .map(|i| match i {
            0 => input.state_bytes,
            i => remaining_after(v1, v_floor, q, i - 1),
        })
        .collect();
    finish(
        input,
        DirtyModel::ConstantRate,
        Some(q),
        Some(v_floor),
        raw.is_finite().then_some(raw),
        &vs,
        stop,
    )
}

fn finish(
    input: PrecopyInput,
    model: DirtyModel,
    q: Option<f64>,
    v_floor: Option<f64>,
    raw: Option<f64>,
    vs: &[f64],
    stop: StopReason,
) -> PrecopyEstimate {
    let (b, br) = (input.bandwidth_bytes_per_s, round_bandwidth(&input));
    let n = vs.len().saturating_sub(1);
    let frozen = vs[n];
    let downtime = frozen / frozen_bandwidth(&input) + input.rtt_s;
    PrecopyEstimate {
        input,
        model,
        q,
        v_floor,
        frozen_budget_bytes: Some(frozen_budget(&input)),
        start: StartDecision::Iterate,
        rounds_closed_form: raw,
        live_rounds: n as u32,
        stop: Some(stop),
        frozen_bytes: Some(frozen),
        predicted_downtime_s: Some(downtime),
        total_bytes: Some(vs.iter().sum()),
        total_duration_s: Some(
            vs.iter()
                .enumerate()
                .map(|(i, v)| match i {
                    0 => v / b + live_latency(&input),
                    i if i == n => v / frozen_bandwidth(&input) + input.rtt_s,
                    _ => v / br + live_latency(&input),
                })
                .sum(),
        ),
        meets_target: downtime <= input.downtime_target_s,
        forced_live_rounds: None,
    }
}

/// The constant-rate estimate with a rate `D'` of its own from round 2 on: the rounds
/// simulated with [`should_freeze`] (`V_{i+1}` by [`next_round_bytes`]); `q` and `V*` are
/// those of `D'`, which governs the later rounds. With `D' = D` it gives the closed form's
/// rounds.
fn estimate_later_rate(input: PrecopyInput) -> PrecopyEstimate {
    let d = later_dirty_rate(&input);
    let q = dirty_ratio(d, round_bandwidth(&input));
    let v_floor = latency_floor(d, round_bandwidth(&input), live_latency(&input));
    if v_floor.is_none_or(|v| v >= frozen_budget(&input)) {
        let why = if v_floor.is_none() {
            StartDecision::NotConverging
        } else {
            StartDecision::FloorTooHigh
        };
        return no_iteration(input, DirtyModel::ConstantRate, why);
    }
    let mut vs = vec![input.state_bytes];
    let stop = loop {
        let i = vs.len() - 1;
        let prev = (i > 0).then(|| vs[i - 1]);
        if i > 0 {
            if let Some(reason) = should_freeze(i as u32, vs[i], prev, &input) {
                break reason;
            }
        }
        vs.push(next_round_bytes(&input, i as u32, vs[i]));
    };
    if stop == StopReason::NotConverging {
        vs.pop();
    }
    finish(input, DirtyModel::ConstantRate, q, v_floor, None, &vs, stop)
}

/// Distinct bytes dirtied in a window of `t` seconds, by linear interpolation of the measured
/// `[window_s, bytes]` points (through the origin; the last segment's slope beyond the end).
pub fn working_set_bytes(curve: &[[f64; 2]], t: f64) -> f64 {
    let mut pts: Vec<[f64; 2]> = curve
        .iter()
        .copied()
        .filter(|p| p[0].is_finite() && p[1].is_finite() && p[0] > 0.0 && p[1] >= 0.0)
        .collect();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
    pts.insert(0, [0.0, 0.0]);
    let t = t.max(0.0);
    let seg = pts
        .windows(2)
        .find(|w| t <= w[1][0])
        .or_else(|| pts.windows(2).last());
    match seg {
        Some(w) => {
            let (x0, y0, x1, y1) = (w[0][0], w[0][1], w[1][0], w[1][1]);
            if x1 > x0 {
                (y0 + (y1 - y0) * (t - x0) / (x1 - x0)).max(0.0)
            } else {
                y1
            }
        }
        None => 0.0,
    }
}

/// The estimate with a measured working-set curve: `V_{i+1} = W(V_i/B + RTT)`, rounds simulated
/// with [`should_freeze`]. Falls back to [`estimate`] when the curve has fewer than two usable
/// points.
pub fn estimate_with_curve(input: PrecopyInput, curve: &[[f64; 2]]) -> PrecopyEstimate {
    let usable = curve
        .iter()
        .filter(|p| p[0].is_finite() && p[1].is_finite() && p[0] > 0.0 && p[1] >= 0.0)
        .count();
    if usable < 2 {
        return estimate(input);
    }
    if !inputs_valid(&input) {
        return no_iteration(input, DirtyModel::WorkingSet, StartDecision::MissingInputs);
    }
    let b = input.bandwidth_bytes_per_s;
    if stop_time(&input) + input.state_bytes / b + input.rtt_s <= input.downtime_target_s {
        return no_iteration(input, DirtyModel::WorkingSet, StartDecision::StopAndCopy);
    }
    if frozen_budget(&input) <= 0.0 {
        return no_iteration(input, DirtyModel::WorkingSet, StartDecision::FloorTooHigh);
    }
    let mut vs = vec![input.state_bytes];
    let stop = loop {
        let i = vs.len() - 1;
        let prev = (i > 0).then(|| vs[i - 1]);
        if let Some(reason) = should_freeze(i as u32, vs[i], prev, &input) {
            break reason;
        }
        let rate = if i == 0 { b } else { round_bandwidth(&input) };
        let dirtied = working_set_bytes(curve, vs[i] / rate + live_latency(&input));
        vs.push(if i == 0 {
            scan_share(&input) * dirtied
        } else {
            dirtied
        });
    };
    if stop == StopReason::NotConverging && vs.len() == 2 {
        // the very first round does not shrink: iterating is pointless
        return no_iteration(input, DirtyModel::WorkingSet, StartDecision::NotConverging);
    }
    if stop == StopReason::NotConverging {
        // freeze at the smaller of the last two
        vs.pop();
    }
    let q = dirty_ratio(input.dirty_bytes_per_s, b);
    finish(input, DirtyModel::WorkingSet, q, None, None, &vs, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    fn input(v0: f64, d: f64, b: f64, rtt: f64, t: f64) -> PrecopyInput {
        PrecopyInput {
            state_bytes: v0,
            dirty_bytes_per_s: d,
            bandwidth_bytes_per_s: b,
            rtt_s: rtt,
            downtime_target_s: t,
            max_rounds: 30,
            scan_share: 1.0,
            round_bandwidth_bytes_per_s: 0.0,
            live_overhead_s: 0.0,
            later_dirty_bytes_per_s: 0.0,
            frozen_bandwidth_bytes_per_s: 0.0,
            stop_s: 0.0,
        }
    }

    #[test]
    fn a_later_rate_of_its_own_drives_the_rounds_from_round_2() {
        // The 1 GiB move at 1 Gbit/s and 20 MB/s: s = 1/2, B_r = 98 MB/s, o_l = 13 ms.
        let mut i = input(1073.7 * MB, 20.6 * MB, 113.0 * MB, 0.0115, 0.0628);
        (
            i.scan_share,
            i.round_bandwidth_bytes_per_s,
            i.live_overhead_s,
        ) = (0.5, 98.0 * MB, 0.013);
        let closed = estimate(i);
        // D' = D through the simulation: the closed form's rounds and frozen round.
        let same = estimate_later_rate(i);
        assert_eq!(same.live_rounds, closed.live_rounds);
        let rel = |a: f64, b: f64| (a - b).abs() / b;
        assert!(rel(same.frozen_bytes.unwrap(), closed.frozen_bytes.unwrap()) < 1e-9);
        // V_2 = D*(V_1/B_r + L), then V_3 = D'*(V_2/B_r + L): 16% faster later rounds
        // push V_3 past the frozen budget, and one more round runs.
        i.later_dirty_bytes_per_s = 23.9 * MB;
        let later = estimate(i);
        let v1 = first_round_dirtied(&i);
        let v2 = 20.6 * MB * (v1 / (98.0 * MB) + 0.0115 + 0.013);
        let v3 = 23.9 * MB * (v2 / (98.0 * MB) + 0.0115 + 0.013);
        assert!(v3 > frozen_budget(&i), "{v3} {}", frozen_budget(&i));
        assert_eq!(closed.live_rounds, 3, "{closed:?}");
        assert_eq!(later.live_rounds, 4, "{later:?}");
        assert!(later.q.unwrap() > closed.q.unwrap());
        // What a forced transitional move runs follows the same rounds.
        assert_eq!(transitional_rounds(&i), Some(4));
    }

    #[test]
    fn the_frozen_round_takes_its_own_rate() {
        let mut i = input(1073.7 * MB, 20.6 * MB, 125.0 * MB, 0.0171, 0.0651);
        (i.scan_share, i.round_bandwidth_bytes_per_s) = (0.5, 117.5 * MB);
        // At B_r the 5.0 MB round fits 65 ms (42.6 + 17.1 ms); at B_f = 88.6 MB/s it does not.
        assert_eq!(
            should_freeze(3, 5.0 * MB, Some(18.4 * MB), &i),
            Some(StopReason::FitsDowntime)
        );
        let at_br = estimate(i);
        i.frozen_bandwidth_bytes_per_s = 88.6 * MB;
        assert_eq!(should_freeze(3, 5.0 * MB, Some(18.4 * MB), &i), None);
        assert!((frozen_budget(&i) - 88.6 * MB * (0.0651 - 0.0171)).abs() < 1.0);
        let at_bf = estimate(i);
        assert!(at_bf.live_rounds >= at_br.live_rounds);
        let frozen = at_bf.frozen_bytes.unwrap();
        assert!(
            (at_bf.predicted_downtime_s.unwrap() - (frozen / (88.6 * MB) + 0.0171)).abs() < 1e-9
        );
        // A B_f above B_r is no slower: B_r stands.
        i.frozen_bandwidth_bytes_per_s = 200.0 * MB;
        assert_eq!(frozen_bandwidth(&i), 117.5 * MB);
    }

    #[test]
    fn formulas_table() {
        // D = 10 MB/s, B = 100 MB/s, RTT = 0.1 s: q = 0.1, V* = 1 MB / 0.9
        let q = dirty_ratio(10.0 * MB, 100.0 * MB).unwrap();
        assert!((q - 0.1).abs() < 1e-15);
        let vf = latency_floor(10.0 * MB, 100.0 * MB, 0.1).unwrap();
        assert!((vf - MB / 0.9).abs() < 1e-6);
        // V0 = 1000 MB: V_1 = D*(V0/B + RTT) = 10 MB/s * 10.1 s = 101 MB
        let v1 = remaining_after(1000.0 * MB, vf, q, 1);
        assert!((v1 - 101.0 * MB).abs() < 1e-3, "{v1}");
        // V_2 = D*(V1/B + RTT) = 10 * (1.01 + 0.1) = 11.1 MB
        let v2 = remaining_after(1000.0 * MB, vf, q, 2);
        assert!((v2 - 11.1 * MB).abs() < 1e-3, "{v2}");
        assert_eq!(remaining_after(5.0, 1.0, 0.5, 0), 5.0);
        // q >= 1: no floor; no bandwidth: no q
        assert_eq!(latency_floor(2.0, 1.0, 0.1), None);
        assert_eq!(dirty_ratio(1.0, 0.0), None);
    }

    #[test]
    fn rounds_and_downtime() {
        // T_down = 0.5 s: budget = 100 MB/s * 0.4 s = 40 MB.
        // V0 = 1000 MB, V1 = 101 MB, V2 = 11.1 MB <= 40 MB => n = 2 live rounds.
        // closed form: ln((40 - 1.111)/(1000 - 1.111)) / ln 0.1 = 1.4097 -> 2
        let e = estimate(input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5));
        assert_eq!(e.start, StartDecision::Iterate);
        assert_eq!(e.live_rounds, 2);
        assert!((e.rounds_closed_form.unwrap() - 1.4097).abs() < 1e-3);
        assert!((e.frozen_bytes.unwrap() - 11.1 * MB).abs() < 1e-3);
        // downtime = 11.1/100 + 0.1 = 0.211 s
        assert!((e.predicted_downtime_s.unwrap() - 0.211).abs() < 1e-9);
        assert!((e.total_bytes.unwrap() - 1112.1 * MB).abs() < 1e-2);
        assert!(e.meets_target);
        assert_eq!(e.stop, Some(StopReason::FitsDowntime));
        // the closed form agrees with the termination check run round by round
        let inp = e.input;
        let mut i = 0;
        let mut prev = None;
        let vf = e.v_floor.unwrap();
        loop {
            let v = remaining_after(inp.state_bytes, vf, 0.1, i);
            if should_freeze(i, v, prev, &inp).is_some() {
                break;
            }
            prev = Some(v);
            i += 1;
        }
        assert_eq!(i, e.live_rounds);
    }

    #[test]
    fn round_zero_sends_what_was_dirtied_before_its_read() {
        // s = 1/2: V_1 = 0.5 * 10 MB/s * 10.1 s = 50.5 MB.
        let half = |t| PrecopyInput {
            scan_share: 0.5,
            ..input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, t)
        };
        assert!((first_round_dirtied(&half(0.5)) - 50.5 * MB).abs() < 1e-3);
        // T_down = 0.61 s: budget 51 MB >= 50.5 MB, so one live round (s = 1: 101 MB, two).
        let e = estimate(half(0.61));
        assert_eq!((e.start, e.live_rounds), (StartDecision::Iterate, 1));
        assert!((e.frozen_bytes.unwrap() - 50.5 * MB).abs() < 1e-3);
        assert!((e.predicted_downtime_s.unwrap() - 0.605).abs() < 1e-9);
        assert_eq!(
            estimate(input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.61)).live_rounds,
            2
        );
        // T_down = 0.2 s: budget 10 MB; V_2 = V* + (V_1 - V*) q = 1.111 + 4.939 = 6.05 MB.
        // Closed form: 1 + ln((10 - 1.111)/(50.5 - 1.111)) / ln 0.1 = 1.7447 -> 2.
        let e = estimate(half(0.2));
        assert_eq!(e.live_rounds, 2);
        assert!((e.rounds_closed_form.unwrap() - 1.7447).abs() < 1e-3);
        assert!((e.frozen_bytes.unwrap() - 6.05 * MB).abs() < 1e-2 * MB);
        assert!((e.total_bytes.unwrap() - (1000.0 + 50.5 + 6.05) * MB).abs() < 1e-2 * MB);
        // The estimate agrees with the termination check run round by round, as the driver
        // runs it: round 0's dirtied bytes times s, later rounds' in full.
        for t in [0.15, 0.2, 0.3, 0.61, 1.0, 5.0] {
            let inp = half(t);
            let e = estimate(inp);
            if e.start != StartDecision::Iterate {
                continue;
            }
            let (mut i, mut v) = (0u32, inp.state_bytes);
            loop {
                let share = if i == 0 { 0.5 } else { 1.0 };
                let next =
                    share * inp.dirty_bytes_per_s * (v / inp.bandwidth_bytes_per_s + inp.rtt_s);
                i += 1;
                if should_freeze(i, next, Some(v), &inp).is_some() {
                    break;
                }
                v = next;
            }
            assert_eq!(i, e.live_rounds, "T_down {t}");
        }
        // Out of range: as without overlap.
        for bad in [0.0, -1.0, 2.0, f64::NAN] {
            let e = estimate(PrecopyInput {
                scan_share: bad,
                ..input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5)
            });
            assert_eq!(e.live_rounds, 2);
        }
    }

    #[test]
    fn later_rounds_at_their_own_rate() {
        // B = 100 MB/s for round 0, B_r = 50 MB/s after: q = 0.2, V* = 10 * 0.1 / 0.8 = 1.25 MB.
        let inp = PrecopyInput {
            round_bandwidth_bytes_per_s: 50.0 * MB,
            ..input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5)
        };
        assert_eq!(round_bandwidth(&inp), 50.0 * MB);
        // V_1 = 10 * 10.1 = 101 MB (round 0 at B); V_2 = 10 * (101/50 + 0.1) = 21.2 MB;
        // budget 50 * 0.4 = 20 MB < 21.2: V_3 = 10 * (0.424 + 0.1) = 5.24 MB.
        let e = estimate(inp);
        assert_eq!(e.live_rounds, 3);
        assert!((e.frozen_bytes.unwrap() - 5.24 * MB).abs() < 1e-3 * MB);
        assert!((e.predicted_downtime_s.unwrap() - (5.24 / 50.0 + 0.1)).abs() < 1e-6);
        assert!((e.frozen_budget_bytes.unwrap() - 20.0 * MB).abs() < 1.0);
        // Round 0 at B, the others at B_r.
        let want = 10.1 + (101.0 / 50.0 + 0.1) + (21.2 / 50.0 + 0.1) + (5.24 / 50.0 + 0.1);
        assert!((e.total_duration_s.unwrap() - want).abs() < 1e-3);
        // A B_r above B, or none, is B.
        for r in [0.0, -1.0, 200.0 * MB, f64::NAN] {
            let i = PrecopyInput {
                round_bandwidth_bytes_per_s: r,
                ..inp
            };
            assert_eq!(round_bandwidth(&i), 100.0 * MB);
        }
    }

    #[test]
    fn live_rounds_pay_their_own_overhead_and_the_frozen_one_only_the_rtt() {
        // RTT 0.1 s, o_l 0.4 s: L = 0.5 s. V_1 = 10 * (10 + 0.5) = 105 MB; V* = 10 * 0.5 / 0.9.
        let inp = PrecopyInput {
            live_overhead_s: 0.4,
            ..input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5)
        };
        assert!((live_latency(&inp) - 0.5).abs() < 1e-12);
        let e = estimate(inp);
        // V_2 = 10 * (1.05 + 0.5) = 15.5 MB <= budget 100 * (0.5 - 0.1) = 40 MB: two live rounds.
        assert_eq!(e.live_rounds, 2);
        assert!((e.v_floor.unwrap() - 5.0 * MB / 0.9).abs() < 1.0);
        assert!((e.frozen_bytes.unwrap() - 15.5 * MB).abs() < 1e-3 * MB);
        // The frozen round: its bytes and the RTT only.
        assert!((e.predicted_downtime_s.unwrap() - (0.155 + 0.1)).abs() < 1e-9);
        let want = (10.0 + 0.5) + (1.05 + 0.5) + (0.155 + 0.1);
        assert!((e.total_duration_s.unwrap() - want).abs() < 1e-9);
        // Negative or invalid: none.
        for bad in [-1.0, f64::NAN] {
            let i = PrecopyInput {
                live_overhead_s: bad,
                ..inp
            };
            assert_eq!(live_latency(&i), 0.1);
        }
    }

    #[test]
    fn a_forced_transitional_move_is_predicted_too() {
        // V* = 40 MB >= the budget (10 MB): no iteration by the start condition, but a
        // transitional move asked for runs until n_max (the rounds shrink towards V*, never
        // under the budget).
        let e = estimate(input(1000.0 * MB, 50.0 * MB, 100.0 * MB, 0.4, 0.5));
        assert_eq!((e.start, e.live_rounds), (StartDecision::FloorTooHigh, 0));
        assert_eq!(e.forced_live_rounds, Some(30));
        // Stop-and-copy fits: a transitional move still runs round 0, then freezes.
        let e = estimate(input(5.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5));
        assert_eq!(e.start, StartDecision::StopAndCopy);
        assert_eq!(e.forced_live_rounds, Some(1));
        // Iterating: none (the estimate is the transitional one).
        let e = estimate(input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5));
        assert_eq!(e.forced_live_rounds, None);
    }

    #[test]
    fn rounds_fit_a_line() {
        // t = 0.02 + V / 80 MB/s exactly.
        let pts: Vec<(f64, f64)> = [100.0, 20.0, 4.0, 1.0]
            .iter()
            .map(|v| (v * MB, 0.02 + v / 80.0))
            .collect();
        let (o, b) = fit_rounds(&pts).unwrap();
        assert!(
            (o - 0.02).abs() < 1e-9 && (b - 80.0 * MB).abs() < 1.0,
            "{o} {b}"
        );
        // A negative intercept: the line through the origin.
        let (o, b) = fit_rounds(&[(10.0 * MB, 0.05), (20.0 * MB, 0.2)]).unwrap();
        assert_eq!(o, 0.0);
        assert!(b > 0.0);
        // Too few points, or all the same size, or times falling with size: no fit.
        assert_eq!(fit_rounds(&[(1.0, 1.0)]), None);
        assert_eq!(fit_rounds(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(fit_rounds(&[(1.0, 2.0), (2.0, 1.0)]), None);
    }

    #[test]
    fn start_condition_edges() {
        // V0 small: stop-and-copy fits (5 MB / 100 MB/s + 0.1 = 0.15 s <= 0.5 s)
        let e = estimate(input(5.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5));
        assert_eq!(e.start, StartDecision::StopAndCopy);
        assert_eq!(e.live_rounds, 0);
        assert!((e.predicted_downtime_s.unwrap() - 0.15).abs() < 1e-12);
        // q >= 1
        let e = estimate(input(1000.0 * MB, 100.0 * MB, 100.0 * MB, 0.1, 0.5));
        assert_eq!(e.start, StartDecision::NotConverging);
        // V* too large: D = 50 MB/s, RTT = 0.4 s -> V* = 40 MB >= budget 100 * 0.1 = 10 MB
        let e = estimate(input(1000.0 * MB, 50.0 * MB, 100.0 * MB, 0.4, 0.5));
        assert_eq!(e.start, StartDecision::FloorTooHigh);
        // T_down <= RTT
        let e = estimate(input(1000.0 * MB, 0.0, 100.0 * MB, 0.6, 0.5));
        assert_eq!(e.start, StartDecision::FloorTooHigh);
        // missing inputs
        for bad in [
            input(1000.0, 1.0, 0.0, 0.1, 0.5),
            input(f64::NAN, 1.0, 10.0, 0.1, 0.5),
            input(1000.0, -1.0, 10.0, 0.1, 0.5),
        ] {
            let e = estimate(bad);
            assert_eq!(e.start, StartDecision::MissingInputs);
        }
        // D = 0: one live round, then nothing but the RTT
        let e = estimate(input(1000.0 * MB, 0.0, 100.0 * MB, 0.1, 0.5));
        assert_eq!((e.start, e.live_rounds), (StartDecision::Iterate, 1));
        assert!((e.predicted_downtime_s.unwrap() - 0.1).abs() < 1e-12);
    }

    #[test]
    fn max_rounds_caps_the_estimate() {
        // q = 0.9: V* = 90 MB/s * 0.001 s / 0.1 = 0.9 MB, budget 4.9 MB: n = 53 > 5
        let mut inp = input(1000.0 * MB, 90.0 * MB, 100.0 * MB, 0.001, 0.05);
        inp.max_rounds = 5;
        let e = estimate(inp);
        assert_eq!(e.stop, Some(StopReason::MaxRounds));
        assert_eq!(e.live_rounds, 5);
        assert!(!e.meets_target);
    }

    #[test]
    fn termination_checks() {
        let inp = input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5);
        assert_eq!(should_freeze(0, 1000.0 * MB, None, &inp), None);
        assert_eq!(
            should_freeze(1, 40.0 * MB, Some(100.0 * MB), &inp),
            Some(StopReason::FitsDowntime)
        );
        assert_eq!(
            should_freeze(1, 120.0 * MB, Some(100.0 * MB), &inp),
            Some(StopReason::NotConverging)
        );
        assert_eq!(
            should_freeze(30, 50.0 * MB, Some(60.0 * MB), &inp),
            Some(StopReason::MaxRounds)
        );
    }

    #[test]
    fn a_service_slow_to_stop_is_not_stopped_and_copied_and_its_stop_is_in_the_hold() {
        // A redis with 5 MB of AOF, 1 MB/s of writes, over 100 MB/s: copying it stopped takes
        // 51 ms, well inside a 250 ms budget ...
        let quick = input(5.0 * MB, 1.0 * MB, 100.0 * MB, 0.001, 0.25);
        let e = estimate(quick);
        assert_eq!(e.start, StartDecision::StopAndCopy);
        assert!((e.predicted_downtime_s.unwrap() - 0.051).abs() < 1e-9);
        assert_eq!(
            predicted_hold_s(&e, SwitchMode::Intermittent),
            e.predicted_downtime_s
        );
        // ... but its SIGTERM writes a full dump first: 0.85 s measured at its last stops.
        // Stopping it no longer fits, iterating does (a frozen service is not stopped).
        let slow = PrecopyInput {
            stop_s: 0.85,
            ..quick
        };
        let e = estimate(slow);
        assert_eq!(e.start, StartDecision::Iterate);
        let frozen = predicted_hold_s(&e, SwitchMode::Transitional).unwrap();
        assert!(frozen < 0.25, "{frozen}");
        assert_eq!(e.predicted_downtime_s, Some(frozen));
        // Forced intermittent, the hold is the stop and the copy.
        let held = predicted_hold_s(&e, SwitchMode::Intermittent).unwrap();
        assert!((held - 0.901).abs() < 1e-9, "{held}");
        // No iteration possible (q >= 1): stopped anyway, and the estimate says how long.
        let e = estimate(PrecopyInput {
            dirty_bytes_per_s: 200.0 * MB,
            ..slow
        });
        assert_eq!(e.start, StartDecision::NotConverging);
        assert!((e.predicted_downtime_s.unwrap() - 0.901).abs() < 1e-9);
        assert!(!e.meets_target);
        // A transitional move asked for where stopping would fit: its frozen round, no stop.
        let e = estimate(PrecopyInput {
            stop_s: 0.01,
            ..quick
        });
        assert_eq!(e.start, StartDecision::StopAndCopy);
        let t = predicted_hold_s(&e, SwitchMode::Transitional).unwrap();
        assert!(t < 0.01, "{t}");
        // Nonsense is no stop; invalid inputs no hold.
        for bad in [f64::NAN, -1.0, f64::INFINITY] {
            assert_eq!(
                stop_time(&PrecopyInput {
                    stop_s: bad,
                    ..quick
                }),
                0.0
            );
        }
        let e = estimate(PrecopyInput {
            bandwidth_bytes_per_s: 0.0,
            ..slow
        });
        assert_eq!(predicted_hold_s(&e, SwitchMode::Intermittent), None);
    }

    #[test]
    fn working_set_curve() {
        let curve = [[1.0, 10.0 * MB], [10.0, 20.0 * MB]];
        assert_eq!(working_set_bytes(&curve, 0.5), 5.0 * MB);
        assert!((working_set_bytes(&curve, 5.5) - 15.0 * MB).abs() < 1e-6);
        assert!((working_set_bytes(&curve, 19.0) - 30.0 * MB).abs() < 1e-6);
        // a hot set saturates: V1 = W(10.1 s) = 20.111 MB, which fits the 40 MB budget
        let e = estimate_with_curve(input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5), &curve);
        assert_eq!(e.model, DirtyModel::WorkingSet);
        assert_eq!(e.live_rounds, 1);
        assert!((e.frozen_bytes.unwrap() - (20.0 + 0.1 * 10.0 / 9.0) * MB).abs() < 1.0);
        // one point: constant rate
        let e = estimate_with_curve(
            input(1000.0 * MB, 10.0 * MB, 100.0 * MB, 0.1, 0.5),
            &[[1.0, 1.0]],
        );
        assert_eq!(e.model, DirtyModel::ConstantRate);
    }
}
