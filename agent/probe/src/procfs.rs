//! Readers for `/proc`: the process list, per-process `stat`, `io`, `cmdline`, `comm` and
//! `cgroup`, and the agent's own CPU time and resident memory.
//!
//! Every reader takes the proc root (normally `/proc`) so tests can point it at a fixture tree.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The scheduler's runtime (`se.sum_exec_runtime`, ns) of one thread, from the first field
/// of `/proc/TGID/task/TID/schedstat`; up to date even while the thread runs.
pub fn read_thread_runtime_ns(proc_root: &Path, tgid: u32, tid: u32) -> io::Result<u64> {
    let path = proc_root.join(format!("{tgid}/task/{tid}/schedstat"));
    let text = fs::read_to_string(&path)?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no runtime", path.display()),
            )
        })
}

/// Most bytes of `/proc/PID/cmdline` that [`read_cmdline`] returns.
const CMDLINE_MAX_BYTES: usize = 4096;

/// Used when `sysconf` cannot tell (it always can on Linux).
const FALLBACK_CLOCK_TICKS: u64 = 100;
const FALLBACK_PAGE_SIZE: u64 = 4096;

// Positions in `/proc/PID/stat` after the closing parenthesis of comm: field N of proc(5)
// (1-based) is at index N - 3.
const STAT_STATE: usize = 0;
const STAT_PPID: usize = 1;
const STAT_MINFLT: usize = 7;
const STAT_MAJFLT: usize = 9;
const STAT_UTIME: usize = 11;
const STAT_STIME: usize = 12;
const STAT_NUM_THREADS: usize = 17;
const STAT_STARTTIME: usize = 19;
const STAT_RSS: usize = 21;

/// Error reading or parsing a per-process file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read; see [`ProcError::is_gone`] for processes that exited.
    #[error("cannot read {}: {err}", .path.display())]
    Io { path: PathBuf, err: io::Error },
    /// The file was read but does not follow the kernel's format.
    #[error("malformed {}: {err}", .path.display())]
    Malformed { path: PathBuf, err: ParseError },
}

impl ProcError {
    /// True when the process exited before or while its file was read, which is routine
    /// for a sampler walking `/proc`.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { err, .. } => {
                err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
            }
            ProcError::Malformed { .. } => false,
        }
    }
}

/// Text that does not follow the format of the `/proc` file it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// The fields of `/proc/PID/stat` the agent uses. Times are in clock ticks
/// ([`clock_ticks_per_second`]), `rss_pages` in pages ([`page_size`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    /// Start time after boot.
    pub starttime_ticks: u64,
    pub rss_pages: u64,
    pub minflt: u64,
    pub majflt: u64,
    pub num_threads: u32,
}

/// Storage I/O counters of `/proc/PID/io`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
}

/// Where a process sits in the cgroup hierarchies, from `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMembership {
    /// Path in the unified (v2) hierarchy, e.g. `/system.slice/foo.service`.
    pub v2_path: Option<String>,
    /// Path in the v1 hierarchy that holds the `memory` controller, when there is one.
    pub memory_v1_path: Option<String>,
}

/// The agent's own resource use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfUsage {
    /// User plus system CPU time since the agent started.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Process ids (thread-group ids) listed in `proc_root`, ascending.
pub fn list_pids(proc_root: &Path) -> io::Result<Vec<u32>> {
    let entries = fs::read_dir(proc_root).map_err(|e| annotate(proc_root, e))?;
    let mut pids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| annotate(proc_root, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(pid) = name.parse::<u32>() {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Reads and parses `/proc/PID/stat`.
pub fn read_stat(proc_root: &Path, pid: u32) -> Result<PidStat, ProcError> {
    let path = pid_file(proc_root, pid, "stat");
    let text = read_lossy(&path)?;
    parse_stat(&text).map_err(|err| ProcError::Malformed { path, err })
}

/// Parses the contents of `/proc/PID/stat`. comm may hold spaces and parentheses, so it
/// spans from the first `(` to the last `)`.
pub fn parse_stat(text: &str) -> Result<PidStat, ParseError> {
    let open = text
        .find('(')
        .ok_or_else(|| ParseError("no '(' before comm".to_owned()))?;
    let close = text
        .rfind(')')
        .filter(|&close| close > open)
        .ok_or_else(|| ParseError("no ')' after comm".to_owned()))?;
    let pid = parse_field(text[..open].trim(), "pid")?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let state = fields
        .get(STAT_STATE)
        .and_then(|s| s.chars().next())
        .ok_or_else(|| ParseError("missing field state".to_owned()))?;
    Ok(PidStat {
        pid,
        comm: text[open + 1..close].to_owned(),
        state,
        ppid: stat_field(&fields, STAT_PPID, "ppid")?,
        utime_ticks: stat_field(&fields, STAT_UTIME, "utime")?,
        stime_ticks: stat_field(&fields, STAT_STIME, "stime")?,
        starttime_ticks: stat_field(&fields, STAT_STARTTIME, "starttime")?,
        rss_pages: stat_field(&fields, STAT_RSS, "rss")?,
        minflt: stat_field(&fields, STAT_MINFLT, "minflt")?,
        majflt: stat_field(&fields, STAT_MAJFLT, "majflt")?,
        num_threads: stat_field(&fields, STAT_NUM_THREADS, "num_threads")?,
    })
}

/// Reads `/proc/PID/io` (readable by root or the process owner only).
pub fn read_io(proc_root: &Path, pid: u32) -> Result<PidIo, ProcError> {
    let path = pid_file(proc_root, pid, "io");
    let text = read_lossy(&path)?;
    parse_io(&text).map_err(|err| ProcError::Malformed { path, err })
}

fn parse_io(text: &str) -> Result<PidIo, ParseError> {
    let (mut read, mut write, mut cancelled) = (None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "read_bytes" => &mut read,
            "write_bytes" => &mut write,
            "cancelled_write_bytes" => &mut cancelled,
            _ => continue,
        };
        *slot = Some(parse_field(value.trim(), key.trim())?);
    }
    let require = |value: Option<u64>, name: &str| {
        value.ok_or_else(|| ParseError(format!("missing field {name}")))
    };
    Ok(PidIo {
        read_bytes: require(read, "read_bytes")?,
        write_bytes: require(write, "write_bytes")?,
        cancelled_write_bytes: require(cancelled, "cancelled_write_bytes")?,
    })
}

/// The command line of a process with its NUL separators turned into spaces, trimmed and
/// capped at 4096 bytes. Empty for kernel threads and zombies.
pub fn read_cmdline(proc_root: &Path, pid: u32) -> io::Result<String> {
    let path = pid_file(proc_root, pid, "cmdline");
    let mut buf = Vec::new();
    fs::File::open(&path)
        .and_then(|file| file.take(CMDLINE_MAX_BYTES as u64).read_to_end(&mut buf))
        .map_err(|e| annotate(&path, e))?;
    for byte in &mut buf {
        if *byte == 0 {
            *byte = b' ';
        }
    }
    let text = String::from_utf8_lossy(&buf);
    // Lossy decoding can lengthen the text (U+FFFD is 3 bytes), so cap again.
    Ok(truncate_at_char_boundary(text.trim(), CMDLINE_MAX_BYTES).to_owned())
}

/// The command name of a process (`/proc/PID/comm`, at most 15 bytes on Linux).
pub fn read_comm(proc_root: &Path, pid: u32) -> io::Result<String> {
    let path = pid_file(proc_root, pid, "comm");
    let bytes = fs::read(&path).map_err(|e| annotate(&path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

/// Reads `/proc/PID/cgroup`. Lines that do not follow the `id:controllers:path` format are
/// ignored.
pub fn read_cgroup(proc_root: &Path, pid: u32) -> Result<CgroupMembership, ProcError> {
    let path = pid_file(proc_root, pid, "cgroup");
    Ok(parse_cgroup(&read_lossy(&path)?))
}

fn parse_cgroup(text: &str) -> CgroupMembership {
    let mut membership = CgroupMembership::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            membership.v2_path = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            membership.memory_v1_path = Some(path.to_owned());
        }
    }
    membership
}

/// Clock ticks per second (`USER_HZ`), the unit of the times in `/proc/PID/stat` and
/// `/proc/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes a plain integer, touches no memory of ours and has no
    // preconditions; an unknown name makes it return -1, which is handled below.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks)
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(FALLBACK_CLOCK_TICKS)
}

/// Size of a memory page in bytes, the unit of `rss` in `/proc/PID/stat` and of `statm`.
pub fn page_size() -> u64 {
    // SAFETY: as in `clock_ticks_per_second`: no memory is passed, -1 is handled below.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(FALLBACK_PAGE_SIZE)
}

/// CPU time and resident memory of the calling process, from `/proc/self/stat` and
/// `/proc/self/statm`.
pub fn read_self_usage() -> io::Result<SelfUsage> {
    self_usage_at(Path::new("/proc"), clock_ticks_per_second(), page_size())
}

fn self_usage_at(proc_root: &Path, ticks_per_second: u64, page_size: u64) -> io::Result<SelfUsage> {
    let stat_path = proc_root.join("self/stat");
    let stat_text = fs::read(&stat_path).map_err(|e| annotate(&stat_path, e))?;
    let stat = parse_stat(&String::from_utf8_lossy(&stat_text))
        .map_err(|e| invalid_data(&stat_path, &e.to_string()))?;

    let statm_path = proc_root.join("self/statm");
    let statm = fs::read_to_string(&statm_path).map_err(|e| annotate(&statm_path, e))?;
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid_data(&statm_path, "no resident page count"))?;

    let ticks = stat.utime_ticks.saturating_add(stat.stime_ticks);
    Ok(SelfUsage {
        cpu_seconds: ticks as f64 / ticks_per_second.max(1) as f64,
        rss_bytes: resident_pages.saturating_mul(page_size),
    })
}

fn pid_file(proc_root: &Path, pid: u32, name: &str) -> PathBuf {
    proc_root.join(pid.to_string()).join(name)
}

/// Reads a file whose text may hold bytes that are not UTF-8 (comm and cgroup names can).
fn read_lossy(path: &Path) -> Result<String, ProcError> {
    let bytes = fs::read(path).map_err(|err| ProcError::Io {
        path: path.to_owned(),
        err,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn parse_field<T: FromStr>(text: &str, name: &str) -> Result<T, ParseError> {
    text.parse()
        .map_err(|_| ParseError(format!("field {name} is not a number: {text:?}")))
}

fn stat_field<T: FromStr>(fields: &[&str], index: usize, name: &str) -> Result<T, ParseError> {
    let text = fields
        .get(index)
        .ok_or_else(|| ParseError(format!("missing field {name}")))?;
    parse_field(text, name)
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

fn truncate_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path relative to the root, contents) into a fresh temporary directory.
    fn fixture(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, contents) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, contents).expect("write");
        }
        dir
    }

    fn stat_line(pid: &str, comm: &str) -> String {
        // Real layout (kernel 6.x, 52 fields): state S, ppid 1, minflt 1500, majflt 7,
        // utime 250, stime 120, num_threads 4, starttime 98765, rss 2048.
        format!(
            "{pid} ({comm}) S 1 1234 1234 0 -1 4194560 1500 0 7 0 250 120 0 0 20 0 4 0 \
             98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 \
             0 0 0 0 0 0 0 0 0 0 0\n"
        )
    }

    #[test]
    fn parse_stat_handles_awkward_comm() {
        let cases = [
            ("plain", "nginx"),
            ("space", "tmux: server"),
            ("parens", "(sd-pam)"),
            ("close paren and space", "a) S 99 (b"),
            ("empty", ""),
        ];
        for (label, comm) in cases {
            let stat =
                parse_stat(&stat_line("4321", comm)).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                stat,
                PidStat {
                    pid: 4321,
                    comm: comm.to_owned(),
                    state: 'S',
                    ppid: 1,
                    utime_ticks: 250,
                    stime_ticks: 120,
                    starttime_ticks: 98765,
                    rss_pages: 2048,
                    minflt: 1500,
                    majflt: 7,
                    num_threads: 4,
                },
                "{label}"
            );
        }
    }

    #[test]
    fn parse_stat_rejects_malformed_text() {
        let cases = [
            ("empty", String::new(), "no '(' before comm"),
            (
                "no close paren",
                "12 (bash S 1 2 3".to_owned(),
                "no ')' after comm",
            ),
            (
                "close before open",
                "12 )bash( S".to_owned(),
                "no ')' after comm",
            ),
            (
                "bad pid",
                stat_line("x1", "bash"),
                "field pid is not a number: \"x1\"",
            ),
            (
                "truncated",
                "12 (bash) S 1 1 1 0 -1 0 5".to_owned(),
                "missing field utime",
            ),
            ("no state", "12 (bash)".to_owned(), "missing field state"),
            (
                "bad utime",
                "12 (bash) S 1 1 1 0 -1 0 5 0 6 0 ten 3".to_owned(),
                "field utime is not a number: \"ten\"",
            ),
        ];
        for (label, text, want) in cases {
            let err = parse_stat(&text).expect_err(label);
            assert_eq!(err.to_string(), want, "{label}");
        }
    }

    #[test]
    fn read_stat_names_the_file() {
        let root = fixture(&[("7/stat", b"7 (x")]);
        let err = read_stat(root.path(), 7).expect_err("malformed");
        let want = format!(
            "malformed {}: no ')' after comm",
            root.path().join("7/stat").display()
        );
        assert_eq!(err.to_string(), want);
        assert!(!err.is_gone());

        let err = read_stat(root.path(), 8).expect_err("missing");
        assert!(err.is_gone());
        assert!(err
            .to_string()
            .contains(&root.path().join("8/stat").display().to_string()));
    }

    #[test]
    fn read_stat_accepts_non_utf8_comm() {
        let mut raw = b"5 (a\xffb) S".to_vec();
        raw.extend_from_slice(b" 1 1 1 0 -1 0 1 0 2 0 3 4 0 0 20 0 1 0 5 0 6\n");
        let root = fixture(&[("5/stat", &raw)]);
        let stat = read_stat(root.path(), 5).expect("stat");
        assert_eq!(stat.comm, "a\u{fffd}b");
        assert_eq!(
            (stat.utime_ticks, stat.stime_ticks, stat.rss_pages),
            (3, 4, 6)
        );
    }

    #[test]
    fn list_pids_keeps_numeric_entries_sorted() {
        let root = fixture(&[
            ("300/stat", b""),
            ("12/stat", b""),
            ("self/stat", b""),
            ("sys/kernel/hostname", b"h\n"),
            ("+5/stat", b""),
            ("1x/stat", b""),
            ("99999999999/stat", b""),
            ("uptime", b"1.0 2.0\n"),
        ]);
        assert_eq!(list_pids(root.path()).expect("list"), vec![12, 300]);
    }

    #[test]
    fn read_io_parses_counters() {
        let full = "rchar: 4096\nwchar: 8192\nsyscr: 3\nsyscw: 4\nread_bytes: 1024\n\
                    write_bytes: 53248\ncancelled_write_bytes: 4096\n";
        let cases: [(&str, &str, Result<PidIo, &str>); 3] = [
            (
                "full",
                full,
                Ok(PidIo {
                    read_bytes: 1024,
                    write_bytes: 53248,
                    cancelled_write_bytes: 4096,
                }),
            ),
            (
                "missing",
                "read_bytes: 1\nwrite_bytes: 2\n",
                Err("missing field cancelled_write_bytes"),
            ),
            (
                "garbage",
                "read_bytes: lots\nwrite_bytes: 2\ncancelled_write_bytes: 0\n",
                Err("field read_bytes is not a number: \"lots\""),
            ),
        ];
        for (label, text, want) in cases {
            let root = fixture(&[("42/io", text.as_bytes())]);
            let got = read_io(root.path(), 42).map_err(|e| match e {
                ProcError::Malformed { err, .. } => err.to_string(),
                other => panic!("{label}: {other}"),
            });
            assert_eq!(got, want.map_err(str::to_owned), "{label}");
        }
    }

    #[test]
    fn read_cmdline_joins_and_caps() {
        let long = vec![b'a'; 5000];
        let mut multibyte = vec![b'x'; 4094];
        multibyte.extend_from_slice("é€".as_bytes());
        let cases: [(&str, &[u8], String); 5] = [
            (
                "args",
                b"/usr/bin/redis-server\0*:6379\0",
                "/usr/bin/redis-server *:6379".to_owned(),
            ),
            ("kernel thread", b"", String::new()),
            ("padded", b"\0\0sh\0-c\0\0", "sh -c".to_owned()),
            ("long", &long, "a".repeat(4096)),
            // 4094 + 2 bytes of 'é' = 4096; the euro sign is cut off.
            (
                "multibyte at cap",
                &multibyte,
                format!("{}é", "x".repeat(4094)),
            ),
        ];
        for (label, contents, want) in cases {
            let root = fixture(&[("9/cmdline", contents)]);
            assert_eq!(read_cmdline(root.path(), 9).expect(label), want, "{label}");
        }
    }

    #[test]
    fn read_cmdline_caps_lossy_text_at_a_char_boundary() {
        let mut contents = vec![b'y'; 4095];
        contents.push(0xff);
        let root = fixture(&[("9/cmdline", &contents)]);
        assert_eq!(
            read_cmdline(root.path(), 9).expect("cmdline"),
            "y".repeat(4095)
        );
    }

    #[test]
    fn read_comm_strips_newline_only() {
        let cases: [(&[u8], &str); 3] = [
            (b"bash\n", "bash"),
            (b"kworker/0:1 \n", "kworker/0:1 "),
            (b"no-newline", "no-newline"),
        ];
        for (contents, want) in cases {
            let root = fixture(&[("3/comm", contents)]);
            assert_eq!(read_comm(root.path(), 3).expect("comm"), want);
        }
    }

    #[test]
    fn read_cgroup_finds_v2_and_v1_memory() {
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n\
                      2:cpu,cpuacct:/x\n0::/system.slice/foo.service\n";
        let cases = [
            (
                "hybrid",
                hybrid,
                CgroupMembership {
                    v2_path: Some("/system.slice/foo.service".to_owned()),
                    memory_v1_path: Some("/process_api/abc".to_owned()),
                },
            ),
            (
                "pure v2",
                "0::/user.slice/user-1000.slice/session-3.scope\n",
                CgroupMembership {
                    v2_path: Some("/user.slice/user-1000.slice/session-3.scope".to_owned()),
                    memory_v1_path: None,
                },
            ),
            (
                "memory among controllers, colon in path",
                "5:cpuset,memory:/a:b\n",
                CgroupMembership {
                    v2_path: None,
                    memory_v1_path: Some("/a:b".to_owned()),
                },
            ),
            (
                "garbage and memory lookalikes",
                "junk\n3:memory_pressure:/m\n1:name=memory:/n\n",
                CgroupMembership::default(),
            ),
        ];
        for (label, text, want) in cases {
            let root = fixture(&[("77/cgroup", text.as_bytes())]);
            assert_eq!(read_cgroup(root.path(), 77).expect(label), want, "{label}");
        }
    }

    #[test]
    fn self_usage_from_fixture() {
        let root = fixture(&[
            ("self/stat", stat_line("100", "godwit").as_bytes()),
            ("self/statm", b"5000 300 100 10 0 400 0\n"),
        ]);
        let usage = self_usage_at(root.path(), 100, 4096).expect("usage");
        assert_eq!(
            usage,
            SelfUsage {
                cpu_seconds: 3.7,
                rss_bytes: 300 * 4096,
            }
        );

        let root = fixture(&[
            ("self/stat", stat_line("100", "godwit").as_bytes()),
            ("self/statm", b"5000\n"),
        ]);
        let err = self_usage_at(root.path(), 100, 4096).expect_err("short statm");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("statm"));
    }

    #[test]
    fn self_usage_on_this_host() {
        let usage = read_self_usage().expect("self usage");
        assert!(usage.rss_bytes > 0);
        assert!(usage.cpu_seconds >= 0.0);
        assert!(clock_ticks_per_second() > 0);
        assert!(page_size().is_power_of_two());
    }
}
