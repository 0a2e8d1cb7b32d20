//! Configuration of a gossip node: identity, seeds, failure detection, sealing, summary budget.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use godwit_core::config::Bounded;
use serde::{Deserialize, Serialize};

use super::error::GossipError;
use super::seal::Keyring;

/// Default gossip interval: 250 ms.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);
/// Default phi threshold of the accrual failure detector.
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// Default time a dead node's state is kept before it is garbage collected.
pub const DEFAULT_DEAD_NODE_GRACE: Duration = Duration::from_secs(600);
/// Default byte budget of one node's published summary.
pub const DEFAULT_SUMMARY_BUDGET: usize = 4096;
/// Default tolerance between a sender's clock and ours for sealed packets.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Failure detection settings (chitchat's phi-accrual detector, tuned).
///
/// chitchat 0.13's "phi" is `elapsed since the last heartbeat / smoothed mean interval between
/// heartbeats`, so a node is declared dead after about `phi_threshold` mean intervals without news.
/// Heartbeats reach a node at least once per gossip interval on a healthy LAN, so detection
/// takes at most about [`FailureDetection::detection_bound`]:
/// `(phi_threshold + 2) * gossip_interval` (the two extra intervals are chitchat's liveness
/// update, done once per gossip round, and this module's view refresh).
///
/// The defaults (250 ms, phi 8) give 2.5 s, inside the 3 s LAN target. At 10% packet loss a
/// false death needs eight consecutive mean intervals without a single heartbeat from any
/// peer (each node hears a peer's heartbeat through every peer that gossips with it), which is
/// vanishingly rare.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureDetection {
    /// Time between gossip rounds; also chitchat's `initial_interval` (the prior mean
    /// heartbeat interval before samples exist), so early detection is not slow.
    pub gossip_interval: Duration,
    /// Number of mean heartbeat intervals without news after which a node is dead.
    pub phi_threshold: f64,
    /// How long a dead node's state is kept (reported as dead) before it is forgotten.
    /// Chitchat stops gossiping about it after half of this.
    pub dead_node_grace: Duration,
}

impl Default for FailureDetection {
    fn default() -> Self {
        FailureDetection {
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            dead_node_grace: DEFAULT_DEAD_NODE_GRACE,
        }
    }
}

impl FailureDetection {
    /// The time within which a stopped node is reported dead on a healthy network.
    pub fn detection_bound(&self) -> Duration {
        self.gossip_interval.mul_f64(self.phi_threshold + 2.0)
    }

    pub(crate) fn to_chitchat(&self) -> chitchat::FailureDetectorConfig {
        chitchat::FailureDetectorConfig {
            phi_threshold: self.phi_threshold,
            // 100 intervals: 25 s of history at the default interval, enough for a stable
            // mean and spread, and a tenth of chitchat's default, which preallocates 8 KB per
            // peer (8 MB in every agent at 1,000 members) for history older than any network
            // condition worth remembering.
            sampling_window_size: 100,
            // Intervals longer than this are not sampled (e.g. a node paused by SIGSTOP):
            // they would inflate the mean and slow later detection.
            max_interval: (self.gossip_interval * 40).max(Duration::from_secs(2)),
            initial_interval: self.gossip_interval,
            dead_node_grace_period: self.dead_node_grace,
        }
    }

    fn validate(&self) -> Result<(), GossipError> {
        if self.gossip_interval < Duration::from_millis(10) {
            return Err(GossipError::InvalidConfig(
                "gossip interval must be at least 10 ms".into(),
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold >= 1.0) {
            return Err(GossipError::InvalidConfig(
                "phi threshold must be a finite number of at least 1".into(),
            ));
        }
        if self.dead_node_grace < self.gossip_interval * 4 {
            return Err(GossipError::InvalidConfig(
                "dead node grace must be at least four gossip intervals".into(),
            ));
        }
        Ok(())
    }
}

/// How gossip datagrams are protected.
#[derive(Debug, Clone, Default)]
pub enum Security {
    /// No key configured: allowed only for a lone node (no seeds). Such a node seals with an
    /// ephemeral random key, so it accepts no peer at all.
    #[default]
    None,
    /// Seal every datagram with the keyring's primary key; accept any installed key.
    Sealed(Keyring),
    /// Gossip in clear text (`insecure = true`): for labs only.
    Insecure,
}

/// Everything needed to start a gossip node.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// This node's identity, unique in the cluster and stable across restarts.
    pub node_id: String,
    /// Incarnation number; `None` draws a new one from the clock (strictly increasing within a
    /// process). Must grow on every start, so that peers drop the old incarnation's state.
    pub generation: Option<u64>,
    /// Name of the cluster; nodes of another cluster are refused.
    pub cluster_id: String,
    /// UDP address to bind (port 0 picks a free port).
    pub listen_addr: SocketAddr,
    /// Address peers should use; `None` means the bound address.
    pub advertise_addr: Option<SocketAddr>,
    /// Seeds to join through: `ip:port` or `host:port` (resolved again every minute).
    pub seeds: Vec<String>,
    /// Failure detection.
    pub failure_detection: FailureDetection,
    /// Sealing.
    pub security: Security,
    /// Byte budget for this node's published summary.
    pub summary_budget: usize,
    /// Largest accepted difference between a sealed packet's timestamp and our clock; bounds
    /// how long replay state is kept. `None` disables the timestamp check (replays are then
    /// refused only while the sender's session is remembered).
    pub max_clock_skew: Option<Duration>,
}

impl GossipConfig {
    /// A config with defaults for everything but identity and address.
    pub fn new(node_id: impl Into<String>, listen_addr: SocketAddr) -> GossipConfig {
        GossipConfig {
            node_id: node_id.into(),
            generation: None,
            cluster_id: "godwit".to_string(),
            listen_addr,
            advertise_addr: None,
            seeds: Vec::new(),
            failure_detection: FailureDetection::default(),
            security: Security::None,
            summary_budget: DEFAULT_SUMMARY_BUDGET,
            max_clock_skew: Some(DEFAULT_MAX_CLOCK_SKEW),
        }
    }

    /// Checks the config on its own, before anything is bound.
    pub fn validate(&self) -> Result<(), GossipError> {
        if self.node_id.is_empty() {
            return Err(GossipError::InvalidConfig(
                "node id must not be empty".into(),
            ));
        }
        if self.cluster_id.is_empty() {
            return Err(GossipError::InvalidConfig(
                "cluster id must not be empty".into(),
            ));
        }
        if self.summary_budget < 512 {
            return Err(GossipError::InvalidConfig(
                "summary budget must be at least 512 bytes".into(),
            ));
        }
        self.failure_detection.validate()?;
        if !self.seeds.is_empty() && matches!(self.security, Security::None) {
            return Err(GossipError::KeyRequired);
        }
        Ok(())
    }
}

static LAST_GENERATION: AtomicU64 = AtomicU64::new(0);

/// A new generation: microseconds since the Unix epoch, strictly greater than any generation
/// drawn before in this process (two starts in the same microsecond still differ).
pub fn next_generation() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST_GENERATION.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST_GENERATION.compare_exchange_weak(
            last,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(seen) => last = seen,
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
    /// A file holding the cluster keys instead of `keys`: one key (64 hex digits) a line, the
    /// first sealing, blank lines and `#` comments allowed. It must be owned by root or the
    /// agent's user and give no access to group or others (mode 0600 or 0400), else the
    /// configuration is refused. Re-read on SIGHUP, like `keys`.
    pub keys_file: Option<PathBuf>,
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
            keys_file: None,
            insecure: false,
            interval_ms: Bounded(250),
            phi_threshold: Bounded(8),
            dead_node_grace_ms: Bounded(600_000),
        }
    }
}

impl GossipSection {
    /// Checks across fields (single fields are checked while parsing).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(path) = &self.keys_file {
            if !self.keys.is_empty() {
                return Err("gossip.keys and gossip.keys_file are both set: keep one".into());
            }
            read_keys_file(path)?;
        }
        if self.enabled
            && !self.seeds.is_empty()
            && self.keys.is_empty()
            && self.keys_file.is_none()
            && !self.insecure
        {
            return Err("gossip.seeds are set but gossip.keys is empty: a cluster needs a key \
                        (64 hex digits, e.g. from `openssl rand -hex 32`), or gossip.insecure = true"
                .into());
        }
        for (i, k) in self.keys.iter().enumerate() {
            if !is_hex_key(k) {
                return Err(format!("gossip.keys[{i}] must be 64 hex digits (32 bytes)"));
            }
        }
        Ok(())
    }

    /// The configured keys, as hex: `keys`, or the lines of `keys_file` (read and checked now).
    pub fn key_list(&self) -> Result<Vec<String>, String> {
        match &self.keys_file {
            Some(path) => read_keys_file(path),
            None => Ok(self.keys.clone()),
        }
    }
}

fn is_hex_key(k: &str) -> bool {
    k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a keys file: owned by root or this process's user, no access for group or others,
/// one key a line (blank lines and `#` comments skipped), at least one key.
pub(crate) fn read_keys_file(path: &Path) -> Result<Vec<String>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("gossip.keys_file {shown}: {e}"))?;
    // Checked on the open file, so what is read is what was checked.
    let meta = file
        .metadata()
        .map_err(|e| format!("gossip.keys_file {shown}: {e}"))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "gossip.keys_file {shown} has mode {mode:04o}: group or others may access it; \
             make it readable by its owner only (chmod 600 {shown})"
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "gossip.keys_file {shown} is owned by uid {}, not by root or the agent's user \
             (uid {me})",
            meta.uid()
        ));
    }
    let mut text = String::new();
    file.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("gossip.keys_file {shown}: {e}"))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !is_hex_key(line) {
            return Err(format!(
                "gossip.keys_file {shown} line {}: a key is 64 hex digits (32 bytes)",
                i + 1
            ));
        }
        keys.push(line.to_string());
    }
    if keys.is_empty() {
        return Err(format!("gossip.keys_file {shown} holds no key"));
    }
    Ok(keys)
}

/// Warns when `gossip.keys` are written inline in a configuration file that group or others
/// may read (`gossip.keys_file` is the place for keys then).
pub fn warn_if_inline_keys_exposed(config_file: &Path, section: &GossipSection) {
    use std::os::unix::fs::MetadataExt as _;
    if section.keys.is_empty() {
        return;
    }
    if let Ok(meta) = std::fs::metadata(config_file) {
        if meta.mode() & 0o044 != 0 {
            tracing::warn!(
                file = %config_file.display(),
                mode = format!("{:04o}", meta.mode() & 0o7777),
                "gossip.keys are inline in a configuration file group or others can read: \
                 move them to gossip.keys_file (mode 0600) or chmod 600 the file"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_detection_bound_is_within_three_seconds() {
        let fd = FailureDetection::default();
        assert!(fd.detection_bound() <= Duration::from_secs(3));
        assert_eq!(fd.to_chitchat().initial_interval, fd.gossip_interval);
    }

    #[test]
    fn seeds_without_key_are_refused_unless_insecure() {
        let mut config = GossipConfig::new("a", "127.0.0.1:0".parse().unwrap());
        assert!(config.validate().is_ok(), "a lone node needs no key");
        config.seeds = vec!["127.0.0.1:7000".into()];
        assert!(matches!(config.validate(), Err(GossipError::KeyRequired)));
        config.security = Security::Insecure;
        assert!(config.validate().is_ok());
    }

    fn keys_file(mode: u32, text: &str) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gossip.keys");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn keys_file_is_read_and_refused_when_others_can_read_it() {
        let key = "ab".repeat(32);
        let text = format!("# cluster keys\n\n{key}\n{}\n", "cd".repeat(32));
        let section = |path: &Path| GossipSection {
            seeds: vec!["127.0.0.1:7000".into()],
            keys_file: Some(path.to_path_buf()),
            ..GossipSection::default()
        };
        let (_dir, good) = keys_file(0o600, &text);
        let g = section(&good);
        g.validate().unwrap();
        assert_eq!(g.key_list().unwrap(), vec![key.clone(), "cd".repeat(32)]);
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let (_dir, bad) = keys_file(mode, &text);
            let err = section(&bad).validate().unwrap_err();
            assert!(
                err.contains("group or others") && err.contains("chmod 600"),
                "{err}"
            );
        }
        let (_dir, bad) = keys_file(0o600, "not a key\n");
        assert!(section(&bad).validate().unwrap_err().contains("line 1"));
        let (_dir, empty) = keys_file(0o600, "# none\n");
        assert!(section(&empty).validate().unwrap_err().contains("no key"));
        let both = GossipSection {
            keys: vec![key],
            ..section(&good)
        };
        assert!(both.validate().unwrap_err().contains("both set"));
    }

    #[test]
    fn generations_strictly_increase() {
        let a = next_generation();
        let b = next_generation();
        assert!(b > a);
    }
}
