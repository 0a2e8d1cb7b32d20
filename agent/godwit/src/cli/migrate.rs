//! `godwit migrate SERVICE --to NODE`: an agent moves a managed service to another node; its
//! progress shows as it runs (stderr), and the report ends it: predicted against actual rounds,
//! bytes, time and downtime, and where the service runs now.
//!
//! The command is a client of an agent's transport (QUIC, mutual TLS under the cluster CA, the
//! `"control"` service): the agent starts a migration only for a caller whose certificate it
//! verified, and audits it under that name. By default it calls the local agent (the node,
//! transport address and tls_dir of the agent's configuration) and presents that node's own
//! certificate (`<tls_dir>/<node>.pem`, which needs read access to the node's key);
//! `--operator NAME` presents an operator's (`godwit cert issue --operator`). From a
//! workstation, `--agent NODE --transport-addr HOST:PORT` names the agent to call: the name is
//! the one its certificate must carry, checked in the handshake.
//!
//! Every error that a flag would fix names the flag.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::exit;
use crate::config::Config;
use crate::migrate::control::{self, Answer, MigrateCall};
use crate::migrate::{MigrateError, Progress, SwitchMode};
use crate::transport::{Endpoint, Identity, IdentityFiles, TransportError};

/// Where the agent's configuration usually is (the systemd unit's).
const DEFAULT_CONFIG: &str = "/etc/godwit/godwit.toml";
/// At most this often a progress line, unless the phase changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Args)]
pub(super) struct MigrateArgs {
    /// The managed service to move.
    service: String,
    /// The node to move it to.
    #[arg(long, value_name = "NODE")]
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
    /// The agent to call, which runs the service now: its node name (`[node] name`), which
    /// the certificate answering at the transport address must carry. Default the
    /// configuration's node; another node needs --transport-addr too.
    #[arg(long, value_name = "NODE")]
    agent: Option<String>,
    /// The called agent's transport address (QUIC over UDP: its `[transport] advertise`,
    /// else its `listen`), as IP:PORT or HOST:PORT. Default the configuration's.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    transport_addr: Option<SocketAddr>,
    /// Where the certificates are (ca.pem and the identity's files); default the
    /// configuration's `[transport] tls_dir`.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Present this node's certificate (`<node>.pem`, `<node>.key`); default the
    /// configuration's node (this host's).
    #[arg(long, value_name = "NODE", conflicts_with = "operator")]
    node: Option<String>,
    /// Present this operator's certificate (`<name>.operator.pem`, `<name>.operator.key`).
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
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

/// `--transport-addr`: an IP address and port, or a host name and port resolved now.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let usage = "HOST:PORT or IP:PORT, such as node-b.example:9748 or 192.0.2.11:9748";
    if !text.contains(':') {
        return Err(format!("{text:?} has no port: {usage}"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("{text:?}: {e} ({usage})")),
    }
}

/// Who the command calls, where, and as whom.
#[derive(Debug)]
struct Plan {
    /// The called agent's node name (checked against its certificate).
    agent: String,
    /// Its transport address.
    addr: SocketAddr,
    /// The caller's certificate: an operator's (`Some(name)`) or a node's.
    operator: Option<String>,
    /// The name the caller presents.
    name: String,
    /// Its files.
    files: IdentityFiles,
}

/// A problem the caller can fix, and the exit code it gets.
#[derive(Debug)]
struct Unfit {
    code: u8,
    message: String,
}

fn unfit(code: u8, message: String) -> Unfit {
    Unfit { code, message }
}

/// Works out the [`Plan`] from the flags and the configuration (`cfg`, read from `config`;
/// `None` when no file was found and `cfg` is the embedded default); reads nothing but the
/// identity's files' metadata, so that a missing file is named with the flag that fixes it.
fn plan(args: &MigrateArgs, cfg: &Config, config: Option<&Path>) -> Result<Plan, Unfit> {
    let local = cfg.node_name();
    let agent = match (&args.agent, config) {
        (Some(a), _) => a.clone(),
        // A workstation: nothing says which agent to call, and this host's name is no agent's.
        (None, None) if args.operator.is_some() => {
            return Err(unfit(
                exit::USAGE,
                format!(
                    "no configuration ({DEFAULT_CONFIG} does not exist) names the agent to call: \
                     pass --agent NODE and --transport-addr HOST:PORT (the agent that runs {}), \
                     or --config FILE",
                    args.service
                ),
            ))
        }
        (None, _) => local.clone(),
    };
    let addr = match args.transport_addr {
        Some(a) => a,
        None if agent != local || config.is_none() && args.agent.is_some() => {
            let whose = match config {
                Some(c) => format!("{} configures node {local}, not {agent}", c.display()),
                None => format!("no configuration ({DEFAULT_CONFIG}) says where {agent} is"),
            };
            return Err(unfit(
                exit::USAGE,
                format!(
                    "{whose}: pass --transport-addr HOST:PORT with {agent}'s transport address \
                     (its [transport] advertise, else listen)"
                ),
            ));
        }
        None => {
            let a = cfg.transport.advertise.unwrap_or(cfg.transport.listen);
            if a.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], a.port()))
            } else {
                a
            }
        }
    };
    let dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| cfg.transport.tls_dir.clone());
    let dir_from = if args.cert_dir.is_some() {
        "--cert-dir"
    } else {
        "[transport] tls_dir"
    };
    let (name, files) = match &args.operator {
        Some(op) => (op.clone(), IdentityFiles::operator_in_dir(&dir, op)),
        None => {
            let node = args.node.clone().unwrap_or_else(|| local.clone());
            let files = IdentityFiles::in_dir(&dir, &node);
            (node, files)
        }
    };
    let who = match &args.operator {
        Some(op) => format!("operator {op}"),
        None => format!("node {name}"),
    };
    let fix = match &args.operator {
        Some(op) => format!(
            "pass --cert-dir DIR with the directory `godwit cert issue --operator {op}` wrote"
        ),
        None => "pass --cert-dir DIR where it is, --node NODE for another node's certificate, \
                 or --operator NAME to present an operator's"
            .to_string(),
    };
    if !files.ca.exists() {
        return Err(unfit(
            exit::CONFIG,
            format!(
                "no cluster CA certificate {} ({dir_from} {}): {fix}",
                files.ca.display(),
                dir.display()
            ),
        ));
    }
    if !files.cert.exists() {
        return Err(unfit(
            exit::CONFIG,
            format!(
                "no certificate for {who} in {} ({dir_from}; looked for {}): {fix}",
                dir.display(),
                files.cert.display()
            ),
        ));
    }
    if let Err(e) = std::fs::File::open(&files.key) {
        let fix = match (e.kind(), &args.operator) {
            (std::io::ErrorKind::PermissionDenied, None) => {
                "run as root or the agent's user, or pass --operator NAME with your own \
                 certificate"
                    .to_string()
            }
            (std::io::ErrorKind::PermissionDenied, Some(_)) => {
                "make the key readable by this user (it is yours alone: mode 0600)".to_string()
            }
            _ => fix,
        };
        return Err(unfit(
            exit::CONFIG,
            format!(
                "cannot read the key of {who}, {}: {e}: {fix}",
                files.key.display()
            ),
        ));
    }
    Ok(Plan {
        agent,
        addr,
        operator: args.operator.clone(),
        name,
        files,
    })
}

/// A hint naming the flags that fix a failed call to `agent` at `addr`.
fn connect_hint(e: &MigrateError, agent: &str, addr: SocketAddr) -> Option<String> {
    let MigrateError::Transport(t) = e else {
        return None;
    };
    Some(match t {
        TransportError::Connect { reason, .. } => {
            if let Some(theirs) = reason.strip_prefix("the server says it is ") {
                format!("the agent at {addr} is {theirs}: pass --agent {theirs}")
            } else if let Some(theirs) = reason
                .split("is only valid for ")
                .nth(1)
                // rustls writes `DnsName("n1.node.godwit")`; a node's name is a DNS label.
                .map(|names| {
                    names
                        .trim_start_matches("DnsName(\"")
                        .trim_start_matches('"')
                })
                .filter(|names| names.contains(".node.godwit"))
                .and_then(|names| names.split(".node.godwit").next())
                .filter(|n| {
                    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                format!("the agent at {addr} is {theirs}: pass --agent {theirs}")
            } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
                format!(
                    "the certificate at {addr} is not {agent}'s: pass --agent with the node \
                     name of the agent at that address, or --transport-addr with {agent}'s"
                )
            } else if ["UnknownIssuer", "unknown issuer", "BadSignature"]
                .iter()
                .any(|w| reason.contains(w))
            {
                "that agent's certificate is of another CA than this ca.pem: pass --cert-dir \
                 with this cluster's"
                    .to_string()
            } else {
                format!(
                    "is {agent}'s agent running, with its transport on {addr}? pass \
                     --transport-addr HOST:PORT (its [transport] advertise) and --agent NODE"
                )
            }
        }
        TransportError::Refused(_) => format!(
            "{agent} refused this certificate (another CA, or listed in its tls_dir/deny): \
             pass --cert-dir with this cluster's certificates, or --operator NAME"
        ),
        _ => return None,
    })
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
    let plan = match plan(&args, &cfg, config.as_deref()) {
        Ok(p) => p,
        Err(u) => {
            eprintln!("godwit migrate: {}", u.message);
            return ExitCode::from(u.code);
        }
    };
    let identity = match &plan.operator {
        Some(op) => Identity::load_operator(op, &plan.files),
        None => Identity::load(&plan.name, &plan.files),
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "godwit migrate: no identity to present: {e} (pass --cert-dir with the \
                 directory `godwit cert issue` wrote, or --operator NAME)"
            );
            return ExitCode::from(exit::CONFIG);
        }
    };
    let (agent, addr) = (plan.agent, plan.addr);
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
            eprintln!(
                "godwit migrate: refused by {agent}: {why}; nothing was tried, {} runs where it did",
                args.service
            );
            ExitCode::from(exit::NOPERM)
        }
        Ok(Answer::Error(why)) => {
            eprintln!("godwit migrate: {agent}: {why}");
            ExitCode::from(exit::FAILURE)
        }
        Err(e) => {
            match connect_hint(&e, &agent, addr) {
                Some(hint) => eprintln!("godwit migrate: {e}\n  {hint}"),
                None => eprintln!("godwit migrate: {e}"),
            }
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

/// Where the service runs after the move the report `doc` describes, from its `result`:
/// `committed` (the target), `refused: ...` (nothing tried), or `failed: ...`, where a failure
/// before the commit leaves it on the source, and one after it says which way the hand-off
/// went (given back: the source; unanswered: neither until the target answers).
pub(super) fn whereabouts(doc: &Value) -> String {
    let word =
        |k: &str, none: &'static str| doc[k].as_str().filter(|s| !s.is_empty()).unwrap_or(none);
    let service = word("service", "the service");
    let (from, to) = (word("from", "the source"), word("to", "the target"));
    let result = doc["result"].as_str().unwrap_or("");
    if result == "committed" {
        format!("{service} runs on {to} (the target)")
    } else if result.starts_with("refused") {
        format!("nothing was tried: {service} runs where it did, on {from} (the source)")
    } else if result.contains("unresolved, the service runs nowhere") {
        format!(
            "{service} runs on neither node until {to} answers: {from} settles the hand-off \
             in the background (its journal keeps the move); `godwit services` on each node \
             shows where it runs"
        )
    } else if result.contains("the service runs here again") {
        format!("{service} runs on {from} (the source) again: {to} gave it back")
    } else if result.starts_with("failed") && result.contains("no service") {
        format!("{from} has no service {service}: nothing was moved")
    } else if result.starts_with("failed") {
        format!(
            "{service} stays on {from} (the source): the move stopped before the commit, and \
             {to} keeps nothing of it"
        )
    } else {
        format!("unknown: `godwit services` on {from} and {to} shows where {service} runs")
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

/// A count from the report, or `none` where the report has none.
fn count(v: &Value) -> String {
    v.as_u64()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "none".into())
}

/// Seconds from the report as milliseconds, or `what` where the report has none.
fn millis(v: &Value, what: &str) -> String {
    v.as_f64()
        .map(|s| format!("{:.0} ms", s * 1e3))
        .unwrap_or_else(|| what.into())
}

/// The report: the result and where the service runs, the path and the rounds, then
/// predicted against actual. A figure the report does not have is a word, or its line is left
/// out: never `null`.
pub(super) fn render(doc: &Value) -> String {
    let mut out = String::new();
    let t = &doc["transfer"];
    let word = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    };
    let _ = writeln!(
        out,
        "{} from {} to {}: {}",
        word(&doc["service"]),
        word(&doc["from"]),
        word(&doc["to"]),
        word(&doc["result"])
    );
    let _ = writeln!(out, "where it runs: {}", whereabouts(doc));
    let measured = doc["rtt_ms"].as_f64().is_some_and(|r| r > 0.0)
        || doc["bandwidth_bytes_per_second"]
            .as_f64()
            .is_some_and(|b| b > 0.0);
    if measured {
        let _ = writeln!(
            out,
            "path: rtt {:.2} ms, {:.1} MB/s; state {:.1} MiB, dirty {:.2} MB/s; mode {}",
            doc["rtt_ms"].as_f64().unwrap_or(0.0),
            doc["bandwidth_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            doc["state_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            doc["dirty_bytes_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            t["mode"].as_str().unwrap_or("not chosen"),
        );
    }
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
    let rounds = t["rounds"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if !rounds.is_empty() {
        let _ = writeln!(
            out,
            "{:>5} {:>12} {:>12} {:>10} {:>9}",
            "ROUND", "BYTES", "WIRE", "DIRTY PG", "SECONDS"
        );
    }
    for r in rounds {
        let _ = writeln!(
            out,
            "{:>5} {:>12} {:>12} {:>10} {:>9}",
            count(&r["round"]),
            count(&r["bytes"]),
            count(&r["wire_bytes"]),
            count(&r["dirty_pages"]),
            r["seconds"]
                .as_f64()
                .map(|s| format!("{s:.3}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    if t.is_object() {
        // The hold for the mode it ran in (with the service's own stop, intermittent), the
        // rest of the cut-over as the last moves measured it, and the service's own start; a
        // stop or start never measured is not in it, and that is said.
        let unmeasured = match (
            t["mode"]
                .as_str()
                .filter(|_| doc["predicted_downtime_s"].is_number()),
            doc["stop_estimate_s"].is_number(),
            doc["start_estimate_s"].is_number(),
        ) {
            (Some(_), _, false) | (Some("intermittent"), false, _) => {
                " (stop/start time not yet measured)"
            }
            _ => "",
        };
        let _ = writeln!(
            out,
            "rounds: predicted {} actual {}; downtime: predicted {}{unmeasured} actual {}; \
             bytes {}; total {:.2} s",
            count(&doc["predicted_rounds"]),
            count(&doc["actual_rounds"]),
            millis(&doc["predicted_downtime_s"], "none"),
            millis(&doc["downtime_seconds"], "none"),
            count(&t["bytes"]),
            doc["total_seconds"].as_f64().unwrap_or(0.0),
        );
    } else {
        let _ = writeln!(
            out,
            "no state was sent; total {:.2} s",
            doc["total_seconds"].as_f64().unwrap_or(0.0)
        );
    }
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
    use crate::migrate::agent::MigrationReport;
    use clap::Parser;

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

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: MigrateArgs,
    }

    fn args(extra: &[&str]) -> MigrateArgs {
        let mut argv = vec!["migrate", "redis", "--to", "node-b"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    /// A host's configuration: node-a, its transport advertised at 192.0.2.10:9748, its
    /// certificates in `tls`.
    fn host(tls: &Path) -> Config {
        Config::parse(
            &format!(
                "[node]\nname = \"node-a\"\n[transport]\nlisten = \"0.0.0.0:9748\"\n\
                 advertise = \"192.0.2.10:9748\"\ntls_dir = \"{}\"\n",
                tls.display()
            ),
            "test",
        )
        .unwrap()
    }

    fn report(result: &str) -> Value {
        let mut doc = serde_json::to_value(MigrationReport {
            id: "redis-1".into(),
            service: "redis".into(),
            from: "node-a".into(),
            to: "node-b".into(),
            requested_by: "operator alice".into(),
            result: result.into(),
            ..MigrationReport::default()
        })
        .unwrap();
        doc["total_seconds"] = 0.25.into();
        doc
    }

    #[test]
    fn failure_reports_print_no_null_and_say_where_the_service_runs() {
        // The real report's shape when a move fails early: no transfer, no prediction, no
        // downtime, no compression.
        let doc = report("failed: peer: the target refused: redis exists there");
        assert!(doc["transfer"].is_null() && doc["predicted_rounds"].is_null());
        let text = render(&doc);
        assert!(!text.contains("null"), "{text}");
        assert!(
            text.contains("where it runs: redis stays on node-a (the source)"),
            "{text}"
        );
        assert!(text.contains("no state was sent"), "{text}");
        // A failure after some rounds, with figures missing from the estimate and the rounds.
        let mut doc = report("failed: the copy differs from the source in 1: [\"x\"]");
        doc["rtt_ms"] = 0.4.into();
        doc["transfer"] = serde_json::json!({
            "mode": "transitional",
            "rounds": [serde_json::to_value(crate::migrate::RoundStats::default()).unwrap(),
                       {"round": 1, "bytes": null, "seconds": null}],
            "estimate": {"predicted_downtime_s": null},
            "bytes": 4096,
            "cutover": {"freeze_s": 0.002, "kill_s": null},
        });
        let text = render(&doc);
        assert!(!text.contains("null"), "{text}");
        assert!(text.contains("rounds: predicted none actual 0"), "{text}");
        assert!(
            text.contains("downtime: predicted none actual none"),
            "{text}"
        );
        assert!(text.contains("freeze 2 | "), "{text}");
        assert!(text.contains("stays on node-a (the source)"), "{text}");
        // Committed: on the target.
        let mut doc = report("committed");
        doc["predicted_rounds"] = 3.into();
        doc["downtime_seconds"] = 0.096.into();
        doc["transfer"] = serde_json::json!({"rounds": [], "estimate": {}, "bytes": 1});
        let text = render(&doc);
        assert!(!text.contains("null"), "{text}");
        assert!(
            text.contains("where it runs: redis runs on node-b (the target)"),
            "{text}"
        );
        assert!(
            text.contains("predicted 3 actual 0; downtime: predicted none actual 96 ms"),
            "{text}"
        );
    }

    #[test]
    fn where_it_runs_follows_the_result_the_migrator_writes() {
        // The results as the source writes them (`failed: {error}`), from the errors' own text.
        let failed = |e: MigrateError| report(&format!("failed: {e}"));
        let cases = [
            (report("committed"), "runs on node-b (the target)"),
            (
                report("refused: a migration of redis is already under way"),
                "nothing was tried: redis runs where it did, on node-a",
            ),
            (
                failed(MigrateError::GivenBack("not healthy in 20 ms".into())),
                "redis runs on node-a (the source) again: node-b gave it back",
            ),
            (
                failed(MigrateError::Unresolved("no answer".into())),
                "runs on neither node until node-b answers",
            ),
            (
                failed(MigrateError::Unmovable("no service \"redis\" here".into())),
                "node-a has no service redis: nothing was moved",
            ),
            (
                failed(MigrateError::Peer("closed".into())),
                "redis stays on node-a (the source): the move stopped before the commit",
            ),
        ];
        for (doc, want) in cases {
            let got = whereabouts(&doc);
            assert!(got.contains(want), "{}: {got}", doc["result"]);
            assert!(render(&doc).contains(want));
        }
        // Nothing known: no null, no guess.
        let got = whereabouts(&Value::Null);
        assert!(got.starts_with("unknown") && !got.contains("null"), "{got}");
    }

    #[test]
    fn a_workstation_names_the_agent_it_calls() {
        let a = args(&[
            "--operator",
            "alice",
            "--agent",
            "node-a",
            "--transport-addr",
            "192.0.2.10:9748",
            "--cert-dir",
            "/nonexistent",
        ]);
        assert_eq!(a.agent.as_deref(), Some("node-a"));
        assert_eq!(a.transport_addr, Some("192.0.2.10:9748".parse().unwrap()));
        // Host names resolve; a missing port or an unknown name says what is wanted.
        assert_eq!(
            parse_addr("localhost:9748").unwrap().port(),
            9748,
            "a host name and port"
        );
        let e = parse_addr("192.0.2.10").unwrap_err();
        assert!(e.contains("no port") && e.contains("HOST:PORT"), "{e}");
        assert!(Cli::try_parse_from(["m", "s", "--to", "b", "--transport-addr", "x"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let (ca, tls) = (dir.path().join("ca"), dir.path().join("tls"));
        crate::transport::init_ca(&ca, "t").unwrap();
        crate::transport::issue_operator(&ca, "alice", &tls).unwrap();
        let default = Config::parse("", "default").unwrap();
        let on = |extra: &[&str]| {
            let mut v = vec!["--cert-dir", tls.to_str().unwrap()];
            v.extend_from_slice(extra);
            args(&v)
        };
        // From a workstation (no configuration file): the agent and its address from the flags,
        // and the operator's certificate loads.
        let p = plan(
            &on(&[
                "--operator",
                "alice",
                "--agent",
                "node-a",
                "--transport-addr",
                "192.0.2.10:9748",
            ]),
            &default,
            None,
        )
        .unwrap();
        assert_eq!(
            (p.agent.as_str(), p.addr),
            ("node-a", "192.0.2.10:9748".parse().unwrap())
        );
        Identity::load_operator("alice", &p.files).unwrap();
        // Without --agent, or without its address, the error names the flags.
        let e = plan(&on(&["--operator", "alice"]), &default, None).unwrap_err();
        assert_eq!(e.code, exit::USAGE);
        assert!(
            e.message.contains("--agent NODE") && e.message.contains("--transport-addr"),
            "{}",
            e.message
        );
        let e = plan(
            &on(&["--operator", "alice", "--agent", "node-a"]),
            &default,
            None,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("pass --transport-addr HOST:PORT with node-a's"),
            "{}",
            e.message
        );
        // On a host: its own agent by default, at its advertised address; another agent needs
        // its address.
        let cfg = host(&tls);
        let conf = Path::new("/etc/godwit/godwit.toml");
        let p = plan(&on(&["--operator", "alice"]), &cfg, Some(conf)).unwrap();
        assert_eq!(
            (p.agent.as_str(), p.addr),
            ("node-a", "192.0.2.10:9748".parse().unwrap())
        );
        let e = plan(
            &on(&["--operator", "alice", "--agent", "node-c"]),
            &cfg,
            Some(conf),
        )
        .unwrap_err();
        assert!(
            e.message.contains("configures node node-a, not node-c")
                && e.message.contains("--transport-addr"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_certificates_name_the_flag_that_fixes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, tls) = (dir.path().join("ca"), dir.path().join("tls"));
        crate::transport::init_ca(&ca, "t").unwrap();
        crate::transport::issue_operator(&ca, "alice", &tls).unwrap();
        let cfg = host(&tls);
        let conf = Some(Path::new("/etc/godwit/godwit.toml"));
        // This node has no certificate in tls_dir (only alice's is there).
        let e = plan(&args(&[]), &cfg, conf).unwrap_err();
        assert_eq!(e.code, exit::CONFIG);
        assert!(
            e.message.contains("no certificate for node node-a in")
                && e.message.contains("pass --cert-dir")
                && e.message.contains("--operator NAME"),
            "{}",
            e.message
        );
        // Another operator's, or a directory with no CA.
        let e = plan(&args(&["--operator", "bob"]), &cfg, conf).unwrap_err();
        assert!(
            e.message.contains("no certificate for operator bob")
                && e.message.contains(
                    "--cert-dir DIR with the directory `godwit cert issue --operator bob`"
                ),
            "{}",
            e.message
        );
        let e = plan(
            &args(&["--operator", "alice", "--cert-dir", "/nonexistent"]),
            &cfg,
            conf,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("no cluster CA certificate /nonexistent/ca.pem (--cert-dir")
                && e.message.contains("pass --cert-dir"),
            "{}",
            e.message
        );
        // A node's certificate and key, once issued, are found.
        crate::transport::issue_node_for(&ca, "node-a", &tls, 30).unwrap();
        let p = plan(&args(&[]), &cfg, conf).unwrap();
        Identity::load(&p.name, &p.files).unwrap();
    }

    #[test]
    fn failed_calls_name_the_flags_that_fix_them() {
        let addr: SocketAddr = "192.0.2.10:9748".parse().unwrap();
        let connect = |reason: &str| {
            MigrateError::Transport(TransportError::Connect {
                node: "node-a".into(),
                addr,
                reason: reason.into(),
            })
        };
        let hint = |e: MigrateError| connect_hint(&e, "node-a", addr).unwrap();
        assert!(hint(connect("the server says it is node-b")).contains("pass --agent node-b"));
        let h = hint(connect(
            "the cryptographic handshake failed: error 42: invalid peer certificate: \
             NotValidForName",
        ));
        assert!(
            h.contains("pass --agent") && h.contains("--transport-addr"),
            "{h}"
        );
        // rustls's words for a certificate of another node.
        let h = hint(connect(
            "the cryptographic handshake failed: error 42: invalid peer certificate: \
             certificate not valid for name \"node-a.node.godwit\"; certificate is only valid \
             for DnsName(\"node-b.node.godwit\")",
        ));
        assert!(h.contains("is node-b: pass --agent node-b"), "{h}");
        let h = hint(connect(
            "invalid peer certificate: certificate not valid for name \"node-a.node.godwit\"; \
             certificate is only valid for node-b.node.godwit or x.operator.godwit",
        ));
        assert!(h.ends_with("is node-b: pass --agent node-b"), "{h}");
        // The agent's certificate is of another CA than ours (same subject: a bad signature).
        let h = hint(connect(
            "the cryptographic handshake failed: error 51: invalid peer certificate: BadSignature",
        ));
        assert!(h.contains("another CA") && h.contains("--cert-dir"), "{h}");
        let h = hint(connect("no handshake within 5s"));
        assert!(h.contains("--transport-addr HOST:PORT"), "{h}");
        let h = hint(MigrateError::Transport(TransportError::Refused(
            "deny".into(),
        )));
        assert!(h.contains("--cert-dir"), "{h}");
        assert!(connect_hint(&MigrateError::Peer("x".into()), "node-a", addr).is_none());
    }
}
