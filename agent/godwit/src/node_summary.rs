//! This node's summary for the mesh, built from the sampler's snapshot, the forecasts and the
//! local decisions (here because it joins the probe, forecast and config, which the gossip crate
//! may not reach).

use crate::config::Config;
use crate::forecast::{Decisions, Entity, Forecasts, Metric};
use crate::gossip::{
    Addresses, Capacity, Energy, Forecast, HostedService, Load, NodeSummary, TriggerState,
};
use crate::probe::Snapshot;

/// What this node tells the cluster about itself now; `services`: the managed services it
/// runs ([`hosted`]).
pub fn summary(
    cfg: &Config,
    snap: &Snapshot,
    forecasts: Option<&Forecasts>,
    decisions: Option<&Decisions>,
    risk: f64,
    services: Vec<HostedService>,
) -> NodeSummary {
    let n = &snap.node;
    let cpu = crate::forecast::node_cpu(&cfg.services, snap);
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
            cpu_cores: cpu.cores,
            memory_bytes: n.memory_total_bytes,
            ..Capacity::default()
        },
        load: Load {
            cpu: cpu.utilization,
            memory: n.memory_utilization,
            network,
            dirty_bytes_per_sec: n.dirty_bytes_per_second,
        },
        forecast,
        trigger,
        // Containers the agent only watches are not services it can move: not announced.
        services,
        energy: Energy {
            power_watts: n.power_watts,
            source: n.power_source.as_str().into(),
            site_budget_watts: cfg.site.power_budget_watts.0,
            max_watts: cfg.energy.max_watts.0,
        },
        risk,
        ..NodeSummary::default()
    }
}

/// A managed service as the mesh hears of it: its load now from the probe (zero until the
/// probe has seen its cgroup), its image and that image's size (`image_bytes`, 0 unknown),
/// its state's size (`state_bytes`, measured by the caller) and its own stop time as the
/// runtime measured it.
#[allow(clippy::too_many_arguments)]
pub fn hosted(
    cfg: &Config,
    snap: &Snapshot,
    name: &str,
    image: Option<&str>,
    image_bytes: u64,
    state_bytes: u64,
    stop_s: Option<f64>,
) -> HostedService {
    let c = crate::forecast::service_container(&cfg.services, snap, name);
    HostedService {
        id: name.to_string(),
        state_bytes,
        image: image.unwrap_or_default().to_string(),
        image_bytes: if image.is_some() { image_bytes } else { 0 },
        cpu_cores: c.map_or(0.0, |c| c.cpu_cores),
        cpu_wait_cores: c
            .and_then(|c| c.cpu_wait_cores)
            .filter(|w| w.is_finite())
            .unwrap_or(0.0),
        memory_bytes: c.and_then(|c| c.memory_bytes).unwrap_or(0),
        dirty_bytes_per_sec: c.map_or(0.0, |c| c.dirty_bytes_per_second),
        stop_s: stop_s.filter(|s| s.is_finite()).unwrap_or(0.0),
    }
}

/// The bytes under `dir`, counting regular files, at most `max_entries` of them (a bound on
/// the work per summary; a larger tree is under-counted).
pub fn tree_bytes(dir: &std::path::Path, max_entries: usize) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > max_entries {
                return total;
            }
            // symlink_metadata: a link is not followed out of the tree.
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}
