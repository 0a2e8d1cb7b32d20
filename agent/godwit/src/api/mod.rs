//! The agent's HTTP face: `/metrics` (OpenMetrics) and the JSON API under `/v1/`, on two
//! listeners that trust differently (see [`access`]):
//!
//! - the Unix socket (`[api] socket`) serves everything; a route that changes something is
//!   served to root and the members of `[api] group` only, as the kernel names the caller;
//! - the TCP address (`[api] listen`) serves the reads and nothing else: its router is built
//!   from the read routes alone ([`tcp_router`]), so it cannot route a change.
//!
//! Neither starts a migration: that takes a certificate of the cluster CA (see
//! `crate::migrate::control`).
//!
//! | path | body |
//! | --- | --- |
//! | `/metrics` | OpenMetrics text |
//! | `/v1/node` | node totals, energy, and the probe's report on itself |
//! | `/v1/processes` | live processes, by CPU descending |
//! | `/v1/containers` | containers and leaf cgroups, by CPU descending |
//! | `/v1/snapshot` | all of the above in one document |
//! | `/v1/forecast` | ARMA forecasts of the node's and each container's load, with intervals |
//! | `/v1/nodes` | the mesh: members with liveness, heartbeat age, generation and summary |
//! | `/v1/decisions` | this node's policy view and plan, with the numbers behind each step |
//! | `/v1/risk` | GET; PUT `{"risk": 0.3}` (socket): the operator's risk level of the site (0 to 1) |
//! | `/v1/transport` | the QUIC endpoint: connection counts and the paths measured |
//! | `/v1/transport/probe/{node}` | POST (socket, `?bytes=N`): measure RTT and throughput to a member |
//! | `/v1/images` | images in this node's store: id, entries, bytes, chunks |
//! | `/v1/inventory` | the patterns of `[inventory]` resolved to processes, containers, devices, interfaces, and the managed services |
//! | `/v1/services` | GET: managed services with state, health, cgroup and rates; POST (socket): a spec |
//! | `/v1/services/{name}/{action}` | POST (socket): `start`, `stop`, `freeze` or `thaw`; `migrate` is refused (403), audited and counted: migrations start over the transport with a certificate (`godwit migrate`, the `"control"` service) |
//! | `/v1/migrations` | migration counts (committed, failed, refused) and the last report |
//! | `/v1/images/{id}/push` | POST (socket, `?to=NODE`): push an image; only missing chunks move |
//! | `/healthz` | `ok` once the first sample exists |

pub mod access;
pub mod metrics;
pub mod socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use self::access::{Access, Actor, Caller, TcpPolicy};
use crate::forecast::{SharedDecisions, SharedForecasts, SharedRisk};
use crate::probe::{SharedSnapshot, Snapshot};

/// What the API reads (and, for the operator's risk level, writes).
#[derive(Clone)]
pub struct Shared {
    pub snapshot: SharedSnapshot,
    pub forecasts: SharedForecasts,
    pub decisions: SharedDecisions,
    pub risk: SharedRisk,
    /// The mesh membership, when gossip is enabled.
    pub mesh: Option<Arc<crate::gossip::Cluster>>,
    /// The agent-to-agent endpoint, when this node has a certificate.
    pub transport: Option<Arc<crate::transport::agent::Transport>>,
    /// The image store, when the data directory is usable.
    pub images: Option<Arc<crate::image::ImageStore>>,
    /// The managed services, when cgroup v2 is there.
    pub services: Option<Arc<crate::service::Manager>>,
    /// The resolved inventory, when patterns are configured.
    pub inventory: Option<crate::inventory::watch::SharedInventory>,
    /// Migrations from this node, when it has services and the transport.
    pub migrator: Option<Arc<crate::migrate::agent::Migrator>>,
    /// This node's member of the coordination group, when `[coordinator] enabled`.
    pub coord: Option<Arc<crate::coord::node::Coordinator<crate::coord::quic::AgentWire>>>,
    /// The cluster's plan as this node computes it, and the leader's decisions.
    pub acting: crate::act::SharedActing,
}

#[derive(Clone)]
struct AppState {
    shared: Shared,
    registry: Arc<Registry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the API socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another agent answers on the API socket {0}: stop it, or set [api] socket")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket: remove it, or set [api] socket")]
    NotASocket(PathBuf),
    #[error("API server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The routes that only read: everything the TCP listener serves.
fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/v1/node", get(node_handler))
        .route("/v1/processes", get(processes_handler))
        .route("/v1/containers", get(containers_handler))
        .route("/v1/snapshot", get(snapshot_handler))
        .route("/v1/forecast", get(forecast_handler))
        .route("/v1/decisions", get(decisions_handler))
        .route("/v1/nodes", get(nodes_handler))
        .route("/v1/risk", get(risk_get_handler))
        .route("/v1/transport", get(transport_handler))
        .route("/v1/images", get(images_handler))
        .route("/v1/inventory", get(inventory_handler))
        .route("/v1/migrations", get(migrations_handler))
        .route("/v1/services", get(services_handler))
        .route("/v1/cluster", get(cluster_handler))
        .route("/v1/cluster/plan", get(cluster_plan_handler))
        .route("/healthz", get(health_handler))
}

/// The routes that change something. Each handler takes an [`Actor`], which only
/// [`access::authorize`] makes: served anywhere else, they refuse.
fn act_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/risk", put(risk_put_handler))
        .route("/v1/transport/probe/{node}", post(probe_handler))
        .route("/v1/services", post(service_add_handler))
        .route("/v1/services/{name}/{action}", post(service_action_handler))
        .route(
            "/v1/cluster/nodes/{node}/{action}",
            post(node_action_handler),
        )
        .route("/v1/images/{id}/push", post(image_push_handler))
        .route("/v1/cluster/{action}", post(cluster_action_handler))
}

fn state(shared: Shared, registry: Arc<Registry>) -> AppState {
    AppState { shared, registry }
}

/// The router of the Unix socket: every route; those that act only for whom `access` allows.
pub fn socket_router(shared: Shared, registry: Arc<Registry>, access: Access) -> Router {
    read_routes()
        .merge(
            act_routes().route_layer(axum::middleware::from_fn_with_state(
                access,
                access::authorize,
            )),
        )
        .with_state(state(shared, registry))
}

/// The router of the TCP listener: the reads, under this agent's own host names.
pub fn tcp_router(shared: Shared, registry: Arc<Registry>, policy: TcpPolicy) -> Router {
    read_routes()
        .with_state(state(shared, registry))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(policy),
            access::tcp_guard,
        ))
}

/// Binds `addr` (before anything else starts, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Serves the TCP listener until `shutdown` is cancelled.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(ApiError::Serve)
}

/// Serves the Unix socket until `shutdown` is cancelled; each request knows its [`Caller`].
pub async fn serve_socket(
    listener: UnixListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Caller>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
    .map_err(ApiError::Serve)
}

fn latest(state: &AppState) -> Option<Arc<Snapshot>> {
    state
        .shared
        .snapshot
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "no sample yet"})),
    )
        .into_response()
}

/// OpenMetrics for clients that ask for it (Prometheus does), the Prometheus text format
/// otherwise (curl, promtool, older scrapers).
async fn metrics_handler(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Ok(body) = metrics::render(&state.registry) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            metrics::to_prometheus_text(&body),
        )
            .into_response()
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Serialize)]
struct NodeView<'a> {
    taken_at_unix_ms: u64,
    interval_seconds: f64,
    node: &'a crate::probe::model::NodeSample,
    probe: &'a crate::probe::sampler::ProbeStatus,
}

async fn node_handler(State(state): State<AppState>) -> Response {
    let Some(s) = latest(&state) else {
        return not_ready();
    };
    Json(NodeView {
        taken_at_unix_ms: s.taken_at_unix_ms,
        interval_seconds: s.interval_seconds,
        node: &s.node,
        probe: &s.probe,
    })
    .into_response()
}

async fn processes_handler(State(state): State<AppState>) -> Response {
    let Some(s) = latest(&state) else {
        return not_ready();
    };
    Json(&s.processes).into_response()
}

async fn containers_handler(State(state): State<AppState>) -> Response {
    let Some(s) = latest(&state) else {
        return not_ready();
    };
    Json(&s.containers).into_response()
}

async fn snapshot_handler(State(state): State<AppState>) -> Response {
    let Some(s) = latest(&state) else {
        return not_ready();
    };
    Json(&*s).into_response()
}

async fn forecast_handler(State(state): State<AppState>) -> Response {
    let latest = state
        .shared
        .forecasts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match latest {
        Some(f) => Json(&*f).into_response(),
        None => not_ready(),
    }
}

async fn decisions_handler(State(state): State<AppState>) -> Response {
    let latest = state
        .shared
        .decisions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match latest {
        Some(d) => Json(&*d).into_response(),
        None => not_ready(),
    }
}

#[derive(Serialize, serde::Deserialize)]
struct RiskBody {
    risk: f64,
}

async fn risk_get_handler(State(state): State<AppState>) -> Response {
    Json(RiskBody {
        risk: state.shared.risk.get(),
    })
    .into_response()
}

/// Sets the operator's risk level of this node's site (0 to 1). Refused with 400 otherwise.
async fn risk_put_handler(
    State(state): State<AppState>,
    Actor(caller): Actor,
    body: Result<Json<RiskBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let bad = |msg: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    match state.shared.risk.set(body.risk) {
        Ok(()) => {
            tracing::info!(risk = body.risk, by = %caller.describe(), "operator risk level changed");
            Json(body).into_response()
        }
        Err(e) => bad(e),
    }
}

const COORD_OFF: &str = "the coordinator is off on this node ([coordinator] enabled = false)";

/// The coordination group as this node sees it, and the placement log.
async fn cluster_handler(State(state): State<AppState>) -> Response {
    let Some(c) = &state.shared.coord else {
        return error(StatusCode::NOT_FOUND, COORD_OFF);
    };
    let status = c.status();
    let placement = c.placement().borrow().clone();
    let services: Vec<_> = placement
        .services
        .values()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "node": e.node,
                "epoch": e.epoch,
                "ha": e.ha,
                "reason": e.reason,
                "intent": e.intent,
            })
        })
        .collect();
    let fenced: Vec<_> = placement
        .fenced
        .iter()
        .map(|(n, f)| serde_json::json!({ "node": n, "index": f.index, "by": f.by, "at_unix_ms": f.at_unix_ms }))
        .collect();
    Json(serde_json::json!({
        "me": status.me,
        "state": status.state,
        "leader": status.leader,
        "term": status.term,
        "voters": status.voters,
        "learners": status.learners,
        "applied": status.applied,
        "lease": status.lease,
        "may_act": status.lease.may_act(),
        "nodes": status.nodes,
        "leader_changes": status.leader_changes,
        "fences": status.fences,
        "failovers": status.failovers,
        "services": services,
        "fenced": fenced,
        "cordoned": placement.cordoned,
        "paused": placement.paused,
    }))
    .into_response()
}

/// Drains `node`: cordons it, then asks it (over the transport, as this node) to migrate each
/// service the log places there to the live, uncordoned node with the fewest services. Each
/// migration goes through the log (its intent and its commit), one after the other.
async fn drain(
    state: &AppState,
    c: &crate::coord::node::Coordinator<crate::coord::quic::AgentWire>,
    node: &str,
    caller: &access::Caller,
) -> Response {
    let Some(t) = &state.shared.transport else {
        return error(StatusCode::NOT_FOUND, TRANSPORT_OFF);
    };
    if let Err(e) = c
        .write(crate::coord::Cmd::Cordon {
            node: node.to_string(),
            on: true,
        })
        .await
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, e);
    }
    let status = c.status();
    let Some(addr) = status
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.addr.parse::<SocketAddr>().ok())
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no member {node:?} with a transport address"),
        );
    };
    let placement = c.placement().borrow().clone();
    let services: Vec<String> = placement.on_node(node).map(|e| e.name.clone()).collect();
    let mut results = Vec::new();
    for service in services {
        let p = c.placement().borrow().clone();
        let mut candidates: Vec<&crate::coord::node::NodeStatus> = status
            .nodes
            .iter()
            .filter(|n| {
                n.name != node && !p.cordoned.contains(&n.name) && !p.fenced.contains_key(&n.name)
            })
            .collect();
        candidates.sort_by_key(|n| (p.on_node(&n.name).count(), n.name.clone()));
        if candidates.is_empty() {
            results
                .push(serde_json::json!({ "service": service, "result": "no node to move it to" }));
            continue;
        }
        // The fewest services first; a node the leader refuses (a witness runs none) is
        // skipped for the next.
        let (mut to, mut result) = (String::new(), String::new());
        for n in candidates {
            to = n.name.clone();
            let call = crate::migrate::control::MigrateCall {
                service: service.clone(),
                to: to.clone(),
                mode: None,
                downtime_ms: 300,
                full_verify: false,
                fencing_token: None,
                replace: false,
            };
            tracing::info!(%service, from = node, %to, by = %caller.describe(), "drain: moving");
            let answer =
                crate::migrate::control::migrate(t.endpoint(), addr, node, call, |_| {}).await;
            result = match answer {
                Ok(crate::migrate::control::Answer::Report {
                    committed: true, ..
                }) => "committed".to_string(),
                Ok(crate::migrate::control::Answer::Report { report, .. }) => {
                    format!("failed: {}", report["result"].as_str().unwrap_or("?"))
                }
                Ok(crate::migrate::control::Answer::Refused(r)) => format!("refused: {r}"),
                Ok(crate::migrate::control::Answer::Error(r)) => format!("error: {r}"),
                Err(e) => format!("error: {e}"),
            };
            if !result.contains("runs no services") {
                break;
            }
        }
        results.push(serde_json::json!({ "service": service, "to": to, "result": result }));
    }
    let all = results.iter().all(|r| r["result"] == "committed");
    (
        if all {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        },
        Json(serde_json::json!({ "node": node, "action": "drain", "moves": results })),
    )
        .into_response()
}

/// The cluster's plan as this node computes it, and the leader's decisions
/// (`godwit explain --cluster`).
async fn cluster_plan_handler(State(state): State<AppState>) -> Response {
    if state.shared.coord.is_none() {
        return error(StatusCode::NOT_FOUND, COORD_OFF);
    }
    Json(state.shared.acting.state()).into_response()
}

/// `pause` and `resume` the coordinator's own moves: written to the placement log, so every
/// leader after this one keeps to it.
async fn cluster_action_handler(
    State(state): State<AppState>,
    Actor(caller): Actor,
    axum::extract::Path(action): axum::extract::Path<String>,
) -> Response {
    let Some(c) = &state.shared.coord else {
        return error(StatusCode::NOT_FOUND, COORD_OFF);
    };
    let on = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no cluster action {other:?}: pause or resume"),
            )
        }
    };
    let cmd = crate::coord::Cmd::Pause {
        on,
        by: caller.describe(),
        at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    match c.write(cmd).await {
        Ok((outcome, index)) => {
            tracing::info!(action, by = %caller.describe(), ?outcome, index, "cluster action");
            Json(serde_json::json!({ "action": action, "outcome": outcome, "index": index }))
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(serde::Deserialize, Default)]
struct FenceQuery {
    #[serde(default)]
    confirmed: bool,
}

/// `cordon`, `uncordon` and `fence` (with `?confirmed=true`): written to the placement log.
async fn node_action_handler(
    State(state): State<AppState>,
    Actor(caller): Actor,
    axum::extract::Path((node, action)): axum::extract::Path<(String, String)>,
    query: Result<axum::extract::Query<FenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(c) = &state.shared.coord else {
        return error(StatusCode::NOT_FOUND, COORD_OFF);
    };
    if action == "drain" {
        return drain(&state, c, &node, &caller).await;
    }
    let cmd = match action.as_str() {
        "cordon" => crate::coord::Cmd::Cordon {
            node: node.clone(),
            on: true,
        },
        "uncordon" => crate::coord::Cmd::Cordon {
            node: node.clone(),
            on: false,
        },
        "fence" => {
            if !query.map(|q| q.0.confirmed).unwrap_or(false) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "fencing a node by hand says it is powered off: add --confirmed",
                );
            }
            crate::coord::Cmd::Fence {
                node: node.clone(),
                by: caller.describe(),
                at_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                term: 0,
            }
        }
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no node action {other:?}: cordon, uncordon, drain or fence"),
            )
        }
    };
    match c.write(cmd).await {
        Ok((outcome, index)) => {
            tracing::info!(node = %node, action, by = %caller.describe(), ?outcome, index, "node action");
            Json(serde_json::json!({ "node": node, "action": action, "outcome": outcome, "index": index }))
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(serde_json::json!({ "error": msg.to_string() }))).into_response()
}

const TRANSPORT_OFF: &str = "the transport is off on this node (transport.enabled = false, \
                             or no certificate for it in transport.tls_dir)";

async fn transport_handler(State(state): State<AppState>) -> Response {
    match &state.shared.transport {
        Some(t) => Json(t.view()).into_response(),
        None => error(StatusCode::NOT_FOUND, TRANSPORT_OFF),
    }
}

#[derive(serde::Deserialize)]
struct ProbeQuery {
    /// Bytes of the throughput probe; 0 measures RTT only.
    #[serde(default = "default_probe_bytes")]
    bytes: u64,
}

fn default_probe_bytes() -> u64 {
    16 << 20
}

async fn probe_handler(
    State(state): State<AppState>,
    _: Actor,
    axum::extract::Path(node): axum::extract::Path<String>,
    query: Result<axum::extract::Query<ProbeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(transport) = &state.shared.transport else {
        return error(StatusCode::NOT_FOUND, TRANSPORT_OFF);
    };
    let bytes = match query {
        Ok(q) => q.bytes,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if bytes > crate::transport::MAX_PROBE_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "bytes: {bytes} is over the limit of {}",
                crate::transport::MAX_PROBE_BYTES
            ),
        );
    }
    let addr = match peer_addr(&state, &node) {
        Ok(a) => a,
        Err(why) => return error(StatusCode::NOT_FOUND, why),
    };
    match transport.probe(&node, addr, bytes).await {
        Ok(m) => Json(m).into_response(),
        Err(e @ crate::transport::TransportError::Busy(_)) => {
            error(StatusCode::TOO_MANY_REQUESTS, e)
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

/// The transport address `node` publishes in its summary, or why there is none.
fn peer_addr(state: &AppState, node: &str) -> Result<SocketAddr, String> {
    crate::peers::transport_addr(state.shared.mesh.as_deref(), node).map_err(|e| e.to_string())
}

async fn inventory_handler(State(state): State<AppState>) -> Response {
    match &state.shared.inventory {
        Some(inv) => {
            let inv = inv.read().unwrap_or_else(|e| e.into_inner()).clone();
            Json(inv).into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "no [inventory] patterns are configured on this node",
        ),
    }
}

const SERVICES_OFF: &str = "this node runs no managed services (no cgroup v2 hierarchy)";

/// A service's status with its CPU, memory and dirty rates from the probe.
#[derive(Serialize)]
struct ServiceView {
    #[serde(flatten)]
    status: crate::service::ServiceStatus,
    cpu_cores: Option<f64>,
    memory_bytes: Option<u64>,
    dirty_bytes_per_second: Option<f64>,
    /// The epoch of its placement in the log (with a coordinator).
    epoch: Option<u64>,
}

fn service_error(e: crate::service::ServiceError) -> Response {
    use crate::service::ServiceError as E;
    let code = match &e {
        E::Spec { .. } => StatusCode::BAD_REQUEST,
        E::Duplicate(_) | E::State { .. } | E::Held { .. } => StatusCode::CONFLICT,
        E::Unknown(_) => StatusCode::NOT_FOUND,
        E::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e)
}

async fn services_handler(State(state): State<AppState>) -> Response {
    // A node without a runtime is an answer, not a failure: the list is empty and says why.
    let Some(manager) = &state.shared.services else {
        return Json(serde_json::json!({ "services": [], "runtime": false, "why": SERVICES_OFF }))
            .into_response();
    };
    let snap = latest(&state);
    let placement = state
        .shared
        .coord
        .as_ref()
        .map(|c| c.placement().borrow().clone());
    let views: Vec<ServiceView> = manager
        .list()
        .into_iter()
        .map(|status| {
            let c = snap.as_ref().and_then(|s| {
                // The probe names cgroups from the v2 root; the service knows the full path.
                s.containers
                    .iter()
                    .find(|c| c.cgroup_path.len() > 1 && status.cgroup.ends_with(&c.cgroup_path))
            });
            ServiceView {
                cpu_cores: c.map(|c| c.cpu_cores),
                memory_bytes: c.and_then(|c| c.memory_bytes),
                dirty_bytes_per_second: c.map(|c| c.dirty_bytes_per_second),
                epoch: placement
                    .as_ref()
                    .and_then(|p| p.services.get(&status.name))
                    .map(|e| e.epoch),
                status,
            }
        })
        .collect();
    Json(serde_json::json!({ "services": views, "runtime": true })).into_response()
}

async fn service_add_handler(
    State(state): State<AppState>,
    Actor(caller): Actor,
    body: Result<Json<crate::service::ServiceSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(manager) = &state.shared.services else {
        return error(StatusCode::NOT_FOUND, SERVICES_OFF);
    };
    let spec = match body {
        Ok(Json(s)) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let name = spec.name.clone();
    if let Some(coord) = &state.shared.coord {
        return place_here(coord, manager, spec, &caller).await;
    }
    match manager.add(spec).await {
        Ok(status) => {
            tracing::info!(service = %name, by = %caller.describe(), "service added");
            (StatusCode::CREATED, Json(status)).into_response()
        }
        Err(e) => service_error(e),
    }
}

/// With a coordinator, a service added here is placed here through the log (never started
/// blindly): 201 once it runs here, 202 while the node waits for its lease, 409 when the log
/// places a service of that name elsewhere.
async fn place_here(
    coord: &crate::coord::node::Coordinator<crate::coord::quic::AgentWire>,
    manager: &crate::service::Manager,
    spec: crate::service::ServiceSpec,
    caller: &access::Caller,
) -> Response {
    if let Err(e) = spec.validate(&manager.runtime().section) {
        return service_error(e);
    }
    let name = spec.name.clone();
    let me = coord.settings().me.name.clone();
    let cmd = match crate::daemon::define_cmd(&spec, &me) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let index = match coord.write(cmd).await {
        Ok((_, index)) => index,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let mut placement = coord.placement();
    let entry = loop {
        let p = placement.borrow_and_update().clone();
        if p.applied >= index {
            break p.services.get(&name).cloned();
        }
        if tokio::time::timeout(std::time::Duration::from_secs(10), placement.changed())
            .await
            .is_err()
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the log was not applied here in time",
            );
        }
    };
    match entry {
        Some(e) if e.node.as_deref() == Some(me.as_str()) => {}
        Some(e) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "{name} is placed on {} at epoch {}",
                    e.node.as_deref().unwrap_or("no node"),
                    e.epoch
                ),
            )
        }
        None => {
            return error(
                StatusCode::CONFLICT,
                format!("{name} is not in the placement log"),
            )
        }
    }
    tracing::info!(service = %name, by = %caller.describe(), index, "service placed here");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(status) = manager.status(&name) {
            return (StatusCode::CREATED, Json(status)).into_response();
        }
        if tokio::time::Instant::now() > deadline {
            return (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "name": name, "node": me, "placed_at": index })),
            )
                .into_response();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The query of a refused `migrate` action: only the target, for the audit log.
#[derive(serde::Deserialize)]
struct MigrateQuery {
    to: Option<String>,
}

async fn migrations_handler(State(state): State<AppState>) -> Response {
    match &state.shared.migrator {
        Some(m) => Json(m.stats()).into_response(),
        None => error(StatusCode::NOT_FOUND, MIGRATE_OFF),
    }
}

const MIGRATE_OFF: &str =
    "migration is off on this node: it needs managed services and the transport (a certificate)";

/// Why `POST /v1/services/{name}/migrate` is refused.
pub const MIGRATE_NEEDS_A_CERTIFICATE: &str = "migrations are started over the transport by a \
     caller with a certificate of the cluster CA, not over HTTP: run `godwit migrate SERVICE \
     --to NODE` (it presents this node's certificate, or an operator's with --operator)";

/// The HTTP API presents no certificate of the cluster CA, so it starts no migration: the
/// request is refused (403), audited with the caller's credentials and counted as refused.
fn migrate(state: &AppState, name: &str, to: Option<&str>, caller: &Caller) -> Response {
    if let Some(migrator) = &state.shared.migrator {
        migrator.refuse(
            name,
            to.unwrap_or("-"),
            &format!("api {}", caller.describe()),
            "the HTTP API presents no certificate",
        );
    }
    error(StatusCode::FORBIDDEN, MIGRATE_NEEDS_A_CERTIFICATE)
}

async fn service_action_handler(
    State(state): State<AppState>,
    Actor(caller): Actor,
    axum::extract::Path((name, action)): axum::extract::Path<(String, String)>,
    query: Result<axum::extract::Query<MigrateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(manager) = &state.shared.services else {
        return error(StatusCode::NOT_FOUND, SERVICES_OFF);
    };
    if action == "migrate" {
        let to = query.ok().and_then(|q| q.0.to);
        return migrate(&state, &name, to.as_deref(), &caller);
    }
    let result = match action.as_str() {
        "start" => manager.start(&name).await,
        "stop" => manager.stop(&name).await,
        "freeze" => manager.freeze(&name).await,
        "thaw" => manager.thaw(&name).await,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: start, stop, freeze or thaw"),
            )
        }
    };
    match result {
        Ok(status) => {
            tracing::info!(service = %name, action, by = %caller.describe(), "service action");
            Json(status).into_response()
        }
        Err(e) => service_error(e),
    }
}

const IMAGES_OFF: &str = "this node has no image store (see the agent's log)";

#[derive(Serialize)]
struct ImageInfo {
    id: String,
    entries: usize,
    bytes: u64,
    chunks: usize,
}

async fn images_handler(State(state): State<AppState>) -> Response {
    let Some(store) = state.shared.images.clone() else {
        return error(StatusCode::NOT_FOUND, IMAGES_OFF);
    };
    let listed = tokio::task::spawn_blocking(move || {
        store
            .list()
            .into_iter()
            .filter_map(|id| {
                let m = store.manifest(&id).ok()?;
                Some(ImageInfo {
                    id: id.to_string(),
                    entries: m.entries.len(),
                    bytes: m.size(),
                    chunks: m.chunks().count(),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Json(serde_json::json!({ "images": listed })).into_response()
}

#[derive(serde::Deserialize)]
struct PushQuery {
    to: String,
}

async fn image_push_handler(
    State(state): State<AppState>,
    _: Actor,
    axum::extract::Path(id): axum::extract::Path<String>,
    query: Result<axum::extract::Query<PushQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(store) = &state.shared.images else {
        return error(StatusCode::NOT_FOUND, IMAGES_OFF);
    };
    let Some(transport) = &state.shared.transport else {
        return error(StatusCode::NOT_FOUND, TRANSPORT_OFF);
    };
    let to = match query {
        Ok(q) => q.0.to,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let id = match crate::image::Digest::parse(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !store.has_image(&id) {
        return error(StatusCode::NOT_FOUND, format!("no image {id} here"));
    }
    let addr = match peer_addr(&state, &to) {
        Ok(a) => a,
        Err(why) => return error(StatusCode::NOT_FOUND, why),
    };
    let peer = match transport.endpoint().connect(addr, &to).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let result = crate::image::push(&peer, store, &id).await;
    peer.close("pushed");
    match result {
        Ok(stats) => {
            tracing::info!(
                image = %id,
                to = %to,
                chunks = stats.chunks_sent,
                bytes = stats.bytes_sent,
                "image pushed"
            );
            Json(stats).into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

#[derive(Serialize)]
struct NodesView {
    #[serde(flatten)]
    view: Arc<crate::gossip::ClusterView>,
    /// Datagram counts of the sealed transport (dropped: bad key or tag, replay, stale,
    /// malformed).
    seal: Option<crate::gossip::SealStats>,
    /// The ids of the cluster keys this node holds (never the keys).
    keyring: Option<KeyringView>,
}

#[derive(Serialize)]
struct KeyringView {
    /// The key that seals what this node sends.
    primary: String,
    /// Every key this node accepts, the primary included.
    keys: Vec<String>,
}

async fn nodes_handler(State(state): State<AppState>) -> Response {
    match &state.shared.mesh {
        Some(mesh) => Json(NodesView {
            view: mesh.view(),
            seal: mesh.seal_stats(),
            keyring: mesh.keyring().map(|ring| KeyringView {
                primary: ring.primary().to_string(),
                keys: ring.key_ids().iter().map(ToString::to_string).collect(),
            }),
        })
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "gossip is disabled (gossip.enabled = false)"})),
        )
            .into_response(),
    }
}

async fn health_handler(State(state): State<AppState>) -> Response {
    match latest(&state) {
        Some(_) => "ok\n".into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}
