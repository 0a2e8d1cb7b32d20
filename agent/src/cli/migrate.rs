//! `godwit migrate SERVICE --to NODE`: the local agent moves a managed service to another node
//! and reports predicted against actual rounds, bytes, time and downtime.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::config::DEFAULT_API_PORT;

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The managed service to move.
    service: String,
    /// The node to move it to.
    #[arg(long)]
    to: String,
    /// transitional (live rounds, then a short freeze), intermittent (stop, copy, start) or
    /// auto (what the pre-copy model says meets the downtime target).
    #[arg(long, default_value = "auto", value_parser = ["auto", "transitional", "intermittent"])]
    mode: String,
    /// Downtime target, milliseconds.
    #[arg(long, default_value_t = 300)]
    downtime_target: u64,
    /// Address of the local agent's API.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)))]
    addr: SocketAddr,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Re-hash the whole state on both sides at the cut-over (slower) instead of comparing
    /// the hash tree the rounds kept.
    #[arg(long)]
    full_verify: bool,
}

pub fn run(args: MigrateArgs) -> ExitCode {
    let path = format!(
        "/v1/services/{}/migrate?to={}&mode={}&downtime_ms={}{}",
        args.service,
        args.to,
        args.mode,
        args.downtime_target,
        if args.full_verify { "&verify=full" } else { "" }
    );
    super::request(
        "migrate",
        args.addr,
        hyper::Method::POST,
        &path,
        Duration::from_secs(3600),
        args.json,
        render,
    )
}

/// The report: the rounds, then predicted against actual.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let t = &doc["transfer"];
    let _ = writeln!(
        out,
        "{} from {} to {}: {}",
        doc["service"].as_str().unwrap_or("?"),
        doc["from"].as_str().unwrap_or("?"),
        doc["to"].as_str().unwrap_or("?"),
        doc["result"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "path: rtt {:.2} ms, {:.1} MB/s; state {:.1} MiB, dirty {:.2} MB/s; mode {}",
        doc["rtt_ms"].as_f64().unwrap_or(0.0),
        doc["bandwidth_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        doc["state_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        doc["dirty_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        t["mode"].as_str().unwrap_or("-"),
    );
    let z = &doc["compression"];
    if z.is_object() {
        let _ = writeln!(
            out,
            "compression: {}; {:.1} MB/s of state expected against {:.1} MB/s raw",
            z["level"]
                .as_i64()
                .map(|l| format!("zstd level {l}"))
                .unwrap_or_else(|| "none".into()),
            z["expected_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            z["path_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        );
    }
    let _ = writeln!(
        out,
        "{:>5} {:>12} {:>12} {:>10} {:>9}",
        "ROUND", "BYTES", "WIRE", "DIRTY PG", "SECONDS"
    );
    for r in t["rounds"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:>5} {:>12} {:>12} {:>10} {:>9.3}",
            r["round"],
            r["bytes"],
            r["wire_bytes"],
            r["dirty_pages"],
            r["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    let est = &t["estimate"];
    let _ = writeln!(
        out,
        "rounds: predicted {} actual {}; downtime: predicted {} actual {}; bytes {}; total {:.2} s",
        doc["predicted_rounds"],
        doc["actual_rounds"],
        est["predicted_downtime_s"]
            .as_f64()
            .map(|d| format!("{:.0} ms", d * 1e3))
            .unwrap_or("-".into()),
        doc["downtime_seconds"]
            .as_f64()
            .map(|d| format!("{:.0} ms", d * 1e3))
            .unwrap_or("-".into()),
        t["bytes"],
        doc["total_seconds"].as_f64().unwrap_or(0.0),
    );
    let c = &t["cutover"];
    if c.is_object() {
        let ms = |k: &str| {
            c[k].as_f64()
                .map(|s| format!("{:.0}", s * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "cut-over (ms): freeze {} | last round {} | verify {} (hash here {}, there {}) | \
             commit {} (fsync {}, exchange {}) | decide {} | told {} | kill {} | hand-off {} \
             (spawned {}, healthy {}, VIP {})",
            ms("freeze_s"),
            ms("final_round_s"),
            ms("verify_s"),
            ms("verify_source_hash_s"),
            ms("verify_target_hash_s"),
            ms("commit_s"),
            ms("commit_sync_s"),
            ms("commit_exchange_s"),
            ms("decide_s"),
            ms("decided_s"),
            ms("kill_s"),
            ms("handoff_s"),
            ms("target_spawn_s"),
            ms("target_healthy_s"),
            ms("target_vip_s"),
        );
    }
    out
}
