//! The real gossip code on the simulated network, on a paused clock: fifty sealed nodes in a
//! few seconds of wall time. Every time below is virtual (tokio's clock), so the bounds are
//! those of the protocol, not of the machine running the test.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::sim::{Link, SimNetwork};
use super::summary::tests::sample;
use super::*;

const NODES: usize = 50;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, i as u8 + 1], 7946))
}

/// Starts `NODES` sealed nodes with the default gossip settings; the first three are seeds.
/// One starts every 13 ms, so their gossip rounds are spread over the interval as those of
/// separate machines would be.
async fn start(net: &SimNetwork) -> Vec<Cluster> {
    let keyring = Keyring::new(ClusterKey::from_bytes([9; 32]));
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        tokio::time::sleep(Duration::from_millis(13)).await;
        let mut config = GossipConfig::new(format!("node-{i:02}"), addr(i));
        config.seeds = (0..3.min(i)).map(|s| addr(s).to_string()).collect();
        config.security = Security::Sealed(keyring.clone());
        let node = Cluster::start(config, Network::Sim(net.clone()))
            .await
            .unwrap_or_else(|err| panic!("start node {i}: {err}"));
        node.publish(&sample(&node.self_id().node_id))
            .await
            .unwrap();
        nodes.push(node);
    }
    nodes
}

/// Virtual time until `done` holds, polling every 10 ms; panics past `deadline`.
async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not within {deadline:?} of virtual time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_nodes_converge_and_a_stopped_node_is_dead_everywhere() {
    let net = SimNetwork::new(Link::default(), 15);
    let started = Instant::now();
    let mut nodes = start(&net).await;
    let fd = FailureDetection::default();

    let converged = wait_for("convergence", Duration::from_secs(60), || {
        nodes.iter().all(|n| {
            let view = n.view();
            view.members.len() == NODES
                && view.members.iter().all(|m| {
                    m.liveness == Liveness::Alive
                        && m.summary.as_ref().map(|s| s.site.as_str())
                            == Some(m.id.node_id.as_str())
                })
        })
    })
    .await;
    eprintln!(
        "{NODES} nodes converged {converged:?} after the last start, {:?} after the first",
        started.elapsed()
    );

    // A change on one node reaches every other.
    let mut changed = sample("node-07");
    changed.load.cpu = 0.777;
    nodes[7].publish(&changed).await.unwrap();
    let spread = wait_for("the change everywhere", Duration::from_secs(10), || {
        nodes.iter().all(|n| {
            n.view()
                .member("node-07")
                .and_then(|m| m.summary.as_ref())
                .is_some_and(|s| s.load.cpu == 0.777)
        })
    })
    .await;
    eprintln!("change reached all {NODES} nodes in {spread:?}");

    // A stopped node is dead for every other node: not at once (the detector waits for phi
    // mean intervals without news), and within twice the documented bound.
    let stopped = nodes.pop().unwrap();
    let name = stopped.self_id().node_id.clone();
    stopped.shutdown().await.unwrap();
    let dead = wait_for(
        "the stopped node dead everywhere",
        fd.detection_bound() * 2,
        || {
            nodes.iter().all(|n| {
                n.view()
                    .member(&name)
                    .is_some_and(|m| m.liveness == Liveness::Dead)
            })
        },
    )
    .await;
    eprintln!(
        "{name} dead everywhere after {dead:?} (bound {:?})",
        fd.detection_bound()
    );
    assert!(
        dead >= fd.gossip_interval * 4,
        "dead after {dead:?}: sooner than the detector can decide"
    );
    // Nobody else was taken for dead, and every datagram that arrived opened: the network's
    // clock stamps seals the way the receivers check them.
    for node in &nodes {
        assert_eq!(node.view().live().count(), NODES - 1);
        let stats = node.seal_stats().unwrap();
        assert_eq!(stats.dropped(), 0, "{stats:?}");
    }
    let carried = net.stats();
    assert!(carried.delivered > 0 && carried.lost == 0, "{carried:?}");
    assert!(
        carried.unreachable > 0,
        "nobody gossiped to the stopped node"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
