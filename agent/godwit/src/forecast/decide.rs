//! This node's own view of the policy: the node, its site and its containers as a
//! [`ClusterView`] of one node, run through [`policy::plan`] every sample.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;

use super::{Entity, Forecasts, Metric};
use crate::config::Config;
use crate::policy::{self, ClusterView, NodeView, Plan, PolicyConfig, ServiceView, SiteView};
use crate::probe::Snapshot;
use crate::series::{Series, SeriesSet};

/// The operator's risk level for this node's site, in `[0, 1]`, as `f64` bits; set from config
/// and changed at run time through the API.
#[derive(Debug, Clone)]
pub struct SharedRisk(Arc<AtomicU64>);

impl SharedRisk {
    pub fn new(risk: f64) -> SharedRisk {
        SharedRisk(Arc::new(AtomicU64::new(risk.to_bits())))
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    /// Sets the risk; refuses values outside `[0, 1]`.
    pub fn set(&self, risk: f64) -> Result<(), String> {
        if !(0.0..=1.0).contains(&risk) {
            return Err(format!("risk {risk} is outside 0 to 1"));
        }
        self.0.store(risk.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

/// The latest local decisions: the view that went in and the plan that came out, and the
/// last plan in which a trigger fired (a trigger fires once, then cools down: this keeps what
/// it decided visible).
#[derive(Debug, Clone, Serialize)]
pub struct Decisions {
    pub taken_at_unix_ms: u64,
    pub view: ClusterView,
    pub plan: Plan,
    pub last_trigger: Option<Arc<TriggeredPlan>>,
}

/// A plan in which at least one node's trigger fired.
#[derive(Debug, Clone, Serialize)]
pub struct TriggeredPlan {
    pub taken_at_unix_ms: u64,
    pub plan: Plan,
}

pub type SharedDecisions = Arc<RwLock<Option<Arc<Decisions>>>>;

/// The migration journal, once the daemon has opened it: its source entries are the moves in
/// flight away from this node, which the policy must see as `leaving`.
pub type SharedJournal = Arc<OnceLock<Arc<crate::migrate::journal::Journal>>>;

/// The cgroup directories of the services the journal records as moving away from this node
/// (every phase: until the source is done with it, the service's load is still here).
pub(super) fn leaving_cgroups(journal: &SharedJournal) -> Vec<PathBuf> {
    journal
        .get()
        .map(|j| j.sources().into_iter().map(|e| e.cgroup).collect())
        .unwrap_or_default()
}

/// Whether the container of `cgroup_path` (as the probe names it) is one of `leaving`, the
/// services' cgroup directories: the same match as the migrator's, the directory ends with
/// the probe's path.
fn is_leaving(cgroup_path: &str, leaving: &[PathBuf]) -> bool {
    cgroup_path.len() > 1
        && leaving
            .iter()
            .any(|dir| dir.to_string_lossy().ends_with(cgroup_path))
}

const RESOURCES: [&str; 2] = ["cpu", "memory"];

/// Keeps what `plan` needs across samples: histories and the trigger state.
pub(super) struct LocalPolicy {
    cfg: PolicyConfig,
    node: String,
    site: String,
    budget_w: f64,
    risk: SharedRisk,
    power: Series,
    risk_history: Series,
    node_load: Series,
    services: SeriesSet<String>,
    triggers: BTreeMap<String, policy::TriggerState>,
    last_trigger: Option<Arc<TriggeredPlan>>,
    index: u64,
    window: usize,
    services_section: crate::service::ServicesSection,
}

/// Containers present in the first samples were there before the agent looked (the first
/// sample may miss some while the probe warms up); only those that appear after this sample
/// are known to be new.
const NEW_CONTAINER_AFTER: u64 = 2;

impl LocalPolicy {
    pub(super) fn new(cfg: &Config, risk: SharedRisk) -> LocalPolicy {
        let window = cfg.policy.corr_window.max(cfg.policy.site_window).max(2);
        let budget_w = if cfg.site.power_budget_watts.0 > 0.0 {
            cfg.site.power_budget_watts.0
        } else {
            cfg.energy.max_watts.0
        };
        LocalPolicy {
            cfg: cfg.policy.clone(),
            node: cfg.node.name.clone().unwrap_or_default(),
            site: cfg.site.name.clone(),
            budget_w,
            risk,
            power: Series::new(window),
            risk_history: Series::new(window),
            node_load: Series::new(window),
            services: SeriesSet::new(window),
            triggers: BTreeMap::new(),
            last_trigger: None,
            index: 0,
            window,
            services_section: cfg.services.clone(),
        }
    }

    /// Records sample `i`'s CPU load of each container (cgroup path, cores).
    ///
    /// A container that appears while the agent watches had no load before: its history
    /// starts with zeros back to the first sample after [`NEW_CONTAINER_AFTER`], so the
    /// correlation with the node's load sees the step it caused. Without them a new
    /// container's history is its busy lifetime only, and its `rho` is noise. A container
    /// missing from a few snapshots keeps its history (as gaps) for a window, so it is not
    /// taken for a new one when it shows again.
    fn record_service_loads<'a>(&mut self, i: u64, loads: impl Iterator<Item = (&'a str, f64)>) {
        for (path, cores) in loads {
            let key = path.to_string();
            if i > NEW_CONTAINER_AFTER && self.services.get(&key).is_none() {
                let from = i
                    .saturating_sub(self.window as u64 - 1)
                    .max(NEW_CONTAINER_AFTER + 1);
                for j in from..i {
                    self.services.push(key.clone(), j, 0.0);
                }
            }
            self.services.push(key, i, cores);
        }
        self.services.retain_recent(i, self.window as u64);
    }

    /// Builds this node's view from a snapshot and its forecasts, and plans. `leaving`: the
    /// cgroup directories of the services moving away from this node ([`leaving_cgroups`]);
    /// `switch_latencies_s`: its past transitional switch latencies as a target.
    pub(super) fn decide(
        &mut self,
        snap: &Snapshot,
        forecasts: &Forecasts,
        leaving: &[PathBuf],
        switch_latencies_s: Vec<f64>,
    ) -> Decisions {
        self.index += 1;
        let i = self.index;
        let n = &snap.node;
        let node_id = if self.node.is_empty() {
            n.hostname.clone()
        } else {
            self.node.clone()
        };
        self.power.push(i, n.power_watts);
        self.risk_history.push(i, self.risk.get());
        let cpu = super::node_cpu(&self.services_section, snap);
        let cpu_capacity = cpu.cores;
        let mem_capacity = n.memory_total_bytes as f64;
        // With a CPU share of its own, the node's services are its managed ones only.
        let limited = self.services_section.cpu_cores > 0.0;
        let section = &self.services_section;
        let containers: Vec<&crate::probe::model::ContainerSample> = snap
            .containers
            .iter()
            .filter(|c| !limited || super::is_service_cgroup(section, &c.cgroup_path))
            .collect();
        // At least all of its share when its services waited for a CPU.
        let node_cpu = super::node_cpu_load(
            cpu.utilization,
            containers.iter().filter_map(|c| c.cpu_wait_cores),
            cpu_capacity,
        );
        self.node_load.push(i, node_cpu * cpu_capacity);
        self.record_service_loads(
            i,
            containers
                .iter()
                .map(|c| (c.cgroup_path.as_str(), c.cpu_cores)),
        );

        let at_horizon = |entity: &Entity, metric: Metric| {
            forecasts
                .get(entity, metric)
                .and_then(|s| s.points.last())
                .map(|p| p.mean)
        };
        // No model yet means no forecast (NaN is "missing" to the policy): standing in the
        // current value would let the proactive trigger fire on it without k-of-n confirmation.
        let util_forecast = vec![
            at_horizon(&Entity::Node, Metric::Cpu).unwrap_or(f64::NAN),
            at_horizon(&Entity::Node, Metric::Memory).unwrap_or(f64::NAN),
        ];
        let history = |s: &Series| {
            s.values()
                .into_iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect()
        };
        let services = containers
            .iter()
            .map(|c| ServiceView {
                id: c.cgroup_path.clone(),
                node: node_id.clone(),
                demand: vec![c.cpu_cores, c.memory_bytes.map_or(0.0, |b| b as f64)],
                load_history: self
                    .services
                    .get(&c.cgroup_path)
                    .map(history)
                    .unwrap_or_default(),
                image: String::new(),
                dirty_bytes_per_s: c.dirty_bytes_per_second,
                leaving: is_leaving(&c.cgroup_path, leaving),
                ..ServiceView::default()
            })
            .collect();
        let view = ClusterView {
            resources: RESOURCES.iter().map(|r| r.to_string()).collect(),
            sites: vec![SiteView {
                id: self.site.clone(),
                power_w: history(&self.power),
                power_budget_w: self.budget_w,
                risk: history(&self.risk_history),
            }],
            nodes: vec![NodeView {
                id: node_id,
                site: self.site.clone(),
                alive: true,
                fenced: false,
                capacity: vec![cpu_capacity, mem_capacity],
                util_now: vec![node_cpu, n.memory_utilization],
                util_forecast,
                load_history: history(&self.node_load),
                switch_latencies_s,
                ..NodeView::default()
            }],
            services,
            triggers: std::mem::take(&mut self.triggers),
        };
        let plan = policy::plan(&view, &self.cfg, i);
        self.triggers = plan.triggers.clone();
        let fired = plan
            .nodes
            .iter()
            .any(|n| n.trigger.as_ref().is_some_and(|t| t.fired));
        if fired {
            self.last_trigger = Some(Arc::new(TriggeredPlan {
                taken_at_unix_ms: snap.taken_at_unix_ms,
                plan: plan.clone(),
            }));
        }
        Decisions {
            taken_at_unix_ms: snap.taken_at_unix_ms,
            view,
            plan,
            last_trigger: self.last_trigger.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_matches_the_cgroup_directory_by_its_end() {
        let leaving = vec![PathBuf::from("/sys/fs/cgroup/godwit.slice/kv-1")];
        assert!(is_leaving("/godwit.slice/kv-1", &leaving));
        assert!(!is_leaving("/godwit.slice/kv-2", &leaving));
        // the root cgroup and an empty path match nothing
        assert!(!is_leaving("/", &leaving));
        assert!(!is_leaving("", &leaving));
        assert!(!is_leaving("/godwit.slice/kv-1", &[]));
        // no journal yet: nothing is leaving
        assert!(leaving_cgroups(&SharedJournal::default()).is_empty());
    }
    #[test]
    fn a_new_container_history_starts_at_zero_and_steps_with_the_node() {
        let mut p = LocalPolicy::new(&Config::default(), SharedRisk::new(0.0));
        // "old" runs from the first sample: no zeros are invented for it.
        p.record_service_loads(1, [("/old", 0.5)].into_iter());
        for i in 2..=6 {
            p.record_service_loads(i, [("/old", 0.5)].into_iter());
        }
        // "new" appears at sample 7 and burns: zeros from sample 3 to 6, then its load.
        p.record_service_loads(7, [("/old", 0.5), ("/new", 1.0)].into_iter());
        let values = |p: &LocalPolicy, k: &str| p.services.get(&k.to_string()).unwrap().values();
        assert_eq!(values(&p, "/old"), vec![Some(0.5); 7]);
        assert_eq!(
            values(&p, "/new"),
            vec![Some(0.0), Some(0.0), Some(0.0), Some(0.0), Some(1.0)]
        );
        // A node that stepped with it correlates fully; the new container's lifetime alone
        // (a constant) would give no correlation at all.
        let node = [0.2, 0.2, 0.2, 0.2, 1.2];
        let new: Vec<f64> = values(&p, "/new").into_iter().map(Option::unwrap).collect();
        assert!(policy::pearson(&node, &new, 0) > 0.99);
        assert_eq!(policy::pearson(&node[4..], &new[4..], 0), 0.0);

        // "old" missing from two snapshots keeps its history as gaps, without zeros.
        p.record_service_loads(10, [("/old", 0.5)].into_iter());
        let old = values(&p, "/old");
        assert_eq!(&old[old.len() - 4..], &[Some(0.5), None, None, Some(0.5)]);
        // a container gone for longer than the window is forgotten
        let far = 10 + p.window as u64 + 1;
        p.record_service_loads(far, std::iter::empty());
        assert!(p.services.get(&"/old".to_string()).is_none());
    }
}
