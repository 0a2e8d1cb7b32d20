//! Services on a connection: each exchange opens its own stream whose first frame names the
//! service (`"path"`, `"image"`, `"state"`, `"handoff"`, `"control"`); the agent registers a
//! handler per name.
//!
//! Nodes may open every service. Operators ([`Principal::Operator`]) may open only those
//! registered with [`Services::register_for_operators`] (`"control"`); anything else is refused
//! as if it did not exist for them.
//!
//! The transport knows nothing of what a service does, so modules above it (image, migrate)
//! plug in without the transport depending on them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::endpoint::{Channel, Peer};
use super::error::TransportError;
use super::tls::Principal;
use super::wire::MAX_OPEN_FRAME;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type HandlerFn = Arc<dyn Fn(PeerInfo, Channel) -> BoxFuture + Send + Sync>;

#[derive(Clone)]
struct Handler {
    run: HandlerFn,
    /// Operators may open it too (not only nodes).
    operators: bool,
}

/// Who is on the other end of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's name (a node's, or an operator's), proven by its certificate.
    pub node: String,
    /// Whether it is a node or an operator, proven by its certificate.
    pub principal: Principal,
    /// Its address.
    pub addr: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Open {
    Service { name: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Opened {
    Ok,
    Unknown { name: String },
}

/// What an operator is told when it opens a service of nodes only: the same as for a service
/// that does not exist, so nothing is learnt from it.
fn unknown_to(principal: &Principal, handler: Option<Handler>) -> Option<Handler> {
    handler.filter(|h| h.operators || matches!(principal, Principal::Node(_)))
}

/// The handlers of this agent, by service name.
#[derive(Clone, Default)]
pub struct Services {
    handlers: Arc<RwLock<BTreeMap<String, Handler>>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Services").field("names", &names).finish()
    }
}

impl Services {
    /// Registers (or replaces) the handler of service `name`, which only nodes may open.
    pub fn register<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(PeerInfo, Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.insert(name, false, handler);
    }

    /// Registers (or replaces) the handler of service `name`, which operators may open too;
    /// the handler decides what each caller ([`PeerInfo::principal`]) may do.
    pub fn register_for_operators<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(PeerInfo, Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.insert(name, true, handler);
    }

    fn insert<F, Fut>(&self, name: &str, operators: bool, handler: F)
    where
        F: Fn(PeerInfo, Channel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run: HandlerFn = Arc::new(move |peer, ch| Box::pin(handler(peer, ch)));
        self.handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Handler { run, operators });
    }

    /// Serves the streams `peer` opens until the connection ends, each on its own task.
    pub async fn serve(self, peer: Peer) {
        let info = PeerInfo {
            node: peer.node().to_string(),
            principal: peer.principal().clone(),
            addr: peer.addr(),
        };
        // The streams' tasks belong to the connection's: it reaps them as they end, and waits
        // for the rest once the peer is gone (or its own task is stopped, which stops them).
        let mut streams = tokio::task::JoinSet::new();
        loop {
            let mut ch = tokio::select! {
                accepted = peer.accept() => match accepted {
                    Ok(ch) => ch,
                    Err(_) => break,
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => continue,
            };
            let services = self.clone();
            let info = info.clone();
            streams.spawn(async move {
                let name = match ch.recv_limited::<Open>(MAX_OPEN_FRAME).await {
                    Ok(Some(Open::Service { name })) => name,
                    _ => return,
                };
                let handler = services
                    .handlers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&name)
                    .cloned();
                match unknown_to(&info.principal, handler) {
                    Some(h) => {
                        if ch.send(&Opened::Ok).await.is_ok() {
                            (h.run)(info, ch).await;
                        }
                    }
                    None => {
                        tracing::debug!(peer = %info.principal, service = %name, "unknown service (or not for this caller)");
                        let _ = ch.send(&Opened::Unknown { name }).await;
                        let _ = ch.finish();
                    }
                }
            });
        }
        while streams.join_next().await.is_some() {}
    }
}

/// Opens a stream to service `name` on `peer`.
pub async fn open(peer: &Peer, name: &str) -> Result<Channel, TransportError> {
    let mut ch = peer.open().await?;
    ch.send(&Open::Service {
        name: name.to_string(),
    })
    .await?;
    match ch.recv_limited::<Opened>(MAX_OPEN_FRAME).await? {
        Some(Opened::Ok) => Ok(ch),
        Some(Opened::Unknown { name }) => Err(TransportError::Refused(format!(
            "{} offers no service {name:?}",
            peer.node()
        ))),
        None => Err(TransportError::Connection(format!(
            "{} closed the stream",
            peer.node()
        ))),
    }
}
