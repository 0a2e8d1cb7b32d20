//! The zstd level for a bulk transfer, chosen from measured figures: how fast this machine
//! compresses a sample of the data at each candidate level, how much that shrinks it, and the
//! path's measured throughput.
//!
//! Compression runs in line with sending, so a transfer at level `l` moves data at about
//! `min(C_l, B / r_l)` bytes of data a second: `C_l` the compression speed, `r_l` the ratio
//! (compressed / raw), `B` the path's throughput. Without compression it moves at `B`. The
//! level with the highest figure wins; none at all when no level beats `B` (a fast link, a
//! slow or busy CPU, or data that does not shrink).

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Levels tried, fastest first (negative levels are zstd's fast modes).
pub const CANDIDATES: [i32; 4] = [-5, -1, 1, 3];

/// One candidate's figures on the sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelTrial {
    /// The zstd level.
    pub level: i32,
    /// Compressed over raw bytes.
    pub ratio: f64,
    /// Raw bytes compressed per second (wall time, on this machine now).
    pub compress_bytes_per_second: f64,
    /// Expected transfer rate, raw bytes per second: `min(C, B / ratio)`.
    pub expected_bytes_per_second: f64,
}

/// The choice and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelChoice {
    /// The level to use; `None`: send raw.
    pub level: Option<i32>,
    /// The path's throughput the choice assumed, bytes per second.
    pub path_bytes_per_second: f64,
    /// Bytes of sample data.
    pub sample_bytes: u64,
    /// Expected transfer rate with the choice, raw bytes per second (the path's throughput
    /// when sending raw): the bandwidth after compression.
    pub expected_bytes_per_second: f64,
    /// Every candidate tried.
    pub trials: Vec<LevelTrial>,
}

/// Chooses the level for data like `sample` on a path of `path_bytes_per_second` (bytes of
/// incompressible data a second). Compresses the sample once per candidate, in 1 MiB blocks
/// as the transfer does; blocking, so call it off the async threads. With no sample or no
/// measured path, level 1 (the transport's old default) is kept.
pub fn choose_level(sample: &[&[u8]], path_bytes_per_second: f64) -> LevelChoice {
    let sample_bytes: u64 = sample.iter().map(|s| s.len() as u64).sum();
    if sample_bytes == 0 || path_bytes_per_second.is_nan() || path_bytes_per_second <= 0.0 {
        return LevelChoice {
            level: Some(1),
            path_bytes_per_second,
            sample_bytes,
            expected_bytes_per_second: path_bytes_per_second.max(0.0),
            trials: Vec::new(),
        };
    }
    let trials: Vec<LevelTrial> = CANDIDATES
        .iter()
        .map(|&level| {
            let started = Instant::now();
            let mut compressed = 0u64;
            for part in sample {
                for block in part.chunks(1 << 20) {
                    // As the transfer does: a block that does not shrink goes raw.
                    let n = zstd::bulk::compress(block, level)
                        .map(|c| c.len())
                        .unwrap_or(block.len())
                        .min(block.len());
                    compressed += n as u64;
                }
            }
            let seconds = started.elapsed().as_secs_f64().max(1e-6);
            let ratio = (compressed as f64 / sample_bytes as f64).max(1e-6);
            let compress_bytes_per_second = sample_bytes as f64 / seconds;
            LevelTrial {
                level,
                ratio,
                compress_bytes_per_second,
                expected_bytes_per_second: compress_bytes_per_second
                    .min(path_bytes_per_second / ratio),
            }
        })
        .collect();
    let best = trials.iter().max_by(|a, b| {
        a.expected_bytes_per_second
            .total_cmp(&b.expected_bytes_per_second)
    });
    let (level, expected_bytes_per_second) = match best {
        Some(t) if t.expected_bytes_per_second > path_bytes_per_second => {
            (Some(t.level), t.expected_bytes_per_second)
        }
        _ => (None, path_bytes_per_second),
    };
    LevelChoice {
        level,
        path_bytes_per_second,
        sample_bytes,
        expected_bytes_per_second,
        trials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        godwit_core::predict::testdata::noise(len, 0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn incompressible_data_goes_raw() {
        let data = noise(4 << 20);
        let c = choose_level(&[&data], 50e6);
        assert_eq!(c.level, None, "{c:?}");
        assert_eq!(c.expected_bytes_per_second, 50e6);
        assert_eq!(c.trials.len(), CANDIDATES.len());
        assert!(c.trials.iter().all(|t| t.ratio > 0.99), "{c:?}");
    }

    #[test]
    fn compressible_data_on_a_slow_link_is_compressed_and_faster() {
        // Half zeros, half noise: about 2:1.
        let mut data = noise(2 << 20);
        data.extend(vec![0u8; 2 << 20]);
        let c = choose_level(&[&data], 10e6);
        assert!(c.level.is_some(), "{c:?}");
        assert!(c.expected_bytes_per_second > 15e6, "{c:?}");
    }

    #[test]
    fn a_link_faster_than_any_compression_goes_raw() {
        let mut data = noise(2 << 20);
        data.extend(vec![0u8; 2 << 20]);
        // No level compresses at 1 PB/s here.
        let c = choose_level(&[&data], 1e15);
        assert_eq!(c.level, None, "{c:?}");
    }

    #[test]
    fn without_a_sample_or_a_path_the_default_stays() {
        assert_eq!(choose_level(&[], 10e6).level, Some(1));
        assert_eq!(choose_level(&[b"abc"], 0.0).level, Some(1));
    }
}
