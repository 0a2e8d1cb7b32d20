//! `cargo xtask bench probe`: the probe overhead of the agent, eBPF against procfs, measured side
//! by side in one run on the same load.
//!
//! Load: a context-switch storm (`__pingpong`, two processes passing one byte over two pipes)
//! plus `--procs` idle processes. Two release agents then run at the same time, one with
//! `[probe] mode = "ebpf"` and one with `mode = "procfs"`, both sampling every second. After a
//! warm-up, over the measurement window, the bench reads for each agent its CPU time from
//! `/proc/PID/stat` (utime + stime) and its peak `VmRSS`; for the eBPF agent, the BPF run-time
//! statistics it exports (`godwit_bpf_program_run_time_seconds_total` and
//! `godwit_bpf_program_runs_total`, label `program="sched_switch"`), which give the mean cost of
//! one `sched_switch` event. The host's context-switch rate comes from `/proc/stat` `ctxt`.
//!
//! The output is a markdown section; `--write` puts it into `docs/BENCHMARKS.md` between the
//! `<!-- bench:probe:start -->` and `<!-- bench:probe:end -->` markers.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

use crate::load::{self, Group};
use crate::{http, openmetrics, packages};

/// Where the eBPF agent of the benchmark listens.
const EBPF_ADDR: &str = "127.0.0.1:19746";
/// Where the procfs agent of the benchmark listens.
const PROCFS_ADDR: &str = "127.0.0.1:19747";
/// Sampling interval of both agents.
const INTERVAL_MS: u64 = 1000;
/// Time both agents run on the load before the window opens.
const WARMUP: Duration = Duration::from_secs(3);
/// How long an agent may take to answer `/metrics` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Total BPF run time per program, in seconds (counter).
const RUN_TIME_METRIC: &str = "godwit_bpf_program_run_time_seconds_total";
/// Runs per BPF program (counter).
const RUNS_METRIC: &str = "godwit_bpf_program_runs_total";
/// The program whose per-event cost is the headline figure.
const SCHED_SWITCH: &str = "sched_switch";

/// Target: mean BPF run time per `sched_switch` event.
const TARGET_NS_PER_SWITCH: f64 = 150.0;
/// Target: CPU of the eBPF agent process, % of one core.
const TARGET_CPU_PCT: f64 = 1.0;
/// Target: peak resident memory of an agent.
const TARGET_RSS_MIB: f64 = 40.0;

/// Markers of the section `--write` replaces in docs/BENCHMARKS.md.
const SECTION_START: &str = "<!-- bench:probe:start -->";
const SECTION_END: &str = "<!-- bench:probe:end -->";

/// Arguments of `cargo xtask bench probe`.
#[derive(clap::Args)]
pub(crate) struct ProbeArgs {
    /// Length of the measurement window, in seconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Number of idle processes to start next to the context-switch storm.
    #[arg(long, default_value_t = 1000)]
    procs: usize,
    /// Write the result into docs/BENCHMARKS.md (between the bench:probe markers).
    #[arg(long)]
    write: bool,
    /// Benchmark this agent binary instead of building target/release/godwit.
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
}

/// One agent under test.
struct Agent {
    mode: &'static str,
    addr: SocketAddr,
    pid: u32,
    log: PathBuf,
}

/// Counters read at one instant, at the start or the end of the window.
struct Mark {
    at: Instant,
    /// utime + stime of each agent, in clock ticks (same order as the agents).
    ticks: Vec<u64>,
    /// Context switches since boot (`/proc/stat` `ctxt`).
    ctxt: u64,
    /// BPF statistics of the eBPF agent.
    bpf: BpfCounters,
}

/// The eBPF agent's BPF statistics, from its `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BpfCounters {
    /// Runs of the `sched_switch` program (`None` when the metric is absent).
    switch_runs: Option<f64>,
    /// Run time of the `sched_switch` program, seconds.
    switch_seconds: Option<f64>,
    /// Run time of all the agent's programs, seconds.
    all_seconds: Option<f64>,
}

/// Figures of one agent over the window.
#[derive(Clone, Debug, PartialEq)]
struct AgentFigures {
    mode: &'static str,
    cpu_pct: f64,
    rss_mib: f64,
}

/// Everything the report shows.
#[derive(Clone, Debug, PartialEq)]
struct Figures {
    window_s: f64,
    procs: usize,
    ebpf: AgentFigures,
    procfs: AgentFigures,
    /// Mean BPF run time per sched_switch event, ns.
    ns_per_switch: Option<f64>,
    /// sched_switch events per second seen by the eBPF agent.
    switch_rate: Option<f64>,
    /// CPU spent in all of the agent's BPF programs, % of one core.
    bpf_cpu_pct: Option<f64>,
    /// Context switches per second on the host.
    ctxt_rate: f64,
    /// Processes on the host when the window opened.
    processes: usize,
}

/// The machine the figures come from.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Machine {
    pub(crate) kernel: String,
    pub(crate) cpus: usize,
    pub(crate) model: String,
}

/// `cargo xtask bench probe`.
pub(crate) fn probe(args: &ProbeArgs) -> Result<()> {
    if !crate::is_root() {
        bail!("bench probe runs an eBPF agent, which needs root: run it with sudo -E");
    }
    let bin = match &args.agent {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("{}", path.display()))?,
        None => {
            progress("system packages needed to build");
            packages::ensure(packages::BUILD)?;
            progress("cargo build --release -p godwit");
            crate::run_checked(
                crate::cargo().args(["build", "--release", "-p", "godwit"]),
                "release build",
            )?;
            crate::target_dir().join("release").join("godwit")
        }
    };
    let cmdline = command_line();
    let machine = machine()?;
    for addr in [EBPF_ADDR, PROCFS_ADDR] {
        // Something else answering there would be measured instead of our agents.
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("{addr} is in use: stop whatever listens there"))?;
    }
    let tmp = TempDir::new("godwit-bench")?;
    let mut group = Group::default();

    progress(&format!(
        "load: pipe ping-pong and {} idle processes",
        args.procs
    ));
    start_load(&mut group, args.procs)?;

    progress("agents: ebpf and procfs side by side");
    let agents = [
        start_agent(&mut group, &bin, tmp.path(), "ebpf", EBPF_ADDR)?,
        start_agent(&mut group, &bin, tmp.path(), "procfs", PROCFS_ADDR)?,
    ];
    wait_ready(&mut group, &agents)?;
    progress(&format!("warm-up {} s", WARMUP.as_secs()));
    sleep_watching(&mut group, &agents, WARMUP)?;

    progress(&format!("measuring for {} s", args.seconds));
    let figures = measure(&mut group, &agents, args)?;
    drop(group);
    let report = render(&figures, &machine, &cmdline, &today_utc());
    println!("{report}");
    if args.write {
        let path = write_section(SECTION_START, SECTION_END, &report)?;
        progress(&format!("wrote {}", path.display()));
    }
    Ok(())
}

/// Starts the context-switch storm and `procs` idle processes.
fn start_load(group: &mut Group, procs: usize) -> Result<()> {
    let mut pingpong = Command::new(std::env::current_exe()?);
    pingpong
        .arg("__pingpong")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    load::die_with_parent(&mut pingpong, libc::SIGKILL);
    group.add_load("pingpong", pingpong.spawn().context("spawn __pingpong")?);
    group.spawn_idle(procs)
}

/// Measures both agents over the window: `agents[0]` is the eBPF agent, `agents[1]` procfs.
fn measure(group: &mut Group, agents: &[Agent; 2], args: &ProbeArgs) -> Result<Figures> {
    let processes = count_processes()?;
    let tick_hz = clock_ticks_per_second()?;
    let start = mark(agents)?;
    let mut rss_max = [0u64; 2];
    for i in 1..=args.seconds {
        let due = start.at + Duration::from_secs(i);
        sleep_watching(group, agents, due.saturating_duration_since(Instant::now()))?;
        for (max, agent) in rss_max.iter_mut().zip(agents) {
            *max = (*max).max(rss_kib(agent.pid)?);
        }
    }
    let end = mark(agents)?;

    let window_s = (end.at - start.at).as_secs_f64();
    let agent_figures = |i: usize| AgentFigures {
        mode: agents[i].mode,
        cpu_pct: (end.ticks[i] - start.ticks[i]) as f64 / tick_hz / window_s * 100.0,
        rss_mib: rss_max[i] as f64 / 1024.0,
    };
    let (ns_per_switch, switch_rate, bpf_cpu_pct) = bpf_figures(start.bpf, end.bpf, window_s);
    Ok(Figures {
        window_s,
        procs: args.procs,
        ebpf: agent_figures(0),
        procfs: agent_figures(1),
        ns_per_switch,
        switch_rate,
        bpf_cpu_pct,
        ctxt_rate: (end.ctxt - start.ctxt) as f64 / window_s,
        processes,
    })
}

/// A progress line on stderr (stdout carries only the report).
fn progress(what: &str) {
    eprintln!("==> {what}");
}

/// Writes the agent's config into `dir` and starts it, logging to a file next to it.
fn start_agent(
    group: &mut Group,
    bin: &Path,
    dir: &Path,
    mode: &'static str,
    addr: &str,
) -> Result<Agent> {
    let config = dir.join(format!("{mode}.toml"));
    let data_dir = dir.join(format!("{mode}-data"));
    fs::create_dir_all(&data_dir)?;
    fs::write(&config, agent_config(mode, addr, &data_dir))?;
    let log = dir.join(format!("{mode}.log"));
    let out = File::create(&log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("agent")
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    load::die_with_parent(&mut cmd, libc::SIGTERM);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = group.add_service(&format!("{mode} agent"), child);
    Ok(Agent {
        mode,
        addr: addr.parse()?,
        pid,
        log,
    })
}

/// The configuration file of one benchmark agent: its own address, gossip and transport ports
/// (the API port plus 10 and 20, so two agents run side by side), data directory and API socket
/// in it, the probe mode under test, and everything else at the embedded defaults.
fn agent_config(mode: &str, addr: &str, data_dir: &Path) -> String {
    let (host, port) = addr
        .rsplit_once(':')
        .expect("benchmark addresses are host:port");
    let port: u16 = port.parse().expect("benchmark ports are numbers");
    format!(
        "# written by cargo xtask bench probe\n\n[node]\ndata_dir = \"{}\"\n\n\
         [api]\nlisten = \"{addr}\"\nsocket = \"{}\"\n\n\
         [probe]\nmode = \"{mode}\"\ninterval_ms = {INTERVAL_MS}\n\n\
         [gossip]\nlisten = \"{host}:{}\"\n\n[transport]\nlisten = \"{host}:{}\"\ntls_dir = \"{}\"\n",
        data_dir.display(),
        data_dir.join("api.sock").display(),
        port + 10,
        port + 20,
        data_dir.join("tls").display(),
    )
}

/// Waits until every agent answers `/metrics` with 200, failing when one exits or time runs out.
fn wait_ready(group: &mut Group, agents: &[Agent]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; agents.len()];
    while !ready.iter().all(|r| *r) {
        check_alive(group, agents)?;
        for (r, agent) in ready.iter_mut().zip(agents) {
            if !*r {
                *r = matches!(
                    http::get(agent.addr, "/metrics", Duration::from_secs(2)),
                    Ok(resp) if resp.status == 200
                );
            }
        }
        if Instant::now() > deadline {
            let late: Vec<_> = agents
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(a, _)| describe(a))
                .collect();
            bail!(
                "agents not answering /metrics after {READY_TIMEOUT:?}:\n{}",
                late.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Sleeps for `total`, checking once a second that no process of the group has exited.
fn sleep_watching(group: &mut Group, agents: &[Agent], total: Duration) -> Result<()> {
    let end = Instant::now() + total;
    loop {
        check_alive(group, agents)?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_secs(1)));
    }
}

/// Fails, with the agents' logs, when any process the bench started has exited.
fn check_alive(group: &mut Group, agents: &[Agent]) -> Result<()> {
    if let Some((name, status)) = group.exited() {
        let logs: Vec<_> = agents.iter().map(describe).collect();
        bail!("{name} exited early ({status})\n{}", logs.join("\n"));
    }
    Ok(())
}

/// An agent's mode, address and the tail of its log, for error messages.
fn describe(agent: &Agent) -> String {
    let log = fs::read_to_string(&agent.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n    ");
    format!(
        "--- {} agent on {}, last lines of its output:\n    {tail}",
        agent.mode, agent.addr
    )
}

/// Reads every counter of the window at one instant.
fn mark(agents: &[Agent]) -> Result<Mark> {
    let resp = http::get(agents[0].addr, "/metrics", Duration::from_secs(5))?;
    if resp.status != 200 {
        bail!("{} agent /metrics answered {}", agents[0].mode, resp.status);
    }
    let bpf = bpf_counters(&resp.body)?;
    Ok(Mark {
        at: Instant::now(),
        ticks: agents
            .iter()
            .map(|a| cpu_ticks(a.pid))
            .collect::<Result<_>>()?,
        ctxt: context_switches()?,
        bpf,
    })
}

/// The BPF statistics in a `/metrics` exposition.
fn bpf_counters(text: &str) -> Result<BpfCounters> {
    let samples = openmetrics::parse(text).context("parse /metrics")?;
    let switch = [("program", SCHED_SWITCH)];
    Ok(BpfCounters {
        switch_runs: openmetrics::value(&samples, RUNS_METRIC, &switch),
        switch_seconds: openmetrics::value(&samples, RUN_TIME_METRIC, &switch),
        all_seconds: openmetrics::sum(&samples, RUN_TIME_METRIC),
    })
}

/// (ns per sched_switch event, events per second, % of one core in all BPF programs) between
/// two readings; a figure is `None` when its counters are missing or did not move.
fn bpf_figures(
    start: BpfCounters,
    end: BpfCounters,
    window_s: f64,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let runs = delta(start.switch_runs, end.switch_runs).filter(|r| *r > 0.0);
    let switch_s = delta(start.switch_seconds, end.switch_seconds);
    let all_s = delta(start.all_seconds, end.all_seconds);
    let ns = runs.zip(switch_s).map(|(r, s)| s / r * 1e9);
    let rate = runs.map(|r| r / window_s);
    let cpu = all_s
        .filter(|_| runs.is_some())
        .map(|s| s / window_s * 100.0);
    (ns, rate, cpu)
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&stat).ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))
}

/// utime + stime from the text of `/proc/PID/stat` (fields 14 and 15; the command name in
/// field 2 may contain spaces and parentheses, so fields are counted from the last `)`).
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss_kib(&status).ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
fn parse_vmrss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Context switches since boot, from `/proc/stat`.
fn context_switches() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    parse_ctxt(&stat).ok_or_else(|| anyhow!("no ctxt line in /proc/stat"))
}

/// The `ctxt` line of `/proc/stat`.
fn parse_ctxt(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("ctxt "))?
        .trim()
        .parse()
        .ok()
}

/// Number of processes on the host (numeric entries of `/proc`).
fn count_processes() -> Result<usize> {
    Ok(fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
        })
        .count())
}

/// Clock ticks per second (`getconf CLK_TCK`), the unit of `/proc/PID/stat` times.
fn clock_ticks_per_second() -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(hz as f64)
}

/// Kernel release, CPU count and CPU model of this machine.
pub(crate) fn machine() -> Result<Machine> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let cpus = thread::available_parallelism()?.get();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = parse_cpu_model(&cpuinfo).unwrap_or_else(|| "unknown CPU model".to_owned());
    Ok(Machine {
        kernel,
        cpus,
        model,
    })
}

/// The first `model name` of `/proc/cpuinfo`.
fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_owned())
}

/// How this benchmark was invoked, as a person would type it.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub(crate) fn today_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `1234567.8` → `1,234,568`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `pass` or `MISSED` for a target check.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "MISSED"
    }
}

/// The markdown section of the report.
fn render(f: &Figures, m: &Machine, cmdline: &str, date: &str) -> String {
    let na = || "n/a".to_owned();
    let ns = f
        .ns_per_switch
        .map(|x| format!("{x:.0}"))
        .unwrap_or_else(na);
    let rate = f.switch_rate.map(thousands).unwrap_or_else(na);
    let mut s = String::new();
    let _ = writeln!(s, "### Probe overhead: eBPF against procfs\n");
    let _ = writeln!(s, "- command: `{cmdline}`");
    let _ = writeln!(s, "- date: {date} (UTC)");
    let _ = writeln!(
        s,
        "- machine: Linux {}, {} CPUs, {}",
        m.kernel, m.cpus, m.model
    );
    let _ = writeln!(
        s,
        "- load: pipe ping-pong between two processes ({} context switches/s on the host, \
         `/proc/stat` ctxt) and {} idle processes ({} processes on the host)",
        thousands(f.ctxt_rate),
        f.procs,
        f.processes
    );
    let _ = writeln!(
        s,
        "- both agents ran side by side with `interval_ms = {INTERVAL_MS}`, measured over \
         {:.1} s after a {} s warm-up\n",
        f.window_s,
        WARMUP.as_secs()
    );
    let _ = writeln!(
        s,
        "| mode | agent CPU (% of one core) | RSS max (MiB) | ns per sched_switch | \
         sched_switch events/s |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
    let _ = writeln!(
        s,
        "| {} | {:.2} | {:.1} | {ns} | {rate} |",
        f.ebpf.mode, f.ebpf.cpu_pct, f.ebpf.rss_mib
    );
    let _ = writeln!(
        s,
        "| {} | {:.2} | {:.1} | n/a | n/a |",
        f.procfs.mode, f.procfs.cpu_pct, f.procfs.rss_mib
    );
    let _ = writeln!(
        s,
        "| target | ≤ {TARGET_CPU_PCT} (ebpf) | ≤ {TARGET_RSS_MIB} | ≤ {TARGET_NS_PER_SWITCH} | |\n"
    );

    let ratio = |num: f64, den: f64| {
        if den > 0.0 {
            format!("{:.1}×", num / den)
        } else {
            "∞".to_owned()
        }
    };
    let _ = writeln!(
        s,
        "- procfs CPU / ebpf CPU (agent processes): **{}**",
        ratio(f.procfs.cpu_pct, f.ebpf.cpu_pct)
    );
    match f.bpf_cpu_pct {
        Some(bpf) => {
            let _ = writeln!(
                s,
                "- the eBPF agent's BPF programs ran {bpf:.2}% of one core in the kernel \
                 (charged to the tasks that hit the hooks, not to the agent); counting it, \
                 procfs / ebpf is {}",
                ratio(f.procfs.cpu_pct, f.ebpf.cpu_pct + bpf)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "- no BPF run-time statistics moved: is `kernel.bpf_stats_enabled` on while the \
                 agent runs?"
            );
        }
    }

    let _ = writeln!(s, "\nTargets:\n");
    let ns_ok = f.ns_per_switch.is_some_and(|x| x <= TARGET_NS_PER_SWITCH);
    let _ = writeln!(
        s,
        "- {}: ≤ {TARGET_NS_PER_SWITCH} ns per sched_switch event ({ns} ns)",
        verdict(ns_ok)
    );
    let _ = writeln!(
        s,
        "- {}: eBPF agent ≤ {TARGET_CPU_PCT}% of one core ({:.2}%)",
        verdict(f.ebpf.cpu_pct <= TARGET_CPU_PCT),
        f.ebpf.cpu_pct
    );
    let rss = f.ebpf.rss_mib.max(f.procfs.rss_mib);
    let _ = writeln!(
        s,
        "- {}: RSS ≤ {TARGET_RSS_MIB} MiB for each agent (largest {rss:.1} MiB)",
        verdict(rss <= TARGET_RSS_MIB)
    );
    let _ = write!(
        s,
        "- {}: eBPF agent cheaper than procfs at {} idle processes ({:.2}% against {:.2}%, \
         agent processes)",
        verdict(f.ebpf.cpu_pct < f.procfs.cpu_pct),
        f.procs,
        f.ebpf.cpu_pct,
        f.procfs.cpu_pct
    );
    if let Some(bpf) = f.bpf_cpu_pct {
        let total = f.ebpf.cpu_pct + bpf;
        let _ = write!(
            s,
            "; counting the BPF programs' time in the kernel it is {}cheaper ({total:.2}% \
             against {:.2}%)",
            if total < f.procfs.cpu_pct { "" } else { "not " },
            f.procfs.cpu_pct
        );
    }
    s
}

/// `doc` with the text between the bench:probe markers replaced by `body`; the markers are
/// appended at the end when absent (or out of order).
#[cfg(test)]
fn replace_section(doc: &str, body: &str) -> String {
    replace_between(doc, SECTION_START, SECTION_END, body)
}

/// Puts `body` between the markers `open` and `close` of docs/BENCHMARKS.md (see
/// [`replace_between`]); returns the file's path.
pub(crate) fn write_section(open: &str, close: &str, body: &str) -> Result<PathBuf> {
    let path = crate::repo_root().join("docs").join("BENCHMARKS.md");
    let doc = match fs::read_to_string(&path) {
        Ok(doc) => doc,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    fs::write(&path, replace_between(&doc, open, close, body))
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// `doc` with the text between the markers `open` and `close` replaced by `body`; the markers
/// are appended at the end when absent (or out of order).
pub(crate) fn replace_between(doc: &str, open: &str, close: &str, body: &str) -> String {
    let section = format!("{open}\n{}\n{close}", body.trim_end());
    if let Some(start) = doc.find(open) {
        if let Some(end_rel) = doc[start..].find(close) {
            let end = start + end_rel + close.len();
            return format!("{}{section}{}", &doc[..start], &doc[end..]);
        }
    }
    let mut out = doc.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(&section);
    out.push('\n');
    out
}

/// A directory under the system temp dir, removed with its contents on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_config_sets_mode_address_and_data_dir() {
        let c = agent_config("ebpf", EBPF_ADDR, Path::new("/tmp/b/ebpf-data"));
        for line in [
            "[node]",
            "data_dir = \"/tmp/b/ebpf-data\"",
            "[api]",
            "listen = \"127.0.0.1:19746\"",
            "socket = \"/tmp/b/ebpf-data/api.sock\"",
            "[probe]",
            "mode = \"ebpf\"",
            "interval_ms = 1000",
            "[gossip]",
            "listen = \"127.0.0.1:19756\"",
            "[transport]",
            "listen = \"127.0.0.1:19766\"",
        ] {
            assert!(c.lines().any(|l| l == line), "missing {line:?} in\n{c}");
        }
    }

    #[test]
    fn stat_ticks_with_a_hostile_comm() {
        // comm `a) b (c` contains spaces and parentheses; utime=1234, stime=56.
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 3 0 \
                    100 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(1290));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn vmrss_and_ctxt() {
        let status = "Name:\tgodwit\nVmPeak:\t  99999 kB\nVmRSS:\t   14336 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vmrss_kib(status), Some(14336));
        assert_eq!(parse_vmrss_kib("Name:\tkthreadd\n"), None);
        let stat = "cpu  1 2 3\nintr 5 6\nctxt 987654321\nbtime 1700000000\n";
        assert_eq!(parse_ctxt(stat), Some(987_654_321));
        assert_eq!(parse_ctxt("cpu 1\n"), None);
    }

    #[test]
    fn cpu_model() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n\
                    model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nprocessor\t: 1\n\
                    model name\t: other\n";
        assert_eq!(
            parse_cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(parse_cpu_model("processor : 0\n"), None);
    }

    #[test]
    fn bpf_counters_from_metrics_text() {
        let text = "# TYPE godwit_bpf_program_runs counter\n\
            godwit_bpf_program_runs_total{program=\"sched_switch\"} 2000000\n\
            godwit_bpf_program_runs_total{program=\"writeback_dirty_folio\"} 10\n\
            godwit_bpf_program_run_time_seconds_total{program=\"sched_switch\"} 0.2\n\
            godwit_bpf_program_run_time_seconds_total{program=\"writeback_dirty_folio\"} 0.05\n\
            # EOF\n";
        let c = bpf_counters(text).unwrap();
        assert_eq!(c.switch_runs, Some(2e6));
        assert_eq!(c.switch_seconds, Some(0.2));
        assert!((c.all_seconds.unwrap() - 0.25).abs() < 1e-12);
        let none = bpf_counters("process_cpu_seconds_total 1\n").unwrap();
        assert_eq!(none.switch_runs, None);
    }

    #[test]
    fn bpf_figures_from_two_readings() {
        let start = BpfCounters {
            switch_runs: Some(1_000_000.0),
            switch_seconds: Some(0.1),
            all_seconds: Some(0.15),
        };
        let end = BpfCounters {
            switch_runs: Some(5_000_000.0),
            switch_seconds: Some(0.5),
            all_seconds: Some(0.75),
        };
        let (ns, rate, cpu) = bpf_figures(start, end, 20.0);
        assert!((ns.unwrap() - 100.0).abs() < 1e-9);
        assert!((rate.unwrap() - 200_000.0).abs() < 1e-9);
        assert!((cpu.unwrap() - 3.0).abs() < 1e-9);
        // Counters that did not move or are absent give no figure rather than NaN.
        assert_eq!(bpf_figures(start, start, 20.0), (None, None, None));
        let absent = BpfCounters {
            switch_runs: None,
            switch_seconds: None,
            all_seconds: None,
        };
        assert_eq!(bpf_figures(absent, end, 20.0), (None, None, None));
    }

    #[test]
    fn dates() {
        let table = [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (11_016, (2000, 2, 29)),
            (19_782, (2024, 2, 29)),
            (20_454, (2026, 1, 1)),
            (20_779, (2026, 11, 22)),
        ];
        for (days, want) in table {
            assert_eq!(civil_from_days(days), want, "day {days}");
        }
    }

    #[test]
    fn thousands_separators() {
        for (x, want) in [
            (0.0, "0"),
            (999.4, "999"),
            (1000.0, "1,000"),
            (251_300.2, "251,300"),
            (1_234_567.8, "1,234,568"),
        ] {
            assert_eq!(thousands(x), want);
        }
    }

    #[test]
    fn section_replaced_between_markers() {
        let doc =
            format!("# B\n\nintro\n\n{SECTION_START}\nold\nlines\n{SECTION_END}\n\n## other\n");
        let out = replace_section(&doc, "new body\n");
        assert_eq!(
            out,
            format!("# B\n\nintro\n\n{SECTION_START}\nnew body\n{SECTION_END}\n\n## other\n")
        );
        // Idempotent: replacing again with the same body changes nothing.
        assert_eq!(replace_section(&out, "new body"), out);
    }

    #[test]
    fn section_appended_when_markers_absent_or_broken() {
        let out = replace_section("# B\n\ntext\n", "body");
        assert_eq!(
            out,
            format!("# B\n\ntext\n\n{SECTION_START}\nbody\n{SECTION_END}\n")
        );
        // An end marker before the start marker does not count.
        let broken = format!("{SECTION_END}\n{SECTION_START}\n");
        let out = replace_section(&broken, "body");
        assert!(out.ends_with(&format!("{SECTION_START}\nbody\n{SECTION_END}\n")));
    }

    #[test]
    fn report_shows_figures_targets_and_ratio() {
        let f = Figures {
            window_s: 20.0,
            procs: 1000,
            ebpf: AgentFigures {
                mode: "ebpf",
                cpu_pct: 0.5,
                rss_mib: 12.0,
            },
            procfs: AgentFigures {
                mode: "procfs",
                cpu_pct: 4.0,
                rss_mib: 10.0,
            },
            ns_per_switch: Some(90.0),
            switch_rate: Some(250_000.0),
            bpf_cpu_pct: Some(2.5),
            ctxt_rate: 260_000.0,
            processes: 1100,
        };
        let m = Machine {
            kernel: "6.18.0".into(),
            cpus: 2,
            model: "Test CPU".into(),
        };
        let r = render(&f, &m, "cargo xtask bench probe", "2026-11-22");
        assert!(r.contains("| ebpf | 0.50 | 12.0 | 90 | 250,000 |"), "{r}");
        assert!(r.contains("| procfs | 4.00 | 10.0 | n/a | n/a |"), "{r}");
        assert!(
            r.contains("procfs CPU / ebpf CPU (agent processes): **8.0×**"),
            "{r}"
        );
        assert!(r.contains("counting it, procfs / ebpf is 1.3×"), "{r}");
        assert!(r.contains("Linux 6.18.0, 2 CPUs, Test CPU"), "{r}");
        assert!(r.contains("`cargo xtask bench probe`"), "{r}");
        assert_eq!(r.matches("- pass:").count(), 4, "{r}");
        assert!(
            r.contains(
                "counting the BPF programs' time in the kernel it is cheaper (3.00% against 4.00%)"
            ),
            "{r}"
        );
        let storm = Figures {
            bpf_cpu_pct: Some(10.0),
            ..f.clone()
        };
        let r = render(&storm, &m, "x", "d");
        assert!(
            r.contains("it is not cheaper (10.50% against 4.00%)"),
            "{r}"
        );

        let missing = Figures {
            ns_per_switch: None,
            switch_rate: None,
            bpf_cpu_pct: None,
            ..f
        };
        let r = render(&missing, &m, "x", "d");
        assert!(r.contains("| ebpf | 0.50 | 12.0 | n/a | n/a |"), "{r}");
        assert!(
            r.contains("- MISSED: ≤ 150 ns per sched_switch event (n/a ns)"),
            "{r}"
        );
        assert!(r.contains("kernel.bpf_stats_enabled"), "{r}");
    }
}

/// Arguments of the benchmarks that are binaries of the `godwit-tests` package.
#[derive(clap::Args)]
pub(crate) struct BinArgs {
    /// Replace the benchmark's section of docs/BENCHMARKS.md with the new figures.
    #[arg(long)]
    write: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GossipArgs {
    /// Replace the benchmark's section of docs/BENCHMARKS.md with the new figures.
    #[arg(long)]
    write: bool,
    /// 20 nodes only (a minute instead of several).
    #[arg(long)]
    quick: bool,
}

/// `cargo xtask bench gossip`: runs `godwit-bench-gossip` in release mode.
pub(crate) fn gossip(args: &GossipArgs) -> Result<()> {
    crate::step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    crate::step("cargo run --release -p godwit-tests --bin godwit-bench-gossip");
    let mut cmd = crate::cargo_run_test_bin("godwit-bench-gossip");
    if args.write {
        cmd.arg("--write");
    }
    if args.quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("godwit-bench-gossip failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct MeshArgs {
    /// 100 nodes only (a minute instead of many).
    #[arg(long)]
    quick: bool,
}

/// `cargo xtask bench mesh`: runs `godwit-bench-mesh` in release mode. It prints its table
/// only: docs/BENCHMARKS.md is edited by hand from it.
pub(crate) fn mesh(args: &MeshArgs) -> Result<()> {
    crate::step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    crate::step("cargo run --release -p godwit-tests --bin godwit-bench-mesh");
    let mut cmd = crate::cargo_run_test_bin("godwit-bench-mesh");
    if args.quick {
        cmd.arg("--quick");
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("godwit-bench-mesh failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct MigrateArgs {
    /// Replace the benchmark's section of docs/BENCHMARKS.md with the new figures.
    #[arg(long)]
    write: bool,
    /// State of the example service, MiB (a small `kv.state` plus an incompressible ballast).
    #[arg(long, default_value_t = 1024)]
    state_mib: u64,
    /// Dirty rates, MB/s (10^6 bytes) of distinct pages, comma-separated.
    #[arg(long, default_value = "0,5,20,50")]
    rates: String,
    /// Links: `none` (unshaped) or a tbf rate such as `1gbit`, `100mbit`; `LINK@MIB` gives
    /// that link its own state size, `LINK:RUNS` its own number of runs.
    #[arg(long, default_value = "none,1gbit,100mbit")]
    links: String,
    /// Runs of each method per link and rate.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// godwit's downtime target, ms.
    #[arg(long, default_value_t = 100)]
    downtime_ms: u64,
    /// Restart the source's agent before each godwit move, so that every move is a first
    /// move (its model has learned from none).
    #[arg(long)]
    fresh: bool,
}

/// `cargo xtask bench migrate`: builds the agent and the example service in release, makes sure
/// rsync and the test network's tools are installed, and runs `godwit-bench-migrate` (root).
pub(crate) fn migrate(args: &MigrateArgs) -> Result<()> {
    if !crate::is_root() {
        bail!("the migration benchmark makes network namespaces and cgroups: run it as root");
    }
    crate::step("system packages needed to build and test (rsync among them)");
    packages::ensure(packages::TEST)?;
    release_agent_and_service()?;
    crate::step("cargo run --release -p godwit-tests --bin godwit-bench-migrate");
    let mut cmd = crate::cargo_run_test_bin("godwit-bench-migrate");
    cmd.args(["--state-mib", &args.state_mib.to_string()])
        .args(["--rates", &args.rates])
        .args(["--links", &args.links])
        .args(["--runs", &args.runs.to_string()])
        .args(["--downtime-ms", &args.downtime_ms.to_string()]);
    if args.write {
        cmd.arg("--write");
    }
    if args.fresh {
        cmd.arg("--fresh");
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("godwit-bench-migrate failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct FailoverArgs {
    /// Replace the benchmark's section of docs/BENCHMARKS.md with the new figures.
    #[arg(long)]
    write: bool,
    /// Runs of each in-process kill (re-election, failover decision).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Runs of each namespaced scenario (crash to serving, fence); 20 or more for a usable p99.
    /// 0 skips them; they also need root.
    #[arg(long, default_value_t = 5)]
    netns_runs: usize,
    /// Only the namespaced scenarios.
    #[arg(long)]
    netns_only: bool,
    /// The namespaced scenarios, comma-separated: `crash` (the node running the service loses
    /// power), `crash-leader` (the same, the leader running it), `fence` (the node is cut off).
    #[arg(long, default_value = "crash,fence")]
    netns: String,
}

/// `cargo xtask bench failover`: builds the agent and the example service in release (the
/// namespaced scenarios run them) and runs `godwit-bench-failover`.
pub(crate) fn failover(args: &FailoverArgs) -> Result<()> {
    let netns = args.netns_runs > 0;
    if netns && !crate::is_root() {
        eprintln!(
            "warning: not root: the crash-to-serving and fence figures (network namespaces, \
             cgroups) are skipped"
        );
    }
    crate::step("system packages needed to build and test");
    packages::ensure(if netns && crate::is_root() {
        packages::TEST
    } else {
        packages::BUILD
    })?;
    release_agent_and_service()?;
    crate::step("cargo run --release -p godwit-tests --bin godwit-bench-failover");
    let mut cmd = crate::cargo_run_test_bin("godwit-bench-failover");
    cmd.args(["--runs", &args.runs.to_string()])
        .args(["--netns-runs", &args.netns_runs.to_string()])
        .args(["--netns", &args.netns]);
    for (on, flag) in [(args.write, "--write"), (args.netns_only, "--netns-only")] {
        if on {
            cmd.arg(flag);
        }
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("godwit-bench-failover failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct CoordSizeArgs {
    /// 100 nodes and a 20 s steady window only (a minute or two instead of the better part of
    /// an hour).
    #[arg(long)]
    quick: bool,
    /// Group sizes, comma-separated (default 100,500,1000).
    #[arg(long, conflicts_with = "quick")]
    sizes: Option<String>,
    /// The steady-state window, virtual seconds (default 60; 20 with --quick).
    #[arg(long)]
    window: Option<u64>,
}

/// `cargo xtask bench coord-size`: the coordinator at size on the deterministic simulator, an
/// ignored test of `godwit-coord` (its simulated network is test code), run in release.
pub(crate) fn coord_size(args: &CoordSizeArgs) -> Result<()> {
    let sizes = match (&args.sizes, args.quick) {
        (Some(s), _) => s.clone(),
        (None, true) => "100".into(),
        (None, false) => "100,500,1000".into(),
    };
    let window = args.window.unwrap_or(if args.quick { 20 } else { 60 });
    crate::step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    let test = "sim_size::coordinator_at_size";
    crate::step(&format!(
        "GODWIT_COORD_SIZES={sizes} GODWIT_COORD_WINDOW_S={window} cargo test --release -p \
         godwit-coord --lib {test} -- --ignored --exact --nocapture"
    ));
    let status = crate::cargo()
        .args([
            "test",
            "--release",
            "-q",
            "-p",
            "godwit-coord",
            "--lib",
            test,
        ])
        .args(["--", "--ignored", "--exact", "--nocapture"])
        .env("GODWIT_COORD_SIZES", &sizes)
        .env("GODWIT_COORD_WINDOW_S", window.to_string())
        .status()
        .context("cannot start cargo")?;
    if !status.success() {
        bail!("the coordinator size benchmark failed ({status})");
    }
    Ok(())
}

/// Runs `cargo run --release -p godwit-tests --bin NAME [-- --write]` (after making sure the
/// build packages are there): the benchmarks of pure modules live beside the tests, so xtask
/// itself never depends on the agent crate.
pub(crate) fn run_bin(name: &str, args: &BinArgs) -> Result<()> {
    crate::step("system packages needed to build");
    packages::ensure(packages::BUILD)?;
    crate::step(&format!("cargo run --release -p godwit-tests --bin {name}"));
    let mut cmd = crate::cargo_run_test_bin(name);
    if args.write {
        cmd.arg("--write");
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct ClusterArgs {
    /// Steps of the scenario (one every --step-ms).
    #[arg(long, default_value_t = 480)]
    steps: u64,
    /// Milliseconds per step (the agents sample every 500 ms).
    #[arg(long, default_value_t = 500)]
    step_ms: u64,
    /// The scenario's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Services in the scenario.
    #[arg(long, default_value_t = 8)]
    services: u64,
    /// Cores each node gives its services (enforced with the cgroup CPU limit).
    #[arg(long, default_value_t = 0.3)]
    cpu: f64,
    /// The policies to run, comma-separated: godwit, reactive, none.
    #[arg(long, default_value = "godwit,reactive,none")]
    policies: String,
}

/// `cargo xtask bench cluster`: the placement policy on four release agents in two sites
/// against the reactive static threshold and no action, on the simulator's traces; and the
/// simulator's prediction of the same scenario.
pub(crate) fn cluster(args: &ClusterArgs) -> Result<()> {
    if !crate::is_root() {
        bail!("bench cluster runs agents in network namespaces and cgroups: run it as root");
    }
    crate::step("system packages needed to build and test");
    packages::ensure(packages::TEST)?;
    release_agent_and_service()?;
    crate::step("cargo run --release -p godwit-tests --bin godwit-bench-cluster");
    let mut cmd = crate::cargo_run_test_bin("godwit-bench-cluster");
    cmd.args(["--steps", &args.steps.to_string()])
        .args(["--step-ms", &args.step_ms.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .args(["--services", &args.services.to_string()])
        .args(["--cpu", &args.cpu.to_string()])
        .args(["--policies", &args.policies]);
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("godwit-bench-cluster failed ({status})");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct SchedulesArgs {
    /// How many schedules.
    #[arg(long, default_value_t = 200)]
    count: u64,
    /// The first schedule's seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

/// `cargo xtask bench schedules`: the fault-schedule suite of the tests, run long.
pub(crate) fn schedules(args: &SchedulesArgs) -> Result<()> {
    crate::step("system packages needed to build and run");
    packages::ensure(packages::TEST)?;
    crate::step(&format!(
        "GODWIT_SCHEDULES={} cargo test -p godwit-tests --test schedules -- --nocapture",
        args.count
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "test",
        "-p",
        "godwit-tests",
        "--test",
        "schedules",
        "--",
        "--nocapture",
    ])
    .env("GODWIT_SCHEDULES", args.count.to_string());
    if let Some(seed) = args.seed {
        cmd.env("GODWIT_SCHEDULE_SEED", seed.to_string());
    }
    let status = cmd.status().context("cannot start cargo")?;
    if !status.success() {
        bail!("the fault schedules failed ({status})");
    }
    Ok(())
}

/// The release agent and example service the namespaced benchmarks run (beside their own
/// binary: `godwit_tests::bench::release_bin`).
fn release_agent_and_service() -> Result<()> {
    crate::step("cargo build --release -p godwit -p godwit-kvstore");
    crate::run_checked(
        crate::cargo().args(["build", "--release", "-p", "godwit", "-p", "godwit-kvstore"]),
        "release build of the agent and the example service",
    )
}
