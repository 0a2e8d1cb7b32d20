//! The agent's configuration: a TOML file whose every key has a default, validated while it is
//! parsed so that an error names the line and the field.
//!
//! The embedded default is `packaging/godwit.toml`; `godwit agent` with no `--config` runs it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// The default configuration file, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../../packaging/godwit.toml");

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
                Config::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Checks that involve more than one field (single fields are checked while parsing).
    fn check_cross_fields(&self) -> Result<(), String> {
        if self.energy.max_watts.0 < self.energy.idle_watts.0 {
            return Err(format!(
                "energy.max_watts ({}) is below energy.idle_watts ({})",
                self.energy.max_watts.0, self.energy.idle_watts.0
            ));
        }
        self.policy.validate().map_err(|e| e.to_string())?;
        crate::service::validate_all(&self.service, &self.services).map_err(|e| e.to_string())?;
        self.inventory.validate()?;
        let g = &self.gossip;
        if g.enabled && !g.seeds.is_empty() && g.keys.is_empty() && !g.insecure {
            return Err("gossip.seeds are set but gossip.keys is empty: a cluster needs a key \
                        (64 hex digits, e.g. from `openssl rand -hex 32`), or gossip.insecure = true"
                .into());
        }
        for (i, k) in g.keys.iter().enumerate() {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("gossip.keys[{i}] must be 64 hex digits (32 bytes)"));
            }
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the HTTP API and `/metrics`.
    pub listen: SocketAddr,
}

/// The documented default API port.
pub const DEFAULT_API_PORT: u16 = 9746;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
        }
    }
}

/// Which source the probe uses.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// BPF when it loads, procfs/cgroupfs otherwise.
    #[default]
    Auto,
    /// BPF or nothing: the agent exits if the programs cannot load.
    Ebpf,
    /// procfs/cgroupfs only.
    Procfs,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeConfig {
    pub mode: ProbeMode,
    /// Sampling interval.
    pub interval_ms: Bounded<100, 60_000>,
    /// How long ended entities are remembered.
    pub grace_ms: Bounded<0, 3_600_000>,
    /// Collect per-program BPF run time.
    pub bpf_stats: bool,
    /// Root of procfs (tests point it elsewhere).
    pub proc_root: PathBuf,
    /// Root of sysfs.
    pub sys_root: PathBuf,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            mode: ProbeMode::Auto,
            interval_ms: Bounded(1000),
            grace_ms: Bounded(10_000),
            bpf_stats: true,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

impl ProbeConfig {
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interval_ms.0)
    }
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.grace_ms.0)
    }
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EnergyConfig {
    /// Modelled power at 0% CPU.
    pub idle_watts: Watts,
    /// Modelled power at 100% CPU.
    pub max_watts: Watts,
    /// Where RAPL counters are looked for.
    pub powercap_root: PathBuf,
}

impl Default for EnergyConfig {
    fn default() -> Self {
        EnergyConfig {
            idle_watts: Watts(40.0),
            max_watts: Watts(120.0),
            powercap_root: PathBuf::from("/sys/class/powercap"),
        }
    }
}

/// The site (data centre) this node belongs to, as the policy sees it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Site name; nodes with the same name form a site.
    pub name: String,
    /// The site's power budget in watts: `e_s` = mean site power / budget. 0 means this
    /// node's `energy.max_watts` (a one-node site).
    pub power_budget_watts: Watts,
    /// Security-risk level set by the operator, 0 (none) to 1 (highest). It lowers the
    /// switching threshold; `PUT /v1/risk` changes it at run time.
    pub risk: Ratio,
}

impl Default for SiteConfig {
    fn default() -> Self {
        SiteConfig {
            name: "default".into(),
            power_budget_watts: Watts(0.0),
            risk: Ratio(0.0),
        }
    }
}

/// The masterless mesh: chitchat gossip, sealed with a cluster key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GossipSection {
    /// Run the gossip member at all.
    pub enabled: bool,
    /// UDP address to gossip on. Peers must reach it; the default suits a lone node.
    pub listen: SocketAddr,
    /// Address peers should use when it differs from `listen` (NAT, 0.0.0.0 binds).
    pub advertise: Option<SocketAddr>,
    /// Seeds to join through, `host:port`.
    pub seeds: Vec<String>,
    /// Name of the cluster; members of other clusters are refused.
    pub cluster_id: String,
    /// Cluster keys, 32 bytes as 64 hex digits. The first seals what this node sends; every
    /// listed key is accepted. SIGHUP (`systemctl reload godwit`) applies a changed list at
    /// once, so a rotation needs no restart: (1) add the new key second on every node and
    /// reload; (2) move it first on every node and reload; (3) remove the old key on every
    /// node and reload. Finish each step on all nodes before starting the next.
    pub keys: Vec<String>,
    /// Gossip in clear text. Refused with seeds unless set explicitly.
    pub insecure: bool,
    /// Time between gossip rounds (and chitchat's `initial_interval`).
    pub interval_ms: Bounded<10, 60_000>,
    /// Mean heartbeat intervals without news after which a node is dead.
    pub phi_threshold: Bounded<1, 100>,
    /// How long a dead node stays listed as dead before it is forgotten.
    pub dead_node_grace_ms: Bounded<100, 86_400_000>,
}

impl Default for GossipSection {
    fn default() -> Self {
        GossipSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9747)),
            advertise: None,
            seeds: Vec::new(),
            cluster_id: "godwit".into(),
            keys: Vec::new(),
            insecure: false,
            interval_ms: Bounded(250),
            phi_threshold: Bounded(8),
            dead_node_grace_ms: Bounded(600_000),
        }
    }
}

/// The agent-to-agent QUIC endpoint (mutual TLS under the cluster CA), used by migrations.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    /// Run the endpoint. It also needs this node's certificate in `tls_dir`; without one the
    /// agent says so once and runs without it.
    pub enabled: bool,
    /// UDP address of the endpoint.
    pub listen: SocketAddr,
    /// Address peers should use when it differs from `listen`.
    pub advertise: Option<SocketAddr>,
    /// Directory with `ca.pem`, `<node>.pem` and `<node>.key` (`godwit cert issue`).
    pub tls_dir: PathBuf,
}

impl Default for TransportSection {
    fn default() -> Self {
        TransportSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9748)),
            advertise: None,
            tls_dir: PathBuf::from("/etc/godwit/tls"),
        }
    }
}

/// A number in `[0, 1]`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v}: expected a number from 0 to 1"
            )));
        }
        Ok(Ratio(v))
    }
}

/// Load forecasts of the node and its containers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    /// Samples of history kept per series and used for fitting.
    pub window: Bounded<30, 100_000>,
    /// Refit the model every N new samples (between refits the state is updated cheaply).
    pub refit_every: Bounded<1, 100_000>,
    /// Forecast horizon in samples.
    pub horizon: Bounded<1, 3600>,
    /// Level of the prediction intervals, in percent.
    pub level_percent: Bounded<50, 99>,
    /// Largest AR and MA orders tried when choosing the model.
    pub max_p: Bounded<0, 8>,
    pub max_q: Bounded<0, 8>,
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            window: Bounded(600),
            refit_every: Bounded(60),
            horizon: Bounded(60),
            level_percent: Bounded(80),
            max_p: Bounded(3),
            max_q: Bounded(2),
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

/// An integer checked against `[MIN, MAX]` while parsing, so the error points at its line.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if !(MIN..=MAX).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v} is out of range: expected {MIN} to {MAX}"
            )));
        }
        Ok(Bounded(v))
    }
}

/// Power in watts: finite and not negative.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Watts(pub f64);

impl<'de> Deserialize<'de> for Watts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "{v} watts: expected a number >= 0"
            )));
        }
        Ok(Watts(v))
    }
}

/// A shell-style glob (`*`, `?`, `[...]`), compiled while parsing.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "String")]
pub struct Glob {
    text: String,
    #[serde(skip)]
    matcher: globset::GlobMatcher,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let glob = globset::Glob::new(text).map_err(|e| format!("bad glob {text:?}: {e}"))?;
        Ok(Glob {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.text
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Glob::new(&text).map_err(serde::de::Error::custom)
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
    fn globs_match_comm() {
        let c = Config::parse("[metrics]\nselect_processes = [\"redis-*\"]\n", "t").unwrap();
        assert!(c.metrics.select_processes[0].is_match("redis-server"));
        assert!(!c.metrics.select_processes[0].is_match("postgres"));
    }
}
