//! The coordinator acting on the policy, with real agents in network namespaces: each node
//! offers its services half a core (`[services] cpu_cores`, enforced with `cpu.max`), a
//! service's CPU load steps up, its node goes over its threshold, and the leader moves the
//! service away with no operator, while a checking client loses no acknowledged write. With
//! `act = false` the leader only logs its plan; paused, it moves nothing until resumed.
//! Needs root; one test at a time (`cargo xtask test`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use godwit_tests::migrate_rig::{stop_client, KvOptions, MigrateRig, RigOptions};
use godwit_tests::{require_root, wait_for};
use serde_json::Value;

/// The port of the steady background service.
const BG_PORT: u16 = 7400;

/// Three coordinated nodes of half a core each; n1 leads. The policy re-tries a node that
/// stays over its threshold after 10 samples (5 s) instead of 60, so a test can pause, see
/// the trigger held back, resume and see it carried out.
fn rig(coordinator_keys: &str) -> MigrateRig {
    let rig = MigrateRig::new(RigOptions {
        cpu_cores: 0.5,
        coordinator_keys: coordinator_keys.to_string(),
        extra_toml: "[policy]\nrearm_after_samples = 10\ncooldown_samples = 10\n".into(),
        ..RigOptions::coordinated(3)
    });
    let group = rig.wait_group(1, 3);
    assert_eq!(group["leader"], "n1", "{group}");
    for i in 2..=3 {
        rig.wait_group(i, 3);
    }
    rig
}

/// `kv` (behind the VIP, its CPU load following `data/load` in its state) and `bg` (a steady
/// 0.18 cores) on n2, both placed through the log. `bg`'s state is the larger, so the policy,
/// which prefers the most correlated service and the quickest copy, has one answer: `kv`.
fn services(rig: &MigrateRig) -> PathBuf {
    let mut kv = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 4 << 20,
            ..KvOptions::default()
        },
    );
    kv["command"]
        .as_array_mut()
        .unwrap()
        .extend(["--load-file".into(), "{state}/data/load".into()]);
    let load = rig.state_dir(2, "kv").join("data/load");
    std::fs::create_dir_all(load.parent().unwrap()).unwrap();
    std::fs::write(&load, "0.02").unwrap();
    rig.add(2, &kv, Duration::from_secs(20));
    let bg_load = rig.state_dir(2, "bg").join("data/load");
    std::fs::create_dir_all(bg_load.parent().unwrap()).unwrap();
    std::fs::write(&bg_load, "0.18").unwrap();
    let bg = serde_json::json!({
        "name": "bg",
        "command": [
            rig.kvstore.display().to_string(),
            "--listen", format!("127.0.0.1:{BG_PORT}"),
            "--state", "{state}/data/bg.state", "--size", (64u64 << 20).to_string(),
            "--load-file", "{state}/data/load",
        ],
        "state": ["data"],
        "health": {"tcp": format!("127.0.0.1:{BG_PORT}"), "interval_ms": 100},
    });
    let (code, body) = rig
        .c
        .act(2, "POST", "/v1/services", Some(&bg.to_string()))
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(20), || {
        (rig.service(2, "bg")["health"] == "healthy").then_some(())
    })
    .expect("bg healthy on n2");
    assert_eq!(rig.placed(1, "kv").map(|p| p.0).as_deref(), Some("n2"));
    assert_eq!(rig.placed(1, "bg").map(|p| p.0).as_deref(), Some("n2"));
    // The leader hears both services' load in n2's summary, and n2 is well under its
    // threshold: for a while nothing is planned.
    wait_for(Duration::from_secs(20), || {
        let plan = rig.c.json(1, "/v1/cluster/plan");
        let n = plan["view"]["services"].as_array().map_or(0, Vec::len);
        (n == 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the leader's view lacks the services: {}",
            rig.c.json(1, "/v1/cluster/plan")
        )
    });
    std::thread::sleep(Duration::from_secs(5));
    let plan = rig.c.json(1, "/v1/cluster/plan");
    assert_eq!(
        plan["decisions"].as_array().map(Vec::len),
        Some(0),
        "nothing to decide while quiet: {plan:#}"
    );
    load
}

/// The leader's decisions about `kv` so far.
fn decisions(rig: &MigrateRig) -> Vec<Value> {
    rig.c.json(1, "/v1/cluster/plan")["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["service"] == "kv")
        .collect()
}

/// `godwit ARGS` against node `i`'s API socket; its output.
fn godwit(rig: &MigrateRig, i: usize, args: &[&str]) -> std::process::Output {
    rig.c
        .cli(i)
        .args(args)
        .arg("--socket")
        .arg(rig.c.socket(i))
        .output()
        .unwrap()
}

/// `godwit_decisions_total{kind="migrate",outcome=…}` on the leader.
fn counted(rig: &MigrateRig, outcome: &str) -> f64 {
    let (_, text) = rig.c.get(1, "/metrics").unwrap();
    let want = format!("godwit_decisions_total{{kind=\"migrate\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in the leader's metrics"))
}

#[test]
fn a_node_whose_service_steps_up_sheds_it_with_no_operator_and_loses_no_write() {
    require_root();
    let rig = rig("");
    let load = services(&rig);
    let client = rig.client(600);

    // Paused first: the trigger fires, the decision is held back and counted, nothing moves.
    let out = godwit(&rig, 1, &["cluster", "pause"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));
    let stepped = Instant::now();
    std::fs::write(&load, "0.3").unwrap();
    let held = wait_for(Duration::from_secs(40), || {
        decisions(&rig)
            .into_iter()
            .find(|d| d["outcome"] == "paused")
    })
    .unwrap_or_else(|| {
        panic!(
            "no decision held back by the pause: {:#}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1)
        )
    });
    eprintln!(
        "fired {:.1} s after the step: {held}",
        stepped.elapsed().as_secs_f64()
    );
    assert_eq!(held["from"], "n2", "{held}");
    assert!(
        held["why"].as_str().unwrap_or("").contains("n2 fired"),
        "{held}"
    );
    assert!(counted(&rig, "paused") >= 1.0);
    assert_eq!(counted(&rig, "started"), 0.0);
    assert_eq!(rig.placed(1, "kv").unwrap().0, "n2");

    // Resumed: the node, still over its threshold, fires again and the move is carried out.
    let out = godwit(&rig, 1, &["cluster", "resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = Instant::now();
    let (to, _) = wait_for(Duration::from_secs(60), || {
        rig.placed(1, "kv").filter(|(n, _)| n != "n2")
    })
    .unwrap_or_else(|| {
        panic!(
            "kv never left n2: {:#}\n{}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1),
            rig.c.log(2)
        )
    });
    let i: usize = to.trim_start_matches('n').parse().unwrap();
    rig.wait_serving(i, "kv", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("kv not serving on {to}: {}", rig.service(i, "kv")));
    eprintln!(
        "kv moved to {to} {:.1} s after the resume",
        resumed.elapsed().as_secs_f64()
    );
    assert!(
        rig.service(2, "kv")["pid"].is_null(),
        "kv still runs on n2: {}",
        rig.service(2, "kv")
    );
    // The steady service stayed: moving kv alone relieves n2.
    assert_eq!(rig.placed(1, "bg").unwrap().0, "n2");
    let committed = wait_for(Duration::from_secs(10), || {
        decisions(&rig)
            .into_iter()
            .find(|d| d["outcome"] == "committed")
    })
    .expect("the committed move is recorded");
    assert_eq!(committed["to"], to.as_str(), "{committed}");
    assert_eq!(counted(&rig, "started"), 1.0);
    assert_eq!(counted(&rig, "committed"), 1.0);
    // The audit names the coordinator as the one who asked.
    let audit = std::fs::read_to_string(rig.c.node(2).data_dir().join("migrations.log"))
        .unwrap_or_default();
    assert!(audit.contains("node n1"), "{audit}");
    // `godwit explain --cluster` tells it.
    let out = godwit(&rig, 1, &["explain", "--cluster"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("committed") && text.contains("n2 fired"),
        "{text}"
    );

    std::thread::sleep(Duration::from_secs(2));
    let (check, ok) = stop_client(client);
    eprintln!("client: {check}");
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    assert!(
        check["acknowledged"].as_u64().unwrap_or(0) > 1000,
        "{check}"
    );
    assert!(ok, "{check}");
}

#[test]
fn with_act_false_the_leader_only_logs_its_plan() {
    require_root();
    let rig = rig("act = false\n");
    let load = services(&rig);
    std::fs::write(&load, "0.3").unwrap();
    let observed = wait_for(Duration::from_secs(40), || {
        decisions(&rig)
            .into_iter()
            .find(|d| d["outcome"] == "observed")
    })
    .unwrap_or_else(|| {
        panic!(
            "no plan logged: {:#}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1)
        )
    });
    assert_eq!(observed["from"], "n2", "{observed}");
    assert!(
        rig.c
            .log(1)
            .contains("coordinator decision not carried out"),
        "the plan is in the leader's log"
    );
    // Nothing moves: kv stays where it is, over its threshold, for as long as we look.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(rig.placed(1, "kv").unwrap().0, "n2");
    assert!(rig.service(2, "kv")["pid"].is_u64());
    assert!(counted(&rig, "observed") >= 1.0);
    assert_eq!(counted(&rig, "started"), 0.0);
    assert!(rig.c.json(1, "/v1/cluster/plan")["running"]
        .as_array()
        .is_some_and(Vec::is_empty));
}
