//! A synthetic cluster for benchmarks and property tests: deterministic for a seed.

use std::collections::{BTreeMap, BTreeSet};

use super::view::{ClusterView, Link, NodeView, ServiceView, SiteView};

/// splitmix64: small, deterministic, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const HISTORY: usize = 60;

/// A cluster of `nodes` nodes in `max(1, nodes / 20)` sites and `services` services, with
/// resources `cpu` (cores) and `memory` (bytes), 60-sample histories, all-pairs links, a few
/// dead (1 in 25) and fenced (1 in 50) nodes, images held here and there and past switch
/// latencies. The same seed gives the same view.
pub fn bench_view(nodes: usize, services: usize, seed: u64) -> ClusterView {
    let mut rng = Rng(seed);
    let nsites = (nodes / 20).max(1);
    let images = (services / 4).max(1);
    let sites: Vec<SiteView> = (0..nsites)
        .map(|s| {
            let budget = 10_000.0;
            let level = rng.range(0.4, 1.05);
            SiteView {
                id: format!("site-{s:02}"),
                power_w: (0..HISTORY)
                    .map(|_| budget * (level + rng.range(-0.05, 0.05)))
                    .collect(),
                power_budget_w: budget,
                risk: (0..HISTORY).map(|_| rng.range(0.0, 0.5)).collect(),
            }
        })
        .collect();
    let ids: Vec<String> = (0..nodes).map(|n| format!("node-{n:04}")).collect();
    let node_views: Vec<NodeView> = (0..nodes)
        .map(|n| {
            let cpu = [8.0, 16.0, 32.0][rng.below(3)];
            let mem = [16.0, 32.0, 64.0][rng.below(3)] * (1u64 << 30) as f64;
            let u_cpu = rng.range(0.2, 0.95);
            let u_mem = rng.range(0.2, 0.9);
            let phase = rng.range(0.0, std::f64::consts::TAU);
            let history: Vec<f64> = (0..HISTORY)
                .map(|t| u_cpu + 0.1 * ((t as f64) / 6.0 + phase).sin() + rng.range(-0.02, 0.02))
                .collect();
            let links: BTreeMap<String, Link> = ids
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != n)
                .map(|(_, id)| {
                    (
                        id.clone(),
                        Link {
                            bytes_per_s: rng.range(10e6, 125e6),
                            rtt_s: rng.range(0.0005, 0.05),
                        },
                    )
                })
                .collect();
            NodeView {
                id: ids[n].clone(),
                site: format!("site-{:02}", n % nsites),
                alive: n % 25 != 24,
                fenced: n % 50 == 37,
                capacity: vec![cpu, mem],
                util_now: vec![u_cpu, u_mem],
                util_forecast: vec![
                    (u_cpu + rng.range(-0.1, 0.1)).max(0.0),
                    (u_mem + rng.range(-0.05, 0.05)).max(0.0),
                ],
                load_history: history,
                images: (0..3)
                    .map(|_| format!("image-{:04}", rng.below(images)))
                    .collect::<BTreeSet<_>>(),
                switch_latencies_s: (0..rng.below(12)).map(|_| rng.range(0.2, 3.0)).collect(),
                links,
            }
        })
        .collect();
    // split each node's current load among the services it hosts (90%: the rest is unmanaged)
    let placement: Vec<usize> = (0..services).map(|_| rng.below(nodes)).collect();
    let mut weights: Vec<f64> = (0..services).map(|_| rng.range(0.2, 1.0)).collect();
    let mut total = vec![0.0; nodes.max(1)];
    for (s, n) in placement.iter().enumerate() {
        total[*n] += weights[s];
    }
    for (s, n) in placement.iter().enumerate() {
        weights[s] /= total[*n];
    }
    if nodes == 0 {
        // services of nodes missing from the view: all orphans
        let services = (0..services)
            .map(|s| ServiceView {
                id: format!("svc-{s:05}"),
                node: "node-none".to_string(),
                demand: vec![rng.range(0.1, 2.0), rng.range(1e8, 1e9)],
                image: format!("image-{:04}", rng.below(images)),
                image_bytes: rng.range(20e6, 800e6) as u64,
                ..ServiceView::default()
            })
            .collect();
        return ClusterView {
            resources: vec!["cpu".to_string(), "memory".to_string()],
            sites,
            services,
            ..ClusterView::default()
        };
    }
    let service_views = (0..services)
        .map(|s| {
            let n = &node_views[placement[s]];
            let share = 0.9 * weights[s];
            let corr = rng.range(-0.3, 1.0);
            ServiceView {
                id: format!("svc-{s:05}"),
                node: n.id.clone(),
                demand: vec![
                    share * n.util_now[0] * n.capacity[0],
                    share * n.util_now[1] * n.capacity[1],
                ],
                load_history: n
                    .load_history
                    .iter()
                    .map(|v| share * (corr * v + rng.range(-0.05, 0.05)))
                    .collect(),
                image: format!("image-{:04}", rng.below(images)),
                image_bytes: rng.range(20e6, 800e6) as u64,
                state_bytes: rng.range(1e6, 4e9) as u64,
                dirty_bytes_per_s: rng.range(0.0, 40e6),
                dirty_curve: Vec::new(),
                pinned: s % 97 == 0,
                leaving: false,
                move_probability: None,
                stop_s: 0.0,
            }
        })
        .collect();
    ClusterView {
        resources: vec!["cpu".to_string(), "memory".to_string()],
        sites,
        nodes: node_views,
        services: service_views,
        triggers: BTreeMap::new(),
    }
}
