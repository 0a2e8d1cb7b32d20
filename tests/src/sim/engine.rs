//! The discrete-time engine: each step applies failures and finished transfers, adds up the
//! nodes' loads, accounts overload, energy and downtime, asks the policy what to do and starts
//! the migrations, restarts and image copies it returns.
//!
//! A migrating service's load counts on its source until the transfer ends, then on its target.
//! The transfer follows the project's latency-aware pre-copy model (MISSION.md, "Definitions"):
//! a transitional switch iterates while the service runs and stops it only for the last round;
//! an intermittent switch stops it, copies state (and the image when the target lacks it) and
//! starts it again.

use std::collections::HashSet;

use super::policy::SimPolicy;
use super::scenario::{Network, Scenario};
use super::trace::Demand;

/// How a migration switches the service over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchMode {
    /// Transitional when the pre-copy start condition holds, intermittent otherwise.
    Auto,
    /// Make-before-break: pre-copy rounds, then a short freeze (falls back to intermittent when
    /// pre-copy cannot converge).
    Transitional,
    /// Break-before-make: stop, copy, start.
    Intermittent,
}

/// What a policy asks the engine to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Move a running service to another live node.
    Migrate {
        service: usize,
        to: usize,
        mode: SwitchMode,
    },
    /// Start a service that is down (its node failed) on a live node.
    Place { service: usize, to: usize },
    /// Copy an image to a node ahead of a migration.
    PreStage { image: u32, to: usize },
}

/// Where a service is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceState {
    Running {
        node: usize,
    },
    /// Its load still counts on `from` until step `done_at`.
    Migrating {
        from: usize,
        to: usize,
        done_at: usize,
        downtime_seconds: f64,
    },
    /// Being started on `node` after a failure; up at step `up_at`.
    Starting {
        node: usize,
        up_at: usize,
    },
    /// Its node (`from`) failed and no policy has placed it yet.
    Down {
        from: usize,
    },
}

/// The figures of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Node-seconds with a live node's load above its capacity in any resource.
    pub overload_seconds: f64,
    /// Migrations started.
    pub migrations: u64,
    /// Site-seconds with the site energy ratio above `E_tol`.
    pub energy_over_tolerance_seconds: f64,
    /// Services still down (never placed) at the end of the run.
    pub unplaceable: usize,
    /// Service-seconds of interruption: switch downtimes plus time down after a failure.
    pub downtime_seconds: f64,
    /// Services restarted on another node after a failure.
    pub restarts: u64,
    /// Images copied ahead of time.
    pub prestaged: u64,
    /// Actions the engine refused (wrong state, dead or same node).
    pub rejected: u64,
}

/// How long a transfer takes and how long the service is interrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferPlan {
    pub total_seconds: f64,
    pub downtime_seconds: f64,
    pub transitional: bool,
    /// Live pre-copy rounds before the frozen one (0 for intermittent).
    pub rounds: u32,
}

/// The transfer of `state` bytes dirtied at `dirty` bytes/s over `bandwidth`, plus `image`
/// bytes when the target lacks the image.
pub fn plan_transfer(
    net: &Network,
    bandwidth: f64,
    state: f64,
    dirty: f64,
    image: f64,
    mode: SwitchMode,
) -> TransferPlan {
    let b = bandwidth;
    let rtt = net.rtt_seconds;
    let t_down = net.downtime_target_seconds;
    let q = dirty / b;
    let stop_and_copy = state / b + rtt;
    let floor = if q < 1.0 {
        dirty * rtt / (1.0 - q)
    } else {
        f64::INFINITY
    };
    let can_iterate = q < 1.0 && floor < b * (t_down - rtt);
    let iterate = match mode {
        SwitchMode::Auto => can_iterate && stop_and_copy > t_down,
        SwitchMode::Transitional => can_iterate,
        SwitchMode::Intermittent => false,
    };
    if !iterate {
        let downtime = image / b + stop_and_copy + net.start_seconds;
        return TransferPlan {
            total_seconds: downtime,
            downtime_seconds: downtime,
            transitional: false,
            rounds: 0,
        };
    }
    // The image goes first while the service runs; then pre-copy rounds.
    let mut total = image / b;
    let mut v = state;
    let mut rounds = 0;
    loop {
        let t_i = v / b + rtt;
        if t_i <= t_down || rounds >= net.max_rounds {
            total += t_i + net.cutover_seconds;
            return TransferPlan {
                total_seconds: total,
                downtime_seconds: t_i + net.cutover_seconds,
                transitional: true,
                rounds,
            };
        }
        total += t_i;
        v = dirty * t_i;
        rounds += 1;
    }
}

/// The state of a run, which policies read through its accessors.
pub struct Sim<'a> {
    sc: &'a Scenario,
    now: usize,
    alive: Vec<bool>,
    state: Vec<ServiceState>,
    images: Vec<HashSet<u32>>,
    /// (node, image, ready at step)
    staging: Vec<(usize, u32, usize)>,
    node_hist: Vec<Vec<Demand>>,
    svc_hist: Vec<Vec<Demand>>,
    site_power: Vec<Vec<f64>>,
    report: Report,
}

/// Runs `policy` over the whole scenario.
pub fn run(sc: &Scenario, policy: &mut dyn SimPolicy) -> Result<Report, String> {
    sc.validate()?;
    let mut sim = Sim::new(sc);
    for t in 0..sc.steps {
        sim.step(t, policy);
    }
    sim.report.unplaceable = sim
        .state
        .iter()
        .filter(|s| matches!(s, ServiceState::Down { .. }))
        .count();
    Ok(sim.report)
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario) -> Sim<'a> {
        let mut images = vec![HashSet::new(); sc.nodes.len()];
        for (s, &n) in sc.placement.iter().enumerate() {
            images[n].insert(sc.services[s].image);
        }
        Sim {
            sc,
            now: 0,
            alive: vec![true; sc.nodes.len()],
            state: sc
                .placement
                .iter()
                .map(|&node| ServiceState::Running { node })
                .collect(),
            images,
            staging: Vec::new(),
            node_hist: vec![Vec::with_capacity(sc.steps); sc.nodes.len()],
            svc_hist: vec![Vec::with_capacity(sc.steps); sc.services.len()],
            site_power: vec![Vec::with_capacity(sc.steps); sc.sites.len()],
            report: Report::default(),
        }
    }

    fn step(&mut self, t: usize, policy: &mut dyn SimPolicy) {
        self.now = t;
        let sc = self.sc;
        let dt = sc.step_seconds;
        for f in sc.failures.iter().filter(|f| f.step == t) {
            self.fail(f.node);
        }
        self.finish_transfers(t);

        // Loads.
        let mut loads = vec![Demand::default(); sc.nodes.len()];
        for s in 0..sc.services.len() {
            let d = sc.demand(s, t);
            self.svc_hist[s].push(d);
            if let Some(n) = self.host(s) {
                loads[n].cpu += d.cpu;
                loads[n].mem += d.mem;
                loads[n].dirty += d.dirty;
            }
        }
        // Accounting.
        let mut site_power = vec![0.0; sc.sites.len()];
        for (n, load) in loads.iter().enumerate() {
            self.node_hist[n].push(*load);
            if !self.alive[n] {
                continue;
            }
            let spec = &sc.nodes[n];
            if load.cpu > spec.cpu_cores + 1e-9 || load.mem > spec.mem_bytes + 1e-9 {
                self.report.overload_seconds += dt;
            }
            let u = (load.cpu / spec.cpu_cores).min(1.0);
            site_power[spec.site] += spec.idle_watts + (spec.max_watts - spec.idle_watts) * u;
        }
        for (site, p) in site_power.into_iter().enumerate() {
            self.site_power[site].push(p);
            if self.site_energy_ratio(site) > sc.energy_tolerance + 1e-12 {
                self.report.energy_over_tolerance_seconds += dt;
            }
        }
        let down = self
            .state
            .iter()
            .filter(|s| matches!(s, ServiceState::Down { .. } | ServiceState::Starting { .. }))
            .count();
        self.report.downtime_seconds += down as f64 * dt;

        let actions = policy.decide(self);
        for a in actions {
            if !self.apply(a) {
                self.report.rejected += 1;
            }
        }
    }

    fn fail(&mut self, n: usize) {
        self.alive[n] = false;
        self.images[n].clear();
        self.staging.retain(|&(node, _, _)| node != n);
        for st in &mut self.state {
            *st = match *st {
                ServiceState::Running { node } if node == n => ServiceState::Down { from: n },
                ServiceState::Starting { node, .. } if node == n => ServiceState::Down { from: n },
                ServiceState::Migrating { from, .. } if from == n => ServiceState::Down { from: n },
                ServiceState::Migrating { from, to, .. } if to == n => {
                    ServiceState::Running { node: from }
                }
                other => other,
            };
        }
    }

    fn finish_transfers(&mut self, t: usize) {
        for s in 0..self.state.len() {
            let image = self.sc.services[s].image;
            match self.state[s] {
                ServiceState::Migrating {
                    to,
                    done_at,
                    downtime_seconds,
                    ..
                } if done_at <= t => {
                    self.report.downtime_seconds += downtime_seconds;
                    self.images[to].insert(image);
                    self.state[s] = ServiceState::Running { node: to };
                }
                ServiceState::Starting { node, up_at } if up_at <= t => {
                    self.images[node].insert(image);
                    self.state[s] = ServiceState::Running { node };
                }
                _ => {}
            }
        }
        let images = &mut self.images;
        self.staging.retain(|&(node, image, ready)| {
            if ready <= t {
                images[node].insert(image);
                false
            } else {
                true
            }
        });
    }

    fn steps_for(&self, seconds: f64) -> usize {
        ((seconds / self.sc.step_seconds).ceil() as usize).max(1)
    }

    /// Applies one action; false when it is not valid now.
    fn apply(&mut self, a: Action) -> bool {
        let sc = self.sc;
        match a {
            Action::Migrate { service, to, mode } => {
                let Some(ServiceState::Running { node: from }) = self.state.get(service).copied()
                else {
                    return false;
                };
                if to >= sc.nodes.len() || to == from || !self.alive[to] {
                    return false;
                }
                let d = sc.demand(service, self.now);
                let spec = &sc.services[service];
                let image = if self.images[to].contains(&spec.image) {
                    0.0
                } else {
                    spec.image_bytes
                };
                let plan = plan_transfer(
                    &sc.network,
                    sc.bandwidth(from, to),
                    d.mem,
                    d.dirty,
                    image,
                    mode,
                );
                self.state[service] = ServiceState::Migrating {
                    from,
                    to,
                    done_at: self.now + self.steps_for(plan.total_seconds),
                    downtime_seconds: plan.downtime_seconds,
                };
                self.report.migrations += 1;
                true
            }
            Action::Place { service, to } => {
                if !matches!(self.state.get(service), Some(ServiceState::Down { .. }))
                    || to >= sc.nodes.len()
                    || !self.alive[to]
                {
                    return false;
                }
                let d = sc.demand(service, self.now);
                let spec = &sc.services[service];
                let b = sc.network.intra_site_bytes_per_second;
                let image = if self.images[to].contains(&spec.image) {
                    0.0
                } else {
                    spec.image_bytes
                };
                let secs = (image + d.mem) / b + sc.network.start_seconds;
                self.state[service] = ServiceState::Starting {
                    node: to,
                    up_at: self.now + self.steps_for(secs),
                };
                self.report.restarts += 1;
                true
            }
            Action::PreStage { image, to } => {
                if to >= sc.nodes.len() || !self.alive[to] || self.has_image(to, image) {
                    return false;
                }
                let Some(spec) = sc.services.iter().find(|s| s.image == image) else {
                    return false;
                };
                let ready = self.now
                    + self.steps_for(spec.image_bytes / sc.network.inter_site_bytes_per_second);
                self.staging.push((to, image, ready));
                self.report.prestaged += 1;
                true
            }
        }
    }

    // ---- what policies read ----

    pub fn scenario(&self) -> &'a Scenario {
        self.sc
    }

    /// The current step.
    pub fn now(&self) -> usize {
        self.now
    }

    pub fn alive(&self, node: usize) -> bool {
        self.alive[node]
    }

    pub fn state(&self, service: usize) -> ServiceState {
        self.state[service]
    }

    /// The node whose load includes the service now: its node, or its source while migrating.
    pub fn host(&self, service: usize) -> Option<usize> {
        match self.state[service] {
            ServiceState::Running { node } => Some(node),
            ServiceState::Migrating { from, .. } => Some(from),
            ServiceState::Starting { .. } | ServiceState::Down { .. } => None,
        }
    }

    /// Running (not migrating, not down) services on `node`.
    pub fn running_on(&self, node: usize) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&s| self.state[s] == ServiceState::Running { node })
            .collect()
    }

    /// Services whose node failed and that nobody placed yet.
    pub fn down(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&s| matches!(self.state[s], ServiceState::Down { .. }))
            .collect()
    }

    /// Images the node holds (not those still being copied), sorted.
    pub fn images_on(&self, node: usize) -> Vec<u32> {
        let mut v: Vec<u32> = self.images[node].iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// The node's load at this step.
    pub fn node_load(&self, node: usize) -> Demand {
        self.node_hist[node].last().copied().unwrap_or_default()
    }

    /// The node's loads, oldest first, up to this step.
    pub fn node_history(&self, node: usize) -> &[Demand] {
        &self.node_hist[node]
    }

    /// The service's demand at this step.
    pub fn demand(&self, service: usize) -> Demand {
        self.svc_hist[service].last().copied().unwrap_or_default()
    }

    /// The service's demands, oldest first, up to this step.
    pub fn service_history(&self, service: usize) -> &[Demand] {
        &self.svc_hist[service]
    }

    /// Demand of the services on their way to `node` (migrating or starting there).
    pub fn incoming(&self, node: usize) -> Demand {
        let mut sum = Demand::default();
        for s in 0..self.state.len() {
            let to = match self.state[s] {
                ServiceState::Migrating { to, .. } => to,
                ServiceState::Starting { node, .. } => node,
                _ => continue,
            };
            if to == node {
                let d = self.demand(s);
                sum.cpu += d.cpu;
                sum.mem += d.mem;
                sum.dirty += d.dirty;
            }
        }
        sum
    }

    /// Whether the node holds the image or is receiving it.
    pub fn has_image(&self, node: usize, image: u32) -> bool {
        self.images[node].contains(&image)
            || self
                .staging
                .iter()
                .any(|&(n, i, _)| n == node && i == image)
    }

    /// Site power, watts, oldest first.
    pub fn site_power_history(&self, site: usize) -> &[f64] {
        &self.site_power[site]
    }

    /// Mean site power over the energy window divided by the site's budget.
    pub fn site_energy_ratio(&self, site: usize) -> f64 {
        let h = &self.site_power[site];
        let w = self.sc.energy_window.max(1).min(h.len());
        if w == 0 {
            return 0.0;
        }
        h[h.len() - w..].iter().sum::<f64>() / w as f64 / self.sc.sites[site].power_budget_watts
    }
}
