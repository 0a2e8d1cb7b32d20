//! `godwit explain`: the latest decisions of this node's view, with the numbers behind them —
//! why the threshold is what it is, whether the trigger fired and why, which services would
//! leave and why, and where they would go.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(super) struct ExplainArgs {
    #[command(flatten)]
    api: super::client::ReadFrom,
    /// Print the agent's JSON document (the view that went in and the plan that came out).
    #[arg(long)]
    json: bool,
    /// The whole cluster's plan, as this node computes it from gossip and the placement log,
    /// and the leader's decisions: which node fired and why, what leaves, where to, in which
    /// mode, what is pre-staged, and what was carried out or held back by the guard rails.
    #[arg(long)]
    cluster: bool,
}

pub(super) fn run(args: ExplainArgs) -> ExitCode {
    if args.cluster {
        return super::show(
            "explain",
            &args.api.target(),
            "/v1/cluster/plan",
            args.json,
            render_cluster,
        );
    }
    super::show(
        "explain",
        &args.api.target(),
        "/v1/decisions",
        args.json,
        render,
    )
}

fn num(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "-".into())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.1}%", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// Renders the latest plan, then the last one in which a trigger fired, as sentences with
/// their numbers.
pub(super) fn render(doc: &Value) -> String {
    let mut out = String::new();
    render_plans(doc, "last_trigger", &mut out);
    out
}

/// The latest plan, then the one under `last` (the last in which a trigger fired), if any.
fn render_plans(doc: &Value, last: &str, out: &mut String) {
    out.push_str("== latest sample ==\n");
    render_plan(&doc["plan"], out);
    render_switches(&doc["view"], out);
    if let Some(t) = doc[last].as_object() {
        let age = doc["taken_at_unix_ms"].as_f64().unwrap_or(0.0)
            - t["taken_at_unix_ms"].as_f64().unwrap_or(0.0);
        let _ = writeln!(out, "\n== last trigger, {:.1} s ago ==", age / 1000.0);
        render_plan(&t["plan"], out);
    }
}

/// Renders the cluster's plan and the leader's decisions.
pub(super) fn render_cluster(doc: &Value) -> String {
    let mut out = String::new();
    let leader = doc["leader"].as_str().unwrap_or("none known");
    let _ = writeln!(
        out,
        "this node {}; leader {}{}; act = {}{}",
        doc["me"].as_str().unwrap_or("?"),
        leader,
        if doc["leading"].as_bool() == Some(true) {
            " (this node: its decisions are the cluster's)"
        } else {
            " (the plan below is this node's own computation; the leader's decisions are on the leader)"
        },
        doc["act"],
        match doc["paused"].as_object() {
            Some(p) => format!(
                "; PAUSED by {} (godwit cluster resume)",
                p.get("by").and_then(Value::as_str).unwrap_or("?")
            ),
            None => String::new(),
        },
    );
    if doc["plan"].is_null() {
        out.push_str("no plan yet: the first sample has not come\n");
        return out;
    }
    out.push('\n');
    render_plans(doc, "last_fired", &mut out);
    let running = doc["running"].as_array().cloned().unwrap_or_default();
    if !running.is_empty() {
        let _ = writeln!(out, "\nmoves running: {}", running.len());
        for m in &running {
            let _ = writeln!(
                out,
                "  {} {} -> {}",
                m["service"].as_str().unwrap_or("?"),
                m["from"].as_str().unwrap_or("?"),
                m["to"].as_str().unwrap_or("?")
            );
        }
    }
    let copying = doc["copies_running"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !copying.is_empty() {
        let _ = writeln!(out, "\nimage copies running: {}", copying.len());
        for c in &copying {
            let _ = writeln!(
                out,
                "  image {} {} -> {} ({} bytes, for {})",
                short_image(&c["image"]),
                c["from"].as_str().unwrap_or("?"),
                c["to"].as_str().unwrap_or("?"),
                c["bytes"],
                joined(&c["services"]),
            );
        }
    }
    let copied = doc["copies_done"].as_array().cloned().unwrap_or_default();
    if !copied.is_empty() {
        let _ = writeln!(out, "\nimage copies done (latest last): {}", copied.len());
        for d in &copied {
            let c = &d["copy"];
            let _ = writeln!(
                out,
                "  image {} {} -> {} (for {}): {}: {}",
                short_image(&c["image"]),
                c["from"].as_str().unwrap_or("?"),
                c["to"].as_str().unwrap_or("?"),
                joined(&c["services"]),
                d["outcome"].as_str().unwrap_or("?"),
                d["reason"].as_str().unwrap_or(""),
            );
        }
    }
    let decisions = doc["decisions"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\ndecisions (latest last): {}", decisions.len());
    for d in &decisions {
        let how = match d["image"].as_str() {
            Some(_) => format!("image {}", short_image(&d["image"])),
            None => d["mode"].as_str().unwrap_or("?").to_string(),
        };
        let _ = writeln!(
            out,
            "  {} {} {} -> {} ({}): {}: {}\n    because {}",
            d["kind"].as_str().unwrap_or("?"),
            d["service"].as_str().unwrap_or("?"),
            d["from"].as_str().unwrap_or("?"),
            d["to"].as_str().unwrap_or("?"),
            how,
            d["outcome"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or(""),
            d["why"].as_str().unwrap_or("?"),
        );
    }
    out
}

/// Each node's past transitional switch latencies as a target, which its class label is
/// computed from.
fn render_switches(view: &Value, out: &mut String) {
    let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
    if nodes.is_empty() {
        return;
    }
    out.push_str("\nswitch latencies as a target (class label: p90 <= L_max, or no history):\n");
    for n in &nodes {
        let xs: Vec<f64> = n["switch_latencies_s"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let _ = match crate::policy::percentile(&xs, 0.9) {
            Some(p90) => writeln!(
                out,
                "  {}: p90 {:.0} ms of {} transitional switches (last {:.0} ms)",
                n["id"].as_str().unwrap_or("?"),
                p90 * 1e3,
                xs.len(),
                xs.last().copied().unwrap_or(f64::NAN) * 1e3,
            ),
            None => writeln!(
                out,
                "  {}: no transitional switch yet",
                n["id"].as_str().unwrap_or("?")
            ),
        };
    }
}

/// A planned move's mode and the target's label behind it.
fn mode_line(m: &Value) -> String {
    let l = &m["switch"]["label"];
    let label = match (l["label"].as_str(), l["p90_s"].as_f64()) {
        (Some(label), Some(p90)) => format!(
            "target {label}: p90 {:.0} ms of {} transitional switches against L_max {:.0} ms",
            p90 * 1e3,
            l["samples"],
            l["latency_max_s"].as_f64().unwrap_or(f64::NAN) * 1e3
        ),
        (Some(label), None) => format!("target {label}: no transitional switch yet"),
        _ => return String::new(),
    };
    format!(
        "    {} mode: {label}; pre-copy {}\n",
        m["mode"].as_str().unwrap_or("?"),
        m["switch"]["precopy"]["start"].as_str().unwrap_or("?"),
    )
}

/// An image id cut to its first 12 hex digits.
fn short_image(v: &Value) -> String {
    let id = v.as_str().unwrap_or("?");
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.char_indices()
        .nth(12)
        .map_or(hex, |(i, _)| &hex[..i])
        .to_string()
}

/// A JSON array of strings as `a, b`.
fn joined(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn render_plan(plan: &Value, out: &mut String) {
    for s in plan["sites"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "site {}: {} state; CPI = w_e*e_s + w_r*r_s = {} (e_s = mean power {} W / budget {} W = {}, r_s = {})",
            s["site"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            num(&s["cpi"]),
            num(&s["mean_power_w"]),
            num(&s["power_budget_w"]),
            num(&s["energy_ratio"]),
            num(&s["risk"]),
        );
    }
    for n in plan["nodes"].as_array().into_iter().flatten() {
        let t = &n["threshold"];
        let _ = writeln!(
            out,
            "\nnode {} ({}):",
            n["node"].as_str().unwrap_or("?"),
            n["status"].as_str().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "  threshold T_n = {}: T_base {} x energy factor {} x risk factor {}{}",
            pct(&t["threshold"]),
            pct(&t["base"]),
            num(&t["energy_factor"]),
            num(&t["risk_factor"]),
            if t["clamped"].as_bool() == Some(true) {
                " (clamped to [T_min, T_base])"
            } else {
                ""
            },
        );
        if let Some(tr) = n["trigger"].as_object() {
            let _ = writeln!(
                out,
                "  trigger: {} ({}): u_max now {}, forecast {}; {} of the last {} samples at or above T_n (k = {})",
                if tr["fired"].as_bool() == Some(true) { "FIRED" } else { "not fired" },
                tr["reason"].as_str().unwrap_or("?"),
                pct(&tr["u_max"]),
                pct(&tr["u_max_forecast"]),
                tr["above_in_window"],
                tr["n"],
                tr["k"],
            );
        }
        if let Some(sel) = n["selection"].as_object() {
            let _ = writeln!(
                out,
                "  leaving to bring u_max from {} under T_n - margin = {}: {} ({})",
                pct(&sel["projected_u_max"]),
                pct(&sel["target_util"]),
                sel["selected"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                if sel["reaches_target"].as_bool() == Some(true) {
                    "reaches it"
                } else {
                    "does not reach it"
                },
            );
            let substitutes: Vec<&str> = sel["substitutes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !substitutes.is_empty() {
                let _ = writeln!(
                    out,
                    "  in place of selected services that found no target: {}",
                    substitutes.join(", ")
                );
            }
            for c in sel["candidates"].as_array().into_iter().flatten() {
                // With the copy time weighed, the rank is LE per second of copy.
                let copy = if c["copy_s"].is_number() {
                    format!(
                        "  copy {:>8} s  rank LE/copy {:>9}",
                        num(&c["copy_s"]),
                        c["rank"]
                            .as_f64()
                            .map(|x| format!("{x:.5}"))
                            .unwrap_or_else(|| "-".into())
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "    {:<40} rho {:>7}  LE {:>7}{}{}",
                    c["service"].as_str().unwrap_or("?"),
                    num(&c["rho"]),
                    num(&c["le"]),
                    copy,
                    if c["eligible"].as_bool() == Some(false) {
                        "  (not eligible)"
                    } else {
                        ""
                    },
                );
            }
        }
    }
    let migrations = plan["migrations"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\nmigrations planned: {}", migrations.len());
    for m in &migrations {
        let chosen = &m["placement"]["chosen"];
        let _ = writeln!(
            out,
            "  {} {} -> {} ({}{}; rule {}{})",
            m["service"].as_str().unwrap_or("?"),
            m["from"].as_str().unwrap_or("?"),
            m["to"].as_str().unwrap_or("?"),
            m["mode"].as_str().unwrap_or("?"),
            if m["sends_image"].as_bool() == Some(true) {
                ", with image"
            } else {
                ""
            },
            m["placement"]["site_rule"].as_str().unwrap_or("?"),
            if chosen["copy_s"].is_number() {
                format!(", expected copy {} s", num(&chosen["copy_s"]))
            } else {
                String::new()
            },
        );
        out.push_str(&mode_line(m));
    }
    for u in plan["unplaced"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  cannot place: {u}");
    }
    for c in plan["prestage"]["copies"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  pre-stage image {} on {} ({} bytes, saves {} s for {})",
            c["image"].as_str().unwrap_or("?"),
            c["to"].as_str().unwrap_or("?"),
            c["bytes"],
            num(&c["benefit_s"]),
            c["services"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        );
    }
    for w in plan["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "warning: {}", w.as_str().unwrap_or(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_view_says_who_leads_what_fired_and_what_was_decided() {
        let doc = serde_json::json!({
            "taken_at_unix_ms": 10_000,
            "me": "n2", "leader": "n1", "leading": false, "act": true,
            "paused": {"index": 9, "by": "operator alice", "at_unix_ms": 0},
            "plan": {"nodes": [], "migrations": [{"service": "kv", "from": "n2", "to": "n3",
                "mode": "transitional", "placement": {"site_rule": "same_site"}}]},
            "last_fired": {"taken_at_unix_ms": 8_000, "plan": {"migrations": []}},
            "running": [{"service": "kv", "from": "n2", "to": "n3"}],
            "decisions": [{"kind": "migrate", "service": "kv", "from": "n2", "to": "n3",
                "mode": "transitional", "outcome": "paused",
                "reason": "the coordinator's moves are paused",
                "why": "n2 fired (confirmed): load 92% now"}],
        });
        let out = render_cluster(&doc);
        for want in [
            "this node n2; leader n1",
            "PAUSED by operator alice",
            "== latest sample ==",
            "kv n2 -> n3 (transitional",
            "== last trigger, 2.0 s ago ==",
            "moves running: 1",
            "migrate kv n2 -> n3 (transitional): paused",
            "because n2 fired (confirmed)",
        ] {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
        let none = render_cluster(&serde_json::json!({"me": "n1", "plan": null}));
        assert!(none.contains("no plan yet"), "{none}");
    }

    #[test]
    fn the_cluster_view_shows_image_copies_running_and_done() {
        let img = "ab".repeat(32);
        let copy = serde_json::json!({"image": img, "from": "n2", "to": "n3",
            "bytes": 8_388_608, "services": ["kv"]});
        let doc = serde_json::json!({
            "me": "n1", "leader": "n1", "leading": true, "act": true,
            "plan": {"nodes": [], "migrations": [], "prestage": {"copies": [
                {"image": img, "to": "n1", "bytes": 8_388_608, "benefit_s": 0.5,
                 "services": ["kv"]}]}},
            "copies_running": [copy],
            "copies_done": [{"copy": copy, "outcome": "committed",
                "reason": "n3 holds the image: 64 of its 64 chunks sent"}],
            "decisions": [{"kind": "prestage", "service": "kv", "image": img, "from": "n2",
                "to": "n3", "outcome": "started", "reason": "n2 pushes it to n3",
                "why": "kv likely to move to n3"}],
        });
        let out = render_cluster(&doc);
        for want in [
            "pre-stage image abababab",
            "image copies running: 1",
            "image abababababab n2 -> n3 (8388608 bytes, for kv)",
            "image copies done (latest last): 1",
            "(for kv): committed: n3 holds the image",
            "prestage kv n2 -> n3 (image abababababab): started",
        ] {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
    }

    #[test]
    fn prints_substitutes_and_copy_times() {
        let doc = serde_json::json!({
            "taken_at_unix_ms": 0,
            "plan": {
                "nodes": [{
                    "node": "n1",
                    "selection": {
                        "projected_u_max": 0.97,
                        "target_util": 0.75,
                        "selected": ["a"],
                        "reaches_target": false,
                        "substitutes": ["b"],
                        "candidates": [
                            {"service": "a", "rho": 0.9, "le": 0.4, "copy_s": 40.0,
                             "rank": 0.01, "eligible": true},
                            {"service": "b", "rho": 0.8, "le": 0.2, "eligible": true}
                        ]
                    }
                }],
                "migrations": [{
                    "service": "b", "from": "n1", "to": "n2", "mode": "transitional",
                    "sends_image": false,
                    "placement": {"site_rule": "relief", "chosen": {"copy_s": 2.5}}
                }]
            }
        });
        let out = render(&doc);
        assert!(
            out.contains("in place of selected services that found no target: b"),
            "{out}"
        );
        assert!(
            out.contains("copy   40.000 s  rank LE/copy   0.01000"),
            "{out}"
        );
        assert!(out.contains("rule relief, expected copy 2.500 s"), "{out}");
    }

    #[test]
    fn shows_the_targets_label_with_its_p90_and_samples() {
        let doc = serde_json::json!({
            "taken_at_unix_ms": 0,
            "view": {"nodes": [
                {"id": "n1", "switch_latencies_s": []},
                {"id": "n2", "switch_latencies_s": [0.1, 2.5, 3.0]},
            ]},
            "plan": {"nodes": [], "migrations": [{
                "service": "b", "from": "n1", "to": "n2", "mode": "intermittent",
                "placement": {"site_rule": "same_site"},
                "switch": {
                    "label": {"label": "negative", "p90_s": 3.0, "samples": 3,
                              "latency_max_s": 2.0},
                    "precopy": {"start": "iterate"}
                }
            }]}
        });
        let out = render(&doc);
        for want in [
            "intermittent mode: target negative: p90 3000 ms of 3 transitional switches \
             against L_max 2000 ms; pre-copy iterate",
            "n1: no transitional switch yet",
            "n2: p90 3000 ms of 3 transitional switches (last 3000 ms)",
        ] {
            assert!(out.contains(want), "{want:?} not in:\n{out}");
        }
    }
}
