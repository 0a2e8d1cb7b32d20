//! `godwit cluster`: the coordination group (leader, term, voters, each node's lease and fence
//! state) and the placement log; `godwit node cordon|uncordon NODE`; `godwit fence NODE
//! --confirmed`.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct ClusterArgs {
    /// `pause` the coordinator's own moves (the policy still plans and says what it would
    /// do; moves already running finish; operators' moves and failover go on) or `resume`
    /// them. Written to the placement log: every later leader keeps to it. Without an
    /// action: show the group.
    #[arg(value_parser = ["pause", "resume"])]
    action: Option<String>,
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document (fields `leader`, `term`, `voters`, `nodes`, ...).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct NodeArgs {
    /// `cordon` (no service is placed there), `uncordon`, or `drain` (cordon, then move each of
    /// its services off through the coordinator, one at a time).
    #[arg(value_parser = ["cordon", "uncordon", "drain"])]
    action: String,
    /// The node.
    node: String,
    #[command(flatten)]
    api: super::client::ActOn,
}

#[derive(Debug, clap::Args)]
pub(super) struct FenceArgs {
    /// The node, which the operator has powered off: its services are restarted elsewhere.
    node: String,
    /// Says that the node is off. Without it nothing is done.
    #[arg(long)]
    confirmed: bool,
    #[command(flatten)]
    api: super::client::ActOn,
}

pub(super) fn show(args: ClusterArgs) -> ExitCode {
    if let Some(action) = &args.action {
        let target = match args.api.act_target() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("godwit cluster {action}: {e}");
                return ExitCode::from(super::exit::USAGE);
            }
        };
        return super::request(
            "cluster",
            &target,
            hyper::Method::POST,
            &format!("/v1/cluster/{action}"),
            Duration::from_secs(30),
            args.json,
            |doc| {
                let done = doc["outcome"].get("Applied").is_some();
                let what = match (doc["action"].as_str(), done) {
                    (Some("pause"), true) => "the coordinator's moves are paused",
                    (Some("pause"), false) => "the coordinator's moves were already paused",
                    (_, true) => "the coordinator's moves are resumed",
                    (_, false) => "the coordinator's moves were not paused",
                };
                format!("{what} (log index {})\n", doc["index"])
            },
        );
    }
    super::show(
        "cluster",
        &args.api.target(),
        "/v1/cluster",
        args.json,
        render,
    )
}

/// The group, then one line per node and per service.
pub(super) fn render(doc: &Value) -> String {
    let mut out = String::new();
    let list = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        "leader {}  term {}  voters [{}]  learners [{}]",
        doc["leader"].as_str().unwrap_or("none"),
        doc["term"],
        list(&doc["voters"]),
        list(&doc["learners"]),
    );
    let _ = writeln!(
        out,
        "this node {} ({}), applied {}, lease {}",
        doc["me"].as_str().unwrap_or("?"),
        doc["state"].as_str().unwrap_or("?"),
        doc["applied"],
        if doc["may_act"].as_bool() == Some(true) {
            "valid"
        } else if doc["lease"]["valid"].as_bool() == Some(true) {
            "valid (catching up with the log)"
        } else {
            "none: this node runs no service"
        }
    );
    if let Some(p) = doc["paused"].as_object() {
        let _ = writeln!(
            out,
            "the coordinator's moves are paused (by {}, log index {}): godwit cluster resume",
            p.get("by").and_then(Value::as_str).unwrap_or("?"),
            p.get("index").unwrap_or(&Value::Null)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<8} {:>12} {:<8} {:<9} {:>8}  ADDRESS",
        "NODE", "ROLE", "LEASE AGE", "FENCED", "CORDONED", "SERVICES"
    );
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>12} {:<8} {:<9} {:>8}  {}",
            n["name"].as_str().unwrap_or("?"),
            if n["voter"].as_bool() == Some(true) {
                "voter"
            } else {
                "learner"
            },
            n["lease_age_ms"]
                .as_u64()
                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                .unwrap_or("-".into()),
            if n["fenced"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            if n["cordoned"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            n["services"],
            n["addr"].as_str().unwrap_or("-"),
        );
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<20} {:>8} {:<8} {:<11} IN FLIGHT",
        "SERVICE", "NODE", "EPOCH", "HA", "WHY"
    );
    for s in doc["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<20} {:<20} {:>8} {:<8} {:<11} {}",
            s["name"].as_str().unwrap_or("?"),
            s["node"].as_str().unwrap_or("(none)"),
            s["epoch"],
            s["ha"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("?"),
            match s["intent"].as_object() {
                Some(i) => format!(
                    "to {} (epoch {})",
                    i.get("to").and_then(Value::as_str).unwrap_or("?"),
                    i.get("epoch").unwrap_or(&Value::Null)
                ),
                None => "-".into(),
            }
        );
    }
    out
}

pub(super) fn node(args: NodeArgs) -> ExitCode {
    let path = format!("/v1/cluster/nodes/{}/{}", args.node, args.action);
    if args.action == "drain" {
        return super::request(
            "node drain",
            &args.api.target(),
            hyper::Method::POST,
            &path,
            Duration::from_secs(3600),
            false,
            |doc| {
                let mut out = String::new();
                for m in doc["moves"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        out,
                        "{} -> {}: {}",
                        m["service"].as_str().unwrap_or("?"),
                        m["to"].as_str().unwrap_or("-"),
                        m["result"].as_str().unwrap_or("?")
                    );
                }
                out
            },
        );
    }
    act(&args.api, &path)
}

pub(super) fn fence(args: FenceArgs) -> ExitCode {
    if !args.confirmed {
        eprintln!(
            "godwit fence: fencing {} tells the cluster it is powered off and its services may \
             start elsewhere; say so with --confirmed",
            args.node
        );
        return ExitCode::from(super::exit::USAGE);
    }
    let path = format!("/v1/cluster/nodes/{}/fence?confirmed=true", args.node);
    act(&args.api, &path)
}

fn act(api: &super::client::ActOn, path: &str) -> ExitCode {
    super::request(
        "cluster",
        &api.target(),
        hyper::Method::POST,
        path,
        Duration::from_secs(30),
        false,
        |doc| {
            format!(
                "{} {}: {} (log index {})\n",
                doc["action"].as_str().unwrap_or("?"),
                doc["node"].as_str().unwrap_or("?"),
                doc["outcome"],
                doc["index"]
            )
        },
    )
}
