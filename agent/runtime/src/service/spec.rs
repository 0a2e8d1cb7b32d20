//! What a managed service is: its spec (config `[[service]]` or `POST /v1/services`) and the
//! `[services]` settings of the runtime.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ServiceError;
use super::identity::{capability, parse_id, resolve_group, valid_name, Identity};

/// The runtime's settings (`[services]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesSection {
    /// Parent of the services' cgroups, under the cgroup v2 root (the unified hierarchy on
    /// hybrid hosts). Each service runs in `<parent>/<name>.service`.
    pub cgroup_parent: String,
    /// Where services keep their state: `<state_root>/<name>/`. State paths must lie there.
    pub state_root: PathBuf,
    /// Time between SIGTERM and SIGKILL when a service is stopped.
    pub stop_grace_ms: u64,
    /// Interface that carries virtual IPs; the first interface that is up (not loopback)
    /// when absent.
    pub vip_interface: Option<String>,
    /// The largest state a migration may bring into this node for one service, bytes (the
    /// sum of its files' sizes): a peer's larger listing is refused before anything is
    /// allocated for it.
    pub max_state_bytes: u64,
    /// The user a service runs as when its spec names none: an unprivileged system user,
    /// created at the agent's start when it does not exist. Services without a `user` do not
    /// start when it cannot be had (they never fall back to root).
    pub default_user: String,
    /// The CPU this node gives its managed services, in cores (`cpu.max` of the services'
    /// parent cgroup). The node's load is then its services' share of it, not the host's CPU.
    /// 0: no limit, and the node's load is the host's.
    pub cpu_cores: f64,
}

/// `[services] max_state_bytes` unless configured: 32 GiB.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 32 << 30;

impl Default for ServicesSection {
    fn default() -> Self {
        ServicesSection {
            cgroup_parent: "godwit.slice".into(),
            state_root: PathBuf::from("/var/lib/godwit/state"),
            stop_grace_ms: 10_000,
            vip_interface: None,
            max_state_bytes: DEFAULT_MAX_STATE_BYTES,
            default_user: "godwit-svc".into(),
            cpu_cores: 0.0,
        }
    }
}

/// A health check: exactly one of `tcp`, `http` or `command`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Healthy when a TCP connection to this address opens (and, with `expect`, answers).
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// With `tcp`: sent once the connection opens (e.g. `"PING\r\n"` for redis).
    #[serde(default)]
    pub send: Option<String>,
    /// With `tcp`: healthy only when the reply starts with this (e.g. `"+PONG"`: a redis still
    /// loading its data answers `-LOADING`, and is not healthy yet).
    #[serde(default)]
    pub expect: Option<String>,
    /// Healthy when `GET http://<this>` answers 2xx (`host:port/path`).
    #[serde(default)]
    pub http: Option<String>,
    /// Healthy when this command exits 0.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Time between checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time a check may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that make a healthy service unhealthy.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Time from a start to the first passing check: a service still not healthy after it is
    /// unhealthy.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// Time a service may stay unhealthy (checks still failing) before it is restarted, as if
    /// it had crashed: the same back-off and crash-loop limit. 0 never restarts it for its
    /// health; nor does the restart policy `never`.
    #[serde(default = "default_unhealthy_restart_ms")]
    pub unhealthy_restart_ms: u64,
    /// After a migration: how long the target's instance must stay healthy (the same
    /// process, at least three checks in a row passing) before its VIP is announced and the
    /// source's frozen instance is killed; until then the move can still be given back. A
    /// service whose port opens before it is ready, or that can still fail on a lock after
    /// it listens, wants a longer window and a check that speaks its protocol (`send` and
    /// `expect`).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_start_timeout_ms() -> u64 {
    60_000
}
fn default_unhealthy_restart_ms() -> u64 {
    30_000
}
fn default_settle_ms() -> u64 {
    20
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_failures() -> u32 {
    3
}

/// When a service that exited is started again.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// After any exit that was not asked for.
    #[default]
    Always,
    /// After an exit with a non-zero status or a signal.
    OnFailure,
    /// Never.
    Never,
}

/// Restarts with exponential back-off, and the crash-loop limit.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestartSpec {
    /// When to restart.
    pub policy: RestartPolicy,
    /// First delay; each restart within the window doubles it.
    pub backoff_ms: u64,
    /// Largest delay.
    pub backoff_max_ms: u64,
    /// More restarts than this within `window_s` is a crash loop: the service is failed.
    pub max_restarts: u32,
    /// The crash-loop window.
    pub window_s: u64,
}

impl Default for RestartSpec {
    fn default() -> Self {
        RestartSpec {
            policy: RestartPolicy::Always,
            backoff_ms: 200,
            backoff_max_ms: 10_000,
            max_restarts: 5,
            window_s: 60,
        }
    }
}

impl RestartSpec {
    /// The delay before restart number `n` (0 for the first) within the window.
    pub fn delay_ms(&self, n: u32) -> u64 {
        self.backoff_ms
            .saturating_mul(1u64 << n.min(30))
            .min(self.backoff_max_ms)
    }
}

/// What a service needs of a node, for placement.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Demand {
    /// CPU cores.
    pub cpu: f64,
    /// Memory, bytes.
    pub memory_bytes: u64,
}

/// A managed service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name: 1 to 63 of `a-z`, `0-9`, `-`, `_`.
    pub name: String,
    /// The program and its files: a directory or a `.tar`/`.tar.gz`, identified by its content
    /// hash. Without one the command runs from `/` (host binaries).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Content hash of an image already in this node's image store (what a migration sends
    /// instead of `image`, whose path means nothing on another node).
    #[serde(default)]
    pub image_id: Option<String>,
    /// Program and arguments. A relative path (`bin/server`) is in the image; a bare name
    /// (`server`) is looked up in the image directory first, then on `PATH`; `{state}` and
    /// `{image}` are replaced by the service's state and image directories.
    pub command: Vec<String>,
    /// Environment (besides `GODWIT_SERVICE`, `GODWIT_STATE_DIR`, `GODWIT_IMAGE_DIR`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The service's state: paths in its state directory (relative, or absolute under it).
    #[serde(default)]
    pub state: Vec<PathBuf>,
    /// Health check.
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// Resource demand, for placement.
    #[serde(default)]
    pub demand: Demand,
    /// Restarts.
    #[serde(default)]
    pub restart: RestartSpec,
    /// Virtual IP: added on the node while the service is healthy, removed when it stops.
    #[serde(default)]
    pub vip: Option<IpAddr>,
    /// Start with the agent.
    #[serde(default = "yes")]
    pub autostart: bool,
    /// The user its processes (and its health command) run as: a name or a numeric uid.
    /// `[services] default_user` when absent; `root` only when written here.
    #[serde(default)]
    pub user: Option<String>,
    /// Their group: a name or a numeric gid; the user's primary group when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Capabilities kept (e.g. `["CAP_NET_BIND_SERVICE"]`); every other one is dropped,
    /// for root too.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The processes' file mode creation mask, in octal (`"0027"` when absent).
    #[serde(default)]
    pub umask: Option<String>,
    /// Keep setuid, setgid and sticky bits on state files that arrive from a peer (they are
    /// cleared otherwise).
    #[serde(default)]
    pub allow_setuid: bool,
    /// What the coordinator does when the service's node is lost: `restart` (start it from its
    /// image on another node; its state there starts from whatever copy that node holds, often
    /// none) or `none` (it stays down until an operator acts).
    #[serde(default)]
    pub ha: HaPolicy,
}

/// The umask of a service that sets none.
/// A service's failover class (`ha = ...`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HaPolicy {
    /// Restarted on another node when its node is fenced.
    #[default]
    Restart,
    /// Stays down until an operator acts.
    None,
}

pub const DEFAULT_UMASK: u32 = 0o027;

fn yes() -> bool {
    true
}

impl ServiceSpec {
    /// The service's state directory.
    pub fn state_dir(&self, section: &ServicesSection) -> PathBuf {
        section.state_root.join(&self.name)
    }

    /// The state paths relative to the state directory.
    pub fn state_relative(&self, section: &ServicesSection) -> Vec<String> {
        let dir = self.state_dir(section);
        self.state
            .iter()
            .filter_map(|p| {
                let rel = if p.is_absolute() {
                    p.strip_prefix(&dir).ok()?.to_path_buf()
                } else {
                    p.clone()
                };
                Some(rel.to_string_lossy().into_owned())
            })
            .collect()
    }

    /// Checks the spec on its own: every error names the field.
    pub fn validate(&self, section: &ServicesSection) -> Result<(), ServiceError> {
        let bad = |field: &str, why: String| ServiceError::Spec {
            service: self.name.clone(),
            field: field.to_string(),
            reason: why,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(bad(
                "name",
                format!("{:?}: use 1 to 63 of a-z, 0-9, '-' and '_'", self.name),
            ));
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(bad("command", "must name a program".into()));
        }
        if let Some(id) = &self.image_id {
            if self.image.is_some() {
                return Err(bad("image_id", "set image or image_id, not both".into()));
            }
            if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("image_id", format!("{id:?} is not a SHA-256 digest")));
            }
        }
        if let Some(image) = &self.image {
            if !image.exists() {
                return Err(bad("image", format!("{} does not exist", image.display())));
            }
            let is_tar = image.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
            });
            if !image.is_dir() && !is_tar {
                return Err(bad(
                    "image",
                    format!("{}: a directory or a .tar/.tar.gz", image.display()),
                ));
            }
        }
        let dir = self.state_dir(section);
        for p in &self.state {
            let inside = if p.is_absolute() {
                p.strip_prefix(&dir)
                    .is_ok_and(|r| normal(r) && !r.as_os_str().is_empty())
            } else {
                normal(p) && !p.as_os_str().is_empty()
            };
            if !inside {
                return Err(bad(
                    "state",
                    format!(
                        "{} is outside the allowed root {} (state lives in the service's \
                         state directory)",
                        p.display(),
                        dir.display()
                    ),
                ));
            }
        }
        if let Some(h) = &self.health {
            let kinds = [h.tcp.is_some(), h.http.is_some(), h.command.is_some()]
                .iter()
                .filter(|&&k| k)
                .count();
            if kinds != 1 {
                return Err(bad(
                    "health",
                    "set exactly one of tcp, http or command".into(),
                ));
            }
            if h.tcp.is_none() && (h.send.is_some() || h.expect.is_some()) {
                return Err(bad("health", "send and expect go with tcp".into()));
            }
            if h.expect.as_ref().is_some_and(String::is_empty) {
                return Err(bad("health.expect", "must not be empty".into()));
            }
            if h.command.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(bad("health.command", "must name a program".into()));
            }
            if h.start_timeout_ms == 0 {
                return Err(bad(
                    "health.start_timeout_ms",
                    "must be at least 1 (the time a start may take to pass its first check)".into(),
                ));
            }
            if h.interval_ms < 50 || h.timeout_ms == 0 || h.failures == 0 {
                return Err(bad(
                    "health",
                    "interval_ms must be at least 50, timeout_ms and failures at least 1".into(),
                ));
            }
        }
        let r = &self.restart;
        if r.backoff_ms == 0 || r.backoff_max_ms < r.backoff_ms || r.window_s == 0 {
            return Err(bad(
                "restart",
                "backoff_ms > 0, backoff_max_ms >= backoff_ms and window_s > 0".into(),
            ));
        }
        if !(self.demand.cpu.is_finite() && self.demand.cpu >= 0.0) {
            return Err(bad("demand.cpu", "a number of cores, 0 or more".into()));
        }
        if let Some(vip) = self.vip {
            if vip.is_loopback() || vip.is_unspecified() || vip.is_multicast() {
                return Err(bad("vip", format!("{vip} cannot be a service address")));
            }
        }
        for (field, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(v) = value {
                if parse_id(v).is_none() && !valid_name(v) {
                    return Err(bad(
                        field,
                        format!("{v:?}: a name (a-z, 0-9, '_', '-') or a numeric id"),
                    ));
                }
            }
        }
        if let Some(user) = &self.user {
            Identity::resolve(user, self.group.as_deref()).map_err(|e| {
                bad(
                    if e.starts_with("group") {
                        "group"
                    } else {
                        "user"
                    },
                    e,
                )
            })?;
        } else if let Some(group) = &self.group {
            resolve_group(group).map_err(|e| bad("group", e))?;
        }
        self.capability_set().map_err(|e| bad("capabilities", e))?;
        self.umask_bits().map_err(|e| bad("umask", e))?;
        Ok(())
    }

    /// The capabilities kept, one bit per number.
    pub fn capability_set(&self) -> Result<u64, String> {
        let mut set = 0u64;
        for name in &self.capabilities {
            let n = capability(name).ok_or_else(|| format!("{name:?} is not a capability"))?;
            if set & (1 << n) != 0 {
                return Err(format!("{name} is listed twice"));
            }
            set |= 1 << n;
        }
        Ok(set)
    }

    /// The umask.
    pub fn umask_bits(&self) -> Result<u32, String> {
        match &self.umask {
            None => Ok(DEFAULT_UMASK),
            Some(s) => u32::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8)
                .ok()
                .filter(|&m| m <= 0o777 && !s.is_empty())
                .ok_or_else(|| format!("{s:?}: an octal mask such as \"0027\"")),
        }
    }
}

/// Relative, without `..` or `.` components.
fn normal(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Checks a list of specs: each valid, names unique.
pub fn validate_all(specs: &[ServiceSpec], section: &ServicesSection) -> Result<(), ServiceError> {
    if !(section.cpu_cores.is_finite() && (section.cpu_cores == 0.0 || section.cpu_cores >= 0.01)) {
        return Err(ServiceError::Spec {
            service: "[services]".into(),
            field: "cpu_cores".into(),
            reason: format!(
                "{} must be 0 (the host's CPU) or at least 0.01 cores",
                section.cpu_cores
            ),
        });
    }
    if !valid_name(&section.default_user) {
        return Err(ServiceError::Spec {
            service: "[services]".into(),
            field: "default_user".into(),
            reason: format!("{:?} is not a valid user name", section.default_user),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in specs {
        s.validate(section)?;
        if !seen.insert(s.name.as_str()) {
            return Err(ServiceError::Duplicate(s.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> ServiceSpec {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn good_specs_pass_and_bad_ones_name_their_field() {
        let s = ServicesSection::default();
        let ok = spec(
            "name = \"kv\"\ncommand = [\"/bin/sleep\", \"1\"]\nstate = [\"data\", \"/var/lib/godwit/state/kv/wal\"]\n\
             health = { tcp = \"127.0.0.1:7379\" }\n",
        );
        assert!(ok.validate(&s).is_ok());
        assert_eq!(ok.state_relative(&s), vec!["data", "wal"]);
        let cases = [
            ("name = \"Bad Name\"\ncommand = [\"x\"]", "name"),
            ("name = \"a\"\ncommand = []", "command"),
            ("name = \"a\"\ncommand = [\"x\"]\nimage = \"/nonexistent/image\"", "image"),
            ("name = \"a\"\ncommand = [\"x\"]\nstate = [\"/etc/passwd\"]", "state"),
            ("name = \"a\"\ncommand = [\"x\"]\nstate = [\"../b/data\"]", "state"),
            (
                "name = \"a\"\ncommand = [\"x\"]\nhealth = { tcp = \"127.0.0.1:1\", command = [\"true\"] }",
                "health",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\nhealth = { command = [\"true\"], expect = \"+OK\" }",
                "health",
            ),
            ("name = \"a\"\ncommand = [\"x\"]\nvip = \"127.0.0.1\"", "vip"),
            (
                "name = \"a\"\ncommand = [\"x\"]\nrestart = { backoff_ms = 0 }",
                "restart",
            ),
            ("name = \"a\"\ncommand = [\"x\"]\nuser = \"Bad User\"", "user"),
            ("name = \"a\"\ncommand = [\"x\"]\nuser = \"no-such-user-x\"", "user"),
            (
                "name = \"a\"\ncommand = [\"x\"]\nuser = \"root\"\ngroup = \"no-such-group-x\"",
                "group",
            ),
            ("name = \"a\"\ncommand = [\"x\"]\ngroup = \"no-such-group-x\"", "group"),
            (
                "name = \"a\"\ncommand = [\"x\"]\ncapabilities = [\"CAP_FLY\"]",
                "capabilities",
            ),
            (
                "name = \"a\"\ncommand = [\"x\"]\ncapabilities = [\"CAP_KILL\", \"kill\"]",
                "capabilities",
            ),
            ("name = \"a\"\ncommand = [\"x\"]\numask = \"0999\"", "umask"),
            ("name = \"a\"\ncommand = [\"x\"]\numask = \"01777\"", "umask"),
        ];
        for (text, field) in cases {
            match spec(text).validate(&s) {
                Err(ServiceError::Spec { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let dup = vec![ok.clone(), ok];
        assert!(matches!(
            validate_all(&dup, &s),
            Err(ServiceError::Duplicate(_))
        ));
    }

    #[test]
    fn users_groups_capabilities_and_umask_are_read_from_toml_and_json() {
        let s = ServicesSection::default();
        let t = spec(
            "name = \"a\"\ncommand = [\"x\"]\nuser = \"root\"\ngroup = \"0\"\n\
             capabilities = [\"CAP_NET_BIND_SERVICE\"]\numask = \"0077\"\nallow_setuid = true\n",
        );
        assert!(t.validate(&s).is_ok());
        assert_eq!(t.capability_set(), Ok(1 << 10));
        assert_eq!(t.umask_bits(), Ok(0o077));
        let j: ServiceSpec = serde_json::from_str(
            r#"{"name":"a","command":["x"],"user":"0","group":"root",
                "capabilities":["net_bind_service"],"umask":"0o077","allow_setuid":true}"#,
        )
        .unwrap();
        assert!(j.validate(&s).is_ok());
        assert_eq!(
            (j.capability_set(), j.umask_bits(), j.allow_setuid),
            (Ok(1 << 10), Ok(0o077), true)
        );
        // Absent: the default user (resolved at start), no capabilities, umask 0027.
        let d = spec("name = \"a\"\ncommand = [\"x\"]\n");
        assert_eq!(
            (d.user.as_deref(), d.capability_set(), d.umask_bits()),
            (None, Ok(0), Ok(0o027))
        );
        let bad = ServicesSection {
            default_user: "Not A Name".into(),
            ..ServicesSection::default()
        };
        assert!(matches!(
            validate_all(&[d], &bad),
            Err(ServiceError::Spec { field, .. }) if field == "default_user"
        ));
    }

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let r = RestartSpec {
            backoff_ms: 100,
            backoff_max_ms: 1000,
            ..RestartSpec::default()
        };
        let delays: Vec<u64> = (0..6).map(|n| r.delay_ms(n)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            toml::from_str::<ServiceSpec>("name = \"a\"\ncommand = [\"x\"]\nimgae = \"/\"")
                .is_err()
        );
    }
}
