//! `cargo xtask demo [--release] [-- ARGS]`: the demonstration a newcomer runs. Four agents in
//! network namespaces, in two sites, move a service before its node overloads and fail over a
//! node whose power is cut, while checking clients count what they lose; narrated in plain
//! lines (`tests/src/bin/godwit-demo.rs` tells the story; ARGS go to it, e.g.
//! `-- --ramp-secs 60`).
//!
//! Installs what it needs (the build packages, iproute2, nftables, redis-server), builds the
//! agent, the example service and its client, and the demo (`cargo build`, debug unless
//! `--release`), then replaces this process with the demo, so Ctrl-C reaches it and it cleans
//! up. Needs root.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, is_root, packages, run_checked, step, target_dir};

/// `cargo xtask demo` arguments.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Build and run the release binaries instead of the debug ones.
    #[arg(long)]
    release: bool,
    /// Arguments for the demo, after `--` (`--ramp-secs S`, `--from CORES`, `--to CORES`).
    #[arg(last = true)]
    args: Vec<OsString>,
}

/// `cargo xtask demo`.
pub(crate) fn demo(a: &DemoArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "the demo runs four agents in network namespaces, with cgroups and nftables rules: \
             it needs root. Run `sudo -E cargo xtask demo`"
        );
    }
    step("system packages needed to build and to run the demo");
    let mut wanted = packages::BUILD.to_vec();
    wanted.extend(["iproute2", "nftables", "redis-server"]);
    packages::ensure(&wanted)?;
    let profile = if a.release { "release" } else { "debug" };
    step(&format!(
        "cargo build ({profile}): godwit, kvstore and kvcheck, godwit-demo"
    ));
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "godwit",
        "--bin",
        "godwit",
        "-p",
        "godwit-kvstore",
        "--bin",
        "kvstore",
        "--bin",
        "kvcheck",
        "-p",
        "godwit-tests",
        "--bin",
        "godwit-demo",
    ]);
    if a.release {
        build.arg("--release");
    }
    run_checked(&mut build, "demo build")?;
    let dir = target_dir().join(profile);
    let bin = dir.join("godwit-demo");
    step("godwit-demo");
    let err = Command::new(&bin)
        .arg("--bin-dir")
        .arg(&dir)
        .args(&a.args)
        .exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}
