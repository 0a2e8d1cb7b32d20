//! The augmented Dickey-Fuller test that decides whether a series is differenced.

use nalgebra::{DMatrix, DVector};
use serde::Serialize;

use super::stats::{least_squares, mean};
use super::PredictError;

/// Fewest samples [`adf_test`] accepts.
const MIN_ADF_SAMPLES: usize = 20;

/// Outcome of an augmented Dickey-Fuller test with a constant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdfTest {
    /// The t-statistic of `γ̂`, `τ = γ̂ / se(γ̂)`.
    pub statistic: f64,
    /// Number of lagged differences `k` in the regression.
    pub lags: usize,
    /// Number of observations `T` in the final regression.
    pub n_obs: usize,
    /// MacKinnon's (2010) approximate 5% critical value for `T`.
    pub critical_5pct: f64,
}

impl AdfTest {
    /// Whether the unit-root null is rejected at 5%, `τ < τ_{0.05}(T)`: the series looks
    /// stationary.
    pub fn rejects_unit_root(&self) -> bool {
        self.statistic < self.critical_5pct
    }
}

/// MacKinnon (2010, Table 2, `τ_c`, one variable) response surface for the 5% critical value of
/// the Dickey-Fuller t-test with a constant:
/// `τ_{0.05}(T) = −2.86154 − 2.8903/T − 4.234/T² − 40.040/T³`.
pub(crate) fn mackinnon_5pct(t: usize) -> f64 {
    let t = t as f64;
    -2.86154 - 2.8903 / t - 4.234 / (t * t) - 40.040 / (t * t * t)
}

/// Augmented Dickey-Fuller regression with a constant,
/// `Δx_t = α + γ x_{t−1} + Σ_{i=1}^k β_i Δx_{t−i} + u_t`, testing `γ = 0` (a unit root).
///
/// The lag order `k` is chosen by AIC (`T ln(RSS/T) + 2(k + 2)`) among `0..=k_max` on the common
/// sample of the `k_max` regression, with Schwert's rule `k_max = ⌊12 (n/100)^{1/4}⌋` capped at
/// `n/2 − 3`; the test is then run with `k` on its largest sample, as statsmodels' `adfuller`
/// does with `autolag="AIC"`.
pub fn adf_test(x: &[f64]) -> Result<AdfTest, PredictError> {
    let n = x.len();
    if n < MIN_ADF_SAMPLES {
        return Err(PredictError::TooFewSamples {
            needed: MIN_ADF_SAMPLES,
            got: n,
        });
    }
    let dx: Vec<f64> = x.windows(2).map(|w| w[1] - w[0]).collect();
    let schwert = (12.0 * (n as f64 / 100.0).powf(0.25)).floor() as usize;
    let k_max = schwert.min(n / 2 - 3);
    let k = select_lag(x, &dx, k_max)?;
    let (ls, rows) = adf_regression(x, &dx, k, k)?;
    let df = rows.saturating_sub(k + 2);
    if df == 0 {
        return Err(PredictError::TooFewSamples {
            needed: n + 1,
            got: n,
        });
    }
    let s2 = ls.rss / df as f64;
    let var = ls.unscaled_variance(1).ok_or(PredictError::Singular {
        context: "adf regression",
    })? * s2;
    if !(var > 0.0 && var.is_finite()) {
        return Err(PredictError::Singular {
            context: "adf regression (zero residual variance)",
        });
    }
    Ok(AdfTest {
        statistic: ls.coef[1] / var.sqrt(),
        lags: k,
        n_obs: rows,
        critical_5pct: mackinnon_5pct(rows),
    })
}

/// The lag order minimising `AIC(k) = T ln(RSS_k/T) + 2(k + 2)` over `k = 0..=k_max`, all on the
/// rows of the `k_max` regression. The regressions are nested, so one Gram matrix `ZᵀZ` of the
/// `k_max` design serves them all: each `k` solves its leading `(k + 2)` block by Cholesky and
/// `RSS_k = bᵀb − β̂ᵀ(Zᵀb)`. The level column is centred, which leaves `γ̂` unchanged (the
/// constant absorbs the shift) and keeps the Gram matrix well conditioned.
fn select_lag(x: &[f64], dx: &[f64], k_max: usize) -> Result<usize, PredictError> {
    let from = k_max;
    let rows = dx.len().saturating_sub(from);
    let cols = k_max + 2;
    if rows <= cols {
        return Err(PredictError::TooFewSamples {
            needed: x.len() + cols - rows + 1,
            got: x.len(),
        });
    }
    let x_mean = mean(&x[from..from + rows]);
    let z = DMatrix::from_fn(rows, cols, |r, c| {
        let i = from + r;
        match c {
            0 => 1.0,
            1 => x[i] - x_mean,
            _ => dx[i - (c - 1)],
        }
    });
    let b = DVector::from_fn(rows, |r, _| dx[from + r]);
    let gram = z.transpose() * &z;
    let zb = z.transpose() * &b;
    let bb = b.norm_squared();
    let t = rows as f64;
    let mut best: Option<(f64, usize)> = None;
    for k in 0..=k_max {
        let m = k + 2;
        let Some(chol) = gram.view((0, 0), (m, m)).into_owned().cholesky() else {
            continue;
        };
        let rhs = zb.rows(0, m).into_owned();
        let beta = chol.solve(&rhs);
        let rss = (bb - beta.dot(&rhs)).max(f64::MIN_POSITIVE);
        let aic = t * (rss / t).ln() + 2.0 * m as f64;
        if best.is_none_or(|(a, _)| aic < a) {
            best = Some((aic, k));
        }
    }
    best.map(|(_, k)| k).ok_or(PredictError::Singular {
        context: "adf regression",
    })
}

/// The ADF regression with `k` lagged differences over the rows `i = from..dx.len()` of
/// `Δx_i = x_{i+1} − x_i` (`from ≥ k`). Columns: `1, x_i, Δx_{i−1}, …, Δx_{i−k}`.
fn adf_regression(
    x: &[f64],
    dx: &[f64],
    k: usize,
    from: usize,
) -> Result<(super::stats::LeastSquares, usize), PredictError> {
    let rows = dx.len().saturating_sub(from);
    let a = DMatrix::from_fn(rows, k + 2, |r, c| {
        let i = from + r;
        match c {
            0 => 1.0,
            1 => x[i],
            _ => dx[i - (c - 1)],
        }
    });
    let b = DVector::from_fn(rows, |r, _| dx[from + r]);
    Ok((least_squares(&a, &b, "adf regression")?, rows))
}

/// Whether `x` should be differenced once before an ARMA fit: true when the ADF test does not
/// reject a unit root at 5%. A series the test cannot handle (too short, constant) is taken as
/// stationary, since differencing cannot help it.
pub fn needs_differencing(x: &[f64]) -> bool {
    adf_test(x).is_ok_and(|t| !t.rejects_unit_root())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::testdata;

    #[test]
    fn mackinnon_values() {
        // Large T tends to the asymptotic −2.86154; T = 100 by hand:
        // −2.86154 − 0.028903 − 0.0004234 − 0.00004004 = −2.89090644.
        assert!((mackinnon_5pct(100) + 2.890_906_44).abs() < 1e-8);
        assert!((mackinnon_5pct(1_000_000) + 2.86154).abs() < 1e-5);
    }

    #[test]
    fn random_walks_are_differenced() {
        for (seed, n) in [(1, 300), (2, 400), (3, 500), (4, 600), (5, 300), (6, 600)] {
            let x = testdata::random_walk(n, seed);
            let t = adf_test(&x).expect("adf");
            assert!(needs_differencing(&x), "seed {seed}, n {n}: {t:?}");
        }
    }

    #[test]
    fn stationary_ar1_is_not_differenced() {
        for (seed, n) in [(1, 300), (2, 400), (3, 500), (4, 600), (5, 300), (6, 600)] {
            let x: Vec<f64> = testdata::arma(&[0.5], &[], n, 1.0, seed)
                .iter()
                .map(|v| v + 10.0)
                .collect();
            let t = adf_test(&x).expect("adf");
            assert!(!needs_differencing(&x), "seed {seed}, n {n}: {t:?}");
            assert!(t.statistic < -5.0, "far into the rejection region: {t:?}");
        }
    }

    #[test]
    fn degenerate_series_are_not_differenced() {
        assert!(!needs_differencing(&[3.0; 100]));
        assert!(!needs_differencing(&[1.0, 2.0, 3.0]));
        assert!(adf_test(&[1.0; 10]).is_err());
    }
}
