//! A cluster of real `godwit agent` processes on one machine, with faults on demand.
//!
//! # Shape of a run
//!
//! ```text
//!  root namespace (the test process)          hub namespace gw-<run>-hub
//!    gwh<k> 198.a.b.254/24 ── veth ── up0 ─┐
//!                                          br0 (bridge)
//!          gw-<run>-n1: eth0 198.a.b.1 ── n1 ─┤
//!          gw-<run>-n2: eth0 198.a.b.2 ── n2 ─┤
//!          ...                                 ┘
//! ```
//!
//! - Each node is a network namespace `gw-<run>-n<i>` whose `eth0` is one end of a veth pair;
//!   the other end, `n<i>`, is a port of the bridge `br0` in the hub namespace `gw-<run>-hub`.
//!   Loopback is up everywhere.
//! - The run id `<run>` is `<pid>-<counter>`, unique per run. Each run claims its own /24 of
//!   198.18.0.0/15 (`198.a.b.0/24`, see [`subnet_addr`]), so parallel and stale runs never
//!   collide. Node `i` has address `198.a.b.i`; no other address range is ever used.
//! - **Reaching the nodes.** The hub has an uplink veth into the root namespace (`gwh<k>`,
//!   address `198.a.b.254/24`, IPv6 off), so the test process, `curl` and `godwit top` reach
//!   every node's API directly at `198.a.b.i:9746`. Code that must run *inside* a node (to test
//!   node-to-node reachability, or to open a UDP socket there) uses [`Cluster::in_node`], which
//!   runs a closure on a thread that has joined the node's namespace with `setns(2)`.
//! - One `godwit agent` per node, with its own config (`[node] name = "n<i>"`, its own
//!   `data_dir`, `[api] listen = "198.a.b.i:9746"` (read-only, so `public_read_only = true`)
//!   and `socket = "<node dir>/api.sock"`, where [`Cluster::act`] changes things, plus any
//!   extra TOML from
//!   [`Builder::extra_toml`]; [`node_toml`] writes it), its own log file and its own cgroup
//!   `<v2 root>/godwit-cluster/<run>/n<i>` (`/sys/fs/cgroup/unified` on a v1/v2 hybrid host,
//!   `/sys/fs/cgroup` on a pure v2 one). The agent is started by entering the namespace with
//!   `setns(2)` between fork and exec, which is `ip netns exec` without its remount of `/sys`:
//!   under `ip netns exec` the agent would not see the cgroup hierarchies.
//! - **Meshed runs** ([`Builder::mesh`], what `cargo xtask cluster up` makes) are one cluster:
//!   each node gossips on `198.a.b.i:9747` with the first nodes as seeds, sealed with a key
//!   generated for the run (`<work dir>/pki/gossip.keys`, mode 0600, `[gossip] keys_file`), and
//!   runs the transport on `198.a.b.i:9748` with a certificate of a CA generated for the run
//!   (`<work dir>/pki/ca`, by the agent binary's `godwit ca init` and `godwit cert issue`);
//!   its services get their own cgroups, state and VIP interface, so they migrate between
//!   nodes. The test process, on the uplink, reaches gossip, transport and API alike.
//!
//! # Faults
//!
//! [`Cluster::kill`] (SIGKILL), [`Cluster::stop`] / [`Cluster::cont`] (SIGSTOP / SIGCONT),
//! [`Cluster::restart`], [`Cluster::link_down`] / [`Cluster::link_up`] (the node's bridge port),
//! [`Cluster::set_loss`] (nftables `numgen random` in the node's namespace),
//! [`Cluster::set_bandwidth`] (`tbf`), [`Cluster::partition`] / [`Cluster::heal`]. There is no
//! delay injection: netem is not built on our kernels.
//!
//! # Cleanup
//!
//! Everything a run will create is written to `/run/godwit-cluster/runs/<run>/state` before it
//! is created. Dropping the [`Cluster`] kills the agents, deletes the namespaces (which removes
//! their veths), the cgroups, the work directory and the state, also when the test panics (and
//! then prints the tail of each agent's log first). Agents of a test run die with the test
//! process (`PR_SET_PDEATHSIG`; they are forked by one thread that lives as long as the
//! process, so it does not matter which thread starts or restarts them), so a killed test
//! process leaves no agent behind;
//! [`down`] with `all` removes what else such a crashed run left. Runs made by
//! `cargo xtask cluster up` are detached ([`Builder::detached`]) and stay until
//! `cargo xtask cluster down`.
//!
//! # Example
//!
//! ```no_run
//! use godwit_tests::cluster::Cluster;
//!
//! let mut c = Cluster::start(3);
//! assert_eq!(c.get(1, "/healthz").unwrap().0, 200);
//! c.partition(&[&[1, 2], &[3]]);
//! assert!(c.get_from(1, 3, "/healthz").is_err());
//! c.heal();
//! c.kill(2);
//! c.restart(2);
//! ```
//!
//! Nodes are numbered from 1, as in their names and addresses. Everything needs root. Helpers
//! used by tests panic with a message that says what failed; [`Builder::try_start`] and
//! [`down`] return errors for the command-line tool.

pub mod capture;
mod cgroup;
mod config;
mod http;
mod net;
mod state;

use std::ffi::CString;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use config::{node_toml, Mesh, NodeConfig, GOSSIP_PORT, SEEDS, TRANSPORT_PORT};
pub use http::get as http_get;
pub use net::in_netns;
pub use state::{
    down, list, subnet_addr, DownReport, Owner, RunInfo, RunState, NS_PREFIX, STATE_ROOT,
    UPLINK_PREFIX,
};

/// Port of every agent's API.
pub const API_PORT: u16 = 9746;
/// Host part of the root namespace's address on the uplink.
pub const UPLINK_HOST: u8 = 254;
/// Largest cluster: host parts 1 to 253 (254 is the uplink).
pub const MAX_NODES: usize = 253;
/// Name of each node's interface, in its namespace.
pub const NODE_IF: &str = "eth0";
/// Name of the bridge in the hub namespace.
const BRIDGE: &str = "br0";
/// Hub end of the uplink.
const HUB_UPLINK: &str = "up0";
/// Timeout of one HTTP request made by [`Cluster::get`] and friends.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// nftables table of [`Cluster::set_loss`].
const LOSS_TABLE: &str = "godwit_loss";
/// nftables table of [`Cluster::partition`].
const PARTITION_TABLE: &str = "godwit_partition";

/// What the per-node TOML hook of [`Builder::extra_toml`] knows about the node.
#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    /// Node number, from 1.
    pub index: usize,
    /// `n<index>`.
    pub name: &'a str,
    /// The node's address.
    pub addr: Ipv4Addr,
    /// Every node's address, node 1 first (for seed lists).
    pub all_addrs: &'a [Ipv4Addr],
    /// The node's own directory (config, log, data).
    pub dir: &'a Path,
}

/// One node of a running cluster.
#[derive(Debug)]
pub struct Node {
    /// Node number, from 1.
    pub index: usize,
    /// `n<index>`, also the agent's `[node] name`.
    pub name: String,
    /// Its network namespace, `gw-<run>-n<index>`.
    pub netns: String,
    /// Its address on the cluster network.
    pub addr: Ipv4Addr,
    /// Its agent's API address (reads only).
    pub api: SocketAddr,
    /// Its agent's API socket, where changes are served.
    pub socket: PathBuf,
    /// Its gossip address (configured in a meshed run).
    pub gossip: SocketAddr,
    /// Its transport address (configured in a meshed run).
    pub transport: SocketAddr,
    /// Its certificate, key and the CA's certificate (issued in a meshed run).
    pub tls_dir: PathBuf,
    /// Its directory: `godwit.toml`, `agent.log`, `data/`, `api.sock`, `tls/`, `state/`.
    pub dir: PathBuf,
    /// The agent's config file.
    pub config: PathBuf,
    /// The agent's log (stdout and stderr, appended across restarts).
    pub log: PathBuf,
    /// The agent's cgroup directory.
    pub cgroup: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// The agent's `[node] data_dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

type TomlHook = Box<dyn Fn(&NodeInfo<'_>) -> String>;

/// Options of a cluster; [`Cluster::builder`] makes one.
pub struct Builder {
    nodes: usize,
    agent_bin: Option<PathBuf>,
    extra_toml: Option<TomlHook>,
    detached: bool,
    mesh: bool,
    ready_timeout: Duration,
}

impl Builder {
    /// The `godwit` binary to run; default [`crate::godwit_bin`] (built by cargo).
    pub fn agent_bin(mut self, path: impl Into<PathBuf>) -> Builder {
        self.agent_bin = Some(path.into());
        self
    }

    /// TOML appended to each node's config, after its `[node]` and `[api]` tables (so it may
    /// add other tables, such as `[probe]`, but not repeat those two; in a [`Builder::mesh`]
    /// run not `[gossip]`, `[transport]` or `[services]` either).
    pub fn extra_toml(mut self, hook: impl Fn(&NodeInfo<'_>) -> String + 'static) -> Builder {
        self.extra_toml = Some(Box::new(hook));
        self
    }

    /// Leaves the run in place when the [`Cluster`] is dropped or the process exits (the agents
    /// get their own session and do not die with this process). `down` removes it.
    pub fn detached(mut self) -> Builder {
        self.detached = true;
        self
    }

    /// Makes the nodes one cluster (what `cargo xtask cluster up` does): gossip seeded and
    /// sealed with a generated key, the transport with certificates of a generated CA, and
    /// services kept apart per node. See [`node_toml`] for the configuration and [`Mesh`] for
    /// the generated files.
    pub fn mesh(mut self) -> Builder {
        self.mesh = true;
        self
    }

    /// How long to wait for each agent's `/healthz` (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Builder {
        self.ready_timeout = timeout;
        self
    }

    /// Creates the network, starts every agent and waits until each answers `/healthz`.
    /// On error, whatever was made is removed again.
    pub fn try_start(self) -> Result<Cluster> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("a cluster needs root (network namespaces, nftables, cgroups)");
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            bail!("a cluster has 1 to {MAX_NODES} nodes, not {}", self.nodes);
        }
        let agent_bin = self.agent_bin.clone().unwrap_or_else(crate::godwit_bin);
        if !agent_bin.exists() {
            bail!("agent binary {} does not exist", agent_bin.display());
        }
        let cgroup_root = cgroup::v2_root()?;
        let run = state::new_run_id()?;
        let subnet = match state::claim_subnet(&run) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(RunState::dir_of(&run));
                return Err(e);
            }
        };
        let work_dir = state::work_root().join(&run);
        let mut namespaces = vec![format!("{NS_PREFIX}{run}-hub")];
        namespaces.extend((1..=self.nodes).map(|i| format!("{NS_PREFIX}{run}-n{i}")));
        let st = RunState {
            owner: if self.detached {
                Owner::Detached
            } else {
                Owner::me()
            },
            subnet,
            uplink: format!("{UPLINK_PREFIX}{subnet}"),
            work_dir: work_dir.clone(),
            cgroup: cgroup_root.join(cgroup::PARENT).join(&run),
            namespaces,
            agents: Vec::new(),
            run,
        };
        let nodes = (1..=self.nodes)
            .map(|i| {
                let addr = subnet_addr(subnet, i as u8);
                let dir = work_dir.join(format!("n{i}"));
                Node {
                    index: i,
                    name: format!("n{i}"),
                    netns: st.namespaces[i].clone(),
                    addr,
                    api: SocketAddr::from((addr, API_PORT)),
                    socket: dir.join("api.sock"),
                    gossip: config::gossip_addr(addr),
                    transport: config::transport_addr(addr),
                    tls_dir: dir.join("tls"),
                    config: dir.join("godwit.toml"),
                    log: dir.join("agent.log"),
                    cgroup: st.cgroup.join(format!("n{i}")),
                    dir,
                    child: None,
                }
            })
            .collect();
        // From here on, dropping `cluster` tears down whatever exists.
        let mut cluster = Cluster {
            state: st,
            nodes,
            agent_bin,
            mesh: None,
            detached: false,
            ready_timeout: self.ready_timeout,
        };
        cluster.state.save()?;
        cluster.setup_network()?;
        if self.mesh {
            let services = cluster
                .state
                .cgroup
                .strip_prefix(&cgroup_root)
                .context("the run's cgroup lies under the v2 root")?
                .to_string_lossy()
                .into_owned();
            cluster.mesh = Some(Mesh::create(
                &work_dir,
                &cluster.agent_bin,
                &cluster.state.run,
                services,
                &cluster.nodes,
            )?);
        }
        cluster.write_configs(self.extra_toml.as_deref())?;
        std::fs::create_dir_all(&cluster.state.cgroup)
            .with_context(|| format!("create cgroup {}", cluster.state.cgroup.display()))?;
        let detached = self.detached;
        for i in 1..=cluster.nodes.len() {
            std::fs::create_dir_all(&cluster.nodes[i - 1].cgroup).context("create node cgroup")?;
            cluster.spawn_agent(i, detached)?;
        }
        for i in 1..=cluster.nodes.len() {
            cluster.try_wait_ready(i)?;
        }
        cluster.detached = detached;
        Ok(cluster)
    }

    /// As [`Builder::try_start`], panicking with the cause on error (for tests).
    pub fn start(self) -> Cluster {
        self.try_start()
            .unwrap_or_else(|e| panic!("cannot start the cluster: {e:#}"))
    }
}

/// A running cluster; dropping it removes everything of the run (unless detached).
pub struct Cluster {
    state: RunState,
    nodes: Vec<Node>,
    agent_bin: PathBuf,
    /// The shared secrets of a meshed run.
    mesh: Option<Mesh>,
    /// Set once a detached cluster is fully started: Drop then leaves everything in place.
    detached: bool,
    ready_timeout: Duration,
}

impl Cluster {
    /// Options for a cluster of `nodes` nodes.
    pub fn builder(nodes: usize) -> Builder {
        Builder {
            nodes,
            agent_bin: None,
            extra_toml: None,
            detached: false,
            mesh: false,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// `nodes` nodes with default options; panics on failure.
    pub fn start(nodes: usize) -> Cluster {
        Cluster::builder(nodes).start()
    }

    /// The run id, `<pid>-<counter>`.
    pub fn run_id(&self) -> &str {
        &self.state.run
    }

    /// The recorded state of the run.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The gossip key file and CA of a meshed run ([`Builder::mesh`]).
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// The `godwit` binary the agents run.
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }

    /// Name of the hub namespace.
    pub fn hub(&self) -> &str {
        &self.state.namespaces[0]
    }

    /// The root namespace's address on the cluster network.
    pub fn uplink_addr(&self) -> Ipv4Addr {
        subnet_addr(self.state.subnet, UPLINK_HOST)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (from 1).
    #[track_caller]
    pub fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i}: the cluster has nodes 1 to {}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    /// Every node, node 1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`'s API address.
    pub fn api(&self, i: usize) -> SocketAddr {
        self.node(i).api
    }

    /// Node `i`'s API socket.
    pub fn socket(&self, i: usize) -> &Path {
        &self.node(i).socket
    }

    /// Sends a request that changes something to node `i`'s API socket, as root (the test
    /// process); the status code and the body.
    pub fn act(
        &self,
        i: usize,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        crate::unix_request_within(self.socket(i), method, path, json, Duration::from_secs(10))
    }

    /// As [`Cluster::act`], giving up writing and reading after `timeout` each.
    pub fn act_within(
        &self,
        i: usize,
        method: &str,
        path: &str,
        json: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        crate::unix_request_within(self.socket(i), method, path, json, timeout)
    }

    /// The pid of node `i`'s agent, if it runs (stopped counts as running).
    pub fn agent_pid(&mut self, i: usize) -> Option<u32> {
        self.node(i);
        let node = &mut self.nodes[i - 1];
        let child = node.child.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    /// The log of node `i`'s agent.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.node(i).log).unwrap_or_default()
    }

    /// GETs `path` from node `i`'s API, from the test process (through the uplink).
    pub fn get(&self, i: usize, path: &str) -> std::io::Result<(u16, String)> {
        http::get(self.api(i), path, HTTP_TIMEOUT)
    }

    /// As [`Cluster::get`], with another timeout for connecting and for reading.
    pub fn get_timeout(
        &self,
        i: usize,
        path: &str,
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        http::get(self.api(i), path, timeout)
    }

    /// GETs `path` from node `to`'s API with a connection made inside node `from`'s namespace.
    pub fn get_from(&self, from: usize, to: usize, path: &str) -> std::io::Result<(u16, String)> {
        let addr = self.api(to);
        self.in_node(from, || http::get(addr, path, HTTP_TIMEOUT))
    }

    /// GETs `path` from node `i` and parses the body as JSON; panics unless it is a 200 with
    /// JSON.
    #[track_caller]
    pub fn json(&self, i: usize, path: &str) -> serde_json::Value {
        let (code, body) = self
            .get(i, path)
            .unwrap_or_else(|e| panic!("GET {path} from n{i}: {e}"));
        assert_eq!(code, 200, "GET {path} from n{i}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} from n{i}: bad JSON ({e}): {body}"))
    }

    /// A `godwit` command (the agents' binary) that runs in node `i`'s network namespace, such
    /// as `godwit migrate --config <node's config>`: it reaches the node's addresses as the
    /// node's own tools would.
    pub fn cli(&self, i: usize) -> Command {
        let mut cmd = Command::new(&self.agent_bin);
        let ns = &self.node(i).netns;
        net::enter_netns_on_exec(&mut cmd, ns).unwrap_or_else(|e| panic!("enter {ns}: {e:#}"));
        cmd
    }

    /// Runs `f` on a thread inside node `i`'s network namespace (sockets it opens are the
    /// node's). A panic in `f` propagates.
    pub fn in_node<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let ns = &self.node(i).netns;
        in_netns(ns, f).unwrap_or_else(|e| panic!("enter {ns}: {e:#}"))
    }

    /// Waits until node `i`'s agent answers `/healthz` with 200; panics with its log if it
    /// exits or the ready timeout passes.
    pub fn wait_ready(&mut self, i: usize) {
        self.try_wait_ready(i).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_wait_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let api = self.api(i);
        loop {
            let node = &mut self.nodes[i - 1];
            let child = node.child.as_mut().context("agent not started")?;
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "agent of n{i} exited with {status} before it was ready; its log:\n{}",
                    tail(&self.log(i), 40)
                );
            }
            if let Ok((200, _)) = http::get(api, "/healthz", Duration::from_millis(500)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "agent of n{i} did not answer /healthz at {api} within {:?}; its log:\n{}",
                    self.ready_timeout,
                    tail(&self.log(i), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until every node's `/v1/nodes` lists every node alive (the gossip of a meshed
    /// run has converged); on timeout, says which nodes each one is missing.
    pub fn try_wait_meshed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut missing = Vec::new();
            for node in &self.nodes {
                let alive = self.alive_members(node.index);
                let lacks: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|n| !alive.contains(&n.name))
                    .map(|n| n.name.as_str())
                    .collect();
                if !lacks.is_empty() {
                    missing.push(format!("{} lacks {}", node.name, lacks.join(" ")));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the nodes did not all see each other alive within {timeout:?}: {}",
                    missing.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node of a meshed run knows one leader, the group has its voters (one
    /// for up to two nodes, three up to six, five from seven) and every node holds a lease.
    pub fn try_wait_coordinated(&self, timeout: Duration) -> Result<String> {
        let want = match self.nodes.len() {
            n if n >= 7 => 5,
            n if n >= 3 => 3,
            _ => 1,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let docs: Vec<serde_json::Value> = self
                .nodes
                .iter()
                .map(|n| match self.get(n.index, "/v1/cluster") {
                    Ok((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                })
                .collect();
            let leader = docs[0]["leader"].as_str().map(str::to_string);
            let settled = leader.is_some()
                && docs.iter().all(|d| {
                    d["leader"].as_str() == leader.as_deref()
                        && d["may_act"] == true
                        && d["voters"].as_array().map(Vec::len) == Some(want)
                });
            if settled {
                return Ok(leader.unwrap_or_default());
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = docs
                    .iter()
                    .zip(&self.nodes)
                    .map(|(d, n)| {
                        format!(
                            "{}: leader {} voters {} lease {}",
                            n.name, d["leader"], d["voters"], d["may_act"]
                        )
                    })
                    .collect();
                bail!(
                    "no coordinator with {want} voters within {timeout:?}: {}",
                    seen.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The names of the members node `i` reports alive (none when it does not answer).
    pub fn alive_members(&self, i: usize) -> Vec<String> {
        let Ok((200, body)) = self.get(i, "/v1/nodes") else {
            return Vec::new();
        };
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        doc["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["liveness"] == "alive")
            .filter_map(|m| m["id"]["node_id"].as_str().map(str::to_string))
            .collect()
    }

    /// Whether node `i` answers `/healthz` with 200 within `timeout`, from the test process.
    pub fn answers(&self, i: usize, timeout: Duration) -> bool {
        matches!(http::get(self.api(i), "/healthz", timeout), Ok((200, _)))
    }

    /// Whether node `to` answers `/healthz` with 200 within `timeout`, asked from inside node
    /// `from`.
    pub fn answers_from(&self, from: usize, to: usize, timeout: Duration) -> bool {
        let addr = self.api(to);
        self.in_node(from, || {
            matches!(http::get(addr, "/healthz", timeout), Ok((200, _)))
        })
    }

    /// SIGKILLs node `i`'s agent and reaps it. Panics if it was not running.
    pub fn kill(&mut self, i: usize) {
        self.node(i);
        let mut child = self.nodes[i - 1]
            .child
            .take()
            .unwrap_or_else(|| panic!("n{i} has no agent to kill"));
        child
            .kill()
            .unwrap_or_else(|e| panic!("kill n{i}'s agent: {e}"));
        child
            .wait()
            .unwrap_or_else(|e| panic!("reap n{i}'s agent: {e}"));
    }

    /// Waits up to `timeout` for node `i`'s agent to exit (after a SIGTERM, say) and reaps it;
    /// `None` if it still runs then. Panics if it has no agent.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.node(i);
        let child = self.nodes[i - 1]
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("n{i} has no agent"));
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.nodes[i - 1].child = None;
                    return Some(status);
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return None,
                Err(e) => panic!("wait for n{i}'s agent: {e}"),
            }
        }
    }

    /// SIGSTOPs node `i`'s agent and waits until the kernel reports it stopped.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        let pid = self.agent_pid(i).expect("agent runs");
        wait_until(
            Duration::from_secs(5),
            &format!("n{i}'s agent to stop"),
            || proc_state(pid) == Some('T'),
        );
    }

    /// SIGCONTs node `i`'s agent and waits until it is no longer stopped.
    pub fn cont(&mut self, i: usize) {
        self.signal(i, libc::SIGCONT);
        let pid = self.agent_pid(i).expect("agent runs");
        wait_until(
            Duration::from_secs(5),
            &format!("n{i}'s agent to resume"),
            || proc_state(pid) != Some('T'),
        );
    }

    /// Sends `sig` to node `i`'s agent.
    pub fn signal(&mut self, i: usize, sig: i32) {
        let pid = self
            .agent_pid(i)
            .unwrap_or_else(|| panic!("n{i} has no running agent to signal"));
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child.
        let rc = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(
            rc,
            0,
            "signal {sig} to n{i}'s agent: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Starts node `i`'s agent again with the same config, data directory and cgroup (after
    /// killing it if it still runs) and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        if self.agent_pid(i).is_some() {
            self.kill(i);
        }
        self.start_agent(i);
        self.wait_ready(i);
    }

    /// Starts node `i`'s agent without waiting for it (see [`Cluster::wait_ready`]). Panics if
    /// it already runs.
    pub fn start_agent(&mut self, i: usize) {
        assert!(self.agent_pid(i).is_none(), "n{i}'s agent already runs");
        let detached = self.detached;
        self.spawn_agent(i, detached)
            .unwrap_or_else(|e| panic!("start n{i}'s agent: {e:#}"));
    }

    /// Takes node `i`'s link down (its port on the hub's bridge): the node can reach nothing
    /// and nothing can reach it, as with a pulled cable.
    pub fn link_down(&self, i: usize) {
        let port = &self.node(i).name;
        net::ip_in(self.hub(), &["link", "set", port, "down"])
            .unwrap_or_else(|e| panic!("link down n{i}: {e:#}"));
    }

    /// Brings node `i`'s link back up.
    pub fn link_up(&self, i: usize) {
        let port = &self.node(i).name;
        net::ip_in(self.hub(), &["link", "set", port, "up"])
            .unwrap_or_else(|e| panic!("link up n{i}: {e:#}"));
    }

    /// Drops each packet that node `i` receives on its link with probability `percent`/100
    /// (nftables `numgen random mod 100 < percent` on the input hook of its namespace).
    /// A packet between two nodes crosses one such point, at its receiver, so the same setting
    /// on every node gives `percent` loss per packet. Senders see no error. Replaces an earlier
    /// setting; 0 keeps the rule but drops nothing.
    pub fn set_loss(&self, i: usize, percent: u8) {
        assert!(percent <= 100, "loss of {percent}% is not a percentage");
        let script = format!(
            "table ip {LOSS_TABLE}\ndelete table ip {LOSS_TABLE}\n\
             table ip {LOSS_TABLE} {{\n  chain input {{\n    \
             type filter hook input priority -200; policy accept;\n    \
             iifname \"{NODE_IF}\" numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
        );
        let ns = &self.node(i).netns;
        net::nft_in(ns, &script).unwrap_or_else(|e| panic!("set loss on n{i}: {e:#}"));
    }

    /// Removes node `i`'s loss rule (nothing happens if there is none).
    pub fn clear_loss(&self, i: usize) {
        let ns = &self.node(i).netns;
        net::nft_in(ns, &drop_table_script(LOSS_TABLE))
            .unwrap_or_else(|e| panic!("clear loss on n{i}: {e:#}"));
    }

    /// Packets dropped so far by node `i`'s loss rule; `None` without a rule.
    pub fn loss_dropped(&self, i: usize) -> Option<u64> {
        let ns = &self.node(i).netns;
        let out = net::nft_out(ns, &["list", "table", "ip", LOSS_TABLE]).ok()?;
        let after = out.split("counter packets ").nth(1)?;
        after.split_whitespace().next()?.parse().ok()
    }

    /// Limits the rate at which node `i` sends to `kbit` kbit/s (a `tbf` qdisc on its
    /// interface).
    pub fn set_bandwidth(&self, i: usize, kbit: u32) {
        self.set_bandwidth_with(i, kbit, 4000, 400);
    }

    /// As [`Cluster::set_bandwidth`] with the bucket's size (`burst_bytes`) and the longest a
    /// packet may queue (`latency_ms`, which sets the queue's length) chosen: at 1 Gbit/s the
    /// default 4000-byte bucket needs a timer every 32 µs, and a 400 ms queue makes every reply
    /// wait behind a bulk transfer.
    pub fn set_bandwidth_with(&self, i: usize, kbit: u32, burst_bytes: u32, latency_ms: u32) {
        let ns = &self.node(i).netns;
        let rate = format!("{kbit}kbit");
        let burst = burst_bytes.to_string();
        let latency = format!("{latency_ms}ms");
        net::run(
            "tc",
            &[
                "-n", ns, "qdisc", "replace", "dev", NODE_IF, "root", "tbf", "rate", &rate,
                "burst", &burst, "latency", &latency,
            ],
        )
        .unwrap_or_else(|e| panic!("set bandwidth on n{i}: {e:#}"));
    }

    /// Removes node `i`'s bandwidth limit (nothing happens if there is none).
    pub fn clear_bandwidth(&self, i: usize) {
        let ns = &self.node(i).netns;
        let _ = net::run("tc", &["-n", ns, "qdisc", "del", "dev", NODE_IF, "root"]);
    }

    /// Cuts traffic between groups of nodes: each node of a group drops every packet from the
    /// nodes of the other groups (nftables, input hook, by source address), so connections
    /// time out as in a real partition. Nodes in no group are not affected, and the test
    /// process still reaches every node. Replaces an earlier partition.
    ///
    /// `c.partition(&[&[1, 2], &[3]])` separates n1 and n2 from n3.
    pub fn partition(&self, groups: &[&[usize]]) {
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, other)| other.iter())
                .map(|&j| self.node(j).addr.to_string())
                .collect();
            for &i in group.iter() {
                assert!(
                    !others.contains(&self.node(i).addr.to_string()),
                    "n{i} is in more than one group of the partition"
                );
                self.drop_from(i, &others);
            }
        }
    }

    /// Cuts the links between the given pairs of nodes (both ways), leaving every other link
    /// up: rings and bridges that [`Cluster::partition`]'s groups cannot express. Replaces an
    /// earlier partition or cut.
    ///
    /// `c.cut(&[(1, 3), (2, 3)])` leaves n3 talking only to the nodes other than n1 and n2.
    pub fn cut(&self, pairs: &[(usize, usize)]) {
        for i in 1..=self.nodes.len() {
            let others: Vec<String> = pairs
                .iter()
                .filter_map(|&(a, b)| match (a == i, b == i) {
                    (true, false) => Some(b),
                    (false, true) => Some(a),
                    _ => None,
                })
                .map(|j| self.node(j).addr.to_string())
                .collect();
            self.drop_from(i, &others);
        }
    }

    /// Makes node `i` drop every packet from the addresses `from` (nftables, input hook),
    /// replacing its earlier partition rule; an empty `from` leaves the table empty.
    fn drop_from(&self, i: usize, from: &[String]) {
        let rule = if from.is_empty() {
            String::new()
        } else {
            format!("    ip saddr {{ {} }} counter drop\n", from.join(", "))
        };
        let script = format!(
            "table ip {PARTITION_TABLE}\ndelete table ip {PARTITION_TABLE}\n\
             table ip {PARTITION_TABLE} {{\n  chain input {{\n    \
             type filter hook input priority -210; policy accept;\n{rule}  }}\n}}\n"
        );
        net::nft_in(&self.node(i).netns, &script)
            .unwrap_or_else(|e| panic!("partition rule of n{i}: {e:#}"));
    }

    /// Removes every partition rule.
    pub fn heal(&self) {
        for node in &self.nodes {
            net::nft_in(&node.netns, &drop_table_script(PARTITION_TABLE))
                .unwrap_or_else(|e| panic!("heal {}: {e:#}", node.name));
        }
    }

    /// Leaves the run in place and returns its state; `down` removes it later.
    pub fn detach(mut self) -> RunState {
        self.detached = true;
        self.state.owner = Owner::Detached;
        self.save_agents();
        for node in &mut self.nodes {
            // Dropping a Child neither kills nor waits for it.
            node.child.take();
        }
        self.state.clone()
    }

    /// Tears the run down now (what Drop does).
    pub fn down(self) {}

    fn setup_network(&self) -> Result<()> {
        let hub = self.hub();
        let uplink = &self.state.uplink;
        net::ip(&["netns", "add", hub])?;
        net::ip_in(hub, &["link", "set", "lo", "up"])?;
        net::ip_in(hub, &["link", "add", BRIDGE, "type", "bridge"])?;
        net::ip_in(hub, &["link", "set", BRIDGE, "up"])?;
        net::ip(&[
            "link", "add", uplink, "type", "veth", "peer", "name", HUB_UPLINK, "netns", hub,
        ])?;
        // No IPv6 on the root namespace's end: nothing but our IPv4 subnet is ever used there.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{uplink}/disable_ipv6"),
            "1",
        );
        let cidr = format!("{}/24", self.uplink_addr());
        net::ip(&["addr", "add", &cidr, "dev", uplink])?;
        net::ip(&["link", "set", uplink, "up"])?;
        net::ip_in(hub, &["link", "set", HUB_UPLINK, "master", BRIDGE, "up"])?;
        for node in &self.nodes {
            let ns = &node.netns;
            net::ip(&["netns", "add", ns])?;
            net::ip_in(ns, &["link", "set", "lo", "up"])?;
            net::ip_in(
                hub,
                &[
                    "link", "add", &node.name, "type", "veth", "peer", "name", NODE_IF, "netns", ns,
                ],
            )?;
            net::ip_in(hub, &["link", "set", &node.name, "master", BRIDGE, "up"])?;
            let cidr = format!("{}/24", node.addr);
            net::ip_in(ns, &["addr", "add", &cidr, "dev", NODE_IF])?;
            net::ip_in(ns, &["link", "set", NODE_IF, "up"])?;
        }
        Ok(())
    }

    fn write_configs(&self, hook: Option<&dyn Fn(&NodeInfo<'_>) -> String>) -> Result<()> {
        let all_addrs: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.addr).collect();
        for node in &self.nodes {
            let data = node.data_dir();
            std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
            let mut toml = node_toml(&NodeConfig {
                run: &self.state.run,
                node,
                all: &self.nodes,
                mesh: self.mesh.as_ref(),
            });
            if let Some(h) = hook {
                toml += &h(&NodeInfo {
                    index: node.index,
                    name: &node.name,
                    addr: node.addr,
                    all_addrs: &all_addrs,
                    dir: &node.dir,
                });
                toml.push('\n');
            }
            std::fs::write(&node.config, toml)
                .with_context(|| format!("write {}", node.config.display()))?;
        }
        Ok(())
    }

    /// Starts node `i`'s agent in its namespace and cgroup, output appended to its log.
    fn spawn_agent(&mut self, i: usize, detached: bool) -> Result<()> {
        let node = &self.nodes[i - 1];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let mut cmd = Command::new(&self.agent_bin);
        cmd.arg("agent")
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let procs = CString::new(
            node.cgroup
                .join("cgroup.procs")
                .to_string_lossy()
                .into_owned(),
        )?;
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (close_range, fcntl, open, write, close, setsid, prctl,
        // getppid) on data allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Descriptors this process inherited without close-on-exec (a `flock` around
                // `cargo xtask cluster up`, say) stay out of the agent: a detached agent would
                // hold them until `down`. Std's own descriptors are close-on-exec already.
                if libc::syscall(
                    libc::SYS_close_range,
                    3u32,
                    u32::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) != 0
                {
                    for fd in 3..1024 {
                        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                    }
                }
                // Move into the node's cgroup ("0" is the writing process).
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
                if detached {
                    libc::setsid();
                } else {
                    // Die with the spawner thread, that is with the test process.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("parent died before exec"));
                    }
                }
                Ok(())
            });
        }
        net::enter_netns_on_exec(&mut cmd, &node.netns)?;
        let child = spawn(cmd)
            .with_context(|| format!("spawn {} for {}", self.agent_bin.display(), node.name))?;
        self.nodes[i - 1].child = Some(child);
        self.save_agents();
        Ok(())
    }

    /// Records the current agent pids in the state file (best effort).
    fn save_agents(&mut self) {
        self.state.agents = self
            .nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(|c| (n.name.clone(), c.id())))
            .collect();
        let _ = self.state.save();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                eprintln!(
                    "--- last lines of {}'s agent log ({}) ---\n{}",
                    node.name,
                    node.log.display(),
                    tail(&log, 20)
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        state::teardown(&self.state);
    }
}

/// Spawns `cmd` from a thread that lives as long as the process. `PR_SET_PDEATHSIG` fires when
/// the *thread* that forked the child exits; forking from this thread ties agents to the
/// process, whichever (possibly short-lived) thread asked for them.
fn spawn(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let requests = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("cluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the cluster spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("cluster spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("cluster spawner thread is gone"))?
}

/// An nftables script that removes `table` if it exists.
fn drop_table_script(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The state letter of `/proc/PID/stat` (R, S, T, Z...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
