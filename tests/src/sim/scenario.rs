//! What a run simulates: sites, nodes, services with their traces, the network that migrations
//! use, the failure schedule; and a seeded generator of the comparison scenario.

use super::rng::Rng;
use super::synth::{self, Shape, GIB, MIB};
use super::trace::{Demand, Trace};

/// A site (data centre): a power budget and a security-risk level.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSpec {
    pub name: String,
    /// Budget for the sum of its nodes' power, in watts.
    pub power_budget_watts: f64,
    /// Risk level in [0, 1].
    pub risk: f64,
}

/// A node: its site, its capacity and its power model.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    /// Index into [`Scenario::sites`].
    pub site: usize,
    pub cpu_cores: f64,
    pub mem_bytes: f64,
    /// Power at 0% CPU.
    pub idle_watts: f64,
    /// Power at 100% CPU (linear in between).
    pub max_watts: f64,
}

/// A service: its demand trace (shifted and scaled), its image and what a migration moves.
/// The state a migration copies is the service's memory demand at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    /// Index into [`Scenario::traces`].
    pub trace: usize,
    /// The service's step `t` reads the trace at `t + offset` (the trace repeats).
    pub offset: usize,
    /// Multiplies the CPU and the dirty rate of the trace (memory stays as traced).
    pub scale: f64,
    pub image: u32,
    pub image_bytes: f64,
}

/// The links migrations and restarts use.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Bandwidth between two nodes of the same site, bytes/s (after compression).
    pub intra_site_bytes_per_second: f64,
    /// Bandwidth between sites, bytes/s.
    pub inter_site_bytes_per_second: f64,
    pub rtt_seconds: f64,
    /// Downtime target of a switch (`T_down`).
    pub downtime_target_seconds: f64,
    /// Pre-copy rounds at most before the stop-and-copy round.
    pub max_rounds: u32,
    /// Cut-over of a transitional switch once the last round is copied.
    pub cutover_seconds: f64,
    /// Starting a service on a node once its image and state are there.
    pub start_seconds: f64,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            intra_site_bytes_per_second: 125.0 * 1e6,
            inter_site_bytes_per_second: 25.0 * 1e6,
            rtt_seconds: 0.01,
            downtime_target_seconds: 0.5,
            max_rounds: 30,
            cutover_seconds: 0.1,
            start_seconds: 1.0,
        }
    }
}

/// A node that stops at a step and never comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub step: usize,
    pub node: usize,
}

/// Everything a run needs; the engine never changes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub sites: Vec<SiteSpec>,
    pub nodes: Vec<NodeSpec>,
    pub services: Vec<ServiceSpec>,
    pub traces: Vec<Trace>,
    /// Initial node of each service.
    pub placement: Vec<usize>,
    pub failures: Vec<Failure>,
    pub steps: usize,
    pub step_seconds: f64,
    /// Window of the site energy ratio, in steps.
    pub energy_window: usize,
    /// Site energy tolerance `E_tol` (ratio of mean power to budget).
    pub energy_tolerance: f64,
    pub network: Network,
}

impl Scenario {
    /// The demand of service `s` at step `t`.
    pub fn demand(&self, s: usize, t: usize) -> Demand {
        let spec = &self.services[s];
        let d = self.traces[spec.trace].at(t + spec.offset);
        Demand {
            cpu: d.cpu * spec.scale,
            mem: d.mem,
            dirty: d.dirty * spec.scale,
        }
    }

    /// Bandwidth between two nodes.
    pub fn bandwidth(&self, from: usize, to: usize) -> f64 {
        if self.nodes[from].site == self.nodes[to].site {
            self.network.intra_site_bytes_per_second
        } else {
            self.network.inter_site_bytes_per_second
        }
    }

    /// Checks the indices and numbers, so the engine can index without checking.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("no nodes".into());
        }
        if !positive(self.step_seconds) {
            return Err("step_seconds must be > 0".into());
        }
        for n in &self.nodes {
            if n.site >= self.sites.len() {
                return Err(format!("node {}: no site {}", n.name, n.site));
            }
            if !(positive(n.cpu_cores) && positive(n.mem_bytes)) {
                return Err(format!("node {}: capacity must be > 0", n.name));
            }
        }
        for s in &self.sites {
            if !positive(s.power_budget_watts) {
                return Err(format!("site {}: power budget must be > 0", s.name));
            }
        }
        if self.placement.len() != self.services.len() {
            return Err("placement must name one node per service".into());
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.trace >= self.traces.len() || self.traces[s.trace].is_empty() {
                return Err(format!("service {}: no trace {}", s.name, s.trace));
            }
            if self.placement[i] >= self.nodes.len() {
                return Err(format!("service {}: no node {}", s.name, self.placement[i]));
            }
        }
        for f in &self.failures {
            if f.node >= self.nodes.len() {
                return Err(format!("failure at step {}: no node {}", f.step, f.node));
            }
        }
        let net = &self.network;
        if !(positive(net.intra_site_bytes_per_second) && positive(net.inter_site_bytes_per_second))
        {
            return Err("bandwidths must be > 0".into());
        }
        Ok(())
    }
}

/// `x > 0` (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// Parameters of the comparison scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub nodes: usize,
    pub services: usize,
    pub steps: usize,
    pub seed: u64,
    /// Mean CPU demand of the whole cluster as a fraction of its CPU capacity.
    pub mean_utilisation: f64,
    /// Nodes that fail during the run (at evenly spread steps after the first day).
    pub failures: usize,
}

impl Default for GenParams {
    fn default() -> GenParams {
        GenParams {
            nodes: 8,
            services: 48,
            steps: 3600,
            seed: 1,
            mean_utilisation: 0.65,
            failures: 1,
        }
    }
}

/// The comparison scenario: up to three sites of 4-core, 8 GiB nodes; services on synthetic
/// traces of every shape, and one in four on a recorded trace when `recorded` is not empty
/// (at a random offset, scaled to the service's CPU mean). Deterministic by `p.seed`.
pub fn generate(recorded: &[Trace], p: &GenParams) -> Scenario {
    let mut rng = Rng::derive(p.seed, 0x5CE7);
    let nsites = p.nodes.clamp(1, 3);
    let nodes: Vec<NodeSpec> = (0..p.nodes)
        .map(|i| NodeSpec {
            name: format!("n{i}"),
            site: i % nsites,
            cpu_cores: 4.0,
            mem_bytes: 8.0 * GIB,
            idle_watts: 40.0,
            max_watts: 120.0,
        })
        .collect();
    let sites = (0..nsites)
        .map(|s| {
            let members = nodes.iter().filter(|n| n.site == s).count() as f64;
            SiteSpec {
                name: format!("site{s}"),
                // The budget is met at 70% CPU on every node.
                power_budget_watts: members * (40.0 + 0.7 * 80.0),
                risk: [0.1, 0.2, 0.5][s],
            }
        })
        .collect();
    let per_service = p.mean_utilisation * 4.0 * p.nodes as f64 / p.services.max(1) as f64;
    let mut traces = Vec::new();
    let mut services = Vec::new();
    for i in 0..p.services {
        let target_mean = per_service * rng.range(0.6, 1.4);
        let (trace, offset) = if !recorded.is_empty() && i % 4 == 3 {
            let t = recorded[rng.below(recorded.len())].clone();
            let offset = rng.below(t.len());
            (t, offset)
        } else {
            let shape = Shape::ALL[i % Shape::ALL.len()];
            (
                synth::generate(shape, p.seed.wrapping_mul(1000) + i as u64, p.steps),
                0,
            )
        };
        let scale = (target_mean / trace.mean_cpu().max(1e-3)).clamp(0.05, 20.0);
        services.push(ServiceSpec {
            name: format!("s{i}:{}", trace.name),
            trace: traces.len(),
            offset,
            scale,
            image: i as u32,
            image_bytes: rng.range(100.0, 600.0) * MIB,
        });
        traces.push(trace);
    }
    // Seeded shuffle, then round-robin: every node starts with a mix of shapes and phases.
    let mut order: Vec<usize> = (0..p.services).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut placement = vec![0; p.services];
    for (k, &s) in order.iter().enumerate() {
        placement[s] = k % p.nodes.max(1);
    }
    let failures = (0..p.failures.min(p.nodes.saturating_sub(1)))
        .map(|k| Failure {
            step: synth::DAY + (k + 1) * p.steps.saturating_sub(synth::DAY) / (p.failures + 1),
            node: rng.below(p.nodes),
        })
        .collect();
    Scenario {
        sites,
        nodes,
        services,
        traces,
        placement,
        failures,
        steps: p.steps,
        step_seconds: 1.0,
        energy_window: 60,
        energy_tolerance: 1.0,
        network: Network::default(),
    }
}
