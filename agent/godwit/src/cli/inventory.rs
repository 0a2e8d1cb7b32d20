//! `godwit inventory`: what the `[inventory]` patterns resolve to on a running agent.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct InventoryArgs {
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: InventoryArgs) -> ExitCode {
    super::show(
        "inventory",
        &args.api.target(),
        "/v1/inventory",
        args.json,
        render,
    )
}

/// One line per item: kind, pattern, item.
pub(super) fn render(doc: &Value) -> String {
    let mut out = format!("{:<10} {:<16} ITEM\n", "KIND", "PATTERN");
    let mut section = |kind: &str, key: &str, show: &dyn Fn(&Value) -> String| {
        for m in doc[key].as_array().into_iter().flatten() {
            let pattern = m["pattern"].as_str().unwrap_or("?");
            let items = m["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                let _ = writeln!(out, "{kind:<10} {pattern:<16} (none)");
            }
            for i in &items {
                let _ = writeln!(out, "{kind:<10} {pattern:<16} {}", show(i));
            }
        }
    };
    section("process", "processes", &|i| {
        format!(
            "{} {} {}",
            i["pid"],
            i["comm"].as_str().unwrap_or(""),
            i["cmdline"].as_str().unwrap_or("")
        )
    });
    section("container", "containers", &|i| {
        format!(
            "{} {} {}",
            i["runtime"].as_str().unwrap_or(""),
            i["name"].as_str().unwrap_or(""),
            i["cgroup"].as_str().unwrap_or("")
        )
    });
    section("device", "devices", &|i| {
        format!(
            "{} {} {} bytes",
            i["name"].as_str().unwrap_or(""),
            i["dev"].as_str().unwrap_or(""),
            i["size_bytes"]
        )
    });
    section("interface", "interfaces", &|i| {
        format!(
            "{} index {} {}",
            i["name"].as_str().unwrap_or(""),
            i["index"],
            i["operstate"].as_str().unwrap_or("")
        )
    });
    for s in doc["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<10} {:<16} {}",
            "service",
            "-",
            s["name"].as_str().unwrap_or("")
        );
    }
    out
}
