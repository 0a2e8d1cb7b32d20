//! The agent as an operator runs it: a real `godwit agent` process, its JSON API and
//! `/metrics`, its configuration errors, and its shutdown. Needs root; one test at a time.

use std::process::Command;
use std::time::{Duration, Instant};

use godwit_tests::*;
use serde_json::Value;

fn process(agent: &Agent, pid: u32) -> Option<Value> {
    agent
        .json("/v1/processes")
        .as_array()?
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
}

fn container(agent: &Agent, cgroup_path: &str) -> Option<Value> {
    agent
        .json("/v1/containers")
        .as_array()?
        .iter()
        .find(|c| c["cgroup_path"].as_str() == Some(cgroup_path))
        .cloned()
}

/// Burns 2 s of CPU in a child cgroup and compares what the agent reports for the process and
/// for the cgroup with the kernel's /proc/PID/stat and cpu.stat.
fn cpu_matches_kernel(mode: &str, tolerance_pct: f64) {
    require_root();
    let agent = Agent::start(&format!("[probe]\nmode = \"{mode}\"\ninterval_ms = 250\n"));
    let cg = TestCgroup::new("godwit-agent-cpu");
    let mut w = Workload::start(&["burn", "2000"], Some(&cg));
    w.wait_done();
    std::thread::sleep(Duration::from_millis(100));
    let stat_s = w.proc_cpu_ns() as f64 / 1e9;
    let cg_s = cg.cpu_usage_ns() as f64 / 1e9;
    // Wait for a sample taken after the burn ended.
    let p = wait_for(Duration::from_secs(5), || {
        process(&agent, w.pid())
            .filter(|p| p["cpu_seconds_total"].as_f64().unwrap_or(0.0) >= stat_s * 0.9)
    })
    .unwrap_or_else(|| {
        panic!(
            "process {} not reported with its CPU time:\n{}",
            w.pid(),
            agent.log()
        )
    });
    std::thread::sleep(Duration::from_millis(600));
    let p = process(&agent, w.pid()).unwrap_or(p);
    let c = container(&agent, &cg.rel_path)
        .unwrap_or_else(|| panic!("cgroup {} not in /v1/containers", cg.rel_path));
    assert_eq!(p["source"]["cpu"], mode, "process CPU source");
    assert_eq!(p["cgroup_path"], cg.rel_path.as_str());
    let expected_container_source = if mode == "procfs" { "cgroupfs" } else { "ebpf" };
    assert_eq!(
        c["source"]["cpu"], expected_container_source,
        "container CPU source"
    );
    assert_within(
        &format!("{mode}: process CPU s vs /proc/PID/stat"),
        p["cpu_seconds_total"].as_f64().unwrap(),
        stat_s,
        tolerance_pct,
    );
    assert_within(
        &format!("{mode}: process CPU s vs the cgroup's cpu.stat"),
        p["cpu_seconds_total"].as_f64().unwrap(),
        cg_s,
        tolerance_pct,
    );
    assert_within(
        &format!("{mode}: container CPU s vs cpu.stat"),
        c["cpu_seconds_total"].as_f64().unwrap(),
        cg_s,
        tolerance_pct,
    );
    w.finish();
}

#[test]
fn ebpf_cpu_per_process_and_container_within_3_percent() {
    cpu_matches_kernel("ebpf", 3.0);
}

#[test]
fn procfs_fallback_cpu_within_5_percent() {
    cpu_matches_kernel("procfs", 5.0);
}

#[test]
fn memory_of_process_and_container_covers_what_was_written() {
    require_root();
    let agent = Agent::start("[probe]\nmode = \"ebpf\"\ninterval_ms = 250\n");
    let cg = TestCgroup::new("godwit-agent-mem");
    let bytes = 64 * 1024 * 1024u64;
    let mut w = Workload::start(&["touch", &bytes.to_string()], Some(&cg));
    w.wait_done();
    let p = wait_for(Duration::from_secs(5), || {
        process(&agent, w.pid()).filter(|p| p["rss_bytes"].as_u64().unwrap_or(0) >= bytes)
    })
    .unwrap_or_else(|| panic!("RSS never reached {bytes}: {:?}", process(&agent, w.pid())));
    assert_eq!(p["source"]["memory"], "procfs");
    let c = wait_for(Duration::from_secs(5), || {
        container(&agent, &cg.rel_path).filter(|c| c["memory_bytes"].as_u64().unwrap_or(0) >= bytes)
    })
    .unwrap_or_else(|| {
        panic!(
            "container memory never reached {bytes}: {:?}",
            container(&agent, &cg.rel_path)
        )
    });
    assert_eq!(c["source"]["memory"], "cgroupfs");
    let ws = c["memory_working_set_bytes"].as_u64().unwrap();
    assert!(
        ws >= bytes,
        "working set {ws} covers the {bytes} anonymous bytes written"
    );
    let wf = c["write_faults_total"].as_u64().unwrap();
    assert!(
        wf >= bytes / 4096,
        "container write faults {wf} cover the pages written"
    );
    w.finish();
}

#[test]
fn fallback_is_reported_with_its_cause() {
    require_root();
    let agent = Agent::start("[probe]\nmode = \"procfs\"\n");
    let node = agent.json("/v1/node");
    assert_eq!(node["probe"]["source"], "procfs");
    let reason = node["probe"]["fallback_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("procfs"),
        "fallback reason names the cause: {reason:?}"
    );
    let log = agent.log();
    assert!(
        !log.contains("BPF probe attached"),
        "procfs mode loads no BPF:\n{log}"
    );
}

#[test]
fn unprivileged_agent_warns_once_and_falls_back_to_procfs() {
    require_root();
    // The same binary as user nobody: no CAP_BPF, so the maps cannot be created.
    let agent = Agent::start_wrapped(
        "[probe]\nmode = \"auto\"\ninterval_ms = 250\n",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    let node = agent.json("/v1/node");
    assert_eq!(node["probe"]["source"], "procfs", "falls back: {node}");
    let reason = node["probe"]["fallback_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("CAP_BPF"),
        "the cause names the missing capability: {reason:?}"
    );
    // Samples keep coming from procfs, and the warning is not repeated.
    std::thread::sleep(Duration::from_millis(800));
    let procs = agent.json("/v1/processes");
    assert!(
        procs.as_array().is_some_and(|a| !a.is_empty()),
        "processes listed from procfs"
    );
    let log = agent.log();
    assert_eq!(
        log.matches("BPF probe unavailable").count(),
        1,
        "one warning:\n{log}"
    );
}

#[test]
fn spawned_process_seen_within_a_second_and_dropped_after_exit() {
    require_root();
    let agent = Agent::start("[probe]\nmode = \"ebpf\"\n");
    let w = Workload::start(&["idle"], None);
    let pid = w.pid();
    let started = Instant::now();
    let seen = wait_for(Duration::from_secs(3), || process(&agent, pid));
    let seen_after = started.elapsed();
    let seen = seen.expect("spawned process never listed");
    assert!(
        seen_after < Duration::from_secs(1),
        "listed after {seen_after:?}, want < 1 s"
    );
    assert_eq!(seen["comm"], "godwit-load");
    w.finish();
    let ended = Instant::now();
    wait_for(Duration::from_secs(3), || {
        process(&agent, pid).is_none().then_some(())
    })
    .expect("ended process still listed");
    let gone_after = ended.elapsed();
    assert!(
        gone_after < Duration::from_secs(1),
        "dropped after {gone_after:?}, want < 1 s"
    );
    eprintln!("listed {seen_after:?} after spawn, dropped {gone_after:?} after exit");
}

#[test]
fn promtool_accepts_metrics() {
    require_root();
    let mut agent = Agent::start("[probe]\nmode = \"ebpf\"\ninterval_ms = 500\n");
    // A workload in its own cgroup, so container series exist too.
    let cg = TestCgroup::new("godwit-prom");
    let mut w = Workload::start(&["burn", "700"], Some(&cg));
    w.wait_done();
    // Let a few samples produce rates, energy and per-process series.
    std::thread::sleep(Duration::from_millis(1500));
    let (code, body) = http_get(agent.addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    for name in [
        "godwit_node_cpu_utilization_ratio",
        "godwit_process_cpu_seconds_total",
        "godwit_container_cpu_seconds_total",
        "godwit_bpf_program_run_time_seconds_total{program=\"sched_switch\"}",
        "godwit_node_power_watts{source=\"",
        "process_resident_memory_bytes",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    promtool_check(&body);
    w.finish();
    assert_eq!(
        agent.terminate(),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        agent.log()
    );
}

#[test]
fn bad_config_is_refused_with_line_field_and_exit_code() {
    let dir = std::env::temp_dir().join(unique("godwit-badcfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[api]\nlisten = \"127.0.0.1:1\"\n\n[probe]\ninterval_ms = 7\n",
    )
    .unwrap();
    for sub in ["validate", "agent"] {
        let out = Command::new(godwit_bin())
            .args([sub, "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{sub}: exit code for a bad config; stderr: {err}"
        );
        assert!(err.contains("line 5"), "{sub}: names the line: {err}");
        assert!(err.contains("interval_ms"), "{sub}: names the field: {err}");
    }
    let missing = Command::new(godwit_bin())
        .args(["validate", "--config", "/nonexistent/godwit.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
    let good = dir.join("good.toml");
    std::fs::write(&good, "[probe]\ninterval_ms = 500\n").unwrap();
    let ok = Command::new(godwit_bin())
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn agent_starts_without_config_and_stops_on_sigterm_detaching_bpf() {
    require_root();
    let default_addr: std::net::SocketAddr = "127.0.0.1:9746".parse().unwrap();
    if std::net::TcpListener::bind(default_addr).is_err() {
        panic!("port 9746 is taken: stop the agent that uses it before running the tests");
    }
    let child = Command::new(godwit_bin())
        .arg("agent")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = wait_for(Duration::from_secs(20), || {
        http_get(default_addr, "/healthz")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    let pid = child.id();
    // The ids of the BPF programs the agent holds (fdinfo of its descriptors).
    let programs_of_agent = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter(|s| s.contains("prog_type:"))
                    .filter_map(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("prog_id:").map(|v| v.trim().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let loaded = programs_of_agent();
    // The API socket at its default path: a socket, root's, and only root's or its group's.
    let default_socket = std::path::Path::new("/run/godwit/api.sock");
    let socket_mode = {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        std::fs::symlink_metadata(default_socket)
            .ok()
            .filter(|m| m.file_type().is_socket() && m.uid() == 0)
            .map(|m| m.mode() & 0o777)
    };
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        ready.is_some(),
        "agent with the embedded default config never became ready:\n{log}"
    );
    assert!(
        matches!(socket_mode, Some(0o660 | 0o600)),
        "{} while the agent ran: mode {:?}\n{log}",
        default_socket.display(),
        socket_mode.map(|m| format!("{m:o}"))
    );
    assert!(
        !default_socket.exists(),
        "the socket is removed at shutdown:\n{log}"
    );
    assert!(
        loaded.len() >= 5,
        "the agent held {} BPF programs, expected 5",
        loaded.len()
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "exit code after SIGTERM:\n{log}"
    );
    assert!(
        log.contains("agent stopped"),
        "clean shutdown logged:\n{log}"
    );
    // The kernel frees a program shortly after its last descriptor closes.
    for id in &loaded {
        let gone = wait_for(Duration::from_secs(5), || {
            let shown = Command::new("bpftool")
                .args(["prog", "show", "id", id])
                .output()
                .unwrap();
            (!shown.status.success()).then_some(())
        });
        assert!(
            gone.is_some(),
            "BPF program {id} still loaded 5 s after the agent stopped"
        );
    }
}

#[test]
fn forecasts_with_intervals_are_served_and_shown() {
    require_root();
    // Fast sampling and a short window so a model is fitted within a few seconds.
    let agent = Agent::start(
        "[probe]\nmode = \"ebpf\"\ninterval_ms = 100\n\
         [predict]\nwindow = 40\nrefit_every = 10\nhorizon = 20\nlevel_percent = 90\n",
    );
    let cg = TestCgroup::new("godwit-agent-fc");
    let _w = Workload::start(&["burn", "8000"], Some(&cg));
    let node_cpu = wait_for(Duration::from_secs(15), || {
        let doc = agent.json("/v1/forecast");
        let series = doc["series"].as_array()?.iter().find(|s| {
            s["entity"]["kind"] == "node"
                && s["metric"] == "cpu"
                && s["points"].as_array().is_some_and(|p| !p.is_empty())
        })?;
        Some((doc.clone(), series.clone()))
    });
    let (doc, series) =
        node_cpu.unwrap_or_else(|| panic!("no node CPU forecast:\n{}", agent.log()));
    assert_eq!(doc["horizon"], 20);
    assert_eq!(doc["level"], 0.9);
    assert!(
        series["model"].as_str().unwrap().starts_with("ARIMA("),
        "{series}"
    );
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 20, "one point per step of the horizon");
    for p in points {
        let (lo, mean, hi) = (
            p["lower"].as_f64().unwrap(),
            p["mean"].as_f64().unwrap(),
            p["upper"].as_f64().unwrap(),
        );
        assert!(lo <= mean && mean <= hi, "interval brackets the mean: {p}");
    }
    // The busy container has its own series.
    assert!(
        doc["series"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["entity"]["id"] == cg.rel_path.as_str() && s["metric"] == "cpu"),
        "container series present"
    );
    let out = Command::new(godwit_bin())
        .args(["predict", "--addr", &agent.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "godwit predict: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node") && text.contains("ARIMA("),
        "table shows the node's model:\n{text}"
    );
}

#[test]
fn local_policy_explains_threshold_trigger_and_selection() {
    require_root();
    let agent = Agent::start(
        "[probe]\nmode = \"ebpf\"\ninterval_ms = 200\n\
         [policy]\nthreshold_base = 0.3\nthreshold_min = 0.05\n\
         cooldown_samples = 3\nrearm_after_samples = 3\n",
    );
    // Quiet history first (the agent's own start-up load settles), then the load steps up:
    // the node's load and the container's move together, which is what the load
    // correlation measures.
    std::thread::sleep(Duration::from_secs(2));
    let cg = TestCgroup::new("godwit-agent-policy");
    let _w = Workload::start(&["burn", "25000"], Some(&cg));
    // The burning container drives the node over T_n = 30%: the trigger fires and the
    // container is the one picked to leave, its load stepping with the node's (rho > 0.5:
    // its history before it appeared counts as idle). A busy host may fire the trigger on
    // its own noise before the step; a short cool-down lets it fire again while the load
    // stays up, and the trigger that saw the step is waited for.
    let stepped = |node: &Value| {
        node["selection"]["candidates"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["service"] == cg.rel_path.as_str() && c["rho"].as_f64() > Some(0.5))
    };
    let report = wait_for(Duration::from_secs(20), || {
        let doc = agent.json("/v1/decisions");
        let node = doc["last_trigger"]["plan"]["nodes"].get(0)?.clone();
        let selected = node["selection"]["selected"].as_array()?;
        (selected.iter().any(|s| s == cg.rel_path.as_str()) && stepped(&node)).then_some(node)
    })
    .unwrap_or_else(|| {
        panic!(
            "the burning cgroup was never selected with rho > 0.5: {}",
            agent.json("/v1/decisions")
        )
    });
    assert!(report["threshold"]["threshold"].as_f64().unwrap() <= 0.3);
    let candidate = report["selection"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == cg.rel_path.as_str())
        .unwrap()
        .clone();
    assert_eq!(candidate["eligible"], true, "{candidate}");
    assert!(
        candidate["rho"].as_f64().unwrap() > 0.5 && candidate["le"].as_f64().unwrap() > 0.0,
        "its load steps with the node's (rho) and it carries load (LE): {candidate}"
    );

    // The operator's risk level lowers the threshold: T_n *= 1 - k_r * r_s.
    let (code, _) = agent.act("PUT", "/v1/risk", Some("{\"risk\": 2.0}"));
    assert_eq!(code, 400, "risk outside 0..1 is refused");
    let (code, body) = agent.act("PUT", "/v1/risk", Some("{\"risk\": 1.0}"));
    assert_eq!(code, 200, "{body}");
    let lowered = wait_for(Duration::from_secs(5), || {
        let doc = agent.json("/v1/decisions");
        let t = doc["plan"]["nodes"][0]["threshold"].clone();
        (t["risk"].as_f64()? > 0.0 && t["risk_factor"].as_f64()? < 1.0).then_some(t)
    });
    assert!(
        lowered.is_some(),
        "risk reaches the threshold: {}",
        agent.json("/v1/decisions")
    );

    let out = Command::new(godwit_bin())
        .args(["explain", "--addr", &agent.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("threshold T_n") && text.contains("risk factor"),
        "explain output:\n{text}"
    );
}

/// Runs the agent with no cgroup hierarchy in sight, as `ip netns exec` leaves it (its fresh
/// /sys hides the host's cgroup mounts): a mount namespace of its own with /sys/fs/cgroup
/// unmounted, keeping the host's network so the test can reach the API.
const HIDDEN_CGROUPS: &[&str] = &[
    "unshare",
    "--mount",
    "--",
    "sh",
    "-c",
    "umount -R -l /sys/fs/cgroup && exec \"$0\" \"$@\"",
];

#[test]
fn configured_services_without_cgroup_v2_are_a_start_up_error_that_says_what_to_do() {
    require_root();
    // Without services, such an agent runs, and `godwit services` says why it lists nothing
    // (an answer, exit 0), not that no agent answered.
    let mut agent = Agent::start_wrapped("", HIDDEN_CGROUPS);
    let out = Command::new(godwit_bin())
        .args(["services", "--addr", &agent.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("no managed services"), "{text}");
    assert_eq!(agent.json("/v1/services")["runtime"], false);
    assert_eq!(agent.terminate(), Some(0));

    // With a [[service]], the agent refuses to start, and says what to do.
    let dir = std::env::temp_dir().join(unique("godwit-nocgroup"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("godwit.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{d}\"\n[api]\nlisten = \"127.0.0.1:{p}\"\nsocket = \"{d}/api.sock\"\n\
             [[service]]\nname = \"echo\"\ncommand = [\"/bin/sleep\", \"600\"]\n",
            d = dir.display(),
            p = free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(HIDDEN_CGROUPS[0])
        .args(&HIDDEN_CGROUPS[1..])
        .arg(godwit_bin())
        .args(["agent", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent ran with services it cannot start");
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(err.contains("[[service]]"), "{err}");
    assert!(err.contains("cgroup v2"), "{err}");
    assert!(err.contains("nsenter"), "says what to do: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Receives the next datagram on `sock` within `within`, as text.
fn next_notification(sock: &std::os::unix::net::UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_agent_speaks_systemds_notify_protocol_and_its_unit_verifies() {
    require_root();
    let dir = std::env::temp_dir().join(unique("godwit-notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let env_socket = format!("NOTIFY_SOCKET={}", path.display());
    // A 2 s watchdog: pets every second.
    let mut agent = Agent::start_wrapped("", &["env", &env_socket, "WATCHDOG_USEC=2000000"]);
    let mut seen = Vec::new();
    let ready = wait_for(Duration::from_secs(20), || {
        let m = next_notification(&sock, Duration::from_secs(1))?;
        seen.push(m.clone());
        m.contains("READY=1").then_some(())
    });
    assert!(ready.is_some(), "no READY=1: {seen:?}\n{}", agent.log());
    let mut pets = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if next_notification(&sock, Duration::from_millis(500)).is_some_and(|m| m == "WATCHDOG=1") {
            pets += 1;
        }
    }
    assert!(
        (2..=8).contains(&pets),
        "{pets} pets in 4 s with a 2 s watchdog"
    );

    // A stopped agent pets nothing (systemd would restart it after WatchdogSec).
    let pid = agent.child.id() as i32;
    // SAFETY: signalling the agent this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    while next_notification(&sock, Duration::from_millis(100)).is_some() {}
    let silent = next_notification(&sock, Duration::from_secs(3));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(silent, None, "a stopped agent was heard");
    let back = wait_for(Duration::from_secs(5), || {
        next_notification(&sock, Duration::from_secs(1)).filter(|m| m == "WATCHDOG=1")
    });
    assert!(back.is_some(), "no pet after SIGCONT");

    // SIGTERM: STOPPING=1 before it exits.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopping = wait_for(Duration::from_secs(20), || {
        next_notification(&sock, Duration::from_secs(1)).filter(|m| m.contains("STOPPING=1"))
    });
    assert!(stopping.is_some(), "no STOPPING=1");
    assert_eq!(agent.terminate(), Some(0));

    // The packaged unit verifies with systemd's own checker (the binary at its real path).
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/godwit.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let copy = dir.join("godwit.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/godwit", &godwit_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    let _ = std::fs::remove_dir_all(dir);
}
