//! The sampler: every interval it turns the probe's counters into rates, attaches names
//! (comm, cmdline, cgroup path, container), adds node totals and energy, and produces a
//! [`Snapshot`]. It runs on its own thread (see [`crate::spawn`]); everything here is synchronous.
//!
//! Two backends give the per-process and per-cgroup counters:
//! - BPF ([`BpfProbe`]): on-CPU time, dirtied pages and write faults counted in the kernel, exec
//!   and exit events from a ring buffer, and `/proc` read only for names and memory;
//! - procfs/cgroupfs: `/proc/PID/stat` CPU ticks, `/proc/PID/io` `write_bytes` and cgroup
//!   `cpu.stat`, scanning `/proc` every interval. Write faults are not available there.
//!
//! Memory stays bounded: an ended process or a removed cgroup is kept for the grace period and
//! then dropped, also from the BPF maps.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::bpf::{BpfProbe, KernelStats, ProcEvent, ProcEventKind, ProgramStats};
use super::cgroup::{self, CgroupIndex, CgroupLayout};
use super::container;
use super::energy::{self, LinearModel, PowerMeter};
use super::model::*;
use super::node;
use super::procfs;
use crate::config::{EnergyConfig, ProbeConfig, ProbeMode};
use godwit_core::config::Glob;

mod collect;

/// How often the BPF backend rescans `/proc` to catch processes that have not run since the
/// agent started, and exits whose events were lost.
const RECONCILE_EVERY: u32 = 30;
/// How often (in intervals) the RSS of a process that did not run is re-read.
const IDLE_RSS_EVERY: u32 = 10;

/// Everything the sampler knows at one instant. Cheap to share: the API holds an `Arc` of it.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub taken_at_unix_ms: u64,
    pub interval_seconds: f64,
    pub node: NodeSample,
    /// Live processes, in descending CPU order.
    pub processes: Vec<ProcessSample>,
    /// Containers and other leaf cgroups with tasks, in descending CPU order.
    pub containers: Vec<ContainerSample>,
    pub probe: ProbeStatus,
}

/// The probe's report on itself.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProbeStatus {
    /// `ebpf` or `procfs`.
    pub source: Option<Source>,
    /// Why BPF is not in use, when it is not.
    pub fallback_reason: Option<String>,
    /// Exec and exit events received from the kernel.
    pub events_received: u64,
    pub kernel: KernelStats,
    pub programs: Vec<ProgramStats>,
    pub samples_total: u64,
    pub sample_seconds_last: f64,
    pub sample_seconds_total: f64,
    pub tracked_processes: usize,
    pub tracked_cgroups: usize,
    /// The agent's own CPU seconds and resident memory.
    pub agent_cpu_seconds_total: f64,
    pub agent_rss_bytes: u64,
}

/// Settings the sampler needs, taken from the `[probe]` and `[energy]` sections.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    pub mode: ProbeMode,
    pub interval: Duration,
    pub grace: Duration,
    pub bpf_stats: bool,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub powercap_root: PathBuf,
    pub power_model: LinearModel,
    pub hostname: Option<String>,
    pub select_processes: Vec<Glob>,
}

impl SamplerConfig {
    /// The sampler of the `[probe]` and `[energy]` sections; `hostname` overrides the host's
    /// name, and processes whose comm matches `select_processes` always get their own series.
    pub fn from_sections(
        probe: &ProbeConfig,
        energy: &EnergyConfig,
        hostname: Option<String>,
        select_processes: Vec<Glob>,
    ) -> SamplerConfig {
        SamplerConfig {
            mode: probe.mode,
            interval: probe.interval(),
            grace: probe.grace(),
            bpf_stats: probe.bpf_stats,
            proc_root: probe.proc_root.clone(),
            sys_root: probe.sys_root.clone(),
            powercap_root: energy.powercap_root.clone(),
            power_model: LinearModel {
                idle_watts: energy.idle_watts.0,
                max_watts: energy.max_watts.0,
            },
            hostname,
            select_processes,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// `probe.mode = "ebpf"` and the programs did not load.
    #[error("BPF probe required (probe.mode = \"ebpf\") but unavailable: {0}")]
    BpfRequired(#[from] super::bpf::BpfError),
}

/// What the sampler remembers of one process between samples.
#[derive(Debug)]
struct Proc {
    comm: String,
    cmdline: String,
    ppid: u32,
    starttime: u64,
    cgroup_id: u64,
    cgroup_path: String,
    first_seen: Instant,
    ended: Option<Instant>,
    meter: Meter,
    rss_bytes: u64,
    rss_age: u32,
    power_watts: f64,
    energy_joules: f64,
}

/// What the sampler remembers of one container (a cgroup subtree) between samples.
#[derive(Debug)]
struct Container {
    info: ContainerInfo,
    path: String,
    meter: Meter,
    memory: Option<cgroup::MemoryUsage>,
    power_watts: f64,
    energy_joules: f64,
    processes: u32,
    last_active: Instant,
}

/// Cumulative counters of a process or cgroup.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    cpu_ns: u64,
    dirtied_pages: u64,
    write_faults: Option<u64>,
    /// Pages written, counted on the write path (BPF with a write-path program only).
    changed_pages: Option<u64>,
    /// Time runnable without a CPU (`cpu.pressure` "some"), microseconds; containers only,
    /// where the kernel keeps it.
    cpu_waited_us: Option<u64>,
}

/// Cumulative counters at the last sample and the rates over the last interval.
#[derive(Debug, Default)]
struct Meter {
    totals: Totals,
    cpu_cores: f64,
    /// The bytes written a second where writes are counted, else the folio volume.
    dirty_bps: f64,
    /// The page cache's folio volume dirtied a second.
    folio_bps: f64,
    write_faults_ps: Option<f64>,
    /// Cores' worth of time runnable without a CPU over the last interval.
    cpu_wait_cores: Option<f64>,
    /// Whether the counters have a baseline (no rate on the first sight).
    primed: bool,
}

impl Meter {
    /// Takes new cumulative counters; returns the CPU ns used since the last ones. Totals
    /// never go backwards (a forgotten sub-cgroup must not make a container's total drop).
    fn advance(&mut self, t: Totals, dt: Option<f64>, page_size: u64) -> u64 {
        let prev = self.totals;
        let d_cpu = t.cpu_ns.saturating_sub(prev.cpu_ns);
        let d_dirty = t.dirtied_pages.saturating_sub(prev.dirtied_pages);
        let d_wf = match (t.write_faults, prev.write_faults) {
            (Some(now), Some(before)) => Some(now.saturating_sub(before)),
            (Some(_), None) => Some(0),
            _ => None,
        };
        let d_changed = match (t.changed_pages, prev.changed_pages) {
            (Some(now), Some(before)) => Some(now.saturating_sub(before)),
            (Some(_), None) => Some(0),
            _ => None,
        };
        let d_waited = match (t.cpu_waited_us, prev.cpu_waited_us) {
            (Some(now), Some(before)) => Some(now.saturating_sub(before)),
            (Some(_), None) => Some(0),
            _ => None,
        };
        match (dt, self.primed) {
            (Some(dt), true) => {
                self.cpu_cores = d_cpu as f64 / 1e9 / dt;
                self.cpu_wait_cores = d_waited.map(|us| us as f64 / 1e6 / dt);
                self.folio_bps = (d_dirty * page_size) as f64 / dt;
                self.dirty_bps = d_changed.map_or(self.folio_bps, |n| (n * page_size) as f64 / dt);
                self.write_faults_ps = d_wf.map(|n| n as f64 / dt);
            }
            _ => {
                self.cpu_cores = 0.0;
                self.dirty_bps = 0.0;
                self.folio_bps = 0.0;
                self.write_faults_ps = t.write_faults.map(|_| 0.0);
                self.cpu_wait_cores = t.cpu_waited_us.map(|_| 0.0);
            }
        }
        self.totals = Totals {
            cpu_ns: prev.cpu_ns.max(t.cpu_ns),
            dirtied_pages: prev.dirtied_pages.max(t.dirtied_pages),
            write_faults: t.write_faults,
            changed_pages: match (prev.changed_pages, t.changed_pages) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (_, b) => b,
            },
            cpu_waited_us: match (prev.cpu_waited_us, t.cpu_waited_us) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (_, b) => b,
            },
        };
        self.primed = true;
        d_cpu
    }
}

enum Backend {
    Bpf(Box<BpfProbe>),
    Procfs,
}

#[derive(Default)]
struct NodePrev {
    cpu: Option<node::CpuTimes>,
    net: HashMap<String, (u64, u64)>,
    disks: HashMap<String, (u64, u64)>,
}

/// The sampler. Build it with [`Sampler::new`], then call [`Sampler::sample`] every interval
/// and [`Sampler::drain_events`] whenever the probe's ring buffer is readable.
pub struct Sampler {
    cfg: SamplerConfig,
    backend: Backend,
    fallback_reason: Option<String>,
    layout: Option<CgroupLayout>,
    /// cgroup id -> path; `None` without a cgroup v2 hierarchy.
    cg_index: Option<CgroupIndex>,
    procs: HashMap<u32, Proc>,
    containers: HashMap<String, Container>,
    /// tgids in the BPF map with no /proc entry, since when.
    orphans: HashMap<u32, Instant>,
    /// cgroup ids in the BPF map whose directory is gone, since when.
    dead_cgroups: HashMap<u64, Instant>,
    node_prev: NodePrev,
    power: PowerMeter,
    energy_joules: f64,
    last: Option<Instant>,
    ticks: u32,
    clk_tck: u64,
    page_size: u64,
    hostname: String,
    cpus: u32,
    events_received: u64,
    samples_total: u64,
    sample_seconds_total: f64,
    /// Dirtied ranges of tracked files, waiting for a flush (see `track.rs`).
    dirty: super::track::Pending,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Loads the BPF programs unless the mode says procfs; in auto mode a failure is logged
    /// once, with its cause, and the sampler uses procfs/cgroupfs.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler, SamplerError> {
        let (backend, fallback_reason) = match cfg.mode {
            ProbeMode::Procfs => (
                Backend::Procfs,
                Some("probe.mode = \"procfs\" in the configuration".to_string()),
            ),
            ProbeMode::Ebpf => (Backend::Bpf(Box::new(BpfProbe::load(cfg.bpf_stats)?)), None),
            ProbeMode::Auto => match BpfProbe::load(cfg.bpf_stats) {
                Ok(p) => (Backend::Bpf(Box::new(p)), None),
                Err(e) => {
                    tracing::warn!(
                        cause = %e,
                        "BPF probe unavailable, sampling procfs and cgroupfs instead"
                    );
                    (Backend::Procfs, Some(e.to_string()))
                }
            },
        };
        if matches!(backend, Backend::Bpf(_)) {
            tracing::info!(programs = ?super::bpf::PROGRAMS, "BPF probe attached");
        }
        let layout = match CgroupLayout::detect(&cfg.proc_root.join("self/mounts")) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(cause = %e, "no cgroup v2 hierarchy: per-container figures are unavailable");
                None
            }
        };
        let cg_index = layout
            .as_ref()
            .and_then(|l| CgroupIndex::scan(&l.v2_root).ok());
        let power = PowerMeter::new(&cfg.powercap_root, cfg.power_model);
        tracing::info!(source = power.source().as_str(), "node power source");
        let hostname = cfg
            .hostname
            .clone()
            .or_else(|| node::read_hostname(&cfg.proc_root).ok())
            .unwrap_or_else(|| "localhost".into());
        let cpus = node::cpu_count(&cfg.proc_root).unwrap_or(1).max(1);
        Ok(Sampler {
            backend,
            fallback_reason,
            layout,
            cg_index,
            procs: HashMap::new(),
            containers: HashMap::new(),
            orphans: HashMap::new(),
            dead_cgroups: HashMap::new(),
            node_prev: NodePrev::default(),
            power,
            energy_joules: 0.0,
            last: None,
            ticks: 0,
            clk_tck: procfs::clock_ticks_per_second(),
            page_size: procfs::page_size(),
            hostname,
            cpus,
            events_received: 0,
            samples_total: 0,
            sample_seconds_total: 0.0,
            dirty: Default::default(),
            cfg,
        })
    }

    /// Which source the per-process and per-cgroup figures come from.
    pub fn source(&self) -> Source {
        match self.backend {
            Backend::Bpf(_) => Source::Ebpf,
            Backend::Procfs => Source::Procfs,
        }
    }

    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval
    }

    /// The BPF probe, when loaded (migration tracks inodes through it).
    pub(crate) fn pending_mut(&mut self) -> &mut super::track::Pending {
        &mut self.dirty
    }

    pub fn bpf_mut(&mut self) -> Option<&mut BpfProbe> {
        match &mut self.backend {
            Backend::Bpf(p) => Some(p),
            Backend::Procfs => None,
        }
    }

    /// Descriptors to poll for probe events (none in procfs mode).
    pub fn event_fds(&self) -> Vec<std::os::fd::RawFd> {
        match &self.backend {
            Backend::Bpf(p) => p.ring_fds().to_vec(),
            Backend::Procfs => Vec::new(),
        }
    }

    /// Applies pending exec/exit events. Returns true when the set of live processes changed.
    pub fn drain_events(&mut self) -> bool {
        let Backend::Bpf(probe) = &mut self.backend else {
            return false;
        };
        let mut events = Vec::new();
        probe.drain_proc_events(|e| events.push(e));
        // Dirtied ranges of tracked inodes wait for a migration's flush; ranges of files no
        // longer tracked are dropped, so the ring never fills.
        let dirty = &mut self.dirty;
        probe.drain_dirty_ranges(|r| dirty.push(r.key, r.index, r.nr));
        let changed = !events.is_empty();
        self.events_received += events.len() as u64;
        let now = Instant::now();
        for e in events {
            self.apply_event(e, now);
        }
        changed
    }

    fn apply_event(&mut self, e: ProcEvent, now: Instant) {
        match e.kind {
            ProcEventKind::Exec => {
                let cmdline = procfs::read_cmdline(&self.cfg.proc_root, e.tgid)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| e.comm.clone());
                let cgroup_path = self.cgroup_path_of(e.cgroup_id, e.tgid);
                let p = self.procs.entry(e.tgid).or_insert_with(|| Proc::new(now));
                p.comm = e.comm;
                p.cmdline = cmdline;
                p.ppid = e.ppid;
                p.cgroup_id = e.cgroup_id;
                p.cgroup_path = cgroup_path;
                p.ended = None;
            }
            ProcEventKind::Exit => {
                if let Some(p) = self.procs.get_mut(&e.tgid) {
                    p.ended.get_or_insert(now);
                }
            }
        }
    }

    /// The live processes as the last sample left them, updated by events since; used to
    /// publish exec/exit between samples.
    pub fn live_process_view(&self, snapshot: &Snapshot) -> Vec<ProcessSample> {
        let mut out: Vec<ProcessSample> = snapshot
            .processes
            .iter()
            .filter(|p| self.procs.get(&p.pid).is_some_and(|q| q.ended.is_none()))
            .cloned()
            .collect();
        let known: HashSet<u32> = out.iter().map(|p| p.pid).collect();
        let now = Instant::now();
        for (&pid, p) in &self.procs {
            if p.ended.is_none() && !known.contains(&pid) {
                out.push(self.process_sample(pid, p, now));
            }
        }
        out
    }

    fn cgroup_path_of(&mut self, id: u64, pid: u32) -> String {
        if id != 0 {
            if let Some(p) = self.cgroup_path(id) {
                return p.to_string();
            }
            self.rescan_cgroups();
            if let Some(p) = self.cgroup_path(id) {
                return p.to_string();
            }
        }
        procfs::read_cgroup(&self.cfg.proc_root, pid)
            .ok()
            .and_then(|m| m.v2_path)
            .unwrap_or_default()
    }

    /// Walks the cgroup tree again (at most once a second) after an unknown id.
    fn rescan_cgroups(&mut self) {
        if let Some(idx) = &mut self.cg_index {
            let _ = idx.rescan();
        }
    }

    fn cgroup_path(&self, id: u64) -> Option<&str> {
        self.cg_index.as_ref().and_then(|i| i.get(id))
    }

    /// Takes one sample.
    pub fn sample(&mut self) -> Snapshot {
        let started = Instant::now();
        let now = started;
        let dt = self
            .last
            .map(|l| now.duration_since(l).as_secs_f64())
            .filter(|d| *d > 0.0);
        self.last = Some(now);
        self.ticks = self.ticks.wrapping_add(1);

        let node_busy = self.sample_node_cpu();
        let (proc_totals, cgroup_totals) = match self.backend {
            Backend::Bpf(_) => self.collect_bpf(now),
            Backend::Procfs => self.collect_procfs(now),
        };
        self.update_processes(proc_totals, dt, now);
        self.update_containers(cgroup_totals, dt, now);
        let mut node = self.sample_node(dt, node_busy);
        self.attribute_energy(&mut node, dt);
        self.collect_garbage(now);

        let elapsed = started.elapsed().as_secs_f64();
        self.samples_total += 1;
        self.sample_seconds_total += elapsed;
        self.snapshot(node, now, elapsed)
    }

    /// Reads the node's CPU times; returns the busy fraction over the interval.
    fn sample_node_cpu(&mut self) -> CpuModes {
        let now = node::read_cpu_times(&self.cfg.proc_root).ok();
        let modes = match (&self.node_prev.cpu, &now) {
            (Some(prev), Some(cur)) => node::modes_between(prev, cur),
            _ => CpuModes {
                idle: 1.0,
                ..CpuModes::default()
            },
        };
        self.node_prev.cpu = now;
        modes
    }

    fn sample_node(&mut self, dt: Option<f64>, cpu: CpuModes) -> NodeSample {
        let root = &self.cfg.proc_root;
        let mem = node::read_meminfo(root).ok();
        let (total, avail) = mem
            .map(|m| (m.total_bytes, m.available_bytes))
            .unwrap_or((0, 0));
        let rate = |now: u64, prev: Option<u64>| match (dt, prev) {
            (Some(dt), Some(p)) => now.saturating_sub(p) as f64 / dt,
            _ => 0.0,
        };
        let mut interfaces = Vec::new();
        let mut net_prev = HashMap::new();
        for i in node::read_net_dev(root).unwrap_or_default() {
            let prev = self.node_prev.net.get(&i.name).copied();
            interfaces.push(InterfaceSample {
                name: i.name.clone(),
                receive_bytes_total: i.rx_bytes,
                transmit_bytes_total: i.tx_bytes,
                receive_bytes_per_second: rate(i.rx_bytes, prev.map(|p| p.0)),
                transmit_bytes_per_second: rate(i.tx_bytes, prev.map(|p| p.1)),
            });
            net_prev.insert(i.name, (i.rx_bytes, i.tx_bytes));
        }
        self.node_prev.net = net_prev;
        let mut disks = Vec::new();
        let mut disk_prev = HashMap::new();
        for d in node::read_disks(root, &self.cfg.sys_root).unwrap_or_default() {
            let prev = self.node_prev.disks.get(&d.name).copied();
            disks.push(DiskSample {
                name: d.name.clone(),
                read_bytes_total: d.read_bytes,
                written_bytes_total: d.written_bytes,
                read_bytes_per_second: rate(d.read_bytes, prev.map(|p| p.0)),
                written_bytes_per_second: rate(d.written_bytes, prev.map(|p| p.1)),
            });
            disk_prev.insert(d.name, (d.read_bytes, d.written_bytes));
        }
        self.node_prev.disks = disk_prev;
        let dirty_bytes_per_second = self
            .procs
            .values()
            .filter(|p| p.ended.is_none())
            .map(|p| p.meter.dirty_bps)
            .sum();
        NodeSample {
            hostname: self.hostname.clone(),
            totals_source: Source::Procfs,
            cpus: self.cpus,
            cpu_utilization: cpu.utilization(),
            cpu,
            memory_total_bytes: total,
            memory_available_bytes: avail,
            memory_utilization: if total > 0 {
                1.0 - avail as f64 / total as f64
            } else {
                0.0
            },
            interfaces,
            disks,
            dirty_bytes_per_second,
            power_watts: 0.0,
            energy_joules_total: 0.0,
            power_source: self.power.source(),
        }
    }

    /// Node power from RAPL or the model, attributed to processes and containers by their
    /// share of the CPU time used in the interval (Kepler's ratio method).
    fn attribute_energy(&mut self, node: &mut NodeSample, dt: Option<f64>) {
        let Some(dt) = dt else {
            node.power_source = self.power.source();
            return;
        };
        let reading = self.power.sample(dt, node.cpu_utilization);
        self.energy_joules = reading.joules_total;
        node.power_watts = reading.watts;
        node.energy_joules_total = reading.joules_total;
        node.power_source = reading.source;
        let idle = self.cfg.power_model.idle_watts.min(reading.watts);
        let busy_cores = node.cpu_utilization * f64::from(self.cpus);

        let share = |cores: f64| {
            if busy_cores > 0.0 {
                (cores / busy_cores).min(1.0)
            } else {
                0.0
            }
        };
        let pids: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.ended.is_none())
            .map(|(k, _)| *k)
            .collect();
        let shares: Vec<f64> = pids
            .iter()
            .map(|pid| share(self.procs[pid].meter.cpu_cores))
            .collect();
        for (pid, w) in pids
            .iter()
            .zip(energy::attribute(reading.watts, idle, &shares))
        {
            if let Some(p) = self.procs.get_mut(pid) {
                p.power_watts = w;
                p.energy_joules += w * dt;
            }
        }
        let roots: Vec<String> = self.containers.keys().cloned().collect();
        let shares: Vec<f64> = roots
            .iter()
            .map(|r| share(self.containers[r].meter.cpu_cores))
            .collect();
        for (root, w) in roots
            .iter()
            .zip(energy::attribute(reading.watts, idle, &shares))
        {
            if let Some(c) = self.containers.get_mut(root) {
                c.power_watts = w;
                c.energy_joules += w * dt;
            }
        }
    }

    /// Drops what ended more than the grace period ago, from our tables and the BPF maps.
    fn collect_garbage(&mut self, now: Instant) {
        let grace = self.cfg.grace;
        let expired = |t: &Instant| now.duration_since(*t) >= grace;
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.ended.as_ref().is_some_and(expired))
            .map(|(k, _)| *k)
            .collect();
        let orphans: Vec<u32> = self
            .orphans
            .iter()
            .filter(|(_, t)| expired(t))
            .map(|(k, _)| *k)
            .collect();
        let dead_cgroups: Vec<u64> = self
            .dead_cgroups
            .iter()
            .filter(|(_, t)| expired(t))
            .map(|(k, _)| *k)
            .collect();
        for pid in &gone {
            self.procs.remove(pid);
        }
        for pid in &orphans {
            self.orphans.remove(pid);
        }
        for id in &dead_cgroups {
            self.dead_cgroups.remove(id);
        }
        if let Backend::Bpf(probe) = &mut self.backend {
            for pid in gone.iter().chain(&orphans) {
                probe.forget_task(*pid);
            }
            for id in &dead_cgroups {
                probe.forget_cgroup(*id);
            }
        }
        self.containers
            .retain(|_, c| c.processes > 0 || now.duration_since(c.last_active) < grace);
    }

    fn process_sample(&self, pid: u32, p: &Proc, now: Instant) -> ProcessSample {
        let src = self.source();
        ProcessSample {
            pid,
            ppid: p.ppid,
            comm: p.comm.clone(),
            cmdline: p.cmdline.clone(),
            cgroup_id: p.cgroup_id,
            cgroup_path: p.cgroup_path.clone(),
            container_cgroup_id: None,
            age_seconds: now.duration_since(p.first_seen).as_secs_f64(),
            cpu_seconds_total: p.meter.totals.cpu_ns as f64 / 1e9,
            cpu_cores: p.meter.cpu_cores,
            rss_bytes: p.rss_bytes,
            dirtied_pages_total: p.meter.totals.dirtied_pages,
            changed_pages_total: p.meter.totals.changed_pages,
            dirty_bytes_per_second: p.meter.dirty_bps,
            folio_bytes_per_second: p.meter.folio_bps,
            write_faults_total: p.meter.totals.write_faults,
            write_faults_per_second: p.meter.write_faults_ps,
            power_watts: p.power_watts,
            energy_joules_total: p.energy_joules,
            source: Sources {
                cpu: src,
                dirty: src,
                write_faults: if p.meter.totals.write_faults.is_some() {
                    Source::Ebpf
                } else {
                    Source::None
                },
                memory: Source::Procfs,
                energy: self.power.source(),
            },
        }
    }

    fn snapshot(&self, node: NodeSample, now: Instant, elapsed: f64) -> Snapshot {
        let mut processes: Vec<ProcessSample> = self
            .procs
            .iter()
            .filter(|(_, p)| p.ended.is_none())
            .map(|(pid, p)| self.process_sample(*pid, p, now))
            .collect();
        processes.sort_by(|a, b| b.cpu_cores.total_cmp(&a.cpu_cores).then(a.pid.cmp(&b.pid)));
        let src = self.source();
        let mut containers: Vec<ContainerSample> = self
            .containers
            .values()
            .map(|c| ContainerSample {
                cgroup_id: self
                    .layout
                    .as_ref()
                    .and_then(|l| cgroup::cgroup_id(&l.dir(&c.path)).ok())
                    .unwrap_or(0),
                cgroup_path: c.path.clone(),
                info: c.info.clone(),
                processes: c.processes,
                cpu_seconds_total: c.meter.totals.cpu_ns as f64 / 1e9,
                cpu_cores: c.meter.cpu_cores,
                cpu_wait_cores: c.meter.cpu_wait_cores,
                cpu_waited_seconds_total: c.meter.totals.cpu_waited_us.map(|us| us as f64 / 1e6),
                memory_bytes: c.memory.as_ref().map(|m| m.current_bytes),
                memory_working_set_bytes: c.memory.as_ref().map(|m| m.working_set_bytes),
                dirtied_pages_total: c.meter.totals.dirtied_pages,
                changed_pages_total: c.meter.totals.changed_pages,
                dirty_bytes_per_second: c.meter.dirty_bps,
                folio_bytes_per_second: c.meter.folio_bps,
                write_faults_total: c.meter.totals.write_faults,
                write_faults_per_second: c.meter.write_faults_ps,
                power_watts: c.power_watts,
                energy_joules_total: c.energy_joules,
                source: Sources {
                    cpu: if src == Source::Procfs {
                        Source::Cgroupfs
                    } else {
                        src
                    },
                    dirty: src,
                    write_faults: if c.meter.totals.write_faults.is_some() {
                        Source::Ebpf
                    } else {
                        Source::None
                    },
                    memory: if c.memory.is_some() {
                        Source::Cgroupfs
                    } else {
                        Source::None
                    },
                    energy: self.power.source(),
                },
            })
            .collect();
        containers.sort_by(|a, b| {
            b.cpu_cores
                .total_cmp(&a.cpu_cores)
                .then(a.cgroup_path.cmp(&b.cgroup_path))
        });
        let (kernel, programs) = match &self.backend {
            Backend::Bpf(p) => (p.kernel_stats(), p.program_stats()),
            Backend::Procfs => (KernelStats::default(), Vec::new()),
        };
        let me = procfs::read_self_usage().ok();
        Snapshot {
            taken_at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            interval_seconds: self.cfg.interval.as_secs_f64(),
            node,
            processes,
            containers,
            probe: ProbeStatus {
                source: Some(src),
                fallback_reason: self.fallback_reason.clone(),
                events_received: self.events_received,
                kernel,
                programs,
                samples_total: self.samples_total,
                sample_seconds_last: elapsed,
                sample_seconds_total: self.sample_seconds_total,
                tracked_processes: self.procs.len(),
                tracked_cgroups: self.containers.len(),
                agent_cpu_seconds_total: me.as_ref().map(|m| m.cpu_seconds).unwrap_or(0.0),
                agent_rss_bytes: me.map(|m| m.rss_bytes).unwrap_or(0),
            },
        }
    }

    /// Whether a process is selected by config for per-process metrics.
    pub fn selected(&self, comm: &str) -> bool {
        self.cfg.select_processes.iter().any(|g| g.is_match(comm))
    }
}

/// The container a cgroup path belongs to: the subtree a runtime made, or the leaf cgroup
/// itself when no runtime matches. The root cgroup belongs to none.
fn container_of(path: &str) -> Option<(String, ContainerInfo)> {
    if path.is_empty() || path == "/" {
        return None;
    }
    if let Some(root) = container::container_root(path) {
        if let Some(info) = container::classify(root) {
            return Some((root.to_string(), info));
        }
    }
    let name = path.rsplit('/').next().unwrap_or(path).to_string();
    Some((
        path.to_string(),
        ContainerInfo {
            runtime: Runtime::Cgroup,
            id: path.to_string(),
            name,
            pod_uid: None,
        },
    ))
}

impl Proc {
    /// A process first seen through its `/proc/PID/stat`; a kernel thread (empty cmdline) is
    /// named `[comm]`, as ps does.
    fn from_stat(
        st: &procfs::PidStat,
        cmdline: String,
        cgroup_id: u64,
        cgroup_path: String,
        now: Instant,
        page_size: u64,
    ) -> Proc {
        let mut p = Proc::new(now);
        p.comm = st.comm.clone();
        p.cmdline = if cmdline.is_empty() {
            format!("[{}]", st.comm)
        } else {
            cmdline
        };
        p.ppid = st.ppid;
        p.starttime = st.starttime_ticks;
        p.cgroup_id = cgroup_id;
        p.cgroup_path = cgroup_path;
        p.rss_bytes = st.rss_pages * page_size;
        p
    }

    fn new(now: Instant) -> Proc {
        Proc {
            comm: String::new(),
            cmdline: String::new(),
            ppid: 0,
            starttime: 0,
            cgroup_id: 0,
            cgroup_path: String::new(),
            first_seen: now,
            ended: None,
            meter: Meter::default(),
            rss_bytes: 0,
            rss_age: 0,
            power_watts: 0.0,
            energy_joules: 0.0,
        }
    }
}

impl Container {
    fn new(info: ContainerInfo, path: String, now: Instant) -> Container {
        Container {
            info,
            path,
            meter: Meter::default(),
            memory: None,
            power_watts: 0.0,
            energy_joules: 0.0,
            processes: 0,
            last_active: now,
        }
    }
}

/// The latest snapshot, shared between the sampler thread and readers.
pub type SharedSnapshot = Arc<std::sync::RwLock<Option<Arc<Snapshot>>>>;

#[cfg(test)]
mod tests;
