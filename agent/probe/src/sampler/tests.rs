use super::*;
use std::fs;

/// A /proc and cgroup tree in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let cg = root.join("cgroup");
        fs::create_dir_all(root.join("proc/self")).unwrap();
        fs::create_dir_all(root.join("proc/net")).unwrap();
        fs::create_dir_all(cg.join("system.slice/redis.service")).unwrap();
        fs::write(
            root.join("proc/self/mounts"),
            format!("cgroup2 {} cgroup2 rw 0 0\n", cg.display()),
        )
        .unwrap();
        fs::write(
            cg.join("system.slice/redis.service/cpu.stat"),
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        )
        .unwrap();
        fs::write(root.join("proc/meminfo"), "MemTotal: 1000 kB\nMemFree: 200 kB\nMemAvailable: 250 kB\nCached: 50 kB\nDirty: 0 kB\nWriteback: 0 kB\n")
            .unwrap();
        fs::write(
            root.join("proc/stat"),
            "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 10 0 10 80 0 0 0 0 0 0\n",
        )
        .unwrap();
        Fixture { dir }
    }

    fn proc(&self) -> std::path::PathBuf {
        self.dir.path().join("proc")
    }

    fn set_process(&self, pid: u32, comm: &str, ticks: u64, write_bytes: u64, cgroup: &str) {
        let d = self.proc().join(pid.to_string());
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("stat"),
            format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 42 1000 25 0\n"),
        )
        .unwrap();
        fs::write(
            d.join("io"),
            format!("read_bytes: 0\nwrite_bytes: {write_bytes}\ncancelled_write_bytes: 0\n"),
        )
        .unwrap();
        fs::write(d.join("cmdline"), format!("/usr/bin/{comm}\0--flag\0")).unwrap();
        fs::write(d.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
    }

    fn sampler(&self, grace: Duration) -> Sampler {
        Sampler::new(SamplerConfig {
            mode: ProbeMode::Procfs,
            interval: Duration::from_millis(100),
            grace,
            bpf_stats: false,
            proc_root: self.proc(),
            sys_root: self.dir.path().join("sys"),
            powercap_root: self.dir.path().join("powercap"),
            power_model: LinearModel {
                idle_watts: 10.0,
                max_watts: 110.0,
            },
            hostname: Some("fixture".into()),
            select_processes: Vec::new(),
        })
        .unwrap()
    }
}

fn find(s: &Snapshot, pid: u32) -> Option<&ProcessSample> {
    s.processes.iter().find(|p| p.pid == pid)
}

#[test]
fn procfs_mode_names_totals_containers_and_grace() {
    let fx = Fixture::new();
    let tck = procfs::clock_ticks_per_second() as f64;
    fx.set_process(100, "redis-server", 50, 8192, "/system.slice/redis.service");
    fx.set_process(200, "short", 5, 0, "/");
    let mut sampler = fx.sampler(Duration::ZERO);
    assert_eq!(sampler.source(), Source::Procfs);
    assert!(sampler.fallback_reason().unwrap().contains("procfs"));

    let first = sampler.sample();
    let redis = find(&first, 100).expect("listed");
    assert_eq!(redis.comm, "redis-server");
    assert_eq!(redis.cmdline, "/usr/bin/redis-server --flag");
    assert_eq!(redis.cgroup_path, "/system.slice/redis.service");
    assert!((redis.cpu_seconds_total - 50.0 / tck).abs() < 1e-9);
    assert_eq!(redis.dirtied_pages_total, 8192 / procfs::page_size());
    assert_eq!(redis.source.cpu, Source::Procfs);
    assert_eq!(
        redis.source.write_faults,
        Source::None,
        "procfs has no write faults"
    );
    assert_eq!(first.node.memory_total_bytes, 1000 * 1024);

    // The container: its CPU is the cgroup's own cpu.stat, covering the subtree.
    let c = first
        .containers
        .iter()
        .find(|c| c.cgroup_path == "/system.slice/redis.service")
        .expect("container listed");
    assert_eq!(c.info.runtime, Runtime::Systemd);
    assert_eq!(c.info.name, "redis.service");
    assert_eq!(c.processes, 1);
    assert!((c.cpu_seconds_total - 1.5).abs() < 1e-9);
    assert_eq!(c.source.cpu, Source::Cgroupfs);

    // More CPU and dirty bytes: totals move, rates are positive.
    fx.set_process(
        100,
        "redis-server",
        150,
        8192 + 40960,
        "/system.slice/redis.service",
    );
    std::thread::sleep(Duration::from_millis(20));
    let second = sampler.sample();
    let redis = find(&second, 100).unwrap();
    assert!((redis.cpu_seconds_total - 150.0 / tck).abs() < 1e-9);
    assert!(redis.cpu_cores > 0.0 && redis.dirty_bytes_per_second > 0.0);

    // A process that ends leaves the list, and with a zero grace its state goes too.
    fs::remove_dir_all(fx.proc().join("200")).unwrap();
    let third = sampler.sample();
    assert!(
        find(&third, 200).is_none(),
        "ended process dropped from the snapshot"
    );
    assert!(
        !sampler.procs.contains_key(&200),
        "and from the sampler's memory"
    );
    assert_eq!(third.probe.tracked_processes, 1);
}

#[test]
fn procfs_mode_names_a_process_again_after_exec() {
    let fx = Fixture::new();
    // Seen between fork and exec: the parent's comm, cmdline and cgroup.
    fx.set_process(300, "godwit-rt", 1, 0, "/");
    let mut sampler = fx.sampler(Duration::ZERO);
    let first = sampler.sample();
    assert_eq!(find(&first, 300).unwrap().cgroup_path, "/");
    // It joined the service's cgroup and exec'd.
    fx.set_process(300, "redis-server", 2, 0, "/system.slice/redis.service");
    let second = sampler.sample();
    let p = find(&second, 300).unwrap();
    assert_eq!(p.comm, "redis-server");
    assert_eq!(p.cmdline, "/usr/bin/redis-server --flag");
    assert_eq!(p.cgroup_path, "/system.slice/redis.service");
    let c = second
        .containers
        .iter()
        .find(|c| c.cgroup_path == "/system.slice/redis.service")
        .expect("its container is listed");
    assert_eq!(c.processes, 1);
}

#[test]
fn ended_processes_are_remembered_for_the_grace_period() {
    let fx = Fixture::new();
    fx.set_process(300, "worker", 1, 0, "/");
    let mut sampler = fx.sampler(Duration::from_secs(3600));
    sampler.sample();
    fs::remove_dir_all(fx.proc().join("300")).unwrap();
    let s = sampler.sample();
    assert!(find(&s, 300).is_none(), "not listed once ended");
    assert!(
        sampler.procs.contains_key(&300),
        "kept until the grace period ends"
    );
}

#[test]
fn container_of_groups_runtime_subtrees_and_leaf_cgroups() {
    let id = "a".repeat(64);
    let (root, info) = container_of(&format!("/system.slice/docker-{id}.scope")).unwrap();
    assert_eq!(info.runtime, Runtime::Docker);
    assert_eq!(root, format!("/system.slice/docker-{id}.scope"));
    let (root, info) = container_of("/godwit-test-1").unwrap();
    assert_eq!(
        (root.as_str(), info.runtime),
        ("/godwit-test-1", Runtime::Cgroup)
    );
    assert!(container_of("/").is_none());
    assert!(container_of("").is_none());
}
