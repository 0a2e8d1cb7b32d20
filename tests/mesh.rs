//! The mesh with real agents in network namespaces: sealed gossip converges, a killed node is
//! marked dead within the bound and rejoins with a new generation, leaving no ghost.
//! Needs root; one test at a time (`cargo xtask test`).

use std::time::{Duration, Instant};

use godwit_tests::cluster::Cluster;
use godwit_tests::{require_root, wait_for};
use serde_json::Value;

/// A fixed test key (32 bytes, hex): tests only.
const KEY: &str = "6b1e5c0a9d2f4e3b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f50";

fn mesh(nodes: usize) -> Cluster {
    Cluster::builder(nodes)
        .extra_toml(|n| {
            let seeds: Vec<String> = n.all_addrs.iter().take(2).map(|a| format!("\"{a}:9747\"")).collect();
            format!(
                "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n\
                 [gossip]\nlisten = \"{}:9747\"\nseeds = [{}]\nkeys = [\"{KEY}\"]\ninterval_ms = 100\n",
                n.addr,
                seeds.join(", ")
            )
        })
        .start()
}

fn members(c: &Cluster, i: usize) -> Vec<Value> {
    c.get(i, "/v1/nodes")
        .ok()
        .filter(|(code, _)| *code == 200)
        .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
        .and_then(|v| v["members"].as_array().cloned())
        .unwrap_or_default()
}

/// The liveness and generation node `i` reports for `name`.
fn seen(c: &Cluster, i: usize, name: &str) -> Option<(String, u64)> {
    members(c, i)
        .into_iter()
        .find(|m| m["id"]["node_id"] == name)
        .map(|m| {
            (
                m["liveness"].as_str().unwrap_or("").to_string(),
                m["id"]["generation"].as_u64().unwrap_or(0),
            )
        })
}

/// Waits until each of the `n` nodes sees all `n` alive.
fn wait_all_alive(c: &Cluster, n: usize) {
    let ok = wait_for(Duration::from_secs(10), || {
        (1..=n)
            .all(|i| {
                members(c, i)
                    .iter()
                    .filter(|m| m["liveness"] == "alive")
                    .count()
                    == n
            })
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "{n} nodes did not converge; n1 sees {:?}",
        members(c, 1)
    );
}

#[test]
fn five_sealed_nodes_converge_within_two_seconds() {
    require_root();
    let c = mesh(5);
    let started = Instant::now();
    let converged = wait_for(Duration::from_secs(10), || {
        (1..=5)
            .all(|i| {
                let ms = members(&c, i);
                ms.len() == 5
                    && ms
                        .iter()
                        .all(|m| m["liveness"] == "alive" && m["summary"]["site"] == "default")
            })
            .then_some(())
    });
    let took = started.elapsed();
    assert!(
        converged.is_some(),
        "no convergence in 10 s; n1 sees {:?}\n{}",
        members(&c, 1),
        c.log(1)
    );
    assert!(
        took < Duration::from_secs(2),
        "every node saw every summary after {took:?}, want < 2 s"
    );
    eprintln!("5 nodes converged {took:?} after the last agent was ready");
    let out = std::process::Command::new(godwit_tests::godwit_bin())
        .args(["nodes", "--addr", &c.api(1).to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "godwit nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=5 {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("n{i}")) && l.contains("alive")),
            "n{i} alive in:\n{table}"
        );
    }
    // Every node seals: the sealed transport accepted datagrams.
    let doc: Value = serde_json::from_str(&c.get(1, "/v1/nodes").unwrap().1).unwrap();
    assert!(
        doc["seal"]["accepted"].as_u64().unwrap_or(0) > 0,
        "sealed traffic: {}",
        doc["seal"]
    );
}

#[test]
fn killed_node_is_dead_within_three_seconds_and_rejoins_without_ghost() {
    require_root();
    let mut c = mesh(4);
    wait_all_alive(&c, 4);
    let (_, old_gen) = seen(&c, 1, "n4").expect("n1 sees n4");
    c.kill(4);
    let killed = Instant::now();
    let dead = wait_for(Duration::from_secs(6), || {
        (1..=3)
            .all(|i| seen(&c, i, "n4").is_some_and(|(l, _)| l == "dead"))
            .then_some(())
    });
    let took = killed.elapsed();
    assert!(
        dead.is_some(),
        "n4 not marked dead by all: {:?}",
        (1..=3).map(|i| seen(&c, i, "n4")).collect::<Vec<_>>()
    );
    assert!(
        took < Duration::from_secs(3),
        "marked dead after {took:?}, want < 3 s"
    );
    eprintln!("n4 marked dead by every survivor {took:?} after kill -9");

    c.start_agent(4);
    let rejoined = wait_for(Duration::from_secs(10), || {
        (1..=3)
            .all(|i| seen(&c, i, "n4").is_some_and(|(l, g)| l == "alive" && g > old_gen))
            .then_some(())
    });
    assert!(
        rejoined.is_some(),
        "n4 did not rejoin with a new generation: {:?}",
        seen(&c, 1, "n4")
    );
    for i in 1..=3 {
        let n4 = members(&c, i)
            .into_iter()
            .filter(|m| m["id"]["node_id"] == "n4")
            .count();
        assert_eq!(
            n4, 1,
            "node {i} lists n4 {n4} times (ghost of the old incarnation)"
        );
    }
}

#[test]
fn stopped_node_is_dead_and_alive_again_after_sigcont() {
    require_root();
    let mut c = mesh(3);
    wait_all_alive(&c, 3);
    let (_, gen) = seen(&c, 1, "n3").expect("n1 sees n3");
    c.stop(3);
    let stopped = Instant::now();
    wait_for(Duration::from_secs(5), || {
        (1..=2)
            .all(|i| seen(&c, i, "n3").is_some_and(|(l, _)| l == "dead"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("n3 not marked dead while stopped: {:?}", seen(&c, 1, "n3")));
    // Keep it stopped for 10 s in all, then let it run on.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    c.cont(3);
    wait_for(Duration::from_secs(10), || {
        (1..=2)
            .all(|i| seen(&c, i, "n3").is_some_and(|(l, g)| l == "alive" && g == gen))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("n3 not alive again after SIGCONT: {:?}", seen(&c, 1, "n3")));
}

#[test]
fn ten_percent_loss_for_a_minute_kills_no_node() {
    require_root();
    let c = mesh(4);
    wait_all_alive(&c, 4);
    for i in 1..=4 {
        c.set_loss(i, 10);
    }
    let until = Instant::now() + Duration::from_secs(60);
    let mut checks = 0;
    while Instant::now() < until {
        for i in 1..=4 {
            for m in members(&c, i) {
                assert_eq!(
                    m["liveness"], "alive",
                    "node {i} sees {} as {} under 10% loss",
                    m["id"], m["liveness"]
                );
            }
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let dropped: u64 = (1..=4).filter_map(|i| c.loss_dropped(i)).sum();
    assert!(dropped > 0, "the loss rules dropped packets");
    eprintln!("{checks} checks over 60 s, {dropped} packets dropped, no node suspected dead");
}
