//! Deterministic simulation of the coordinator (issue 15): real [`Coordinator`]s (openraft,
//! leases, voters, fencing, failover) over a simulated network, on virtual time, across many
//! seeds, each a random schedule of faults; the invariants are checked throughout. A group
//! has 3 to 5 nodes (in half the groups of 4 or 5 the last one is a witness), each with its
//! log and vote in the on-disk store ([`crate::store`], a directory per node, on tmpfs when
//! there is one), and short timers: heartbeat 50 ms, election 200-400 ms, renewal every
//! 200 ms, `fence_after` 1 s, guard grace and margin 300 ms each.
//!
//! **How it runs.** One seed is one current-thread tokio runtime with its clock paused
//! (`start_paused`): when every task waits, tokio jumps to the next timer, so the ~25 s of
//! virtual time a schedule covers cost only the CPU its events take. The nodes' lease clocks
//! read the same virtual time ([`Clock::Tokio`]). The network is in-process (`sim_net.rs`): a
//! call waits a seeded random delay, may be lost, fails across a cut link or to a node that is
//! down, runs the receiver's handler in its own task, and its answer crosses the network back
//! the same way. turmoil was the other candidate; it was not used because its hosts each run
//! their own runtime stepped in fixed ticks (1 ms of virtual time costs a step whether anything
//! happens or not, which 1,000 seeds on two cores cannot afford), and the Raft messages would
//! have to be framed over its TCP streams for nothing the checks need.
//!
//! **Faults**, drawn from the seed: partitions (two halves, the leader isolated, a bridge node
//! that alone sees both sides), message loss and delay spikes, node crashes (power off: its
//! services stop with it) and agent crashes (its services run on until its guard kills them,
//! `guard_grace` after its lease ends), restarts from the same storage, a node whose lease
//! renewals are dropped (it fences itself), services defined and nodes cordoned during the
//! faults. Then everything heals and the down nodes restart.
//!
//! **Each node "runs" a service** exactly when the placement it has applied puts the service
//! there and its lease says [`LeaseView::may_act`], and stops it when either stops being so: what
//! the agent does. The ledger records every start and stop on virtual time.
//!
//! **Invariants**, checked on every change and at the end:
//! - at most one leader per term, as every node's Raft metrics report it (sampled every 10 ms);
//! - never two nodes running the same service at the same time, and never two nodes holding the
//!   same service at the same epoch, ever;
//! - after the last fault heals: one leader known to all, every node applied as far as the
//!   others, and every placed service running on its node.
//!
//! **Determinism.** The schedule and the network's delays and losses come from a seeded
//! splitmix64, and one thread runs everything, but openraft draws its election timeouts from
//! its own thread-local RNG: a seed replays the same draws, not always bit for bit the same
//! run (nor, then, the same leader to isolate). A failure prints its seed, the schedule and the
//! ledger's trace (leader views, lease grants, applied placements, starts and stops); replay it
//! with `GODWIT_SIM_SEED=<seed> GODWIT_SIM_SEEDS=1`; most failures found so far replayed.
//!
//! `GODWIT_SIM_SEEDS=N` runs N seeds (default [`DEFAULT_SEEDS`]), on as many threads as there
//! are cores.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::node::{LeaseView, Role, Settings};
use crate::sim_net::{boot, halt, link, lock, unplug, Net, NetState, Node, Rng};
use crate::{Clock, Cmd, Ha, Member, Outcome};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Seeds in a plain `cargo test` run.
const DEFAULT_SEEDS: u64 = 1000;

/// A service running on a node.
#[derive(Debug, Clone)]
struct Run {
    node: String,
    epoch: u64,
    since_ms: u64,
    /// The node's incarnation that started (or adopted) it.
    inc: u64,
}

/// What ran where and when, the leaders seen, and what went wrong.
struct Ledger {
    origin: Instant,
    running: BTreeMap<String, Vec<Run>>,
    /// Every node that ever held each (service, epoch).
    holders: BTreeMap<(String, u64), BTreeSet<String>>,
    /// Per term, the leader and who reported it first.
    leaders: BTreeMap<u64, (String, String)>,
    /// Terms already reported with two leaders.
    split_terms: BTreeSet<u64>,
    /// What each node last said of the leader.
    views: BTreeMap<String, (Option<String>, u64)>,
    trace: Vec<String>,
    violations: Vec<String>,
    starts: u64,
    /// Starts on another node than the service's last one (failovers).
    moves: u64,
    last_node: BTreeMap<String, String>,
}

impl Ledger {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn note(&mut self, what: String) {
        let t = self.now_ms();
        self.trace.push(format!("{t:>6} ms  {what}"));
    }

    fn violation(&mut self, what: String) {
        self.note(format!("VIOLATION: {what}"));
        self.violations
            .push(format!("at {} ms: {what}", self.now_ms()));
    }

    fn leader(&mut self, term: u64, leader: &str, seen_by: &str) {
        match self.leaders.get(&term) {
            None => {
                self.leaders
                    .insert(term, (leader.to_string(), seen_by.to_string()));
                self.note(format!("{seen_by} sees {leader} lead term {term}"));
            }
            Some((l, by)) if l != leader && self.split_terms.insert(term) => {
                let (l, by) = (l.clone(), by.clone());
                self.violation(format!(
                    "two leaders in term {term}: {l} (seen by {by}) and {leader} (seen by {seen_by})"
                ));
            }
            Some(_) => {}
        }
    }

    /// `node` (incarnation `inc`) now runs exactly `want` (service to epoch).
    fn reconcile(&mut self, node: &str, inc: u64, want: &BTreeMap<String, u64>) {
        let services: Vec<String> = self.running.keys().cloned().collect();
        for s in services {
            let runs = self.running.get_mut(&s).expect("listed");
            let Some(i) = runs.iter().position(|r| r.node == node) else {
                continue;
            };
            match want.get(&s) {
                None => {
                    runs.remove(i);
                    self.note(format!("{node} stops {s}"));
                }
                Some(&e) => {
                    runs[i].inc = inc;
                    if runs[i].epoch != e {
                        runs[i].epoch = e;
                        self.hold(&s, e, node);
                        self.note(format!("{node} keeps {s} at epoch {e}"));
                    }
                }
            }
        }
        for (s, &e) in want {
            let runs = self.running.entry(s.clone()).or_default();
            if runs.iter().any(|r| r.node == node) {
                continue;
            }
            let others: Vec<Run> = runs.clone();
            let since_ms = self.now_ms();
            self.running.get_mut(s).expect("inserted").push(Run {
                node: node.to_string(),
                epoch: e,
                since_ms,
                inc,
            });
            self.starts += 1;
            if self
                .last_node
                .insert(s.clone(), node.to_string())
                .is_some_and(|n| n != node)
            {
                self.moves += 1;
            }
            self.note(format!("{node} starts {s} at epoch {e}"));
            for o in others {
                self.violation(format!(
                    "{node} started {s} at epoch {e} while {} runs it at epoch {} since {} ms",
                    o.node, o.epoch, o.since_ms
                ));
            }
            self.hold(s, e, node);
        }
    }

    fn hold(&mut self, s: &str, e: u64, node: &str) {
        let h = self.holders.entry((s.to_string(), e)).or_default();
        h.insert(node.to_string());
        if h.len() > 1 {
            let h = h.clone();
            self.violation(format!("{s} held at epoch {e} by {h:?}"));
        }
    }

    /// Stops what `node` runs (only what incarnation `inc` started, if given).
    fn stop_node(&mut self, node: &str, inc: Option<u64>, why: &str) {
        let mut stopped = Vec::new();
        for (s, runs) in self.running.iter_mut() {
            runs.retain(|r| {
                let hit = r.node == node && inc.is_none_or(|i| r.inc == i);
                if hit {
                    stopped.push(s.clone());
                }
                !hit
            });
        }
        for s in stopped {
            self.note(format!("{node} stops {s} ({why})"));
        }
    }

    fn runs_on(&self, s: &str) -> Vec<String> {
        self.running
            .get(s)
            .map(|r| r.iter().map(|r| r.node.clone()).collect())
            .unwrap_or_default()
    }
}

/// A node's slot: its disk, and its running incarnation if up.
struct Slot {
    name: String,
    /// Its store's directory: what survives a crash.
    dir: std::path::PathBuf,
    /// Its `CLOCK_BOOTTIME` zero: nodes booted at different times.
    boot: Instant,
    inc: u64,
    up: Option<(Arc<Node>, CancellationToken)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Crash {
    /// The machine goes down: its services with it.
    PowerOff,
    /// The agent dies: its services run on until the guard kills them.
    Agent,
}

struct Sim {
    seed: u64,
    rng: Rng,
    members: Vec<Member>,
    net: Arc<Net>,
    ledger: Arc<Mutex<Ledger>>,
    slots: Vec<Slot>,
    schedule: Vec<String>,
    origin: Instant,
    services: u64,
    /// The node that votes and runs no services, if any.
    witness: Option<usize>,
    /// Where the nodes' stores live; removed with the simulation.
    _tmp: tempfile::TempDir,
}

const HEARTBEAT: Duration = Duration::from_millis(50);
const FENCE_AFTER: Duration = Duration::from_millis(1000);
const GUARD_GRACE: Duration = Duration::from_millis(300);
const MARGIN: Duration = Duration::from_millis(300);
/// Normal one-way delay, at most.
const DELAY_US: u64 = 8_000;

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let n = rng.range(3, 5) as usize;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                addr: format!("198.18.0.{}:9747", i + 1),
            })
            .collect();
        let witness = (n >= 4 && rng.chance(500)).then_some(n - 1);
        let origin = Instant::now();
        // On tmpfs where there is one: the stores fsync, and a simulation needs no disk.
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("a temporary directory");
        let slots = members
            .iter()
            .map(|m| Slot {
                name: m.name.clone(),
                dir: tmp.path().join(&m.name),
                boot: origin.checked_sub(rng.ms(0, 10_000)).unwrap_or(origin),
                inc: 0,
                up: None,
            })
            .collect();
        let net = Arc::new(Net(Mutex::new(NetState::new(
            DELAY_US,
            Rng::new(rng.next()),
        ))));
        let ledger = Arc::new(Mutex::new(Ledger {
            origin,
            running: BTreeMap::new(),
            holders: BTreeMap::new(),
            leaders: BTreeMap::new(),
            split_terms: BTreeSet::new(),
            views: BTreeMap::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            starts: 0,
            moves: 0,
            last_node: BTreeMap::new(),
        }));
        Sim {
            seed,
            rng,
            members,
            net,
            ledger,
            slots,
            schedule: Vec::new(),
            origin,
            services: 0,
            witness,
            _tmp: tmp,
        }
    }

    fn n(&self) -> usize {
        self.members.len()
    }

    fn event(&mut self, what: String) {
        let t = self.origin.elapsed().as_millis();
        self.schedule.push(format!("{t:>6} ms  {what}"));
        lock(&self.ledger).note(format!("FAULT {what}"));
    }

    fn settings(&self, i: usize) -> Settings {
        let mut s = Settings::new(self.members[i].clone());
        s.site = format!("site{}", i % 2);
        s.role = if self.witness == Some(i) {
            Role::Witness
        } else {
            Role::Voter
        };
        s.bootstrap = i == 0;
        s.heartbeat = HEARTBEAT;
        s.election_min = Duration::from_millis(200);
        s.election_max = Duration::from_millis(400);
        s.fence_after = FENCE_AFTER;
        s.guard_grace = GUARD_GRACE;
        s.margin = MARGIN;
        s.renew_every = Duration::from_millis(200);
        s.clock = Clock::Tokio {
            origin: self.slots[i].boot,
        };
        s
    }

    async fn start(&mut self, i: usize) -> Result<(), String> {
        let s = self.settings(i);
        let slot = &mut self.slots[i];
        assert!(slot.up.is_none());
        slot.inc += 1;
        let (node, stop) = boot(&self.net, &slot.dir, s).await?;
        node.set_hints(
            self.members
                .iter()
                .filter(|m| m.name != slot.name)
                .cloned()
                .collect(),
        );
        if self.witness != Some(i) {
            tokio::spawn(runtime(
                slot.name.clone(),
                slot.inc,
                node.clone(),
                self.ledger.clone(),
                stop.clone(),
            ));
        }
        slot.up = Some((node, stop));
        Ok(())
    }

    async fn crash(&mut self, i: usize, how: Crash) -> Result<(), String> {
        let slot = &mut self.slots[i];
        let Some((node, stop)) = slot.up.take() else {
            return Ok(());
        };
        unplug(&self.net, &slot.name);
        let lease = *node.lease().borrow();
        stop.cancel(); // the runtime task goes with the agent
        match how {
            Crash::PowerOff => lock(&self.ledger).stop_node(&slot.name, None, "power off"),
            Crash::Agent => {
                // The guard kills what still runs once the lease (as the node last knew it)
                // has run out, plus its grace.
                let now_ms = slot.boot.elapsed().as_millis() as u64;
                let until = slot.boot + Duration::from_millis(lease.until_ms.max(now_ms));
                let (ledger, name, inc) = (self.ledger.clone(), slot.name.clone(), slot.inc);
                tokio::spawn(async move {
                    sleep_until(until + GUARD_GRACE).await;
                    lock(&ledger).stop_node(&name, Some(inc), "the guard kills it");
                });
            }
        }
        // Shutting down stands for the process's end.
        halt(&slot.name, &node).await
    }

    /// The nodes that run services.
    fn hosts(&self) -> Vec<usize> {
        (0..self.n()).filter(|i| self.witness != Some(*i)).collect()
    }

    fn up(&self) -> Vec<usize> {
        (0..self.n())
            .filter(|i| self.slots[*i].up.is_some())
            .collect()
    }

    /// The leader as any up node knows it.
    fn known_leader(&self) -> Option<usize> {
        self.up().iter().find_map(|i| {
            let (l, _) = self.slots[*i].up.as_ref()?.0.leader();
            let name = l?.name;
            self.members.iter().position(|m| m.name == name)
        })
    }

    fn node(&self, i: usize) -> Option<Arc<Node>> {
        self.slots[i].up.as_ref().map(|(n, _)| n.clone())
    }

    fn define(
        &mut self,
        by: usize,
        must: bool,
    ) -> Option<tokio::task::JoinHandle<Result<(), String>>> {
        let node = self.node(by)?;
        let service = format!("s{}", self.services);
        self.services += 1;
        let ha = if self.rng.chance(200) {
            Ha::None
        } else {
            Ha::Restart
        };
        let cmd = Cmd::Define {
            service: service.clone(),
            node: self.members[by].name.clone(),
            spec: format!("spec of {service}"),
            ha,
        };
        self.event(format!(
            "{} defines {service} (ha {ha:?})",
            self.members[by].name
        ));
        Some(tokio::spawn(async move {
            match timeout(Duration::from_secs(10), node.write(cmd)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if must => Err(format!("defining {service}: {e}")),
                Err(_) if must => Err(format!("defining {service}: timed out")),
                _ => Ok(()),
            }
        }))
    }

    fn cut(&mut self, a: &[usize], b: &[usize]) {
        let mut s = lock(&self.net.0);
        for x in a {
            for y in b {
                if x != y {
                    s.cut
                        .insert(link(&self.members[*x].name, &self.members[*y].name));
                }
            }
        }
    }

    fn names(&self, of: &[usize]) -> Vec<String> {
        of.iter().map(|i| self.members[*i].name.clone()).collect()
    }

    /// Waits until the group has formed: every node a member, the voters chosen.
    async fn formed(&self, within: Duration) -> Result<(), String> {
        let want = if self.n() >= 3 { 3 } else { 1 };
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.known_leader().and_then(|l| self.node(l)) {
                let st = l.status();
                if st.state == "leader" && st.nodes.len() == self.n() && st.voters.len() == want {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("the group did not form within {within:?}"));
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    async fn run(mut self) -> Result<Stats, String> {
        let samp = tokio::spawn(sampler(self.net.clone(), self.ledger.clone()));
        let r = self.schedule_and_check().await;
        samp.abort();
        // Break the cycle node -> wire -> net -> node.
        let nodes: Vec<Arc<Node>> = std::mem::take(&mut lock(&self.net.0).up)
            .into_values()
            .collect();
        for s in &mut self.slots {
            s.up = None;
        }
        drop(nodes);
        let l = lock(&self.ledger);
        let report = |why: String| {
            format!(
                "seed {} ({} nodes, witness {:?}): {why}\n(openraft draws election timeouts from its own RNG: a replay of this seed runs the same schedule, not always the same run)\nreplay: GODWIT_SIM_SEED={} GODWIT_SIM_SEEDS=1 cargo test -p godwit-coord --lib sim_tests -- --nocapture\nschedule:\n{}\ntrace (last 300):\n{}",
                self.seed,
                self.n(),
                self.witness.map(|w| &self.members[w].name),
                self.seed,
                self.schedule.join("\n"),
                l.trace[l.trace.len().saturating_sub(300)..].join("\n")
            )
        };
        if !l.violations.is_empty() {
            return Err(report(format!(
                "invariants broken:\n  {}",
                l.violations.join("\n  ")
            )));
        }
        match r {
            Err(e) => Err(report(e)),
            Ok(()) => Ok(Stats {
                virtual_ms: l.now_ms(),
                terms: l.leaders.len() as u64,
                starts: l.starts,
                moves: l.moves,
                faults: self.schedule.len() as u64,
            }),
        }
    }

    async fn schedule_and_check(&mut self) -> Result<(), String> {
        // Form the group: n0 bootstraps, the others join through it.
        for i in 0..self.n() {
            self.start(i).await?;
        }
        self.formed(Duration::from_secs(20)).await?;
        let k = self.rng.range(2, 4);
        let hosts = self.hosts();
        for _ in 0..k {
            let by = *self.rng.pick(&hosts);
            let h = self.define(by, true).expect("all up");
            h.await.map_err(|e| e.to_string())??;
        }
        sleep(Duration::from_secs(1)).await;

        // Faults.
        let faults_end = Instant::now() + self.rng.ms(8_000, 16_000);
        let mut restarts: Vec<(Instant, usize)> = Vec::new();
        let mut unmute: Vec<(Instant, String)> = Vec::new();
        while Instant::now() < faults_end {
            let next = Instant::now() + self.rng.ms(100, 1500);
            // Due restarts and unmutes on the way.
            loop {
                let due = restarts
                    .iter()
                    .map(|r| r.0)
                    .chain(unmute.iter().map(|u| u.0))
                    .min();
                match due {
                    Some(t) if t <= next => {
                        sleep_until(t).await;
                        if let Some(p) = restarts.iter().position(|r| r.0 == t) {
                            let (_, i) = restarts.remove(p);
                            self.event(format!("{} restarts", self.members[i].name));
                            self.start(i).await?;
                        } else if let Some(p) = unmute.iter().position(|u| u.0 == t) {
                            let (_, name) = unmute.remove(p);
                            self.event(format!("{name} renews again"));
                            lock(&self.net.0).mute.remove(&name);
                        }
                    }
                    _ => break,
                }
            }
            sleep_until(next).await;
            self.fault(&mut restarts, &mut unmute).await?;
        }

        // Heal everything.
        self.event("heal: links, loss, delay, renewals; down nodes restart".into());
        {
            let mut s = lock(&self.net.0);
            s.cut.clear();
            s.loss = 0;
            s.delay_us = DELAY_US;
            s.mute.clear();
        }
        for i in 0..self.n() {
            if self.slots[i].up.is_none() {
                self.start(i).await?;
            }
        }
        self.settled(Duration::from_secs(30)).await?;
        self.witness_refuses_services().await
    }

    /// An operator who asks to move a service onto the witness is refused by the leader.
    async fn witness_refuses_services(&mut self) -> Result<(), String> {
        let Some(w) = self.witness else {
            return Ok(());
        };
        // The leader hears every node's renewal (and role) within a renewal period.
        sleep(self.settings(0).fence_after).await;
        let node = self.node(0).ok_or("n0 is down after the heal")?;
        let p = node.placement().borrow().clone();
        let Some(e) = p.services.values().find(|e| e.node.is_some()) else {
            return Ok(());
        };
        let cmd = Cmd::MigrateBegin {
            service: e.name.clone(),
            from: e.node.clone().unwrap_or_default(),
            to: self.members[w].name.clone(),
            expect: e.epoch,
        };
        self.event(format!("an operator moves {} onto the witness", e.name));
        match timeout(Duration::from_secs(10), node.write(cmd)).await {
            Ok(Ok((Outcome::Refused { .. }, _))) => Ok(()),
            other => Err(format!(
                "moving {} onto the witness was not refused: {other:?}",
                e.name
            )),
        }
    }

    async fn fault(
        &mut self,
        restarts: &mut Vec<(Instant, usize)>,
        unmute: &mut Vec<(Instant, String)>,
    ) -> Result<(), String> {
        let n = self.n();
        let all: Vec<usize> = (0..n).collect();
        match self.rng.range(0, 12) {
            0 => {
                // Two halves.
                let mut a = Vec::new();
                let mut b = Vec::new();
                for i in 0..n {
                    if self.rng.chance(500) {
                        a.push(i)
                    } else {
                        b.push(i)
                    }
                }
                self.event(format!(
                    "partition {:?} | {:?}",
                    self.names(&a),
                    self.names(&b)
                ));
                self.cut(&a, &b);
            }
            1 => {
                // The leader alone.
                if let Some(l) = self.known_leader() {
                    self.event(format!("isolate the leader {}", self.members[l].name));
                    self.cut(&[l], &all);
                }
            }
            2 => {
                // A bridge: one node sees both sides, the sides do not see each other.
                let b = self.rng.range(0, n as u64 - 1) as usize;
                let rest: Vec<usize> = all.iter().copied().filter(|i| *i != b).collect();
                let split = self.rng.range(1, rest.len() as u64 - 1) as usize;
                let (x, y) = rest.split_at(split);
                self.event(format!(
                    "bridge {}: {:?} | {:?}",
                    self.members[b].name,
                    self.names(x),
                    self.names(y)
                ));
                self.cut(x, y);
            }
            3 | 4 => {
                self.event("links heal".into());
                lock(&self.net.0).cut.clear();
            }
            5 => {
                let loss = *self.rng.pick(&[0, 0, 20, 100, 300]);
                let delay_us = *self.rng.pick(&[DELAY_US, DELAY_US, 20_000, 60_000]);
                self.event(format!("loss {loss}‰, delay up to {} ms", delay_us / 1000));
                let mut s = lock(&self.net.0);
                s.loss = loss;
                s.delay_us = delay_us;
            }
            6 | 7 => {
                let up = self.up();
                if up.is_empty() {
                    return Ok(());
                }
                let i = *self.rng.pick(&up);
                let how = if self.rng.chance(500) {
                    Crash::PowerOff
                } else {
                    Crash::Agent
                };
                let back = self.rng.ms(200, 5_000);
                self.event(format!(
                    "{} crashes ({how:?}), back in {} ms",
                    self.members[i].name,
                    back.as_millis()
                ));
                self.crash(i, how).await?;
                restarts.push((Instant::now() + back, i));
            }
            8 | 9 => {
                let i = self.rng.range(0, n as u64 - 1) as usize;
                let name = self.members[i].name.clone();
                let back = self.rng.ms(500, 4_000);
                self.event(format!("{name} stops renewing for {} ms", back.as_millis()));
                lock(&self.net.0).mute.insert(name.clone());
                unmute.push((Instant::now() + back, name));
            }
            10 => {
                // An operator cordons or uncordons a node, through any node.
                let up = self.up();
                if !up.is_empty() {
                    let by = *self.rng.pick(&up);
                    let node = self.members[self.rng.range(0, n as u64 - 1) as usize]
                        .name
                        .clone();
                    let on = self.rng.chance(600);
                    self.event(format!(
                        "cordon {node} {on} (through {})",
                        self.members[by].name
                    ));
                    let c = self.node(by).expect("up");
                    tokio::spawn(async move {
                        let _ = timeout(Duration::from_secs(10), c.write(Cmd::Cordon { node, on }))
                            .await;
                    });
                }
            }
            _ => {
                let up: Vec<usize> = self
                    .hosts()
                    .into_iter()
                    .filter(|i| self.slots[*i].up.is_some())
                    .collect();
                if !up.is_empty() {
                    let by = *self.rng.pick(&up);
                    let _ = self.define(by, false);
                }
            }
        }
        Ok(())
    }

    /// After the heal: one leader all know, the same applied index everywhere, every placed
    /// service running on its node.
    async fn settled(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            sleep(Duration::from_millis(100)).await;
            let why = self.unsettled();
            let Some(why) = why else { return Ok(()) };
            if Instant::now() > deadline {
                let statuses: Vec<String> = (0..self.n())
                    .filter_map(|i| self.node(i))
                    .map(|n| {
                        let s = n.status();
                        format!(
                            "{} {} leader={:?} term={} applied={} voters={:?} lease={:?} may_act={}",
                            s.me, s.state, s.leader, s.term, s.applied, s.voters, s.lease, s.lease.may_act()
                        )
                    })
                    .collect();
                return Err(format!(
                    "not settled {within:?} after the heal: {why}\n{}",
                    statuses.join("\n")
                ));
            }
        }
    }

    fn unsettled(&self) -> Option<String> {
        let nodes: Vec<Arc<Node>> = (0..self.n()).filter_map(|i| self.node(i)).collect();
        let views: BTreeSet<(Option<String>, u64)> = nodes
            .iter()
            .map(|n| {
                let (l, t) = n.leader();
                (l.map(|m| m.name), t)
            })
            .collect();
        if views.len() != 1 || views.iter().next().is_some_and(|v| v.0.is_none()) {
            return Some(format!("leader views differ: {views:?}"));
        }
        let applied: BTreeSet<u64> = nodes
            .iter()
            .map(|n| n.placement().borrow().applied)
            .collect();
        if applied.len() != 1 {
            return Some(format!("applied indexes differ: {applied:?}"));
        }
        let p = nodes[0].placement().borrow().clone();
        let l = lock(&self.ledger);
        for e in p.services.values() {
            let want: Vec<String> = e.node.iter().cloned().collect();
            let runs = l.runs_on(&e.name);
            if runs != want {
                return Some(format!("{} placed on {want:?} runs on {runs:?}", e.name));
            }
        }
        None
    }
}

/// A node's agent, as far as services go: run what the log places here while the lease lets
/// this node act, stop everything else.
async fn runtime(
    name: String,
    inc: u64,
    node: Arc<Node>,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let mut lease = node.lease();
    let mut placement = node.placement();
    let mut seen_lease = (false, 0);
    let mut seen_placement = String::new();
    loop {
        let view: LeaseView = *lease.borrow_and_update();
        let p = placement.borrow_and_update().clone();
        // The trace: lease grants and validity, and what the applied log says.
        let l = (view.valid, view.granted_at_index);
        let placed = format!(
            "{:?} fenced {:?}",
            p.services
                .values()
                .map(|e| format!(
                    "{}@{}:{}",
                    e.name,
                    e.node.as_deref().unwrap_or("-"),
                    e.epoch
                ))
                .collect::<Vec<_>>(),
            p.fenced.keys().collect::<Vec<_>>()
        );
        {
            let mut g = lock(&ledger);
            if l != seen_lease {
                g.note(format!(
                    "{name} lease valid {} until {} granted at index {} (applied {})",
                    view.valid, view.until_ms, view.granted_at_index, p.applied
                ));
                seen_lease = l;
            }
            if placed != seen_placement {
                g.note(format!("{name} applied {}: {placed}", p.applied));
                seen_placement = placed;
            }
        }
        let want: BTreeMap<String, u64> = if view.may_act() {
            p.on_node(&name)
                .map(|e| (e.name.clone(), e.epoch))
                .collect()
        } else {
            BTreeMap::new()
        };
        if stop.is_cancelled() {
            return;
        }
        lock(&ledger).reconcile(&name, inc, &want);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = lease.changed() => if r.is_err() { return },
            r = placement.changed() => if r.is_err() { return },
        }
    }
}

/// Every 10 ms, the leader and term every up node reports.
async fn sampler(net: Arc<Net>, ledger: Arc<Mutex<Ledger>>) {
    loop {
        let up: Vec<(String, Arc<Node>)> = lock(&net.0)
            .up
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (name, n) in up {
            let (l, term) = n.leader();
            let l = l.map(|m| m.name);
            let mut g = lock(&ledger);
            if g.views.get(&name) != Some(&(l.clone(), term)) {
                g.note(format!("{name} sees leader {l:?} in term {term}"));
                g.views.insert(name.clone(), (l.clone(), term));
            }
            if let Some(l) = l {
                g.leader(term, &l, &name);
            }
        }
        sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    virtual_ms: u64,
    terms: u64,
    starts: u64,
    moves: u64,
    faults: u64,
}

fn run_seed(seed: u64) -> Result<Stats, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(Sim::new(seed).run())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number")),
    )
}

#[test]
fn coordinator_keeps_its_promises_over_many_seeded_fault_schedules() {
    let seeds = env_u64("GODWIT_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("GODWIT_SIM_SEED").unwrap_or(1);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(seeds.max(1) as usize);
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(Stats::default());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + seeds || lock(&failures).len() >= 3 {
                    return;
                }
                match run_seed(seed) {
                    Ok(st) => {
                        let mut t = lock(&totals);
                        t.virtual_ms += st.virtual_ms;
                        t.terms += st.terms;
                        t.starts += st.starts;
                        t.moves += st.moves;
                        t.faults += st.faults;
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        lock(&failures).push(seed);
                    }
                }
            });
        }
    });
    let took = started.elapsed();
    let t = *lock(&totals);
    eprintln!(
        "{seeds} seeds from {first} on {threads} threads in {took:.1?} ({:.1} seeds/s): {} s of virtual time, {} faults, {} terms, {} service starts, {} on another node than before",
        seeds as f64 / took.as_secs_f64(),
        t.virtual_ms / 1000,
        t.faults,
        t.terms,
        t.starts,
        t.moves
    );
    let failures = lock(&failures);
    assert!(
        failures.is_empty(),
        "seeds that failed: {failures:?} (reports above)"
    );
}
