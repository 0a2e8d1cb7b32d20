//! A SIGTERM that reaches an agent while one of its migrations is being cut over: the agent
//! stops cleanly (exit 0), and once restarted its journal resolves the migration, so that the
//! service runs on exactly one node and no write the checking client saw acknowledged is
//! missing. Needs root; one test at a time (`--test-threads=1`).

use std::time::Duration;

use godwit::migrate::agent::HANDOFF_DELAY_ENV;
use godwit_tests::migrate_rig::{run_migrate, KvOptions, MigrateRig, Migration, RigOptions};
use godwit_tests::{require_root, wait_for};
use serde_json::Value;

/// The tests' migrations: transitional, 200 ms target.
const TRANSITIONAL: &[&str] = &["--mode", "transitional", "--downtime-target", "200"];

/// Two agents whose sources hold each hand-off back 20 s after the decision (so that the
/// cut-over is in flight long enough to strike), with `kv` (64 MiB) running on n1.
fn rig() -> MigrateRig {
    // The agents inherit it; tests run one at a time.
    std::env::set_var(HANDOFF_DELAY_ENV, "20000");
    let rig = MigrateRig::new(RigOptions::default());
    std::env::remove_var(HANDOFF_DELAY_ENV);
    let kv = KvOptions {
        size: 64 << 20,
        ..KvOptions::default()
    };
    rig.add(1, &rig.kv_spec("kv", &kv), Duration::from_secs(15));
    rig
}

/// `kv` moved from n1 to n2 on a thread of its own.
fn migrate_in_background(rig: &MigrateRig) -> std::thread::JoinHandle<Migration> {
    let cmd = rig.migrate_command(1, "kv", 2, TRANSITIONAL);
    std::thread::spawn(move || run_migrate(cmd, Duration::from_secs(120)))
}

/// The phases of `side` (`source` or `target`) in node `i`'s migration journal.
fn journal(rig: &MigrateRig, i: usize, side: &str) -> Vec<String> {
    let dir = rig.c.node(i).dir.join("data/migrations");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{side}-"))
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| v["phase"].as_str().map(str::to_string))
        .collect()
}

/// Waits (up to 90 s) until n2's journal says the move was decided: the source has frozen
/// the service and committed, the target owns it, and the hand-off is held back.
fn wait_decided(rig: &MigrateRig) {
    wait_for(Duration::from_secs(90), || {
        journal(rig, 2, "target")
            .iter()
            .any(|p| p == "owned")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the target never learnt the decision\n{}", rig.c.log(2)));
}

/// SIGTERMs node `i`'s agent and asserts that it exits 0 within 60 s.
fn terminate(rig: &mut MigrateRig, i: usize) {
    rig.c.signal(i, libc::SIGTERM);
    let status = rig.c.wait_exit(i, Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "n{i}'s agent after SIGTERM: {status:?}\n{}",
        rig.c.log(i)
    );
}

/// Node `i` runs `kv`, healthy, behind its VIP.
fn serving(rig: &MigrateRig, i: usize) -> bool {
    let s = rig.service(i, "kv");
    s["health"] == "healthy" && s["vip_active"] == true
}

/// The kvstore processes of this rig (either node), frozen or not.
fn kvstores(rig: &MigrateRig) -> usize {
    let state = rig.pki.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("kvstore") && c.contains(&state))
        .count()
}

/// The service runs on node `on` only, with one process, and the client lost nothing.
fn assert_once_and_intact(rig: &MigrateRig, on: usize, client: std::process::Child) {
    let other = 3 - on;
    assert!(serving(rig, on), "kv on n{on}: {}", rig.service(on, "kv"));
    assert!(
        rig.service(other, "kv").is_null(),
        "n{other} runs kv too: {}",
        rig.service(other, "kv")
    );
    assert_eq!(kvstores(rig), 1, "kvstore processes of the rig");
    let out = client.wait_with_output().expect("wait for kvcheck");
    let check: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!("client {check}");
    assert!(
        check["acknowledged"].as_u64().unwrap_or(0) > 0,
        "the client got writes acknowledged: {check}"
    );
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
}

/// The source agent gets SIGTERM after the decision, before the hand-off: its frozen
/// instance is killed without a thaw, the target starts the service on its own, and the
/// source, restarted, hands it off again instead of running it.
#[test]
fn a_sigterm_to_the_source_during_the_cut_over_leaves_the_service_on_the_target_only() {
    require_root();
    let mut rig = rig();
    let client = rig.client(30);
    let mover = migrate_in_background(&rig);
    wait_decided(&rig);
    terminate(&mut rig, 1);
    let _ = mover.join();
    assert_eq!(
        journal(&rig, 1, "source"),
        ["committed"],
        "the source stopped with the move decided, not handed off"
    );
    wait_for(Duration::from_secs(30), || serving(&rig, 2).then_some(()))
        .unwrap_or_else(|| panic!("kv not adopted by n2: {}\n{}", rig.status(2), rig.c.log(2)));
    rig.c.start_agent(1);
    rig.c.wait_ready(1);
    wait_for(Duration::from_secs(30), || {
        journal(&rig, 1, "source").is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("the source never resolved the migration\n{}", rig.c.log(1)));
    assert!(
        !rig.state_dir(1, "kv").exists(),
        "the source's copy of the state is removed"
    );
    assert_once_and_intact(&rig, 2, client);
}

/// The target agent gets SIGTERM after the decision, before the hand-off: it stops without
/// starting the service, and restarted, its journal (`owned`) starts it there; the source's
/// hand-off then finds it running. Never on both nodes.
#[test]
fn a_sigterm_to_the_target_during_the_cut_over_leaves_the_service_on_the_target_only() {
    require_root();
    let mut rig = rig();
    let client = rig.client(30);
    let mover = migrate_in_background(&rig);
    wait_decided(&rig);
    terminate(&mut rig, 2);
    let m = mover.join().expect("the migrate thread");
    eprintln!("migration: exit {:?}, {}", m.exit, m.report["result"]);
    assert!(
        !serving(&rig, 1),
        "the source runs kv again after its decision"
    );
    rig.c.start_agent(2);
    rig.c.wait_ready(2);
    wait_for(Duration::from_secs(60), || serving(&rig, 2).then_some(()))
        .unwrap_or_else(|| panic!("kv not started on n2: {}\n{}", rig.status(2), rig.c.log(2)));
    // The source's held-back hand-off goes through and ends its side of the move.
    wait_for(Duration::from_secs(60), || {
        journal(&rig, 1, "source").is_empty().then_some(())
    })
    .unwrap_or_else(|| panic!("the source never finished the move\n{}", rig.c.log(1)));
    assert_once_and_intact(&rig, 2, client);
    assert!(
        journal(&rig, 2, "target").iter().all(|p| p == "started"),
        "{:?}",
        journal(&rig, 2, "target")
    );
}
