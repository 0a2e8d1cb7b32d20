//! Estimators of AR and ARMA coefficients for a zero-mean series `y`, and the checks that keep
//! a fit stationary and invertible.
//!
//! Convention: `y_t = Σ φ_i y_{t−i} + e_t + Σ θ_j e_{t−j}`.

use nalgebra::{DMatrix, DVector};

use super::stats::{autocovariance, least_squares, sum_sq};
use super::PredictError;

/// Result of the Levinson-Durbin recursion.
#[derive(Debug, Clone, PartialEq)]
pub struct Levinson {
    /// AR coefficients `φ_1 … φ_p`.
    pub ar: Vec<f64>,
    /// Innovation variance `v_p`.
    pub variance: f64,
    /// Reflection coefficients (partial autocorrelations) `κ_1 … κ_p`.
    pub reflection: Vec<f64>,
}

/// Levinson-Durbin recursion: solves the Yule-Walker equations `Γ_p φ = γ_{1..p}` for the
/// autocovariances `gamma = [γ_0, …, γ_p]` in `O(p²)`.
///
/// `v_0 = γ_0`; for `k = 1..p`: `κ_k = (γ_k − Σ_{j<k} φ_{k−1,j} γ_{k−j}) / v_{k−1}`,
/// `φ_{k,k} = κ_k`, `φ_{k,j} = φ_{k−1,j} − κ_k φ_{k−1,k−j}`, `v_k = v_{k−1} (1 − κ_k²)`.
pub fn levinson_durbin(gamma: &[f64]) -> Result<Levinson, PredictError> {
    let Some((&g0, rest)) = gamma.split_first() else {
        return Err(PredictError::TooFewSamples { needed: 1, got: 0 });
    };
    if !(g0 > 0.0 && g0.is_finite()) {
        return Err(PredictError::Singular {
            context: "levinson-durbin (γ0 ≤ 0)",
        });
    }
    let p = rest.len();
    let mut phi: Vec<f64> = Vec::with_capacity(p);
    let mut reflection = Vec::with_capacity(p);
    let mut v = g0;
    for k in 1..=p {
        let acc: f64 = (1..k).map(|j| phi[j - 1] * gamma[k - j]).sum();
        let kappa = (gamma[k] - acc) / v;
        let prev = phi.clone();
        for j in 1..k {
            phi[j - 1] = prev[j - 1] - kappa * prev[k - j - 1];
        }
        phi.push(kappa);
        reflection.push(kappa);
        v *= 1.0 - kappa * kappa;
        if !(v > 0.0 && v.is_finite()) {
            return Err(PredictError::Singular {
                context: "levinson-durbin (not positive definite)",
            });
        }
    }
    Ok(Levinson {
        ar: phi,
        variance: v,
        reflection,
    })
}

/// Yule-Walker AR(p) estimate: Levinson-Durbin on the biased sample autocovariances of `x`
/// (which is demeaned first).
pub fn yule_walker(x: &[f64], p: usize) -> Result<Levinson, PredictError> {
    if x.len() <= p {
        return Err(PredictError::TooFewSamples {
            needed: p + 1,
            got: x.len(),
        });
    }
    levinson_durbin(&autocovariance(x, p))
}

/// Burg's AR(p) estimate of a zero-mean series: at each order `k`, the reflection coefficient
/// minimises the sum of forward and backward prediction errors,
/// `κ_k = 2 Σ_t f_{k−1}(t) b_{k−1}(t−1) / Σ_t (f_{k−1}(t)² + b_{k−1}(t−1)²)`, then
/// `f_k(t) = f_{k−1}(t) − κ_k b_{k−1}(t−1)`, `b_k(t) = b_{k−1}(t−1) − κ_k f_{k−1}(t)`, and the
/// coefficients follow the Levinson update. `|κ_k| ≤ 1` by Cauchy-Schwarz, so the fit is
/// stationary (or on the boundary for degenerate input).
pub fn burg(y: &[f64], p: usize) -> Result<Levinson, PredictError> {
    let n = y.len();
    if n <= p {
        return Err(PredictError::TooFewSamples {
            needed: p + 1,
            got: n,
        });
    }
    let mut f = y.to_vec();
    let mut b = y.to_vec();
    let mut phi: Vec<f64> = Vec::with_capacity(p);
    let mut reflection = Vec::with_capacity(p);
    let mut v = sum_sq(y) / n as f64;
    for k in 1..=p {
        let mut num = 0.0;
        let mut den = 0.0;
        for t in k..n {
            num += f[t] * b[t - 1];
            den += f[t] * f[t] + b[t - 1] * b[t - 1];
        }
        let kappa = if den > 0.0 { 2.0 * num / den } else { 0.0 };
        // Descending t: each step reads the old f[t] and b[t − 1] before they are overwritten.
        for t in (k..n).rev() {
            let ft = f[t];
            let bt = b[t - 1];
            f[t] = ft - kappa * bt;
            b[t] = bt - kappa * ft;
        }
        let prev = phi.clone();
        for j in 1..k {
            phi[j - 1] = prev[j - 1] - kappa * prev[k - j - 1];
        }
        phi.push(kappa);
        reflection.push(kappa);
        v *= 1.0 - kappa * kappa;
    }
    Ok(Levinson {
        ar: phi,
        variance: v,
        reflection,
    })
}

/// Reflection coefficients must stay within `1 − ROOT_MARGIN` of the unit circle.
const ROOT_MARGIN: f64 = 1e-3;

/// Whether `1 − φ_1 z − … − φ_p z^p` has all its roots outside the unit circle (with a small
/// margin), by the step-down (Schur-Cohn) recursion that turns `φ` back into reflection
/// coefficients: `κ_k = φ_{k,k}`, `φ_{k−1,j} = (φ_{k,j} + κ_k φ_{k,k−j}) / (1 − κ_k²)`; the
/// polynomial is stable iff every `|κ_k| < 1`. No root finding, no complex arithmetic.
pub fn is_stationary(ar: &[f64]) -> bool {
    let mut a = ar.to_vec();
    while let Some(&kappa) = a.last() {
        if !kappa.is_finite() || kappa.abs() >= 1.0 - ROOT_MARGIN {
            return false;
        }
        let k = a.len();
        let denom = 1.0 - kappa * kappa;
        let next: Vec<f64> = (1..k)
            .map(|j| (a[j - 1] + kappa * a[k - j - 1]) / denom)
            .collect();
        a = next;
    }
    true
}

/// Whether `1 + θ_1 z + … + θ_q z^q` has all its roots outside the unit circle: the same test
/// as [`is_stationary`] applied to `−θ`.
pub fn is_invertible(ma: &[f64]) -> bool {
    let neg: Vec<f64> = ma.iter().map(|t| -t).collect();
    is_stationary(&neg)
}

/// Scales `c_i ← c_i r^i` with `r = 0.98, 0.98², …` until `ok` accepts the coefficients; this
/// divides every root of the polynomial by `r`, moving it outwards. Returns whether anything
/// changed.
fn shrink_until(coef: &mut [f64], ok: fn(&[f64]) -> bool) -> bool {
    if ok(coef) {
        return false;
    }
    let orig = coef.to_vec();
    let mut r = 1.0;
    for _ in 0..400 {
        r *= 0.98;
        let mut ri = 1.0;
        for (c, o) in coef.iter_mut().zip(&orig) {
            ri *= r;
            *c = o * ri;
        }
        if ok(coef) {
            return true;
        }
    }
    coef.iter_mut().for_each(|c| *c = 0.0);
    true
}

/// Shrinks AR and MA coefficients into the stationary and invertible region. Returns whether
/// either had to be changed.
pub(crate) fn make_admissible(ar: &mut [f64], ma: &mut [f64]) -> bool {
    let a = shrink_until(ar, is_stationary);
    let m = shrink_until(ma, is_invertible);
    a || m
}

/// Order of the long autoregression of Hannan-Rissanen: `max(p + q + 1, ⌊10 log10 n⌋)`, at most
/// `n / 4`.
pub(crate) fn long_ar_order(n: usize, p: usize, q: usize) -> usize {
    let rule = (10.0 * (n.max(1) as f64).log10()).floor() as usize;
    rule.min(n / 4).max(p + q + 1)
}

/// Innovations of a long AR fit: `ê_t = y_t − Σ_{i=1}^m a_i y_{t−i}` for `t ≥ m`, 0 before.
pub(crate) fn long_ar_innovations(y: &[f64], m: usize) -> Result<Vec<f64>, PredictError> {
    let long = burg(y, m)?;
    let mut e = vec![0.0; y.len()];
    for t in m..y.len() {
        e[t] = y[t] - (1..=m).map(|i| long.ar[i - 1] * y[t - i]).sum::<f64>();
    }
    Ok(e)
}

/// Hannan-Rissanen ARMA(p, q) estimate of a zero-mean series: fit a long AR(m) by Burg to get
/// innovations `ê_t`, then regress `y_t` on `y_{t−1..t−p}` and `ê_{t−1..t−q}` by least squares
/// over `t ≥ max(p, m + q)`. The result is not forced into the admissible region.
pub fn hannan_rissanen(
    y: &[f64],
    p: usize,
    q: usize,
) -> Result<(Vec<f64>, Vec<f64>), PredictError> {
    let m = long_ar_order(y.len(), p, q);
    let ehat = long_ar_innovations(y, m)?;
    hannan_rissanen_with(y, &ehat, m, p, q)
}

/// The regression step of [`hannan_rissanen`], given long-AR innovations `ehat` (valid from
/// `m`).
pub(crate) fn hannan_rissanen_with(
    y: &[f64],
    ehat: &[f64],
    m: usize,
    p: usize,
    q: usize,
) -> Result<(Vec<f64>, Vec<f64>), PredictError> {
    let k = p + q;
    if k == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let start = p.max(m + q);
    let n = y.len();
    let rows = n.saturating_sub(start);
    if rows < 2 * k + 5 {
        return Err(PredictError::TooFewSamples {
            needed: start + 2 * k + 5,
            got: n,
        });
    }
    let a = DMatrix::from_fn(rows, k, |r, c| {
        let t = start + r;
        if c < p {
            y[t - c - 1]
        } else {
            ehat[t - (c - p) - 1]
        }
    });
    let b = DVector::from_fn(rows, |r, _| y[start + r]);
    let ls = least_squares(&a, &b, "hannan-rissanen regression")?;
    let coef = ls.coef.as_slice();
    Ok((coef[..p].to_vec(), coef[p..].to_vec()))
}

/// Conditional residuals: `e_t = 0` for `t < start`, and for `t ≥ start` (`start ≥ p`)
/// `e_t = y_t − Σ φ_i y_{t−i} − Σ θ_j e_{t−j}`.
pub(crate) fn css_residuals(y: &[f64], ar: &[f64], ma: &[f64], start: usize) -> Vec<f64> {
    let mut e = vec![0.0; y.len()];
    for t in start.max(ar.len())..y.len() {
        let mut v = y[t];
        for (i, a) in ar.iter().enumerate() {
            v -= a * y[t - i - 1];
        }
        for (j, th) in ma.iter().enumerate() {
            if t > j {
                v -= th * e[t - j - 1];
            }
        }
        e[t] = v;
    }
    e
}

/// Refines `(φ, θ)` by conditional least squares, minimising `S = Σ_{t ≥ start} e_t²` with
/// Gauss-Newton: the Jacobian follows the recursions `∂e_t/∂φ_i = −y_{t−i} − Σ_j θ_j ∂e_{t−j}/∂φ_i`
/// and `∂e_t/∂θ_j = −e_{t−j} − Σ_k θ_k ∂e_{t−k}/∂θ_j`; the step `δ` solves `J δ ≈ −e` by least
/// squares and is halved until `S` decreases and the fit stays admissible. Stops after
/// `max_iter` steps or when `S` improves by less than a relative `1e−10`. The input must be
/// admissible. Returns the new coefficients and their residuals.
pub(crate) fn refine_css(
    y: &[f64],
    ar: &[f64],
    ma: &[f64],
    start: usize,
    max_iter: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let p = ar.len();
    let q = ma.len();
    let k = p + q;
    let mut beta: Vec<f64> = ar.iter().chain(ma).copied().collect();
    let mut e = css_residuals(y, ar, ma, start);
    if k == 0 || y.len() <= start + k {
        return (ar.to_vec(), ma.to_vec(), e);
    }
    let s0 = start.max(p);
    let mut ss = sum_sq(&e[s0..]);
    let n = y.len();
    let rows = n - s0;
    let mut jac = vec![0.0; n * k]; // row-major, row t
    for _ in 0..max_iter {
        let theta = &beta[p..];
        jac.iter_mut().for_each(|v| *v = 0.0);
        for t in s0..n {
            for c in 0..k {
                let mut d = if c < p {
                    -y[t - c - 1]
                } else {
                    let j = c - p + 1;
                    if t >= j {
                        -e[t - j]
                    } else {
                        0.0
                    }
                };
                for (jj, th) in theta.iter().enumerate() {
                    let lag = jj + 1;
                    if t >= s0 + lag {
                        d -= th * jac[(t - lag) * k + c];
                    }
                }
                jac[t * k + c] = d;
            }
        }
        let a = DMatrix::from_fn(rows, k, |r, c| jac[(s0 + r) * k + c]);
        let b = DVector::from_fn(rows, |r, _| -e[s0 + r]);
        let Ok(step) = least_squares(&a, &b, "gauss-newton step") else {
            break;
        };
        let mut lambda = 1.0;
        let mut accepted = None;
        for _ in 0..12 {
            let cand: Vec<f64> = beta
                .iter()
                .zip(step.coef.iter())
                .map(|(b, d)| b + lambda * d)
                .collect();
            let (cphi, ctheta) = cand.split_at(p);
            if is_stationary(cphi) && is_invertible(ctheta) {
                let ce = css_residuals(y, cphi, ctheta, start);
                let css = sum_sq(&ce[s0..]);
                if css < ss {
                    accepted = Some((cand, ce, css));
                    break;
                }
            }
            lambda *= 0.5;
        }
        let Some((cand, ce, css)) = accepted else {
            break;
        };
        let gain = (ss - css) / ss.max(f64::MIN_POSITIVE);
        beta = cand;
        e = ce;
        ss = css;
        if gain < 1e-10 {
            break;
        }
    }
    let (phi, theta) = beta.split_at(p);
    (phi.to_vec(), theta.to_vec(), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::testdata;

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn levinson_durbin_on_known_autocovariances() {
        // AR(1), φ = 0.5, σ² = 1: γ = [4/3, 2/3, 1/3]. κ_1 = 0.5, v_1 = 1, κ_2 = 0.
        let ld = levinson_durbin(&[4.0 / 3.0, 2.0 / 3.0, 1.0 / 3.0]).expect("pd");
        assert!(close(&ld.ar, &[0.5, 0.0], 1e-12), "{ld:?}");
        assert!((ld.variance - 1.0).abs() < 1e-12);
        // AR(2), φ = [0.6, −0.3]: ρ1 = φ1/(1 − φ2) = 6/13, ρ2 = φ1 ρ1 + φ2 = −3/130,
        // v = 1 − φ1 ρ1 − φ2 ρ2 = 93.1/130, κ = [6/13, −0.3].
        let ld = levinson_durbin(&[1.0, 6.0 / 13.0, -3.0 / 130.0]).expect("pd");
        assert!(close(&ld.ar, &[0.6, -0.3], 1e-12), "{ld:?}");
        assert!((ld.variance - 93.1 / 130.0).abs() < 1e-12);
        assert!(close(&ld.reflection, &[6.0 / 13.0, -0.3], 1e-12));
        // Not positive definite.
        assert!(levinson_durbin(&[1.0, 1.0, 1.0]).is_err());
        assert!(levinson_durbin(&[0.0]).is_err());
        assert!(levinson_durbin(&[]).is_err());
    }

    #[test]
    fn stationarity_and_invertibility_table() {
        let table: &[(&[f64], bool)] = &[
            (&[], true),
            (&[0.5], true),
            (&[1.0], false),
            (&[-1.2], false),
            (&[0.6, -0.3], true),
            (&[1.2, -0.35], true), // roots 2 and 1/0.7
            (&[0.5, 0.5], false),  // root at 1
            (&[1.9, -0.95], true), // complex pair of modulus 1/√0.95
            (&[0.0, 0.0, 1.01], false),
        ];
        for (ar, want) in table {
            assert_eq!(is_stationary(ar), *want, "is_stationary({ar:?})");
        }
        assert!(is_invertible(&[0.5]) && is_invertible(&[-0.5]));
        assert!(!is_invertible(&[1.5]) && !is_invertible(&[-1.0]));
    }

    #[test]
    fn shrinking_makes_a_fit_admissible() {
        let mut ar = vec![1.3, 0.2];
        let mut ma = vec![-1.4];
        assert!(make_admissible(&mut ar, &mut ma));
        assert!(is_stationary(&ar) && is_invertible(&ma));
        let mut ar = vec![0.5];
        let mut ma = vec![0.3];
        assert!(!make_admissible(&mut ar, &mut ma));
        assert_eq!((ar, ma), (vec![0.5], vec![0.3]));
    }

    #[test]
    fn burg_and_yule_walker_recover_ar2() {
        let phi = [0.6, -0.3];
        let y = testdata::arma(&phi, &[], 2000, 1.0, 7);
        let b = burg(&y, 2).expect("burg");
        assert!(close(&b.ar, &phi, 0.1), "burg {:?}", b.ar);
        assert!((b.variance - 1.0).abs() < 0.1);
        let yw = yule_walker(&y, 2).expect("yw");
        assert!(close(&yw.ar, &phi, 0.1), "yule-walker {:?}", yw.ar);
    }

    #[test]
    fn hannan_rissanen_then_css_recovers_arma11_and_ma1() {
        for seed in [1, 2, 3] {
            let y = testdata::arma(&[0.7], &[0.3], 2000, 1.0, seed);
            let (ar, ma) = hannan_rissanen(&y, 1, 1).expect("hr");
            assert!(
                close(&ar, &[0.7], 0.1) && close(&ma, &[0.3], 0.1),
                "hr {ar:?} {ma:?}"
            );
            let (ar, ma, _) = refine_css(&y, &ar, &ma, 1, 20);
            assert!(
                close(&ar, &[0.7], 0.1) && close(&ma, &[0.3], 0.1),
                "css {ar:?} {ma:?}"
            );
            let y = testdata::arma(&[], &[0.5], 2000, 1.0, seed);
            let (ar, ma) = hannan_rissanen(&y, 0, 1).expect("hr");
            let (_, ma, _) = refine_css(&y, &ar, &ma, 0, 20);
            assert!(close(&ma, &[0.5], 0.1), "ma {ma:?}");
        }
    }

    #[test]
    fn css_residuals_by_hand() {
        // y = [1, 2, 3], φ = 0.5, θ = 0.2, start = 1:
        // e_1 = 2 − 0.5·1 − 0.2·0 = 1.5; e_2 = 3 − 0.5·2 − 0.2·1.5 = 1.7.
        let e = css_residuals(&[1.0, 2.0, 3.0], &[0.5], &[0.2], 1);
        assert!(close(&e, &[0.0, 1.5, 1.7], 1e-12), "{e:?}");
    }
}
