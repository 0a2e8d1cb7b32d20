//! The QUIC endpoint of an agent: it connects to peers and accepts them, both with mutual TLS.
//!
//! A connection starts with a handshake on its first bidirectional stream, which then stays
//! open as the connection's control channel:
//!
//! 1. the client sends `Hello { node }` (who it is), or `HelloOperator { name }` when it is an
//!    operator ([`Principal::Operator`], a client only);
//! 2. the server checks that the client's certificate names that node (or operator) and is
//!    signed by the cluster CA ([`Identity::verify_principal`]) and answers `Welcome { node }`
//!    or `Refused { reason }`;
//! 3. the client checks the welcome names the node it dialled (rustls already checked the
//!    server's certificate for that name).
//!
//! Handshakes that fail, for a certificate of another CA, a wrong name or another wire version,
//! are counted in [`TransportStats`] and logged; nothing else happens on such a connection.
//!
//! Accepting is bounded ([`AcceptLimits`]). A client whose address QUIC has not validated is
//! first sent a Retry (stateless: a spoofed or lone Initial costs one packet and no state).
//! A validated client over the connection caps, per IP address or in total, is refused and
//! counted. Each accepted connection then completes its handshake on a task of its own, at
//! most `handshakes` at once and each within [`HANDSHAKE_TIMEOUT`], so a peer that stalls its
//! handshake delays no other. The tasks belong to the endpoint and stop when it closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::ca::node_dns_name;
use super::error::TransportError;
use super::tls::{Identity, Principal};
use super::wire::{
    read_bulk, read_msg, read_msg_limited, read_piece, write_bulk, write_msg, write_piece,
    write_pieces_end, BulkStats, Piece, MAX_HANDSHAKE_FRAME,
};

/// How long a peer has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// QUIC keep-alive: well under the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Handshake {
    Hello {
        node: String,
    },
    Welcome {
        node: String,
    },
    Refused {
        reason: String,
    },
    /// Appended after the others, so their encoding is unchanged.
    HelloOperator {
        name: String,
    },
}

/// Counts of connections since the endpoint opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransportStats {
    /// Peers accepted (handshake complete).
    pub accepted: u64,
    /// Connections made to peers (handshake complete).
    pub connected: u64,
    /// Incoming connections refused: certificate not of the cluster CA, name not matching the
    /// node claimed, bad handshake.
    pub refused_in: u64,
    /// Outgoing connections refused: the server's certificate or name, or it refused us.
    pub refused_out: u64,
    /// Incoming connections refused before any handshake: over the connection caps.
    pub refused_limit: u64,
    /// Clients sent a QUIC Retry to validate their address.
    pub retried: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    connected: AtomicU64,
    refused_in: AtomicU64,
    refused_out: AtomicU64,
    refused_limit: AtomicU64,
    retried: AtomicU64,
}

/// Bounds on what incoming connections may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Handshakes in progress at once (the rest wait, each within its timeout).
    pub handshakes: usize,
    /// Connections (in handshake or established) from one IP address.
    pub per_peer: usize,
    /// Connections (in handshake or established) in total.
    pub total: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            handshakes: 64,
            per_peer: 32,
            total: 512,
        }
    }
}

/// The incoming connections held, by IP address, against the [`AcceptLimits`].
#[derive(Debug, Default)]
struct Slots {
    by_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One incoming connection's place under the caps, given back when dropped (with the [`Peer`],
/// or when its handshake fails).
#[derive(Debug)]
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Mutex<Slots>>, ip: IpAddr, limits: &AcceptLimits) -> Option<Slot> {
        let mut held = slots.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = held.by_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.per_peer || held.total >= limits.total {
            return None;
        }
        held.by_ip.insert(ip, from_ip + 1);
        held.total += 1;
        Some(Slot {
            slots: slots.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.by_ip.remove(&self.ip);
            }
        }
    }
}

/// The accepting side of an endpoint: handshakes run on tasks of their own and hand the peers
/// they complete to [`Endpoint::accept`].
#[derive(Debug)]
struct Acceptor {
    limits: AcceptLimits,
    slots: Arc<Mutex<Slots>>,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// The handshake tasks; aborted when the endpoint closes.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    done_tx: tokio::sync::mpsc::UnboundedSender<Peer>,
    done_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Peer>>,
}

impl Acceptor {
    fn new(limits: AcceptLimits) -> Acceptor {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Acceptor {
            limits,
            slots: Arc::default(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits.handshakes.max(1))),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            done_tx,
            done_rx: tokio::sync::Mutex::new(done_rx),
        }
    }
}

/// A bidirectional stream carrying frames, bulk blocks and placed pieces.
#[derive(Debug)]
pub struct Channel {
    // The streams never leave this crate: callers use the methods below.
    pub(crate) send: quinn::SendStream,
    pub(crate) recv: quinn::RecvStream,
}

impl Channel {
    /// Sends one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        write_msg(&mut self.send, msg).await
    }

    /// Receives one message; `None` when the peer finished the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        read_msg(&mut self.recv).await
    }

    /// Receives one message of at most `max` bytes (a longer frame is refused before anything
    /// is allocated for it); `None` when the peer finished the stream.
    pub async fn recv_limited<T: DeserializeOwned>(
        &mut self,
        max: usize,
    ) -> Result<Option<T>, TransportError> {
        read_msg_limited(&mut self.recv, max).await
    }

    /// Ends the sending half (the peer reads the end of the stream).
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(TransportError::connection)
    }

    /// Waits until the peer has received everything sent (or the stream is gone).
    pub async fn stopped(&mut self) {
        let _ = self.send.stopped().await;
    }

    /// Sends `data` as bulk blocks of at most `block` bytes, zstd at `level` where that
    /// shrinks a block ([`crate::write_bulk`]).
    pub async fn write_bulk(
        &mut self,
        data: &[u8],
        block: usize,
        level: Option<i32>,
    ) -> Result<BulkStats, TransportError> {
        write_bulk(&mut self.send, data, block, level).await
    }

    /// Receives bulk blocks up to their end marker, appended to `out`: at most `max` bytes,
    /// what this receiver expects ([`crate::read_bulk`]).
    pub async fn read_bulk(
        &mut self,
        out: &mut Vec<u8>,
        max: u64,
    ) -> Result<BulkStats, TransportError> {
        read_bulk(&mut self.recv, out, max).await
    }

    /// Sends one placed piece.
    pub async fn write_piece(&mut self, piece: &Piece) -> Result<(), TransportError> {
        write_piece(&mut self.send, piece).await
    }

    /// Sends pieces already encoded with [`crate::encode_piece`], in one write.
    pub async fn write_encoded_pieces(&mut self, encoded: &[u8]) -> Result<(), TransportError> {
        self.send
            .write_all(encoded)
            .await
            .map_err(TransportError::connection)
    }

    /// Ends a run of pieces.
    pub async fn write_pieces_end(&mut self) -> Result<(), TransportError> {
        write_pieces_end(&mut self.send).await
    }

    /// A buffered reader of placed pieces (`capacity` bytes of buffer: small pieces arrive in
    /// batches, and each read on a QUIC stream has a fixed cost).
    pub fn pieces(&mut self, capacity: usize) -> PieceReader<'_> {
        PieceReader {
            stream: tokio::io::BufReader::with_capacity(capacity, &mut self.recv),
        }
    }
}

/// Reads placed pieces from a [`Channel`] until their end marker.
#[derive(Debug)]
pub struct PieceReader<'a> {
    stream: tokio::io::BufReader<&'a mut quinn::RecvStream>,
}

impl PieceReader<'_> {
    /// The next piece, or `None` at the end marker.
    pub async fn next(&mut self) -> Result<Option<Piece>, TransportError> {
        read_piece(&mut self.stream).await
    }

    /// Whether bytes beyond what was read so far are already buffered (after the end marker,
    /// the sender sends nothing until it has an answer: anything here is a protocol error).
    pub fn has_buffered(&self) -> bool {
        !self.stream.buffer().is_empty()
    }
}

/// An authenticated connection to another agent.
#[derive(Debug)]
pub struct Peer {
    conn: quinn::Connection,
    principal: Principal,
    /// The handshake stream, kept open for control messages.
    pub control: Channel,
    /// An accepted peer's place under the connection caps.
    _slot: Option<Slot>,
}

impl Peer {
    /// The peer's node name (or, for an operator, its name), as proven by its certificate.
    pub fn node(&self) -> &str {
        self.principal.name()
    }

    /// Who the peer is, as proven by its certificate: a node or an operator.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The current round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Opens another stream (bulk data goes on several in parallel).
    pub async fn open(&self) -> Result<Channel, TransportError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(TransportError::connection)?;
        Ok(Channel { send, recv })
    }

    /// Accepts a stream the peer opened.
    pub async fn accept(&self) -> Result<Channel, TransportError> {
        let (send, recv) = self
            .conn
            .accept_bi()
            .await
            .map_err(TransportError::connection)?;
        Ok(Channel { send, recv })
    }

    /// Closes the connection with a reason the peer sees.
    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    /// Waits until the connection is closed (by either side or by the idle timeout).
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }
}

/// This agent's QUIC endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Arc<Identity>,
    counters: Arc<Counters>,
    acceptor: Arc<Acceptor>,
}

/// Flow-control window of one stream, bytes: a state round is one stream, and it must cover
/// the path's bandwidth times its RTT *under load* (a shaped link's queue adds tens of
/// milliseconds: 1 Gbit/s x 20 ms is 2.5 MB, above quinn's default of 1.25 MB, which then
/// caps a round below the link's rate).
const STREAM_WINDOW: u32 = 8 << 20;
/// Flow-control window of a connection (all its streams), and what a sender may buffer.
const CONNECTION_WINDOW: u32 = 16 << 20;

/// The QUIC transport settings of every endpoint: keep-alives, the idle timeout, and
/// flow-control windows sized for bulk state.
fn transport_config() -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(STREAM_WINDOW.into());
    transport.receive_window(CONNECTION_WINDOW.into());
    transport.send_window(u64::from(CONNECTION_WINDOW));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|e: quinn::VarIntBoundsExceeded| TransportError::Tls(e.to_string()))?,
    ));
    Ok(Arc::new(transport))
}

impl Endpoint {
    /// Binds `addr` (UDP) as both server and client with `identity`.
    pub fn bind(addr: SocketAddr, identity: Identity) -> Result<Endpoint, TransportError> {
        Endpoint::bind_with_limits(addr, identity, AcceptLimits::default())
    }

    /// [`Endpoint::bind`] with other bounds on incoming connections.
    pub fn bind_with_limits(
        addr: SocketAddr,
        identity: Identity,
        limits: AcceptLimits,
    ) -> Result<Endpoint, TransportError> {
        let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let transport = transport_config()?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let mut inner =
            quinn::Endpoint::server(server, addr).map_err(|e| TransportError::Bind {
                addr,
                reason: e.to_string(),
            })?;
        inner.set_default_client_config(client);
        Ok(Endpoint {
            inner,
            identity: Arc::new(identity),
            counters: Arc::default(),
            acceptor: Arc::new(Acceptor::new(limits)),
        })
    }

    /// Binds `addr` (UDP, usually port 0) as a client only, with `identity`: what a command
    /// such as `godwit migrate` needs to call an agent. It accepts nothing, so an operator's
    /// identity (client authentication only) does for it.
    pub fn client(addr: SocketAddr, identity: Identity) -> Result<Endpoint, TransportError> {
        let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport_config()?);
        let mut inner = quinn::Endpoint::client(addr).map_err(|e| TransportError::Bind {
            addr,
            reason: e.to_string(),
        })?;
        inner.set_default_client_config(client);
        Ok(Endpoint {
            inner,
            identity: Arc::new(identity),
            counters: Arc::default(),
            acceptor: Arc::new(Acceptor::new(AcceptLimits::default())),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.local_addr().map_err(TransportError::connection)
    }

    /// This endpoint's node name.
    pub fn node(&self) -> &str {
        self.identity.node()
    }

    /// Connection counts.
    pub fn stats(&self) -> TransportStats {
        let c = &self.counters;
        TransportStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            refused_in: c.refused_in.load(Ordering::Relaxed),
            refused_out: c.refused_out.load(Ordering::Relaxed),
            refused_limit: c.refused_limit.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
        }
    }

    /// Connects to `node` at `addr`; refused unless the server proves to be that node.
    pub async fn connect(&self, addr: SocketAddr, node: &str) -> Result<Peer, TransportError> {
        let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.try_connect(addr, node))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Connect {
                    node: node.to_string(),
                    addr,
                    reason: format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                })
            });
        match &result {
            Ok(_) => {
                self.counters.connected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.refused_out.fetch_add(1, Ordering::Relaxed);
                warn!(peer = node, %addr, error = %e, "connection to peer failed");
            }
        }
        result
    }

    async fn try_connect(&self, addr: SocketAddr, node: &str) -> Result<Peer, TransportError> {
        let fail = |reason: String| TransportError::Connect {
            node: node.to_string(),
            addr,
            reason,
        };
        let conn = self
            .inner
            .connect(addr, &node_dns_name(node))
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (send, recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
        let mut control = Channel { send, recv };
        let hello = match self.identity.principal() {
            Principal::Node(n) => Handshake::Hello { node: n.clone() },
            Principal::Operator(n) => Handshake::HelloOperator { name: n.clone() },
        };
        control
            .send(&hello)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match control.recv_limited::<Handshake>(MAX_HANDSHAKE_FRAME).await {
            Ok(Some(Handshake::Welcome { node: theirs })) if theirs == node => Ok(Peer {
                conn,
                principal: Principal::Node(theirs),
                control,
                _slot: None,
            }),
            Ok(Some(Handshake::Welcome { node: theirs })) => {
                conn.close(1u32.into(), b"wrong node");
                Err(fail(format!("the server says it is {theirs}")))
            }
            Ok(Some(Handshake::Refused { reason })) => Err(TransportError::Refused(reason)),
            Ok(other) => Err(fail(format!("unexpected handshake reply {other:?}"))),
            Err(e) => Err(fail(match conn.close_reason() {
                Some(reason) => reason.to_string(),
                None => e.to_string(),
            })),
        }
    }

    /// Waits for the next peer that completes the handshake. Refused connections are counted
    /// and skipped. `None` once the endpoint is closed.
    ///
    /// Cancel-safe: handshakes run on the endpoint's tasks, and a peer they complete waits for
    /// the next call.
    pub async fn accept(&self) -> Option<Peer> {
        let acceptor = &self.acceptor;
        let mut done = acceptor.done_rx.lock().await;
        loop {
            tokio::select! {
                biased;
                Some(peer) = done.recv() => return Some(peer),
                incoming = self.inner.accept() => match incoming {
                    Some(incoming) => self.admit(incoming),
                    None => return done.try_recv().ok(),
                },
            }
            let mut tasks = acceptor.tasks.lock().unwrap_or_else(|e| e.into_inner());
            while tasks.try_join_next().is_some() {}
        }
    }

    /// Validates the address of a new connection (Retry), holds it against the caps, and
    /// starts its handshake on a task of its own.
    fn admit(&self, incoming: quinn::Incoming) {
        let addr = incoming.remote_address();
        if !incoming.remote_address_validated() && incoming.may_retry() {
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                debug!(%addr, error = %e, "cannot send a retry");
            }
            return;
        }
        let acceptor = &self.acceptor;
        let Some(slot) = Slot::take(&acceptor.slots, addr.ip(), &acceptor.limits) else {
            self.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
            warn!(
                %addr,
                per_peer = acceptor.limits.per_peer,
                total = acceptor.limits.total,
                "refused a connection: over the connection caps"
            );
            incoming.refuse();
            return;
        };
        let endpoint = self.clone();
        let handshakes = acceptor.handshakes.clone();
        let done = acceptor.done_tx.clone();
        let handshake = async move {
            let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let _permit = handshakes
                    .acquire_owned()
                    .await
                    .map_err(|_| TransportError::Refused("the endpoint is closing".into()))?;
                endpoint.handshake(incoming, slot).await
            })
            .await;
            match result {
                Ok(Ok(peer)) => {
                    endpoint.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    debug!(peer = peer.node(), %addr, "peer connected");
                    // No receiver: the endpoint is gone, and the peer with it.
                    let _ = done.send(peer);
                }
                Ok(Err(e)) => {
                    endpoint.counters.refused_in.fetch_add(1, Ordering::Relaxed);
                    warn!(%addr, error = %e, "refused a peer");
                }
                Err(_) => {
                    endpoint.counters.refused_in.fetch_add(1, Ordering::Relaxed);
                    warn!(%addr, "refused a peer: no handshake within {HANDSHAKE_TIMEOUT:?}");
                }
            }
        };
        acceptor
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(handshake);
    }

    async fn handshake(
        &self,
        incoming: quinn::Incoming,
        slot: Slot,
    ) -> Result<Peer, TransportError> {
        let conn = incoming
            .await
            .map_err(|e| TransportError::Refused(e.to_string()))?;
        let (send, recv) = conn.accept_bi().await.map_err(TransportError::connection)?;
        let mut control = Channel { send, recv };
        let principal = match control
            .recv_limited::<Handshake>(MAX_HANDSHAKE_FRAME)
            .await?
        {
            Some(Handshake::Hello { node }) => Principal::Node(node),
            Some(Handshake::HelloOperator { name }) => Principal::Operator(name),
            other => {
                return Err(TransportError::Refused(format!(
                    "expected a hello, got {other:?}"
                )))
            }
        };
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| TransportError::Refused("no client certificate".into()))?;
        if let Err(e) = self.identity.verify_principal(&principal, &chain) {
            let reason = e.to_string();
            let _ = control
                .send(&Handshake::Refused {
                    reason: reason.clone(),
                })
                .await;
            let _ = control.finish();
            // Let the refusal reach the client before the connection goes.
            let _ = tokio::time::timeout(Duration::from_millis(500), control.send.stopped()).await;
            conn.close(1u32.into(), b"refused");
            return Err(e);
        }
        control
            .send(&Handshake::Welcome {
                node: self.identity.node().to_string(),
            })
            .await?;
        Ok(Peer {
            conn,
            principal,
            control,
            _slot: Some(slot),
        })
    }

    /// Closes every connection and the socket, and stops the handshakes in progress.
    pub fn close(&self) {
        self.inner.close(0u32.into(), b"shutdown");
        self.acceptor.handshakes.close();
        self.acceptor
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }

    /// Raw access for tests: a QUIC connection that never says hello.
    #[cfg(test)]
    pub(crate) async fn connect_silent(
        &self,
        addr: SocketAddr,
        node: &str,
    ) -> Result<quinn::Connection, TransportError> {
        self.inner
            .connect(addr, &node_dns_name(node))
            .map_err(TransportError::connection)?
            .await
            .map_err(TransportError::connection)
    }
}
