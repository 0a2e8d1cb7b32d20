//! Network namespaces, links and nftables rules, by running `ip`, `nft` and `tc`, and `setns(2)`
//! for code or processes that must run inside a namespace.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The file `ip netns add NAME` binds the namespace to.
pub(crate) fn netns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Runs `program args...` and fails with its stderr when it exits non-zero.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS`.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// `ip -n NS ARGS`.
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Makes `cmd` enter network namespace `ns` between fork and exec.
///
/// Unlike `ip netns exec`, this does not unshare the mount namespace and remount `/sys`, so the
/// process still sees the host's cgroup hierarchies under `/sys/fs/cgroup` (the agent needs
/// them); only the network differs.
pub(crate) fn enter_netns_on_exec(cmd: &mut Command, ns: &str) -> Result<()> {
    let file = File::open(netns_path(ns)).with_context(|| format!("open {}", netns_path(ns)))?;
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which
    // is async-signal-safe, on a descriptor opened before the fork (and kept alive by the
    // closure, which owns `file`).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Runs `f` on a new thread that has joined network namespace `ns`: sockets it opens live in
/// that namespace. Only that thread moves; a panic in `f` is propagated.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns_path(ns)).with_context(|| format!("open {}", netns_path(ns)))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: setns(2) on a valid descriptor; it affects only this thread, which is not
            // shared with anything else and ends when `f` returns.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r.with_context(|| format!("setns into {ns}")),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Applies an nftables script (`nft -f -`) inside namespace `ns`, as one transaction.
pub(crate) fn nft_in(ns: &str, script: &str) -> Result<()> {
    let mut cmd = Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    enter_netns_on_exec(&mut cmd, ns)?;
    let mut child = cmd
        .spawn()
        .context("cannot run nft (is nftables installed?)")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .context("write nft script")?;
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed ({}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `nft ARGS` inside namespace `ns`; returns its output.
pub(crate) fn nft_out(ns: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("nft");
    cmd.args(args).stdin(Stdio::null());
    enter_netns_on_exec(&mut cmd, ns)?;
    let out = cmd.output().context("cannot run nft")?;
    if !out.status.success() {
        bail!(
            "`nft {}` in {ns} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the network namespaces `ip netns list` shows.
pub(crate) fn list_netns() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Whether a namespace named `ns` exists.
pub(crate) fn netns_exists(ns: &str) -> bool {
    std::path::Path::new(&netns_path(ns)).exists()
}

/// Names of the links of the root namespace.
pub(crate) fn root_links() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// Kills every process in namespace `ns` (`ip netns pids`) and deletes the namespace.
/// Missing namespaces are not an error.
pub(crate) fn delete_netns(ns: &str) {
    if !netns_exists(ns) {
        return;
    }
    for pid in ip(&["netns", "pids", ns]).unwrap_or_default().lines() {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = ip(&["netns", "delete", ns]);
}
