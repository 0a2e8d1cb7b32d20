//! `godwit-sim`: the cluster simulator's front end.
//!
//! ```text
//! godwit-sim compare [--traces DIR] [--nodes N] [--services M] [--steps S] [--seed K] [--failures F] [--util U] [--policy JSON] [--horizon H] [--diagnose 1]
//! godwit-sim record --addr 127.0.0.1:PORT --seconds N --out FILE [--match SUBSTRING]
//! ```
//!
//! `compare` runs every policy on the same seeded scenario (synthetic traces, plus the CSV
//! traces of `--traces`) and prints a markdown table. `record` polls a running agent's
//! `/v1/containers` once a second and writes the containers' CPU, memory and dirty rate as a
//! trace CSV. `--diagnose 1` runs godwit once more and says where its overload-seconds fall
//! (against the lower bound of `sim::bound`, moves in flight, trigger reasons, forecast lead).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use godwit_tests::sim::compare::{compare, markdown};
use godwit_tests::sim::godwit::Godwit;
use godwit_tests::sim::scenario::{self, GenParams};
use godwit_tests::sim::{bound, engine, policies, trace};

const USAGE: &str = "usage:
  godwit-sim compare [--traces DIR] [--nodes N] [--services M] [--steps S] [--seed K] [--failures F] [--util U]
                     [--policy JSON] [--horizon H] [--diagnose 1]
  godwit-sim record --addr HOST:PORT --seconds N --out FILE [--match SUBSTRING]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("godwit-sim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("compare") => cmd_compare(&Flags::parse(&args[1..])?),
        Some("record") => cmd_record(&Flags::parse(&args[1..])?),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// `--name value` pairs.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Result<Flags> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| anyhow!("unexpected argument {a:?}\n{USAGE}"))?;
            let value = it.next().ok_or_else(|| anyhow!("--{name} needs a value"))?;
            out.push((name.to_owned(), value.clone()));
        }
        Ok(Flags(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow!("--{name} {v:?} is not a valid number")),
        }
    }

    fn check(&self, known: &[&str]) -> Result<()> {
        for (n, _) in &self.0 {
            if !known.contains(&n.as_str()) {
                bail!("unknown flag --{n}\n{USAGE}");
            }
        }
        Ok(())
    }
}

fn cmd_compare(f: &Flags) -> Result<()> {
    f.check(&[
        "traces", "nodes", "services", "steps", "seed", "failures", "util", "policy", "horizon",
        "diagnose",
    ])?;
    let d = GenParams::default();
    let p = GenParams {
        nodes: f.num("nodes", d.nodes)?,
        services: f.num("services", d.services)?,
        steps: f.num("steps", d.steps)?,
        seed: f.num("seed", d.seed)?,
        failures: f.num("failures", d.failures)?,
        mean_utilisation: f.num("util", d.mean_utilisation)?,
    };
    if p.nodes == 0 || p.services == 0 || p.steps == 0 {
        bail!("--nodes, --services and --steps must be at least 1");
    }
    let recorded = match f.get("traces") {
        Some(dir) => trace::load_dir(&PathBuf::from(dir))?,
        None => Vec::new(),
    };
    let sc = scenario::generate(&recorded, &p);
    let mut pols = policies(&sc);
    let make_godwit = || -> Result<Godwit> {
        let mut g = Godwit::new(&sc);
        g.horizon = f.num("horizon", g.horizon)?;
        if let Some(json) = f.get("policy") {
            let mut cfg = serde_json::to_value(&g.cfg)?;
            let patch: serde_json::Value = serde_json::from_str(json).context("--policy")?;
            let patch = patch
                .as_object()
                .ok_or_else(|| anyhow!("--policy must be a JSON object of [policy] keys"))?;
            for (k, v) in patch {
                cfg[k] = v.clone();
            }
            g.cfg = serde_json::from_value(cfg).context("--policy")?;
            g.cfg.validate().map_err(|e| anyhow!("--policy: {e}"))?;
        }
        Ok(g)
    };
    if f.get("policy").is_some() || f.get("horizon").is_some() {
        *pols.last_mut().expect("godwit is last") = Box::new(make_godwit()?);
    }
    if let Some(json) = f.get("policy") {
        println!("godwit policy overrides: {json}\n");
    }
    if let Some(h) = f.get("horizon") {
        println!("godwit forecast horizon: {h} steps\n");
    }
    let started = Instant::now();
    let outcomes = compare(&sc, &mut pols).map_err(|e| anyhow!("bad scenario: {e}"))?;
    println!(
        "{} nodes in {} sites, {} services ({} on recorded traces from {}), {} steps of {} s, \
         seed {}, {} node failure(s) at step(s) {:?}\n",
        sc.nodes.len(),
        sc.sites.len(),
        sc.services.len(),
        sc.services
            .iter()
            .filter(|s| sc.traces[s.trace].name.contains('/'))
            .count(),
        f.get("traces").unwrap_or("-"),
        sc.steps,
        sc.step_seconds,
        p.seed,
        sc.failures.len(),
        sc.failures.iter().map(|x| x.step).collect::<Vec<_>>(),
    );
    let bound = bound::unavoidable_overload_seconds(&sc);
    print!(
        "{}",
        markdown(&outcomes, "godwit", "reactive-static", Some(bound))
    );
    if f.num("diagnose", 0u8)? > 0 {
        let mut g = make_godwit()?;
        g.diagnose(&sc);
        engine::run(&sc, &mut g).map_err(|e| anyhow!("bad scenario: {e}"))?;
        println!("\ngodwit diagnosis:\n\n{}", g.diagnosis_report());
    }
    eprintln!("(simulated in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn cmd_record(f: &Flags) -> Result<()> {
    f.check(&["addr", "seconds", "out", "match"])?;
    let addr: SocketAddr = f
        .get("addr")
        .ok_or_else(|| anyhow!("--addr is required"))?
        .parse()
        .context("--addr")?;
    let seconds: u64 = f.num("seconds", 0)?;
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let out = PathBuf::from(f.get("out").ok_or_else(|| anyhow!("--out is required"))?);
    let filter = f.get("match").unwrap_or("");
    let mut csv = String::from(trace::HEADER);
    csv.push('\n');
    let start = Instant::now();
    for step in 0..seconds {
        let due = start + Duration::from_secs(step);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (code, body) = godwit_tests::http_get(addr, "/v1/containers")
            .with_context(|| format!("GET {addr}"))?;
        if code != 200 {
            bail!("GET /v1/containers: HTTP {code}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).context("parse /v1/containers")?;
        let items = v
            .as_array()
            .ok_or_else(|| anyhow!("/v1/containers is not a JSON array"))?;
        for c in items {
            let path = c["cgroup_path"].as_str().unwrap_or("");
            if !path.contains(filter) {
                continue;
            }
            let name = path.rsplit('/').next().unwrap_or(path);
            if name.is_empty() || name.contains(',') {
                continue;
            }
            let cpu = c["cpu_cores"].as_f64().unwrap_or(0.0);
            let mem = c["memory_bytes"].as_f64().unwrap_or(0.0);
            let dirty = c["dirty_bytes_per_second"].as_f64().unwrap_or(0.0);
            csv.push_str(&format!("{step},{name},{cpu:.4},{mem:.0},{dirty:.0}\n"));
        }
        eprint!("\rrecorded {}/{seconds} s", step + 1);
    }
    eprintln!();
    // Check that what we wrote reads back before keeping it.
    let traces = trace::parse_csv(&csv, &out.display().to_string())?;
    std::fs::write(&out, csv).with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "wrote {} ({} entities: {})",
        out.display(),
        traces.len(),
        traces
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
