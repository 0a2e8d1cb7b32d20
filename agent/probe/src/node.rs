//! Node-wide totals from procfs and sysfs: CPU time by mode, memory, network and disk
//! counters, pages dirtied, hostname.
//!
//! Every reader takes its roots (normally `/proc` and `/sys`) so tests can point them at
//! fixture trees. Errors name the file they came from; malformed contents give
//! [`io::ErrorKind::InvalidData`].

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use super::model::CpuModes;

/// `/proc/diskstats` counts 512-byte sectors whatever the device's sector size.
const SECTOR_BYTES: u64 = 512;

// Positions in a `/proc/diskstats` line (see the kernel's Documentation/admin-guide/iostats.rst).
const DISK_NAME: usize = 2;
const DISK_SECTORS_READ: usize = 5;
const DISK_SECTORS_WRITTEN: usize = 9;

// Positions after the `iface:` prefix of a `/proc/net/dev` line.
const NET_RX_BYTES: usize = 0;
const NET_TX_BYTES: usize = 8;

/// Cumulative CPU time of all CPUs by mode, in clock ticks, from the `cpu` line of
/// `/proc/stat`. Guest time is already included in user and nice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

/// Memory figures of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    /// `MemAvailable`; `MemFree + Cached` on kernels older than 3.14 that lack it.
    pub available_bytes: u64,
    pub free_bytes: u64,
    pub cached_bytes: u64,
    pub dirty_bytes: u64,
    pub writeback_bytes: u64,
}

/// Byte counters of one network interface, from `/proc/net/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Byte counters of one whole block device, from `/proc/diskstats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCounters {
    pub name: String,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// Reads the aggregate `cpu` line of `/proc/stat`. Fields a kernel does not print count as 0
/// (user, nice, system and idle are required).
pub fn read_cpu_times(proc_root: &Path) -> io::Result<CpuTimes> {
    let path = proc_root.join("stat");
    let text = read(&path)?;
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some("cpu"))
        .ok_or_else(|| invalid_data(&path, "no aggregate cpu line"))?;
    let mut values = [0u64; 8];
    let mut count = 0;
    for (slot, field) in values.iter_mut().zip(line.split_whitespace().skip(1)) {
        *slot = parse_number(&path, field, "cpu time")?;
        count += 1;
    }
    if count < 4 {
        return Err(invalid_data(&path, "cpu line has fewer than 4 fields"));
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values;
    Ok(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
    })
}

/// Number of online CPUs: the `cpuN` lines of `/proc/stat`.
pub fn cpu_count(proc_root: &Path) -> io::Result<u32> {
    let path = proc_root.join("stat");
    let text = read(&path)?;
    let count = text
        .lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    u32::try_from(count).map_err(|_| invalid_data(&path, "too many cpu lines"))
}

/// Fraction of CPU time spent in each mode between two readings. A counter that went
/// backwards counts as 0; when no time passed at all the CPUs count as idle.
pub fn modes_between(prev: &CpuTimes, now: &CpuTimes) -> CpuModes {
    let delta = |a: u64, b: u64| b.saturating_sub(a) as f64;
    let d = CpuModes {
        user: delta(prev.user, now.user),
        nice: delta(prev.nice, now.nice),
        system: delta(prev.system, now.system),
        idle: delta(prev.idle, now.idle),
        iowait: delta(prev.iowait, now.iowait),
        irq: delta(prev.irq, now.irq),
        softirq: delta(prev.softirq, now.softirq),
        steal: delta(prev.steal, now.steal),
    };
    let total = d.user + d.nice + d.system + d.idle + d.iowait + d.irq + d.softirq + d.steal;
    if total <= 0.0 {
        return CpuModes {
            idle: 1.0,
            ..CpuModes::default()
        };
    }
    CpuModes {
        user: d.user / total,
        nice: d.nice / total,
        system: d.system / total,
        idle: d.idle / total,
        iowait: d.iowait / total,
        irq: d.irq / total,
        softirq: d.softirq / total,
        steal: d.steal / total,
    }
}

/// Reads `/proc/meminfo`. `MemTotal` and `MemFree` are required; other missing keys count
/// as 0.
pub fn read_meminfo(proc_root: &Path) -> io::Result<MemInfo> {
    let path = proc_root.join("meminfo");
    let text = read(&path)?;
    let (mut total, mut available, mut free) = (None, None, None);
    let (mut cached, mut dirty, mut writeback) = (None, None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            "MemFree" => &mut free,
            "Cached" => &mut cached,
            "Dirty" => &mut dirty,
            "Writeback" => &mut writeback,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value: u64 = parse_number(&path, words.next().unwrap_or_default(), key)?;
        let bytes = match words.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(unit) => return Err(invalid_data(&path, &format!("{key} has unit {unit:?}"))),
        };
        *slot = Some(bytes);
    }
    let require = |value: Option<u64>, key: &str| {
        value.ok_or_else(|| invalid_data(&path, &format!("missing {key}")))
    };
    let free_bytes = require(free, "MemFree")?;
    let cached_bytes = cached.unwrap_or(0);
    Ok(MemInfo {
        total_bytes: require(total, "MemTotal")?,
        available_bytes: available.unwrap_or_else(|| free_bytes.saturating_add(cached_bytes)),
        free_bytes,
        cached_bytes,
        dirty_bytes: dirty.unwrap_or(0),
        writeback_bytes: writeback.unwrap_or(0),
    })
}

/// Byte counters of every interface in `/proc/net/dev`, loopback included, in file order.
pub fn read_net_dev(proc_root: &Path) -> io::Result<Vec<NetDevCounters>> {
    let path = proc_root.join("net/dev");
    let text = read(&path)?;
    let mut interfaces = Vec::new();
    // Two header lines, then `  name: rx_bytes rx_packets ... tx_bytes ...`; a large first
    // counter can touch the colon.
    for line in text.lines().skip(2) {
        let Some((name, counters)) = line.rsplit_once(':') else {
            return Err(invalid_data(&path, &format!("no ':' in {line:?}")));
        };
        let fields: Vec<&str> = counters.split_whitespace().collect();
        let field = |index: usize, what: &str| -> io::Result<u64> {
            let text = fields
                .get(index)
                .ok_or_else(|| invalid_data(&path, &format!("missing {what} in {line:?}")))?;
            parse_number(&path, text, what)
        };
        interfaces.push(NetDevCounters {
            name: name.trim().to_owned(),
            rx_bytes: field(NET_RX_BYTES, "rx_bytes")?,
            tx_bytes: field(NET_TX_BYTES, "tx_bytes")?,
        });
    }
    Ok(interfaces)
}

/// Byte counters of whole block devices from `/proc/diskstats`: only devices listed in
/// `sys_root/block` (so no partitions), and no `ram*` or `loop*` device that has done no
/// I/O. File order.
pub fn read_disks(proc_root: &Path, sys_root: &Path) -> io::Result<Vec<DiskCounters>> {
    let block = sys_root.join("block");
    let whole: HashSet<String> = fs::read_dir(&block)
        .map_err(|e| annotate(&block, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();

    let path = proc_root.join("diskstats");
    let text = read(&path)?;
    let mut disks = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() <= DISK_SECTORS_WRITTEN {
            return Err(invalid_data(&path, &format!("short line {line:?}")));
        }
        let name = fields[DISK_NAME];
        // Names with a slash (cciss/c0d0) appear in sysfs with a '!' instead.
        if !whole.contains(&name.replace('/', "!")) {
            continue;
        }
        let read_sectors: u64 = parse_number(&path, fields[DISK_SECTORS_READ], "sectors read")?;
        let written_sectors: u64 =
            parse_number(&path, fields[DISK_SECTORS_WRITTEN], "sectors written")?;
        let idle_virtual = (name.starts_with("ram") || name.starts_with("loop"))
            && read_sectors == 0
            && written_sectors == 0;
        if idle_virtual {
            continue;
        }
        disks.push(DiskCounters {
            name: name.to_owned(),
            read_bytes: read_sectors.saturating_mul(SECTOR_BYTES),
            written_bytes: written_sectors.saturating_mul(SECTOR_BYTES),
        });
    }
    Ok(disks)
}

/// Pages dirtied since boot, all processes together (`nr_dirtied` of `/proc/vmstat`).
pub fn read_vmstat_nr_dirtied(proc_root: &Path) -> io::Result<u64> {
    let path = proc_root.join("vmstat");
    let text = read(&path)?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("nr_dirtied "))
        .ok_or_else(|| invalid_data(&path, "missing nr_dirtied"))?;
    parse_number(&path, value.trim(), "nr_dirtied")
}

/// The host name, from `sys/kernel/hostname` under the proc root.
pub fn read_hostname(proc_root: &Path) -> io::Result<String> {
    let path = proc_root.join("sys/kernel/hostname");
    Ok(read(&path)?.trim().to_owned())
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| annotate(path, e))
}

fn parse_number(path: &Path, text: &str, what: &str) -> io::Result<u64> {
    text.parse()
        .map_err(|_| invalid_data(path, &format!("{what} is not a number: {text:?}")))
}

/// Keeps the kind of an I/O error and puts the path in its message.
fn annotate(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

fn invalid_data(path: &Path, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed {}: {reason}", path.display()),
    )
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

    /// Checks that an error is InvalidData and its message names `file` and says `reason`.
    fn assert_malformed(err: &io::Error, root: &Path, file: &str, reason: &str) {
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let want = format!("malformed {}: {reason}", root.join(file).display());
        assert_eq!(err.to_string(), want);
    }

    const STAT: &str = "\
cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
cpu1 1335136 32938 530883 13330929 4048 0 2391 0 22900 0
intr 1462898 0 0
ctxt 5183937
btime 1700000000
cpuset_hint 1
";

    #[test]
    fn cpu_times_and_count() {
        let root = fixture(&[("stat", STAT)]);
        assert_eq!(
            read_cpu_times(root.path()).expect("times"),
            CpuTimes {
                user: 10132153,
                nice: 290696,
                system: 3084719,
                idle: 46828483,
                iowait: 16683,
                irq: 0,
                softirq: 25195,
                steal: 0,
            }
        );
        assert_eq!(cpu_count(root.path()).expect("count"), 2);
    }

    #[test]
    fn cpu_times_malformed() {
        let cases = [
            ("intr 1\n", "no aggregate cpu line"),
            ("cpu  1 2 3\n", "cpu line has fewer than 4 fields"),
            ("cpu  1 2 x 4\n", "cpu time is not a number: \"x\""),
        ];
        for (text, reason) in cases {
            let root = fixture(&[("stat", text)]);
            let err = read_cpu_times(root.path()).expect_err(text);
            assert_malformed(&err, root.path(), "stat", reason);
        }
        // An old kernel without steal and later fields.
        let root = fixture(&[("stat", "cpu 1 2 3 4\n")]);
        let times = read_cpu_times(root.path()).expect("short");
        assert_eq!((times.user, times.idle, times.steal), (1, 4, 0));
    }

    #[test]
    fn modes() {
        let t = |user, system, idle, iowait, steal| CpuTimes {
            user,
            system,
            idle,
            iowait,
            steal,
            ..CpuTimes::default()
        };
        let cases = [
            (
                "split",
                t(100, 50, 1000, 0, 0),
                t(200, 100, 1200, 25, 25),
                CpuModes {
                    user: 0.25,
                    system: 0.125,
                    idle: 0.5,
                    iowait: 0.0625,
                    steal: 0.0625,
                    ..CpuModes::default()
                },
            ),
            (
                "no time passed",
                t(5, 5, 5, 5, 5),
                t(5, 5, 5, 5, 5),
                CpuModes {
                    idle: 1.0,
                    ..CpuModes::default()
                },
            ),
            (
                "counter went backwards",
                t(100, 0, 100, 0, 0),
                t(50, 0, 200, 0, 0),
                CpuModes {
                    idle: 1.0,
                    ..CpuModes::default()
                },
            ),
            (
                "huge counters",
                t(0, 0, 0, 0, 0),
                t(u64::MAX, 0, u64::MAX, 0, 0),
                CpuModes {
                    user: 0.5,
                    idle: 0.5,
                    ..CpuModes::default()
                },
            ),
        ];
        for (label, prev, now, want) in cases {
            let got = modes_between(&prev, &now);
            assert_eq!(got, want, "{label}");
        }
        let split = modes_between(&t(100, 50, 1000, 0, 0), &t(200, 100, 1200, 25, 25));
        assert_eq!(split.utilization(), 0.4375);
    }

    const MEMINFO: &str = "\
MemTotal:       16318412 kB
MemFree:         1234567 kB
MemAvailable:    9876543 kB
Buffers:          345678 kB
Cached:          7654321 kB
SwapCached:            0 kB
Dirty:              1024 kB
Writeback:             8 kB
HugePages_Total:       0
";

    #[test]
    fn meminfo() {
        let root = fixture(&[("meminfo", MEMINFO)]);
        assert_eq!(
            read_meminfo(root.path()).expect("meminfo"),
            MemInfo {
                total_bytes: 16318412 * 1024,
                available_bytes: 9876543 * 1024,
                free_bytes: 1234567 * 1024,
                cached_bytes: 7654321 * 1024,
                dirty_bytes: 1024 * 1024,
                writeback_bytes: 8 * 1024,
            }
        );

        let old_kernel = "MemTotal: 100 kB\nMemFree: 10 kB\nCached: 20 kB\n";
        let root = fixture(&[("meminfo", old_kernel)]);
        let info = read_meminfo(root.path()).expect("old kernel");
        assert_eq!(info.available_bytes, 30 * 1024);

        let cases = [
            ("MemFree: 10 kB\n", "missing MemTotal"),
            ("MemTotal: lots kB\n", "MemTotal is not a number: \"lots\""),
            ("MemTotal:\n", "MemTotal is not a number: \"\""),
            ("MemTotal: 1 MB\n", "MemTotal has unit \"MB\""),
        ];
        for (text, reason) in cases {
            let root = fixture(&[("meminfo", text)]);
            let err = read_meminfo(root.path()).expect_err(text);
            assert_malformed(&err, root.path(), "meminfo", reason);
        }
    }

    #[test]
    fn net_dev() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0:9876543210 5000    0    0    0     0          0        12 55555555    4000    0    0    0     0       0          0
";
        let root = fixture(&[("net/dev", text)]);
        assert_eq!(
            read_net_dev(root.path()).expect("net dev"),
            vec![
                NetDevCounters {
                    name: "lo".to_owned(),
                    rx_bytes: 123456,
                    tx_bytes: 123456,
                },
                NetDevCounters {
                    name: "eth0".to_owned(),
                    rx_bytes: 9876543210,
                    tx_bytes: 55555555,
                },
            ]
        );

        let cases = [
            ("h1\nh2\n  eth0 1 2 3\n", "no ':' in \"  eth0 1 2 3\""),
            (
                "h1\nh2\n  eth0: 1 2 3\n",
                "missing tx_bytes in \"  eth0: 1 2 3\"",
            ),
            (
                "h1\nh2\n  eth0: x 2 3 4 5 6 7 8 9\n",
                "rx_bytes is not a number: \"x\"",
            ),
        ];
        for (text, reason) in cases {
            let root = fixture(&[("net/dev", text)]);
            let err = read_net_dev(root.path()).expect_err(text);
            assert_malformed(&err, root.path(), "net/dev", reason);
        }
    }

    #[test]
    fn disks() {
        let diskstats = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   7       1 loop1 10 0 80 5 0 0 0 0 0 4 5 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 1000 10 20000 300 500 20 8000 400 0 600 700 0 0 0 0 0 0
   8       1 sda1 900 10 18000 250 400 20 7000 350 0 500 600 0 0 0 0 0 0
 259       0 nvme0n1 50 0 400 1 60 0 512 2 0 3 3 0 0 0 0 0 0
 104       0 cciss/c0d0 1 0 2 0 0 0 4 0 0 0 0
 253       0 dm-0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";
        let root = fixture(&[
            ("proc/diskstats", diskstats),
            ("sys/block/loop0/size", "0"),
            ("sys/block/loop1/size", "0"),
            ("sys/block/ram0/size", "0"),
            ("sys/block/sda/size", "0"),
            ("sys/block/nvme0n1/size", "0"),
            ("sys/block/cciss!c0d0/size", "0"),
            ("sys/block/dm-0/size", "0"),
        ]);
        let disk = |name: &str, read_bytes, written_bytes| DiskCounters {
            name: name.to_owned(),
            read_bytes,
            written_bytes,
        };
        assert_eq!(
            read_disks(&root.path().join("proc"), &root.path().join("sys")).expect("disks"),
            vec![
                disk("loop1", 80 * 512, 0),
                disk("sda", 20000 * 512, 8000 * 512),
                disk("nvme0n1", 400 * 512, 512 * 512),
                disk("cciss/c0d0", 2 * 512, 4 * 512),
                // Idle device-mapper devices are real disks: kept.
                disk("dm-0", 0, 0),
            ]
        );

        let root = fixture(&[
            ("proc/diskstats", "8 0 sda 1 2 3\n"),
            ("sys/block/sda/size", "0"),
        ]);
        let err =
            read_disks(&root.path().join("proc"), &root.path().join("sys")).expect_err("short");
        assert_malformed(
            &err,
            &root.path().join("proc"),
            "diskstats",
            "short line \"8 0 sda 1 2 3\"",
        );

        let root = fixture(&[("proc/diskstats", "")]);
        let err =
            read_disks(&root.path().join("proc"), &root.path().join("sys")).expect_err("no sys");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("sys/block"), "{err}");
    }

    #[test]
    fn vmstat_nr_dirtied() {
        let cases = [
            (
                "nr_free_pages 1000\nnr_dirty 12\nnr_dirtied 123456\nnr_written 120000\n",
                Ok(123456),
            ),
            ("nr_dirty 12\nnr_dirtied_x 5\n", Err("missing nr_dirtied")),
            ("nr_dirtied -1\n", Err("nr_dirtied is not a number: \"-1\"")),
        ];
        for (text, want) in cases {
            let root = fixture(&[("vmstat", text)]);
            match (read_vmstat_nr_dirtied(root.path()), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(err), Err(reason)) => assert_malformed(&err, root.path(), "vmstat", reason),
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn hostname() {
        let root = fixture(&[("sys/kernel/hostname", "edge-01\n")]);
        assert_eq!(read_hostname(root.path()).expect("hostname"), "edge-01");
        let err = read_hostname(Path::new("/nonexistent")).expect_err("missing");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with("/nonexistent/sys/kernel/hostname: "),
            "{err}"
        );
    }
}
