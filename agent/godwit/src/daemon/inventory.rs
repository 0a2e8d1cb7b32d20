//! The `[inventory]` watcher: what the configured patterns resolve to, kept current.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probes::Probes;
use super::Context;
use crate::inventory::watch::{self, SharedInventory, Sources};

/// The watcher's task (none when `[inventory]` is empty) and what it keeps.
pub(super) struct Inventory {
    /// `None` when `[inventory]` is empty.
    pub shared: Option<SharedInventory>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Inventory {
    /// Starts the watcher when `[inventory]` names anything.
    pub(super) fn start(
        ctx: &Context,
        probes: &Probes,
        manager: Option<Arc<crate::service::Manager>>,
    ) -> Inventory {
        let cancel = ctx.child_token();
        let tasks = TaskTracker::new();
        let cfg = &ctx.cfg;
        let shared = (!cfg.inventory.is_empty()).then(|| {
            let shared = SharedInventory::default();
            let sources = Sources {
                snapshot: probes.shared.clone(),
                services: manager,
                cgroup_root: crate::probe::cgroup::CgroupLayout::detect(std::path::Path::new(
                    "/proc/self/mounts",
                ))
                .ok()
                .map(|l| l.v2_root),
                sys_root: cfg.probe.sys_root.clone(),
                proc_root: cfg.probe.proc_root.clone(),
                file: cfg
                    .inventory
                    .file
                    .clone()
                    .unwrap_or_else(|| cfg.node.data_dir.join("inventory.json")),
            };
            watch::spawn(
                cfg.inventory.clone(),
                sources,
                shared.clone(),
                cancel.clone(),
                &tasks,
            );
            shared
        });
        Inventory {
            shared,
            cancel,
            tasks,
        }
    }

    /// Stops the watcher and waits for it.
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
