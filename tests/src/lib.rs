//! The harness of godwit's privileged integration tests: child cgroups, workloads placed in
//! them, agent processes with their own config, and waiting on conditions with deadlines.
//!
//! Every guard cleans up in `Drop`, so a failing test leaves no cgroup, process or file
//! behind. Tests that use it need root and run one at a time (`--test-threads=1`).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod bench;
pub mod cluster;
#[cfg(test)]
mod fuzz_corpus;
pub mod migrate_rig;
pub mod sim;
pub mod views;
pub mod witness;

pub use godwit;
use godwit::probe::cgroup::CgroupLayout;

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, cgroups): run it through `cargo xtask test` as root"
    );
}

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The host's cgroup layout.
pub fn cgroup_layout() -> CgroupLayout {
    CgroupLayout::detect(Path::new("/proc/self/mounts")).expect("cgroup v2 must be mounted")
}

/// Polls `cond` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child cgroup of the v2 root, removed (with anything left in it killed) on drop. On a
/// v1/v2 hybrid host it also exists at the same path in the v1 memory hierarchy, as systemd
/// makes it, so that memcg figures exist for it.
pub struct TestCgroup {
    pub rel_path: String,
    pub dir: PathBuf,
    procs_files: Vec<CString>,
    memory_v1_dir: Option<PathBuf>,
}

fn procs_file(dir: &Path) -> CString {
    CString::new(dir.join("cgroup.procs").to_string_lossy().as_bytes()).unwrap()
}

impl TestCgroup {
    pub fn new(prefix: &str) -> TestCgroup {
        let layout = cgroup_layout();
        let rel_path = format!("/{}", unique(prefix));
        let dir = layout.dir(&rel_path);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        let mut procs_files = vec![procs_file(&dir)];
        let memory_v1_dir = layout
            .memory_v1_root
            .as_ref()
            .filter(|_| layout.hybrid)
            .map(|root| {
                let d = root.join(rel_path.trim_start_matches('/'));
                std::fs::create_dir(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
                procs_files.push(procs_file(&d));
                d
            });
        TestCgroup {
            rel_path,
            dir,
            procs_files,
            memory_v1_dir,
        }
    }

    /// The cgroup id (what BPF's `bpf_get_current_cgroup_id` returns).
    pub fn id(&self) -> u64 {
        godwit::probe::cgroup::cgroup_id(&self.dir).expect("stat cgroup")
    }

    /// `usage_usec` of `cpu.stat`, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> u64 {
        godwit::probe::cgroup::read_cpu_stat(&self.dir)
            .expect("read cpu.stat")
            .usage_usec
            * 1000
    }

    /// Makes `cmd` move itself into this cgroup between fork and exec.
    pub fn place(&self, cmd: &mut Command) {
        let files = self.procs_files.clone();
        // SAFETY: the closure runs in the forked child before exec and only calls the
        // async-signal-safe open/write/close on paths allocated before the fork. Writing "0"
        // to cgroup.procs moves the writing process.
        unsafe {
            cmd.pre_exec(move || {
                for path in &files {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    libc::close(fd);
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for pid in self.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = wait_for(Duration::from_secs(5), || {
            self.pids().is_empty().then_some(())
        });
        for dir in std::iter::once(&self.dir).chain(&self.memory_v1_dir) {
            let _ = wait_for(Duration::from_secs(5), || std::fs::remove_dir(dir).ok());
        }
    }
}

/// `target/<profile>/`, where cargo puts the binaries the tests run.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The `godwit-load` workload binary (cargo builds it for this package's tests).
pub fn load_bin() -> PathBuf {
    let bin = target_dir().join("godwit-load");
    assert!(
        bin.exists(),
        "{} missing: build with `cargo test -p godwit-tests`",
        bin.display()
    );
    bin
}

/// The example service's binaries (`kvstore`, `kvcheck`), built with the workspace.
pub fn example_bin(name: &str) -> PathBuf {
    let bin = target_dir().join(name);
    assert!(
        bin.exists(),
        "{} missing: build with `cargo build --workspace` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A running `godwit-load` process; killed on drop.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Workload {
    /// Starts `godwit-load ARGS` in `cgroup` (if any).
    pub fn start(args: &[&str], cgroup: Option<&TestCgroup>) -> Workload {
        let mut cmd = Command::new(load_bin());
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(cg) = cgroup {
            cg.place(&mut cmd);
        }
        let mut child = cmd.spawn().expect("spawn godwit-load");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Workload {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the workload's `done CPU_NS` line; returns its own CPU time in ns.
    pub fn wait_done(&mut self) -> u64 {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read workload output");
        line.trim()
            .strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected workload output {line:?}"))
    }

    /// utime + stime of the process from /proc/PID/stat, in ns.
    pub fn proc_cpu_ns(&self) -> u64 {
        let st = godwit::probe::procfs::read_stat(Path::new("/proc"), self.pid()).expect("stat");
        (st.utime_ticks + st.stime_ticks) * 1_000_000_000
            / godwit::probe::procfs::clock_ticks_per_second()
    }

    /// The scheduler's exact runtime of the workload's (single) thread, in ns, from
    /// /proc/PID/task/PID/schedstat: the same `sum_exec_runtime` the probe reads.
    pub fn sched_runtime_ns(&self) -> u64 {
        godwit::probe::procfs::read_thread_runtime_ns(Path::new("/proc"), self.pid(), self.pid())
            .expect("schedstat")
    }

    /// `write_bytes` of /proc/PID/io.
    pub fn write_bytes(&self) -> u64 {
        godwit::probe::procfs::read_io(Path::new("/proc"), self.pid())
            .expect("io")
            .write_bytes
    }

    /// Closes stdin: the workload exits.
    pub fn finish(mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts `actual` is within `pct` percent of `expected`.
#[track_caller]
pub fn assert_within(what: &str, actual: f64, expected: f64, pct: f64) {
    let err = (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE) * 100.0;
    assert!(
        err <= pct,
        "{what}: {actual} is {err:.2}% away from {expected} (allowed ±{pct}%)"
    );
    eprintln!("{what}: {actual} vs {expected} ({err:.2}% off, allowed ±{pct}%)");
}

/// The `godwit` binary, built once per test process so it matches the library under test.
pub fn godwit_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "godwit", "--bin", "godwit"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p godwit failed");
        let bin = target_dir().join("godwit");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `godwit agent` process with its own config file; SIGKILLed on drop if still running.
pub struct Agent {
    pub child: Child,
    /// The read-only TCP API.
    pub addr: SocketAddr,
    /// The API socket, where changes are served (to root, which the tests run as).
    pub socket: PathBuf,
    pub dir: PathBuf,
    stderr_path: PathBuf,
}

impl Agent {
    /// Starts an agent with `extra` TOML appended to a config that sets a free API port.
    /// Waits until the API answers with a first sample.
    pub fn start(extra: &str) -> Agent {
        Agent::start_wrapped(extra, &[])
    }

    /// As [`Agent::start`], with the agent run through `wrapper` (for example `setpriv` to drop
    /// privileges).
    pub fn start_wrapped(extra: &str, wrapper: &[&str]) -> Agent {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("godwit-agent"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("godwit.toml");
        let socket = dir.join("api.sock");
        std::fs::write(
            &config,
            format!(
                "[node]\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
                 socket = \"{}\"\n{extra}",
                dir.display(),
                socket.display()
            ),
        )
        .unwrap();
        let stderr_path = dir.join("agent.log");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(godwit_bin());
                c
            }
            None => Command::new(godwit_bin()),
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn godwit agent");
        let mut agent = Agent {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            socket,
            dir,
            stderr_path,
        };
        agent.wait_ready();
        agent
    }

    /// Waits for `/healthz` to answer `ok` (a first sample exists).
    pub fn wait_ready(&mut self) {
        let ready = wait_for(Duration::from_secs(20), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            http_get(self.addr, "/healthz")
                .ok()
                .filter(|(code, _)| *code == 200)
        });
        assert!(
            ready.is_some(),
            "agent not ready within 20 s:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a request to the agent's socket, as root: the way to change something.
    pub fn act(&self, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
        unix_request(&self.socket, method, path, json)
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.socket.display()))
    }

    /// GETs `path` and parses it as JSON; panics on failure.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.addr, path).expect("agent API");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {e}: {body}"))
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        })
        .expect("agent did not exit within 15 s of SIGTERM");
        status.code()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.1 GET; returns status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// A minimal HTTP/1.1 request with an optional JSON body; returns status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_request_within(addr, method, path, json, Duration::from_secs(10))
}

/// As [`http_request`], giving up connecting, writing and reading after `timeout` each.
pub fn http_request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, &addr.to_string(), method, path, json)
}

/// A minimal HTTP/1.1 request on an agent's API socket; returns status code and body.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    unix_request_within(socket, method, path, json, Duration::from_secs(10))
}

/// As [`unix_request`], giving up writing and reading after `timeout` each.
pub fn unix_request_within(
    socket: &Path,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange(s, "localhost", method, path, json)
}

/// Writes one request with `Host: host` on `s` and reads the answer to its end.
fn exchange(
    mut s: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = json.unwrap_or("");
    let content = if json.is_some() {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{content}Connection: close\r\n\r\n{body}"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Runs `promtool check metrics` on an exposition and panics with its report unless it is
/// clean (no errors and no lint warnings).
pub fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("wait for promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// A directory removed (with everything in it) when this is dropped, however the test ends.
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cgroup parent for a test's managed services (`[services] cgroup_parent`), killed and
/// removed when the test ends however it ends: an agent killed with SIGKILL does not stop its
/// services, which live in their own cgroups.
pub struct ServiceSlice {
    parent: PathBuf,
    /// The parent's name under the cgroup v2 root.
    pub name: String,
}

impl ServiceSlice {
    /// A new, uniquely named parent.
    pub fn new() -> ServiceSlice {
        let name = unique("godwit-test").replace(['.', '/'], "-") + ".slice";
        ServiceSlice {
            parent: cgroup_layout().v2_root.join(&name),
            name,
        }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.parent
    }

    /// A `[services]` section using it, with state under `state_root`.
    pub fn toml(&self, state_root: &Path) -> String {
        format!(
            "[services]\ncgroup_parent = \"{}\"\nstate_root = \"{}\"\nstop_grace_ms = 2000\n",
            self.name,
            state_root.display()
        )
    }
}

impl Default for ServiceSlice {
    fn default() -> Self {
        ServiceSlice::new()
    }
}

impl Drop for ServiceSlice {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.parent) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                let deadline = Instant::now() + Duration::from_secs(5);
                while std::fs::read_to_string(e.path().join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                remove_cgroup_dir(&e.path());
            }
        }
        remove_cgroup_dir(&self.parent);
        // On a hybrid host the agent mirrors its services' cgroups in the v1 memory
        // hierarchy (and the cpu one, with a CPU share): empty by now, they only need
        // removing.
        let layout = cgroup_layout();
        let v1_roots = [layout.memory_v1_root, layout.cpu_v1_root];
        for v1 in v1_roots.into_iter().flatten().filter(|_| layout.hybrid) {
            let parent = v1.join(&self.name);
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    remove_cgroup_dir(&e.path());
                }
            }
            remove_cgroup_dir(&parent);
        }
    }
}

/// Removes an empty cgroup directory. The kernel refuses (`EBUSY`) while tasks that left
/// `cgroup.procs` are still exiting, so that is retried for a few seconds.
fn remove_cgroup_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n"), "ok!!!");
    }
}
