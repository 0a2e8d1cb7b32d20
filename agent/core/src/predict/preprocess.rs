//! Pre-processing: fill missing samples, then clip outliers with a Hampel filter.

use super::stats::median_in_place;

/// Default Hampel threshold `k` (in robust standard deviations).
pub(super) const DEFAULT_HAMPEL_K: f64 = 3.0;
/// Default Hampel half-window: 11 samples centred on each one.
pub(super) const DEFAULT_HAMPEL_WINDOW: usize = 5;
/// `1.4826 · MAD` estimates the standard deviation of normal data (`1 / Φ⁻¹(3/4)`).
pub(crate) const MAD_SCALE: f64 = 1.4826;

/// [`preprocess_with`] with the default Hampel window (half-width 5) and `k = 3`.
pub fn preprocess(raw: &[Option<f64>]) -> Vec<f64> {
    preprocess_with(raw, DEFAULT_HAMPEL_WINDOW, DEFAULT_HAMPEL_K)
}

/// Fills missing samples ([`fill_missing`]) then clips outliers ([`hampel`]). NaN and infinite
/// samples count as missing. The output has the input's length, or is empty when the input has
/// no finite sample at all.
pub fn preprocess_with(raw: &[Option<f64>], half_window: usize, k: f64) -> Vec<f64> {
    hampel(&fill_missing(raw), half_window, k)
}

/// Fills the gaps of an evenly spaced series. A gap between finite samples `x_a` and `x_b`
/// (`a < i < b`) becomes `x_i = x_a + (x_b − x_a)·(i − a)/(b − a)`; before the first finite sample
/// the first is carried backwards, after the last the last is carried forwards. `None`, NaN
/// and ±∞ are gaps. Empty output when there is no finite sample.
pub fn fill_missing(raw: &[Option<f64>]) -> Vec<f64> {
    let valid = |v: &Option<f64>| v.filter(|x| x.is_finite());
    let Some(first) = raw.iter().position(|v| valid(v).is_some()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(raw.len());
    let mut last_idx = first;
    let mut last_val = valid(&raw[first]).unwrap_or_default();
    out.resize(first + 1, last_val);
    for (i, v) in raw.iter().enumerate().skip(first + 1) {
        if let Some(x) = valid(v) {
            let gap = (i - last_idx) as f64;
            for j in last_idx + 1..i {
                let frac = (j - last_idx) as f64 / gap;
                out.push(last_val + (x - last_val) * frac);
            }
            out.push(x);
            last_idx = i;
            last_val = x;
        }
    }
    out.resize(raw.len(), last_val);
    out
}

/// Hampel filter. For each sample, with `m` the median and `MAD` the median absolute deviation
/// of the window `x[i−w ..= i+w]` (truncated at the ends), the sample is clipped to
/// `[m − k·1.4826·MAD, m + k·1.4826·MAD]`. Windows are taken from the input, not from already
/// clipped values. A window with `MAD = 0` carries no scale estimate and leaves its sample
/// unchanged (so quantised, mostly flat data is not flattened). `w = 0` or a non-finite `k`
/// disables the filter.
pub fn hampel(x: &[f64], half_window: usize, k: f64) -> Vec<f64> {
    if half_window == 0 || !k.is_finite() || k <= 0.0 {
        return x.to_vec();
    }
    let n = x.len();
    let mut buf = Vec::with_capacity(2 * half_window + 1);
    x.iter()
        .enumerate()
        .map(|(i, &xi)| {
            let lo = i.saturating_sub(half_window);
            let hi = (i + half_window + 1).min(n);
            clip_to_band(xi, &x[lo..hi], k, &mut buf)
        })
        .collect()
}

/// Clips `v` to `median ± k·1.4826·MAD` of `window`; unchanged when `MAD = 0`.
fn clip_to_band(v: f64, window: &[f64], k: f64, buf: &mut Vec<f64>) -> f64 {
    buf.clear();
    buf.extend_from_slice(window);
    let Some(med) = median_in_place(buf) else {
        return v;
    };
    for b in buf.iter_mut() {
        *b = (*b - med).abs();
    }
    let Some(mad) = median_in_place(buf) else {
        return v;
    };
    if mad > 0.0 {
        let bound = k * MAD_SCALE * mad;
        v.clamp(med - bound, med + bound)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_missing_table() {
        let table: &[(&[Option<f64>], &[f64])] = &[
            (&[], &[]),
            (&[None, None], &[]),
            (&[Some(f64::NAN), Some(f64::INFINITY)], &[]),
            (&[Some(1.0)], &[1.0]),
            (&[Some(1.0), None, Some(3.0)], &[1.0, 2.0, 3.0]),
            (
                &[Some(0.0), None, None, None, Some(8.0)],
                &[0.0, 2.0, 4.0, 6.0, 8.0],
            ),
            (
                &[None, None, Some(5.0), Some(6.0), None],
                &[5.0, 5.0, 5.0, 6.0, 6.0],
            ),
            (&[Some(1.0), Some(f64::NAN), Some(2.0)], &[1.0, 1.5, 2.0]),
            (
                &[Some(4.0), Some(f64::NEG_INFINITY), None],
                &[4.0, 4.0, 4.0],
            ),
        ];
        for (raw, want) in table {
            assert_eq!(fill_missing(raw), *want, "fill_missing({raw:?})");
        }
    }

    #[test]
    fn hampel_clips_a_spike_by_hand() {
        // Window of sample 4 (w = 4) is the whole series. Sorted: [1,1,1,1,2,2,2,2,50]:
        // median 2; |x − 2| sorted: [0,0,0,0,1,1,1,1,48]: MAD 1. Bound 2 + 3·1.4826 = 6.4478.
        let x = [1.0, 2.0, 1.0, 2.0, 50.0, 2.0, 1.0, 2.0, 1.0];
        let y = hampel(&x, 4, 3.0);
        assert!((y[4] - (2.0 + 3.0 * MAD_SCALE)).abs() < 1e-12, "{y:?}");
        for i in [0, 1, 2, 3, 5, 6, 7, 8] {
            assert_eq!(y[i], x[i], "sample {i} is not an outlier");
        }
        // A negative spike is clipped from below; k = 1 tightens the bound.
        let x = [1.0, 2.0, 1.0, 2.0, -50.0, 2.0, 1.0, 2.0, 1.0];
        let y = hampel(&x, 4, 1.0);
        // Sorted: [-50,1,1,1,1,2,2,2,2]: median 1; |x − 1|: [51,0,0,0,0,1,1,1,1]: MAD 1.
        assert!((y[4] - (1.0 - MAD_SCALE)).abs() < 1e-12, "{y:?}");
    }

    #[test]
    fn hampel_leaves_flat_windows_and_disabled_filter_alone() {
        let x = [1.0, 1.0, 1.0, 10.0, 1.0, 1.0, 1.0];
        assert_eq!(hampel(&x, 3, 3.0), x, "MAD = 0: no scale, no clipping");
        let x = [1.0, 2.0, 1.0, 2.0, 50.0, 2.0, 1.0, 2.0, 1.0];
        assert_eq!(hampel(&x, 0, 3.0), x);
        assert_eq!(hampel(&x, 4, f64::INFINITY), x);
        assert!(hampel(&[], 4, 3.0).is_empty());
    }

    #[test]
    fn preprocess_fills_then_clips() {
        let raw = [
            Some(1.0),
            Some(2.0),
            None,
            Some(2.0),
            Some(50.0),
            Some(2.0),
            Some(1.0),
            Some(f64::NAN),
            Some(1.0),
        ];
        // Filled: [1,2,2,2,50,2,1,1,1]; window of sample 4 with w = 4 is all of it:
        // median 2, MAD 1, bound 6.4478.
        let y = preprocess_with(&raw, 4, 3.0);
        assert_eq!(y.len(), raw.len());
        assert_eq!(y[2], 2.0);
        assert_eq!(y[7], 1.0);
        assert!((y[4] - (2.0 + 3.0 * MAD_SCALE)).abs() < 1e-12);
    }
}
