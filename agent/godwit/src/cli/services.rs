//! `godwit services` and `godwit service start|stop|freeze|thaw NAME`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct ServicesArgs {
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct ServiceArgs {
    /// What to do.
    #[arg(value_parser = ["start", "stop", "freeze", "thaw"])]
    action: String,
    /// The service.
    name: String,
    #[command(flatten)]
    api: super::client::ActOn,
}

pub(super) fn list(args: ServicesArgs) -> ExitCode {
    super::show(
        "services",
        &args.api.target(),
        "/v1/services",
        args.json,
        render,
    )
}

/// One line per service: state, health, node, cgroup, CPU, memory and dirty rate.
pub(super) fn render(doc: &Value) -> String {
    if doc["runtime"] == false {
        return format!(
            "{}\n",
            doc["why"]
                .as_str()
                .unwrap_or("this node runs no managed services")
        );
    }
    let mut out = format!(
        "{:<16} {:<9} {:<10} {:<12} {:>6} {:>7} {:>6} {:>9} {:>10} {:>8}  CGROUP\n",
        "SERVICE",
        "STATE",
        "HEALTH",
        "NODE",
        "EPOCH",
        "PID",
        "CPU",
        "MEM MiB",
        "DIRTY MB/s",
        "RESTARTS"
    );
    for s in doc["services"].as_array().into_iter().flatten() {
        let f = |k: &str, scale: f64, digits: usize| {
            s[k].as_f64()
                .map(|v| format!("{:.*}", digits, v / scale))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:<10} {:<12} {:>6} {:>7} {:>6} {:>9} {:>10} {:>8}  {}",
            s["name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["health"].as_str().unwrap_or("?"),
            s["node"].as_str().unwrap_or("?"),
            s["epoch"]
                .as_u64()
                .map(|e| e.to_string())
                .unwrap_or("-".into()),
            s["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or("-".into()),
            f("cpu_cores", 1.0, 2),
            f("memory_bytes", 1024.0 * 1024.0, 1),
            f("dirty_bytes_per_second", 1e6, 2),
            s["restarts"],
            s["cgroup"].as_str().unwrap_or("-"),
        );
    }
    out
}

pub(super) fn act(args: ServiceArgs) -> ExitCode {
    let path = format!("/v1/services/{}/{}", args.name, args.action);
    let name = args.name.clone();
    super::request(
        "service",
        &args.api.target(),
        hyper::Method::POST,
        &path,
        Duration::from_secs(60),
        false,
        move |doc| {
            format!(
                "{name}: {} ({})\n",
                doc["state"].as_str().unwrap_or("?"),
                doc["health"].as_str().unwrap_or("?")
            )
        },
    )
}
