//! Migrations: the target side (the state service, the hand-off, the journal's target
//! entries), the source side (the `Migrator` the control service calls), and the end of the
//! source recovery [`super::services::Services`] began.

use std::sync::Arc;
use std::time::Duration;

use super::network::Network;
use super::probes::Probes;
use super::services::Services;
use super::Context;
use crate::migrate::agent::{Migrator, Target};
use crate::migrate::journal::{Journal, SourcePhase};
use crate::migrate::Tasks;

/// How long a stop waits for the migrations in flight to reach a decision.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How often the journal is read while waiting.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// How long the migration tasks (hand-offs retried, the target's watcher) may take to end
/// once cancelled.
const TASKS_DEADLINE: Duration = Duration::from_secs(5);

/// The migration side of the agent; `migrator` is `None` without a transport, a service
/// runtime or a journal.
pub(super) struct Migration {
    pub migrator: Option<Arc<Migrator>>,
    journal: Option<Arc<Journal>>,
    /// Every task the migrations spawn; cancelled with the component.
    tasks: Tasks,
}

impl Migration {
    /// Registers the migration services on the transport and resolves what the journal held:
    /// the target's entries first, then the source's decided moves (handed off again).
    pub(super) async fn start(
        ctx: &Context,
        probes: &Probes,
        net: &Network,
        mesh: Option<Arc<crate::gossip::Cluster>>,
        services: &mut Services,
        coordination: &super::coord::Coordination,
    ) -> Migration {
        // The placement log's part in migrations from this node, when the coordinator runs.
        let gate = coordination.gate(ctx);
        let moving = coordination.moving.clone();
        let coord = coordination.coord.clone();
        let state_root = ctx.cfg.services.state_root.clone();
        let tasks = Tasks::new(ctx.child_token());
        let migrator = match (&net.transport, &services.manager, &services.journal) {
            (Some(t), Some(m), Some(j)) => {
                let target = Target::new(j.clone(), m.clone(), tasks.clone(), gate.clone());
                target.keep_switches(probes.switches.clone());
                let (pending, pending_rx) = tokio::sync::mpsc::unbounded_channel();
                // Off the runtime: it removes staging trees and waits for leftover processes.
                let (tg, root, queue) = (target.clone(), state_root.clone(), pending.clone());
                if let Err(e) = tokio::task::spawn_blocking(move || tg.recover(&root, &queue)).await
                {
                    tracing::error!(error = %e, "the target's journal recovery failed");
                }
                target.watch(pending_rx);
                crate::migrate::register_with(
                    t.services(),
                    state_root,
                    Some(crate::migrate::TargetHooks {
                        journal: j.clone(),
                        pending,
                        manager: Some(m.clone()),
                        tasks: tasks.clone(),
                    }),
                );
                crate::migrate::agent::register_handoff(t.services(), target);
                let migrator = Migrator {
                    node: ctx.node.clone(),
                    manager: m.clone(),
                    transport: t.clone(),
                    images: net.images.clone(),
                    tracker: (probes.source == crate::probe::model::Source::Ebpf)
                        .then(|| probes.tracker.clone()),
                    snapshot: probes.shared.clone(),
                    audit: ctx.cfg.node.data_dir.join("migrations.log"),
                    journal: Some(j.clone()),
                    stats: Default::default(),
                    me: Default::default(),
                    tasks: tasks.clone(),
                    moving,
                    refusals: Default::default(),
                    gate,
                }
                .into_arc();
                // Migrations start only here: a caller with a certificate, over the transport.
                crate::migrate::control::register(
                    t.services(),
                    migrator.clone(),
                    Arc::new(move |node: &str| crate::peers::transport_addr(mesh.as_deref(), node)),
                    fencing(coord),
                );
                Some(migrator)
            }
            (Some(t), _, _) => {
                crate::migrate::register(t.services(), state_root);
                None
            }
            _ => None,
        };
        if let (Some(r), Some(m), Some(j)) = (
            services.recovery.take(),
            &services.manager,
            &services.journal,
        ) {
            crate::migrate::agent::finish_recovery(r, m, j, migrator.as_ref()).await;
        }
        Migration {
            migrator,
            journal: services.journal.clone(),
            tasks,
        }
    }

    /// Lets the migrations from this node reach their decision (up to [`DRAIN_DEADLINE`])
    /// while the services and the transport still run, then stops watching the target's
    /// entries.
    /// Whatever is still undecided then is what a crash would leave: the journal holds it
    /// and the next start resolves it.
    pub(super) async fn shutdown(self) {
        if let Some(j) = self.journal.clone() {
            let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
            let mut waited = false;
            loop {
                let j = j.clone();
                let busy = tokio::task::spawn_blocking(move || in_flight(&j))
                    .await
                    .unwrap_or(0);
                if busy == 0 {
                    if waited {
                        tracing::info!("migrations in flight reached their decision");
                    }
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        in_flight = busy,
                        "migrations still undecided at the stop: the journal resolves them at the next start"
                    );
                    break;
                }
                if !waited {
                    tracing::info!(in_flight = busy, "waiting for migrations in flight");
                    waited = true;
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        if !self.tasks.shutdown(TASKS_DEADLINE).await {
            tracing::warn!(
                tasks = self.tasks.len(),
                "migration tasks did not end within the deadline"
            );
        }
    }
}

/// How this node checks the fencing token of a coordinator's order (a move, a pre-staging
/// copy): with a coordinator, the caller must be the leader this node knows, and the token
/// that leader's term; without one, every token is refused.
fn fencing(
    coord: Option<Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>>,
) -> crate::migrate::control::Fencing {
    let Some(coord) = coord else {
        return crate::migrate::control::no_coordinator();
    };
    Arc::new(move |caller, token| {
        let (leader, term) = coord.leader();
        let caller_node = match caller {
            crate::transport::Principal::Node(n) => Some(n.as_str()),
            crate::transport::Principal::Operator(_) => None,
        };
        match leader {
            Some(l) if Some(l.name.as_str()) == caller_node && token == term => Ok(()),
            Some(l) => Err(format!(
                "an order by {caller} in term {token}: the leader here is {} in term {term}",
                l.name
            )),
            None => Err(format!(
                "an order by {caller} in term {token}: no leader is known here"
            )),
        }
    })
}

/// Migrations from this node whose cut-over is not decided yet (copying or frozen). A
/// target's entries are not waited for: its journal resolves them at the next start (a
/// prepared copy is decided with the source, an owned service starts), while a stopping
/// target that waited would start a service only to stop it.
fn in_flight(journal: &Journal) -> usize {
    journal
        .sources()
        .iter()
        .filter(|e| e.phase != SourcePhase::Committed)
        .count()
}
