//! Every weight and limit of the policy, read from the `[policy]` table of the agent's TOML.
//!
//! Each field has a default from a function so that a partial table is valid; unknown keys are
//! refused. Cross-field rules are checked by [`PolicyConfig::validate`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Ratio, Watts};

/// A configuration that breaks a rule the parser cannot check on one field alone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy.{field} must be a number in [{lo}, {hi}] (got {value})")]
    OutOfRange {
        field: &'static str,
        lo: f64,
        hi: f64,
        value: f64,
    },
    #[error("policy.confirm_k ({k}) must be between 1 and policy.confirm_n ({n})")]
    Confirmation { k: usize, n: usize },
    #[error("policy.threshold_min ({min}) is above policy.threshold_base ({base})")]
    ThresholdOrder { min: f64, base: f64 },
}

/// Weights and limits of the whole policy. Units: utilisations are fractions of capacity
/// (0..1), times are seconds, sizes are bytes, rates are bytes per second.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    // --- site composite performance index -------------------------------------------------
    /// Number of most recent site samples (power and risk) averaged into `e_s` and `r_s`.
    #[serde(default = "default_site_window")]
    pub site_window: usize,
    /// Weight `w_e` of the energy ratio in `CPI_s = w_e*e_s + w_r*r_s`.
    #[serde(default = "default_w_energy")]
    pub w_energy: f64,
    /// Weight `w_r` of the risk level in `CPI_s`.
    #[serde(default = "default_w_risk")]
    pub w_risk: f64,
    /// A site is in the first (healthy) state iff `CPI_s <= cpi_ok` and `e_s <= energy_tolerance`.
    #[serde(default = "default_cpi_ok")]
    pub cpi_ok: f64,
    /// Site energy-tolerance ceiling `E_tol`, as a fraction of the site power budget.
    #[serde(default = "default_energy_tolerance")]
    pub energy_tolerance: f64,

    // --- dynamic threshold ----------------------------------------------------------------------
    /// `T_base`: a node's switching threshold on a healthy site, and the ceiling of `T_n`.
    #[serde(default = "default_threshold_base")]
    pub threshold_base: f64,
    /// `T_min`: the floor of `T_n`.
    #[serde(default = "default_threshold_min")]
    pub threshold_min: f64,
    /// `k_r`: how much site risk lowers the threshold, `T_n *= (1 - k_r * r_s)`.
    #[serde(default = "default_risk_factor")]
    pub risk_factor: f64,
    /// `eps` in `E_tol / max(e_s, eps)`, guarding the division.
    #[serde(default = "default_energy_eps")]
    pub energy_eps: f64,

    // --- trigger --------------------------------------------------------------------------------
    /// `k` of k-of-n confirmation: samples at or above `T_n` needed among the last `confirm_n`.
    #[serde(default = "default_confirm_k")]
    pub confirm_k: usize,
    /// `n` of k-of-n confirmation: the length of the window of recent samples.
    #[serde(default = "default_confirm_n")]
    pub confirm_n: usize,
    /// Fire as soon as the forecast `u_max(n, t+h)` reaches `T_n` (proactive trigger).
    #[serde(default = "default_true")]
    pub proactive: bool,
    /// After a trigger the node re-arms only once `u_max` (and its forecast) fall below
    /// `T_n - hysteresis`.
    #[serde(default = "default_hysteresis")]
    pub hysteresis: f64,
    /// No new trigger for this many samples after one, unless the node is over capacity
    /// (`urgent_util`). This bounds the moves per node: with `settle_rearm` a node still above
    /// `T_n` fires again as soon as this has passed and its moves have landed. Default 400
    /// with `urgent_util` 1: inside the cool-down only a node at or over its capacity fires
    /// again, so a node merely above `T_n` spends no more moves while one that overflows is
    /// relieved at once (docs/BENCHMARKS.md, the simulator: 60 without `urgent_util` gave
    /// more overload, 300 more overload for as many moves).
    #[serde(default = "default_cooldown_samples")]
    pub cooldown_samples: u64,
    /// A node whose moves have landed (settled) and whose `u_max` now is at least this may
    /// fire again before the cool-down ends: it is over capacity, not only over `T_n`.
    /// Default 1 (at or over capacity); 0 turns it off.
    #[serde(default = "default_urgent_rearm_util")]
    pub urgent_util: f64,
    /// A trigger that fired re-arms by itself after this many samples even if the load never
    /// fell below `T_n - hysteresis`, so a node that stays overloaded (its first firing moved
    /// nothing, or too little) is tried again. 0 disables the retry.
    #[serde(default = "default_rearm_after_samples")]
    pub rearm_after_samples: u64,
    /// A trigger that fired also re-arms as soon as its moves have landed (no service is
    /// leaving the node, see `ServiceView::leaving`) and the cool-down has elapsed, so a node
    /// still above `T_n` after its last moves is tried again without waiting for
    /// `rearm_after_samples`. Moves in flight already count as leaving, so nothing is shed twice.
    #[serde(default = "default_true")]
    pub settle_rearm: bool,

    // --- load projection ------------------------------------------------------------------------
    /// When true a node's projected utilisation per resource is `max(now, forecast)`, so a
    /// forecast lagging a spike cannot hide it; when false the forecast alone (the current
    /// value where the forecast is missing).
    #[serde(default = "default_true")]
    pub current_floor: bool,

    // --- selection ------------------------------------------------------------------------------
    /// Number of most recent samples of node and service load used for the Pearson correlation.
    #[serde(default = "default_corr_window")]
    pub corr_window: usize,
    /// `w_r` per resource name in `LE_i = rho_i * sum_r w_r * load_i,r / capacity_n,r`.
    /// Default: CPU 1, memory 0. Memory is what a move copies: with `select_by_copy_time` it
    /// already ranks a service down through its copy time, and a memory weight would rank the
    /// slow copy up again (with cpu 0.5 and memory 0.5 the simulator's overload was higher,
    /// docs/BENCHMARKS.md). Memory still counts in the load that must leave.
    #[serde(default = "default_resource_weights")]
    pub resource_weights: BTreeMap<String, f64>,
    /// Weight of a resource absent from `resource_weights`.
    #[serde(default)]
    pub default_resource_weight: f64,
    /// Services leave until the node's projected `u_max <= T_n - select_margin`.
    #[serde(default = "default_select_margin")]
    pub select_margin: f64,
    /// Services whose load correlation is below this never leave (-1 keeps every service).
    #[serde(default = "default_min_correlation")]
    pub min_correlation: f64,
    /// When a selected service finds no target and the node is still above its target
    /// utilisation, try the other eligible services in rank order in its place (each needs a
    /// target under the same rules), while the node's projected `u_max` stays at or above
    /// `substitute_min_util`.
    #[serde(default = "default_true")]
    pub substitute_unplaced: bool,
    /// Substitutes leave only while the node's projected `u_max` is at least this (by default
    /// the placement ceiling `1 - headroom`: the node risks its capacity, not only its
    /// threshold), so that a node merely above a low threshold does not shed many small
    /// services.
    #[serde(default = "default_urgent_util")]
    pub substitute_min_util: f64,
    /// At most this many substitutes per node and plan: a node still at risk fires again once
    /// they have landed (`settle_rearm`), which spends fewer moves than shedding many small
    /// services at once on one forecast.
    #[serde(default = "default_max_substitutes")]
    pub max_substitutes: usize,
    /// Rank the services that may leave by the load they relieve per second of copy,
    /// `LE_i / t_copy_i`, rather than by `LE_i` alone. `t_copy_i` is the bytes the move would
    /// send (state, plus the image when the likely target lacks it) over the path to that
    /// target, plus its RTT: a service's load stays on the source until its copy ends, so of
    /// two services that relieve the node alike the faster copy relieves it sooner. The fewest
    /// services still leave; the ranking orders equally small sets and the substitutes.
    #[serde(default = "default_true")]
    pub select_by_copy_time: bool,
    /// Subsets examined by the exact fewest-services search per node before falling back to
    /// the greedy choice.
    #[serde(default = "default_select_search_budget")]
    pub select_search_budget: usize,

    // --- placement ------------------------------------------------------------------------------
    /// A target's projected load plus the moved load must stay within
    /// `capacity * (1 - headroom)` on every resource.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    /// Also require a migration target to stay at or below `T_target - select_margin`, so a move
    /// cannot trigger the target in turn (ping-pong). Failover ignores this.
    #[serde(default = "default_true")]
    pub respect_target_threshold: bool,
    /// When the source site is healthy but none of its nodes can take a service, try the other
    /// first-state sites instead of reporting the service unplaced.
    #[serde(default)]
    pub cross_site_when_full: bool,
    /// When no target passes the rules above (every candidate is over its own threshold, or
    /// no site is in the first state), still move the service to the node that ends least
    /// loaded, provided it fits `capacity * (1 - headroom)` and ends at least `relief_margin`
    /// below the source's projected `u_max`: the pair's peak strictly falls, so such moves
    /// cannot ping-pong. Protects capacity when thresholds are low cluster-wide (energy).
    #[serde(default = "default_true")]
    pub relief_moves: bool,
    /// The least drop in `u_max` from source to target that a relief move needs.
    #[serde(default = "default_relief_margin")]
    pub relief_margin: f64,
    /// Relief moves are made only from a node whose projected `u_max` is at least this (0:
    /// always): relief protects capacity, and below it a low threshold alone does not justify
    /// a move the site rule refuses.
    #[serde(default)]
    pub relief_min_util: f64,
    /// Rank relief targets like the others (image held, then bandwidth, RTT, load) rather
    /// than by the lowest load after the move: the source keeps the load until the copy ends,
    /// so the target that holds the image or has the faster link relieves it sooner.
    #[serde(default = "default_true")]
    pub relief_prefer_fast: bool,
    /// Rank targets by the expected copy time first (state, plus the image when the target
    /// lacks it, over the measured path, plus the RTT), then as without it (image held,
    /// bandwidth, RTT, load): the source keeps the service's load until the copy ends.
    #[serde(default = "default_true")]
    pub place_by_copy_time: bool,
    /// Bandwidth assumed for a path with no measurement, in bytes per second (pre-staging only;
    /// the pre-copy model never guesses).
    #[serde(default = "default_fallback_bandwidth")]
    pub fallback_bandwidth_bytes_per_s: f64,

    // --- switch mode ----------------------------------------------------------------------------
    /// `L_max`: a target is labelled positive iff the p90 of its past transitional switch
    /// latencies is at most this many seconds.
    #[serde(default = "default_latency_max_s")]
    pub latency_max_s: f64,
    /// `T_down`: the downtime target of an iterative pre-copy switch, in seconds.
    #[serde(default = "default_downtime_target_s")]
    pub downtime_target_s: f64,
    /// `n_max`: the most live pre-copy rounds before the final frozen round.
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,

    // --- failover -------------------------------------------------------------------------------
    /// Failover instances with at most this many services are solved exactly (when best-fit
    /// decreasing leaves some unplaced).
    #[serde(default = "default_failover_exact_max_services")]
    pub failover_exact_max_services: usize,
    /// Search nodes the exact failover search may visit before keeping the best found.
    #[serde(default = "default_failover_exact_budget")]
    pub failover_exact_budget: usize,

    // --- pre-staging ----------------------------------------------------------------------------
    /// Bytes of images that may be copied ahead of time per planning period.
    #[serde(default = "default_prestage_budget_bytes")]
    pub prestage_budget_bytes: u64,
    /// A node whose forecast `u_max >= T_n - prestage_margin` (but that has not triggered) gives
    /// its services a move likelihood by LE rank.
    #[serde(default = "default_prestage_margin")]
    pub prestage_margin: f64,
    /// Services less likely than this to move are not pre-staged.
    #[serde(default = "default_prestage_min_probability")]
    pub prestage_min_probability: f64,
}

fn default_site_window() -> usize {
    60
}
fn default_w_energy() -> f64 {
    0.5
}
fn default_w_risk() -> f64 {
    0.5
}
fn default_cpi_ok() -> f64 {
    0.6
}
fn default_energy_tolerance() -> f64 {
    0.9
}
fn default_threshold_base() -> f64 {
    0.8
}
fn default_threshold_min() -> f64 {
    0.5
}
fn default_risk_factor() -> f64 {
    0.3
}
fn default_energy_eps() -> f64 {
    1e-6
}
fn default_confirm_k() -> usize {
    3
}
fn default_confirm_n() -> usize {
    5
}
fn default_true() -> bool {
    true
}
fn default_hysteresis() -> f64 {
    0.05
}
fn default_cooldown_samples() -> u64 {
    400
}
fn default_urgent_rearm_util() -> f64 {
    1.0
}
fn default_rearm_after_samples() -> u64 {
    60
}
fn default_corr_window() -> usize {
    60
}
fn default_resource_weights() -> BTreeMap<String, f64> {
    BTreeMap::from([("cpu".to_string(), 1.0), ("memory".to_string(), 0.0)])
}
fn default_select_margin() -> f64 {
    0.05
}
fn default_min_correlation() -> f64 {
    -1.0
}
fn default_select_search_budget() -> usize {
    20_000
}
fn default_headroom() -> f64 {
    0.1
}
fn default_max_substitutes() -> usize {
    1
}
fn default_urgent_util() -> f64 {
    0.9
}
fn default_relief_margin() -> f64 {
    0.1
}
fn default_fallback_bandwidth() -> f64 {
    12.5e6
}
fn default_latency_max_s() -> f64 {
    2.0
}
fn default_downtime_target_s() -> f64 {
    1.0
}
fn default_max_rounds() -> u32 {
    30
}
fn default_failover_exact_max_services() -> usize {
    8
}
fn default_failover_exact_budget() -> usize {
    200_000
}
fn default_prestage_budget_bytes() -> u64 {
    1 << 30
}
fn default_prestage_margin() -> f64 {
    0.1
}
fn default_prestage_min_probability() -> f64 {
    0.05
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            site_window: default_site_window(),
            w_energy: default_w_energy(),
            w_risk: default_w_risk(),
            cpi_ok: default_cpi_ok(),
            energy_tolerance: default_energy_tolerance(),
            threshold_base: default_threshold_base(),
            threshold_min: default_threshold_min(),
            risk_factor: default_risk_factor(),
            energy_eps: default_energy_eps(),
            confirm_k: default_confirm_k(),
            confirm_n: default_confirm_n(),
            proactive: true,
            hysteresis: default_hysteresis(),
            cooldown_samples: default_cooldown_samples(),
            rearm_after_samples: default_rearm_after_samples(),
            settle_rearm: true,
            urgent_util: default_urgent_rearm_util(),
            current_floor: true,
            corr_window: default_corr_window(),
            resource_weights: default_resource_weights(),
            default_resource_weight: 0.0,
            select_margin: default_select_margin(),
            min_correlation: default_min_correlation(),
            substitute_unplaced: true,
            substitute_min_util: default_urgent_util(),
            max_substitutes: default_max_substitutes(),
            select_by_copy_time: true,
            select_search_budget: default_select_search_budget(),
            headroom: default_headroom(),
            respect_target_threshold: true,
            cross_site_when_full: false,
            relief_moves: true,
            relief_margin: default_relief_margin(),
            relief_prefer_fast: true,
            relief_min_util: 0.0,
            place_by_copy_time: true,
            fallback_bandwidth_bytes_per_s: default_fallback_bandwidth(),
            latency_max_s: default_latency_max_s(),
            downtime_target_s: default_downtime_target_s(),
            max_rounds: default_max_rounds(),
            failover_exact_max_services: default_failover_exact_max_services(),
            failover_exact_budget: default_failover_exact_budget(),
            prestage_budget_bytes: default_prestage_budget_bytes(),
            prestage_margin: default_prestage_margin(),
            prestage_min_probability: default_prestage_min_probability(),
        }
    }
}

impl PolicyConfig {
    /// Checks ranges and rules between fields. The policy functions do not panic on a config
    /// that fails this check, but their decisions are then meaningless.
    pub fn validate(&self) -> Result<(), PolicyError> {
        fn range(field: &'static str, value: f64, lo: f64, hi: f64) -> Result<(), PolicyError> {
            if value.is_finite() && value >= lo && value <= hi {
                Ok(())
            } else {
                Err(PolicyError::OutOfRange {
                    field,
                    lo,
                    hi,
                    value,
                })
            }
        }
        let inf = f64::INFINITY;
        range("w_energy", self.w_energy, 0.0, inf)?;
        range("w_risk", self.w_risk, 0.0, inf)?;
        range("cpi_ok", self.cpi_ok, 0.0, inf)?;
        range("energy_tolerance", self.energy_tolerance, 0.0, inf)?;
        range("threshold_base", self.threshold_base, 0.0, 1.0)?;
        range("threshold_min", self.threshold_min, 0.0, 1.0)?;
        range("risk_factor", self.risk_factor, 0.0, 1.0)?;
        range("energy_eps", self.energy_eps, f64::MIN_POSITIVE, inf)?;
        range("hysteresis", self.hysteresis, 0.0, 1.0)?;
        range("select_margin", self.select_margin, 0.0, 1.0)?;
        range("min_correlation", self.min_correlation, -1.0, 1.0)?;
        range("headroom", self.headroom, 0.0, 0.999)?;
        range("relief_margin", self.relief_margin, 0.0, 1.0)?;
        range("relief_min_util", self.relief_min_util, 0.0, inf)?;
        range("urgent_util", self.urgent_util, 0.0, inf)?;
        range("substitute_min_util", self.substitute_min_util, 0.0, inf)?;
        range(
            "fallback_bandwidth_bytes_per_s",
            self.fallback_bandwidth_bytes_per_s,
            f64::MIN_POSITIVE,
            inf,
        )?;
        range("latency_max_s", self.latency_max_s, 0.0, inf)?;
        range("downtime_target_s", self.downtime_target_s, 0.0, inf)?;
        range("prestage_margin", self.prestage_margin, 0.0, 1.0)?;
        range(
            "prestage_min_probability",
            self.prestage_min_probability,
            0.0,
            1.0,
        )?;
        range(
            "default_resource_weight",
            self.default_resource_weight,
            0.0,
            inf,
        )?;
        for w in self.resource_weights.values() {
            range("resource_weights", *w, 0.0, inf)?;
        }
        if self.confirm_k == 0 || self.confirm_k > self.confirm_n {
            return Err(PolicyError::Confirmation {
                k: self.confirm_k,
                n: self.confirm_n,
            });
        }
        if self.threshold_min > self.threshold_base {
            return Err(PolicyError::ThresholdOrder {
                min: self.threshold_min,
                base: self.threshold_base,
            });
        }
        Ok(())
    }

    /// `w_r` of a resource by name.
    pub fn resource_weight(&self, name: &str) -> f64 {
        self.resource_weights
            .get(name)
            .copied()
            .unwrap_or(self.default_resource_weight)
    }
}

/// The site (data centre) this node belongs to, as the policy sees it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Site name; nodes with the same name form a site.
    pub name: String,
    /// The site's power budget in watts: `e_s` = mean site power / budget. 0 means this
    /// node's `energy.max_watts` (a one-node site).
    pub power_budget_watts: Watts,
    /// Security-risk level set by the operator, 0 (none) to 1 (highest). It lowers the
    /// switching threshold; `PUT /v1/risk` changes it at run time.
    pub risk: Ratio,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            name: "default".into(),
            power_budget_watts: Watts(0.0),
            risk: Ratio(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        PolicyConfig::default().validate().unwrap();
    }

    #[test]
    fn partial_table_takes_defaults_and_unknown_keys_are_refused() {
        let cfg: PolicyConfig =
            serde_json::from_str(r#"{"threshold_base":0.7,"confirm_k":2}"#).unwrap();
        assert_eq!(cfg.threshold_base, 0.7);
        assert_eq!(cfg.confirm_k, 2);
        assert_eq!(cfg.confirm_n, 5);
        assert_eq!(cfg.resource_weight("cpu"), 1.0);
        assert_eq!(cfg.resource_weight("memory"), 0.0);
        assert_eq!(cfg.resource_weight("disk"), 0.0);
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"threshold":0.7}"#).is_err());
    }

    #[test]
    fn cross_field_rules() {
        let cfg = PolicyConfig {
            confirm_k: 6,
            ..PolicyConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(PolicyError::Confirmation { .. })
        ));
        let cfg = PolicyConfig {
            threshold_min: 0.9,
            ..PolicyConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(PolicyError::ThresholdOrder { .. })
        ));
        let cfg = PolicyConfig {
            headroom: f64::NAN,
            ..PolicyConfig::default()
        };
        assert!(cfg.validate().is_err());
    }
}
