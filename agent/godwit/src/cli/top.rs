//! `godwit top`: processes and containers by CPU, from a running agent's `/v1/snapshot` or,
//! with `--standalone`, from probes loaded by this command itself.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::client::{self, ClientError, Target};
use super::exit;
use crate::config::Config;
use crate::probe::Sampler;

#[derive(Debug, clap::Args)]
pub(super) struct TopArgs {
    #[command(flatten)]
    api: client::ReadFrom,
    /// Load the probes in this process instead of asking an agent (needs root for BPF).
    #[arg(long)]
    standalone: bool,
    /// Print one table (or document) and exit.
    #[arg(long)]
    once: bool,
    /// Print JSON: `{"processes": [...], "containers": [...]}`.
    #[arg(long)]
    json: bool,
    /// Rows per table.
    #[arg(long, short = 'n', default_value_t = 20)]
    rows: usize,
    /// Refresh period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Configuration for --standalone (probe mode, roots); default: embedded.
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
}

pub(super) fn run(args: TopArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("godwit top: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    rt.block_on(async move {
        match run_async(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, msg)) => {
                eprintln!("godwit top: {msg}");
                ExitCode::from(code)
            }
        }
    })
}

type TopError = ClientError;

async fn run_async(args: TopArgs) -> Result<(), TopError> {
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut source = if args.standalone {
        let cfg =
            Config::load(args.config.as_deref()).map_err(|e| (exit::CONFIG, e.to_string()))?;
        let mut sc = cfg.sampler();
        sc.interval = interval;
        let mut sampler = Sampler::new(sc).map_err(|e| (exit::UNAVAILABLE, e.to_string()))?;
        if let Some(reason) = sampler.fallback_reason() {
            eprintln!("godwit top: using procfs: {reason}");
        }
        // Rates need two samples.
        sampler.sample();
        tokio::time::sleep(interval).await;
        Source::Standalone(Box::new(sampler))
    } else {
        Source::Agent(args.api.target())
    };
    loop {
        let doc = source.fetch().await?;
        if args.json {
            let out = serde_json::json!({
                "processes": doc.get("processes").cloned().unwrap_or(Value::Null),
                "containers": doc.get("containers").cloned().unwrap_or(Value::Null),
            });
            println!("{out}");
        } else {
            let mut text = String::new();
            if !args.once {
                text.push_str("\x1b[H\x1b[2J");
            }
            render(&doc, args.rows, &mut text);
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
        }
        if args.once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

enum Source {
    Agent(Target),
    Standalone(Box<Sampler>),
}

impl Source {
    async fn fetch(&mut self) -> Result<Value, TopError> {
        match self {
            Source::Agent(target) => {
                client::request_json(
                    target,
                    hyper::Method::GET,
                    "/v1/snapshot",
                    Duration::from_secs(5),
                )
                .await
            }
            Source::Standalone(s) => {
                s.drain_events();
                serde_json::to_value(s.sample()).map_err(|e| (exit::FAILURE, e.to_string()))
            }
        }
    }
}

fn mib(v: Option<f64>) -> String {
    v.map(|b| format!("{:.1}", b / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "-".into())
}

fn rate(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into())
}

/// Renders the two tables (processes, containers), each sorted by CPU, into `out`.
pub(super) fn render(doc: &Value, rows: usize, out: &mut String) {
    use std::fmt::Write as _;
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(node) = doc.get("node") {
        let _ = writeln!(
            out,
            "{}  cpu {:.1}%  mem {:.1}%  power {:.1} W ({})  source {}",
            s(node, "hostname"),
            f(node, "cpu_utilization").unwrap_or(0.0) * 100.0,
            f(node, "memory_utilization").unwrap_or(0.0) * 100.0,
            f(node, "power_watts").unwrap_or(0.0),
            s(node, "power_source"),
            doc.pointer("/probe/source")
                .and_then(Value::as_str)
                .unwrap_or("?"),
        );
    }
    let _ = writeln!(
        out,
        "\n{:>8} {:<16} {:>7} {:>9} {:>10} {:>9}  CMDLINE",
        "PID", "COMM", "CPU%", "RSS MiB", "DIRTY MB/s", "WFLT/s"
    );
    let mut procs: Vec<&Value> = doc
        .get("processes")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    procs.sort_by(|a, b| {
        f(b, "cpu_cores")
            .unwrap_or(0.0)
            .total_cmp(&f(a, "cpu_cores").unwrap_or(0.0))
    });
    for p in procs.iter().take(rows) {
        let mut cmd = s(p, "cmdline");
        cmd.truncate(60);
        let _ = writeln!(
            out,
            "{:>8} {:<16.16} {:>7.1} {:>9} {:>10.2} {:>9}  {}",
            p.get("pid").and_then(Value::as_u64).unwrap_or(0),
            s(p, "comm"),
            f(p, "cpu_cores").unwrap_or(0.0) * 100.0,
            mib(f(p, "rss_bytes")),
            f(p, "dirty_bytes_per_second").unwrap_or(0.0) / 1e6,
            rate(f(p, "write_faults_per_second")),
            cmd,
        );
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<24} {:>5} {:>7} {:>9} {:>10} {:>9}  CGROUP",
        "RUNTIME", "CONTAINER", "PROCS", "CPU%", "MEM MiB", "DIRTY MB/s", "WFLT/s"
    );
    let mut cs: Vec<&Value> = doc
        .get("containers")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    cs.sort_by(|a, b| {
        f(b, "cpu_cores")
            .unwrap_or(0.0)
            .total_cmp(&f(a, "cpu_cores").unwrap_or(0.0))
    });
    for c in cs.iter().take(rows) {
        let _ = writeln!(
            out,
            "{:<12} {:<24.24} {:>5} {:>7.1} {:>9} {:>10.2} {:>9}  {}",
            s(c, "runtime"),
            s(c, "name"),
            c.get("processes").and_then(Value::as_u64).unwrap_or(0),
            f(c, "cpu_cores").unwrap_or(0.0) * 100.0,
            mib(f(c, "memory_bytes")),
            f(c, "dirty_bytes_per_second").unwrap_or(0.0) / 1e6,
            rate(f(c, "write_faults_per_second")),
            s(c, "cgroup_path"),
        );
    }
}
