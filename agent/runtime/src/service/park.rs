//! A service's process forked ahead of its start and parked before `exec`.
//!
//! Joining a cgroup (writing `cgroup.procs`) takes the kernel's global cgroup
//! threadgroup lock for writing, which first waits for an RCU grace period when no task moved
//! between cgroups just before: 10 to 25 ms on the hosts measured, most of a start. A
//! migration's target knows the service long before the cut-over, so it forks the process
//! then: the child joins the service's cgroups and blocks on a pipe. The start writes one byte
//! to the pipe and the child only changes directory and execs. A cancel writes another byte
//! (and closes the pipe): the child fails before `exec` (the spawn reports an error and reaps
//! it). A byte, not only the end of the pipe: a child forked meanwhile (another one parked)
//! holds a copy of the write end until it execs, so the end may never come. While parked the
//! child has `PR_SET_PDEATHSIG` set, so it dies with the agent; it is cleared before `exec`
//! (it would outlive the exec, and the thread that forked the child is the "parent").
//!
//! The child changes directory after the go byte, not before it blocks, so a state directory
//! that a commit swaps in meanwhile is the one it runs in.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// A forked child waiting before `exec` for [`Parked::release`].
#[derive(Debug)]
pub(super) struct Parked {
    /// The pipe's write end: one byte releases the child, closing it cancels it.
    go: Option<OwnedFd>,
    /// The spawn, blocked until the child execs or fails.
    spawn: JoinHandle<io::Result<Child>>,
}

impl Parked {
    /// Forks `cmd`'s child now; it runs every `pre_exec` hook registered so far (joining the
    /// cgroups), then waits for [`Parked::release`], changes to `cwd`, runs the hooks `then`
    /// registers (giving up the agent's user and privileges) and execs. `cmd` must not set a
    /// current directory of its own.
    pub(super) fn fork(
        mut cmd: Command,
        cwd: &Path,
        then: impl FnOnce(&mut Command),
    ) -> io::Result<Parked> {
        let cwd = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the directory"))?;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (raw_rd, raw_wr) = (rd.as_raw_fd(), wr.as_raw_fd());
        let agent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec and only calls close,
        // prctl, getppid, read and chdir, which are async-signal-safe, on descriptors and a
        // string that live in the child's copy of this process's memory.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = (&rd, &cwd);
                // The child's copy of the write end: without closing it the read below would
                // never see the parent close its own.
                libc::close(raw_wr);
                // Dies with the agent while parked (and not if the agent is already gone).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::getppid() != agent
                {
                    return Err(io::Error::from_raw_os_error(libc::ECANCELED));
                }
                let mut b = 0u8;
                loop {
                    match libc::read(raw_rd, (&mut b as *mut u8).cast(), 1) {
                        1 if b == GO => break,
                        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                        _ => return Err(io::Error::from_raw_os_error(libc::ECANCELED)),
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, 0) != 0 || libc::chdir(cwd.as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        then(&mut cmd);
        let spawn = tokio::task::spawn_blocking(move || cmd.spawn());
        Ok(Parked {
            go: Some(wr),
            spawn,
        })
    }

    /// Lets the child exec; returns it once it has (or the error that stopped it).
    pub(super) async fn release(mut self) -> io::Result<Child> {
        if let Some(go) = self.go.take() {
            if !send(&go, GO) {
                return Err(io::Error::last_os_error());
            }
        }
        match (&mut self.spawn).await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Cancels the child: it exits before `exec`; returns once it is reaped.
    pub(super) async fn cancel(mut self) {
        if let Some(go) = self.go.take() {
            send(&go, CANCEL);
        }
        let _ = (&mut self.spawn).await;
    }
}

/// The byte that releases a parked child.
const GO: u8 = b'g';
/// The byte that cancels it.
const CANCEL: u8 = b'c';

fn send(fd: &OwnedFd, byte: u8) -> bool {
    // SAFETY: writes one byte from a valid buffer to a descriptor owned by the caller.
    unsafe { libc::write(fd.as_raw_fd(), (&byte as *const u8).cast(), 1) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_cwd() -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "pwd"])
            .stdout(std::process::Stdio::piped())
            .stdin(std::process::Stdio::null());
        cmd
    }

    #[tokio::test]
    async fn a_parked_child_execs_in_its_directory_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let parked = Parked::fork(echo_cwd(), dir.path(), |_| {}).unwrap();
        // Parked: it has not exec'd, so the spawn has not returned.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!parked.spawn.is_finished());
        let child = parked.release().await.unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            dir.path().canonicalize().unwrap().display().to_string()
        );
    }

    #[tokio::test]
    async fn a_child_parked_beside_another_is_cancelled_and_released_independently() {
        let dir = tempfile::tempdir().unwrap();
        let first = Parked::fork(echo_cwd(), dir.path(), |_| {}).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        // Forked while the first waits: it holds a copy of the first's write end.
        let second = Parked::fork(echo_cwd(), dir.path(), |_| {}).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), first.cancel())
            .await
            .expect("cancelled although another child holds its pipe");
        let out = second
            .release()
            .await
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert!(out.status.success());
    }

    #[tokio::test]
    async fn a_cancelled_child_never_execs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", &format!("touch {}", marker.display())]);
        let parked = Parked::fork(cmd, dir.path(), |_| {}).unwrap();
        let spawn_done = tokio::time::timeout(std::time::Duration::from_secs(5), parked.cancel());
        spawn_done.await.expect("the cancelled child is reaped");
        assert!(!marker.exists());
    }
}
