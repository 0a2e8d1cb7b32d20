//! Synthetic demand traces, deterministic by seed, with structure a forecaster can exploit:
//! daily cycles (a compressed "day"), trends, bursts that ramp up, and autocorrelated noise.

use super::rng::Rng;
use super::trace::{Demand, Trace};

/// Length of a compressed "day", in steps.
pub const DAY: usize = 600;

/// The shape of a synthetic trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A daily cycle with a random phase, plus noise.
    Daily,
    /// A backlog that grows linearly for about a day and a half and then drains, plus a small
    /// daily cycle and noise.
    Trend,
    /// A low base with bursts that ramp up over tens of steps, hold, and ramp down.
    Burst,
    /// An AR(1) process around a mean.
    Noise,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Daily, Shape::Trend, Shape::Burst, Shape::Noise];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Daily => "daily",
            Shape::Trend => "trend",
            Shape::Burst => "burst",
            Shape::Noise => "noise",
        }
    }
}

/// A trace of `steps` steps of `shape`, with a CPU mean near 1 core before scaling; memory and
/// dirty rate follow the CPU loosely. The same arguments always give the same trace.
pub fn generate(shape: Shape, seed: u64, steps: usize) -> Trace {
    let mut rng = Rng::derive(seed, shape as u64 + 1);
    let phase = rng.range(0.0, DAY as f64);
    let mut ar = 0.0;
    let mut cpu = Vec::with_capacity(steps);
    match shape {
        Shape::Daily => {
            let base = rng.range(0.25, 0.5);
            let amp = rng.range(1.0, 1.5);
            for t in 0..steps {
                ar = 0.8 * ar + 0.04 * rng.normal();
                cpu.push(base + amp * cycle(t as f64 + phase) + ar);
            }
        }
        Shape::Trend => {
            let period = (DAY as f64 * rng.range(1.2, 1.8)) as usize;
            let lo = rng.range(0.3, 0.5);
            let hi = rng.range(1.4, 1.9);
            let start = rng.below(period);
            for t in 0..steps {
                ar = 0.8 * ar + 0.03 * rng.normal();
                let x = ((t + start) % period) as f64 / period as f64;
                // Grows over 80% of the period, drains over the rest.
                let level = if x < 0.8 {
                    lo + (hi - lo) * x / 0.8
                } else {
                    hi - (hi - lo) * (x - 0.8) / 0.2
                };
                cpu.push(level + 0.15 * cycle(t as f64 + phase) + ar);
            }
        }
        Shape::Burst => {
            let base = rng.range(0.4, 0.6);
            let mut burst_left = 0usize;
            let (mut ramp, mut hold, mut height) = (1usize, 1usize, 0.0);
            for _ in 0..steps {
                ar = 0.8 * ar + 0.03 * rng.normal();
                if burst_left == 0 && rng.uniform() < 1.0 / 300.0 {
                    ramp = 20 + rng.below(40);
                    hold = 60 + rng.below(120);
                    height = rng.range(0.8, 1.4);
                    burst_left = 2 * ramp + hold;
                }
                let level = if burst_left == 0 {
                    0.0
                } else {
                    let done = 2 * ramp + hold - burst_left;
                    burst_left -= 1;
                    let f = if done < ramp {
                        done as f64 / ramp as f64
                    } else if done < ramp + hold {
                        1.0
                    } else {
                        (2 * ramp + hold - done) as f64 / ramp as f64
                    };
                    height * f
                };
                cpu.push(base + level + ar);
            }
        }
        Shape::Noise => {
            let mean = rng.range(0.7, 1.1);
            for _ in 0..steps {
                ar = 0.95 * ar + 0.05 * rng.normal();
                cpu.push(mean + ar);
            }
        }
    }
    let mem_base = rng.range(0.3, 1.5) * GIB;
    let mem_per_core = rng.range(0.05, 0.3) * GIB;
    let dirty_per_core = rng.range(2.0, 30.0) * MIB;
    let steps = cpu
        .into_iter()
        .map(|c| {
            let c = f64::max(c, 0.02);
            Demand {
                cpu: c,
                mem: mem_base + mem_per_core * c,
                dirty: dirty_per_core * c,
            }
        })
        .collect();
    Trace {
        name: format!("{}-{seed}", shape.name()),
        steps,
    }
}

/// 0 at the night, 1 at the peak of the day, smooth in between.
fn cycle(t: f64) -> f64 {
    0.5 - 0.5 * (2.0 * std::f64::consts::PI * t / DAY as f64).cos()
}

pub const MIB: f64 = 1024.0 * 1024.0;
pub const GIB: f64 = 1024.0 * MIB;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        for shape in Shape::ALL {
            let a = generate(shape, 3, 2000);
            assert_eq!(a, generate(shape, 3, 2000), "{shape:?}");
            assert_ne!(a.steps, generate(shape, 4, 2000).steps, "{shape:?}");
            assert_eq!(a.len(), 2000);
            assert!(a
                .steps
                .iter()
                .all(|d| d.cpu > 0.0 && d.mem > 0.0 && d.dirty >= 0.0));
            let m = a.mean_cpu();
            assert!((0.3..2.0).contains(&m), "{shape:?} mean {m}");
        }
    }

    #[test]
    fn daily_cycle_repeats_after_a_day() {
        let t = generate(Shape::Daily, 9, 3 * DAY);
        let mean_abs_diff = (0..DAY)
            .map(|i| (t.steps[i].cpu - t.steps[i + DAY].cpu).abs())
            .sum::<f64>()
            / DAY as f64;
        let spread = t.steps.iter().map(|d| d.cpu).fold(0.0, f64::max)
            - t.steps.iter().map(|d| d.cpu).fold(f64::MAX, f64::min);
        assert!(mean_abs_diff < 0.25 * spread, "{mean_abs_diff} vs {spread}");
    }
}
