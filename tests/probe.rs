//! The BPF probe against the kernel's own accounting: on-CPU time per tgid and per cgroup,
//! pages dirtied per tgid, cgroup and tracked inode (with their page indices), write faults.
//! Needs root; run with `--test-threads=1` (`cargo xtask test` does).

use std::time::Duration;

use godwit::probe::bpf::{BpfProbe, DirtyRange};
use godwit_tests::*;

const PAGE: u64 = 4096;

fn load_probe() -> BpfProbe {
    require_root();
    BpfProbe::load(true).unwrap_or_else(|e| panic!("BPF probe must load on this host: {e}"))
}

/// Under CPU contention (two competing burners on this two-core machine), where the kernel
/// now and then switches a task in without the program seeing it, no time may be lost: the
/// probe must agree with the scheduler's own runtime of the thread.
#[test]
fn cpu_time_per_tgid_and_cgroup_matches_kernel_accounting() {
    let probe = load_probe();
    let cg = TestCgroup::new("godwit-cpu");
    let competitors: Vec<Workload> = (0..2)
        .map(|_| Workload::start(&["burn", "3000"], None))
        .collect();
    let mut w = Workload::start(&["burn", "2000"], Some(&cg));
    let self_cpu_ns = w.wait_done();
    drop(competitors);
    // The workload now blocks on stdin: switched out, so its time is charged.
    std::thread::sleep(Duration::from_millis(100));
    let sched_ns = w.sched_runtime_ns();
    let cg_ns = cg.cpu_usage_ns();
    let task = probe.task(w.pid()).expect("tgid counted");
    let cgroup = probe.cgroup(cg.id()).expect("cgroup counted");
    assert!(
        self_cpu_ns >= 2_000_000_000,
        "the workload burned only {self_cpu_ns} ns"
    );
    // The same sum_exec_runtime on both sides: equal but for a slice charged late.
    assert_within(
        "tgid on-CPU ns vs /proc/PID/task/PID/schedstat",
        task.cpu_ns as f64,
        sched_ns as f64,
        0.1,
    );
    // cpu.stat is in microseconds.
    assert_within(
        "cgroup on-CPU ns vs cpu.stat",
        cgroup.cpu_ns as f64,
        cg_ns as f64,
        0.5,
    );
    assert_eq!(
        task.cgroup_id,
        cg.id(),
        "the tgid's last cgroup is the test cgroup"
    );
    w.finish();
}

/// A CPU limit of `cores` on `cg` (and its own v1 `cpu` cgroup on a hybrid host, removed when
/// dropped): v2 `cpu.max` where the v2 tree has the controller, else v1 `cfs_quota_us`.
struct CpuLimit(Option<std::path::PathBuf>);

impl CpuLimit {
    fn new(cg: &TestCgroup, cores: f64, pid: u32) -> CpuLimit {
        let quota = (cores * 100_000.0) as u64;
        if std::fs::write(cg.dir.join("cpu.max"), format!("{quota} 100000")).is_ok() {
            return CpuLimit(None);
        }
        let root = cgroup_layout()
            .cpu_v1_root
            .expect("neither v2 cpu.max nor a v1 cpu hierarchy on this host");
        let dir = root.join(cg.rel_path.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let limit = CpuLimit(Some(dir.clone()));
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        limit
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            // Dropped first when the test fails: what still runs in it goes.
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = wait_for(Duration::from_secs(5), || std::fs::remove_dir(dir).ok());
        }
    }
}

/// A thread that would use a whole core, in a cgroup held at a fifth of one: `cpu.stat` shows
/// the fifth, and `cpu.pressure` the time it waited, runnable, for the rest. The policy takes
/// a node whose services waited so as held at its share: the use alone reads a little under.
#[test]
fn a_throttled_cgroup_shows_the_cpu_it_waited_for() {
    require_root();
    let cg = TestCgroup::new("godwit-wait");
    let w = Workload::start(&["burn", "60000"], Some(&cg));
    let limit = CpuLimit::new(&cg, 0.2, w.pid());
    std::thread::sleep(Duration::from_millis(500));
    let read = || {
        let used = godwit::probe::cgroup::read_cpu_stat(&cg.dir)
            .expect("cpu.stat")
            .usage_usec;
        let waited = godwit::probe::cgroup::read_cpu_waited_usec(&cg.dir)
            .expect("cpu.pressure: this kernel keeps PSI");
        (used, waited, std::time::Instant::now())
    };
    let (u0, w0, t0) = read();
    std::thread::sleep(Duration::from_secs(3));
    let (u1, w1, t1) = read();
    let secs = t1.duration_since(t0).as_secs_f64();
    let used = (u1 - u0) as f64 / 1e6 / secs;
    let waited = (w1 - w0) as f64 / 1e6 / secs;
    eprintln!(
        "used {used:.3} cores, waited {waited:.3}, asked {:.3}",
        used + waited
    );
    assert!(
        (0.15..=0.25).contains(&used),
        "used {used:.3} under a 0.2 limit"
    );
    assert!(
        used + waited >= 0.85,
        "a spinning thread asks a core: used {used:.3} + waited {waited:.3}"
    );
    drop(w);
    drop(cg);
    drop(limit);
}

fn dirty_pages_case(block: u64) {
    let mut probe = load_probe();
    let cg = TestCgroup::new("godwit-dirty");
    let dir = tempfile_dir();
    let file = dir.join("state");
    std::fs::write(&file, b"").unwrap();
    let key = probe.track_inode(&file).expect("track inode");
    // Drop ranges of earlier activity, if any.
    probe.drain_dirty_ranges(|_| {});

    let total = 64 * 1024 * 1024u64;
    let pages = total / PAGE;
    let mut w = Workload::start(
        &[
            "write",
            file.to_str().unwrap(),
            &total.to_string(),
            &block.to_string(),
        ],
        Some(&cg),
    );
    w.wait_done();
    let write_bytes = w.write_bytes();
    let task = probe.task(w.pid()).expect("tgid counted");
    let cgroup = probe.cgroup(cg.id()).expect("cgroup counted");
    let inode = probe.inode_stats(&key).expect("inode tracked");
    let mut ranges: Vec<DirtyRange> = Vec::new();
    probe.drain_dirty_ranges(|r| {
        if r.key == key {
            ranges.push(r)
        }
    });
    let what = |s: &str| format!("{s} ({block}-byte writes)");
    let expected = pages as f64;
    assert_within(
        &what("tgid pages dirtied vs 64 MiB"),
        task.dirtied_pages as f64,
        expected,
        1.0,
    );
    assert_within(
        &what("cgroup pages dirtied vs 64 MiB"),
        cgroup.dirtied_pages as f64,
        expected,
        1.0,
    );
    assert_within(
        &what("inode pages dirtied vs 64 MiB"),
        inode.dirtied_pages as f64,
        expected,
        1.0,
    );
    let kernel_pages = (write_bytes / PAGE) as f64;
    assert_within(
        &what("tgid pages vs write_bytes"),
        task.dirtied_pages as f64,
        kernel_pages,
        1.0,
    );
    assert_within(
        &what("cgroup pages vs write_bytes"),
        cgroup.dirtied_pages as f64,
        kernel_pages,
        1.0,
    );
    assert_within(
        &what("inode pages vs write_bytes"),
        inode.dirtied_pages as f64,
        kernel_pages,
        1.0,
    );

    // The indices reported cover exactly the written range, each page once.
    let mut seen = vec![0u32; pages as usize];
    for r in &ranges {
        for idx in r.index..r.index + u64::from(r.nr) {
            assert!(
                idx < pages,
                "page index {idx} outside the written range 0..{pages}"
            );
            seen[idx as usize] += 1;
        }
    }
    let missing = seen.iter().filter(|&&n| n == 0).count();
    assert_eq!(
        missing, 0,
        "{missing} written pages were never reported ({block}-byte writes)"
    );
    let reported: u64 = ranges.iter().map(|r| u64::from(r.nr)).sum();
    assert_eq!(
        reported, inode.dirtied_pages,
        "ranges and the inode counter agree"
    );
    eprintln!(
        "{block}-byte writes: {} range events for {pages} pages (large folios merge pages)",
        ranges.len()
    );
    probe.untrack_inode(&key);
    w.finish();
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    // Page-cache accounting needs a disk filesystem, not tmpfs: /var/tmp is on the root disk.
    let dir = std::path::Path::new("/var/tmp").join(unique("godwit-dirty"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn dirty_pages_with_4k_writes() {
    dirty_pages_case(4096);
}

#[test]
fn dirty_pages_with_1m_writes_in_large_folios() {
    dirty_pages_case(1024 * 1024);
}

/// A database's writes (8 KiB at random offsets, each followed by an fsync) into a file the
/// page cache holds in large folios: every write dirties a clean folio, so the folio volume
/// is many times what was written. The pages changed are what a migration's rounds send:
/// two pages a write, counted on the write path.
#[test]
fn pages_changed_count_bytes_written_not_folios() {
    let probe = load_probe();
    assert!(
        probe.counts_changes(),
        "no write-path program attached on this host"
    );
    let cg = TestCgroup::new("godwit-changed");
    let dir = tempfile_dir();
    let file = dir.join("db");
    // 64 MiB written in one go and synced: the page cache keeps it in large folios.
    std::fs::write(&file, vec![0x11u8; 64 << 20]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let (block, count) = (8192u64, 2000u64);
    let mut w = Workload::start(
        &[
            "dbwrite",
            file.to_str().unwrap(),
            &block.to_string(),
            &count.to_string(),
        ],
        Some(&cg),
    );
    w.wait_done();
    let task = probe.task(w.pid()).expect("tgid counted");
    let cgroup = probe.cgroup(cg.id()).expect("cgroup counted");
    let written_pages = (count * block / PAGE) as f64;
    assert_within(
        "tgid pages changed vs pages written",
        task.changed_pages as f64,
        written_pages,
        1.0,
    );
    assert_within(
        "cgroup pages changed vs pages written",
        cgroup.changed_pages as f64,
        written_pages,
        1.0,
    );
    // The folio volume stays its own figure, never below what was written.
    assert!(
        task.dirtied_pages as f64 >= written_pages * 0.99,
        "folio volume {} below the pages written {written_pages}",
        task.dirtied_pages
    );
    eprintln!(
        "{count} writes of {block} bytes with fsync: {} pages changed, {} pages of folios \
         dirtied ({:.1}x)",
        task.changed_pages,
        task.dirtied_pages,
        task.dirtied_pages as f64 / task.changed_pages.max(1) as f64
    );
    w.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes through a shared mapping fault once per page per clean cycle: a page written in
/// each of three rounds with an `msync` between is three pages changed.
#[test]
fn pages_changed_count_shared_mapping_writes_per_page() {
    let probe = load_probe();
    // A second probe on the same tracepoints (another agent on this host, as in every
    // multi-node test): its mapping lookups fail while the first one's is pending, and it
    // must count the same pages all the same.
    let second = load_probe();
    let cg = TestCgroup::new("godwit-mapped");
    let dir = tempfile_dir();
    let file = dir.join("mapped");
    let (pages, rounds) = (4096u64, 3u64);
    std::fs::write(&file, vec![0u8; (pages * PAGE) as usize]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let mut w = Workload::start(
        &[
            "mapwrite",
            file.to_str().unwrap(),
            &pages.to_string(),
            &rounds.to_string(),
        ],
        Some(&cg),
    );
    w.wait_done();
    let task = probe.task(w.pid()).expect("tgid counted");
    let cgroup = probe.cgroup(cg.id()).expect("cgroup counted");
    let expected = (pages * rounds) as f64;
    assert_within(
        "tgid pages changed through the mapping",
        task.changed_pages as f64,
        expected,
        1.0,
    );
    assert_within(
        "cgroup pages changed through the mapping",
        cgroup.changed_pages as f64,
        expected,
        1.0,
    );
    let other = second
        .task(w.pid())
        .expect("tgid counted by the second probe");
    assert_within(
        "pages changed through the mapping, second probe",
        other.changed_pages as f64,
        expected,
        1.0,
    );
    w.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// Anonymous memory written: a write fault a page, and no page of a file changed.
#[test]
fn write_faults_count_anonymous_pages_written() {
    let probe = load_probe();
    let cg = TestCgroup::new("godwit-wf");
    let bytes = 64 * 1024 * 1024u64;
    let mut w = Workload::start(&["touch", &bytes.to_string()], Some(&cg));
    w.wait_done();
    let pages = bytes / PAGE;
    let task = probe.task(w.pid()).expect("tgid counted");
    let cgroup = probe.cgroup(cg.id()).expect("cgroup counted");
    // Every page written once: one write fault each, plus the few of program start-up.
    for (what, n) in [("tgid", task.write_faults), ("cgroup", cgroup.write_faults)] {
        assert!(
            n >= pages && n <= pages + pages / 50,
            "{what} write faults {n}, expected {pages} to {}",
            pages + pages / 50
        );
    }
    // ... and no page of a file changed (what start-up writes, at most).
    assert!(
        task.changed_pages <= pages / 50,
        "{} pages changed counted for anonymous memory",
        task.changed_pages
    );
    w.finish();
}

#[test]
fn exec_and_exit_events_arrive_from_the_ring_buffer() {
    let mut probe = load_probe();
    probe.drain_proc_events(|_| {});
    let w = Workload::start(&["idle"], None);
    let pid = w.pid();
    let exec = wait_for(Duration::from_secs(1), || {
        let mut hit = None;
        probe.drain_proc_events(|e| {
            if e.tgid == pid && e.kind == godwit::probe::bpf::ProcEventKind::Exec {
                hit = Some(e)
            }
        });
        hit
    })
    .expect("exec event within 1 s");
    assert_eq!(exec.comm, "godwit-load");
    assert_eq!(exec.ppid, std::process::id());
    w.finish();
    wait_for(Duration::from_secs(1), || {
        let mut hit = None;
        probe.drain_proc_events(|e| {
            if e.tgid == pid && e.kind == godwit::probe::bpf::ProcEventKind::Exit {
                hit = Some(())
            }
        });
        hit
    })
    .expect("exit event within 1 s");
}
