//! `cargo xtask bench migrate [--fresh] [--state-mib 1024] [--rates 0,5,20,50] [--links
//! none,1gbit,100mbit] [--runs 3] [--downtime-ms 100] [--write]`: live migration of the example
//! `kvstore` between two namespaced agents against two rsync baselines on the same link in the
//! same run. Needs root and the release builds of `godwit`, `kvstore` and `kvcheck` (xtask
//! builds them).
//!
//! For every link (`none` = the bare veth pair, or a `tbf` on n1's `eth0` such as `1gbit`,
//! `100mbit`; `LINK@MIB` gives that link its own state size and `LINK:RUNS` its own number of
//! runs), every dirty rate (MB/s of
//! distinct pages, dirtied by `kvstore --ballast`) and every run, three moves of a fresh
//! service from n1 to n2, each under a `kvcheck` client writing through the VIP:
//!
//! - `godwit`: `godwit migrate NAME --to n2 --mode transitional --downtime-target D` (n1's certificate);
//! - `stop+rsync`: stop on n1, `rsync -a --inplace` to an rsync daemon in n2's namespace
//!   whose module is n2's state root, start on n2 (the same spec POSTed to n2);
//! - `rsync×2`: rsync while it runs, stop, rsync again (the delta), start on n2.
//!
//! Per move: the client's longest gap (`kvcheck`'s `longest_gap_ms`) and lost writes, the total
//! time, the bytes n1's `eth0` sent (and what the mover itself counted: godwit's report, rsync's
//! `--stats`), the sender's CPU time (n1's agent process, or the rsync client processes), and for
//! godwit the rounds predicted and run. With `--write` the tables replace the `bench:migrate`
//! section of `docs/BENCHMARKS.md`.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use godwit_tests::bench::{machine, release_bin, write_section};
use godwit_tests::migrate_rig::{stop_client, KvOptions, MigrateRig, RigOptions};
use serde_json::Value;

const MB: f64 = 1e6;
/// Writes a second of the checking client (one in flight): a 2 ms resolution of the gap.
const CLIENT_RATE: f64 = 500.0;
/// Size of `kv.state` itself; the ballast makes up the rest of the state.
const KV_MIB: u64 = 16;
const RSYNC_PORT: u16 = 873;
/// The rsync daemon's module: n2's state root.
const MODULE: &str = "state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Godwit,
    RsyncCold,
    RsyncWarm,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Godwit => "godwit",
            Method::RsyncCold => "stop+rsync",
            Method::RsyncWarm => "rsync×2",
        }
    }
}

const METHODS: [Method; 3] = [Method::Godwit, Method::RsyncCold, Method::RsyncWarm];

#[derive(Debug, Clone)]
struct Link {
    label: String,
    kbit: Option<u32>,
    state_mib: u64,
    runs: Option<usize>,
}

impl Link {
    fn parse(spec: &str, default_mib: u64) -> Result<Link, String> {
        let (spec, runs) = match spec.split_once(':') {
            Some((s, r)) => (
                s,
                Some(r.parse().map_err(|_| format!("bad runs in {spec:?}"))?),
            ),
            None => (spec, None),
        };
        let (rate, mib) = match spec.split_once('@') {
            Some((r, m)) => (r, m.parse().map_err(|_| format!("bad size in {spec:?}"))?),
            None => (spec, default_mib),
        };
        let kbit = match rate {
            "none" | "unshaped" => None,
            r => {
                let (n, unit) = r
                    .find(|c: char| c.is_ascii_alphabetic())
                    .map(|i| r.split_at(i))
                    .ok_or_else(|| format!("bad link {r:?}: none, 1gbit, 100mbit"))?;
                let n: u32 = n.parse().map_err(|_| format!("bad link {r:?}"))?;
                Some(match unit {
                    "gbit" => n * 1_000_000,
                    "mbit" => n * 1000,
                    _ => return Err(format!("bad unit in {r:?}: gbit or mbit")),
                })
            }
        };
        let label = match kbit {
            None => "unshaped".to_string(),
            Some(k) if k >= 1_000_000 && k % 1_000_000 == 0 => format!("{} Gbit/s", k / 1_000_000),
            Some(k) => format!("{} Mbit/s", k / 1000),
        };
        Ok(Link {
            label,
            kbit,
            state_mib: mib,
            runs,
        })
    }

    /// Bytes a second the link carries, if shaped.
    fn bytes_per_s(&self) -> Option<f64> {
        self.kbit.map(|k| k as f64 * 1000.0 / 8.0)
    }
}

#[derive(Debug)]
struct Opts {
    state_mib: u64,
    rates: Vec<f64>,
    links: Vec<Link>,
    runs: usize,
    downtime_ms: u64,
    write: bool,
    /// Restart the source's agent before each godwit move: every move is a first move.
    fresh: bool,
    command: String,
}

fn parse_args() -> Result<Opts, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let state_mib: u64 = value("--state-mib")
        .map(|v| v.parse().map_err(|_| format!("--state-mib {v}")))
        .transpose()?
        .unwrap_or(1024);
    if state_mib <= KV_MIB {
        return Err(format!("--state-mib must be over {KV_MIB}"));
    }
    let rates = value("--rates")
        .unwrap_or_else(|| "0,5,20,50".into())
        .split(',')
        .map(|r| r.trim().parse::<f64>().map_err(|_| format!("--rates {r}")))
        .collect::<Result<Vec<_>, _>>()?;
    let links = value("--links")
        .unwrap_or_else(|| "none,1gbit,100mbit".into())
        .split(',')
        .map(|l| Link::parse(l.trim(), state_mib))
        .collect::<Result<Vec<_>, _>>()?;
    if links.iter().any(|l| l.state_mib <= KV_MIB) {
        return Err(format!("every state must be over {KV_MIB} MiB"));
    }
    let runs = value("--runs")
        .map(|v| v.parse().map_err(|_| format!("--runs {v}")))
        .transpose()?
        .unwrap_or(3);
    let downtime_ms = value("--downtime-ms")
        .map(|v| v.parse().map_err(|_| format!("--downtime-ms {v}")))
        .transpose()?
        .unwrap_or(100);
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--write")
        .collect();
    Ok(Opts {
        state_mib,
        rates,
        links,
        runs,
        downtime_ms,
        write: args.iter().any(|a| a == "--write"),
        fresh: args.iter().any(|a| a == "--fresh"),
        command: format!("cargo xtask bench migrate {}", shown.join(" "))
            .trim_end()
            .to_string(),
    })
}

/// One move of one service.
#[derive(Debug, Clone, Default)]
struct Sample {
    ok: bool,
    error: Option<String>,
    /// kvcheck's longest gap, ms.
    gap_ms: f64,
    missing: u64,
    acknowledged: u64,
    /// Start of the move to the service serving on n2, seconds.
    total_s: f64,
    /// n1's eth0 tx bytes over the move.
    eth_bytes: u64,
    /// What the mover counted: godwit's wire bytes, rsync's "Total bytes sent".
    mover_bytes: u64,
    /// Sender CPU, seconds.
    cpu_s: f64,
    predicted_rounds: Option<u64>,
    /// Moves the source's model had learned from (0: a first move).
    learned_moves: Option<u64>,
    /// The downtime the source predicted before the move, seconds.
    predicted_downtime_s: Option<f64>,
    actual_rounds: Option<u64>,
    /// The agent's downtime figure, or from the stop to serving on n2 for rsync.
    mover_downtime_s: Option<f64>,
    /// The full copy's rate: godwit's round 0 (wire bytes over its time), rsync's first pass.
    copy_bytes_per_s: Option<f64>,
    /// The dirty rate godwit's rounds measured (the largest), bytes a second.
    seen_dirty_rate: Option<f64>,
    /// godwit's measured path bandwidth, bytes a second.
    path_bytes_per_s: Option<f64>,
    state_bytes: u64,
    /// Bytes dirtied by the ballast during the move (rate × time).
    dirtied_bytes: f64,
}

/// A kvcheck client, killed if dropped before it is stopped.
struct Client(Option<Child>);

impl Client {
    fn stop(mut self) -> (Value, bool) {
        stop_client(self.0.take().expect("client runs"))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The rsync daemon in n2's namespace; killed on drop.
struct RsyncDaemon(Child);

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_rsync_daemon(rig: &MigrateRig) -> RsyncDaemon {
    let dir = rig.pki.join("rsyncd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(rig.state_root(2)).unwrap();
    let conf = dir.join("rsyncd.conf");
    std::fs::write(
        &conf,
        format!(
            "use chroot = no\nuid = root\ngid = root\nlog file = {}\npid file = {}\n\
             [{MODULE}]\n  path = {}\n  read only = no\n",
            dir.join("rsyncd.log").display(),
            dir.join("rsyncd.pid").display(),
            rig.state_root(2).display()
        ),
    )
    .unwrap();
    let addr = rig.c.node(2).addr;
    let child = rig.c.in_node(2, || {
        Command::new("rsync")
            .args(["--daemon", "--no-detach", "--port", &RSYNC_PORT.to_string()])
            .arg(format!("--address={addr}"))
            .arg(format!("--config={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsync (Debian package rsync) must be installed")
    });
    let daemon = RsyncDaemon(child);
    let sa = SocketAddr::from((addr, RSYNC_PORT));
    godwit_tests::wait_for(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&sa, Duration::from_millis(200)).ok()
    })
    .expect("the rsync daemon listens in n2");
    daemon
}

/// Runs rsync from n1's namespace to the daemon; returns bytes sent (its `--stats`) and the
/// CPU time of the rsync process (and any child it waited for), seconds.
fn rsync(rig: &MigrateRig, name: &str) -> Result<(u64, f64), String> {
    let src = format!("{}/", rig.state_dir(1, name).display());
    let dst = format!("rsync://{}/{MODULE}/{name}/", rig.c.node(2).addr);
    rig.c.in_node(1, || {
        let mut child = Command::new("rsync")
            .args(["-a", "--inplace", "--stats", &src, &dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("rsync: {e}"))?;
        let mut out = String::new();
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stdout.take().unwrap().read_to_string(&mut out);
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, with valid pointers; the Child is not waited on
        // again afterwards.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        if pid < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        let st = std::process::ExitStatus::from_raw(status);
        // Reaped: dropping the Child neither kills nor waits.
        drop(child);
        if !st.success() {
            return Err(format!("rsync failed ({st}): {}", err.trim()));
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let sent = out
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent:"))
            .map(|v| v.trim().replace(',', ""))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no 'Total bytes sent' in rsync's output:\n{out}"))?;
        Ok((sent, tv(ru.ru_utime) + tv(ru.ru_stime)))
    })
}

/// n1's eth0 transmitted bytes (from inside its namespace).
fn eth_tx(rig: &MigrateRig) -> u64 {
    rig.c.in_node(1, || {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
        dev.lines()
            .find_map(|l| l.trim_start().strip_prefix("eth0:"))
            .and_then(|rest| rest.split_whitespace().nth(8)?.parse().ok())
            .unwrap_or(0)
    })
}

/// utime + stime of a process, seconds.
fn proc_cpu_s(pid: u32) -> f64 {
    godwit::probe::procfs::read_stat(Path::new("/proc"), pid)
        .map(|st| {
            (st.utime_ticks + st.stime_ticks) as f64
                / godwit::probe::procfs::clock_ticks_per_second() as f64
        })
        .unwrap_or(f64::NAN)
}

fn wait_stopped(rig: &MigrateRig, i: usize, name: &str) -> Result<(), String> {
    godwit_tests::wait_for(Duration::from_secs(20), || {
        let s = rig.service(i, name);
        (s["state"] != "running" && s["vip_active"] != true).then_some(())
    })
    .ok_or_else(|| format!("{name} did not stop on n{i}: {}", rig.service(i, name)))
}

/// One move of a fresh service `name` by `method`; panics (caught by the caller) on harness
/// failures, returns a sample with `ok = false` when the move itself fails.
fn one_move(
    rig: &MigrateRig,
    agent_pid: u32,
    name: &str,
    method: Method,
    link: &Link,
    rate_mb: f64,
    downtime_ms: u64,
) -> Sample {
    let state_bytes = link.state_mib << 20;
    let kv = KvOptions {
        size: KV_MIB << 20,
        ballast: Some(state_bytes - (KV_MIB << 20)),
        dirty_rate: rate_mb * MB,
    };
    let spec = rig.kv_spec(name, &kv);
    rig.add(1, &spec, Duration::from_secs(300));
    // The ballast was written and synced before the server listened; let the probe see the
    // service's dirty rate for a few samples under the client's writes.
    let client = Client(Some(rig.client_with(24 * 3600, CLIENT_RATE, name)));
    std::thread::sleep(Duration::from_secs(3));
    let mut s = Sample {
        state_bytes,
        ..Sample::default()
    };
    let tx0 = eth_tx(rig);
    let started = Instant::now();
    let serve_timeout = Duration::from_secs(60);
    let result: Result<(), String> = match method {
        Method::Godwit => {
            let cpu0 = proc_cpu_s(agent_pid);
            let downtime_ms = downtime_ms.to_string();
            let m = rig.migrate(
                name,
                2,
                &["--mode", "transitional", "--downtime-target", &downtime_ms],
            );
            let report = &m.report;
            s.cpu_s = proc_cpu_s(agent_pid) - cpu0;
            s.total_s = started.elapsed().as_secs_f64();
            let t = &report["transfer"];
            s.mover_bytes = t["wire_bytes"].as_u64().unwrap_or(0);
            s.predicted_rounds = report["predicted_rounds"].as_u64();
            s.learned_moves = report["learned_moves"].as_u64();
            s.predicted_downtime_s = report["predicted_downtime_s"].as_f64();
            s.actual_rounds = report["actual_rounds"].as_u64();
            s.mover_downtime_s = report["downtime_seconds"].as_f64();
            s.path_bytes_per_s = report["bandwidth_bytes_per_second"].as_f64();
            s.copy_bytes_per_s = t["rounds"].get(0).and_then(|r0| {
                Some(r0["wire_bytes"].as_f64()? / r0["seconds"].as_f64()?.max(1e-9))
            });
            s.seen_dirty_rate = t["dirty_rates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .reduce(f64::max);
            let rounds: Vec<String> = t["rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let sec = |k: &str| r[k].as_f64().unwrap_or(0.0);
                    format!(
                        "{:.1} MB in {:.2} s (prepare {:.2}, read {:.2}, send {:.2})",
                        r["wire_bytes"].as_f64().unwrap_or(0.0) / MB,
                        sec("seconds"),
                        sec("prepare_seconds"),
                        sec("read_seconds"),
                        sec("send_seconds"),
                    )
                })
                .collect();
            eprintln!(
                "    report: result {} rounds {:?}/{:?} [{}] stop {} path {:.0} MB/s rtt {} ms \
                 dirty input {:.1} MB/s measured {} estimate {}\n    downtime {:?} s cutover {}",
                report["result"],
                s.predicted_rounds,
                s.actual_rounds,
                rounds.join(", "),
                t["stop"],
                s.path_bytes_per_s.unwrap_or(0.0) / MB,
                report["rtt_ms"],
                report["dirty_bytes_per_second"].as_f64().unwrap_or(0.0) / MB,
                t["dirty_rates"],
                t["estimate"],
                s.mover_downtime_s,
                t["cutover"]
            );
            if m.committed() {
                rig.wait_serving(2, name, serve_timeout)
                    .ok_or_else(|| format!("{name} not serving on n2 after the migration"))
            } else {
                Err(format!(
                    "godwit migrate exited {:?}: {} {}",
                    m.exit,
                    report["result"],
                    m.progress.lines().last().unwrap_or("")
                ))
            }
        }
        Method::RsyncCold | Method::RsyncWarm => (|| {
            let mut sent = 0;
            let mut cpu = 0.0;
            if method == Method::RsyncWarm {
                let t = Instant::now();
                let (b, c) = rsync(rig, name)?;
                s.copy_bytes_per_s = Some(b as f64 / t.elapsed().as_secs_f64());
                sent += b;
                cpu += c;
            }
            let stop_at = Instant::now();
            let (code, body) = rig.action(1, name, "stop");
            if code != 200 {
                return Err(format!("stop on n1: {code} {body}"));
            }
            wait_stopped(rig, 1, name)?;
            let t = Instant::now();
            let (b, c) = rsync(rig, name)?;
            if method == Method::RsyncCold {
                s.copy_bytes_per_s = Some(b as f64 / t.elapsed().as_secs_f64());
            }
            sent += b;
            cpu += c;
            rig.add(2, &spec, serve_timeout);
            s.mover_downtime_s = Some(stop_at.elapsed().as_secs_f64());
            s.mover_bytes = sent;
            s.cpu_s = cpu;
            s.total_s = started.elapsed().as_secs_f64();
            Ok(())
        })(),
    };
    s.eth_bytes = eth_tx(rig) - tx0;
    s.dirtied_bytes = rate_mb * MB * s.total_s;
    // Replies from n2 for a moment, then the read-back.
    std::thread::sleep(Duration::from_millis(500));
    let (check, passed) = client.stop();
    s.gap_ms = check["longest_gap_ms"].as_f64().unwrap_or(f64::NAN);
    s.missing = check["missing_acknowledged"].as_u64().unwrap_or(u64::MAX);
    s.acknowledged = check["acknowledged"].as_u64().unwrap_or(0);
    s.ok = result.is_ok() && passed && s.missing == 0;
    s.error = match result {
        Err(e) => Some(e),
        Ok(()) if !s.ok => Some(format!("client: {check}")),
        Ok(()) => None,
    };
    s
}

/// Stops `name` wherever it runs and removes its state on both nodes.
fn clean_up(rig: &MigrateRig, name: &str) {
    for i in [1, 2] {
        if !rig.service(i, name).is_null() {
            let _ = rig.action(i, name, "stop");
            let _ = wait_stopped(rig, i, name);
        }
        let _ = std::fs::remove_dir_all(rig.state_dir(i, name));
    }
}

/// Nearest-rank percentile of `v` (`p` in 0..=1); NaN when empty.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

fn num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "—".into()
    }
}

struct Cell {
    link: usize,
    rate: f64,
    samples: Vec<(Method, Sample)>,
}

impl Cell {
    fn of(&self, m: Method) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|(x, _)| *x == m)
            .map(|(_, s)| s)
            .collect()
    }

    fn ok(&self, m: Method) -> Vec<&Sample> {
        self.of(m).into_iter().filter(|s| s.ok).collect()
    }

    fn gap_p50(&self, m: Method) -> f64 {
        let v: Vec<f64> = self.ok(m).iter().map(|s| s.gap_ms).collect();
        pct(&v, 0.5)
    }
}

fn render(opts: &Opts, cells: &[Cell], elapsed: Duration) -> String {
    let mut md = String::from("### Live migration of the example service against rsync\n\n");
    md.push_str(&format!(
        "- command: `{}`\n- date: {} (UTC); {:.0} min of runs\n- machine: {}\n- source: {}\n",
        opts.command,
        today(),
        elapsed.as_secs_f64() / 60.0,
        machine(),
        source()
    ));
    md.push_str(&format!(
        "- two nodes in network namespaces on one bridge (`godwit_tests::migrate_rig`), real \
         agents in release; the example `kvstore` with {} MiB of state (a {KV_MIB} MiB \
         `kv.state` and a ballast of incompressible pages, dirtied at the rate shown, MB = 10^6 \
         bytes), a new service for every move; `kvcheck` writes {CLIENT_RATE:.0} keys/s through \
         the VIP from the root namespace and reads everything back\n",
        opts.state_mib
    ));
    md.push_str(&format!(
        "- links: a `tbf` on n1's `eth0` (bucket of 1 ms at the rate, at least 32 KiB; queue of \
         20 ms), or none (the veth pair, CPU-bound); godwit with `mode=transitional&downtime_ms={}`; \
         the baselines `rsync -a --inplace` (delta transfer) to an rsync daemon in n2's \
         namespace, the service stopped on n1 through its API and started on n2 by POSTing the \
         same spec and VIP\n",
        opts.downtime_ms
    ));
    md.push_str(
        "- downtime: the client's longest time without a reply; p99 is the nearest rank, so \
         the largest of fewer than 100 runs. wire: bytes n1's `eth0` sent during the move \
         (everything, headers included); sent: what the mover counted (godwit's wire bytes, \
         rsync's `Total bytes sent`); CPU: the sender's (n1's agent process, or the rsync \
         client); rounds: predicted / run\n\n",
    );
    md.push_str("| link | state | dirty MB/s | method | ok/runs | downtime p50 | downtime p99 | total p50 | wire MB p50 | sent MB p50 | sender CPU s p50 | full-copy MB/s | rounds (pred/run) |\n");
    md.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for cell in cells {
        let link = &opts.links[cell.link];
        for m in METHODS {
            let all = cell.of(m);
            if all.is_empty() {
                continue;
            }
            let ok = cell.ok(m);
            let f = |g: fn(&Sample) -> f64| -> Vec<f64> { ok.iter().map(|s| g(s)).collect() };
            let rounds = if m == Method::Godwit {
                all.iter()
                    .map(|s| {
                        format!(
                            "{}/{}{}",
                            s.predicted_rounds.map_or("—".into(), |r| r.to_string()),
                            s.actual_rounds.map_or("—".into(), |r| r.to_string()),
                            if s.learned_moves == Some(0) {
                                " (first)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::new()
            };
            md.push_str(&format!(
                "| {} | {} MiB | {} | {} | {}/{} | {} | {} | {} s | {} | {} | {} | {} | {} |\n",
                link.label,
                link.state_mib,
                cell.rate,
                m.name(),
                ok.len(),
                all.len(),
                ms(pct(&f(|s| s.gap_ms), 0.5)),
                ms(pct(&f(|s| s.gap_ms), 0.99)),
                num(pct(&f(|s| s.total_s), 0.5), 1),
                num(pct(&f(|s| s.eth_bytes as f64 / MB), 0.5), 0),
                num(pct(&f(|s| s.mover_bytes as f64 / MB), 0.5), 0),
                num(pct(&f(|s| s.cpu_s), 0.5), 1),
                num(
                    pct(&f(|s| s.copy_bytes_per_s.unwrap_or(f64::NAN) / MB), 0.5),
                    0
                ),
                rounds
            ));
        }
    }
    md.push_str(
        "\nDowntime side by side (p50 of the client's longest gap; ratio = baseline / godwit):\n\n",
    );
    md.push_str("| link | dirty MB/s | godwit | rsync×2 | rsync×2 / godwit | stop+rsync | stop+rsync / godwit | godwit's own downtime p50 | godwit's dirty rate seen (max, MB/s) |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for cell in cells {
        let g = cell.gap_p50(Method::Godwit);
        let w = cell.gap_p50(Method::RsyncWarm);
        let c = cell.gap_p50(Method::RsyncCold);
        let own: Vec<f64> = cell
            .ok(Method::Godwit)
            .iter()
            .filter_map(|s| s.mover_downtime_s)
            .map(|d| d * 1000.0)
            .collect();
        let seen: Vec<f64> = cell
            .of(Method::Godwit)
            .iter()
            .filter_map(|s| s.seen_dirty_rate)
            .map(|d| d / MB)
            .collect();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {}× | {} | {}× | {} | {} |\n",
            opts.links[cell.link].label,
            cell.rate,
            ms(g),
            ms(w),
            num(w / g, 1),
            ms(c),
            num(c / g, 1),
            ms(pct(&own, 0.5)),
            num(pct(&seen, 0.5), 1)
        ));
    }
    let failures: Vec<String> = cells
        .iter()
        .flat_map(|cell| {
            cell.samples
                .iter()
                .filter(|(_, s)| !s.ok)
                .map(move |(m, s)| {
                    format!(
                        "- {} at {} MB/s, {}: {}\n",
                        cell_link(opts, cell),
                        cell.rate,
                        m.name(),
                        s.error.as_deref().unwrap_or("failed")
                    )
                })
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\nFailed moves (left out of the figures above):\n\n");
        md.push_str(&failures.concat());
    }
    md.push_str(&targets(opts, cells));
    md.push_str(
        "\nAnchors: QEMU's default downtime limit is 300 ms; Clark et al. measured 60 to 210 ms \
         of downtime in their VM migrations.\n",
    );
    md
}

fn cell_link(opts: &Opts, cell: &Cell) -> String {
    opts.links[cell.link].label.clone()
}

/// The targets at 1 Gbit/s and 20 MB/s.
fn targets(opts: &Opts, cells: &[Cell]) -> String {
    let mut md = String::from("\nTargets (issue 5), at 1 Gbit/s and 20 MB/s:\n\n");
    let Some(cell) = cells
        .iter()
        .find(|c| opts.links[c.link].kbit == Some(1_000_000) && c.rate == 20.0)
    else {
        md.push_str("- not measured: the run had no 1 Gbit/s link at 20 MB/s\n");
        return md;
    };
    let link = &opts.links[cell.link];
    let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
    let g = cell.ok(Method::Godwit);
    let all = cell.of(Method::Godwit);
    let p50 = cell.gap_p50(Method::Godwit);
    md.push_str(&format!(
        "- p50 downtime ≤ 100 ms: {} ({} of {} runs committed with nothing lost)\n",
        format_args!("{} {}", ms(p50), verdict(p50 <= 100.0)),
        g.len(),
        all.len()
    ));
    let ratio = cell.gap_p50(Method::RsyncWarm) / p50;
    md.push_str(&format!(
        "- ≥ 20× lower downtime than rsync×2: {}× {}\n",
        num(ratio, 1),
        verdict(ratio >= 20.0)
    ));
    let within: Vec<bool> = g
        .iter()
        .map(|s| (s.eth_bytes as f64) <= 1.2 * (s.state_bytes as f64 + s.dirtied_bytes))
        .collect();
    let worst = g
        .iter()
        .map(|s| s.eth_bytes as f64 / (s.state_bytes as f64 + s.dirtied_bytes))
        .fold(f64::NAN, f64::max);
    md.push_str(&format!(
        "- bytes on the wire ≤ 1.2 × (state + data dirtied during the move): {} of {} runs, \
         largest ratio {} {}\n",
        within.iter().filter(|w| **w).count(),
        within.len(),
        num(worst, 2),
        verdict(!within.is_empty() && within.iter().all(|w| *w))
    ));
    let exact = all
        .iter()
        .filter(|s| s.predicted_rounds.is_some() && s.predicted_rounds == s.actual_rounds)
        .count();
    md.push_str(&format!(
        "- round estimate exact in ≥ 90% of runs: {exact} of {} {}\n",
        all.len(),
        verdict(!all.is_empty() && exact as f64 >= 0.9 * all.len() as f64)
    ));
    let first: Vec<&&Sample> = all.iter().filter(|s| s.learned_moves == Some(0)).collect();
    let first_exact = first
        .iter()
        .filter(|s| s.predicted_rounds.is_some() && s.predicted_rounds == s.actual_rounds)
        .count();
    md.push_str(&format!(
        "- of which first moves (the model had learned from none): exact in {first_exact} of {}\n",
        first.len()
    ));
    // The source's own downtime against what it predicted before the move.
    let within = |s: &Sample| match (s.predicted_downtime_s, s.mover_downtime_s) {
        (Some(p), Some(m)) if m > 0.0 => (p - m).abs() / m <= 0.25,
        _ => false,
    };
    let errors: Vec<String> = all
        .iter()
        .filter_map(|s| {
            let (p, m) = (s.predicted_downtime_s?, s.mover_downtime_s?);
            Some(format!("{:.0}/{:.0} ms", p * 1e3, m * 1e3))
        })
        .collect();
    let ok = all.iter().filter(|s| within(s)).count();
    md.push_str(&format!(
        "- downtime estimate within ±25% of godwit's own downtime: {ok} of {} (predicted/measured: \
         {}); first moves {} of {} {}\n",
        all.len(),
        errors.join(", "),
        first.iter().filter(|s| within(s)).count(),
        first.len(),
        verdict(!all.is_empty() && ok == all.len())
    ));
    let rate: Vec<f64> = g.iter().filter_map(|s| s.copy_bytes_per_s).collect();
    let share = pct(&rate, 0.5) / link.bytes_per_s().unwrap_or(f64::NAN);
    md.push_str(&format!(
        "- full copy at ≥ 90% of the shaped rate: round 0 at {} MB/s p50 = {}% of {} MB/s {}\n",
        num(pct(&rate, 0.5) / MB, 1),
        num(share * 100.0, 0),
        num(link.bytes_per_s().unwrap_or(f64::NAN) / MB, 0),
        verdict(share >= 0.9)
    ));
    md
}

/// The commit the source tree is at, and whether the agent's sources differ from it (the
/// agent binary is built from the tree as it was when xtask ran).
fn source() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty =
                git(&["status", "--porcelain", "--", "agent"]).is_some_and(|s| !s.is_empty());
            format!(
                "commit {commit}{}",
                if dirty {
                    " with uncommitted changes in `agent/`"
                } else {
                    ""
                }
            )
        }
        None => "unknown (no git)".into(),
    }
}

fn today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    out.unwrap_or_default()
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("godwit-bench-migrate: {e}");
            std::process::exit(2);
        }
    };
    godwit_tests::require_root();
    release_bin("kvcheck", "migrate");
    let began = Instant::now();
    let mut rig = MigrateRig::new(RigOptions {
        agent_bin: Some(release_bin("godwit", "migrate")),
        bin_dir: release_bin("kvstore", "migrate")
            .parent()
            .map(Path::to_path_buf),
        ..RigOptions::default()
    });
    let mut agent_pid = rig.c.agent_pid(1).expect("n1's agent runs");
    let _daemon = start_rsync_daemon(&rig);
    let mut cells = Vec::new();
    let mut seq = 0;
    for (li, link) in opts.links.iter().enumerate() {
        rig.c.clear_bandwidth(1);
        if let Some(kbit) = link.kbit {
            let burst = (kbit / 8).max(32 * 1024);
            rig.c.set_bandwidth_with(1, kbit, burst, 20);
        }
        for &rate in &opts.rates {
            let mut cell = Cell {
                link: li,
                rate,
                samples: Vec::new(),
            };
            let runs = link.runs.unwrap_or(opts.runs);
            for run in 0..runs {
                for m in METHODS {
                    seq += 1;
                    let name = format!("kv{seq}");
                    eprintln!(
                        "[{:>5.0} s] {} {} MiB, {rate} MB/s, run {}/{}: {} ({name})",
                        began.elapsed().as_secs_f64(),
                        link.label,
                        link.state_mib,
                        run + 1,
                        runs,
                        m.name()
                    );
                    if opts.fresh && m == Method::Godwit {
                        // A new agent process: its model has learned from no move.
                        rig.c.restart(1);
                        agent_pid = rig.c.agent_pid(1).expect("n1's agent runs");
                    }
                    let sample = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        one_move(&rig, agent_pid, &name, m, link, rate, opts.downtime_ms)
                    }))
                    .unwrap_or_else(|p| Sample {
                        error: Some(
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panicked".into()),
                        ),
                        ..Sample::default()
                    });
                    eprintln!(
                        "    ok {} gap {:.0} ms missing {} acked {} total {:.1} s wire {:.0} MB \
                         sent {:.0} MB cpu {:.1} s copy {:.0} MB/s own downtime {:?}{}",
                        sample.ok,
                        sample.gap_ms,
                        sample.missing,
                        sample.acknowledged,
                        sample.total_s,
                        sample.eth_bytes as f64 / MB,
                        sample.mover_bytes as f64 / MB,
                        sample.cpu_s,
                        sample.copy_bytes_per_s.unwrap_or(f64::NAN) / MB,
                        sample.mover_downtime_s,
                        sample
                            .error
                            .as_deref()
                            .map(|e| format!(" error: {e}"))
                            .unwrap_or_default()
                    );
                    clean_up(&rig, &name);
                    cell.samples.push((m, sample));
                }
            }
            cells.push(cell);
        }
    }
    rig.c.clear_bandwidth(1);
    let md = render(&opts, &cells, began.elapsed());
    print!("{md}");
    if opts.write {
        match write_section("migrate", "Migration", &md) {
            Ok(p) => eprintln!("wrote {}", p.display()),
            Err(e) => {
                eprintln!("godwit-bench-migrate: cannot write docs/BENCHMARKS.md: {e}");
                std::process::exit(1);
            }
        }
    }
}
