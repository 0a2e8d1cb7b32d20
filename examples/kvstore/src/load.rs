//! Optional CPU load that follows a file (for tests and benchmarks of the placement policy):
//! a thread reads a number of cores (0 to 1) from the file every [`SLICE`] and spins for that
//! share of the slice. A missing or unreadable file means no load; the file is read again at
//! every slice, so a test steps the load by writing it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the file is read, and the period the load is spread over.
pub const SLICE: Duration = Duration::from_millis(100);

/// The cores the file asks for, clamped to `[0, 1]` (0 when missing or not a number).
pub fn read_cores(path: &std::path::Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .map_or(0.0, |v| v.clamp(0.0, 1.0))
}

/// Spins, slice after slice, for the share of each slice the file asks for, until `stop`.
pub fn spawn(path: PathBuf, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kvstore-load".into())
        .spawn(move || {
            let mut x: u64 = 1;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let busy = SLICE.mul_f64(read_cores(&path));
                while start.elapsed() < busy {
                    for _ in 0..1000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
                if let Some(rest) = SLICE.checked_sub(start.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_says_how_many_cores() {
        let dir = std::env::temp_dir().join(format!("kvstore-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("load");
        assert_eq!(read_cores(&f), 0.0, "missing");
        std::fs::write(&f, "0.4\n").unwrap();
        assert_eq!(read_cores(&f), 0.4);
        std::fs::write(&f, "7").unwrap();
        assert_eq!(read_cores(&f), 1.0, "one thread spins at most one core");
        std::fs::write(&f, "lots").unwrap();
        assert_eq!(read_cores(&f), 0.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
