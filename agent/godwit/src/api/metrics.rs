//! `/metrics`: the latest [`Snapshot`] encoded as OpenMetrics at scrape time.
//!
//! A [`Collector`] reads the snapshot on each scrape, so there is no second copy of the
//! figures to keep in step and series of ended processes vanish by themselves. Cardinality is
//! bounded: per-container series for containers, per-process series only for the top N
//! processes by CPU, the top N by dirty rate, and processes selected by config.

use std::collections::BTreeSet;
use std::fmt::Error as FmtError;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::Glob;
use crate::gossip::{Cluster, Liveness};
use crate::probe::model::ProcessSample;
use crate::probe::{SharedSnapshot, Snapshot};
use crate::transport::agent::Transport;

type Labels = Vec<(&'static str, String)>;

/// Which processes get per-process series.
#[derive(Debug, Clone)]
pub struct ProcessSelection {
    pub top: usize,
    pub globs: Vec<Glob>,
}

impl ProcessSelection {
    /// Indices into `processes` (sorted by CPU, descending) of the selected ones.
    pub fn select(&self, processes: &[ProcessSample]) -> Vec<usize> {
        let mut chosen: BTreeSet<usize> = (0..processes.len().min(self.top)).collect();
        let mut by_dirty: Vec<usize> = (0..processes.len())
            .filter(|&i| processes[i].dirty_bytes_per_second > 0.0)
            .collect();
        by_dirty.sort_by(|&a, &b| {
            processes[b]
                .dirty_bytes_per_second
                .total_cmp(&processes[a].dirty_bytes_per_second)
        });
        chosen.extend(by_dirty.into_iter().take(self.top));
        for (i, p) in processes.iter().enumerate() {
            if self.globs.iter().any(|g| g.is_match(&p.comm)) {
                chosen.insert(i);
            }
        }
        chosen.into_iter().collect()
    }
}

#[derive(Debug)]
struct SnapshotCollector {
    shared: SharedSnapshot,
    selection: ProcessSelection,
}

/// Builds the registry behind `/metrics`; the mesh's series are there when gossip runs.
pub fn registry(
    shared: SharedSnapshot,
    selection: ProcessSelection,
    mesh: Option<Arc<Cluster>>,
    transport: Option<Arc<Transport>>,
    services: Option<Arc<crate::service::Manager>>,
    inventory: Option<crate::inventory::watch::SharedInventory>,
    migrator: Option<Arc<crate::migrate::agent::Migrator>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector { shared, selection }));
    if let Some(mesh) = mesh {
        registry.register_collector(Box::new(MeshCollector { mesh }));
    }
    if let Some(transport) = transport {
        registry.register_collector(Box::new(TransportCollector { transport }));
    }
    if let Some(services) = services {
        registry.register_collector(Box::new(ServicesCollector { services }));
    }
    if let Some(inventory) = inventory {
        registry.register_collector(Box::new(InventoryCollector { inventory }));
    }
    if let Some(migrator) = migrator {
        registry.register_collector(Box::new(MigrationCollector { migrator }));
    }
    registry
}

/// The coordinator as this node sees it: term, leadership, lease, fences and failovers.
pub fn coordinator_collector(
    coord: Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>,
) -> Box<dyn Collector> {
    Box::new(CoordinatorCollector { coord })
}

struct CoordinatorCollector {
    coord: Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>,
}

impl std::fmt::Debug for CoordinatorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoordinatorCollector")
    }
}

impl Collector for CoordinatorCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use MetricType::{Counter, Gauge};
        let st = self.coord.status();
        let none = Vec::<(&'static str, String)>::new;
        family(
            &mut enc,
            "godwit_coordinator_term",
            "The Raft term this node knows",
            Gauge,
            [(none(), st.term as f64)],
        )?;
        family(
            &mut enc,
            "godwit_coordinator_leader",
            "1 on the node that leads (the coordinator), 0 elsewhere",
            Gauge,
            [(
                none(),
                f64::from(u8::from(st.leader.as_deref() == Some(st.me.as_str()))),
            )],
        )?;
        family(
            &mut enc,
            "godwit_coordinator_leader_changes",
            "Times this node became the leader",
            Counter,
            [(none(), st.leader_changes as f64)],
        )?;
        family(
            &mut enc,
            "godwit_coordinator_applied_index",
            "The placement log's index this node has applied",
            Gauge,
            [(none(), st.applied as f64)],
        )?;
        let now = crate::coord::BootTime::now().0;
        family(
            &mut enc,
            "godwit_lease_remaining_seconds",
            "Time left on this node's lease (0: none: it runs no service)",
            Gauge,
            [(none(), st.lease.until_ms.saturating_sub(now) as f64 / 1e3)],
        )?;
        family(
            &mut enc,
            "godwit_lease_age_seconds",
            "On the leader: time since each node last renewed its lease",
            Gauge,
            st.nodes.iter().filter_map(|n| {
                n.lease_age_ms
                    .map(|ms| (vec![("node", n.name.clone())], ms as f64 / 1e3))
            }),
        )?;
        family(
            &mut enc,
            "godwit_node_fenced",
            "1 for each node the placement log holds fenced",
            Gauge,
            st.nodes.iter().map(|n| {
                (
                    vec![("node", n.name.clone())],
                    f64::from(u8::from(n.fenced)),
                )
            }),
        )?;
        family(
            &mut enc,
            "godwit_fences",
            "Nodes this node fenced while it led",
            Counter,
            [(none(), st.fences as f64)],
        )?;
        family(
            &mut enc,
            "godwit_failovers",
            "Services this node placed elsewhere while it led, their node fenced",
            Counter,
            [(none(), st.failovers as f64)],
        )?;
        family(
            &mut enc,
            "godwit_failover_last_seconds",
            "The last failover this node made as leader: from the lost node's last lease renewal to its service placed elsewhere",
            Gauge,
            st.last_failover_s.map(|v| (none(), v)),
        )?;
        Ok(())
    }
}

/// The leader's decisions, by kind and outcome (declared at zero before the first).
pub fn acting_collector(acting: crate::act::SharedActing) -> Box<dyn Collector> {
    Box::new(ActingCollector { acting })
}

#[derive(Debug)]
struct ActingCollector {
    acting: crate::act::SharedActing,
}

impl Collector for ActingCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use crate::act::Outcome::*;
        let mut counts = self.acting.counts();
        for o in [
            Started, Committed, Failed, Observed, Paused, InFlight, Cooldown, ClusterCap, NodeCap,
        ] {
            counts.entry(("migrate", o.as_str())).or_insert(0);
        }
        for o in [Started, Committed, Failed] {
            counts.entry(("failover", o.as_str())).or_insert(0);
        }
        for o in [
            Started, Committed, Failed, Observed, Paused, Cooldown, ClusterCap, NodeCap, Held,
            Budget, NoSource,
        ] {
            counts.entry(("prestage", o.as_str())).or_insert(0);
        }
        family(
            &mut enc,
            "godwit_decisions",
            "The coordinator's decisions while this node led, by kind (migrate, failover, \
             prestage) and outcome: started, then committed or failed; or observed (act = \
             false), paused, in_flight, cooldown, cluster_cap, node_cap, held, budget, \
             no_source (not carried out)",
            MetricType::Counter,
            counts.into_iter().map(|((kind, outcome), n)| {
                (
                    vec![("kind", kind.to_string()), ("outcome", outcome.to_string())],
                    n as f64,
                )
            }),
        )?;
        let st = self.acting.state();
        family(
            &mut enc,
            "godwit_coordinator_paused",
            "1 while the coordinator's own moves are paused (godwit cluster pause)",
            MetricType::Gauge,
            one(u8::from(st.paused.is_some())),
        )?;
        family(
            &mut enc,
            "godwit_coordinator_moves_running",
            "Moves the leader started that have not ended",
            MetricType::Gauge,
            one(st.running.len() as f64),
        )?;
        family(
            &mut enc,
            "godwit_coordinator_copies_running",
            "Image pre-staging copies the leader ordered that have not ended",
            MetricType::Gauge,
            one(st.copies_running.len() as f64),
        )?;
        Ok(())
    }
}

/// This node's threshold, load and forecast as its own policy sees them (`godwit explain`).
pub fn policy_collector(decisions: crate::forecast::SharedDecisions) -> Box<dyn Collector> {
    Box::new(PolicyCollector { decisions })
}

#[derive(Debug)]
struct PolicyCollector {
    decisions: crate::forecast::SharedDecisions,
}

impl Collector for PolicyCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        let d = self
            .decisions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let node = d.as_ref().and_then(|d| d.plan.nodes.first().cloned());
        let trigger = node.as_ref().and_then(|n| n.trigger.clone());
        let switches = d
            .as_ref()
            .and_then(|d| d.view.nodes.first())
            .map(|n| n.switch_latencies_s.clone())
            .unwrap_or_default();
        family(
            &mut enc,
            "godwit_policy_switch_latencies",
            "Past transitional switch latencies into this node kept for its class label",
            MetricType::Gauge,
            one(switches.len() as f64),
        )?;
        family(
            &mut enc,
            "godwit_policy_switch_latency_p90_seconds",
            "The p90 of this node's past transitional switch latencies as a target: its class \
             label is positive iff this is at most L_max (absent: no history, positive)",
            MetricType::Gauge,
            crate::policy::percentile(&switches, 0.9).map(|p| (Vec::new(), p)),
        )?;
        family(
            &mut enc,
            "godwit_policy_threshold_ratio",
            "This node's switching threshold T_n (site energy and risk), as a fraction of capacity",
            MetricType::Gauge,
            node.as_ref().map(|n| (Vec::new(), n.threshold.threshold)),
        )?;
        family(
            &mut enc,
            "godwit_policy_load_ratio",
            "This node's u_max now: its most loaded resource, as a fraction of capacity",
            MetricType::Gauge,
            trigger
                .as_ref()
                .and_then(|t| t.u_max)
                .map(|v| (Vec::new(), v)),
        )?;
        family(
            &mut enc,
            "godwit_policy_load_forecast_ratio",
            "This node's forecast u_max at the horizon, as a fraction of capacity",
            MetricType::Gauge,
            trigger
                .as_ref()
                .and_then(|t| t.u_max_forecast)
                .map(|v| (Vec::new(), v)),
        )?;
        family(
            &mut enc,
            "godwit_policy_trigger_armed",
            "1 while this node's trigger is armed; 0 after it fired, until it re-arms",
            MetricType::Gauge,
            trigger
                .as_ref()
                .map(|t| (Vec::new(), f64::from(u8::from(t.armed)))),
        )?;
        Ok(())
    }
}

/// Migrations from this node: counts by result, and the last one's figures.
#[derive(Debug)]
struct MigrationCollector {
    migrator: Arc<crate::migrate::agent::Migrator>,
}

impl Collector for MigrationCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use MetricType::{Counter, Gauge};
        let st = self.migrator.stats();
        family(
            &mut enc,
            "godwit_migrations",
            "Migrations asked of this node, by result (refused: the caller may not start one)",
            Counter,
            [
                ("committed", st.committed),
                ("failed", st.failed),
                ("refused", st.refused),
            ]
            .map(|(r, v)| (vec![("result", r.to_string())], v as f64)),
        )?;
        family(
            &mut enc,
            "godwit_migration_downtime_target_missed",
            "Committed migrations from this node whose downtime exceeded their target",
            Counter,
            one(st.downtime_target_missed as f64),
        )?;
        // The last move's families are declared before any move too (with no series), so a
        // scrape lists every family the agent can export.
        let last = st.last.as_ref();
        let labels =
            |l: &crate::migrate::agent::MigrationReport| vec![("service", l.service.clone())];
        family(
            &mut enc,
            "godwit_migration_last_downtime_seconds",
            "The last migration: from the freeze to the service healthy on the target",
            Gauge,
            last.and_then(|l| l.downtime_seconds.map(|d| (labels(l), d))),
        )?;
        family(
            &mut enc,
            "godwit_migration_last_state_bytes",
            "The last migration: bytes of state sent over all rounds",
            Gauge,
            last.map(|l| {
                let bytes = l.transfer.as_ref().map(|t| t.bytes).unwrap_or(0);
                (labels(l), bytes as f64)
            }),
        )?;
        family(
            &mut enc,
            "godwit_migration_last_rounds",
            "The last migration: rounds run, and rounds the pre-copy model predicted",
            Gauge,
            last.into_iter().flat_map(|l| {
                [
                    (
                        vec![("service", l.service.clone()), ("kind", "actual".into())],
                        l.actual_rounds as f64,
                    ),
                    (
                        vec![("service", l.service.clone()), ("kind", "predicted".into())],
                        l.predicted_rounds.map(f64::from).unwrap_or(f64::NAN),
                    ),
                ]
            }),
        )?;
        Ok(())
    }
}

/// The inventory: a count per pattern, and one series per item (at most
/// `MAX_ITEMS_PER_PATTERN` per pattern).
struct InventoryCollector {
    inventory: crate::inventory::watch::SharedInventory,
}

impl std::fmt::Debug for InventoryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InventoryCollector")
    }
}

impl Collector for InventoryCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use crate::inventory::MAX_ITEMS_PER_PATTERN as MAX;
        let inv = self
            .inventory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut counts: Vec<(Labels, f64)> = Vec::new();
        let mut items: Vec<(Labels, f64)> = Vec::new();
        let mut add = |kind: &str, pattern: &str, names: Vec<String>| {
            counts.push((
                vec![("kind", kind.to_string()), ("pattern", pattern.to_string())],
                names.len() as f64,
            ));
            for name in names.into_iter().take(MAX) {
                items.push((
                    vec![
                        ("kind", kind.to_string()),
                        ("pattern", pattern.to_string()),
                        ("item", name),
                    ],
                    1.0,
                ));
            }
        };
        for m in &inv.processes {
            add(
                "process",
                &m.pattern,
                m.items
                    .iter()
                    .map(|p| format!("{}:{}", p.comm, p.pid))
                    .collect(),
            );
        }
        for m in &inv.containers {
            add(
                "container",
                &m.pattern,
                m.items.iter().map(|c| c.cgroup.clone()).collect(),
            );
        }
        for m in &inv.devices {
            add(
                "device",
                &m.pattern,
                m.items.iter().map(|d| d.name.clone()).collect(),
            );
        }
        for m in &inv.interfaces {
            add(
                "interface",
                &m.pattern,
                m.items.iter().map(|i| i.name.clone()).collect(),
            );
        }
        family(
            &mut enc,
            "godwit_inventory_matches",
            "Items each inventory pattern resolves to now",
            MetricType::Gauge,
            counts,
        )?;
        family(
            &mut enc,
            "godwit_inventory_item",
            "One series per resolved item (capped per pattern), for joins on labels",
            MetricType::Gauge,
            items,
        )?;
        Ok(())
    }
}

/// Managed services: one series per service and state (1 for the current one), restarts.
#[derive(Debug)]
struct ServicesCollector {
    services: Arc<crate::service::Manager>,
}

impl Collector for ServicesCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use crate::service::RunState;
        use MetricType::{Counter, Gauge};
        let list = self.services.list();
        const STATES: [RunState; 6] = [
            RunState::Stopped,
            RunState::Running,
            RunState::Frozen,
            RunState::Stopping,
            RunState::Backoff,
            RunState::Failed,
        ];
        family(
            &mut enc,
            "godwit_service_state",
            "Managed services by state: 1 for the state each one is in",
            Gauge,
            list.iter().flat_map(|s| {
                STATES.iter().map(move |st| {
                    (
                        vec![("service", s.name.clone()), ("state", st.to_string())],
                        f64::from(u8::from(s.state == *st)),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "godwit_service_healthy",
            "1 when the managed service's health check passes",
            Gauge,
            list.iter().map(|s| {
                (
                    vec![("service", s.name.clone())],
                    f64::from(u8::from(s.health == crate::service::Health::Healthy)),
                )
            }),
        )?;
        family(
            &mut enc,
            "godwit_service_restarts",
            "Restarts of a managed service after crashes since it was last started",
            Counter,
            list.iter()
                .map(|s| (vec![("service", s.name.clone())], f64::from(s.restarts))),
        )?;
        Ok(())
    }
}

/// Connection counts of the QUIC endpoint and the paths it measured (one series per peer).
#[derive(Debug)]
struct TransportCollector {
    transport: Arc<Transport>,
}

impl Collector for TransportCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use MetricType::{Counter, Gauge};
        let s = self.transport.stats();
        family(
            &mut enc,
            "godwit_transport_connections",
            "Agent-to-agent connections: accepted, made, refused (certificate, name, handshake; \
             refused_limit: over the connection caps), or sent a retry to validate the address",
            Counter,
            [
                ("accepted", s.accepted),
                ("connected", s.connected),
                ("refused_in", s.refused_in),
                ("refused_out", s.refused_out),
                ("refused_limit", s.refused_limit),
                ("retried", s.retried),
            ]
            .map(|(outcome, v)| (vec![("outcome", outcome.to_string())], v as f64)),
        )?;
        let paths = self.transport.paths();
        family(
            &mut enc,
            "godwit_transport_path_rtt_seconds",
            "Median round trip to a peer at its last measurement",
            Gauge,
            paths
                .iter()
                .map(|p| (vec![("peer", p.node.clone())], p.rtt_ms / 1e3)),
        )?;
        family(
            &mut enc,
            "godwit_transport_path_bandwidth_bytes_per_second",
            "Throughput to a peer at its last measurement, as the peer received it",
            Gauge,
            paths
                .iter()
                .filter(|p| p.probe_bytes > 0)
                .map(|p| (vec![("peer", p.node.clone())], p.bandwidth_bytes_per_second)),
        )?;
        Ok(())
    }
}

/// Membership and transport figures of the gossip mesh.
#[derive(Debug)]
struct MeshCollector {
    mesh: Arc<Cluster>,
}

impl Collector for MeshCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use MetricType::{Counter, Gauge};
        let view = self.mesh.view();
        let count = |l: Liveness| view.members.iter().filter(|m| m.liveness == l).count() as f64;
        family(
            &mut enc,
            "godwit_gossip_members",
            "Members of the mesh as this node sees them, by liveness (this node included)",
            Gauge,
            [
                ("alive", Liveness::Alive),
                ("suspect", Liveness::Suspect),
                ("dead", Liveness::Dead),
                ("left", Liveness::Left),
            ]
            .map(|(name, l)| (vec![("liveness", name.to_string())], count(l))),
        )?;
        let oldest = view
            .members
            .iter()
            .filter(|m| matches!(m.liveness, Liveness::Alive | Liveness::Suspect))
            .map(|m| m.heartbeat_age_ms)
            .max()
            .unwrap_or(0);
        family(
            &mut enc,
            "godwit_gossip_heartbeat_age_max_seconds",
            "Age of the stalest heartbeat among members alive or suspect",
            Gauge,
            one(oldest as f64 / 1000.0),
        )?;
        let t = self.mesh.traffic();
        family(
            &mut enc,
            "godwit_gossip_bytes",
            "Bytes of gossip datagrams as on the wire, by direction",
            Counter,
            [("sent", t.bytes_sent), ("received", t.bytes_received)]
                .map(|(d, v)| (vec![("direction", d.to_string())], v as f64)),
        )?;
        if let Some(s) = self.mesh.seal_stats() {
            family(
                &mut enc,
                "godwit_gossip_sealed_datagrams",
                "Datagrams of the sealed gossip transport: sent, accepted, or dropped and why",
                Counter,
                [
                    ("sent", s.sent),
                    ("accepted", s.accepted),
                    ("bad_key", s.bad_key),
                    ("bad_tag", s.bad_tag),
                    ("replay", s.replay),
                    ("stale", s.stale),
                    ("malformed", s.malformed),
                ]
                .map(|(outcome, v)| (vec![("outcome", outcome.to_string())], v as f64)),
            )?;
        }
        if let Some(ring) = self.mesh.keyring() {
            family(
                &mut enc,
                "godwit_gossip_keys",
                "Cluster keys this node accepts (more than one only during a rotation)",
                Gauge,
                one(ring.key_ids().len() as f64),
            )?;
        }
        Ok(())
    }
}

/// One metric family: a descriptor and its series.
fn family<V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, V)>,
) -> Result<(), FmtError>
where
    V: Into<f64>,
{
    let mut fam = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in series {
        let m = fam.encode_family(&labels)?;
        let v: f64 = v.into();
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(m)?,
            _ => ConstGauge::new(v).encode(m)?,
        }
    }
    Ok(())
}

fn one(v: impl Into<f64>) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), v.into())]
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), FmtError> {
        use MetricType::{Counter, Gauge};
        let snap = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        family(
            &mut enc,
            "godwit_build_info",
            "Version of the running agent",
            Gauge,
            vec![(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1.0,
            )],
        )?;
        let me = crate::probe::procfs::read_self_usage().ok();
        family(
            &mut enc,
            "process_cpu_seconds",
            "CPU time used by the agent itself",
            Counter,
            one(me.as_ref().map(|m| m.cpu_seconds).unwrap_or(0.0)),
        )?;
        family(
            &mut enc,
            "process_resident_memory_bytes",
            "Resident memory of the agent itself",
            Gauge,
            one(me.map(|m| m.rss_bytes as f64).unwrap_or(0.0)),
        )?;
        let Some(snap) = snap else { return Ok(()) };
        encode_self(&mut enc, &snap)?;
        encode_node(&mut enc, &snap)?;
        encode_containers(&mut enc, &snap)?;
        encode_processes(&mut enc, &snap, &self.selection)?;
        Ok(())
    }
}

fn encode_self(enc: &mut DescriptorEncoder<'_>, s: &Snapshot) -> Result<(), FmtError> {
    use MetricType::{Counter, Gauge};
    let p = &s.probe;
    let source = p.source.map(|s| s.as_str()).unwrap_or("none").to_string();
    family(
        enc,
        "godwit_probe_info",
        "Which source the per-process and per-container figures come from (ebpf or procfs)",
        Gauge,
        vec![(vec![("source", source)], 1.0)],
    )?;
    family(
        enc,
        "godwit_probe_events",
        "Process exec and exit events received from the kernel",
        Counter,
        vec![
            (vec![("kind", "exec".to_string())], p.kernel.exec as f64),
            (vec![("kind", "exit".to_string())], p.kernel.exit as f64),
            (
                vec![("kind", "dirty_folio".to_string())],
                p.kernel.dirty_events as f64,
            ),
            (
                vec![("kind", "write_fault_unresolved".to_string())],
                p.kernel.fault_unknown as f64,
            ),
        ],
    )?;
    family(
        enc,
        "godwit_probe_lost_events",
        "Events dropped because a BPF ring buffer was full",
        Counter,
        vec![
            (
                vec![("ring", "events".to_string())],
                p.kernel.events_lost as f64,
            ),
            (
                vec![("ring", "dirty_ranges".to_string())],
                p.kernel.dirty_ranges_lost as f64,
            ),
        ],
    )?;
    family(
        enc,
        "godwit_probe_map_full",
        "Updates dropped because a BPF map was full",
        Counter,
        vec![
            (
                vec![("map", "tasks".to_string())],
                p.kernel.tasks_map_full as f64,
            ),
            (
                vec![("map", "cgroups".to_string())],
                p.kernel.cgroups_map_full as f64,
            ),
        ],
    )?;
    family(
        enc,
        "godwit_bpf_program_run_time_seconds",
        "Time spent in each BPF program (kernel BPF statistics)",
        Counter,
        p.programs.iter().map(|r| {
            (
                vec![("program", r.name.to_string())],
                r.run_time_ns as f64 / 1e9,
            )
        }),
    )?;
    family(
        enc,
        "godwit_bpf_program_runs",
        "Runs of each BPF program (kernel BPF statistics)",
        Counter,
        p.programs
            .iter()
            .map(|r| (vec![("program", r.name.to_string())], r.run_count as f64)),
    )?;
    family(
        enc,
        "godwit_sampler_samples",
        "Samples taken",
        Counter,
        one(p.samples_total as f64),
    )?;
    family(
        enc,
        "godwit_sampler_duration_seconds",
        "Time spent taking samples",
        Counter,
        one(p.sample_seconds_total),
    )?;
    family(
        enc,
        "godwit_sampler_last_duration_seconds",
        "Time the last sample took",
        Gauge,
        one(p.sample_seconds_last),
    )?;
    family(
        enc,
        "godwit_tracked_processes",
        "Processes the sampler keeps state for (live and within the grace period)",
        Gauge,
        one(p.tracked_processes as f64),
    )?;
    family(
        enc,
        "godwit_tracked_containers",
        "Containers and cgroups the sampler keeps state for",
        Gauge,
        one(p.tracked_cgroups as f64),
    )
}

fn encode_node(enc: &mut DescriptorEncoder<'_>, s: &Snapshot) -> Result<(), FmtError> {
    use MetricType::{Counter, Gauge};
    let n = &s.node;
    family(enc, "godwit_node_cpus", "Online CPUs", Gauge, one(n.cpus))?;
    let modes = [
        ("user", n.cpu.user),
        ("nice", n.cpu.nice),
        ("system", n.cpu.system),
        ("idle", n.cpu.idle),
        ("iowait", n.cpu.iowait),
        ("irq", n.cpu.irq),
        ("softirq", n.cpu.softirq),
        ("steal", n.cpu.steal),
    ];
    family(
        enc,
        "godwit_node_cpu_mode_ratio",
        "Fraction of CPU time in each mode over the last interval",
        Gauge,
        modes
            .iter()
            .map(|(m, v)| (vec![("mode", m.to_string())], *v)),
    )?;
    family(
        enc,
        "godwit_node_cpu_utilization_ratio",
        "CPU busy fraction (1 - idle - iowait) over the last interval",
        Gauge,
        one(n.cpu_utilization),
    )?;
    family(
        enc,
        "godwit_node_memory_total_bytes",
        "Total memory",
        Gauge,
        one(n.memory_total_bytes as f64),
    )?;
    family(
        enc,
        "godwit_node_memory_available_bytes",
        "Memory available for new work (MemAvailable)",
        Gauge,
        one(n.memory_available_bytes as f64),
    )?;
    family(
        enc,
        "godwit_node_network_receive_bytes",
        "Bytes received per interface",
        Counter,
        n.interfaces.iter().map(|i| {
            (
                vec![("interface", i.name.clone())],
                i.receive_bytes_total as f64,
            )
        }),
    )?;
    family(
        enc,
        "godwit_node_network_transmit_bytes",
        "Bytes sent per interface",
        Counter,
        n.interfaces.iter().map(|i| {
            (
                vec![("interface", i.name.clone())],
                i.transmit_bytes_total as f64,
            )
        }),
    )?;
    family(
        enc,
        "godwit_node_disk_read_bytes",
        "Bytes read per block device",
        Counter,
        n.disks
            .iter()
            .map(|d| (vec![("device", d.name.clone())], d.read_bytes_total as f64)),
    )?;
    family(
        enc,
        "godwit_node_disk_written_bytes",
        "Bytes written per block device",
        Counter,
        n.disks.iter().map(|d| {
            (
                vec![("device", d.name.clone())],
                d.written_bytes_total as f64,
            )
        }),
    )?;
    family(
        enc,
        "godwit_node_dirty_bytes_per_second",
        "Bytes written per second (page granularity, where writes are counted; else the \
         page cache's folio volume) by all processes over the last interval",
        Gauge,
        one(n.dirty_bytes_per_second),
    )?;
    let src = vec![("source", n.power_source.as_str().to_string())];
    family(
        enc,
        "godwit_node_power_watts",
        "Node power (RAPL or model, see source)",
        Gauge,
        vec![(src.clone(), n.power_watts)],
    )?;
    family(
        enc,
        "godwit_node_energy_joules",
        "Node energy since the agent started",
        Counter,
        vec![(src, n.energy_joules_total)],
    )
}

fn encode_containers(enc: &mut DescriptorEncoder<'_>, s: &Snapshot) -> Result<(), FmtError> {
    use MetricType::{Counter, Gauge};
    let labels = |c: &crate::probe::model::ContainerSample, source: &str| -> Labels {
        vec![
            ("container", c.info.name.clone()),
            ("runtime", c.info.runtime.as_str().to_string()),
            ("cgroup", c.cgroup_path.clone()),
            ("source", source.to_string()),
        ]
    };
    let cs = &s.containers;
    family(
        enc,
        "godwit_container_cpu_seconds",
        "CPU time used by the container",
        Counter,
        cs.iter()
            .map(|c| (labels(c, c.source.cpu.as_str()), c.cpu_seconds_total)),
    )?;
    family(
        enc,
        "godwit_container_cpu_waited_seconds",
        "Time some task of the container was runnable without a CPU (cpu.pressure some): \
         throttled by a CPU limit, or contended",
        Counter,
        cs.iter()
            .filter_map(|c| Some((labels(c, "cgroupfs"), c.cpu_waited_seconds_total?))),
    )?;
    family(
        enc,
        "godwit_container_memory_bytes",
        "Memory charged to the container's cgroup",
        Gauge,
        cs.iter()
            .filter_map(|c| Some((labels(c, c.source.memory.as_str()), c.memory_bytes? as f64))),
    )?;
    family(
        enc,
        "godwit_container_memory_working_set_bytes",
        "Memory minus inactive file cache (cAdvisor's working set)",
        Gauge,
        cs.iter().filter_map(|c| {
            Some((
                labels(c, c.source.memory.as_str()),
                c.memory_working_set_bytes? as f64,
            ))
        }),
    )?;
    family(
        enc,
        "godwit_container_dirtied_bytes",
        "Page-cache bytes dirtied (clean to dirty) by the container's tasks",
        Counter,
        cs.iter().map(|c| {
            (
                labels(c, c.source.dirty.as_str()),
                c.dirtied_pages_total as f64 * page_bytes(),
            )
        }),
    )?;
    family(
        enc,
        "godwit_container_changed_bytes",
        "Bytes the container's tasks wrote, at page granularity (write ranges and \
         shared-mapping write faults): what a migration's rounds send",
        Counter,
        cs.iter().filter_map(|c| {
            Some((
                labels(c, "ebpf"),
                c.changed_pages_total? as f64 * page_bytes(),
            ))
        }),
    )?;
    family(
        enc,
        "godwit_container_write_faults",
        "Write page faults taken by the container's tasks",
        Counter,
        cs.iter()
            .filter_map(|c| Some((labels(c, "ebpf"), c.write_faults_total? as f64))),
    )?;
    family(
        enc,
        "godwit_container_processes",
        "Live processes in the container",
        Gauge,
        cs.iter()
            .map(|c| (labels(c, "procfs"), f64::from(c.processes))),
    )?;
    family(
        enc,
        "godwit_container_power_watts",
        "Power attributed to the container by its CPU-time share",
        Gauge,
        cs.iter()
            .map(|c| (labels(c, c.source.energy.as_str()), c.power_watts)),
    )?;
    family(
        enc,
        "godwit_container_energy_joules",
        "Energy attributed to the container by its CPU-time share",
        Counter,
        cs.iter()
            .map(|c| (labels(c, c.source.energy.as_str()), c.energy_joules_total)),
    )
}

fn encode_processes(
    enc: &mut DescriptorEncoder<'_>,
    s: &Snapshot,
    selection: &ProcessSelection,
) -> Result<(), FmtError> {
    use MetricType::{Counter, Gauge};
    let chosen: Vec<&ProcessSample> = selection
        .select(&s.processes)
        .into_iter()
        .map(|i| &s.processes[i])
        .collect();
    let labels = |p: &ProcessSample, source: &str| -> Labels {
        vec![
            ("pid", p.pid.to_string()),
            ("comm", p.comm.clone()),
            ("cgroup", p.cgroup_path.clone()),
            ("source", source.to_string()),
        ]
    };
    family(
        enc,
        "godwit_process_cpu_seconds",
        "CPU time used by the process (top N and selected processes only)",
        Counter,
        chosen
            .iter()
            .map(|p| (labels(p, p.source.cpu.as_str()), p.cpu_seconds_total)),
    )?;
    family(
        enc,
        "godwit_process_resident_memory_bytes",
        "Resident memory of the process (top N and selected processes only)",
        Gauge,
        chosen
            .iter()
            .map(|p| (labels(p, "procfs"), p.rss_bytes as f64)),
    )?;
    family(
        enc,
        "godwit_process_dirtied_bytes",
        "Page-cache bytes dirtied by the process (top N and selected processes only)",
        Counter,
        chosen.iter().map(|p| {
            (
                labels(p, p.source.dirty.as_str()),
                p.dirtied_pages_total as f64 * page_bytes(),
            )
        }),
    )?;
    family(
        enc,
        "godwit_process_changed_bytes",
        "Bytes the process wrote, at page granularity (top N and selected processes only)",
        Counter,
        chosen.iter().filter_map(|p| {
            Some((
                labels(p, "ebpf"),
                p.changed_pages_total? as f64 * page_bytes(),
            ))
        }),
    )?;
    family(
        enc,
        "godwit_process_write_faults",
        "Write page faults of the process (top N and selected processes only)",
        Counter,
        chosen
            .iter()
            .filter_map(|p| Some((labels(p, "ebpf"), p.write_faults_total? as f64))),
    )?;
    family(
        enc,
        "godwit_process_energy_joules",
        "Energy attributed to the process by its CPU-time share (top N and selected only)",
        Counter,
        chosen
            .iter()
            .map(|p| (labels(p, p.source.energy.as_str()), p.energy_joules_total)),
    )
}

/// Renders the registry as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, FmtError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

fn page_bytes() -> f64 {
    crate::probe::procfs::page_size() as f64
}

/// Converts OpenMetrics text to the Prometheus text format 0.0.4, for scrapers and tools
/// (such as `promtool check metrics`) that do not speak OpenMetrics: counter families get
/// their `_total` name in `# HELP`/`# TYPE`, and `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                counters.insert(name.to_string());
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_renames_counter_families_and_drops_eof() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\na_bytes_total 3\n\
                  # HELP g Gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total 3\n\
             # HELP g Gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn selection_takes_top_by_cpu_and_dirty_and_globs() {
        let mk = |pid: u32, comm: &str, cpu: f64, dirty: f64| {
            let mut p: ProcessSample = serde_json::from_value(serde_json::json!({
                "pid": pid, "ppid": 1, "comm": comm, "cmdline": comm, "cgroup_id": 0,
                "cgroup_path": "/", "age_seconds": 1.0, "cpu_seconds_total": 0.0,
                "cpu_cores": cpu, "rss_bytes": 0, "dirtied_pages_total": 0,
                "dirty_bytes_per_second": dirty, "write_faults_total": null,
                "write_faults_per_second": null, "power_watts": 0.0, "energy_joules_total": 0.0,
                "source": {"cpu": "ebpf", "dirty": "ebpf", "write_faults": "none",
                           "memory": "procfs", "energy": "model"}
            }))
            .unwrap();
            p.pid = pid;
            p
        };
        // Sorted by CPU, as the snapshot is.
        let procs = vec![
            mk(1, "busy", 0.9, 0.0),
            mk(2, "warm", 0.5, 0.0),
            mk(3, "writer", 0.0, 9e6),
            mk(4, "redis-server", 0.0, 0.0),
            mk(5, "idle", 0.0, 0.0),
        ];
        let sel = ProcessSelection {
            top: 1,
            globs: vec![Glob::new("redis-*").unwrap()],
        };
        assert_eq!(sel.select(&procs), vec![0, 2, 3]);
    }
}
