//! What a node offers its services: the host's CPU, or `[services] cpu_cores` of it (then the
//! node's CPU load is its services' use of that share, not the host's). One function, so the
//! forecasts, the local policy, the gossiped summary and the coordinator see the same figure.

use crate::probe::model::ContainerSample;
use crate::probe::Snapshot;
use crate::service::ServicesSection;

/// The CPU a node offers and how busy it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeCpu {
    /// Cores offered.
    pub cores: f64,
    /// Busy fraction of them (may exceed 1 for a short while: `cpu.max` is per period).
    pub utilization: f64,
}

/// The cgroup path (as the probe names it) of the managed service `name`.
pub fn service_cgroup(section: &ServicesSection, name: &str) -> String {
    format!(
        "/{}/{name}.service",
        section.cgroup_parent.trim_matches('/')
    )
}

/// Whether the probe's `cgroup_path` is one of the managed services' cgroups.
pub fn is_service_cgroup(section: &ServicesSection, cgroup_path: &str) -> bool {
    let parent = format!("/{}/", section.cgroup_parent.trim_matches('/'));
    cgroup_path
        .strip_prefix(&parent)
        .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".service"))
}

/// The managed service `name`'s container in `snap`, if the probe has seen it.
pub fn service_container<'a>(
    section: &ServicesSection,
    snap: &'a Snapshot,
    name: &str,
) -> Option<&'a ContainerSample> {
    let path = service_cgroup(section, name);
    snap.containers.iter().find(|c| c.cgroup_path == path)
}

/// The node's CPU as the policy sees it.
pub fn node_cpu(section: &ServicesSection, snap: &Snapshot) -> NodeCpu {
    if section.cpu_cores > 0.0 {
        let used: f64 = snap
            .containers
            .iter()
            .filter(|c| is_service_cgroup(section, &c.cgroup_path))
            .map(|c| c.cpu_cores)
            .filter(|c| c.is_finite())
            .sum();
        NodeCpu {
            cores: section.cpu_cores,
            utilization: used / section.cpu_cores,
        }
    } else {
        NodeCpu {
            cores: f64::from(snap.node.cpus.max(1)),
            utilization: snap.node.cpu_utilization,
        }
    }
}

/// Waited cores, as a share of the node's, from which a node is taken as held at its share.
pub(super) const SATURATED_WAIT: f64 = 0.25;

/// A node's CPU load as a share of its capacity: what it used, and at least all of it when
/// its services waited, runnable, for a quarter of its cores or more (`SATURATED_WAIT`).
/// A node held at its share by its CPU limit reads about 100% used however far past it its
/// demand is, and sometimes a little under: then an urgent firing (load now at or over
/// capacity) never came. How far past it is not measured: a throttled thread waits until
/// the period ends whatever it lacked, so the time waited is no demand (summed over a node's
/// services it read 250-565% of a node whose demand was about 130%, and their shares fit no
/// target).
pub fn node_cpu_load(used: f64, waited: impl Iterator<Item = f64>, cores: f64) -> f64 {
    let waited: f64 = waited.filter(|w| w.is_finite() && *w > 0.0).sum();
    if cores > 0.0 && waited >= SATURATED_WAIT * cores {
        used.max(1.0)
    } else {
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_cgroups_are_the_direct_children_of_the_parent() {
        let s = ServicesSection {
            cgroup_parent: "/godwit-cluster/n1/".into(),
            ..ServicesSection::default()
        };
        assert_eq!(service_cgroup(&s, "kv"), "/godwit-cluster/n1/kv.service");
        assert!(is_service_cgroup(&s, "/godwit-cluster/n1/kv.service"));
        assert!(!is_service_cgroup(&s, "/godwit-cluster/n1/kv.service/sub"));
        assert!(!is_service_cgroup(&s, "/godwit-cluster/n2/kv.service"));
        assert!(!is_service_cgroup(&s, "/godwit-cluster/n1"));
    }
}
