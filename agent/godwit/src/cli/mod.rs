//! Command-line interface: `godwit agent | validate | top`.
//!
//! Exit codes are distinct per failure class so that systemd and scripts can tell them apart.

mod client;
mod cluster;
mod docs;
mod explain;
mod image;
mod inventory;
mod migrate;
mod nodes;
mod path;
mod pki;
mod predict;
mod services;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Exit codes (sysexits.h where one fits). The agent's own (a start that fails, a
/// configuration that cannot be used) belong to its errors: see [`crate::daemon::StartError`].
pub mod exit {
    pub use crate::daemon::exit::{CONFIG, FAILURE, UNAVAILABLE};
    /// Command-line usage error (clap).
    pub const USAGE: u8 = 2;
    /// The caller may not do this (a migration or an API change refused to this caller).
    pub const NOPERM: u8 = 77;
    /// A migration committed (the service runs on the target) but its downtime exceeded its
    /// target.
    pub const DOWNTIME_MISSED: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "godwit",
    version,
    about = "Node-local edge agent: eBPF load and dirty-page probes, gossip, a coordinator, and live migration of stateful services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: probes, sampler, /metrics and the JSON API.
    Agent {
        /// Configuration file (TOML). Without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit: 0 when valid, 78 with the line and field when not.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Live table of processes and containers by CPU, from a running agent or standalone.
    Top(top::TopArgs),
    /// Forecasts of the node's and each container's load, with prediction intervals.
    Predict(predict::PredictArgs),
    /// The latest decisions of this node's view, with the numbers behind them.
    Explain(explain::ExplainArgs),
    /// Members of the mesh with liveness, site, load, heartbeat age and generation.
    Nodes(nodes::NodesArgs),
    /// The coordinator: leader, term, voters, each node's lease and fence state, and where
    /// every service is placed at which epoch.
    Cluster(cluster::ClusterArgs),
    /// Cordon or uncordon a node: a cordoned node receives no service.
    Node(cluster::NodeArgs),
    /// Tell the cluster a node is powered off (`--confirmed`): its services start elsewhere.
    Fence(cluster::FenceArgs),
    /// Move a managed service to another node: state in rounds, a short freeze, nothing lost.
    Migrate(migrate::MigrateArgs),
    /// What the `[inventory]` patterns resolve to now.
    Inventory(inventory::InventoryArgs),
    /// Managed services with state, health, cgroup and CPU, memory and dirty rates.
    Services(services::ServicesArgs),
    /// Start, stop, freeze or thaw a managed service.
    Service(services::ServiceArgs),
    /// Images in the node's chunk store: import a directory, list, push to another node.
    Image(image::ImageArgs),
    /// Round trip and throughput to another member, measured by the local agent.
    Path(path::PathArgs),
    /// The cluster certificate authority of the agent-to-agent transport.
    Ca(pki::CaArgs),
    /// Node and operator certificates signed by the cluster CA.
    Cert(pki::CertArgs),
    /// The fence guard, started by the agent (hidden): reads `pet <deadline_ms>` (an absolute
    /// `CLOCK_BOOTTIME` time in milliseconds) and `stop` lines on stdin; when the latest
    /// deadline passes without a pet it kills every `*.service` cgroup under `--cgroups` and
    /// stops feeding `--watchdog`. Exits 0 on `stop`, 1 when the pipe closed without it (after
    /// the kill at the deadline, if one was armed). See `godwit_coord::guard`.
    #[command(name = "fence-guard", hide = true)]
    FenceGuard {
        /// The services' parent cgroup directory (e.g. `/sys/fs/cgroup/godwit.slice`).
        #[arg(long)]
        cgroups: PathBuf,
        /// A watchdog device to keep alive while petted (e.g. `/dev/watchdog`).
        #[arg(long)]
        watchdog: Option<PathBuf>,
    },
    /// Writes the man pages and the shell completions under `--out` (hidden: the package
    /// build runs it).
    #[command(name = "generate-docs", hide = true)]
    GenerateDocs {
        #[arg(long)]
        out: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match cli.command {
        Command::Agent { config } => match load(config.as_deref()) {
            Ok(cfg) => crate::daemon::run(cfg, config),
            Err(code) => code,
        },
        Command::Validate { config } => match load(Some(&config)) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Top(args) => top::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Nodes(args) => nodes::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Inventory(args) => inventory::run(args),
        Command::Services(args) => services::list(args),
        Command::Cluster(args) => cluster::show(args),
        Command::Node(args) => cluster::node(args),
        Command::Fence(args) => cluster::fence(args),
        Command::Service(args) => services::act(args),
        Command::Image(args) => image::run(args),
        Command::Path(args) => path::run(args),
        Command::Ca(args) => pki::ca(args),
        Command::Cert(args) => pki::cert(args),
        Command::GenerateDocs { out } => docs::generate(&out),
        Command::FenceGuard { cgroups, watchdog } => {
            use godwit_coord::guard::{run_stdin, GuardExit, GuardOptions};
            match run_stdin(&GuardOptions { cgroups, watchdog }).exit {
                GuardExit::Stopped => ExitCode::SUCCESS,
                GuardExit::Closed | GuardExit::Fenced => ExitCode::from(exit::FAILURE),
            }
        }
    }
}

/// Fetches `path` from an agent's API and prints it: the JSON document with `json`, otherwise
/// `render`'s text. Shared by the commands that only read an agent (`predict`, `explain`,
/// `nodes`, ...).
fn show(
    command: &str,
    target: &client::Target,
    path: &str,
    json: bool,
    render: impl FnOnce(&serde_json::Value) -> String,
) -> ExitCode {
    request(
        command,
        target,
        hyper::Method::GET,
        path,
        std::time::Duration::from_secs(5),
        json,
        render,
    )
}

/// Sends a bodiless request to an agent's API and prints the answer as [`show`] does. Shared by
/// the commands that act (`service`, `path`, `image push`).
fn request(
    command: &str,
    target: &client::Target,
    method: hyper::Method,
    path: &str,
    timeout: std::time::Duration,
    json: bool,
    render: impl FnOnce(&serde_json::Value) -> String,
) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("godwit {command}: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match rt.block_on(client::request_json(target, method, path, timeout)) {
        Ok(doc) if json => {
            println!("{doc}");
            ExitCode::SUCCESS
        }
        Ok(doc) => {
            print!("{}", render(&doc));
            ExitCode::SUCCESS
        }
        Err((code, msg)) => {
            eprintln!("godwit {command}: {msg}");
            ExitCode::from(code)
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("godwit: {e}");
        ExitCode::from(e.exit_code())
    })
}
