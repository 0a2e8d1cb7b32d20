//! The BPF side of the probe: loads `agent-ebpf/src/godwit.bpf.c` (compiled by `build.rs` and
//! embedded), attaches its `tp_btf` programs (those on filesystems' write paths where the
//! kernel has them), and reads their maps and ring buffers.
//!
//! The programs detach when [`BpfProbe`] is dropped (aya owns the links).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader, Pod};

/// The compiled BPF object (empty when built with `GODWIT_BPF_STUB=1`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/godwit.bpf.o"));

/// The `tp_btf` programs, by C function name (= tracepoint name).
pub const PROGRAMS: [&str; 6] = [
    "sched_switch",
    "sched_process_exec",
    "sched_process_exit",
    "writeback_dirty_folio",
    "page_fault_user",
    "mm_filemap_fault",
];

/// The `tp_btf` programs on filesystems' buffered write paths, by C function name (=
/// tracepoint name): where none attaches (no such filesystem tracepoint in this kernel), pages
/// changed are counted only for shared mappings and the dirty rate is the folio volume.
pub const WRITE_PATH: [&str; 4] = [
    "ext4_da_write_end",
    "ext4_write_end",
    "ext4_journalled_write_end",
    "xfs_file_buffered_write",
];

// Mirrors of godwit.h; `layout_matches_c` checks them against the C compiler.
pub const COMM_LEN: usize = 16;
pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;
pub const STAT_EVENTS_LOST: u32 = 0;
pub const STAT_DIRTY_LOST: u32 = 1;
pub const STAT_TASKS_FULL: u32 = 2;
pub const STAT_CGROUPS_FULL: u32 = 3;
pub const STAT_EXEC: u32 = 4;
pub const STAT_EXIT: u32 = 5;
pub const STAT_DIRTY_EVENTS: u32 = 6;
pub const STAT_FAULT_UNKNOWN: u32 = 7;
pub const STAT_MAX: u32 = 8;

/// `struct godwit_counters`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub cpu_ns: u64,
    pub dirtied_pages: u64,
    pub write_faults: u64,
    pub cgroup_id: u64,
    pub last_jiffies: u64,
    /// Pages a write touched (write ranges at page granularity, shared-mapping write faults).
    pub changed_pages: u64,
}

/// `struct godwit_oncpu`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OnCpu {
    /// The task's `se.sum_exec_runtime` when it was switched in.
    pub runtime_base_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    /// Thread id.
    pub pid: u32,
}

/// `struct godwit_inode_key`: the kernel's `dev_t` (major << 20 | minor) and inode number.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// `struct godwit_inode_stats`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InodeStats {
    pub dirtied_pages: u64,
    pub events: u64,
}

/// `struct godwit_proc_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct RawProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub comm: [u8; COMM_LEN],
}

/// `struct godwit_dirty_range`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyRange {
    pub key: InodeKey,
    /// First page index in the file.
    pub index: u64,
    /// Number of pages.
    pub nr: u32,
    pub tgid: u32,
}

// SAFETY: plain #[repr(C)] structs of integers with explicit padding fields: every bit pattern
// is a valid value, as aya's `Pod` requires.
unsafe impl Pod for Counters {}
// SAFETY: as above.
unsafe impl Pod for OnCpu {}
// SAFETY: as above.
unsafe impl Pod for InodeKey {}
// SAFETY: as above.
unsafe impl Pod for InodeStats {}

impl InodeKey {
    /// The key of the file at `path`: converts the userspace `st_dev` encoding to the kernel's.
    pub fn of_path(path: &Path) -> io::Result<InodeKey> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path)?;
        let dev = md.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        Ok(InodeKey {
            ino: md.ino(),
            dev: (major << 20) | minor,
            _pad: 0,
        })
    }
}

/// A process exec or exit seen by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: ProcEventKind,
    pub tgid: u32,
    pub ppid: u32,
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub comm: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEventKind {
    Exec,
    Exit,
}

/// Counters kept by the programs about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub events_lost: u64,
    pub dirty_ranges_lost: u64,
    pub tasks_map_full: u64,
    pub cgroups_map_full: u64,
    pub exec: u64,
    pub exit: u64,
    pub dirty_events: u64,
    /// Write faults whose mapping could not be looked up (a change there may be uncounted).
    pub fault_unknown: u64,
}

/// Run time of one program, from the kernel's BPF stats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    #[serde(rename = "program")]
    pub name: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Why the BPF programs could not be used. The message is what the operator reads once.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("this agent was built without BPF programs (GODWIT_BPF_STUB=1)")]
    NotBuilt,
    #[error(
        "the kernel exposes no BTF at /sys/kernel/btf/vmlinux (needs CONFIG_DEBUG_INFO_BTF): {0}"
    )]
    NoBtf(String),
    #[error(
        "not permitted to load BPF programs: run as root or grant CAP_BPF and CAP_PERFMON ({0})"
    )]
    Permission(String),
    #[error("the kernel refused BPF program {program}: {message}")]
    Program {
        program: &'static str,
        message: String,
    },
    #[error("cannot load the BPF object: {0}")]
    Load(String),
    #[error("BPF map {map}: {message}")]
    Map { map: &'static str, message: String },
}

fn is_permission(e: &dyn std::error::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("Operation not permitted") || text.contains("EPERM") {
            return true;
        }
        cur = err.source();
    }
    false
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let text = err.to_string();
        // Many errors repeat their source in their own message: say each part once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}

/// The loaded and attached programs with typed handles on their maps.
pub struct BpfProbe {
    tasks: PerCpuHashMap<MapData, u32, Counters>,
    cgroups: PerCpuHashMap<MapData, u64, Counters>,
    oncpu: PerCpuArray<MapData, OnCpu>,
    tracked: BpfHashMap<MapData, InodeKey, InodeStats>,
    stats: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    dirty: RingBuf<MapData>,
    /// The write-path programs attached (see [`WRITE_PATH`]).
    write_path: Vec<&'static str>,
    /// Keeps kernel.bpf_stats_enabled on while held.
    _stats_fd: Option<OwnedFd>,
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
}

impl std::fmt::Debug for BpfProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfProbe").finish_non_exhaustive()
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| BpfError::Map {
        map: name,
        message: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(|e| BpfError::Map {
        map: name,
        message: chain(&e),
    })
}

impl BpfProbe {
    /// Loads and attaches every program. With `stats`, turns on the kernel's BPF run-time
    /// statistics for as long as the probe lives.
    pub fn load(stats: bool) -> Result<BpfProbe, BpfError> {
        if OBJECT.is_empty() {
            return Err(BpfError::NotBuilt);
        }
        let btf = Btf::from_sys_fs().map_err(|e| BpfError::NoBtf(chain(&e)))?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            // `charged` is task-local storage, which aya has no typed handle for; only the
            // programs use it.
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(|e| {
                if is_permission(&e) {
                    BpfError::Permission(chain(&e))
                } else {
                    BpfError::Load(chain(&e))
                }
            })?;
        for name in PROGRAMS {
            let prog_err = |e: aya::programs::ProgramError| {
                if is_permission(&e) {
                    BpfError::Permission(chain(&e))
                } else {
                    BpfError::Program {
                        program: name,
                        message: chain(&e),
                    }
                }
            };
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or(BpfError::Program {
                    program: name,
                    message: "missing from the object".into(),
                })?
                .try_into()
                .map_err(prog_err)?;
            program.load(name, &btf).map_err(prog_err)?;
            program.attach().map_err(prog_err)?;
        }
        let mut write_path = Vec::new();
        for name in WRITE_PATH {
            let attached = (|| -> Result<(), String> {
                let program: &mut BtfTracePoint = ebpf
                    .program_mut(name)
                    .ok_or("missing from the object")?
                    .try_into()
                    .map_err(|e| chain(&e))?;
                program.load(name, &btf).map_err(|e| chain(&e))?;
                program.attach().map_err(|e| chain(&e))?;
                Ok(())
            })();
            match attached {
                Ok(()) => write_path.push(name),
                Err(e) => {
                    tracing::debug!(program = name, error = %e, "write-path program not attached")
                }
            }
        }
        if write_path.is_empty() {
            tracing::warn!(
                programs = ?WRITE_PATH,
                "no write-path program attached: the dirty rate is the page cache's folio \
                 volume, not the bytes written"
            );
        }
        let stats_fd = if stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot enable BPF run-time statistics");
                    None
                }
            }
        } else {
            None
        };
        let probe = BpfProbe {
            tasks: take_map(&mut ebpf, "tasks")?,
            cgroups: take_map(&mut ebpf, "cgroups")?,
            oncpu: take_map(&mut ebpf, "oncpu")?,
            tracked: take_map(&mut ebpf, "tracked_inodes")?,
            stats: take_map(&mut ebpf, "stats")?,
            events: take_map(&mut ebpf, "events")?,
            dirty: take_map(&mut ebpf, "dirty_ranges")?,
            write_path,
            _stats_fd: stats_fd,
            ebpf,
        };
        drop(btf);
        release_freed_heap();
        Ok(probe)
    }

    /// Whether writes are counted where they are written (a write-path program attached):
    /// then [`Counters::changed_pages`] is the pages changed, else only shared-mapping faults.
    pub fn counts_changes(&self) -> bool {
        !self.write_path.is_empty()
    }

    /// The write-path programs attached.
    pub fn write_path(&self) -> &[&'static str] {
        &self.write_path
    }

    /// The counters of every tgid the programs have seen, summed over CPUs.
    pub fn tasks(&self) -> Vec<(u32, Counters)> {
        self.tasks
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, sum(&v)))
            .collect()
    }

    /// One tgid's counters, summed over CPUs.
    pub fn task(&self, tgid: u32) -> Option<Counters> {
        self.tasks.get(&tgid, 0).ok().map(|v| sum(&v))
    }

    /// The counters of every cgroup id the programs have seen, summed over CPUs.
    pub fn cgroups(&self) -> Vec<(u64, Counters)> {
        self.cgroups
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, sum(&v)))
            .collect()
    }

    pub fn cgroup(&self, id: u64) -> Option<Counters> {
        self.cgroups.get(&id, 0).ok().map(|v| sum(&v))
    }

    /// What runs on each CPU now, with its runtime at switch-in: the slice not yet charged.
    pub fn on_cpu(&self) -> Vec<OnCpu> {
        self.oncpu
            .get(&0, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn forget_task(&mut self, tgid: u32) {
        let _ = self.tasks.remove(&tgid);
    }

    pub fn forget_cgroup(&mut self, id: u64) {
        let _ = self.cgroups.remove(&id);
    }

    /// Starts counting dirtied pages of the file at `path` and reporting their indices.
    pub fn track_inode(&mut self, path: &Path) -> io::Result<InodeKey> {
        let key = InodeKey::of_path(path)?;
        self.tracked
            .insert(key, InodeStats::default(), 0)
            .map_err(io::Error::other)?;
        Ok(key)
    }

    pub fn untrack_inode(&mut self, key: &InodeKey) {
        let _ = self.tracked.remove(key);
    }

    pub fn inode_stats(&self, key: &InodeKey) -> Option<InodeStats> {
        self.tracked.get(key, 0).ok()
    }

    /// Descriptors that become readable when a ring buffer has data.
    pub fn ring_fds(&self) -> [RawFd; 2] {
        [self.events.as_raw_fd(), self.dirty.as_raw_fd()]
    }

    /// Hands every pending exec/exit event to `f`; returns how many there were.
    pub fn drain_proc_events(&mut self, mut f: impl FnMut(ProcEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<RawProcEvent>() {
                continue;
            }
            // SAFETY: the ring buffer item holds at least size_of::<RawProcEvent>() bytes
            // written by the BPF program as a struct godwit_proc_event; read_unaligned copes
            // with any alignment of the item's start.
            let raw: RawProcEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RawProcEvent>()) };
            let kind = match raw.kind {
                EV_EXEC => ProcEventKind::Exec,
                EV_EXIT => ProcEventKind::Exit,
                _ => continue,
            };
            let len = raw.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
            f(ProcEvent {
                kind,
                tgid: raw.tgid,
                ppid: raw.ppid,
                cgroup_id: raw.cgroup_id,
                ts_ns: raw.ts_ns,
                comm: String::from_utf8_lossy(&raw.comm[..len]).into_owned(),
            });
            n += 1;
        }
        n
    }

    /// Hands every pending dirtied range of a tracked inode to `f`.
    pub fn drain_dirty_ranges(&mut self, mut f: impl FnMut(DirtyRange)) -> usize {
        let mut n = 0;
        while let Some(item) = self.dirty.next() {
            if item.len() < size_of::<DirtyRange>() {
                continue;
            }
            // SAFETY: as in drain_proc_events, for struct godwit_dirty_range.
            f(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DirtyRange>()) });
            n += 1;
        }
        n
    }

    /// The programs' own counters (lost events, full maps, event counts).
    pub fn kernel_stats(&self) -> KernelStats {
        let get =
            |idx: u32| -> u64 { self.stats.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        KernelStats {
            events_lost: get(STAT_EVENTS_LOST),
            dirty_ranges_lost: get(STAT_DIRTY_LOST),
            tasks_map_full: get(STAT_TASKS_FULL),
            cgroups_map_full: get(STAT_CGROUPS_FULL),
            exec: get(STAT_EXEC),
            exit: get(STAT_EXIT),
            dirty_events: get(STAT_DIRTY_EVENTS),
            fault_unknown: get(STAT_FAULT_UNKNOWN),
        }
    }

    /// Run time and run count of every program (zero unless BPF stats are enabled).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAMS
            .iter()
            .filter_map(|&name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

/// Parsing the kernel's BTF takes tens of MiB of heap for a moment; hand it back to the
/// system once the programs are loaded, or the agent's RSS keeps it for its whole life.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn sum(values: &[Counters]) -> Counters {
    let mut total = Counters::default();
    for v in values {
        total.cpu_ns += v.cpu_ns;
        total.dirtied_pages += v.dirtied_pages;
        total.write_faults += v.write_faults;
        total.changed_pages += v.changed_pages;
        if v.last_jiffies >= total.last_jiffies {
            total.last_jiffies = v.last_jiffies;
            if v.cgroup_id != 0 {
                total.cgroup_id = v.cgroup_id;
            }
        }
    }
    total
}

#[cfg(all(test, not(godwit_bpf_stub)))]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    include!(concat!(env!("OUT_DIR"), "/bpf_layout.rs"));

    #[test]
    fn layout_matches_c() {
        // (C struct, field or "sizeof", value), in the order layout.c prints them.
        macro_rules! size {
            ($c:literal, $t:ty) => {
                ($c, "sizeof", size_of::<$t>())
            };
        }
        macro_rules! field {
            ($c:literal, $t:ty, $f:ident) => {
                ($c, stringify!($f), offset_of!($t, $f))
            };
        }
        macro_rules! constant {
            ($name:literal, $v:expr) => {
                ("const", $name, $v as usize)
            };
        }
        let rust: &[(&str, &str, usize)] = &[
            size!("godwit_counters", Counters),
            field!("godwit_counters", Counters, cpu_ns),
            field!("godwit_counters", Counters, dirtied_pages),
            field!("godwit_counters", Counters, write_faults),
            field!("godwit_counters", Counters, cgroup_id),
            field!("godwit_counters", Counters, last_jiffies),
            field!("godwit_counters", Counters, changed_pages),
            size!("godwit_oncpu", OnCpu),
            field!("godwit_oncpu", OnCpu, runtime_base_ns),
            field!("godwit_oncpu", OnCpu, cgroup_id),
            field!("godwit_oncpu", OnCpu, tgid),
            field!("godwit_oncpu", OnCpu, pid),
            size!("godwit_inode_key", InodeKey),
            field!("godwit_inode_key", InodeKey, ino),
            field!("godwit_inode_key", InodeKey, dev),
            size!("godwit_inode_stats", InodeStats),
            field!("godwit_inode_stats", InodeStats, dirtied_pages),
            field!("godwit_inode_stats", InodeStats, events),
            size!("godwit_proc_event", RawProcEvent),
            field!("godwit_proc_event", RawProcEvent, kind),
            field!("godwit_proc_event", RawProcEvent, tgid),
            field!("godwit_proc_event", RawProcEvent, ppid),
            field!("godwit_proc_event", RawProcEvent, cgroup_id),
            field!("godwit_proc_event", RawProcEvent, ts_ns),
            field!("godwit_proc_event", RawProcEvent, comm),
            size!("godwit_dirty_range", DirtyRange),
            field!("godwit_dirty_range", DirtyRange, key),
            field!("godwit_dirty_range", DirtyRange, index),
            field!("godwit_dirty_range", DirtyRange, nr),
            field!("godwit_dirty_range", DirtyRange, tgid),
            constant!("GODWIT_COMM_LEN", COMM_LEN),
            constant!("GODWIT_EV_EXEC", EV_EXEC),
            constant!("GODWIT_EV_EXIT", EV_EXIT),
            constant!("GODWIT_STAT_EVENTS_LOST", STAT_EVENTS_LOST),
            constant!("GODWIT_STAT_DIRTY_LOST", STAT_DIRTY_LOST),
            constant!("GODWIT_STAT_TASKS_FULL", STAT_TASKS_FULL),
            constant!("GODWIT_STAT_CGROUPS_FULL", STAT_CGROUPS_FULL),
            constant!("GODWIT_STAT_EXEC", STAT_EXEC),
            constant!("GODWIT_STAT_EXIT", STAT_EXIT),
            constant!("GODWIT_STAT_DIRTY_EVENTS", STAT_DIRTY_EVENTS),
            constant!("GODWIT_STAT_FAULT_UNKNOWN", STAT_FAULT_UNKNOWN),
            constant!("GODWIT_STAT_MAX", STAT_MAX),
        ];
        assert_eq!(rust.len(), C_LAYOUT.len(), "every C item has a Rust mirror");
        for (c, r) in C_LAYOUT.iter().zip(rust) {
            assert_eq!(c, r, "C says {c:?}, Rust says {r:?}");
        }
    }

    #[test]
    fn inode_key_uses_kernel_dev_encoding() {
        let key = InodeKey::of_path(Path::new("/")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata("/").unwrap().dev();
        assert_eq!(key.dev >> 20, libc::major(dev));
        assert_eq!(key.dev & 0xfffff, libc::minor(dev));
    }
}
