//! The coordinator acting on the policy (see [`crate::act`]): on every member, a tick per
//! sample builds the cluster view and plans; on the leader, the plan's moves pass the guard
//! rails and each one that starts is asked of its source over the transport, under the
//! leader's term; so are the plan's pre-staging copies, asked of a node that holds the image.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::coord::Coordination;
use super::mesh::Mesh;
use super::network::Network;
use super::Context;
use crate::act::{
    ClusterPlanner, CopyDone, CopyRails, CopyRailsConfig, Decision, Fired, ImageCopy, MemberInput,
    Move, Outcome, Rails, RailsConfig, SharedActing,
};
use crate::coord::node::Coordinator;
use crate::coord::quic::AgentWire;
use crate::gossip::Liveness;
use crate::migrate::control::{self, Answer, MigrateCall, PrestageCall, Staged};

/// A copy that landed is taken as held this long, until the target's gossip lists it.
const COPY_HELD_MS: u64 = 30_000;
/// A copy that failed is not ordered again for this long.
const COPY_RETRY_MS: u64 = 30_000;

/// The acting component; idle without a coordinator, gossip or a transport.
pub(super) struct Act {
    pub shared: SharedActing,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// What a tick needs.
struct Ticker {
    me: String,
    coord: Arc<Coordinator<AgentWire>>,
    mesh: Arc<crate::gossip::Cluster>,
    endpoint: Option<crate::transport::Endpoint>,
    planner: ClusterPlanner,
    rails: Arc<Mutex<Rails>>,
    copies: Arc<Mutex<CopyRails>>,
    shared: SharedActing,
    mode: crate::coord::PolicyMode,
    /// The static rule's threshold (`[policy] threshold_base`).
    reactive_threshold: f64,
    downtime_ms: u64,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Act {
    pub(super) fn start(
        ctx: &Context,
        net: &Network,
        mesh: &Mesh,
        coordination: &Coordination,
    ) -> Act {
        let shared = SharedActing::default();
        let (cancel, tasks) = (ctx.child_token(), TaskTracker::new());
        let cfg = &ctx.cfg.coordinator;
        shared.update(|s| {
            s.me = ctx.node.clone();
            s.act = cfg.act;
        });
        // The coordinator's failovers (its own, not the plan's) are decisions too: logged,
        // kept and counted with the moves.
        if let Some(coord) = &coordination.coord {
            let shared = shared.clone();
            coord.on_failover(Arc::new(move |f| shared.record(failover_decision(f))));
        }
        let (Some(coord), Some(cluster)) = (coordination.coord.clone(), mesh.cluster.clone())
        else {
            return Act {
                shared,
                cancel,
                tasks,
            };
        };
        let endpoint = net.transport.as_ref().map(|t| t.endpoint().clone());
        if endpoint.is_none() && cfg.act {
            tracing::warn!(
                "no transport: this node plans, but cannot carry out moves when it leads"
            );
        }
        let ticker = Ticker {
            me: ctx.node.clone(),
            coord,
            mesh: cluster,
            endpoint,
            planner: ClusterPlanner::new(ctx.cfg.policy.clone()),
            rails: Arc::new(Mutex::new(Rails::new(RailsConfig {
                act: cfg.act,
                max_moves: cfg.max_moves as usize,
                max_moves_per_node: cfg.max_moves_per_node as usize,
                cooldown_ms: cfg.cooldown_ms,
            }))),
            copies: Arc::new(Mutex::new(CopyRails::new(CopyRailsConfig {
                act: cfg.act,
                max_copies: cfg.max_copies as usize,
                max_copies_per_node: cfg.max_copies_per_node as usize,
                budget_bytes: ctx.cfg.policy.prestage_budget_bytes,
                held_ms: COPY_HELD_MS,
                retry_ms: COPY_RETRY_MS,
            }))),
            shared: shared.clone(),
            mode: cfg.policy,
            reactive_threshold: ctx.cfg.policy.threshold_base,
            downtime_ms: (ctx.cfg.policy.downtime_target_s * 1e3).round() as u64,
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        tasks.spawn(ticker.run(ctx.cfg.probe.interval()));
        Act {
            shared,
            cancel,
            tasks,
        }
    }

    /// Stops planning. A move in flight goes on at its source (its journal and the log see it
    /// through); only the wait for its report ends here.
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }
}

/// A failover step as a decision of kind `failover`.
fn failover_decision(f: crate::coord::node::FailoverStep) -> Decision {
    use crate::coord::node::FailoverOutcome;
    Decision {
        at_unix_ms: now_ms(),
        sample: 0,
        kind: "failover",
        why: format!("{} is fenced: its lease ran out", f.from),
        service: f.service,
        image: None,
        from: f.from,
        to: f.to,
        mode: None,
        outcome: match f.outcome {
            FailoverOutcome::Started => Outcome::Started,
            FailoverOutcome::Committed => Outcome::Committed,
            FailoverOutcome::Failed => Outcome::Failed,
        },
        reason: f.reason,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a clock that never steps back (the cool-down's).
fn mono_ms() -> u64 {
    crate::coord::BootTime::now().0
}

impl Ticker {
    async fn run(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => self.tick(),
            }
        }
    }

    fn tick(&mut self) {
        let status = self.coord.status();
        let placement = self.coord.placement().borrow().clone();
        let view = self.mesh.view();
        let witness = |name: &str| {
            status
                .nodes
                .iter()
                .any(|n| n.name == name && n.witness == Some(true))
        };
        let members: Vec<MemberInput> = view
            .members
            .iter()
            .filter(|m| !matches!(m.liveness, Liveness::Left))
            .filter_map(|m| {
                Some(MemberInput {
                    name: m.id.node_id.clone(),
                    alive: !matches!(m.liveness, Liveness::Dead),
                    no_services: witness(&m.id.node_id),
                    summary: m.summary.clone()?,
                })
            })
            .collect();
        let (running, cooling): (BTreeSet<String>, BTreeSet<String>) = {
            let rails = self.rails.lock().unwrap_or_else(|e| e.into_inner());
            (
                rails.running().map(|m| m.service.clone()).collect(),
                rails.cooling(mono_ms()).map(str::to_string).collect(),
            )
        };
        let mut cv = self.planner.view(&members, &placement, &running);
        // A service in its cool-down stays where it is for the plan too: the node's relief
        // comes from its other services. Left selectable, the plan picked it again sample
        // after sample, the rails held it back, and an overloaded node shed nothing.
        for s in cv.services.iter_mut().filter(|s| cooling.contains(&s.id)) {
            s.pinned = true;
        }
        let plan = self.planner.plan(&cv);
        let leading =
            status.leader.as_deref() == Some(self.me.as_str()) && status.state == "leader";
        let taken = now_ms();
        let sample = self.planner.index();
        if leading {
            let log_moves: Vec<Move> = placement
                .services
                .values()
                .filter_map(|e| {
                    let i = e.intent.as_ref()?;
                    Some(Move {
                        service: e.name.clone(),
                        from: i.from.clone(),
                        to: i.to.clone(),
                    })
                })
                .collect();
            for (m, mode, why) in self.candidates(&cv, &plan) {
                let (outcome, reason) = self.rails.lock().unwrap_or_else(|e| e.into_inner()).admit(
                    &m,
                    placement.paused.is_some(),
                    &log_moves,
                    mono_ms(),
                );
                let addr = status
                    .nodes
                    .iter()
                    .find(|n| n.name == m.from)
                    .and_then(|n| n.addr.parse::<SocketAddr>().ok());
                let d = Decision {
                    at_unix_ms: taken,
                    sample,
                    kind: "migrate",
                    service: m.service.clone(),
                    image: None,
                    from: m.from.clone(),
                    to: m.to.clone(),
                    mode,
                    outcome,
                    reason,
                    why,
                };
                self.shared.record(d.clone());
                if outcome == Outcome::Started {
                    self.carry_out(m, mode, d, addr, status.term);
                }
            }
            // The reactive baseline pre-stages nothing: it is the classic rule.
            if self.mode == crate::coord::PolicyMode::Godwit {
                self.prestage(
                    &cv,
                    &plan,
                    &status,
                    placement.paused.is_some(),
                    taken,
                    sample,
                );
            }
        }
        let fired = plan
            .nodes
            .iter()
            .any(|n| n.trigger.as_ref().is_some_and(|t| t.fired));
        let running: Vec<Move> = self
            .rails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running()
            .cloned()
            .collect();
        let copies_running: Vec<ImageCopy> = self
            .copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .running()
            .cloned()
            .collect();
        self.shared.update(|s| {
            s.taken_at_unix_ms = taken;
            s.copies_running = copies_running;
            s.leader = status.leader.clone();
            s.leading = leading;
            s.paused = placement.paused.clone();
            if fired {
                s.last_fired = Some(Fired {
                    taken_at_unix_ms: taken,
                    plan: plan.clone(),
                });
            }
            s.view = Some(cv);
            s.plan = Some(plan);
            s.running = running;
        });
    }

    /// Passes each of the plan's pre-staging copies through the copy rails and orders those
    /// that start from a node that holds the image, under this leader's term; records each
    /// decision that differs from the last about that copy.
    fn prestage(
        &self,
        view: &crate::policy::ClusterView,
        plan: &crate::policy::Plan,
        status: &crate::coord::node::Status,
        paused: bool,
        taken: u64,
        sample: u64,
    ) {
        let now = mono_ms();
        self.copies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain_planned(
                plan.prestage
                    .copies
                    .iter()
                    .map(|c| (c.image.as_str(), c.to.as_str())),
                now,
            );
        for planned in &plan.prestage.copies {
            let from = crate::act::holder(view, &planned.image, &planned.services, &planned.to);
            let copy = ImageCopy {
                image: planned.image.clone(),
                from: from.clone().unwrap_or_default(),
                to: planned.to.clone(),
                bytes: planned.bytes,
                services: planned.services.clone(),
            };
            let held = view
                .nodes
                .iter()
                .any(|n| n.id == planned.to && n.images.contains(&planned.image));
            let mut rails = self.copies.lock().unwrap_or_else(|e| e.into_inner());
            let (outcome, reason) = match &from {
                None if !held => (
                    Outcome::NoSource,
                    "no live node is known to hold the image".to_string(),
                ),
                _ => rails.admit(&copy, held, paused, now),
            };
            let record = rails.note(&copy, outcome);
            drop(rails);
            let d = Decision {
                at_unix_ms: taken,
                sample,
                kind: "prestage",
                service: planned.services.join(","),
                image: Some(planned.image.clone()),
                from: copy.from.clone(),
                to: copy.to.clone(),
                mode: None,
                outcome,
                reason,
                why: format!(
                    "{} likely to move to {}: copying its image ({} bytes) ahead saves an \
                     expected {:.2} s at the switch",
                    planned.services.join(", "),
                    planned.to,
                    planned.bytes,
                    planned.benefit_s
                ),
            };
            if record {
                self.shared.record(d.clone());
            }
            if outcome == Outcome::Started {
                let addr = status
                    .nodes
                    .iter()
                    .find(|n| n.name == copy.from)
                    .and_then(|n| n.addr.parse::<SocketAddr>().ok());
                self.carry_out_copy(copy, d, addr, status.term);
            }
        }
    }

    /// Asks `copy.from` to push the image to `copy.to`, under this leader's `term`, and
    /// records how it ended.
    fn carry_out_copy(
        &self,
        copy: ImageCopy,
        started: Decision,
        addr: Option<SocketAddr>,
        term: u64,
    ) {
        let (copies, shared, endpoint, cancel) = (
            self.copies.clone(),
            self.shared.clone(),
            self.endpoint.clone(),
            self.cancel.clone(),
        );
        let call = PrestageCall {
            image: copy.image.clone(),
            to: copy.to.clone(),
            fencing_token: term,
        };
        self.tasks.spawn(async move {
            let result = match (endpoint, addr) {
                (None, _) => Err("this node has no transport".to_string()),
                (_, None) => Err(format!("no transport address known for {}", copy.from)),
                (Some(ep), Some(addr)) => {
                    let asked = control::prestage(&ep, addr, &copy.from, call);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = asked => match a {
                            Ok(Staged::Done(stats)) => Ok(stats),
                            Ok(Staged::Refused(r)) => Err(format!("refused: {r}")),
                            Ok(Staged::Error(r)) => Err(r),
                            Err(e) => Err(e.to_string()),
                        },
                    }
                }
            };
            copies.lock().unwrap_or_else(|e| e.into_inner()).finished(
                &copy.image,
                &copy.to,
                result.is_ok(),
                mono_ms(),
            );
            let (outcome, reason, chunks_sent, bytes_sent) = match result {
                Ok(stats) => (
                    Outcome::Committed,
                    format!(
                        "{} holds the image: {} of its {} chunks sent ({} bytes)",
                        copy.to, stats.chunks_sent, stats.chunks_total, stats.bytes_sent
                    ),
                    stats.chunks_sent,
                    stats.bytes_sent,
                ),
                Err(e) => (Outcome::Failed, e, 0, 0),
            };
            let at = now_ms();
            shared.record(Decision {
                at_unix_ms: at,
                outcome,
                reason: reason.clone(),
                ..started
            });
            shared.copy_done(CopyDone {
                at_unix_ms: at,
                copy,
                outcome,
                chunks_sent,
                bytes_sent,
                reason,
            });
        });
    }

    /// The moves the configured rule asks for now, each with its switch mode (`None`: as the
    /// source's model says) and why.
    fn candidates(
        &self,
        view: &crate::policy::ClusterView,
        plan: &crate::policy::Plan,
    ) -> Vec<(Move, Option<crate::policy::SwitchMode>, String)> {
        match self.mode {
            crate::coord::PolicyMode::Godwit => plan
                .migrations
                .iter()
                .map(|m| {
                    (
                        Move {
                            service: m.service.clone(),
                            from: m.from.clone(),
                            to: m.to.clone(),
                        },
                        leader_mode(m),
                        crate::act::why(plan, m),
                    )
                })
                .collect(),
            crate::coord::PolicyMode::Reactive => {
                crate::policy::reactive_plan(view, self.reactive_threshold)
                    .into_iter()
                    .map(|r| {
                        let why = format!(
                            "{} over the static threshold: load {:.0}% > {:.0}%; its largest \
                             service {} to {} ({:.0}% after)",
                            r.from,
                            r.u_max * 100.0,
                            self.reactive_threshold * 100.0,
                            r.service,
                            r.to,
                            r.target_u_max * 100.0
                        );
                        (
                            Move {
                                service: r.service,
                                from: r.from,
                                to: r.to,
                            },
                            None,
                            why,
                        )
                    })
                    .collect()
            }
        }
    }

    /// Asks the source to move `m`'s service, under this leader's `term`, and records how it
    /// ended.
    fn carry_out(
        &self,
        m: Move,
        mode: Option<crate::policy::SwitchMode>,
        started: Decision,
        addr: Option<SocketAddr>,
        term: u64,
    ) {
        let (rails, shared, endpoint) = (
            self.rails.clone(),
            self.shared.clone(),
            self.endpoint.clone(),
        );
        let call = MigrateCall {
            service: m.service.clone(),
            to: m.to.clone(),
            mode,
            downtime_ms: self.downtime_ms,
            full_verify: false,
            fencing_token: Some(term),
            replace: false,
        };
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let result = match (endpoint, addr) {
                (None, _) => Err("this node has no transport".to_string()),
                (_, None) => Err(format!("no transport address known for {}", m.from)),
                (Some(ep), Some(addr)) => {
                    let asked = control::migrate(&ep, addr, &m.from, call, |_| {});
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        a = asked => match a {
                            Ok(Answer::Report { committed: true, .. }) => Ok(()),
                            Ok(Answer::Report { report, .. }) => Err(
                                report["result"].as_str().unwrap_or("failed").to_string(),
                            ),
                            Ok(Answer::Refused(r)) => Err(format!("refused: {r}")),
                            Ok(Answer::Error(r)) => Err(r),
                            Err(e) => Err(e.to_string()),
                        },
                    }
                }
            };
            rails
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finished(&m.service, mono_ms());
            let (outcome, reason) = match result {
                Ok(()) => (
                    Outcome::Committed,
                    format!("{} now runs on {}", m.service, m.to),
                ),
                Err(e) => (Outcome::Failed, e),
            };
            shared.record(Decision {
                at_unix_ms: now_ms(),
                outcome,
                reason,
                ..started
            });
        });
    }
}

/// The switch mode the leader orders: the plan's, unless the plan could not judge the pre-copy
/// (no path figures in the cluster view): then the target's class label still rules a
/// transitional switch out when negative, and otherwise the source decides with the path it
/// measures before the move (`None`: its model's verdict), as MISSION's rule asks.
fn leader_mode(m: &crate::policy::Migration) -> Option<crate::policy::SwitchMode> {
    use crate::policy::{ClassLabel, StartDecision, SwitchMode};
    match (m.switch.precopy.start, m.switch.label.label) {
        (_, ClassLabel::Negative) => Some(SwitchMode::Intermittent),
        (StartDecision::MissingInputs, ClassLabel::Positive) => None,
        _ => Some(m.mode),
    }
}
