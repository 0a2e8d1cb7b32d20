//! How a service switches: the target's class label and the switch mode.
//!
//! - Class label: positive iff `p90(past transitional switch latencies of the target) <= L_max`
//!   (no history: positive). The percentile is nearest-rank: the `ceil(0.9 * n)`-th smallest.
//! - Mode (composite): a positive target gets a **transitional** switch (make-before-break,
//!   iterative pre-copy then a short frozen round) when the pre-copy start condition says
//!   iterating is worthwhile; every other case is **intermittent** (break-before-make: stop,
//!   copy, start), namely a negative label, a stop-and-copy that already meets the downtime
//!   target, `q >= 1`, a latency floor `V*` too large, or unknown inputs.

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::precopy::{PrecopyEstimate, StartDecision};

/// A target's class label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassLabel {
    Positive,
    Negative,
}

/// The switch mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchMode {
    /// Make-before-break: the source serves while state is copied; a short frozen cut-over.
    Transitional,
    /// Break-before-make: stop, copy, start.
    Intermittent,
}

/// The label and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct LabelWhy {
    pub label: ClassLabel,
    /// p90 of the finite latencies (`None`: no history).
    pub p90_s: Option<f64>,
    pub samples: usize,
    pub latency_max_s: f64,
}

/// The mode and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ModeWhy {
    pub mode: SwitchMode,
    pub label: LabelWhy,
    pub precopy: PrecopyEstimate,
}

/// Nearest-rank percentile (`p` in `(0, 1]`) of the finite values; `None` if there is none.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() || !p.is_finite() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Positive iff the p90 of the latencies is at most `L_max`; no history is positive.
pub fn class_label(latencies_s: &[f64], cfg: &PolicyConfig) -> LabelWhy {
    let p90_s = percentile(latencies_s, 0.9);
    LabelWhy {
        label: match p90_s {
            Some(p) if p > cfg.latency_max_s => ClassLabel::Negative,
            _ => ClassLabel::Positive,
        },
        p90_s,
        samples: latencies_s.iter().filter(|x| x.is_finite()).count(),
        latency_max_s: cfg.latency_max_s,
    }
}

/// Transitional iff the label is positive and the pre-copy model says to iterate.
pub fn decide_mode(label: LabelWhy, precopy: PrecopyEstimate) -> ModeWhy {
    let mode = if label.label == ClassLabel::Positive && precopy.start == StartDecision::Iterate {
        SwitchMode::Transitional
    } else {
        SwitchMode::Intermittent
    };
    ModeWhy {
        mode,
        label,
        precopy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::precopy::{estimate, PrecopyInput};

    #[test]
    fn p90_table() {
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let rows: &[(&[f64], Option<f64>)] = &[
            (&ten, Some(9.0)), // ceil(9.0) = 9th
            (&[3.0], Some(3.0)),
            (&[5.0, 1.0, 3.0, 2.0, 4.0], Some(5.0)), // ceil(4.5) = 5th
            (&[1.0, f64::NAN, 2.0], Some(2.0)),      // ceil(1.8) = 2nd of the finite
            (&[], None),
            (&[f64::NAN], None),
        ];
        for (xs, want) in rows {
            assert_eq!(percentile(xs, 0.9), *want, "{xs:?}");
        }
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 0.9), Some(18.0));
    }

    #[test]
    fn label_table() {
        let cfg = PolicyConfig::default(); // L_max = 2 s
        let rows: &[(&[f64], ClassLabel)] = &[
            (&[], ClassLabel::Positive),
            (&[0.5, 1.0, 2.0], ClassLabel::Positive), // p90 = 2.0 <= 2.0
            (&[0.5, 1.0, 2.5], ClassLabel::Negative), // p90 = 2.5
            // one slow outlier among ten: p90 is the 9th value
            (
                &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 30.0],
                ClassLabel::Positive,
            ),
        ];
        for (xs, want) in rows {
            assert_eq!(class_label(xs, &cfg).label, *want, "{xs:?}");
        }
    }

    #[test]
    fn mode_follows_label_and_start_condition() {
        let cfg = PolicyConfig::default();
        let iterate = estimate(PrecopyInput {
            state_bytes: 1e9,
            dirty_bytes_per_s: 1e7,
            bandwidth_bytes_per_s: 1e8,
            rtt_s: 0.1,
            downtime_target_s: 0.5,
            max_rounds: 30,
            scan_share: 1.0,
            round_bandwidth_bytes_per_s: 0.0,
            live_overhead_s: 0.0,
            later_dirty_bytes_per_s: 0.0,
            frozen_bandwidth_bytes_per_s: 0.0,
            stop_s: 0.0,
        });
        let small = estimate(PrecopyInput {
            state_bytes: 1e6,
            ..iterate.input
        });
        let pos = class_label(&[], &cfg);
        let neg = class_label(&[10.0], &cfg);
        assert_eq!(
            decide_mode(pos.clone(), iterate.clone()).mode,
            SwitchMode::Transitional
        );
        assert_eq!(decide_mode(neg, iterate).mode, SwitchMode::Intermittent);
        assert_eq!(decide_mode(pos, small).mode, SwitchMode::Intermittent);
    }
}
