//! A simulated network for the real gossip code, on tokio's clock (feature `sim`).
//!
//! [`SimNetwork`] replaces only the public UDP socket of the sealed transport: a [`Cluster`]
//! started with [`Network::Sim`] runs the same chitchat server, codec, sealing, replay window
//! and view as one on UDP, but its sealed datagrams travel through an in-process network with a
//! one-way delay, jitter and loss ([`Link`]). Delivery is scheduled on `tokio::time`, so under a
//! paused clock ([`runtime`], or `#[tokio::test(start_paused = true)]`) hundreds of nodes run on
//! virtual time: the clock jumps to the next timer (a gossip round, a delivery) whenever every
//! task waits, and nothing depends on how fast the host is. Memory, not time, bounds the size:
//! every node holds the state of every other (about 16 KiB per pair of nodes with chitchat
//! 0.13 and a 100-sample failure detector window), so 1,000 nodes take about 16 GiB.
//!
//! What virtual time drives, and what it does not:
//!
//! - chitchat 0.13 reads `tokio::time::Instant` (failure detector, heartbeats, deletion grace)
//!   and ticks with `tokio::time::interval`; the view and the codec deadline use tokio's clock
//!   too. All of them follow the paused clock.
//! - Sealing stamps each datagram with a wall-clock time (`SystemTime`), which a paused runtime
//!   does not move. On this network the stamp is [`SimNetwork::now_ms`] instead: the wall time
//!   when the network was made plus the virtual time since, so the skew check sees simulated
//!   delays as a real receiver would.
//! - The codec (chitchat's own encoder and decoder behind two loopback sockets, see
//!   `transport.rs`) still makes real system calls. Each of its reads follows a write that
//!   already queued the datagram, so it completes without waiting for the reactor, and virtual
//!   time does not pass during it.
//! - chitchat draws its gossip peers from an OS-seeded generator, so two runs do not gossip in
//!   the same order: the timings are those of one random run, not a replay. Loss and jitter
//!   come from this network's seeded generator.
//!
//! [`Cluster`]: crate::Cluster
//! [`Network::Sim`]: crate::Network::Sim

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The behaviour of every path of a [`SimNetwork`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way delay of every datagram.
    pub delay: Duration,
    /// Extra delay drawn uniformly in `0..=jitter` per datagram (datagrams may be reordered).
    pub jitter: Duration,
    /// Probability, 0..=1, that a datagram is lost.
    pub loss: f64,
}

impl Default for Link {
    /// A LAN: 0.5 ms one way, 0.1 ms of jitter, no loss.
    fn default() -> Self {
        Link {
            delay: Duration::from_micros(500),
            jitter: Duration::from_micros(100),
            loss: 0.0,
        }
    }
}

/// What the network carried since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Datagrams lost on the link.
    pub lost: u64,
    /// Datagrams sent to an address no node is bound to (e.g. a stopped node).
    pub unreachable: u64,
    /// Datagrams queued for delivery to a bound node.
    pub delivered: u64,
}

/// An in-process datagram network on tokio's clock. Cheap to clone (all clones are one network).
#[derive(Clone)]
pub struct SimNetwork {
    inner: Arc<Mutex<Inner>>,
    epoch_ms: u64,
    start: Instant,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("SimNetwork")
            .field("link", &inner.link)
            .field("ports", &inner.ports.len())
            .field("stats", &inner.stats)
            .finish()
    }
}

struct Inner {
    link: Link,
    ports: HashMap<SocketAddr, Arc<Mailbox>>,
    rng: SplitMix64,
    seq: u64,
    stats: SimStats,
}

impl SimNetwork {
    /// A network whose paths all behave as `link`; `seed` drives loss and jitter. Make it
    /// inside the runtime that runs the nodes (its clock is the network's).
    pub fn new(link: Link, seed: u64) -> SimNetwork {
        SimNetwork {
            inner: Arc::new(Mutex::new(Inner {
                link,
                ports: HashMap::new(),
                rng: SplitMix64(seed),
                seq: 0,
                stats: SimStats::default(),
            })),
            epoch_ms: crate::seal::now_ms(),
            start: Instant::now(),
        }
    }

    /// Changes every path from now on (datagrams already in flight keep their delivery time).
    pub fn set_link(&self, link: Link) {
        self.lock().link = link;
    }

    /// The current link.
    pub fn link(&self) -> Link {
        self.lock().link
    }

    /// Counters since the network was made.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Milliseconds since the Unix epoch on this network's clock: the wall time when it was
    /// made plus tokio's (virtual) time since. Seals are stamped with it.
    pub fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        self.epoch_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `addr` on this network; port 0 picks the lowest free port from 10000 up.
    pub(crate) fn bind(&self, mut addr: SocketAddr) -> io::Result<SimPort> {
        let mut inner = self.lock();
        if addr.port() == 0 {
            let port = (10_000..=u16::MAX)
                .find(|&p| !inner.ports.contains_key(&SocketAddr::new(addr.ip(), p)))
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::AddrInUse, "no free simulated port")
                })?;
            addr.set_port(port);
        }
        if addr.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "a simulated node needs a specific address",
            ));
        }
        if inner.ports.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already bound on the simulated network"),
            ));
        }
        let mailbox = Arc::new(Mailbox::default());
        inner.ports.insert(addr, mailbox.clone());
        Ok(SimPort {
            addr,
            net: self.clone(),
            mailbox,
        })
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.stats.sent += 1;
        inner.stats.bytes_sent += bytes.len() as u64;
        let link = inner.link;
        if link.loss > 0.0 && inner.rng.unit() < link.loss {
            inner.stats.lost += 1;
            return;
        }
        let Some(mailbox) = inner.ports.get(&to).cloned() else {
            inner.stats.unreachable += 1;
            return;
        };
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(inner.rng.unit())
        };
        inner.seq += 1;
        inner.stats.delivered += 1;
        let datagram = Datagram {
            at: now + link.delay + jitter,
            seq: inner.seq,
            from,
            bytes: bytes.to_vec(),
        };
        drop(inner);
        mailbox
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse(datagram));
        mailbox.notify.notify_one();
    }
}

/// A node's address on a [`SimNetwork`]; unbound when dropped.
pub(crate) struct SimPort {
    addr: SocketAddr,
    net: SimNetwork,
    mailbox: Arc<Mailbox>,
}

impl SimPort {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.net.now_ms()
    }

    /// Sends a datagram (never blocks; lost or unreachable datagrams vanish, as on UDP).
    pub(crate) fn send_to(&self, bytes: &[u8], to: SocketAddr) -> usize {
        self.net.send(self.addr, to, bytes);
        bytes.len()
    }

    /// Receives the next datagram whose delivery time has come. Cancel-safe: a datagram stays
    /// queued until it is returned.
    pub(crate) async fn recv_from(&self, buf: &mut [u8]) -> (usize, SocketAddr) {
        loop {
            let next = {
                let mut queue = self.mailbox.queue.lock().unwrap_or_else(|e| e.into_inner());
                match queue.peek() {
                    Some(Reverse(d)) if d.at <= Instant::now() => {
                        let Some(Reverse(d)) = queue.pop() else {
                            unreachable!("peeked")
                        };
                        let len = d.bytes.len().min(buf.len());
                        buf[..len].copy_from_slice(&d.bytes[..len]);
                        return (len, d.from);
                    }
                    Some(Reverse(d)) => Some(d.at),
                    None => None,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.mailbox.notify.notified() => {}
                    }
                }
                None => self.mailbox.notify.notified().await,
            }
        }
    }
}

impl Drop for SimPort {
    fn drop(&mut self) {
        let mut inner = self.net.lock();
        if inner
            .ports
            .get(&self.addr)
            .is_some_and(|m| Arc::ptr_eq(m, &self.mailbox))
        {
            inner.ports.remove(&self.addr);
        }
    }
}

#[derive(Default)]
struct Mailbox {
    queue: Mutex<BinaryHeap<Reverse<Datagram>>>,
    notify: Notify,
}

struct Datagram {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Datagram {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Datagram {}

impl PartialOrd for Datagram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Datagram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// SplitMix64: small, seeded, good enough for loss and jitter.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A current-thread runtime whose clock starts paused: run simulated nodes on it.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_after_the_delay_and_counts_loss() {
        let net = SimNetwork::new(
            Link {
                delay: Duration::from_millis(20),
                jitter: Duration::ZERO,
                loss: 0.0,
            },
            7,
        );
        let a = net.bind(addr("198.18.0.1:0")).unwrap();
        let b = net.bind(addr("198.18.0.2:7000")).unwrap();
        assert_eq!(a.local_addr(), addr("198.18.0.1:10000"));
        assert!(net.bind(addr("198.18.0.2:7000")).is_err());
        let t0 = Instant::now();
        a.send_to(b"hello", b.local_addr());
        let mut buf = [0u8; 16];
        let (n, from) = b.recv_from(&mut buf).await;
        assert_eq!((&buf[..n], from), (&b"hello"[..], a.local_addr()));
        assert_eq!(t0.elapsed(), Duration::from_millis(20));
        assert_eq!(net.now_ms() - net.epoch_ms, 20);

        // A stopped node is unreachable; a lossy link drops about its share.
        let gone = b.local_addr();
        drop(b);
        a.send_to(b"x", gone);
        assert_eq!(net.stats().unreachable, 1);
        net.set_link(Link {
            loss: 0.25,
            ..net.link()
        });
        let c = net.bind(addr("198.18.0.3:1")).unwrap();
        for _ in 0..4000 {
            a.send_to(b"y", c.local_addr());
        }
        let lost = net.stats().lost;
        assert!((800..1200).contains(&lost), "lost {lost} of 4000 at 25%");
    }
}
