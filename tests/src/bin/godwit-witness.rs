//! A service that says when it runs, for the fault-schedule suite: it appends one line per
//! event to `--file` (a file every node of a test shares), read back by
//! [`godwit_tests::witness`]:
//!
//! ```text
//! <CLOCK_MONOTONIC ns> <start|alive|stop> <service> <node> <epoch> <pid>
//! ```
//!
//! `start` once, `alive` every `--every-ms` (default 20) while it runs, `stop` on SIGTERM. A
//! SIGKILL leaves no `stop`: its last `alive` bounds when it last ran. The clock is the same
//! in every network namespace of the host, so lines from different nodes compare. Service,
//! node and epoch come from the agent (`GODWIT_SERVICE`, `GODWIT_NODE`, `GODWIT_EPOCH`; `-`
//! when unset). With `--listen ADDR` it also accepts TCP connections, for a health check.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let Some(path) = value("--file") else {
        eprintln!("godwit-witness: --file PATH is required");
        std::process::exit(2);
    };
    let every = Duration::from_millis(
        value("--every-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| "-".into());
    let (service, node, epoch) = (
        env("GODWIT_SERVICE"),
        env("GODWIT_NODE"),
        env("GODWIT_EPOCH"),
    );
    let pid = std::process::id();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| {
            eprintln!("godwit-witness: cannot open {path}: {e}");
            std::process::exit(2);
        });
    // One write(2) per line on an O_APPEND file: lines from several processes never mix.
    let mut record = |kind: &str| {
        let line = format!("{} {kind} {service} {node} {epoch} {pid}\n", monotonic_ns());
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("godwit-witness: cannot write {path}: {e}");
            std::process::exit(1);
        }
    };
    record("start");
    if let Some(listen) = value("--listen") {
        let listener = std::net::TcpListener::bind(&listen).unwrap_or_else(|e| {
            eprintln!("godwit-witness: cannot listen on {listen}: {e}");
            std::process::exit(2);
        });
        std::thread::spawn(move || for _ in listener.incoming() {});
    }
    println!("godwit-witness: {service} on {node} at epoch {epoch}, pid {pid}");
    while !TERM.load(Ordering::SeqCst) {
        std::thread::sleep(every);
        record("alive");
    }
    record("stop");
}
