//! The service runtime with real processes and cgroups, driven through a real agent's API and
//! CLI: start and health, freeze and thaw seen by a client, stop, restarts with back-off, a
//! crash loop, bad specs, and Debian's redis-server as a managed service.
//! Needs root; one test at a time (`cargo xtask test`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use godwit_tests::{
    cgroup_layout, example_bin, free_port, godwit_bin, http_get, require_root, unique, wait_for,
    Agent, ServiceSlice,
};
use serde_json::Value;

const ECHO: &str = env!("CARGO_BIN_EXE_godwit-echo");
const LOAD: &str = env!("CARGO_BIN_EXE_godwit-load");

/// The `[services]` section of a test agent, with a cgroup parent of its own.
fn section(slice: &ServiceSlice, state_root: &std::path::Path) -> String {
    format!(
        "[probe]\nmode = \"procfs\"\ninterval_ms = 250\n[gossip]\nenabled = false\n\
         [transport]\nenabled = false\n{}",
        slice.toml(state_root)
    )
}

fn services(agent: &Agent) -> Vec<Value> {
    http_get(agent.addr, "/v1/services")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v["services"].as_array().cloned())
        .unwrap_or_default()
}

fn service(agent: &Agent, name: &str) -> Value {
    services(agent)
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or(Value::Null)
}

fn wait_service(agent: &Agent, name: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(15), || {
        let s = service(agent, name);
        cond(&s).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}: not {what}: {}\n{}",
            service(agent, name),
            agent.log()
        )
    })
}

fn cli(agent: &Agent, args: &[&str]) -> (bool, String) {
    let out = Command::new(godwit_bin())
        .args(args)
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One request on `conn`: the reply line, or `None` if none came within `timeout`.
fn ask(conn: &mut BufReader<TcpStream>, line: &str, timeout: Duration) -> Option<String> {
    conn.get_mut().set_read_timeout(Some(timeout)).unwrap();
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    match conn.read_line(&mut reply) {
        Ok(n) if n > 0 => Some(reply.trim().to_string()),
        _ => None,
    }
}

fn pid_alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_service_starts_healthy_freezes_thaws_and_stops() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    let kvstore = example_bin("kvstore");
    let kvcheck = example_bin("kvcheck");
    // The example stateful service, its state file in its state directory.
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"kv\"\ncommand = [\"{}\", \"--listen\", \"127.0.0.1:{port}\", \
         \"--state\", \"{{state}}/data/kv.state\", \"--size\", \"8388608\"]\nstate = [\"data\"]\n\
         health = {{ tcp = \"127.0.0.1:{port}\", interval_ms = 100, timeout_ms = 200 }}\n",
        section(&svc, &state),
        kvstore.display()
    ));
    let s = wait_service(&agent, "kv", "healthy", |s| s["health"] == "healthy");
    let pid = s["pid"].as_u64().unwrap();
    let cgroup = PathBuf::from(s["cgroup"].as_str().unwrap());
    // The process runs in the service's cgroup.
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "{procs}"
    );
    let (ok, table) = cli(&agent, &["services"]);
    assert!(
        ok && table.contains("kv ") && table.contains("healthy"),
        "{table}"
    );

    // The checking client writes a numbered, acknowledged sequence across the freeze.
    let addr = format!("127.0.0.1:{port}");
    let checker = Command::new(&kvcheck)
        .args(["--addr", &addr, "--timeout", "10", "run"])
        .args(["--duration", "4", "--rate", "100", "--prefix", "c"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // And a stream of numbered requests of the test's own on one connection.
    let mut conn = BufReader::new(TcpStream::connect(&addr).unwrap());
    for i in 1..=5 {
        let r = ask(
            &mut conn,
            &format!("SET t-{i:03} v-{i}"),
            Duration::from_secs(2),
        );
        assert!(r.as_deref().is_some_and(|r| r.starts_with("OK ")), "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(800));

    // Frozen: no reply at all to 20 numbered requests sent over a second.
    let freeze_asked = Instant::now();
    let (ok, out) = cli(&agent, &["service", "freeze", "kv"]);
    assert!(ok && out.contains("frozen"), "{out}");
    let frozen = Instant::now();
    assert!(std::fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap()
        .contains("frozen 1"));
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    for i in 6..=25 {
        conn.get_mut()
            .write_all(format!("SET t-{i:03} v-{i}\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        let got = conn.read_line(&mut reply);
        assert!(
            !matches!(got, Ok(n) if n > 0),
            "a frozen service answered request {i}: {reply:?}"
        );
    }
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut reply = String::new();
    assert!(
        !matches!(conn.read_line(&mut reply), Ok(n) if n > 0),
        "a frozen service answered: {reply:?}"
    );
    assert_eq!(service(&agent, "kv")["state"], "frozen");
    let thaw_asked = Instant::now();
    let frozen_for = thaw_asked - frozen;
    let (ok, out) = cli(&agent, &["service", "thaw", "kv"]);
    assert!(ok && out.contains("running"), "{out}");

    // Thawed: all 20 answers arrive, in order, each write acknowledged once.
    conn.get_mut()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut seqs = Vec::new();
    for i in 6..=25 {
        let mut reply = String::new();
        conn.read_line(&mut reply)
            .unwrap_or_else(|e| panic!("no reply to request {i} after thaw: {e}"));
        let seq: u64 = reply
            .trim()
            .strip_prefix("OK ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("request {i}: {reply:?}"));
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "acknowledged out of order: {seqs:?}"
    );
    for i in 1..=25 {
        let r = ask(&mut conn, &format!("GET t-{i:03}"), Duration::from_secs(2));
        assert_eq!(
            r.as_deref(),
            Some(format!("VAL v-{i}").as_str()),
            "t-{i:03}"
        );
    }

    // The checking client lost nothing it had acknowledged, and its longest time without a
    // reply covers the freeze.
    let out = checker.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kvcheck: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    eprintln!("kvcheck: {report}; frozen for {frozen_for:?}");
    assert!(out.status.success(), "{report}");
    assert_eq!(report["missing_acknowledged"], 0, "{report}");
    assert_eq!(report["corrupt"], 0, "{report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 100, "{report}");
    let gap = Duration::from_millis(report["longest_gap_ms"].as_u64().unwrap());
    // (kvcheck's milliseconds are whole; a reply it read just after the freeze was sent
    // before it.)
    assert!(
        gap + Duration::from_millis(20) >= frozen_for
            && gap < thaw_asked.elapsed() + (thaw_asked - freeze_asked),
        "longest gap {gap:?}, frozen for {frozen_for:?}: {report}"
    );
    // Its state lives in its state directory.
    let file = state.join("kv/data/kv.state");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 20);

    let (ok, out) = cli(&agent, &["service", "stop", "kv"]);
    assert!(ok && out.contains("stopped"), "{out}");
    assert!(!pid_alive(pid), "process {pid} still alive after stop");
    assert!(std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap()
        .trim()
        .is_empty());
    // Thawing a stopped service is refused, with a reason.
    let (ok, out) = cli(&agent, &["service", "thaw", "kv"]);
    assert!(!ok && out.contains("stopped"), "{out}");
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn freeze_thaw_and_stop_do_not_wait_for_a_slow_health_check() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    // Every check takes 4 s: one is always in flight.
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"slow\"\ncommand = [\"{ECHO}\", \"--listen\", \"127.0.0.1:{port}\"]\n\
         health = {{ command = [\"/bin/sleep\", \"4\"], interval_ms = 100, timeout_ms = 10000 }}\n",
        section(&svc, &state)
    ));
    wait_service(&agent, "slow", "running", |s| s["state"] == "running");
    std::thread::sleep(Duration::from_millis(500));
    let timed = |action: &str| {
        let t = Instant::now();
        let (code, body) = agent.act("POST", &format!("/v1/services/slow/{action}"), None);
        assert_eq!(code, 200, "{action}: {body}");
        (t.elapsed(), body)
    };
    let (took, body) = timed("freeze");
    assert!(body.contains("frozen"), "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "freeze took {took:?} behind the health check"
    );
    let (took, body) = timed("thaw");
    assert!(body.contains("running"), "{body}");
    assert!(took < Duration::from_millis(1500), "thaw took {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    let (took, body) = timed("stop");
    assert!(body.contains("stopped"), "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "stop took {took:?} behind the health check"
    );
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn a_crash_is_restarted_with_growing_back_off_and_a_crash_loop_fails() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"crashy\"\ncommand = [\"{ECHO}\", \"--listen\", \"127.0.0.1:{port}\", \
         \"--exit-after-ms\", \"150\"]\n\
         restart = {{ backoff_ms = 200, backoff_max_ms = 5000, max_restarts = 3, window_s = 60 }}\n",
        section(&svc, &state)
    ));
    // Watch the pid change: each new pid is a restart; time the gaps between them.
    let mut starts: Vec<(u64, Instant)> = Vec::new();
    let mut exits: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let last = loop {
        let s = service(&agent, "crashy");
        let now = Instant::now();
        match s["pid"].as_u64() {
            Some(pid) if starts.last().map(|(p, _)| *p) != Some(pid) => starts.push((pid, now)),
            None if s["state"] == "backoff" && exits.len() < starts.len() => exits.push(now),
            _ => {}
        }
        if s["state"] == "failed" || now > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(last["state"], "failed", "{last}\n{}", agent.log());
    assert_eq!(last["health"], "failed");
    assert_eq!(last["restarts"], 3, "{last}");
    assert_eq!(
        starts.len(),
        4,
        "the first start and three restarts: {starts:?}"
    );
    // Back-off between an exit and the next start: 200, 400, 800 ms (polling adds a little).
    let gaps: Vec<Duration> = exits
        .iter()
        .zip(starts.iter().skip(1))
        .map(|(e, (_, s))| s.duration_since(*e))
        .collect();
    eprintln!("back-off gaps: {gaps:?}");
    assert_eq!(gaps.len(), 3);
    assert!(gaps[0] >= Duration::from_millis(150), "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "delays grow: {gaps:?}"
    );
    assert!(agent.log().contains("crash loop"), "{}", agent.log());
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn a_service_that_never_passes_its_check_turns_unhealthy_and_is_restarted_until_failed() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    let dead = free_port();
    // It runs and listens, but its check asks a port nobody serves: it never passes.
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"sick\"\ncommand = [\"{ECHO}\", \"--listen\", \"127.0.0.1:{port}\"]\n\
         health = {{ tcp = \"127.0.0.1:{dead}\", interval_ms = 100, timeout_ms = 100, \
         start_timeout_ms = 700, unhealthy_restart_ms = 600 }}\n\
         restart = {{ backoff_ms = 100, backoff_max_ms = 1000, max_restarts = 2, window_s = 60 }}\n",
        section(&svc, &state)
    ));
    let t0 = Instant::now();
    let mut seen: Vec<(Duration, String, String, Option<u64>)> = Vec::new();
    let last = loop {
        let s = service(&agent, "sick");
        let row = (
            t0.elapsed(),
            s["state"].as_str().unwrap_or("?").to_string(),
            s["health"].as_str().unwrap_or("?").to_string(),
            s["pid"].as_u64(),
        );
        if seen
            .last()
            .is_none_or(|l| (&l.1, &l.2, l.3) != (&row.1, &row.2, row.3))
        {
            seen.push(row);
        }
        if s["state"] == "failed" || t0.elapsed() > Duration::from_secs(20) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{seen:#?}");
    assert_eq!(last["state"], "failed", "{last}\n{seen:?}\n{}", agent.log());
    assert_eq!(last["restarts"], 2, "{last}");
    assert!(
        last["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("unhealthy")),
        "{last}"
    );
    // Starting, then unhealthy once the start timeout passed (not starting forever), then
    // restarted: three processes in all.
    let first_unhealthy = seen
        .iter()
        .find(|r| r.2 == "unhealthy")
        .unwrap_or_else(|| panic!("never unhealthy: {seen:?}"));
    assert!(
        first_unhealthy.0 >= Duration::from_millis(600),
        "unhealthy before the start timeout: {seen:?}"
    );
    let mut pids: Vec<u64> = seen.iter().filter_map(|r| r.3).collect();
    pids.dedup();
    assert_eq!(pids.len(), 3, "the first start and two restarts: {seen:?}");
    assert!(
        pids.iter().all(|p| !pid_alive(*p)),
        "a restarted instance still runs: {pids:?}"
    );
    assert!(agent.log().contains("unhealthy past the limit"));
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn the_probe_reports_each_services_cpu_memory_and_dirty_rate_from_its_cgroup() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    // `toucher` writes one byte in every page of 64 MiB of anonymous memory, then stays
    // (godwit-load waits for stdin to close; `sleep` holds the pipe open).
    const MIB: u64 = 1024 * 1024;
    const TOUCHED: u64 = 64 * MIB;
    // `writer` dirties 16 MiB of a file on a disk filesystem (tmpfs pages raise no dirty
    // event), has `sync` clean them, and does it again, so its cgroup dirties pages steadily.
    const WRITTEN: u64 = 16 * MIB;
    let scratch = Scratch(Path::new("/var/tmp").join(unique("godwit-writer")));
    std::fs::create_dir_all(&scratch.0).unwrap();
    // The services run as the unprivileged service user: the scratch directory is theirs too.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mut agent = Agent::start(&format!(
        "{}
[[service]]
name = \"burner\"\ncommand = [\"/bin/sh\", \"-c\", \"while :; do :; done\"]\n\
         [[service]]\nname = \"toucher\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 100000 | {LOAD} touch {TOUCHED}\"]\n\
         [[service]]\nname = \"writer\"\ncommand = [\"/bin/sh\", \"-c\", \"touch {file}; while :; do {LOAD} write {file} {WRITTEN} 1048576 </dev/null >/dev/null; sync; sleep 0.2; done\"]\n",
        section(&svc, &state),
        file = scratch.0.join("f").display(),
    ));
    // One busy loop: close to one core, as the service's cgroup accounts it.
    let s = wait_service(&agent, "burner", "measured", |s| {
        s["cpu_cores"].as_f64().is_some_and(|c| c > 0.5)
    });
    assert!(s["cpu_cores"].as_f64().unwrap() < 1.3, "{s}");
    assert!(s["node"].as_str().is_some_and(|n| !n.is_empty()), "{s}");

    // The touched memory is charged to the service's cgroup, and the probe reports it.
    let t = wait_service(&agent, "toucher", "charged its memory", |s| {
        s["memory_bytes"].as_u64().is_some_and(|m| m >= TOUCHED)
    });
    let mem = t["memory_bytes"].as_u64().unwrap();
    assert!(
        mem < 2 * TOUCHED,
        "64 MiB touched, {mem} bytes charged: {t}"
    );
    let layout = cgroup_layout();
    let cgroup = PathBuf::from(t["cgroup"].as_str().unwrap());
    let pid = t["pid"].as_u64().unwrap();
    // Where the figure comes from: the v2 memory controller, or on a hybrid host the v1
    // memory cgroup at the same path, which the service's processes joined before exec.
    let memcg = if cgroup.join("memory.current").exists() {
        cgroup.clone()
    } else {
        let v1 = layout
            .memory_v1_root
            .as_ref()
            .expect("no memory controller in either hierarchy")
            .join(cgroup.strip_prefix(&layout.v2_root).unwrap());
        let procs = std::fs::read_to_string(v1.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{pid} not in {}: {procs}",
            v1.display()
        );
        v1
    };
    eprintln!("toucher: {mem} bytes charged, memcg {}", memcg.display());

    // Pages dirtied by the writer are charged to its cgroup by the probe, not to the others.
    let w = wait_service(&agent, "writer", "dirtied pages", |s| {
        s["dirty_bytes_per_second"]
            .as_f64()
            .is_some_and(|d| d > MIB as f64)
    });
    let burner = service(&agent, "burner");
    assert!(
        burner["dirty_bytes_per_second"]
            .as_f64()
            .is_some_and(|d| d < 0.1 * MIB as f64),
        "the busy loop writes nothing: {burner}"
    );
    eprintln!(
        "writer: {:.1} MiB/s dirtied",
        w["dirty_bytes_per_second"].as_f64().unwrap() / MIB as f64
    );

    let (ok, table) = cli(&agent, &["services"]);
    assert!(ok && table.contains("burner"), "{table}");
    // The MEM MiB column of the toucher's row, found by its header.
    let column = table
        .lines()
        .next()
        .and_then(|h| {
            h.replace("MEM MiB", "MEM_MiB")
                .replace("DIRTY MB/s", "DIRTY_MB/s")
                .split_whitespace()
                .position(|c| c == "MEM_MiB")
        })
        .unwrap_or_else(|| panic!("{table}"));
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("toucher "))
        .unwrap_or_else(|| panic!("{table}"))
        .split_whitespace()
        .collect();
    let mib: f64 = row[column].parse().unwrap_or_else(|_| panic!("{table}"));
    assert!(mib >= (TOUCHED / MIB) as f64, "{table}");

    // Stopping the agent removes the service's cgroups, the v1 memory one included.
    assert_eq!(agent.terminate(), Some(0), "{}", agent.log());
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(!memcg.exists(), "{} left behind", memcg.display());
    std::fs::remove_dir_all(&state).ok();
}

/// A directory removed when the test ends, also when it fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn bad_specs_are_refused_and_nothing_running_is_disturbed() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"echo\"\ncommand = [\"{ECHO}\", \"--listen\", \"127.0.0.1:{port}\"]\n\
         health = {{ tcp = \"127.0.0.1:{port}\", interval_ms = 100 }}\n",
        section(&svc, &state)
    ));
    let before = wait_service(&agent, "echo", "healthy", |s| s["health"] == "healthy");
    let post = |body: &str| agent.act("POST", "/v1/services", Some(body));
    for (body, code, field) in [
        (
            r#"{"name":"x","command":["/bin/true"],"image":"/nonexistent/image"}"#,
            400,
            "image",
        ),
        (
            r#"{"name":"y","command":["/bin/true"],"state":["/etc/passwd"]}"#,
            400,
            "state",
        ),
        (
            r#"{"name":"echo","command":["/bin/true"]}"#,
            409,
            "defined twice",
        ),
        (
            r#"{"name":"z","command":["/bin/true"],"bogus":1}"#,
            400,
            "bogus",
        ),
        (
            r#"{"name":"u","command":["/bin/true"],"user":"no-such-user-here"}"#,
            400,
            "does not exist on this node",
        ),
        (
            r#"{"name":"c","command":["/bin/true"],"capabilities":["CAP_FLY"]}"#,
            400,
            "capabilities",
        ),
    ] {
        let (got, text) = post(body);
        assert_eq!(got, code, "{body}: {text}");
        assert!(text.contains(field), "{body}: {text}");
    }
    // An image that passes validation but cannot be unpacked: refused, and no cgroup is
    // left behind for it.
    std::fs::create_dir_all(&state).unwrap();
    let broken = state.join("broken.tar");
    std::fs::write(&broken, b"this is not a tar archive").unwrap();
    let (got, text) = post(&format!(
        r#"{{"name":"broken","command":["/bin/true"],"image":"{}"}}"#,
        broken.display()
    ));
    assert_eq!(got, 400, "{text}");
    assert!(text.contains("image"), "{text}");
    let layout = cgroup_layout();
    let rel = PathBuf::from(&svc.name).join("broken.service");
    assert!(
        !layout.v2_root.join(&rel).exists(),
        "a cgroup was left for the refused service"
    );
    if let Some(v1) = &layout.memory_v1_root {
        assert!(!v1.join(&rel).exists(), "a v1 memory cgroup was left");
    }
    let after = service(&agent, "echo");
    assert_eq!(
        after["pid"], before["pid"],
        "the running service was not touched"
    );
    assert_eq!(after["health"], "healthy");
    assert_eq!(services(&agent).len(), 1, "nothing was added");
    // A config file with a bad service is refused by `godwit validate`, naming the field.
    let bad = state.join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nname = \"a\"\ncommand = [\"x\"]\nstate = [\"../../etc\"]\n",
    )
    .unwrap();
    let out = Command::new(godwit_bin())
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state"));
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn redis_server_runs_managed_and_keeps_its_state_across_a_restart() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let port = free_port();
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"redis\"\ncommand = [\"/usr/bin/redis-server\", \"--port\", \"{port}\", \
         \"--bind\", \"127.0.0.1\", \"--dir\", \"{{state}}\", \"--appendonly\", \"yes\", \
         \"--save\", \"\"]\nstate = [\"appendonlydir\"]\n\
         health = {{ command = [\"redis-cli\", \"-p\", \"{port}\", \"ping\"], interval_ms = 200 }}\n",
        section(&svc, &state)
    ));
    wait_service(&agent, "redis", "healthy", |s| s["health"] == "healthy");
    let redis = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(redis(&["SET", "k", "v1"]), "OK");
    assert!(
        state.join("redis/appendonlydir").exists(),
        "AOF in the state dir"
    );
    let (ok, _) = cli(&agent, &["service", "stop", "redis"]);
    assert!(ok);
    let (ok, _) = cli(&agent, &["service", "start", "redis"]);
    assert!(ok);
    wait_service(&agent, "redis", "healthy again", |s| {
        s["health"] == "healthy"
    });
    assert_eq!(
        redis(&["GET", "k"]),
        "v1",
        "the appendonly state survived the restart"
    );
    std::fs::remove_dir_all(&state).ok();
}

/// `redis-cli` run inside node `i`'s namespace.
fn redis_in(c: &godwit_tests::cluster::Cluster, i: usize, args: &[String]) -> String {
    let args = args.to_vec();
    c.in_node(i, move || {
        let out = Command::new("redis-cli").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

#[test]
fn redis_answers_on_its_vip_and_the_vip_moves_with_the_service() {
    require_root();
    let slices = [ServiceSlice::new(), ServiceSlice::new()];
    let names: Vec<String> = slices.iter().map(|s| s.name.clone()).collect();
    let c = godwit_tests::cluster::Cluster::builder(2)
        .extra_toml(move |n| {
            format!(
                "[probe]\nmode = \"procfs\"\n[gossip]\nenabled = false\n[transport]\nenabled = false\n\
                 [services]\ncgroup_parent = \"{}\"\nstate_root = \"{}\"\nvip_interface = \"eth0\"\n\
                 stop_grace_ms = 3000\n",
                names[n.index - 1],
                n.dir.join("state").display()
            )
        })
        .start();
    let o = c.node(1).addr.octets();
    let vip = std::net::Ipv4Addr::new(o[0], o[1], o[2], 100);
    let spec = serde_json::json!({
        "name": "redis",
        "command": ["/usr/bin/redis-server", "--port", "6390", "--bind", "0.0.0.0",
                    "--protected-mode", "no", "--dir", "{state}", "--appendonly", "yes", "--save", ""],
        "state": ["appendonlydir"],
        "health": {"tcp": "127.0.0.1:6390", "interval_ms": 200},
        "vip": vip.to_string(),
    })
    .to_string();
    let status = |i: usize| -> Value {
        c.json(i, "/v1/services")["services"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or(Value::Null)
    };
    let cli_args = |cmd: &[&str]| -> Vec<String> {
        let mut v = vec![
            "-h".to_string(),
            vip.to_string(),
            "-p".into(),
            "6390".into(),
        ];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    };
    let has_vip = |i: usize| {
        c.in_node(i, || {
            let out = Command::new("ip")
                .args(["-o", "addr", "show", "dev", "eth0"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("{vip}/32"))
        })
    };

    let (code, body) = c.act(1, "POST", "/v1/services", Some(&spec)).unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(15), || {
        (status(1)["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("no VIP on n1: {}\n{}", status(1), c.log(1)));
    assert!(has_vip(1) && !has_vip(2));
    // From the other node's namespace, through the VIP.
    assert_eq!(redis_in(&c, 2, &cli_args(&["PING"])), "PONG");
    assert_eq!(redis_in(&c, 2, &cli_args(&["SET", "where", "n1"])), "OK");

    // Stop on n1: the VIP goes with it.
    let (code, body) = c.act(1, "POST", "/v1/services/redis/stop", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(!has_vip(1), "the VIP left n1 with the service");
    // Start on n2: the VIP follows, and n1 reaches the new instance through it.
    let (code, body) = c.act(2, "POST", "/v1/services", Some(&spec)).unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(15), || {
        (status(2)["vip_active"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("no VIP on n2: {}\n{}", status(2), c.log(2)));
    assert!(has_vip(2) && !has_vip(1));
    let answered = wait_for(Duration::from_secs(5), || {
        let dir = redis_in(&c, 1, &cli_args(&["CONFIG", "GET", "dir"]));
        dir.contains(&c.node(2).dir.display().to_string())
            .then_some(dir)
    });
    assert!(
        answered.is_some(),
        "n1 reaches n2's redis through the VIP: {}",
        redis_in(&c, 1, &cli_args(&["CONFIG", "GET", "dir"]))
    );
    assert_eq!(redis_in(&c, 1, &cli_args(&["PING"])), "PONG");
    drop(c);
    drop(slices);
}

/// Runs `ip ARGS` (in the calling thread's network namespace); panics on failure.
fn ip_cmd(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_ipv6_vip_is_usable_at_once_and_announced_by_an_unsolicited_neighbour_advertisement() {
    require_root();
    use godwit_tests::cluster::capture::packet_socket;
    use std::net::{IpAddr, Ipv6Addr};
    use std::os::fd::AsRawFd;
    let vip: Ipv6Addr = "fd00:198:18::64".parse().unwrap();
    // In a network namespace of this thread's own, gone when the thread ends: a veth pair,
    // the VIP on one end and a packet socket on the other.
    let frames = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread (and the processes it
        // starts) into a new network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        ip_cmd(&[
            "link", "add", "gw-a", "type", "veth", "peer", "name", "gw-b",
        ]);
        ip_cmd(&["link", "set", "gw-a", "up"]);
        ip_cmd(&["link", "set", "gw-b", "up"]);
        let link = ip_cmd(&["-o", "link", "show", "gw-a"]);
        let mac_text = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .to_string();
        let mac: Vec<u8> = mac_text
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();

        const ETH_P_IPV6: u16 = 0x86dd;
        let fd = packet_socket("gw-b", libc::SOCK_RAW, ETH_P_IPV6).expect("packet socket on gw-b");

        godwit::service::vip::add(IpAddr::V6(vip), "gw-a").unwrap();
        // Added without duplicate address detection: not tentative, usable at once.
        let addrs = ip_cmd(&["-6", "-o", "addr", "show", "dev", "gw-a"]);
        let line = addrs
            .lines()
            .find(|l| l.contains(&format!("{vip}/128")))
            .unwrap_or_else(|| panic!("VIP not on gw-a: {addrs}"));
        assert!(!line.contains("tentative"), "{line}");

        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let mut buf = [0u8; 2048];
            // SAFETY: recv(2) into our buffer, at most its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        godwit::service::vip::remove(IpAddr::V6(vip), "gw-a").unwrap();
        ip_cmd(&["link", "del", "gw-a"]);
        (frames, mac)
    })
    .join()
    .unwrap();
    let (frames, mac) = frames;

    // ICMPv6 messages in the frames: (Ethernet dst, Ethernet src, hop limit, IPv6 src,
    // IPv6 dst, ICMPv6 message).
    type Icmp<'a> = (&'a [u8], &'a [u8], u8, Ipv6Addr, Ipv6Addr, &'a [u8]);
    let icmp: Vec<Icmp<'_>> = frames
        .iter()
        .filter(|f| f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[20] == 58)
        .map(|f| {
            let a =
                |r: std::ops::Range<usize>| Ipv6Addr::from(<[u8; 16]>::try_from(&f[r]).unwrap());
            (&f[0..6], &f[6..12], f[21], a(22..38), a(38..54), &f[54..])
        })
        .collect();
    let target_of = |m: &[u8]| {
        (m.len() >= 24).then(|| Ipv6Addr::from(<[u8; 16]>::try_from(&m[8..24]).unwrap()))
    };
    let na = icmp
        .iter()
        .find(|(.., m)| m[0] == 136 && target_of(m) == Some(vip))
        .unwrap_or_else(|| {
            panic!(
                "no neighbour advertisement for {vip} in {} frames",
                frames.len()
            )
        });
    let (eth_dst, eth_src, hops, src, dst, m) = na;
    assert_eq!(
        *eth_dst,
        [0x33, 0x33, 0, 0, 0, 1],
        "to all nodes' multicast MAC"
    );
    assert_eq!(*eth_src, mac.as_slice(), "from gw-a");
    assert_eq!(*hops, 255, "neighbour discovery needs hop limit 255");
    assert_eq!(*src, vip);
    assert_eq!(*dst, "ff02::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(m[1], 0, "code");
    assert_eq!(
        m[4] & 0xe0,
        0x20,
        "override only: not router, not solicited"
    );
    assert!(
        m.len() >= 32 && m[24] == 2 && m[25] == 1,
        "target link-layer option: {m:?}"
    );
    assert_eq!(&m[26..32], mac.as_slice(), "the option carries gw-a's MAC");
    // A valid ICMPv6 checksum (over the pseudo-header and the message): receivers drop others.
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(m.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(m);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "bad ICMPv6 checksum");
    // No duplicate address detection for the VIP: no solicitation for it.
    assert!(
        !icmp
            .iter()
            .any(|(.., m)| m[0] == 135 && target_of(m) == Some(vip)),
        "a DAD neighbour solicitation was sent for the VIP"
    );
}

/// The executable a process runs now.
fn exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[test]
fn a_process_forked_ahead_waits_in_the_cgroup_and_becomes_the_service_at_its_start() {
    require_root();
    let slice = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let layout = cgroup_layout();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    rt.block_on(async {
        let manager = godwit::service::Manager::new(godwit::service::Runtime {
            node: "n".into(),
            memory_v1_root: layout.memory_v1_root.clone().filter(|_| layout.hybrid),
            cpu_v1_root: None,
            v2_root: layout.v2_root.clone(),
            section: godwit::service::ServicesSection {
                cgroup_parent: slice.name.clone(),
                state_root: state.clone(),
                ..Default::default()
            },
            images: None,
            run_root: state.join("run"),
            default_user: godwit::service::Identity::ensure_system_user("godwit-svc"),
        });
        let spec = |arg: &str| -> godwit::service::ServiceSpec {
            serde_json::from_value(serde_json::json!({
                "name": "ahead",
                "command": ["/bin/sleep", arg],
                "autostart": true,
            }))
            .unwrap()
        };
        let procs = layout
            .v2_root
            .join(&slice.name)
            .join("ahead.service/cgroup.procs");
        let pids = || -> Vec<u32> {
            std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect()
        };

        // Forked ahead: one process in the service's cgroup, still the agent's program.
        manager.park(spec("30000")).await.unwrap();
        let parked = wait_for(Duration::from_secs(5), || pids().first().copied())
            .expect("the forked child joined the service's cgroup");
        assert_eq!(pids(), vec![parked]);
        assert_ne!(
            exe(parked).as_deref(),
            Some(sleep.as_path()),
            "not exec'd yet"
        );
        if let Some(v1) = layout.memory_v1_root.as_ref().filter(|_| layout.hybrid) {
            let v1_procs = v1.join(&slice.name).join("ahead.service/cgroup.procs");
            let v1_pids = std::fs::read_to_string(v1_procs).unwrap();
            assert!(
                v1_pids.lines().any(|l| l == parked.to_string()),
                "its memory is charged to the service"
            );
        }

        // The start of the same spec is that process, exec'd.
        let st = manager.add(spec("30000")).await.unwrap();
        assert_eq!(st.pid, Some(parked));
        let exec_d = wait_for(Duration::from_secs(5), || {
            (exe(parked).as_deref() == Some(sleep.as_path())).then_some(())
        });
        assert!(
            exec_d.is_some(),
            "the service runs its program: {:?}",
            exe(parked)
        );
        manager.remove("ahead").await.unwrap();
        assert!(!pid_alive(u64::from(parked)));

        // Forked for another spec: ended, and the start forks anew.
        manager.park(spec("30000")).await.unwrap();
        let stale = wait_for(Duration::from_secs(5), || pids().first().copied()).unwrap();
        let st = manager.add(spec("20000")).await.unwrap();
        assert_ne!(st.pid, Some(stale));
        assert!(!pid_alive(u64::from(stale)));
        assert_eq!(pids(), vec![st.pid.unwrap()]);
        manager.remove("ahead").await.unwrap();

        // Never started: unparking ends the child and removes the cgroup.
        manager.park(spec("30000")).await.unwrap();
        let gone = wait_for(Duration::from_secs(5), || pids().first().copied()).unwrap();
        manager.unpark("ahead").await;
        assert!(!pid_alive(u64::from(gone)));
        assert!(!procs.parent().unwrap().exists(), "the cgroup is removed");
        manager.shutdown().await;
    });
    std::fs::remove_dir_all(&state).ok();
}

#[test]
fn a_kill_shuts_the_frozen_services_sockets_before_its_processes_die() {
    require_root();
    let slice = ServiceSlice::new();
    let layout = cgroup_layout();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cg = godwit::service::ServiceCgroup::create(
            &layout.v2_root,
            layout.memory_v1_root.as_deref().filter(|_| layout.hybrid),
            &slice.name,
            "sock",
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A client of ours inside the cgroup: it connects and holds the connection.
        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec sleep 30"),
        ]);
        cg.place(&mut cmd).unwrap();
        let mut child = cmd.spawn().unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        cg.freeze().await.unwrap();

        // Frozen, its socket shut from outside: our end sees the end of the stream at once,
        // while the process is still there, frozen.
        assert_eq!(cg.shut_sockets(), 1, "one socket held");
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 16];
        let got = std::io::Read::read(&mut conn, &mut buf);
        assert!(matches!(got, Ok(0)), "end of stream, not {got:?}");
        let pid = child.id().unwrap();
        assert!(
            pid_alive(u64::from(pid)) && cg.is_frozen(),
            "still there, frozen"
        );

        cg.kill_all();
        let _ = child.wait().await;
        assert!(cg.wait_empty(Duration::from_secs(5)).await);
        let _ = cg.thaw().await;
        cg.remove().unwrap();
    });
}

/// A field of `/proc/PID/status`.
fn proc_status(pid: u64, field: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{st}"))
        .trim()
        .to_string()
}

/// A service without `user` runs as the node's unprivileged service user (created by the
/// agent), with no capability, `no_new_privs` and the default umask; its health command runs
/// as that user too, and its state directory belongs to it. A spec that lists a capability has
/// exactly that one; `root` runs only when written, and then without capabilities.
#[test]
fn services_run_unprivileged_unless_their_spec_says_otherwise() {
    require_root();
    let svc = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let ids = state.join("plain/health-ids");
    let agent = Agent::start(&format!(
        "{}\n[[service]]\nname = \"plain\"\ncommand = [\"/bin/sleep\", \"100000\"]\n\
         health = {{ command = [\"/bin/sh\", \"-c\", \"echo $(id -u) $(id -g) $(umask) > {ids}\"], interval_ms = 100 }}\n\
         [[service]]\nname = \"bind\"\ncommand = [\"/bin/sleep\", \"100000\"]\n\
         capabilities = [\"CAP_NET_BIND_SERVICE\"]\numask = \"0077\"\n\
         [[service]]\nname = \"rooted\"\nuser = \"root\"\ncommand = [\"/bin/sleep\", \"100000\"]\n",
        section(&svc, &state),
        ids = ids.display(),
    ));
    let user = godwit::service::Identity::resolve("godwit-svc", None)
        .unwrap_or_else(|e| panic!("the agent created no service user: {e}\n{}", agent.log()));
    assert_ne!(user.uid, 0);
    let (uid, gid) = (user.uid.to_string(), user.gid.to_string());
    let all = |id: &str| [id; 4].join("\t");
    const NONE: &str = "0000000000000000";

    let plain = wait_service(&agent, "plain", "healthy", |s| s["health"] == "healthy");
    let pid = plain["pid"].as_u64().unwrap();
    assert_eq!(proc_status(pid, "Uid"), all(&uid));
    assert_eq!(proc_status(pid, "Gid"), all(&gid));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, set), NONE, "plain: {set}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Umask"), "0027");
    // The health command ran as the service's user, with its umask.
    assert_eq!(
        std::fs::read_to_string(&ids).unwrap().trim(),
        format!("{uid} {gid} 0027")
    );
    let dir = std::fs::metadata(state.join("plain")).unwrap();
    assert_eq!(
        (dir.uid(), dir.gid()),
        (user.uid, user.gid),
        "the state directory"
    );

    let bind = wait_service(&agent, "bind", "running", |s| s["state"] == "running");
    let pid = bind["pid"].as_u64().unwrap();
    assert_eq!(proc_status(pid, "Uid"), all(&uid));
    // CAP_NET_BIND_SERVICE is capability 10: bit 0x400, and nothing else.
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, set), "0000000000000400", "bind: {set}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Umask"), "0077");

    let rooted = wait_service(&agent, "rooted", "running", |s| s["state"] == "running");
    let pid = rooted["pid"].as_u64().unwrap();
    assert_eq!(proc_status(pid, "Uid"), all("0"));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, set), NONE, "rooted: {set}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    drop(agent);
    std::fs::remove_dir_all(&state).ok();
}
