//! What a service is and how it runs: the node's runtime settings and a service's status.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::health::Health;
use super::spec::{Demand, ServicesSection};
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
    /// `[services]`.
    pub section: ServicesSection,
    /// The image store, to identify images by content and hold them.
    pub images: Option<Arc<ImageStore>>,
    /// Where images are written out to run from (`<data_dir>/images/run`).
    pub run_root: PathBuf,
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
