//! The classic static threshold, run by the same coordinator as a baseline to measure the
//! policy against: when a node's current utilisation (the largest over its resources) passes
//! `threshold`, its largest service (by the first resource, CPU) moves to the usable node with
//! the lowest utilisation once the service is added, among those that stay at or under the
//! threshold with it. No forecast, no site, no correlation; one move per node per call, none
//! from a node a move is already leaving. The simulator's `ReactiveStatic` is the same rule.

use serde::{Deserialize, Serialize};

use super::view::{max_util, ClusterView};

/// One move the static rule makes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ReactiveMove {
    pub service: String,
    pub from: String,
    pub to: String,
    /// The source's utilisation that passed the threshold.
    pub u_max: f64,
    /// The target's utilisation once the service is added.
    pub target_u_max: f64,
}

/// The moves of the static rule over `view`, nodes by id.
pub fn reactive_plan(view: &ClusterView, threshold: f64) -> Vec<ReactiveMove> {
    let mut nodes: Vec<_> = view.nodes.iter().filter(|n| n.usable()).collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    // Load per node in absolute units: utilisation now times capacity.
    let mut load: Vec<Vec<f64>> = nodes
        .iter()
        .map(|n| {
            (0..view.resources.len())
                .map(|r| {
                    n.util_now
                        .get(r)
                        .copied()
                        .filter(|u| u.is_finite())
                        .unwrap_or(0.0)
                        * n.cap(r)
                })
                .collect()
        })
        .collect();
    let util = |load: &[f64], i: usize| -> Option<f64> {
        let n = nodes[i];
        let u: Vec<f64> = (0..load.len())
            .map(|r| {
                if n.cap(r) > 0.0 {
                    load[r] / n.cap(r)
                } else {
                    f64::NAN
                }
            })
            .collect();
        max_util(&u, &n.capacity)
    };
    let mut moves = Vec::new();
    for i in 0..nodes.len() {
        let Some(u) = util(&load[i], i) else { continue };
        if u <= threshold {
            continue;
        }
        let on: Vec<_> = view
            .services
            .iter()
            .filter(|s| s.node == nodes[i].id)
            .collect();
        if on.iter().any(|s| s.leaving) {
            continue;
        }
        let Some(s) = on.iter().max_by(|a, b| {
            a.demand_of(0)
                .total_cmp(&b.demand_of(0))
                .then(b.id.cmp(&a.id))
        }) else {
            continue;
        };
        let with = |j: usize| -> Vec<f64> {
            load[j]
                .iter()
                .enumerate()
                .map(|(r, l)| l + s.demand_of(r))
                .collect()
        };
        let best = (0..nodes.len())
            .filter(|&j| j != i)
            .filter_map(|j| Some((j, util(&with(j), j)?)))
            .filter(|&(_, u)| u <= threshold)
            .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let Some((j, target_u)) = best else { continue };
        load[j] = with(j);
        for (r, l) in load[i].iter_mut().enumerate() {
            *l -= s.demand_of(r);
        }
        moves.push(ReactiveMove {
            service: s.id.clone(),
            from: nodes[i].id.clone(),
            to: nodes[j].id.clone(),
            u_max: u,
            target_u_max: target_u,
        });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{NodeView, ServiceView};

    fn node(id: &str, util: f64) -> NodeView {
        NodeView {
            id: id.into(),
            alive: true,
            capacity: vec![1.0],
            util_now: vec![util],
            ..NodeView::default()
        }
    }

    fn service(id: &str, node: &str, cpu: f64) -> ServiceView {
        ServiceView {
            id: id.into(),
            node: node.into(),
            demand: vec![cpu],
            ..ServiceView::default()
        }
    }

    #[test]
    fn the_largest_service_of_a_node_over_the_line_goes_to_the_least_loaded_that_fits() {
        let view = ClusterView {
            resources: vec!["cpu".into()],
            nodes: vec![
                node("a", 0.9),
                node("b", 0.5),
                node("c", 0.3),
                node("d", 0.1),
            ],
            services: vec![
                service("small", "a", 0.2),
                service("big", "a", 0.6),
                service("x", "b", 0.5),
            ],
            ..ClusterView::default()
        };
        let moves = reactive_plan(&view, 0.8);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(
            (moves[0].service.as_str(), moves[0].to.as_str()),
            ("big", "d")
        );
        assert!((moves[0].target_u_max - 0.7).abs() < 1e-9);
        // Nothing fits under the line: nothing moves. Exactly at it: no move either.
        let mut full = view.clone();
        full.nodes[3].util_now = vec![0.5];
        full.nodes[2].util_now = vec![0.5];
        assert!(reactive_plan(&full, 0.8).is_empty());
        let mut at = view.clone();
        at.nodes[0].util_now = vec![0.8];
        assert!(reactive_plan(&at, 0.8).is_empty());
        // A move already leaving the node holds it back; a fenced node is never a target.
        let mut leaving = view.clone();
        leaving.services[0].leaving = true;
        assert!(reactive_plan(&leaving, 0.8).is_empty());
        let mut fenced = view;
        fenced.nodes[3].fenced = true;
        fenced.nodes[2].util_now = vec![0.15];
        assert_eq!(reactive_plan(&fenced, 0.8)[0].to, "c");
    }
}
