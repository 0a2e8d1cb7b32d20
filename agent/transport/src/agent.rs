//! The agent's side of the transport: the `[transport]` table turned into a running endpoint
//! that answers every authenticated peer, and the paths it measured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use super::{
    measure, path, Endpoint, Identity, IdentityFiles, PathMeasurement, Services, TransportError,
    TransportStats,
};
use serde::{Deserialize, Serialize};

/// The agent-to-agent QUIC endpoint (mutual TLS under the cluster CA), used by migrations.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    /// Run the endpoint. It also needs this node's certificate in `tls_dir`; without one the
    /// agent says so once and runs without it.
    pub enabled: bool,
    /// UDP address of the endpoint.
    pub listen: SocketAddr,
    /// Address peers should use when it differs from `listen`.
    pub advertise: Option<SocketAddr>,
    /// Directory with `ca.pem`, `<node>.pem` and `<node>.key` (`godwit cert issue`).
    pub tls_dir: PathBuf,
}

impl Default for TransportSection {
    fn default() -> Self {
        TransportSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9748)),
            advertise: None,
            tls_dir: PathBuf::from("/etc/godwit/tls"),
        }
    }
}

/// A running endpoint and what it measured.
#[derive(Debug)]
pub struct Transport {
    endpoint: Endpoint,
    services: Services,
    advertise: SocketAddr,
    paths: Mutex<BTreeMap<String, PathMeasurement>>,
    /// Probes an operator asks for ([`Transport::probe`]) run one at a time.
    probe_gate: path::ProbeGate,
    /// The accept loop; it owns the tasks serving each peer and waits for them at its end.
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What `/v1/transport` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransportView {
    /// This node's name on the transport.
    pub node: String,
    /// The address peers use.
    pub advertise: SocketAddr,
    /// Connection counts.
    pub stats: TransportStats,
    /// The last measurement of each path, by peer.
    pub paths: Vec<PathMeasurement>,
}

/// Where this node's identity lives.
pub fn identity_files(cfg: &TransportSection, node: &str) -> IdentityFiles {
    IdentityFiles::in_dir(&cfg.tls_dir, node)
}

/// Starts the endpoint, or returns `Ok(None)` when it is disabled or this node has no
/// certificate (said once in the log). A certificate that is present but unusable is an error.
pub fn start(cfg: &TransportSection, node: &str) -> Result<Option<Transport>, TransportError> {
    let t = cfg;
    if !t.enabled {
        return Ok(None);
    }
    let files = identity_files(cfg, node);
    if !files.cert.exists() && !files.key.exists() {
        tracing::info!(
            node,
            dir = %t.tls_dir.display(),
            "no certificate for this node: the transport (and migration) is off; \
             create one with `godwit ca init` and `godwit cert issue --node {node}`"
        );
        return Ok(None);
    }
    let identity = Identity::load(node, &files)?;
    let endpoint = Endpoint::bind(t.listen, identity)?;
    let bound = endpoint.local_addr()?;
    let advertise = match t.advertise {
        Some(a) => a,
        None if bound.ip().is_unspecified() => {
            return Err(TransportError::Bind {
                addr: bound,
                reason: "listening on an unspecified address: set transport.advertise".into(),
            })
        }
        None => bound,
    };
    let services = Services::default();
    path::register(&services);
    let accept = tokio::spawn(accept_loop(endpoint.clone(), services.clone()));
    tracing::info!(node, listen = %bound, %advertise, "transport listening (QUIC, mutual TLS)");
    Ok(Some(Transport {
        endpoint,
        services,
        advertise,
        paths: Mutex::default(),
        probe_gate: path::ProbeGate::default(),
        accept: Mutex::new(Some(accept)),
    }))
}

/// Serves every peer that connects, each on a task of its own, until the endpoint closes;
/// then waits for those tasks (closing the endpoint closed their connections).
async fn accept_loop(endpoint: Endpoint, services: Services) {
    let mut peers = tokio::task::JoinSet::new();
    // `accept` is not raced against anything: dropping it mid-handshake would lose the peer.
    while let Some(peer) = endpoint.accept().await {
        peers.spawn(services.clone().serve(peer));
        while peers.try_join_next().is_some() {}
    }
    while peers.join_next().await.is_some() {}
}

impl Transport {
    /// The address peers use, published in the node summary.
    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// Connection counts.
    pub fn stats(&self) -> TransportStats {
        self.endpoint.stats()
    }

    /// The endpoint, to connect to peers.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The services peers can open; register more here.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// What `/v1/transport` shows.
    pub fn view(&self) -> TransportView {
        TransportView {
            node: self.endpoint.node().to_string(),
            advertise: self.advertise,
            stats: self.stats(),
            paths: self
                .paths
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect(),
        }
    }

    /// Measures the path to `node` at `addr` and remembers the result.
    pub async fn measure(
        &self,
        node: &str,
        addr: SocketAddr,
        bytes: u64,
    ) -> Result<PathMeasurement, TransportError> {
        let m = measure(&self.endpoint, addr, node, bytes).await?;
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_string(), m.clone());
        Ok(m)
    }

    /// Measures the path as [`Transport::measure`] does, for an operator: one such probe runs
    /// at a time on this agent, and another asked meanwhile is refused with
    /// [`TransportError::Busy`] (not queued). Migrations measure with `measure`, never refused.
    pub async fn probe(
        &self,
        node: &str,
        addr: SocketAddr,
        bytes: u64,
    ) -> Result<PathMeasurement, TransportError> {
        let Some(_pass) = self.probe_gate.try_enter() else {
            return Err(TransportError::Busy(
                "another path probe is running on this agent; try again when it is done".into(),
            ));
        };
        self.measure(node, addr, bytes).await
    }

    /// The last measurements, by peer.
    pub fn paths(&self) -> Vec<PathMeasurement> {
        self.view().paths
    }

    /// Closes every connection and stops accepting at once (the tasks serving peers are
    /// aborted).
    pub fn close(&self) {
        if let Some(accept) = self.take_accept() {
            accept.abort();
        }
        self.endpoint.close();
    }

    /// Closes every connection and waits until the accept loop and the tasks serving each
    /// peer have ended.
    pub async fn shutdown(&self) {
        self.endpoint.close();
        if let Some(accept) = self.take_accept() {
            if let Err(e) = accept.await {
                tracing::error!(error = %e, "transport accept loop failed");
            }
        }
    }

    fn take_accept(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.accept.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
