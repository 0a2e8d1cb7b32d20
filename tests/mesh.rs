//! The mesh with real agents in network namespaces: sealed gossip converges, a killed node is
//! marked dead within the bound and rejoins with a new generation, leaving no ghost.
//! Needs root; one test at a time (`cargo xtask test`).

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use godwit::gossip::ClusterKey;
use godwit_tests::cluster::capture::capture_udp;
use godwit_tests::cluster::{http_get, Cluster, NODE_IF};
use godwit_tests::{promtool_check, require_root, wait_for};
use serde_json::Value;

/// A fixed test key (32 bytes, hex): tests only.
const KEY: &str = "6b1e5c0a9d2f4e3b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f50";
const GOSSIP_PORT: u16 = 9747;

fn mesh(nodes: usize) -> Cluster {
    mesh_with(nodes, |_| format!("keys = [\"{KEY}\"]"))
}

/// A cluster whose node `i` has `security(i)` (its `keys` or `insecure` lines) in `[gossip]`.
fn mesh_with(nodes: usize, security: impl Fn(usize) -> String + 'static) -> Cluster {
    Cluster::builder(nodes)
        .extra_toml(move |n| {
            let seeds: Vec<String> = n
                .all_addrs
                .iter()
                .take(2)
                .map(|a| format!("\"{a}:{GOSSIP_PORT}\""))
                .collect();
            format!(
                "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n\
                 [gossip]\nlisten = \"{}:{GOSSIP_PORT}\"\nseeds = [{}]\n{}\ninterval_ms = 100\n",
                n.addr,
                seeds.join(", "),
                security(n.index),
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
fn sigterm_leaves_gracefully_listed_as_left_not_dead() {
    require_root();
    let mut c = mesh(3);
    wait_all_alive(&c, 3);
    let (_, gen) = seen(&c, 1, "n3").expect("n1 sees n3");
    let pid = c.agent_pid(3).unwrap();
    c.signal(3, libc::SIGTERM);
    let asked = Instant::now();
    wait_for(Duration::from_secs(3), || {
        (1..=2)
            .all(|i| seen(&c, i, "n3").is_some_and(|(l, _)| l == "left"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("n3 not listed as left: {:?}", seen(&c, 1, "n3")));
    eprintln!("n3 listed as left {:?} after SIGTERM", asked.elapsed());
    // The agent exits cleanly, and stays `left` (never `dead`) well past the detection bound.
    wait_for(Duration::from_secs(10), || {
        // SAFETY: kill(pid, 0) only checks that the process exists.
        (unsafe { libc::kill(pid as i32, 0) } != 0 || c.agent_pid(3).is_none()).then_some(())
    })
    .expect("n3's agent exits after SIGTERM");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in 1..=2 {
            assert_eq!(
                seen(&c, i, "n3").map(|(l, _)| l),
                Some("left".to_string()),
                "n{i}'s view of n3 after it left"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.start_agent(3);
    wait_for(Duration::from_secs(10), || {
        (1..=2)
            .all(|i| seen(&c, i, "n3").is_some_and(|(l, g)| l == "alive" && g > gen))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("n3 did not rejoin: {:?}", seen(&c, 1, "n3")));
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

/// The sealed-transport counter `name` of node `i`.
fn seal_count(c: &Cluster, i: usize, name: &str) -> u64 {
    c.json(i, "/v1/nodes")["seal"][name].as_u64().unwrap_or(0)
}

/// The ids of node `i`'s primary key and of every key it accepts.
fn keyring(c: &Cluster, i: usize) -> (String, Vec<String>) {
    let doc = c.json(i, "/v1/nodes");
    let primary = doc["keyring"]["primary"].as_str().unwrap_or("").to_string();
    let mut keys: Vec<String> = doc["keyring"]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    keys.sort();
    (primary, keys)
}

/// Rewrites the `keys = [...]` line of node `i`'s config file.
fn write_keys(c: &Cluster, i: usize, keys: &[&str]) {
    let path = &c.node(i).config;
    let text = std::fs::read_to_string(path).unwrap();
    let line = format!(
        "keys = [{}]",
        keys.iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("keys = [") {
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(path, text.join("\n") + "\n").unwrap();
}

#[test]
fn key_rotation_while_running_loses_no_node() {
    require_root();
    let mut c = mesh(3);
    wait_all_alive(&c, 3);
    let old = ClusterKey::from_hex(KEY).unwrap();
    let new = ClusterKey::generate();
    let (old_hex, new_hex) = (old.to_hex(), new.to_hex());
    let (old_id, new_id) = (old.id().to_string(), new.id().to_string());
    let pids: Vec<i32> = (1..=3).map(|i| c.agent_pid(i).unwrap() as i32).collect();
    let apis: Vec<SocketAddr> = (1..=3).map(|i| c.api(i)).collect();
    let bad_key_before: u64 = (1..=3).map(|i| seal_count(&c, i, "bad_key")).sum();

    // Watch every node's view throughout: any member not alive, or missing, is a failure.
    let done = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let mut checks = 0u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                for (i, api) in apis.iter().enumerate() {
                    let Ok((200, body)) = http_get(*api, "/v1/nodes", Duration::from_secs(2))
                    else {
                        continue;
                    };
                    let doc: Value = serde_json::from_str(&body).unwrap_or_default();
                    let members = doc["members"].as_array().cloned().unwrap_or_default();
                    let alive = members.iter().filter(|m| m["liveness"] == "alive").count();
                    if alive != 3 {
                        failures.lock().unwrap().push(format!(
                            "n{} sees {alive} alive: {:?}",
                            i + 1,
                            members
                                .iter()
                                .map(|m| (&m["id"]["node_id"], &m["liveness"]))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let steps: [(&[&str], &str, Vec<String>); 3] = [
            (
                &[&old_hex, &new_hex],
                &old_id,
                sorted(vec![old_id.clone(), new_id.clone()]),
            ),
            (
                &[&new_hex, &old_hex],
                &new_id,
                sorted(vec![old_id.clone(), new_id.clone()]),
            ),
            (&[&new_hex], &new_id, vec![new_id.clone()]),
        ];
        for (step, (keys, primary, accepted)) in steps.iter().enumerate() {
            for i in 1..=3 {
                write_keys(&c, i, keys);
                // SAFETY: kill(2) on our own child agent.
                assert_eq!(unsafe { libc::kill(pids[i - 1], libc::SIGHUP) }, 0);
                wait_for(Duration::from_secs(5), || {
                    (keyring(&c, i) == (primary.to_string(), accepted.clone())).then_some(())
                })
                .unwrap_or_else(|| {
                    panic!(
                        "step {}: n{i} keyring {:?}, want {primary} of {accepted:?}\n{}",
                        step + 1,
                        keyring(&c, i),
                        c.log(i)
                    )
                });
            }
            // A few gossip rounds on the finished step before the next one.
            std::thread::sleep(Duration::from_millis(500));
        }
        done.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "a node was lost during rotation ({} of {checks} checks): {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let bad_key_after: u64 = (1..=3).map(|i| seal_count(&c, i, "bad_key")).sum();
    assert_eq!(
        bad_key_after, bad_key_before,
        "datagrams refused for their key during a rotation done in order"
    );
    // Only the new key is left, and gossip flows on it.
    let accepted = seal_count(&c, 1, "accepted");
    wait_for(Duration::from_secs(3), || {
        (seal_count(&c, 1, "accepted") > accepted + 10).then_some(())
    })
    .expect("n1 accepts datagrams sealed with the new key");
    assert!(c.log(1).contains("gossip keyring rotated"), "{}", c.log(1));
    // A restart reads the rotated file and rejoins.
    let (_, gen) = seen(&c, 1, "n2").unwrap();
    c.restart(2);
    wait_for(Duration::from_secs(10), || {
        (1..=3)
            .all(|i| seen(&c, i, "n2").is_some_and(|(l, g)| l == "alive" && g > gen))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("n2 did not rejoin after rotation: {:?}", members(&c, 1)));
    eprintln!("rotated the key on 3 nodes in 3 reload steps; {checks} view checks, all alive");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn strangers_tampered_and_replayed_datagrams_change_nothing() {
    require_root();
    let other = ClusterKey::generate().to_hex();
    // n4 holds another key, n5 gossips in clear text; both have n1 and n2 as seeds.
    let c = mesh_with(5, move |i| match i {
        4 => format!("keys = [\"{other}\"]"),
        5 => "insecure = true".to_string(),
        _ => format!("keys = [\"{KEY}\"]"),
    });
    let members_of = |i: usize| -> Vec<String> {
        let mut v: Vec<String> = members(&c, i)
            .iter()
            .filter(|m| m["liveness"] == "alive")
            .map(|m| m["id"]["node_id"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    let trio = vec!["n1".to_string(), "n2".into(), "n3".into()];
    wait_for(Duration::from_secs(10), || {
        (1..=3).all(|i| members_of(i) == trio).then_some(())
    })
    .unwrap_or_else(|| panic!("n1..n3 did not converge: {:?}", members(&c, 1)));
    // The strangers knocked at the seeds and were refused and counted.
    wait_for(Duration::from_secs(5), || {
        let seeds = |name| seal_count(&c, 1, name) + seal_count(&c, 2, name);
        (seeds("bad_key") > 0 && seeds("malformed") > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("strangers not counted: {}", c.json(1, "/v1/nodes")["seal"]));

    // A genuine datagram to n1, captured off its interface.
    let n1 = SocketAddrV4::new(c.node(1).addr, GOSSIP_PORT);
    let key_id = ClusterKey::from_hex(KEY).unwrap().id().0.to_be_bytes();
    let genuine = c
        .in_node(1, || {
            capture_udp(NODE_IF, n1, Duration::from_secs(5), |p| {
                p.len() > 80 && p.starts_with(b"GW") && p[4..8] == key_id
            })
        })
        .expect("capture a sealed datagram to n1");
    let mut tampered = genuine.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0x40;
    let before = c.json(1, "/v1/nodes")["seal"].clone();
    // Replay it three times and send two tampered copies, from the stranger n4's namespace.
    let from = SocketAddr::from((c.node(4).addr, 0));
    c.in_node(4, || {
        let sock = UdpSocket::bind(from).unwrap();
        for _ in 0..3 {
            sock.send_to(&genuine, n1).unwrap();
        }
        for _ in 0..2 {
            sock.send_to(&tampered, n1).unwrap();
        }
    });
    let count = |doc: &Value, name: &str| doc[name].as_u64().unwrap_or(0);
    let after = wait_for(Duration::from_secs(3), || {
        let now = c.json(1, "/v1/nodes")["seal"].clone();
        (count(&now, "replay") >= count(&before, "replay") + 3
            && count(&now, "bad_tag") >= count(&before, "bad_tag") + 2)
            .then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "replays and tampered datagrams not counted: before {before}, now {}",
            c.json(1, "/v1/nodes")["seal"]
        )
    });
    assert_eq!(
        count(&after, "replay") - count(&before, "replay"),
        3,
        "every replay counted once, nothing else counted as a replay"
    );
    assert_eq!(
        count(&after, "bad_tag") - count(&before, "bad_tag"),
        2,
        "every tampered datagram refused"
    );
    // The same counts reach Prometheus, in an exposition promtool accepts.
    let (code, metrics) = c.get(1, "/metrics").unwrap();
    assert_eq!(code, 200);
    promtool_check(&metrics);
    let series = |outcome: &str| -> u64 {
        let prefix = format!("godwit_gossip_sealed_datagrams_total{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}")) as u64
    };
    // Scraped after the JSON read, so every series is at least what the JSON said. The
    // strangers gossip to one random seed a round, so only their sum over n1 and n2 is sure
    // to have moved (checked above); n1's own strangers' counts are whatever it saw.
    for outcome in ["replay", "bad_tag", "bad_key", "malformed"] {
        assert!(
            series(outcome) >= count(&after, outcome),
            "{outcome}: /metrics {} < /v1/nodes {}",
            series(outcome),
            count(&after, outcome)
        );
    }
    assert!(
        metrics.contains("godwit_gossip_members{liveness=\"alive\"} 3"),
        "{metrics}"
    );
    // Nothing changed: the trio still sees exactly itself, the strangers only themselves.
    std::thread::sleep(Duration::from_secs(1));
    for i in 1..=3 {
        assert_eq!(members_of(i), trio, "n{i}'s view");
    }
    for i in 4..=5 {
        assert_eq!(members_of(i), vec![format!("n{i}")], "n{i} joined nobody");
    }
    eprintln!(
        "n1 refused: {} (3 replays and 2 tampered from us; the rest from the strangers)",
        c.json(1, "/v1/nodes")["seal"]
    );
}
