//! Fencing with real cgroups and processes: the `godwit fence-guard` binary kills a service
//! cgroup when its agent stops petting it (silent, SIGSTOPped, gone) and never while petted or
//! after `stop`; and the runtime's own self-fence, `Manager::fence_all`.
//! Needs root; one test at a time (`cargo xtask test`).

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use godwit::coord::guard::{GuardHandle, GuardOptions};
use godwit::coord::BootTime;
use godwit_tests::{cgroup_layout, godwit_bin, require_root, unique, wait_for, ServiceSlice};

/// How far ahead each pet sets the deadline.
const LEASE: Duration = Duration::from_millis(300);

/// A services' parent cgroup with one service, `x.service`, running `sleep 1000`; everything
/// is killed and removed on drop however the test ends.
struct Rig {
    parent: PathBuf,
    svc: PathBuf,
    sleep: Child,
    // Last: dropped after the sleep is reaped.
    _slice: ServiceSlice,
}

impl Rig {
    fn new() -> Rig {
        require_root();
        let slice = ServiceSlice::new();
        let parent = cgroup_layout().v2_root.join(&slice.name);
        let svc = parent.join("x.service");
        std::fs::create_dir_all(&svc).unwrap();
        let sleep = Command::new("sleep").arg("1000").spawn().unwrap();
        std::fs::write(svc.join("cgroup.procs"), sleep.id().to_string()).unwrap();
        Rig {
            parent,
            svc,
            sleep,
            _slice: slice,
        }
    }

    fn opts(&self) -> GuardOptions {
        GuardOptions {
            cgroups: self.parent.clone(),
            watchdog: None,
        }
    }

    /// True once the sleep has died of SIGKILL (reaping it).
    fn killed(&mut self) -> bool {
        self.sleep
            .try_wait()
            .unwrap()
            .is_some_and(|s| s.signal() == Some(libc::SIGKILL))
    }

    fn alive(&mut self) -> bool {
        self.sleep.try_wait().unwrap().is_none()
    }

    /// Waits up to `within` for the kill; returns when it was seen on `CLOCK_BOOTTIME`.
    fn wait_killed(&mut self, within: Duration) -> Option<BootTime> {
        wait_for(within, || self.killed().then(BootTime::now))
    }

    /// A regular file standing in for `/dev/watchdog` (the host has none), removed with the
    /// test's state.
    fn fake_watchdog(&self) -> PathBuf {
        let p = std::env::temp_dir().join(unique("godwit-watchdog"));
        std::fs::write(&p, "").unwrap();
        p
    }

    fn populated(&self) -> bool {
        std::fs::read_to_string(self.svc.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "populated 1")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.sleep.kill();
        let _ = self.sleep.wait();
    }
}

fn lease() -> BootTime {
    BootTime::now().add(LEASE)
}

#[test]
fn a_petted_guard_kills_nothing_feeds_the_watchdog_and_disarms_it_on_stop() {
    let mut rig = Rig::new();
    let dog = rig.fake_watchdog();
    let mut opts = rig.opts();
    opts.watchdog = Some(dog.clone());
    let guard = GuardHandle::spawn_program(&godwit_bin(), &opts).unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    let mut pets = 0;
    while Instant::now() < until {
        guard.pet(lease()).unwrap();
        pets += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rig.alive(), "killed while petted");
    assert!(rig.populated());
    let status = guard.stop(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status}");
    // A keepalive per pet read in time (the first may reach a guard still starting after its
    // 300 ms, and is then refused), then the magic close.
    let written = std::fs::read_to_string(&dog).unwrap();
    let keepalives = written.trim_end_matches('V').len();
    assert!(written.ends_with('V'), "{written:?}");
    assert!(
        written[..keepalives].bytes().all(|b| b == b'k') && keepalives + 1 >= pets,
        "{pets} pets, written {written:?}"
    );
    std::fs::remove_file(&dog).ok();
}

#[test]
fn a_silent_agent_with_the_pipe_open_is_fenced_at_the_deadline() {
    let mut rig = Rig::new();
    let dog = rig.fake_watchdog();
    let mut opts = rig.opts();
    opts.watchdog = Some(dog.clone());
    let guard = GuardHandle::spawn_program(&godwit_bin(), &opts).unwrap();
    // Petted a while, as an agent does, then silent with the pipe open, as a SIGSTOPped
    // agent is.
    let mut deadline = lease();
    for _ in 0..5 {
        deadline = lease();
        guard.pet(deadline).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rig.alive(), "killed while petted");
    let at = rig
        .wait_killed(Duration::from_secs(3))
        .expect("not killed within 3 s of silence");
    assert!(at >= deadline, "killed before the deadline");
    assert!(
        wait_for(Duration::from_secs(2), || (!rig.populated()).then_some(())).is_some(),
        "the cgroup is still populated"
    );
    eprintln!(
        "fence latency (deadline to the kill seen): {} ms",
        at.since(deadline).as_millis()
    );
    // Past the deadline the watchdog is not fed: the hardware would reset the node.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(&dog).unwrap(), "kkkkk");
    // The guard waits for a new pet; a stop still ends it cleanly.
    let status = guard.stop(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status}");
    std::fs::remove_file(&dog).ok();
}

#[test]
fn a_guard_whose_agent_died_kills_at_the_deadline_and_exits_despite_sigterm() {
    let mut rig = Rig::new();
    let dog = rig.fake_watchdog();
    let mut guard = Command::new(godwit_bin())
        .args(["fence-guard", "--cgroups"])
        .arg(&rig.parent)
        .arg("--watchdog")
        .arg(&dog)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = BootTime::now().add(Duration::from_millis(1500));
    let mut pipe = guard.stdin.take().unwrap();
    writeln!(pipe, "pet {}", deadline.0).unwrap();
    // The keepalive shows the pet was read (and the guard hardened, which comes first).
    wait_for(Duration::from_secs(5), || {
        (std::fs::read_to_string(&dog).unwrap() == "k").then_some(())
    })
    .expect("the pet was not read");
    // The agent dies and systemd stops its unit: SIGTERM to every process in its cgroup.
    drop(pipe);
    // SAFETY: kill(2) on a child this test owns.
    unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        guard.try_wait().unwrap().is_none(),
        "SIGTERM ended the guard"
    );
    assert!(rig.alive(), "killed before the deadline");
    let status = wait_for(Duration::from_secs(3), || guard.try_wait().unwrap())
        .expect("the guard did not exit after the deadline");
    assert!(BootTime::now() >= deadline);
    assert_eq!(status.code(), Some(1), "no stop was sent: {status}");
    assert!(rig.killed(), "the service was not killed");
    assert!(!rig.populated());
    std::fs::remove_file(&dog).ok();
}

#[test]
fn a_stopped_guard_disarms_and_kills_nothing() {
    let mut rig = Rig::new();
    let guard = GuardHandle::spawn_program(&godwit_bin(), &rig.opts()).unwrap();
    guard.pet(lease()).unwrap();
    let status = guard.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(LEASE * 2);
    assert!(rig.alive(), "killed after stop");
}

#[test]
fn a_sigstopped_petter_gets_its_services_killed() {
    let mut rig = Rig::new();
    let mut guard = Command::new(godwit_bin())
        .args(["fence-guard", "--cgroups"])
        .arg(&rig.parent)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // An agent stand-in: pets every 100 ms with a deadline 300 ms ahead on CLOCK_BOOTTIME
    // (`/proc/uptime` counts boot time, in hundredths of a second).
    let mut petter = Command::new("/bin/sh")
        .args([
            "-c",
            "while :; do read up idle < /proc/uptime; \
             echo \"pet $(( ${up%.*}${up#*.}0 + 300 ))\"; sleep 0.1; done",
        ])
        .stdout(Stdio::from(guard.stdin.take().unwrap()))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(rig.alive(), "killed while petted");
    // SAFETY: kill(2) on a child this test owns.
    unsafe { libc::kill(petter.id() as i32, libc::SIGSTOP) };
    let stopped = BootTime::now();
    let at = rig.wait_killed(Duration::from_secs(3));
    let _ = petter.kill();
    let _ = petter.wait();
    let at = at.expect("not killed within 3 s of the SIGSTOP");
    eprintln!(
        "SIGSTOP to the kill seen: {} ms (lease {} ms)",
        at.since(stopped).as_millis(),
        LEASE.as_millis()
    );
    assert!(!rig.populated());
    // The petter is gone, its pipe closed, the deadline acted on: the guard exits.
    let status = wait_for(Duration::from_secs(3), || guard.try_wait().unwrap())
        .expect("the guard did not exit after its agent died");
    assert_eq!(status.code(), Some(1));
}

/// A service that only sleeps, started at once.
fn sleeper(name: &str) -> godwit::service::ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "command": ["/bin/sleep", "1000"],
        "autostart": true,
    }))
    .unwrap()
}

#[test]
fn fence_all_kills_every_service_and_blocks_starts_until_unfenced() {
    require_root();
    let slice = ServiceSlice::new();
    let state = std::env::temp_dir().join(unique("godwit-state"));
    let layout = cgroup_layout();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use godwit::service::{Manager, RunState, Runtime, ServicesSection};
        let manager = Manager::new(Runtime {
            node: "n".into(),
            memory_v1_root: layout.memory_v1_root.clone().filter(|_| layout.hybrid),
            cpu_v1_root: None,
            v2_root: layout.v2_root.clone(),
            section: ServicesSection {
                cgroup_parent: slice.name.clone(),
                state_root: state.clone(),
                ..Default::default()
            },
            images: None,
            run_root: state.join("run"),
            default_user: godwit::service::Identity::ensure_system_user("godwit-svc"),
        });
        let a = manager.add(sleeper("a")).await.unwrap();
        let b = manager.add(sleeper("b")).await.unwrap();
        let mut idle = sleeper("idle");
        idle.autostart = false;
        manager.add(idle).await.unwrap();
        // One of them frozen (as by a migration in flight): a fence kills it all the same.
        manager.freeze_for("b", "m1").await.unwrap();
        let pids = [a.pid.unwrap(), b.pid.unwrap()];

        let fenced = manager.fence_all().await;
        assert_eq!(fenced, vec!["a".to_string(), "b".to_string()]);
        assert!(manager.is_fenced());
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{pid} survived"
            );
        }
        for name in ["a", "b"] {
            let st = manager.status(name).unwrap();
            assert_eq!(st.state, RunState::Stopped, "{st:?}");
            assert_eq!(st.last_exit.as_deref(), Some("killed"));
            let events =
                std::fs::read_to_string(PathBuf::from(&st.cgroup).join("cgroup.events")).unwrap();
            assert!(events.contains("populated 0"), "{name}: {events}");
            assert!(events.contains("frozen 0"), "{name} left frozen: {events}");
        }
        assert_eq!(manager.frozen_by("b"), None);

        let refused = manager.start("a").await.unwrap_err();
        assert!(refused.to_string().contains("fenced"), "{refused}");
        assert!(manager.start("idle").await.is_err());
        assert_eq!(manager.status("a").unwrap().state, RunState::Stopped);

        manager.unfence();
        let st = manager.start("a").await.unwrap();
        assert_eq!(st.state, RunState::Running);
        manager.shutdown().await;
    });
    std::fs::remove_dir_all(&state).ok();
}
