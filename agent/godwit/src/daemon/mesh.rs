//! Gossip: this node in the mesh, and the task that publishes its summary after each sample.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probes::Probes;
use super::{Context, StartError};
use crate::config::Config;
use crate::gossip;
use crate::{forecast, probe};

/// How long the gossip server may take to stop once the node left.
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Checks `[gossip]` before anything is bound; `None` when gossip is off.
pub(super) fn config(ctx: &Context) -> Result<Option<gossip::GossipConfig>, StartError> {
    ctx.cfg
        .gossip
        .enabled
        .then(|| gossip::agent::config_from(&ctx.cfg.gossip, &ctx.node))
        .transpose()
        .map_err(StartError::GossipConfig)
}

/// The mesh (when gossip is on) and the summary publisher.
pub(super) struct Mesh {
    /// The cluster; `None` without gossip.
    pub cluster: Option<Arc<gossip::Cluster>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    linger: Duration,
}

impl Mesh {
    /// Joins the mesh described by `gossip` (see [`config`]).
    pub(super) async fn start(
        ctx: &Context,
        gossip: Option<gossip::GossipConfig>,
    ) -> Result<Mesh, StartError> {
        let cluster = match gossip {
            None => None,
            Some(g) => {
                let c = gossip::Cluster::start(g, gossip::Network::Udp)
                    .await
                    .map_err(StartError::Gossip)?;
                tracing::info!(node = %ctx.node, gossip = %c.gossip_addr(), "joined the mesh");
                Some(Arc::new(c))
            }
        };
        Ok(Mesh {
            cluster,
            cancel: ctx.child_token(),
            tasks: TaskTracker::new(),
            linger: (Duration::from_millis(ctx.cfg.gossip.interval_ms.0) * 3)
                .min(Duration::from_secs(2)),
        })
    }

    /// Starts publishing this node's summary after every sample, with the transport's
    /// address `quic` and the images `images` holds in it.
    pub(super) fn publish(
        &self,
        ctx: &Context,
        quic: Option<std::net::SocketAddr>,
        probes: &Probes,
        coord: Option<Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>>,
        manager: Option<Arc<crate::service::Manager>>,
        images: Option<Arc<crate::image::ImageStore>>,
    ) {
        let Some(mesh) = self.cluster.clone() else {
            return;
        };
        let publisher = publish_summaries(
            ctx.cfg.clone(),
            mesh,
            quic,
            probes.shared.clone(),
            probes.forecasts.clone(),
            probes.decisions.clone(),
            probes.risk.clone(),
            probes.switches.clone(),
            coord,
            manager,
            images,
        );
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = publisher => {}
            }
        });
    }

    /// Announces the departure: peers list this node as left rather than declaring it dead.
    /// Gossips on meanwhile, for a few gossip intervals.
    pub(super) async fn leave(&self) {
        if let Some(mesh) = &self.cluster {
            mesh.leave(self.linger).await;
        }
    }

    /// Stops the publisher, then gossip (when nothing else holds the cluster any more;
    /// otherwise the last holder's drop stops it).
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(Ok(cluster)) = self.cluster.map(Arc::try_unwrap) {
            match tokio::time::timeout(STOP_DEADLINE, cluster.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "gossip did not stop cleanly"),
                Err(_) => tracing::warn!("gossip did not stop within the deadline"),
            }
        }
    }
}

/// Publishes this node's summary to the mesh after every sample.
#[allow(clippy::too_many_arguments)]
async fn publish_summaries(
    cfg: Config,
    mesh: Arc<gossip::Cluster>,
    quic: Option<std::net::SocketAddr>,
    snapshot: probe::SharedSnapshot,
    forecasts: forecast::SharedForecasts,
    decisions: forecast::SharedDecisions,
    risk: forecast::SharedRisk,
    switches: Arc<crate::migrate::agent::SwitchHistory>,
    coord: Option<Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>>,
    manager: Option<Arc<crate::service::Manager>>,
    images: Option<Arc<crate::image::ImageStore>>,
) {
    let mut tick = tokio::time::interval(cfg.probe.interval());
    let mut sizes = StateSizes::default();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    let mut warned = false;
    loop {
        tick.tick().await;
        let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(snap) = snap.filter(|s| s.taken_at_unix_ms != last) else {
            continue;
        };
        last = snap.taken_at_unix_ms;
        let f = forecasts.read().unwrap_or_else(|e| e.into_inner()).clone();
        let d = decisions.read().unwrap_or_else(|e| e.into_inner()).clone();
        // The images held here, read every summary: the leader's pre-staging sees a copy
        // land within a sample.
        let held = match &images {
            Some(store) => {
                let (store, known) = (store.clone(), sizes.image_bytes.clone());
                tokio::task::spawn_blocking(move || held_images(&store, &known))
                    .await
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        sizes.image_bytes = held.iter().cloned().collect();
        let hosted = match &manager {
            Some(m) => sizes.hosted(&cfg, &snap, m).await,
            None => Vec::new(),
        };
        let mut summary = crate::node_summary::summary(
            &cfg,
            &snap,
            f.as_deref(),
            d.as_deref(),
            risk.get(),
            hosted,
        );
        summary.addresses.quic = quic;
        // The class label's input: this node's past transitional switch latencies.
        summary.switch_latencies_ms = switches.latencies_ms();
        summary.images = held.into_iter().map(|(id, _)| id).collect();
        summary.coordinator = coord.as_ref().map(|c| {
            let (leader, term) = c.leader();
            gossip::CoordinatorSeen {
                leader_addr: leader.as_ref().map(|l| l.addr.clone()),
                leader: leader.map(|l| l.name),
                term,
            }
        });
        match mesh.publish(&summary).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot publish the node summary");
                warned = true;
            }
            Err(_) => {}
        }
    }
}

/// How often the services' state sizes are measured again, in summaries.
const STATE_SIZE_EVERY: u64 = 10;
/// Entries walked per state path at most.
const STATE_SIZE_ENTRIES: usize = 100_000;

/// The managed services' state sizes, measured off the runtime every [`STATE_SIZE_EVERY`]
/// summaries.
#[derive(Default)]
struct StateSizes {
    bytes: std::collections::BTreeMap<String, u64>,
    /// The held images' sizes (an image's content, so its size, never changes).
    image_bytes: std::collections::BTreeMap<String, u64>,
    ticks: u64,
}

/// The images `store` holds, sorted, each with its size (from `known`, else read from its
/// manifest; one it cannot read is left out).
fn held_images(
    store: &crate::image::ImageStore,
    known: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    store
        .list()
        .into_iter()
        .filter_map(|id| {
            let name = id.to_string();
            let bytes = match known.get(&name) {
                Some(b) => *b,
                None => store.manifest(&id).ok()?.size(),
            };
            Some((name, bytes))
        })
        .collect()
}

impl StateSizes {
    /// The running managed services, as the summary announces them.
    async fn hosted(
        &mut self,
        cfg: &Config,
        snap: &probe::Snapshot,
        manager: &crate::service::Manager,
    ) -> Vec<gossip::HostedService> {
        let running: Vec<crate::service::ServiceStatus> = manager
            .list()
            .into_iter()
            .filter(|s| s.pid.is_some())
            .collect();
        if self.ticks % STATE_SIZE_EVERY == 0 {
            let paths: Vec<(String, Vec<std::path::PathBuf>)> = running
                .iter()
                .filter_map(|s| {
                    let spec = manager.spec(&s.name)?;
                    let dir = spec.state_dir(&cfg.services);
                    Some((
                        s.name.clone(),
                        spec.state.iter().map(|p| dir.join(p)).collect(),
                    ))
                })
                .collect();
            let measured = tokio::task::spawn_blocking(move || {
                paths
                    .into_iter()
                    .map(|(name, paths)| {
                        let bytes = paths
                            .iter()
                            .map(|p| match std::fs::symlink_metadata(p) {
                                Ok(m) if m.is_file() => m.len(),
                                Ok(m) if m.is_dir() => {
                                    crate::node_summary::tree_bytes(p, STATE_SIZE_ENTRIES)
                                }
                                _ => 0,
                            })
                            .sum();
                        (name, bytes)
                    })
                    .collect()
            })
            .await;
            if let Ok(m) = measured {
                self.bytes = m;
            }
        }
        self.ticks += 1;
        running
            .iter()
            .map(|s| {
                crate::node_summary::hosted(
                    cfg,
                    snap,
                    &s.name,
                    s.image_id.as_deref(),
                    s.image_id
                        .as_ref()
                        .and_then(|id| self.image_bytes.get(id))
                        .copied()
                        .unwrap_or(0),
                    self.bytes.get(&s.name).copied().unwrap_or(0),
                    manager.timings(&s.name).and_then(|t| t.expected_stop_s()),
                )
            })
            .collect()
    }
}
