//! The agent's side of the mesh: the `[gossip]` table turned into a [`GossipConfig`], and the
//! node summary built from the sampler's snapshot, the forecasts and the local decisions.

use std::time::Duration;

use super::{
    Addresses, Capacity, Cluster, ClusterKey, Energy, FailureDetection, Forecast, GossipConfig,
    GossipError, HostedService, Keyring, KeyringChange, Load, NodeSummary, Security, TriggerState,
};
use crate::config::Config;
use crate::forecast::{Decisions, Entity, Forecasts, Metric};
use crate::probe::Snapshot;

/// The gossip configuration of this agent; `node_id` is the node's name.
pub fn config_from(cfg: &Config, node_id: &str) -> Result<GossipConfig, GossipError> {
    let g = &cfg.gossip;
    let mut out = GossipConfig::new(node_id, g.listen);
    out.cluster_id = g.cluster_id.clone();
    out.advertise_addr = g.advertise;
    out.seeds = g.seeds.clone();
    out.failure_detection = FailureDetection {
        gossip_interval: Duration::from_millis(g.interval_ms.0),
        phi_threshold: g.phi_threshold.0 as f64,
        dead_node_grace: Duration::from_millis(g.dead_node_grace_ms.0),
    };
    out.security = match (keys_from(cfg)?, g.insecure) {
        (Some((primary, others)), _) => {
            let ring = Keyring::new(primary);
            for k in others {
                ring.install(k);
            }
            Security::Sealed(ring)
        }
        (None, true) => Security::Insecure,
        (None, false) => Security::None,
    };
    out.validate()?;
    Ok(out)
}

/// The configured cluster keys: the primary and the others, or `None` when there are none.
pub fn keys_from(cfg: &Config) -> Result<Option<(ClusterKey, Vec<ClusterKey>)>, GossipError> {
    let mut keys = cfg
        .gossip
        .keys
        .iter()
        .map(|k| ClusterKey::from_hex(k))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Ok(None);
    }
    let primary = keys.remove(0);
    Ok(Some((primary, keys)))
}

/// Applies the `gossip.keys` of a reloaded configuration to a running node's keyring: one
/// rotation step (install, switch primary, remove) per reload, with no restart. Changing
/// whether the node seals at all needs a restart and is refused.
pub fn reload_keys(mesh: &Cluster, cfg: &Config) -> Result<KeyringChange, GossipError> {
    match (mesh.keyring(), keys_from(cfg)?) {
        (Some(ring), Some((primary, others))) => Ok(ring.replace(primary, others)),
        (None, None) => Ok(KeyringChange::default()),
        (Some(_), None) => Err(GossipError::InvalidConfig(
            "gossip.keys is empty but this node seals with a cluster key:              keep at least one key, or restart to change gossip security"
                .into(),
        )),
        (None, Some(_)) => Err(GossipError::InvalidConfig(
            "this node was started without gossip.keys: restart it to seal with the new keys"
                .into(),
        )),
    }
}

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
