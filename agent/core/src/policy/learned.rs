//! The pre-copy model's figures as a node learns them from its last committed moves
//! ([`Observed`], and the medians over them that the next estimate takes). The migrate crate
//! turns a move's report into an `Observed`; everything after that is pure and lives here
//! with the model ([`super::estimate`](fn@super::estimate)).

use std::collections::VecDeque;

use serde::Serialize;

/// The cut-over's cost outside the frozen round's copy (freeze, hash check, commit, decision,
/// hand-off) assumed before this node has measured one, seconds.
pub const DEFAULT_CUTOVER_S: f64 = 0.05;
/// A round's own cost beyond moving its bytes (listing, the probe's flush, write-back, round
/// trips) assumed before this node has measured one, seconds: the model's latency term adds
/// it to the path's RTT.
pub const DEFAULT_ROUND_OVERHEAD_S: f64 = 0.02;
/// The bytes dirtied during rounds 0 of the last moves below which their `s` is not taken.
pub const SCAN_SHARE_EVIDENCE: f64 = 64e6;
/// What a live round costs beyond the frozen one (writing the dirty pages back, a running
/// service beside it) assumed before this node has measured one, seconds.
pub const DEFAULT_LIVE_OVERHEAD_S: f64 = 0.015;

/// What the pre-copy model takes from one committed move from this node: the next moves use
/// the medians over the last [`LEARN_FROM`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Observed {
    /// The cut-over's cost outside the frozen round's copy, seconds.
    pub cutover_s: f64,
    /// The frozen round's fixed cost (the RTT in it): its time beyond its bytes at `B_r`.
    pub frozen_overhead_s: Option<f64>,
    /// What a live round after round 0 costs beyond that (the fit's fixed cost less the
    /// frozen round's), seconds.
    pub live_overhead_s: Option<f64>,
    /// The rate of the rounds after round 0, bytes per second.
    pub round_bytes_per_s: Option<f64>,
    /// What round 1 sent and what the probe saw dirtied while round 0 ran, bytes: the model's
    /// `s` is their ratio.
    pub scan_bytes: Option<(f64, f64)>,
    /// How much faster the rounds after round 1 saw pages dirtied than the probe's rate for
    /// the service before the move (the median over them), bytes per second: pages a service
    /// rewrites (a hot set) stay dirty between the kernel's write-backs, so the probe counts
    /// them once per write-back, while every round cleans them and counts them again.
    /// Recorded, not used: added to `D` it also inflated round 1, where a long round 0 counts
    /// a hot page once, and the estimate got worse.
    pub dirty_extra: Option<f64>,
    /// The same rounds' rate over the probe's (the median over them): the model's `D'/D`,
    /// the rate it takes from round 2 on (round 1 keeps `D`).
    pub dirty_later_ratio: Option<f64>,
    /// The frozen round: bytes and seconds. Across moves whose frozen rounds differ in size
    /// they give the frozen round's own rate and fixed cost.
    pub frozen_round: Option<(f64, f64)>,
}

/// Committed moves the model learns from.
pub const LEARN_FROM: usize = 5;

/// The frozen rounds' line `t = o_f + V/B_f` through `(bytes, seconds)` points, when their
/// sizes differ by half or more and the rate is positive and below the live rounds' `br`
/// (0: unknown).
pub fn frozen_fit(points: &[(f64, f64)], br: f64) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(v, t)| *v > 0.0 && *t > 0.0)
        .collect();
    let (lo, hi) = points.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (v, _)| {
        (lo.min(*v), hi.max(*v))
    });
    if points.len() < 2 || hi < 1.5 * lo {
        return None;
    }
    super::fit_rounds(&points).filter(|(_, b)| b.is_finite() && *b > 0.0 && (br <= 0.0 || *b < br))
}

/// The median of the values present, if any.
pub fn median(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The cut-over's cost outside the frozen round's copy: the median over the last committed
/// migrations from this node of what they spent frozen beyond their frozen round, or
/// [`DEFAULT_CUTOVER_S`].
pub fn expected_cutover_s(learned: &VecDeque<Observed>) -> f64 {
    median(learned.iter().map(|o| Some(o.cutover_s))).unwrap_or(DEFAULT_CUTOVER_S)
}

/// The frozen round's own cost beyond moving its bytes (less the path's RTT now, which
/// the model adds): the median over the last committed migrations from this node, or
/// [`DEFAULT_ROUND_OVERHEAD_S`].
pub fn expected_round_overhead_s(learned: &VecDeque<Observed>, rtt_s: f64) -> f64 {
    median(learned.iter().map(|o| o.frozen_overhead_s))
        .map(|o| (o - rtt_s).clamp(0.0, 1.0))
        .unwrap_or(DEFAULT_ROUND_OVERHEAD_S)
}

/// What a live round costs beyond the frozen one: the median over the last committed
/// migrations from this node, or [`DEFAULT_LIVE_OVERHEAD_S`].
pub fn expected_live_overhead_s(learned: &VecDeque<Observed>) -> f64 {
    median(learned.iter().map(|o| o.live_overhead_s)).unwrap_or(DEFAULT_LIVE_OVERHEAD_S)
}

/// The frozen round's fixed cost and rate `(o_f, B_f)`: the least-squares line through
/// the last committed migrations' frozen rounds when their sizes differ by half or more
/// (else a line through near-equal sizes is noise) and it gives a positive rate; `None`
/// otherwise (the fixed cost is then learned at the live rounds' `B_r`).
pub fn expected_frozen_fit(learned: &VecDeque<Observed>) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = learned.iter().filter_map(|o| o.frozen_round).collect();
    frozen_fit(&points, expected_round_bandwidth(learned))
}

/// `D'/D`, the dirty rate from round 2 on over the probe's: the median over the last
/// committed migrations from this node that ran rounds past round 2, within 0.5 to 2. Before
/// any move has taught it, from the share of the state's pages dirty in the page cache now
/// (`dirty_share`, measured just before the move): writes to a page already dirty raise no
/// fault and no page-cache event, so the probe sees `D = D'(1 - share)` of the rate `D'` at
/// which the rounds, which clean what they send, find pages changed; within 1 to 2. 1 (the
/// model's `D` throughout) when neither is known.
pub fn later_dirty_ratio(learned: &VecDeque<Observed>, dirty_share: Option<f64>) -> f64 {
    match median(learned.iter().map(|o| o.dirty_later_ratio)) {
        Some(r) => r.clamp(0.5, 2.0),
        None => dirty_share
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1.0)
            .map_or(1.0, |f| (1.0 / (1.0 - f)).clamp(1.0, 2.0)),
    }
}

/// The rate of the rounds after round 0 (scattered pages): the median of the last committed
/// migrations' fits, or 0 (the model then takes the path's).
pub fn expected_round_bandwidth(learned: &VecDeque<Observed>) -> f64 {
    median(learned.iter().map(|o| o.round_bytes_per_s)).unwrap_or(0.0)
}

/// The model's `s` (the share of round 0's dirtied pages that round 1 sends): over the
/// last committed migrations, what their rounds 1 sent over what their rounds 0 saw
/// dirtied (weighted by volume: a move that dirtied little says little, and a median of
/// ratios took a near-idle move's 0.09 for a 5 MB/s one), or the uniform-writes value
/// while they dirtied less than [`SCAN_SHARE_EVIDENCE`] in all.
pub fn expected_scan_share(learned: &VecDeque<Observed>) -> f64 {
    let (sent, dirtied) = learned
        .iter()
        .filter_map(|o| o.scan_bytes)
        .fold((0.0, 0.0), |(a, b), (s, d)| (a + s, b + d));
    if dirtied >= SCAN_SHARE_EVIDENCE {
        (sent / dirtied).clamp(0.05, 1.0)
    } else {
        super::UNIFORM_SCAN_SHARE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_move_the_later_rate_comes_from_the_dirty_share() {
        let none = VecDeque::new();
        assert_eq!(later_dirty_ratio(&none, None), 1.0);
        // 15% of the state dirty: the probe sees 85% of what the rounds will.
        assert!((later_dirty_ratio(&none, Some(0.15)) - 1.0 / 0.85).abs() < 1e-12);
        assert_eq!(later_dirty_ratio(&none, Some(0.9)), 2.0);
        assert_eq!(later_dirty_ratio(&none, Some(f64::NAN)), 1.0);
        // What moves taught wins over the measure.
        let learned: VecDeque<Observed> = [Observed {
            dirty_later_ratio: Some(1.3),
            ..Observed::default()
        }]
        .into();
        assert_eq!(later_dirty_ratio(&learned, Some(0.15)), 1.3);
    }

    #[test]
    fn the_frozen_rounds_own_rate_comes_from_rounds_of_different_sizes() {
        const MB: f64 = 1e6;
        // Four moves at 5 MB/s froze 1.4 MB in 30 ms; one at 20 MB/s froze 4.5 MB in 65 ms.
        let mut points = vec![(1.4 * MB, 0.030); 4];
        points.push((4.5 * MB, 0.065));
        let (o, b) = frozen_fit(&points, 117.5 * MB).unwrap();
        assert!((b / MB - 88.6).abs() < 1.0, "{b}");
        assert!((o - 0.0142).abs() < 0.001, "{o}");
        // Rounds of about one size say nothing of a rate.
        assert_eq!(
            frozen_fit(&[(4.5 * MB, 0.065), (4.0 * MB, 0.06)], 0.0),
            None
        );
        assert_eq!(frozen_fit(&points[..1], 0.0), None);
        // A frozen round no slower than the live rounds: their rate stands.
        assert_eq!(frozen_fit(&points, 80.0 * MB), None);
    }
}
