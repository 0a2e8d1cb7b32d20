//! Seasonality: the dominant period of a series, found by a least-squares periodogram, and a
//! harmonic regression at that period.
//!
//! With `P` the period and `t` the sample index (0 at the first fitted sample), the seasonal
//! component is `s(t) = Σ_{k=1}^K a_k cos(2πkt/P) + b_k sin(2πkt/P)`; it has mean zero over a
//! period, so the level and any trend stay with the ARIMA part of the model.

use std::f64::consts::TAU;

use nalgebra::{DMatrix, DVector};

use super::stats::{least_squares, mean};

/// Shortest period looked for, in samples.
pub(crate) const MIN_PERIOD: usize = 8;
/// Most harmonic pairs fitted at a period.
pub(crate) const MAX_HARMONICS: usize = 3;
/// The significance rule of the scan: the best single harmonic pair must explain at least this
/// fraction of the variance left after removing a straight line. Below it, the period is not
/// looked at further (and the plain model is kept without paying for a seasonal fit).
pub(crate) const MIN_EXPLAINED: f64 = 0.2;

/// The outcome of [`scan_period`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PeriodScan {
    /// Period whose harmonic pair explains the most variance.
    pub period: usize,
    /// Fraction of the detrended variance that pair explains, in `[0, 1]`.
    pub explained: f64,
    /// Number of periods tried.
    pub candidates: usize,
}

/// Least-squares periodogram over the integer periods `MIN_PERIOD ..= n/2` (at least two full
/// cycles in the series): for each period `P`, the share of the variance of `x` (after a
/// least-squares line `α + βt` is removed) explained by regressing it on `cos(2πt/P)`,
/// `sin(2πt/P)` together with `1` and `t`. Returns the best period, or `None` when the range is
/// empty or the series is (after the line) constant.
///
/// The data enter only through `Σ u_t cos(2πt/P)` and `Σ u_t sin(2πt/P)`, one pass over `x` for
/// all periods (the cosines and sines follow a rotation recurrence); the other sums have closed
/// forms. The scan is `O(n²/2)` multiply-adds.
pub(crate) fn scan_period(x: &[f64]) -> Option<PeriodScan> {
    let n = x.len();
    let max_period = n / 2;
    if max_period < MIN_PERIOD {
        return None;
    }
    let nf = n as f64;
    let t_mean = (nf - 1.0) / 2.0;
    let stt: f64 = (0..n).map(|t| (t as f64 - t_mean).powi(2)).sum();
    let x_mean = mean(x);
    let slope = x
        .iter()
        .enumerate()
        .map(|(t, v)| (t as f64 - t_mean) * (v - x_mean))
        .sum::<f64>()
        / stt;
    let u: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(t, v)| v - x_mean - slope * (t as f64 - t_mean))
        .collect();
    let suu: f64 = u.iter().map(|v| v * v).sum();
    let scale = x.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(1.0);
    if suu.is_nan() || suu <= (1e-12 * scale).powi(2) * nf {
        return None;
    }
    // Σ u_t cos(ω_P t) and Σ u_t sin(ω_P t) for all periods at once: the loop over periods is
    // inner, so its independent rotations vectorise.
    let periods: Vec<usize> = (MIN_PERIOD..=max_period).collect();
    let m = periods.len();
    let (mut cw, mut sw) = (vec![0.0; m], vec![0.0; m]);
    for (j, p) in periods.iter().enumerate() {
        (sw[j], cw[j]) = (TAU / *p as f64).sin_cos();
    }
    let (mut c, mut s) = (vec![1.0; m], vec![0.0; m]);
    let (mut uc, mut us) = (vec![0.0; m], vec![0.0; m]);
    for ut in &u {
        for j in 0..m {
            uc[j] += ut * c[j];
            us[j] += ut * s[j];
            let c_next = c[j] * cw[j] - s[j] * sw[j];
            s[j] = s[j] * cw[j] + c[j] * sw[j];
            c[j] = c_next;
        }
    }
    let mut best: Option<(f64, usize)> = None;
    for (j, &period) in periods.iter().enumerate() {
        let omega = TAU / period as f64;
        // Closed forms: G0(ω) = Σ e^{iωt} = (1 − e^{iωn})/(1 − e^{iω}),
        // G1(ω) = Σ t e^{iωt} = (e^{iω} − n e^{iωn} + (n − 1) e^{iω(n+1)})/(1 − e^{iω})².
        let (g0, g1) = geometric_sums(omega, n);
        let (g0_2, _) = geometric_sums(2.0 * omega, n);
        let (sc, ss_) = g0;
        let (stc, sts) = (g1.0 - t_mean * g0.0, g1.1 - t_mean * g0.1);
        let scc = 0.5 * nf + 0.5 * g0_2.0;
        let sss = 0.5 * nf - 0.5 * g0_2.0;
        let scs = 0.5 * g0_2.1;
        // Inner products of cos and sin after projecting out 1 and t (u is already orthogonal
        // to both).
        let cc = scc - sc * sc / nf - stc * stc / stt;
        let ss = sss - ss_ * ss_ / nf - sts * sts / stt;
        let cs = scs - sc * ss_ / nf - stc * sts / stt;
        let det = cc * ss - cs * cs;
        if det.is_nan() || det <= 1e-9 * cc.max(ss).powi(2) {
            continue;
        }
        let a = (ss * uc[j] - cs * us[j]) / det;
        let b = (cc * us[j] - cs * uc[j]) / det;
        let explained = a * uc[j] + b * us[j];
        if best.is_none_or(|(e, _)| explained > e) {
            best = Some((explained, period));
        }
    }
    let (explained, period) = best?;
    Some(PeriodScan {
        period,
        explained: (explained / suu).clamp(0.0, 1.0),
        candidates: max_period + 1 - MIN_PERIOD,
    })
}

/// `(G0, G1)` as `(re, im)` pairs: `G0 = Σ_{t<n} e^{iωt}`, `G1 = Σ_{t<n} t e^{iωt}`, for
/// `0 < ω < 2π`.
fn geometric_sums(omega: f64, n: usize) -> ((f64, f64), (f64, f64)) {
    let mul = |a: (f64, f64), b: (f64, f64)| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
    let div = |a: (f64, f64), b: (f64, f64)| {
        let d = b.0 * b.0 + b.1 * b.1;
        ((a.0 * b.0 + a.1 * b.1) / d, (a.1 * b.0 - a.0 * b.1) / d)
    };
    let nf = n as f64;
    let z = (omega.cos(), omega.sin());
    let zn = ((omega * nf).cos(), (omega * nf).sin());
    let zn1 = mul(zn, z);
    let one_minus_z = (1.0 - z.0, -z.1);
    let g0 = div((1.0 - zn.0, -zn.1), one_minus_z);
    let num = (
        z.0 - nf * zn.0 + (nf - 1.0) * zn1.0,
        z.1 - nf * zn.1 + (nf - 1.0) * zn1.1,
    );
    let g1 = div(num, mul(one_minus_z, one_minus_z));
    (g0, g1)
}

/// Harmonic regression at `period`: regresses `x` on `1`, `t` and `K` pairs
/// `cos(2πkt/P), sin(2πkt/P)`, `K ≤ MAX_HARMONICS` (and `2K < P`) chosen by
/// `BIC = n ln(RSS/n) + (2 + 2K) ln n`. Returns the pairs `(a_k, b_k)`; the line is discarded
/// (the ARIMA part fits level and trend). `None` when no regression could be solved.
pub(crate) fn fit_harmonics(x: &[f64], period: usize) -> Option<Vec<(f64, f64)>> {
    let n = x.len();
    let nf = n as f64;
    let t_mean = (nf - 1.0) / 2.0;
    let k_max = MAX_HARMONICS.min((period - 1) / 2).max(1);
    let b = DVector::from_column_slice(x);
    let mut best: Option<(f64, Vec<(f64, f64)>)> = None;
    for k in 1..=k_max {
        let cols = 2 + 2 * k;
        if n <= cols + 2 {
            break;
        }
        let a = DMatrix::from_fn(n, cols, |t, c| match c {
            0 => 1.0,
            1 => (t as f64 - t_mean) / nf,
            _ => {
                let j = (c - 2) / 2 + 1;
                let phase = TAU * (j * (t % period)) as f64 / period as f64;
                if c % 2 == 0 {
                    phase.cos()
                } else {
                    phase.sin()
                }
            }
        });
        let Ok(ls) = least_squares(&a, &b, "harmonic regression") else {
            continue;
        };
        let bic = nf * (ls.rss.max(f64::MIN_POSITIVE) / nf).ln() + cols as f64 * nf.ln();
        if best.as_ref().is_none_or(|(s, _)| bic < *s) {
            let pairs = (0..k)
                .map(|j| (ls.coef[2 + 2 * j], ls.coef[3 + 2 * j]))
                .collect();
            best = Some((bic, pairs));
        }
    }
    best.map(|(_, pairs)| pairs)
}

/// `s(t) = Σ_k a_k cos(2πkt/P) + b_k sin(2πkt/P)` (0 without harmonics).
pub(crate) fn harmonic_value(harmonics: &[(f64, f64)], period: usize, t: usize) -> f64 {
    if harmonics.is_empty() || period == 0 {
        return 0.0;
    }
    let phase = TAU * (t % period) as f64 / period as f64;
    harmonics
        .iter()
        .enumerate()
        .map(|(j, (a, b))| {
            let (s, c) = ((j + 1) as f64 * phase).sin_cos();
            a * c + b * s
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::testdata;

    #[test]
    fn scan_finds_the_period_of_a_noisy_cycle() {
        let noise = testdata::arma(&[0.5], &[], 600, 1.0, 31);
        let x: Vec<f64> = noise
            .iter()
            .enumerate()
            .map(|(t, v)| 10.0 + 0.02 * t as f64 + 5.0 * (TAU * t as f64 / 48.0).sin() + v)
            .collect();
        let scan = scan_period(&x).expect("scan");
        assert_eq!(scan.period, 48, "{scan:?}");
        assert!(scan.explained > 0.8, "{scan:?}");
        assert_eq!(scan.candidates, 300 - MIN_PERIOD + 1);
        let h = fit_harmonics(&x, 48).expect("harmonics");
        // 5 sin: a_1 ≈ 0, b_1 ≈ 5.
        assert!(h[0].0.abs() < 0.3 && (h[0].1 - 5.0).abs() < 0.3, "{h:?}");
        assert!((harmonic_value(&[(1.0, 2.0)], 8, 10) - 2.0).abs() < 1e-12);
        assert!(scan_period(&[3.0; 100]).is_none());
        assert!(scan_period(&[1.0; 10]).is_none());
    }

    #[test]
    fn closed_form_sums_match_direct_ones() {
        for (omega, n) in [(TAU / 8.0, 600), (TAU / 300.0, 600), (2.0, 37)] {
            let ((c, s), (tc, ts)) = geometric_sums(omega, n);
            let direct = (0..n).fold([0.0; 4], |mut a, t| {
                let (si, co) = (omega * t as f64).sin_cos();
                a[0] += co;
                a[1] += si;
                a[2] += t as f64 * co;
                a[3] += t as f64 * si;
                a
            });
            for (got, want) in [c, s, tc, ts].iter().zip(direct) {
                assert!(
                    (got - want).abs() < 1e-7 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
        }
    }
}
