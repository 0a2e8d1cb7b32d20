//! The switching trigger of one node: a small state machine advanced once per sample.
//!
//! With `u_max(n) = max over resources of utilisation` and the node's threshold `T_n`:
//! - **confirmed**: `u_max >= T_n` for at least `k` of the last `n` samples (k-of-n), or
//! - **proactive**: the forecast `u_max(n, t+h) >= T_n` (when `proactive` is on),
//!
//! fires the trigger, provided that the trigger is *armed* and not *cooling down*:
//! - after firing it is disarmed until `u_max` (and its forecast, when known) fall below
//!   `T_n - hysteresis` (hysteresis), and the confirmation window restarts then; or until
//!   `rearm_after_samples` have passed; or, with `settle_rearm`, until the moves of the last
//!   firing have landed (the caller says the node is *settled*: nothing is leaving it) and the
//!   cool-down has passed;
//! - no trigger fires while `sample - last_fired <= cooldown` (cool-down), unless the node is
//!   settled and its `u_max` now is at least `urgent_util` (when set): it is over capacity.
//!
//! A sample missing from the sequence counts as "not above". A sample index not newer than the
//! last one seen leaves the state unchanged, so replaying the same view is harmless.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;

/// Persistent state of one node's trigger; the caller keeps it between samples.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct TriggerState {
    /// Above-threshold flags of the recent samples, oldest first (at most `confirm_n`).
    pub window: VecDeque<bool>,
    pub armed: bool,
    pub last_sample: Option<u64>,
    pub last_fired: Option<u64>,
}

impl Default for TriggerState {
    fn default() -> Self {
        TriggerState {
            window: VecDeque::new(),
            armed: true,
            last_sample: None,
            last_fired: None,
        }
    }
}

/// Why the trigger did or did not fire at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerReason {
    /// `k` of the last `n` samples were at or above `T_n`.
    Confirmed,
    /// The forecast reached `T_n`.
    Proactive,
    /// Below `T_n`, forecast too (or no forecast).
    Below,
    /// Above `T_n` now but not yet `k` of the last `n` samples.
    NotConfirmed,
    /// Would fire, but the trigger has not re-armed since the last firing.
    Disarmed,
    /// Would fire, but the cool-down since the last firing has not elapsed.
    CoolingDown,
    /// The sample index is not newer than the last one; nothing changed.
    Stale,
}

/// The decision at one sample and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TriggerWhy {
    pub sample: u64,
    pub fired: bool,
    pub reason: TriggerReason,
    /// `u_max` now (`None`: no utilisation known).
    pub u_max: Option<f64>,
    /// Forecast `u_max(t+h)`.
    pub u_max_forecast: Option<f64>,
    pub threshold: f64,
    /// Samples at or above `T_n` in the window, after this sample.
    pub above_in_window: usize,
    pub k: usize,
    pub n: usize,
    /// Armed after this sample.
    pub armed: bool,
    /// `T_n - hysteresis`: both figures must fall below this to re-arm.
    pub rearm_below: f64,
    /// Whether no move was leaving the node at this sample (`None`: not known).
    #[serde(default)]
    pub settled: Option<bool>,
    /// First sample at which a new trigger may fire.
    pub next_allowed: Option<u64>,
}

impl TriggerState {
    /// Advances the state by one sample and says whether the trigger fires (whether moves are
    /// in flight from the node is not known).
    pub fn advance(
        &mut self,
        sample: u64,
        u_max: Option<f64>,
        u_max_forecast: Option<f64>,
        threshold: f64,
        cfg: &PolicyConfig,
    ) -> TriggerWhy {
        self.advance_settled(sample, u_max, u_max_forecast, threshold, None, cfg)
    }

    /// [`TriggerState::advance`], knowing whether the node is `settled`: no move is leaving it.
    pub fn advance_settled(
        &mut self,
        sample: u64,
        u_max: Option<f64>,
        u_max_forecast: Option<f64>,
        threshold: f64,
        settled: Option<bool>,
        cfg: &PolicyConfig,
    ) -> TriggerWhy {
        let u_max = u_max.filter(|v| v.is_finite());
        let u_max_forecast = u_max_forecast.filter(|v| v.is_finite());
        let n = cfg.confirm_n.max(1);
        let k = cfg.confirm_k.clamp(1, n);
        let rearm_below = threshold - cfg.hysteresis;
        let next_allowed = self
            .last_fired
            .map(|f| f.saturating_add(cfg.cooldown_samples).saturating_add(1));
        let mut why = TriggerWhy {
            sample,
            fired: false,
            reason: TriggerReason::Stale,
            u_max,
            u_max_forecast,
            threshold,
            above_in_window: self.window.iter().filter(|a| **a).count(),
            k,
            n,
            armed: self.armed,
            rearm_below,
            settled,
            next_allowed,
        };
        if self.last_sample.is_some_and(|last| sample <= last) {
            return why;
        }
        // Missing samples in between count as "not above".
        if let Some(last) = self.last_sample {
            let gap = (sample - last - 1).min(n as u64);
            for _ in 0..gap {
                self.push(false, n);
            }
        }
        self.last_sample = Some(sample);

        if !self.armed {
            let now_low = u_max.is_some_and(|u| u < rearm_below);
            let forecast_low = u_max_forecast.is_none_or(|f| f < rearm_below);
            // A load that stays high (the last firing moved nothing, or not enough) is retried:
            // the trigger re-arms by itself `rearm_after_samples` after it fired.
            let retry = cfg.rearm_after_samples > 0
                && self
                    .last_fired
                    .is_some_and(|f| sample >= f.saturating_add(cfg.rearm_after_samples));
            // With `settle_rearm`, the moves of the last firing have landed and the cool-down
            // is over: if the node is still above `T_n`, that firing was not enough.
            // With `urgent_util`, a settled node at or over it now re-arms (and may fire) before
            // the cool-down ends: it is over capacity, not only over `T_n`.
            let urgent = cfg.urgent_util > 0.0 && u_max.is_some_and(|u| u >= cfg.urgent_util);
            let settled_retry = cfg.settle_rearm
                && settled == Some(true)
                && (urgent || next_allowed.is_none_or(|first| sample >= first));
            if now_low && forecast_low {
                self.armed = true;
                self.window.clear();
            } else if retry || settled_retry {
                self.armed = true;
            }
        }
        let above = u_max.is_some_and(|u| u >= threshold);
        self.push(above, n);
        let count = self.window.iter().filter(|a| **a).count();
        let confirmed = count >= k;
        let proactive = cfg.proactive && u_max_forecast.is_some_and(|f| f >= threshold);
        let cooling = next_allowed.is_some_and(|first| sample < first)
            && !(settled == Some(true)
                && cfg.urgent_util > 0.0
                && u_max.is_some_and(|u| u >= cfg.urgent_util));

        why.reason = if !(confirmed || proactive) {
            if above {
                TriggerReason::NotConfirmed
            } else {
                TriggerReason::Below
            }
        } else if !self.armed {
            TriggerReason::Disarmed
        } else if cooling {
            TriggerReason::CoolingDown
        } else if confirmed {
            TriggerReason::Confirmed
        } else {
            TriggerReason::Proactive
        };
        why.fired = matches!(
            why.reason,
            TriggerReason::Confirmed | TriggerReason::Proactive
        );
        if why.fired {
            self.armed = false;
            self.last_fired = Some(sample);
            self.window.clear();
            why.next_allowed = Some(
                sample
                    .saturating_add(cfg.cooldown_samples)
                    .saturating_add(1),
            );
        }
        why.above_in_window = if why.fired {
            count
        } else {
            self.window.iter().filter(|a| **a).count()
        };
        why.armed = self.armed;
        why
    }

    fn push(&mut self, above: bool, n: usize) {
        while self.window.len() >= n {
            self.window.pop_front();
        }
        self.window.push_back(above);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(k: usize, n: usize, hysteresis: f64, cooldown: u64) -> PolicyConfig {
        PolicyConfig {
            confirm_k: k,
            confirm_n: n,
            hysteresis,
            cooldown_samples: cooldown,
            ..PolicyConfig::default()
        }
    }

    /// Runs a sequence of `u_max` values (no forecast) from sample 0; returns the samples that fired.
    fn fires(seq: &[f64], cfg: &PolicyConfig, t: f64) -> Vec<u64> {
        let mut st = TriggerState::default();
        seq.iter()
            .enumerate()
            .filter_map(|(i, u)| {
                st.advance(i as u64, Some(*u), None, t, cfg)
                    .fired
                    .then_some(i as u64)
            })
            .collect()
    }

    #[test]
    fn k_of_n_confirmation() {
        let c = cfg(3, 5, 0.05, 0);
        // two above, a dip, a third above within the last five: fires at sample 3
        assert_eq!(fires(&[0.9, 0.9, 0.1, 0.9], &c, 0.8), vec![3]);
        // above samples spread wider than five never confirm
        assert_eq!(
            fires(&[0.9, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9], &c, 0.8),
            Vec::<u64>::new()
        );
        // exactly at the threshold counts as above
        assert_eq!(fires(&[0.8, 0.8, 0.8], &c, 0.8), vec![2]);
        // 1-of-1 fires at once
        assert_eq!(fires(&[0.1, 0.85], &cfg(1, 1, 0.05, 0), 0.8), vec![1]);
    }

    #[test]
    fn hysteresis_rearms_only_below_threshold_minus_hysteresis() {
        let c = cfg(1, 1, 0.1, 0);
        // fire at 0; 0.75 is below T but not below T - 0.1, so 2 cannot fire; 0.65 re-arms; 4 fires
        let seq = [0.9, 0.75, 0.9, 0.65, 0.9];
        assert_eq!(fires(&seq, &c, 0.8), vec![0, 4]);
        let mut st = TriggerState::default();
        st.advance(0, Some(0.9), None, 0.8, &c);
        st.advance(1, Some(0.75), None, 0.8, &c);
        let w = st.advance(2, Some(0.9), None, 0.8, &c);
        assert_eq!(w.reason, TriggerReason::Disarmed);
        assert!((w.rearm_below - 0.7).abs() < 1e-12);
    }

    #[test]
    fn cooldown_blocks_new_triggers() {
        let c = cfg(1, 1, 0.0, 3);
        // fire at 0; re-armed at 1 but 1..=3 are cooling down; 4 fires
        let seq = [0.9, 0.1, 0.9, 0.9, 0.9];
        assert_eq!(fires(&seq, &c, 0.8), vec![0, 4]);
        let mut st = TriggerState::default();
        st.advance(0, Some(0.9), None, 0.8, &c);
        st.advance(1, Some(0.1), None, 0.8, &c);
        let w = st.advance(2, Some(0.9), None, 0.8, &c);
        assert_eq!(w.reason, TriggerReason::CoolingDown);
        assert_eq!(w.next_allowed, Some(4));
    }

    #[test]
    fn persistent_overload_is_retried_after_rearm_after_samples() {
        let c = PolicyConfig {
            rearm_after_samples: 4,
            ..cfg(1, 1, 0.1, 2)
        };
        // Never below T - hysteresis: fires at 0, re-arms by itself at 4, fires again.
        assert_eq!(fires(&[0.9; 10], &c, 0.8), vec![0, 4, 8]);
        // With the retry off, one firing only.
        let off = PolicyConfig {
            rearm_after_samples: 0,
            ..c.clone()
        };
        assert_eq!(fires(&[0.9; 10], &off, 0.8), vec![0]);
    }

    #[test]
    fn settled_node_rearms_after_the_cooldown() {
        let c = PolicyConfig {
            rearm_after_samples: 100,
            ..cfg(1, 1, 0.1, 2)
        };
        let mut st = TriggerState::default();
        let fired = |st: &mut TriggerState, i: u64, settled: bool| {
            st.advance_settled(i, Some(0.9), None, 0.8, Some(settled), &c)
                .fired
        };
        assert!(fired(&mut st, 0, true));
        // moves in flight (not settled): stays disarmed past the cool-down
        assert!(!fired(&mut st, 1, false));
        assert!(!fired(&mut st, 4, false));
        // landed, but still cooling down (samples 1..=2), then fires again
        let mut st2 = st.clone();
        assert!(fired(&mut st2, 5, true));
        let mut st = TriggerState::default();
        assert!(fired(&mut st, 0, true));
        let w = st.advance_settled(2, Some(0.9), None, 0.8, Some(true), &c);
        assert_eq!(w.reason, TriggerReason::Disarmed);
        assert!(fired(&mut st, 3, true));
        // with settle_rearm off, only rearm_after_samples re-arms
        let off = PolicyConfig {
            settle_rearm: false,
            ..c.clone()
        };
        let mut st = TriggerState::default();
        assert!(
            st.advance_settled(0, Some(0.9), None, 0.8, Some(true), &off)
                .fired
        );
        assert!(
            !st.advance_settled(5, Some(0.9), None, 0.8, Some(true), &off)
                .fired
        );
    }

    #[test]
    fn urgent_node_fires_again_within_the_cooldown() {
        let c = PolicyConfig {
            rearm_after_samples: 100,
            urgent_util: 1.0,
            ..cfg(1, 1, 0.1, 50)
        };
        let adv = |st: &mut TriggerState, i: u64, u: f64, settled: bool| {
            st.advance_settled(i, Some(u), None, 0.8, Some(settled), &c)
        };
        let mut st = TriggerState::default();
        assert!(adv(&mut st, 0, 0.9, true).fired);
        // above T_n but under capacity: waits for the cool-down
        assert!(!adv(&mut st, 1, 0.95, true).fired);
        // over capacity but its moves are still in flight: waits
        assert!(!adv(&mut st, 2, 1.1, false).fired);
        // over capacity and settled: fires within the cool-down
        let w = adv(&mut st, 3, 1.1, true);
        assert!(w.fired, "{w:?}");
        // off (0): the cool-down holds
        let off = PolicyConfig {
            urgent_util: 0.0,
            ..c.clone()
        };
        let mut st = TriggerState::default();
        assert!(
            st.advance_settled(0, Some(0.9), None, 0.8, Some(true), &off)
                .fired
        );
        let w = st.advance_settled(3, Some(1.1), None, 0.8, Some(true), &off);
        assert!(!w.fired);
    }

    #[test]
    fn proactive_fires_on_forecast() {
        let c = cfg(3, 5, 0.05, 0);
        let mut st = TriggerState::default();
        let w = st.advance(0, Some(0.5), Some(0.85), 0.8, &c);
        assert!(w.fired);
        assert_eq!(w.reason, TriggerReason::Proactive);
        // with proactive off the same sample does not fire
        let off = PolicyConfig {
            proactive: false,
            ..c.clone()
        };
        let mut st = TriggerState::default();
        assert!(!st.advance(0, Some(0.5), Some(0.85), 0.8, &off).fired);
        // a high forecast keeps the trigger disarmed even when the present is low
        let mut st = TriggerState::default();
        st.advance(0, Some(0.5), Some(0.85), 0.8, &c);
        let w = st.advance(1, Some(0.1), Some(0.9), 0.8, &c);
        assert_eq!(w.reason, TriggerReason::Disarmed);
    }

    #[test]
    fn gaps_and_stale_samples() {
        let c = cfg(2, 3, 0.05, 0);
        let mut st = TriggerState::default();
        assert!(!st.advance(10, Some(0.9), None, 0.8, &c).fired);
        // samples 11..13 missing: the window forgets sample 10
        assert!(!st.advance(14, Some(0.9), None, 0.8, &c).fired);
        // replaying sample 14 changes nothing
        let before = st.clone();
        let w = st.advance(14, Some(0.9), None, 0.8, &c);
        assert_eq!(w.reason, TriggerReason::Stale);
        assert_eq!(st, before);
        assert!(st.advance(15, Some(0.9), None, 0.8, &c).fired);
        // no data at all never fires
        let mut st = TriggerState::default();
        for i in 0..10 {
            assert!(!st.advance(i, None, Some(f64::NAN), 0.8, &c).fired);
        }
    }
}
