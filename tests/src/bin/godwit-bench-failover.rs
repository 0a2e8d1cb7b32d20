//! `cargo xtask bench failover [--write] [--runs N] [--netns-runs N] [--netns-only]
//! [--netns crash,crash-leader,fence]`
//! (`cargo run --release -p godwit-tests --bin godwit-bench-failover [-- ARGS]`)
//!
//! The coordinator with its default timers (`[coordinator]` defaults: heartbeat 100 ms,
//! election 500–1000 ms, lease 5 s, guard 1 s, margin 2 s), real Raft members over the real QUIC
//! transport with mutual TLS on loopback, each with its store on disk:
//! - log commit latency (a one-node group, and the leader of a three-node group);
//! - re-election: the leader of three voters is killed; time until both survivors name one
//!   new leader and a write commits through it;
//! - failover decision: a node holding a service is killed; time until the leader has fenced it
//!   and placed the service elsewhere, against the bound `fence_after + guard + margin` after
//!   its last renewal.
//!
//! `--runs N` (10) runs of each kill. Then, as root, with three release agents in network
//! namespaces (the rig of `godwit_tests::migrate_rig`) and the example `kvstore` behind a VIP,
//! `--netns-runs N` (5; 20 or more give a usable p99) runs of each of:
//! - crash to serving elsewhere, measured by a client of the service: the node running it
//!   loses power (its agent, fence guard and service SIGKILLed at once, its link down); the
//!   client's longest time without a reply, split into detection and the fence bound until the
//!   failover commits, the start on the new node, and the first reply (`crash`); the same
//!   with the service on the leader (`crash-leader`: a re-election first, and the new leader
//!   waits the fence bound from its election);
//! - fence latency: the node's link alone is cut; time until its own fence has emptied the
//!   service's cgroup, from the cut and from its last lease renewal (against `fence_after`),
//!   and until the service runs elsewhere (never before) (`fence`).
//!
//! `--netns` picks the scenarios (default `crash,fence`). A crash over the 15 s target keeps
//! its agents' logs under `/var/tmp/godwit-bench-failover-logs/`. `--netns-only` skips the
//! in-process figures, `--reelection-only` all but re-election. `GODWIT_LOG` set: the
//! in-process members log. Every run builds its own cluster, removed
//! (namespaces, cgroups, processes, state) even when the run fails; a failed run is listed
//! under the table.
//!
//! With `--write`, the markdown replaces the `bench:failover` section of `docs/BENCHMARKS.md`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit::coord::node::{Coordinator, Settings};
use godwit::coord::quic::{register, QuicWire};
use godwit::coord::{BootTime, Cmd, CoordinatorSection, Ha, Member};
use godwit::transport::{init_ca, issue_node, Endpoint, Identity, Services};
use godwit_tests::bench::{machine, release_bin, write_section};
use godwit_tests::migrate_rig::{KvOptions, MigrateRig, RigOptions, KV_PORT};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Node {
    coord: Arc<Coordinator<QuicWire>>,
    endpoint: Endpoint,
    serve: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn kill(self) {
        self.serve.abort();
        self.endpoint.close();
        self.coord.shutdown().await;
    }
}

async fn start(ca: &Path, base: &Path, name: &str, bootstrap: bool, hints: &[Member]) -> Node {
    let files = issue_node(ca, name, &base.join("tls").join(name)).unwrap();
    let endpoint = Endpoint::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Identity::load(name, &files).unwrap(),
    )
    .unwrap();
    let me = Member {
        name: name.into(),
        addr: endpoint.local_addr().unwrap().to_string(),
    };
    let settings: Settings = CoordinatorSection::default().settings(me, "", bootstrap);
    let (log, sm) = godwit::coord::store::open(&base.join(name)).await.unwrap();
    let placement = sm.watch();
    let coord = Coordinator::start(
        settings,
        QuicWire::new(endpoint.clone()),
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
    let ep = endpoint.clone();
    let serve = tokio::spawn(async move {
        while let Some(peer) = ep.accept().await {
            tokio::spawn(services.clone().serve(peer));
        }
    });
    Node {
        coord,
        endpoint,
        serve,
    }
}

/// A group of `n` nodes (n1 bootstraps) with `voters` voters and every lease held.
async fn group(ca: &Path, base: &Path, n: usize, voters: usize) -> Vec<Node> {
    eprintln!("  group of {n} in {}", base.display());
    let mut nodes = vec![start(ca, base, "n1", true, &[]).await];
    let hint = [nodes[0].coord.settings().me.clone()];
    for i in 2..=n {
        nodes.push(start(ca, base, &format!("n{i}"), false, &hint).await);
    }
    let t0 = Instant::now();
    loop {
        let s = nodes[0].coord.status();
        // Not while the voters change, on any node: a leader killed inside a joint configuration
        // that still names only itself leaves no quorum until it returns, and the leader leaves
        // the joint configuration (it appended the final one) before its followers do.
        if s.voters.len() == voters
            && nodes.iter().all(|x| !x.coord.status().changing)
            && nodes.iter().all(|x| x.coord.lease().borrow().may_act())
        {
            return nodes;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no group: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

async fn commit_latency(ca: &Path, base: &Path, n: usize, writes: usize) -> Vec<Duration> {
    let voters = if n >= 3 { 3 } else { 1 };
    let nodes = group(ca, base, n, voters).await;
    let mut out = Vec::with_capacity(writes);
    for _ in 0..writes {
        let t = Instant::now();
        nodes[0].coord.write(Cmd::Noop).await.unwrap();
        out.push(t.elapsed());
    }
    for x in nodes {
        x.kill().await;
    }
    out
}

async fn reelection(ca: &Path, base: &Path) -> Duration {
    let mut nodes = group(ca, base, 3, 3).await;
    let leader = nodes[0].coord.status().leader.unwrap();
    let i = nodes
        .iter()
        .position(|x| x.coord.settings().me.name == leader)
        .unwrap();
    let dead = nodes.remove(i);
    let t = Instant::now();
    eprintln!("  killing {leader}");
    dead.kill().await;
    eprintln!("  killed after {:?}", t.elapsed());
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no new leader: {:?}",
            nodes.iter().map(|x| x.coord.status()).collect::<Vec<_>>()
        );
        let names: Vec<Option<String>> = nodes.iter().map(|x| x.coord.status().leader).collect();
        if let Some(Some(l)) = names.first() {
            if *l != leader && names.iter().all(|x| x.as_deref() == Some(l.as_str())) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[0].coord.write(Cmd::Noop).await.unwrap();
    let took = t.elapsed();
    for x in nodes {
        x.kill().await;
    }
    took
}

/// (kill to placed elsewhere, last renewal to placed elsewhere).
async fn failover(ca: &Path, base: &Path) -> (Duration, Duration) {
    let mut nodes = group(ca, base, 3, 3).await;
    nodes[0]
        .coord
        .write(Cmd::Define {
            service: "svc".into(),
            node: "n3".into(),
            spec: "{}".into(),
            ha: Ha::Restart,
        })
        .await
        .unwrap();
    let victim = nodes.pop().unwrap();
    let until = victim.coord.lease().borrow().until_ms;
    let fence_after = victim.coord.settings().fence_after;
    let t = Instant::now();
    let killed_at = godwit::coord::BootTime::now();
    victim.kill().await;
    loop {
        let p = nodes[0].coord.placement().borrow().clone();
        if p.services["svc"].node.as_deref() != Some("n3") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no failover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t.elapsed();
    // The victim's last renewal was sent at its lease's end minus fence_after.
    let last_renewal = until.saturating_sub(fence_after.as_millis() as u64);
    let since_renewal = Duration::from_millis(killed_at.0 - last_renewal) + took;
    for x in nodes {
        x.kill().await;
    }
    (took, since_renewal)
}

/// The benchmark's directory, removed at the end.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Real agents in network namespaces: a client's view of a node crash, and the self-fence.
// ---------------------------------------------------------------------------------------------

/// How often the client sends a request.
const CLIENT_EVERY: Duration = Duration::from_millis(20);
/// How long the client waits for a connection or a reply before it drops the connection and
/// tries again at its next tick.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);

/// A client of the kvstore behind its VIP, from the root namespace (through the cluster's
/// uplink, as a client on the segment would): one `SET` every [`CLIENT_EVERY`] on one
/// connection, a new connection after any error or [`CLIENT_TIMEOUT`]. Records when each
/// reply came.
struct KvClient {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KvClient {
    fn start(addr: std::net::SocketAddr) -> KvClient {
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), replies.clone());
        let thread = std::thread::spawn(move || client_loop(addr, &s, &r));
        KvClient {
            stop,
            replies,
            thread: Some(thread),
        }
    }

    fn replies(&self) -> Vec<Instant> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `n` replies came in a row, each within two ticks of the one before.
    fn wait_steady(&self, n: usize, within: Duration) -> bool {
        godwit_tests::wait_for(within, || {
            let r = self.replies();
            (r.len() > n
                && r[r.len() - n..]
                    .windows(2)
                    .all(|w| w[1] - w[0] < CLIENT_EVERY * 2)
                && r[r.len() - 1].elapsed() < CLIENT_EVERY * 2)
                .then_some(())
        })
        .is_some()
    }
}

impl Drop for KvClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client_loop(addr: std::net::SocketAddr, stop: &AtomicBool, replies: &Mutex<Vec<Instant>>) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut next = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut once = || -> std::io::Result<()> {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
                s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
                s.set_nodelay(true)?;
                conn = Some((s.try_clone()?, BufReader::new(s)));
            }
            let (w, r) = conn.as_mut().expect("connected above");
            w.write_all(format!("SET probe {n}\n").as_bytes())?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            if line.starts_with("OK ") {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("reply {line:?}")))
            }
        };
        match once() {
            Ok(()) => replies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now()),
            Err(_) => conn = None,
        }
        next += CLIENT_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// A pseudo-random duration under `max` (the phase of a fault against the lease renewals,
/// which come every `fence_after / 5`).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    let x = nanos.wrapping_mul(6364136223846793005).rotate_left(17);
    Duration::from_millis(x % max.as_millis().max(1) as u64)
}

/// A JSON document from node `i`'s API, or `None` (no answer, not a 200, not JSON).
fn doc(rig: &MigrateRig, i: usize, path: &str) -> Option<Value> {
    match rig.c.get_timeout(i, path, Duration::from_millis(500)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// Three agents in namespaces, the coordinator with its default timers, every node holding a
/// lease; returns the rig and the leader's index.
fn netns_group() -> (MigrateRig, usize) {
    let s = CoordinatorSection::default();
    let rig = MigrateRig::new(RigOptions {
        agent_bin: Some(release_bin("godwit", "failover")),
        bin_dir: release_bin("kvstore", "failover")
            .parent()
            .map(Path::to_path_buf),
        coordinator: Some((s.fence_after_ms, s.guard_grace_ms, s.margin_ms)),
        ..RigOptions::coordinated(3)
    });
    let mut leader = None;
    for i in 1..=3 {
        let d = godwit_tests::wait_for(Duration::from_secs(60), || {
            let d = doc(&rig, i, "/v1/cluster")?;
            (d["voters"].as_array().map(Vec::len) == Some(3)
                && d["leader"].is_string()
                && d["may_act"] == true)
                .then_some(d)
        })
        .unwrap_or_else(|| panic!("n{i}: no group of 3 voters\n{}", rig.c.log(i)));
        leader = d["leader"].as_str().map(str::to_string);
    }
    let leader = leader.expect("a leader");
    let li = (1..=3)
        .find(|i| format!("n{i}") == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of n1..n3"));
    (rig, li)
}

/// `kv` (16 MiB of state, `ha = "restart"`, behind the VIP) added on node `i`; returns its
/// cgroup there.
fn add_kv(rig: &MigrateRig, i: usize) -> PathBuf {
    let mut spec = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 16 << 20,
            ..KvOptions::default()
        },
    );
    spec["ha"] = "restart".into();
    rig.add(i, &spec, Duration::from_secs(30));
    PathBuf::from(
        rig.service(i, "kv")["cgroup"]
            .as_str()
            .expect("a running service has a cgroup"),
    )
}

/// Node `i` runs `kv` (its status has a pid).
fn runs_kv(rig: &MigrateRig, i: usize) -> bool {
    doc(rig, i, "/v1/services")
        .and_then(|d| {
            d["services"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "kv")
                .map(|s| s["pid"].is_u64())
        })
        .unwrap_or(false)
}

/// Where node `i` has applied the log to place `kv`.
fn kv_placed(rig: &MigrateRig, i: usize) -> Option<String> {
    let d = doc(rig, i, "/v1/cluster")?;
    d["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "kv")
        .and_then(|s| s["node"].as_str().map(str::to_string))
}

/// A cgroup has a process.
fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
}

/// A gauge or counter from node `i`'s `/metrics`.
fn metric(rig: &MigrateRig, i: usize, name: &str) -> Option<f64> {
    let (code, text) = rig.c.get(i, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n.split('{').next() == Some(name))
            .then(|| v.parse::<f64>().ok())
            .flatten()
    })
}

/// One crash as a client sees it.
#[derive(Debug, Clone, Default)]
struct CrashRun {
    /// Last reply before the crash to the first reply after it: what the client saw.
    gap: Duration,
    /// Crash to the failover committed (as the first survivor to apply it saw it).
    to_commit: Duration,
    /// Commit to the service's process running on its new node.
    to_started: Duration,
    /// Process running to the client's first reply (health check, VIP, gratuitous ARP,
    /// the client's next try).
    to_reply: Duration,
    /// The leader's own figure: the lost node's last renewal (or its election) to the new
    /// placement (`godwit_failover_last_seconds`).
    decided_after_renewal: Option<Duration>,
    /// The node the service came back on.
    new_node: usize,
}

/// The client-measured target of a crash to serving elsewhere.
const CRASH_TARGET: Duration = Duration::from_secs(15);

/// Copies every agent's log of `rig` to a directory of its own under
/// `/var/tmp/godwit-bench-failover-logs/`, with `why`, and returns it: an outlier is explained
/// after its cluster is gone.
fn keep_logs(rig: &MigrateRig, why: &str) -> PathBuf {
    let dir =
        PathBuf::from("/var/tmp/godwit-bench-failover-logs").join(godwit_tests::unique("run"));
    let _ = std::fs::create_dir_all(&dir);
    for node in rig.c.nodes() {
        let _ = std::fs::copy(&node.log, dir.join(format!("{}.log", node.name)));
    }
    let _ = std::fs::write(dir.join("why.txt"), why);
    dir
}

/// A node crashes as a machine losing power would: its agent, the agent's fence guard and
/// every service process are SIGKILLed at once (`cgroup.kill` of the agent's cgroup and of the
/// node's services' parent cgroup) and its link goes down (nothing answers for its addresses,
/// the VIP among them). `kv` ran there; a client keeps asking the VIP.
fn crash_run(leader_crash: bool) -> CrashRun {
    let (rig, leader) = netns_group();
    let victim = if leader_crash {
        leader
    } else {
        (1..=3).find(|i| *i != leader).expect("a follower")
    };
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != victim).collect();
    let kv_cgroup = add_kv(&rig, victim);
    let services = kv_cgroup
        .parent()
        .expect("a service's cgroup has a parent")
        .to_path_buf();
    let agent = rig.c.node(victim).cgroup.clone();
    assert!(populated(&agent), "n{victim}'s agent cgroup is empty");

    let client = KvClient::start(std::net::SocketAddr::from((rig.vip, KV_PORT)));
    assert!(
        client.wait_steady(25, Duration::from_secs(10)),
        "no steady replies from kv on n{victim} through {}",
        rig.vip
    );
    std::thread::sleep(jitter(Duration::from_millis(1000)));

    let t0 = Instant::now();
    std::fs::write(agent.join("cgroup.kill"), "1").expect("kill the agent's cgroup");
    std::fs::write(services.join("cgroup.kill"), "1").expect("kill the services' cgroup");
    rig.c.link_down(victim);
    let cut = Instant::now();
    eprintln!(
        "    n{victim}{} crashed (kill and link down in {} ms)",
        if leader_crash { " (leader)" } else { "" },
        ms(cut - t0)
    );

    let (mut commit, mut started, mut reply) = (None, None, None);
    let mut new_node = None;
    loop {
        let now = Instant::now();
        assert!(
            now - t0 < Duration::from_secs(60),
            "kv not serving elsewhere 60 s after the crash of n{victim}: committed {commit:?} \
             on {new_node:?}, started {started:?}\n{}",
            survivors
                .iter()
                .map(|i| rig.c.log(*i))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if commit.is_none() {
            for i in &survivors {
                if let Some(n) = kv_placed(&rig, *i) {
                    if n != format!("n{victim}") {
                        commit = Some(Instant::now());
                        new_node = (1..=3).find(|j| format!("n{j}") == n);
                        assert!(
                            new_node.is_some_and(|j| j != victim),
                            "kv placed on {n}, not a survivor"
                        );
                        break;
                    }
                }
            }
        }
        if let (Some(_), None, Some(n)) = (commit, started, new_node) {
            if runs_kv(&rig, n) {
                started = Some(Instant::now());
            }
        }
        if reply.is_none() {
            reply = client.replies().into_iter().find(|t| *t > cut);
        }
        if started.is_some() && reply.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let replies = client.replies();
    drop(client);
    let (commit, started, reply) = (commit.unwrap(), started.unwrap(), reply.unwrap());
    let new_node = new_node.unwrap();
    // Exactly one survivor runs it (asked once the client is served).
    let on: Vec<usize> = survivors
        .iter()
        .copied()
        .filter(|i| runs_kv(&rig, *i))
        .collect();
    assert_eq!(on, vec![new_node], "kv runs on {on:?} after the failover");
    let last = replies
        .iter()
        .copied()
        .filter(|t| *t <= t0)
        .max()
        .expect("replies before the crash");
    let leader_now = survivors
        .iter()
        .copied()
        .find(|i| doc(&rig, *i, "/v1/cluster").is_some_and(|d| d["state"] == "leader"))
        .or_else(|| survivors.first().copied());
    let decided = leader_now
        .and_then(|i| metric(&rig, i, "godwit_failover_last_seconds"))
        .map(Duration::from_secs_f64);
    let run = CrashRun {
        gap: reply - last,
        to_commit: commit.saturating_duration_since(t0),
        to_started: started.saturating_duration_since(commit),
        to_reply: reply.saturating_duration_since(started),
        decided_after_renewal: decided,
        new_node,
    };
    if run.gap > CRASH_TARGET {
        let why = format!("n{victim} crashed (leader: {leader_crash}): {run:?}\n");
        eprintln!(
            "    over the target; logs kept in {}",
            keep_logs(&rig, &why).display()
        );
    }
    run
}

/// One self-fence.
#[derive(Debug, Clone, Default)]
struct FenceRun {
    /// The cut to the service's cgroup found empty.
    cut_to_killed: Duration,
    /// The node's last lease renewal (when it sent it) to the cgroup found empty.
    renewal_to_killed: Duration,
    /// The lease's end to the cgroup found empty (negative never: then it is zero).
    lease_end_to_killed: Duration,
    /// The cgroup found empty to `kv` running on another node.
    killed_to_elsewhere: Duration,
}

/// A follower holding `kv` has its link cut (the node itself keeps running). Time until its
/// own fence empties `kv`'s cgroup, against its lease, and until `kv` runs elsewhere.
fn fence_run() -> FenceRun {
    let (rig, leader) = netns_group();
    let victim = (1..=3).find(|i| *i != leader).expect("a follower");
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != victim).collect();
    let kv_cgroup = add_kv(&rig, victim);
    std::thread::sleep(jitter(Duration::from_millis(1000)));

    let (t0, b0) = (Instant::now(), BootTime::now());
    rig.c.link_down(victim);
    // Its last grant: asked inside its namespace (its link is down), after any reply that was
    // on the way at the cut.
    std::thread::sleep(Duration::from_millis(300));
    let until = rig
        .c
        .get_from(victim, victim, "/v1/cluster")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|d| d["lease"]["until_ms"].as_u64())
        .expect("the cut node's lease");
    let (mut killed, mut elsewhere) = (None, None);
    // The survivors' APIs every 20 ms, the cgroup every 2 ms.
    let mut asked = t0;
    while killed.is_none() || elsewhere.is_none() {
        let now = Instant::now();
        assert!(
            now - t0 < Duration::from_secs(60),
            "after the cut of n{victim}: killed {killed:?}, elsewhere {elsewhere:?}\n{}",
            rig.c.log(victim)
        );
        if killed.is_none() && !populated(&kv_cgroup) {
            killed = Some(now);
        }
        if elsewhere.is_none() && now - asked >= Duration::from_millis(20) {
            asked = now;
            if survivors.iter().any(|i| runs_kv(&rig, *i)) {
                let at = Instant::now();
                assert!(
                    killed.is_some() || !populated(&kv_cgroup),
                    "kv runs elsewhere while n{victim}'s copy still runs, {} ms after the cut",
                    ms(at - t0)
                );
                elsewhere = Some(at);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (killed, elsewhere) = (killed.unwrap(), elsewhere.unwrap());
    let fence_after = CoordinatorSection::default().fence_after_ms;
    let killed_boot = b0.0 + (killed - t0).as_millis() as u64;
    FenceRun {
        cut_to_killed: killed - t0,
        renewal_to_killed: Duration::from_millis(
            killed_boot.saturating_sub(until.saturating_sub(fence_after)),
        ),
        lease_end_to_killed: Duration::from_millis(killed_boot.saturating_sub(until)),
        killed_to_elsewhere: elsewhere.saturating_duration_since(killed),
    }
}

/// Runs `f` `runs` times, each in a fresh rig; a run that fails is reported and counted.
fn repeat<T>(
    what: &str,
    runs: usize,
    f: impl Fn() -> T,
    show: impl Fn(&T) -> String,
) -> (Vec<T>, Vec<String>) {
    let (mut ok, mut failed) = (Vec::new(), Vec::new());
    for r in 0..runs {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f)) {
            Ok(x) => {
                eprintln!("{what} {r}: {}", show(&x));
                ok.push(x);
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                eprintln!("{what} {r}: FAILED: {msg}");
                failed.push(msg);
            }
        }
    }
    (ok, failed)
}

/// p50, p99 and max of `f` over `runs`, as table cells.
fn cells<T>(runs: &[T], f: impl Fn(&T) -> Duration) -> String {
    let mut v: Vec<Duration> = runs.iter().map(f).collect();
    format!(
        "{} ms | {} ms | {} ms",
        ms(pct(&mut v, 0.5)),
        ms(pct(&mut v, 0.99)),
        ms(pct(&mut v, 1.0))
    )
}

/// The crash-to-serving and fence figures as markdown.
fn netns_section(runs: usize, scenarios: &[String]) -> String {
    let on = |name: &str| scenarios.iter().any(|s| s == name);
    let s = CoordinatorSection::default();
    let bound = s.fence_after_ms + s.guard_grace_ms + s.margin_ms;
    let show_crash = |c: &CrashRun| {
        format!(
            "client gap {} ms (crash to commit {} ms, to started {} ms, to reply {} ms; \
             leader: {:?} after the last renewal) on n{}",
            ms(c.gap),
            ms(c.to_commit),
            ms(c.to_started),
            ms(c.to_reply),
            c.decided_after_renewal.map(ms),
            c.new_node
        )
    };
    let (follower, f_failed) = if on("crash") {
        repeat("crash (follower)", runs, || crash_run(false), show_crash)
    } else {
        (Vec::new(), Vec::new())
    };
    let (leader, l_failed) = if on("crash-leader") {
        repeat("crash (leader)", runs, || crash_run(true), show_crash)
    } else {
        (Vec::new(), Vec::new())
    };
    let (fence, fence_failed) = if !on("fence") {
        (Vec::new(), Vec::new())
    } else {
        repeat("fence", runs, fence_run, |f| {
            format!(
                "cut to killed {} ms, last renewal to killed {} ms, lease end to killed {} ms, \
             killed to running elsewhere {} ms",
                ms(f.cut_to_killed),
                ms(f.renewal_to_killed),
                ms(f.lease_end_to_killed),
                ms(f.killed_to_elsewhere)
            )
        })
    };

    let mut md = String::from("### Crash to serving elsewhere, and the self-fence\n\n");
    md += &format!(
        "Three agents (release) in network namespaces on one bridge, default `[coordinator]` \
         timers (lease {} ms, guard {} ms, margin {} ms: the fence bound is {bound} ms after \
         the lost node's last renewal), the example `kvstore` (16 MiB, `ha = \"restart\"`) \
         behind a VIP. A client in the root namespace sends a `SET` to the VIP every {} ms \
         on one connection, and reconnects after any error or {} ms without an answer; the \
         VIP follows the service (added by the new node once the service is healthy, with a \
         gratuitous ARP). A **crash** kills the node's agent, its fence guard and its service \
         at once (`cgroup.kill`) and takes its link down, as a power loss would. A **cut** \
         takes only the link down: the node runs on and must fence itself. A fresh cluster \
         for each run; {runs} runs of each (20 or more give a usable p99).\n\n",
        s.fence_after_ms,
        s.guard_grace_ms,
        s.margin_ms,
        CLIENT_EVERY.as_millis(),
        CLIENT_TIMEOUT.as_millis()
    );
    md += "| figure | p50 | p99 | max | target |\n|---|---:|---:|---:|---|\n";
    let mut crash_rows = |label: &str, v: &[CrashRun]| {
        if v.is_empty() {
            return;
        }
        md += &format!(
            "| {label}: client's last reply before the crash to its first reply after | {} | ≤ 15 s p99 |\n",
            cells(v, |c| c.gap)
        );
        md += &format!(
            "| … crash to the failover committed (detection and the fence bound) | {} | |\n",
            cells(v, |c| c.to_commit)
        );
        md += &format!(
            "| … committed to the service's process started on the new node | {} | |\n",
            cells(v, |c| c.to_started)
        );
        md += &format!(
            "| … started to the client's first reply (health, VIP, ARP, retry) | {} | |\n",
            cells(v, |c| c.to_reply)
        );
        let decided: Vec<Duration> = v.iter().filter_map(|c| c.decided_after_renewal).collect();
        if !decided.is_empty() {
            md += &format!(
                "| … the leader's decision, from {} | {} | ≥ {bound} ms |\n",
                if label.contains("leader") {
                    "its own election"
                } else {
                    "the node's last renewal"
                },
                cells(&decided, |d| *d)
            );
        }
    };
    crash_rows("crash of a follower", &follower);
    crash_rows("crash of the leader", &leader);
    if !fence.is_empty() {
        md += &format!(
            "| cut: link down to its service killed by its own fence | {} | |\n",
            cells(&fence, |f| f.cut_to_killed)
        );
        md += &format!(
            "| cut: its last lease renewal to its service killed | {} | ≈ {} ms (the lease), < {} ms (the guard's bound) |\n",
            cells(&fence, |f| f.renewal_to_killed),
            s.fence_after_ms,
            s.fence_after_ms + s.guard_grace_ms
        );
        md += &format!(
            "| cut: its lease's end to its service killed | {} | < {} ms |\n",
            cells(&fence, |f| f.lease_end_to_killed),
            s.guard_grace_ms
        );
        md += &format!(
            "| cut: its service killed to running on another node | {} | > 0 |\n",
            cells(&fence, |f| f.killed_to_elsewhere)
        );
    }
    md += "\nA crashed node's service comes back after the fence bound (counted by the leader \
           from the node's last renewal, or from its own election when the leader crashed), \
           plus the service's start, its health check and the client's next try.\n\n";
    let failed: Vec<&String> = f_failed
        .iter()
        .chain(&l_failed)
        .chain(&fence_failed)
        .collect();
    if !failed.is_empty() {
        md += &format!("**{} run(s) failed:**\n\n", failed.len());
        for f in failed {
            md += &format!("- {}\n", f.lines().next().unwrap_or(""));
        }
        md += "\n";
    }
    md
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args.iter().any(|a| a == "--write");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if std::env::var_os("GODWIT_LOG").is_some() {
        godwit::daemon::init_logging(&godwit::config::Config::default());
    }
    let only_reelection = args.iter().any(|a| a == "--reelection-only");
    let netns_runs: usize = args
        .iter()
        .position(|a| a == "--netns-runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let netns_only = args.iter().any(|a| a == "--netns-only");
    let scenarios: Vec<String> = args
        .iter()
        .position(|a| a == "--netns")
        .and_then(|i| args.get(i + 1))
        .map_or("crash,fence", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    if let Some(bad) = scenarios
        .iter()
        .find(|s| !["crash", "crash-leader", "fence"].contains(&s.as_str()))
    {
        eprintln!("--netns: unknown scenario {bad:?} (crash, crash-leader, fence)");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base =
        std::path::PathBuf::from("/var/tmp").join(godwit_tests::unique("godwit-bench-failover"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = Dir(base);
    let ca = dir.path().join("ca");
    init_ca(&ca, "bench").unwrap();
    let mut md = rt.block_on(async {
        if netns_only {
            return String::new();
        }
        if only_reelection {
            for r in 0..runs {
                let d = reelection(&ca, &dir.path().join(format!("re{r}"))).await;
                eprintln!("re-election {r}: {} ms", ms(d));
            }
            return String::new();
        }
        let mut c1 = commit_latency(&ca, &dir.path().join("c1"), 1, 200).await;
        let mut c3 = commit_latency(&ca, &dir.path().join("c3"), 3, 200).await;
        eprintln!("commit: 1 node p50 {} ms, 3 nodes p50 {} ms", ms(pct(&mut c1, 0.5)), ms(pct(&mut c3, 0.5)));
        let mut re = Vec::new();
        for r in 0..runs {
            let d = reelection(&ca, &dir.path().join(format!("re{r}"))).await;
            eprintln!("re-election {r}: {} ms", ms(d));
            re.push(d);
        }
        let (mut fo, mut fo_r) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let (d, since) = failover(&ca, &dir.path().join(format!("fo{r}"))).await;
            eprintln!("failover {r}: {} ms after the kill, {} ms after the last renewal", ms(d), ms(since));
            fo.push(d);
            fo_r.push(since);
        }
        let s = CoordinatorSection::default();
        let bound = s.fence_after_ms + s.guard_grace_ms + s.margin_ms;
        let mut md = String::from("### Coordinator: commit, re-election, failover decision\n\n");
        md += "`cargo xtask bench failover --write` (`godwit-bench-failover`, release), on ";
        md += &machine();
        md += &format!(
            ".\n\nReal Raft members (openraft 0.9.25) over the QUIC transport with mutual TLS on \
             loopback, each with its log fsynced on disk (`/var/tmp`), default `[coordinator]` \
             timers (election {}–{} ms, lease {} ms, guard {} ms, margin {} ms). {runs} runs \
             of each kill, a fresh group each time.\n\n",
            s.election_min_ms, s.election_max_ms, s.fence_after_ms, s.guard_grace_ms, s.margin_ms
        );
        md += "| figure | p50 | p99 | max | target |\n|---|---:|---:|---:|---|\n";
        md += &format!(
            "| log commit, 1 node (200 writes) | {} ms | {} ms | {} ms | |\n",
            ms(pct(&mut c1, 0.5)),
            ms(pct(&mut c1, 0.99)),
            ms(pct(&mut c1, 1.0))
        );
        md += &format!(
            "| log commit, leader of 3 (200 writes) | {} ms | {} ms | {} ms | |\n",
            ms(pct(&mut c3, 0.5)),
            ms(pct(&mut c3, 0.99)),
            ms(pct(&mut c3, 1.0))
        );
        md += &format!(
            "| re-election: leader killed to a write through the new one | {} ms | {} ms | {} ms | ≤ 3 s p99 |\n",
            ms(pct(&mut re, 0.5)),
            ms(pct(&mut re, 0.99)),
            ms(pct(&mut re, 1.0))
        );
        md += &format!(
            "| failover decision: node killed to its service placed elsewhere | {} ms | {} ms | {} ms | |\n",
            ms(pct(&mut fo, 0.5)),
            ms(pct(&mut fo, 0.99)),
            ms(pct(&mut fo, 1.0))
        );
        md += &format!(
            "| the same, from the node's last lease renewal | {} ms | {} ms | {} ms | ≥ {bound} ms (the fence bound) |\n\n",
            ms(pct(&mut fo_r, 0.5)),
            ms(pct(&mut fo_r, 0.99)),
            ms(pct(&mut fo_r, 1.0))
        );
        md += "The failover decision is the bound by design: a node's services start elsewhere only \
               once its lease and its guard's grace have surely run out. Serving there adds the \
               service's own start.\n\n";
        md
    });
    if !only_reelection && netns_runs > 0 {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            md += &netns_section(netns_runs, &scenarios);
        } else {
            eprintln!(
                "not root: the crash-to-serving and fence figures need network namespaces and \
                 cgroups; skipped"
            );
        }
    }
    print!("{md}");
    if write {
        let path = write_section("failover", "Coordinator and failover", &md).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
