//! A small TCP service for the service-runtime tests: answers each line with `pong <n> <line>`
//! (n counts replies since start), appends every line to `--log FILE` if given, and with
//! `--exit-after-ms N` exits with status 3 after N ms (a crash, for restart tests).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let listen = value("--listen").unwrap_or_else(|| "127.0.0.1:7400".into());
    let log = value("--log");
    if let Some(ms) = value("--exit-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("godwit-echo: exiting with status 3 as asked");
            std::process::exit(3);
        });
    }
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("godwit-echo: cannot listen on {listen}: {e}");
        std::process::exit(2);
    });
    println!("godwit-echo: listening on {listen}");
    let replies = Arc::new(AtomicU64::new(0));
    for stream in listener.incoming().flatten() {
        let _ = stream.set_nodelay(true);
        let replies = replies.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let mut out = match stream.try_clone() {
                Ok(s) => s,
                Err(_) => return,
            };
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if let Some(path) = &log {
                    if let Ok(mut f) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        let _ = writeln!(f, "{line}");
                    }
                }
                let n = replies.fetch_add(1, Ordering::Relaxed) + 1;
                if out
                    .write_all(format!("pong {n} {line}\n").as_bytes())
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}
