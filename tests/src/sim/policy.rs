//! The policies the simulator compares: a trait, the do-nothing baseline and a reactive static
//! threshold. The godwit policy is in `godwit.rs`.

use super::engine::{Action, ServiceState, Sim, SwitchMode};
use super::trace::Demand;

/// A placement policy: called once per step, after the step's loads are known.
pub trait SimPolicy {
    fn name(&self) -> &str;
    /// What to do now. Invalid actions are refused by the engine and counted.
    fn decide(&mut self, sim: &Sim<'_>) -> Vec<Action>;
    /// A line about the policy's own decisions after a run (e.g. why it did not act), if any.
    fn notes(&self) -> Option<String> {
        None
    }
}

/// Never moves anything, never restarts anything.
#[derive(Debug, Default)]
pub struct NoAction;

impl SimPolicy for NoAction {
    fn name(&self) -> &str {
        "no-action"
    }

    fn decide(&mut self, _sim: &Sim<'_>) -> Vec<Action> {
        Vec::new()
    }
}

/// The classic static threshold: when a node's current utilisation (the largest over CPU and
/// memory) passes `threshold`, move its largest service (by CPU) to the least-loaded live node
/// that stays under the threshold with it. A node acts at most once per `cooldown_steps`, and
/// never while one of its migrations is in flight; a service that moved stays put for
/// `residence_steps`. After a failure it restarts each orphan on the least-loaded node that
/// has room for it, largest first.
#[derive(Debug)]
pub struct ReactiveStatic {
    pub threshold: f64,
    pub cooldown_steps: usize,
    pub residence_steps: usize,
    node_quiet_until: Vec<usize>,
    service_moved_at: Vec<Option<usize>>,
}

impl ReactiveStatic {
    pub fn new(threshold: f64) -> ReactiveStatic {
        ReactiveStatic {
            threshold,
            cooldown_steps: 30,
            residence_steps: 300,
            node_quiet_until: Vec::new(),
            service_moved_at: Vec::new(),
        }
    }
}

/// Largest utilisation over CPU and memory of `load` on `node`.
pub fn u_max(sim: &Sim<'_>, node: usize, load: Demand) -> f64 {
    let spec = &sim.scenario().nodes[node];
    f64::max(load.cpu / spec.cpu_cores, load.mem / spec.mem_bytes)
}

/// Loads of every node now, plus what is already on its way to it.
pub fn committed_loads(sim: &Sim<'_>) -> Vec<Demand> {
    (0..sim.scenario().nodes.len())
        .map(|n| add(sim.node_load(n), sim.incoming(n)))
        .collect()
}

pub fn add(a: Demand, b: Demand) -> Demand {
    Demand {
        cpu: a.cpu + b.cpu,
        mem: a.mem + b.mem,
        dirty: a.dirty + b.dirty,
    }
}

pub fn sub(a: Demand, b: Demand) -> Demand {
    Demand {
        cpu: a.cpu - b.cpu,
        mem: a.mem - b.mem,
        dirty: a.dirty - b.dirty,
    }
}

/// The live node other than `except` with the lowest utilisation once `d` is added, among
/// those where that utilisation stays at or under `limit`.
pub fn least_loaded_fit(
    sim: &Sim<'_>,
    loads: &[Demand],
    d: Demand,
    except: Option<usize>,
    limit: f64,
) -> Option<usize> {
    (0..loads.len())
        .filter(|&n| sim.alive(n) && Some(n) != except)
        .map(|n| (n, u_max(sim, n, add(loads[n], d))))
        .filter(|&(_, u)| u <= limit)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n)
}

impl SimPolicy for ReactiveStatic {
    fn name(&self) -> &str {
        "reactive-static"
    }

    fn decide(&mut self, sim: &Sim<'_>) -> Vec<Action> {
        let sc = sim.scenario();
        let now = sim.now();
        self.node_quiet_until.resize(sc.nodes.len(), 0);
        self.service_moved_at.resize(sc.services.len(), None);
        let mut loads = committed_loads(sim);
        let mut actions = Vec::new();

        // Failover: the largest orphans first, each where it fits.
        let mut down = sim.down();
        down.sort_by(|&a, &b| sim.demand(b).cpu.total_cmp(&sim.demand(a).cpu));
        for s in down {
            let d = sim.demand(s);
            if let Some(to) = least_loaded_fit(sim, &loads, d, None, 1.0) {
                loads[to] = add(loads[to], d);
                actions.push(Action::Place { service: s, to });
            }
        }

        let migrating_from: Vec<usize> = (0..sc.services.len())
            .filter_map(|s| match sim.state(s) {
                ServiceState::Migrating { from, .. } => Some(from),
                _ => None,
            })
            .collect();
        for n in 0..sc.nodes.len() {
            if !sim.alive(n)
                || now < self.node_quiet_until[n]
                || migrating_from.contains(&n)
                || u_max(sim, n, sim.node_load(n)) <= self.threshold
            {
                continue;
            }
            let largest = sim
                .running_on(n)
                .into_iter()
                .filter(|&s| {
                    self.service_moved_at[s].is_none_or(|at| now >= at + self.residence_steps)
                })
                .max_by(|&a, &b| sim.demand(a).cpu.total_cmp(&sim.demand(b).cpu));
            let Some(s) = largest else { continue };
            let d = sim.demand(s);
            let Some(to) = least_loaded_fit(sim, &loads, d, Some(n), self.threshold) else {
                continue;
            };
            loads[to] = add(loads[to], d);
            self.node_quiet_until[n] = now + self.cooldown_steps;
            self.service_moved_at[s] = Some(now);
            actions.push(Action::Migrate {
                service: s,
                to,
                mode: SwitchMode::Auto,
            });
        }
        actions
    }
}
