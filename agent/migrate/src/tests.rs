//! State transfers between endpoints on loopback, with a writer changing the state meanwhile.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use godwit_core::predict::testdata::noise;
use godwit_transport::testing::{node, pki, serve};
use godwit_transport::{Peer, Services};

struct Setup {
    _pki: godwit_transport::testing::Pki,
    dir: tempfile::TempDir,
    peer: Peer,
    _server: tokio::task::JoinHandle<()>,
}

impl Setup {
    fn src(&self) -> std::path::PathBuf {
        self.dir.path().join("src")
    }
    fn recv_root(&self) -> std::path::PathBuf {
        self.dir.path().join("recv")
    }

    /// A `len`-byte `data/db` of noise from `seed` with a writer changing it, and a sender
    /// of migration `id` (zstd `level`) that has begun on it.
    async fn writer_and_sender(
        &self,
        id: &str,
        len: usize,
        seed: u64,
        level: Option<i32>,
    ) -> (WriterService, StateSender) {
        std::fs::create_dir_all(self.src().join("data")).unwrap();
        std::fs::write(self.src().join("data/db"), noise(len, seed)).unwrap();
        let svc = WriterService::start(self.src().join("data/db"));
        let scan = StateScan::new(&self.src(), &["data".into()]).unwrap();
        let tx = StateSender::begin(&self.peer, id, "kv", scan, level)
            .await
            .unwrap();
        (svc, tx)
    }

    /// After a migration failed before its commit: the writer still gets its writes through
    /// and the target kept no copy.
    fn assert_source_serves_on(&self, writes: &AtomicU64) {
        let before = writes.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            writes.load(Ordering::SeqCst) > before,
            "the source serves on"
        );
        assert!(!self.recv_root().join("kv").exists());
    }
}

async fn setup() -> Setup {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(&p, "a"), node(&p, "b"));
    let services = Services::default();
    register(&services, dir.path().join("recv"));
    std::fs::create_dir_all(dir.path().join("recv")).unwrap();
    let server = serve(&b, services);
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    Setup {
        _pki: p,
        dir,
        peer,
        _server: server,
    }
}

/// Every file under `root` with its bytes.
fn contents(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel + "/", Vec::new()));
                walk(root, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_during_rounds_arrives_identical_after_the_final_round() {
    let s = setup().await;
    let src = s.src();
    std::fs::create_dir_all(src.join("data/sub")).unwrap();
    std::fs::write(src.join("data/db"), noise(8 << 20, 1)).unwrap();
    std::fs::write(src.join("data/sub/log"), b"header\n").unwrap();
    std::fs::write(src.join("data/gone"), b"removed before the end").unwrap();

    // A writer changes random 4 KiB blocks of the database until it is "frozen".
    let frozen = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = std::thread::spawn({
        let (frozen, writes, path) = (frozen.clone(), writes.clone(), src.join("data/db"));
        move || {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            let mut x = 7u64;
            while !frozen.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let block = x % 2048;
                f.write_all_at(&noise(4096, x), block * 4096).unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    });

    let scan = StateScan::new(&src, &["data".into()]).unwrap();
    let mut tx = StateSender::begin(&s.peer, "m1", "kv", scan, Some(1))
        .await
        .unwrap();
    let counters = tx.round_counters();
    let r0 = tx.round().await.unwrap();
    assert!(r0.bytes >= 8 << 20, "{r0:?}");
    // What progress within the round reads: at its end, the round's own figures.
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(load(&counters.bytes), r0.bytes, "{r0:?}");
    assert_eq!(load(&counters.wire_bytes) + 21, r0.wire_bytes, "{r0:?}");
    let mut rounds = vec![r0.clone()];
    for _ in 0..3 {
        rounds.push(tx.round().await.unwrap());
    }
    // Metadata changes between rounds: a file removed, one created, one grown.
    std::fs::remove_file(src.join("data/gone")).unwrap();
    std::fs::write(src.join("data/sub/new"), b"created late").unwrap();
    std::fs::write(src.join("data/sub/log"), b"header\nline 1\nline 2\n").unwrap();
    frozen.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let last = tx.round().await.unwrap();
    rounds.push(last);
    let files = tx.verify().await.unwrap().files;
    assert_eq!(files, 3);
    let path = tx.commit().await.unwrap().path;
    assert_eq!(path, s.recv_root().join("kv").display().to_string());
    assert_eq!(
        contents(&src.join("data")),
        contents(&s.recv_root().join("kv/data"))
    );
    // Later rounds move what changed, not the whole state again.
    for r in &rounds[1..] {
        assert!(
            r.bytes < r0.bytes / 2,
            "round {} moved {} bytes",
            r.round,
            r.bytes
        );
    }
    assert!(
        writes.load(Ordering::Relaxed) > 100,
        "the writer ran during the rounds"
    );
    assert!(
        !s.recv_root().join("kv.staging-m1").exists(),
        "the staging copy became the state"
    );
    eprintln!(
        "rounds: {:?}; {} writes during the transfer",
        rounds.iter().map(|r| r.bytes).collect::<Vec<_>>(),
        writes.load(Ordering::Relaxed)
    );
}

/// The hash tree the rounds keep (no file read at the cut-over) catches a block that arrived
/// other than it was read: corrupted on the way, after the sender digested it. That block is
/// sent again; a difference that lasts fails the verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_corrupted_on_the_way_is_caught_by_the_rounds_tree_and_resent() {
    let s = setup().await;
    let src = s.src();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/db"), noise(3 << 20, 7)).unwrap();
    std::fs::write(src.join("data/small"), b"a short file, one partial block").unwrap();
    let scan = StateScan::new(&src, &["data".into()]).unwrap();
    let mut tx = StateSender::begin(&s.peer, "m5", "kv", scan, Some(1))
        .await
        .unwrap();
    tx.round().await.unwrap();
    // A second round with changes (a grown file, a rewritten block) keeps both trees equal.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("data/db"))
        .unwrap();
    f.write_all_at(&noise(5000, 8), 4096 * 100 + 17).unwrap();
    std::fs::write(src.join("data/small"), noise(9000, 9)).unwrap();
    tx.round().await.unwrap();
    let v = tx.verify().await.expect("trees agree after clean rounds");
    assert_eq!(v.files, 2);
    // Now a round whose data is damaged after it was digested here: the comparison finds
    // the file, and the block that differs is sent again.
    f.write_all_at(&noise(4096, 10), 4096 * 300).unwrap();
    tx.corrupt_rounds = 1;
    tx.final_round().await.unwrap();
    let v = tx.verify().await.expect("repaired");
    assert_eq!(v.repaired, vec!["data/db".to_string()]);
    let repair = v.repair.expect("a repair round");
    assert_eq!(
        (repair.blocks, repair.bytes),
        (1, 4096),
        "only the damaged block"
    );
    assert_eq!(
        std::fs::read(s.recv_root().join("kv.staging-m5/data/db")).unwrap(),
        std::fs::read(src.join("data/db")).unwrap()
    );
    // Damaged again in the repair round too: the difference stands, and is an error.
    f.write_all_at(&noise(4096, 11), 4096 * 301).unwrap();
    tx.corrupt_rounds = 2;
    tx.final_round().await.unwrap();
    let err = tx.verify().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Mismatch(m) if m == &["data/db".to_string()]),
        "{err}"
    );
    tx.abort("verify failed").await;
}

/// The full re-hash reads the files on both sides: it catches what the rounds never saw, and
/// the block is resent; a difference that lasts prevents the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_found_by_the_full_check_is_resent_and_a_lasting_one_prevents_the_commit() {
    let s = setup().await;
    let src = s.src();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/db"), noise(1 << 20, 3)).unwrap();
    // A previous state at the destination must survive a failed transfer.
    std::fs::create_dir_all(s.recv_root().join("kv")).unwrap();
    std::fs::write(s.recv_root().join("kv/old"), b"previous").unwrap();
    let scan = StateScan::new(&src, &["data".into()]).unwrap();
    let mut tx = StateSender::begin(&s.peer, "m2", "kv", scan, None)
        .await
        .unwrap();
    tx.round().await.unwrap();
    // A change the rounds never sent (as if a write were missed).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.recv_root().join("kv.staging-m2/data/db"))
        .unwrap();
    f.write_all_at(b"corrupt", 4096).unwrap();
    // The rounds' tree cannot see it (nothing was sent wrong) ...
    tx.verify().await.expect("the rounds' trees agree");
    // ... the full re-hash does, and the block is sent again.
    tx.full_verify(true);
    let v = tx.verify().await.expect("repaired");
    assert_eq!(v.repaired, vec!["data/db".to_string()]);
    assert_eq!(v.repair.map(|r| (r.blocks, r.bytes)), Some((1, 4096)));
    assert_eq!(
        std::fs::read(s.recv_root().join("kv.staging-m2/data/db")).unwrap(),
        std::fs::read(src.join("data/db")).unwrap()
    );
    // Once more, and the resent block is damaged too: the difference lasts.
    f.write_all_at(b"corrupt", 4096).unwrap();
    tx.corrupt_rounds = 1;
    let err = tx.verify().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Mismatch(m) if m == &["data/db".to_string()]),
        "{err}"
    );
    tx.abort("verify failed").await;
    let gone = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while s.recv_root().join("kv.staging-m2").exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the staging copy is removed after an abort");
    assert_eq!(
        std::fs::read(s.recv_root().join("kv/old")).unwrap(),
        b"previous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_leaves_the_destination_untouched() {
    let s = setup().await;
    let src = s.src();
    std::fs::create_dir_all(src.join("data")).unwrap();
    std::fs::write(src.join("data/db"), noise(1 << 20, 5)).unwrap();
    let scan = StateScan::new(&src, &["data".into()]).unwrap();
    let mut tx = StateSender::begin(&s.peer, "m3", "kv", scan, None)
        .await
        .unwrap();
    tx.round().await.unwrap();
    assert!(s.recv_root().join("kv.staging-m3").exists());
    s.peer.close("sender died");
    drop(tx);
    let gone = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while s.recv_root().join("kv.staging-m3").exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "staging removed when the sender goes away");
    assert!(!s.recv_root().join("kv").exists());
}

#[test]
fn state_paths_must_stay_under_the_root() {
    for bad in ["/etc", "../x", "a/../../b", ""] {
        assert!(
            StateScan::new(Path::new("/tmp"), &[bad.into()]).is_err(),
            "{bad}"
        );
    }
}

/// A stand-in for a service in these unit tests: a writer thread that changes `db` until
/// frozen or stopped; the real service runtime drives cgroups instead.
struct WriterService {
    /// Held by the writer around each write, so pausing can wait out one in flight.
    gate: Arc<std::sync::Mutex<()>>,
    paused: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    calls: Vec<&'static str>,
    fail_freeze: bool,
}

impl WriterService {
    fn start(path: std::path::PathBuf) -> WriterService {
        let paused = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(std::sync::Mutex::new(()));
        std::thread::spawn({
            let (paused, writes, gate) = (paused.clone(), writes.clone(), gate.clone());
            move || {
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                let mut x = 3u64;
                // Runs until the test process ends; writes only while not paused.
                loop {
                    let held = gate.lock().unwrap();
                    if !paused.load(Ordering::SeqCst) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let _ = f.write_all_at(&noise(4096, x), (x % 1024) * 4096);
                        writes.fetch_add(1, Ordering::SeqCst);
                    }
                    drop(held);
                    std::thread::sleep(std::time::Duration::from_micros(500));
                }
            }
        });
        WriterService {
            gate,
            paused,
            writes,
            calls: Vec::new(),
            fail_freeze: false,
        }
    }

    /// Pauses and waits until no write is in flight.
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        drop(self.gate.lock().unwrap());
    }
}

impl Source for WriterService {
    async fn freeze(&mut self) -> Result<(), MigrateError> {
        self.calls.push("freeze");
        if self.fail_freeze {
            return Err(MigrateError::BadState("cgroup.freeze: device busy".into()));
        }
        self.pause();
        Ok(())
    }
    async fn thaw(&mut self) -> Result<(), MigrateError> {
        self.calls.push("thaw");
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
    async fn stop(&mut self) -> Result<(), MigrateError> {
        self.calls.push("stop");
        self.pause();
        Ok(())
    }
    async fn start(&mut self) -> Result<(), MigrateError> {
        self.calls.push("start");
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }
}

fn input(state: f64, dirty: f64) -> godwit_core::policy::PrecopyInput {
    godwit_core::policy::PrecopyInput {
        state_bytes: state,
        dirty_bytes_per_s: dirty,
        bandwidth_bytes_per_s: 50e6,
        rtt_s: 0.001,
        downtime_target_s: 0.05,
        max_rounds: 8,
        scan_share: 1.0,
        round_bandwidth_bytes_per_s: 0.0,
        live_overhead_s: 0.0,
        later_dirty_bytes_per_s: 0.0,
        frozen_bandwidth_bytes_per_s: 0.0,
        stop_s: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_freezes_after_converging_rounds_and_commits_an_exact_copy() {
    let s = setup().await;
    let (mut svc, tx) = s.writer_and_sender("d1", 4 << 20, 9, Some(1)).await;
    let report = drive(tx, &mut svc, input(4e6, 1e6), None)
        .await
        .unwrap_or_else(|(e, r)| panic!("{e}: {r:?}"));
    assert_eq!(
        report.mode,
        SwitchMode::Transitional,
        "{:?}",
        report.estimate
    );
    assert!(report.rounds.len() >= 2, "{report:?}");
    assert_eq!(svc.calls, vec!["freeze"]);
    assert!(report.committed_path.is_some());
    // Frozen, the writer no longer changes the source: it equals the committed copy.
    assert_eq!(
        std::fs::read(s.src().join("data/db")).unwrap(),
        std::fs::read(s.recv_root().join("kv/data/db")).unwrap()
    );
    assert!(
        report.rounds.last().unwrap().bytes < report.rounds[0].bytes,
        "the frozen round copies what changed, not everything: {report:?}"
    );
    eprintln!(
        "{} rounds, stop {:?}, frozen {:.1} ms",
        report.rounds.len(),
        report.stop,
        report.frozen_seconds * 1e3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_freeze_leaves_the_service_running_on_the_source() {
    let s = setup().await;
    let (mut svc, tx) = s.writer_and_sender("d2", 1 << 20, 4, None).await;
    svc.fail_freeze = true;
    let (err, report) = drive(
        tx,
        &mut svc,
        input(1e6, 1e6),
        Some(SwitchMode::Transitional),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("freeze"), "{err}");
    assert_eq!(svc.calls, vec!["freeze", "thaw"]);
    assert!(report.committed_path.is_none());
    s.assert_source_serves_on(&svc.writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intermittent_mode_stops_copies_once_and_commits() {
    let s = setup().await;
    let (mut svc, tx) = s.writer_and_sender("d3", 1 << 20, 6, None).await;
    // A dirty rate above the bandwidth: iterating never converges, so Auto stops and copies.
    let report = drive(tx, &mut svc, input(1e6, 80e6), None).await.unwrap();
    assert_eq!(report.mode, SwitchMode::Intermittent);
    assert_eq!(report.rounds.len(), 1);
    assert_eq!(svc.calls, vec!["stop"]);
    assert_eq!(
        std::fs::read(s.src().join("data/db")).unwrap(),
        std::fs::read(s.recv_root().join("kv/data/db")).unwrap()
    );
}

#[test]
fn the_commit_swaps_the_staging_copy_in_and_removes_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let (staging, dest) = (dir.path().join("kv.staging-m"), dir.path().join("kv"));
    // No previous state: a plain rename.
    std::fs::create_dir_all(staging.join("data")).unwrap();
    std::fs::write(staging.join("data/db"), b"first").unwrap();
    super::receiver::sync_tree(&staging).unwrap();
    assert_eq!(
        super::receiver::swap_into_place(&staging, &dest).unwrap(),
        None
    );
    assert_eq!(std::fs::read(dest.join("data/db")).unwrap(), b"first");
    assert!(!staging.exists());
    // A previous state: exchanged in one step, the old one left at the staging name for the
    // caller to remove once the commit is recorded.
    std::fs::create_dir_all(staging.join("data")).unwrap();
    std::fs::write(staging.join("data/db"), b"second").unwrap();
    let old = super::receiver::swap_into_place(&staging, &dest)
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(dest.join("data/db")).unwrap(), b"second");
    assert_eq!(std::fs::read(old.join("data/db")).unwrap(), b"first");
    std::fs::remove_dir_all(old).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("kv")],
        "only the new state is left"
    );
}

/// A setup whose receiver keeps the migration journal (the agent's configuration).
async fn setup_with_journal() -> (Setup, Arc<journal::Journal>) {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (node(&p, "a"), node(&p, "b"));
    let services = Services::default();
    let j = Arc::new(journal::Journal::open(&dir.path().join("journal")).unwrap());
    let (pending, _rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(_rx);
    register_with(
        &services,
        dir.path().join("recv"),
        Some(TargetHooks {
            journal: j.clone(),
            pending,
            manager: None,
            tasks: crate::Tasks::default(),
        }),
    );
    std::fs::create_dir_all(dir.path().join("recv")).unwrap();
    let server = serve(&b, services);
    let peer = a.connect(b.local_addr().unwrap(), "b").await.unwrap();
    (
        Setup {
            _pki: p,
            dir,
            peer,
            _server: server,
        },
        j,
    )
}

/// A service whose freeze also makes the target give the migration up, so the commit fails.
struct GiveUpAtFreeze {
    inner: WriterService,
    journal: Arc<journal::Journal>,
}

impl Source for GiveUpAtFreeze {
    async fn freeze(&mut self) -> Result<(), MigrateError> {
        self.journal
            .lock("c1")
            .await
            .set_target(journal::TargetPhase::Returned)
            .unwrap();
        self.inner.freeze().await
    }
    async fn thaw(&mut self) -> Result<(), MigrateError> {
        self.inner.thaw().await
    }
    async fn stop(&mut self) -> Result<(), MigrateError> {
        self.inner.stop().await
    }
    async fn start(&mut self) -> Result<(), MigrateError> {
        self.inner.start().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_thaws_the_source() {
    let (s, j) = setup_with_journal().await;
    let (inner, tx) = s.writer_and_sender("c1", 1 << 20, 8, None).await;
    let mut svc = GiveUpAtFreeze {
        inner,
        journal: j.clone(),
    };
    let (err, report) = drive(
        tx,
        &mut svc,
        input(1e6, 1e6),
        Some(SwitchMode::Transitional),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("given up"), "{err}");
    assert_eq!(
        svc.inner.calls,
        vec!["freeze", "thaw"],
        "thawed after the failed commit"
    );
    assert!(report.committed_path.is_none());
    s.assert_source_serves_on(&svc.inner.writes);
}

/// With no dirty rate from the probe, the first live round must not pass for the dirty rate
/// (the transfer rate would make the model stop at once as not converging): another round
/// measures it, and the rate the check uses is what the writer dirtied, far below the copy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_dirty_rate_is_measured_by_the_rounds() {
    let s = setup().await;
    let (mut svc, tx) = s.writer_and_sender("r1", 8 << 20, 10, None).await;
    let mut inp = input(8e6, 0.0);
    inp.downtime_target_s = 0.02;
    let report = drive(tx, &mut svc, inp, None)
        .await
        .unwrap_or_else(|(e, r)| panic!("{e}: {r:?}"));
    eprintln!(
        "rounds {:?}; rates {:?}; stop {:?}",
        report
            .rounds
            .iter()
            .map(|r| (r.bytes, r.seconds))
            .collect::<Vec<_>>(),
        report.dirty_rates,
        report.stop
    );
    assert_eq!(report.mode, SwitchMode::Transitional);
    assert!(
        report.rounds.len() >= 3,
        "round 0, a measuring round, the frozen one: {report:?}"
    );
    assert_eq!(
        report.dirty_rates[0], None,
        "nothing measured after round 0"
    );
    let copy_rate = report.rounds[0].bytes as f64 / report.rounds[0].seconds;
    let measured = report.dirty_rates[1].expect("measured after round 1");
    // The writer dirties at most 4 KiB per 500 µs (8 MB/s).
    assert!(
        measured > 0.0 && measured <= 9e6 && measured < copy_rate / 2.0,
        "dirty rate {measured} B/s, copy rate {copy_rate} B/s"
    );
    // Not stopped as not converging on the first measured rate (a later plateau may stop it:
    // rounds cannot shrink below what their own fixed cost lets the writer dirty).
    assert!(
        report.stop != Some(godwit_core::policy::StopReason::NotConverging)
            || report.dirty_rates.iter().flatten().count() >= 2,
        "{report:?}"
    );
}

/// A file that grows between the listing and the read (an append-only log) is sent up to its
/// listed size, and the rest next round: nothing past the listing counts as sent.
#[test]
fn a_file_growing_after_the_listing_is_sent_in_full_next_round() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("log"), noise(10_000, 1)).unwrap();
    let mut scan = StateScan::new(dir.path(), &["data".into()]).unwrap();
    let files = scan.list().unwrap();
    // Appended after the listing, before the read.
    let mut grown = noise(10_000, 1);
    grown.extend(noise(20_000, 2));
    std::fs::write(data.join("log"), &grown).unwrap();
    let first: u64 = scan.changed(&files).unwrap().iter().map(|e| e.blocks).sum();
    assert_eq!(first, 3, "blocks 0..3 cover the listed 10,000 bytes");
    let files = scan.list().unwrap();
    let second: Vec<(u64, u64)> = scan
        .changed(&files)
        .unwrap()
        .iter()
        .map(|e| (e.first, e.blocks))
        .collect();
    assert_eq!(
        second,
        vec![(2, 6)],
        "the partial last block and the appended ones"
    );
}
