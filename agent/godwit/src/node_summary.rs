//! This node's summary for the mesh, built from the sampler's snapshot, the forecasts and the
//! local decisions (here because it joins the probe, forecast and config, which the gossip crate
//! may not reach).

use crate::config::Config;
use crate::forecast::{Decisions, Entity, Forecasts, Metric};
use crate::gossip::{
    Addresses, Capacity, Energy, Forecast, HostedService, Load, NodeSummary, TriggerState,
};
use crate::probe::Snapshot;

/// What this node tells the cluster about itself now.
pub fn summary(
    cfg: &Config,
    snap: &Snapshot,
    forecasts: Option<&Forecasts>,
    decisions: Option<&Decisions>,
    risk: f64,
) -> NodeSummary {
    let n = &snap.node;
    let network: f64 = n
        .interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .map(|i| i.receive_bytes_per_second + i.transmit_bytes_per_second)
        .sum();
    let forecast = forecasts.and_then(|f| {
        let s = f.get(&Entity::Node, Metric::Cpu)?;
        let peak = s.points.iter().max_by(|a, b| a.mean.total_cmp(&b.mean))?;
        Some(Forecast {
            horizon_secs: (f.horizon as f64 * f.interval_seconds).round() as u32,
            u_max: peak.mean,
            lower: peak.lower,
            upper: peak.upper,
        })
    });
    let trigger = decisions.and_then(|d| {
        let t = d.plan.nodes.first()?.trigger.as_ref()?;
        Some(TriggerState {
            fired: !t.armed,
            since_unix: d.last_trigger.as_ref().map(|l| l.taken_at_unix_ms / 1000),
            reason: format!("{:?}", t.reason).to_lowercase(),
        })
    });
    NodeSummary {
        site: cfg.site.name.clone(),
        addresses: Addresses {
            quic: None,
            api: Some(cfg.api.listen),
        },
        capacity: Capacity {
            cpu_cores: f64::from(n.cpus),
            memory_bytes: n.memory_total_bytes,
            ..Capacity::default()
        },
        load: Load {
            cpu: n.cpu_utilization,
            memory: n.memory_utilization,
            network,
            dirty_bytes_per_sec: n.dirty_bytes_per_second,
        },
        forecast,
        trigger,
        // Managed services arrive with the runtime; containers the agent only watches are
        // not services it can move, so none are announced yet.
        services: Vec::<HostedService>::new(),
        energy: Energy {
            power_watts: n.power_watts,
            source: n.power_source.as_str().into(),
        },
        risk,
        ..NodeSummary::default()
    }
}
