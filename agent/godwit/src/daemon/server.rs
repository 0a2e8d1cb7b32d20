//! The HTTP API and `/metrics`, on two listeners bound early (a taken address or a live
//! agent's socket fails the start before anything else runs) and served once every component
//! they show is up: the Unix socket, where root and the API group may act, and the TCP
//! address, which only reads. The socket file is removed at shutdown.

use std::path::PathBuf;
use std::sync::Arc;
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
use crate::api::access::{Access, TcpPolicy};
use crate::api::socket::ApiSocket;

/// How long the API may take to finish in-flight requests at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// How often the count of refusals left out of the log is written.
const REFUSAL_FLUSH: Duration = Duration::from_secs(1);

/// The API's listeners, bound.
pub(super) struct Bound {
    tcp: TcpListener,
    /// `None`: the agent may not make its socket (said in the log); it only reads.
    socket: Option<ApiSocket>,
}

/// Binds `[api] listen`, then `[api] socket`.
pub(super) async fn bind(ctx: &Context) -> Result<Bound, StartError> {
    let tcp = api::bind(ctx.cfg.api.listen)
        .await
        .map_err(StartError::Api)?;
    let socket =
        api::socket::bind(&ctx.cfg.api.socket, &ctx.cfg.api.group).map_err(StartError::Api)?;
    Ok(Bound { tcp, socket })
}

/// What the API shows: every component's shared state.
pub(super) struct Parts<'a> {
    pub probes: &'a Probes,
    pub mesh: &'a Mesh,
    pub net: &'a Network,
    pub services: &'a Services,
    pub migration: &'a Migration,
    pub inventory: &'a Inventory,
    pub coordination: &'a super::coord::Coordination,
    pub acting: &'a super::act::Act,
}

type Server = tokio::task::JoinHandle<Result<(), api::ApiError>>;

/// The running servers.
pub(super) struct Api {
    cancel: CancellationToken,
    tasks: TaskTracker,
    tcp: Server,
    /// The socket's server, and its file to remove at shutdown.
    socket: Option<(Server, PathBuf, (u64, u64))>,
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
            coordination,
            acting,
        } = parts;
        let selection = api::metrics::ProcessSelection {
            top: ctx.cfg.metrics.top_processes.0 as usize,
            globs: ctx.cfg.metrics.select_processes.clone(),
        };
        let shared = api::Shared {
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
            coord: coordination.coord.clone(),
            acting: acting.shared.clone(),
        };
        let mut registry = api::metrics::registry(
            probes.shared.clone(),
            selection,
            mesh.cluster.clone(),
            net.transport.clone(),
            services.manager.clone(),
            inventory.shared.clone(),
            migration.migrator.clone(),
        );
        if let Some(c) = &coordination.coord {
            registry.register_collector(api::metrics::coordinator_collector(c.clone()));
            registry.register_collector(api::metrics::acting_collector(acting.shared.clone()));
        }
        registry.register_collector(api::metrics::policy_collector(probes.decisions.clone()));
        let registry = Arc::new(registry);
        let cfg = &ctx.cfg.api;
        let cancel = ctx.child_token();
        let tasks = TaskTracker::new();
        let tcp_router = api::tcp_router(
            shared.clone(),
            registry.clone(),
            TcpPolicy {
                listen: cfg.listen,
                allowed_hosts: cfg.allowed_hosts.clone(),
                socket: cfg.socket.clone(),
                group: cfg.group.clone(),
            },
        );
        let tcp = tasks.spawn(api::serve_tcp(self.tcp, tcp_router, cancel.clone()));
        let socket = self.socket.map(|sock| {
            let (path, id) = (sock.path.clone(), sock.file_id());
            let access = sock.access.clone();
            tasks.spawn(flush_refusals(access.clone(), cancel.clone()));
            let router = api::socket_router(shared, registry, access);
            let server = tasks.spawn(api::serve_socket(sock.listener, router, cancel.clone()));
            (server, path, id)
        });
        tracing::info!(
            listen = %cfg.listen,
            socket = socket.as_ref().map(|(_, p, _)| p.display().to_string()),
            source = probes.source.as_str(),
            interval_ms = ctx.cfg.probe.interval_ms.0,
            "agent started: metrics at http://{}/metrics",
            cfg.listen
        );
        Api {
            cancel,
            tasks,
            tcp,
            socket,
        }
    }
}

/// Writes the count of refusals left out of the log each [`REFUSAL_FLUSH`], and at the end.
async fn flush_refusals(access: Access, cancel: CancellationToken) -> Result<(), api::ApiError> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                access.flush_refusals();
                return Ok(());
            }
            _ = tokio::time::sleep(REFUSAL_FLUSH) => access.flush_refusals(),
        }
    }
}

impl Api {
    /// Stops accepting, lets in-flight requests finish (up to [`DRAIN_DEADLINE`] for both
    /// listeners together), and removes the socket file.
    pub(super) async fn shutdown(self) -> Result<(), StopError> {
        self.cancel.cancel();
        self.tasks.close();
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        let mut result = drain(self.tcp, deadline, "TCP").await;
        if let Some((server, path, id)) = self.socket {
            let socket = drain(server, deadline, "socket").await;
            result = result.and(socket);
            ApiSocket::remove_file(&path, id);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "API server failed");
        }
        result
    }
}

async fn drain(
    server: Server,
    deadline: tokio::time::Instant,
    what: &str,
) -> Result<(), StopError> {
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(StopError::Api(e)),
        Ok(Err(_)) => Err(StopError::Panicked("API task")),
        Err(_) => {
            tracing::warn!(listener = what, "API did not drain within the deadline");
            Ok(())
        }
    }
}
