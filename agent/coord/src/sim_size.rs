//! The coordinator at size, on virtual time: real [`Coordinator`]s (openraft, leases, voters,
//! fencing, failover), hundreds of them, over the simulated network of `sim_net.rs` (one-way
//! delays up to [`DELAY_US`], no loss), each with its store on disk (tmpfs when there is one,
//! as the fault simulation does), with the **default timers** (`[coordinator]` defaults:
//! heartbeat 100 ms, election 500–1000 ms, renewal every 1 s, lease 5 s, guard 1 s, margin
//! 2 s), spread over three sites, one `ha = "restart"` service per node.
//!
//! One run at `n` nodes, all on one current-thread runtime with tokio's clock paused (time
//! jumps to the next timer whenever every task waits, so a figure below is the protocol's
//! time, never the simulating machine's CPU):
//! 1. **Formation**: every node starts at once; gossip is modelled as every node knowing, a
//!    second late, the leader some node announces (the seed before there is one). Measured:
//!    until every node holds a lease, until every node is a member of the group, and until
//!    the voters are chosen, every service is placed and every node may act on its lease.
//! 2. **Steady state**, over a window: the renewals the leader receives and grants per second,
//!    the Raft messages it sends, and a `Noop` written on the leader every second: its commit
//!    latency, and until every node has applied it.
//! 3. **A learner dies** (power off, at a random point of its renewal period): from its last
//!    renewal sent, the last one the leader heard, and the kill, to its fence and to its
//!    service placed elsewhere (applied on the leader); the excess over the bound
//!    `fence_after + guard_grace + margin` (8 s) from the last renewal heard is the overhead.
//! 4. **The leader dies**: until a new leader is elected (as it sees itself), a write commits
//!    through it, it has granted every live node's lease again, the old leader's service is
//!    placed elsewhere, and five voters are back.
//!
//! Throughout, every live node's lease is watched: a lease that runs out while its node lives
//! is a **lapse** (that node would fence itself for nothing), and a fence of a node that is
//! alive is a **false fence**. Both are counted per phase.
//!
//! `coordinator_at_size` (ignored: a benchmark) runs 100, 500 and 1,000 nodes, or
//! `GODWIT_COORD_SIZES=a,b,..`, with a `GODWIT_COORD_WINDOW_S` steady window (default 60 s):
//! `cargo xtask bench coord-size [--quick]`. A small group runs as a plain test.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::CoordinatorSection;
use crate::node::{LeaseView, Settings};
use crate::sim_net::{boot, halt, lock, unplug, Net, NetState, Node, Rng, Traffic};
use crate::{Clock, Cmd, Ha, Member, Placement};

/// One-way delay on the simulated network, at most (a site's LAN to a nearby site).
const DELAY_US: u64 = 5_000;
/// Sites the nodes are spread over (node `i` at `site{i % SITES}`).
const SITES: usize = 3;

/// A lease that ran out while its node lived.
#[derive(Debug, Clone)]
struct Lapse {
    node: String,
    at: Instant,
}

/// What one run measured; times are virtual seconds unless named otherwise.
#[derive(Debug, Clone, Default)]
struct Figures {
    n: usize,
    /// From the start until every node holds a lease.
    leases_s: f64,
    /// Until every node is a member of the group (voter or learner).
    members_s: f64,
    /// Until the voters are chosen, every service placed and every node may act.
    formed_s: f64,
    /// The voters and their sites, once formed.
    voters: Vec<(String, String)>,
    /// The log's index at formation (a `Define` per node, the membership changes, a few
    /// `Noop`s).
    formed_index: u64,
    /// Steady state, per second: renewals the leader received and granted, Raft messages it
    /// sent, Raft messages one voter received.
    renew_per_s: f64,
    granted_per_s: f64,
    leader_raft_out_per_s: f64,
    voter_raft_in_per_s: f64,
    /// A write on the leader: commit latency, ms, and until every node applied it.
    commit_ms: Vec<f64>,
    applied_all_ms: Vec<f64>,
    /// A learner dies: from its last renewal sent / heard by the leader / the kill, to its
    /// fence committed and to its service placed elsewhere (applied on the leader).
    fo_fence_from_heard_s: f64,
    fo_from_sent_s: f64,
    fo_from_heard_s: f64,
    fo_from_kill_s: f64,
    /// The leader's own figure (`godwit_failover_last_seconds`).
    fo_reported_s: f64,
    /// The leader dies: from the kill to a new leader, a write through it, every live lease
    /// granted by it, the old leader's service placed elsewhere, five voters again.
    elect_s: f64,
    first_commit_s: f64,
    regrant_s: f64,
    leader_fo_s: f64,
    voters_back_s: f64,
    /// Every leader seen (the newest term any node reports, sampled every 100 ms): virtual
    /// seconds from the start, term, leader.
    leaders: Vec<(f64, u64, String)>,
    /// Leader changes before the leader was killed (none planned).
    unplanned: usize,
    /// The first few lapses: node and virtual seconds from the start.
    lapsed: Vec<(String, f64)>,
    /// Lapses and false fences, per phase: formation, steady, learner killed, leader killed.
    lapses: [usize; 4],
    false_fences: usize,
    /// The simulating machine's time for the whole run.
    wall_s: f64,
}

/// Quantile `q` of `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

struct Bench {
    n: usize,
    rng: Rng,
    net: Arc<Net>,
    members: Vec<Member>,
    sites: Vec<String>,
    nodes: Vec<Option<(Arc<Node>, CancellationToken)>>,
    killed: BTreeSet<String>,
    lapses: Arc<Mutex<Vec<Lapse>>>,
    /// What `sample_leaders` saw.
    leaders: Arc<Mutex<Vec<(f64, u64, String)>>>,
    origin: Instant,
    fence_bound: Duration,
    _tmp: tempfile::TempDir,
}

impl Bench {
    fn new(n: usize, seed: u64) -> Bench {
        let mut rng = Rng::new(seed);
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                addr: format!("198.18.{}.{}:9747", i / 250, i % 250 + 1),
            })
            .collect();
        let sites = (0..n).map(|i| format!("site{}", i % SITES)).collect();
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a temporary directory");
        let net = Arc::new(Net(Mutex::new(NetState::new(
            DELAY_US,
            Rng::new(rng.next()),
        ))));
        let fence_bound = CoordinatorSection::default()
            .settings(members[0].clone(), "", false)
            .fence_bound();
        Bench {
            n,
            rng,
            net,
            members,
            sites,
            nodes: (0..n).map(|_| None).collect(),
            killed: BTreeSet::new(),
            lapses: Arc::new(Mutex::new(Vec::new())),
            leaders: Arc::new(Mutex::new(Vec::new())),
            origin: Instant::now(),
            fence_bound,
            _tmp: tmp,
        }
    }

    fn settings(&self, i: usize) -> Settings {
        let mut s =
            CoordinatorSection::default().settings(self.members[i].clone(), &self.sites[i], i == 0);
        s.clock = Clock::Tokio {
            origin: self.origin,
        };
        s
    }

    fn node(&self, i: usize) -> Option<&Arc<Node>> {
        self.nodes[i].as_ref().map(|(n, _)| n)
    }

    fn index(&self, name: &str) -> usize {
        name[1..].parse().expect("names are n<index>")
    }

    fn up(&self) -> impl Iterator<Item = (usize, &Arc<Node>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|(n, _)| (i, n)))
    }

    /// The node that leads, as it sees itself, in a term after `after`.
    fn leader_after(&self, after: u64) -> Option<usize> {
        self.up().find_map(|(i, n)| {
            let (l, term) = n.leader();
            (term > after && l.is_some_and(|l| l.name == self.members[i].name)).then_some(i)
        })
    }

    fn secs(&self, since: Instant) -> f64 {
        since.elapsed().as_secs_f64()
    }

    /// Starts node `i`: its store, its lease watch, and the definition of its service.
    async fn start(&mut self, i: usize) -> Result<(), String> {
        let dir = self._tmp.path().join(&self.members[i].name);
        let (node, stop) = boot(&self.net, &dir, self.settings(i)).await?;
        node.set_hints(vec![self.members[0].clone()]);
        tokio::spawn(watch_lease(
            self.members[i].name.clone(),
            node.lease(),
            stop.clone(),
            self.lapses.clone(),
        ));
        let cmd = Cmd::Define {
            service: format!("s{i}"),
            node: self.members[i].name.clone(),
            spec: format!("spec of s{i}"),
            ha: Ha::Restart,
        };
        let (c, st) = (node.clone(), stop.clone());
        tokio::spawn(async move {
            while !st.is_cancelled() {
                if let Ok(Ok(_)) = timeout(Duration::from_secs(10), c.write(cmd.clone())).await {
                    return;
                }
                sleep(Duration::from_secs(1)).await;
            }
        });
        self.nodes[i] = Some((node, stop));
        Ok(())
    }

    /// Powers node `i` off: off the network, its loops stopped, its Raft node shut down.
    async fn kill(&mut self, i: usize) -> Result<(), String> {
        let name = self.members[i].name.clone();
        let Some((node, stop)) = self.nodes[i].take() else {
            return Ok(());
        };
        self.killed.insert(name.clone());
        stop.cancel();
        unplug(&self.net, &name);
        halt(&name, &node).await
    }

    fn lapses_since(&self, since: Instant) -> usize {
        lock(&self.lapses).iter().filter(|l| l.at >= since).count()
    }

    fn traffic(&self, name: &str) -> (Traffic, Traffic) {
        let s = lock(&self.net.0);
        (
            s.sent.get(name).copied().unwrap_or_default(),
            s.received.get(name).copied().unwrap_or_default(),
        )
    }

    /// Waits (polling every `every`) until `done` says so, at most `within`.
    async fn until<F>(
        &self,
        what: &str,
        within: Duration,
        every: Duration,
        mut done: F,
    ) -> Result<(), String>
    where
        F: FnMut(&Bench) -> bool,
    {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{what}: not within {within:?} ({:.1} s in); leaders (s, term, leader): {:?}",
                    self.secs(self.origin),
                    lock(&self.leaders)
                ));
            }
            sleep(every).await;
        }
    }

    async fn run(mut self, window: Duration) -> Result<Figures, String> {
        let wall = std::time::Instant::now();
        let mut f = Figures {
            n: self.n,
            ..Figures::default()
        };
        // 1. Formation.
        for i in 0..self.n {
            self.start(i).await?;
        }
        let gossip = tokio::spawn(gossip(self.net.clone()));
        let sampler = tokio::spawn(sample_leaders(
            self.net.clone(),
            self.origin,
            self.leaders.clone(),
        ));
        let t0 = self.origin;
        let within = Duration::from_secs(120) + Duration::from_millis(600) * self.n as u32;
        let every = Duration::from_millis(100);
        self.until("every node holds a lease", within, every, |b| {
            b.up().all(|(_, n)| n.lease().borrow().valid)
        })
        .await?;
        f.leases_s = self.secs(t0);
        let leader = |b: &Bench| b.leader_after(0).and_then(|l| b.node(l).cloned());
        self.until("every node is a member", within, every, |b| {
            leader(b).is_some_and(|l| {
                let st = l.status();
                st.nodes.len() == b.n
            })
        })
        .await?;
        f.members_s = self.secs(t0);
        self.until("the group forms", within, every, |b| {
            leader(b).is_some_and(|l| {
                let st = l.status();
                let p = l.placement().borrow().clone();
                st.voters.len() == 5.min(b.n)
                    && !st.changing
                    && p.services.len() == b.n
                    && b.up().all(|(_, n)| n.lease().borrow().may_act())
            })
        })
        .await?;
        f.formed_s = self.secs(t0);
        let l = self.leader_after(0).ok_or("no leader")?;
        let lnode = self.node(l).expect("up").clone();
        let st = lnode.status();
        f.voters = st
            .voters
            .iter()
            .map(|v| (v.clone(), self.sites[self.index(v)].clone()))
            .collect();
        f.formed_index = lnode.placement().borrow().applied;
        f.lapses[0] = self.lapses_since(t0);

        // 2. Steady state.
        sleep(Duration::from_secs(5)).await;
        let lname = self.members[l].name.clone();
        let voter = st
            .voters
            .iter()
            .find(|v| **v != lname)
            .cloned()
            .unwrap_or_else(|| lname.clone());
        let w0 = Instant::now();
        let (ls0, lr0) = self.traffic(&lname);
        let (_, vr0) = self.traffic(&voter);
        let mut next = Instant::now();
        while next < w0 + window {
            tokio::time::sleep_until(next).await;
            next += Duration::from_secs(1);
            let t = Instant::now();
            let (_, index) = timeout(Duration::from_secs(10), lnode.write(Cmd::Noop))
                .await
                .map_err(|_| "a write on the leader timed out".to_string())?
                .map_err(|e| format!("a write on the leader: {e}"))?;
            f.commit_ms.push(t.elapsed().as_secs_f64() * 1e3);
            for (_, n) in self.up() {
                let mut p = n.placement();
                timeout(Duration::from_secs(10), p.wait_for(|p| p.applied >= index))
                    .await
                    .map_err(|_| format!("index {index} not applied everywhere within 10 s"))?
                    .map_err(|e| e.to_string())?;
            }
            f.applied_all_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let secs = w0.elapsed().as_secs_f64();
        let (ls1, lr1) = self.traffic(&lname);
        let (_, vr1) = self.traffic(&voter);
        f.renew_per_s = (lr1.renew - lr0.renew) as f64 / secs;
        f.granted_per_s = (lr1.granted - lr0.granted) as f64 / secs;
        f.leader_raft_out_per_s = (ls1.raft - ls0.raft) as f64 / secs;
        f.voter_raft_in_per_s = (vr1.raft - vr0.raft) as f64 / secs;
        f.lapses[1] = self.lapses_since(w0);

        // 3. A learner dies (the leader may have changed: the leader now).
        let l = self.leader_after(0).ok_or("no leader")?;
        let lnode = self.node(l).expect("up").clone();
        let voters: BTreeSet<String> = lnode.status().voters.into_iter().collect();
        let victim = (0..self.n)
            .rev()
            .find(|i| !voters.contains(&self.members[*i].name) && *i != l)
            .ok_or("no learner to kill")?;
        let vname = self.members[victim].name.clone();
        let service = format!("s{victim}");
        let phase = self.rng.ms(0, 999);
        sleep(phase).await;
        let k0 = Instant::now();
        let (sent, heard) = {
            let s = lock(&self.net.0);
            (s.renewal_sent[&vname], s.renewal_heard[&vname])
        };
        self.kill(victim).await?;
        let mut p = lnode.placement();
        let limit = self.fence_bound + Duration::from_secs(60);
        wait_placement(&mut p, limit, |p| p.fenced.contains_key(&vname)).await?;
        f.fo_fence_from_heard_s = heard.elapsed().as_secs_f64();
        wait_placement(&mut p, limit, |p| {
            p.services[&service]
                .node
                .as_ref()
                .is_some_and(|n| *n != vname)
        })
        .await?;
        f.fo_from_sent_s = sent.elapsed().as_secs_f64();
        f.fo_from_heard_s = heard.elapsed().as_secs_f64();
        f.fo_from_kill_s = k0.elapsed().as_secs_f64();
        // The leader notes its figure once the write returns, just after the placement changed.
        sleep(Duration::from_millis(100)).await;
        f.fo_reported_s = lnode.status().last_failover_s.unwrap_or(f64::NAN);
        f.lapses[2] = self.lapses_since(k0);
        sleep(Duration::from_secs(2)).await;

        // 4. The leader dies (the leader now).
        drop(lnode);
        let l = self
            .until(
                "a leader before the kill",
                Duration::from_secs(30),
                ms10(),
                |b| b.leader_after(0).is_some(),
            )
            .await
            .and_then(|()| self.leader_after(0).ok_or("no leader".into()))?;
        let term = self.node(l).expect("up").leader().1;
        f.unplanned = lock(&self.leaders).len().saturating_sub(1);
        let phase = self.rng.ms(0, 999);
        sleep(phase).await;
        let k1 = Instant::now();
        self.kill(l).await?;
        self.until("a new leader", Duration::from_secs(60), ms10(), |b| {
            b.leader_after(term).is_some()
        })
        .await?;
        f.elect_s = self.secs(k1);
        let nl = self.leader_after(term).expect("just seen");
        let nnode = self.node(nl).expect("up").clone();
        timeout(Duration::from_secs(30), nnode.write(Cmd::Noop))
            .await
            .map_err(|_| "the first write through the new leader timed out".to_string())?
            .map_err(|e| format!("the first write through the new leader: {e}"))?;
        f.first_commit_s = self.secs(k1);
        let live: BTreeSet<String> = self
            .up()
            .map(|(i, _)| self.members[i].name.clone())
            .collect();
        self.until(
            "every lease granted again",
            Duration::from_secs(60),
            every,
            |_| {
                let st = nnode.status();
                st.leader.as_deref() == Some(st.me.as_str())
                    && live.iter().all(|n| {
                        st.nodes
                            .iter()
                            .any(|s| s.name == *n && s.lease_age_ms.is_some())
                    })
            },
        )
        .await?;
        f.regrant_s = self.secs(k1);
        let old = format!("s{l}");
        let oname = self.members[l].name.clone();
        let mut p = nnode.placement();
        wait_placement(&mut p, limit, |p| {
            p.services[&old].node.as_ref().is_some_and(|n| *n != oname)
        })
        .await?;
        f.leader_fo_s = self.secs(k1);
        self.until("five voters again", Duration::from_secs(60), every, |_| {
            let st = nnode.status();
            st.voters.len() == 5.min(st.nodes.len() - 2) && !st.changing
        })
        .await?;
        f.voters_back_s = self.secs(k1);
        sleep(Duration::from_secs(2)).await;
        f.lapses[3] = self.lapses_since(k1);
        let p = nnode.placement().borrow().clone();
        f.false_fences = p
            .fenced
            .keys()
            .filter(|n| !self.killed.contains(*n))
            .count();
        if let Some(bad) = self.up().find(|(_, n)| !n.lease().borrow().may_act()) {
            return Err(format!(
                "{} may not act at the end: {:?}",
                self.members[bad.0].name,
                *bad.1.lease().borrow()
            ));
        }

        gossip.abort();
        sampler.abort();
        f.leaders = lock(&self.leaders).clone();
        f.lapsed = lock(&self.lapses)
            .iter()
            .take(5)
            .map(|l| (l.node.clone(), (l.at - self.origin).as_secs_f64()))
            .collect();
        for i in 0..self.n {
            if let Some((n, stop)) = self.nodes[i].take() {
                stop.cancel();
                unplug(&self.net, &self.members[i].name);
                let _ = halt(&self.members[i].name, &n).await;
            }
        }
        f.wall_s = wall.elapsed().as_secs_f64();
        Ok(f)
    }
}

async fn wait_placement<F>(
    p: &mut watch::Receiver<Arc<Placement>>,
    within: Duration,
    done: F,
) -> Result<(), String>
where
    F: FnMut(&Arc<Placement>) -> bool,
{
    match timeout(within, p.wait_for(done)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the placement did not change within {within:?}")),
    }
}

/// Notes every lease of a live node that runs out.
async fn watch_lease(
    name: String,
    mut lease: watch::Receiver<LeaseView>,
    stop: CancellationToken,
    lapses: Arc<Mutex<Vec<Lapse>>>,
) {
    let mut was = false;
    loop {
        let valid = lease.borrow_and_update().valid;
        if was && !valid && !stop.is_cancelled() {
            lock(&lapses).push(Lapse {
                node: name.clone(),
                at: Instant::now(),
            });
        }
        was = valid;
        tokio::select! {
            _ = stop.cancelled() => return,
            r = lease.changed() => if r.is_err() { return },
        }
    }
}

/// Gossip, as far as the coordinator uses it: every second, every node learns the leader (and
/// term) that some node announces; the newest term wins.
async fn gossip(net: Arc<Net>) {
    loop {
        sleep(Duration::from_secs(1)).await;
        let up: Vec<Arc<Node>> = lock(&net.0).up.values().cloned().collect();
        let announced = up
            .iter()
            .filter_map(|n| {
                let (l, term) = n.leader();
                l.map(|l| (term, l))
            })
            .max_by_key(|(t, _)| *t);
        if let Some((_, l)) = announced {
            for n in &up {
                n.set_hints(vec![l.clone()]);
            }
        }
    }
}

fn ms10() -> Duration {
    Duration::from_millis(10)
}

/// Every 100 ms, the newest term any node reports and its leader; notes each change.
async fn sample_leaders(net: Arc<Net>, origin: Instant, out: Arc<Mutex<Vec<(f64, u64, String)>>>) {
    let mut last = (0, String::new());
    loop {
        let up: Vec<Arc<Node>> = lock(&net.0).up.values().cloned().collect();
        // The newest term and its leader, if any node knows one ("-" while it is elected).
        let newest = up
            .iter()
            .map(|n| {
                let (l, term) = n.leader();
                (term, l.map_or_else(|| "-".to_string(), |l| l.name))
            })
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| (a.1 != "-").cmp(&(b.1 != "-"))));
        if let Some(x) = newest {
            if x != last {
                lock(&out).push((origin.elapsed().as_secs_f64(), x.0, x.1.clone()));
                last = x;
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
}

fn run_size(n: usize, window: Duration, seed: u64) -> Result<Figures, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(Bench::new(n, seed).run(window))
}

fn table(figs: &[Figures]) -> String {
    let mut out = String::new();
    let row = |out: &mut String, name: &str, f: &dyn Fn(&Figures) -> String| {
        out.push_str(&format!("| {name} |"));
        for x in figs {
            out.push_str(&format!(" {} |", f(x)));
        }
        out.push('\n');
    };
    out.push_str("| nodes |");
    for x in figs {
        out.push_str(&format!(" {} |", x.n));
    }
    out.push_str("\n| --- |");
    for _ in figs {
        out.push_str(" ---: |");
    }
    out.push('\n');
    let s1 = |v: f64| format!("{v:.1} s");
    let s2 = |v: f64| format!("{v:.2} s");
    row(&mut out, "formation: every node holds a lease", &|f| {
        s1(f.leases_s)
    });
    row(&mut out, "formation: every node a member", &|f| {
        s1(f.members_s)
    });
    row(
        &mut out,
        "formation: voters chosen, all services placed, all may act",
        &|f| s1(f.formed_s),
    );
    row(&mut out, "voters (site)", &|f| {
        f.voters
            .iter()
            .map(|(v, s)| format!("{v} ({s})"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(&mut out, "formation: log index when formed", &|f| {
        f.formed_index.to_string()
    });
    row(
        &mut out,
        "steady: renewals received / granted by the leader, per s",
        &|f| format!("{:.0} / {:.0}", f.renew_per_s, f.granted_per_s),
    );
    row(
        &mut out,
        "steady: Raft messages sent by the leader / received by a voter, per s",
        &|f| {
            format!(
                "{:.0} / {:.0}",
                f.leader_raft_out_per_s, f.voter_raft_in_per_s
            )
        },
    );
    row(
        &mut out,
        "steady: write on the leader, commit p50 / p99 (samples)",
        &|f| {
            format!(
                "{:.1} / {:.1} ms ({})",
                quantile(&f.commit_ms, 0.5),
                quantile(&f.commit_ms, 0.99),
                f.commit_ms.len()
            )
        },
    );
    row(
        &mut out,
        "steady: the write applied on every node, p50 / p99",
        &|f| {
            format!(
                "{:.1} / {:.1} ms",
                quantile(&f.applied_all_ms, 0.5),
                quantile(&f.applied_all_ms, 0.99)
            )
        },
    );
    row(
        &mut out,
        "learner killed: fence committed, from its last renewal heard",
        &|f| s2(f.fo_fence_from_heard_s),
    );
    row(
        &mut out,
        "learner killed: service placed elsewhere, from its last renewal sent",
        &|f| s2(f.fo_from_sent_s),
    );
    row(
        &mut out,
        "learner killed: service placed elsewhere, from its last renewal heard",
        &|f| s2(f.fo_from_heard_s),
    );
    row(&mut out, "learner killed: beyond the 8 s bound", &|f| {
        format!("{:.2} s", f.fo_from_heard_s - 8.0)
    });
    row(
        &mut out,
        "learner killed: service placed elsewhere, from the kill",
        &|f| s2(f.fo_from_kill_s),
    );
    row(&mut out, "learner killed: the leader's own figure", &|f| {
        s2(f.fo_reported_s)
    });
    row(&mut out, "leader killed: new leader elected", &|f| {
        s2(f.elect_s)
    });
    row(
        &mut out,
        "leader killed: first write committed through it",
        &|f| s2(f.first_commit_s),
    );
    row(
        &mut out,
        "leader killed: every live lease granted by the new leader",
        &|f| s2(f.regrant_s),
    );
    row(
        &mut out,
        "leader killed: its service placed elsewhere",
        &|f| s2(f.leader_fo_s),
    );
    row(&mut out, "leader killed: five voters again", &|f| {
        s2(f.voters_back_s)
    });
    row(
        &mut out,
        "leases that lapsed on live nodes (formation / steady / learner / leader)",
        &|f| {
            format!(
                "{} / {} / {} / {}",
                f.lapses[0], f.lapses[1], f.lapses[2], f.lapses[3]
            )
        },
    );
    row(&mut out, "live nodes fenced", &|f| {
        f.false_fences.to_string()
    });
    row(
        &mut out,
        "leader changes before the leader was killed",
        &|f| f.unplanned.to_string(),
    );
    row(&mut out, "leaders (s: term leader)", &|f| {
        f.leaders
            .iter()
            .map(|(t, term, l)| format!("{t:.1}: {term} {l}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(&mut out, "first lapses (node at s)", &|f| {
        f.lapsed
            .iter()
            .map(|(n, t)| format!("{n} at {t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(&mut out, "wall time of the run", &|f| {
        format!("{:.0} s", f.wall_s)
    });
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number")),
    )
}

#[test]
#[ignore = "a benchmark (minutes at 1,000 nodes): cargo xtask bench coord-size"]
fn coordinator_at_size() {
    let sizes: Vec<usize> = std::env::var("GODWIT_COORD_SIZES")
        .unwrap_or_else(|_| "100,500,1000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("GODWIT_COORD_SIZES: numbers, comma-separated")
        })
        .collect();
    let window = Duration::from_secs(env_u64("GODWIT_COORD_WINDOW_S").unwrap_or(60));
    let seed = env_u64("GODWIT_COORD_SEED").unwrap_or(1);
    let mut figs = Vec::new();
    for n in sizes {
        eprintln!("coord-size: {n} nodes, steady window {window:?}, seed {seed} ...");
        match run_size(n, window, seed) {
            Ok(f) => {
                eprintln!("{}", table(std::slice::from_ref(&f)));
                figs.push(f);
            }
            Err(e) => panic!("{n} nodes: {e}"),
        }
    }
    println!(
        "coordinator at size (virtual time; default timers; one-way delay up to {} ms; {SITES} sites; one service per node; seed {seed})\n\n{}",
        DELAY_US / 1000,
        table(&figs)
    );
}

/// A group of 40 on the default timers: it forms in a few seconds (its nodes join as learners
/// together, not one per leader pass), a dead learner's service moves within a second of the
/// 8 s bound, a new leader grants every lease again before any runs out, and no live node's
/// lease lapses or is fenced on the way.
#[test]
fn forty_nodes_form_fail_over_at_the_bound_and_lose_no_lease() {
    let f = run_size(40, Duration::from_secs(10), 7).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", table(std::slice::from_ref(&f)));
    assert_eq!(f.lapses, [0; 4], "leases lapsed on live nodes");
    assert_eq!(f.false_fences, 0, "live nodes fenced");
    assert_eq!(f.voters.len(), 5);
    let sites: BTreeSet<&String> = f.voters.iter().map(|(_, s)| s).collect();
    assert_eq!(
        sites.len(),
        SITES,
        "voters spread over every site: {:?}",
        f.voters
    );
    assert!(f.formed_s < 10.0, "formed in {:.1} s", f.formed_s);
    assert!(
        (8.0..9.5).contains(&f.fo_from_heard_s),
        "failover {:.2} s after the last renewal heard",
        f.fo_from_heard_s
    );
    assert!(
        f.regrant_s < 5.0,
        "leases granted again {:.2} s after the leader died",
        f.regrant_s
    );
}
