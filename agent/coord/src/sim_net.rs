//! The simulated network the coordinator's simulations run real [`Coordinator`]s over
//! (`sim_tests.rs`: seeded fault schedules; `sim_size.rs`: the group at hundreds of nodes).
//!
//! [`SimWire`] carries each call in-process on tokio's clock (paused in a simulation): a seeded
//! random one-way delay, a chance of loss, a cut link or a node that is down fails it, the
//! receiver's handler runs in its own task, and its answer crosses the network back the same
//! way. [`Net`] also counts what crosses it ([`Traffic`]) and when each node last sent (and
//! the receiver last got) a lease renewal, which the size benchmark reads.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::node::Coordinator;
use crate::rpc::{CoordReply, CoordRpc};
use crate::{Member, RaftReply, RaftRpc, Wire};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// splitmix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub(crate) fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
    pub(crate) fn pick<'a, T>(&mut self, of: &'a [T]) -> &'a T {
        &of[self.next() as usize % of.len()]
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) type Node = Coordinator<SimWire>;

/// Messages delivered, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// Raft messages (append entries and heartbeats, votes, snapshots).
    pub(crate) raft: u64,
    /// Lease renewals.
    pub(crate) renew: u64,
    /// Renewals answered with a lease.
    pub(crate) granted: u64,
    /// Writes forwarded to the leader.
    pub(crate) write: u64,
}

/// The network: who is up, which links are cut, how lossy and slow it is.
pub(crate) struct NetState {
    pub(crate) up: BTreeMap<String, Arc<Node>>,
    /// Cut links, each as (lower name, higher name).
    pub(crate) cut: BTreeSet<(String, String)>,
    /// Per mille of messages lost.
    pub(crate) loss: u64,
    /// One-way delay, up to this many microseconds.
    pub(crate) delay_us: u64,
    /// Nodes whose lease renewals are dropped.
    pub(crate) mute: BTreeSet<String>,
    pub(crate) rng: Rng,
    /// What each node sent (delivered to its receiver).
    pub(crate) sent: BTreeMap<String, Traffic>,
    /// What each node received.
    pub(crate) received: BTreeMap<String, Traffic>,
    /// When each node last sent a lease renewal.
    pub(crate) renewal_sent: BTreeMap<String, Instant>,
    /// When each node's last renewal was delivered (to the node it thought led).
    pub(crate) renewal_heard: BTreeMap<String, Instant>,
}

impl NetState {
    /// A network with no cut links and no loss, one-way delays up to `delay_us`.
    pub(crate) fn new(delay_us: u64, rng: Rng) -> NetState {
        NetState {
            up: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0,
            delay_us,
            mute: BTreeSet::new(),
            rng,
            sent: BTreeMap::new(),
            received: BTreeMap::new(),
            renewal_sent: BTreeMap::new(),
            renewal_heard: BTreeMap::new(),
        }
    }
}

pub(crate) struct Net(pub(crate) Mutex<NetState>);

pub(crate) fn link(a: &str, b: &str) -> (String, String) {
    if a < b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Raft,
    Renew,
    Write,
}

impl Net {
    /// One hop's delay, and whether the message survives it.
    fn hop(&self) -> (Duration, bool) {
        let mut s = lock(&self.0);
        let max = s.delay_us;
        let d = Duration::from_micros(s.rng.range(100, max));
        let loss = s.loss;
        (d, !s.rng.chance(loss))
    }

    fn connected(&self, a: &str, b: &str) -> bool {
        a == b || !lock(&self.0).cut.contains(&link(a, b))
    }

    fn target(&self, from: &str, to: &str) -> Option<Arc<Node>> {
        let s = lock(&self.0);
        if from != to && s.cut.contains(&link(from, to)) {
            return None;
        }
        s.up.get(to).cloned()
    }

    /// Counts a message `from` delivered to `to`.
    fn count(&self, from: &str, to: &str, kind: Kind) {
        let mut s = lock(&self.0);
        let count = |t: &mut Traffic| match kind {
            Kind::Raft => t.raft += 1,
            Kind::Renew => t.renew += 1,
            Kind::Write => t.write += 1,
        };
        count(s.sent.entry(from.to_string()).or_default());
        count(s.received.entry(to.to_string()).or_default());
        if matches!(kind, Kind::Renew) {
            s.renewal_heard.insert(from.to_string(), Instant::now());
        }
    }
}

/// One node's side of the network.
#[derive(Clone)]
pub(crate) struct SimWire {
    pub(crate) me: String,
    pub(crate) net: Arc<Net>,
}

impl SimWire {
    /// Carries a call to `to`, runs `handle` there in its own task (a receiver keeps working on
    /// a request whose sender gave up), and carries the answer back.
    async fn call<R, F, Fut>(&self, to: &str, kind: Kind, handle: F) -> Result<R, String>
    where
        R: Send + 'static,
        F: FnOnce(Arc<Node>, String) -> Fut,
        Fut: Future<Output = R> + Send + 'static,
    {
        let (d, delivered) = self.net.hop();
        sleep(d).await;
        let Some(node) = self.net.target(&self.me, to) else {
            return Err(format!("{to} is unreachable"));
        };
        if !delivered {
            return Err(format!("the message to {to} was lost"));
        }
        self.net.count(&self.me, to, kind);
        let task = tokio::spawn(handle(node, self.me.clone()));
        let r = match timeout(Duration::from_secs(5), task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("{to} failed: {e}")),
            Err(_) => return Err(format!("{to} did not answer")),
        };
        let (d, delivered) = self.net.hop();
        sleep(d).await;
        if !delivered || !self.net.connected(to, &self.me) {
            return Err(format!("the answer from {to} was lost"));
        }
        Ok(r)
    }
}

impl Wire for SimWire {
    fn raft(
        &self,
        to: &Member,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftReply, String>> + Send {
        let w = self.clone();
        let to = to.name.clone();
        async move {
            w.call(&to, Kind::Raft, move |n, from| async move {
                n.handle_raft(&from, rpc).await
            })
            .await
        }
    }

    fn coord(
        &self,
        to: &Member,
        rpc: CoordRpc,
    ) -> impl Future<Output = Result<CoordReply, String>> + Send {
        let w = self.clone();
        let to = to.name.clone();
        async move {
            let kind = match rpc {
                CoordRpc::Renew(_) => Kind::Renew,
                CoordRpc::Write(_) => Kind::Write,
            };
            if matches!(kind, Kind::Renew) {
                let muted = {
                    let mut s = lock(&w.net.0);
                    s.renewal_sent.insert(w.me.clone(), Instant::now());
                    s.mute.contains(&w.me)
                };
                if muted {
                    sleep(Duration::from_millis(5)).await;
                    return Err("renewal dropped".into());
                }
            }
            let r = w
                .call(&to, kind, move |n, from| async move {
                    n.handle_coord(&from, rpc).await
                })
                .await;
            if let Ok(CoordReply::Granted { .. }) = &r {
                let mut s = lock(&w.net.0);
                s.sent.entry(w.me.clone()).or_default().granted += 1;
                s.received.entry(to.clone()).or_default().granted += 1;
            }
            r
        }
    }
}

/// Starts the node `s.me` over its store in `dir` and puts it on the network.
pub(crate) async fn boot(
    net: &Arc<Net>,
    dir: &std::path::Path,
    s: crate::node::Settings,
) -> Result<(Arc<Node>, CancellationToken), String> {
    let name = s.me.name.clone();
    let (log, sm) = crate::store::open(dir)
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let placement = sm.watch();
    let stop = CancellationToken::new();
    let wire = SimWire {
        me: name.clone(),
        net: net.clone(),
    };
    let node = Coordinator::start(s, wire, log, sm, placement, stop.clone())
        .await
        .map_err(|e| format!("{name} did not start: {e}"))?;
    lock(&net.0).up.insert(name, node.clone());
    Ok((node, stop))
}

/// Takes `name` off the network: nothing reaches it, nothing it sends arrives.
pub(crate) fn unplug(net: &Net, name: &str) {
    lock(&net.0).up.remove(name);
}

/// Stops a node that is off the network, as its process ends; it must not hang.
pub(crate) async fn halt(name: &str, node: &Node) -> Result<(), String> {
    if timeout(Duration::from_secs(10), node.shutdown())
        .await
        .is_err()
    {
        return Err(format!("{name} did not shut down within 10 s"));
    }
    Ok(())
}
