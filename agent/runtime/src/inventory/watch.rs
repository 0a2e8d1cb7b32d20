//! Keeping the inventory current. A task resolves the patterns again whenever something may
//! have changed, and at least every second:
//!
//! - a new probe snapshot (the sampler republishes the process list within about 50 ms of an
//!   exec or exit event) or a change in the managed services: checked every 100 ms;
//! - a cgroup created or removed: inotify on every directory of the cgroup v2 tree (watches
//!   are per directory, so new directories get their own);
//! - a block device or network interface added or removed: netlink kobject uevents (a loop
//!   device attached with `losetup` is one).
//!
//! Without inotify or netlink the agent says so once and relies on the one-second rescan.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{
    parse_passwd, process_item, resolve, DeviceItem, InterfaceItem, Inventory, InventoryConfig,
    Observed,
};
use crate::service::Manager;
use godwit_probe::SharedSnapshot;

/// The latest inventory.
pub type SharedInventory = Arc<RwLock<Arc<Inventory>>>;

/// Where the task looks.
pub struct Sources {
    /// The sampler's snapshots.
    pub snapshot: SharedSnapshot,
    /// Managed services.
    pub services: Option<Arc<Manager>>,
    /// The cgroup v2 root, if any.
    pub cgroup_root: Option<PathBuf>,
    /// `/sys`.
    pub sys_root: PathBuf,
    /// `/proc`.
    pub proc_root: PathBuf,
    /// Where to write the inventory.
    pub file: PathBuf,
}

const TICK: Duration = Duration::from_millis(100);
const RESCAN: Duration = Duration::from_secs(1);

/// Starts the task on `tasks`; it ends when `cancel` fires.
pub fn spawn(
    cfg: InventoryConfig,
    src: Sources,
    shared: SharedInventory,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    let wake = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(root) = src.cgroup_root.clone() {
        if !cfg.container.is_empty() {
            start_thread("godwit-inotify", {
                let (wake, stop) = (wake.clone(), stop.clone());
                move || watch_cgroups(&root, &wake, &stop)
            });
        }
    }
    if !cfg.device.is_empty() || !cfg.interface.is_empty() {
        start_thread("godwit-uevent", {
            let (wake, stop) = (wake.clone(), stop.clone());
            move || watch_uevents(&wake, &stop)
        });
    }
    let Sources {
        snapshot,
        services: manager,
        cgroup_root,
        sys_root,
        proc_root,
        file,
    } = src;
    let mut scanner = Some(Scanner {
        cfg,
        cgroup_root,
        sys_root,
        proc_root,
        file,
        observed: Observed::default(),
        shared,
    });
    tasks.spawn(async move {
        let mut last_snapshot: Option<usize> = None;
        let mut last_services: Vec<(String, String)> = Vec::new();
        let mut last_scan = Instant::now() - RESCAN;
        // A second look shortly after an event: a removal's uevent can come before sysfs
        // has let go of the device.
        let mut followup: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        loop {
            let woken = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => false,
                _ = wake.notified() => true,
            };
            let snap = snapshot.read().unwrap_or_else(|e| e.into_inner()).clone();
            let snap_id = snap.as_ref().map(|s| Arc::as_ptr(s) as usize);
            let services: Vec<(String, String)> = manager
                .as_ref()
                .map(|m| {
                    m.list()
                        .into_iter()
                        .filter(|s| !matches!(s.state, crate::service::RunState::Stopped))
                        .map(|s| (s.name, s.cgroup))
                        .collect()
                })
                .unwrap_or_default();
            let due = followup.is_some_and(|t| Instant::now() >= t);
            let rescan = woken || due || last_scan.elapsed() >= RESCAN;
            if woken {
                followup = Some(Instant::now() + Duration::from_millis(200));
            } else if due {
                followup = None;
            }
            if !rescan && snap_id == last_snapshot && services == last_services {
                continue;
            }
            if rescan {
                last_scan = Instant::now();
            }
            last_snapshot = snap_id;
            last_services = services.clone();
            // Directory walks, /proc reads and the file write: off the async workers.
            let Some(mut s) = scanner.take() else { break };
            match tokio::task::spawn_blocking(move || {
                s.scan(rescan, snap, services);
                s
            })
            .await
            {
                Ok(s) => scanner = Some(s),
                Err(e) => {
                    warn!(error = %e, "inventory scan failed: the inventory is no longer kept");
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// What a scan reads and keeps between scans; moved onto a blocking thread for each.
struct Scanner {
    cfg: InventoryConfig,
    cgroup_root: Option<PathBuf>,
    sys_root: PathBuf,
    proc_root: PathBuf,
    file: PathBuf,
    observed: Observed,
    shared: SharedInventory,
}

impl Scanner {
    /// Lists cgroups, devices and interfaces again when `rescan`, resolves the patterns
    /// against them, `snap`'s processes and `services`, and publishes (and writes) the
    /// inventory when it changed.
    fn scan(
        &mut self,
        rescan: bool,
        snap: Option<Arc<godwit_probe::Snapshot>>,
        services: Vec<(String, String)>,
    ) {
        let cfg = &self.cfg;
        let observed = &mut self.observed;
        if rescan {
            observed.cgroups = match (&self.cgroup_root, cfg.container.is_empty()) {
                (Some(root), false) => list_cgroups(root),
                _ => Vec::new(),
            };
            observed.devices = if cfg.device.is_empty() {
                Vec::new()
            } else {
                list_devices(&self.sys_root)
            };
            observed.interfaces = if cfg.interface.is_empty() {
                Vec::new()
            } else {
                list_interfaces(&self.sys_root)
            };
        }
        let want_uid = cfg.process.iter().any(|p| p.user.is_some());
        observed.processes = snap
            .as_ref()
            .map(|s| {
                s.processes
                    .iter()
                    .map(|p| {
                        let uid = want_uid.then(|| read_uid(&self.proc_root, p.pid)).flatten();
                        process_item(p, uid)
                    })
                    .collect()
            })
            .unwrap_or_default();
        observed.services = services;
        let users: BTreeMap<String, u32> = if want_uid {
            parse_passwd(&std::fs::read_to_string("/etc/passwd").unwrap_or_default())
        } else {
            BTreeMap::new()
        };
        let inv = resolve(cfg, observed, &users, now_ms());
        let previous = self
            .shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if inv.same_as(&previous) && previous.resolved_at_unix_ms != 0 {
            return;
        }
        debug!("inventory changed");
        let inv = Arc::new(inv);
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = inv.clone();
        if let Err(e) = write_file(&self.file, &inv) {
            warn!(file = %self.file.display(), error = %e, "cannot write the inventory file");
        }
    }
}

fn start_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        warn!(error = %e, "cannot start {name}: the inventory relies on rescans");
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_file(path: &Path, inv: &Inventory) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(inv).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

fn read_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every cgroup below `root`, as paths from it (`/`, `/a`, `/a/b`).
fn list_cgroups(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, depth: u32, out: &mut Vec<String>) {
        if depth > 32 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(format!("/{}", rel.display()));
                }
                walk(root, &p, depth + 1, out);
            }
        }
    }
    let mut out = vec!["/".to_string()];
    walk(root, root, 0, &mut out);
    out.sort();
    out
}

fn list_devices(sys: &Path) -> Vec<DeviceItem> {
    let dir = sys.join("block");
    let mut out: Vec<DeviceItem> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let read = |f: &str| std::fs::read_to_string(dir.join(&name).join(f)).ok();
            let dev = read("dev")?.trim().to_string();
            let sectors: u64 = read("size")?.trim().parse().ok()?;
            // No medium (an unattached loop device, an empty drive): not a device to list.
            if sectors == 0 {
                return None;
            }
            Some(DeviceItem {
                name,
                dev,
                size_bytes: sectors * 512,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn list_interfaces(sys: &Path) -> Vec<InterfaceItem> {
    let dir = sys.join("class/net");
    let mut out: Vec<InterfaceItem> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let read = |f: &str| std::fs::read_to_string(dir.join(&name).join(f)).ok();
            Some(InterfaceItem {
                index: read("ifindex")?.trim().parse().ok()?,
                operstate: read("operstate").unwrap_or_default().trim().to_string(),
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Waits until `fd` is readable or 500 ms pass.
fn readable(fd: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 500) > 0 }
}

/// inotify on every directory of the cgroup tree: creations and removals wake the task.
fn watch_cgroups(root: &Path, wake: &Notify, stop: &AtomicBool) {
    // SAFETY: inotify_init1 with constant flags; checked below.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    if raw < 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "no inotify: cgroup changes are seen by the one-second rescan"
        );
        return;
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mask = libc::IN_CREATE | libc::IN_DELETE | libc::IN_ONLYDIR;
    let mut dirs: BTreeMap<i32, PathBuf> = BTreeMap::new();
    let add = |path: &Path, dirs: &mut BTreeMap<i32, PathBuf>| {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd >= 0 {
            dirs.insert(wd, path.to_path_buf());
        }
    };
    add(root, &mut dirs);
    for rel in list_cgroups(root).iter().skip(1) {
        add(&root.join(rel.trim_start_matches('/')), &mut dirs);
    }
    info!(
        directories = dirs.len(),
        "watching cgroups for the inventory"
    );
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if !readable(fd.as_raw_fd()) {
            continue;
        }
        // SAFETY: read into our buffer, bounded by its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        let header = std::mem::size_of::<libc::inotify_event>();
        while off + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let name_bytes = &buf[off + header..off + header + ev.len as usize];
            let name_len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            if ev.mask & libc::IN_CREATE != 0 && ev.mask & libc::IN_ISDIR != 0 {
                if let Some(parent) = dirs.get(&ev.wd).cloned() {
                    let p = parent.join(std::ffi::OsStr::from_bytes(&name_bytes[..name_len]));
                    add(&p, &mut dirs);
                }
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                dirs.remove(&ev.wd);
            }
            off += header + ev.len as usize;
        }
        wake.notify_one();
    }
}

/// Netlink kobject uevents: block and net devices coming and going wake the task.
fn watch_uevents(wake: &Notify, stop: &AtomicBool) {
    // SAFETY: socket(2) with constant arguments; checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if raw < 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "no uevent socket: device changes are seen by the one-second rescan"
        );
        return;
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_nl is plain data; zeroed is valid and then filled in.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = 1;
    // SAFETY: bind(2) on our socket with a correctly sized sockaddr_nl.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot join the uevent group: device changes are seen by the one-second rescan"
        );
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if !readable(fd.as_raw_fd()) {
            continue;
        }
        // SAFETY: recv into our buffer, bounded by its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let msg = &buf[..n as usize];
        let relevant = msg
            .split(|&b| b == 0)
            .any(|f| f == b"SUBSYSTEM=block" || f == b"SUBSYSTEM=net");
        if relevant {
            wake.notify_one();
        }
    }
}
