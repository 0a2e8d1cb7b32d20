//! The cluster handle: start, publish, view, change stream, keyring, shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chitchat::{spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId};
use serde::Serialize;
use tokio::sync::{broadcast, watch, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{next_generation, FailureDetection, GossipConfig, Security};
use super::error::GossipError;
use super::seal::{ClusterKey, Keyring, SealCounters, SealStats};
use super::summary::{EncodedSummary, NodeSummary};
use super::transport::{GossipTransport, Loss, Sealing, Wire};

/// Capacity of the change stream; a subscriber that lags further loses the oldest changes
/// (and can re-sync from [`Cluster::view`]).
const CHANGES_CAPACITY: usize = 1024;
/// Set (to "1") by a node that leaves gracefully. Outside the summary's `g:` keys.
const KEY_LEAVING: &str = "leaving";

/// One incarnation of a node: its id and the generation it drew when it started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MemberId {
    /// Stable node id.
    pub node_id: String,
    /// Incarnation: grows on every start.
    pub generation: u64,
}

/// What the failure detector says about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Heartbeats arrive.
    Alive,
    /// Still alive for the detector, but no heartbeat for over half the detection timeout.
    Suspect,
    /// Declared dead; kept (with its last summary) for the dead-node grace, then forgotten.
    Dead,
    /// Announced a graceful shutdown ([`Cluster::leave`]): gone, but not a failure. Kept for
    /// the dead-node grace like a dead member.
    Left,
}

/// A member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Node id and generation (only the newest incarnation of a node id is listed).
    pub id: MemberId,
    /// Where it gossips.
    pub gossip_addr: SocketAddr,
    /// Alive, suspect or dead.
    pub liveness: Liveness,
    /// Milliseconds since its heartbeat last advanced here (0 for this node).
    pub heartbeat_age_ms: u64,
    /// This is the local node.
    pub is_self: bool,
    /// Its summary; `None` until it published one.
    pub summary: Option<NodeSummary>,
}

/// A snapshot of the cluster: every member once, newest incarnation only, sorted by node id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// This node.
    pub self_id: MemberId,
    /// The members, this node included.
    pub members: Vec<Member>,
}

impl ClusterView {
    /// The member with this node id.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id.node_id == node_id)
    }

    /// Members that are alive or suspect.
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| !matches!(m.liveness, Liveness::Dead | Liveness::Left))
    }
}

/// Why a member left the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LeftReason {
    /// A newer incarnation of the same node id replaced it.
    Restarted {
        /// The new incarnation's generation.
        new_generation: u64,
    },
    /// Dead for longer than the dead-node grace: its state was garbage collected.
    Forgotten,
    /// It announced a graceful shutdown (it stays listed with liveness `left` until forgotten).
    Shutdown,
}

/// A change between two successive views.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ClusterChange {
    /// A node id appeared (also a restarted node, after `Left { Restarted }`).
    Joined(Member),
    /// A member's summary changed.
    Updated(Member),
    /// A member became suspect.
    Suspect(Member),
    /// A member was declared dead.
    Dead(Member),
    /// A suspect or dead member is alive again.
    Alive(Member),
    /// A member left the view.
    Left {
        /// The incarnation that left.
        id: MemberId,
        /// Replaced or forgotten.
        reason: LeftReason,
    },
}

/// The network gossip runs over.
#[derive(Debug, Clone, Default)]
pub enum Network {
    /// UDP, as configured.
    #[default]
    Udp,
    /// UDP, dropping each outgoing datagram with this probability (tests and benchmarks).
    LossyUdp {
        /// Probability, 0..=1, that an outgoing datagram is dropped.
        drop_probability: f64,
        /// Seed of the drop sequence.
        seed: u64,
    },
    /// A simulated network on tokio's clock (feature `sim`): see [`crate::sim`]. The listen
    /// address is bound on that network (port 0 picks a free one) and no UDP socket is opened.
    #[cfg(any(test, feature = "sim"))]
    Sim(crate::sim::SimNetwork),
}

/// A running gossip node. Dropping it stops gossip; [`Cluster::shutdown`] also waits for it.
pub struct Cluster {
    handle: Option<ChitchatHandle>,
    chitchat: Arc<Mutex<Chitchat>>,
    self_id: MemberId,
    gossip_addr: SocketAddr,
    budget: usize,
    view_rx: watch::Receiver<Arc<ClusterView>>,
    changes_tx: broadcast::Sender<ClusterChange>,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
    counters: Option<Arc<SealCounters>>,
    traffic: Arc<SealCounters>,
    keyring: Option<Keyring>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("self_id", &self.self_id)
            .field("gossip_addr", &self.gossip_addr)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Validates the config, binds the gossip socket and joins through the seeds.
    ///
    /// Seeds without a key are refused unless the config says [`Security::Insecure`]; a lone
    /// node without a key seals with an ephemeral key, so it accepts no peer.
    pub async fn start(config: GossipConfig, network: Network) -> Result<Cluster, GossipError> {
        config.validate()?;
        let bind_error = |err: std::io::Error| GossipError::Bind {
            addr: config.listen_addr,
            reason: err.to_string(),
        };
        let (wire, bound) = match &network {
            Network::Udp | Network::LossyUdp { .. } => {
                let socket = std::net::UdpSocket::bind(config.listen_addr)
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .map_err(bind_error)?;
                let bound = socket.local_addr().map_err(bind_error)?;
                (Wire::Udp(socket), bound)
            }
            #[cfg(any(test, feature = "sim"))]
            Network::Sim(net) => {
                let port = net.bind(config.listen_addr).map_err(bind_error)?;
                let bound = port.local_addr();
                (Wire::Sim(port), bound)
            }
        };
        let advertise = match config.advertise_addr {
            Some(addr) => addr,
            None if bound.ip().is_unspecified() => {
                return Err(GossipError::InvalidConfig(format!(
                    "listening on {bound}: set an advertise address peers can reach"
                )))
            }
            None => bound,
        };
        let generation = config.generation.unwrap_or_else(next_generation);
        let (keyring, sealing) = match &config.security {
            Security::Sealed(keyring) => (Some(keyring.clone()), true),
            Security::Insecure => (None, false),
            Security::None => (Some(Keyring::new(ClusterKey::generate())), true),
        };
        let counters = Arc::new(SealCounters::default());
        let transport = GossipTransport {
            socket: StdMutex::new(Some(wire)),
            sealing: if sealing {
                keyring.clone().map(|keyring| Sealing {
                    keyring,
                    cluster_id: config.cluster_id.clone(),
                    max_skew_ms: config
                        .max_clock_skew
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                })
            } else {
                None
            },
            counters: counters.clone(),
            loss: match network {
                Network::Udp => None,
                #[cfg(any(test, feature = "sim"))]
                Network::Sim(_) => None,
                Network::LossyUdp {
                    drop_probability,
                    seed,
                } => Some(Loss::new(drop_probability, seed)),
            },
        };
        let fd = config.failure_detection.clone();
        let chitchat_id = ChitchatId::new(config.node_id.clone(), generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: fd.gossip_interval,
            listen_addr: bound,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: fd.to_chitchat(),
            marked_for_deletion_grace_period: fd.dead_node_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        let handle = spawn_chitchat(chitchat_config, Vec::new(), &transport)
            .await
            .map_err(|err| GossipError::Bind {
                addr: bound,
                reason: format!("{err:#}"),
            })?;
        let chitchat = handle.chitchat();
        let self_id = MemberId {
            node_id: config.node_id.clone(),
            generation,
        };
        let initial = ClusterView {
            self_id: self_id.clone(),
            members: vec![Member {
                id: self_id.clone(),
                gossip_addr: advertise,
                liveness: Liveness::Alive,
                heartbeat_age_ms: 0,
                is_self: true,
                summary: None,
            }],
        };
        let (view_tx, view_rx) = watch::channel(Arc::new(initial));
        let (changes_tx, _) = broadcast::channel(CHANGES_CAPACITY);
        let refresh = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(refresh_loop(RefreshLoop {
            chitchat: chitchat.clone(),
            self_id: self_id.clone(),
            fd,
            view_tx,
            changes_tx: changes_tx.clone(),
            refresh: refresh.clone(),
            cancel: cancel.clone(),
            tracker: Tracker::default(),
        }));
        info!(
            node_id = %self_id.node_id,
            generation,
            addr = %advertise,
            sealed = sealing,
            seeds = config.seeds.len(),
            "gossip started"
        );
        Ok(Cluster {
            handle: Some(handle),
            chitchat,
            self_id,
            gossip_addr: advertise,
            budget: config.summary_budget,
            view_rx,
            changes_tx,
            refresh,
            cancel,
            task: Some(task),
            traffic: counters.clone(),
            counters: sealing.then_some(counters),
            keyring: if sealing && !matches!(config.security, Security::None) {
                keyring
            } else {
                None
            },
        })
    }

    /// This node's id and generation.
    pub fn self_id(&self) -> &MemberId {
        &self.self_id
    }

    /// The address peers gossip with this node at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Publishes this node's summary within the byte budget (see [`NodeSummary::encode`]).
    /// Only sections that changed are gossiped again.
    pub async fn publish(&self, summary: &NodeSummary) -> Result<EncodedSummary, GossipError> {
        let encoded = summary.encode(self.budget)?;
        {
            let mut chitchat = self.chitchat.lock().await;
            let state = chitchat.self_node_state();
            for (key, value) in &encoded.keys {
                state.set(key, value);
            }
        }
        self.refresh.notify_one();
        Ok(encoded)
    }

    /// The latest view (refreshed every gossip interval and on every membership change).
    pub fn view(&self) -> Arc<ClusterView> {
        self.view_rx.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn watch_view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view_rx.clone()
    }

    /// Subscribes to changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<ClusterChange> {
        self.changes_tx.subscribe()
    }

    /// Counters of the sealed transport (`None` when insecure).
    pub fn seal_stats(&self) -> Option<SealStats> {
        self.counters.as_ref().map(|c| c.snapshot())
    }

    /// Datagram and byte counts of the transport, sealed or not (the drop counters stay 0
    /// when insecure).
    pub fn traffic(&self) -> SealStats {
        self.traffic.snapshot()
    }

    /// The codec's and the tap's loopback addresses (tests send junk to them).
    #[cfg(test)]
    pub(crate) fn codec_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        *self.traffic.codec.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keyring, for rotation while running (`None` when insecure or lone without a key).
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Announces a graceful shutdown: peers list this node as [`Liveness::Left`] instead of
    /// declaring it dead once it stops. Gossips on for `linger` (a few gossip intervals) so the
    /// news spreads, then returns; stop or drop the cluster afterwards.
    pub async fn leave(&self, linger: Duration) {
        self.chitchat
            .lock()
            .await
            .self_node_state()
            .set(KEY_LEAVING, "1");
        info!(node_id = %self.self_id.node_id, "leaving the mesh");
        tokio::time::sleep(linger).await;
    }

    /// Stops gossiping and waits for the server to finish. Peers will declare this node dead
    /// unless it [left](Cluster::leave) first.
    pub async fn shutdown(mut self) -> Result<(), GossipError> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        match self.handle.take() {
            Some(handle) => handle
                .shutdown()
                .await
                .map_err(|err| GossipError::Server(format!("{err:#}"))),
            None => Ok(()),
        }
    }

    /// Generations of `node_id` that chitchat still holds state for (tests: ghost state).
    #[cfg(test)]
    pub(crate) async fn incarnations(&self, node_id: &str) -> Vec<u64> {
        let chitchat = self.chitchat.lock().await;
        chitchat
            .node_states()
            .keys()
            .filter(|id| &*id.node_id == node_id)
            .map(|id| id.generation_id)
            .collect()
    }

    /// Sets a raw key on this node (tests: keys from a newer schema).
    #[cfg(test)]
    pub(crate) async fn set_raw_key(&self, key: &str, value: &str) {
        self.chitchat.lock().await.self_node_state().set(key, value);
        self.refresh.notify_one();
    }

    /// The heartbeat and max version chitchat holds for `node_id`'s newest incarnation.
    #[cfg(test)]
    pub(crate) async fn raw_state_of(&self, node_id: &str) -> Option<(u64, u64)> {
        let chitchat = self.chitchat.lock().await;
        chitchat
            .node_states()
            .iter()
            .filter(|(id, _)| &*id.node_id == node_id)
            .max_by_key(|(id, _)| id.generation_id)
            .map(|(_, s)| (u64::from(s.heartbeat()), s.max_version()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(handle) = self.handle.as_ref() {
            let _ = handle.initiate_shutdown();
        }
    }
}

/// What this module remembers about each incarnation chitchat knows.
struct Seen {
    heartbeat: u64,
    advanced_at: Instant,
    first_seen: Instant,
    seen_alive: bool,
}

#[derive(Default)]
struct Tracker {
    seen: HashMap<ChitchatId, Seen>,
    /// Each incarnation's decoded summary and the state version it was decoded at: a summary
    /// is decoded again only when its keys changed, not on every refresh.
    summaries: HashMap<ChitchatId, (u64, Option<NodeSummary>)>,
    warned_duplicate: bool,
}

struct RefreshLoop {
    chitchat: Arc<Mutex<Chitchat>>,
    self_id: MemberId,
    fd: FailureDetection,
    view_tx: watch::Sender<Arc<ClusterView>>,
    changes_tx: broadcast::Sender<ClusterChange>,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
    tracker: Tracker,
}

async fn refresh_loop(mut this: RefreshLoop) {
    let mut live_rx = Some(this.chitchat.lock().await.live_nodes_watcher());
    let mut tick = tokio::time::interval(this.fd.gossip_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = this.cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = this.refresh.notified() => {}
            changed = async {
                match live_rx.as_mut() {
                    Some(rx) => rx.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    live_rx = None;
                }
            }
        }
        let view = {
            let chitchat = this.chitchat.lock().await;
            compute_view(&chitchat, &this.self_id, &this.fd, &mut this.tracker)
        };
        let previous = this.view_tx.borrow().clone();
        if *previous == view {
            continue;
        }
        for change in diff(&previous, &view) {
            let _ = this.changes_tx.send(change);
        }
        this.view_tx.send_replace(Arc::new(view));
    }
}

fn compute_view(
    chitchat: &Chitchat,
    self_id: &MemberId,
    fd: &FailureDetection,
    tracker: &mut Tracker,
) -> ClusterView {
    let now = Instant::now();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let states = chitchat.node_states();
    tracker.seen.retain(|id, _| states.contains_key(id));
    tracker.summaries.retain(|id, _| states.contains_key(id));

    // Liveness of every incarnation; `None` for one not yet presentable (never seen alive and
    // known for less than the detection bound: chitchat calls a node dead until it has two
    // heartbeats, which would flash every newcomer as dead).
    let mut candidates: BTreeMap<&str, Vec<(&ChitchatId, Liveness, u64)>> = BTreeMap::new();
    for (id, state) in states {
        let heartbeat = u64::from(state.heartbeat());
        let seen = tracker.seen.entry(id.clone()).or_insert(Seen {
            heartbeat,
            advanced_at: now,
            first_seen: now,
            seen_alive: false,
        });
        if heartbeat > seen.heartbeat {
            seen.heartbeat = heartbeat;
            seen.advanced_at = now;
        }
        let is_self = *id.node_id == *self_id.node_id && id.generation_id == self_id.generation;
        let age = now.saturating_duration_since(seen.advanced_at);
        let liveness = if is_self {
            Some(Liveness::Alive)
        } else if state.get(KEY_LEAVING).is_some() {
            Some(Liveness::Left)
        } else if live.contains(id) {
            seen.seen_alive = true;
            let timeout = chitchat
                .failure_detection_timeout(id)
                .unwrap_or_else(|| fd.gossip_interval.mul_f64(fd.phi_threshold));
            Some(if age * 2 >= timeout {
                Liveness::Suspect
            } else {
                Liveness::Alive
            })
        } else if seen.seen_alive
            || now.saturating_duration_since(seen.first_seen) >= fd.detection_bound()
        {
            Some(Liveness::Dead)
        } else {
            None
        };
        if let Some(liveness) = liveness {
            let age_ms = if is_self {
                0
            } else {
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
            };
            candidates
                .entry(&id.node_id)
                .or_default()
                .push((id, liveness, age_ms));
        }
    }

    let mut members = Vec::with_capacity(candidates.len());
    for (node_id, mut incarnations) in candidates {
        if node_id == self_id.node_id {
            // Our own older incarnations (gossiped back to us by peers) are ghosts; a newer
            // one that is alive means two processes share this node id.
            if !tracker.warned_duplicate
                && incarnations
                    .iter()
                    .any(|(id, l, _)| id.generation_id > self_id.generation && *l != Liveness::Dead)
            {
                tracker.warned_duplicate = true;
                warn!(node_id, "another live process gossips with this node id");
            }
            incarnations.retain(|(id, _, _)| id.generation_id == self_id.generation);
        }
        let Some((id, liveness, heartbeat_age_ms)) = incarnations
            .into_iter()
            .max_by_key(|(id, _, _)| id.generation_id)
        else {
            continue;
        };
        let summary = states.get(id).and_then(|state| {
            let version = state.max_version();
            match tracker.summaries.get(id) {
                Some((v, cached)) if *v == version => cached.clone(),
                _ => {
                    let decoded = NodeSummary::decode(state.key_values());
                    tracker
                        .summaries
                        .insert(id.clone(), (version, decoded.clone()));
                    decoded
                }
            }
        });
        members.push(Member {
            id: MemberId {
                node_id: node_id.to_string(),
                generation: id.generation_id,
            },
            gossip_addr: id.gossip_advertise_addr,
            liveness,
            heartbeat_age_ms,
            is_self: id.generation_id == self_id.generation && node_id == self_id.node_id,
            summary,
        });
    }
    ClusterView {
        self_id: self_id.clone(),
        members,
    }
}

fn diff(previous: &ClusterView, next: &ClusterView) -> Vec<ClusterChange> {
    let before: BTreeMap<&str, &Member> = previous
        .members
        .iter()
        .map(|m| (m.id.node_id.as_str(), m))
        .collect();
    let after: HashSet<&str> = next.members.iter().map(|m| m.id.node_id.as_str()).collect();
    let mut changes = Vec::new();
    for member in &next.members {
        match before.get(member.id.node_id.as_str()) {
            None => changes.push(ClusterChange::Joined(member.clone())),
            Some(old) if old.id.generation != member.id.generation => {
                changes.push(ClusterChange::Left {
                    id: old.id.clone(),
                    reason: LeftReason::Restarted {
                        new_generation: member.id.generation,
                    },
                });
                changes.push(ClusterChange::Joined(member.clone()));
            }
            Some(old) => {
                if old.liveness != member.liveness {
                    changes.push(match member.liveness {
                        Liveness::Alive => ClusterChange::Alive(member.clone()),
                        Liveness::Suspect => ClusterChange::Suspect(member.clone()),
                        Liveness::Dead => ClusterChange::Dead(member.clone()),
                        Liveness::Left => ClusterChange::Left {
                            id: member.id.clone(),
                            reason: LeftReason::Shutdown,
                        },
                    });
                }
                if old.summary != member.summary {
                    changes.push(ClusterChange::Updated(member.clone()));
                }
            }
        }
    }
    for old in &previous.members {
        // A member that left was reported when it announced it.
        if !after.contains(old.id.node_id.as_str()) && old.liveness != Liveness::Left {
            changes.push(ClusterChange::Left {
                id: old.id.clone(),
                reason: LeftReason::Forgotten,
            });
        }
    }
    changes
}
