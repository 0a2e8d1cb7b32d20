//! The agent's HTTP face: `/metrics` (OpenMetrics) and the JSON API under `/v1/`. Read-only but
//! for the operator's risk level.
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
//! | `/v1/risk` | GET or PUT `{"risk": 0.3}`: the operator's risk level of the site (0 to 1) |
//! | `/healthz` | `ok` once the first sample exists |

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
    #[error("API server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// The router, for tests and for [`serve`].
pub fn router(shared: Shared, registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/v1/node", get(node_handler))
        .route("/v1/processes", get(processes_handler))
        .route("/v1/containers", get(containers_handler))
        .route("/v1/snapshot", get(snapshot_handler))
        .route("/v1/forecast", get(forecast_handler))
        .route("/v1/decisions", get(decisions_handler))
        .route("/v1/nodes", get(nodes_handler))
        .route("/v1/risk", get(risk_get_handler).put(risk_put_handler))
        .route("/healthz", get(health_handler))
        .with_state(AppState {
            shared,
            registry: Arc::new(registry),
        })
}

/// Binds `addr` (before anything else starts, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { addr, source })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    axum::serve(listener, router)
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
            tracing::info!(risk = body.risk, "operator risk level changed");
            Json(body).into_response()
        }
        Err(e) => bad(e),
    }
}

#[derive(Serialize)]
struct NodesView {
    #[serde(flatten)]
    view: Arc<crate::gossip::ClusterView>,
    /// Datagram counts of the sealed transport (dropped: bad key or tag, replay, stale,
    /// malformed).
    seal: Option<crate::gossip::SealStats>,
}

async fn nodes_handler(State(state): State<AppState>) -> Response {
    match &state.shared.mesh {
        Some(mesh) => Json(NodesView {
            view: mesh.view(),
            seal: mesh.seal_stats(),
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
