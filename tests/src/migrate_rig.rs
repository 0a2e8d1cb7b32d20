//! Two namespaced agents that can migrate the example `kvstore` between them: certificates of
//! one CA, gossip so that n1 knows n2's transport address, managed services with their state on
//! a disk filesystem (so the probe sees the pages dirtied) and a VIP on each node's `eth0`.
//!
//! Used by the migration benchmark (`godwit-bench-migrate`) and the integration tests of
//! `tests/migrate.rs`.
//!
//! ```no_run
//! use godwit_tests::migrate_rig::{KvOptions, MigrateRig};
//!
//! let rig = MigrateRig::start(); // kv (256 MiB) running on n1 behind its VIP
//! let client = rig.client(10);
//! let m = rig.migrate("kv", 2, &["--mode", "transitional", "--downtime-target", "200"]);
//! assert!(m.committed(), "{}", m.progress);
//! ```
//!
//! Everything is removed on drop: the cluster (agents, namespaces, cgroups), the services'
//! cgroups, and the directory holding the CA and both nodes' state.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use godwit::transport::{init_ca, issue_node};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::{example_bin, unique, wait_for, ServiceSlice};

/// The port every kvstore of the rig listens on (one runs per node at a time).
pub const KV_PORT: u16 = 7379;

/// How the rig's agents run.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// The `godwit` binary; default [`crate::godwit_bin`] (built by cargo, debug).
    pub agent_bin: Option<PathBuf>,
    /// Where `kvstore` and `kvcheck` are; default [`crate::example_bin`]'s (the test
    /// binaries' profile directory).
    pub bin_dir: Option<PathBuf>,
    /// `[probe] interval_ms`.
    pub probe_interval_ms: u64,
    /// `[services] stop_grace_ms`.
    pub stop_grace_ms: u64,
    /// Where the CA and the state live (a disk filesystem: tmpfs pages are never written back,
    /// so the probe would never report them).
    pub base: PathBuf,
    /// How many agents (n1 .. nN).
    pub nodes: usize,
    /// Run the coordinator (`[coordinator] enabled`, n1 bootstraps the group) with these
    /// timers: `(fence_after_ms, guard_grace_ms, margin_ms)`.
    pub coordinator: Option<(u64, u64, u64)>,
    /// A `[[service]]` of the kvstore (named `kv`, 64 MiB) in n1's configuration.
    pub configured_kv: bool,
    /// The last node is a witness (`[coordinator] role = "witness"`: votes, runs no services).
    pub witness: bool,
    /// `[services] cpu_cores` of every node (0: the host's CPU).
    pub cpu_cores: f64,
    /// More TOML for every node (whole tables, e.g. `[policy]`), after the rig's own.
    pub extra_toml: String,
    /// More keys of every node's `[coordinator]` table (e.g. `act = false`).
    pub coordinator_keys: String,
    /// `[site] name` of node n1, n2, ... in turn (empty: no `[site]` table, one default
    /// site); a node past the end of the list takes the last name.
    pub sites: Vec<String>,
}

impl RigOptions {
    /// `nodes` agents under a coordinator with short timers (lease 3 s, guard 0.5 s, margin
    /// 0.5 s: a node's services restart elsewhere 4 s after its last renewal).
    pub fn coordinated(nodes: usize) -> RigOptions {
        RigOptions {
            nodes,
            coordinator: Some((3000, 500, 500)),
            ..RigOptions::default()
        }
    }
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            agent_bin: None,
            bin_dir: None,
            probe_interval_ms: 500,
            stop_grace_ms: 3000,
            base: PathBuf::from("/var/tmp"),
            nodes: 2,
            coordinator: None,
            configured_kv: false,
            witness: false,
            cpu_cores: 0.0,
            extra_toml: String::new(),
            coordinator_keys: String::new(),
            sites: Vec::new(),
        }
    }
}

/// A kvstore service to add.
#[derive(Debug, Clone)]
pub struct KvOptions {
    /// Size of `data/kv.state`.
    pub size: u64,
    /// `data/ballast` of this many bytes, dirtied at `dirty_rate` bytes a second.
    pub ballast: Option<u64>,
    /// Bytes of ballast pages dirtied a second.
    pub dirty_rate: f64,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions {
            size: 256 << 20,
            ballast: None,
            dirty_rate: 0.0,
        }
    }
}

/// Two agents, n1 and n2, ready to move services between them.
pub struct MigrateRig {
    /// The cluster (its agents, namespaces and network).
    pub c: Cluster,
    _slices: Vec<ServiceSlice>,
    /// Holds `ca/` and `state/n1`, `state/n2` (each node's `state_root`).
    pub pki: PathBuf,
    /// The services' virtual address (host 100 of the cluster's /24).
    pub vip: Ipv4Addr,
    /// The example service's binaries.
    pub kvstore: PathBuf,
    pub kvcheck: PathBuf,
    /// `pki`, removed after the cluster is down.
    _pki_dir: crate::RemoveDir,
}

impl MigrateRig {
    /// The rig of the migration tests: default options, and `kv` (256 MiB of state) running on
    /// n1 behind the VIP.
    pub fn start() -> MigrateRig {
        let rig = MigrateRig::new(RigOptions::default());
        let spec = rig.kv_spec("kv", &KvOptions::default());
        rig.add(1, &spec, Duration::from_secs(15));
        rig
    }

    /// Two agents with no service yet; returns once n1 knows n2's transport address.
    pub fn new(opts: RigOptions) -> MigrateRig {
        let bin = |name: &str| match &opts.bin_dir {
            Some(dir) => dir.join(name),
            None => example_bin(name),
        };
        let (kvstore, kvcheck) = (bin("kvstore"), bin("kvcheck"));
        let pki = opts.base.join(unique("godwit-mig-pki"));
        // Removed with the rig, or here if the rig never comes up.
        let pki_dir = crate::RemoveDir(pki.clone());
        let ca = pki.join("ca");
        init_ca(&ca, "test").unwrap();
        let slices: Vec<ServiceSlice> = (0..opts.nodes).map(|_| ServiceSlice::new()).collect();
        let names: Vec<String> = slices.iter().map(|s| s.name.clone()).collect();
        const KEY: &str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988";
        let ca_dir = ca.clone();
        let state_base = pki.join("state");
        let (probe_ms, grace_ms) = (opts.probe_interval_ms, opts.stop_grace_ms);
        let (coordinator, configured_kv) = (opts.coordinator, opts.configured_kv);
        let witness = opts.witness.then_some(opts.nodes);
        let (cpu_cores, more_toml) = (opts.cpu_cores, opts.extra_toml.clone());
        let coordinator_keys = opts.coordinator_keys.clone();
        let sites = opts.sites.clone();
        let kvstore_bin = kvstore.clone();
        let mut builder = Cluster::builder(opts.nodes).extra_toml(move |n| {
            let tls = n.dir.join("tls");
            issue_node(&ca_dir, n.name, &tls).unwrap();
            let mut extra = String::new();
            if let Some((fence, guard, margin)) = coordinator {
                extra += &format!(
                    "[coordinator]\nenabled = true\nbootstrap = \"{}\"\nheartbeat_ms = 100\n\
                     election_min_ms = 500\nelection_max_ms = 1000\nfence_after_ms = {fence}\n\
                     guard_grace_ms = {guard}\nmargin_ms = {margin}\nrole = \"{}\"\n",
                    if n.index == 1 { "yes" } else { "no" },
                    if witness == Some(n.index) { "witness" } else { "voter" }
                );
                extra += &coordinator_keys;
            }
            if let Some(site) = sites.get(n.index - 1).or(sites.last()) {
                extra += &format!("[site]\nname = \"{site}\"\n");
            }
            if configured_kv && n.index == 1 {
                let o = n.all_addrs[0].octets();
                extra += &format!(
                    "[[service]]\nname = \"kv\"\ncommand = [\"{}\", \"--listen\", \"0.0.0.0:{KV_PORT}\", \
                     \"--state\", \"{{state}}/data/kv.state\", \"--size\", \"{}\"]\nstate = [\"data\"]\n\
                     vip = \"{}.{}.{}.100\"\n[service.health]\ntcp = \"127.0.0.1:{KV_PORT}\"\ninterval_ms = 100\n",
                    kvstore_bin.display(),
                    64 << 20,
                    o[0],
                    o[1],
                    o[2]
                );
            }
            extra
                + &format!(
                "[probe]\ninterval_ms = {probe_ms}\n\
                 [gossip]\nlisten = \"{a}:9747\"\nseeds = [\"{s}:9747\"]\nkeys = [\"{KEY}\"]\ninterval_ms = 100\n\
                 [transport]\nlisten = \"{a}:9748\"\ntls_dir = \"{}\"\n\
                 [services]\ncgroup_parent = \"{}\"\nstate_root = \"{}\"\nvip_interface = \"eth0\"\nstop_grace_ms = {grace_ms}\ncpu_cores = {cpu_cores:?}\n{more_toml}",
                tls.display(),
                names[n.index - 1],
                state_base.join(n.name).display(),
                a = n.addr,
                s = n.all_addrs[0],
            )
        });
        if let Some(bin) = &opts.agent_bin {
            builder = builder.agent_bin(bin.clone());
        }
        let c = builder.start();
        let o = c.node(1).addr.octets();
        let vip = Ipv4Addr::new(o[0], o[1], o[2], 100);
        wait_for(Duration::from_secs(15), || {
            let doc = c.json(1, "/v1/nodes");
            doc["members"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| {
                    m["id"]["node_id"] == "n2" && m["summary"]["addresses"]["quic"].is_string()
                })
                .then_some(())
        })
        .expect("n1 knows n2's transport address");
        MigrateRig {
            c,
            _slices: slices,
            pki,
            vip,
            kvstore,
            kvcheck,
            _pki_dir: pki_dir,
        }
    }

    /// Freezes (or thaws) node `i` whole, as a hypervisor pausing its machine would: its
    /// agent and fence guard (the node's cgroup) and its services (`cgroup.freeze`).
    pub fn freeze_node(&self, i: usize, frozen: bool) {
        let v = if frozen { "1" } else { "0" };
        for dir in [self.c.node(i).cgroup.as_path(), self._slices[i - 1].path()] {
            // The services' parent appears with the node's first service.
            let _ = std::fs::create_dir_all(dir);
            std::fs::write(dir.join("cgroup.freeze"), v)
                .unwrap_or_else(|e| panic!("cgroup.freeze of {}: {e}", dir.display()));
        }
    }

    /// Cuts node `i`'s power, as it were: its agent and fence guard (the node's cgroup) and its
    /// services are killed at once (`cgroup.kill`), and its link goes down, so nothing answers
    /// at its addresses, VIPs included. The agent is reaped; the namespace stays until drop.
    pub fn power_off(&mut self, i: usize) {
        for dir in [self.c.node(i).cgroup.as_path(), self._slices[i - 1].path()] {
            if dir.join("cgroup.kill").exists() {
                std::fs::write(dir.join("cgroup.kill"), "1")
                    .unwrap_or_else(|e| panic!("cgroup.kill of {}: {e}", dir.display()));
            }
        }
        self.c.link_down(i);
        // Reaps the agent (already killed with its cgroup).
        self.c.kill(i);
    }

    /// The spec of a kvstore service `name` behind the rig's VIP, its state in `data/`.
    pub fn kv_spec(&self, name: &str, kv: &KvOptions) -> Value {
        let mut command = vec![
            self.kvstore.display().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{KV_PORT}"),
            "--state".into(),
            "{state}/data/kv.state".into(),
            "--size".into(),
            kv.size.to_string(),
        ];
        if let Some(bytes) = kv.ballast {
            command.extend([
                "--ballast".into(),
                "{state}/data/ballast".into(),
                "--ballast-size".into(),
                bytes.to_string(),
                "--dirty-rate".into(),
                kv.dirty_rate.to_string(),
            ]);
        }
        serde_json::json!({
            "name": name,
            "command": command,
            "state": ["data"],
            "health": {"tcp": format!("127.0.0.1:{KV_PORT}"), "interval_ms": 100},
            "vip": self.vip.to_string(),
        })
    }

    /// POSTs `spec` to node `i` and waits (up to `within`) until it is healthy with its VIP
    /// up. A state directory already there (copied from elsewhere) is used as it is.
    pub fn add(&self, i: usize, spec: &Value, within: Duration) {
        let name = spec["name"]
            .as_str()
            .expect("a spec has a name")
            .to_string();
        let (code, body) = self
            .c
            .act(i, "POST", "/v1/services", Some(&spec.to_string()))
            .unwrap_or_else(|e| panic!("POST /v1/services to n{i}: {e}"));
        assert_eq!(code, 201, "{body}\n{}", self.c.log(i));
        self.wait_serving(i, &name, within)
            .unwrap_or_else(|| panic!("{name} not up on n{i}: {}", self.service(i, &name)));
    }

    /// Waits until node `i` sees `voters` voters, a leader, and holds a lease it may act on;
    /// returns its `/v1/cluster`.
    pub fn wait_group(&self, i: usize, voters: usize) -> Value {
        wait_for(Duration::from_secs(40), || {
            let doc = self.c.json(i, "/v1/cluster");
            (doc["voters"].as_array().map(Vec::len) == Some(voters)
                && doc["leader"].is_string()
                && doc["may_act"] == true)
                .then_some(doc)
        })
        .unwrap_or_else(|| {
            panic!(
                "n{i}: no group of {voters} voters: {}\n{}",
                self.c.json(i, "/v1/cluster"),
                self.c.log(i)
            )
        })
    }

    /// Where the log places `name`, as node `i` has applied it: (node, epoch).
    pub fn placed(&self, i: usize, name: &str) -> Option<(String, u64)> {
        let doc = self.c.json(i, "/v1/cluster");
        doc["services"].as_array()?.iter().find_map(|s| {
            (s["name"] == name).then(|| {
                (
                    s["node"].as_str().unwrap_or("").to_string(),
                    s["epoch"].as_u64().unwrap_or(0),
                )
            })
        })
    }

    /// Waits until `name` on node `i` is healthy with its VIP up.
    pub fn wait_serving(&self, i: usize, name: &str, within: Duration) -> Option<()> {
        wait_for(within, || {
            let s = self.service(i, name);
            (s["health"] == "healthy" && s["vip_active"] == true).then_some(())
        })
    }

    /// Node `i`'s first service's status (`null` without one).
    pub fn status(&self, i: usize) -> Value {
        self.c.json(i, "/v1/services")["services"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or(Value::Null)
    }

    /// Service `name`'s status on node `i` (`null` if it has none).
    pub fn service(&self, i: usize, name: &str) -> Value {
        self.c.json(i, "/v1/services")["services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    /// `POST /v1/services/NAME/ACTION` on node `i` (`start`, `stop`, `freeze`, `thaw`).
    pub fn action(&self, i: usize, name: &str, action: &str) -> (u16, String) {
        self.c
            .act_within(
                i,
                "POST",
                &format!("/v1/services/{name}/{action}"),
                None,
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("{action} {name} on n{i}: {e}"))
    }

    /// Migrates `name` from node 1 to node `to` with `godwit migrate` and `args` (such as
    /// `--mode transitional --downtime-target 200`), run in n1's namespace with n1's
    /// configuration, so with n1's own certificate.
    pub fn migrate(&self, name: &str, to: usize, args: &[&str]) -> Migration {
        self.migrate_from(1, name, to, args, Duration::from_secs(600))
    }

    /// As [`MigrateRig::migrate`] from node `from`, waiting at most `within` for it to end.
    pub fn migrate_from(
        &self,
        from: usize,
        name: &str,
        to: usize,
        args: &[&str],
        within: Duration,
    ) -> Migration {
        run_migrate(self.migrate_command(from, name, to, args), within)
    }

    /// The `godwit migrate --json` command [`MigrateRig::migrate_from`] runs, to run
    /// elsewhere (on a thread of its own, see [`run_migrate`]) or with more arguments (another
    /// identity: `--operator NAME --cert-dir DIR`).
    pub fn migrate_command(&self, from: usize, name: &str, to: usize, args: &[&str]) -> Command {
        let mut cmd = self.c.cli(from);
        cmd.arg("migrate")
            .arg(name)
            .args(["--to", &format!("n{to}"), "--json", "--config"])
            .arg(&self.c.node(from).config)
            .args(args);
        cmd
    }

    /// `state_root` of node `i`.
    pub fn state_root(&self, i: usize) -> PathBuf {
        self.pki.join(format!("state/n{i}"))
    }

    /// Service `name`'s state directory on node `i`.
    pub fn state_dir(&self, i: usize, name: &str) -> PathBuf {
        self.state_root(i).join(name)
    }

    /// `kvcheck run` against the VIP for `secs` seconds at 400 writes a second, in the
    /// background (stdout piped: its JSON report).
    pub fn client(&self, secs: u32) -> Child {
        self.client_with(secs, 400.0, "m")
    }

    /// `kvcheck run` against the VIP for `secs` seconds at `rate` writes a second with keys
    /// `PREFIX-…`. SIGINT (see [`stop_client`]) ends the writes early.
    pub fn client_with(&self, secs: u32, rate: f64, prefix: &str) -> Child {
        Command::new(&self.kvcheck)
            .args([
                "--addr",
                &format!("{}:{KV_PORT}", self.vip),
                "run",
                "--duration",
                &secs.to_string(),
            ])
            .args(["--rate", &rate.to_string(), "--prefix", prefix])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kvcheck")
    }
}

/// What a `godwit migrate --json` run said.
#[derive(Debug)]
pub struct Migration {
    /// Its exit code (`None`: killed, or still running at the deadline).
    pub exit: Option<i32>,
    /// The report (`null` without one: refused, or no answer).
    pub report: Value,
    /// What it wrote on stderr: a line per progress update, and why it failed.
    pub progress: String,
}

/// `godwit migrate`'s exit status for a move that committed past its downtime target.
pub const DOWNTIME_MISSED: i32 = 3;

impl Migration {
    /// The service runs on the target (exit 0, or 3 when the move missed its downtime target,
    /// which the report then says).
    pub fn committed(&self) -> bool {
        let missed = self.report["downtime_target_missed"].is_string();
        self.exit == Some(if missed { DOWNTIME_MISSED } else { 0 })
            && self.report["result"] == "committed"
    }
}

/// Runs a `godwit migrate` command (see [`MigrateRig::migrate_command`]) to its end, killed
/// after `within`.
pub fn run_migrate(mut cmd: Command, within: Duration) -> Migration {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn godwit migrate");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait().expect("wait for godwit migrate") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let progress = err.join().unwrap_or_default();
    Migration {
        exit: status.and_then(|s| s.code()),
        report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        progress,
    }
}

/// Ends a `kvcheck` client's writes (SIGINT), waits for its read-back and returns its report
/// and whether it passed.
pub fn stop_client(client: Child) -> (Value, bool) {
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let out = client.wait_with_output().expect("wait for kvcheck");
    (
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        out.status.success(),
    )
}
