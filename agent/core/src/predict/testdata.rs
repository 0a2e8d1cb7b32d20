//! Deterministic simulated data for tests and benchmarks: a SplitMix64 generator, normal
//! draws by Box-Muller, ARMA / random-walk simulators, and incompressible bytes ([`noise`]).
//! Not a general-purpose RNG.

/// SplitMix64 (Steele, Lea and Flood 2014) with a Box-Muller normal sampler.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed,
            spare: None,
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal by Box-Muller: with `u1 ∈ (0, 1]`, `u2 ∈ [0, 1)`,
    /// `√(−2 ln u1)·cos(2π u2)` and `√(−2 ln u1)·sin(2π u2)` (the second kept for the next call).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// `n` samples of the zero-mean ARMA process `y_t = Σ φ_i y_{t−i} + e_t + Σ θ_j e_{t−j}`,
/// `e_t ~ N(0, σ²)`, after a burn-in of 500 samples.
pub fn arma(phi: &[f64], theta: &[f64], n: usize, sigma: f64, seed: u64) -> Vec<f64> {
    const BURN: usize = 500;
    let mut rng = Rng::new(seed);
    let total = n + BURN;
    let mut y = vec![0.0; total];
    let mut e = vec![0.0; total];
    for t in 0..total {
        e[t] = sigma * rng.normal();
        let mut v = e[t];
        for (i, a) in phi.iter().enumerate() {
            if t > i {
                v += a * y[t - i - 1];
            }
        }
        for (j, b) in theta.iter().enumerate() {
            if t > j {
                v += b * e[t - j - 1];
            }
        }
        y[t] = v;
    }
    y.split_off(BURN)
}

/// `n` samples of a Gaussian random walk `x_t = x_{t−1} + e_t`, `e_t ~ N(0, 1)`, `x_0 = e_0`.
pub fn random_walk(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut x = 0.0;
    (0..n)
        .map(|_| {
            x += rng.normal();
            x
        })
        .collect()
}

/// `len` pseudo-random (incompressible) bytes from `seed` by xorshift64; the same seed gives
/// the same bytes (an even seed is made odd, as xorshift needs a non-zero state).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_roughly_standard() {
        let a: Vec<f64> = (0..4)
            .map({
                let mut r = Rng::new(42);
                move |_| r.normal()
            })
            .collect();
        let b: Vec<f64> = (0..4)
            .map({
                let mut r = Rng::new(42);
                move |_| r.normal()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let z: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let m = z.iter().sum::<f64>() / z.len() as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / z.len() as f64;
        assert!(
            m.abs() < 0.03 && (v - 1.0).abs() < 0.05,
            "mean {m}, var {v}"
        );
    }
}
