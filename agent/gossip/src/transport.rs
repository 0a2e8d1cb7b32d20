//! chitchat transports: the sealed UDP transport, and the clear-text one for `insecure`.
//!
//! chitchat 0.13 hands its transport whole messages (`ChitchatEnvelope`) and keeps their
//! encoding private. To seal the exact bytes chitchat would send, each sealed socket owns a
//! private codec: a chitchat `UdpSocket` and a tap socket, both on 127.0.0.1. Sending, chitchat's
//! socket encodes the message to the tap, which seals the bytes and sends them from the public
//! socket. Receiving, the opened bytes go from the tap to chitchat's socket, which decodes them,
//! followed by a marker datagram (an encoded `BadCluster` message) so that a payload chitchat
//! rejects cannot shift the pairing of datagrams and senders.
//!
//! The codec and the tap are connected to each other, so the kernel drops any datagram another
//! local process sends to either: nothing unauthenticated is ever handed to chitchat, and a
//! flood of local junk cannot fill the codec's receive buffer and make it drop a marker. Should a
//! payload or its marker still go missing, a half-received datagram is given up after
//! [`CODEC_TIMEOUT`] and receiving goes on.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use anyhow::Context as _;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tracing::{debug, warn};

use super::fragment::{self, Reassembly, MAX_DATAGRAM};
use super::seal::{
    now_ms, Keyring, Opener, Rejection, SealCounters, Sealer, FLAG_FRAGMENT, HEADER_LEN,
};

/// How long a payload handed to the codec may take to come back decoded (with its marker)
/// before it is given up. Over loopback it takes microseconds.
pub(crate) const CODEC_TIMEOUT: Duration = Duration::from_secs(1);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A small deterministic generator for injected loss (tests and benchmarks only).
#[derive(Debug, Clone)]
pub(crate) struct Loss {
    probability: f64,
    state: u64,
}

impl Loss {
    pub(crate) fn new(probability: f64, seed: u64) -> Loss {
        Loss {
            probability: probability.clamp(0.0, 1.0),
            state: seed | 1,
        }
    }

    fn drop_next(&mut self) -> bool {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < self.probability
    }
}

/// How datagrams are sealed.
pub(crate) struct Sealing {
    pub(crate) keyring: Keyring,
    pub(crate) cluster_id: String,
    pub(crate) max_skew_ms: Option<u64>,
}

/// Where sealed datagrams travel: a UDP socket, or a simulated network (feature `sim`).
pub(crate) enum Wire {
    Udp(std::net::UdpSocket),
    #[cfg(any(test, feature = "sim"))]
    Sim(crate::sim::SimPort),
}

/// The public side of a gossip socket, registered with the runtime.
enum Public {
    Udp(tokio::net::UdpSocket),
    #[cfg(any(test, feature = "sim"))]
    Sim(crate::sim::SimPort),
}

impl Public {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Public::Udp(socket) => socket.recv_from(buf).await,
            #[cfg(any(test, feature = "sim"))]
            Public::Sim(port) => Ok(port.recv_from(buf).await),
        }
    }

    async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        match self {
            Public::Udp(socket) => socket.send_to(datagram, to).await,
            #[cfg(any(test, feature = "sim"))]
            Public::Sim(port) => Ok(port.send_to(datagram, to)),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Public::Udp(socket) => socket.local_addr(),
            #[cfg(any(test, feature = "sim"))]
            Public::Sim(port) => Ok(port.local_addr()),
        }
    }

    /// The wall clock seals are stamped with and checked against (the network's own clock
    /// when simulated).
    fn now_ms(&self) -> u64 {
        match self {
            Public::Udp(_) => now_ms(),
            #[cfg(any(test, feature = "sim"))]
            Public::Sim(port) => port.now_ms(),
        }
    }
}

/// chitchat's transport: UDP on a socket bound beforehand (so that port 0 works and the
/// advertised address is known before chitchat starts), sealed unless `sealing` is `None`.
pub(crate) struct GossipTransport {
    pub(crate) socket: StdMutex<Option<Wire>>,
    pub(crate) sealing: Option<Sealing>,
    pub(crate) counters: Arc<SealCounters>,
    pub(crate) loss: Option<Loss>,
}

impl Transport for GossipTransport {
    fn open<'life0, 'async_trait>(
        &'life0 self,
        listen_addr: SocketAddr,
    ) -> BoxFuture<'async_trait, anyhow::Result<Box<dyn Socket>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let socket = GossipSocket::open(self, listen_addr).await?;
            Ok(Box::new(socket) as Box<dyn Socket>)
        })
    }
}

enum RecvState {
    /// Waiting for a datagram on the public socket.
    Idle,
    /// An opened payload and the marker were handed to the codec (until `deadline`).
    AwaitingEnvelope {
        from: SocketAddr,
        len: usize,
        deadline: tokio::time::Instant,
    },
    /// The payload decoded; the marker that follows it is still queued (until `deadline`).
    AwaitingMarker(RecvOutcome, tokio::time::Instant),
}

struct GossipSocket {
    public: Public,
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    codec: chitchat::transport::UdpSocket,
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    marker: Vec<u8>,
    counters: Arc<SealCounters>,
    loss: Option<Loss>,
    buf: Vec<u8>,
    sealed: Vec<u8>,
    state: RecvState,
    /// Pieces of datagrams too large to seal whole, until each is complete.
    reassembly: Reassembly,
    /// The id of the next datagram sent in pieces.
    next_piece_id: u32,
}

fn is_bad_cluster(envelope: &ChitchatEnvelope) -> bool {
    matches!(envelope.message, ChitchatMessage::BadCluster)
}

impl GossipSocket {
    async fn open(transport: &GossipTransport, listen_addr: SocketAddr) -> anyhow::Result<Self> {
        let prebound = transport
            .socket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let public = match prebound {
            Some(Wire::Udp(socket)) => Public::Udp(
                tokio::net::UdpSocket::from_std(socket)
                    .context("failed to register the gossip socket")?,
            ),
            #[cfg(any(test, feature = "sim"))]
            Some(Wire::Sim(port)) => Public::Sim(port),
            None => Public::Udp(
                tokio::net::UdpSocket::bind(listen_addr)
                    .await
                    .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?,
            ),
        };
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut codec = chitchat::transport::UdpSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("failed to bind the gossip codec tap")?;
        let tap_addr = tap.local_addr()?;
        tap.connect(codec_addr)
            .await
            .context("failed to connect the gossip codec tap")?;
        connect_codec(codec_addr, tap_addr).context("failed to connect the gossip codec")?;
        if let Ok(mut codec) = transport.counters.codec.lock() {
            *codec = Some((codec_addr, tap_addr));
        }
        let mut socket = GossipSocket {
            public,
            tap,
            tap_addr,
            marker: Vec::new(),
            sealer: transport
                .sealing
                .as_ref()
                .map(|s| Sealer::new(s.keyring.clone(), &s.cluster_id)),
            opener: transport
                .sealing
                .as_ref()
                .map(|s| Opener::new(s.keyring.clone(), &s.cluster_id, s.max_skew_ms)),
            counters: transport.counters.clone(),
            loss: transport.loss.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            state: RecvState::Idle,
            reassembly: Reassembly::default(),
            next_piece_id: 0,
            codec: {
                let marker = ChitchatEnvelope {
                    version: ProtocolVersion::V0,
                    message: ChitchatMessage::BadCluster,
                };
                codec.send(tap_addr, marker).await?;
                codec
            },
        };
        let len = socket.read_tap().await?;
        socket.marker = socket.buf[..len].to_vec();
        // And back: the codec decodes the marker from the tap. This checks the pairing both ways
        // before any peer's datagram depends on it, and leaves all four directions known ready
        // to the runtime, so that later hand-overs, each of which follows a write that already
        // queued its datagram, complete without waiting for the reactor (on a paused clock,
        // waiting for the reactor would let virtual time jump: see `sim.rs`).
        socket
            .tap
            .send(&socket.marker)
            .await
            .context("failed to send through the gossip codec tap")?;
        let deadline = tokio::time::Instant::now() + CODEC_TIMEOUT;
        match socket.read_codec(deadline).await? {
            Some(envelope) if is_bad_cluster(&envelope) => Ok(socket),
            _ => anyhow::bail!("the gossip codec did not decode its own marker"),
        }
    }

    /// Sends the `len` bytes in `buf`, too large to seal whole, as sealed pieces (see
    /// `fragment.rs`). Loss applies to each piece, as on a real network.
    async fn send_in_pieces(&mut self, len: usize, to: SocketAddr) -> anyhow::Result<SendOutcome> {
        let id = self.next_piece_id;
        self.next_piece_id = self.next_piece_id.wrapping_add(1);
        let Some(pieces) = fragment::pieces(&self.buf[..len], id) else {
            anyhow::bail!("gossip datagram of {len} bytes is too large even in pieces");
        };
        let mut num_bytes_sent = 0;
        for piece in pieces {
            let Some(sealer) = self.sealer.as_mut() else {
                anyhow::bail!("pieces are only sent sealed");
            };
            sealer.seal_flagged(
                &piece,
                self.public.now_ms(),
                FLAG_FRAGMENT,
                &mut self.sealed,
            );
            if self.sealed.is_empty() {
                anyhow::bail!("gossip datagram could not be sealed");
            }
            num_bytes_sent += self.sealed.len();
            if self.loss.as_mut().is_some_and(|l| l.drop_next()) {
                continue;
            }
            self.public
                .send_to(&self.sealed, to)
                .await
                .context("failed to send a gossip datagram piece")?;
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_sent
                .fetch_add(self.sealed.len() as u64, Ordering::Relaxed);
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Reads the next datagram the codec sent to the tap into `buf` (the tap is connected to
    /// the codec: the kernel delivers nothing else).
    async fn read_tap(&mut self) -> anyhow::Result<usize> {
        self.tap
            .recv(&mut self.buf)
            .await
            .context("gossip codec tap failed")
    }

    /// A plaintext that is a `BadCluster` message, which is what the marker encodes.
    fn as_bad_cluster(&self, plaintext: &[u8]) -> Option<ChitchatEnvelope> {
        let marker = &self.marker;
        if plaintext.len() == marker.len()
            && plaintext.len() == 4
            && plaintext[..2] == marker[..2]
            && plaintext[3] == marker[3]
        {
            let version = ProtocolVersion::from_code(plaintext[2])?;
            return Some(ChitchatEnvelope {
                version,
                message: ChitchatMessage::BadCluster,
            });
        }
        None
    }

    /// Receives one datagram on the public socket and, if it opens, hands it to the codec.
    /// Returns a message at once when no decoding is needed.
    async fn receive_public(&mut self) -> anyhow::Result<Option<RecvOutcome>> {
        let (len, from) = match self.public.recv_from(&mut self.buf).await {
            Ok(received) => received,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::OutOfMemory
                ) =>
            {
                warn!(error = %err, "transient gossip recv error");
                return Ok(None);
            }
            Err(err) => return Err(err).context("fatal gossip recv error"),
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_received
            .fetch_add(len as u64, Ordering::Relaxed);
        let opened = match self.opener.as_mut() {
            Some(opener) => opener
                .open(&mut self.buf[..len], self.public.now_ms())
                .map(|n| HEADER_LEN..HEADER_LEN + n),
            None => Ok(0..len),
        };
        let plaintext_range = match opened {
            Ok(range) => range,
            Err(rejection) => {
                self.counters.count(rejection);
                match rejection {
                    Rejection::BadKey => {
                        debug!(from = %from, "dropped gossip datagram sealed with an unknown key")
                    }
                    Rejection::Stale => {
                        debug!(from = %from, "dropped stale gossip datagram: replay or clock skew")
                    }
                    _ => debug!(from = %from, reason = ?rejection, "dropped gossip datagram"),
                }
                return Ok(None);
            }
        };
        // A piece of a datagram sealed in pieces: kept until the datagram is whole.
        let whole = if self.opener.is_some() && self.buf[3] & FLAG_FRAGMENT != 0 {
            let session = u64::from_be_bytes(self.buf[8..16].try_into().expect("8 bytes"));
            let now = self.public.now_ms();
            match self
                .reassembly
                .push(session, &self.buf[plaintext_range.clone()], now)
            {
                Ok(Some(whole)) => Some(whole),
                Ok(None) => return Ok(None),
                Err(bad) => {
                    debug!(from = %from, reason = ?bad, "dropped a gossip datagram piece");
                    return Ok(None);
                }
            }
        } else {
            None
        };
        let plaintext = match &whole {
            Some(w) => &w[..],
            None => &self.buf[plaintext_range],
        };
        if let Some(envelope) = self.as_bad_cluster(plaintext) {
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(RecvOutcome {
                from_addr: from,
                envelope,
                num_bytes_received: len,
            }));
        }
        // Non-blocking sends: no await between them, so a cancelled recv cannot leave the
        // codec with a payload and no marker.
        let handed = self
            .tap
            .try_send(plaintext)
            .and_then(|_| self.tap.try_send(&self.marker));
        match handed {
            Ok(_) => {
                self.state = RecvState::AwaitingEnvelope {
                    from,
                    len,
                    deadline: tokio::time::Instant::now() + CODEC_TIMEOUT,
                };
                Ok(None)
            }
            Err(err) => {
                // A full loopback buffer: chitchat tolerates loss, the payload is dropped.
                warn!(error = %err, "gossip codec busy, dropping a datagram");
                Ok(None)
            }
        }
    }

    /// Reads the codec's next message, ignoring anything that did not come from our tap; `None`
    /// when nothing came by `deadline`.
    async fn read_codec(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<ChitchatEnvelope>> {
        loop {
            let outcome = match tokio::time::timeout_at(deadline, self.codec.recv()).await {
                Ok(outcome) => outcome?,
                Err(_) => return Ok(None),
            };
            if outcome.from_addr == self.tap_addr {
                return Ok(Some(outcome.envelope));
            }
            debug!(from = %outcome.from_addr, "ignoring a stray datagram on the gossip codec");
        }
    }

    /// Gives up a half-received datagram: the codec lost its payload or marker.
    fn reset(&mut self) {
        self.state = RecvState::Idle;
        self.counters.codec_resets.fetch_add(1, Ordering::Relaxed);
        warn!("gossip codec did not return a datagram in time: dropped it");
    }
}

impl Socket for GossipSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get the gossip socket address")
    }

    fn send<'life0, 'async_trait>(
        &'life0 mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> BoxFuture<'async_trait, anyhow::Result<SendOutcome>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let tap_addr = self.tap_addr;
            self.codec.send(tap_addr, envelope).await?;
            let len = self.read_tap().await?;
            if self.sealer.is_some() && fragment::needs_pieces(&self.buf[..len]) {
                return self.send_in_pieces(len, to).await;
            }
            let datagram = match self.sealer.as_mut() {
                Some(sealer) => {
                    sealer.seal(&self.buf[..len], self.public.now_ms(), &mut self.sealed);
                    if self.sealed.is_empty() {
                        anyhow::bail!("gossip datagram could not be sealed");
                    }
                    &self.sealed[..]
                }
                None => &self.buf[..len],
            };
            let num_bytes_sent = datagram.len();
            if let Some(loss) = self.loss.as_mut() {
                if loss.drop_next() {
                    return Ok(SendOutcome { num_bytes_sent });
                }
            }
            self.public
                .send_to(datagram, to)
                .await
                .context("failed to send a gossip datagram")?;
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_sent
                .fetch_add(num_bytes_sent as u64, Ordering::Relaxed);
            Ok(SendOutcome { num_bytes_sent })
        })
    }

    /// Cancel-safe: chitchat polls it in a `select!`; the progress is kept in `self.state`.
    fn recv<'life0, 'async_trait>(
        &'life0 mut self,
    ) -> BoxFuture<'async_trait, anyhow::Result<RecvOutcome>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            loop {
                match std::mem::replace(&mut self.state, RecvState::Idle) {
                    RecvState::Idle => {
                        if let Some(outcome) = self.receive_public().await? {
                            return Ok(outcome);
                        }
                    }
                    RecvState::AwaitingEnvelope {
                        from,
                        len,
                        deadline,
                    } => {
                        self.state = RecvState::AwaitingEnvelope {
                            from,
                            len,
                            deadline,
                        };
                        let Some(envelope) = self.read_codec(deadline).await? else {
                            self.reset();
                            continue;
                        };
                        if is_bad_cluster(&envelope) {
                            // The marker came first: chitchat could not decode the payload.
                            self.counters.count(Rejection::Malformed);
                            debug!(from = %from, "dropped an authentic but undecodable gossip payload");
                            self.state = RecvState::Idle;
                        } else {
                            self.state = RecvState::AwaitingMarker(
                                RecvOutcome {
                                    from_addr: from,
                                    envelope,
                                    num_bytes_received: len,
                                },
                                deadline,
                            );
                        }
                    }
                    RecvState::AwaitingMarker(outcome, deadline) => {
                        self.state = RecvState::AwaitingMarker(outcome, deadline);
                        let Some(envelope) = self.read_codec(deadline).await? else {
                            self.reset();
                            continue;
                        };
                        if is_bad_cluster(&envelope) {
                            if let RecvState::AwaitingMarker(outcome, _) =
                                std::mem::replace(&mut self.state, RecvState::Idle)
                            {
                                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                                return Ok(outcome);
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Connects the codec's socket to the tap, so the kernel delivers it nothing else.
///
/// chitchat keeps the codec's socket private, so its descriptor is found among this process's
/// open sockets by its bound address: a loopback UDP port is bound by one socket only (neither
/// chitchat nor this crate sets `SO_REUSEADDR` or `SO_REUSEPORT`), and the codec stays open
/// while this runs, so the match cannot be another socket. Exactly one match is required.
fn connect_codec(codec: SocketAddr, tap: SocketAddr) -> std::io::Result<()> {
    let (SocketAddr::V4(codec), SocketAddr::V4(tap)) = (codec, tap) else {
        return Err(std::io::Error::other(
            "the gossip codec is not on IPv4 loopback",
        ));
    };
    let to_raw = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let want = to_raw(codec);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        let mut addr: libc::sockaddr_in = to_raw(std::net::SocketAddrV4::new(0.into(), 0));
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut kind: libc::c_int = 0;
        let mut kind_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockname and getsockopt write at most `len` / `kind_len` bytes into the
        // locals passed; on a descriptor that is not a socket (or was closed meanwhile) they
        // fail with an error and write nothing.
        let ok = unsafe {
            libc::getsockname(fd, (&raw mut addr).cast(), &mut len) == 0
                && libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&raw mut kind).cast(),
                    &mut kind_len,
                ) == 0
        };
        if ok
            && kind == libc::SOCK_DGRAM
            && len as usize == std::mem::size_of::<libc::sockaddr_in>()
            && addr.sin_family == want.sin_family
            && addr.sin_port == want.sin_port
            && addr.sin_addr.s_addr == want.sin_addr.s_addr
        {
            found.push(fd);
        }
    }
    let [fd] = found[..] else {
        return Err(std::io::Error::other(format!(
            "expected one socket bound to {codec}, found {}",
            found.len()
        )));
    };
    let peer = to_raw(tap);
    // SAFETY: `fd` is the codec's socket, open for as long as the codec is (see above);
    // `peer` is a valid sockaddr_in of the length passed. Connecting a UDP socket changes which
    // datagrams it receives and nothing of its registration with the runtime.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const peer).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
