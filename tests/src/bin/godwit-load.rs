//! Workloads for the integration tests and benchmarks, each a subcommand:
//!
//! - `burn MS`: spin on the CPU until the process has used MS milliseconds of CPU time;
//! - `write PATH BYTES BLOCK`: buffered writes of BYTES in BLOCK-sized chunks (no fsync);
//! - `touch BYTES`: map anonymous memory (no huge pages) and write one byte per page;
//! - `dbwrite PATH BLOCK COUNT`: COUNT writes of BLOCK bytes at random BLOCK-aligned offsets
//!   of the existing file PATH, each followed by `fsync` (a database's pattern);
//! - `mapwrite PATH PAGES ROUNDS`: map PATH shared (no huge pages), read its first PAGES pages, then write
//!   one byte into each of them, ROUNDS times, with `msync(MS_SYNC)` after each round;
//! - `idle`: do nothing.
//!
//! After its work, each prints `done <process CPU ns>` and waits for stdin to close, so the
//! test can read the process's counters while it still exists.

use std::io::{Read, Write};

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn arg(args: &[String], i: usize, what: &str) -> u64 {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("godwit-load: argument {i} ({what}) must be a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("burn") => {
            // Until the process has used MS of CPU time, however busy the machine is.
            let until = cpu_ns() + arg(&args, 2, "milliseconds") * 1_000_000;
            let mut x: u64 = 1;
            while cpu_ns() < until {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        }
        Some("write") => {
            let path = args.get(2).expect("godwit-load write PATH BYTES BLOCK");
            let total = arg(&args, 3, "bytes") as usize;
            let block = arg(&args, 4, "block") as usize;
            let buf = vec![0x5au8; block];
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open target");
            let mut written = 0;
            while written < total {
                let n = block.min(total - written);
                f.write_all(&buf[..n]).expect("write");
                written += n;
            }
        }
        Some("touch") => {
            let len = arg(&args, 2, "bytes") as usize;
            // SAFETY: an anonymous private mapping of len bytes; checked for MAP_FAILED below and
            // only touched within its bounds.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert!(p != libc::MAP_FAILED, "mmap failed");
                libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
                let base = p.cast::<u8>();
                for off in (0..len).step_by(4096) {
                    base.add(off).write_volatile(1);
                }
            }
        }
        Some("dbwrite") => {
            use std::os::unix::fs::FileExt;
            let path = args.get(2).expect("godwit-load dbwrite PATH BLOCK COUNT");
            let block = arg(&args, 3, "block");
            let count = arg(&args, 4, "count");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open target");
            let blocks = f.metadata().expect("stat target").len() / block;
            assert!(
                blocks > 0,
                "godwit-load dbwrite: {path} is smaller than a block"
            );
            let buf = vec![0xa5u8; block as usize];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..count {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let offset = ((x >> 33) % blocks) * block;
                f.write_all_at(&buf, offset).expect("pwrite");
                f.sync_data().expect("fdatasync");
            }
        }
        Some("mapwrite") => {
            use std::os::fd::AsRawFd;
            let path = args.get(2).expect("godwit-load mapwrite PATH PAGES ROUNDS");
            let pages = arg(&args, 3, "pages") as usize;
            let rounds = arg(&args, 4, "rounds");
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .expect("open target");
            let len = pages * 4096;
            assert!(
                f.metadata().expect("stat target").len() >= len as u64,
                "godwit-load mapwrite: {path} is smaller than {pages} pages"
            );
            // SAFETY: a shared mapping of len bytes of a file at least that long; checked for
            // MAP_FAILED below and only touched within its bounds.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                );
                assert!(p != libc::MAP_FAILED, "mmap failed");
                // Without huge pages: where they are allowed, a 2 MiB piece of the mapping
                // may fault once for all its pages (the probe's known limit).
                libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
                let base = p.cast::<u8>();
                // Read every page first: mapped read-only, each page's first write then
                // faults on its own (a first write into an unmapped large folio may map the
                // whole folio writable at once).
                let mut sum = 0u64;
                for off in (0..len).step_by(4096) {
                    sum += u64::from(base.add(off).read_volatile());
                }
                std::hint::black_box(sum);
                for round in 0..rounds {
                    for off in (0..len).step_by(4096) {
                        base.add(off).write_volatile(round as u8 + 1);
                    }
                    assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0, "msync");
                }
            }
        }
        Some("idle") => {}
        other => {
            eprintln!("godwit-load: unknown workload {other:?}: burn MS | write PATH BYTES BLOCK | touch BYTES | dbwrite PATH BLOCK COUNT | mapwrite PATH PAGES ROUNDS | idle");
            std::process::exit(2);
        }
    }
    println!("done {}", cpu_ns());
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
