//! A service's cgroup v2 directory: create, place a child in it before it runs, freeze and
//! thaw (waiting until the kernel reports the state), kill everything in it, remove it.
//!
//! Memory accounting: on a pure v2 host `create` enables `memory` (and `cpu`) in
//! `cgroup.subtree_control` from the v2 root down to the services' parent, wherever the
//! controller is offered (`cgroup.controllers`). On a v1/v2 hybrid host the memory controller
//! lives in the v1 hierarchy: the service also gets `<v1 memory root>/<same relative path>`,
//! and the child joins both before exec. Either way the probe reads the service's memory at
//! its cgroup path.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::error::ServiceError;

/// How long a freeze or thaw may take before it is an error.
pub(super) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Controllers a service's cgroup gets when the host offers them.
const CONTROLLERS: [&str; 2] = ["memory", "cpu"];

/// A service's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCgroup {
    path: PathBuf,
    /// The same cgroup in the v1 memory hierarchy (hybrid hosts).
    memory_v1: Option<PathBuf>,
    /// The same cgroup in the v1 cpu hierarchy (hybrid hosts with a CPU share to enforce).
    cpu_v1: Option<PathBuf>,
}

/// Said once per agent: where services' memory is accounted, or that it is not.
static MEMORY_REPORT: Once = Once::new();

impl ServiceCgroup {
    /// `<v2 root>/<parent>/<name>.service`, created with its parent if missing, with the
    /// memory and cpu controllers enabled down to it where the host offers them. When the v2
    /// tree has no memory controller and `memory_v1_root` is given (a hybrid host), the same
    /// relative path is created in that hierarchy too. A failure removes what this call made.
    pub fn create(
        v2_root: &Path,
        memory_v1_root: Option<&Path>,
        parent: &str,
        name: &str,
    ) -> Result<ServiceCgroup, ServiceError> {
        let rel = Path::new(parent).join(format!("{name}.service"));
        let path = v2_root.join(&rel);
        let missing = enable_controllers(v2_root, parent);
        std::fs::create_dir_all(&path).map_err(|e| ServiceError::cgroup(&path, e))?;
        let mut cg = ServiceCgroup {
            path,
            memory_v1: None,
            cpu_v1: None,
        };
        if cg.path.join("memory.current").exists() {
            MEMORY_REPORT.call_once(|| {
                tracing::info!(
                    unavailable = %missing.join("; "),
                    "services' memory is accounted by the cgroup v2 memory controller"
                )
            });
        } else if let Some(v1) = memory_v1_root {
            let dir = v1.join(&rel);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                let err = ServiceError::cgroup(&dir, e);
                let _ = cg.remove();
                return Err(err);
            }
            cg.memory_v1 = Some(dir);
            MEMORY_REPORT.call_once(|| {
                tracing::info!(
                    v1_root = %v1.display(),
                    unavailable = %missing.join("; "),
                    "cgroup v2 has no memory controller here: services' memory is accounted in \
                     the v1 memory hierarchy"
                )
            });
        } else {
            MEMORY_REPORT.call_once(|| {
                tracing::warn!(
                    missing = %missing.join("; "),
                    "no memory controller for services' cgroups: their memory is not accounted"
                )
            });
        }
        Ok(cg)
    }

    /// Also joins `<cpu_v1_root>/<parent>/<name>.service` (created), where the parent's CPU
    /// share is enforced on a hybrid host whose v2 tree has no cpu controller. A failure
    /// removes what this cgroup made.
    pub fn join_cpu_v1(
        mut self,
        cpu_v1_root: &Path,
        parent: &str,
        name: &str,
    ) -> Result<ServiceCgroup, ServiceError> {
        let dir = cpu_v1_root.join(parent).join(format!("{name}.service"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            let err = ServiceError::cgroup(&dir, e);
            let _ = self.remove();
            return Err(err);
        }
        self.cpu_v1 = Some(dir);
        Ok(self)
    }

    /// The service's directory in the v1 memory hierarchy, on hybrid hosts.
    pub fn memory_v1(&self) -> Option<&Path> {
        self.memory_v1.as_deref()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `cgroup.procs` for writing, so a child can join the cgroup between fork and exec
    /// by writing "0" to the descriptor (no allocation, async-signal-safe).
    pub fn procs_fd(&self) -> Result<OwnedFd, ServiceError> {
        let p = self.path.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| ServiceError::cgroup(&p, e))?;
        Ok(OwnedFd::from(f))
    }

    /// Makes `cmd`'s child join this cgroup (and its v1 memory cgroup on hybrid hosts)
    /// before it execs, so nothing it runs escapes it and its memory is charged to it.
    pub fn place(&self, cmd: &mut tokio::process::Command) -> Result<(), ServiceError> {
        let fd = self.procs_fd()?;
        let raw = fd.as_raw_fd();
        let open_procs = |dir: &Option<PathBuf>| -> Result<Option<OwnedFd>, ServiceError> {
            match dir {
                Some(dir) => {
                    let p = dir.join("cgroup.procs");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(|e| ServiceError::cgroup(&p, e))?;
                    Ok(Some(OwnedFd::from(f)))
                }
                None => Ok(None),
            }
        };
        let v1 = open_procs(&self.memory_v1)?;
        let cpu_v1 = open_procs(&self.cpu_v1)?;
        let raw_v1 = v1.as_ref().map(|f| f.as_raw_fd());
        let raw_cpu_v1 = cpu_v1.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure runs in the child between fork and exec; it only calls write(2),
        // which is async-signal-safe, on descriptors that stay open (moved into the
        // closure, which the Command keeps alive until spawn returns).
        unsafe {
            cmd.pre_exec(move || {
                let _keep = (&fd, &v1, &cpu_v1);
                // The v1 cgroups first: the charge of everything the child touches from here
                // on goes to the service.
                for raw_v1 in [raw_v1, raw_cpu_v1].into_iter().flatten() {
                    if libc::write(raw_v1, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::write(raw, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Pids in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn write(&self, file: &str, value: &str) -> Result<(), ServiceError> {
        let p = self.path.join(file);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(|e| ServiceError::cgroup(&p, e))
    }

    /// True when `cgroup.events` says `frozen 1`.
    pub fn is_frozen(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.trim() == "frozen 1")
    }

    async fn wait_frozen(&self, want: bool, timeout: Duration) -> Result<(), ServiceError> {
        let deadline = Instant::now() + timeout;
        while self.is_frozen() != want {
            if Instant::now() > deadline {
                return Err(ServiceError::cgroup(
                    &self.path,
                    format!(
                        "not {} after {timeout:?}",
                        if want { "frozen" } else { "thawed" }
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Freezes every task and returns once the kernel reports the cgroup frozen. A freeze
    /// that does not complete in `FREEZE_TIMEOUT` (5 s) is undone (`cgroup.freeze` back to 0), so
    /// a service reported running is never left half frozen.
    pub async fn freeze(&self) -> Result<(), ServiceError> {
        self.freeze_within(FREEZE_TIMEOUT).await
    }

    async fn freeze_within(&self, timeout: Duration) -> Result<(), ServiceError> {
        self.write("cgroup.freeze", "1")?;
        match self.wait_frozen(true, timeout).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(undo) = self.write("cgroup.freeze", "0") {
                    tracing::error!(error = %undo, "a freeze that timed out could not be undone");
                }
                Err(e)
            }
        }
    }

    /// Asks the kernel to freeze every task and returns at once (a fence freezes every
    /// service before it kills any; it does not wait for each to report frozen).
    pub(super) fn begin_freeze(&self) -> Result<(), ServiceError> {
        self.write("cgroup.freeze", "1")
    }

    /// Thaws and returns once the kernel reports it.
    pub async fn thaw(&self) -> Result<(), ServiceError> {
        self.write("cgroup.freeze", "0")?;
        self.wait_frozen(false, FREEZE_TIMEOUT).await
    }

    /// Sends `sig` to every process in the cgroup.
    pub fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Shuts down (`SHUT_RDWR`) every socket the cgroup's processes hold, through a
    /// duplicate taken with `pidfd_getfd`; returns how many. A killed process closes its
    /// sockets only after the kernel has torn its memory down (`exit_mm` comes before
    /// `exit_files`): 15-55 ms for a service mapping 1 GiB, during which its clients wait on
    /// connections nobody will answer. Shut down first, they see the end at once. Frozen
    /// processes need not run for this; processes that are gone or a kernel without
    /// `pidfd_getfd` (before 5.6) are skipped, and the kill closes their sockets as before.
    pub fn shut_sockets(&self) -> usize {
        let mut n = 0;
        for pid in self.pids() {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
            if pidfd < 0 {
                continue;
            }
            // SAFETY: a descriptor just returned by pidfd_open, owned here.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in fds.flatten() {
                let is_socket = std::fs::read_link(e.path())
                    .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
                let Some(target) = e.file_name().to_str().and_then(|f| f.parse::<i32>().ok())
                else {
                    continue;
                };
                if !is_socket {
                    continue;
                }
                // SAFETY: pidfd_getfd with a valid pidfd, a descriptor number and no flags
                // returns a new descriptor (close-on-exec) or -1.
                let dup =
                    unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
                if dup < 0 {
                    continue;
                }
                // SAFETY: a descriptor just returned by pidfd_getfd, owned here.
                let dup = unsafe { OwnedFd::from_raw_fd(dup as i32) };
                // SAFETY: shutdown on a valid descriptor; errors (not connected) are harmless.
                if unsafe { libc::shutdown(dup.as_raw_fd(), libc::SHUT_RDWR) } == 0 {
                    n += 1;
                }
            }
        }
        n
    }

    /// Kills everything in the cgroup (`cgroup.kill`, or SIGKILL to each process on kernels
    /// before 5.14), frozen tasks included.
    pub fn kill_all(&self) {
        if self.write("cgroup.kill", "1").is_err() {
            self.signal_all(libc::SIGKILL);
        }
    }

    /// True while any process lives in the cgroup or below it: `populated 1` in
    /// `cgroup.events` (or, without that file, a non-empty `cgroup.procs`).
    pub fn is_populated(&self) -> bool {
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.pids().is_empty(),
        }
    }

    /// Waits until the cgroup is empty (`populated 0`); false if it is not within `timeout`.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_populated() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Removes the (empty) cgroup, and its v1 memory cgroup.
    pub fn remove(&self) -> Result<(), ServiceError> {
        let remove_v1 = |d: &Option<PathBuf>| match d {
            Some(dir) => match std::fs::remove_dir(dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ServiceError::cgroup(dir, e)),
            },
            None => Ok(()),
        };
        let v1 = remove_v1(&self.memory_v1);
        let cpu_v1 = remove_v1(&self.cpu_v1);
        std::fs::remove_dir(&self.path).map_err(|e| ServiceError::cgroup(&self.path, e))?;
        v1.and(cpu_v1)
    }
}

/// The period `cpu.max` is written with, microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Limits the services' parent to `cpu_cores` of CPU for all the services together: `cpu.max`
/// of `<v2 root>/<parent>` (created with its controllers when missing), or, on a hybrid host
/// whose v2 tree has no cpu controller, `cpu.cfs_quota_us` of `<cpu_v1_root>/<parent>` (the
/// services then join that hierarchy too, [`ServiceCgroup::join_cpu_v1`]). Returns the file
/// written.
pub fn limit_parent_cpu(
    v2_root: &Path,
    cpu_v1_root: Option<&Path>,
    parent: &str,
    cpu_cores: f64,
) -> Result<PathBuf, ServiceError> {
    let quota = ((cpu_cores * CPU_PERIOD_US as f64).round() as u64).max(1000);
    let _ = enable_controllers(v2_root, parent);
    let v2 = v2_root.join(parent).join("cpu.max");
    if v2.exists() {
        std::fs::write(&v2, format!("{quota} {CPU_PERIOD_US}"))
            .map_err(|e| ServiceError::cgroup(&v2, e))?;
        return Ok(v2);
    }
    let Some(v1_root) = cpu_v1_root else {
        return Err(ServiceError::cgroup(
            &v2,
            "no cpu controller in cgroup v2 here, and no v1 cpu hierarchy",
        ));
    };
    let dir = v1_root.join(parent);
    std::fs::create_dir_all(&dir).map_err(|e| ServiceError::cgroup(&dir, e))?;
    let period = dir.join("cpu.cfs_period_us");
    std::fs::write(&period, CPU_PERIOD_US.to_string())
        .map_err(|e| ServiceError::cgroup(&period, e))?;
    let q = dir.join("cpu.cfs_quota_us");
    std::fs::write(&q, quota.to_string()).map_err(|e| ServiceError::cgroup(&q, e))?;
    Ok(q)
}

/// Enables [`CONTROLLERS`] in `cgroup.subtree_control` of the v2 root and of each directory
/// down to `<v2 root>/<parent>` (created as needed), top-down, wherever `cgroup.controllers`
/// offers them. Returns the controllers the services' cgroups will not have, each with why.
fn enable_controllers(v2_root: &Path, parent: &str) -> Vec<String> {
    let mut dirs = vec![v2_root.to_path_buf()];
    let mut dir = v2_root.to_path_buf();
    for part in Path::new(parent).components() {
        dir.push(part);
        dirs.push(dir.clone());
    }
    let mut missing = Vec::new();
    for c in CONTROLLERS {
        for d in &dirs {
            if let Err(e) = std::fs::create_dir_all(d) {
                missing.push(format!("{c} ({}: {e})", d.display()));
                break;
            }
            let offered = d.join("cgroup.controllers");
            if !read_words(&offered).iter().any(|w| w == c) {
                missing.push(format!("{c} (not in {})", offered.display()));
                break;
            }
            let p = d.join("cgroup.subtree_control");
            if read_words(&p).iter().any(|w| w == c) {
                continue;
            }
            let r = OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(format!("+{c}").as_bytes()));
            if let Err(e) = r {
                missing.push(format!("{c} (cannot enable in {}: {e})", p.display()));
                break;
            }
        }
    }
    missing
}

fn read_words(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that looks like a cgroup whose tasks never finish freezing.
    fn stuck_cgroup() -> (tempfile::TempDir, ServiceCgroup) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.freeze"), "0").unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let cg = ServiceCgroup {
            path: dir.path().to_path_buf(),
            memory_v1: None,
            cpu_v1: None,
        };
        (dir, cg)
    }

    /// A v2 root and `<root>/godwit.slice` as plain files: the root offers `offered` and
    /// already delegates `delegated`.
    fn fake_v2(offered: &str, delegated: &str, slice_offers: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), offered).unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), delegated).unwrap();
        let slice = root.path().join("godwit.slice");
        std::fs::create_dir(&slice).unwrap();
        std::fs::write(slice.join("cgroup.controllers"), slice_offers).unwrap();
        std::fs::write(slice.join("cgroup.subtree_control"), "").unwrap();
        root
    }

    #[test]
    fn controllers_are_enabled_down_the_chain_where_offered() {
        // Pure v2: the root offers and delegates both; the slice offers only memory, and
        // gets it enabled for its children.
        let root = fake_v2("cpuset cpu io memory pids", "cpu memory", "memory pids");
        let missing = enable_controllers(root.path(), "godwit.slice");
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("cpu (not in"), "{missing:?}");
        let root_sc = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(root_sc, "cpu memory", "already delegated: not written");
        let slice_sc =
            std::fs::read_to_string(root.path().join("godwit.slice/cgroup.subtree_control"))
                .unwrap();
        assert_eq!(slice_sc, "+memory");

        // Hybrid: the v2 root offers neither (they are bound to v1): nothing is written.
        let root = fake_v2("hugetlb", "", "");
        let missing = enable_controllers(root.path(), "godwit.slice");
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("memory (not in"), "{missing:?}");
        let root_sc = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(root_sc, "");
    }

    #[test]
    fn without_a_v2_memory_controller_the_cgroup_is_mirrored_in_v1_and_removed_with_it() {
        let root = fake_v2("hugetlb", "", "");
        let v1 = tempfile::tempdir().unwrap();
        let cg = ServiceCgroup::create(root.path(), Some(v1.path()), "godwit.slice", "kv").unwrap();
        let mirror = v1.path().join("godwit.slice/kv.service");
        assert_eq!(cg.path(), root.path().join("godwit.slice/kv.service"));
        assert_eq!(cg.memory_v1(), Some(mirror.as_path()));
        assert!(mirror.is_dir());
        cg.remove().unwrap();
        assert!(!mirror.exists() && !cg.path().exists());

        // With memory in v2 (memory.current present), no mirror.
        let root = fake_v2("cpu memory", "cpu memory", "cpu memory");
        let dir = root.path().join("godwit.slice/kv.service");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "0").unwrap();
        let cg = ServiceCgroup::create(root.path(), Some(v1.path()), "godwit.slice", "kv").unwrap();
        assert_eq!(cg.memory_v1(), None);
    }

    #[tokio::test]
    async fn waiting_for_empty_reads_populated_and_is_bounded() {
        let (_dir, cg) = stuck_cgroup();
        let t = Instant::now();
        assert!(!cg.wait_empty(Duration::from_millis(100)).await);
        assert!(t.elapsed() >= Duration::from_millis(100));
        let events = cg.path().join("cgroup.events");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::fs::write(events, "populated 0\nfrozen 0\n").unwrap();
        });
        let t = Instant::now();
        assert!(cg.wait_empty(Duration::from_secs(5)).await);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(140) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_freeze_that_times_out_is_undone() {
        let (_dir, cg) = stuck_cgroup();
        let err = cg
            .freeze_within(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not frozen"), "{err}");
        let freeze = std::fs::read_to_string(cg.path().join("cgroup.freeze")).unwrap();
        assert_eq!(freeze, "0", "cgroup.freeze was left at {freeze:?}");
    }
}
