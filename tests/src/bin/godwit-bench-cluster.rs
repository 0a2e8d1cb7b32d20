//! `godwit-bench-cluster`: the placement policy on real agents against the reactive static
//! threshold and no action, on the same traces (`cargo xtask bench cluster`; root).
//!
//! Four release agents in network namespaces, two sites (n1 n2 east, n3 n4 west), each giving
//! its services `--cpu` cores (enforced with the cgroup CPU limit, so an overloaded node is
//! really slower). The services are kvstores whose CPU load follows the simulator's scenario
//! (`sim::scenario::generate`: synthetic shapes and the recorded traces of `tests/traces`, the
//! simulator's 4-core nodes scaled down to `--cpu`), one step every `--step-ms`; the first one
//! is behind the VIP under a checking client. One node (n3) freezes at 5/8 of the run, as a
//! host that hangs. Each policy runs on a fresh cluster: `godwit` (the placement policy),
//! `reactive` (`[coordinator] policy = "reactive"`), `none` (`act = false`; the coordinator's
//! failover still restarts the frozen node's services). The simulator runs the same scenario
//! with its three policies for comparison.
//!
//! The client's verdict is taken twice: up to the failure (every acknowledged write must be
//! there: only moves happened) and after it (a service restarted from its image after its
//! node failed has lost what it held; `ha = "restart"` promises availability, not state).
//!
//! Overload is counted as the simulator counts it: node-steps in which the demand placed on a
//! live node exceeds its capacity (CPU here; the simulator also counts memory, which these
//! traces never fill).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use godwit_tests::bench::release_bin;
use godwit_tests::migrate_rig::{stop_client, KvOptions, MigrateRig, RigOptions};
use godwit_tests::sim::engine;
use godwit_tests::sim::policy::{NoAction, ReactiveStatic, SimPolicy};
use godwit_tests::sim::scenario::{self, Failure, GenParams, Scenario, SiteSpec};
use godwit_tests::sim::{godwit::Godwit, trace};
use godwit_tests::wait_for;
use serde_json::Value;

/// The simulator's node size, which the scenario's demands are in.
const SIM_CORES: f64 = 4.0;
const NODES: usize = 4;
const FROZEN: usize = 3;

struct Args {
    steps: usize,
    step_ms: u64,
    seed: u64,
    services: usize,
    cpu: f64,
    util: f64,
    policies: Vec<String>,
}

fn parse() -> Args {
    let mut a = Args {
        steps: 480,
        step_ms: 500,
        seed: 1,
        services: 8,
        cpu: 0.3,
        util: 0.65,
        policies: vec!["godwit".into(), "reactive".into(), "none".into()],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--steps" => a.steps = v.parse().expect("--steps N"),
            "--step-ms" => a.step_ms = v.parse().expect("--step-ms MS"),
            "--seed" => a.seed = v.parse().expect("--seed N"),
            "--services" => a.services = v.parse().expect("--services N"),
            "--cpu" => a.cpu = v.parse().expect("--cpu CORES"),
            "--util" => a.util = v.parse().expect("--util FRACTION"),
            "--policies" => a.policies = v.split(',').map(str::to_string).collect(),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// The scenario: the simulator's generator, four nodes in two sites whose energy and risk
/// stay neutral (the agents of one host all read the same power), the third node frozen at
/// 5/8 of the run.
fn scenario(a: &Args) -> Scenario {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("traces");
    let recorded = trace::load_dir(&dir).unwrap_or_else(|e| panic!("traces: {e}"));
    let mut sc = scenario::generate(
        &recorded,
        &GenParams {
            nodes: NODES,
            services: a.services,
            steps: a.steps,
            seed: a.seed,
            mean_utilisation: a.util,
            failures: 0,
        },
    );
    sc.sites = ["east", "west"]
        .iter()
        .map(|s| SiteSpec {
            name: s.to_string(),
            power_budget_watts: 1e6,
            risk: 0.0,
        })
        .collect();
    for (i, n) in sc.nodes.iter_mut().enumerate() {
        n.site = i / 2;
    }
    sc.failures = vec![Failure {
        step: a.steps * 5 / 8,
        node: FROZEN - 1,
    }];
    sc
}

/// What one policy did on the real cluster.
#[derive(Debug, Default)]
struct Real {
    overload_steps: f64,
    started: f64,
    committed: f64,
    failed: f64,
    failovers: f64,
    /// The client until the failure: writes acknowledged, lost, longest gap (migrations only).
    before: (u64, u64, u64),
    /// The client after the failure (a failover restarts a service from its image: what it
    /// held is lost when it ran on the failed node).
    after: (u64, u64, u64),
    /// Where the checked service ran when the node failed.
    kv_at_failure: String,
    wall_s: f64,
}

fn service_name(s: usize) -> String {
    if s == 0 {
        "kv".into()
    } else {
        format!("s{s}")
    }
}

/// The leader's placement: service name to node index.
fn placement(rig: &MigrateRig, leader: usize) -> BTreeMap<String, usize> {
    let doc = rig.c.json(leader, "/v1/cluster");
    doc["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let node = s["node"].as_str()?.trim_start_matches('n').parse().ok()?;
            Some((s["name"].as_str()?.to_string(), node))
        })
        .collect()
}

fn metric(rig: &MigrateRig, i: usize, series: &str) -> f64 {
    let (_, text) = rig.c.get(i, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(series)?;
            // A series without labels reads `name{} value`.
            rest.strip_prefix("{}").unwrap_or(rest).trim().parse().ok()
        })
        .unwrap_or(0.0)
}

fn write_load(path: &Path, cores: f64) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, format!("{:.4}", cores.clamp(0.0, 1.0)));
}

fn run_real(a: &Args, sc: &Scenario, policy: &str) -> Real {
    let started = Instant::now();
    let keys = match policy {
        "godwit" => "",
        "reactive" => "policy = \"reactive\"\n",
        "none" => "act = false\n",
        other => panic!("unknown policy {other}: godwit, reactive or none"),
    };
    let rig = MigrateRig::new(RigOptions {
        agent_bin: Some(release_bin("godwit", "cluster")),
        bin_dir: release_bin("kvstore", "cluster")
            .parent()
            .map(Path::to_path_buf),
        cpu_cores: a.cpu,
        sites: vec!["east".into(), "east".into(), "west".into(), "west".into()],
        coordinator_keys: keys.to_string(),
        ..RigOptions::coordinated(NODES)
    });
    for i in 1..=NODES {
        wait_for(Duration::from_secs(60), || {
            let doc = rig.c.json(i, "/v1/cluster");
            (doc["leader"] == "n1" && doc["may_act"] == true).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "n{i} never joined n1's group: {}",
                rig.c.json(i, "/v1/cluster")
            )
        });
    }
    let scale = a.cpu / SIM_CORES;
    let load_file = |rig: &MigrateRig, node: usize, s: usize| {
        rig.state_dir(node, &service_name(s)).join("data/load")
    };
    for s in 0..sc.services.len() {
        let node = sc.placement[s] + 1;
        write_load(&load_file(&rig, node, s), sc.demand(s, 0).cpu * scale);
        let spec = if s == 0 {
            // Room for both clients' keys (about 65,000 slots).
            let mut kv = rig.kv_spec(
                "kv",
                &KvOptions {
                    size: 32 << 20,
                    ..KvOptions::default()
                },
            );
            kv["command"]
                .as_array_mut()
                .unwrap()
                .extend(["--load-file".into(), "{state}/data/load".into()]);
            kv
        } else {
            let port = 7400 + s;
            serde_json::json!({
                "name": service_name(s),
                "command": [
                    rig.kvstore.display().to_string(),
                    "--listen", format!("127.0.0.1:{port}"),
                    "--state", "{state}/data/kv.state", "--size", (4u64 << 20).to_string(),
                    "--load-file", "{state}/data/load",
                ],
                "state": ["data"],
                "health": {"tcp": format!("127.0.0.1:{port}"), "interval_ms": 200},
            })
        };
        if s == 0 {
            rig.add(node, &spec, Duration::from_secs(30));
        } else {
            let (code, body) = rig
                .c
                .act(node, "POST", "/v1/services", Some(&spec.to_string()))
                .unwrap();
            assert_eq!(code, 201, "{body}");
        }
    }
    wait_for(Duration::from_secs(30), || {
        (placement(&rig, 1).len() == sc.services.len()).then_some(())
    })
    .expect("every service placed");
    let mut client = Some(rig.client_with(3600, 100.0, "c"));
    let verdict = |check: &Value| {
        (
            check["acknowledged"].as_u64().unwrap_or(0),
            check["missing_acknowledged"].as_u64().unwrap_or(u64::MAX),
            check["longest_gap_ms"].as_u64().unwrap_or(0),
        )
    };
    let step = Duration::from_millis(a.step_ms);
    let mut r = Real::default();
    let mut frozen = false;
    let t0 = Instant::now();
    for t in 0..sc.steps {
        if sc.failures.iter().any(|f| f.step == t) {
            // The client's verdict on the moves so far, before the failure can lose anything.
            if let Some(c) = client.take() {
                let (check, _) = stop_client(c);
                r.before = verdict(&check);
                if r.before.1 != 0 {
                    eprintln!("\n[{policy}] client before the failure: {check}");
                }
            }
            r.kv_at_failure = placement(&rig, 1)
                .get("kv")
                .map(|n| format!("n{n}"))
                .unwrap_or_default();
            client = Some(rig.client_with(3600, 100.0, "d"));
            rig.freeze_node(FROZEN, true);
            frozen = true;
            eprintln!("\n[{policy}] step {t}: n{FROZEN} frozen");
        }
        let placed = placement(&rig, 1);
        let mut demand = [0.0f64; NODES + 1];
        for s in 0..sc.services.len() {
            let d = sc.demand(s, t).cpu * scale;
            if let Some(&node) = placed.get(&service_name(s)) {
                if (1..=NODES).contains(&node) {
                    demand[node] += d;
                    if !(frozen && node == FROZEN) {
                        write_load(&load_file(&rig, node, s), d);
                    }
                }
            }
        }
        for (node, d) in demand.iter().enumerate().skip(1) {
            if !(frozen && node == FROZEN) && *d > a.cpu {
                r.overload_steps += 1.0;
            }
        }
        if t % 20 == 0 {
            eprint!(
                "\r[{policy}] step {t}/{}: overload {} node-steps, moves started {}   ",
                sc.steps,
                r.overload_steps,
                metric(
                    &rig,
                    1,
                    "godwit_decisions_total{kind=\"migrate\",outcome=\"started\"}"
                )
            );
        }
        if std::env::var_os("GODWIT_BENCH_TRACE").is_some() && t % 20 == 10 {
            eprintln!("\n[{policy}] step {t}: {}", leader_view(&rig));
        }
        let next = t0 + step * (t as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    eprintln!();
    let m = |o: &str| {
        metric(
            &rig,
            1,
            &format!("godwit_decisions_total{{kind=\"migrate\",outcome=\"{o}\"}}"),
        )
    };
    r.started = m("started");
    r.committed = m("committed");
    r.failed = m("failed");
    r.failovers = metric(&rig, 1, "godwit_failovers_total");
    if let Some(c) = client.take() {
        let (check, _) = stop_client(c);
        r.after = verdict(&check);
        if r.after.1 != 0 {
            eprintln!("[{policy}] client after the failure: {check}");
        }
    }
    let decisions: Value = rig.c.json(1, "/v1/cluster/plan")["decisions"].clone();
    for d in decisions.as_array().into_iter().flatten() {
        if d["outcome"] == "committed" || d["outcome"] == "failed" {
            eprintln!(
                "[{policy}]   {} {} -> {}: {} ({})",
                d["service"].as_str().unwrap_or("?"),
                d["from"].as_str().unwrap_or("?"),
                d["to"].as_str().unwrap_or("?"),
                d["outcome"].as_str().unwrap_or("?"),
                d["why"].as_str().unwrap_or("")
            );
        }
    }
    rig.freeze_node(FROZEN, false);
    drop(rig);
    r.wall_s = started.elapsed().as_secs_f64();
    r
}

/// One line of what the leader's last plan saw (`GODWIT_BENCH_TRACE` set): each node's
/// load now and forecast, its trigger, and why a service was left where it is.
fn leader_view(rig: &MigrateRig) -> String {
    let plan = rig.c.json(1, "/v1/cluster/plan");
    let mut out = Vec::new();
    for n in plan["plan"]["nodes"].as_array().into_iter().flatten() {
        let t = &n["trigger"];
        out.push(format!(
            "{} u {:.2} fc {:.2} {}",
            n["node"].as_str().unwrap_or("?"),
            t["u_max"].as_f64().unwrap_or(f64::NAN),
            t["u_max_forecast"].as_f64().unwrap_or(f64::NAN),
            t["reason"].as_str().unwrap_or("-"),
        ));
    }
    for u in plan["plan"]["unplaced"].as_array().into_iter().flatten() {
        out.push(format!(
            "unplaced {} from {}: {}",
            u["service"].as_str().unwrap_or("?"),
            u["from"].as_str().unwrap_or("?"),
            u["reason"].as_str().unwrap_or("?"),
        ));
    }
    for d in plan["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(2)
    {
        out.push(format!(
            "last {} {} {}",
            d["service"].as_str().unwrap_or("?"),
            d["outcome"].as_str().unwrap_or("?"),
            d["reason"].as_str().unwrap_or(""),
        ));
    }
    out.join("; ")
}

fn sim(sc: &Scenario, policy: &str) -> engine::Report {
    let mut p: Box<dyn SimPolicy> = match policy {
        "godwit" => Box::new(Godwit::new(sc)),
        "reactive" => Box::new(ReactiveStatic::new(0.8)),
        _ => Box::new(NoAction),
    };
    engine::run(sc, p.as_mut()).expect("the scenario is valid")
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("godwit-bench-cluster: needs root (network namespaces, cgroups)");
        std::process::exit(77);
    }
    let a = parse();
    let sc = scenario(&a);
    println!(
        "{} nodes in 2 sites, {} cores each for services ({}x the simulator's {SIM_CORES}-core \
         nodes), {} services, {} steps of {} ms, seed {}, n{FROZEN} frozen at step {}",
        NODES,
        a.cpu,
        a.cpu / SIM_CORES,
        sc.services.len(),
        sc.steps,
        a.step_ms,
        a.seed,
        sc.failures[0].step
    );
    let mut rows = Vec::new();
    for p in &a.policies {
        let real = run_real(&a, &sc, p);
        let s = sim(&sc, p);
        rows.push((p.clone(), real, s));
    }
    println!(
        "\n| policy | overload node-steps (real) | (simulator) | moves started / committed / failed (real) | migrations (simulator) | failovers (real) | before the failure: writes acknowledged / lost, longest gap | after: kv was on; acknowledged / lost, longest gap | wall |"
    );
    println!("|---|---:|---:|---|---:|---:|---|---|---:|");
    for (p, r, s) in &rows {
        println!(
            "| {p} | {} | {:.0} | {} / {} / {} | {} | {} | {} / {}, {} ms | {}; {} / {}, {} ms | {:.0} s |",
            r.overload_steps,
            s.overload_seconds / sc.step_seconds,
            r.started,
            r.committed,
            r.failed,
            s.migrations,
            r.failovers,
            r.before.0,
            r.before.1,
            r.before.2,
            r.kv_at_failure,
            r.after.0,
            r.after.1,
            r.after.2,
            r.wall_s
        );
    }
    let find = |name: &str| rows.iter().find(|(p, _, _)| p == name);
    if let (Some(g), Some(re)) = (find("godwit"), find("reactive")) {
        println!(
            "\ngodwit / reactive overload: {:.2} on real agents, {:.2} in the simulator; moves \
             {} against {}",
            g.1.overload_steps / re.1.overload_steps.max(1.0),
            g.2.overload_seconds / re.2.overload_seconds.max(1.0),
            g.1.started,
            re.1.started
        );
    }
    for (p, r, s) in &rows {
        let sim_steps = s.overload_seconds / sc.step_seconds;
        println!(
            "{p}: the simulator predicted {:.0} overload node-steps, the cluster measured {} \
             ({:+.0}%)",
            sim_steps,
            r.overload_steps,
            (r.overload_steps - sim_steps) / sim_steps.max(1.0) * 100.0
        );
    }
    // Losing acknowledged writes in a move is a failure; after a failover from the failed
    // node it is what `ha = "restart"` without state means.
    if rows.iter().any(|(_, r, _)| r.before.1 != 0) {
        std::process::exit(1);
    }
}
