//! Projected load of a node and each service's share of it.
//!
//! Per resource `r` with capacity `C_r`, the projected utilisation is
//! `u_r = max(now_r, forecast_r)` (with `current_floor`; otherwise the forecast, or the current
//! value where the forecast is missing; the services' summed demand where both are missing), and
//! the projected load is `P_r = u_r * C_r` in absolute units.
//!
//! A service's share of the projection follows its share of the current load:
//! `share_i,r = demand_i,r * P_r / L_r` with `L_r = max(now_r * C_r, sum_j demand_j,r)`
//! (scale 1 where `L_r = 0`). That share is what leaves the source and what lands on a target.

use serde::{Deserialize, Serialize};

use super::config::PolicyConfig;
use super::view::{finite, NodeView, ServiceView};

/// A node's projected load per resource, absolute units.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct NodeLoad {
    pub capacity: Vec<f64>,
    /// `P_r`.
    pub projected: Vec<f64>,
    /// `P_r / L_r`: multiplies a service's current demand into its share of `P_r`.
    pub scale: Vec<f64>,
}

impl NodeLoad {
    /// Projects `node`'s load; `hosted` are the services running on it.
    pub fn project(
        node: &NodeView,
        hosted: &[&ServiceView],
        resources: usize,
        cfg: &PolicyConfig,
    ) -> NodeLoad {
        let mut capacity = Vec::with_capacity(resources);
        let mut projected = Vec::with_capacity(resources);
        let mut scale = Vec::with_capacity(resources);
        for r in 0..resources {
            let cap = node.cap(r);
            let demand: f64 = hosted.iter().map(|s| s.demand_of(r)).sum();
            let now = finite(node.util_now.get(r)).map(|u| u.max(0.0));
            let fc = finite(node.util_forecast.get(r)).map(|u| u.max(0.0));
            let u = match (now, fc) {
                (Some(n), Some(f)) if cfg.current_floor => Some(n.max(f)),
                (_, Some(f)) => Some(f),
                (Some(n), None) => Some(n),
                (None, None) => None,
            };
            let p = match u {
                Some(u) if cap > 0.0 => u * cap,
                _ => demand,
            };
            let current = now
                .filter(|_| cap > 0.0)
                .map_or(0.0, |n| n * cap)
                .max(demand);
            capacity.push(cap);
            projected.push(p);
            scale.push(if current > 0.0 { p / current } else { 1.0 });
        }
        NodeLoad {
            capacity,
            projected,
            scale,
        }
    }

    /// `share_i,r` of a hosted service.
    pub fn share(&self, service: &ServiceView) -> Vec<f64> {
        self.scale
            .iter()
            .enumerate()
            .map(|(r, k)| service.demand_of(r) * k)
            .collect()
    }

    /// Largest projected utilisation over resources with capacity (`None` if none has any).
    pub fn u_max(&self) -> Option<f64> {
        u_max_of(&self.projected, &self.capacity)
    }
}

/// `max_r load_r / cap_r` over resources with positive capacity.
pub(crate) fn u_max_of(load: &[f64], capacity: &[f64]) -> Option<f64> {
    load.iter()
        .zip(capacity)
        .filter(|(_, c)| **c > 0.0)
        .map(|(l, c)| l / c)
        .fold(None, |acc: Option<f64>, u| {
            Some(acc.map_or(u, |a| a.max(u)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_and_shares() {
        let cfg = PolicyConfig::default();
        let node = NodeView {
            capacity: vec![4.0, 100.0, 0.0],
            util_now: vec![0.5, 0.2, 0.3],
            util_forecast: vec![0.75, f64::NAN],
            ..NodeView::default()
        };
        let a = ServiceView {
            demand: vec![1.0, 10.0, 1.0],
            ..ServiceView::default()
        };
        let b = ServiceView {
            demand: vec![0.5, 30.0],
            ..ServiceView::default()
        };
        let l = NodeLoad::project(&node, &[&a, &b], 3, &cfg);
        // cpu: P = 0.75*4 = 3, L = max(2, 1.5) = 2, scale 1.5
        // mem: P = 0.2*100 = 20, L = max(20, 40) = 40, scale 0.5
        // third: no capacity: P = demand sum = 1, scale 1
        assert_eq!(l.projected, vec![3.0, 20.0, 1.0]);
        assert_eq!(l.scale, vec![1.5, 0.5, 1.0]);
        assert_eq!(l.share(&a), vec![1.5, 5.0, 1.0]);
        assert_eq!(l.u_max(), Some(0.75));
        let no_floor = PolicyConfig {
            current_floor: false,
            ..cfg
        };
        let node2 = NodeView {
            util_forecast: vec![0.25, 0.1],
            ..node
        };
        let l = NodeLoad::project(&node2, &[&a, &b], 2, &no_floor);
        assert_eq!(l.projected, vec![1.0, 10.0]);
    }
}
