//! The coordinator component (`[coordinator] enabled`): this node's Raft member, the services
//! the placement log gives it, and its self-fence.
//!
//! - **Placed, not started blindly.** Configured services are proposed to the log (`Define`);
//!   a node starts a service only when the log places it here, its lease is valid, it has
//!   applied the log as far as the leader had committed at the grant, and the service's epoch
//!   is admitted by the epoch store (fsynced, never older than one seen).
//! - **Stopped when moved.** A service running here that the log has placed elsewhere at a
//!   newer epoch is killed.
//! - **Self-fence.** When the lease runs out, every service is frozen and killed, its VIP
//!   withdrawn, and `fenced.json` written; nothing starts again until a fresh lease.
//! - A migration owns the services it moves: the reconciler leaves alone a service with a
//!   migration in flight in the log or in this node's journal.
//! - **No intent without an owner.** An intent from this node that no migration here owns (in
//!   this process or in the journal) was left by a source that stopped between committing it
//!   and journaling the move (nothing was handed off then): the reconciler closes it, or the
//!   service would stay down, out of every later move, until someone fenced the node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mesh::Mesh;
use super::network::Network;
use super::Context;
use crate::coord::epochs::{AdmitError, EpochStore};
use crate::coord::node::{Coordinator, LeaseView, Role};
use crate::coord::quic::{AgentWire, QuicWire};
use crate::coord::{Bootstrap, Cmd, GuardHandle, GuardOptions, Ha, Member, Outcome, Placement};
use crate::migrate::journal::Journal;
use crate::service::{HaPolicy, Manager, ServiceSpec};

/// This node's coordinator, when `[coordinator] enabled`.
pub(crate) struct Coordination {
    pub coord: Option<Arc<Coordinator<AgentWire>>>,
    /// The fence guard, when `[coordinator] guard` and the node runs services.
    guard: Option<Arc<std::sync::Mutex<Option<GuardHandle>>>>,
    /// The highest epoch seen per service (fsynced): the reconciler's and a migration
    /// target's check before any start.
    epochs: Option<Arc<EpochStore>>,
    /// The services migrations from this node are moving now (shared with the migrator).
    pub moving: crate::migrate::agent::Moving,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Coordination {
    /// Starts the Raft member and the tasks around it. A failure is said once; the node then
    /// runs no service from the log (and none of its configured ones either: placing them
    /// blindly is what the coordinator is there to stop).
    pub(super) async fn start(
        ctx: &Context,
        net: &Network,
        mesh: &Mesh,
        probes: &super::probes::Probes,
        manager: Option<Arc<Manager>>,
        journal: Option<Arc<Journal>>,
    ) -> Coordination {
        let cancel = ctx.child_token();
        let tasks = TaskTracker::new();
        let moving = crate::migrate::agent::Moving::default();
        let none = |cancel, tasks| Coordination {
            coord: None,
            guard: None,
            epochs: None,
            moving: crate::migrate::agent::Moving::default(),
            cancel,
            tasks,
        };
        let cfg = &ctx.cfg.coordinator;
        if !cfg.enabled {
            return none(cancel, tasks);
        }
        let dir = ctx.cfg.node.data_dir.join("coord");
        let (log, sm) = match crate::coord::store::open(&dir).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "no coordinator: its log cannot be opened; no service starts");
                return none(cancel, tasks);
            }
        };
        let epochs = match EpochStore::open(&dir.join("epochs.json")) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                tracing::error!(error = %e, "no coordinator: the epoch store cannot be read; no service starts");
                return none(cancel, tasks);
            }
        };
        let (wire, addr) = match &net.transport {
            Some(t) => (
                AgentWire::Quic(QuicWire::new(t.endpoint().clone())),
                t.advertise().to_string(),
            ),
            None => {
                tracing::warn!("no transport: this node coordinates only itself (no failover)");
                (AgentWire::None, String::new())
            }
        };
        let bootstrap = match cfg.bootstrap {
            Bootstrap::Yes => true,
            Bootstrap::No => false,
            Bootstrap::Auto => ctx.cfg.gossip.seeds.is_empty() || net.transport.is_none(),
        };
        let me = Member {
            name: ctx.node.clone(),
            addr,
        };
        let settings = cfg.settings(me, &ctx.cfg.site.name, bootstrap);
        let placement = sm.watch();
        let coord = match Coordinator::start(
            settings,
            wire,
            log,
            sm,
            placement,
            cancel.child_token(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no coordinator; no service starts");
                return none(cancel, tasks);
            }
        };
        if let Some(t) = &net.transport {
            crate::coord::quic::register(t.services(), coord.clone());
        }
        // Renewals carry what this node can hold and holds now, for placing failovers.
        let snapshot = probes.shared.clone();
        coord.set_capacity_source(Arc::new(move || {
            let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone()?;
            let n = &snap.node;
            let cores = f64::from(n.cpus);
            let memory = n.memory_total_bytes as f64;
            Some(crate::coord::rpc::NodeCapacity {
                cpu_cores: cores,
                cpu_used: n.cpu_utilization * cores,
                memory_bytes: memory,
                memory_used: n.memory_utilization * memory,
            })
        }));
        tracing::info!(
            node = %ctx.node,
            role = ?cfg.role,
            bootstrap,
            fence_after_ms = cfg.fence_after_ms,
            "coordinator member started"
        );
        if let Some(cluster) = mesh.cluster.clone() {
            tasks.spawn(hints(coord.clone(), cluster, cancel.clone()));
        }
        if cfg.role != Role::Witness {
            tasks.spawn(define(
                coord.clone(),
                ctx.node.clone(),
                ctx.cfg.service.clone(),
                cancel.clone(),
            ));
        }
        let mut guard = None;
        if let Some(m) = manager {
            if cfg.guard {
                let rt = m.runtime();
                let opts = GuardOptions {
                    cgroups: rt.v2_root.join(&rt.section.cgroup_parent),
                    watchdog: cfg.watchdog.clone(),
                };
                match GuardHandle::spawn(&opts) {
                    Ok(g) => {
                        tracing::info!(pid = g.pid(), cgroups = %opts.cgroups.display(), "fence guard started");
                        guard = Some(Arc::new(std::sync::Mutex::new(Some(g))));
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "no fence guard: a hung agent's services would outlive its lease"
                    ),
                }
            }
            tasks.spawn(reconcile(Reconciler {
                coord: coord.clone(),
                manager: m,
                epochs: epochs.clone(),
                journal,
                node: ctx.node.clone(),
                fenced_file: dir.join("fenced.json"),
                guard: guard.clone(),
                guard_grace: Duration::from_millis(cfg.guard_grace_ms),
                moving: moving.clone(),
                closing: Default::default(),
                tasks: tasks.clone(),
                cancel: cancel.clone(),
            }));
        }
        Coordination {
            coord: Some(coord),
            guard,
            epochs: Some(epochs),
            moving,
            cancel,
            tasks,
        }
    }

    /// The placement log's part in migrations from this node, when the coordinator runs.
    pub(super) fn gate(
        &self,
        ctx: &Context,
    ) -> Option<Arc<dyn crate::migrate::gate::PlacementGate>> {
        Some(Arc::new(CoordGate {
            coord: self.coord.clone()?,
            epochs: self.epochs.clone()?,
            node: ctx.node.clone(),
        }))
    }

    /// Stops the tasks, disarms the guard (a clean stop is no reason to kill anything), then
    /// stops the Raft member.
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let guard = self
            .guard
            .and_then(|g| g.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(g) = guard {
            match tokio::task::spawn_blocking(move || g.stop(Duration::from_secs(2))).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "stopping the fence guard"),
                Err(e) => tracing::warn!(error = %e, "stopping the fence guard"),
            }
        }
        if let Some(c) = self.coord {
            c.shutdown().await;
        }
    }
}

/// Keeps the member's list of peers (for finding a leader before it is a member) from gossip.
async fn hints(
    coord: Arc<Coordinator<AgentWire>>,
    cluster: Arc<crate::gossip::Cluster>,
    cancel: CancellationToken,
) {
    loop {
        let view = cluster.view();
        // The leader gossip announces (the highest term seen), else every live peer.
        let announced = view
            .live()
            .filter_map(|m| m.summary.as_ref()?.coordinator.clone())
            .filter(|c| c.leader.is_some() && c.leader_addr.is_some())
            .max_by_key(|c| c.term);
        if let Some(c) = announced {
            if let (Some(name), Some(addr)) = (c.leader, c.leader_addr) {
                coord.set_hints(vec![Member { name, addr }]);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        }
        let peers: Vec<Member> = view
            .live()
            .filter(|m| !m.is_self)
            .filter_map(|m| {
                let quic = m.summary.as_ref()?.addresses.quic?;
                Some(Member {
                    name: m.id.node_id.clone(),
                    addr: quic.to_string(),
                })
            })
            .collect();
        coord.set_hints(peers);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Proposes every configured service to the log until each is written.
async fn define(
    coord: Arc<Coordinator<AgentWire>>,
    node: String,
    specs: Vec<ServiceSpec>,
    cancel: CancellationToken,
) {
    let mut pending: Vec<ServiceSpec> = specs;
    while !pending.is_empty() {
        let mut left = Vec::new();
        for spec in pending {
            let cmd = match define_cmd(&spec, &node) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(service = %spec.name, error = %e, "spec cannot be encoded");
                    continue;
                }
            };
            match coord.write(cmd).await {
                Ok((outcome, index)) => {
                    tracing::info!(service = %spec.name, ?outcome, index, "configured service proposed to the placement log")
                }
                Err(e) => {
                    tracing::debug!(service = %spec.name, error = %e, "not yet proposed");
                    left.push(spec);
                }
            }
        }
        pending = left;
        if pending.is_empty() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The log entry that places `spec` on `node` (unless the log already knows the service).
pub(crate) fn define_cmd(spec: &ServiceSpec, node: &str) -> Result<Cmd, serde_json::Error> {
    Ok(Cmd::Define {
        service: spec.name.clone(),
        node: node.to_string(),
        spec: serde_json::to_string(spec)?,
        ha: match spec.ha {
            HaPolicy::Restart => Ha::Restart,
            HaPolicy::None => Ha::None,
        },
    })
}

struct Reconciler {
    coord: Arc<Coordinator<AgentWire>>,
    manager: Arc<Manager>,
    epochs: Arc<EpochStore>,
    journal: Option<Arc<Journal>>,
    node: String,
    fenced_file: std::path::PathBuf,
    guard: Option<Arc<std::sync::Mutex<Option<GuardHandle>>>>,
    guard_grace: Duration,
    /// The services migrations from this node are moving now.
    moving: crate::migrate::agent::Moving,
    /// Orphaned intents being closed, as (service, intent).
    closing: Arc<std::sync::Mutex<BTreeSet<(String, u64)>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Reconciler {
    /// Closes `service`'s intent `intent` from this node, which no migration here owns, in the
    /// background until the log answers (a compare-and-set: a no-op once the intent is gone).
    fn close_orphan(&self, service: &str, intent: u64) {
        let key = (service.to_string(), intent);
        if !self
            .closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return;
        }
        tracing::warn!(
            service,
            intent,
            "an intent from this node that no migration here owns: closing it"
        );
        let gate = CoordGate {
            coord: self.coord.clone(),
            epochs: self.epochs.clone(),
            node: self.node.clone(),
        };
        let (closing, cancel) = (self.closing.clone(), self.cancel.clone());
        self.tasks.spawn(async move {
            use crate::migrate::gate::PlacementGate;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = gate.abort(&key.0, key.1) => {}
            }
            closing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        });
    }

    /// Tells the guard the lease runs to `until_ms`: it kills the services `guard_grace` after.
    fn pet(&self, until_ms: u64) {
        let Some(g) = &self.guard else { return };
        let g = g.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = g.as_ref() {
            let deadline = crate::coord::BootTime(until_ms).add(self.guard_grace);
            if let Err(e) = g.pet(deadline) {
                tracing::warn!(error = %e, "petting the fence guard");
            }
        }
    }
}

/// Brings the services here in line with the log and the lease, on every change and every
/// half second.
async fn reconcile(r: Reconciler) {
    let mut placement = r.coord.placement();
    let mut lease = r.coord.lease();
    let mut fenced = false;
    loop {
        let l = *lease.borrow_and_update();
        let p = placement.borrow_and_update().clone();
        if !l.valid {
            let running = r.manager.names();
            if !running.is_empty() || (!fenced && l.until_ms > 0) {
                fence(&r, &running, &l).await;
                fenced = true;
            }
        } else {
            r.pet(l.until_ms);
            if fenced {
                tracing::info!("fresh lease: this node acts again");
                r.manager.unfence();
                fenced = false;
            }
            if l.may_act() {
                apply(&r, &p).await;
            }
        }
        tokio::select! {
            _ = r.cancel.cancelled() => return,
            _ = placement.changed() => {}
            _ = lease.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The lease ran out: every service here is frozen and killed (VIPs withdrawn with them) and
/// the fence recorded.
async fn fence(r: &Reconciler, running: &[String], l: &LeaseView) {
    tracing::error!(
        services = running.len(),
        lease_until_ms = l.until_ms,
        "lease ran out: fencing this node (its services are killed)"
    );
    // Frozen and killed all at once, VIPs withdrawn; nothing starts until `unfence`.
    let killed = r.manager.fence_all().await;
    for name in running {
        if let Err(e) = r.manager.remove(name).await {
            tracing::warn!(service = %name, error = %e, "removing at the fence");
        }
    }
    tracing::warn!(services = ?killed, "fenced: services killed");
    let record = serde_json::json!({
        "fenced_at_boot_ms": crate::coord::BootTime::now().0,
        "lease_until_ms": l.until_ms,
        "services": running,
    });
    if let Err(e) = std::fs::write(&r.fenced_file, record.to_string()) {
        tracing::warn!(error = %e, "recording the fence");
    }
}

/// Starts what the log places here, stops what it placed elsewhere at a newer epoch.
async fn apply(r: &Reconciler, p: &Placement) {
    let busy: BTreeSet<String> = match &r.journal {
        Some(j) => {
            let j = j.clone();
            tokio::task::spawn_blocking(move || {
                j.sources()
                    .into_iter()
                    .map(|e| e.service)
                    .chain(j.targets().into_iter().map(|e| e.service))
                    .collect()
            })
            .await
            .unwrap_or_default()
        }
        None => BTreeSet::new(),
    };
    let here: BTreeSet<String> = r.manager.names().into_iter().collect();
    let moving = r.moving.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for e in p.on_node(&r.node) {
        if let Some(i) = &e.intent {
            // The claim is taken before the intent is committed and held until the migration
            // is decided or journaled, so neither set missing it means no owner.
            if i.from == r.node && !busy.contains(&e.name) && !moving.contains(&e.name) {
                r.close_orphan(&e.name, i.epoch);
            }
            continue;
        }
        if busy.contains(&e.name) {
            continue;
        }
        if here.contains(&e.name) {
            // Running here (started by a migration's hand-off, say): the epoch is recorded.
            if let Err(err) = r.epochs.admit(&e.name, e.epoch) {
                tracing::warn!(service = %e.name, error = %err, "epoch not recorded");
            }
            continue;
        }
        match r.epochs.admit(&e.name, e.epoch) {
            Ok(()) => {}
            Err(AdmitError::Stale(s)) => {
                tracing::error!(error = %s, "placement refused: older than an epoch seen here");
                continue;
            }
            Err(AdmitError::Io(err)) => {
                tracing::error!(service = %e.name, error = %err, "epoch cannot be recorded: not started");
                continue;
            }
        }
        let spec: ServiceSpec = match serde_json::from_str(&e.spec) {
            Ok(s) => s,
            Err(err) => {
                tracing::error!(service = %e.name, error = %err, "spec in the log cannot be read");
                continue;
            }
        };
        let mut spec = spec;
        crate::migrate::gate::stamp(&mut spec, &r.node, e.epoch);
        tracing::info!(service = %e.name, epoch = e.epoch, reason = ?e.reason, "starting: the log places it here");
        if let Err(err) = r.manager.add(spec).await {
            tracing::error!(service = %e.name, error = %err, "not started");
        }
    }
    for name in &here {
        let Some(e) = p.services.get(name) else {
            continue; // not governed by the log
        };
        if e.node.as_deref() == Some(r.node.as_str()) || busy.contains(name) {
            continue;
        }
        if e.intent.as_ref().is_some_and(|i| i.from == r.node) {
            continue; // this node's migration owns it
        }
        let seen = r.epochs.get(name).unwrap_or(0);
        if e.epoch > seen {
            tracing::warn!(
                service = %name,
                epoch = e.epoch,
                seen,
                to = e.node.as_deref().unwrap_or("no node"),
                "placed elsewhere at a newer epoch: stopping it here"
            );
            let _ = r.manager.kill(name).await;
            let _ = r.manager.remove(name).await;
        }
    }
}

/// The placement log's part in migrations from this node (see [`crate::migrate::gate`]).
pub(crate) struct CoordGate {
    pub coord: Arc<Coordinator<AgentWire>>,
    pub epochs: Arc<EpochStore>,
    pub node: String,
}

impl std::fmt::Debug for CoordGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordGate")
            .field("node", &self.node)
            .finish()
    }
}

/// How long a gate retries a log it cannot reach before the next attempt.
const GATE_RETRY: Duration = Duration::from_millis(500);

impl CoordGate {
    /// The placement as of a read through the leader: an entry committed after everything
    /// before it, then applied here.
    async fn fresh(&self) -> Result<Arc<Placement>, String> {
        let (_, index) = self
            .coord
            .write(Cmd::Noop)
            .await
            .map_err(|e| e.to_string())?;
        let mut rx = self.coord.placement();
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if rx.borrow_and_update().applied >= index {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let p = rx.borrow().clone();
        match waited {
            Ok(()) if p.applied >= index => Ok(p),
            _ => Err(format!("the log was not applied here up to {index}")),
        }
    }

    /// The log's decision about intent `intent` moving `service` to `to`, from a fresh read:
    /// `Some` when definite, `None` while the intent is still open.
    fn decided(p: &Placement, service: &str, intent: u64, to: &str) -> Option<LogDecision> {
        let Some(e) = p.services.get(service) else {
            return Some(LogDecision::Refused(format!(
                "{service} is not in the placement log"
            )));
        };
        if e.intent.as_ref().is_some_and(|i| i.epoch == intent) {
            return None;
        }
        if e.node.as_deref() == Some(to) && e.epoch > intent {
            return Some(LogDecision::Committed(e.epoch));
        }
        Some(LogDecision::Refused(format!(
            "intent {intent} was closed; {service} is on {} at epoch {}",
            e.node.as_deref().unwrap_or("no node"),
            e.epoch
        )))
    }
}

use crate::migrate::gate::{GateFuture, LogDecision, PlacementGate};

impl PlacementGate for CoordGate {
    fn begin<'a>(&'a self, service: &'a str, to: &'a str) -> GateFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            for _ in 0..3 {
                let p = self.fresh().await?;
                let Some(e) = p.services.get(service) else {
                    return Err(format!("{service} is not in the placement log"));
                };
                let cmd = Cmd::MigrateBegin {
                    service: service.to_string(),
                    from: self.node.clone(),
                    to: to.to_string(),
                    expect: e.epoch,
                };
                match self.coord.write(cmd).await.map_err(|e| e.to_string())? {
                    (Outcome::Applied { epoch }, _) => return Ok(epoch),
                    (Outcome::Stale { .. }, _) => continue,
                    (Outcome::Refused { reason }, _) => return Err(reason),
                    (Outcome::Unchanged { .. }, _) => return Err("unchanged".into()),
                }
            }
            Err(format!("the placement of {service} kept changing"))
        })
    }

    fn commit<'a>(
        &'a self,
        service: &'a str,
        intent: u64,
        to: &'a str,
    ) -> GateFuture<'a, LogDecision> {
        Box::pin(async move {
            loop {
                let cmd = Cmd::MigrateCommit {
                    service: service.to_string(),
                    intent,
                };
                match self.coord.write(cmd).await {
                    Ok((Outcome::Applied { epoch }, _)) => return LogDecision::Committed(epoch),
                    Ok((Outcome::Refused { reason }, _)) => return LogDecision::Refused(reason),
                    // Maybe committed by an earlier attempt whose answer was lost: read.
                    Ok(_) => match self.fresh().await {
                        Ok(p) => {
                            if let Some(d) = Self::decided(&p, service, intent, to) {
                                return d;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "reading the placement log"),
                    },
                    Err(e) => tracing::warn!(error = %e, "committing the move: retrying"),
                }
                tokio::time::sleep(GATE_RETRY).await;
            }
        })
    }

    fn settle<'a>(
        &'a self,
        service: &'a str,
        intent: u64,
        to: &'a str,
    ) -> GateFuture<'a, LogDecision> {
        Box::pin(async move {
            loop {
                match self.fresh().await {
                    Ok(p) => match Self::decided(&p, service, intent, to) {
                        Some(d) => return d,
                        None => {
                            let cmd = Cmd::MigrateAbort {
                                service: service.to_string(),
                                intent,
                            };
                            if let Ok((Outcome::Applied { .. }, _)) = self.coord.write(cmd).await {
                                return LogDecision::Refused(format!("intent {intent} closed"));
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "settling a migration with the log: retrying")
                    }
                }
                tokio::time::sleep(GATE_RETRY).await;
            }
        })
    }

    fn abort<'a>(&'a self, service: &'a str, intent: u64) -> GateFuture<'a, ()> {
        Box::pin(async move {
            let mut wait = GATE_RETRY;
            loop {
                // Closed meanwhile (a fence, a restart's settle): nothing left to do. A replica
                // that has not applied the intent yet cannot say.
                let open = {
                    let p = self.coord.placement().borrow().clone();
                    p.applied < intent
                        || p.services
                            .get(service)
                            .and_then(|e| e.intent.as_ref())
                            .is_some_and(|i| i.epoch == intent)
                };
                if !open {
                    return;
                }
                let cmd = Cmd::MigrateAbort {
                    service: service.to_string(),
                    intent,
                };
                match self.coord.write(cmd).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(service, intent, error = %e, "closing the migration's intent: retrying")
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        })
    }

    fn place_back<'a>(&'a self, service: &'a str, to: &'a str) -> GateFuture<'a, bool> {
        Box::pin(async move {
            for _ in 0..20 {
                match self.fresh().await {
                    Ok(p) => {
                        let Some(e) = p.services.get(service) else {
                            return false;
                        };
                        if e.node.as_deref() == Some(self.node.as_str()) && e.intent.is_none() {
                            return true;
                        }
                        if e.node.as_deref() != Some(to) || e.intent.is_some() {
                            return false;
                        }
                        let cmd = Cmd::Place {
                            service: service.to_string(),
                            node: self.node.clone(),
                            expect: e.epoch,
                            reason: crate::coord::Reason::Migrated,
                            term: 0,
                        };
                        match self.coord.write(cmd).await {
                            // The reconciler records the epoch once it sees it run here.
                            Ok((Outcome::Applied { .. }, _)) => return true,
                            Ok((Outcome::Refused { .. }, _)) => return false,
                            _ => {}
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "placing the service back: retrying"),
                }
                tokio::time::sleep(GATE_RETRY).await;
            }
            false
        })
    }
    fn admit<'a>(
        &'a self,
        service: &'a str,
        epoch: Option<u64>,
    ) -> GateFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let epoch = match epoch {
                Some(e) => e,
                // An adoption: the move was committed before the target heard it decided, so
                // the log (read through the leader) places the service here.
                None => {
                    let p = self.fresh().await?;
                    match p.services.get(service) {
                        Some(e) if e.node.as_deref() == Some(self.node.as_str()) => e.epoch,
                        Some(e) => {
                            return Err(format!(
                                "{service} is placed on {} at epoch {}, not here",
                                e.node.as_deref().unwrap_or("no node"),
                                e.epoch
                            ))
                        }
                        None => return Err(format!("{service} is not in the placement log")),
                    }
                }
            };
            let epochs = self.epochs.clone();
            let name = service.to_string();
            match tokio::task::spawn_blocking(move || epochs.admit(&name, epoch)).await {
                Ok(Ok(())) => Ok(epoch),
                Ok(Err(AdmitError::Stale(s))) => Err(s.to_string()),
                Ok(Err(AdmitError::Io(e))) => Err(format!("the epoch cannot be recorded: {e}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn node(&self) -> &str {
        &self.node
    }
}
