//! What a service is and how it runs: the node's runtime settings and a service's status.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::error::ServiceError;
use super::health::Health;
use super::identity::{Identity, Limits};
use super::spec::{Demand, ServiceSpec, ServicesSection};
use godwit_image::ImageStore;

/// Where and how services run on this node.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// This node's name.
    pub node: String,
    /// The cgroup v2 root (the unified hierarchy on hybrid hosts).
    pub v2_root: PathBuf,
    /// The v1 memory hierarchy's mount on a v1/v2 hybrid host, where services' memory is
    /// accounted when the v2 tree has no memory controller.
    pub memory_v1_root: Option<PathBuf>,
    /// The v1 cpu hierarchy's mount on a hybrid host whose v2 tree has no cpu controller:
    /// where `[services] cpu_cores` is enforced (`cpu.cfs_quota_us`).
    pub cpu_v1_root: Option<PathBuf>,
    /// `[services]`.
    pub section: ServicesSection,
    /// The image store, to identify images by content and hold them.
    pub images: Option<Arc<ImageStore>>,
    /// Where images are written out to run from (`<data_dir>/images/run`).
    pub run_root: PathBuf,
    /// The user of services whose spec names none ([`Identity::ensure_system_user`] of
    /// `[services] default_user`), or why there is none: then only specs with a `user` start.
    pub default_user: Result<Identity, String>,
}

impl Runtime {
    /// Who `spec`'s processes run as on this node: its `user` (and `group`) resolved here,
    /// else the default user. Never root unless the spec says so.
    pub fn identity(&self, spec: &ServiceSpec) -> Result<Identity, ServiceError> {
        let bad = |field: &str, reason: String| ServiceError::Spec {
            service: spec.name.clone(),
            field: field.into(),
            reason,
        };
        match &spec.user {
            Some(user) => Identity::resolve(user, spec.group.as_deref()).map_err(|e| {
                bad(
                    if e.starts_with("group") {
                        "group"
                    } else {
                        "user"
                    },
                    e,
                )
            }),
            None => {
                let d = self.default_user.as_ref().map_err(|e| {
                    bad(
                        "user",
                        format!(
                            "none given, and the default service user is unavailable ({e}); \
                             name a user (\"root\" to run as root)"
                        ),
                    )
                })?;
                match &spec.group {
                    None => Ok(d.clone()),
                    Some(g) => Identity::resolve(&d.uid.to_string(), Some(g))
                        .map(|id| Identity {
                            user: d.user.clone(),
                            ..id
                        })
                        .map_err(|e| bad("group", e)),
                }
            }
        }
    }

    /// What `spec`'s processes may do: its identity, capabilities and umask. An agent that is
    /// not root runs services only as itself.
    pub fn limits(&self, spec: &ServiceSpec) -> Result<Limits, ServiceError> {
        let bad = |field: &str, reason: String| ServiceError::Spec {
            service: spec.name.clone(),
            field: field.into(),
            reason,
        };
        let identity = self.identity(spec)?;
        let me = Identity::current();
        if me.uid != 0 && identity.uid != me.uid {
            return Err(bad(
                "user",
                format!(
                    "the agent runs as {} (uid {}), not root: it cannot run services as {} \
                     (uid {})",
                    me.user, me.uid, identity.user, identity.uid
                ),
            ));
        }
        Ok(Limits {
            identity,
            caps: spec.capability_set().map_err(|e| bad("capabilities", e))?,
            umask: spec.umask_bits().map_err(|e| bad("umask", e))?,
        })
    }
}

/// What a service's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Not running.
    Stopped,
    /// Running (see the health for whether it serves).
    Running,
    /// Running, every task frozen.
    Frozen,
    /// Being stopped.
    Stopping,
    /// Exited; waiting for the back-off delay before a restart.
    Backoff,
    /// Given up on (crash loop, or it cannot be started).
    Failed,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        write!(f, "{}", s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// A service as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Process state.
    pub state: RunState,
    /// Health.
    pub health: Health,
    /// Main process.
    pub pid: Option<u32>,
    /// Its cgroup directory.
    pub cgroup: String,
    /// Restarts after crashes since it was last started by request.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<String>,
    /// When the state last changed, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// Content hash of its image.
    pub image_id: Option<String>,
    /// Its state directory.
    pub state_dir: String,
    /// Its virtual IP.
    pub vip: Option<IpAddr>,
    /// The VIP is on this node now.
    pub vip_active: bool,
    /// Its resource demand.
    pub demand: Demand,
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
