//! Managed services: specs, the exec driver (one supervisor per service, each in its own
//! cgroup v2), health checks, freeze and thaw, restarts with back-off, and virtual IPs.
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `spec.rs` | [`ServiceSpec`] and `[services]`; validation that names the field |
//! | `cgroup.rs` | [`ServiceCgroup`]: create, join before exec, freeze/thaw, kill, remove |
//! | `health.rs` | TCP, HTTP and command checks; [`HealthTracker`] |
//! | `identity.rs` | the user a service runs as, its capabilities and umask ([`Limits`]); mode masks |
//! | `status.rs` | [`Runtime`] (where services run), [`RunState`] and [`ServiceStatus`] |
//! | `launch.rs` | a service's image made ready (directory, tarball, store) and its command |
//! | `supervisor.rs` | [`Manager`] and the per-service supervisor task |
//! | `timings.rs` | [`ServiceTimings`]: each service's last stops and starts here, kept on disk |
//! | `vip.rs` | add/remove the VIP, gratuitous ARP (IPv4), unsolicited neighbour advertisement (IPv6) |
//! | `netlink.rs` | rtnetlink requests: add, delete and list an interface's addresses (no `ip` process) |
//!
//! # Invariants
//!
//! - **Everything a service runs stays in its cgroup**: the child joins it between fork and
//!   exec; stop and crash clean-up kill the whole cgroup, so nothing outlives the service.
//! - **Frozen means the kernel says so**: freeze returns once `cgroup.events` reads
//!   `frozen 1`.
//! - **A refused spec changes nothing**: validation and the duplicate check happen before any
//!   cgroup, directory or process is touched for it; an image that cannot be prepared
//!   leaves no cgroup (it is prepared first, and a later failure removes the cgroup).
//! - **A crash loop ends**: more than `max_restarts` crashes within `window_s` is `failed`;
//!   delays double from `backoff_ms` up to `backoff_max_ms`.
//! - **Unhealthy does not last**: no passing check within `start_timeout_ms` of a start is
//!   unhealthy; unhealthy for `unhealthy_restart_ms` is a restart counted as a crash.
//! - **No service runs as root by accident**: a spec without `user` runs as
//!   `[services] default_user`; every process of a service (and its health command) has
//!   `no_new_privs` and only the capabilities its spec lists. No default user, no start.
//! - **The VIP follows health**: added once the service is healthy (at start when it has no
//!   check), removed when it stops or crashes; a migration's stop
//!   ([`Manager::stop_keeping_vip`]) keeps it, with nothing listening, until the kill after
//!   the hand-off, so new connections are refused at once rather than lost.
//! - **A fenced node runs nothing**: [`Manager::fence_all`] freezes and kills every service's
//!   cgroup and withdraws the VIPs without waiting on the supervisors; until
//!   [`Manager::unfence`], no start or restart happens.

mod cgroup;
mod error;
mod health;
mod identity;
mod launch;
pub mod netlink;
mod park;
mod spec;
mod status;
mod supervisor;
mod timings;
pub mod vip;

pub use cgroup::{limit_parent_cpu, ServiceCgroup};
pub use error::ServiceError;
pub use health::{check, Health, HealthTracker};
pub use identity::{capability, chown_tree, mask_mode, Identity, Limits};
pub use spec::{
    validate_all, Demand, HaPolicy, HealthSpec, RestartPolicy, RestartSpec, ServiceSpec,
    ServicesSection, DEFAULT_MAX_STATE_BYTES, DEFAULT_UMASK,
};
pub use supervisor::{Manager, RunState, Runtime, ServiceStatus};
pub use timings::ServiceTimings;
