//! The cluster as the policy sees it, built from what gossip carries (every node's load,
//! forecast, trigger, energy, risk, images and services' loads) and what the placement log
//! says (where each service runs, which nodes are fenced or cordoned, which moves are in
//! flight). Histories are kept here, one sample per tick, so that correlations and site
//! windows work on any node that becomes the leader.

use std::collections::{BTreeMap, BTreeSet};

use crate::coord::Placement;
use crate::gossip::NodeSummary;
use crate::policy::{self, ClusterView, NodeView, Plan, PolicyConfig, ServiceView, SiteView};
use crate::series::{Series, SeriesSet};

/// One node of the mesh as this tick sees it.
#[derive(Debug, Clone)]
pub struct MemberInput {
    pub name: String,
    /// Alive or suspect in gossip.
    pub alive: bool,
    /// Runs no services (a witness) or may not take any (cordoned).
    pub no_services: bool,
    pub summary: NodeSummary,
}

/// Keeps the histories across ticks and turns each tick's inputs into a view and a plan.
#[derive(Debug)]
pub struct ClusterPlanner {
    cfg: PolicyConfig,
    window: usize,
    index: u64,
    nodes: SeriesSet<String>,
    services: SeriesSet<String>,
    site_power: SeriesSet<String>,
    site_risk: SeriesSet<String>,
    triggers: BTreeMap<String, policy::TriggerState>,
}

const RESOURCES: [&str; 2] = ["cpu", "memory"];

impl ClusterPlanner {
    pub fn new(cfg: PolicyConfig) -> ClusterPlanner {
        let window = cfg.corr_window.max(cfg.site_window).max(2);
        ClusterPlanner {
            cfg,
            window,
            index: 0,
            nodes: SeriesSet::new(window),
            services: SeriesSet::new(window),
            site_power: SeriesSet::new(window),
            site_risk: SeriesSet::new(window),
            triggers: BTreeMap::new(),
        }
    }

    /// The sample index of the last tick.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes one tick's inputs: records the histories and builds the view. `leaving`: the
    /// services with a move in flight (the log's intents and this leader's own moves).
    pub fn view(
        &mut self,
        members: &[MemberInput],
        placement: &Placement,
        leaving: &BTreeSet<String>,
    ) -> ClusterView {
        self.index += 1;
        let i = self.index;
        let mut members: Vec<&MemberInput> = members.iter().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|a, b| a.name == b.name);

        // Sites: power summed over their live nodes, risk the highest any of them reports,
        // budget the one configured for the site or else the sum of the nodes' own.
        let mut sites: BTreeMap<&str, (f64, f64, f64, f64)> = BTreeMap::new();
        for m in members.iter().filter(|m| m.alive) {
            let s = &m.summary;
            let e = sites.entry(s.site.as_str()).or_insert((0.0, 0.0, 0.0, 0.0));
            e.0 += finite_or(s.energy.power_watts, 0.0);
            e.1 = e.1.max(finite_or(s.risk, 0.0));
            e.2 = e.2.max(finite_or(s.energy.site_budget_watts, 0.0));
            e.3 += finite_or(s.energy.max_watts, 0.0);
        }
        let mut site_views = Vec::new();
        for (id, (power, risk, budget, max_sum)) in &sites {
            self.site_power.push(id.to_string(), i, *power);
            self.site_risk.push(id.to_string(), i, *risk);
            site_views.push(SiteView {
                id: id.to_string(),
                power_w: history(self.site_power.get(&id.to_string())),
                power_budget_w: if *budget > 0.0 { *budget } else { *max_sum },
                risk: history(self.site_risk.get(&id.to_string())),
            });
        }

        let mut nodes = Vec::new();
        let mut by_node: BTreeMap<&str, &MemberInput> = BTreeMap::new();
        for m in &members {
            let s = &m.summary;
            let fenced =
                placement.fenced.contains_key(&m.name) || placement.cordoned.contains(&m.name);
            // At least all of its share when its services waited for a CPU.
            let cpu = cpu_load(s);
            if m.alive {
                self.nodes
                    .push(m.name.clone(), i, cpu * s.capacity.cpu_cores);
            }
            by_node.insert(m.name.as_str(), m);
            nodes.push(NodeView {
                id: m.name.clone(),
                site: s.site.clone(),
                alive: m.alive,
                // Never a target: fenced, cordoned, or a node that runs no services.
                fenced: fenced || m.no_services,
                capacity: vec![s.capacity.cpu_cores, s.capacity.memory_bytes as f64],
                util_now: vec![cpu, s.load.memory],
                util_forecast: vec![s.forecast.as_ref().map_or(f64::NAN, |f| f.u_max), f64::NAN],
                load_history: history(self.nodes.get(&m.name)),
                images: s.images.iter().cloned().collect(),
                switch_latencies_s: s
                    .switch_latencies_ms
                    .iter()
                    .map(|ms| f64::from(*ms) / 1e3)
                    .collect(),
                links: BTreeMap::new(),
            });
        }

        // Services: where the log places them, on a node that can run them now, with the load
        // that node announces. Those of fenced or dead nodes are the failover's (the
        // coordinator's, after the fence bound), not the policy's; those not measured yet
        // are left out until they are.
        let mut services = Vec::new();
        for (name, entry) in &placement.services {
            let Some(node) = entry.node.as_deref() else {
                continue;
            };
            let Some(m) = by_node.get(node).filter(|m| m.alive) else {
                continue;
            };
            if placement.fenced.contains_key(node) {
                continue;
            }
            let Some(h) = m.summary.services.iter().find(|h| &h.id == name) else {
                continue;
            };
            self.services.push(name.clone(), i, h.cpu_cores);
            services.push(ServiceView {
                id: name.clone(),
                node: node.to_string(),
                demand: vec![h.cpu_cores, h.memory_bytes as f64],
                load_history: history(self.services.get(name)),
                image: h.image.clone(),
                image_bytes: h.image_bytes,
                state_bytes: h.state_bytes,
                dirty_bytes_per_s: h.dirty_bytes_per_sec,
                stop_s: h.stop_s,
                leaving: entry.intent.is_some() || leaving.contains(name),
                ..ServiceView::default()
            });
        }
        self.services.retain_recent(i, self.window as u64);
        self.nodes.retain_recent(i, self.window as u64);
        ClusterView {
            resources: RESOURCES.iter().map(|r| r.to_string()).collect(),
            sites: site_views,
            nodes,
            services,
            triggers: self.triggers.clone(),
        }
    }

    /// Plans over `view` (from [`Self::view`] this tick) and keeps the triggers' state.
    pub fn plan(&mut self, view: &ClusterView) -> Plan {
        let plan = policy::plan(view, &self.cfg, self.index);
        self.triggers = plan.triggers.clone();
        plan
    }
}

/// A node's CPU load as a share of its capacity, from what it announces
/// ([`crate::forecast::node_cpu_load`]).
fn cpu_load(s: &NodeSummary) -> f64 {
    crate::forecast::node_cpu_load(
        s.load.cpu,
        s.services.iter().map(|h| h.cpu_wait_cores),
        s.capacity.cpu_cores,
    )
}

fn finite_or(v: f64, or: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        or
    }
}

fn history(s: Option<&Series>) -> Vec<f64> {
    s.map(|s| {
        s.values()
            .into_iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::{Cmd, Ha};
    use crate::gossip::{Capacity, HostedService, Load};

    fn member(name: &str, cpu_load: f64, services: &[(&str, f64)]) -> MemberInput {
        MemberInput {
            name: name.into(),
            alive: true,
            no_services: false,
            summary: NodeSummary {
                site: "s1".into(),
                capacity: Capacity {
                    cpu_cores: 0.5,
                    memory_bytes: 1 << 30,
                    ..Capacity::default()
                },
                load: Load {
                    cpu: cpu_load,
                    memory: 0.1,
                    ..Load::default()
                },
                services: services
                    .iter()
                    .map(|(id, cores)| HostedService {
                        id: id.to_string(),
                        cpu_cores: *cores,
                        memory_bytes: 1 << 20,
                        state_bytes: 1 << 20,
                        ..HostedService::default()
                    })
                    .collect(),
                ..NodeSummary::default()
            },
        }
    }

    fn placed(services: &[(&str, &str)]) -> Placement {
        let mut p = Placement::default();
        for (i, (s, n)) in services.iter().enumerate() {
            p.apply(
                i as u64 + 1,
                &Cmd::Define {
                    service: s.to_string(),
                    node: n.to_string(),
                    spec: "{}".into(),
                    ha: Ha::Restart,
                },
            );
        }
        p
    }

    /// Ticks until a plan moves something (at most `max` ticks).
    fn run(
        planner: &mut ClusterPlanner,
        members: &[MemberInput],
        p: &Placement,
        max: usize,
    ) -> Option<Plan> {
        (0..max).find_map(|_| {
            let v = planner.view(members, p, &BTreeSet::new());
            let plan = planner.plan(&v);
            let fired = plan
                .nodes
                .iter()
                .any(|n| n.trigger.as_ref().is_some_and(|t| t.fired));
            (fired || !plan.migrations.is_empty()).then_some(plan)
        })
    }

    #[test]
    fn a_service_whose_load_steps_up_leaves_its_node_for_one_with_room() {
        let p = placed(&[("kv", "n2"), ("bg", "n2"), ("other", "n1")]);
        let mut planner = ClusterPlanner::new(PolicyConfig::default());
        let quiet = [
            member("n1", 0.2, &[("other", 0.1)]),
            member("n2", 0.4, &[("kv", 0.02), ("bg", 0.18)]),
            member("n3", 0.0, &[]),
        ];
        assert!(
            run(&mut planner, &quiet, &p, 20).is_none(),
            "nothing moves while quiet"
        );
        let busy = [
            member("n1", 0.2, &[("other", 0.1)]),
            member("n2", 0.96, &[("kv", 0.3), ("bg", 0.18)]),
            member("n3", 0.0, &[]),
        ];
        let plan = run(&mut planner, &busy, &p, 10).unwrap_or_else(|| {
            let v = planner.view(&busy, &p, &BTreeSet::new());
            panic!("n2 never fired: {:#?}", planner.plan(&v).nodes)
        });
        assert_eq!(
            plan.migrations.len(),
            1,
            "{:#?}\n{:#?}",
            plan.unplaced,
            plan.nodes[1].selection
        );
        let m = &plan.migrations[0];
        assert_eq!((m.service.as_str(), m.from.as_str()), ("kv", "n2"));
        // The service whose load made the step, to the emptiest node with room.
        assert_eq!(m.to, "n3");
        // The trigger fired once: the next samples move nothing more.
        assert!(run(&mut planner, &busy, &p, 5).is_none());
    }

    #[test]
    fn a_node_whose_services_wait_for_cpu_is_at_its_capacity() {
        // n2's share is 0.5 cores; its services used 0.48 of it (96%) and waited, runnable,
        // for another 0.25 between them: it is held at its share.
        let p = placed(&[("a", "n2"), ("b", "n2"), ("c", "n2")]);
        let mut planner = ClusterPlanner::new(PolicyConfig::default());
        let mut n2 = member("n2", 0.96, &[("a", 0.2), ("b", 0.14), ("c", 0.14)]);
        for (h, waited) in n2.summary.services.iter_mut().zip([0.1, 0.1, 0.05]) {
            h.cpu_wait_cores = waited;
        }
        let members = [member("n1", 0.0, &[]), n2.clone(), member("n3", 0.0, &[])];
        let v = planner.view(&members, &p, &BTreeSet::new());
        let node = |v: &ClusterView| v.nodes.iter().find(|n| n.id == "n2").unwrap().util_now[0];
        assert_eq!(node(&v), 1.0);
        // The waits are no demand: each service's share is what it used.
        let a = v.services.iter().find(|s| s.id == "a").unwrap();
        assert_eq!(a.demand[0], 0.2);
        // Waits under a quarter of the node's cores (contention): its use stands.
        for h in n2.summary.services.iter_mut() {
            h.cpu_wait_cores = 0.04;
        }
        let members = [member("n1", 0.0, &[]), n2, member("n3", 0.0, &[])];
        assert_eq!(node(&planner.view(&members, &p, &BTreeSet::new())), 0.96);
        assert_eq!(
            crate::forecast::node_cpu_load(1.3, [0.5].into_iter(), 0.0),
            1.3
        );
    }

    #[test]
    fn a_services_measured_stop_reaches_the_plan() {
        let p = placed(&[("kv", "n2")]);
        let mut n2 = member("n2", 0.2, &[("kv", 0.1)]);
        n2.summary.services[0].stop_s = 0.7;
        let v = ClusterPlanner::new(PolicyConfig::default()).view(&[n2], &p, &BTreeSet::new());
        assert_eq!(v.services[0].stop_s, 0.7);
    }

    #[test]
    fn a_targets_announced_switch_latencies_decide_the_mode() {
        use crate::migrate::agent::SwitchHistory;
        use crate::policy::{ClassLabel, Link, SwitchMode};
        // The node's history as its summary announces it: three slow transitional moves
        // into n3 (p90 2.5 s > L_max 2 s), and an intermittent one that does not count.
        let history = SwitchHistory::default();
        history.record(SwitchMode::Transitional, 2.5);
        history.record(SwitchMode::Intermittent, 9.0);
        history.record(SwitchMode::Transitional, 2.4);
        history.record(SwitchMode::Transitional, 0.3);
        let p = placed(&[("kv", "n2"), ("bg", "n2")]);
        let mut n3 = member("n3", 0.0, &[]);
        n3.summary.switch_latencies_ms = history.latencies_ms();
        assert_eq!(n3.summary.switch_latencies_ms, [2500, 2400, 300]);
        let v =
            ClusterPlanner::new(PolicyConfig::default()).view(&[n3.clone()], &p, &BTreeSet::new());
        assert_eq!(v.nodes[0].switch_latencies_s, [2.5, 2.4, 0.3]);
        // 1 GB of state dirtied at 10 MB/s over a 100 MB/s link: iterating is worthwhile.
        let n2 = |load: f64, kv: f64| {
            let mut n2 = member("n2", load, &[("kv", kv), ("bg", 0.18)]);
            for s in &mut n2.summary.services {
                s.state_bytes = 1 << 30;
                s.dirty_bytes_per_sec = 1e7;
            }
            n2
        };
        let plan_with = |n3: &MemberInput| {
            let mut planner = ClusterPlanner::new(PolicyConfig::default());
            let quiet = [n2(0.4, 0.02), n3.clone()];
            let busy = [n2(0.96, 0.3), n3.clone()];
            (0..30)
                .find_map(|i| {
                    let members = if i < 20 { &quiet } else { &busy };
                    let mut v = planner.view(members, &p, &BTreeSet::new());
                    v.nodes[0].links.insert(
                        "n3".into(),
                        Link {
                            bytes_per_s: 1e8,
                            rtt_s: 0.001,
                        },
                    );
                    let plan = planner.plan(&v);
                    plan.migrations.first().cloned()
                })
                .expect("a service leaves n2")
        };
        let m = plan_with(&n3);
        assert_eq!(m.to, "n3");
        assert_eq!(m.switch.label.label, ClassLabel::Negative);
        assert_eq!(m.switch.label.p90_s, Some(2.5));
        assert_eq!(m.switch.label.samples, 3);
        assert_eq!(m.mode, SwitchMode::Intermittent);
        // The same move to a node whose moves were fast is transitional.
        let fast = {
            let mut n3 = n3.clone();
            n3.summary.switch_latencies_ms = vec![300, 250, 200];
            n3
        };
        let m = plan_with(&fast);
        assert_eq!(m.switch.label.label, ClassLabel::Positive);
        assert_eq!(m.mode, SwitchMode::Transitional, "{:#?}", m.switch.precopy);
    }

    #[test]
    fn no_move_targets_a_node_that_runs_no_services_or_is_fenced_or_cordoned() {
        let mut p = placed(&[("kv", "n2"), ("bg", "n2")]);
        p.apply(
            10,
            &Cmd::Cordon {
                node: "n1".into(),
                on: true,
            },
        );
        let mut witness = member("n3", 0.0, &[]);
        witness.no_services = true;
        let members = [
            member("n1", 0.0, &[]),
            member("n2", 0.96, &[("kv", 0.3), ("bg", 0.18)]),
            witness,
            member("n4", 0.0, &[]),
        ];
        let mut planner = ClusterPlanner::new(PolicyConfig::default());
        let plan = run(&mut planner, &members, &p, 10).expect("n2 fires");
        let to: Vec<&str> = plan.migrations.iter().map(|m| m.to.as_str()).collect();
        assert!(
            !to.is_empty() && to.iter().all(|t| *t == "n4"),
            "{to:?} {:?}",
            plan.unplaced
        );

        // A fenced node's services are the failover's, never the policy's.
        p.apply(
            11,
            &Cmd::Fence {
                node: "n2".into(),
                by: "coordinator".into(),
                at_unix_ms: 0,
                term: 0,
            },
        );
        let v = ClusterPlanner::new(PolicyConfig::default()).view(&members, &p, &BTreeSet::new());
        assert!(v.services.is_empty(), "{:?}", v.services);
        assert!(v.nodes.iter().find(|n| n.id == "n2").unwrap().fenced);
    }
}
