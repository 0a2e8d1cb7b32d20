//! Load generators for the benchmarks, and the guard that stops everything a benchmark started.
//!
//! The generators are this same binary re-executed with a hidden subcommand:
//! - `__pingpong` starts one `__pong` child and passes one byte back and forth over two pipes as
//!   fast as it can: every round trip is two context switches (more when both sides sleep).
//! - `__idle` blocks reading stdin; the benchmark gives many of them the read end of one pipe and
//!   closes the write end to end them all.
//!
//! Every child is started with `PR_SET_PDEATHSIG`, so it dies with its parent even when the parent
//! is killed with SIGKILL and no destructor runs.

use std::fs::File;
use std::io::{self, PipeWriter, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// `__pingpong`: ping-pong one byte with a `__pong` child until either side goes away.
pub(crate) fn pingpong() -> Result<()> {
    let (to_child_r, mut to_child) = io::pipe()?;
    let (mut from_child, from_child_w) = io::pipe()?;
    let mut child = {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("__pong")
            .stdin(to_child_r)
            .stdout(from_child_w)
            .stderr(Stdio::null());
        die_with_parent(&mut cmd, libc::SIGKILL);
        cmd.spawn().context("spawn __pong")?
        // `cmd` drops here, closing our copies of the child's pipe ends.
    };
    let mut byte = [0u8; 1];
    while to_child.write_all(&byte).is_ok() && from_child.read_exact(&mut byte).is_ok() {}
    drop(to_child);
    let _ = child.wait();
    Ok(())
}

/// `__pong`: echo stdin to stdout one byte at a time, unbuffered, until EOF or a broken pipe.
pub(crate) fn pong() -> Result<()> {
    let mut input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut byte = [0u8; 1];
    while input.read_exact(&mut byte).is_ok() && output.write_all(&byte).is_ok() {}
    Ok(())
}

/// `__idle`: block reading stdin until it is closed.
pub(crate) fn idle() -> Result<()> {
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// Makes the child started by `cmd` receive `signal` when this thread (its parent) dies.
pub(crate) fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only calls prctl and getppid, which are
    // async-signal-safe, and builds an io::Error from a raw code without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// How a process of a [`Group`] is asked to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM, then SIGKILL after a grace period (agents: let them detach and clean up).
    Term,
    /// SIGKILL at once (load generators).
    Kill,
    /// Close the shared stdin pipe, then SIGKILL stragglers (idle processes).
    Eof,
}

/// Every process a benchmark started. Dropping it stops and reaps them all, on every exit path
/// (success, `?` error, panic).
#[derive(Default)]
pub(crate) struct Group {
    procs: Vec<(String, Child, Stop)>,
    idle_stdin: Option<PipeWriter>,
}

impl Group {
    /// Adds a process stopped with SIGTERM (then SIGKILL after a grace period); returns its pid.
    pub(crate) fn add_service(&mut self, name: &str, child: Child) -> u32 {
        self.push(name, child, Stop::Term)
    }

    /// Adds a process stopped with SIGKILL; returns its pid.
    pub(crate) fn add_load(&mut self, name: &str, child: Child) -> u32 {
        self.push(name, child, Stop::Kill)
    }

    fn push(&mut self, name: &str, child: Child, stop: Stop) -> u32 {
        let pid = child.id();
        self.procs.push((name.to_owned(), child, stop));
        pid
    }

    /// Starts `n` `__idle` copies of this binary, all reading one pipe this group holds open.
    pub(crate) fn spawn_idle(&mut self, n: usize) -> Result<()> {
        let exe = std::env::current_exe()?;
        let (reader, writer) = io::pipe()?;
        self.idle_stdin = Some(writer);
        for i in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.arg("__idle")
                .stdin(reader.try_clone()?)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            die_with_parent(&mut cmd, libc::SIGKILL);
            let child = cmd
                .spawn()
                .with_context(|| format!("spawn idle process {i} of {n}"))?;
            self.push("idle", child, Stop::Eof);
        }
        Ok(())
    }

    /// The name and exit status of the first process found to have exited, if any.
    pub(crate) fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.procs
            .iter_mut()
            .find_map(|(name, child, _)| match child.try_wait() {
                Ok(Some(status)) => Some((name.clone(), status)),
                _ => None,
            })
    }

    /// Stops and reaps everything, services first so they see their load until the end.
    pub(crate) fn stop_all(&mut self) {
        let grace = Duration::from_secs(10);
        for (_, child, _) in self.procs.iter_mut().filter(|p| p.2 == Stop::Term) {
            signal(child, libc::SIGTERM);
        }
        for (_, child, _) in self.procs.iter_mut().filter(|p| p.2 == Stop::Kill) {
            let _ = child.kill();
        }
        self.idle_stdin = None;
        let deadline = Instant::now() + grace;
        for (_, child, _) in &mut self.procs {
            wait_until(child, deadline);
        }
        self.procs.clear();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Sends `sig` to `child` unless it has already been reaped.
fn signal(child: &mut Child, sig: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet (try_wait
        // returned None), so its pid cannot have been reused.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Waits for `child` until `deadline`, then kills it and waits.
fn wait_until(child: &mut Child, deadline: Instant) {
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
