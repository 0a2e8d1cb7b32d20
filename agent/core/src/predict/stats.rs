//! Numerical helpers shared by the estimators: moments, the normal quantile, least squares.

use nalgebra::{DMatrix, DVector};

use super::PredictError;

/// Arithmetic mean, `x̄ = (1/n) Σ x_t`; 0 for an empty slice.
pub(crate) fn mean(x: &[f64]) -> f64 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f64>() / x.len() as f64
    }
}

/// Sum of squares `Σ x_t²`.
pub(crate) fn sum_sq(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

/// Biased sample autocovariances `γ̂(k) = (1/n) Σ_{t=k}^{n−1} (x_t − x̄)(x_{t−k} − x̄)` for
/// `k = 0..=max_lag` (lags beyond `n − 1` are 0). The `1/n` divisor keeps the sequence positive
/// semi-definite, which Levinson-Durbin needs.
pub fn autocovariance(x: &[f64], max_lag: usize) -> Vec<f64> {
    let n = x.len();
    let m = mean(x);
    let c: Vec<f64> = x.iter().map(|v| v - m).collect();
    (0..=max_lag)
        .map(|k| {
            if k >= n {
                0.0
            } else {
                c[k..]
                    .iter()
                    .zip(&c[..n - k])
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
                    / n as f64
            }
        })
        .collect()
}

/// Median of a slice (mean of the two middle values when the length is even); sorts `buf`.
/// `None` when empty.
pub(crate) fn median_in_place(buf: &mut [f64]) -> Option<f64> {
    if buf.is_empty() {
        return None;
    }
    buf.sort_unstable_by(f64::total_cmp);
    let n = buf.len();
    Some(if n % 2 == 1 {
        buf[n / 2]
    } else {
        0.5 * (buf[n / 2 - 1] + buf[n / 2])
    })
}

/// Quantile function of the standard normal distribution, `Φ⁻¹(p)`, by Acklam's rational
/// approximation (relative error below 1.15e−9 over the whole range). NaN outside `(0, 1)`.
///
/// Central region `|p − 0.5| ≤ 0.47575`: with `q = p − 0.5`, `r = q²`,
/// `Φ⁻¹(p) = q·A(r)/B(r)`; tails: with `s = √(−2 ln min(p, 1 − p))`, `±C(s)/D(s)`.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.02425;
    if !(p > 0.0 && p < 1.0) {
        return f64::NAN;
    }
    let tail = |pt: f64| {
        let s = (-2.0 * pt.ln()).sqrt();
        (((((C[0] * s + C[1]) * s + C[2]) * s + C[3]) * s + C[4]) * s + C[5])
            / ((((D[0] * s + D[1]) * s + D[2]) * s + D[3]) * s + 1.0)
    };
    if p < P_LOW {
        tail(p)
    } else if p > 1.0 - P_LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// A least-squares solution of `A β ≈ b`.
pub(crate) struct LeastSquares {
    /// `β̂`.
    pub coef: DVector<f64>,
    /// Residual sum of squares `‖b − A β̂‖²`.
    pub rss: f64,
    /// The `R` factor of `A = QR` (k × k), absent when the ridge fallback was used.
    r: Option<DMatrix<f64>>,
}

impl LeastSquares {
    /// `[(AᵀA)⁻¹]_jj = ‖R⁻ᵀ e_j‖²`, the unscaled variance of `β̂_j`. `None` after a ridge fallback.
    pub(super) fn unscaled_variance(&self, j: usize) -> Option<f64> {
        let r = self.r.as_ref()?;
        let mut e = DVector::zeros(r.ncols());
        e[j] = 1.0;
        let z = r.tr_solve_upper_triangular(&e)?;
        Some(z.norm_squared())
    }
}

/// Relative size of the smallest diagonal entry of `R` below which `A` counts as rank deficient.
const RANK_TOL: f64 = 1e-10;

/// Solves `min ‖A β − b‖²` by Householder QR: `β̂ = R⁻¹ (Qᵀ b)_{1..k}`, and the residual sum of
/// squares is the squared norm of the rest of `Qᵀ b`. When `R` is (nearly) singular, falls back
/// to the ridge normal equations `(AᵀA + λI) β = Aᵀ b` with `λ = 1e−8 · tr(AᵀA)/k`, solved by
/// Cholesky.
pub(crate) fn least_squares(
    a: &DMatrix<f64>,
    b: &DVector<f64>,
    context: &'static str,
) -> Result<LeastSquares, PredictError> {
    let (n, k) = a.shape();
    if k == 0 || n < k || b.len() != n {
        return Err(PredictError::Singular { context });
    }
    let qr = a.clone().qr();
    let r = qr.r();
    let max_diag = (0..k).map(|i| r[(i, i)].abs()).fold(0.0, f64::max);
    let min_diag = (0..k)
        .map(|i| r[(i, i)].abs())
        .fold(f64::INFINITY, f64::min);
    if max_diag > 0.0 && min_diag > RANK_TOL * max_diag {
        let mut qtb = b.clone();
        qr.q_tr_mul(&mut qtb);
        let head = qtb.rows(0, k).into_owned();
        let rss = qtb.rows(k, n - k).norm_squared();
        if let Some(coef) = r.solve_upper_triangular(&head) {
            if coef.iter().all(|c| c.is_finite()) {
                return Ok(LeastSquares {
                    coef,
                    rss,
                    r: Some(r),
                });
            }
        }
    }
    // Ridge fallback.
    let ata = a.transpose() * a;
    let atb = a.transpose() * b;
    let lambda = 1e-8 * ata.trace() / k as f64;
    if !(lambda > 0.0 && lambda.is_finite()) {
        return Err(PredictError::Singular { context });
    }
    let chol = (ata + DMatrix::identity(k, k) * lambda)
        .cholesky()
        .ok_or(PredictError::Singular { context })?;
    let coef = chol.solve(&atb);
    if !coef.iter().all(|c| c.is_finite()) {
        return Err(PredictError::Singular { context });
    }
    let rss = (b - a * &coef).norm_squared();
    Ok(LeastSquares { coef, rss, r: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_table() {
        let table = [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.9, 1.281_551_565_544_600_4),
            (0.01, -2.326_347_874_040_840_8),
            (0.001, -3.090_232_306_167_813_5),
            (0.1, -1.281_551_565_544_600_4),
        ];
        for (p, z) in table {
            let got = normal_quantile(p);
            assert!((got - z).abs() < 1e-8, "Φ⁻¹({p}) = {got}, want {z}");
        }
        assert!(normal_quantile(0.0).is_nan());
        assert!(normal_quantile(1.0).is_nan());
        assert!(normal_quantile(f64::NAN).is_nan());
    }

    #[test]
    fn autocovariance_by_hand() {
        // x = [1, 2, 3, 4]: x̄ = 2.5, c = [−1.5, −0.5, 0.5, 1.5].
        let g = autocovariance(&[1.0, 2.0, 3.0, 4.0], 2);
        assert!((g[0] - 5.0 / 4.0).abs() < 1e-12);
        assert!((g[1] - (0.75 - 0.25 + 0.75) / 4.0).abs() < 1e-12);
        assert!((g[2] - (-0.75 - 0.75) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn least_squares_exact_line_and_ridge_fallback() {
        // y = 1 + 2 t exactly.
        let a = DMatrix::from_fn(5, 2, |i, j| if j == 0 { 1.0 } else { i as f64 });
        let b = DVector::from_fn(5, |i, _| 1.0 + 2.0 * i as f64);
        let ls = least_squares(&a, &b, "test").expect("full rank");
        assert!((ls.coef[0] - 1.0).abs() < 1e-12 && (ls.coef[1] - 2.0).abs() < 1e-12);
        assert!(ls.rss < 1e-20);
        assert!(ls.unscaled_variance(1).is_some());
        // Two identical columns: the ridge splits the weight evenly.
        let a = DMatrix::from_fn(4, 2, |i, _| 1.0 + i as f64);
        let b = DVector::from_fn(4, |i, _| 2.0 * (1.0 + i as f64));
        let ls = least_squares(&a, &b, "test").expect("ridge");
        assert!((ls.coef[0] - 1.0).abs() < 1e-6 && (ls.coef[1] - 1.0).abs() < 1e-6);
        assert!(ls.unscaled_variance(0).is_none());
        // All zero: no solution.
        let a = DMatrix::zeros(4, 2);
        assert!(least_squares(&a, &b, "test").is_err());
    }
}
