//! Each node's configuration file ([`node_toml`]), and the secrets a meshed run shares
//! ([`Mesh::create`]): a generated gossip key and a generated cluster CA.
//!
//! A meshed run ([`super::Builder::mesh`], what `cargo xtask cluster up` makes) is a cluster a
//! newcomer would recognise: gossip seeded with the first nodes' addresses and sealed with the
//! run's key (`[gossip] keys_file`, mode 0600), the QUIC transport with each node's certificate
//! from the run's CA (`godwit ca init`, `godwit cert issue`, run with the agent's own binary),
//! and services kept apart per node (their cgroups under the run's, their state in the node's
//! directory, their VIPs on the node's `eth0`), so `godwit migrate` moves them between nodes.
//! A bare run writes only `[node]` and `[api]`, and tests add the rest themselves.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::Node;

/// Port of every agent's gossip (UDP).
pub const GOSSIP_PORT: u16 = 9747;
/// Port of every agent's transport (QUIC).
pub const TRANSPORT_PORT: u16 = 9748;
/// Number of seeds each node of a meshed run is given: the first nodes other than itself.
pub const SEEDS: usize = 3;
/// Gossip round of a meshed run: members meet within a second or two.
const GOSSIP_INTERVAL_MS: u32 = 200;
/// SIGTERM-to-SIGKILL time of a meshed run's services.
const STOP_GRACE_MS: u32 = 2000;

/// The shared secrets of a meshed run, under `<work dir>/pki` (removed with the run).
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The gossip key file: one generated key, mode 0600, named by every node's
    /// `[gossip] keys_file`.
    pub keys_file: PathBuf,
    /// The cluster CA (`ca.pem`, `ca.key`), made by `godwit ca init`.
    pub ca_dir: PathBuf,
    /// Parent of the services' cgroups, relative to the cgroup v2 root: the run's cgroup
    /// (`godwit-cluster/<run>`); node `i`'s services go under `n<i>.services` in it.
    pub services_cgroup: String,
}

impl Mesh {
    /// Generates the key file and the CA, and issues each node's certificate into its
    /// `tls/` directory, with `agent_bin`'s own `ca init` and `cert issue`.
    pub(crate) fn create(
        work_dir: &Path,
        agent_bin: &Path,
        run: &str,
        services_cgroup: String,
        nodes: &[Node],
    ) -> Result<Mesh> {
        let pki = work_dir.join("pki");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&pki)
            .with_context(|| format!("create {}", pki.display()))?;
        let keys_file = pki.join("gossip.keys");
        write_key_file(&keys_file)?;
        let ca_dir = pki.join("ca");
        let cluster = format!("godwit-cluster {run}");
        let mut cmd = Command::new(agent_bin);
        cmd.args(["ca", "init", "--dir"])
            .arg(&ca_dir)
            .args(["--cluster", &cluster]);
        output(cmd).context("create the cluster CA")?;
        for node in nodes {
            let mut cmd = Command::new(agent_bin);
            cmd.args(["cert", "issue", "--node", &node.name, "--ca-dir"])
                .arg(&ca_dir)
                .arg("--out")
                .arg(&node.tls_dir);
            output(cmd).with_context(|| format!("issue {}'s certificate", node.name))?;
        }
        Ok(Mesh {
            keys_file,
            ca_dir,
            services_cgroup,
        })
    }
}

/// What [`node_toml`] writes about one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeConfig<'a> {
    /// The run id.
    pub run: &'a str,
    /// The node.
    pub node: &'a Node,
    /// Every node, node 1 first.
    pub all: &'a [Node],
    /// The run's shared secrets; `None` for a bare run.
    pub mesh: Option<&'a Mesh>,
}

/// The text of one node's `godwit.toml`, without the tests' extra TOML (appended after it).
///
/// This is the one place where the harness decides a node's configuration: a new section for
/// every node (such as `[coordinator]`) goes in the meshed part below, where `c.node.index`
/// tells node 1 from the others.
pub fn node_toml(c: &NodeConfig<'_>) -> String {
    let node = c.node;
    let mut toml = format!(
        "# {name} of cluster run {run}, written by godwit_tests::cluster\n\
         [node]\nname = \"{name}\"\ndata_dir = \"{data}\"\n\n\
         [api]\nlisten = \"{api}\"\npublic_read_only = true\nsocket = \"{socket}\"\n\n",
        name = node.name,
        run = c.run,
        data = node.data_dir().display(),
        api = node.api,
        socket = node.socket.display(),
    );
    let Some(mesh) = c.mesh else {
        return toml;
    };
    let seeds: Vec<String> = c
        .all
        .iter()
        .filter(|n| n.index != node.index)
        .take(SEEDS)
        .map(|n| format!("\"{}\"", n.gossip))
        .collect();
    toml += &format!(
        "[gossip]\nlisten = \"{gossip}\"\nseeds = [{seeds}]\nkeys_file = \"{keys}\"\n\
         interval_ms = {GOSSIP_INTERVAL_MS}\n\n\
         [transport]\nlisten = \"{transport}\"\ntls_dir = \"{tls}\"\n\n\
         [services]\ncgroup_parent = \"{cgroup}/{name}.services\"\nstate_root = \"{state}\"\n\
         vip_interface = \"{nic}\"\nstop_grace_ms = {STOP_GRACE_MS}\n\n",
        gossip = node.gossip,
        seeds = seeds.join(", "),
        keys = mesh.keys_file.display(),
        transport = node.transport,
        tls = node.tls_dir.display(),
        cgroup = mesh.services_cgroup,
        name = node.name,
        state = node.dir.join("state").display(),
        nic = super::NODE_IF,
    );
    toml
}

/// Each node's gossip address.
pub(crate) fn gossip_addr(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((addr, GOSSIP_PORT))
}

/// Each node's transport address.
pub(crate) fn transport_addr(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((addr, TRANSPORT_PORT))
}

/// Writes one fresh key (32 bytes from the kernel's generator, as 64 hex digits) to `path`,
/// created with mode 0600 as `gossip.keys_file` demands.
fn write_key_file(path: &Path) -> Result<()> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("read /dev/urandom")?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(
        f,
        "# gossip key of this cluster run (godwit_tests::cluster)\n{hex}"
    )
    .with_context(|| format!("write {}", path.display()))
}

/// Runs `cmd` and fails with its output when it exits non-zero.
fn output(mut cmd: Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(work: &Path, i: usize) -> Node {
        let addr = Ipv4Addr::new(198, 18, 7, i as u8);
        let dir = work.join(format!("n{i}"));
        Node {
            index: i,
            name: format!("n{i}"),
            netns: format!("gw-1-0-n{i}"),
            addr,
            api: SocketAddr::from((addr, super::super::API_PORT)),
            socket: dir.join("api.sock"),
            gossip: gossip_addr(addr),
            transport: transport_addr(addr),
            tls_dir: dir.join("tls"),
            config: dir.join("godwit.toml"),
            log: dir.join("agent.log"),
            cgroup: PathBuf::from("/sys/fs/cgroup/godwit-cluster/1-0").join(format!("n{i}")),
            dir,
            child: None,
        }
    }

    /// A meshed node's configuration is one the agent accepts (the key file included), seeded
    /// with the first nodes other than itself.
    #[test]
    fn meshed_config_is_valid_and_seeds_the_first_other_nodes() {
        let work = std::env::temp_dir().join(crate::unique("godwit-cluster-config"));
        std::fs::create_dir_all(&work).unwrap();
        let keys_file = work.join("gossip.keys");
        write_key_file(&keys_file).unwrap();
        let mesh = Mesh {
            keys_file,
            ca_dir: work.join("ca"),
            services_cgroup: "godwit-cluster/1-0".into(),
        };
        let all: Vec<Node> = (1..=5).map(|i| node(&work, i)).collect();
        let toml = |i: usize| {
            node_toml(&NodeConfig {
                run: "1-0",
                node: &all[i - 1],
                all: &all,
                mesh: Some(&mesh),
            })
        };
        let seeds = |text: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix("seeds = "))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            seeds(&toml(1)),
            r#"["198.18.7.2:9747", "198.18.7.3:9747", "198.18.7.4:9747"]"#
        );
        assert_eq!(
            seeds(&toml(3)),
            r#"["198.18.7.1:9747", "198.18.7.2:9747", "198.18.7.4:9747"]"#
        );
        let text = toml(2);
        let cfg =
            godwit::config::Config::parse(&text, "n2").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.node_name(), "n2");
        assert_eq!(cfg.gossip.key_list().unwrap().len(), 1);
        assert_eq!(cfg.services.cgroup_parent, "godwit-cluster/1-0/n2.services");
        // A bare node writes only [node] and [api].
        let bare = node_toml(&NodeConfig {
            run: "1-0",
            node: &all[0],
            all: &all,
            mesh: None,
        });
        assert!(!bare.contains("[gossip]"), "{bare}");
        godwit::config::Config::parse(&bare, "n1").unwrap();
        let _ = std::fs::remove_dir_all(&work);
    }
}
