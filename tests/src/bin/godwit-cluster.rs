//! `godwit-cluster`: the multi-node harness from the command line (`cargo xtask cluster` runs
//! it).
//!
//! ```text
//! godwit-cluster up --nodes N [--agent-bin PATH] [--extra-toml FILE]
//! godwit-cluster down [--all | --run RUN]
//! godwit-cluster list
//! ```
//!
//! `up` starts a detached cluster (see `godwit_tests::cluster`) and prints how to reach it; it
//! stays until `down`. `down` removes the runs `up` made; `down --all` also removes whatever
//! crashed test runs left (namespaces `gw-*`, cgroups, state); runs of live test processes are
//! left alone. `down --run RUN` removes that run, whoever owns it. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use godwit_tests::cluster::{self, Cluster};

const USAGE: &str = "usage:
  godwit-cluster up --nodes N [--agent-bin PATH] [--extra-toml FILE]
  godwit-cluster down [--all | --run RUN]
  godwit-cluster list";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("godwit-cluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "up" => up(rest),
        "down" => down(rest),
        "list" if rest.is_empty() => list(),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// The value after flag `args[*i]`, advancing `i`.
fn value<'a>(args: &'a [String], i: &mut usize) -> Result<&'a str> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .with_context(|| format!("{} needs a value\n{USAGE}", args[*i - 1]))
}

fn up(args: &[String]) -> Result<()> {
    let mut nodes = None;
    let mut agent_bin = None;
    let mut extra = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--nodes" => nodes = Some(value(args, &mut i)?.parse::<usize>().context("--nodes")?),
            "--agent-bin" => agent_bin = Some(PathBuf::from(value(args, &mut i)?)),
            "--extra-toml" => {
                let path = value(args, &mut i)?;
                extra =
                    Some(std::fs::read_to_string(path).with_context(|| format!("read {path}"))?);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
        i += 1;
    }
    let nodes = nodes.with_context(|| format!("--nodes is required\n{USAGE}"))?;
    let mut builder = Cluster::builder(nodes).detached();
    if let Some(bin) = agent_bin {
        builder = builder.agent_bin(bin);
    }
    if let Some(extra) = extra {
        builder = builder.extra_toml(move |_| extra.clone());
    }
    let c = builder.try_start()?;
    println!("cluster run {} is up: {} nodes", c.run_id(), c.len());
    println!(
        "  this host is {} on the cluster network (uplink {})",
        c.uplink_addr(),
        c.state().uplink
    );
    for n in c.nodes() {
        println!(
            "  {}: http://{}/metrics  netns {}  log {}",
            n.name,
            n.api,
            n.netns,
            n.log.display()
        );
    }
    println!(
        "  a shell in a node: ip netns exec {} bash",
        c.node(1).netns
    );
    println!("  remove it: cargo xtask cluster down");
    c.detach();
    Ok(())
}

fn down(args: &[String]) -> Result<()> {
    let (all, run) = match args {
        [] => (false, None),
        [a] if a == "--all" => (true, None),
        [r, id] if r == "--run" => (false, Some(id.as_str())),
        _ => bail!("{USAGE}"),
    };
    let report = cluster::down(run, all)?;
    for r in &report.runs {
        println!("removed run {r}");
    }
    for l in &report.leftovers {
        println!("removed leftover {l}");
    }
    for k in &report.kept {
        println!("kept run {k}: its test process still runs");
    }
    if report.runs.is_empty() && report.leftovers.is_empty() {
        println!("nothing to remove");
    }
    Ok(())
}

fn list() -> Result<()> {
    let runs = cluster::list();
    if runs.is_empty() {
        println!("no cluster runs");
    }
    for info in runs {
        match &info.state {
            Ok(st) => {
                let owner = match st.owner {
                    cluster::Owner::Detached => "detached".to_string(),
                    cluster::Owner::Process { pid, .. } if info.alive => format!("pid {pid}"),
                    cluster::Owner::Process { pid, .. } => format!("pid {pid} (gone)"),
                };
                println!(
                    "{}  {} nodes  {}.0/24  owner {owner}",
                    st.run,
                    st.namespaces.len() - 1,
                    cluster::subnet_addr(st.subnet, 0)
                        .to_string()
                        .trim_end_matches(".0")
                );
            }
            Err(e) => println!("{}  unreadable state: {e}", info.run),
        }
    }
    Ok(())
}
