//! Randomized fault schedules on five real agents in network namespaces, checked by the
//! services themselves: every instance of a `godwit-witness` service appends when it starts,
//! runs and stops (node, epoch, CLOCK_MONOTONIC) to one shared file, and
//! [`godwit_tests::witness`] checks that no service ever ran on two nodes at once and none
//! started at an epoch older than one it already had.
//!
//! Each schedule draws one or two faults from a printed seed: the leader killed (with a
//! migration in flight), halves, a majority ring, a bridge node, one node cut off, an agent
//! SIGSTOPped (its guard must kill its services), a whole node frozen (`cgroup.freeze`). After
//! the faults heal, the cluster must settle: every node holds a lease again and every service
//! runs exactly where the log places it.
//!
//! `GODWIT_SCHEDULES=N` runs N schedules (default 3); `GODWIT_SCHEDULE_SEED=S` starts from
//! seed S (default: from the clock; printed either way, so a failure replays). Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use godwit_tests::migrate_rig::{MigrateRig, RigOptions};
use godwit_tests::sim::rng::Rng;
use godwit_tests::{require_root, witness};
use serde_json::Value;

/// The witness service (`GODWIT_WITNESS_BIN` overrides it, with `GODWIT_AGENT_BIN` for the
/// agent: a long run from copies of the binaries is not disturbed by a rebuild).
fn witness_bin() -> String {
    std::env::var("GODWIT_WITNESS_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_godwit-witness").to_string())
}
const NODES: usize = 5;
const SERVICES: [&str; 3] = ["w1", "w2", "w3"];
/// How long the cluster may take to settle after the faults heal.
const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Fault {
    /// The leader's agent is SIGKILLed (its guard lives on), with a migration under way from
    /// `migrate`'s node when there is one; it starts again after the fault's time.
    KillLeader { migrate: Option<(String, usize)> },
    /// These nodes (a minority) cannot reach the others.
    Halves(Vec<usize>),
    /// The nodes in a ring, in this order: each reaches only its two neighbours.
    Ring(Vec<usize>),
    /// The node left out of both sides reaches everyone; `left` and `right` reach only it
    /// and their own side.
    Bridge { left: Vec<usize>, right: Vec<usize> },
    /// One node's agent is SIGSTOPped.
    StopAgent(usize),
    /// One node is frozen whole.
    Freeze(usize),
}

struct Suite {
    rig: MigrateRig,
    file: PathBuf,
    /// Agents not running (killed), or that cannot answer (stopped, frozen).
    down: [bool; NODES + 1],
}

impl Suite {
    fn new() -> Suite {
        let rig = MigrateRig::new(RigOptions {
            agent_bin: std::env::var_os("GODWIT_AGENT_BIN").map(PathBuf::from),
            ..RigOptions::coordinated(NODES)
        });
        let dir = rig.pki.join("witness");
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o777);
        let file = dir.join("witness.log");
        std::fs::write(&file, "").unwrap();
        set_mode(&file, 0o666);
        let suite = Suite {
            rig,
            file,
            down: [false; NODES + 1],
        };
        let formed = suite.wait(Duration::from_secs(60), |s| {
            (1..=NODES).all(|i| {
                s.doc(i).is_some_and(|d| {
                    d["voters"].as_array().map(Vec::len) == Some(3) && d["may_act"] == true
                })
            })
        });
        assert!(formed, "no group of three voters:\n{}", suite.rig.c.log(1));
        for (k, name) in SERVICES.iter().enumerate() {
            let spec = serde_json::json!({
                "name": name,
                "command": [witness_bin(), "--file", suite.file.display().to_string(), "--every-ms", "20"],
                "ha": "restart",
            });
            let (code, body) = suite
                .rig
                .c
                .act(k + 2, "POST", "/v1/services", Some(&spec.to_string()))
                .unwrap();
            assert_eq!(code, 201, "{body}");
        }
        let placed = suite.wait(Duration::from_secs(30), |s| s.settled().is_ok());
        assert!(placed, "not placed: {:?}", suite.settled());
        suite
    }

    /// Node `i`'s view of the group, if its agent answers.
    fn doc(&self, i: usize) -> Option<Value> {
        if self.down[i] {
            return None;
        }
        let (code, body) = self
            .rig
            .c
            .get_timeout(i, "/v1/cluster", Duration::from_secs(2))
            .ok()?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// The services node `i` runs (a process), if its agent answers.
    fn running(&self, i: usize) -> Option<Vec<String>> {
        if self.down[i] {
            return None;
        }
        let (code, body) = self
            .rig
            .c
            .get_timeout(i, "/v1/services", Duration::from_secs(2))
            .ok()?;
        let doc: Value = (code == 200).then(|| serde_json::from_str(&body).ok())??;
        Some(
            doc["services"]
                .as_array()?
                .iter()
                .filter(|s| s["pid"].is_u64())
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// The leader, as a node that is the leader says.
    fn leader(&self) -> Option<usize> {
        (1..=NODES).find(|&i| {
            self.doc(i)
                .is_some_and(|d| d["leader"] == format!("n{i}") && d["may_act"] == true)
        })
    }

    /// Every agent answers and holds a lease, and every service runs exactly where the
    /// leader's log places it.
    fn settled(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader")?;
        let doc = self.doc(leader).ok_or("the leader does not answer")?;
        for i in 1..=NODES {
            let d = self.doc(i).ok_or(format!("n{i} does not answer"))?;
            if d["may_act"] != true {
                return Err(format!("n{i} holds no lease: {}", d["lease"]));
            }
        }
        let running: Vec<Vec<String>> = (1..=NODES)
            .map(|i| {
                self.running(i)
                    .ok_or(format!("n{i}'s services do not answer"))
            })
            .collect::<Result<_, _>>()?;
        for name in SERVICES {
            let entry = doc["services"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["name"] == name))
                .ok_or(format!("{name} is not in the log"))?;
            if !entry["intent"].is_null() {
                return Err(format!("{name} has an intent open: {entry}"));
            }
            let on: Vec<String> = (1..=NODES)
                .filter(|i| running[i - 1].iter().any(|s| s == name))
                .map(|i| format!("n{i}"))
                .collect();
            let placed = entry["node"].as_str().unwrap_or("");
            if on != [placed] {
                return Err(format!("{name} placed on {placed:?}, running on {on:?}"));
            }
        }
        Ok(())
    }

    /// Waits up to `within` for `f` to hold.
    fn wait(&self, within: Duration, mut f: impl FnMut(&Suite) -> bool) -> bool {
        let t0 = Instant::now();
        while !f(self) {
            if t0.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    }

    /// The node the leader's log places `name` on.
    fn placed_on(&self, name: &str) -> Option<usize> {
        let doc = self.doc(self.leader()?)?;
        let entry = doc["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)?
            .clone();
        entry["node"].as_str()?.strip_prefix('n')?.parse().ok()
    }

    /// Draws a schedule's faults.
    fn draw(&self, rng: &mut Rng) -> Vec<Fault> {
        let mut nodes: Vec<usize> = (1..=NODES).collect();
        shuffle(rng, &mut nodes);
        let count = 1 + rng.below(2);
        (0..count)
            .map(|_| match rng.below(6) {
                0 => {
                    let svc = SERVICES[rng.below(SERVICES.len())].to_string();
                    let to = 1 + rng.below(NODES);
                    Fault::KillLeader {
                        migrate: (rng.below(2) == 0).then_some((svc, to)),
                    }
                }
                1 => Fault::Halves(nodes[..2].to_vec()),
                2 => Fault::Ring(nodes.clone()),
                3 => Fault::Bridge {
                    left: nodes[1..3].to_vec(),
                    right: nodes[3..].to_vec(),
                },
                4 => Fault::StopAgent(nodes[rng.below(NODES)]),
                _ => Fault::Freeze(nodes[rng.below(NODES)]),
            })
            .collect()
    }

    /// Injects `faults` together, holds them for `hold`, and heals them. Returns how a
    /// migration started with them ended (`committed`, `not moved`, `no answer`), if one was.
    fn inject(&mut self, faults: &[Fault], hold: Duration) -> Option<&'static str> {
        let mut killed = Vec::new();
        let mut stopped = Vec::new();
        let mut frozen = Vec::new();
        let mut migration: Option<Child> = None;
        let mut cut: Vec<(usize, usize)> = Vec::new();
        for f in faults {
            match f {
                Fault::KillLeader { migrate } => {
                    if let Some((svc, to)) = migrate {
                        if let Some(from) = self.placed_on(svc).filter(|f| f != to) {
                            if !self.down[from] && !self.down[*to] {
                                let mut cmd = self.rig.migrate_command(from, svc, *to, &[]);
                                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                                migration = cmd.spawn().ok();
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                    if let Some(l) = self.leader() {
                        self.rig.c.kill(l);
                        self.down[l] = true;
                        killed.push(l);
                    }
                }
                Fault::Halves(minority) => {
                    for &a in minority {
                        for b in (1..=NODES).filter(|b| !minority.contains(b)) {
                            cut.push((a, b));
                        }
                    }
                }
                Fault::Ring(order) => {
                    for (x, &a) in order.iter().enumerate() {
                        for (y, &b) in order.iter().enumerate().skip(x + 1) {
                            let d = y - x;
                            if d != 1 && d != NODES - 1 {
                                cut.push((a, b));
                            }
                        }
                    }
                }
                Fault::Bridge { left, right, .. } => {
                    for &a in left {
                        for &b in right {
                            cut.push((a, b));
                        }
                    }
                }
                Fault::StopAgent(i) if !self.down[*i] => {
                    self.rig.c.stop(*i);
                    self.down[*i] = true;
                    stopped.push(*i);
                }
                Fault::Freeze(i) if !self.down[*i] => {
                    self.rig.freeze_node(*i, true);
                    self.down[*i] = true;
                    frozen.push(*i);
                }
                Fault::StopAgent(_) | Fault::Freeze(_) => {}
            }
        }
        if !cut.is_empty() {
            self.rig.c.cut(&cut);
        }
        std::thread::sleep(hold);
        self.rig.c.heal();
        for i in frozen {
            self.rig.freeze_node(i, false);
            self.down[i] = false;
        }
        for i in stopped {
            self.rig.c.cont(i);
            self.down[i] = false;
        }
        for i in killed {
            self.rig.c.start_agent(i);
            self.rig.c.wait_ready(i);
            self.down[i] = false;
        }
        if let Some(mut m) = migration {
            // It ends one way or the other (committed, rolled back, or refused); settling
            // checks that the service runs once either way.
            let t0 = Instant::now();
            while m.try_wait().ok().flatten().is_none() && t0.elapsed() < SETTLE {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = m.kill();
            return Some(match m.wait().ok().and_then(|s| s.code()) {
                // 3: committed past its downtime target.
                Some(0 | 3) => "committed",
                Some(_) => "not moved",
                None => "no answer",
            });
        }
        None
    }

    fn verdict(&self) -> witness::Verdict {
        witness::check_file(&self.file).unwrap()
    }
}

fn shuffle(rng: &mut Rng, v: &mut [usize]) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn no_service_runs_twice_or_at_a_stale_epoch_under_random_fault_schedules() {
    require_root();
    let schedules = env_u64("GODWIT_SCHEDULES").unwrap_or(3);
    let base = env_u64("GODWIT_SCHEDULE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    });
    println!("fault schedules: {schedules} from seed {base} (GODWIT_SCHEDULE_SEED={base} replays)");
    let mut suite = Suite::new();
    let started = Instant::now();
    let mut kinds: std::collections::BTreeMap<&str, u32> = Default::default();
    for n in 0..schedules {
        let seed = base + n;
        let mut rng = Rng::new(seed);
        let faults = suite.draw(&mut rng);
        let hold = Duration::from_millis(3000 + rng.below(5000) as u64);
        println!(
            "schedule {n} (seed {seed}): {faults:?} for {:.1} s",
            hold.as_secs_f64()
        );
        for f in &faults {
            *kinds
                .entry(match f {
                    Fault::KillLeader { migrate: None } => "leader killed",
                    Fault::KillLeader { .. } => "leader killed, migration in flight",
                    Fault::Halves(_) => "halves",
                    Fault::Ring(_) => "majority ring",
                    Fault::Bridge { .. } => "bridge node",
                    Fault::StopAgent(_) => "agent SIGSTOPped",
                    Fault::Freeze(_) => "node frozen",
                })
                .or_default() += 1;
        }
        if let Some(outcome) = suite.inject(&faults, hold) {
            println!("  migration in flight: {outcome}");
            *kinds.entry(outcome).or_default() += 1;
        }
        let t0 = Instant::now();
        let mut last = String::new();
        let settled = loop {
            match suite.settled() {
                Ok(()) => break true,
                Err(e) => last = e,
            }
            if t0.elapsed() > SETTLE {
                break false;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let v = suite.verdict();
        assert!(
            v.ok(),
            "schedule {n} (seed {seed}, {faults:?}) broke a promise:\n{v}"
        );
        assert!(
            settled,
            "schedule {n} (seed {seed}, {faults:?}): not settled {SETTLE:?} after healing: {last}\n{}",
            (1..=NODES)
                .map(|i| format!("--- n{i}\n{}", tail(&suite.rig.c.log(i), 40)))
                .collect::<String>()
        );
        println!(
            "  settled in {:.1} s; {}",
            t0.elapsed().as_secs_f64(),
            v.to_string().lines().next().unwrap_or("")
        );
    }
    let v = suite.verdict();
    println!(
        "{schedules} schedules in {:.0} s; faults and migration outcomes: {kinds:?}\n{v}",
        started.elapsed().as_secs_f64()
    );
    assert!(v.ok(), "{v}");
    // The services really moved: more instances than services.
    assert!(v.instances.len() >= SERVICES.len(), "{v}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}
