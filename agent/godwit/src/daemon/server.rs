//! The HTTP API and `/metrics`: bound early (a taken address fails the start before anything
//! else runs), served once every component it shows is up.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::inventory::Inventory;
use super::mesh::Mesh;
use super::migration::Migration;
use super::network::Network;
use super::probes::Probes;
use super::services::Services;
use super::{Context, StartError, StopError};
use crate::api;

/// How long the API may take to finish in-flight requests at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The API's address, bound.
pub(super) struct Bound(TcpListener);

/// Binds `[api] listen`.
pub(super) async fn bind(ctx: &Context) -> Result<Bound, StartError> {
    api::bind(ctx.cfg.api.listen)
        .await
        .map(Bound)
        .map_err(StartError::Api)
}

/// What the API shows: every component's shared state.
pub(super) struct Parts<'a> {
    pub probes: &'a Probes,
    pub mesh: &'a Mesh,
    pub net: &'a Network,
    pub services: &'a Services,
    pub migration: &'a Migration,
    pub inventory: &'a Inventory,
}

/// The running server.
pub(super) struct Api {
    cancel: CancellationToken,
    tasks: TaskTracker,
    server: tokio::task::JoinHandle<Result<(), api::ApiError>>,
}

impl Bound {
    /// Serves the API over what `parts` share.
    pub(super) fn serve(self, ctx: &Context, parts: Parts<'_>) -> Api {
        let Parts {
            probes,
            mesh,
            net,
            services,
            migration,
            inventory,
        } = parts;
        let selection = api::metrics::ProcessSelection {
            top: ctx.cfg.metrics.top_processes.0 as usize,
            globs: ctx.cfg.metrics.select_processes.clone(),
        };
        let router = api::router(
            api::Shared {
                snapshot: probes.shared.clone(),
                forecasts: probes.forecasts.clone(),
                decisions: probes.decisions.clone(),
                risk: probes.risk.clone(),
                mesh: mesh.cluster.clone(),
                transport: net.transport.clone(),
                images: net.images.clone(),
                services: services.manager.clone(),
                inventory: inventory.shared.clone(),
                migrator: migration.migrator.clone(),
            },
            api::metrics::registry(
                probes.shared.clone(),
                selection,
                mesh.cluster.clone(),
                net.transport.clone(),
                services.manager.clone(),
                inventory.shared.clone(),
                migration.migrator.clone(),
            ),
        );
        let cancel = ctx.child_token();
        let tasks = TaskTracker::new();
        let server = tasks.spawn(api::serve(self.0, router, cancel.clone()));
        tracing::info!(
            listen = %ctx.cfg.api.listen,
            source = probes.source.as_str(),
            interval_ms = ctx.cfg.probe.interval_ms.0,
            "agent started: metrics at http://{}/metrics",
            ctx.cfg.api.listen
        );
        Api {
            cancel,
            tasks,
            server,
        }
    }
}

impl Api {
    /// Stops accepting and lets in-flight requests finish, up to [`DRAIN_DEADLINE`].
    pub(super) async fn shutdown(self) -> Result<(), StopError> {
        self.cancel.cancel();
        self.tasks.close();
        let result = match tokio::time::timeout(DRAIN_DEADLINE, self.server).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(StopError::Api(e)),
            Ok(Err(_)) => Err(StopError::Panicked("API task")),
            Err(_) => {
                tracing::warn!("API did not drain within the deadline");
                Ok(())
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "API server failed");
        }
        result
    }
}
