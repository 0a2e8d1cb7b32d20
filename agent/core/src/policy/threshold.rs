//! Dynamic switching threshold of a node.
//!
//! `T_n = clamp(T_base * min(1, E_tol / max(e_s, eps)) * (1 - k_r * r_s), T_min, T_base)`:
//! a site drawing more than its energy tolerance, or at risk, lowers the utilisation at which
//! its nodes shed load, never below `T_min`.

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::site::SiteEval;

/// A node's threshold and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ThresholdWhy {
    /// `T_n`.
    pub threshold: f64,
    /// `T_n` before clamping.
    pub unclamped: f64,
    pub base: f64,
    /// `min(1, E_tol / max(e_s, eps))`.
    pub energy_factor: f64,
    /// `1 - k_r * r_s`.
    pub risk_factor: f64,
    pub energy_ratio: f64,
    pub risk: f64,
    /// `T_min` or `T_base` bound it.
    pub clamped: bool,
}

/// `T_n` from the site's `e_s` and `r_s`.
pub fn dynamic_threshold(energy_ratio: f64, risk: f64, cfg: &PolicyConfig) -> ThresholdWhy {
    let e = if energy_ratio.is_finite() {
        energy_ratio
    } else {
        0.0
    };
    let r = if risk.is_finite() {
        risk.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let energy_factor = (cfg.energy_tolerance / e.max(cfg.energy_eps)).min(1.0);
    let risk_factor = 1.0 - cfg.risk_factor * r;
    let unclamped = cfg.threshold_base * energy_factor * risk_factor;
    // max then min rather than f64::clamp, which panics when T_min > T_base.
    let threshold = unclamped.max(cfg.threshold_min).min(cfg.threshold_base);
    ThresholdWhy {
        threshold,
        unclamped,
        base: cfg.threshold_base,
        energy_factor,
        risk_factor,
        energy_ratio: e,
        risk: r,
        clamped: threshold != unclamped,
    }
}

/// `T_n` for a node of the evaluated site.
pub fn node_threshold(site: &SiteEval, cfg: &PolicyConfig) -> ThresholdWhy {
    dynamic_threshold(site.energy_ratio, site.risk, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // defaults: T_base 0.8, T_min 0.5, E_tol 0.9, k_r 0.3
        let cfg = PolicyConfig::default();
        // (e_s, r_s, T_n, clamped)
        let rows = [
            (0.5, 0.0, 0.8, false),
            (0.0, 0.0, 0.8, false),  // eps guards the division
            (0.9, 0.0, 0.8, false),  // at the tolerance, factor 1
            (1.2, 0.0, 0.6, false),  // 0.8 * 0.75
            (0.5, 0.5, 0.68, false), // 0.8 * (1 - 0.15)
            (1.2, 0.5, 0.51, false), // 0.8 * 0.75 * 0.85
            (1.8, 0.0, 0.5, true),   // 0.4 clamped up to T_min
            (1.8, 1.0, 0.5, true),   // 0.28 clamped up to T_min
            (f64::NAN, f64::NAN, 0.8, false),
        ];
        for (e, r, t, c) in rows {
            let w = dynamic_threshold(e, r, &cfg);
            assert!((w.threshold - t).abs() < 1e-12, "e={e} r={r}: {w:?}");
            assert_eq!(w.clamped, c, "e={e} r={r}: {w:?}");
        }
    }

    #[test]
    fn never_above_base_even_with_negative_risk_weight_effects() {
        let cfg = PolicyConfig::default();
        let w = dynamic_threshold(0.1, -5.0, &cfg);
        assert_eq!(w.threshold, 0.8);
    }
}
