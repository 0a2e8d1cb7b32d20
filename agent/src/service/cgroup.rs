//! A service's cgroup v2 directory: create, place a child in it before it runs, freeze and
//! thaw (waiting until the kernel reports the state), kill everything in it, remove it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::ServiceError;

/// How long a freeze or thaw may take before it is an error.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A service's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCgroup {
    path: PathBuf,
}

impl ServiceCgroup {
    /// `<v2 root>/<parent>/<name>.service`, created with its parent if missing.
    pub fn create(v2_root: &Path, parent: &str, name: &str) -> Result<ServiceCgroup, ServiceError> {
        let path = v2_root.join(parent).join(format!("{name}.service"));
        std::fs::create_dir_all(&path).map_err(|e| ServiceError::cgroup(&path, e))?;
        Ok(ServiceCgroup { path })
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

    /// Makes `cmd`'s child join this cgroup before it execs, so nothing it runs escapes it.
    pub fn place(&self, cmd: &mut tokio::process::Command) -> Result<(), ServiceError> {
        let fd = self.procs_fd()?;
        let raw = fd.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec; it only calls write(2),
        // which is async-signal-safe, on a descriptor that stays open (moved into the
        // closure, which the Command keeps alive until spawn returns).
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &fd;
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
    /// that does not complete in [`FREEZE_TIMEOUT`] is undone (`cgroup.freeze` back to 0), so
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

    /// Kills everything in the cgroup (`cgroup.kill`, or SIGKILL to each process on kernels
    /// before 5.14), frozen tasks included.
    pub fn kill_all(&self) {
        if self.write("cgroup.kill", "1").is_err() {
            self.signal_all(libc::SIGKILL);
        }
    }

    /// Waits until the cgroup is empty.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.pids().is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) -> Result<(), ServiceError> {
        std::fs::remove_dir(&self.path).map_err(|e| ServiceError::cgroup(&self.path, e))
    }
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
        };
        (dir, cg)
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
