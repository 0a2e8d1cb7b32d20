//! What the pre-copy model learns from this node's committed moves: a move's report turned into
//! an [`Observed`]. The figures and the medians over them are pure and live in the core
//! (`godwit_core::policy::learned`), with the model.

use super::drive::DriveReport;

pub(crate) use godwit_core::policy::learned::*;

/// What the model learns from one committed move: `t` is its report, `probe_rate` the
/// service's dirty rate as the probe saw it before the move.
pub(super) fn observed(t: &DriveReport, probe_rate: f64) -> Observed {
    let rate = t
        .round_fit
        .map(|f| f.bytes_per_s)
        .unwrap_or(t.estimate.input.bandwidth_bytes_per_s);
    let frozen = t
        .rounds
        .last()
        .filter(|_| rate > 0.0)
        .map(|r| (t.cutover.final_round_s - r.bytes as f64 / rate).clamp(0.0, 1.0));
    // The service's own stop and start are its own figures (learned per service by the
    // runtime), not the node's: the cut-over's cost is what is left.
    let own = t.cutover.stop_s.unwrap_or(0.0) + t.cutover.target_start_s.unwrap_or(0.0);
    Observed {
        cutover_s: (t.frozen_seconds - t.cutover.final_round_s - own).clamp(0.0, 1.0),
        frozen_overhead_s: frozen,
        live_overhead_s: t
            .round_fit
            .zip(frozen)
            .map(|(f, o)| (f.overhead_s - o).clamp(0.0, 1.0)),
        round_bytes_per_s: t.round_fit.map(|f| f.bytes_per_s),
        dirty_extra: median(t.dirty_rates.iter().skip(2).copied())
            .map(|m| m - probe_rate)
            .filter(|_| probe_rate > 0.0),
        frozen_round: t
            .rounds
            .last()
            .filter(|_| t.rounds.len() > 1)
            .map(|r| (r.bytes as f64, t.cutover.final_round_s)),
        dirty_later_ratio: median(t.dirty_rates.iter().skip(2).copied())
            .filter(|_| probe_rate > 0.0)
            .map(|m| m / probe_rate),
        scan_bytes: t.scan_share.and_then(|_| {
            let r1 = t.rounds.get(1)?;
            let dirtied = (r1.dirty_pages * super::scan::BLOCK).max(r1.bytes);
            Some((r1.bytes as f64, dirtied as f64))
        }),
    }
}
