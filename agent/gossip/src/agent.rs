//! The agent's side of the mesh: the `[gossip]` table turned into a [`GossipConfig`], and a
//! changed key list applied to a running node.

use std::time::Duration;

use super::{
    Cluster, ClusterKey, FailureDetection, GossipConfig, GossipError, GossipSection, Keyring,
    KeyringChange, Security,
};

/// The gossip configuration of this agent; `node_id` is the node's name.
pub fn config_from(g: &GossipSection, node_id: &str) -> Result<GossipConfig, GossipError> {
    let mut out = GossipConfig::new(node_id, g.listen);
    out.cluster_id = g.cluster_id.clone();
    out.advertise_addr = g.advertise;
    out.seeds = g.seeds.clone();
    out.failure_detection = FailureDetection {
        gossip_interval: Duration::from_millis(g.interval_ms.0),
        phi_threshold: g.phi_threshold.0 as f64,
        dead_node_grace: Duration::from_millis(g.dead_node_grace_ms.0),
    };
    out.security = match (keys_from(g)?, g.insecure) {
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
pub fn keys_from(g: &GossipSection) -> Result<Option<(ClusterKey, Vec<ClusterKey>)>, GossipError> {
    let mut keys = g
        .key_list()
        .map_err(GossipError::InvalidConfig)?
        .iter()
        .map(|k| ClusterKey::from_hex(k))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Ok(None);
    }
    let primary = keys.remove(0);
    Ok(Some((primary, keys)))
}

/// Applies the `gossip.keys` (or `gossip.keys_file`) of a reloaded configuration to a running node's keyring: one
/// rotation step (install, switch primary, remove) per reload, with no restart. Changing
/// whether the node seals at all needs a restart and is refused.
pub fn reload_keys(mesh: &Cluster, g: &GossipSection) -> Result<KeyringChange, GossipError> {
    match (mesh.keyring(), keys_from(g)?) {
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
