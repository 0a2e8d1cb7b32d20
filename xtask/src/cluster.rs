//! `cargo xtask cluster up --nodes N [--release] [--extra-toml FILE] [--bare]`,
//! `cargo xtask cluster down [--all | --run RUN]`, `cargo xtask cluster list`: the multi-node
//! harness of `tests/src/cluster/` from the command line.
//!
//! `up` builds the agent (`cargo build -p godwit`, `--release` optional) and runs
//! `cargo run -q -p godwit-tests --bin godwit-cluster -- up --nodes N --agent-bin
//! target/<profile>/godwit`, which leaves a detached cluster running: N network namespaces on a
//! bridge, one agent each, that form one mesh: gossip seeded and sealed with a generated key,
//! the transport with certificates of a generated CA. It waits until every node sees every
//! other alive and prints, per node, its API address (reads from this host: `godwit nodes
//! --addr 198.a.b.i:9746`) and its API socket (changes: `godwit path n2 --socket PATH`).
//! `--bare` starts lone agents instead. `down` removes what `up` made (agents, namespaces and
//! veths, cgroups, files); `down --all` also removes the leftovers of crashed
//! test runs. xtask itself does not depend on godwit: building it needs clang, which this
//! command installs first, as `cargo xtask run` does. Everything here needs root.

use std::ffi::OsString;

use anyhow::{bail, Context, Result};

use crate::{cargo, is_root, packages, run_checked, step, target_dir};

/// `cargo xtask cluster` subcommands.
#[derive(clap::Subcommand)]
pub(crate) enum ClusterCmd {
    /// Start a detached cluster of N agents in network namespaces.
    Up {
        /// Number of nodes (1 to 253).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Run the release build of the agent instead of the debug build.
        #[arg(long)]
        release: bool,
        /// TOML appended to every node's config (after the harness's tables: it may add
        /// `[probe]`, say, but not repeat `[node]`, `[api]`, `[gossip]`, `[transport]` or
        /// `[services]`).
        #[arg(long, value_name = "FILE")]
        extra_toml: Option<OsString>,
        /// Lone agents that do not meet: only `[node]`, `[api]` and the extra TOML.
        #[arg(long)]
        bare: bool,
    },
    /// Remove the clusters `up` made; with --all also the leftovers of crashed test runs.
    Down {
        /// Also remove what crashed test runs left (namespaces gw-*, cgroups, state).
        #[arg(long, conflicts_with = "run")]
        all: bool,
        /// Remove only this run (an id from `cargo xtask cluster list`).
        #[arg(long)]
        run: Option<String>,
    },
    /// List the runs recorded on this host.
    List,
}

/// `cargo xtask cluster ...`.
pub(crate) fn cluster(cmd: &ClusterCmd) -> Result<()> {
    if !is_root() {
        bail!(
            "the cluster harness creates network namespaces, nftables rules and cgroups: run \
             `sudo -E cargo xtask cluster ...`"
        );
    }
    step("system packages needed to build and to make the cluster network");
    let mut wanted = packages::BUILD.to_vec();
    wanted.extend(["iproute2", "nftables"]);
    packages::ensure(&wanted)?;
    let mut args: Vec<OsString> = Vec::new();
    match cmd {
        ClusterCmd::Up {
            nodes,
            release,
            extra_toml,
            bare,
        } => {
            let profile = if *release { "release" } else { "debug" };
            step(&format!("cargo build -p godwit ({profile})"));
            let mut build = cargo();
            build.args(["build", "-p", "godwit", "--bin", "godwit"]);
            if *release {
                build.arg("--release");
            }
            run_checked(&mut build, "agent build")?;
            let bin = target_dir().join(profile).join("godwit");
            args.extend(["up".into(), "--nodes".into(), nodes.to_string().into()]);
            args.extend(["--agent-bin".into(), bin.into_os_string()]);
            if let Some(file) = extra_toml {
                // cargo runs in the workspace root: pass an absolute path.
                let file = std::fs::canonicalize(file)
                    .with_context(|| format!("{}", std::path::Path::new(file).display()))?;
                args.extend(["--extra-toml".into(), file.into_os_string()]);
            }
            if *bare {
                args.push("--bare".into());
            }
        }
        ClusterCmd::Down { all, run } => {
            args.push("down".into());
            if *all {
                args.push("--all".into());
            }
            if let Some(run) = run {
                args.extend(["--run".into(), run.into()]);
            }
        }
        ClusterCmd::List => args.push("list".into()),
    }
    step("cargo run -p godwit-tests --bin godwit-cluster");
    run_checked(
        cargo()
            .args([
                "run",
                "-q",
                "-p",
                "godwit-tests",
                "--bin",
                "godwit-cluster",
                "--",
            ])
            .args(&args),
        "godwit-cluster",
    )
}
