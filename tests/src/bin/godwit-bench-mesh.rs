//! `cargo xtask bench mesh [--quick]`; also
//! `cargo run --release -p godwit-tests --bin godwit-bench-mesh -- [--quick] [--nodes N,..]
//! [--loss P,..] [--delay-ms D] [--jitter-ms J] [--services S]`.
//!
//! The mesh at sizes two cores cannot run in real time. N real gossip nodes
//! (`godwit::gossip::Cluster`: chitchat 0.13, the sealed transport, the view) in one process,
//! their sealed datagrams carried by the simulated network of `godwit_gossip::sim` (one-way
//! delay, jitter, loss) on tokio's paused clock: every figure below is in virtual time, so it
//! is the protocol's, whatever the machine. Gossip interval and failure detector are the
//! `[gossip]` defaults. All nodes start within one second, evenly spaced, so their rounds are
//! spread over the interval as separate machines' would be; the first three are every node's
//! seeds.
//!
//! For each size and loss rate, after the cluster converged (every node sees every other
//! live, alive or suspect, with its summary), it measures:
//!
//! - bytes per second per node, sent on the wire (sealed), over a 2 s steady window;
//! - the time for a changed summary to reach 99% and 100% of the other nodes;
//! - the time for a stopped node to be marked dead by 99% and 100% of the others;
//! - the wall time the whole scenario took, and the process's peak RSS so far.
//!
//! It prints a markdown table, with Serf's convergence model beside it. One process holds every
//! node's state of every other, so memory grows with the square of the size (about 16 KiB per
//! pair of nodes): a size that does not fit in the machine's available memory is skipped, with
//! a line saying what it would need.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use godwit::gossip::{
    Addresses, Capacity, Cluster, ClusterKey, ClusterView, FailureDetection, GossipConfig,
    HostedService, Keyring, Liveness, Load, Member, Network, NodeSummary, Security, SCHEMA_VERSION,
};
use godwit_gossip::sim::{self, Link, SimNetwork};
use godwit_tests::bench::machine;
use godwit_tests::views;
use tokio::time::Instant;

/// All nodes start within this time, evenly spaced, so that their gossip rounds are spread
/// over the interval as separate machines' would be.
const START_WINDOW: Duration = Duration::from_secs(1);
/// Hosted services in each node's summary (`--services`).
static SERVICES: AtomicUsize = AtomicUsize::new(6);
/// The steady window bytes on the wire are measured over.
const STEADY_WINDOW: Duration = Duration::from_secs(2);
/// Serf's convergence simulator with its defaults (gossip interval 200 ms, fanout 3, no loss,
/// no failures): a message reaches all of 1,000 nodes in about 2.2 s.
const SERF_1000_S: f64 = 2.2;

#[derive(Debug, Clone, Copy)]
struct Scenario {
    nodes: usize,
    loss: f64,
}

#[derive(Debug, Default)]
struct Outcome {
    started_s: f64,
    converged_s: Option<f64>,
    kb_per_s_per_node: Option<f64>,
    datagrams_per_s_per_node: Option<f64>,
    change_p99_s: Option<f64>,
    change_p100_s: Option<f64>,
    detect_p99_s: Option<f64>,
    detect_p100_s: Option<f64>,
    seal_drops: u64,
    wall_s: f64,
    peak_rss_mib: f64,
}

fn summary(i: usize, cpu: f64) -> NodeSummary {
    NodeSummary {
        schema: SCHEMA_VERSION,
        site: format!("site-{}", i % 4),
        addresses: Addresses {
            quic: Some(SocketAddr::from((ip(i), 9748))),
            api: Some(SocketAddr::from((ip(i), 9746))),
        },
        capacity: Capacity {
            cpu_cores: 8.0,
            memory_bytes: 16 << 30,
            network_bytes_per_sec: 125_000_000,
            disk_bytes: 500 << 30,
        },
        load: Load {
            cpu,
            memory: 0.5,
            network: 0.1,
            dirty_bytes_per_sec: 2e6,
        },
        services: (0..SERVICES.load(Ordering::Relaxed))
            .map(|s| HostedService {
                id: format!("svc-{i}-{s}"),
                state_bytes: 256 << 20,
                image: format!("{:064x}", i * 31 + s),
                ..HostedService::default()
            })
            .collect(),
        risk: 0.1,
        switch_latencies_ms: vec![40, 55, 61, 70],
        ..NodeSummary::default()
    }
}

/// Node `i`'s address on the simulated network (198.18.0.0/15).
fn ip(i: usize) -> [u8; 4] {
    [198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

fn name(i: usize) -> String {
    format!("node-{i:04}")
}

fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// `view`'s member named `node_id` (members are sorted by node id).
fn member<'a>(view: &'a ClusterView, node_id: &str) -> Option<&'a Member> {
    view.members
        .binary_search_by(|m| m.id.node_id.as_str().cmp(node_id))
        .ok()
        .map(|i| &view.members[i])
}

/// What keeps the nodes from converging: over all (observer, member) pairs, members absent
/// from the observer's view, and present ones by liveness and summary.
fn missing(nodes: &[Option<Cluster>]) -> String {
    let n = nodes.iter().flatten().count();
    let (mut absent, mut suspect, mut dead, mut other, mut no_summary) = (0, 0, 0, 0, 0);
    for c in nodes.iter().flatten() {
        let v = c.view();
        absent += n.saturating_sub(v.members.len());
        for m in &v.members {
            match m.liveness {
                Liveness::Alive => {}
                Liveness::Suspect => suspect += 1,
                Liveness::Dead => dead += 1,
                _ => other += 1,
            }
            no_summary += usize::from(m.summary.is_none());
        }
    }
    format!(
        "pairs: {absent} absent, {suspect} suspect, {dead} dead, {other} other, {no_summary} without a summary"
    )
}

/// Virtual seconds until `cond` holds on 99% and on 100% of the nodes other than `skip`
/// (`None` past `deadline`), printing a progress line every virtual second with `diag`.
async fn spread_with(
    nodes: &[Option<Cluster>],
    skip: usize,
    deadline: Duration,
    cond: impl Fn(&Cluster) -> bool,
    diag: impl Fn(&[Option<Cluster>]) -> String,
) -> (Option<f64>, Option<f64>) {
    let wall = std::time::Instant::now();
    let mut report = Duration::from_secs(1);
    views::spread(nodes, skip, deadline, cond, |f, elapsed| {
        if elapsed >= report {
            eprintln!(
                "    {:.0}% after {:.1} s virtual ({:.0} s wall) {}",
                f * 100.0,
                elapsed.as_secs_f64(),
                wall.elapsed().as_secs_f64(),
                diag(nodes)
            );
            report += Duration::from_secs(1);
        }
    })
    .await
}

/// As [`spread_with`], with nothing said of what is missing.
async fn spread(
    nodes: &[Option<Cluster>],
    skip: usize,
    deadline: Duration,
    cond: impl Fn(&Cluster) -> bool,
) -> (Option<f64>, Option<f64>) {
    spread_with(nodes, skip, deadline, cond, |_| String::new()).await
}

async fn run(s: Scenario, link: Link) -> Outcome {
    let wall = std::time::Instant::now();
    let net = SimNetwork::new(
        Link {
            loss: s.loss,
            ..link
        },
        0x6d65_7368 ^ s.nodes as u64,
    );
    let keyring = Keyring::new(ClusterKey::generate());
    let fd = FailureDetection::default();
    let seeds: Vec<String> = (0..3.min(s.nodes))
        .map(|i| SocketAddr::from((ip(i), 7946)).to_string())
        .collect();
    let t0 = Instant::now();
    let mut nodes: Vec<Option<Cluster>> = Vec::with_capacity(s.nodes);
    let spacing = START_WINDOW / s.nodes.max(1) as u32;
    for i in 0..s.nodes {
        tokio::time::sleep(spacing).await;
        let mut cfg = GossipConfig::new(name(i), SocketAddr::from((ip(i), 7946)));
        cfg.failure_detection = fd.clone();
        cfg.seeds = seeds
            .iter()
            .filter(|&a| *a != cfg.listen_addr.to_string())
            .cloned()
            .collect();
        cfg.security = Security::Sealed(keyring.clone());
        let c = Cluster::start(cfg, Network::Sim(net.clone()))
            .await
            .expect("start a gossip node");
        c.publish(&summary(i, 0.3)).await.expect("publish");
        nodes.push(Some(c));
    }
    let n = s.nodes;
    let mut r = Outcome {
        started_s: t0.elapsed().as_secs_f64(),
        ..Outcome::default()
    };
    eprintln!(
        "  {n} nodes started ({:.1} s virtual, {:.1} s wall)",
        r.started_s,
        wall.elapsed().as_secs_f64()
    );
    let finish = |mut r: Outcome, nodes: &[Option<Cluster>]| {
        r.seal_drops = nodes
            .iter()
            .flatten()
            .filter_map(|c| c.seal_stats())
            .map(|s| s.dropped())
            .sum();
        r.wall_s = wall.elapsed().as_secs_f64();
        r.peak_rss_mib = peak_rss_mib();
        r
    };

    // Converged: every node sees every other live (alive or suspect, as the agent's own member
    // count has it: suspect is an early warning at half the detection timeout, which flickers
    // at a thousand members as heartbeats take longer and less even paths), with its summary.
    let (_, converged) = spread_with(
        &nodes,
        usize::MAX,
        Duration::from_secs(120),
        |c| {
            let v = c.view();
            v.members.len() == n
                && v.members.iter().all(|m| {
                    matches!(m.liveness, Liveness::Alive | Liveness::Suspect) && m.summary.is_some()
                })
        },
        missing,
    )
    .await;
    r.converged_s = converged.map(|_| t0.elapsed().as_secs_f64());
    eprintln!(
        "  converged: {:?} s virtual since the first start ({:.1} s wall)",
        r.converged_s,
        wall.elapsed().as_secs_f64()
    );
    if converged.is_none() {
        return finish(r, &nodes);
    }

    // Steady state: bytes on the wire over a window.
    let window = STEADY_WINDOW;
    let sent = |nodes: &[Option<Cluster>]| -> (u64, u64) {
        nodes.iter().flatten().fold((0, 0), |(d, b), c| {
            let t = c.traffic();
            (d + t.sent, b + t.bytes_sent)
        })
    };
    let (d0, b0) = sent(&nodes);
    tokio::time::sleep(window).await;
    let (d1, b1) = sent(&nodes);
    let per_node_s = window.as_secs_f64() * n as f64;
    r.kb_per_s_per_node = Some((b1 - b0) as f64 / per_node_s / 1e3);
    r.datagrams_per_s_per_node = Some((d1 - d0) as f64 / per_node_s);

    // A change on one node reaching the others.
    let changer = n / 2;
    if let Some(c) = &nodes[changer] {
        c.publish(&summary(changer, 0.777)).await.expect("publish");
    }
    let cname = name(changer);
    let (p99, p100) = spread(&nodes, changer, Duration::from_secs(60), |c| {
        member(&c.view(), &cname)
            .and_then(|m| m.summary.as_ref())
            .is_some_and(|s| (s.load.cpu - 0.777).abs() < 1e-9)
    })
    .await;
    r.change_p99_s = p99;
    r.change_p100_s = p100;
    eprintln!(
        "  change: 99% {p99:?} s, 100% {p100:?} s ({:.1} s wall)",
        wall.elapsed().as_secs_f64()
    );

    // A node stopping (without leaving: a crash, as far as the others can tell).
    let victim = n - 1;
    let vname = name(victim);
    if let Some(c) = nodes[victim].take() {
        let _ = c.shutdown().await;
    }
    let (p99, p100) = spread(&nodes, victim, Duration::from_secs(60), |c| {
        member(&c.view(), &vname).is_some_and(|m| m.liveness == Liveness::Dead)
    })
    .await;
    r.detect_p99_s = p99;
    r.detect_p100_s = p100;
    eprintln!(
        "  dead: 99% {p99:?} s, 100% {p100:?} s ({:.1} s wall)",
        wall.elapsed().as_secs_f64()
    );
    let r = finish(r, &nodes);
    for c in nodes.into_iter().flatten() {
        let _ = c.shutdown().await;
    }
    r
}

/// Memory one simulated node takes per other node (measured: about 23 KiB at 200 and 500
/// nodes while the failure detector's window held 1,000 samples, 8 KB per peer; now 100).
const PAIR_BYTES: u64 = 16 << 10;

/// Bytes `nodes` simulated nodes are expected to need.
fn memory_estimate(nodes: usize) -> u64 {
    let n = nodes as u64;
    n * n * PAIR_BYTES + n * (512 << 10)
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "—".into())
}

fn list<T: std::str::FromStr>(v: Option<String>) -> Option<Vec<T>> {
    v.map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let sizes: Vec<usize> = list(value("--nodes")).unwrap_or_else(|| {
        if quick {
            vec![100]
        } else {
            vec![100, 500, 1000]
        }
    });
    let losses: Vec<f64> = list(value("--loss"))
        .map(|v: Vec<f64>| v.into_iter().map(|p| p / 100.0).collect())
        .unwrap_or_else(|| vec![0.0, 0.05]);
    let ms = |flag: &str, default: f64| {
        value(flag)
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| Duration::from_secs_f64(v / 1e3))
            .unwrap_or(Duration::from_secs_f64(default / 1e3))
    };
    let link = Link {
        delay: ms("--delay-ms", 0.5),
        jitter: ms("--jitter-ms", 0.1),
        loss: 0.0,
    };
    if let Some(n) = value("--services").and_then(|v| v.parse().ok()) {
        SERVICES.store(n, Ordering::Relaxed);
    }
    let fd = FailureDetection::default();
    let mut scenarios = Vec::new();
    for &nodes in &sizes {
        for &loss in &losses {
            scenarios.push(Scenario { nodes, loss });
        }
    }

    let command = {
        let extra: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
        if extra.is_empty() {
            "cargo xtask bench mesh".to_string()
        } else if extra == ["--quick"] {
            "cargo xtask bench mesh --quick".to_string()
        } else {
            format!(
                "cargo run --release -p godwit-tests --bin godwit-bench-mesh -- {}",
                extra.join(" ")
            )
        }
    };
    let mut md = String::from("### Mesh at scale, on virtual time\n\n");
    md.push_str(&format!(
        "`{command}`, on {}. Real `godwit::gossip::Cluster`s (chitchat 0.13, the sealed \
         transport, the view) in one process, their sealed datagrams carried by the simulated \
         network of `godwit_gossip::sim` on tokio's paused clock: all times are virtual, the \
         protocol's own, whatever the machine. Defaults: gossip interval {} ms, phi {}; link \
         {:.1} ms one way + up to {:.1} ms jitter; loss drops that fraction of all datagrams. \
         Summaries carry {} hosted services ({} bytes encoded). Change and dead columns count \
         from the change or the stop to the moment 99% / 100% of the other nodes' views show \
         it (views refresh every gossip interval).\n\n",
        machine(),
        fd.gossip_interval.as_millis(),
        fd.phi_threshold,
        link.delay.as_secs_f64() * 1e3,
        link.jitter.as_secs_f64() * 1e3,
        SERVICES.load(Ordering::Relaxed),
        summary(0, 0.3).encode(4096).map(|e| e.bytes).unwrap_or(0),
    ));
    md.push_str(
        "| nodes | loss | converged | change 99% | change 100% | dead 99% | dead 100% | KB/s per node | datagrams/s per node | wall time | peak RSS |\n",
    );
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for s in scenarios {
        eprintln!("scenario {s:?}");
        // Every simulated node holds the state of every other: memory grows with the square of
        // the size. Refuse a size this machine cannot hold rather than have it killed.
        let need = memory_estimate(s.nodes);
        let available = mem_available();
        if available.is_some_and(|a| need > a) {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            let why = format!(
                "{} nodes need about {:.1} GiB ({PAIR_BYTES} bytes per pair of nodes), {:.1} GiB \
                 available",
                s.nodes,
                gib(need),
                gib(available.unwrap_or(0))
            );
            eprintln!("  skipped: {why}");
            md.push_str(&format!(
                "| {} | {:.0}% | skipped: {why} |||||||||\n",
                s.nodes,
                s.loss * 100.0
            ));
            skipped.push(why);
            continue;
        }
        let rt = sim::runtime().expect("tokio runtime");
        let r = rt.block_on(run(s, link));
        drop(rt);
        if r.seal_drops > 0 {
            eprintln!("  warning: {} sealed datagrams dropped", r.seal_drops);
        }
        let row = format!(
            "| {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} | {:.0} s | {:.0} MiB |\n",
            s.nodes,
            s.loss * 100.0,
            secs(r.converged_s.map(|c| c - r.started_s)),
            secs(r.change_p99_s),
            secs(r.change_p100_s),
            secs(r.detect_p99_s),
            secs(r.detect_p100_s),
            r.kb_per_s_per_node
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "—".into()),
            r.datagrams_per_s_per_node
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "—".into()),
            r.wall_s,
            r.peak_rss_mib,
        );
        eprint!("{row}");
        md.push_str(&row);
        results.push((s, r));
    }
    md.push_str(
        "\n\"converged\" counts from the last node's start (all start within 1 s); wall time is \
         the whole scenario (start, converge, 2 s steady window, change, stop) on this machine, \
         and peak RSS is the process's so far.\n",
    );
    let at_1000 = results
        .iter()
        .find(|(s, _)| s.nodes == 1000 && s.loss == 0.0)
        .map(|(_, r)| r);
    md.push_str(&format!(
        "\nAgainst Serf's convergence model (its simulator with Serf's defaults: 200 ms \
         interval, fanout 3, no loss): {SERF_1000_S} s for a message to reach 1,000 nodes{}.\n",
        match at_1000 {
            Some(r) => format!(
                "; here a changed summary reached 99% of 1,000 nodes in {} and all of them in {} \
                 ({} ms interval, fanout 3)",
                secs(r.change_p99_s),
                secs(r.change_p100_s),
                fd.gossip_interval.as_millis()
            ),
            None => String::new(),
        }
    ));
    if !skipped.is_empty() {
        md.push_str(
            "\nSkipped sizes did not fit in this machine's memory: one process holds every \
             node's view of every other node.\n",
        );
    }
    print!("{md}");
}
