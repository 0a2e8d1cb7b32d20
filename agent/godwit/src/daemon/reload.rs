//! SIGHUP: the configuration file read again, and what can change while running applied.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mesh::Mesh;
use super::Context;
use crate::config::Config;
use crate::gossip;

type Signal = std::io::Result<tokio::signal::unix::Signal>;

/// The task that waits for SIGHUP.
pub(super) struct Reloader {
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Reloader {
    /// Reloads on every SIGHUP from `hup` (installed with the other handlers, first).
    pub(super) fn start(ctx: &Context, mesh: &Mesh, hup: Signal) -> Reloader {
        let cancel = ctx.child_token();
        let tasks = TaskTracker::new();
        let run = reload_on_sighup(
            ctx.cfg.clone(),
            ctx.config_path.clone(),
            mesh.cluster.clone(),
            hup,
        );
        tasks.spawn(cancel.clone().run_until_cancelled_owned(run));
        Reloader { cancel, tasks }
    }

    /// Stops waiting for SIGHUP; a reload under way finishes first.
    pub(super) async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Re-reads the configuration file on every SIGHUP (`systemctl reload godwit`) and applies
/// what can change while running: the gossip keys, one rotation step per reload. A file that
/// does not parse or validate changes nothing.
async fn reload_on_sighup(
    mut current: Config,
    path: Option<PathBuf>,
    mesh: Option<Arc<gossip::Cluster>>,
    hup: Signal,
) {
    let Ok(mut hup) = hup else {
        tracing::warn!("cannot install the SIGHUP handler: configuration reload is disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = path.as_deref() else {
            tracing::info!(
                "reload requested: the agent runs the embedded default, nothing to read"
            );
            continue;
        };
        match Config::load(Some(path)) {
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration stays");
            }
            Ok(new) => {
                reload(&current, &new, mesh.as_deref());
                current = new;
            }
        }
    }
}

/// Applies a reloaded configuration: rotates the gossip keys and reports what else changed,
/// which takes effect at the next start.
pub fn reload(current: &Config, new: &Config, mesh: Option<&gossip::Cluster>) {
    if let Some(mesh) = mesh {
        match gossip::agent::reload_keys(mesh, &new.gossip) {
            Ok(change) if change.is_empty() => tracing::info!("reload: gossip keys unchanged"),
            Ok(change) => tracing::info!(
                installed = ?change.installed,
                primary = ?change.primary.map(|(_, new)| new),
                removed = ?change.removed,
                "reload: gossip keyring rotated"
            ),
            Err(e) => tracing::error!(error = %e, "reload: gossip keys not applied"),
        }
    }
    let mut rest = new.clone();
    rest.gossip.keys.clone_from(&current.gossip.keys);
    if &rest != current {
        tracing::warn!("reload: changes other than gossip.keys take effect at the next start");
    }
}
