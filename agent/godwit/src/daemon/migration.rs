//! Migrations: the target side (the state service, the hand-off, the journal's target
//! entries), the source side (the `Migrator` the control service calls), and the end of the
//! source recovery [`super::services::Services`] began.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::network::Network;
use super::probes::Probes;
use super::services::Services;
use super::Context;
use crate::migrate::agent::{Migrator, Target};

/// The migration side of the agent; `migrator` is `None` without a transport, a service
/// runtime or a journal.
pub(super) struct Migration {
    pub migrator: Option<Arc<Migrator>>,
    cancel: CancellationToken,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl Migration {
    /// Registers the migration services on the transport and resolves what the journal held:
    /// the target's entries first, then the source's decided moves (handed off again).
    pub async fn start(
        ctx: &Context,
        probes: &Probes,
        net: &Network,
        mesh: Option<Arc<crate::gossip::Cluster>>,
        services: &mut Services,
    ) -> Migration {
        let state_root = ctx.cfg.services.state_root.clone();
        let mut watch = None;
        let migrator = match (&net.transport, &services.manager, &services.journal) {
            (Some(t), Some(m), Some(j)) => {
                let target = Target::new(j.clone(), m.clone());
                let (pending, pending_rx) = tokio::sync::mpsc::unbounded_channel();
                target.recover(&state_root, &pending);
                watch = Some(target.watch(pending_rx));
                crate::migrate::register_with(
                    t.services(),
                    state_root,
                    Some(crate::migrate::TargetHooks {
                        journal: j.clone(),
                        pending,
                        manager: Some(m.clone()),
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
                }
                .into_arc();
                // Migrations start only here: a caller with a certificate, over the transport.
                crate::migrate::control::register(
                    t.services(),
                    migrator.clone(),
                    Arc::new(move |node: &str| {
                        crate::peers::transport_addr(mesh.as_deref(), node)
                    }),
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
            cancel: ctx.child_token(),
            watch,
        }
    }

    /// Stops watching the target's entries.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Some(w) = self.watch {
            w.abort();
            let _ = w.await;
        }
    }
}
