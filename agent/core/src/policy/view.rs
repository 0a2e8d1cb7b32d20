//! The cluster as the policy sees it: plain serde types the coordinator, the simulator and the
//! API build and show. Every `Vec<f64>` per resource is aligned with [`ClusterView::resources`];
//! a missing entry or a non-finite number is treated as missing, never as a panic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::trigger::TriggerState;

/// Everything `plan` needs, as of one sample.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ClusterView {
    /// Resource names (e.g. `["cpu", "memory"]`); per-resource vectors follow this order.
    pub resources: Vec<String>,
    pub sites: Vec<SiteView>,
    pub nodes: Vec<NodeView>,
    pub services: Vec<ServiceView>,
    /// Trigger state per node id from the previous plan (`Plan::triggers`); empty at start.
    pub triggers: BTreeMap<String, TriggerState>,
}

/// A site (data centre): its power draw and risk level over the recent window.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SiteView {
    pub id: String,
    /// Site power samples in watts, oldest first.
    pub power_w: Vec<f64>,
    /// Site power budget in watts.
    pub power_budget_w: f64,
    /// Security-risk inputs in `[0, 1]`, oldest first.
    pub risk: Vec<f64>,
}

/// A measured network path from one node to another.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Link {
    /// Usable bandwidth after compression, bytes per second.
    pub bytes_per_s: f64,
    /// Round-trip time, seconds.
    pub rtt_s: f64,
}

/// One node of the cluster.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct NodeView {
    pub id: String,
    pub site: String,
    pub alive: bool,
    /// Isolated (by itself or by an operator): never a target; its services fail over.
    pub fenced: bool,
    /// Capacity per resource, in the resource's absolute unit (cores, bytes, ...).
    pub capacity: Vec<f64>,
    /// Utilisation per resource now, as a fraction of capacity.
    pub util_now: Vec<f64>,
    /// Forecast utilisation per resource at `t + h`, as a fraction of capacity.
    pub util_forecast: Vec<f64>,
    /// The node's load series used for load correlation, oldest first, sample-aligned with the
    /// services' `load_history` (same newest sample).
    pub load_history: Vec<f64>,
    /// Image ids held locally.
    pub images: BTreeSet<String>,
    /// Durations of past transitional switches onto this node, seconds.
    pub switch_latencies_s: Vec<f64>,
    /// Measured paths from this node, by peer node id.
    pub links: BTreeMap<String, Link>,
}

/// One service instance.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ServiceView {
    pub id: String,
    /// The node it runs on (or ran on, if that node is dead).
    pub node: String,
    /// Current load per resource, in absolute units.
    pub demand: Vec<f64>,
    /// The instance's load series, oldest first, aligned with its node's `load_history`.
    pub load_history: Vec<f64>,
    pub image: String,
    pub image_bytes: u64,
    /// Declared state size `V0`, bytes.
    pub state_bytes: u64,
    /// Rate of distinct pages dirtied `D`, bytes per second.
    pub dirty_bytes_per_s: f64,
    /// Optional writable-working-set curve: `[window_s, distinct_bytes_dirtied]` points, from
    /// the probe. When it has two points or more the pre-copy estimate uses it instead of the
    /// constant rate.
    pub dirty_curve: Vec<[f64; 2]>,
    /// Never moved by the policy (failover still restarts it elsewhere).
    pub pinned: bool,
    /// A move of it away from `node` is in flight: its load still counts on `node` until the
    /// copy ends. Such a service is never selected again, and its node's trigger re-arms only
    /// once nothing is leaving it (`settle_rearm`).
    pub leaving: bool,
    /// Likelihood of moving soon, computed elsewhere; when absent `plan` derives one.
    pub move_probability: Option<f64>,
    /// The service's own stop time as measured (SIGTERM until it is gone), seconds; 0 when
    /// never measured. A stop-and-copy holds the service for it.
    pub stop_s: f64,
}

/// A number, or `None` if it is missing or not finite.
pub(crate) fn finite(x: Option<&f64>) -> Option<f64> {
    x.copied().filter(|v| v.is_finite())
}

/// Mean of the finite values among the last `window` (all when `window` is 0).
pub(crate) fn mean_tail(xs: &[f64], window: usize) -> Option<f64> {
    let start = if window == 0 {
        0
    } else {
        xs.len().saturating_sub(window)
    };
    let (sum, n) = xs[start..]
        .iter()
        .filter(|v| v.is_finite())
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Largest finite entry over resources with positive capacity (`None` if there is none).
/// A resource with no capacity has no meaningful utilisation.
pub(crate) fn max_util(util: &[f64], capacity: &[f64]) -> Option<f64> {
    let mut best: Option<f64> = None;
    for (r, u) in util.iter().enumerate() {
        if !u.is_finite() || finite(capacity.get(r)).is_none_or(|c| c <= 0.0) {
            continue;
        }
        best = Some(best.map_or(*u, |b: f64| b.max(*u)));
    }
    best
}

impl NodeView {
    /// Capacity of resource `r`; missing, negative or non-finite counts as 0.
    pub fn cap(&self, r: usize) -> f64 {
        finite(self.capacity.get(r)).unwrap_or(0.0).max(0.0)
    }

    /// Usable for the workload: alive and not fenced.
    pub fn usable(&self) -> bool {
        self.alive && !self.fenced
    }

    /// The link from this node to `peer`, falling back to the peer's link back.
    pub fn link_to<'a>(&'a self, peer: &'a NodeView) -> Option<&'a Link> {
        self.links
            .get(&peer.id)
            .or_else(|| peer.links.get(&self.id))
    }
}

impl ServiceView {
    /// Demand of resource `r`; missing, negative or non-finite counts as 0.
    pub fn demand_of(&self, r: usize) -> f64 {
        finite(self.demand.get(r)).unwrap_or(0.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_treat_nan_as_missing() {
        assert_eq!(mean_tail(&[1.0, f64::NAN, 3.0], 0), Some(2.0));
        assert_eq!(mean_tail(&[9.0, 1.0, 3.0], 2), Some(2.0));
        assert_eq!(mean_tail(&[], 5), None);
        assert_eq!(mean_tail(&[f64::NAN], 5), None);
        assert_eq!(max_util(&[0.2, f64::NAN, 0.9], &[1.0, 1.0, 0.0]), Some(0.2));
        assert_eq!(max_util(&[], &[]), None);
    }
}
