//! In-process cluster tests over loopback UDP. Waits have deadlines; no sleep decides an
//! outcome except the observation window of the loss test.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::seal::Sealer;
use super::summary::tests::sample;
use super::*;

const INTERVAL: Duration = Duration::from_millis(100);

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes([byte; 32])
}

fn fast() -> FailureDetection {
    FailureDetection {
        gossip_interval: INTERVAL,
        phi_threshold: DEFAULT_PHI_THRESHOLD,
        dead_node_grace: Duration::from_secs(2),
    }
}

fn config(name: &str, seeds: &[SocketAddr], security: Security) -> GossipConfig {
    let mut config = GossipConfig::new(name, "127.0.0.1:0".parse().unwrap());
    config.seeds = seeds.iter().map(|s| s.to_string()).collect();
    config.failure_detection = fast();
    config.security = security;
    config
}

fn sealed(byte: u8) -> Security {
    Security::Sealed(Keyring::new(key(byte)))
}

async fn start(name: &str, seeds: &[SocketAddr], security: Security) -> Cluster {
    Cluster::start(config(name, seeds, security), Network::Udp)
        .await
        .unwrap_or_else(|err| panic!("start {name}: {err}"))
}

/// Starts `n` nodes sealed with key 1; node 0 is the seed of the others. Each publishes a
/// summary whose site is its name.
async fn start_mesh(n: usize) -> Vec<Cluster> {
    let mut nodes = vec![start("node-0", &[], sealed(1)).await];
    let seed = nodes[0].gossip_addr();
    for i in 1..n {
        nodes.push(start(&format!("node-{i}"), &[seed], sealed(1)).await);
    }
    for node in &nodes {
        node.publish(&sample(&node.self_id().node_id))
            .await
            .unwrap();
    }
    nodes
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn converged(nodes: &[Cluster]) -> bool {
    nodes.iter().all(|node| {
        let view = node.view();
        view.members.len() == nodes.len()
            && view.members.iter().all(|m| {
                m.liveness == Liveness::Alive
                    && m.summary.as_ref().map(|s| s.site.as_str()) == Some(m.id.node_id.as_str())
            })
    })
}

fn drain(rx: &mut broadcast::Receiver<ClusterChange>) -> Vec<ClusterChange> {
    let mut out = Vec::new();
    while let Ok(change) = rx.try_recv() {
        out.push(change);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_converge_and_see_each_others_summaries() {
    let nodes = start_mesh(5).await;
    let took = wait_for("5 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    eprintln!("5 nodes converged in {took:?}");
    let view = nodes[3].view();
    let zero = view.member("node-0").unwrap();
    assert_eq!(zero.summary.as_ref().unwrap(), &sample("node-0"));
    assert!(zero.heartbeat_age_ms < 1_000);
    assert_eq!(view.members.iter().filter(|m| m.is_self).count(), 1);
    for node in &nodes {
        let stats = node.seal_stats().unwrap();
        assert!(stats.accepted > 0 && stats.sent > 0);
        assert_eq!(stats.dropped(), 0, "{stats:?}");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_dead_within_the_bound() {
    let mut nodes = start_mesh(3).await;
    wait_for("3 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut changes = nodes[0].changes();
    let stopped = nodes.pop().unwrap();
    stopped.shutdown().await.unwrap();
    let bound = fast().detection_bound();
    let took = wait_for("node-2 to be dead", bound * 3, || {
        nodes
            .iter()
            .all(|n| n.view().member("node-2").map(|m| m.liveness) == Some(Liveness::Dead))
    })
    .await;
    eprintln!("dead after {took:?} (bound {bound:?})");
    // Poll granularity and scheduling on a loaded CI machine: a quarter bound of slack.
    assert!(
        took <= bound + bound / 4,
        "detected in {took:?}, bound {bound:?}"
    );
    let changes = drain(&mut changes);
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, ClusterChange::Dead(m) if m.id.node_id == "node-2")),
        "{changes:?}"
    );
    // The others stay alive.
    assert!(nodes.iter().all(|n| n.view().live().count() == 2));
    // After the grace the dead node is forgotten.
    let mut changes = nodes[0].changes();
    wait_for("node-2 to be forgotten", fast().dead_node_grace * 3, || {
        nodes.iter().all(|n| n.view().member("node-2").is_none())
    })
    .await;
    wait_for("the Left change", Duration::from_secs(1), || {
        drain(&mut changes).iter().any(|c| {
            matches!(c, ClusterChange::Left { id, reason: LeftReason::Forgotten } if id.node_id == "node-2")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_gets_a_new_generation_and_leaves_no_ghost() {
    let mut nodes = start_mesh(3).await;
    wait_for("3 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut changes = nodes[0].changes();
    let old = nodes.pop().unwrap();
    let old_generation = old.self_id().generation;
    let addr = old.gossip_addr();
    old.shutdown().await.unwrap();

    // Same node id, same address, restarted at once (before the others notice).
    let mut cfg = config("node-2", &[nodes[0].gossip_addr()], sealed(1));
    cfg.listen_addr = addr;
    let restarted = Cluster::start(cfg, Network::Udp).await.unwrap();
    let new_generation = restarted.self_id().generation;
    assert!(new_generation > old_generation);
    let mut summary = sample("node-2");
    summary.load.cpu = 0.99;
    restarted.publish(&summary).await.unwrap();
    nodes.push(restarted);

    wait_for(
        "the new incarnation everywhere",
        Duration::from_secs(5),
        || {
            nodes.iter().all(|n| {
                let view = n.view();
                let m = view.member("node-2");
                view.members.len() == 3
                    && m.map(|m| (m.id.generation, m.liveness))
                        == Some((new_generation, Liveness::Alive))
                    && m.and_then(|m| m.summary.as_ref()).map(|s| s.load.cpu) == Some(0.99)
            })
        },
    )
    .await;
    // The view never listed both incarnations, and told of the restart.
    let seen = drain(&mut changes);
    assert!(
        seen.iter().any(|c| matches!(c,
            ClusterChange::Left { id, reason: LeftReason::Restarted { new_generation: g } }
                if id.generation == old_generation && *g == new_generation)),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|c| matches!(c, ClusterChange::Joined(m) if m.id.generation == new_generation)));
    // chitchat itself forgets the old incarnation after the dead-node grace, everywhere
    // (including on the restarted node, which peers told about its old self).
    let deadline = fast().detection_bound() + fast().dead_node_grace * 3;
    let start = Instant::now();
    loop {
        let mut ghosts = 0;
        for n in &nodes {
            ghosts += n
                .incarnations("node-2")
                .await
                .iter()
                .filter(|g| **g != new_generation)
                .count();
        }
        if ghosts == 0 {
            break;
        }
        assert!(
            start.elapsed() < deadline,
            "old incarnation still held after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("old incarnation gone after {:?}", start.elapsed());
    assert!(converged(&nodes[..2]) || nodes.iter().all(|n| n.view().members.len() == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_is_listed_as_left_never_dead() {
    let mut nodes = start_mesh(3).await;
    wait_for("3 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut changes = nodes[0].changes();
    let leaving = nodes.pop().unwrap();
    leaving.leave(fast().gossip_interval * 3).await;
    leaving.shutdown().await.unwrap();
    let left = |nodes: &[Cluster]| {
        nodes
            .iter()
            .all(|n| n.view().member("node-2").map(|m| m.liveness) == Some(Liveness::Left))
    };
    wait_for("node-2 listed as left", Duration::from_secs(2), || {
        left(&nodes)
    })
    .await;
    // Well past the detection bound it is still `left`, not `dead`, and not live.
    tokio::time::sleep(fast().detection_bound() * 2).await;
    assert!(left(&nodes), "{:?}", nodes[0].view().member("node-2"));
    assert!(nodes.iter().all(|n| n.view().live().count() == 2));
    let seen = drain(&mut changes);
    assert!(
        seen.iter().any(|c| matches!(c,
            ClusterChange::Left { id, reason: LeftReason::Shutdown } if id.node_id == "node-2")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|c| matches!(c, ClusterChange::Dead(_))),
        "{seen:?}"
    );
}

/// Captures one sealed datagram that `sender` sends to its seed.
async fn capture_one(sniffer: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), sniffer.recv_from(&mut buf))
        .await
        .expect("no datagram captured")
        .unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_tampered_and_replayed_packets_change_nothing_and_are_counted() {
    let b = start("node-b", &[], sealed(1)).await;
    let b_addr = b.gossip_addr();

    // A legitimate sealed datagram: node-a (same key) gossips to a seed we listen on.
    let sniffer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = start("node-a", &[sniffer.local_addr().unwrap()], sealed(1)).await;
    let captured = capture_one(&sniffer).await;
    a.shutdown().await.unwrap();

    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stats = || b.seal_stats().unwrap();
    let s0 = stats();

    // Junk, and a datagram sealed with another key.
    raw.send_to(b"hello", b_addr).await.unwrap();
    let mut other = Sealer::new(Keyring::new(key(2)), "godwit");
    let mut forged = Vec::new();
    other.seal(b"anything", super::seal::now_ms(), &mut forged);
    raw.send_to(&forged, b_addr).await.unwrap();
    // Tampered: one ciphertext bit flipped.
    let mut tampered = captured.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x04;
    raw.send_to(&tampered, b_addr).await.unwrap();
    wait_for(
        "junk, foreign key and tampering counted",
        Duration::from_secs(2),
        || {
            let s = stats();
            s.malformed == s0.malformed + 1
                && s.bad_key == s0.bad_key + 1
                && s.bad_tag == s0.bad_tag + 1
        },
    )
    .await;
    assert_eq!(stats().accepted, s0.accepted);

    // Real nodes without the key: one in clear text, one with another key.
    let clear = start("node-clear", &[b_addr], Security::Insecure).await;
    let wrong = start("node-wrong", &[b_addr], sealed(3)).await;
    wait_for("keyless senders counted", Duration::from_secs(3), || {
        let s = stats();
        s.malformed >= s0.malformed + 3 && s.bad_key >= s0.bad_key + 3
    })
    .await;
    assert_eq!(
        stats().accepted,
        s0.accepted,
        "nothing keyless was accepted"
    );
    assert!(b.raw_state_of("node-clear").await.is_none());
    assert!(b.raw_state_of("node-wrong").await.is_none());
    assert_eq!(b.view().members.len(), 1);

    // Replay: the first delivery of the captured datagram is genuine, the second a replay.
    raw.send_to(&captured, b_addr).await.unwrap();
    wait_for("first delivery accepted", Duration::from_secs(2), || {
        stats().accepted == s0.accepted + 1
    })
    .await;
    let known = b.raw_state_of("node-a").await;
    assert!(known.is_some(), "the genuine datagram was processed");
    let before = stats();
    raw.send_to(&captured, b_addr).await.unwrap();
    raw.send_to(&captured, b_addr).await.unwrap();
    wait_for("replays counted", Duration::from_secs(2), || {
        stats().replay == before.replay + 2
    })
    .await;
    assert_eq!(stats().accepted, before.accepted);
    assert_eq!(b.raw_state_of("node-a").await, known);
    assert_eq!(clear.seal_stats(), None);
    drop(clear);
    drop(wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_while_running_loses_no_node() {
    let nodes = start_mesh(3).await;
    wait_for("3 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut streams: Vec<_> = nodes.iter().map(|n| n.changes()).collect();
    let mut round = 0.0;
    let mut propagate = async |nodes: &[Cluster]| {
        round += 0.01;
        let mut s = sample("node-0");
        s.load.cpu = round;
        nodes[0].publish(&s).await.unwrap();
        wait_for("an update to propagate", Duration::from_secs(3), || {
            nodes.iter().all(|n| {
                n.view()
                    .member("node-0")
                    .and_then(|m| m.summary.as_ref())
                    .map(|s| s.load.cpu)
                    == Some(round)
            })
        })
        .await;
    };
    let old = key(1).id();
    let new = key(9);
    for n in &nodes {
        n.keyring().unwrap().install(new.clone());
    }
    propagate(&nodes).await;
    for n in &nodes {
        n.keyring().unwrap().set_primary(new.id()).unwrap();
        propagate(&nodes).await;
    }
    for n in &nodes {
        n.keyring().unwrap().remove(old).unwrap();
    }
    propagate(&nodes).await;
    for n in &nodes {
        assert_eq!(n.keyring().unwrap().key_ids(), vec![new.id()]);
        assert_eq!(n.seal_stats().unwrap().bad_key, 0);
    }
    for stream in &mut streams {
        let changes = drain(stream);
        assert!(
            !changes.iter().any(|c| matches!(
                c,
                ClusterChange::Dead(_) | ClusterChange::Suspect(_) | ClusterChange::Left { .. }
            )),
            "{changes:?}"
        );
    }
    assert!(converged(&nodes) || nodes.iter().all(|n| n.view().live().count() == 3));
    // A node still on the old key is refused.
    let stale = start("node-stale", &[nodes[0].gossip_addr()], sealed(1)).await;
    wait_for("old key refused", Duration::from_secs(3), || {
        nodes[0].seal_stats().unwrap().bad_key > 0
    })
    .await;
    assert!(nodes[0].view().member("node-stale").is_none());
    drop(stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_keys_and_budget_over_the_wire() {
    let nodes = start_mesh(2).await;
    wait_for("2 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut big = sample("node-0");
    big.services = (0..2000u64)
        .map(|i| HostedService {
            id: format!("svc-{i}"),
            state_bytes: i,
            image: format!("img-{i}"),
            ..HostedService::default()
        })
        .collect();
    let report = nodes[0].publish(&big).await.unwrap();
    assert!(report.bytes <= DEFAULT_SUMMARY_BUDGET);
    nodes[0].set_raw_key("g:schema", "42").await;
    nodes[0].set_raw_key("g:gpu", r#"{"cards":2}"#).await;
    nodes[0].set_raw_key("g:v3:ring", "\u{1f}binary?").await;
    wait_for(
        "newer schema read by the peer",
        Duration::from_secs(3),
        || {
            nodes[1]
                .view()
                .member("node-0")
                .and_then(|m| m.summary.clone())
                .is_some_and(|s| {
                    s.schema == 42
                        && s.site == "node-0"
                        && s.services_dropped as usize == report.services_dropped
                        && s.services.len() + s.services_dropped as usize == 2000
                        && s.services[0].id == "svc-1999"
                })
        },
    )
    .await;
    assert_eq!(
        nodes[1].view().member("node-0").unwrap().liveness,
        Liveness::Alive
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_nodes_converge_in_clear_text() {
    let a = start("node-0", &[], Security::Insecure).await;
    let b = start("node-1", &[a.gossip_addr()], Security::Insecure).await;
    a.publish(&sample("node-0")).await.unwrap();
    b.publish(&sample("node-1")).await.unwrap();
    let nodes = [a, b];
    wait_for(
        "2 insecure nodes to converge",
        Duration::from_secs(5),
        || converged(&nodes),
    )
    .await;
    assert!(nodes[0].seal_stats().is_none() && nodes[0].keyring().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_without_a_key_are_refused() {
    let err = Cluster::start(
        config("x", &["127.0.0.1:9".parse().unwrap()], Security::None),
        Network::Udp,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, GossipError::KeyRequired), "{err}");
    // A lone node needs nothing, and accepts no peer.
    let lone = start("lone", &[], Security::None).await;
    let peer = start("peer", &[lone.gossip_addr()], sealed(1)).await;
    wait_for("the peer refused", Duration::from_secs(3), || {
        lone.seal_stats().unwrap().bad_key > 0
    })
    .await;
    assert_eq!(lone.view().members.len(), 1);
    assert!(lone.keyring().is_none());
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_false_death_at_ten_percent_loss() {
    let mut nodes = Vec::new();
    let mut seed = None;
    for i in 0..3u64 {
        let seeds: Vec<SocketAddr> = seed.into_iter().collect();
        let cfg = config(&format!("node-{i}"), &seeds, sealed(1));
        let node = Cluster::start(
            cfg,
            Network::LossyUdp {
                drop_probability: 0.1,
                seed: 7 + i,
            },
        )
        .await
        .unwrap();
        node.publish(&sample(&format!("node-{i}"))).await.unwrap();
        seed.get_or_insert(node.gossip_addr());
        nodes.push(node);
    }
    wait_for("3 lossy nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let mut streams: Vec<_> = nodes.iter().map(|n| n.changes()).collect();
    // Observation window: 40 gossip intervals, 5 detection bounds.
    tokio::time::sleep(INTERVAL * 40).await;
    for stream in &mut streams {
        let changes = drain(stream);
        assert!(
            !changes
                .iter()
                .any(|c| matches!(c, ClusterChange::Dead(_) | ClusterChange::Left { .. })),
            "{changes:?}"
        );
    }
    assert!(nodes.iter().all(|n| n.view().live().count() == 3));
}

/// A burst of local junk to the codec's and the tap's loopback ports (any local process can
/// send there) neither reaches chitchat nor stops gossip: a summary published after it still
/// arrives, both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_to_the_codec_does_not_stop_gossip() {
    let nodes = start_mesh(2).await;
    wait_for("2 nodes to converge", Duration::from_secs(5), || {
        converged(&nodes)
    })
    .await;
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut targets = Vec::new();
    for node in &nodes {
        let (codec, tap) = node.codec_addrs().expect("the codec is open");
        targets.extend([codec, tap]);
    }
    // Enough to fill any socket's receive buffer many times over, sent while gossip runs; a
    // marker byte pattern included (a lone BadCluster marker is what pairs datagrams).
    let payload = vec![0x5a; 1200];
    for round in 0..20_000u32 {
        for to in &targets {
            let data: &[u8] = if round % 2 == 0 {
                &payload
            } else {
                &[0, 0, 0, 3]
            };
            // A refused send (the port is connected elsewhere) is what the fix does.
            let _ = junk.send_to(data, to).await;
        }
        if round % 1_000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut summary = sample(&node.self_id().node_id);
        summary.load.cpu = 0.25 + i as f64 / 10.0;
        node.publish(&summary).await.unwrap();
    }
    wait_for(
        "summaries published after the junk to arrive",
        Duration::from_secs(10),
        || {
            nodes.iter().enumerate().all(|(i, node)| {
                let other = &nodes[1 - i];
                let want = 0.25 + (1 - i) as f64 / 10.0;
                node.view()
                    .member(&other.self_id().node_id)
                    .and_then(|m| m.summary.as_ref())
                    .is_some_and(|s| (s.load.cpu - want).abs() < 1e-9)
            })
        },
    )
    .await;
    for node in &nodes {
        let stats = node.seal_stats().unwrap();
        assert_eq!(stats.dropped(), 0, "junk reached the opener: {stats:?}");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
