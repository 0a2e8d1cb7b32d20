//! Readers for the cgroup filesystem: where the hierarchies are mounted, per-cgroup CPU and
//! memory figures, and an index from cgroup id (what BPF programs see) to cgroup path.
//!
//! Handles both pure cgroup v2 hosts and the v1/v2 hybrid layout, where v2 is mounted at
//! `/sys/fs/cgroup/unified` without the memory controller and per-cgroup memory lives in the
//! v1 hierarchy.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Deepest level below the v2 root that [`CgroupIndex`] descends to.
const MAX_INDEX_DEPTH: usize = 32;
/// [`CgroupIndex::rescan`] walks the tree at most this often.
const MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Error finding the hierarchies or reading a cgroup file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mounts file lists no `cgroup2` file system.
    #[error("cgroup v2 is not mounted (no cgroup2 entry in {})", .mounts_file.display())]
    NotMounted { mounts_file: PathBuf },
    #[error("cannot read {}: {err}", .path.display())]
    Io { path: PathBuf, err: io::Error },
    /// The file was read but does not follow the kernel's format.
    #[error("malformed {}: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// Where the cgroup hierarchies are mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Mount point of the unified (v2) hierarchy.
    pub v2_root: PathBuf,
    /// True when v1 hierarchies are mounted besides v2.
    pub hybrid: bool,
    /// Mount point of the v1 hierarchy that holds the memory controller, if any.
    pub memory_v1_root: Option<PathBuf>,
    /// Mount point of the v1 hierarchy that holds the cpu controller, if any.
    pub cpu_v1_root: Option<PathBuf>,
}

/// CPU time of a cgroup and its descendants, from the v2 `cpu.stat`, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
}

/// Memory charged to a cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    pub current_bytes: u64,
    /// Usage minus inactive file pages, floored at 0 (cAdvisor's working set).
    pub working_set_bytes: u64,
}

impl MemoryUsage {
    fn new(current_bytes: u64, inactive_file_bytes: u64) -> Self {
        MemoryUsage {
            current_bytes,
            working_set_bytes: current_bytes.saturating_sub(inactive_file_bytes),
        }
    }
}

impl CgroupLayout {
    /// Finds the cgroup mounts in a file in `/proc/self/mounts` format
    /// (`cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0`). The first `cgroup2` entry is
    /// the v2 root; the first v1 `cgroup` entry whose options name `memory` is the v1 memory
    /// root.
    pub fn detect(mounts_file: &Path) -> Result<CgroupLayout, CgroupError> {
        let text = fs::read_to_string(mounts_file).map_err(|err| CgroupError::Io {
            path: mounts_file.to_owned(),
            err,
        })?;
        let mut v2_root = None;
        let mut hybrid = false;
        let mut memory_v1_root = None;
        let mut cpu_v1_root = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(mount_point), Some(&fs_type)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            match fs_type {
                "cgroup2" if v2_root.is_none() => {
                    v2_root = Some(PathBuf::from(unescape_mount_field(mount_point)));
                }
                "cgroup" => {
                    hybrid = true;
                    let options = fields.get(3).copied().unwrap_or_default();
                    if memory_v1_root.is_none() && options.split(',').any(|o| o == "memory") {
                        memory_v1_root = Some(PathBuf::from(unescape_mount_field(mount_point)));
                    }
                    if cpu_v1_root.is_none() && options.split(',').any(|o| o == "cpu") {
                        cpu_v1_root = Some(PathBuf::from(unescape_mount_field(mount_point)));
                    }
                }
                _ => {}
            }
        }
        let v2_root = v2_root.ok_or_else(|| CgroupError::NotMounted {
            mounts_file: mounts_file.to_owned(),
        })?;
        Ok(CgroupLayout {
            v2_root,
            hybrid,
            memory_v1_root,
            cpu_v1_root,
        })
    }

    /// The directory of a cgroup given its path relative to the v2 root (`/` is the root).
    pub fn dir(&self, rel_path: &str) -> PathBuf {
        join_rel(&self.v2_root, rel_path)
    }

    /// Memory of a cgroup: v2 `memory.current` and `memory.stat`, or, when the v2 tree has
    /// no memory controller on a hybrid host, the v1 memory hierarchy at the same relative
    /// path. A missing inactive-file figure counts as 0. `None` when neither source has the
    /// cgroup (e.g. the v2 root, which has no `memory.current`).
    pub fn read_memory(&self, rel_path: &str) -> Option<MemoryUsage> {
        let v2 = self.dir(rel_path);
        if let Some(current) = read_u64_file(&v2.join("memory.current")) {
            let inactive = read_stat_key(&v2.join("memory.stat"), "inactive_file").unwrap_or(0);
            return Some(MemoryUsage::new(current, inactive));
        }
        if !self.hybrid {
            return None;
        }
        let v1 = join_rel(self.memory_v1_root.as_deref()?, rel_path);
        let usage = read_u64_file(&v1.join("memory.usage_in_bytes"))?;
        let inactive = read_stat_key(&v1.join("memory.stat"), "total_inactive_file").unwrap_or(0);
        Some(MemoryUsage::new(usage, inactive))
    }
}

/// Parses the v2 `cpu.stat` of the cgroup directory `dir`. The three usage keys are present
/// whether or not the cpu controller is enabled.
pub fn read_cpu_stat(dir: &Path) -> Result<CpuStat, CgroupError> {
    let path = dir.join("cpu.stat");
    let text = fs::read_to_string(&path).map_err(|err| CgroupError::Io {
        path: path.clone(),
        err,
    })?;
    let (mut usage, mut user, mut system) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let slot = match key {
            "usage_usec" => &mut usage,
            "user_usec" => &mut user,
            "system_usec" => &mut system,
            _ => continue,
        };
        let value = value.trim().parse().map_err(|_| CgroupError::Malformed {
            path: path.clone(),
            reason: format!("{key} is not a number: {value:?}"),
        })?;
        *slot = Some(value);
    }
    let require = |value: Option<u64>, key: &str| {
        value.ok_or_else(|| CgroupError::Malformed {
            path: path.clone(),
            reason: format!("missing {key}"),
        })
    };
    Ok(CpuStat {
        usage_usec: require(usage, "usage_usec")?,
        user_usec: require(user, "user_usec")?,
        system_usec: require(system, "system_usec")?,
    })
}

/// The time some task of the cgroup `dir` was runnable but had no CPU (the v2 `cpu.pressure`
/// "some" total, which counts a CPU limit's throttling as well as contention), microseconds.
/// Time waited says the cgroup wanted more than it got, not how much more: a throttled
/// thread waits until its period ends whatever it lacked. `None` where the kernel keeps no
/// pressure figures (no PSI).
pub fn read_cpu_waited_usec(dir: &Path) -> Option<u64> {
    parse_pressure_some_total(&fs::read_to_string(dir.join("cpu.pressure")).ok()?)
}

/// The `total=` of a pressure file's `some` line.
fn parse_pressure_some_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// The cgroup id of a v2 cgroup directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns. The v2 root is 1.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    fs::metadata(dir)
        .map(|meta| meta.ino())
        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", dir.display())))
}

/// Maps cgroup ids to paths relative to the v2 root (`/` for the root,
/// `/system.slice/foo.service` below it). Directories that cannot be read or whose names are
/// not UTF-8 are skipped, and the walk stops 32 levels below the root.
///
/// The default index is empty and bound to no tree: `get` finds nothing and `rescan` does
/// nothing (for hosts without cgroup v2).
#[derive(Debug, Default)]
pub struct CgroupIndex {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    /// When the last walk started, successful or not.
    scanned_at: Option<Instant>,
}

impl CgroupIndex {
    /// Walks the v2 tree below `v2_root`. Fails only when the root itself cannot be read.
    pub fn scan(v2_root: &Path) -> io::Result<Self> {
        let scanned_at = Instant::now();
        Ok(CgroupIndex {
            root: Some(v2_root.to_owned()),
            paths: walk(v2_root)?,
            scanned_at: Some(scanned_at),
        })
    }

    /// The path of the cgroup with this id, if it existed at the last scan.
    pub fn get(&self, id: u64) -> Option<&str> {
        self.paths.get(&id).map(String::as_str)
    }

    /// Walks the tree again unless the last walk (or failed attempt) started less than a
    /// second ago, so it can be called on every lookup miss. Returns whether it walked. On
    /// error the old index stays.
    pub fn rescan(&mut self) -> io::Result<bool> {
        self.rescan_at(Instant::now())
    }

    fn rescan_at(&mut self, now: Instant) -> io::Result<bool> {
        let Some(root) = &self.root else {
            return Ok(false);
        };
        let due = self
            .scanned_at
            .is_none_or(|last| now.saturating_duration_since(last) >= MIN_RESCAN_INTERVAL);
        if !due {
            return Ok(false);
        }
        self.scanned_at = Some(now);
        self.paths = walk(root)?;
        Ok(true)
    }

    /// Number of cgroups indexed, the root included.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when nothing is indexed (never after a successful scan: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

fn walk(root: &Path) -> io::Result<HashMap<u64, String>> {
    let mut paths = HashMap::new();
    paths.insert(cgroup_id(root)?, "/".to_owned());
    let mut pending = vec![(root.to_owned(), String::new(), 0usize)];
    while let Some((dir, rel, depth)) = pending.pop() {
        if depth >= MAX_INDEX_DEPTH {
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // cgroupfs fills in d_type, so this costs no stat; symlinks are not followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let child_rel = format!("{rel}/{name}");
            paths.insert(meta.ino(), child_rel.clone());
            pending.push((entry.path(), child_rel, depth + 1));
        }
    }
    Ok(paths)
}

fn join_rel(root: &Path, rel_path: &str) -> PathBuf {
    let rel = rel_path.trim_start_matches('/');
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(rel)
    }
}

fn read_u64_file(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file such as `memory.stat`.
fn read_stat_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Undoes the octal escapes (`\040` for space, ...) that the kernel writes in mount files.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let octal = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
                .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
            if let Some(byte) = octal {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, contents) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        }
        dir
    }

    const HYBRID_MOUNTS: &str = "\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn detect_layouts() {
        let cases = [
            (
                "hybrid",
                HYBRID_MOUNTS,
                Ok(CgroupLayout {
                    v2_root: PathBuf::from("/sys/fs/cgroup/unified"),
                    hybrid: true,
                    memory_v1_root: Some(PathBuf::from("/sys/fs/cgroup/memory")),
                    cpu_v1_root: Some(PathBuf::from("/sys/fs/cgroup/cpu")),
                }),
            ),
            (
                "pure v2",
                "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n",
                Ok(CgroupLayout {
                    v2_root: PathBuf::from("/sys/fs/cgroup"),
                    hybrid: false,
                    memory_v1_root: None,
                    cpu_v1_root: None,
                }),
            ),
            (
                "v1 without memory, escaped mount point, first cgroup2 wins",
                "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n\
                 cgroup2 /other cgroup2 rw 0 0\n\
                 cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
                 cgroup /x cgroup rw,memory_recursiveprot 0 0\n\
                 short line\n",
                Ok(CgroupLayout {
                    v2_root: PathBuf::from("/mnt/my cg"),
                    hybrid: true,
                    memory_v1_root: None,
                    cpu_v1_root: None,
                }),
            ),
            (
                "v1 only",
                "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n",
                Err("cgroup v2 is not mounted"),
            ),
            ("empty", "", Err("cgroup v2 is not mounted")),
        ];
        for (label, mounts, want) in cases {
            let root = fixture(&[("mounts", mounts)]);
            let got = CgroupLayout::detect(&root.path().join("mounts"));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{label}"),
                (Err(err), Err(want)) => {
                    assert!(matches!(err, CgroupError::NotMounted { .. }), "{label}");
                    assert!(err.to_string().starts_with(want), "{label}: {err}");
                }
                (got, want) => panic!("{label}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn detect_names_a_missing_file() {
        let err = CgroupLayout::detect(Path::new("/nonexistent/mounts")).expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/mounts: "),
            "{err}"
        );
    }

    #[test]
    fn dir_joins_relative_paths() {
        let layout = CgroupLayout {
            v2_root: PathBuf::from("/sys/fs/cgroup"),
            hybrid: false,
            memory_v1_root: None,
            cpu_v1_root: None,
        };
        let cases = [
            ("/", "/sys/fs/cgroup"),
            ("", "/sys/fs/cgroup"),
            (
                "/system.slice/a.service",
                "/sys/fs/cgroup/system.slice/a.service",
            ),
            ("godwit/x", "/sys/fs/cgroup/godwit/x"),
        ];
        for (rel, want) in cases {
            assert_eq!(layout.dir(rel), PathBuf::from(want), "{rel}");
        }
    }

    #[test]
    fn cpu_pressure_parsing() {
        let text = "some avg10=9.85 avg60=41.53 avg300=22.10 total=28407955196\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure_some_total(text), Some(28_407_955_196));
        assert_eq!(parse_pressure_some_total("full avg10=0.00 total=5\n"), None);
        assert_eq!(parse_pressure_some_total("some avg10=1 total=x\n"), None);
        assert_eq!(parse_pressure_some_total(""), None);
    }

    #[test]
    fn cpu_stat_parsing() {
        let cases = [
            (
                "with controller",
                "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n\
                 nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
                Ok(CpuStat {
                    usage_usec: 1_500_000,
                    user_usec: 1_000_000,
                    system_usec: 500_000,
                }),
            ),
            (
                "core keys only",
                "usage_usec 7\nuser_usec 4\nsystem_usec 3\n",
                Ok(CpuStat {
                    usage_usec: 7,
                    user_usec: 4,
                    system_usec: 3,
                }),
            ),
            (
                "missing",
                "usage_usec 7\nuser_usec 4\n",
                Err("missing system_usec"),
            ),
            (
                "not a number",
                "usage_usec -1\nuser_usec 4\nsystem_usec 3\n",
                Err("usage_usec is not a number: \"-1\""),
            ),
        ];
        for (label, text, want) in cases {
            let root = fixture(&[("cg/cpu.stat", text)]);
            let dir = root.path().join("cg");
            let got = read_cpu_stat(&dir);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{label}"),
                (Err(err), Err(reason)) => assert_eq!(
                    err.to_string(),
                    format!("malformed {}: {reason}", dir.join("cpu.stat").display()),
                    "{label}"
                ),
                (got, want) => panic!("{label}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn memory_from_v2_or_v1() {
        let root = fixture(&[
            // Pure v2 cgroup.
            ("v2/app/memory.current", "1048576\n"),
            (
                "v2/app/memory.stat",
                "anon 524288\nfile 524288\ninactive_file 262144\n",
            ),
            // More inactive file pages than usage: floored at 0.
            ("v2/odd/memory.current", "100\n"),
            ("v2/odd/memory.stat", "inactive_file 4096\n"),
            // No memory.stat: working set is the whole usage.
            ("v2/nostat/memory.current", "8192\n"),
            // Hybrid: v2 directory without memory files, v1 has them.
            (
                "v2/svc/cpu.stat",
                "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
            ),
            ("v1/svc/memory.usage_in_bytes", "2097152\n"),
            (
                "v1/svc/memory.stat",
                "cache 1048576\ninactive_file 1\ntotal_inactive_file 524288\n",
            ),
            ("v1/memory.usage_in_bytes", "999\n"),
        ]);
        let v2_root = root.path().join("v2");
        let hybrid = CgroupLayout {
            v2_root: v2_root.clone(),
            hybrid: true,
            memory_v1_root: Some(root.path().join("v1")),
            cpu_v1_root: None,
        };
        let pure = CgroupLayout {
            v2_root,
            hybrid: false,
            memory_v1_root: None,
            cpu_v1_root: None,
        };
        let usage = |current_bytes, working_set_bytes| {
            Some(MemoryUsage {
                current_bytes,
                working_set_bytes,
            })
        };
        let cases = [
            (&pure, "/app", usage(1_048_576, 786_432)),
            (&pure, "/odd", usage(100, 0)),
            (&pure, "/nostat", usage(8192, 8192)),
            (&pure, "/svc", None),
            (&pure, "/missing", None),
            (&hybrid, "/app", usage(1_048_576, 786_432)),
            (&hybrid, "/svc", usage(2_097_152, 1_572_864)),
            (&hybrid, "/", usage(999, 999)),
            (&hybrid, "/missing", None),
        ];
        for (layout, rel, want) in cases {
            assert_eq!(
                layout.read_memory(rel),
                want,
                "hybrid={} {rel}",
                layout.hybrid
            );
        }
    }

    #[test]
    fn index_maps_inodes_to_paths() {
        let root = tempfile::tempdir().expect("tempdir");
        let dirs = [
            "system.slice/foo.service",
            "system.slice/docker-abc.scope/sub",
            "godwit/redis",
        ];
        for dir in dirs {
            fs::create_dir_all(root.path().join(dir)).expect("mkdir");
        }
        fs::write(root.path().join("system.slice/cgroup.procs"), "").expect("write");

        let mut index = CgroupIndex::scan(root.path()).expect("scan");
        let expected = [
            ("", "/"),
            ("system.slice", "/system.slice"),
            ("system.slice/foo.service", "/system.slice/foo.service"),
            (
                "system.slice/docker-abc.scope",
                "/system.slice/docker-abc.scope",
            ),
            (
                "system.slice/docker-abc.scope/sub",
                "/system.slice/docker-abc.scope/sub",
            ),
            ("godwit", "/godwit"),
            ("godwit/redis", "/godwit/redis"),
        ];
        for (dir, rel) in expected {
            let id = cgroup_id(&root.path().join(dir)).expect("id");
            assert_eq!(index.get(id), Some(rel), "{dir}");
        }
        assert_eq!(index.len(), expected.len());
        assert!(!index.is_empty());

        // A new cgroup shows up only once a rescan is allowed.
        fs::create_dir(root.path().join("godwit/new")).expect("mkdir");
        let new_id = cgroup_id(&root.path().join("godwit/new")).expect("id");
        assert!(!index.rescan().expect("rescan"));
        assert_eq!(index.get(new_id), None);
        let later = index.scanned_at.expect("scanned") + MIN_RESCAN_INTERVAL;
        assert!(index.rescan_at(later).expect("rescan"));
        assert_eq!(index.get(new_id), Some("/godwit/new"));
        assert_eq!(index.len(), expected.len() + 1);

        // A failed walk keeps the old index and still counts against the rate limit.
        let moved = root.path().with_extension("moved");
        fs::rename(root.path(), &moved).expect("rename");
        let even_later = later + MIN_RESCAN_INTERVAL;
        assert!(index.rescan_at(even_later).is_err());
        assert_eq!(index.get(new_id), Some("/godwit/new"));
        assert!(!index.rescan_at(even_later).expect("rate limited"));
        fs::rename(&moved, root.path()).expect("rename back");
    }

    #[test]
    fn index_depth_is_bounded() {
        let root = tempfile::tempdir().expect("tempdir");
        let deep: PathBuf = (0..40).map(|i| format!("d{i}")).collect();
        fs::create_dir_all(root.path().join(&deep)).expect("mkdir");
        let index = CgroupIndex::scan(root.path()).expect("scan");
        // The root plus 32 levels.
        assert_eq!(index.len(), 33);
        let at_32: PathBuf = (0..32).map(|i| format!("d{i}")).collect();
        let id = cgroup_id(&root.path().join(&at_32)).expect("id");
        let want: String = (0..32).map(|i| format!("/d{i}")).collect();
        assert_eq!(index.get(id), Some(want.as_str()));
    }

    #[test]
    fn default_index_is_empty_and_inert() {
        let mut index = CgroupIndex::default();
        assert!(index.is_empty());
        assert_eq!(index.get(1), None);
        assert!(!index.rescan().expect("rescan"));
    }

    #[test]
    fn index_fails_without_root() {
        let err = CgroupIndex::scan(Path::new("/nonexistent/cgroup")).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/cgroup"));
    }
}
