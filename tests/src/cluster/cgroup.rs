//! The cgroup v2 subtree of a run: `<v2 root>/godwit-cluster/<run>/n<i>` for the agents, and in
//! a meshed run `<v2 root>/godwit-cluster/<run>/n<i>.services` for their services (which, on a
//! v1/v2 hybrid host, the agents mirror under `<v1 memory root>/godwit-cluster/<run>/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The directory under the v2 root that holds every run's cgroups.
pub(crate) const PARENT: &str = "godwit-cluster";

/// Where cgroup v2 is mounted, from a `/proc/self/mounts`-formatted text: `/sys/fs/cgroup` on a
/// pure v2 host, `/sys/fs/cgroup/unified` on a v1/v2 hybrid.
pub(crate) fn v2_root_from(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The cgroup v2 mount point of this host.
pub(crate) fn v2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    v2_root_from(&mounts).context("cgroup v2 is not mounted (no cgroup2 in /proc/self/mounts)")
}

/// Where the v1 memory controller is mounted, from a `/proc/self/mounts`-formatted text (only
/// on v1/v2 hybrid hosts).
pub(crate) fn memory_v1_root_from(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup" && opts.split(',').any(|o| o == "memory")).then(|| PathBuf::from(dir))
    })
}

/// The v1 memory hierarchy of this host, if it has one.
pub(crate) fn memory_v1_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    memory_v1_root_from(&mounts)
}

/// The pids in cgroup `dir` (empty when it does not exist).
pub(crate) fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in cgroup `dir` and its children, waits for them to leave, and removes
/// the directories bottom-up. A missing directory is not an error.
pub(crate) fn remove_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree at once; kill(2) per pid is the fallback.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for child in &children {
        remove_tree(child);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = pids(dir);
        for pid in &left {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // rmdir fails with EBUSY until the killed processes have gone.
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
