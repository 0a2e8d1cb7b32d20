//! Plain data produced by the sampler: what the API serves, the metrics encode and later
//! modules (series, predict, gossip) consume. No I/O here.

use serde::{Deserialize, Serialize};

/// Which mechanism produced a figure. Every figure the agent reports carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// BPF programs loaded into the kernel.
    Ebpf,
    /// `/proc` files.
    Procfs,
    /// cgroup filesystem files (`cpu.stat`, `memory.current`, ...).
    Cgroupfs,
    /// Intel RAPL energy counters through the powercap sysfs interface.
    Rapl,
    /// The linear power model from CPU utilisation (idle and max watts from config).
    Model,
    /// The figure is not available from any source on this host.
    None,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Procfs => "procfs",
            Source::Cgroupfs => "cgroupfs",
            Source::Rapl => "rapl",
            Source::Model => "model",
            Source::None => "none",
        }
    }
}

/// The sources behind one entity's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub cpu: Source,
    pub dirty: Source,
    pub write_faults: Source,
    pub memory: Source,
    pub energy: Source,
}

/// Which container runtime (or service manager) a cgroup path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
    Kubepods,
    Systemd,
    /// A service managed by godwit itself.
    Godwit,
    /// A cgroup that matches no known runtime.
    Cgroup,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
            Runtime::Kubepods => "kubepods",
            Runtime::Systemd => "systemd",
            Runtime::Godwit => "godwit",
            Runtime::Cgroup => "cgroup",
        }
    }
}

/// What a cgroup path says about the container it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub runtime: Runtime,
    /// Runtime's container id (full), pod uid, or unit name.
    pub id: String,
    /// Human name: short id for container runtimes, unit name for systemd, service name for godwit.
    pub name: String,
    /// Kubernetes pod uid when the path is under kubepods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSample {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: String,
    /// cgroup v2 id (inode of the cgroup directory); 0 when unknown.
    pub cgroup_id: u64,
    pub cgroup_path: String,
    /// cgroup id of the container this process belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_cgroup_id: Option<u64>,
    /// Seconds since the agent first saw this process.
    pub age_seconds: f64,
    pub cpu_seconds_total: f64,
    /// CPU cores used over the last interval (1.0 = one core busy).
    pub cpu_cores: f64,
    pub rss_bytes: u64,
    /// Pages the page cache saw go from clean to dirty, every page of a folio.
    pub dirtied_pages_total: u64,
    /// Pages written, counted where they are written (a write's range at page granularity,
    /// a write fault on a shared file mapping); `None` where the probe cannot count them.
    #[serde(default)]
    pub changed_pages_total: Option<u64>,
    /// The bytes written a second at page granularity (what a migration's rounds send), or,
    /// where writes cannot be counted (`changed_pages_total` is `None`), the folio volume.
    pub dirty_bytes_per_second: f64,
    /// The page cache's folio volume dirtied a second: with large folios, one small write
    /// into a clean folio counts the whole folio.
    #[serde(default)]
    pub folio_bytes_per_second: f64,
    pub write_faults_total: Option<u64>,
    pub write_faults_per_second: Option<f64>,
    pub power_watts: f64,
    pub energy_joules_total: f64,
    pub source: Sources,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSample {
    pub cgroup_id: u64,
    pub cgroup_path: String,
    #[serde(flatten)]
    pub info: ContainerInfo,
    pub processes: u32,
    pub cpu_seconds_total: f64,
    pub cpu_cores: f64,
    /// Cores' worth of time some task of it was runnable but had no CPU (`cpu.pressure`
    /// "some"): a CPU limit's throttling, or contention. It says the cgroup wanted more, not
    /// how much (a throttled thread waits until its period ends whatever it lacked); `None`
    /// where the kernel keeps no pressure figures.
    #[serde(default)]
    pub cpu_wait_cores: Option<f64>,
    /// The same time, since the agent started watching it, seconds.
    #[serde(default)]
    pub cpu_waited_seconds_total: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    /// Pages the page cache saw go from clean to dirty, every page of a folio.
    pub dirtied_pages_total: u64,
    /// Pages written, counted where they are written (a write's range at page granularity,
    /// a write fault on a shared file mapping); `None` where the probe cannot count them.
    #[serde(default)]
    pub changed_pages_total: Option<u64>,
    /// The bytes written a second at page granularity (what a migration's rounds send), or,
    /// where writes cannot be counted (`changed_pages_total` is `None`), the folio volume.
    pub dirty_bytes_per_second: f64,
    /// The page cache's folio volume dirtied a second: with large folios, one small write
    /// into a clean folio counts the whole folio.
    #[serde(default)]
    pub folio_bytes_per_second: f64,
    pub write_faults_total: Option<u64>,
    pub write_faults_per_second: Option<f64>,
    pub power_watts: f64,
    pub energy_joules_total: f64,
    pub source: Sources,
}

/// CPU time fractions by mode over the last interval; they sum to 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuModes {
    pub user: f64,
    pub nice: f64,
    pub system: f64,
    pub idle: f64,
    pub iowait: f64,
    pub irq: f64,
    pub softirq: f64,
    pub steal: f64,
}

impl CpuModes {
    /// Busy fraction: everything but idle and iowait.
    pub fn utilization(&self) -> f64 {
        (1.0 - self.idle - self.iowait).clamp(0.0, 1.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceSample {
    pub name: String,
    pub receive_bytes_total: u64,
    pub transmit_bytes_total: u64,
    pub receive_bytes_per_second: f64,
    pub transmit_bytes_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskSample {
    pub name: String,
    pub read_bytes_total: u64,
    pub written_bytes_total: u64,
    pub read_bytes_per_second: f64,
    pub written_bytes_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSample {
    pub hostname: String,
    /// Source of the CPU, memory, network and disk totals (always procfs: `/proc/stat`,
    /// `/proc/meminfo`, `/proc/net/dev`, `/proc/diskstats`).
    pub totals_source: Source,
    pub cpus: u32,
    pub cpu: CpuModes,
    /// `1 - idle - iowait` over the last interval.
    pub cpu_utilization: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub memory_utilization: f64,
    pub interfaces: Vec<InterfaceSample>,
    pub disks: Vec<DiskSample>,
    /// Bytes written per second by all processes the probe saw (as theirs).
    pub dirty_bytes_per_second: f64,
    pub power_watts: f64,
    pub energy_joules_total: f64,
    pub power_source: Source,
}
