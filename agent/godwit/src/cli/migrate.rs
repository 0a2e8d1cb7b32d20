//! `godwit migrate SERVICE --to NODE`: the local agent moves a managed service to another node;
//! its progress shows as it runs (stderr), and the report ends it: predicted against actual
//! rounds, bytes, time and downtime.
//!
//! The command is a client of the agent's transport (QUIC, mutual TLS under the cluster CA,
//! the `"control"` service): the agent starts a migration only for a caller whose certificate
//! it verified, and audits it under that name. By default the command presents this node's own
//! certificate (`<tls_dir>/<node>.pem` from the agent's configuration, which needs read access
//! to the node's key); `--operator NAME` presents an operator's (`godwit cert issue --operator`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::exit;
use crate::migrate::control::{self, Answer, MigrateCall};
use crate::migrate::{Progress, SwitchMode};
use crate::transport::{Endpoint, Identity, IdentityFiles};

/// Where the agent's configuration usually is (the systemd unit's).
const DEFAULT_CONFIG: &str = "/etc/godwit/godwit.toml";
/// At most this often a progress line, unless the phase changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub(super) struct MigrateArgs {
    /// The managed service to move.
    service: String,
    /// The node to move it to.
    #[arg(long)]
    to: String,
    /// transitional (live rounds, then a short freeze), intermittent (stop, copy, start) or
    /// auto (what the pre-copy model says meets the downtime target).
    #[arg(long, default_value = "auto", value_parser = ["auto", "transitional", "intermittent"])]
    mode: String,
    /// Downtime target, milliseconds. A move that commits but exceeds it exits with status 3
    /// and says so.
    #[arg(long, default_value_t = 300)]
    downtime_target: u64,
    /// The agent's configuration: its node name, transport address and tls_dir. Default
    /// /etc/godwit/godwit.toml when it exists, else the embedded default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where the certificates are (ca.pem and the identity's files); default the
    /// configuration's `[transport] tls_dir`.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Present this node's certificate (`<node>.pem`, `<node>.key`); default the local
    /// agent's own node.
    #[arg(long, conflicts_with = "operator")]
    node: Option<String>,
    /// Present this operator's certificate (`<name>.operator.pem`, `<name>.operator.key`).
    #[arg(long)]
    operator: Option<String>,
    /// The local agent's transport address (QUIC); default the configuration's
    /// `[transport] advertise`, else its `listen`.
    #[arg(long)]
    transport_addr: Option<SocketAddr>,
    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Re-hash the whole state on both sides at the cut-over (slower) instead of comparing
    /// the hash tree the rounds kept.
    #[arg(long)]
    full_verify: bool,
    /// Replace a service of the same name on the target: its definition there and its state
    /// are replaced by this one's (without it, the target refuses the move).
    #[arg(long)]
    replace: bool,
    /// The coordinator's fencing token. No coordinator exists yet: the agent refuses a token
    /// it cannot check.
    #[arg(long, hide = true)]
    fencing_token: Option<u64>,
}

pub(super) fn run(args: MigrateArgs) -> ExitCode {
    let config = args.config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let cfg = match super::load(config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let agent = cfg.node_name();
    let dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| cfg.transport.tls_dir.clone());
    let identity = match &args.operator {
        Some(name) => Identity::load_operator(name, &IdentityFiles::operator_in_dir(&dir, name)),
        None => {
            let node = args.node.as_deref().unwrap_or(&agent);
            Identity::load(node, &IdentityFiles::in_dir(&dir, node))
        }
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            eprintln!("godwit migrate: no identity to present: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let addr = args.transport_addr.unwrap_or_else(|| {
        let a = cfg.transport.advertise.unwrap_or(cfg.transport.listen);
        if a.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        } else {
            a
        }
    });
    let mode = match args.mode.as_str() {
        "transitional" => Some(SwitchMode::Transitional),
        "intermittent" => Some(SwitchMode::Intermittent),
        _ => None,
    };
    let call = MigrateCall {
        service: args.service.clone(),
        to: args.to.clone(),
        mode,
        downtime_ms: args.downtime_target,
        full_verify: args.full_verify,
        replace: args.replace,
        fencing_token: args.fencing_token,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("godwit migrate: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let who = identity.principal().to_string();
    eprintln!(
        "godwit migrate: {} -> {} through {agent} at {addr}, as {who}",
        args.service, args.to
    );
    let answer = rt.block_on(async {
        let bind = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = Endpoint::client(bind, identity)?;
        let mut shown = Shown::default();
        control::migrate(&endpoint, addr, &agent, call, |p| shown.show(p)).await
    });
    match answer {
        Ok(Answer::Report { report, committed }) => {
            if args.json {
                println!("{report}");
            } else {
                print!("{}", render(&report));
            }
            ExitCode::from(report_status(committed, &report))
        }
        Ok(Answer::Refused(why)) => {
            eprintln!("godwit migrate: refused by {agent}: {why}");
            ExitCode::from(exit::NOPERM)
        }
        Ok(Answer::Error(why)) => {
            eprintln!("godwit migrate: {agent}: {why}");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => {
            eprintln!("godwit migrate: {e}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

/// Progress lines on stderr: at each phase change, and otherwise at most every
/// [`PROGRESS_EVERY`].
#[derive(Default)]
struct Shown {
    last: Option<(Instant, crate::migrate::Phase)>,
}

impl Shown {
    fn show(&mut self, p: &Progress) {
        let due = match self.last {
            None => true,
            Some((at, phase)) => phase != p.phase || at.elapsed() >= PROGRESS_EVERY,
        };
        if due {
            eprintln!("{}", p.line());
            self.last = Some((Instant::now(), p.phase));
        }
    }
}

/// The exit status of a report: 0 committed, [`exit::DOWNTIME_MISSED`] committed past its
/// downtime target, 1 failed.
fn report_status(committed: bool, report: &Value) -> u8 {
    match (committed, report["downtime_target_missed"].is_string()) {
        (true, false) => 0,
        (true, true) => exit::DOWNTIME_MISSED,
        (false, _) => exit::FAILURE,
    }
}

/// The report: the rounds, then predicted against actual.
pub(super) fn render(doc: &Value) -> String {
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
    // The hold for the mode it ran in (with the service's own stop, intermittent), the rest
    // of the cut-over as the last moves measured it, and the service's own start; a stop or
    // start never measured is not in it, and that is said.
    let unmeasured = match (
        t["mode"].as_str(),
        doc["stop_estimate_s"].is_number(),
        doc["start_estimate_s"].is_number(),
    ) {
        (_, _, false) | (Some("intermittent"), false, _) => " (stop/start time not yet measured)",
        _ => "",
    };
    let _ = writeln!(
        out,
        "rounds: predicted {} actual {}; downtime: predicted {}{unmeasured} actual {}; bytes {}; total {:.2} s",
        doc["predicted_rounds"],
        doc["actual_rounds"],
        doc["predicted_downtime_s"]
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
    if let Some(missed) = doc["downtime_target_missed"].as_str() {
        let _ = writeln!(out, "the move {missed}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_past_its_downtime_target_says_so_and_exits_3() {
        let doc = serde_json::json!({
            "service": "redis", "from": "a", "to": "b", "result": "committed",
            "transfer": {"mode": "intermittent", "rounds": [], "bytes": 1},
            "downtime_seconds": 1.77, "downtime_target_s": 0.3,
            "predicted_downtime_s": 0.117, "start_estimate_s": 0.8,
            "downtime_target_missed": "missed its downtime target: 1.77 s against 300 ms",
        });
        let text = render(&doc);
        assert!(
            text.contains("the move missed its downtime target: 1.77 s against 300 ms"),
            "{text}"
        );
        assert!(
            text.contains("predicted 117 ms (stop/start time not yet measured) actual 1770 ms"),
            "{text}"
        );
        assert_eq!(report_status(true, &doc), exit::DOWNTIME_MISSED);
        assert_eq!(report_status(false, &doc), exit::FAILURE);
        let mut met = doc.clone();
        met["downtime_target_missed"] = Value::Null;
        met["stop_estimate_s"] = 0.85.into();
        let text = render(&met);
        assert!(
            !text.contains("missed") && !text.contains("not yet"),
            "{text}"
        );
        assert_eq!(report_status(true, &met), 0);
        // Transitional: no stop, so only an unmeasured start is missing.
        let mut frozen = met.clone();
        frozen["transfer"]["mode"] = "transitional".into();
        frozen["stop_estimate_s"] = Value::Null;
        assert!(!render(&frozen).contains("not yet"));
        frozen["start_estimate_s"] = Value::Null;
        assert!(render(&frozen).contains("(stop/start time not yet measured)"));
    }
}
