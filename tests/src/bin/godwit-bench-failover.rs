//! `cargo xtask bench failover [--write]` (`cargo run --release -p godwit-tests --bin
//! godwit-bench-failover [-- --write] [-- --runs N]`)
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
//! With `--write`, the markdown replaces the `bench:failover` section of `docs/BENCHMARKS.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godwit::coord::node::{Coordinator, Settings};
use godwit::coord::quic::{register, QuicWire};
use godwit::coord::{Cmd, CoordinatorSection, Ha, Member};
use godwit::transport::{init_ca, issue_node, Endpoint, Identity, Services};
use godwit_tests::bench::{machine, write_section};
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
        // Not while the voters change: a leader killed inside a joint configuration that still
        // names only itself leaves no quorum until it returns.
        if s.voters.len() == voters
            && !s.changing
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
    let md = rt.block_on(async {
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
    print!("{md}");
    if write {
        let path = write_section("failover", "Coordinator and failover", &md).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
