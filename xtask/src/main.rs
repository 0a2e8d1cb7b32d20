//! `cargo xtask`: everything a person runs on godwit, with its set-up included.
//!
//! - `cargo xtask run [-- ARGS]`: install the build packages, build the agent in release and run
//!   it with the embedded default configuration.
//! - `cargo xtask test [-- ARGS]`: install the build and test packages, check the alerting rules
//!   with promtool, build everything, run the unit tests; then, as root, install the Debian
//!   package with dpkg, check it and remove it, and run the privileged integration tests one at
//!   a time.
//! - `cargo xtask lint`: rustfmt, clippy with warnings denied, and `systemd-analyze verify` of the
//!   unit file.
//! - `cargo xtask bench probe`: measure the probe overhead of an eBPF agent and a procfs agent side
//!   by side under a context-switch storm and many idle processes.
//! - `cargo xtask bench gossip [--quick] [--write]`: the mesh at 20, 100 and 500 nodes.
//! - `cargo xtask bench mesh [--quick]`: the mesh at 100, 500 and 1,000 nodes on a simulated
//!   network, on virtual time.
//! - `cargo xtask bench failover [--write] [--runs N] [--netns-runs N] [--netns-only]
//!   [--netns crash,crash-leader,fence]`: the coordinator's commit, re-election and failover
//!   decision; as root, crash to serving elsewhere as a client sees it, and the self-fence, with
//!   real agents in network namespaces.
//! - `cargo xtask bench schedules [--count N] [--seed S]`: randomized fault schedules on five
//!   agents (`tests/schedules.rs`), checked for a service running twice or at a stale epoch.
//! - `cargo xtask bench coord-size [--quick] [--sizes N,..] [--window S]`: the coordinator at
//!   100, 500 and 1,000 nodes on the deterministic simulator (virtual time).
//! - `cargo xtask bench migrate [--fresh] [--state-mib N] [--rates MB,..] [--links L,..] [--runs N]
//!   [--write]`: live migration of the example service between two namespaced agents against
//!   stop-rsync-start and two-pass rsync on the same links.
//! - `cargo xtask bench predict [--write]`, `cargo xtask bench policy [--write]`: forecast
//!   accuracy and fit cost; the cost of a policy pass.
//! - `cargo xtask sim [--write] [ARGS]`: the cluster simulator (`godwit-sim ARGS`, by default
//!   `compare --traces tests/traces`): policies compared on the same load traces.
//! - `cargo xtask fuzz [--seconds N] [--target NAME]... [--minimise]`: build the fuzz targets on
//!   the stable toolchain (libFuzzer, SanitizerCoverage) and run each for N seconds (60);
//!   fails when one crashes.
//! - `cargo xtask cluster up --nodes N` / `cargo xtask cluster down [--all]` / `cargo xtask
//!   cluster list`: a detached multi-node cluster of real agents in network namespaces (the
//!   harness of `tests/src/cluster/`), and its removal.
//! - `cargo xtask demo [--release] [-- ARGS]`: four agents in two sites move a service before
//!   its node overloads and fail over a node whose power is cut, under checking clients,
//!   narrated; ends with the clients' verdict and removes everything.
//!
//! Subcommands whose names start with `__` are helpers the benchmark starts by re-executing this
//! binary; they are hidden from `--help`.

mod bench;
mod cluster;
mod debcheck;
mod demo;
mod fuzz;
mod http;
mod lint;
mod load;
mod openmetrics;
mod package;
mod packages;
mod sim;

use std::env;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Default address of the agent's API, as in the embedded default configuration.
const DEFAULT_API: &str = "127.0.0.1:9746";

/// Set to `1` to skip the privileged integration tests when not running as root.
const SKIP_PRIVILEGED_ENV: &str = "GODWIT_SKIP_PRIVILEGED";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for godwit",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install build packages, build the agent in release and run it with the default config.
    Run {
        /// Extra arguments for `godwit agent`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Install build and test packages, build everything, run unit then privileged tests.
    Test {
        /// Extra arguments for the test binaries, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Check formatting, run clippy with warnings denied, verify the systemd unit.
    Lint,
    /// Benchmarks whose figures go into docs/BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Cluster simulator: `godwit-sim ARGS` (default `compare --traces tests/traces`);
    /// `--write` puts the output into docs/BENCHMARKS.md.
    Sim(sim::SimArgs),
    /// Fuzz every decoder for `--seconds N` each (libFuzzer on stable Rust); fails on a crash.
    Fuzz(fuzz::FuzzArgs),
    /// The Debian package (cargo-deb): binary, systemd unit, default config, man pages,
    /// completions and maintainer scripts, under target/debian/; `--check` installs it with
    /// dpkg, checks it and removes it (root).
    Package(package::PackageArgs),
    /// Multi-node cluster of agents in network namespaces: `up --nodes N`, `down [--all]`,
    /// `list`.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// The demonstration: a proactive move and a failover under checking clients, narrated
    /// (needs root; cleans up after itself).
    Demo(demo::DemoArgs),
    /// Benchmark helper: ping-pong one byte with a child over two pipes, forever.
    #[command(name = "__pingpong", hide = true)]
    PingPong,
    /// Benchmark helper: the child side of `__pingpong` (echo stdin to stdout, byte by byte).
    #[command(name = "__pong", hide = true)]
    Pong,
    /// Benchmark helper: block reading stdin until it is closed.
    #[command(name = "__idle", hide = true)]
    Idle,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Probe overhead: an eBPF agent and a procfs agent side by side under load.
    Probe(bench::ProbeArgs),
    /// Forecast accuracy (ARMA vs persistence vs moving average) and fit cost.
    Predict(bench::BinArgs),
    /// Cost of one policy pass over synthetic clusters of growing size.
    Policy(bench::BinArgs),
    /// Gossip at 20, 100 and 500 nodes, sealed and clear, with and without loss.
    Gossip(bench::GossipArgs),
    /// The mesh at 100, 500 and 1,000 nodes on a simulated network, on virtual time.
    Mesh(bench::MeshArgs),
    /// Live migration of the example service against rsync baselines, links shaped with tbf.
    Migrate(bench::MigrateArgs),
    /// The coordinator: log commit latency, re-election and failover decision times; as root,
    /// crash to serving elsewhere seen by a client, and the self-fence, in namespaces.
    Failover(bench::FailoverArgs),
    /// Randomized fault schedules on five agents, checked for services running twice.
    Schedules(bench::SchedulesArgs),
    /// The placement policy on four agents in two sites against the reactive threshold and
    /// no action, on the same traces, and the simulator's prediction (root).
    Cluster(bench::ClusterArgs),
    /// The coordinator at 100, 500 and 1,000 nodes, simulated on virtual time.
    CoordSize(bench::CoordSizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { args } => run(&args),
        Cmd::Test { args } => test(&args),
        Cmd::Lint => lint::lint(),
        Cmd::Bench {
            which: BenchCmd::Probe(args),
        } => bench::probe(&args),
        Cmd::Bench {
            which: BenchCmd::Predict(args),
        } => bench::run_bin("godwit-bench-predict", &args),
        Cmd::Bench {
            which: BenchCmd::Policy(args),
        } => bench::run_bin("godwit-bench-policy", &args),
        Cmd::Bench {
            which: BenchCmd::Gossip(args),
        } => bench::gossip(&args),
        Cmd::Bench {
            which: BenchCmd::Mesh(args),
        } => bench::mesh(&args),
        Cmd::Bench {
            which: BenchCmd::Migrate(args),
        } => bench::migrate(&args),
        Cmd::Bench {
            which: BenchCmd::Failover(args),
        } => bench::failover(&args),
        Cmd::Bench {
            which: BenchCmd::Schedules(args),
        } => bench::schedules(&args),
        Cmd::Bench {
            which: BenchCmd::Cluster(args),
        } => bench::cluster(&args),
        Cmd::Bench {
            which: BenchCmd::CoordSize(args),
        } => bench::coord_size(&args),
        Cmd::Sim(args) => sim::sim(&args),
        Cmd::Fuzz(args) => fuzz::fuzz(&args),
        Cmd::Package(args) => package::package(&args),
        Cmd::Cluster { cmd } => cluster::cluster(&cmd),
        Cmd::Demo(args) => demo::demo(&args),
        Cmd::PingPong => load::pingpong(),
        Cmd::Pong => load::pong(),
        Cmd::Idle => load::idle(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask run`: build the agent in release and replace this process with it.
fn run(args: &[OsString]) -> Result<()> {
    let bin = build_release_agent()?;
    if !is_root() {
        eprintln!(
            "warning: not running as root: the agent cannot load BPF programs and falls back to \
             procfs (run as root, or grant CAP_BPF and CAP_PERFMON, for the eBPF probes)"
        );
    }
    println!("godwit agent with the embedded default config (packaging/godwit.toml)");
    println!("  metrics:  http://{DEFAULT_API}/metrics");
    println!("  API:      http://{DEFAULT_API}/v1/node  /v1/processes  /v1/containers (reads)");
    println!("  changes:  /run/godwit/api.sock (root and the godwit group; `godwit service ...`)");
    println!("  live:     {} top", bin.display());
    println!("  (a --config FILE with another [api] listen or socket moves these)");
    let err = Command::new(&bin).arg("agent").args(args).exec();
    Err(err).with_context(|| format!("exec {}", bin.display()))
}

/// Installs the packages the build needs and builds the agent in release; returns its path.
fn build_release_agent() -> Result<PathBuf> {
    step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    step("cargo build --release -p godwit");
    run_checked(
        cargo().args(["build", "--release", "-p", "godwit"]),
        "release build",
    )?;
    Ok(target_dir().join("release").join("godwit"))
}

/// `cargo xtask test`: the whole check CI runs, from packages to privileged tests.
fn test(args: &[OsString]) -> Result<()> {
    let skip_privileged = env::var(SKIP_PRIVILEGED_ENV).as_deref() == Ok("1");
    if !is_root() && !skip_privileged {
        eprintln!(
            "warning: not root: steps 5 and 6 (the package installed with dpkg, the privileged \
             integration tests) will fail; {SKIP_PRIVILEGED_ENV}=1 skips them"
        );
    }
    step("[1/6] system packages needed to build and test");
    packages::ensure(packages::TEST)?;

    // The metric names these files use are checked against a real agent in step 6
    // (tests/monitoring.rs), with the dashboard.
    step("[2/6] alerting rules: promtool check rules, promtool test rules (packaging/prometheus)");
    let rules = repo_root().join("packaging/prometheus");
    for (what, file) in [
        ("check", "godwit-alerts.yml"),
        ("test", "godwit-alerts.test.yml"),
    ] {
        run_checked(
            Command::new("promtool")
                .current_dir(&rules)
                .args([what, "rules", file]),
            &format!("promtool {what} rules {file}"),
        )?;
    }

    step("[3/6] cargo build --workspace --all-targets");
    run_checked(
        cargo().args(["build", "--workspace", "--all-targets"]),
        "build",
    )?;

    step("[4/6] unit tests: cargo test --workspace --lib --bins; the example service on loopback");
    run_checked(
        cargo()
            .args(["test", "--workspace", "--lib", "--bins", "--"])
            .args(args),
        "unit tests",
    )?;
    run_checked(
        cargo()
            .args(["test", "-p", "godwit-kvstore", "--tests", "--"])
            .args(args),
        "example service tests",
    )?;

    if !is_root() {
        if skip_privileged {
            println!("skipped steps 5 and 6: not root and {SKIP_PRIVILEGED_ENV}=1");
            return Ok(());
        }
        bail!(
            "the package check installs with dpkg, and the integration tests load BPF programs and \
             create cgroups and network namespaces: they need root. Run `sudo -E cargo xtask \
             test`, or set {SKIP_PRIVILEGED_ENV}=1 to skip them (CI must not)"
        );
    }

    // The debug build of step 3's sources: no release build here (see package::build).
    step("[5/6] the Debian package: dpkg -i, checks, dpkg -r, dpkg -P (cargo xtask package --check --profile dev)");
    let deb = package::build(package::Profile::Dev)?;
    debcheck::check(&deb)?;

    step("[6/6] privileged integration tests: cargo test -p godwit-tests --tests -- --test-threads=1");
    run_checked(
        cargo()
            .args([
                "test",
                "-p",
                "godwit-tests",
                "--tests",
                "--",
                "--test-threads=1",
            ])
            .args(args),
        "privileged integration tests",
    )
    // Nothing printed after this: CI reads cargo test's own closing lines.
}

/// Prints the one-line header of a step.
fn step(what: &str) {
    println!("==> {what}");
}

/// The root of the workspace (the parent of this crate).
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `target/` at the workspace root.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => repo_root().join(dir),
        None => repo_root().join("target"),
    }
}

/// A `cargo` command (the same cargo that runs xtask) in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(repo_root());
    cmd
}

/// `cargo run --release -q -p godwit-tests --bin NAME --`: the binaries of the test package
/// (benchmarks, simulator, cluster harness), so that xtask never depends on the agent crate.
fn cargo_run_test_bin(name: &str) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "godwit-tests",
        "--bin",
        name,
        "--",
    ]);
    cmd
}

/// Runs `cmd` with inherited output and fails with `what` when it does not exit with 0.
fn run_checked(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Whether this process runs with effective uid 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
