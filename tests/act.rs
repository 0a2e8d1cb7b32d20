//! The coordinator acting on the policy, with real agents in network namespaces: each node
//! offers its services half a core (`[services] cpu_cores`, enforced with `cpu.max`), a
//! service's CPU load steps up, its node goes over its threshold, and the leader moves the
//! service away with no operator, while a checking client loses no acknowledged write. With
//! `act = false` the leader only logs its plan; paused, it moves nothing until resumed.
//! A service with an image whose node nears its threshold gets its image copied to its likely
//! target ahead of the move (pre-staging), so the move then sends none of it.
//! Needs root; one test at a time (`cargo xtask test`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use godwit::migrate::control::{self, PrestageCall, Staged};
use godwit::transport::{Endpoint, Identity, IdentityFiles};
use godwit_tests::migrate_rig::{stop_client, KvOptions, MigrateRig, RigOptions};
use godwit_tests::{require_root, wait_for};
use serde_json::Value;

/// The port of the steady background service.
const BG_PORT: u16 = 7400;

/// `[policy]` keys of the pre-staging tests: a node is "near" its threshold (its services
/// likely to move, their images worth copying) from 0.25 under it, so that a step to 0.6 of
/// the node (under the 0.8 threshold) pre-stages without firing.
const PRESTAGE_POLICY: &str = "prestage_margin = 0.25\n";

/// Three coordinated nodes of half a core each; n1 leads. The policy re-tries a node that
/// stays over its threshold after 10 samples (5 s) instead of 60, so a test can pause, see
/// the trigger held back, resume and see it carried out. `policy_keys`: more `[policy]`.
fn rig(coordinator_keys: &str, policy_keys: &str) -> MigrateRig {
    let rig = MigrateRig::new(RigOptions {
        cpu_cores: 0.5,
        coordinator_keys: coordinator_keys.to_string(),
        extra_toml: format!(
            "[policy]\nrearm_after_samples = 10\ncooldown_samples = 10\n{policy_keys}"
        ),
        ..RigOptions::coordinated(3)
    });
    let group = rig.wait_group(1, 3);
    assert_eq!(group["leader"], "n1", "{group}");
    for i in 2..=3 {
        rig.wait_group(i, 3);
    }
    rig
}

/// An image for `kv`: 6 MiB of incompressible files, so that copying it is real work and a
/// move that finds it on its target sends none of it.
fn kv_image(rig: &MigrateRig) -> PathBuf {
    let dir = rig.pki.join("kv-image");
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (name, mib) in [("lib/blob-a", 4usize), ("lib/blob-b", 2)] {
        let mut data = Vec::with_capacity(mib << 20);
        while data.len() < mib << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(dir.join(name), data).unwrap();
    }
    dir
}

/// The images node `i`'s store holds (its API).
fn images(rig: &MigrateRig, i: usize) -> Vec<String> {
    rig.c.json(i, "/v1/images")["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

/// The images the leader's cluster view lists on `node` (that node's gossip).
fn gossiped_images(rig: &MigrateRig, node: &str) -> Vec<String> {
    rig.c.json(1, "/v1/cluster/plan")["view"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == node)
        .and_then(|n| n["images"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// Orders n2, over its control service and from node `at`'s namespace, to push `image` to
/// `to` under `term`, presenting `identity`; its answer.
fn order_copy(
    rig: &MigrateRig,
    at: usize,
    identity: Identity,
    image: &str,
    to: &str,
    term: u64,
) -> Staged {
    let addr = std::net::SocketAddr::new(rig.c.node(2).addr.into(), 9748);
    let call = PrestageCall {
        image: image.to_string(),
        to: to.to_string(),
        fencing_token: term,
    };
    rig.c.in_node(at, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = Endpoint::client(([0, 0, 0, 0], 0).into(), identity).unwrap();
            control::prestage(&ep, addr, "n2", call)
                .await
                .unwrap_or_else(|e| panic!("ordering a copy from n2: {e}"))
        })
    })
}

/// `kv` (behind the VIP, its CPU load following `data/load` in its state; run from `image`
/// when given) and `bg` (a steady 0.18 cores) on n2, both placed through the log. `bg`'s state
/// is the larger, so the policy, which prefers the most correlated service and the quickest
/// copy, has one answer: `kv`.
fn services(rig: &MigrateRig, image: Option<&std::path::Path>) -> PathBuf {
    let mut kv = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 4 << 20,
            ..KvOptions::default()
        },
    );
    if let Some(image) = image {
        kv["image"] = image.display().to_string().into();
    }
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

/// The leader's decisions to move `kv` so far.
fn decisions(rig: &MigrateRig) -> Vec<Value> {
    decisions_of(rig, "migrate")
}

/// The leader's decisions of `kind` about `kv` so far.
fn decisions_of(rig: &MigrateRig, kind: &str) -> Vec<Value> {
    rig.c.json(1, "/v1/cluster/plan")["decisions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["service"] == "kv" && d["kind"] == kind)
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
    counted_of(rig, "migrate", outcome)
}

/// `godwit_decisions_total{kind=…,outcome=…}` on the leader.
fn counted_of(rig: &MigrateRig, kind: &str, outcome: &str) -> f64 {
    let (_, text) = rig.c.get(1, "/metrics").unwrap();
    let want = format!("godwit_decisions_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in the leader's metrics"))
}

#[test]
fn a_node_whose_service_steps_up_sheds_it_with_no_operator_and_loses_no_write() {
    require_root();
    let rig = rig("", "");
    let load = services(&rig, None);
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
    let rig = rig("act = false\n", PRESTAGE_POLICY);
    let image = kv_image(&rig);
    let load = services(&rig, Some(&image));
    let id = rig.service(2, "kv")["image_id"]
        .as_str()
        .expect("kv runs from an image in n2's store")
        .to_string();
    // Near the threshold: the plan lists a copy of kv's image, the leader only logs it.
    std::fs::write(&load, "0.12").unwrap();
    let planned = wait_for(Duration::from_secs(90), || {
        decisions_of(&rig, "prestage")
            .into_iter()
            .find(|d| d["outcome"] == "observed")
    })
    .unwrap_or_else(|| {
        panic!(
            "no pre-staging planned: {:#}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1)
        )
    });
    assert_eq!(planned["image"], id.as_str(), "{planned}");
    std::thread::sleep(Duration::from_secs(8));
    for i in [1, 3] {
        assert!(
            !images(&rig, i).contains(&id),
            "n{i} holds kv's image though act = false"
        );
    }
    assert!(counted_of(&rig, "prestage", "observed") >= 1.0);
    assert_eq!(counted_of(&rig, "prestage", "started"), 0.0);
    assert!(rig.c.json(1, "/v1/cluster/plan")["copies_running"]
        .as_array()
        .is_some_and(Vec::is_empty));

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

#[test]
fn a_node_nearing_its_threshold_gets_its_service_image_copied_ahead_of_the_move() {
    require_root();
    let rig = rig("", PRESTAGE_POLICY);
    let image = kv_image(&rig);
    let load = services(&rig, Some(&image));
    let id = rig.service(2, "kv")["image_id"]
        .as_str()
        .expect("kv runs from an image in n2's store")
        .to_string();
    for i in [1, 3] {
        assert!(
            !images(&rig, i).contains(&id),
            "n{i} holds kv's image already"
        );
    }
    // n2 nears its threshold (0.6 of its half core, under the 0.8 threshold): kv is likely to
    // move, and its image goes to its likely target ahead of time.
    let stepped = Instant::now();
    std::fs::write(&load, "0.12").unwrap();
    // Within the forecast's reach: the node's forecast, not its load now, has to come near
    // the threshold (seen from 3 to 40 s after the step).
    let mut listed = None;
    let copied = wait_for(Duration::from_secs(90), || {
        if listed.is_none() {
            let plan = rig.c.json(1, "/v1/cluster/plan");
            if plan["plan"]["prestage"]["copies"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
            {
                listed = Some(stepped.elapsed());
            }
        }
        decisions_of(&rig, "prestage")
            .into_iter()
            .find(|d| d["outcome"] == "committed")
    })
    .unwrap_or_else(|| {
        panic!(
            "no image pre-staged: {:#}\n{}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1),
            rig.c.log(2)
        )
    });
    eprintln!(
        "planned {:.1} s and pre-staged {:.1} s after the step: {copied}",
        listed.map_or(f64::NAN, |l| l.as_secs_f64()),
        stepped.elapsed().as_secs_f64()
    );
    assert_eq!(copied["image"], id.as_str(), "{copied}");
    assert_eq!(copied["from"], "n2", "{copied}");
    let to = copied["to"].as_str().unwrap().to_string();
    let ti: usize = to.trim_start_matches('n').parse().unwrap();
    // The target's store holds it, and its gossip says so.
    assert!(
        images(&rig, ti).contains(&id),
        "{to}: {:?}",
        images(&rig, ti)
    );
    wait_for(Duration::from_secs(10), || {
        gossiped_images(&rig, &to).contains(&id).then_some(())
    })
    .unwrap_or_else(|| panic!("{to}'s gossip never listed kv's image"));
    // Before any move: kv runs on n2, nothing moved it.
    assert_eq!(rig.placed(1, "kv").unwrap().0, "n2");
    assert!(decisions(&rig).is_empty(), "{:?}", decisions(&rig));
    // The plan's likely target is the lightest node with room, which the copy itself may
    // change (the receiver works): then the image goes there too. Each node gets it once,
    // every copy lands, and no more run at once than the caps allow.
    std::thread::sleep(Duration::from_secs(5));
    wait_for(Duration::from_secs(20), || {
        rig.c.json(1, "/v1/cluster/plan")["copies_running"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .expect("the copies end");
    let started: Vec<String> = decisions_of(&rig, "prestage")
        .into_iter()
        .filter(|d| d["outcome"] == "started")
        .filter_map(|d| d["to"].as_str().map(str::to_string))
        .collect();
    let mut once = started.clone();
    once.sort();
    once.dedup();
    assert_eq!(
        once.len(),
        started.len(),
        "a node got it twice: {started:?}"
    );
    assert!(!started.iter().any(|t| t == "n2"), "{started:?}");
    let holders: Vec<String> = (1..=3)
        .filter(|i| images(&rig, *i).contains(&id))
        .map(|i| format!("n{i}"))
        .collect();
    for t in &started {
        assert!(
            holders.contains(t),
            "{t} was sent it but lacks it: {holders:?}"
        );
    }
    let n = started.len() as f64;
    assert_eq!(counted_of(&rig, "prestage", "started"), n);
    assert_eq!(counted_of(&rig, "prestage", "committed"), n);
    eprintln!("kv's image pre-staged on {started:?}");

    // Only the leader, in its term, may order a copy: not an operator, not another node, not
    // the leader with a stale term. Each is refused by n2 and nothing is copied.
    let term = rig.c.json(1, "/v1/cluster")["term"]
        .as_u64()
        .expect("a term");
    let lacking = ["n3", "n1"]
        .into_iter()
        .find(|t| !holders.iter().any(|h| h == t));
    let target = lacking.unwrap_or("n3");
    let ops = rig.pki.join("operator");
    godwit::transport::issue_operator(&rig.pki.join("ca"), "alice", &ops).unwrap();
    let node_identity = |i: usize| {
        let name = format!("n{i}");
        let files = IdentityFiles::in_dir(&rig.c.node(i).dir.join("tls"), &name);
        Identity::load(&name, &files).unwrap()
    };
    let orders = [
        (
            3,
            Identity::load_operator("alice", &IdentityFiles::operator_in_dir(&ops, "alice"))
                .unwrap(),
            term,
            "only the coordinator's leader".to_string(),
        ),
        (
            3,
            node_identity(3),
            term,
            "the leader here is n1".to_string(),
        ),
        (
            1,
            node_identity(1),
            term - 1,
            format!("the leader here is n1 in term {term}"),
        ),
    ];
    for (at, identity, t, want) in orders {
        match order_copy(&rig, at, identity, &id, target, t) {
            Staged::Refused(why) => assert!(why.contains(&want), "{why:?} lacks {want:?}"),
            other => panic!("an order from n{at} in term {t} was not refused: {other:?}"),
        }
    }
    if lacking.is_some() {
        assert!(!images(&rig, target.trim_start_matches('n').parse().unwrap()).contains(&id));
    }
    // `godwit explain --cluster` shows it.
    let out = godwit(&rig, 1, &["explain", "--cluster"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("image copies done") && text.contains(&format!("n2 -> {to} (for kv)")),
        "{text}"
    );

    // Over the threshold: kv moves, to the node that holds its image, and sends none of it.
    // (It asks for more than the node's half core with bg, so that the node is over its
    // threshold even on a host whose other work takes a share of the cores.)
    std::fs::write(&load, "0.45").unwrap();
    let (moved_to, _) = wait_for(Duration::from_secs(60), || {
        rig.placed(1, "kv").filter(|(n, _)| n != "n2")
    })
    .unwrap_or_else(|| {
        panic!(
            "kv never left n2: {:#}\n{}",
            rig.c.json(1, "/v1/cluster/plan"),
            rig.c.log(1)
        )
    });
    assert!(
        started.contains(&moved_to),
        "kv went to {moved_to}, not where its image was pre-staged ({started:?})"
    );
    let to = moved_to;
    let ti: usize = to.trim_start_matches('n').parse().unwrap();
    rig.wait_serving(ti, "kv", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("kv not serving on {to}: {}", rig.service(ti, "kv")));
    let audit = rig.c.node(2).data_dir().join("migrations.log");
    let report: Value = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .rfind(|r| r["service"] == "kv" && r["result"] == "committed")
    })
    .unwrap_or_else(|| {
        panic!(
            "no committed move of kv in n2's audit: {:?}",
            std::fs::read_to_string(&audit)
        )
    });
    eprintln!("the move: {report}");
    assert_eq!(report["to"], to.as_str(), "{report}");
    assert_eq!(report["image_chunks_sent"], 0, "{report}");
}
