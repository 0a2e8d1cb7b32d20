//! Site composite performance index and performance state.
//!
//! `e_s = mean(power over the window) / budget`, `r_s = mean(risk over the window)` clamped to
//! `[0, 1]`, `CPI_s = w_e*e_s + w_r*r_s` (lower is better). The site is in the *first* (healthy)
//! state iff `CPI_s <= cpi_ok` and `e_s <= E_tol`, else in the *second* (strained) state.
//!
//! Missing data: no finite power sample or a budget that is not positive gives `e_s = 0`; no
//! finite risk sample gives `r_s = 0`; both are flagged in the explanation.

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::view::{mean_tail, SiteView};

/// The performance state of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteState {
    /// Healthy: targets are chosen inside the site.
    First,
    /// Strained: services leave for another first-state site.
    Second,
}

/// A site's index and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct SiteEval {
    pub site: String,
    /// Mean power over the window, watts (`None`: no sample).
    pub mean_power_w: Option<f64>,
    pub power_budget_w: f64,
    /// `e_s`.
    pub energy_ratio: f64,
    /// `r_s`.
    pub risk: f64,
    /// `CPI_s = w_e*e_s + w_r*r_s`.
    pub cpi: f64,
    pub state: SiteState,
    /// `e_s` is 0 because there was no power sample or no budget.
    pub energy_missing: bool,
    /// `r_s` is 0 because there was no risk sample.
    pub risk_missing: bool,
}

/// `CPI_s = w_e*e_s + w_r*r_s`.
pub fn composite_index(energy_ratio: f64, risk: f64, cfg: &PolicyConfig) -> f64 {
    cfg.w_energy * energy_ratio + cfg.w_risk * risk
}

/// Slack on the boundaries so that a figure equal to its limit up to rounding counts as equal.
const BOUNDARY_EPS: f64 = 1e-9;

/// First state iff `CPI_s <= cpi_ok` and `e_s <= E_tol` (up to rounding, 1e-9).
pub fn site_state(cpi: f64, energy_ratio: f64, cfg: &PolicyConfig) -> SiteState {
    if cpi <= cfg.cpi_ok + BOUNDARY_EPS && energy_ratio <= cfg.energy_tolerance + BOUNDARY_EPS {
        SiteState::First
    } else {
        SiteState::Second
    }
}

/// Evaluates a site over the last `cfg.site_window` samples.
pub fn evaluate_site(site: &SiteView, cfg: &PolicyConfig) -> SiteEval {
    let mean_power_w = mean_tail(&site.power_w, cfg.site_window);
    let budget = site.power_budget_w;
    let (energy_ratio, energy_missing) = match mean_power_w {
        Some(p) if budget.is_finite() && budget > 0.0 => ((p / budget).max(0.0), false),
        _ => (0.0, true),
    };
    let risk_mean = mean_tail(&site.risk, cfg.site_window);
    let risk = risk_mean.unwrap_or(0.0).clamp(0.0, 1.0);
    let cpi = composite_index(energy_ratio, risk, cfg);
    SiteEval {
        site: site.id.clone(),
        mean_power_w,
        power_budget_w: budget,
        energy_ratio,
        risk,
        cpi,
        state: site_state(cpi, energy_ratio, cfg),
        energy_missing,
        risk_missing: risk_mean.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(power: &[f64], budget: f64, risk: &[f64]) -> SiteView {
        SiteView {
            id: "s".into(),
            power_w: power.to_vec(),
            power_budget_w: budget,
            risk: risk.to_vec(),
        }
    }

    #[test]
    fn table() {
        // defaults: w_e = w_r = 0.5, cpi_ok = 0.6, E_tol = 0.9
        let cfg = PolicyConfig::default();
        // (power, budget, risk, e_s, r_s, cpi, state)
        type Row<'a> = (&'a [f64], f64, &'a [f64], f64, f64, f64, SiteState);
        let rows: &[Row<'_>] = &[
            (
                &[400.0, 600.0],
                1000.0,
                &[0.2, 0.4],
                0.5,
                0.3,
                0.4,
                SiteState::First,
            ),
            // CPI 0.6 exactly is still first
            (&[800.0], 1000.0, &[0.4], 0.8, 0.4, 0.6, SiteState::First),
            // CPI over cpi_ok
            (&[800.0], 1000.0, &[0.6], 0.8, 0.6, 0.7, SiteState::Second),
            // e_s over E_tol with a low CPI
            (
                &[950.0],
                1000.0,
                &[0.0],
                0.95,
                0.0,
                0.475,
                SiteState::Second,
            ),
            // NaN samples are skipped; missing budget => e_s = 0
            (
                &[f64::NAN, 500.0],
                0.0,
                &[f64::NAN],
                0.0,
                0.0,
                0.0,
                SiteState::First,
            ),
            // risk above 1 is clamped
            (&[100.0], 1000.0, &[3.0], 0.1, 1.0, 0.55, SiteState::First),
        ];
        for (i, (p, b, r, e, rr, cpi, st)) in rows.iter().enumerate() {
            let ev = evaluate_site(&site(p, *b, r), &cfg);
            assert!((ev.energy_ratio - e).abs() < 1e-12, "row {i}: {ev:?}");
            assert!((ev.risk - rr).abs() < 1e-12, "row {i}: {ev:?}");
            assert!((ev.cpi - cpi).abs() < 1e-12, "row {i}: {ev:?}");
            assert_eq!(ev.state, *st, "row {i}: {ev:?}");
        }
    }

    #[test]
    fn window_takes_the_newest_samples() {
        let cfg = PolicyConfig {
            site_window: 2,
            ..PolicyConfig::default()
        };
        let ev = evaluate_site(&site(&[5000.0, 100.0, 300.0], 1000.0, &[]), &cfg);
        assert!((ev.energy_ratio - 0.2).abs() < 1e-12);
        assert!(ev.risk_missing && !ev.energy_missing);
    }
}
