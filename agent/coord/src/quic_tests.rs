//! Real Raft members over the real QUIC transport (mutual TLS on loopback): election, writes
//! forwarded to the leader, voters chosen from live nodes, failover after the fence bound,
//! re-election after the leader dies, and a lease that runs out when a node is cut off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit_transport::testing;
use godwit_transport::Services;
use tokio_util::sync::CancellationToken;

use crate::node::{Coordinator, Settings};
use crate::quic::{register, QuicWire};
use crate::rpc::{CoordReply, CoordRpc, Member, RaftReply, RaftRpc, Wire};
use crate::{Cmd, Ha, Outcome};

/// The QUIC wire with a switch that cuts this node's outgoing messages.
#[derive(Clone)]
struct CutWire {
    inner: QuicWire,
    cut: Arc<AtomicBool>,
}

impl Wire for CutWire {
    async fn raft(&self, to: &Member, rpc: RaftRpc) -> Result<RaftReply, String> {
        if self.cut.load(Ordering::SeqCst) {
            return Err("cut".into());
        }
        self.inner.raft(to, rpc).await
    }
    async fn coord(&self, to: &Member, rpc: CoordRpc) -> Result<CoordReply, String> {
        if self.cut.load(Ordering::SeqCst) {
            return Err("cut".into());
        }
        self.inner.coord(to, rpc).await
    }
}

struct TestNode {
    coord: Arc<Coordinator<CutWire>>,
    cut: Arc<AtomicBool>,
    serve: tokio::task::JoinHandle<()>,
    endpoint: godwit_transport::Endpoint,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn kill(self) {
        self.cut.store(true, Ordering::SeqCst);
        self.serve.abort();
        self.endpoint.close();
        self.coord.shutdown().await;
    }
}

fn fast(me: Member, bootstrap: bool) -> Settings {
    let mut s = Settings::new(me);
    s.bootstrap = bootstrap;
    s.heartbeat = Duration::from_millis(50);
    s.election_min = Duration::from_millis(300);
    s.election_max = Duration::from_millis(600);
    s.fence_after = Duration::from_millis(2000);
    s.guard_grace = Duration::from_millis(300);
    s.margin = Duration::from_millis(400);
    s.renew_every = Duration::from_millis(300);
    s
}

async fn start(pki: &testing::Pki, name: &str, bootstrap: bool, hints: &[Member]) -> TestNode {
    let endpoint = testing::node(pki, name);
    let me = Member {
        name: name.into(),
        addr: endpoint.local_addr().unwrap().to_string(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (log, sm) = crate::store::open(dir.path()).await.unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let wire = CutWire {
        inner: QuicWire::new(endpoint.clone()),
        cut: cut.clone(),
    };
    let placement = sm.watch();
    let coord = Coordinator::start(
        fast(me, bootstrap),
        wire,
        log,
        sm,
        placement,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    coord.set_hints(hints.to_vec());
    let services = Services::default();
    register(&services, coord.clone());
    let serve = testing::serve(&endpoint, services);
    TestNode {
        coord,
        cut,
        serve,
        endpoint,
        _dir: dir,
    }
}

fn member(n: &TestNode) -> Member {
    n.coord.settings().me.clone()
}

async fn until<F: FnMut() -> bool>(what: &str, within: Duration, mut f: F) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_elect_one_leader_fail_over_a_dead_node_and_replace_a_dead_leader() {
    let pki = testing::pki();
    let a = start(&pki, "a", true, &[]).await;
    let hints = [member(&a)];
    let b = start(&pki, "b", false, &hints).await;
    let c = start(&pki, "c", false, &hints).await;
    let d = start(&pki, "d", false, &hints).await;
    let nodes = [&a, &b, &c, &d];

    // Three voters out of four live nodes, the fourth a learner; one leader for everyone.
    until("3 voters and 1 learner", Duration::from_secs(30), || {
        let s = a.coord.status();
        s.voters.len() == 3 && s.learners.len() == 1 && !s.changing
    })
    .await;
    until(
        "every node knows the leader",
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.coord.status().leader.as_deref() == Some("a"))
        },
    )
    .await;
    until("every node holds a lease", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.coord.lease().borrow().may_act())
    })
    .await;

    // A write from a follower is forwarded to the leader and applied everywhere.
    let (o, index) = c
        .coord
        .write(Cmd::Define {
            service: "kv".into(),
            node: "b".into(),
            spec: "{}".into(),
            ha: Ha::Restart,
        })
        .await
        .unwrap();
    assert_eq!(o, Outcome::Applied { epoch: index });
    until(
        "the placement is applied everywhere",
        Duration::from_secs(5),
        || {
            nodes.iter().all(|n| {
                n.coord
                    .placement()
                    .borrow()
                    .services
                    .get("kv")
                    .map(|e| e.epoch)
                    == Some(index)
            })
        },
    )
    .await;

    // b dies: it is fenced only after the bound, then kv restarts elsewhere at a new epoch.
    let voters_before = a.coord.status().voters;
    let bound = a.coord.settings().fence_bound();
    let died = Instant::now();
    b.cut.store(true, Ordering::SeqCst);
    // The safety property, on the one CLOCK_BOOTTIME these nodes share: kv is placed elsewhere
    // only after b's lease and its guard's grace have both run out.
    let b_lease_until = b.coord.lease().borrow().until_ms;
    let grace = b.coord.settings().guard_grace;
    b.kill().await;
    until("kv placed elsewhere", Duration::from_secs(20), || {
        let p = a.coord.placement().borrow().clone();
        p.services["kv"].node.as_deref() != Some("b")
    })
    .await;
    let took = died.elapsed();
    let now = crate::BootTime::now();
    assert!(
        now.0 >= b_lease_until + grace.as_millis() as u64,
        "failed over at {now:?}, while b's lease ran to {b_lease_until} ms + {grace:?} grace"
    );
    let p = a.coord.placement().borrow().clone();
    let e = &p.services["kv"];
    assert!(e.epoch > index, "{e:?}");
    assert!(p.fenced.contains_key("b"), "{p:?}");
    assert!(matches!(e.node.as_deref(), Some("a" | "c" | "d")), "{e:?}");
    // The dead voter is replaced by the learner.
    if voters_before.contains(&"b".to_string()) {
        until("b replaced as a voter", Duration::from_secs(10), || {
            let s = a.coord.status();
            s.voters.len() == 3 && !s.voters.contains(&"b".to_string()) && !s.changing
        })
        .await;
    }

    // The leader dies: the others elect a new one (a later term) and go on committing.
    let term = a.coord.status().term;
    let died = Instant::now();
    a.kill().await;
    let survivors = [&c, &d];
    until("a new leader", Duration::from_secs(10), || {
        let s = c.coord.status();
        s.leader.as_deref().is_some_and(|l| l != "a") && s.term > term
    })
    .await;
    let reelected = died.elapsed();
    let (o, _) = d
        .coord
        .write(Cmd::Cordon {
            node: "c".into(),
            on: true,
        })
        .await
        .unwrap();
    assert!(matches!(o, Outcome::Applied { .. }), "{o:?}");
    println!("re-elected after {reelected:?}; failed over after {took:?} (bound {bound:?})");
    for n in survivors {
        let s = n.coord.status();
        assert_eq!(s.leader, c.coord.status().leader);
    }
    c.kill().await;
    d.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_loses_its_lease_within_fence_after_and_gets_it_back() {
    let pki = testing::pki();
    let a = start(&pki, "a", true, &[]).await;
    let b = start(&pki, "b", false, &[member(&a)]).await;
    until("b holds a lease", Duration::from_secs(20), || {
        b.coord.lease().borrow().may_act()
    })
    .await;
    let fence_after = b.coord.settings().fence_after;
    let cut = Instant::now();
    b.cut.store(true, Ordering::SeqCst);
    let lost = until("b's lease runs out", fence_after * 3, || {
        !b.coord.lease().borrow().valid
    })
    .await;
    assert!(
        lost <= fence_after + Duration::from_millis(300),
        "the lease outlived fence_after: {lost:?}"
    );
    assert!(cut.elapsed() >= fence_after / 2);
    b.cut.store(false, Ordering::SeqCst);
    until("b's lease is back", Duration::from_secs(10), || {
        b.coord.lease().borrow().may_act()
    })
    .await;
    b.kill().await;
    a.kill().await;
}
