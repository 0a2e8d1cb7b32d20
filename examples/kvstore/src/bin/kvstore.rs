//! `kvstore --listen ADDR --state FILE [--size BYTES] [--ballast FILE --ballast-size BYTES
//! --dirty-rate BYTES_PER_S] [--load-file FILE]`: the example stateful service. The ballast (for benchmarks, see
//! `godwit_kvstore::ballast`) is a second file dirtied at a set rate by a thread of its own.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or SIGINT), 1 on a runtime failure (the
//! address in use, the state file locked or unreadable), 2 on bad usage or a foreign, corrupt or
//! newer state file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use clap::Parser;
use godwit_kvstore::ballast::Ballast;
use godwit_kvstore::server;
use godwit_kvstore::store::{Store, DEFAULT_FILE_LEN};
use tokio::signal::unix::{signal, SignalKind};

/// A TCP key-value server whose whole state lives in a shared mapping of one file.
#[derive(Parser)]
#[command(name = "kvstore", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:7379")]
    listen: SocketAddr,
    /// The state file; created (with its directory) if absent or empty.
    #[arg(long)]
    state: PathBuf,
    /// Size in bytes of a state file this run creates (an existing file keeps its size).
    #[arg(long, default_value_t = DEFAULT_FILE_LEN)]
    size: u64,
    /// A second file, filled with incompressible bytes, whose pages a thread rewrites at
    /// `--dirty-rate` (a dirty rate for benchmarks, independent of the requests).
    #[arg(long, requires = "ballast_size")]
    ballast: Option<PathBuf>,
    /// Size in bytes of the ballast; a file of another size is re-created.
    #[arg(long, requires = "ballast")]
    ballast_size: Option<u64>,
    /// Bytes of distinct ballast pages dirtied per second (whole random pages, every 10 ms).
    #[arg(long, default_value_t = 0.0, requires = "ballast")]
    dirty_rate: f64,
    /// A file holding a number of cores (0 to 1): a thread spins that share of the CPU,
    /// following the file as it changes (`godwit_kvstore::load`).
    #[arg(long)]
    load_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (store, opened) = match Store::open(&args.state, args.size) {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("kvstore: cannot open state error=\"{e}\"");
            return ExitCode::from(if e.is_bad_file() { 2 } else { 1 });
        }
    };
    let stats = store.stats();
    eprintln!(
        "kvstore: state opened path={} created={} torn_writes_cleared={} keys={} seq={} bytes={} slots={} file_bytes={}",
        args.state.display(),
        opened.created,
        opened.torn,
        stats.keys,
        stats.seq,
        stats.bytes,
        stats.slots,
        stats.file_len
    );
    // The ballast is ready before the server listens, so a health check means ready.
    let ballast_stop = Arc::new(AtomicBool::new(false));
    let dirtier = match (&args.ballast, args.ballast_size) {
        (Some(path), Some(size)) => match Ballast::open(path, size) {
            Ok((ballast, written)) => {
                eprintln!(
                    "kvstore: ballast opened path={} pages={} written={written} dirty_rate={}",
                    path.display(),
                    ballast.pages(),
                    args.dirty_rate
                );
                Some(ballast.spawn(args.dirty_rate, Arc::clone(&ballast_stop)))
            }
            Err(e) => {
                eprintln!(
                    "kvstore: cannot open ballast path={} error=\"{e}\"",
                    path.display()
                );
                return ExitCode::from(1);
            }
        },
        _ => None,
    };
    let load_stop = Arc::new(AtomicBool::new(false));
    let load = match &args.load_file {
        Some(path) => match godwit_kvstore::load::spawn(path.clone(), Arc::clone(&load_stop)) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("kvstore: cannot start the load thread error=\"{e}\"");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let store = Arc::new(Mutex::new(store));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kvstore: cannot start runtime error=\"{e}\"");
            return ExitCode::from(1);
        }
    };
    let served = runtime.block_on(async {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("kvstore: cannot install signal handlers error=\"{e}\"");
                return None;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("kvstore: cannot listen addr={} error=\"{e}\"", args.listen);
                return None;
            }
        };
        let addr = listener.local_addr().map_or(args.listen, |a| a);
        eprintln!("kvstore: listening addr={addr} pid={}", std::process::id());
        let shutdown = async {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            eprintln!("kvstore: shutting down signal={name}");
        };
        Some(server::serve(listener, Arc::clone(&store), shutdown).await)
    });
    ballast_stop.store(true, Ordering::Relaxed);
    load_stop.store(true, Ordering::Relaxed);
    if let Some(t) = load {
        let _ = t.join();
    }
    if let Some((ballast, pages)) = dirtier.and_then(|t| t.join().ok()) {
        if let Err(e) = ballast.sync() {
            eprintln!("kvstore: msync of the ballast failed error=\"{e}\"");
            return ExitCode::from(1);
        }
        eprintln!("kvstore: ballast stopped pages_dirtied={pages} synced=true");
    }
    let Some(served) = served else {
        return ExitCode::from(1);
    };
    let store = store.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = store.sync() {
        eprintln!("kvstore: msync failed error=\"{e}\"");
        return ExitCode::from(1);
    }
    let stats = store.stats();
    eprintln!(
        "kvstore: stopped connections={} requests={} aborted={} keys={} seq={} synced=true",
        served.connections, served.requests, served.aborted, stats.keys, stats.seq
    );
    ExitCode::SUCCESS
}
