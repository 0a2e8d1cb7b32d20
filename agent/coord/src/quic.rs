//! The agent's [`Wire`]: the QUIC transport with mutual TLS. Raft messages go to the `"raft"`
//! service, coordinator requests to `"coord"`; both are for nodes only (the transport refuses
//! operators), and the receiver checks that a message speaks for the node whose certificate
//! sent it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use godwit_transport::{open, Endpoint, Peer, Principal, Services};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::node::Coordinator;
use crate::rpc::{CoordReply, CoordRpc, Member, RaftReply, RaftRpc, Wire};

/// Raft and coordinator messages over the agent's QUIC endpoint, one cached connection per
/// peer.
///
/// A connection is made by a task of its own, never by the call that needs it: openraft drops
/// a call after its time to live (the heartbeat interval), which is shorter than a handshake on
/// a loaded host, and a handshake cancelled with every call would never finish, leaving the
/// leader unable to reach anyone. The next call finds the connection the earlier one started.
#[derive(Clone)]
pub struct QuicWire {
    endpoint: Endpoint,
    peers: Arc<Mutex<HashMap<String, Slot>>>,
}

/// A peer's connection: made, or being made (its outcome to come on the channel).
#[derive(Clone)]
enum Slot {
    Ready(Arc<Peer>),
    Connecting(tokio::sync::watch::Receiver<Option<Result<Arc<Peer>, String>>>),
}

/// How long a connection attempt may take before it is given up (the next call starts
/// another).
const CONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

impl QuicWire {
    /// A wire over `endpoint`.
    pub fn new(endpoint: Endpoint) -> QuicWire {
        QuicWire {
            endpoint,
            peers: Arc::default(),
        }
    }

    async fn peer(&self, to: &Member) -> Result<Arc<Peer>, String> {
        let mut rx = {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            match peers.get(&to.name) {
                Some(Slot::Ready(p)) => return Ok(p.clone()),
                Some(Slot::Connecting(rx)) => rx.clone(),
                None => {
                    let addr = to
                        .addr
                        .parse()
                        .map_err(|e| format!("{to}: bad address: {e}"))?;
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    peers.insert(to.name.clone(), Slot::Connecting(rx.clone()));
                    let (endpoint, peers, to) =
                        (self.endpoint.clone(), self.peers.clone(), to.clone());
                    tokio::spawn(async move {
                        let made = match tokio::time::timeout(
                            CONNECT_FOR,
                            endpoint.connect(addr, &to.name),
                        )
                        .await
                        {
                            Ok(Ok(p)) => Ok(Arc::new(p)),
                            Ok(Err(e)) => Err(format!("{to}: {e}")),
                            Err(_) => Err(format!("{to}: no connection within {CONNECT_FOR:?}")),
                        };
                        {
                            let mut peers = peers.lock().unwrap_or_else(|e| e.into_inner());
                            match &made {
                                Ok(p) => peers.insert(to.name.clone(), Slot::Ready(p.clone())),
                                Err(_) => peers.remove(&to.name),
                            };
                        }
                        let _ = tx.send(Some(made));
                    });
                    rx
                }
            }
        };
        let made = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| format!("{to}: the connection attempt was dropped"))?;
        made.clone().expect("waited for an outcome")
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        to: &Member,
        service: &str,
        req: &Q,
    ) -> Result<A, String> {
        let peer = self.peer(to).await?;
        let r = async {
            let mut ch = open(&peer, service).await.map_err(|e| e.to_string())?;
            ch.send(req).await.map_err(|e| e.to_string())?;
            let reply = ch.recv::<A>().await.map_err(|e| e.to_string())?;
            reply.ok_or_else(|| format!("{to} closed the stream"))
        }
        .await;
        if r.is_err() {
            // The next call connects again.
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(peers.get(&to.name), Some(Slot::Ready(p)) if Arc::ptr_eq(p, &peer)) {
                peers.remove(&to.name);
            }
        }
        r
    }
}

impl Wire for QuicWire {
    async fn raft(&self, to: &Member, rpc: RaftRpc) -> Result<RaftReply, String> {
        self.call(to, "raft", &rpc).await
    }

    async fn coord(&self, to: &Member, rpc: CoordRpc) -> Result<CoordReply, String> {
        self.call(to, "coord", &rpc).await
    }
}

/// Registers the `"raft"` and `"coord"` services of `coord` on the transport.
pub fn register<W: Wire>(services: &Services, coord: Arc<Coordinator<W>>) {
    let c = coord.clone();
    services.register("raft", move |peer, mut ch| {
        let c = c.clone();
        async move {
            if !matches!(peer.principal, Principal::Node(_)) {
                return;
            }
            while let Ok(Some(rpc)) = ch.recv::<RaftRpc>().await {
                let reply = c.handle_raft(&peer.node, rpc).await;
                if ch.send(&reply).await.is_err() {
                    return;
                }
            }
        }
    });
    services.register("coord", move |peer, mut ch| {
        let c = coord.clone();
        async move {
            if !matches!(peer.principal, Principal::Node(_)) {
                return;
            }
            if let Ok(Some(rpc)) = ch.recv::<CoordRpc>().await {
                let reply = c.handle_coord(&peer.node, rpc).await;
                let _ = ch.send(&reply).await;
                let _ = ch.finish();
            }
        }
    });
}

/// The wire of an agent: QUIC when the transport runs, none otherwise (the node then
/// coordinates only itself).
#[derive(Clone)]
pub enum AgentWire {
    Quic(QuicWire),
    None,
}

impl Wire for AgentWire {
    async fn raft(&self, to: &Member, rpc: RaftRpc) -> Result<RaftReply, String> {
        match self {
            AgentWire::Quic(w) => w.raft(to, rpc).await,
            AgentWire::None => Err(format!("{to}: this node has no transport")),
        }
    }

    async fn coord(&self, to: &Member, rpc: CoordRpc) -> Result<CoordReply, String> {
        match self {
            AgentWire::Quic(w) => w.coord(to, rpc).await,
            AgentWire::None => Err(format!("{to}: this node has no transport")),
        }
    }
}
