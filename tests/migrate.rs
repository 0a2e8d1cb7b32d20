//! State migration with the kernel's dirty-page tracking: a real BPF probe in this process
//! reports the pages a writer dirties (through `write`, a shared mapping and `O_DIRECT`) while
//! rounds move the state to a peer over QUIC, and the copy is identical after the final round.
//! Needs root; one test at a time (`cargo xtask test`).

use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use godwit::config::{Config, ProbeMode};
use godwit::migrate::{self, StateScan, StateSender};
use godwit::predict::testdata::noise;
use godwit::probe::{self, DirtyTracker, Sampler};
use godwit::transport::{init_ca, issue_node, Endpoint, Identity, Services};
use godwit_tests::migrate_rig::{run_migrate, KvOptions, MigrateRig, Migration, RigOptions};
use godwit_tests::{require_root, unique};

// Larger than two of the scan's 16 MiB cleaning windows, so round 0 cleans and reads window by window.
const STATE: usize = 40 << 20;

fn endpoint(ca: &Path, dir: &Path, node: &str) -> Endpoint {
    let files = issue_node(ca, node, &dir.join(node)).unwrap();
    Endpoint::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Identity::load(node, &files).unwrap(),
    )
    .unwrap()
}

/// A writer that changes the state four ways until `stop`: `pwrite` to `db`, stores through
/// a shared mapping of `mapped`, `O_DIRECT` writes to `direct` (which the page cache, and so
/// the probe, never sees) mixed with buffered ones to the same file (which the probe sees, so
/// the file's size and mtime alone would not give the `O_DIRECT` ones away), and appends to
/// `log`.
fn writer(
    dir: &Path,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let db = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("db"))
            .unwrap();
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("direct"))
            .unwrap();
        let direct_buffered = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("direct"))
            .unwrap();
        let mapped = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("mapped"))
            .unwrap();
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("log"))
            .unwrap();
        let len = mapped.metadata().unwrap().len() as usize;
        // SAFETY: a shared mapping of a file we opened read-write, of its whole length; it is
        // only written through `map` below and unmapped before the thread ends.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&mapped),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // O_DIRECT needs an aligned buffer.
        let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
        // SAFETY: a non-zero-sized layout; freed below.
        let aligned = unsafe { std::alloc::alloc(layout) };
        let mut x = 11u64;
        while !stop.load(Ordering::Relaxed) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let block = x % (STATE as u64 / 4096);
            db.write_all_at(&noise(4096, x), block * 4096).unwrap();
            let at = (x as usize >> 8) % (len - 8);
            // SAFETY: `at + 8 <= len`, inside the mapping.
            unsafe { std::ptr::write_unaligned(map.cast::<u8>().add(at).cast::<u64>(), x) };
            if x.is_multiple_of(8) {
                // SAFETY: `aligned` holds 4096 bytes.
                unsafe { std::ptr::write_bytes(aligned, (x >> 16) as u8, 4096) };
                // SAFETY: the buffer is valid for 4096 bytes.
                let buf = unsafe { std::slice::from_raw_parts(aligned, 4096) };
                direct.write_all_at(buf, (x % 256) * 4096).unwrap();
            } else if x % 8 == 1 {
                direct_buffered
                    .write_all_at(&noise(4096, x), (x % 256) * 4096)
                    .unwrap();
            }
            std::io::Write::write_all(&mut log, format!("entry {x:x}\n").as_bytes()).unwrap();
            writes.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(300));
        }
        // SAFETY: the mapping made above, unmapped once; the buffer allocated above.
        unsafe {
            libc::msync(map, len, libc::MS_SYNC);
            libc::munmap(map, len);
            std::alloc::dealloc(aligned, layout);
        }
    })
}

/// This process's cgroup directory (cgroup v2, mounted alone or beside v1 as `unified`).
fn own_cgroup() -> std::path::PathBuf {
    let line = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = line.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|m| Path::new(m).join(rel.trim_start_matches('/')))
        .find(|d| d.join("cgroup.procs").exists())
        .expect("cgroup v2")
}

#[test]
fn tracked_dirty_pages_drive_the_rounds_and_the_copy_is_exact() {
    require_root();
    let mut cfg = Config::default();
    cfg.probe.mode = ProbeMode::Ebpf;
    let sampler = Sampler::new(cfg.sampler()).expect("BPF probe must load");
    let shared = probe::SharedSnapshot::default();
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let (tracker, rx) = DirtyTracker::channel();
    let sampler_thread =
        probe::spawn(sampler, shared, stop_sampler.clone(), None, Some(rx)).unwrap();

    // State on a disk filesystem (tmpfs pages are never written back, so never tracked).
    let base = Path::new("/var/tmp").join(unique("godwit-migrate"));
    let state = base.join("src/data");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("db"), noise(STATE, 1)).unwrap();
    std::fs::write(state.join("mapped"), noise(4 << 20, 2)).unwrap();
    std::fs::write(state.join("direct"), noise(1 << 20, 3)).unwrap();
    std::fs::write(state.join("log"), noise(3 << 20, 4)).unwrap();
    let recv = base.join("recv");
    std::fs::create_dir_all(&recv).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (rounds, writes) = rt.block_on(async {
        let ca = base.join("ca");
        init_ca(&ca, "test").unwrap();
        let (a, b) = (endpoint(&ca, &base, "a"), endpoint(&ca, &base, "b"));
        let services = Services::default();
        migrate::register(&services, recv.clone());
        let server = tokio::spawn({
            let b = b.clone();
            async move {
                while let Some(peer) = b.accept().await {
                    tokio::spawn(services.clone().serve(peer));
                }
            }
        });
        let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let w = writer(&state, stop.clone(), writes.clone());
        let scan = StateScan::new(&base.join("src"), &["data".into()]).unwrap();
        let mut tx = StateSender::begin(&peer, "t1", "kv", scan, Some(1))
            .await
            .unwrap();
        tx.track_with(tracker.clone());
        // The writer is a thread of this process: its cgroup is this test's.
        tx.watch_direct_io(own_cgroup());
        let mut rounds = Vec::new();
        for _ in 0..4 {
            rounds.push(tx.round().await.unwrap());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        // "Freeze": the writer stops; the final round and the check follow.
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        rounds.push(tx.round().await.unwrap());
        let verified = tx
            .verify()
            .await
            .expect("the copy equals the source after the final round");
        // The rounds alone made the copy exact: the check found nothing to repair (a page
        // the probe missed would show here, not as a difference).
        assert!(
            verified.repaired.is_empty(),
            "the check repaired {:?}: {:?}",
            verified.repaired,
            verified.repair
        );
        tx.commit().await.unwrap();
        server.abort();
        (rounds, writes.load(Ordering::Relaxed))
    });
    for r in &rounds {
        eprintln!("{r:?}");
    }
    for f in ["db", "mapped", "direct", "log"] {
        assert!(
            std::fs::read(state.join(f)).unwrap()
                == std::fs::read(recv.join("kv/data").join(f)).unwrap(),
            "{f} differs"
        );
    }
    assert!(writes > 50, "the writer ran: {writes} writes");
    // From round 1 the probe vouched for the page-cache files and reported their pages ...
    let later = &rounds[1..rounds.len() - 1];
    assert!(
        later
            .iter()
            .all(|r| r.tracked_files >= 2 && r.dirty_pages > 0),
        "{later:?}"
    );
    // ... so only the O_DIRECT file (found open with O_DIRECT in the writer's cgroup) was read
    // in full;
    // the growing log was vouched for up to its old end, and only its new part read.
    assert!(later.iter().all(|r| r.scanned_files <= 1), "{later:?}");
    // Each round moves what changed during the previous one: the first follows the long full
    // copy, the others are short.
    assert!(rounds[1].bytes < rounds[0].bytes / 2, "{rounds:?}");
    assert!(
        later[1..].iter().all(|r| r.bytes < rounds[0].bytes / 4),
        "{rounds:?}"
    );

    stop_sampler.store(true, Ordering::Relaxed);
    sampler_thread.join().unwrap();
    std::fs::remove_dir_all(&base).ok();
}

/// The example service's binary: `$GODWIT_TEST_KVSTORE` when set, else the release build when
/// there is one newer than every source file of the example (`cargo build -p godwit-kvstore
/// --release`), else the debug build. Opening a 256 MiB store checks every slot, which takes the debug build about 0.9 s
/// and the release build about 10 ms: with the debug build, the service's own start swamps
/// the cut-over's figures (the report shows it as `target_healthy_s - target_spawn_s`).
fn kvstore_bin(debug: std::path::PathBuf) -> std::path::PathBuf {
    fn newest(p: &Path) -> Option<std::time::SystemTime> {
        let m = std::fs::metadata(p).ok()?;
        if !m.is_dir() {
            return m.modified().ok();
        }
        std::fs::read_dir(p)
            .ok()?
            .flatten()
            .filter_map(|e| newest(&e.path()))
            .max()
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kvstore");
    let sources = [example.join("src"), example.join("Cargo.toml")]
        .iter()
        .filter_map(|p| newest(p))
        .max();
    let release = debug
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("release/kvstore"))
        .filter(|r| {
            let built = std::fs::metadata(r).and_then(|m| m.modified()).ok();
            built.is_some() && sources.is_some() && built >= sources
        });
    let chosen = std::env::var_os("GODWIT_TEST_KVSTORE")
        .map(std::path::PathBuf::from)
        .or(release)
        .unwrap_or(debug);
    eprintln!("kvstore: {}", chosen.display());
    chosen
}

/// Two namespaced agents with certificates of one CA, gossiping (the tests library's
/// [`MigrateRig`]), and the service `spec(vip)` running on n1 behind the VIP.
fn rig_with(spec: impl FnOnce(std::net::Ipv4Addr) -> serde_json::Value) -> MigrateRig {
    let mut rig = MigrateRig::new(RigOptions::default());
    rig.kvstore = kvstore_bin(rig.kvstore.clone());
    rig.add(1, &spec(rig.vip), Duration::from_secs(15));
    rig
}

/// The rig with the example `kvstore` (256 MiB of state) on n1.
fn rig_with_kv() -> MigrateRig {
    let mut rig = MigrateRig::new(RigOptions::default());
    rig.kvstore = kvstore_bin(rig.kvstore.clone());
    rig.add(
        1,
        &rig.kv_spec("kv", &KvOptions::default()),
        Duration::from_secs(15),
    );
    rig
}

/// The arguments of the tests' migrations: transitional, 200 ms target.
const TRANSITIONAL: &[&str] = &["--mode", "transitional", "--downtime-target", "200"];

/// `kv` moved from n1 to n2 (transitional, 200 ms target) by `godwit migrate` on a thread of
/// its own, so the test can strike while it runs.
fn migrate_kv_in_background(rig: &MigrateRig) -> std::thread::JoinHandle<Migration> {
    let cmd = rig.migrate_command(1, "kv", 2, TRANSITIONAL);
    std::thread::spawn(move || run_migrate(cmd, Duration::from_secs(120)))
}

/// The example service moves between two namespaced nodes while a checking client writes to
/// it through its VIP: nothing acknowledged is lost, and the report has the figures.
#[test]
fn kvstore_migrates_between_nodes_under_load_and_loses_nothing() {
    use serde_json::Value;

    require_root();
    let rig = rig_with_kv();
    let c = &rig.c;
    let status = |i: usize| rig.status(i);
    // The checking client writes through the VIP for the whole move.
    let client = rig.client(10);
    // An operator's certificate (`godwit cert issue --operator`), presented by `godwit migrate`.
    let ops = rig.pki.join("ops");
    let issued = c
        .cli(1)
        .args(["cert", "issue", "--operator", "alice", "--ca-dir"])
        .arg(rig.pki.join("ca"))
        .arg("--out")
        .arg(&ops)
        .output()
        .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    std::thread::sleep(Duration::from_secs(2));
    let mut cmd = rig.migrate_command(1, "kv", 2, TRANSITIONAL);
    cmd.args(["--operator", "alice", "--cert-dir"]).arg(&ops);
    let m = run_migrate(cmd, Duration::from_secs(600));
    let report = m.report.clone();

    assert!(m.committed(), "{}\n{}", m.progress, c.log(1));
    // The progress came as it ran, a line per update with the round, before the report.
    eprintln!("progress:\n{}", m.progress);
    let round_lines: Vec<&str> = m
        .progress
        .lines()
        .filter(|l| l.contains("] round") && l.contains("sent"))
        .collect();
    assert!(!round_lines.is_empty(), "no round in {}", m.progress);
    for phase in ["freeze", "verify", "commit", "hand-off"] {
        assert!(
            m.progress
                .lines()
                .any(|l| l.contains(&format!("] {phase}"))),
            "no {phase} in {}",
            m.progress
        );
    }
    let out = client.wait_with_output().unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    eprintln!("report: {report:#}");

    eprintln!("client: {check}");
    assert_eq!(report["result"], "committed");
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    assert!(
        check["acknowledged"].as_u64().unwrap_or(0) > 1000,
        "{check}"
    );
    assert!(out.status.success(), "{check}");
    let rounds = report["transfer"]["rounds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        rounds.len() >= 2,
        "live rounds then the frozen one: {report}"
    );
    assert!(
        report["transfer"]["verified_files"].as_u64() >= Some(1),
        "hash check at cut-over"
    );
    // The zstd level was chosen from measurements, and the model took the bandwidth after
    // compression (never below the raw path's: no compression when it would slow things).
    let z = &report["compression"];
    assert_eq!(
        z["trials"].as_array().map(Vec::len),
        Some(godwit::transport::CANDIDATES.len()),
        "{z}"
    );
    assert!(
        report["effective_bandwidth_bytes_per_second"].as_f64()
            >= report["bandwidth_bytes_per_second"].as_f64(),
        "{report}"
    );
    assert!(
        rounds[1..]
            .iter()
            .any(|r| r["tracked_files"].as_u64() >= Some(1)),
        "the probe's dirty pages drove the later rounds: {rounds:?}"
    );
    // It runs on n2 only, behind the VIP (the supervisor's own check follows the cut-over's).
    godwit_tests::wait_for(Duration::from_secs(10), || {
        let s = status(2);
        (s["health"] == "healthy" && s["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("kv not healthy on n2: {}", status(2)));
    assert!(
        status(1).is_null(),
        "n1 no longer has the service: {}",
        status(1)
    );
    let audit = std::fs::read_to_string(c.node(1).dir.join("data/migrations.log")).unwrap();
    assert!(audit.contains("\"result\":\"committed\""), "{audit}");
    // Under the name its certificate proves.
    assert!(
        audit.contains("\"requested_by\":\"operator alice\""),
        "{audit}"
    );
    eprintln!(
        "downtime {:?} s (agent), frozen {:?} s, longest client gap {} ms, rounds {}\ncut-over: {}",
        report["downtime_seconds"],
        report["transfer"]["frozen_seconds"],
        check["longest_gap_ms"],
        rounds.len(),
        report["transfer"]["cutover"]
    );
    eprintln!(
        "compression: level {} expected {:.0} MB/s, path {:.0} MB/s",
        z["level"],
        z["expected_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        z["path_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6
    );
    for line in c.log(2).lines().filter(|l| {
        [
            "service added",
            "started",
            "state opened",
            "listening",
            "VIP",
            "health changed",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("n2: {line}");
    }
    // Every phase of the cut-over is accounted for, and they add up to the agent's downtime
    // (telling the target on the state channel runs at the same time as the hand-off).
    let cut = &report["transfer"]["cutover"];
    let phases: f64 = [
        "freeze_s",
        "final_round_s",
        "verify_s",
        "commit_s",
        "decide_s",
        "handoff_s",
        "kill_s",
    ]
    .iter()
    .map(|k| cut[*k].as_f64().unwrap_or_else(|| panic!("no {k}: {cut}")))
    .sum();
    let downtime = report["downtime_seconds"].as_f64().unwrap();
    assert!(
        phases <= downtime + 1e-3 && phases >= downtime * 0.9,
        "phases add to {phases} s of {downtime} s: {cut}"
    );
    assert!(
        cut["target_healthy_s"].as_f64() <= cut["handoff_s"].as_f64(),
        "{cut}"
    );

    // The move's downtime is now n2's transitional switch latency: kept on its disk, in its
    // own policy's view, and announced to the mesh, where n1 reads it for n2's class label.
    assert_eq!(report["transfer"]["mode"], "transitional", "{report}");
    let want_ms = downtime * 1e3;
    let kept: Value = serde_json::from_slice(
        &std::fs::read(c.node(2).dir.join("data/switch-latencies.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kept["transitional_s"].as_array().map(Vec::len),
        Some(1),
        "{kept}"
    );
    assert!(
        (kept["transitional_s"][0].as_f64().unwrap() - downtime).abs() < 1e-6,
        "{kept} against {downtime}"
    );
    let announced = godwit_tests::wait_for(Duration::from_secs(15), || {
        let nodes = c.json(1, "/v1/nodes");
        let n2 = nodes["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"]["node_id"] == "n2")?
            .clone();
        let ms = n2["summary"]["switch_latencies_ms"].as_array()?.clone();
        (!ms.is_empty()).then_some(ms)
    })
    .unwrap_or_else(|| {
        panic!(
            "n2 never announced a switch latency: {}",
            c.json(1, "/v1/nodes")
        )
    });
    assert_eq!(announced.len(), 1, "{announced:?}");
    let got_ms = announced[0].as_f64().unwrap();
    assert!(
        (got_ms - want_ms).abs() <= 1.0,
        "n2 announced {got_ms} ms, the move measured {want_ms:.1} ms"
    );
    assert!(
        c.json(1, "/v1/nodes")["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["id"]["node_id"] == "n1")
            .all(|m| m["summary"]["switch_latencies_ms"] == serde_json::json!([])),
        "the source took no switch"
    );
    let local = godwit_tests::wait_for(Duration::from_secs(10), || {
        let d = c.json(2, "/v1/decisions");
        let xs = d["view"]["nodes"][0]["switch_latencies_s"]
            .as_array()?
            .clone();
        (!xs.is_empty()).then_some(xs)
    })
    .expect("n2's own view holds its switch latency");
    assert!((local[0].as_f64().unwrap() - downtime).abs() < 1e-6);
    eprintln!("switch latency: measured {want_ms:.1} ms, announced {got_ms} ms");
    // The operator sees it where `godwit explain` shows the class label's input.
    let out = c
        .cli(2)
        .args(["explain", "--socket"])
        .arg(c.socket(2))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "n2: p90 {want_ms:.0} ms of 1 transitional switches"
        )),
        "{text}"
    );
}

/// The target dies in the middle of the transfer: the migration fails, the service keeps
/// running on the source behind its VIP, and the client loses nothing.
#[test]
fn a_target_killed_mid_transfer_leaves_the_service_on_the_source() {
    require_root();
    let mut rig = rig_with_kv();
    let client = rig.client(6);
    std::thread::sleep(Duration::from_secs(1));
    let mover = migrate_kv_in_background(&rig);
    // Kill n2's agent once its staging copy exists (round 0 under way).
    let staging_parent = rig.pki.join("state/n2");
    let started = std::time::Instant::now();
    loop {
        let staging = std::fs::read_dir(&staging_parent)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("kv.staging-"));
        if staging {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no transfer started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.c.kill(2);
    let m = mover.join().unwrap();
    let report = m.report.clone();
    assert_eq!(m.exit, Some(1), "{m:?}");
    assert!(
        report["result"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed"),
        "{report}"
    );
    // Still on n1, healthy, behind the VIP; never frozen for long.
    let s = rig.status(1);
    assert_eq!(
        (s["state"].as_str(), s["health"].as_str()),
        (Some("running"), Some("healthy")),
        "{s}"
    );
    assert_eq!(s["vip_active"], true);
    let out = client.wait_with_output().unwrap();
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert!(out.status.success(), "{check}");
    let audit = std::fs::read_to_string(rig.c.node(1).dir.join("data/migrations.log")).unwrap();
    assert!(audit.contains("\"result\":\"failed"), "{audit}");
    eprintln!("failed as expected: {}; client {check}", report["result"]);
}

/// Migrated state belongs to the service's user on the target, as the target resolves the
/// spec's user (never a uid from the peer), and loses setuid, setgid and world-write bits it
/// had on the source; the service runs there as that user, without capabilities.
#[test]
fn migrated_state_belongs_to_the_services_user_and_loses_its_setuid_bits() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    require_root();
    let mut rig = MigrateRig::new(RigOptions::default());
    rig.kvstore = kvstore_bin(rig.kvstore.clone());
    let kv = KvOptions {
        size: 8 << 20,
        ..KvOptions::default()
    };
    rig.add(1, &rig.kv_spec("kv", &kv), Duration::from_secs(15));
    let user = godwit::service::Identity::resolve("godwit-svc", None)
        .unwrap_or_else(|e| panic!("no service user: {e}\n{}", rig.c.log(1)));
    let owner = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let src = rig.state_dir(1, "kv");
    // The service wrote its state as its user on the source.
    assert_eq!(owner(&src.join("data/kv.state")), (user.uid, user.gid));
    // A program left in the state with setuid and setgid bits, and a world-writable file.
    let tool = src.join("data/tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&tool, Some(user.uid), Some(user.gid)).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let open = src.join("data/open");
    std::fs::write(&open, b"x").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(mode(&tool), 0o6755);

    let m = rig.migrate("kv", 2, TRANSITIONAL);
    assert!(m.committed(), "{m:?}\n{}", rig.c.log(2));
    rig.wait_serving(2, "kv", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("kv not up on n2: {}", rig.status(2)));
    let dst = rig.state_dir(2, "kv");
    for rel in ["", "data", "data/kv.state", "data/tool", "data/open"] {
        assert_eq!(owner(&dst.join(rel)), (user.uid, user.gid), "{rel:?} on n2");
    }
    assert_eq!(
        mode(&dst.join("data/tool")),
        0o755,
        "setuid and setgid cleared"
    );
    assert_eq!(mode(&dst.join("data/open")), 0o664, "world write cleared");
    let pid = rig.status(2)["pid"].as_u64().expect("a pid on n2");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("Uid"),
        [user.uid.to_string().as_str(); 4].join("\t"),
        "{status}"
    );
    assert_eq!(field("CapEff"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs"), "1", "{status}");
}

/// Only a caller with a certificate of the cluster CA starts a migration: the HTTP API's
/// `migrate` is refused (403) and so is a fencing token nobody can check, both audited and
/// counted as refused; a caller with a certificate of another CA never gets past the
/// handshake. The service stays where it was throughout.
#[test]
fn only_a_caller_with_a_certificate_of_the_cluster_ca_starts_a_migration() {
    use godwit::transport::{init_ca, issue_node};
    use godwit_tests::http_request;

    require_root();
    let mut rig = MigrateRig::new(RigOptions::default());
    rig.kvstore = kvstore_bin(rig.kvstore.clone());
    let kv = KvOptions {
        size: 4 << 20,
        ..KvOptions::default()
    };
    rig.add(1, &rig.kv_spec("kv", &kv), Duration::from_secs(15));
    let c = &rig.c;
    let audit =
        || std::fs::read_to_string(c.node(1).dir.join("data/migrations.log")).unwrap_or_default();
    let refused_metric = || {
        let (_, body) = c.get(1, "/metrics").unwrap();
        body.lines()
            .find(|l| l.starts_with("godwit_migrations_total{result=\"refused\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };

    // The HTTP API presents no certificate, even to root on its socket.
    let (code, body) = c
        .act(
            1,
            "POST",
            "/v1/services/kv/migrate?to=n2&mode=transitional",
            None,
        )
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("godwit migrate"), "{body}");
    let log = audit();
    assert!(
        log.contains("\"result\":\"refused: ")
            && log.contains("\"requested_by\":\"api uid=0 gid=0 pid="),
        "{log}"
    );
    assert_eq!(refused_metric(), Some(1.0));
    // Over TCP it does not reach the service routes at all.
    let (code, body) = http_request(
        c.api(1),
        "POST",
        "/v1/services/kv/migrate?to=n2&mode=transitional",
        None,
    )
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("reads only"), "{body}");
    assert_eq!(refused_metric(), Some(1.0));

    // A node of the cluster with a fencing token: no coordinator can check it.
    let m = rig.migrate_from(
        1,
        "kv",
        2,
        &["--fencing-token", "7"],
        Duration::from_secs(30),
    );
    assert_eq!(m.exit, Some(77), "{m:?}");
    assert!(m.progress.contains("no coordinator"), "{m:?}");
    let log = audit();
    assert!(log.contains("\"requested_by\":\"node n1\""), "{log}");
    assert_eq!(refused_metric(), Some(2.0));

    // A certificate of another CA, presented as n1's: the TLS handshake fails, nothing runs.
    let other = rig.pki.join("other-ca");
    init_ca(&other, "other").unwrap();
    let foreign = rig.pki.join("foreign");
    issue_node(&other, "n1", &foreign).unwrap();
    let refused_in = || c.json(1, "/v1/transport")["stats"]["refused_in"].as_u64();
    let before = refused_in();
    let mut cmd = rig.migrate_command(1, "kv", 2, TRANSITIONAL);
    cmd.arg("--cert-dir").arg(&foreign);
    let m = run_migrate(cmd, Duration::from_secs(30));
    assert_eq!(m.exit, Some(69), "{m:?}");
    assert_eq!(m.report, serde_json::Value::Null, "{m:?}");
    godwit_tests::wait_for(Duration::from_secs(5), || {
        (refused_in() > before).then_some(())
    })
    .unwrap_or_else(|| panic!("n1 did not count the refused peer: {:?}", refused_in()));
    // Nothing moved: no migration ran, kv is on n1.
    let log = audit();
    assert_eq!(log.lines().count(), 2, "only the refusals: {log}");
    assert_eq!(c.json(1, "/v1/migrations")["refused"], 2);
    let s = rig.status(1);
    assert_eq!(
        (s["name"].as_str(), s["health"].as_str()),
        (Some("kv"), Some("healthy")),
        "{s}"
    );
    assert!(rig.status(2).is_null(), "{}", rig.status(2));
}

/// The source agent is killed (SIGKILL) right after the target learnt the decision (its
/// journal says `owned`), before any hand-off (the source's hand-off is held back by a test
/// hook; normally it goes with the decision): the target starts the service on its own, and
/// the source agent, restarted, kills its leftover frozen instance, does not start the
/// service, hands it off again and removes its copy. The client loses nothing acknowledged.
#[test]
fn a_source_killed_after_the_commit_leaves_the_service_on_the_target_only() {
    use godwit_tests::wait_for;

    require_root();
    // The agents inherit it; tests run one at a time.
    std::env::set_var(godwit::migrate::agent::HANDOFF_DELAY_ENV, "20000");
    let mut rig = rig_with_kv();
    std::env::remove_var(godwit::migrate::agent::HANDOFF_DELAY_ENV);
    let client = rig.client(20);
    std::thread::sleep(Duration::from_secs(1));
    let mover = migrate_kv_in_background(&rig);
    let target_journal = rig.c.node(2).dir.join("data/migrations");
    let owned = || {
        std::fs::read_dir(&target_journal)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("target-"))
            .any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("\"phase\": \"owned\""))
            })
    };
    let started = std::time::Instant::now();
    while !owned() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the target never learnt the decision\n{}",
            rig.c.log(2)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    rig.c.kill(1);
    let killed_at = std::time::Instant::now();
    let _ = mover.join();
    let source_journal = rig.c.node(1).dir.join("data/migrations");
    let source_entries = || {
        std::fs::read_dir(&source_journal)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("source-"))
            .count()
    };
    assert_eq!(
        source_entries(),
        1,
        "the source died with the migration decided, not done"
    );
    // The target starts it without the source.
    wait_for(Duration::from_secs(30), || {
        let s = rig.status(2);
        (s["health"] == "healthy" && s["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("kv not adopted by n2: {}\n{}", rig.status(2), rig.c.log(2)));
    let adopted_after = killed_at.elapsed();
    // The source comes back: it resolves the migration and does not start the service.
    rig.c.restart(1);
    wait_for(Duration::from_secs(30), || {
        (source_entries() == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the source never resolved the migration\n{}", rig.c.log(1)));
    assert!(
        rig.status(1).is_null(),
        "n1 runs kv again: {}",
        rig.status(1)
    );
    assert!(
        !rig.pki.join("state/n1/kv").exists(),
        "the source's copy of the state is removed"
    );
    let s = rig.status(2);
    assert_eq!(
        (s["health"].as_str(), s["vip_active"].as_bool()),
        (Some("healthy"), Some(true)),
        "{s}"
    );
    let audit = std::fs::read_to_string(rig.c.node(1).dir.join("data/migrations.log")).unwrap();
    assert!(audit.contains("the service runs on the target"), "{audit}");
    let out = client.wait_with_output().unwrap();
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    eprintln!(
        "adopted {:.1} s after the kill; client {check}",
        adopted_after.as_secs_f64()
    );
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
}

/// Debian's `redis-server` port in the redis migration test.
const REDIS_PORT: u16 = 6390;

/// A RESP request.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One RESP reply: a simple string (`+OK`), an error (`-...`), an integer (`:n`) or a bulk
/// string (`$n` then the bytes; `None` for the null bulk string), or an array of replies.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A connection to redis with one request in flight.
struct RedisConn {
    reader: std::io::BufReader<std::net::TcpStream>,
    writer: std::net::TcpStream,
}

impl RedisConn {
    fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<RedisConn> {
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(RedisConn {
            reader: std::io::BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        use std::io::Write;
        self.writer.write_all(&resp(args))?;
        self.reply()
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0u8; len as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let n: usize = rest.parse().map_err(|_| bad())?;
                Reply::Array((0..n).map(|_| self.reply()).collect::<Result<_, _>>()?)
            }
            _ => return Err(bad()),
        })
    }
}

/// What the writing client saw.
#[derive(Debug, Default)]
struct WriterReport {
    /// Writes acknowledged with `+OK`: numbers 1 to `acknowledged`.
    acknowledged: u64,
    /// Failed attempts (connects, sends, reads, timeouts) and error replies.
    errors: u64,
    /// Of which `-LOADING` replies: a redis reached before it finished reading its data.
    loading: u64,
    last_error: Option<String>,
    /// The longest time without an acknowledgement, the time since the last one included.
    longest_gap: Duration,
}

fn redis_key(n: u64) -> String {
    format!("mig:{n:08}")
}

fn redis_value(n: u64) -> String {
    format!("v{n}-{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Numbered SETs to `addr`, one in flight, about `rate` a second, until `stop`: each is sent
/// again (same key, same value: idempotent) on a new connection until redis answers `+OK`.
fn redis_writer(
    addr: SocketAddr,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<WriterReport> {
    std::thread::spawn(move || {
        let mut report = WriterReport::default();
        let mut conn: Option<RedisConn> = None;
        let mut last_ack = std::time::Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut next = std::time::Instant::now();
        'writes: for n in 1.. {
            let (key, value) = (redis_key(n), redis_value(n));
            loop {
                if stop.load(Ordering::Relaxed) {
                    break 'writes;
                }
                let attempt = match conn.as_mut() {
                    Some(c) => c.call(&[b"SET", key.as_bytes(), value.as_bytes()]),
                    None => match RedisConn::connect(addr, Duration::from_secs(2)) {
                        Ok(c) => conn
                            .insert(c)
                            .call(&[b"SET", key.as_bytes(), value.as_bytes()]),
                        Err(e) => Err(e),
                    },
                };
                match attempt {
                    Ok(Reply::Simple(ok)) if ok == "OK" => {
                        let now = std::time::Instant::now();
                        report.longest_gap = report.longest_gap.max(now - last_ack);
                        last_ack = now;
                        report.acknowledged = n;
                        break;
                    }
                    // Not acknowledged (LOADING while the target reads its AOF, say): again.
                    Ok(other) => {
                        if matches!(&other, Reply::Error(e) if e.starts_with("LOADING")) {
                            report.loading += 1;
                        }
                        report.errors += 1;
                        report.last_error = Some(format!("{other:?}"));
                    }
                    Err(e) => {
                        conn = None;
                        report.errors += 1;
                        report.last_error = Some(e.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            next += period;
            if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        report.longest_gap = report.longest_gap.max(last_ack.elapsed());
        report
    })
}

/// Debian's redis-server, with its append-only file as its state, moves between two
/// namespaced nodes while a client writes numbered keys through the VIP: every write redis
/// acknowledged is on the target afterwards. `appendfsync always`: redis writes and fsyncs the
/// AOF before it replies, so an acknowledged write is durable on the source (with `everysec`
/// a reply can go out while the write waits in redis's memory, which no copy of the files
/// carries, and "acknowledged" would not mean "in the state").
#[test]
fn redis_migrates_between_nodes_under_writes_and_loses_no_acknowledged_write() {
    use godwit_tests::wait_for;
    use serde_json::Value;

    require_root();
    let rig = rig_with(|vip| {
        serde_json::json!({
            "name": "redis",
            "command": ["/usr/bin/redis-server", "--port", REDIS_PORT.to_string(),
                        "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "{state}",
                        "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            "state": ["appendonlydir"],
            // Healthy once redis answers PING: a redis still loading its append-only file answers
            // -LOADING, and the cut-over waits for it rather than sending clients there.
            "health": {"tcp": format!("127.0.0.1:{REDIS_PORT}"), "send": "PING\r\n", "expect": "+PONG", "interval_ms": 100},
            "vip": vip.to_string(),
        })
    });
    let c = &rig.c;
    let addr = SocketAddr::from((rig.vip, REDIS_PORT));
    // Some state before the move: 20,000 keys of 1 KiB in one pipeline-free burst.
    {
        let mut conn = RedisConn::connect(addr, Duration::from_secs(5)).unwrap();
        let filler = vec![b'x'; 1024];
        for i in 0..20_000u32 {
            let key = format!("fill:{i}");
            assert_eq!(
                conn.call(&[b"SET", key.as_bytes(), &filler]).unwrap(),
                Reply::Simple("OK".into())
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = redis_writer(addr, 500.0, stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let m = rig.migrate("redis", 2, TRANSITIONAL);
    let report: Value = m.report.clone();
    // Writes go on through the cut-over, then a while on the target.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let w = writer.join().unwrap();
    eprintln!("report: {report:#}");
    eprintln!("writer: {w:?}");
    assert!(m.committed(), "{m:?}\n{}", c.log(1));
    // On n2 only, and the VIP leads there.
    wait_for(Duration::from_secs(10), || {
        let s = rig.status(2);
        (s["health"] == "healthy" && s["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("redis not healthy on n2: {}", rig.status(2)));
    assert!(
        rig.status(1).is_null(),
        "n1 still has redis: {}",
        rig.status(1)
    );
    let mut conn = RedisConn::connect(addr, Duration::from_secs(5)).unwrap();
    let n2_dir = rig.pki.join("state/n2").display().to_string().into_bytes();
    let dir = conn.call(&[b"CONFIG", b"GET", b"dir"]).unwrap();
    assert!(
        matches!(&dir, Reply::Array(a) if matches!(a.get(1), Some(Reply::Bulk(Some(d))) if d.starts_with(&n2_dir))),
        "the VIP leads to n2's redis: {dir:?}"
    );
    // Every acknowledged write is there, with its value.
    assert!(w.acknowledged > 1000, "{w:?}");
    let mut missing = Vec::new();
    for n in 1..=w.acknowledged {
        let got = conn.call(&[b"GET", redis_key(n).as_bytes()]).unwrap();
        if got != Reply::Bulk(Some(redis_value(n).into_bytes())) {
            missing.push((n, got));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes missing or wrong on the target, first {:?}",
        missing.len(),
        w.acknowledged,
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        conn.call(&[b"EXISTS", b"fill:0", b"fill:19999"]).unwrap(),
        Reply::Integer(2),
        "the state from before the move"
    );
    let rounds = report["transfer"]["rounds"].as_array().map_or(0, Vec::len);
    assert!(rounds >= 2, "live rounds then the frozen one: {report}");
    // The cut-over hands clients over only once redis answers PING, not while it loads.
    assert_eq!(w.loading, 0, "clients reached a loading redis: {w:?}");
    // A generous bound: the cut-over is milliseconds to a few hundred of them.
    assert!(w.longest_gap < Duration::from_secs(10), "{w:?}");
    eprintln!(
        "redis: {} acknowledged writes, none lost; longest client gap {} ms; agent downtime {:?} s, frozen {:?} s, rounds {rounds}\ncut-over: {}",
        w.acknowledged,
        w.longest_gap.as_millis(),
        report["downtime_seconds"],
        report["transfer"]["frozen_seconds"],
        report["transfer"]["cutover"]
    );
}

/// Two `godwit migrate` of one service at once: exactly one proceeds (the other is refused
/// and audited, not queued), the service runs in one place, and nothing acknowledged is
/// lost. Then a move back onto a node that defines a service of that name is refused unless
/// the operator says `--replace`.
#[test]
fn two_concurrent_migrations_of_one_service_move_it_once() {
    require_root();
    let rig = rig_with_kv();
    let client = rig.client(15);
    std::thread::sleep(Duration::from_millis(500));
    let (a, b) = (
        rig.migrate_command(1, "kv", 2, TRANSITIONAL),
        rig.migrate_command(1, "kv", 2, TRANSITIONAL),
    );
    let first = std::thread::spawn(move || run_migrate(a, Duration::from_secs(120)));
    let second = std::thread::spawn(move || run_migrate(b, Duration::from_secs(120)));
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    let committed = [&first, &second].iter().filter(|m| m.committed()).count();
    assert_eq!(
        committed,
        1,
        "exactly one moves it:\n{}\n{}\n{}",
        first.progress,
        second.progress,
        rig.c.log(1)
    );
    let loser = if first.committed() { &second } else { &first };
    let said = format!("{}{}", loser.progress, loser.report);
    assert!(
        said.contains("already under way"),
        "the other is refused: {said}"
    );
    // One place: n2 serves, n1 has nothing.
    godwit_tests::wait_for(Duration::from_secs(10), || {
        let s = rig.service(2, "kv");
        (s["health"] == "healthy" && s["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("kv not serving on n2: {}", rig.service(2, "kv")));
    assert!(rig.service(1, "kv").is_null(), "{}", rig.service(1, "kv"));
    let out = client.wait_with_output().unwrap();
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(check["missing_acknowledged"], 0, "{check}");
    assert_eq!(check["corrupt"], 0, "{check}");
    let audit = std::fs::read_to_string(rig.c.node(1).dir.join("data/migrations.log")).unwrap();
    assert!(audit.contains("refused: a migration of kv"), "{audit}");

    // n1 defines a service named kv again: a move of n2's kv onto it is refused there (its
    // definition and state are not swapped away), and nothing changes on either node.
    let mut other = rig.kv_spec("kv", &KvOptions::default());
    let o = rig.vip.octets();
    other["vip"] = std::net::Ipv4Addr::new(o[0], o[1], o[2], 101)
        .to_string()
        .into();
    rig.add(1, &other, Duration::from_secs(15));
    let back = run_migrate(
        rig.migrate_command(2, "kv", 1, TRANSITIONAL),
        Duration::from_secs(120),
    );
    let said = format!("{}{}", back.progress, back.report);
    assert!(!back.committed(), "{said}");
    assert!(
        said.contains("is defined here"),
        "refused by the target: {said}"
    );
    assert_eq!(rig.service(2, "kv")["health"], "healthy");
    assert_eq!(rig.service(1, "kv")["health"], "healthy");
}

/// A service slow to stop (its SIGTERM handler takes half a second, as a redis writing its
/// dump does): once the runtime has measured its stops and starts, a move's prediction counts
/// them. A forced stop-and-copy predicts the stop, close to the downtime it then measures,
/// and says plainly (report, exit status 3, audit line) that it missed its target; `auto`
/// freezes such a service rather than stopping it.
#[test]
fn a_service_slow_to_stop_has_its_stop_in_the_prediction() {
    require_root();
    const SCRIPT: &str = "trap 'sleep 0.5; exit 0' TERM; mkdir -p {state}/data; \
        [ -f {state}/data/blob ] || head -c 4194304 /dev/urandom > {state}/data/blob; \
        touch {state}/up; while :; do sleep 0.05; done";
    let rig = rig_with(|vip| {
        serde_json::json!({
            "name": "slow",
            "command": ["/bin/sh", "-c", SCRIPT],
            "state": ["data"],
            "vip": vip.to_string(),
        })
    });
    // One stop and one start here, so the runtime has measured them.
    // Up once its trap is set (it has no health check: the runtime says healthy at once).
    let up = |i: usize| {
        let f = rig.state_dir(i, "slow").join("up");
        godwit_tests::wait_for(Duration::from_secs(15), || f.exists().then_some(()))
            .expect("the script is up");
        let _ = std::fs::remove_file(&f);
    };
    let measure = |i: usize| {
        up(i);
        for action in ["stop", "start"] {
            let (code, body) = rig.action(i, "slow", action);
            assert_eq!(code, 200, "{action}: {body}");
        }
        rig.wait_serving(i, "slow", Duration::from_secs(15))
            .expect("slow serving again");
        up(i);
    };
    measure(1);
    let timings: serde_json::Value = serde_json::from_slice(
        &std::fs::read(rig.state_root(1).join("slow.timings.json")).expect("timings kept"),
    )
    .unwrap();
    eprintln!("n1 timings: {timings}");
    let stopped = timings["stops_s"][0].as_f64().expect("a stop measured");
    assert!((0.45..3.0).contains(&stopped), "{timings}");

    let m = rig.migrate(
        "slow",
        2,
        &["--mode", "intermittent", "--downtime-target", "200"],
    );
    let r = &m.report;
    eprintln!("report: {r:#}");
    assert!(m.committed(), "{m:?}");
    let stop = r["stop_estimate_s"].as_f64().expect("the stop is known");
    assert!(r["start_estimate_s"].is_number(), "{r}");
    let predicted = r["predicted_downtime_s"].as_f64().expect("a prediction");
    let actual = r["downtime_seconds"].as_f64().expect("a downtime");
    eprintln!("intermittent: stop {stop:.3} s, predicted {predicted:.3} s, measured {actual:.3} s");
    assert!(predicted >= stop, "the stop is in the prediction: {r}");
    // A generous band: the point is that half a second of stop is neither missing nor made up.
    assert!(
        predicted > actual * 0.5 && predicted < actual * 2.0,
        "predicted {predicted} s against {actual} s"
    );
    // Half a second of stop misses a 200 ms target, and every channel says so.
    assert_eq!(m.exit, Some(3), "{m:?}");
    let missed = r["downtime_target_missed"].as_str().unwrap_or_default();
    assert!(
        missed.starts_with("missed its downtime target: ") && missed.ends_with(" against 200 ms"),
        "{r}"
    );
    let audit = std::fs::read_to_string(rig.c.node(1).dir.join("data/migrations.log")).unwrap();
    assert!(audit.contains(missed), "{audit}");

    // The hand-off carried n1's figures: n2 knows the stop before it ever stopped it.
    let carried = rig.state_root(2).join("slow.timings.json");
    godwit_tests::wait_for(Duration::from_secs(10), || {
        let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&carried).ok()?).ok()?;
        (!t["stops_s"].as_array()?.is_empty()).then_some(())
    })
    .expect("n1's stop carried to n2");
    // Back, with auto: with n2's own stop measured too, the model will not stop it.
    measure(2);
    let back = rig.migrate_from(
        2,
        "slow",
        1,
        &["--downtime-target", "200"],
        Duration::from_secs(120),
    );
    let r = &back.report;
    eprintln!("back: {r:#}");
    assert!(back.committed(), "{back:?}");
    assert!(r["stop_estimate_s"].as_f64() >= Some(0.45), "{r}");
    assert_eq!(r["transfer"]["mode"], "transitional", "{r}");
    let actual = r["downtime_seconds"].as_f64().unwrap();
    eprintln!(
        "auto: predicted {:?} s, measured {actual:.3} s",
        r["predicted_downtime_s"]
    );
    assert!(actual < stop, "frozen, not stopped: {r}");
}

/// One attempt of a client that opens a new connection per request.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// When it ended.
    end: std::time::Instant,
    /// How long it took.
    took: Duration,
    /// Answered as expected.
    ok: bool,
    /// Refused at once (a TCP reset to the SYN).
    refused: bool,
}

/// A client as `redis-cli PING` is: every 10 ms a new connection (3 s to connect), `ping`
/// sent, one reply read (3 s); until `stop`.
fn new_connection_prober(
    addr: SocketAddr,
    ping: &'static [u8],
    expect: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Attempt>> {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut attempts = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let began = std::time::Instant::now();
            let (ok, refused) =
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                        let mut buf = [0u8; 64];
                        let answered = s.write_all(ping).is_ok()
                            && s.read(&mut buf)
                                .is_ok_and(|n| buf[..n].starts_with(expect.as_bytes()));
                        (answered, false)
                    }
                    Err(e) => (false, e.kind() == std::io::ErrorKind::ConnectionRefused),
                };
            attempts.push(Attempt {
                end: std::time::Instant::now(),
                took: began.elapsed(),
                ok,
                refused,
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        attempts
    })
}

/// What a client that opens new connections saw: the longest time between two answered
/// attempts, the longest attempt (answered or not), and how many were refused or failed
/// otherwise.
fn new_connection_gap(attempts: &[Attempt]) -> (Duration, Duration, usize, usize) {
    let answered: Vec<_> = attempts.iter().filter(|a| a.ok).map(|a| a.end).collect();
    let gap = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let longest = attempts.iter().map(|a| a.took).max().unwrap_or_default();
    let failed = attempts.iter().filter(|a| !a.ok);
    let refused = failed.clone().filter(|a| a.refused).count();
    (gap, longest, refused, failed.count() - refused)
}

/// A stop-and-copy of redis while clients open a new connection per request (as
/// `redis-cli` does): between the stop and the target holding the VIP, a new connection is
/// refused at once (the source keeps the address with its port closed) rather than lost
/// (a SYN to an address nobody holds waits for TCP's retry, a second later), so the gap such
/// a client sees is the move's downtime, not that plus a second. The same with stock
/// `redis-cli` in a shell loop. Then back, frozen (transitional), for the figures.
#[test]
fn new_connections_during_a_stop_and_copy_are_refused_at_once_not_lost() {
    require_root();
    let rig = rig_with(|vip| {
        serde_json::json!({
            "name": "redis",
            "command": ["/usr/bin/redis-server", "--port", REDIS_PORT.to_string(),
                        "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "{state}",
                        "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            "state": ["appendonlydir"],
            "health": {"tcp": format!("127.0.0.1:{REDIS_PORT}"), "send": "PING\r\n", "expect": "+PONG", "interval_ms": 100},
            "vip": vip.to_string(),
        })
    });
    let addr = SocketAddr::from((rig.vip, REDIS_PORT));
    {
        let mut conn = RedisConn::connect(addr, Duration::from_secs(5)).unwrap();
        let filler = vec![b'x'; 1024];
        for i in 0..20_000u32 {
            let key = format!("fill:{i}");
            conn.call(&[b"SET", key.as_bytes(), &filler]).unwrap();
        }
    }
    // Stopped and copied: refused at once until the target holds the address.
    let (m, seen) = move_under_new_connections(&rig, 1, 2, "intermittent");
    assert!(m.committed(), "{m:?}");
    assert_eq!(m.report["transfer"]["mode"], "intermittent");
    // No attempt waited for TCP's one-second SYN retry: a new connection was answered, or
    // refused at once and tried again.
    assert!(
        seen.longest < 0.9 && seen.cli_longest < 0.9,
        "a SYN was lost, not refused: {seen:?}"
    );
    assert!(
        seen.gap < seen.downtime + 0.5 && seen.cli_gap < seen.downtime + 0.5,
        "{seen:?}"
    );
    // Frozen: the source's kernel still takes the connection, which waits for the frozen
    // instance and is reset when it is killed after the hand-off; no SYN is lost either.
    let (m, seen) = move_under_new_connections(&rig, 2, 1, "transitional");
    assert!(m.committed(), "{m:?}");
    assert!(
        seen.longest < seen.downtime + 0.5 && seen.cli_longest < seen.downtime + 0.5,
        "{seen:?}"
    );
    assert!(
        seen.gap < seen.downtime + 0.5 && seen.cli_gap < seen.downtime + 0.5,
        "{seen:?}"
    );
}

/// What clients opening a new connection per request saw during a move, seconds.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct NewConnections {
    /// The agent's downtime.
    downtime: f64,
    /// The prober: the longest time between two answers, the longest attempt, refused ones.
    gap: f64,
    longest: f64,
    refused: usize,
    attempts: usize,
    /// Stock `redis-cli PING` in a shell loop: likewise.
    cli_gap: f64,
    cli_longest: f64,
    cli_failed: usize,
    cli_calls: usize,
}

/// Moves `redis` from node `from` to `to` in `mode` (200 ms target) while a prober and
/// stock `redis-cli` in a shell loop open a new connection per `PING` to its VIP.
fn move_under_new_connections(
    rig: &MigrateRig,
    from: usize,
    to: usize,
    mode: &str,
) -> (Migration, NewConnections) {
    use std::process::{Command, Stdio};

    let addr = SocketAddr::from((rig.vip, REDIS_PORT));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = new_connection_prober(addr, b"PING\r\n", "+PONG", stop.clone());
    // Stock redis-cli, a new connection each: "<start> <end> <answer>" per line.
    let script = format!(
        "while :; do s=$(date +%s.%N); r=$(timeout 5 redis-cli -h {} -p {REDIS_PORT} PING 2>&1 | tr -d '\\n'); \
         echo \"$s $(date +%s.%N) $r\"; sleep 0.01; done",
        rig.vip
    );
    let mut cli = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let m = rig.migrate_from(
        from,
        "redis",
        to,
        &["--mode", mode, "--downtime-target", "200"],
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let attempts = prober.join().unwrap();
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(cli.id() as i32, libc::SIGKILL) };
    let mut out = String::new();
    std::io::Read::read_to_string(cli.stdout.as_mut().unwrap(), &mut out).unwrap_or_default();
    let _ = cli.wait();
    let (gap, longest, refused, _) = new_connection_gap(&attempts);
    // redis-cli's: the longest time between two PONGs, the longest call.
    let lines: Vec<(f64, f64, bool)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            let s = w.next()?.parse().ok()?;
            let e = w.next()?.parse().ok()?;
            Some((s, e, w.next() == Some("PONG")))
        })
        .collect();
    let pongs: Vec<f64> = lines.iter().filter(|l| l.2).map(|l| l.1).collect();
    let seen = NewConnections {
        downtime: m.report["downtime_seconds"].as_f64().unwrap_or(f64::NAN),
        gap: gap.as_secs_f64(),
        longest: longest.as_secs_f64(),
        refused,
        attempts: attempts.len(),
        cli_gap: pongs.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max),
        cli_longest: lines.iter().map(|l| l.1 - l.0).fold(0.0, f64::max),
        cli_failed: lines.iter().filter(|l| !l.2).count(),
        cli_calls: lines.len(),
    };
    eprintln!("new connections, {mode} n{from} -> n{to}: {seen:?}");
    (m, seen)
}
