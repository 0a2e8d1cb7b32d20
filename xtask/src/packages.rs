//! Debian packages the project needs, installed from here so a fresh machine (and CI) needs
//! nothing done by hand.
//!
//! Idempotent and quiet: each package is checked with `dpkg-query`; only when some are missing
//! does it run `apt-get update` once and `apt-get install` once, with their output captured and
//! shown only when they fail.

use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// Needed to build the agent: clang-19 and llvm-19 compile the BPF C programs against libbpf's
/// headers; bpftool generates `vmlinux.h` and skeleton metadata.
pub(crate) const BUILD: &[&str] = &["clang-19", "llvm-19", "libbpf-dev", "bpftool"];

/// Needed to build and test: `BUILD` plus what the integration tests drive (promtool checks the
/// metrics text, redis is a real stateful workload, nftables and iproute2 shape the test network,
/// stress-ng makes load, util-linux gives `losetup` and friends, rsync is the migration
/// benchmark's baseline, systemd's `systemd-analyze verify` checks the packaged unit; the package
/// check installs the .deb, which depends on systemd and adduser, and reads its page with man-db's
/// `man`).
pub(crate) const TEST: &[&str] = &[
    "clang-19",
    "llvm-19",
    "libbpf-dev",
    "bpftool",
    "prometheus",
    "redis-server",
    "nftables",
    "iproute2",
    "stress-ng",
    "util-linux",
    "rsync",
    "systemd",
    "adduser",
    "man-db",
];

/// Makes sure every package in `wanted` is installed, installing the missing ones when root.
pub(crate) fn ensure(wanted: &[&str]) -> Result<()> {
    let missing = match missing(wanted) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "warning: cannot query dpkg ({e:#}); not a Debian system? make sure these are \
                 installed: {}",
                wanted.join(" ")
            );
            return Ok(());
        }
    };
    if missing.is_empty() {
        println!("all {} packages present", wanted.len());
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages: {list}. Install them as root (`sudo apt-get install {list}`) \
             or run this command as root",
            list = missing.join(" ")
        );
    }
    println!("installing: {}", missing.join(" "));
    quiet(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    quiet(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )?;
    let still = missing_or_all(&missing);
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// The packages of `wanted` that dpkg does not report as installed.
fn missing(wanted: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for pkg in wanted {
        // A package dpkg has never heard of makes dpkg-query exit 1 with an empty status.
        let o = Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .stdin(Stdio::null())
            .output()
            .context("run dpkg-query")?;
        if !is_installed(&String::from_utf8_lossy(&o.stdout)) {
            out.push((*pkg).to_owned());
        }
    }
    Ok(out)
}

/// Like [`missing`], but treats a failing query as "everything is missing".
fn missing_or_all(wanted: &[String]) -> Vec<String> {
    let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
    missing(&refs).unwrap_or_else(|_| wanted.to_vec())
}

/// Whether a dpkg `${Status}` string (`want ok state`, e.g. `install ok installed` or
/// `hold ok installed`) says the package is installed. `deinstall ok config-files` is not.
fn is_installed(status: &str) -> bool {
    let mut words = status.split_whitespace();
    let (_want, flag, state) = (words.next(), words.next(), words.next());
    flag == Some("ok") && state == Some("installed")
}

/// Runs `cmd` with output captured, printing that output only if it fails.
fn quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        eprint!("{}", String::from_utf8_lossy(&stdout));
        eprint!("{}", String::from_utf8_lossy(&stderr));
        bail!("{what} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_strings() {
        let table = [
            ("install ok installed", true),
            ("hold ok installed", true),
            ("deinstall ok config-files", false),
            ("install ok half-installed", false),
            ("install reinstreq half-installed", false),
            ("unknown ok not-installed", false),
            ("", false),
        ];
        for (status, want) in table {
            assert_eq!(is_installed(status), want, "{status:?}");
        }
    }

    #[test]
    fn test_packages_include_build_packages() {
        for pkg in BUILD {
            assert!(
                TEST.contains(pkg),
                "{pkg} is needed to build, so also to test"
            );
        }
    }
}
