//! The coordinator with real agents in network namespaces: services placed through the log,
//! a node cut off from the others fencing itself before its service starts elsewhere, and
//! placements that survive agent restarts. Needs root; one test at a time (`cargo xtask test`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use godwit_tests::migrate_rig::{KvOptions, MigrateRig, RigOptions};
use godwit_tests::{promtool_check, require_root, wait_for};
use serde_json::Value;

/// Waits until node `i` sees `voters` voters, a leader, and holds a lease it may act on.
fn wait_group(rig: &MigrateRig, i: usize, voters: usize) -> Value {
    rig.wait_group(i, voters)
}

/// The nodes on which `name` has a process now (any state but stopped or failed).
fn running_on(rig: &MigrateRig, name: &str) -> Vec<usize> {
    running_among(rig, name, 1..=rig.c.len())
}

/// The same, asking only `nodes`.
fn running_among(
    rig: &MigrateRig,
    name: &str,
    nodes: impl IntoIterator<Item = usize>,
) -> Vec<usize> {
    nodes
        .into_iter()
        .filter(|i| {
            let s = rig.service(*i, name);
            s["pid"].is_u64()
        })
        .collect()
}

/// Where the log places `name`, as node `i` has applied it: (node, epoch).
fn placed(rig: &MigrateRig, i: usize, name: &str) -> Option<(String, u64)> {
    rig.placed(i, name)
}

#[test]
fn a_cut_off_node_fences_itself_and_its_service_restarts_elsewhere_never_twice() {
    require_root();
    let rig = MigrateRig::new(RigOptions::coordinated(3));
    let group = wait_group(&rig, 1, 3);
    assert_eq!(group["leader"], "n1", "{group}");
    for i in 2..=3 {
        wait_group(&rig, i, 3);
    }
    // Added on n2: placed there through the log, then started.
    let spec = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 16 << 20,
            ..KvOptions::default()
        },
    );
    rig.add(2, &spec, Duration::from_secs(20));
    let (node, epoch) = placed(&rig, 1, "kv").expect("kv in the log");
    assert_eq!(node, "n2");
    assert_eq!(rig.service(2, "kv")["epoch"].as_u64(), Some(epoch));

    // n2 is cut off from n1 and n3. Watch every node's services until kv runs elsewhere.
    let cut = Instant::now();
    rig.c.partition(&[&[2], &[1, 3]]);
    let mut seen: BTreeMap<usize, (Duration, Duration)> = BTreeMap::new();
    let mut overlaps = Vec::new();
    let moved = loop {
        let t = cut.elapsed();
        assert!(
            t < Duration::from_secs(40),
            "kv never ran elsewhere: {seen:?}\n{}",
            rig.c.log(1)
        );
        let on = running_on(&rig, "kv");
        if on.len() > 1 {
            overlaps.push((t, on.clone()));
        }
        for i in &on {
            let e = seen.entry(*i).or_insert((t, t));
            e.1 = t;
        }
        if let Some(i) = on.iter().find(|i| **i != 2) {
            if rig.service(*i, "kv")["health"] == "healthy" {
                break *i;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        overlaps.is_empty(),
        "kv ran on two nodes at once: {overlaps:?}"
    );
    let n2_last = seen.get(&2).map(|s| s.1).unwrap_or_default();
    let elsewhere_first = seen[&moved].0;
    println!(
        "n2 last ran kv {:.2} s after the cut; n{moved} first ran it at {:.2} s",
        n2_last.as_secs_f64(),
        elsewhere_first.as_secs_f64()
    );
    // n2 stopped it within its lease (3 s) and a poll; n{moved} started it after.
    assert!(
        n2_last < Duration::from_millis(4000),
        "n2 ran kv for {n2_last:?} after the cut"
    );
    assert!(elsewhere_first > n2_last);
    let (node, new_epoch) = placed(&rig, 1, "kv").unwrap();
    assert_eq!(node, format!("n{moved}"));
    assert!(new_epoch > epoch, "{new_epoch} after {epoch}");
    let doc = rig.c.json(1, "/v1/cluster");
    assert!(
        doc["fenced"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node"] == "n2"),
        "{doc}"
    );

    // Healed, n2 holds a lease again and does not start kv: the log placed it elsewhere.
    rig.c.heal();
    wait_group(&rig, 2, 3);
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.service(2, "kv").is_null(), "{}", rig.service(2, "kv"));
    assert_eq!(running_on(&rig, "kv"), vec![moved]);
    // Its fence record is closed once it renews.
    wait_for(Duration::from_secs(10), || {
        let doc = rig.c.json(1, "/v1/cluster");
        (!doc["fenced"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["node"] == "n2"))
        .then_some(())
    })
    .expect("n2's fence closed after it came back");
    // Prometheus sees one leader, and n1 (which led while n2 was cut off) counted the fence
    // and the failover.
    let metric = |i: usize, name: &str| -> Option<f64> {
        let (code, metrics) = rig.c.get(i, "/metrics").unwrap();
        assert_eq!(code, 200);
        promtool_check(&metrics);
        metrics.lines().find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n.split('{').next() == Some(name))
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
    };
    wait_for(Duration::from_secs(10), || {
        let leaders: f64 = (1..=3)
            .map(|i| metric(i, "godwit_coordinator_leader").unwrap_or(0.0))
            .sum();
        (leaders == 1.0).then_some(())
    })
    .expect("exactly one node reports itself the leader");
    assert_eq!(metric(1, "godwit_fences_total"), Some(1.0));
    assert_eq!(metric(1, "godwit_failovers_total"), Some(1.0));
    // ... and as a decision of the leader's: started, then committed.
    let (_, metrics) = rig.c.get(1, "/metrics").unwrap();
    let decisions = |outcome: &str| -> Option<f64> {
        let series = format!("godwit_decisions_total{{kind=\"failover\",outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.parse().ok())
    };
    assert_eq!(decisions("started"), Some(1.0), "{metrics}");
    assert_eq!(decisions("committed"), Some(1.0));
    assert_eq!(decisions("failed"), Some(0.0));
    // The failover took at least the fence bound (lease 3 s + guard 0.5 s + margin 0.5 s)
    // after n2's last renewal.
    let took = metric(1, "godwit_failover_last_seconds").expect("a failover duration");
    assert!((4.0..15.0).contains(&took), "failover took {took} s");
    // The operator's view.
    let out = rig
        .c
        .cli(1)
        .args(["cluster", "--json", "--socket"])
        .arg(rig.c.socket(1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in ["leader", "term", "voters", "nodes"] {
        assert!(!doc[field].is_null(), "{field} missing: {doc}");
    }
}

#[test]
fn a_migrated_configured_service_stays_where_the_log_put_it_across_restarts() {
    require_root();
    let mut rig = MigrateRig::new(RigOptions {
        configured_kv: true,
        ..RigOptions::coordinated(2)
    });
    // Two nodes: one voter (n1); n2 follows as a learner.
    wait_group(&rig, 1, 1);
    wait_group(&rig, 2, 1);
    rig.wait_serving(1, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "kv not up on n1: {}\n{}",
                rig.service(1, "kv"),
                rig.c.log(1)
            )
        });
    let (_, e1) = placed(&rig, 1, "kv").unwrap();

    let m = rig.migrate("kv", 2, &["--downtime-target", "500"]);
    assert!(m.committed(), "{}\n{}", m.progress, rig.c.log(1));
    let (node, e2) = placed(&rig, 1, "kv").unwrap();
    assert_eq!(node, "n2");
    assert!(e2 > e1);
    rig.wait_serving(2, "kv", Duration::from_secs(20))
        .expect("kv up on n2");

    // The source restarts: its configuration still defines kv, but the log says n2.
    rig.c.signal(1, libc::SIGTERM);
    rig.c
        .wait_exit(1, Duration::from_secs(30))
        .expect("n1 stopped");
    let c = &mut rig;
    c.c.start_agent(1);
    c.c.wait_ready(1);
    wait_group(c, 1, 1);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.service(1, "kv").is_null(),
        "n1 started kv again: {}",
        c.service(1, "kv")
    );
    assert_eq!(running_on(c, "kv"), vec![2]);

    // The target restarts: kv runs again there, at the same epoch.
    c.c.signal(2, libc::SIGTERM);
    c.c.wait_exit(2, Duration::from_secs(30))
        .expect("n2 stopped");
    c.c.start_agent(2);
    c.c.wait_ready(2);
    c.wait_serving(2, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("kv not back on n2: {}\n{}", c.service(2, "kv"), c.c.log(2)));
    assert_eq!(placed(c, 2, "kv").unwrap(), ("n2".to_string(), e2));
    assert_eq!(running_on(c, "kv"), vec![2]);

    // Draining n2 (asked of n1) moves kv back to n1 through the log, and cordons n2.
    let out =
        c.c.cli(1)
            .args(["node", "drain", "n2", "--socket"])
            .arg(c.c.socket(1))
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.c.log(2)
    );
    c.wait_serving(1, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("kv not on n1 after the drain: {}", c.service(1, "kv")));
    let (node, e3) = placed(c, 1, "kv").unwrap();
    assert_eq!(node, "n1");
    assert!(e3 > e2);
    let doc = c.c.json(1, "/v1/cluster");
    assert!(
        doc["cordoned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "n2"),
        "{doc}"
    );
}

#[test]
fn a_stopped_agents_guard_kills_its_service_before_it_starts_elsewhere() {
    require_root();
    let mut rig = MigrateRig::new(RigOptions::coordinated(3));
    for i in 1..=3 {
        wait_group(&rig, i, 3);
    }
    let spec = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 16 << 20,
            ..KvOptions::default()
        },
    );
    rig.add(2, &spec, Duration::from_secs(20));
    let cgroup = std::path::PathBuf::from(rig.service(2, "kv")["cgroup"].as_str().unwrap());
    let populated = || {
        std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    };
    assert!(populated(), "kv has no process in {}", cgroup.display());

    // The agent hangs (SIGSTOP): it can neither renew its lease nor fence itself. Its guard,
    // a separate process, kills kv once the lease and the grace have run out.
    let stopped = Instant::now();
    rig.c.stop(2);
    let mut n2_until = None;
    let moved = loop {
        let t = stopped.elapsed();
        assert!(t < Duration::from_secs(40), "kv never ran elsewhere");
        let here = populated();
        if here {
            n2_until = Some(t);
        }
        let elsewhere = running_among(&rig, "kv", [1, 3]);
        assert!(
            !here || elsewhere.is_empty(),
            "kv ran on n2 (stopped agent) and on {elsewhere:?} at once, {t:?} after the stop"
        );
        if let Some(i) = elsewhere.first() {
            break (*i, t);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "n2's kv last seen {:.2} s after its agent stopped; n{} ran it at {:.2} s",
        n2_until.unwrap_or_default().as_secs_f64(),
        moved.0,
        moved.1.as_secs_f64()
    );
    assert!(!populated(), "the guard did not kill kv on n2");
    // The stopped agent resumes: it holds no lease, starts nothing, and leaves kv where it is.
    rig.c.cont(2);
    wait_group(&rig, 2, 3);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!populated());
    assert_eq!(running_on(&rig, "kv"), vec![moved.0]);
}

#[test]
fn two_nodes_and_a_witness_fail_over_and_the_witness_runs_nothing() {
    require_root();
    let rig = MigrateRig::new(RigOptions {
        witness: true,
        ..RigOptions::coordinated(3)
    });
    // n3 is the witness: one of the three voters.
    for i in 1..=3 {
        wait_group(&rig, i, 3);
    }
    let spec = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 16 << 20,
            ..KvOptions::default()
        },
    );
    rig.add(2, &spec, Duration::from_secs(20));
    // n2 is cut off: n1 and the witness are the majority; kv comes back on n1, never on n3.
    rig.c.partition(&[&[2], &[1, 3]]);
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "kv never failed over"
        );
        let on = running_on(&rig, "kv");
        assert!(on.len() <= 1, "kv on {on:?} at once");
        assert!(!on.contains(&3), "the witness ran kv");
        if on == [1] && rig.service(1, "kv")["health"] == "healthy" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(placed(&rig, 1, "kv").unwrap().0, "n1");
    // The witness holds no service.
    assert!(rig.service(3, "kv").is_null());
    rig.c.heal();
    wait_group(&rig, 2, 3);

    // With n2 cordoned, draining n1 leaves only the witness: the leader refuses to place kv
    // there, and kv stays on n1.
    let node = |args: &[&str]| {
        rig.c
            .cli(1)
            .arg("node")
            .args(args)
            .arg("--socket")
            .arg(rig.c.socket(1))
            .output()
            .unwrap()
    };
    assert!(node(&["cordon", "n2"]).status.success());
    let out = node(&["drain", "n1"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("witness"), "{text}");
    assert_eq!(placed(&rig, 1, "kv").unwrap().0, "n1");
    // (A loaded host may have fenced n1 for a moment meanwhile: it runs kv again once it renews.)
    wait_for(Duration::from_secs(20), || {
        (running_on(&rig, "kv") == [1]).then_some(())
    })
    .unwrap_or_else(|| panic!("kv not on n1 alone: {:?}", running_on(&rig, "kv")));
}

#[test]
fn an_intent_left_by_a_source_that_died_before_journaling_is_closed() {
    require_root();
    // The source waits 30 s after the log committed its intent: it dies in that window.
    std::env::set_var(godwit::migrate::agent::INTENT_DELAY_ENV, "30000");
    let mut rig = MigrateRig::new(RigOptions {
        configured_kv: true,
        ..RigOptions::coordinated(2)
    });
    std::env::remove_var(godwit::migrate::agent::INTENT_DELAY_ENV);
    wait_group(&rig, 1, 1);
    wait_group(&rig, 2, 1);
    rig.wait_serving(1, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("kv not up on n1: {}", rig.service(1, "kv")));
    let intent_of = |rig: &MigrateRig| -> Value {
        rig.c.json(1, "/v1/cluster")["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "kv"))
            .map(|s| s["intent"].clone())
            .unwrap_or(Value::Null)
    };
    let mut cmd = rig.migrate_command(1, "kv", 2, &[]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut migration = cmd.spawn().expect("godwit migrate");
    let intent = wait_for(Duration::from_secs(20), || {
        let i = intent_of(&rig);
        i.is_object().then_some(i)
    })
    .unwrap_or_else(|| panic!("no intent committed: {}", rig.c.log(1)));
    assert_eq!(intent["from"], "n1", "{intent}");

    // The source's agent dies before it journals anything, and comes back before any fence.
    rig.c.kill(1);
    let _ = migration.kill();
    let _ = migration.wait();
    rig.c.start_agent(1);
    rig.c.wait_ready(1);
    wait_group(&rig, 1, 1);

    // No migration owns the intent now: the node closes it and kv runs again, on n1 only.
    wait_for(Duration::from_secs(30), || {
        intent_of(&rig).is_null().then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the orphaned intent is still open: {}\n{}",
            intent_of(&rig),
            rig.c.log(1)
        )
    });
    rig.wait_serving(1, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "kv not back on n1: {}\n{}",
                rig.service(1, "kv"),
                rig.c.log(1)
            )
        });
    let (node, epoch) = placed(&rig, 1, "kv").unwrap();
    assert_eq!(node, "n1");
    assert!(
        epoch > intent["epoch"].as_u64().unwrap(),
        "epoch {epoch} after the intent {intent}"
    );
    assert_eq!(running_on(&rig, "kv"), vec![1]);
}
