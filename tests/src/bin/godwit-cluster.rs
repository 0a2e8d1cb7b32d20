//! `godwit-cluster`: the multi-node harness from the command line (`cargo xtask cluster` runs
//! it).
//!
//! ```text
//! godwit-cluster up --nodes N [--agent-bin PATH] [--extra-toml FILE] [--bare]
//! godwit-cluster down [--all | --run RUN]
//! godwit-cluster list
//! ```
//!
//! `up` starts a detached cluster (see `godwit_tests::cluster`), waits until every node sees
//! every other alive, and prints how to reach each node from this host; it stays until `down`.
//! The nodes are one mesh: gossip seeded and sealed with a generated key, the transport with
//! certificates of a generated CA (`Builder::mesh`). `--bare` starts lone agents instead, with
//! only `[node]`, `[api]` and the extra TOML. `down` removes the runs `up` made; `down --all` also removes whatever
//! crashed test runs left (namespaces `gw-*`, cgroups, state); runs of live test processes are
//! left alone. `down --run RUN` removes that run, whoever owns it. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use godwit_tests::cluster::{self, Cluster};

/// How long `up` waits for the nodes of a mesh to see each other alive.
const MESH_TIMEOUT: Duration = Duration::from_secs(60);

const USAGE: &str = "usage:
  godwit-cluster up --nodes N [--agent-bin PATH] [--extra-toml FILE] [--bare]
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
    let mut bare = false;
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
            "--bare" => bare = true,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
        i += 1;
    }
    let nodes = nodes.with_context(|| format!("--nodes is required\n{USAGE}"))?;
    let mut builder = Cluster::builder(nodes).detached();
    if !bare {
        builder = builder.mesh();
    }
    if let Some(bin) = agent_bin {
        builder = builder.agent_bin(bin);
    }
    if let Some(extra) = extra {
        builder = builder.extra_toml(move |_| extra.clone());
    }
    let c = builder.try_start()?;
    if !bare {
        if let Err(e) = c.try_wait_meshed(MESH_TIMEOUT) {
            for n in c.nodes() {
                let log = c.log(n.index);
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "--- last lines of {}'s agent log ---\n{}",
                    n.name,
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
            let run = c.run_id().to_string();
            drop(c);
            cluster::down(Some(&run), false)?;
            return Err(e.context(format!("run {run} removed again")));
        }
    }
    print!("{}", describe(&c));
    c.detach();
    Ok(())
}

/// What `up` prints: the run, then per node how to reach it from this host.
fn describe(c: &Cluster) -> String {
    let run = c.run_id();
    let bin = c.agent_bin().display();
    let n1 = c.node(1);
    let other = &c.node(c.len().min(2)).name;
    let mut out = match c.mesh() {
        Some(m) => format!(
            "cluster run {run} is up: {} nodes, one mesh\n  gossip key {}\n  cluster CA {}\n",
            c.len(),
            m.keys_file.display(),
            m.ca_dir.display()
        ),
        None => format!("cluster run {run} is up: {} lone nodes (--bare)\n", c.len()),
    };
    out += &format!(
        "  this host is {} on the cluster network (uplink {})\n",
        c.uplink_addr(),
        c.state().uplink
    );
    for n in c.nodes() {
        out += &format!(
            "  {}: api {}  socket {}\n      gossip {}  transport {}  netns {}\n      \
             config {}  log {}\n",
            n.name,
            n.api,
            n.socket.display(),
            n.gossip,
            n.transport,
            n.netns,
            n.config.display(),
            n.log.display()
        );
    }
    out += &format!(
        "reads, over TCP:     {bin} nodes --addr {}\n\
         changes, as root:    {bin} path {other} --socket {}\n\
         migrate, as root:    {bin} migrate SERVICE --to {other} --config {}\n\
         a shell in a node:   ip netns exec {} bash\n\
         remove it:           cargo xtask cluster down --run {run}\n",
        n1.api,
        n1.socket.display(),
        n1.config.display(),
        n1.netns,
    );
    out
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
                    "{}  {} nodes  {}/24  owner {owner}  dir {}",
                    st.run,
                    st.namespaces.len() - 1,
                    cluster::subnet_addr(st.subnet, 0),
                    st.work_dir.display()
                );
            }
            Err(e) => println!("{}  unreadable state: {e}", info.run),
        }
    }
    Ok(())
}
