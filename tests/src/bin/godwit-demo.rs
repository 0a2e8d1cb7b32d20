//! `godwit-demo`: the cluster acting on its own forecast, and surviving a power cut, told in
//! plain lines (`cargo xtask demo` builds and runs it).
//!
//! ```text
//! godwit-demo [--ramp-secs S] [--from CORES] [--to CORES] [--bin-dir DIR]
//! ```
//!
//! Four agents in network namespaces on this host, in two sites (east: n1, n2; west: n3, n4),
//! each offering its services half a core (`[services] cpu_cores`, enforced by the cgroup CPU
//! limit, so an overload is real), under the coordinator (n1 leads). On n2, the example
//! `kvstore` (`kv`, its CPU load following a file in its state) and a steady `batch` service;
//! on n3, Debian's `redis-server`, its append-only file on storage every node reaches (a
//! directory of this host standing in for a SAN or NFS). A checking client writes to each
//! through its VIP and counts what was acknowledged.
//!
//! Then kv's load ramps up; the leader announces the move it decides (with the forecast or the
//! confirmed load behind it) and carries it out; n3 loses its power (agent, fence guard and
//! services killed at once, link down), is fenced, and redis restarts elsewhere. The clients
//! read back every acknowledged write and the verdict closes the run. Everything is removed at
//! the end, also after an error or Ctrl-C.
//!
//! Exit status: 0 when every step happened and no acknowledged write was lost; 1 otherwise;
//! 2 for bad arguments or without root; 130 when interrupted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use godwit_tests::migrate_rig::{stop_client, KvOptions, MigrateRig, RigOptions, KV_PORT};
use serde_json::Value;

const USAGE: &str = "usage: godwit-demo [--ramp-secs S] [--from CORES] [--to CORES] [--bin-dir DIR]
  --ramp-secs S   how long kv's load takes to climb (default 40)
  --from CORES    kv's load before the ramp (default 0.05)
  --to CORES      kv's load at the end of the ramp (default 0.30)
  --bin-dir DIR   where godwit, kvstore and kvcheck are (default: this program's directory)
Needs root: it makes network namespaces and cgroups.";

/// The CPU each node gives its services, in cores.
const CORES: f64 = 0.5;
/// The steady service beside kv on n2, in cores.
const BATCH_LOAD: f64 = 0.15;
const BATCH_PORT: u16 = 7400;
const REDIS_PORT: u16 = 6390;
/// Writes a second of each checking client.
const KV_RATE: f64 = 300.0;
const REDIS_RATE: f64 = 200.0;
/// The sites of n1..n4.
const SITES: [&str; 4] = ["east", "east", "west", "west"];
/// The coordinator's timers: lease, guard grace, margin (ms).
const FENCE: (u64, u64, u64) = (3000, 500, 500);

/// Set by SIGINT or SIGTERM: the demo stops at its next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The command line.
#[derive(Debug, Clone, PartialEq)]
struct Opts {
    ramp_secs: f64,
    from: f64,
    to: f64,
    bin_dir: Option<PathBuf>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            ramp_secs: 40.0,
            from: 0.05,
            to: 0.30,
            bin_dir: None,
        }
    }
}

/// Parses the arguments (without the program name); `Ok(None)` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<Opts>, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String, lo: f64, hi: f64| -> Result<f64, String> {
            let x: f64 = v
                .parse()
                .map_err(|_| format!("{name}: not a number: {v:?}"))?;
            if !(lo..=hi).contains(&x) {
                return Err(format!("{name}: {x} is outside {lo} to {hi}"));
            }
            Ok(x)
        };
        match a.as_str() {
            "--ramp-secs" => o.ramp_secs = number(a, value(a)?, 5.0, 600.0)?,
            "--from" => o.from = number(a, value(a)?, 0.0, 1.0)?,
            "--to" => o.to = number(a, value(a)?, 0.0, 1.0)?,
            "--bin-dir" => o.bin_dir = Some(PathBuf::from(value(a)?)),
            "-h" | "--help" | "help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.to <= o.from {
        return Err(format!(
            "--to ({}) must be above --from ({}): the demo ramps the load up",
            o.to, o.from
        ));
    }
    Ok(Some(o))
}

/// kv's load `elapsed` into a linear ramp from `from` to `to` over `secs`.
fn ramp_value(from: f64, to: f64, secs: f64, elapsed: Duration) -> f64 {
    let f = (elapsed.as_secs_f64() / secs).clamp(0.0, 1.0);
    from + (to - from) * f
}

/// A fraction as a whole percentage ("?" when unknown).
fn pct(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or("?".into(), |v| format!("{:.0}%", v * 100.0))
}

/// What the leader's `why` line of a move says: `n2 fired (proactive): load 71% now, forecast
/// 86%, threshold 80%, 2 of the last 5 samples over; kv leaves (correlation 0.97) to n1 in
/// transitional mode`.
#[derive(Debug, Clone, PartialEq)]
struct Why {
    node: String,
    /// `proactive` (the forecast fired) or `confirmed` (the load now did).
    reason: String,
    now: String,
    forecast: String,
    threshold: String,
    above: String,
    window: String,
}

/// Parses a move's `why`; `None` if it does not have that shape.
fn parse_why(why: &str) -> Option<Why> {
    let (node, rest) = why.split_once(" fired (")?;
    let (reason, rest) = rest.split_once("): load ")?;
    let (now, rest) = rest.split_once(" now, forecast ")?;
    let (forecast, rest) = rest.split_once(", threshold ")?;
    let (threshold, rest) = rest.split_once(", ")?;
    let (above, rest) = rest.split_once(" of the last ")?;
    let (window, _) = rest.split_once(" samples over")?;
    Some(Why {
        node: node.to_string(),
        reason: reason.to_string(),
        now: now.to_string(),
        forecast: forecast.to_string(),
        threshold: threshold.to_string(),
        above: above.to_string(),
        window: window.to_string(),
    })
}

/// A switch mode in a few words.
fn mode_gloss(mode: &str) -> String {
    match mode {
        "transitional" => "transitional: copied live, then a short freeze".into(),
        "intermittent" => "intermittent: stopped, copied, started".into(),
        other => other.into(),
    }
}

/// The site of node `nK` in the demo.
fn site_of(node: &str) -> &'static str {
    index(node)
        .and_then(|i| SITES.get(i.wrapping_sub(1)))
        .copied()
        .unwrap_or("?")
}

/// The narration of a decision to move `service` to `to` in `mode`, from its `why`;
/// `crossed`: the source's load had reached its threshold before the decision.
fn announce(service: &str, to: &str, mode: &str, why: &str, crossed: bool) -> String {
    let dest = format!("{to} ({}; {})", site_of(to), mode_gloss(mode));
    let Some(w) = parse_why(why) else {
        return format!("the leader moves {service} to {dest}: {why}");
    };
    match w.reason.as_str() {
        "proactive" => format!(
            "{} forecast {} >= threshold {} while at {} now: moving {service} to {dest}, {}",
            w.node,
            w.forecast,
            w.threshold,
            w.now,
            if crossed {
                "as the load reaches its threshold"
            } else {
                "before the overload"
            }
        ),
        "confirmed" => format!(
            "{} over its threshold {} in {} of the last {} samples (now {}, forecast {}): moving \
             {service} to {dest}. The confirmed trigger fired, not the forecast alone: this \
             move reacts to the load rather than anticipating it",
            w.node, w.threshold, w.above, w.window, w.now, w.forecast
        ),
        other => format!(
            "{} fired ({other}; now {}, forecast {}, threshold {}): moving {service} to {dest}",
            w.node, w.now, w.forecast, w.threshold
        ),
    }
}

/// A client's verdict line.
fn verdict(name: &str, acknowledged: u64, lost: Option<u64>, gap_ms: u64) -> String {
    let lost = lost.map_or("not read back".to_string(), |l| l.to_string());
    format!("{name}: writes acknowledged {acknowledged}, lost {lost}, longest gap {gap_ms} ms")
}

/// Prints lines stamped with the seconds since the start.
struct Narrator {
    t0: Instant,
}

impl Narrator {
    fn say(&self, line: &str) {
        println!("[{:6.1} s] {line}", self.t0.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Fails once the user interrupted.
fn go_on() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `cond` every 100 ms for up to `within`; `Ok(None)` at the deadline, an error once
/// interrupted.
fn poll<T>(within: Duration, mut cond: impl FnMut() -> Option<T>) -> Result<Option<T>> {
    let deadline = Instant::now() + within;
    loop {
        go_on()?;
        if let Some(v) = cond() {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("godwit-demo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "godwit-demo: needs root: it creates network namespaces, cgroups and nftables \
             rules. Run `sudo -E cargo xtask demo`."
        );
        return ExitCode::from(2);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let bin_dir = opts.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_default()
    });
    // The services' commands need absolute paths.
    let bin_dir = std::fs::canonicalize(&bin_dir).unwrap_or(bin_dir);
    for bin in ["godwit", "kvstore", "kvcheck"] {
        if !bin_dir.join(bin).exists() {
            eprintln!(
                "godwit-demo: {} missing: build it first (`cargo xtask demo` does)",
                bin_dir.join(bin).display()
            );
            return ExitCode::from(2);
        }
    }
    if !Path::new("/usr/bin/redis-server").exists() {
        eprintln!("godwit-demo: /usr/bin/redis-server missing: `apt-get install redis-server`");
        return ExitCode::from(2);
    }
    let say = Narrator { t0: Instant::now() };
    say.say("starting four godwit agents, each in its own network namespace on this host");
    let rig = std::panic::catch_unwind(|| {
        MigrateRig::new(RigOptions {
            agent_bin: Some(bin_dir.join("godwit")),
            bin_dir: Some(bin_dir.clone()),
            cpu_cores: CORES,
            sites: SITES.iter().map(|s| s.to_string()).collect(),
            coordinator: Some(FENCE),
            ..RigOptions::coordinated(4)
        })
    });
    let Ok(mut rig) = rig else {
        println!("the cluster did not come up (see above); what was made is removed");
        return ExitCode::FAILURE;
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scenario(&mut rig, &opts, &say)
    }));
    say.say("cleaning up: agents, services, namespaces, cgroups, state");
    drop(rig);
    say.say("cleaned up");
    match result {
        Ok(Ok(true)) => {
            println!("demo passed: every step happened and no acknowledged write was lost");
            ExitCode::SUCCESS
        }
        Ok(Ok(false)) => {
            println!("demo FAILED: see the lines above");
            ExitCode::FAILURE
        }
        Ok(Err(e)) if INTERRUPTED.load(Ordering::SeqCst) => {
            println!("demo {e:#}: everything it made is removed");
            ExitCode::from(130)
        }
        Ok(Err(e)) => {
            println!("demo FAILED: {e:#}");
            ExitCode::FAILURE
        }
        Err(_) => {
            println!("demo FAILED: a step panicked (message above)");
            ExitCode::FAILURE
        }
    }
}

/// The leader's JSON at `path` (`null` if it does not answer).
fn leader_json(rig: &MigrateRig, path: &str) -> Value {
    rig.c.json(1, path)
}

/// The node number of `nK`.
fn index(node: &str) -> Option<usize> {
    node.strip_prefix('n')?.parse().ok()
}

/// The decisions about `service` the leader keeps.
fn decisions(plan: &Value, service: &str) -> Vec<Value> {
    plan["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["service"] == service)
        .cloned()
        .collect()
}

/// `node`'s trigger figures in the leader's plan: (load now, forecast, threshold).
fn trigger_of(plan: &Value, node: &str) -> Option<(Option<f64>, Option<f64>, f64)> {
    let t = plan["plan"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?
        .get("trigger")?;
    Some((
        t["u_max"].as_f64(),
        t["u_max_forecast"].as_f64(),
        t["threshold"].as_f64()?,
    ))
}

/// Runs the story on a started rig; `Ok(true)` when everything happened and nothing
/// acknowledged was lost.
fn scenario(rig: &mut MigrateRig, o: &Opts, say: &Narrator) -> Result<bool> {
    let mut ok = true;
    // The group: four members, three voters, n1 bootstrapped it and leads.
    let mut group = Value::Null;
    for i in 1..=4 {
        go_on()?;
        group = rig.wait_group(i, 3);
    }
    let leader = group["leader"].as_str().unwrap_or("?").to_string();
    let voters: Vec<String> = group["voters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    say.say(&format!(
        "n1..n4 up: sites east (n1, n2), west (n3, n4); {leader} leads (voters {}); each node \
         gives its services {CORES} cores, enforced by its cgroup",
        voters.join(", ")
    ));

    // Services: kv and batch on n2, redis on n3, each placed through the log.
    let mut kv = rig.kv_spec(
        "kv",
        &KvOptions {
            size: 24 << 20,
            ..KvOptions::default()
        },
    );
    kv["command"]
        .as_array_mut()
        .context("kv's command")?
        .extend(["--load-file".into(), "{state}/data/load".into()]);
    let kv_load = rig.state_dir(2, "kv").join("data/load");
    std::fs::create_dir_all(kv_load.parent().context("load dir")?)?;
    std::fs::write(&kv_load, format!("{}", o.from))?;
    rig.add(2, &kv, Duration::from_secs(30));
    let batch_load = rig.state_dir(2, "batch").join("data/load");
    std::fs::create_dir_all(batch_load.parent().context("load dir")?)?;
    std::fs::write(&batch_load, format!("{BATCH_LOAD}"))?;
    let batch = serde_json::json!({
        "name": "batch",
        "command": [
            rig.kvstore.display().to_string(),
            "--listen", format!("127.0.0.1:{BATCH_PORT}"),
            "--state", "{state}/data/batch.state", "--size", (64u64 << 20).to_string(),
            "--load-file", "{state}/data/load",
        ],
        "state": ["data"],
        "health": {"tcp": format!("127.0.0.1:{BATCH_PORT}"), "interval_ms": 100},
    });
    add_unexposed(rig, 2, &batch)?;
    let o4 = rig.vip.octets();
    let redis_vip = Ipv4Addr::new(o4[0], o4[1], o4[2], 101);
    let shared = rig.pki.join("shared/redis");
    std::fs::create_dir_all(&shared)?;
    give_to_service_user(&shared)?;
    let redis = serde_json::json!({
        "name": "redis",
        "command": ["/usr/bin/redis-server", "--port", REDIS_PORT.to_string(),
                    "--bind", "0.0.0.0", "--protected-mode", "no",
                    "--dir", shared.display().to_string(),
                    "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        "health": {"tcp": format!("127.0.0.1:{REDIS_PORT}"), "send": "PING\r\n",
                   "expect": "+PONG", "interval_ms": 100},
        "vip": redis_vip.to_string(),
        "ha": "restart",
    });
    rig.add(3, &redis, Duration::from_secs(30));
    let weighed = weigh_services(rig, 2) & weigh_services(rig, 3);
    say.say(&format!(
        "kv (the example kvstore, state local to its node) and batch (a steady {BATCH_LOAD} \
         cores) on n2; redis on n3, its append-only file (appendfsync always) on storage every \
         node reaches"
    ));
    if weighed {
        say.say(
            "(this host may be busy with other work: the services' CPU weight is raised so that \
             the half core each node gives them is theirs; cpu.max still caps them)",
        );
    }

    // The clients.
    let mut kv_client = Reaped(Some(rig.client_with(3600, KV_RATE, "demo")));
    let stop = Arc::new(AtomicBool::new(false));
    let redis_addr = SocketAddr::from((redis_vip, REDIS_PORT));
    let redis_client = redis_writer(redis_addr, REDIS_RATE, stop.clone());
    say.say(&format!(
        "kv at {}:{KV_PORT} under a checking client ({KV_RATE} writes/s); redis at {redis_addr} \
         under its client ({REDIS_RATE} writes/s); both count every acknowledged write",
        rig.vip
    ));

    // Quiet first: the leader hears the services, the start-up load has passed and the
    // forecasts have some history.
    let heard = poll(Duration::from_secs(30), || {
        let plan = leader_json(rig, "/v1/cluster/plan");
        let n = plan["view"]["services"].as_array().map_or(0, Vec::len);
        (n == 3).then_some(())
    })?;
    if heard.is_none() {
        say.say("the leader's view still lacks some services; going on");
    }
    let quiet_since = Instant::now();
    let mut calm = 0;
    poll(Duration::from_secs(40), || {
        let plan = leader_json(rig, "/v1/cluster/plan");
        let node = rig.placed(1, "kv")?.0;
        let (now, _, th) = trigger_of(&plan, &node)?;
        calm = if now.is_some_and(|u| u < th - 0.1) {
            calm + 1
        } else {
            0
        };
        (calm >= 20 && quiet_since.elapsed() >= Duration::from_secs(10)).then_some(())
    })?;
    let plan = leader_json(rig, "/v1/cluster/plan");
    // A move already decided (the services' own start, say) is told, not taken for the ramp's.
    for d in decisions(&plan, "kv") {
        say.say(&format!(
            "before the ramp the leader decided to move kv to {} ({}): {}",
            d["to"].as_str().unwrap_or("?"),
            d["outcome"].as_str().unwrap_or("?"),
            d["why"].as_str().unwrap_or("")
        ));
    }
    let src = rig
        .placed(1, "kv")
        .map_or_else(|| "n2".to_string(), |(n, _)| n);
    let src_i = index(&src).unwrap_or(2);
    if let Some((now, fc, th)) = trigger_of(&plan, &src) {
        say.say(&format!(
            "quiet: {src} at {} now, forecast {}, its dynamic threshold {}",
            pct(now),
            pct(fc),
            pct(Some(th)),
        ));
    }

    // The ramp.
    let with_batch = if src_i == 2 { BATCH_LOAD } else { 0.0 };
    say.say(&format!(
        "ramping kv's load: {:.2} -> {:.2} cores over {:.0} s ({src} would go from {:.0}% to \
         {:.0}% of its {CORES} cores{})",
        o.from,
        o.to,
        o.ramp_secs,
        (o.from + with_batch) / CORES * 100.0,
        (o.to + with_batch) / CORES * 100.0,
        if src_i == 2 { ", with batch" } else { "" }
    ));
    let ramp_start = Instant::now();
    let ramp_start_ms = now_ms();
    let mut kv_node = src_i;
    let mut announced: Option<Value> = None;
    let mut ended: Option<Value> = None;
    let mut src_over_at: Option<u64> = None;
    let mut src_peak = 0.0f64;
    let mut last_report = Instant::now();
    let mut last_poll = Instant::now() - Duration::from_secs(1);
    let grace = Duration::from_secs(40);
    loop {
        go_on()?;
        let el = ramp_start.elapsed();
        let load = ramp_value(o.from, o.to, o.ramp_secs, el);
        let file = rig.state_dir(kv_node, "kv").join("data/load");
        if file.parent().is_some_and(Path::is_dir) {
            let _ = std::fs::write(&file, format!("{load:.3}"));
        }
        if last_poll.elapsed() >= Duration::from_millis(500) {
            last_poll = Instant::now();
            let plan = leader_json(rig, "/v1/cluster/plan");
            if let Some((now, fc, th)) = trigger_of(&plan, &src) {
                if let Some(u) = now {
                    src_peak = src_peak.max(u);
                    if u >= th && src_over_at.is_none() && kv_node == src_i {
                        src_over_at = Some(now_ms());
                    }
                }
                if last_report.elapsed() >= Duration::from_secs(5) && announced.is_none() {
                    last_report = Instant::now();
                    say.say(&format!(
                        "kv at {load:.2} cores: {src} at {} now, forecast {} (threshold {})",
                        pct(now),
                        pct(fc),
                        pct(Some(th))
                    ));
                }
            }
            let ds: Vec<Value> = decisions(&plan, "kv")
                .into_iter()
                .filter(|d| d["at_unix_ms"].as_u64().unwrap_or(0) >= ramp_start_ms)
                .collect();
            if announced.is_none() {
                if let Some(d) = ds.iter().find(|d| {
                    matches!(
                        d["outcome"].as_str(),
                        Some("started" | "committed" | "failed")
                    )
                }) {
                    say.say(&announce(
                        "kv",
                        d["to"].as_str().unwrap_or("?"),
                        d["mode"].as_str().unwrap_or("?"),
                        d["why"].as_str().unwrap_or(""),
                        src_over_at.is_some(),
                    ));
                    say.say(&format!(
                        "  (the leader's reason: {})",
                        d["why"].as_str().unwrap_or("")
                    ));
                    match src_over_at {
                        Some(t) => {
                            let before = d["at_unix_ms"].as_u64().unwrap_or(t).saturating_sub(t);
                            say.say(&format!(
                                "  {src}'s load had reached its threshold {} before the decision",
                                if before < 1000 {
                                    "less than a second".to_string()
                                } else {
                                    format!("{:.1} s", before as f64 / 1e3)
                                }
                            ))
                        }
                        None => say.say(&format!(
                            "  {src}'s load has not reached its threshold yet (peak so far {})",
                            pct(Some(src_peak))
                        )),
                    }
                    announced = Some(d.clone());
                }
            }
            if let (Some(a), None) = (&announced, &ended) {
                if let Some(d) = ds.iter().find(|d| {
                    d["at_unix_ms"].as_u64() >= a["at_unix_ms"].as_u64()
                        && matches!(d["outcome"].as_str(), Some("committed" | "failed"))
                }) {
                    let took = d["at_unix_ms"]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(a["at_unix_ms"].as_u64().unwrap_or(0))
                        as f64
                        / 1e3;
                    let to = d["to"].as_str().unwrap_or("?").to_string();
                    if d["outcome"] == "committed" {
                        say.say(&format!(
                            "kv committed on {to} {took:.1} s after the decision; it serves \
                             there behind the same VIP"
                        ));
                        if let Some(i) = index(&to) {
                            kv_node = i;
                            weigh_services(rig, i);
                        }
                    } else {
                        say.say(&format!(
                            "the move of kv to {to} failed after {took:.1} s: {}",
                            d["reason"].as_str().unwrap_or("")
                        ));
                        ok = false;
                    }
                    ended = Some(d.clone());
                }
            }
        }
        let ramp_done = el.as_secs_f64() >= o.ramp_secs;
        if ramp_done && ended.is_some() {
            break;
        }
        if ramp_done && el.as_secs_f64() >= o.ramp_secs + grace.as_secs_f64() {
            if announced.is_none() {
                say.say(&format!(
                    "no move decided {:.0} s after the ramp ({src} peaked at {}): the demo's load \
                     did not trigger the policy on this host",
                    grace.as_secs_f64(),
                    pct(Some(src_peak))
                ));
            } else {
                say.say("the move did not end in time");
            }
            ok = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    if ended.as_ref().is_some_and(|d| d["outcome"] == "committed") {
        rig.wait_serving(kv_node, "kv", Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(5));
        let plan = leader_json(rig, "/v1/cluster/plan");
        let show = |n: &str| trigger_of(&plan, n).map_or("?".into(), |t| pct(t.0));
        say.say(&format!(
            "the ramp is over (kv asks for {:.2} cores, now on n{kv_node}): {src} at {} (its peak was \
             {}), n{kv_node} at {}",
            o.to,
            show(&src),
            pct(Some(src_peak)),
            show(&format!("n{kv_node}"))
        ));
    }

    // The power cut.
    go_on()?;
    let victim = rig
        .placed(1, "redis")
        .and_then(|(n, _)| index(&n))
        .unwrap_or(3);
    if victim == kv_node {
        say.say(&format!(
            "kv and redis share n{victim}: kv's local state goes down with it (ha = restart \
             restarts it from its image elsewhere, empty)"
        ));
    }
    say.say(&format!(
        "killing n{victim}: its agent, fence guard and services at once, and its link (a power \
         cut)"
    ));
    let cut = Instant::now();
    rig.power_off(victim);
    let vname = format!("n{victim}");
    let fenced = poll(Duration::from_secs(60), || {
        let doc = leader_json(rig, "/v1/cluster");
        doc["fenced"]
            .as_array()?
            .iter()
            .any(|f| f["node"] == vname.as_str())
            .then(|| cut.elapsed())
    })?;
    match fenced {
        Some(t) => say.say(&format!(
            "{vname} fenced after {:.1} s (its lease {} s, then the guard's {} s and a margin of \
             {} s: by then it cannot be running anything)",
            t.as_secs_f64(),
            FENCE.0 as f64 / 1e3,
            FENCE.1 as f64 / 1e3,
            FENCE.2 as f64 / 1e3
        )),
        None => {
            say.say(&format!("{vname} was not fenced within 60 s"));
            ok = false;
        }
    }
    let restarted = poll(Duration::from_secs(60), || {
        let (node, _) = rig.placed(1, "redis")?;
        let i = index(&node).filter(|i| *i != victim)?;
        let s = rig.service(i, "redis");
        (s["health"] == "healthy" && s["vip_active"] == true).then(|| (node, cut.elapsed()))
    })?;
    match &restarted {
        Some((node, t)) => say.say(&format!(
            "redis restarted on {node} {:.1} s after the cut, from the append-only file on the \
             shared storage; its VIP moved with it",
            t.as_secs_f64()
        )),
        None => {
            say.say("redis did not come back within 60 s of the cut");
            ok = false;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    go_on()?;

    // The verdict.
    say.say("stopping the clients; each reads back every write it saw acknowledged");
    stop.store(true, Ordering::SeqCst);
    let (check, passed) = stop_client(kv_client.0.take().context("kvcheck runs")?);
    let w = redis_client
        .join()
        .map_err(|_| anyhow::anyhow!("the redis client panicked"))?;
    let redis_lost = read_back(redis_addr, w.acknowledged).ok();
    let kv_lost = check["missing_acknowledged"].as_u64();
    let corrupt = check["corrupt"].as_u64().unwrap_or(0);
    say.say(&verdict(
        "kv   ",
        check["acknowledged"].as_u64().unwrap_or(0),
        kv_lost,
        check["longest_gap_ms"].as_u64().unwrap_or(0),
    ));
    if corrupt > 0 {
        say.say(&format!("kv: {corrupt} keys read back with a wrong value"));
    }
    say.say(&verdict(
        "redis",
        w.acknowledged,
        redis_lost,
        w.longest_gap.as_millis() as u64,
    ));
    say.say(
        "(a longest gap spans a move's cut-over or, for redis, the fence bound and the restart)",
    );
    let no_loss = kv_lost == Some(0) && corrupt == 0 && passed && redis_lost == Some(0);
    if !no_loss {
        say.say(&format!("kvcheck's report: {check}"));
    }
    Ok(ok && no_loss)
}

/// Raises the CPU weight of node `i`'s services' parent cgroup (v2 `cpu.weight`, and v1
/// `cpu.shares` on a hybrid host), so that the share `cpu_cores` allows them is theirs even
/// when other work keeps this host's CPUs busy: the limit stays `cpu.max`, the weight only
/// decides who waits. Best effort; true when a weight was set.
fn weigh_services(rig: &MigrateRig, i: usize) -> bool {
    let cgroup = rig.c.json(i, "/v1/services")["services"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|s| s["cgroup"].as_str().map(PathBuf::from))
        });
    let Some(slice) = cgroup.as_deref().and_then(Path::parent) else {
        return false;
    };
    let mut set = std::fs::write(slice.join("cpu.weight"), "1000").is_ok();
    if let (Some(v1), Some(name)) = (godwit_tests::cgroup_layout().cpu_v1_root, slice.file_name()) {
        set |= std::fs::write(v1.join(name).join("cpu.shares"), "10240").is_ok();
    }
    set
}

/// A child killed and reaped on drop (on an error or an interrupt), unless taken.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// POSTs `spec` (a service with no VIP) to node `i` and waits until it is healthy.
fn add_unexposed(rig: &MigrateRig, i: usize, spec: &Value) -> Result<()> {
    let name = spec["name"].as_str().unwrap_or_default();
    let (code, body) = rig
        .c
        .act(i, "POST", "/v1/services", Some(&spec.to_string()))
        .with_context(|| format!("POST /v1/services to n{i}"))?;
    if code != 201 {
        bail!("n{i} refused {name}: {code} {body}");
    }
    if poll(Duration::from_secs(30), || {
        (rig.service(i, name)["health"] == "healthy").then_some(())
    })?
    .is_none()
    {
        bail!("{name} not healthy on n{i}: {}", rig.service(i, name));
    }
    Ok(())
}

/// Hands `dir` to the services' default user (`godwit-svc`), who runs redis.
fn give_to_service_user(dir: &Path) -> Result<()> {
    let name = std::ffi::CString::new("godwit-svc")?;
    // SAFETY: getpwnam with a valid C string; the result is read at once, on this thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        // Not created yet: let anyone write (the directory is the demo's, removed with it).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        return Ok(());
    }
    // SAFETY: `pw` is non-null and points to libc's static passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", dir.display()))
}

/// A redis connection, one request in flight.
struct Redis {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A redis reply, as far as the demo needs: `+OK`, `-ERR ...`, a bulk string (`None`: null).
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Bulk(Option<Vec<u8>>),
    Other(String),
}

impl Redis {
    fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Redis> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Redis {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.writer.write_all(&resp(args))?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, line.to_string());
        Ok(match line.split_at_checked(1).ok_or_else(bad)? {
            ("+", s) => Reply::Simple(s.to_string()),
            ("-", s) => Reply::Error(s.to_string()),
            ("$", n) => {
                let n: i64 = n.parse().map_err(|_| bad())?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut buf)?;
                    buf.truncate(n as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            _ => Reply::Other(line.to_string()),
        })
    }
}

/// A RESP request.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn redis_key(n: u64) -> String {
    format!("demo:{n:08}")
}

fn redis_value(n: u64) -> String {
    format!("v{n}-{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// What the redis client saw.
#[derive(Debug, Default)]
struct Writes {
    /// Writes acknowledged with `+OK`: numbers 1 to `acknowledged`.
    acknowledged: u64,
    /// The longest time without an acknowledgement.
    longest_gap: Duration,
}

/// Numbered SETs to `addr` at about `rate` a second until `stop`, one in flight: each is sent
/// again (same key and value) on a new connection until redis answers `+OK`.
fn redis_writer(
    addr: SocketAddr,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Writes> {
    std::thread::spawn(move || {
        let mut w = Writes::default();
        let mut conn: Option<Redis> = None;
        let mut last_ack = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut next = Instant::now();
        'writes: for n in 1.. {
            let (key, value) = (redis_key(n), redis_value(n));
            loop {
                if stop.load(Ordering::Relaxed) {
                    break 'writes;
                }
                let attempt = match conn.as_mut() {
                    Some(c) => c.call(&[b"SET", key.as_bytes(), value.as_bytes()]),
                    None => Redis::connect(addr, Duration::from_secs(1)).and_then(|c| {
                        conn.insert(c)
                            .call(&[b"SET", key.as_bytes(), value.as_bytes()])
                    }),
                };
                match attempt {
                    Ok(Reply::Simple(s)) if s == "OK" => {
                        let now = Instant::now();
                        w.longest_gap = w.longest_gap.max(now - last_ack);
                        last_ack = now;
                        w.acknowledged = n;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            next += period;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            } else {
                next = Instant::now();
            }
        }
        w.longest_gap = w.longest_gap.max(last_ack.elapsed());
        w
    })
}

/// Reads back writes 1..=`acknowledged`; how many are missing or wrong.
fn read_back(addr: SocketAddr, acknowledged: u64) -> std::io::Result<u64> {
    let mut c = Redis::connect(addr, Duration::from_secs(5))?;
    let mut lost = 0;
    for n in 1..=acknowledged {
        let got = c.call(&[b"GET", redis_key(n).as_bytes()])?;
        if got != Reply::Bulk(Some(redis_value(n).into_bytes())) {
            lost += 1;
        }
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn arguments_parse_with_defaults_and_bad_ones_are_refused() {
        assert_eq!(parse_args(&[]).unwrap(), Some(Opts::default()));
        let o = parse_args(&args("--ramp-secs 60 --from 0.1 --to 0.3 --bin-dir /x"))
            .unwrap()
            .unwrap();
        assert_eq!(
            o,
            Opts {
                ramp_secs: 60.0,
                from: 0.1,
                to: 0.3,
                bin_dir: Some("/x".into())
            }
        );
        assert_eq!(parse_args(&args("--help")).unwrap(), None);
        for bad in [
            "--ramp-secs",
            "--ramp-secs x",
            "--ramp-secs 1",
            "--to 2",
            "--from 0.4 --to 0.3",
            "--bogus",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
        assert!(parse_args(&args("--to 2")).unwrap_err().contains("--to"));
    }

    #[test]
    fn the_ramp_is_linear_then_holds() {
        let r = |s: f64| ramp_value(0.05, 0.35, 30.0, Duration::from_secs_f64(s));
        assert!((r(0.0) - 0.05).abs() < 1e-9);
        assert!((r(15.0) - 0.20).abs() < 1e-9);
        assert!((r(30.0) - 0.35).abs() < 1e-9);
        assert!((r(99.0) - 0.35).abs() < 1e-9);
    }

    const PROACTIVE: &str = "n2 fired (proactive): load 71% now, forecast 86%, threshold 80%, \
                             0 of the last 5 samples over; kv leaves (correlation 0.97) to n1 \
                             in transitional mode";

    #[test]
    fn the_leaders_reason_is_read_and_told_plainly() {
        let w = parse_why(PROACTIVE).unwrap();
        assert_eq!(w.node, "n2");
        assert_eq!(w.reason, "proactive");
        assert_eq!((w.now.as_str(), w.forecast.as_str()), ("71%", "86%"));
        assert_eq!((w.threshold.as_str(), w.above.as_str()), ("80%", "0"));
        assert_eq!(w.window, "5");
        assert_eq!(
            announce("kv", "n1", "transitional", PROACTIVE, false),
            "n2 forecast 86% >= threshold 80% while at 71% now: moving kv to n1 (east; \
             transitional: copied live, then a short freeze), before the overload"
        );
        assert!(announce("kv", "n1", "transitional", PROACTIVE, true)
            .ends_with("as the load reaches its threshold"));
        let confirmed = PROACTIVE.replace("proactive", "confirmed");
        let line = announce("kv", "n3", "intermittent", &confirmed, true);
        assert!(line.contains("to n3 (west; intermittent"), "{line}");
        assert!(line.contains("confirmed trigger fired"), "{line}");
        assert!(line.contains("in 0 of the last 5 samples"), "{line}");
        // A reason of another shape is shown as it is.
        assert_eq!(
            announce("kv", "n4", "other", "n2 fired", false),
            "the leader moves kv to n4 (west; other): n2 fired"
        );
        assert_eq!(parse_why("n2 fired"), None);
    }

    #[test]
    fn verdicts_and_percentages_read_plainly() {
        assert_eq!(
            verdict("kv", 1200, Some(0), 212),
            "kv: writes acknowledged 1200, lost 0, longest gap 212 ms"
        );
        assert!(verdict("redis", 5, None, 1).contains("lost not read back"));
        assert_eq!(pct(Some(0.856)), "86%");
        assert_eq!(pct(None), "?");
        assert_eq!(pct(Some(f64::NAN)), "?");
        assert_eq!(index("n12"), Some(12));
        assert_eq!(index("x"), None);
    }

    #[test]
    fn a_redis_request_is_framed() {
        assert_eq!(
            resp(&[b"GET", b"k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
