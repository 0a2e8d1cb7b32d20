//! Real `kvstore` and `kvcheck` processes on loopback: crash recovery, unavailability gaps,
//! dirty pages of the mapped state file, corrupt files, shutdown and concurrency.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_kvstore::check::Report;
use godwit_kvstore::protocol::Reply;
use godwit_kvstore::store::{occupied_pages, HEADER_LEN, SLOT_LEN};

const KVSTORE: &str = env!("CARGO_BIN_EXE_kvstore");
const KVCHECK: &str = env!("CARGO_BIN_EXE_kvcheck");
const PAGE: u64 = 4096;

/// Polls `f` every 10 ms until it returns `Some`, panicking with `what` after `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory under the target's tmp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kvstore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir.canonicalize().expect("canonical test dir"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL works on stopped processes too) and reaped on drop.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child this guard owns and has not reaped, so the pid is ours.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        wait_for(timeout, "process exit", || {
            self.0.try_wait().expect("try_wait")
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kvstore` process with its stderr collected line by line.
struct Server {
    proc: Proc,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

/// Starts `kvstore` and returns it with its log, without waiting for anything.
fn spawn_kvstore(state: &Path, listen: &str, size: u64) -> (Proc, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(KVSTORE)
        .args(["--listen", listen, "--size", &size.to_string(), "--state"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvstore");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (Proc(child), log)
}

impl Server {
    fn start(state: &Path, listen: &str, size: u64) -> Self {
        let (mut proc, log) = spawn_kvstore(state, listen, size);
        let addr = wait_for(Duration::from_secs(10), "kvstore to listen", || {
            if let Some(status) = proc.0.try_wait().expect("try_wait") {
                panic!("kvstore exited with {status}: {:?}", log.lock().unwrap());
            }
            log.lock().unwrap().iter().find_map(|l| {
                let rest = l.strip_prefix("kvstore: listening addr=")?;
                rest.split(' ').next()?.parse().ok()
            })
        });
        Self { proc, log, addr }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn log_line(&self, prefix: &str) -> String {
        let log = self.log.lock().unwrap();
        log.iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no log line {prefix:?} in {log:?}"))
            .clone()
    }

    /// Waits for a log line starting with `prefix`.
    fn wait_log(&self, prefix: &str, timeout: Duration) -> String {
        wait_for(timeout, prefix, || {
            let log = self.log.lock().unwrap();
            log.iter().find(|l| l.starts_with(prefix)).cloned()
        })
    }
}

/// One request over a fresh connection.
fn request(addr: SocketAddr, line: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    Reply::parse(reply.trim_end()).expect("well-formed reply")
}

fn stats(addr: SocketAddr) -> (u64, u64, u64) {
    match request(addr, "STATS") {
        Reply::Stats { keys, seq, bytes } => (keys, seq, bytes),
        other => panic!("STATS answered {other:?}"),
    }
}

/// Starts `kvcheck` with `args`.
fn spawn_kvcheck(args: &[&str]) -> Proc {
    Proc(
        Command::new(KVCHECK)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvcheck"),
    )
}

/// Waits for a `kvcheck` and returns its exit code and report.
fn finish_kvcheck(mut proc: Proc, timeout: Duration) -> (i32, Report) {
    let status = proc.wait(timeout);
    let mut out = String::new();
    let mut err = String::new();
    proc.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    proc.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kvcheck printed {out:?} ({e}); stderr {err:?}; {status}"));
    (status.code().expect("kvcheck exited"), report)
}

fn kvcheck(args: &[&str]) -> (i32, Report) {
    finish_kvcheck(spawn_kvcheck(args), Duration::from_secs(60))
}

#[test]
fn kill9_then_restart_recovers_every_acknowledged_write() {
    let dir = TempDir::new("kill9");
    let state = dir.path("state");
    let acks = dir.path("acks.json");
    let acks = acks.to_str().unwrap();
    let server = Server::start(&state, "127.0.0.1:0", 16 << 20);
    let (code, written) = kvcheck(&[
        "--addr",
        &server.addr(),
        "write",
        "--count",
        "10000",
        "--acks",
        acks,
    ]);
    assert_eq!(code, 0, "{written:?}");
    assert_eq!((written.written, written.acknowledged), (10_000, 10_000));
    assert_eq!(written.last_seq, 10_000);
    assert!(
        written.longest_gap_ms < 1000,
        "an undisturbed run has no long gap: {written:?}"
    );
    server.proc.signal(libc::SIGKILL);
    let mut server = server;
    assert_eq!(
        server.proc.wait(Duration::from_secs(10)).signal(),
        Some(libc::SIGKILL)
    );

    let server = Server::start(&state, "127.0.0.1:0", 16 << 20);
    let opened = server.log_line("kvstore: state opened");
    assert!(
        opened.contains("created=false torn_writes_cleared=0 keys=10000 seq=10000"),
        "{opened}"
    );
    let (code, verified) = kvcheck(&["--addr", &server.addr(), "verify", "--acks", acks]);
    assert_eq!(code, 0, "{verified:?}");
    assert_eq!(verified.missing_acknowledged, Some(0));
    assert_eq!(verified.corrupt, Some(0));
    assert_eq!(verified.found, Some(10_000));
    assert_eq!(verified.acknowledged, 10_000);
    assert_eq!(stats(server.addr).0, 10_000);
}

/// The server is killed while a client is writing, and restarted on the same file and port:
/// the client rides through the outage, and nothing it was told was written is lost.
#[test]
fn kill9_during_writes_loses_nothing_acknowledged() {
    let dir = TempDir::new("kill9-live");
    let state = dir.path("state");
    let acks = dir.path("acks.json");
    let acks = acks.to_str().unwrap();
    let server = Server::start(&state, "127.0.0.1:0", 16 << 20);
    let addr = server.addr();
    let writer = spawn_kvcheck(&[
        "--addr",
        &addr,
        "--retry-for",
        "20",
        "write",
        "--count",
        "8000",
        "--acks",
        acks,
    ]);
    wait_for(Duration::from_secs(20), "2000 writes", || {
        (stats(server.addr).1 >= 2000).then_some(())
    });
    drop(server); // SIGKILL
    let server = Server::start(&state, &addr, 16 << 20);
    let (code, written) = finish_kvcheck(writer, Duration::from_secs(60));
    assert_eq!(
        code, 0,
        "every write was retried until acknowledged: {written:?}"
    );
    assert_eq!((written.written, written.acknowledged), (8000, 8000));
    assert!(written.errors >= 1, "the outage was seen: {written:?}");
    let opened = server.log_line("kvstore: state opened");
    assert!(opened.contains("created=false"), "{opened}");

    let (code, verified) = kvcheck(&["--addr", &addr, "verify", "--acks", acks]);
    assert_eq!(code, 0, "{verified:?}");
    assert_eq!(verified.missing_acknowledged, Some(0));
    assert_eq!(verified.corrupt, Some(0));
    assert_eq!(verified.found, Some(8000));
}

#[test]
fn sigstop_gap_is_measured_and_nothing_is_lost() {
    let dir = TempDir::new("sigstop");
    let server = Server::start(&dir.path("state"), "127.0.0.1:0", 4 << 20);
    let run = spawn_kvcheck(&[
        "--addr",
        &server.addr(),
        "run",
        "--duration",
        "3",
        "--rate",
        "500",
    ]);
    wait_for(Duration::from_secs(10), "200 writes", || {
        (stats(server.addr).1 >= 200).then_some(())
    });
    server.proc.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    server.proc.signal(libc::SIGCONT);
    let stopped_ms = stopped.elapsed().as_millis() as u64;
    let (code, report) = finish_kvcheck(run, Duration::from_secs(30));
    eprintln!("stopped {stopped_ms} ms; kvcheck run: {report:?}");
    assert_eq!(code, 0, "{report:?}");
    assert!(
        report.longest_gap_ms + 50 >= stopped_ms && report.longest_gap_ms < stopped_ms + 1000,
        "gap {} ms for a server stopped {stopped_ms} ms: {report:?}",
        report.longest_gap_ms
    );
    assert!(report.longest_gap_ms >= 1000);
    assert_eq!(report.missing_acknowledged, Some(0));
    assert_eq!(report.corrupt, Some(0));
    assert_eq!(report.acknowledged, report.written);
    assert_eq!(report.found, Some(report.written));
    // 3 s at 500/s, less the time the server was stopped (no catching up afterwards).
    assert!((500..=1500).contains(&report.written), "{report:?}");
}

fn write_bytes(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/PID/io")
}

/// Dirty bytes (Shared_Dirty + Private_Dirty) of the mapping of `file` in `/proc/PID/smaps`.
fn mapping_dirty_bytes(pid: i32, file: &Path) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let name = file.to_str().unwrap();
    let mut in_mapping = false;
    let mut found = false;
    let mut dirty_kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_mapping = line.ends_with(name);
            found |= in_mapping;
        } else if in_mapping {
            for field in ["Shared_Dirty:", "Private_Dirty:"] {
                if let Some(v) = line.strip_prefix(field) {
                    dirty_kb += v.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
                }
            }
        }
    }
    assert!(found, "no mapping of {name} in /proc/{pid}/smaps");
    dirty_kb * 1024
}

/// Writes dirty the state file's pages in the server (the kernel charges them to its
/// `write_bytes` and smaps shows them dirty); after an fsync the pages are clean, and writing
/// the same keys again dirties them again. This is what dirty-page migration tracks.
#[test]
fn writes_dirty_the_mapped_state_file() {
    let dir = TempDir::new("dirty");
    let state = dir.path("state");
    let file_len = 4 << 20;
    let server = Server::start(&state, "127.0.0.1:0", file_len);
    let pid = server.proc.pid();
    const KEYS: u64 = 2000;
    // Each write fills one 512-byte slot, eight to a page: distinct keys touch at least this
    // many pages of slots.
    let min_pages = KEYS.div_ceil(PAGE / SLOT_LEN);
    assert_eq!(HEADER_LEN, PAGE);

    let before = write_bytes(pid);
    let (code, _) = kvcheck(&[
        "--addr",
        &server.addr(),
        "write",
        "--count",
        &KEYS.to_string(),
    ]);
    assert_eq!(code, 0);
    let first = write_bytes(pid) - before;
    let dirty = mapping_dirty_bytes(pid, &state);
    // The pages that now hold a key; large folios may dirty (and charge) more around them.
    let pages = occupied_pages(&state).expect("scan state file").len() as u64;
    eprintln!("{KEYS} writes: {pages} pages hold keys; write_bytes +{first}, smaps dirty {dirty}");
    assert!(pages >= min_pages, "{pages} pages for {KEYS} keys");
    assert!(
        (pages * PAGE..=file_len).contains(&first),
        "write_bytes grew by {first}, expected {}..={file_len}",
        pages * PAGE
    );
    assert!(dirty >= pages * PAGE, "smaps dirty {dirty} bytes");

    // Write back the page cache from outside the server: its mapping becomes clean.
    OpenOptions::new()
        .read(true)
        .open(&state)
        .unwrap()
        .sync_all()
        .unwrap();
    assert_eq!(mapping_dirty_bytes(pid, &state), 0, "clean after fsync");

    let (code, again) = kvcheck(&[
        "--addr",
        &server.addr(),
        "write",
        "--count",
        &KEYS.to_string(),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        again.last_seq,
        2 * KEYS,
        "overwrites take new sequence numbers"
    );
    let second = write_bytes(pid) - before - first;
    eprintln!("{KEYS} overwrites after fsync: write_bytes +{second}");
    assert!(
        (pages * PAGE..=file_len).contains(&second),
        "rewriting clean pages grew write_bytes by {second}"
    );
    assert!(mapping_dirty_bytes(pid, &state) >= pages * PAGE);
}

/// Runs `kvstore` on `state`, which must refuse to start, and returns its exit code and log.
fn refused(state: &Path) -> (Option<i32>, String) {
    let (mut proc, log) = spawn_kvstore(state, "127.0.0.1:0", 1 << 20);
    let status = proc.wait(Duration::from_secs(10));
    // The log thread ends at EOF, right after exit.
    let log = wait_for(Duration::from_secs(5), "kvstore error line", || {
        let log = log.lock().unwrap();
        (!log.is_empty()).then(|| log.join("\n"))
    });
    (status.code(), log)
}

#[test]
fn foreign_or_corrupt_state_file_exits_2_with_a_clear_message() {
    let dir = TempDir::new("corrupt");
    let foreign = dir.path("foreign");
    std::fs::write(&foreign, vec![b'#'; 8192]).unwrap();
    let (code, log) = refused(&foreign);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("is not a kvstore state file (bad magic)"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // A real state file, shut down cleanly, then damaged in two places.
    let state = dir.path("state");
    let mut server = Server::start(&state, "127.0.0.1:0", 1 << 20);
    let (code, _) = kvcheck(&["--addr", &server.addr(), "write", "--count", "500"]);
    assert_eq!(code, 0);
    server.proc.signal(libc::SIGTERM);
    assert_eq!(server.proc.wait(Duration::from_secs(10)).code(), Some(0));
    assert!(server
        .wait_log("kvstore: stopped", Duration::from_secs(5))
        .contains("synced=true"));
    let file = OpenOptions::new().write(true).open(&state).unwrap();
    file.write_all_at(&[0xaa; 1024], HEADER_LEN + 100 * SLOT_LEN)
        .unwrap();
    let (code, log) = refused(&state);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("is corrupt: slot 100: key length 43690"),
        "{log}"
    );

    let len = file.metadata().unwrap().len();
    file.set_len(len - SLOT_LEN).unwrap();
    let (code, log) = refused(&state);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("is corrupt:") && log.contains("but the header declares"),
        "{log}"
    );
}

/// SIGTERM while a client writes: the server answers what it has read, syncs, exits 0, and
/// every write it acknowledged is there after a restart.
#[test]
fn sigterm_drains_syncs_and_keeps_acknowledged_writes() {
    let dir = TempDir::new("sigterm");
    let state = dir.path("state");
    let acks = dir.path("acks.json");
    let acks = acks.to_str().unwrap();
    let mut server = Server::start(&state, "127.0.0.1:0", 16 << 20);
    let writer = spawn_kvcheck(&[
        "--addr",
        &server.addr(),
        "--retry-for",
        "1",
        "write",
        "--count",
        "100000",
        "--acks",
        acks,
    ]);
    wait_for(Duration::from_secs(20), "1000 writes", || {
        (stats(server.addr).1 >= 1000).then_some(())
    });
    server.proc.signal(libc::SIGTERM);
    assert_eq!(server.proc.wait(Duration::from_secs(10)).code(), Some(0));
    let stopped = server.wait_log("kvstore: stopped", Duration::from_secs(5));
    assert!(
        stopped.contains("aborted=0") && stopped.contains("synced=true"),
        "{stopped}"
    );
    let (code, written) = finish_kvcheck(writer, Duration::from_secs(30));
    assert_eq!(code, 1, "the server went away mid-run: {written:?}");
    assert!(
        written.acknowledged >= 1000 && written.acknowledged < 100_000,
        "{written:?}"
    );

    let server = Server::start(&state, "127.0.0.1:0", 16 << 20);
    let (code, verified) = kvcheck(&["--addr", &server.addr(), "verify", "--acks", acks]);
    assert_eq!(code, 0, "{verified:?}");
    assert_eq!(verified.missing_acknowledged, Some(0));
    assert!(verified.found.unwrap() >= written.acknowledged);
}

#[test]
fn concurrent_clients_and_bad_requests() {
    let dir = TempDir::new("concurrent");
    let server = Server::start(&dir.path("state"), "127.0.0.1:0", 16 << 20);
    let addr = server.addr();
    let writers: Vec<Proc> = (0..8)
        .map(|c| {
            let prefix = format!("c{c}");
            spawn_kvcheck(&[
                "--addr", &addr, "write", "--count", "1000", "--prefix", &prefix,
            ])
        })
        .collect();
    // Meanwhile, bad requests on a connection of its own, which stays usable.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let long_line = format!("SET k {}", "v".repeat(10_000));
    let long_key = format!("GET {}", "k".repeat(65));
    let long_value = format!("SET k {}", "v".repeat(201));
    let exchanges = [
        (long_line.as_str(), "ERR line: longer than 512 bytes"),
        ("PING", "PONG"),
        (long_key.as_str(), "ERR key: 65 bytes, the limit is 64"),
        (
            long_value.as_str(),
            "ERR value: 201 bytes, the limit is 200",
        ),
        (
            "SET bad\u{7f}key v",
            "ERR key: byte 3 is not printable ASCII without spaces",
        ),
        ("BOGUS", "ERR unknown command 'BOGUS'"),
        ("GET nothing-here", "NIL"),
        ("", "ERR empty request"),
    ];
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for (request, expected) in exchanges {
        stream
            .write_all(format!("{request}\r\n").as_bytes())
            .unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        assert_eq!(reply.trim_end(), expected, "reply to {:.40}", request);
    }
    for writer in writers {
        let (code, report) = finish_kvcheck(writer, Duration::from_secs(60));
        assert_eq!(code, 0, "{report:?}");
        assert_eq!(report.acknowledged, 1000);
    }
    for c in 0..8 {
        let prefix = format!("c{c}");
        let (code, report) = kvcheck(&[
            "--addr", &addr, "verify", "--count", "1000", "--prefix", &prefix,
        ]);
        assert_eq!((code, report.found), (0, Some(1000)), "{report:?}");
    }
    let (keys, seq, bytes) = stats(server.addr);
    assert_eq!((keys, seq), (8000, 8000));
    assert_eq!(bytes, 8000 * (9 + 32), "keys of 9 bytes, values of 32");
}
