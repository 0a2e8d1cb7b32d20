//! A node of the Raft group and, while it leads, the coordinator.
//!
//! - **Every node** renews its lease through the leader ([`CoordRpc::Renew`]) and acts on its
//!   placements only while the lease is valid and it has applied the log as far as the leader
//!   had committed when it granted the lease ([`LeaseView::may_act`]). The deadline is
//!   measured from when the renewal was *sent*, on `CLOCK_BOOTTIME`: the leader can only have
//!   received it later, so the node's lease always runs out before the leader's view of it.
//! - **The leader** grants a lease only after confirming with a quorum that it still leads
//!   (`ensure_linearizable`), keeps when it last heard from each node (on its own clock), picks
//!   the voters from the live nodes, fences a node whose lease has surely run out (lease +
//!   guard + margin, counted from the later of its last renewal and the leader's own election),
//!   and then restarts that node's `ha = "restart"` services elsewhere at new epochs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{ChangeMembers, Raft, ServerState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{BootTime, Clock};
use crate::network::Network;
use crate::placement::{Cmd, Ha, Outcome, Placement, Reason};
use crate::rpc::{CoordReply, CoordRpc, Member, NodeCapacity, RaftReply, RaftRpc, Renewal, Wire};
use crate::{node_id, NodeId, TypeConfig};

/// What a node is in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May vote, runs services.
    Voter,
    /// Votes, runs no services: the third vote of a two-node site.
    Witness,
    /// Follows the log, never votes, runs services.
    Learner,
}

/// The timers and identity of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: Member,
    pub site: String,
    pub role: Role,
    /// Initialize a new group with this node as its only voter, if the log is empty.
    pub bootstrap: bool,
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// A node that has not renewed its lease for this long fences itself.
    pub fence_after: Duration,
    /// How long after the lease the guard kills services if the agent did not.
    pub guard_grace: Duration,
    /// Added to the bound for clock-rate differences and scheduling.
    pub margin: Duration,
    /// How often a node renews (a fraction of `fence_after`).
    pub renew_every: Duration,
    /// Where lease time is read: `CLOCK_BOOTTIME`, or a simulation's clock.
    pub clock: Clock,
}

impl Settings {
    /// Default timers for `me`.
    pub fn new(me: Member) -> Settings {
        Settings {
            me,
            site: String::new(),
            role: Role::Voter,
            bootstrap: false,
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            fence_after: Duration::from_secs(5),
            guard_grace: Duration::from_secs(1),
            margin: Duration::from_secs(2),
            renew_every: Duration::from_millis(1000),
            clock: Clock::Boot,
        }
    }

    /// After this long without a renewal, a node has surely fenced itself (or been reset by its
    /// guard): only then may its services start elsewhere.
    pub fn fence_bound(&self) -> Duration {
        self.fence_after + self.guard_grace + self.margin
    }
}

/// What this node may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct LeaseView {
    /// The lease's end on `CLOCK_BOOTTIME`, ms (0: never held).
    pub until_ms: u64,
    /// The leader's commit index when it last granted the lease.
    pub granted_at_index: u64,
    /// The index this node has applied.
    pub applied: u64,
    /// Whether the lease is valid now.
    pub valid: bool,
}

impl LeaseView {
    /// Valid, and the log applied as far as the grant: placements read now are current.
    pub fn may_act(&self) -> bool {
        self.valid && self.applied >= self.granted_at_index
    }
}

/// One node as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub addr: String,
    pub voter: bool,
    pub learner: bool,
    /// Milliseconds since the leader last renewed its lease (on the leader only).
    pub lease_age_ms: Option<u64>,
    pub fenced: bool,
    pub cordoned: bool,
    pub services: usize,
    /// A witness (it runs no services), as its renewals say (on the leader only).
    pub witness: Option<bool>,
}

/// The group as this node sees it (`godwit cluster`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Status {
    pub me: String,
    pub state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub applied: u64,
    pub lease: LeaseView,
    pub nodes: Vec<NodeStatus>,
    /// A membership change is under way (a joint configuration).
    pub changing: bool,
    /// Leader changes seen by this node.
    pub leader_changes: u64,
    pub fences: u64,
    pub failovers: u64,
    /// The last failover this node made as leader: seconds from the lost node's last renewal
    /// (or the leader's election) to its service placed elsewhere.
    pub last_failover_s: Option<f64>,
}

/// What the coordinator could not do.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("no coordinator is known (no leader elected, or none reachable)")]
    NoLeader,
    #[error("the coordinator failed: {0}")]
    Failed(String),
    #[error("starting the Raft node: {0}")]
    Start(String),
}

#[derive(Debug, Clone)]
struct Heard {
    at: BootTime,
    renewal: Renewal,
}

#[derive(Debug, Default)]
struct LeaderState {
    /// The term this state belongs to; reset when the term changes.
    term: u64,
    since: BootTime,
    heard: BTreeMap<String, Heard>,
    /// Nodes whose fence is being written: their renewals are refused meanwhile.
    fencing: BTreeSet<String>,
}

/// A step of a failover this node made as leader, for the caller's decision log and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverStep {
    pub service: String,
    /// The fenced node it ran on.
    pub from: String,
    pub to: String,
    pub outcome: FailoverOutcome,
    /// Why (a failure's error, the epoch a placement got).
    pub reason: String,
}

/// How far a failover got: `Started` when the leader chose the target and writes the
/// placement, then `Committed` once the log placed the service there, or `Failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverOutcome {
    Started,
    Committed,
    Failed,
}

/// Called with every failover step ([`Coordinator::on_failover`]).
pub type FailoverObserver = Arc<dyn Fn(FailoverStep) + Send + Sync>;

#[derive(Debug, Default)]
struct Counters {
    leader_changes: u64,
    fences: u64,
    failovers: u64,
    last_failover_s: Option<f64>,
}

/// A node of the group.
pub struct Coordinator<W: Wire> {
    raft: Raft<TypeConfig>,
    id: NodeId,
    s: Settings,
    wire: W,
    placement: watch::Receiver<Arc<Placement>>,
    leader: Mutex<LeaderState>,
    lease_tx: watch::Sender<LeaseView>,
    /// Nodes gossip knows, for finding a leader before this node is a member.
    hints: Mutex<Vec<Member>>,
    counters: Mutex<Counters>,
    /// Where renewals read this node's capacity from.
    capacity: Mutex<Option<CapacitySource>>,
    /// Told of every failover step.
    failover_observer: Mutex<Option<FailoverObserver>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl<W: Wire> Coordinator<W> {
    /// Starts the Raft node over `log` and `sm` (whose applied state `placement` follows),
    /// initializes a new group when `s.bootstrap` says so and the log is empty, and starts the
    /// lease and leader loops.
    pub async fn start<LS, SM>(
        s: Settings,
        wire: W,
        log: LS,
        sm: SM,
        placement: watch::Receiver<Arc<Placement>>,
        stop: CancellationToken,
    ) -> Result<Arc<Coordinator<W>>, CoordError>
    where
        LS: openraft::storage::RaftLogStorage<TypeConfig>,
        SM: openraft::storage::RaftStateMachine<TypeConfig>,
    {
        let id = node_id(&s.me.name);
        let config = openraft::Config {
            cluster_name: "godwit".into(),
            heartbeat_interval: s.heartbeat.as_millis() as u64,
            election_timeout_min: s.election_min.as_millis() as u64,
            election_timeout_max: s.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CoordError::Start(e.to_string()))?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network { wire: wire.clone() },
            log,
            sm,
        )
        .await
        .map_err(|e| CoordError::Start(e.to_string()))?;
        if s.bootstrap {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| CoordError::Start(e.to_string()))?;
            if !initialized {
                let mut members = BTreeMap::new();
                members.insert(id, s.me.clone());
                raft.initialize(members)
                    .await
                    .map_err(|e| CoordError::Start(e.to_string()))?;
                tracing::info!(node = %s.me.name, "new coordination group initialized");
            }
        }
        let (lease_tx, _) = watch::channel(LeaseView::default());
        let c = Arc::new(Coordinator {
            raft,
            id,
            s,
            wire,
            placement,
            leader: Mutex::new(LeaderState::default()),
            lease_tx,
            hints: Mutex::new(Vec::new()),
            counters: Mutex::new(Counters::default()),
            capacity: Mutex::new(None),
            failover_observer: Mutex::new(None),
            stop,
            tasks: TaskTracker::new(),
        });
        c.tasks.spawn(c.clone().renew_loop());
        c.tasks.spawn(c.clone().leader_loop());
        c.tasks.spawn(c.clone().lease_clock());
        Ok(c)
    }

    /// Tells `observer` of every failover step this node takes as leader from now on.
    pub fn on_failover(&self, observer: FailoverObserver) {
        *self
            .failover_observer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(observer);
    }

    fn failover_step(
        &self,
        e: &crate::ServiceEntry,
        from: &str,
        to: &str,
        outcome: FailoverOutcome,
        reason: String,
    ) {
        let observer = self
            .failover_observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(observer) = observer {
            observer(FailoverStep {
                service: e.name.clone(),
                from: from.to_string(),
                to: to.to_string(),
                outcome,
                reason,
            });
        }
    }

    /// Stops the loops and the Raft node.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        // Raft first: a loop waiting on a write that cannot commit (a leader cut off from its
        // quorum) returns only once Raft has stopped.
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// This node's settings.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The placement log's state as this node has applied it.
    pub fn placement(&self) -> watch::Receiver<Arc<Placement>> {
        self.placement.clone()
    }

    /// This node's lease, as it changes.
    pub fn lease(&self) -> watch::Receiver<LeaseView> {
        self.lease_tx.subscribe()
    }

    /// Tells the node which peers gossip knows (to find a leader before it is a member).
    pub fn set_hints(&self, peers: Vec<Member>) {
        *self.hints.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// The leader and term this node knows (for gossip).
    pub fn leader(&self) -> (Option<Member>, u64) {
        let m = self.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        (leader, m.current_term)
    }

    /// Answers a Raft message from `from` (the peer's certified name). A message that claims
    /// to come from another node than the one that sent it is refused.
    pub async fn handle_raft(&self, from: &str, rpc: RaftRpc) -> RaftReply {
        let claimed = match &rpc {
            RaftRpc::Append(r) => r.vote.leader_id().voted_for(),
            RaftRpc::Vote(r) => r.vote.leader_id().voted_for(),
            RaftRpc::Snapshot(r) => r.vote.leader_id().voted_for(),
        };
        if claimed.is_some_and(|c| c != node_id(from)) {
            return RaftReply::Failed(format!("{from} spoke for another node"));
        }
        let r = match rpc {
            RaftRpc::Append(r) => self.raft.append_entries(r).await.map(RaftReply::Append),
            RaftRpc::Vote(r) => self.raft.vote(r).await.map(RaftReply::Vote),
            RaftRpc::Snapshot(r) => match self.raft.install_snapshot(r).await {
                Ok(r) => Ok(RaftReply::Snapshot(r)),
                Err(e) => return RaftReply::Failed(e.to_string()),
            },
        };
        r.unwrap_or_else(|e| RaftReply::Failed(e.to_string()))
    }

    /// Answers a coordinator request from `from` (the peer's certified name).
    pub async fn handle_coord(&self, from: &str, rpc: CoordRpc) -> CoordReply {
        match rpc {
            CoordRpc::Write(cmd) => {
                if let Some(reason) = self.refuse_target(&cmd) {
                    return CoordReply::Written {
                        outcome: Outcome::Refused { reason },
                        index: 0,
                    };
                }
                self.write_here(cmd).await
            }
            CoordRpc::Renew(r) => {
                if r.member.name != from {
                    return CoordReply::Failed(format!("{from} renewed for {}", r.member.name));
                }
                self.grant(r).await
            }
        }
    }

    /// The leader refuses to move a service onto a node that said (in its renewals) it runs
    /// none: a witness votes, and that is all it does.
    fn refuse_target(&self, cmd: &Cmd) -> Option<String> {
        let to = match cmd {
            Cmd::MigrateBegin { to, .. } => to,
            Cmd::Place { node, .. } => node,
            _ => return None,
        };
        let l = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        let h = l.heard.get(to)?;
        (!h.renewal.runs_services).then(|| format!("{to} is a witness: it runs no services"))
    }

    async fn write_here(&self, cmd: Cmd) -> CoordReply {
        match self.raft.client_write(cmd).await {
            Ok(r) => CoordReply::Written {
                outcome: r.data,
                index: r.log_id.index,
            },
            Err(e) => match e.forward_to_leader::<Member>() {
                Some(f) => CoordReply::NotLeader {
                    leader: f.leader_node.clone(),
                },
                None => CoordReply::Failed(e.to_string()),
            },
        }
    }

    /// The leader's side of a renewal: confirm leadership with a quorum, note the time.
    ///
    /// Bounded by `renew_every`: openraft confirms the quorum and then waits, with no limit, for
    /// this node to apply up to the first entry of its term. A leader deposed before that entry
    /// committed waits for an index the new leader's log may never reach while the cluster is
    /// quiet; unbounded, its own renewals then hung for good, and it never held a lease again
    /// (seen in the simulation: a fenced node stayed fenced, its services down, 30 s after heal).
    async fn grant(&self, r: Renewal) -> CoordReply {
        let confirmed =
            match tokio::time::timeout(self.s.renew_every, self.raft.ensure_linearizable()).await {
                Ok(r) => r,
                Err(_) => {
                    return CoordReply::Failed(
                        "leadership not confirmed within a renewal period".into(),
                    )
                }
            };
        match confirmed {
            Ok(read) => {
                let term = self.raft.metrics().borrow().current_term;
                let now = self.s.clock.now();
                {
                    let mut l = self.leader.lock().unwrap_or_else(|e| e.into_inner());
                    if l.term != term {
                        // Fences still being written stay refused across the change.
                        let fencing = std::mem::take(&mut l.fencing);
                        *l = LeaderState {
                            term,
                            since: now,
                            fencing,
                            ..LeaderState::default()
                        };
                        self.counters
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .leader_changes += 1;
                        tracing::info!(term, "this node leads: the coordinator");
                    }
                    // Heard even when refused: that is how a fenced node comes back.
                    let name = r.member.name.clone();
                    l.heard.insert(
                        name.clone(),
                        Heard {
                            at: now,
                            renewal: r,
                        },
                    );
                    // A node being fenced, or fenced and not yet recorded back, gets no lease:
                    // one granted as of an index before its fence (and the failovers after it)
                    // would let it act on placements those entries take away.
                    if l.fencing.contains(&name)
                        || self.placement.borrow().fenced.contains_key(&name)
                    {
                        return CoordReply::Failed(format!(
                            "{name} is fenced: no lease until the log records it back"
                        ));
                    }
                }
                CoordReply::Granted {
                    committed: read.map(|l| l.index).unwrap_or(0),
                    term,
                }
            }
            Err(e) => match e.forward_to_leader::<Member>() {
                Some(f) => CoordReply::NotLeader {
                    leader: f.leader_node.clone(),
                },
                None => CoordReply::Failed(e.to_string()),
            },
        }
    }

    /// Commits `cmd` through the leader (this node, or the one it knows); returns the outcome
    /// and the entry's index.
    pub async fn write(&self, cmd: Cmd) -> Result<(Outcome, u64), CoordError> {
        let mut target = self.leader().0;
        for _ in 0..5 {
            let reply = match &target {
                Some(m) if m.name != self.s.me.name => self
                    .wire
                    .coord(m, CoordRpc::Write(cmd.clone()))
                    .await
                    .map_err(CoordError::Failed)?,
                _ => {
                    self.handle_coord(&self.s.me.name, CoordRpc::Write(cmd.clone()))
                        .await
                }
            };
            match reply {
                CoordReply::Written { outcome, index } => return Ok((outcome, index)),
                CoordReply::NotLeader { leader: Some(l) } => target = Some(l),
                CoordReply::NotLeader { leader: None } => {
                    tokio::time::sleep(self.s.election_max).await;
                    target = self.leader().0;
                    if target.is_none() {
                        return Err(CoordError::NoLeader);
                    }
                }
                CoordReply::Failed(e) => return Err(CoordError::Failed(e)),
                CoordReply::Granted { .. } => {
                    return Err(CoordError::Failed("answered a write with a lease".into()))
                }
            }
        }
        Err(CoordError::NoLeader)
    }

    fn renewal(&self) -> Renewal {
        let capacity = self
            .capacity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|f| f());
        Renewal {
            member: self.s.me.clone(),
            site: self.s.site.clone(),
            votes: matches!(self.s.role, Role::Voter | Role::Witness),
            runs_services: !matches!(self.s.role, Role::Witness),
            capacity,
        }
    }

    /// Where this node's renewals read its capacity and load from (its probe).
    pub fn set_capacity_source(&self, f: CapacitySource) {
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// Renews the lease every `renew_every`: through the leader this node knows, else through
    /// any peer gossip knows (which answers with the leader).
    async fn renew_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.s.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hint = 0usize;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sent = self.s.clock.now();
            let mut target = self.leader().0;
            if target.is_none() {
                let hints = self.hints.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if !hints.is_empty() {
                    hint = (hint + 1) % hints.len();
                    target = Some(hints[hint].clone());
                }
            }
            let Some(mut to) = target else { continue };
            for _ in 0..2 {
                let reply = if to.name == self.s.me.name {
                    self.grant(self.renewal()).await
                } else {
                    let r = tokio::time::timeout(
                        self.s.renew_every,
                        self.wire.coord(&to, CoordRpc::Renew(self.renewal())),
                    )
                    .await;
                    match r {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => CoordReply::Failed(e),
                        Err(_) => CoordReply::Failed("timed out".into()),
                    }
                };
                match reply {
                    CoordReply::Granted { committed, .. } => {
                        let until = sent.add(self.s.fence_after);
                        self.lease_tx.send_modify(|l| {
                            l.until_ms = l.until_ms.max(until.0);
                            l.granted_at_index = committed;
                            l.valid = self.s.clock.now().0 < l.until_ms;
                        });
                        break;
                    }
                    CoordReply::NotLeader { leader: Some(l) } if l.name != to.name => to = l,
                    other => {
                        tracing::debug!(to = %to, reply = ?other, "lease not renewed");
                        break;
                    }
                }
            }
        }
    }

    /// Keeps [`LeaseView::valid`] and `applied` current.
    async fn lease_clock(self: Arc<Self>) {
        let mut placement = self.placement.clone();
        loop {
            let applied = placement.borrow().applied;
            let now = self.s.clock.now().0;
            self.lease_tx.send_if_modified(|l| {
                let valid = now < l.until_ms;
                let changed = l.valid != valid || l.applied != applied;
                l.valid = valid;
                l.applied = applied;
                changed
            });
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = placement.changed() => {}
            }
        }
    }

    /// While this node leads: voters, fences and failovers, every half second.
    async fn leader_loop(self: Arc<Self>) {
        // The term in which this node was first seen standing since it last knew a leader.
        let mut standing_since: Option<u64> = None;
        // When this node last stood out of turn: at most once per two election timeouts, so a
        // node that cannot win (its log is behind) does not keep cutting short the elections
        // of one that can (seen in a five-node ring: terms climbing for a minute, no leader).
        let mut last_break: Option<tokio::time::Instant> = None;
        loop {
            // A candidate looks every tenth of a second, so a split vote that repeats is broken
            // one term after it repeats, not up to half a second later.
            let tick = if standing_since.is_some() { 100 } else { 500 };
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(tick)) => {}
            }
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader.is_some() {
                standing_since = None;
            } else if m.state == ServerState::Candidate {
                let first = *standing_since.get_or_insert(m.current_term);
                let rested = last_break.is_none_or(|t| t.elapsed() >= self.s.election_max * 2);
                if m.current_term > first && rested {
                    self.break_lockstep(m.current_term).await;
                    last_break = Some(tokio::time::Instant::now());
                    standing_since = Some(self.raft.metrics().borrow().current_term);
                }
            }
            if m.state != ServerState::Leader {
                continue;
            }
            let (heard, since, term) = {
                let l = self.leader.lock().unwrap_or_else(|e| e.into_inner());
                (l.heard.clone(), l.since, l.term)
            };
            // Not yet confirmed in this term (its own renewal does that first).
            if term != m.current_term {
                continue;
            }
            if let Err(e) = self.manage_voters(&heard).await {
                tracing::warn!(error = %e, "changing the voters");
            }
            if let Err(e) = self.fence_and_fail_over(&heard, since, term).await {
                tracing::warn!(error = %e, "failover");
            }
        }
    }

    /// Split votes that repeat: candidates whose election timers fire together can split every
    /// vote, term after term. openraft draws each node's timeout once and checks it only on
    /// its tick (every 1.5 heartbeats), so two nodes whose ticks run in phase (they heard the
    /// last leader's heartbeats at once; one runtime stalled and woke them together) and whose
    /// timeouts round to the same number of ticks stand together every time. A candidate that
    /// stood again without a leader emerging waits a delay of its own (from its id and the
    /// term, so no two nodes wait alike) and then stands again, out of step with the others.
    ///
    /// Seen with the default timers: three terms never pass within one half-second loop (a
    /// term lasts at least `election_min`), so a test on that never fired, and a leader killed
    /// could leave its two peers splitting votes for tens of seconds.
    async fn break_lockstep(&self, term: u64) {
        // Any two delays that differ by more than a vote's round trip break the step; up to
        // `election_min` keeps the wait short.
        let max = self.s.election_min.as_millis().max(1) as u64;
        let jitter = (self.id ^ term.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % max;
        tracing::info!(
            term,
            jitter_ms = jitter,
            "split votes repeat: standing again out of step"
        );
        tokio::select! {
            _ = self.stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(jitter)) => {}
        }
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader.is_none() {
            let _ = self.raft.trigger().elect().await;
        }
    }

    /// Makes every live node a learner (all that are not yet members in one change) and keeps
    /// the voters at 1 (one or two nodes), 3 (three
    /// to six) or 5 (seven or more), spread across sites; replaces a voter that is surely dead,
    /// never going below 3 to do so.
    async fn manage_voters(&self, heard: &BTreeMap<String, Heard>) -> Result<(), String> {
        let now = self.s.clock.now();
        let alive: BTreeMap<&String, &Heard> = heard
            .iter()
            .filter(|(_, h)| now.since(h.at) < self.s.fence_after)
            .collect();
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        if m.membership_config.membership().get_joint_config().len() > 1 {
            return Ok(()); // a change is under way
        }
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        // Every live node not yet a member joins as a learner in one entry: one entry per node
        // would take a leader pass each (500 s for 1,000 nodes) and fill the log with as many
        // copies of a growing membership.
        let joining: BTreeMap<NodeId, Member> = alive
            .iter()
            .map(|(name, h)| (node_id(name), h.renewal.member.clone()))
            .filter(|(id, _)| !known.contains(id))
            .collect();
        if !joining.is_empty() {
            let names: Vec<&str> = joining.values().map(|m| m.name.as_str()).collect();
            tracing::info!(nodes = ?names, "adding as learners");
            self.raft
                .change_membership(ChangeMembers::AddNodes(joining), true)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(()); // one change at a time
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let name_of = |id: &NodeId| membership.get_node(id).map(|m| m.name.clone());
        let eligible: Vec<&Heard> = alive
            .values()
            .filter(|h| h.renewal.votes)
            .copied()
            .collect();
        let want: usize = match eligible.len() {
            n if n >= 7 => 5,
            n if n >= 3 => 3,
            _ => 1,
        };
        let dead: BTreeSet<NodeId> = voters
            .iter()
            .filter(|v| {
                **v != self.id
                    && name_of(v).is_none_or(|n| {
                        heard
                            .get(&n)
                            .is_none_or(|h| now.since(h.at) > self.s.fence_bound())
                    })
            })
            .copied()
            .collect();
        let mut next: BTreeSet<NodeId> = voters.difference(&dead).copied().collect();
        // Voters per site so far; each new voter comes from the site with the fewest.
        let mut sites: BTreeMap<String, usize> = BTreeMap::new();
        for site in next
            .iter()
            .filter_map(|v| name_of(v).and_then(|n| heard.get(&n).map(|h| h.renewal.site.clone())))
        {
            *sites.entry(site).or_default() += 1;
        }
        let mut candidates: Vec<(String, String)> = eligible
            .iter()
            .filter(|h| !next.contains(&node_id(&h.renewal.member.name)))
            .map(|h| (h.renewal.member.name.clone(), h.renewal.site.clone()))
            .collect();
        candidates.sort();
        for name in spread_voters(&mut sites, candidates, want.saturating_sub(next.len())) {
            next.insert(node_id(&name));
        }
        // Never below 3 automatically (nor below the voters there are, when fewer): keep dead
        // voters that have no replacement.
        let floor = voters.len().min(3);
        if next.len() < floor {
            for d in &dead {
                if next.len() >= floor {
                    break;
                }
                next.insert(*d);
            }
        }
        if next != voters && !next.is_empty() {
            let names: Vec<String> = next.iter().filter_map(name_of).collect();
            tracing::info!(voters = ?names, "changing the voters");
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(next), true)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Fences every node that holds services (or votes) and has surely fenced itself, then
    /// places its `ha = "restart"` services on live nodes. Everything is decided and written in
    /// `term`: a pass that began in an earlier term (`manage_voters` can wait seconds) stops
    /// rather than act in a later one on what it knew then.
    async fn fence_and_fail_over(
        &self,
        heard: &BTreeMap<String, Heard>,
        since: BootTime,
        term: u64,
    ) -> Result<(), String> {
        let now = self.s.clock.now();
        let bound = self.s.fence_bound();
        if now.since(since) <= bound {
            return Ok(()); // a new leader first waits the bound for every node
        }
        let p = self.placement.borrow().clone();
        let hosting: BTreeSet<String> =
            p.services.values().filter_map(|e| e.node.clone()).collect();
        for n in hosting.iter().filter(|n| !p.fenced.contains_key(*n)) {
            if self.begin_fence(n, term) {
                let r = self
                    .write_local(
                        Cmd::Fence {
                            node: n.clone(),
                            by: "coordinator".into(),
                            at_unix_ms: unix_ms(),
                            term,
                        },
                        term,
                    )
                    .await;
                // Written (now in the applied placement, which keeps refusing its renewals),
                // or not the leader any more.
                self.leader
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fencing
                    .remove(n);
                let (o, _) = r?;
                tracing::warn!(node = %n, outcome = ?o, "node fenced: its lease ran out");
                self.counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fences += 1;
            }
        }
        // A fenced node that renews again is back: its record is closed.
        for n in p.fenced.keys() {
            if heard
                .get(n)
                .is_some_and(|h| h.at > since && now.since(h.at) < self.s.fence_after)
            {
                self.write_local(Cmd::Unfence { node: n.clone() }, term)
                    .await?;
                tracing::info!(node = %n, "fenced node is back");
            }
        }
        let p = self.placement.borrow().clone();
        // Live nodes that may receive services.
        let live: BTreeMap<String, Renewal> = heard
            .iter()
            .filter(|(n, h)| {
                now.since(h.at) < self.s.fence_after
                    && h.renewal.runs_services
                    && !p.fenced.contains_key(*n)
                    && !p.cordoned.contains(*n)
            })
            .map(|(n, h)| (n.clone(), h.renewal.clone()))
            .collect();
        let orphans: Vec<&crate::ServiceEntry> = p
            .services
            .values()
            .filter(|e| {
                e.node.as_ref().is_some_and(|n| p.fenced.contains_key(n))
                    && e.ha == Ha::Restart
                    && e.intent.is_none()
            })
            .collect();
        let targets = failover_targets(&p, &live, &orphans);
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        for e in orphans {
            let Some(node) = &e.node else { continue };
            let Some(to) = targets.get(&e.name).cloned() else {
                tracing::warn!(service = %e.name, "no live node can take it");
                continue;
            };
            if !self.leads_in(term) {
                return Ok(());
            }
            self.failover_step(e, node, &to, FailoverOutcome::Started, String::new());
            let written = self
                .write_local(
                    Cmd::Place {
                        service: e.name.clone(),
                        node: to.clone(),
                        expect: e.epoch,
                        reason: Reason::Failover,
                        term,
                    },
                    term,
                )
                .await;
            let (o, index) = match written {
                Ok(w) => w,
                Err(err) => {
                    self.failover_step(e, node, &to, FailoverOutcome::Failed, err.clone());
                    return Err(err);
                }
            };
            tracing::warn!(service = %e.name, from = %node, to = %to, epoch = index, outcome = ?o, "failover");
            if matches!(o, Outcome::Applied { .. }) {
                self.failover_step(
                    e,
                    node,
                    &to,
                    FailoverOutcome::Committed,
                    format!("placed on {to} at epoch {index}"),
                );
                *load.entry(to).or_default() += 1;
                // From the lost node's last renewal this leader heard (or its own election,
                // whichever is later) to the new placement.
                let from_heard = heard.get(node).map_or(since, |h| h.at.max(since));
                let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
                c.failovers += 1;
                c.last_failover_s = Some(self.s.clock.now().since(from_heard).as_secs_f64());
            } else {
                // The log refused it (the service's epoch moved meanwhile): not placed.
                self.failover_step(e, node, &to, FailoverOutcome::Failed, format!("{o:?}"));
            }
        }
        Ok(())
    }

    /// Whether node `n` has surely fenced itself, decided on what this leader has heard *now*
    /// (not on the leader loop's copy, which may be seconds old), and if so, its renewals are
    /// refused from this moment until the log records it back: a renewal granted between this
    /// decision and the fence's commit would be a lease the failover does not wait for.
    /// Only in `term`, the term this leader has led for longer than the bound: what it heard
    /// in an earlier term says nothing of the leases granted since.
    fn begin_fence(&self, n: &str, term: u64) -> bool {
        if n == self.s.me.name || !self.leads_in(term) {
            return false;
        }
        let now = self.s.clock.now();
        let bound = self.s.fence_bound();
        let mut l = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        let gone = l.term == term
            && now.since(l.since) > bound
            && l.heard.get(n).is_none_or(|h| now.since(h.at) > bound);
        if gone {
            l.fencing.insert(n.to_string());
        }
        gone
    }

    /// Whether this node leads in `term`, as Raft and its leader state both say.
    fn leads_in(&self, term: u64) -> bool {
        let (state, current) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        state == ServerState::Leader
            && current == term
            && self.leader.lock().unwrap_or_else(|e| e.into_inner()).term == term
    }

    /// Commits `cmd` as this leader, decided in `term`. An entry committed in another term (this
    /// node lost and won the leadership while it was queued) is an error: the caller's pass
    /// must stop, since what it decided on belongs to the earlier term.
    async fn write_local(&self, cmd: Cmd, term: u64) -> Result<(Outcome, u64), String> {
        match self.raft.client_write(cmd).await {
            Ok(r) if r.log_id.leader_id.term != term => Err(format!(
                "entry {} was committed in term {}, decided in term {term}",
                r.log_id.index, r.log_id.leader_id.term
            )),
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The group as this node sees it.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let name = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|m| m.name.clone())
                .unwrap_or_default()
        };
        let p = self.placement.borrow().clone();
        let heard = self
            .leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .heard
            .clone();
        let leading = m.state == ServerState::Leader;
        let now = self.s.clock.now();
        let nodes = membership
            .nodes()
            .map(|(id, member)| NodeStatus {
                name: member.name.clone(),
                addr: member.addr.clone(),
                voter: voters.contains(id),
                learner: !voters.contains(id),
                lease_age_ms: heard
                    .get(&member.name)
                    .filter(|_| leading)
                    .map(|h| now.since(h.at).as_millis() as u64),
                fenced: p.fenced.contains_key(&member.name),
                cordoned: p.cordoned.contains(&member.name),
                services: p.on_node(&member.name).count(),
                witness: heard
                    .get(&member.name)
                    .filter(|_| leading)
                    .map(|h| !h.renewal.runs_services),
            })
            .collect();
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        Status {
            me: self.s.me.name.clone(),
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader.map(|l| name(&l)),
            term: m.current_term,
            voters: voters.iter().map(name).collect(),
            learners: membership.learner_ids().map(|l| name(&l)).collect(),
            applied: p.applied,
            lease: *self.lease_tx.borrow(),
            nodes,
            changing: membership.get_joint_config().len() > 1,
            leader_changes: c.leader_changes,
            fences: c.fences,
            failovers: c.failovers,
            last_failover_s: c.last_failover_s,
        }
    }
}

/// Up to `n` of `candidates` (name, site; sorted by name), each from the site with the fewest
/// voters in `sites` so far (a site without one first), counting each pick in: the voters stay
/// spread so that no site holds a majority while another has fewer than it could. Ties go to
/// the first candidate by name.
fn spread_voters(
    sites: &mut BTreeMap<String, usize>,
    mut candidates: Vec<(String, String)>,
    n: usize,
) -> Vec<String> {
    let mut picked = Vec::new();
    while picked.len() < n && !candidates.is_empty() {
        let fewest = |c: &(String, String)| sites.get(&c.1).copied().unwrap_or(0);
        let pick = (0..candidates.len())
            .min_by_key(|i| (fewest(&candidates[*i]), *i))
            .expect("not empty");
        let (name, site) = candidates.remove(pick);
        *sites.entry(site).or_default() += 1;
        picked.push(name);
    }
    picked
}

/// Reads this node's capacity and load (`None` until measured).
pub type CapacitySource = Arc<dyn Fn() -> Option<NodeCapacity> + Send + Sync>;

/// Where each orphaned service goes: the policy's failover plan (capacity-aware best fit,
/// with headroom, all orphans at once so that they do not all land on one node) over the live
/// nodes' reported capacity and load, a service's demand read from its spec (`demand.cpu`,
/// `demand.memory_bytes`). Without any capacity reported, the node with the fewest services.
fn failover_targets(
    p: &Placement,
    live: &BTreeMap<String, Renewal>,
    orphans: &[&crate::ServiceEntry],
) -> BTreeMap<String, String> {
    use godwit_core::policy::{failover_plan, Bin, FailoverItem};
    let mut out = BTreeMap::new();
    if orphans.is_empty() || live.is_empty() {
        return out;
    }
    if live.values().all(|r| r.capacity.is_some()) {
        let bins: Vec<Bin> = live
            .iter()
            .map(|(n, r)| {
                let c = r.capacity.unwrap_or_default();
                Bin {
                    node: n.clone(),
                    capacity: vec![c.cpu_cores, c.memory_bytes],
                    load: vec![c.cpu_used, c.memory_used],
                }
            })
            .collect();
        let items: Vec<FailoverItem> = orphans
            .iter()
            .map(|e| FailoverItem {
                service: e.name.clone(),
                from: e.node.clone().unwrap_or_default(),
                demand: demand(&e.spec),
            })
            .collect();
        let plan = failover_plan(&items, &bins, FAILOVER_HEADROOM, 8, 20_000);
        for pl in plan.placements {
            out.insert(pl.service, pl.to);
        }
        for u in plan.unplaced {
            tracing::warn!(service = %u.service, demand = ?u.demand, "no live node has room for it");
        }
        return out;
    }
    let mut count: BTreeMap<&String, usize> =
        live.keys().map(|n| (n, p.on_node(n).count())).collect();
    for e in orphans {
        if let Some((n, c)) = count.iter_mut().min_by_key(|(n, c)| (**c, *n)) {
            out.insert(e.name.clone(), (*n).clone());
            *c += 1;
        }
    }
    out
}

/// The share of each node kept free when placing failed-over services.
const FAILOVER_HEADROOM: f64 = 0.1;

/// A service's demand `[cpu cores, memory bytes]` from its spec's `demand` (0 when absent).
fn demand(spec: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
    vec![
        v["demand"]["cpu"].as_f64().unwrap_or(0.0),
        v["demand"]["memory_bytes"].as_f64().unwrap_or(0.0),
    ]
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod failover_tests {
    use super::*;
    use crate::placement::{Reason, ServiceEntry};

    fn live(name: &str, cores: f64, used: f64) -> (String, Renewal) {
        (
            name.to_string(),
            Renewal {
                member: Member {
                    name: name.into(),
                    addr: String::new(),
                },
                site: String::new(),
                votes: true,
                runs_services: true,
                capacity: Some(NodeCapacity {
                    cpu_cores: cores,
                    cpu_used: used,
                    memory_bytes: 8e9,
                    memory_used: 1e9,
                }),
            },
        )
    }

    fn orphan(name: &str, cpu: f64) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            spec: format!(
                r#"{{"name":"{name}","demand":{{"cpu":{cpu},"memory_bytes":100000000}}}}"#
            ),
            ha: Ha::Restart,
            node: Some("dead".into()),
            epoch: 1,
            reason: Reason::Configured,
            intent: None,
        }
    }

    #[test]
    fn failed_over_services_go_where_there_is_room_and_not_all_to_one_node() {
        let p = Placement::default();
        // b is nearly full; a and c have room for one 1.5-core service each, not two.
        let live: BTreeMap<String, Renewal> = [
            live("a", 4.0, 1.5),
            live("b", 4.0, 3.5),
            live("c", 4.0, 1.8),
        ]
        .into();
        let (s1, s2, s3) = (orphan("s1", 1.5), orphan("s2", 1.5), orphan("s3", 1.5));
        let t = failover_targets(&p, &live, &[&s1, &s2, &s3]);
        // Two fit (one on a, one on c); the third has no room anywhere and stays unplaced.
        assert_eq!(t.len(), 2, "{t:?}");
        assert!(!t.values().any(|n| n == "b"), "{t:?}");
        let mut nodes: Vec<&String> = t.values().collect();
        nodes.sort();
        assert_eq!(nodes, ["a", "c"]);
    }

    #[test]
    fn voters_are_spread_evenly_over_the_sites() {
        // n0 (site0) votes; names sort n1, n10, n100, n101, ...: taking the first name once
        // every site had a voter gave site1 three of five voters (n1, n10, n100), a majority
        // lost with that one site.
        let site = |i: usize| format!("site{}", i % 3);
        let mut sites: BTreeMap<String, usize> = [(site(0), 1)].into();
        let mut candidates: Vec<(String, String)> =
            (1..500).map(|i| (format!("n{i}"), site(i))).collect();
        candidates.sort();
        let picked = spread_voters(&mut sites, candidates, 4);
        assert_eq!(picked, ["n1", "n101", "n10", "n102"]);
        assert_eq!(
            sites,
            [(site(0), 2), (site(1), 2), (site(2), 1)].into(),
            "{picked:?}"
        );
        // One site only: the first names.
        let mut one: BTreeMap<String, usize> = BTreeMap::new();
        let c = vec![("a".into(), "x".into()), ("b".into(), "x".into())];
        assert_eq!(spread_voters(&mut one, c, 5), ["a", "b"]);
    }

    #[test]
    fn without_reported_capacity_the_node_with_fewest_services_takes_each_in_turn() {
        let p = Placement::default();
        let mut a = live("a", 0.0, 0.0);
        a.1.capacity = None;
        let mut b = live("b", 0.0, 0.0);
        b.1.capacity = None;
        let live: BTreeMap<String, Renewal> = [a, b].into();
        let (s1, s2) = (orphan("s1", 1.0), orphan("s2", 1.0));
        let t = failover_targets(&p, &live, &[&s1, &s2]);
        let mut nodes: Vec<&String> = t.values().collect();
        nodes.sort();
        assert_eq!(nodes, ["a", "b"]);
    }
}
