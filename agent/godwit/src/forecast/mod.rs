//! Forecasts of the node's and each container's load, and this node's view of the policy.
//!
//! The sampler's snapshots feed a [`Forecaster`] per series (ARMA, [`crate::predict`]) that
//! refits on a cadence; the latest forecasts with their intervals are published for the API
//! and `godwit predict`. Each sample also runs [`crate::policy::plan`] over this node's own
//! view (its containers as the services, its site's power and the operator's risk), published
//! for `godwit explain`: the threshold, the trigger and what would leave, with the numbers
//! behind them. Once the mesh exists the coordinator runs the same `plan` over the whole
//! cluster.
//!
//! Runs on its own thread, fed by a channel, so a refit never delays a sample.

mod capacity;
mod decide;

pub use capacity::{
    is_service_cgroup, node_cpu, node_cpu_load, service_cgroup, service_container, NodeCpu,
};

pub use decide::{Decisions, SharedDecisions, SharedJournal, SharedRisk};

use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::config::PredictConfig;
use crate::predict::{FitOptions, ForecastPoint, Forecaster};
use crate::probe::Snapshot;

/// What a series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Node: busy fraction of all CPUs. Container: cores used.
    Cpu,
    /// Node: used fraction of memory. Container: bytes charged to its memcg.
    Memory,
    /// Bytes dirtied per second.
    DirtyRate,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::DirtyRate => "dirty_rate",
        }
    }
}

/// Whose series: the node, or a container by its cgroup path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Entity {
    Node,
    Container(String),
}

/// The forecast of one series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesForecast {
    pub entity: Entity,
    pub metric: Metric,
    /// Unit of the values: `ratio`, `cores`, `bytes` or `bytes_per_second`.
    pub unit: &'static str,
    /// Samples of history behind the model.
    pub samples: usize,
    pub last: Option<f64>,
    /// The fitted model as `ARIMA(p,d,q)`, or why there is none yet.
    pub model: String,
    pub points: Vec<ForecastPoint>,
}

/// All forecasts at one sample.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Forecasts {
    pub taken_at_unix_ms: u64,
    pub interval_seconds: f64,
    pub horizon: usize,
    pub level: f64,
    pub series: Vec<SeriesForecast>,
}

impl Forecasts {
    /// The forecast of one series.
    pub fn get(&self, entity: &Entity, metric: Metric) -> Option<&SeriesForecast> {
        self.series
            .iter()
            .find(|s| &s.entity == entity && s.metric == metric)
    }
}

pub type SharedForecasts = Arc<RwLock<Option<Arc<Forecasts>>>>;

struct Tracked {
    forecaster: Forecaster,
    samples: usize,
    last_index: u64,
    last: Option<f64>,
}

/// Keeps a forecaster per (entity, metric) and turns snapshots into [`Forecasts`].
pub struct ForecastEngine {
    cfg: PredictConfig,
    options: FitOptions,
    tracked: BTreeMap<(Entity, Metric), Tracked>,
    index: u64,
    /// `[services]`: what the node's CPU is (see [`node_cpu`]).
    services: crate::service::ServicesSection,
}

impl std::fmt::Debug for ForecastEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForecastEngine")
            .field("series", &self.tracked.len())
            .finish()
    }
}

/// Samples a container may miss before its series are dropped.
const STALE_AFTER: u64 = 60;

impl ForecastEngine {
    pub fn new(cfg: PredictConfig) -> ForecastEngine {
        let options = FitOptions {
            max_p: cfg.max_p.0 as usize,
            max_q: cfg.max_q.0 as usize,
            ..FitOptions::default()
        };
        ForecastEngine {
            cfg,
            options,
            tracked: BTreeMap::new(),
            index: 0,
            services: Default::default(),
        }
    }

    /// Forecasts the node's CPU as `[services]` defines it ([`node_cpu`]).
    pub fn with_services(mut self, services: crate::service::ServicesSection) -> ForecastEngine {
        self.services = services;
        self
    }

    fn observe(&mut self, entity: Entity, metric: Metric, value: Option<f64>) {
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return;
        };
        let (window, refit) = (self.cfg.window.0 as usize, self.cfg.refit_every.0 as usize);
        let options = self.options.clone();
        let index = self.index;
        let t = self
            .tracked
            .entry((entity, metric))
            .or_insert_with(|| Tracked {
                forecaster: Forecaster::new(options, window, refit),
                samples: 0,
                last_index: index,
                last: None,
            });
        t.forecaster.observe(value);
        t.samples = (t.samples + 1).min(window);
        t.last_index = index;
        t.last = Some(value);
    }

    /// Takes one snapshot's figures.
    pub fn observe_snapshot(&mut self, snap: &Snapshot) {
        self.index += 1;
        let n = &snap.node;
        let cpu = node_cpu(&self.services, snap).utilization;
        self.observe(Entity::Node, Metric::Cpu, Some(cpu));
        self.observe(Entity::Node, Metric::Memory, Some(n.memory_utilization));
        self.observe(
            Entity::Node,
            Metric::DirtyRate,
            Some(n.dirty_bytes_per_second),
        );
        for c in &snap.containers {
            let e = || Entity::Container(c.cgroup_path.clone());
            self.observe(e(), Metric::Cpu, Some(c.cpu_cores));
            self.observe(e(), Metric::Memory, c.memory_bytes.map(|b| b as f64));
            self.observe(e(), Metric::DirtyRate, Some(c.dirty_bytes_per_second));
        }
        let index = self.index;
        self.tracked
            .retain(|_, t| index - t.last_index <= STALE_AFTER);
    }

    /// The current forecasts of every series.
    pub fn forecasts(&mut self, snap: &Snapshot) -> Forecasts {
        let horizon = self.cfg.horizon.0 as usize;
        let level = self.cfg.level_percent.0 as f64 / 100.0;
        let series = self
            .tracked
            .iter_mut()
            .map(|((entity, metric), t)| {
                let (model, points) = match t
                    .forecaster
                    .forecast(horizon, level)
                    .map(|v| v.into_iter().map(|p| clip(p, entity, *metric)).collect())
                {
                    Ok(points) => (
                        t.forecaster
                            .model()
                            .map(|m| format!("ARIMA({},{},{})", m.p, m.d, m.q))
                            .unwrap_or_default(),
                        points,
                    ),
                    Err(e) => (format!("none yet: {e}"), Vec::new()),
                };
                SeriesForecast {
                    entity: entity.clone(),
                    metric: *metric,
                    unit: unit(entity, *metric),
                    samples: t.samples,
                    last: t.last,
                    model,
                    points,
                }
            })
            .collect();
        Forecasts {
            taken_at_unix_ms: snap.taken_at_unix_ms,
            interval_seconds: snap.interval_seconds,
            horizon,
            level,
            series,
        }
    }
}

/// A forecast point kept where its series can go: every series here is non-negative, and a
/// node's ratios (the CPU it uses of what it has, its memory) never pass 1. A model fitted
/// across a step extrapolates it (345% of a node seen right after a load step), and the policy
/// scales each service's share by the node's forecast: unclipped, a service that stepped up
/// looked bigger than any node and could not be placed.
fn clip(mut p: ForecastPoint, entity: &Entity, metric: Metric) -> ForecastPoint {
    let ceiling = match unit(entity, metric) {
        "ratio" => 1.0,
        _ => f64::INFINITY,
    };
    p.mean = p.mean.clamp(0.0, ceiling);
    p.lower = p.lower.clamp(0.0, ceiling);
    p.upper = p.upper.clamp(0.0, ceiling);
    p
}

fn unit(entity: &Entity, metric: Metric) -> &'static str {
    match (entity, metric) {
        (Entity::Node, Metric::Cpu | Metric::Memory) => "ratio",
        (Entity::Container(_), Metric::Cpu) => "cores",
        (Entity::Container(_), Metric::Memory) => "bytes",
        (_, Metric::DirtyRate) => "bytes_per_second",
    }
}

/// Runs forecasts and local decisions on their own thread until the sender side of
/// `snapshots` is dropped.
pub fn spawn(
    cfg: &crate::config::Config,
    snapshots: Receiver<Arc<Snapshot>>,
    forecasts: SharedForecasts,
    decisions: SharedDecisions,
    risk: SharedRisk,
    journal: SharedJournal,
    switches: Arc<crate::migrate::agent::SwitchHistory>,
) -> std::io::Result<JoinHandle<()>> {
    let mut engine = ForecastEngine::new(cfg.predict.clone()).with_services(cfg.services.clone());
    let mut local = decide::LocalPolicy::new(cfg, risk);
    std::thread::Builder::new()
        .name("godwit-forecast".into())
        .spawn(move || {
            while let Ok(snap) = snapshots.recv() {
                engine.observe_snapshot(&snap);
                let f = Arc::new(engine.forecasts(&snap));
                let leaving = decide::leaving_cgroups(&journal);
                let d = Arc::new(local.decide(&snap, &f, &leaving, switches.latencies_s()));
                *forecasts.write().unwrap_or_else(|e| e.into_inner()) = Some(f);
                *decisions.write().unwrap_or_else(|e| e.into_inner()) = Some(d);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_ratio_is_never_forecast_past_1_nor_a_series_below_0() {
        // A node's CPU climbing towards all it has: the fitted trend runs past it.
        let mut f = Forecaster::new(FitOptions::default(), 120, 1);
        for i in 0..120 {
            // A ramp with a little deterministic jitter, as a sampled series has.
            f.observe(0.2 + 0.0065 * i as f64 + 0.004 * ((i * 7 % 5) as f64 - 2.0));
        }
        let raw = f.forecast(30, 0.9).expect("a model for a clean ramp");
        assert!(raw.iter().any(|p| p.mean > 1.0), "{raw:?}");
        for p in raw.iter().map(|p| clip(*p, &Entity::Node, Metric::Cpu)) {
            assert!((0.0..=1.0).contains(&p.mean), "{p:?}");
            assert!(
                p.lower <= p.mean && p.mean <= p.upper && p.upper <= 1.0,
                "{p:?}"
            );
        }
        // A container's cores have no ceiling here (its node's share may be raised).
        let cores = Entity::Container("/svc".into());
        let last = *raw.last().unwrap();
        assert_eq!(clip(last, &cores, Metric::Cpu).mean, last.mean);
        let mut low = last;
        (low.mean, low.lower, low.upper) = (-0.5, -1.0, 0.1);
        let low = clip(low, &cores, Metric::Cpu);
        assert_eq!((low.mean, low.lower, low.upper), (0.0, 0.0, 0.1));
    }
}
