//! The migration journal and the managed services. Migrations a crash (or a stop) cut short
//! are resolved before any service starts: leftover processes killed, decided moves kept from
//! starting here.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::network::Network;
use super::probes::Probes;
use super::Context;
use crate::migrate::agent::SourceRecovery;
use crate::migrate::journal::Journal;
use crate::service::{Manager, RunState};

/// The journal, the source side of its recovery, and the service runtime.
pub(super) struct Services {
    pub journal: Option<Arc<Journal>>,
    /// Taken by the migration component, which finishes it once it can hand services off.
    pub recovery: Option<SourceRecovery>,
    /// `None` without a cgroup v2 hierarchy.
    pub manager: Option<Arc<Manager>>,
}

impl Services {
    /// Opens the journal, recovers the source side of the migrations it holds, then starts
    /// the runtime and the configured services that are still this node's.
    pub(super) async fn start(ctx: &Context, probes: &Probes, net: &Network) -> Services {
        let journal = match Journal::open(&ctx.cfg.node.data_dir.join("migrations")) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::warn!(error = %e, "no migration journal: migrations are not crash-safe");
                None
            }
        };
        if let Some(j) = &journal {
            let _ = probes.journal_slot.set(j.clone());
        }
        // Kills leftover processes and waits for their cgroups to empty: blocking work.
        let recovery = match journal.clone() {
            None => None,
            Some(j) => {
                let vip = ctx.cfg.services.vip_interface.clone();
                tokio::task::spawn_blocking(move || {
                    crate::migrate::agent::recover_sources(&j, vip.as_deref())
                })
                .await
                .ok()
            }
        };
        let mut svc_cfg = ctx.cfg.clone();
        if ctx.cfg.coordinator.enabled {
            // Placed through the log (the coordinator component), never started blindly.
            svc_cfg.service.clear();
        }
        if let Some(r) = &recovery {
            let not_here = r.not_here();
            svc_cfg.service.retain(|s| !not_here.contains(&s.name));
        }
        let manager = start_services(&svc_cfg, &ctx.node, net.images.clone()).await;
        Services {
            journal,
            recovery,
            manager,
        }
    }

    /// Stops every service (each within its stop grace) and waits for their supervisors.
    ///
    /// A service that a migration's cut-over froze is killed as it is, never thawed: thawed
    /// (a stop thaws before its SIGTERM), it could take one more request from a client
    /// whose connection it still holds and acknowledge a write that neither the target's copy
    /// nor the journal's recovery sees. Frozen, it acknowledged nothing since its state was
    /// copied.
    pub(super) async fn shutdown(self) {
        let Some(m) = &self.manager else {
            return;
        };
        if let Some(j) = self.journal.clone() {
            let moving: BTreeSet<String> = tokio::task::spawn_blocking(move || {
                j.sources().into_iter().map(|e| e.service).collect()
            })
            .await
            .unwrap_or_default();
            for s in m.list() {
                if s.state == RunState::Frozen && moving.contains(&s.name) {
                    tracing::info!(service = %s.name, "frozen by a migration: killed without a thaw");
                    if let Err(e) = m.kill(&s.name).await {
                        tracing::warn!(service = %s.name, error = %e, "killing at shutdown");
                    }
                }
            }
        }
        m.shutdown().await;
    }
}

/// Configured services need a cgroup v2 hierarchy: without one the agent does not start.
pub(super) fn check_runtime(cfg: &crate::config::Config) -> Result<(), super::StartError> {
    if cfg.service.is_empty() {
        return Ok(());
    }
    crate::probe::cgroup::CgroupLayout::detect(std::path::Path::new("/proc/self/mounts"))
        .map(|_| ())
        .map_err(|e| super::StartError::NoCgroupV2 {
            services: cfg.service.len(),
            reason: e.to_string(),
        })
}

/// Starts the service runtime and the configured services. Without a cgroup v2 hierarchy
/// there is no runtime: said once, and the configured services are not started.
async fn start_services(
    cfg: &crate::config::Config,
    node: &str,
    images: Option<Arc<crate::image::ImageStore>>,
) -> Option<Arc<Manager>> {
    let layout =
        match crate::probe::cgroup::CgroupLayout::detect(std::path::Path::new("/proc/self/mounts"))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    services = cfg.service.len(),
                    "no cgroup v2 hierarchy: managed services are off"
                );
                return None;
            }
        };
    let default_user = default_user(&cfg.services.default_user).await;
    // Set only when configured: a limit the operator put on the parent stays otherwise.
    let cores = cfg.services.cpu_cores;
    // On a hybrid host whose v2 tree has no cpu controller the share is enforced in v1.
    let v2_has_cpu = std::fs::read_to_string(layout.v2_root.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "cpu");
    let cpu_v1_root = layout
        .cpu_v1_root
        .clone()
        .filter(|_| layout.hybrid && !v2_has_cpu);
    if cores > 0.0 {
        match crate::service::limit_parent_cpu(
            &layout.v2_root,
            cpu_v1_root.as_deref(),
            &cfg.services.cgroup_parent,
            cores,
        ) {
            Ok(file) => tracing::info!(
                cpu_cores = cores,
                file = %file.display(),
                "services share this much CPU"
            ),
            Err(e) => tracing::error!(
                error = %e,
                cpu_cores = cores,
                "the services' CPU limit cannot be set: they may use more than the node announces"
            ),
        }
    }
    let manager = Manager::new(crate::service::Runtime {
        node: node.to_string(),
        memory_v1_root: layout.memory_v1_root.filter(|_| layout.hybrid),
        cpu_v1_root,
        v2_root: layout.v2_root,
        section: cfg.services.clone(),
        images,
        run_root: cfg.node.data_dir.join("images/run"),
        default_user,
    });
    for spec in &cfg.service {
        if let Err(e) = manager.add(spec.clone()).await {
            tracing::error!(service = %spec.name, error = %e, "service not started");
        }
    }
    Some(manager)
}

/// The user of services whose spec names none: `[services] default_user`, created when missing
/// (an agent that is not root runs its services as itself). A failure is said once; such
/// services then do not start (they never fall back to root).
async fn default_user(name: &str) -> Result<crate::service::Identity, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let me = crate::service::Identity::current();
        tracing::info!(user = %me.user, uid = me.uid, "not root: services run as the agent's user");
        return Ok(me);
    }
    let name = name.to_string();
    let made =
        tokio::task::spawn_blocking(move || crate::service::Identity::ensure_system_user(&name))
            .await
            .unwrap_or_else(|e| Err(format!("creating the service user failed: {e}")));
    match &made {
        Ok(id) => {
            tracing::info!(user = %id.user, uid = id.uid, gid = id.gid, "default service user")
        }
        Err(e) => tracing::error!(
            error = %e,
            "no default service user: services without a `user` will not start"
        ),
    }
    made
}
