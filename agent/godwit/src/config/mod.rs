//! The agent's configuration: a TOML file whose every key has a default, validated while it is
//! parsed so that an error names the line and the field.
//!
//! The embedded default is `packaging/godwit.toml`; `godwit agent` with no `--config` runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use godwit_core::config::{Bounded, Glob, Ratio, Watts};
pub use godwit_core::policy::SiteConfig;
pub use godwit_core::predict::PredictConfig;
pub use godwit_gossip::GossipSection;
pub use godwit_probe::{EnergyConfig, ProbeConfig, ProbeMode};
pub use godwit_transport::TransportSection;

/// The default configuration file, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../../../packaging/godwit.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message carries the line, column and field, as the TOML parser reports them.
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl ConfigError {
    /// The process exit code of a configuration that cannot be used (78, `EX_CONFIG`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Read { .. } | ConfigError::Invalid { .. } => crate::daemon::exit::CONFIG,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub energy: EnergyConfig,
    #[serde(default)]
    pub site: SiteConfig,
    #[serde(default)]
    pub gossip: GossipSection,
    #[serde(default)]
    pub transport: TransportSection,
    #[serde(default)]
    pub coordinator: godwit_coord::CoordinatorSection,
    #[serde(default)]
    pub services: crate::service::ServicesSection,
    #[serde(default)]
    pub inventory: crate::inventory::InventoryConfig,
    /// Managed services (`[[service]]`).
    #[serde(default)]
    pub service: Vec<crate::service::ServiceSpec>,
    #[serde(default)]
    pub predict: PredictConfig,
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    #[serde(default)]
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse(DEFAULT_TOML, "<embedded default>").expect("embedded default config is valid")
    }
}

impl Config {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config
            .check_cross_fields()
            .map_err(|message| ConfigError::Invalid {
                origin: origin.to_string(),
                message,
            })?;
        Ok(config)
    }

    /// Reads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_TOML, "<embedded default>"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let config = Config::parse(&text, &path.display().to_string())?;
                godwit_gossip::warn_if_inline_keys_exposed(path, &config.gossip);
                Ok(config)
            }
        }
    }

    /// This node's name: `[node] name`, else the host name (`localhost` when unreadable).
    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            godwit_probe::node::read_hostname(&self.probe.proc_root)
                .unwrap_or_else(|_| "localhost".into())
        })
    }

    /// The sampler this configuration describes (`[probe]`, `[energy]`, the node's name and
    /// `[metrics] select_processes`).
    pub fn sampler(&self) -> godwit_probe::SamplerConfig {
        godwit_probe::SamplerConfig::from_sections(
            &self.probe,
            &self.energy,
            self.node.name.clone(),
            self.metrics.select_processes.clone(),
        )
    }

    /// Checks that involve more than one field (single fields are checked while parsing).
    fn check_cross_fields(&self) -> Result<(), String> {
        self.energy.validate()?;
        self.policy.validate().map_err(|e| e.to_string())?;
        crate::service::validate_all(&self.service, &self.services).map_err(|e| e.to_string())?;
        self.inventory.validate()?;
        self.gossip.validate()?;
        self.api.validate()?;
        self.coordinator.validate()?;
        if self.coordinator.enabled
            && self.coordinator.role == godwit_coord::node::Role::Witness
            && !self.service.is_empty()
        {
            return Err(format!(
                "coordinator.role = \"witness\" runs no services, but {} [[service]] tables are defined",
                self.service.len()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node name in the cluster; the host name when absent.
    pub name: Option<String>,
    /// Directory for the agent's state.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            data_dir: PathBuf::from("/var/lib/godwit"),
        }
    }
}

/// `[api]`: who may do what through the API. Changes are served only on the Unix socket, to
/// root and the members of `group`; the TCP address serves reads (`/metrics`, `/healthz`,
/// `GET /v1/*`) to anyone who reaches it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the read-only HTTP API and `/metrics`.
    pub listen: SocketAddr,
    /// Whether `listen` may be an address other hosts reach. The TCP API is read-only and
    /// unauthenticated either way; without this a non-loopback `listen` is refused.
    pub public_read_only: bool,
    /// Host names the TCP API answers to besides `localhost`, loopback addresses and the
    /// `listen` address (a browser's request under any other name is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// The Unix socket of the whole API, changes included.
    pub socket: PathBuf,
    /// The group whose members may act through the socket, besides root.
    pub group: String,
}

/// The documented default API port.
pub const DEFAULT_API_PORT: u16 = 9746;

/// The documented default API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/godwit/api.sock";

/// The documented default group of the API socket.
pub const DEFAULT_API_GROUP: &str = "godwit";

/// The longest socket path the kernel takes (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            public_read_only: false,
            allowed_hosts: Vec::new(),
            socket: PathBuf::from(DEFAULT_API_SOCKET),
            group: DEFAULT_API_GROUP.into(),
        }
    }
}

impl ApiConfig {
    /// Checks the socket path, the group's name, the host names, and that a `listen` address
    /// other hosts reach was asked for as such.
    pub fn validate(&self) -> Result<(), String> {
        let ip = self.listen.ip();
        if !ip.is_loopback() && !self.public_read_only {
            return Err(format!(
                "api.listen = \"{}\" is not a loopback address: other hosts could read this \
                 node's processes, services and plans. Keep it on 127.0.0.1, or set \
                 api.public_read_only = true to serve those reads to the network (changes are \
                 served only on api.socket either way)",
                self.listen
            ));
        }
        let socket = self.socket.as_os_str().as_encoded_bytes();
        if !self.socket.is_absolute() || socket.ends_with(b"/") || self.socket.file_name().is_none()
        {
            return Err(format!(
                "api.socket = {:?} must be an absolute path to a file",
                self.socket
            ));
        }
        if socket.len() > MAX_SOCKET_PATH || socket.contains(&0) {
            return Err(format!(
                "api.socket = {:?} is {} bytes long; a socket path has at most {MAX_SOCKET_PATH} \
                 and no NUL",
                self.socket,
                socket.len()
            ));
        }
        if !is_group_name(&self.group) {
            return Err(format!(
                "api.group = {:?} is not a group name (a letter or _ first, then letters, \
                 digits, _, - or ., at most 32)",
                self.group
            ));
        }
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            if !is_host_name(host) {
                return Err(format!(
                    "api.allowed_hosts[{i}] = {host:?} is not a host name or an IP address"
                ));
            }
        }
        Ok(())
    }
}

/// A POSIX-portable group name, as `groupadd` takes it.
fn is_group_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A DNS name (letters, digits, `-` and `.`) or an IP address (IPv6 with or without brackets).
fn is_host_name(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Per-process series for the top N by CPU and the top N by dirty rate.
    pub top_processes: Bounded<0, 1000>,
    /// Globs on comm: matching processes always get per-process series.
    pub select_processes: Vec<Glob>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            top_processes: Bounded(10),
            select_processes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_equals_struct_defaults() {
        let parsed = Config::parse(DEFAULT_TOML, "default").unwrap();
        let from_empty = Config::parse("", "empty").unwrap();
        assert_eq!(
            parsed, from_empty,
            "packaging/godwit.toml must state the code's defaults"
        );
        assert_eq!(parsed.api.listen.port(), DEFAULT_API_PORT);
        assert_eq!(parsed.probe.interval_ms.0, 1000);
    }

    #[test]
    fn errors_name_line_and_field() {
        let long_socket = format!("[api]\nsocket = \"/{}\"\n", "s".repeat(120));
        let cases: &[(&str, &[&str])] = &[
            (
                "[probe]\ninterval_ms = 5\n",
                &["line 2", "out of range", "100 to 60000"],
            ),
            (
                "[probe]\nmode = \"kprobe\"\n",
                &["line 2", "unknown variant", "kprobe"],
            ),
            ("[api]\nlisten = \"nowhere\"\n", &["line 2", "listen"]),
            (
                "[probe]\nintervl_ms = 1000\n",
                &["line 2", "unknown field", "intervl_ms"],
            ),
            (
                "[energy]\nidle_watts = -3.0\n",
                &["line 2", "expected a number >= 0"],
            ),
            (
                "[metrics]\nselect_processes = [\"a[\"]\n",
                &["line 2", "bad glob"],
            ),
            ("[bogus]\n", &["line 1", "unknown field", "bogus"]),
            (
                "[energy]\nidle_watts = 90.0\nmax_watts = 50.0\n",
                &["energy.max_watts"],
            ),
            (
                "[gossip]\nseeds = [\"198.18.0.2:9747\"]\n",
                &["gossip.keys is empty"],
            ),
            (
                "[gossip]\nkeys = [\"abc\"]\n",
                &["gossip.keys[0]", "64 hex digits"],
            ),
            (
                "[api]\nlisten = \"0.0.0.0:9746\"\n",
                &[
                    "api.listen",
                    "not a loopback address",
                    "api.public_read_only = true",
                ],
            ),
            (
                "[api]\nlisten = \"[2001:db8::1]:9746\"\n",
                &["api.listen", "not a loopback address"],
            ),
            (
                "[api]\nsocket = \"api.sock\"\n",
                &["api.socket", "absolute"],
            ),
            (
                "[api]\nsocket = \"/run/godwit/\"\n",
                &["api.socket", "absolute path to a file"],
            ),
            (&long_socket, &["api.socket", "121 bytes", "at most 107"]),
            ("[api]\ngroup = \"wheel group\"\n", &["api.group"]),
            ("[api]\ngroup = \"\"\n", &["api.group"]),
            (
                "[api]\nallowed_hosts = [\"edge-01\", \"evil.com/x\"]\n",
                &["api.allowed_hosts[1]"],
            ),
            (
                "[api]\npublic_readonly = true\n",
                &["unknown field", "public_readonly"],
            ),
        ];
        for (text, needles) in cases {
            let err = Config::parse(text, "test.toml").unwrap_err().to_string();
            for needle in *needles {
                assert!(
                    err.contains(needle),
                    "error for {text:?} lacks {needle:?}: {err}"
                );
            }
        }
    }

    #[test]
    fn a_public_listen_address_is_accepted_only_as_read_only() {
        let c = Config::parse(
            "[api]\nlisten = \"0.0.0.0:9746\"\npublic_read_only = true\n\
             allowed_hosts = [\"edge-01.example\", \"[fd00::1]\", \"198.18.0.7\"]\n",
            "t",
        )
        .unwrap();
        assert!(c.api.public_read_only);
        for loopback in ["127.0.0.1:9746", "127.0.0.9:1", "[::1]:9746"] {
            let text = format!("[api]\nlisten = \"{loopback}\"\n");
            assert!(Config::parse(&text, "t").is_ok(), "{loopback}");
        }
        let d = Config::default();
        assert_eq!(d.api.socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(d.api.group, DEFAULT_API_GROUP);
        assert!(!d.api.public_read_only);
    }

    #[test]
    fn globs_match_comm() {
        let c = Config::parse("[metrics]\nselect_processes = [\"redis-*\"]\n", "t").unwrap();
        assert!(c.metrics.select_processes[0].is_match("redis-server"));
        assert!(!c.metrics.select_processes[0].is_match("postgres"));
    }
}
