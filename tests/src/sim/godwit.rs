//! The godwit policy in the simulator: each step builds a [`ClusterView`] from the simulation,
//! with forecasts from [`godwit::predict`], calls [`godwit::policy::plan`] and turns the plan's
//! migrations, failover restarts and image pre-staging into engine actions.
//!
//! Forecasts: one [`Forecaster`] per service CPU series (ARMA, refit every `refit_every` steps
//! over the last `window` samples). A node's forecast at `t + h` is the sum of the forecasts of
//! the services that will be on it then (those running there and not leaving, plus those on
//! their way to it), each the peak of its mean path over `1..=h`. Service series are forecast
//! rather than node series because a node's series jumps at every migration in or out, which an
//! ARMA model reads as a shock; a service's demand does not depend on where it runs. Memory is
//! forecast by persistence (its current value).

use std::collections::BTreeMap;

use godwit::policy::{
    plan, ClusterView, Link, NodeView, Plan, PolicyConfig, ServiceView, SiteView,
    SwitchMode as Mode, TriggerState,
};
use godwit::predict::{FitOptions, Forecaster};

use super::bound;
use super::engine::{Action, ServiceState, Sim, SwitchMode};
use super::policy::SimPolicy;
use super::scenario::Scenario;

/// The godwit policy with its forecasters and trigger states.
pub struct Godwit {
    pub cfg: PolicyConfig,
    /// Forecast horizon `h`, in steps.
    pub horizon: usize,
    /// Samples of load history given to the policy (load correlation).
    pub history: usize,
    window: usize,
    refit_every: usize,
    forecasters: Vec<Forecaster>,
    triggers: BTreeMap<String, TriggerState>,
    /// Forecasts that failed (before the first fit, or a model error): persistence was used.
    pub forecast_fallbacks: u64,
    /// Node triggers that fired, by reason.
    pub fired: BTreeMap<String, u64>,
    /// Services the plans could not place, by stage and reason.
    pub unplaced: BTreeMap<String, u64>,
    /// Migrations planned, by placement rule (and whether they stood in for an unplaced one).
    pub moves: BTreeMap<String, u64>,
    /// Where the overload-seconds fall, when asked for ([`Godwit::diagnose`]).
    pub diagnosis: Option<Diagnosis>,
}

/// Where godwit's overload-seconds fall: each overloaded node-step in one category, and each
/// overload episode (a node going over capacity) with the lead its forecast gave.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    unavoidable: Vec<bool>,
    prev_over: Vec<bool>,
    fc_over_since: Vec<Option<usize>>,
    last_fired: Vec<Option<usize>>,
    /// Per node, the last step a move or restart landed on it.
    last_landed: Vec<Option<usize>>,
    prev_state: Vec<ServiceState>,
    /// Overloaded node-steps by category.
    pub categories: BTreeMap<String, u64>,
    /// Overload episodes by the forecast's lead (steps the node forecast had been at or over
    /// capacity before the episode started).
    pub leads: BTreeMap<String, u64>,
    /// Overload episodes by whether the node's trigger fired in the `horizon` steps before.
    pub fired_before: BTreeMap<String, u64>,
}

impl Godwit {
    /// The default policy configuration, with the scenario's energy tolerance, energy window,
    /// downtime target and round limit (what an operator would configure for that cluster).
    pub fn new(sc: &Scenario) -> Godwit {
        let cfg = PolicyConfig {
            energy_tolerance: sc.energy_tolerance,
            site_window: sc.energy_window,
            downtime_target_s: sc.network.downtime_target_seconds,
            max_rounds: sc.network.max_rounds,
            ..PolicyConfig::default()
        };
        Godwit {
            history: cfg.corr_window.max(2),
            cfg,
            horizon: 30,
            window: 600,
            refit_every: 60,
            forecasters: Vec::new(),
            triggers: BTreeMap::new(),
            forecast_fallbacks: 0,
            fired: BTreeMap::new(),
            unplaced: BTreeMap::new(),
            moves: BTreeMap::new(),
            diagnosis: None,
        }
    }

    /// Turns on the overload diagnosis for a run of `sc` (see [`Diagnosis`]).
    pub fn diagnose(&mut self, sc: &Scenario) {
        self.diagnosis = Some(Diagnosis {
            unavoidable: bound::unavoidable_steps(sc),
            prev_over: vec![false; sc.nodes.len()],
            fc_over_since: vec![None; sc.nodes.len()],
            last_fired: vec![None; sc.nodes.len()],
            last_landed: vec![None; sc.nodes.len()],
            ..Diagnosis::default()
        });
    }

    /// The diagnosis as markdown lines (empty when it was off).
    pub fn diagnosis_report(&self) -> String {
        let Some(d) = &self.diagnosis else {
            return String::new();
        };
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("- {k}: {v}\n"))
                .collect::<String>()
        };
        format!(
            "overloaded node-seconds by cause:\n{}\noverload episodes by forecast lead:\n{}\n\
             overload episodes by trigger in the {} steps before:\n{}",
            list(&d.categories),
            list(&d.leads),
            self.horizon,
            list(&d.fired_before)
        )
    }

    fn record(&mut self, sim: &Sim<'_>, fc_load: &[[f64; 2]], p: &Plan) {
        let horizon = self.horizon;
        let Some(d) = self.diagnosis.as_mut() else {
            return;
        };
        let sc = sim.scenario();
        let t = sim.now();
        let mut lb_left = usize::from(d.unavoidable.get(t).copied().unwrap_or(false));
        for s in 0..sc.services.len() {
            let st = sim.state(s);
            if let (Some(ServiceState::Migrating { to, .. }), ServiceState::Running { node }) =
                (d.prev_state.get(s), st)
            {
                if *to == node {
                    d.last_landed[node] = Some(t);
                }
            }
            if s < d.prev_state.len() {
                d.prev_state[s] = st;
            } else {
                d.prev_state.push(st);
            }
        }
        for (n, spec) in sc.nodes.iter().enumerate() {
            let id = node_id(n);
            let report = p.nodes.iter().find(|r| r.node == id);
            let fired = report
                .and_then(|r| r.trigger.as_ref())
                .is_some_and(|tr| tr.fired);
            let fc_over = fc_load[n][0] >= spec.cpu_cores || fc_load[n][1] >= spec.mem_bytes;
            if !fc_over {
                d.fc_over_since[n] = None;
            } else if d.fc_over_since[n].is_none() {
                d.fc_over_since[n] = Some(t);
            }
            let load = sim.node_load(n);
            let over = sim.alive(n)
                && (load.cpu > spec.cpu_cores + 1e-9 || load.mem > spec.mem_bytes + 1e-9);
            if over && !d.prev_over[n] {
                let lead = d.fc_over_since[n].map_or(0, |s| t - s);
                let bucket = match lead {
                    0 => "none (0 steps)",
                    1..=9 => "1-9 steps",
                    10..=29 => "10-29 steps",
                    _ => "30+ steps",
                };
                *d.leads.entry(bucket.into()).or_default() += 1;
                let before = d.last_fired[n].is_some_and(|f| t - f <= horizon);
                let landed = d.last_landed[n].is_some_and(|l| t - l <= horizon);
                let key = format!(
                    "{}, {}",
                    if before { "fired" } else { "did not fire" },
                    if landed {
                        "a move landed on it"
                    } else {
                        "no move landed on it"
                    }
                );
                *d.fired_before.entry(key).or_default() += 1;
            }
            d.prev_over[n] = over;
            if fired {
                d.last_fired[n] = Some(t);
            }
            if !over {
                continue;
            }
            let cause = if lb_left > 0 {
                lb_left -= 1;
                "unavoidable (cluster demand above live capacity)".to_string()
            } else if let Some(to) = (0..sc.services.len()).find_map(|s| match sim.state(s) {
                ServiceState::Migrating { from, to, .. } if from == n => Some(to),
                _ => None,
            }) {
                format!(
                    "a move out is still copying (its load stays on the source), {}",
                    if sc.nodes[to].site == spec.site {
                        "same site"
                    } else {
                        "to another site"
                    }
                )
            } else if let Some(u) = p.unplaced.iter().find(|u| u.from == id) {
                format!("fired, no target: {}", u.reason)
            } else if p.migrations.iter().any(|m| m.from == id) {
                "fired now, move starts (none was in flight)".to_string()
            } else {
                match report.and_then(|r| r.trigger.as_ref()) {
                    Some(tr) if tr.fired => "fired, selected nothing".to_string(),
                    Some(tr) => format!("trigger did not fire: {:?}", tr.reason),
                    None => "not usable".to_string(),
                }
            };
            *d.categories.entry(cause).or_default() += 1;
        }
    }

    /// Peak of the mean CPU forecast of service `s` over the horizon (its current demand when
    /// no forecast is available).
    fn cpu_forecast(&mut self, s: usize, now: f64) -> f64 {
        match self.forecasters[s].forecast(self.horizon.max(1), 0.8) {
            Ok(points) if !points.is_empty() => points
                .iter()
                .map(|p| p.mean)
                .filter(|m| m.is_finite())
                .fold(0.0, f64::max)
                .max(0.0),
            _ => {
                self.forecast_fallbacks += 1;
                now
            }
        }
    }
}

fn node_id(n: usize) -> String {
    format!("n{n:03}")
}

fn service_id(s: usize) -> String {
    format!("s{s:04}")
}

fn image_id(i: u32) -> String {
    format!("img{i}")
}

fn parse_index(id: &str, prefix: &str) -> Option<usize> {
    id.strip_prefix(prefix)?.parse().ok()
}

fn tail<T: Copy, U>(xs: &[T], n: usize, f: impl Fn(T) -> U) -> Vec<U> {
    xs[xs.len().saturating_sub(n)..]
        .iter()
        .map(|x| f(*x))
        .collect()
}

impl SimPolicy for Godwit {
    fn name(&self) -> &str {
        "godwit"
    }

    fn notes(&self) -> Option<String> {
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        Some(format!(
            "triggers fired: {}; moves planned by rule: {}; not placed (node-samples): {}; \
             forecasts unavailable: {}",
            list(&self.fired),
            list(&self.moves),
            list(&self.unplaced),
            self.forecast_fallbacks
        ))
    }

    fn decide(&mut self, sim: &Sim<'_>) -> Vec<Action> {
        let sc = sim.scenario();
        let nsvc = sc.services.len();
        while self.forecasters.len() < nsvc {
            self.forecasters.push(Forecaster::new(
                FitOptions::default(),
                self.window,
                self.refit_every,
            ));
        }
        for s in 0..nsvc {
            self.forecasters[s].observe(sim.demand(s).cpu);
        }

        // Where each service will be at t + h, and the nodes' forecast loads.
        let mut fc_load = vec![[0.0f64; 2]; sc.nodes.len()];
        for s in 0..nsvc {
            let d = sim.demand(s);
            let dest = match sim.state(s) {
                ServiceState::Running { node } => node,
                ServiceState::Migrating { to, .. } => to,
                ServiceState::Starting { node, .. } => node,
                ServiceState::Down { .. } => continue,
            };
            let f = self.cpu_forecast(s, d.cpu);
            fc_load[dest][0] += f;
            fc_load[dest][1] += d.mem;
        }

        let sites = sc
            .sites
            .iter()
            .enumerate()
            .map(|(i, site)| SiteView {
                id: site.name.clone(),
                power_w: tail(
                    sim.site_power_history(i),
                    2 * sc.energy_window.max(1),
                    |p| p,
                ),
                power_budget_w: site.power_budget_watts,
                risk: vec![site.risk],
            })
            .collect();
        let nodes = sc
            .nodes
            .iter()
            .enumerate()
            .map(|(n, spec)| {
                let load = sim.node_load(n);
                let cap = [spec.cpu_cores, spec.mem_bytes];
                NodeView {
                    id: node_id(n),
                    site: sc.sites[spec.site].name.clone(),
                    alive: sim.alive(n),
                    fenced: false,
                    capacity: cap.to_vec(),
                    util_now: vec![load.cpu / cap[0], load.mem / cap[1]],
                    util_forecast: vec![fc_load[n][0] / cap[0], fc_load[n][1] / cap[1]],
                    load_history: tail(sim.node_history(n), self.history, |d| d.cpu),
                    images: sim.images_on(n).into_iter().map(image_id).collect(),
                    switch_latencies_s: Vec::new(),
                    links: (0..sc.nodes.len())
                        .filter(|&m| m != n)
                        .map(|m| {
                            (
                                node_id(m),
                                Link {
                                    bytes_per_s: sc.bandwidth(n, m),
                                    rtt_s: sc.network.rtt_seconds,
                                },
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        let services = (0..nsvc)
            .map(|s| {
                let d = sim.demand(s);
                let spec = &sc.services[s];
                // In flight: pinned where its load counts now (source) or will (target).
                let (node, pinned, leaving) = match sim.state(s) {
                    ServiceState::Running { node } => (node, false, false),
                    ServiceState::Migrating { from, .. } => (from, true, true),
                    ServiceState::Starting { node, .. } => (node, true, false),
                    ServiceState::Down { from } => (from, false, false),
                };
                ServiceView {
                    id: service_id(s),
                    node: node_id(node),
                    demand: vec![d.cpu, d.mem],
                    load_history: tail(sim.service_history(s), self.history, |d| d.cpu),
                    image: image_id(spec.image),
                    image_bytes: spec.image_bytes as u64,
                    state_bytes: d.mem as u64,
                    dirty_bytes_per_s: d.dirty,
                    dirty_curve: Vec::new(),
                    pinned,
                    leaving,
                    move_probability: None,
                    // The simulator's services stop at once.
                    stop_s: 0.0,
                }
            })
            .collect();
        let view = ClusterView {
            resources: vec!["cpu".into(), "memory".into()],
            sites,
            nodes,
            services,
            triggers: std::mem::take(&mut self.triggers),
        };

        let p = plan(&view, &self.cfg, sim.now() as u64);
        for n in &p.nodes {
            if let Some(t) = n.trigger.as_ref().filter(|t| t.fired) {
                *self.fired.entry(format!("{:?}", t.reason)).or_default() += 1;
            }
        }
        for u in &p.unplaced {
            *self
                .unplaced
                .entry(format!("{:?}: {}", u.stage, u.reason))
                .or_default() += 1;
        }
        self.record(sim, &fc_load, &p);
        self.triggers = p.triggers;
        let mut actions = Vec::new();
        for f in &p.failover {
            if let (Some(service), Some(to)) =
                (parse_index(&f.service, "s"), parse_index(&f.to, "n"))
            {
                actions.push(Action::Place { service, to });
            }
        }
        for m in &p.migrations {
            let substitute = p.nodes.iter().any(|n| {
                n.selection
                    .as_ref()
                    .is_some_and(|sel| sel.substitutes.contains(&m.service))
            });
            let key = format!(
                "{:?}{}",
                m.placement.site_rule,
                if substitute { " (substitute)" } else { "" }
            );
            *self.moves.entry(key).or_default() += 1;
            if let (Some(service), Some(to)) =
                (parse_index(&m.service, "s"), parse_index(&m.to, "n"))
            {
                let mode = match m.mode {
                    Mode::Transitional => SwitchMode::Transitional,
                    Mode::Intermittent => SwitchMode::Intermittent,
                };
                actions.push(Action::Migrate { service, to, mode });
            }
        }
        for c in &p.prestage.copies {
            if let (Some(image), Some(to)) = (
                c.image.strip_prefix("img").and_then(|i| i.parse().ok()),
                parse_index(&c.to, "n"),
            ) {
                // The view lists held images only; skip copies already under way.
                if to < sc.nodes.len() && !sim.has_image(to, image) {
                    actions.push(Action::PreStage { image, to });
                }
            }
        }
        actions
    }
}
