//! The monitoring that ships in `packaging/`: the Prometheus alerting rules
//! (`prometheus/godwit-alerts.yml` and its promtool tests) and the Grafana dashboard
//! (`grafana/godwit-dashboard.json`) name only metrics a real agent exports, and the
//! dashboard's queries parse. The names are checked against the scrape of an agent with every
//! part on (probe, sealed gossip, transport, services, inventory, migration, coordinator),
//! once it leads its own group and its policy has sampled and fitted a forecast, so that the
//! series the rules compare (a node's load against its threshold) are really there.
//!
//! Needs root (the agent's services runtime), and `promtool` (Debian package prometheus).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use godwit_tests::*;
use serde_json::Value;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .join("packaging")
}

/// The metric names of an exposition as Prometheus stores them: every sample's name, and every
/// declared family's (a counter family `x` as `x_total`), so that a family with no series yet
/// (no failover or migration has happened) counts as exported.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                // OpenMetrics names a counter family without `_total`, the text format
                // (what a plain GET gets) with it.
                names.insert(match kind {
                    "counter" if !name.ends_with("_total") => format!("{name}_total"),
                    _ => name.to_string(),
                });
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if end > 0 {
                names.insert(line[..end].to_string());
            }
        }
    }
    names
}

/// The metric names `text` mentions: words (runs of letters, digits, `_` and `:`) that start
/// with `godwit_` or `process_`.
fn metric_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("godwit_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// The value of the series `name` with no labels (`name` or `name{}`) in an exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n.strip_suffix("{}").unwrap_or(n) == name).then(|| v.trim().parse().ok())?
    })
}

/// The policy's gauges the alerting rules and the dashboard read.
const POLICY_GAUGES: [&str; 4] = [
    "godwit_policy_load_ratio",
    "godwit_policy_threshold_ratio",
    "godwit_policy_load_forecast_ratio",
    "godwit_policy_trigger_armed",
];

/// Every string in a JSON document.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The dashboard's panels, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Checks the dashboard's structure (Grafana 10 schema, a Prometheus data source variable and
/// a node variable that every query uses, panels that do not overlap) and returns each query.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!(
        schema >= 36,
        "schemaVersion {schema}: Grafana 10 writes 36 or later"
    );
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(var("instance")["type"], "query");
    assert_eq!(var("instance")["datasource"]["uid"], "${datasource}");

    let mut queries = Vec::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().expect("every panel has a title");
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(b[0] + b[2] <= 24, "{title}: wider than the grid");
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title, b));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "{title}: {expr} ignores the node variable"
            );
            queries.push(expr.to_string());
        }
    }
    queries
}

/// Runs `promtool check rules` on `exprs` as recording rules: PromQL that does not parse fails
/// here, not in front of an operator. Grafana's variables become what they stand for.
fn promtool_parses(exprs: &[String], dir: &Path) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*");
        let quoted = serde_json::to_string(&e).unwrap();
        rules += &format!("      - record: dashboard_query_{i}\n        expr: {quoted}\n");
    }
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "dashboard queries do not parse:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config that turns every collector on: one node on loopback that leads its own group.
fn full_agent(dir: &Path, slice: &ServiceSlice) -> Agent {
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    let ca = dir.join("ca");
    let tls = dir.join("tls");
    for args in [
        vec!["ca", "init", "--dir", ca.to_str().unwrap()],
        vec![
            "cert",
            "issue",
            "--node",
            &node,
            "--ca-dir",
            ca.to_str().unwrap(),
            "--out",
            tls.to_str().unwrap(),
        ],
    ] {
        let out = Command::new(godwit_bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "godwit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
    Agent::start(&format!(
        "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n\n\
         [gossip]\nlisten = \"127.0.0.1:{gossip}\"\nkeys = [\"{key}\"]\n\n\
         [transport]\nlisten = \"127.0.0.1:{quic}\"\ntls_dir = \"{tls}\"\n\n\
         {services}\n\
         [[inventory.interface]]\nname = \"loopback\"\niface = \"lo\"\n\n\
         [coordinator]\nenabled = true\nguard = false\n",
        gossip = free_port(),
        quic = free_port(),
        tls = tls.display(),
        services = slice.toml(&dir.join("state")),
    ))
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    require_root();
    let dir = std::env::temp_dir().join(unique("godwit-monitoring"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveDir(dir.clone());

    let text = std::fs::read_to_string(packaging().join("grafana/godwit-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    promtool_parses(&queries, &dir);

    let mut used: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut all = Vec::new();
    strings(&dashboard, &mut all);
    used.push((
        "godwit-dashboard.json".into(),
        metric_words(&all.join("\n")),
    ));
    for file in ["godwit-alerts.yml", "godwit-alerts.test.yml"] {
        let text = std::fs::read_to_string(packaging().join("prometheus").join(file)).unwrap();
        used.push((file.to_string(), metric_words(&text)));
    }
    for (file, names) in &used {
        assert!(
            names.len() >= 8,
            "{file}: only {names:?}: the check reads nothing"
        );
    }

    let slice = ServiceSlice::new();
    let agent = full_agent(&dir, &slice);
    // The coordinator's family appears once the node leads its own group; the policy's gauges
    // once it has sampled (the forecast once a model is fitted, after 20 samples).
    let mut last = String::new();
    let body = wait_for(Duration::from_secs(60), || {
        let (code, body) = http_get(agent.addr, "/metrics").ok()?;
        last = format!("{code}\n{body}");
        let leads = body.lines().any(|l| {
            l.split_once(' ').is_some_and(|(name, v)| {
                name.split('{').next() == Some("godwit_coordinator_leader")
                    && v.parse::<f64>() == Ok(1.0)
            })
        });
        let policy = POLICY_GAUGES.iter().all(|g| sample(&body, g).is_some());
        (code == 200 && leads && policy).then_some(body)
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent never led its group with every policy gauge ({POLICY_GAUGES:?}):\n\
             {last}\n{}",
            agent.log()
        )
    });
    promtool_check(&body);
    // The figures GodwitNodeOverThreshold compares are fractions of capacity.
    let [load, threshold, forecast, armed] = POLICY_GAUGES.map(|g| sample(&body, g).unwrap());
    assert!(
        threshold > 0.0 && threshold <= 1.0,
        "threshold {threshold} is not a fraction of capacity"
    );
    assert!(
        (0.0..=1.5).contains(&load) && forecast.is_finite(),
        "load {load}, forecast {forecast}: not a fraction of capacity"
    );
    assert!(armed == 0.0 || armed == 1.0, "trigger armed = {armed}");
    eprintln!(
        "policy: load {load:.3}, forecast {forecast:.3}, threshold {threshold:.3}, armed {armed}"
    );
    let exported = exported_names(&body);

    let mut missing = Vec::new();
    for (file, names) in &used {
        for name in names.difference(&exported) {
            missing.push(format!("{file}: {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "names the agent does not export:\n  {}\nexported:\n  {}\nagent log:\n{}",
        missing.join("\n  "),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  "),
        agent.log()
    );
    let total: usize = used.iter().map(|(_, n)| n.len()).sum();
    eprintln!(
        "{total} metric names in the dashboard and rules, all among the {} the agent exports",
        exported.len()
    );
}

#[test]
fn name_extraction() {
    let om = "# HELP godwit_fences Fences.\n# TYPE godwit_fences counter\n\
              # TYPE godwit_failovers_total counter\n\
              # TYPE godwit_lease_remaining_seconds gauge\n\
              godwit_lease_remaining_seconds 4.5\nprocess_resident_memory_bytes 1\n# EOF\n";
    let names: Vec<String> = exported_names(om).into_iter().collect();
    assert_eq!(
        names,
        [
            "godwit_failovers_total",
            "godwit_fences_total",
            "godwit_lease_remaining_seconds",
            "process_resident_memory_bytes"
        ]
    );
    assert_eq!(sample(om, "godwit_lease_remaining_seconds"), Some(4.5));
    assert_eq!(sample(om, "godwit_lease_remaining"), None);
    assert_eq!(sample("x{a=\"b\"} 1\n", "x"), None);
    assert_eq!(sample("x{} 0.25\n", "x"), Some(0.25));
    let words = metric_words(
        r#"sum(increase(godwit_fences_total{job="godwit"}[15m])) / godwit-alerts.yml process_x"#,
    );
    assert_eq!(
        words.into_iter().collect::<Vec<_>>(),
        ["godwit_fences_total", "process_x"]
    );
}
