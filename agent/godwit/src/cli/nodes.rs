//! `godwit nodes`: the mesh as this node's agent sees it.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct NodesArgs {
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: NodesArgs) -> ExitCode {
    super::show("nodes", &args.api.target(), "/v1/nodes", args.json, render)
}

/// One line per member: liveness, site, load, age of the last heartbeat, generation.
pub(super) fn render(doc: &Value) -> String {
    let mut out = format!(
        "{:<20} {:<8} {:<12} {:>6} {:>6} {:>10} {:>9}  {:<22} GENERATION\n",
        "NODE", "STATE", "SITE", "CPU", "MEM", "DIRTY MB/s", "HB AGE", "GOSSIP"
    );
    for m in doc["members"].as_array().into_iter().flatten() {
        let s = &m["summary"];
        let pct = |v: &Value| {
            v.as_f64()
                .map(|x| format!("{:.0}%", x * 100.0))
                .unwrap_or("-".into())
        };
        let name = m["id"]["node_id"].as_str().unwrap_or("?");
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<12} {:>6} {:>6} {:>10} {:>9}  {:<22} {}",
            if m["is_self"].as_bool() == Some(true) {
                format!("{name} *")
            } else {
                name.to_string()
            },
            m["liveness"].as_str().unwrap_or("?"),
            s["site"].as_str().unwrap_or("-"),
            pct(&s["load"]["cpu"]),
            pct(&s["load"]["memory"]),
            s["load"]["dirty_bytes_per_sec"]
                .as_f64()
                .map(|v| format!("{:.2}", v / 1e6))
                .unwrap_or("-".into()),
            format!(
                "{:.1}s",
                m["heartbeat_age_ms"].as_f64().unwrap_or(0.0) / 1000.0
            ),
            m["gossip_addr"].as_str().unwrap_or("?"),
            m["id"]["generation"],
        );
    }
    if let Some(seal) = doc["seal"].as_object() {
        let _ = writeln!(out, "\nsealed transport: {}", Value::Object(seal.clone()));
    }
    if let Some(primary) = doc["keyring"]["primary"].as_str() {
        let keys: Vec<&str> = doc["keyring"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "keyring: primary {primary}, accepts {}",
            keys.join(" ")
        );
    }
    out
}
