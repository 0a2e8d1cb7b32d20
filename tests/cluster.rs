//! The multi-node harness itself (`godwit_tests::cluster`): real agents in network namespaces,
//! the fault helpers, and cleanup after a normal drop, a panic and a crashed run.
//!
//! Needs root; run one at a time: `cargo test -p godwit-tests --test cluster --
//! --test-threads=1` (`cargo xtask test` does).

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::linux::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use godwit_tests::cluster::{self, wait_until, Cluster, RunState};
use godwit_tests::{godwit_bin, require_root, wait_for};
use serde_json::Value;

/// How long a request to a node that should be cut off is given before it counts as failed.
const CUT: Duration = Duration::from_millis(500);
/// How long a healed path gets to work again.
const HEAL: Duration = Duration::from_secs(10);

/// Everything of a run that must disappear at teardown.
struct Footprint {
    run: String,
    namespaces: Vec<String>,
    cgroup: PathBuf,
    state_dir: PathBuf,
    work_dir: PathBuf,
    uplink: String,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(c: &mut Cluster) -> Footprint {
        let pids = (1..=c.len()).filter_map(|i| c.agent_pid(i)).collect();
        Footprint {
            pids,
            ..Footprint::recorded(c.state())
        }
    }

    /// What a run's state file records (the agents as last started).
    fn recorded(st: &RunState) -> Footprint {
        Footprint {
            namespaces: st.namespaces.clone(),
            cgroup: st.cgroup.clone(),
            state_dir: RunState::dir_of(&st.run),
            work_dir: st.work_dir.clone(),
            uplink: st.uplink.clone(),
            run: st.run.clone(),
            pids: st.agents.iter().map(|(_, pid)| *pid).collect(),
        }
    }

    fn assert_present(&self) {
        let netns = netns_list();
        for ns in &self.namespaces {
            assert!(netns.contains(ns), "namespace {ns} missing: {netns:?}");
        }
        for p in [&self.cgroup, &self.state_dir, &self.work_dir] {
            assert!(p.exists(), "{} missing while the run is up", p.display());
        }
        assert!(link_exists(&self.uplink), "uplink {} missing", self.uplink);
    }

    fn assert_gone(&self) {
        let netns = netns_list();
        let left: Vec<&String> = netns.iter().filter(|n| n.contains(&self.run)).collect();
        assert!(
            left.is_empty(),
            "namespaces of run {} remain: {left:?}",
            self.run
        );
        for p in [&self.cgroup, &self.state_dir, &self.work_dir] {
            assert!(!p.exists(), "{} remains after teardown", p.display());
        }
        assert!(!link_exists(&self.uplink), "uplink {} remains", self.uplink);
        for pid in &self.pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "agent pid {pid} still exists"
            );
        }
    }
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Inode of a network namespace file (`/proc/PID/ns/net` or `/run/netns/NAME`).
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .st_ino()
}

#[test]
fn three_nodes_answer_and_reach_each_other() {
    require_root();
    let mut c = Cluster::start(3);
    for i in 1..=3 {
        let (code, body) = c
            .get(i, "/healthz")
            .unwrap_or_else(|e| panic!("GET /healthz from n{i} at {}: {e}", c.api(i)));
        assert_eq!((code, body.trim()), (200, "ok"), "n{i}'s /healthz");
        // The agent runs in its node's namespace and cgroup, with its own config.
        let pid = c.agent_pid(i).expect("agent runs");
        assert_eq!(
            netns_inode(&format!("/proc/{pid}/ns/net")),
            netns_inode(&format!("/run/netns/{}", c.node(i).netns)),
            "n{i}'s agent is not in its namespace"
        );
        let procs = std::fs::read_to_string(c.node(i).cgroup.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "n{i}'s agent {pid} not in {}: {procs:?}",
            c.node(i).cgroup.display()
        );
        let config = std::fs::read_to_string(&c.node(i).config).unwrap();
        assert!(config.contains(&format!("name = \"n{i}\"")), "{config}");
        assert!(config.contains(&c.api(i).to_string()), "{config}");
        let addr = c.node(i).addr.octets();
        assert!(
            addr[0] == 198 && (addr[1] == 18 || addr[1] == 19),
            "address {} outside 198.18.0.0/15",
            c.node(i).addr
        );
    }
    // Node to node, from inside each node's namespace.
    for (from, to) in [(1, 2), (2, 3), (3, 1)] {
        let (code, _) = c
            .get_from(from, to, "/healthz")
            .unwrap_or_else(|e| panic!("n{from} -> n{to}: {e}"));
        assert_eq!(code, 200, "n{from} -> n{to}");
    }
    // The JSON API answers through the uplink too.
    let node = c.json(2, "/v1/node");
    assert!(node.is_object(), "/v1/node: {node}");
}

#[test]
fn kill_restart_stop_and_continue_an_agent() {
    require_root();
    let mut c = Cluster::start(3);
    let old = c.agent_pid(2).expect("n2 runs");
    c.kill(2);
    assert!(c.agent_pid(2).is_none());
    assert!(!c.answers(2, CUT), "n2 answers after kill -9");
    assert!(
        c.answers(1, CUT) && c.answers(3, CUT),
        "others stopped answering"
    );
    // Restarted from a short-lived thread: the agent must outlive that thread.
    std::thread::scope(|s| {
        s.spawn(|| c.restart(2));
    });
    let new = c.agent_pid(2).expect("n2 runs again");
    assert_ne!(old, new, "restart reused the pid");
    assert!(
        c.answers_from(1, 2, HEAL),
        "n1 cannot reach the restarted n2"
    );
    let procs = std::fs::read_to_string(c.node(2).cgroup.join("cgroup.procs")).unwrap();
    assert!(
        procs.contains(&new.to_string()),
        "restarted agent not in its cgroup"
    );
    assert_eq!(
        c.state()
            .agents
            .iter()
            .find(|(n, _)| n == "n2")
            .map(|a| a.1),
        Some(new),
        "state file does not record the new pid"
    );

    c.stop(3);
    // The kernel still accepts the connection, but nobody answers.
    assert!(!c.answers(3, CUT), "a stopped agent answered");
    c.cont(3);
    wait_until(HEAL, "n3 to answer after SIGCONT", || c.answers(3, CUT));
}

#[test]
fn link_down_cuts_a_node_off_and_link_up_restores_it() {
    require_root();
    let c = Cluster::start(3);
    c.link_down(3);
    assert!(
        !c.answers(3, CUT),
        "n3 answers the test process with its link down"
    );
    assert!(
        !c.answers_from(1, 3, CUT),
        "n1 reaches n3 with n3's link down"
    );
    assert!(
        c.answers_from(1, 2, CUT),
        "n1 cannot reach n2 while only n3 is down"
    );
    c.link_up(3);
    wait_until(HEAL, "n3 to answer after link up", || c.answers(3, CUT));
    wait_until(HEAL, "n1 to reach n3 after link up", || {
        c.answers_from(1, 3, CUT)
    });
}

#[test]
fn partition_blocks_traffic_between_groups_and_heal_restores_it() {
    require_root();
    let c = Cluster::start(3);
    c.partition(&[&[1, 2], &[3]]);
    assert!(c.answers_from(1, 2, CUT), "n1 -> n2 blocked inside a group");
    assert!(c.answers_from(2, 1, CUT), "n2 -> n1 blocked inside a group");
    for (from, to) in [(1, 3), (2, 3), (3, 1), (3, 2)] {
        assert!(
            !c.answers_from(from, to, CUT),
            "n{from} -> n{to} crosses the partition"
        );
    }
    for i in 1..=3 {
        assert!(
            c.answers(i, CUT),
            "the test process lost n{i} in a partition"
        );
    }
    // A new partition replaces the old one.
    c.partition(&[&[1], &[2, 3]]);
    assert!(
        c.answers_from(2, 3, CUT),
        "n2 -> n3 still blocked after re-partitioning"
    );
    assert!(
        !c.answers_from(1, 2, CUT),
        "n1 -> n2 crosses the new partition"
    );
    c.heal();
    for (from, to) in [(1, 2), (1, 3), (3, 1), (3, 2)] {
        wait_until(HEAL, &format!("n{from} -> n{to} after heal"), || {
            c.answers_from(from, to, CUT)
        });
    }
}

/// Sends `n` datagrams from node `from` to node `to`; returns how many arrived.
fn udp_delivered(c: &Cluster, from: usize, to: usize, n: u32) -> u32 {
    let to_addr = c.node(to).addr;
    let from_addr = c.node(from).addr;
    // Sockets keep the namespace they were made in, whichever thread uses them later.
    let rx = c.in_node(to, || UdpSocket::bind((to_addr, 0)).expect("bind receiver"));
    let tx = c.in_node(from, || {
        UdpSocket::bind((from_addr, 0)).expect("bind sender")
    });
    let big: libc::c_int = 16 << 20;
    // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let dest = rx.local_addr().unwrap();
    for k in 0..n {
        tx.send_to(&k.to_be_bytes(), dest)
            .unwrap_or_else(|e| panic!("send datagram {k}: {e}"));
    }
    // Everything that was not dropped is queued within microseconds (veth delivers in the
    // sender's context); the idle timeout only ends the wait for the dropped ones.
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = 0;
    let mut buf = [0u8; 16];
    while got < n && rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn loss_rule_drops_about_the_set_share_and_is_removed() {
    require_root();
    let c = Cluster::start(2);
    const N: u32 = 3000;
    assert_eq!(udp_delivered(&c, 1, 2, N), N, "loss before any rule");
    assert_eq!(
        c.loss_dropped(2),
        None,
        "a loss rule exists before set_loss"
    );

    c.set_loss(2, 10);
    let got = udp_delivered(&c, 1, 2, N);
    let lost = N - got;
    // Binomial(3000, 0.1): mean 300, standard deviation 16; ±120 is more than 7 of them.
    assert!(
        (180..=420).contains(&lost),
        "10% loss dropped {lost} of {N} datagrams"
    );
    let dropped = c.loss_dropped(2).expect("loss rule installed");
    assert!(
        dropped >= lost as u64,
        "the rule counted {dropped} drops but {lost} datagrams were lost"
    );
    eprintln!("10% loss: {lost} of {N} datagrams lost, rule counted {dropped}");
    // The other direction is untouched: n1 has no rule.
    assert_eq!(
        udp_delivered(&c, 2, 1, N),
        N,
        "loss towards n1, which has no rule"
    );

    c.clear_loss(2);
    assert_eq!(
        c.loss_dropped(2),
        None,
        "loss rule still there after clear_loss"
    );
    assert_eq!(udp_delivered(&c, 1, 2, N), N, "loss after clear_loss");
    c.clear_loss(2); // idempotent
}

#[test]
fn drop_removes_every_trace_of_the_run() {
    require_root();
    let mut c = Cluster::start(2);
    c.set_loss(1, 5);
    c.partition(&[&[1], &[2]]);
    let footprint = Footprint::of(&mut c);
    footprint.assert_present();
    drop(c);
    footprint.assert_gone();
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_root();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let mut c = Cluster::start(1);
        tx.send(Footprint::of(&mut c)).unwrap();
        panic!("deliberate panic with a cluster up");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let footprint = rx.recv().expect("the thread started a cluster");
    footprint.assert_gone();
}

#[test]
fn down_all_removes_the_leftovers_of_a_crashed_run() {
    require_root();
    // A pid that no longer runs, as the test process of a crashed run.
    let mut dead = Command::new("true").spawn().expect("spawn true");
    dead.wait().unwrap();
    let pid = dead.id();
    let run = format!("{pid}-0");
    let orphan_run = format!("{pid}-1");
    let hub = format!("{}{run}-hub", cluster::NS_PREFIX);
    let n1 = format!("{}{run}-n1", cluster::NS_PREFIX);
    // A namespace with no state at all (the run died before writing it, or it was lost).
    let orphan = format!("{}{orphan_run}-n1", cluster::NS_PREFIX);
    for ns in [&hub, &n1, &orphan] {
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {ns}");
    }
    // A process left in the crashed run's cgroup.
    let v2 = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup v2 mounted");
    let cgroup = v2.join("godwit-cluster").join(&run);
    std::fs::create_dir_all(cgroup.join("n1")).unwrap();
    let mut straggler = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(cgroup.join("n1/cgroup.procs"), straggler.id().to_string()).unwrap();
    let work_dir = std::env::temp_dir().join("godwit-cluster").join(&run);
    std::fs::create_dir_all(work_dir.join("n1")).unwrap();
    let st = RunState {
        run: run.clone(),
        owner: cluster::Owner::Process { pid, start: 1 },
        subnet: 511,
        uplink: "gwh511".into(),
        work_dir: work_dir.clone(),
        cgroup: cgroup.clone(),
        namespaces: vec![hub.clone(), n1.clone()],
        agents: vec![("n1".into(), straggler.id())],
    };
    std::fs::create_dir_all(RunState::dir_of(&run)).unwrap();
    st.save().unwrap();
    assert!(
        cluster::list().iter().any(|r| r.run == run && !r.alive),
        "the fake run is not listed as dead"
    );

    let report = cluster::down(None, true).expect("down --all");
    eprintln!("{report:?}");
    assert!(
        report.runs.contains(&run),
        "run {run} not torn down: {report:?}"
    );
    let netns = netns_list();
    for ns in [&hub, &n1, &orphan] {
        assert!(!netns.contains(ns), "{ns} survived down --all: {netns:?}");
    }
    assert!(!cgroup.exists(), "{} survived down --all", cgroup.display());
    assert!(
        !work_dir.exists(),
        "{} survived down --all",
        work_dir.display()
    );
    assert!(!RunState::dir_of(&run).exists(), "state of {run} survived");
    let status = straggler.wait().unwrap();
    assert!(!status.success(), "the straggler was not killed: {status}");

    // Idempotent: nothing of this run is found a second time.
    let again = cluster::down(None, true).expect("second down --all");
    let mentions = |s: &String| s.contains(&run) || s.contains(&orphan_run);
    assert!(
        !again.runs.iter().chain(&again.leftovers).any(mentions),
        "second down --all found leftovers again: {again:?}"
    );
}

/// `godwit-cluster` (what `cargo xtask cluster` runs) with `args`; its stdout, or a panic with
/// its output when it fails.
fn godwit_cluster(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_godwit-cluster"))
        .args(args)
        .output()
        .expect("run godwit-cluster");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "godwit-cluster {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Takes a detached run down when the test ends, also when it panics.
struct DownOnDrop(Option<String>);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Some(run) = self.0.take() {
            let _ = cluster::down(Some(&run), false);
        }
    }
}

/// The `godwit` CLI of the agents, run on this host (the root namespace); its exit status and
/// stdout.
fn godwit_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(godwit_bin())
        .args(args)
        .output()
        .expect("run godwit");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "godwit {args:?}: {}: {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), text)
}

/// `cargo xtask cluster up`'s path: three nodes that form one sealed mesh, reached from this
/// host at the addresses `up` printed (reads over TCP, a change through the socket that makes
/// n1 talk to n2 over the mutual-TLS transport); `down` leaves nothing behind.
#[test]
fn up_makes_one_mesh_reachable_from_the_host_and_down_removes_it() {
    require_root();
    let bin = godwit_bin();
    let printed = godwit_cluster(&["up", "--nodes", "3", "--agent-bin", bin.to_str().unwrap()]);
    eprintln!("{printed}");
    let run = printed
        .strip_prefix("cluster run ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {printed:?}"))
        .to_string();
    let mut guard = DownOnDrop(Some(run.clone()));
    let st = RunState::load(&run).expect("the run's state");
    let footprint = Footprint::recorded(&st);
    footprint.assert_present();
    assert_eq!(footprint.pids.len(), 3, "agents recorded: {:?}", st.agents);
    assert!(
        godwit_cluster(&["list"]).contains(&run),
        "list does not show run {run}"
    );

    // n1's API address and socket, as printed.
    let n1: Vec<&str> = printed
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("n1: "))
        .expect("a line for n1")
        .split_whitespace()
        .collect();
    let (addr, socket) = match n1.as_slice() {
        ["api", addr, "socket", socket, ..] => (*addr, *socket),
        other => panic!("unexpected line for n1: {other:?}"),
    };
    let octets: Vec<u8> = addr
        .split([':', '.'])
        .take(2)
        .map(|o| o.parse().unwrap())
        .collect();
    assert!(
        octets[0] == 198 && (octets[1] == 18 || octets[1] == 19),
        "API address {addr} outside 198.18.0.0/15"
    );

    // Every member alive on n1, read from this host over TCP, through the sealed mesh.
    let alive = |doc: &Value| -> Vec<String> {
        let mut names: Vec<String> = doc["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["liveness"] == "alive")
            .filter_map(|m| m["id"]["node_id"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let doc = wait_for(Duration::from_secs(10), || {
        let (ok, text) = godwit_cli(&["nodes", "--addr", addr, "--json"]);
        let doc: Value = serde_json::from_str(&text).ok().filter(|_| ok)?;
        (alive(&doc) == ["n1", "n2", "n3"]).then_some(doc)
    })
    .unwrap_or_else(|| {
        let (_, text) = godwit_cli(&["nodes", "--addr", addr, "--json"]);
        panic!("n1 does not list n1, n2 and n3 alive: {text}")
    });
    assert!(
        doc["keyring"]["primary"].is_string(),
        "gossip is not sealed: {doc}"
    );
    let keys = Path::new(&st.work_dir).join("pki/gossip.keys");
    let mode = std::fs::metadata(&keys).expect("the key file").st_mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", keys.display());

    // A change, through n1's socket: n1 measures its path to n2 over the transport, which
    // needs both nodes' certificates of the run's CA.
    let probe = wait_for(Duration::from_secs(15), || {
        let (ok, text) = godwit_cli(&["path", "n2", "--bytes", "0", "--socket", socket, "--json"]);
        ok.then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten()
    })
    .expect("godwit path n2 through n1's socket");
    assert_eq!(probe["node"], "n2", "{probe}");
    assert!(
        probe["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{probe}"
    );

    let out = godwit_cluster(&["down", "--run", &run]);
    assert!(out.contains(&format!("removed run {run}")), "{out}");
    guard.0 = None;
    // The agents were not this process's children: init reaps them.
    wait_until(Duration::from_secs(5), "the agents to be reaped", || {
        footprint
            .pids
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    footprint.assert_gone();
    assert!(
        !godwit_cluster(&["list"]).contains(&run),
        "list still shows run {run}"
    );
}
