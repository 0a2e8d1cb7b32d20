//! A forecaster that follows a live series: cheap state updates on each sample, refits on a
//! cadence or when its one-step errors grow.

use std::collections::VecDeque;

use super::model::{fit_clean, FilterState, ForecastPoint, Model, MIN_FIT_SAMPLES};
use super::preprocess::{fill_missing, hampel};
use super::{FitOptions, PredictError};

/// Default number of recent samples a refit uses.
pub const DEFAULT_WINDOW: usize = 600;
/// Default bound on the one-step error, as a ratio of the model's `σ̂²` (see
/// [`Forecaster::with_error_ratio`]).
pub const DEFAULT_ERROR_RATIO: f64 = 4.0;
/// Weight of the newest squared error in its exponentially weighted mean.
const ERROR_EWMA_WEIGHT: f64 = 0.1;
/// Fewest samples between two refits triggered by the error bound.
const MIN_REFIT_GAP: usize = 10;

/// Holds a fitted model and the state it forecasts from, over a sliding window of raw samples.
///
/// Each [`observe`](Forecaster::observe) costs `O(p + q)`: the model's state advances by one
/// step. A refit (pre-processing of the whole window, order
/// search, estimation) happens when
/// - the first `20` samples have arrived,
/// - `refit_every` samples have passed since the last refit, or
/// - the exponentially weighted mean of squared one-step errors (weight 0.1) exceeds
///   `error_ratio · σ̂²`, at least 10 samples after the last refit.
///
/// A failed refit keeps the previous model. Pure: the same samples give the same forecasts.
#[derive(Debug, Clone)]
pub struct Forecaster {
    opts: FitOptions,
    refit_every: usize,
    window: usize,
    error_ratio: f64,
    raw: VecDeque<Option<f64>>,
    last: Option<f64>,
    model: Option<Model>,
    state: Option<FilterState>,
    since_refit: usize,
    err_ewma: f64,
    refits: u64,
}

impl Forecaster {
    /// A forecaster that keeps the last `window` samples (at least 20; [`DEFAULT_WINDOW`] is a
    /// good start) for its refits and refits every `refit_every` samples (at least 1).
    pub fn new(opts: FitOptions, window: usize, refit_every: usize) -> Forecaster {
        Forecaster {
            opts,
            refit_every: refit_every.max(1),
            window: window.max(MIN_FIT_SAMPLES),
            error_ratio: DEFAULT_ERROR_RATIO,
            raw: VecDeque::new(),
            last: None,
            model: None,
            state: None,
            since_refit: 0,
            err_ewma: 0.0,
            refits: 0,
        }
    }

    /// Sets the error bound: refit early when the weighted mean squared one-step error exceeds
    /// `ratio · σ̂²`. `f64::INFINITY` disables early refits.
    pub fn with_error_ratio(mut self, ratio: f64) -> Forecaster {
        self.error_ratio = ratio;
        self
    }

    /// The current model, if one has been fitted.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Number of successful refits so far.
    pub fn refits(&self) -> u64 {
        self.refits
    }

    /// Takes the next sample. NaN and ±∞ count as missing: the model's one-step forecast stands
    /// in for them (or the last value before the first fit).
    pub fn observe(&mut self, x: f64) {
        let v = x.is_finite().then_some(x);
        push_bounded(&mut self.raw, v, self.window);
        let value = match (v, &self.model, &self.state) {
            (Some(x), _, _) => x,
            (None, Some(m), Some(s)) => m.predict_x(s),
            (None, _, _) => match self.last {
                Some(last) => last,
                None => return,
            },
        };
        self.last = Some(value);
        let Some(model) = &self.model else {
            if self.raw.iter().filter(|v| v.is_some()).count() >= MIN_FIT_SAMPLES {
                self.refit();
            }
            return;
        };
        if let Some(state) = &mut self.state {
            let e = model.update(state, value);
            self.err_ewma = (1.0 - ERROR_EWMA_WEIGHT) * self.err_ewma + ERROR_EWMA_WEIGHT * e * e;
        }
        self.since_refit += 1;
        let drifting =
            self.err_ewma > self.error_ratio * model.sigma2 && self.since_refit >= MIN_REFIT_GAP;
        if self.since_refit >= self.refit_every || drifting {
            self.refit();
        }
    }

    /// Fits a model to the pre-processed window (gaps filled, outliers clipped), then rebuilds
    /// the state by running it over the window with gaps filled but nothing clipped: the fit is
    /// robust to outliers, while forecasts start from what was actually observed (clipping the
    /// newest samples would mistake the start of a burst for an outlier).
    fn refit(&mut self) {
        self.since_refit = 0;
        let raw: Vec<Option<f64>> = self.raw.iter().copied().collect();
        let filled = fill_missing(&raw);
        if filled.len() < MIN_FIT_SAMPLES {
            return;
        }
        let clean = hampel(&filled, self.opts.hampel_window, self.opts.hampel_k);
        let Ok(model) = fit_clean(&clean, &self.opts) else {
            return;
        };
        let Ok(state) = model.filter(&filled) else {
            return;
        };
        self.err_ewma = model.sigma2;
        self.model = Some(model);
        self.state = Some(state);
        self.refits += 1;
    }

    /// Forecast `h` steps after the latest sample, with intervals at `level` (see
    /// [`Model::forecast`]).
    pub fn forecast(&self, h: usize, level: f64) -> Result<Vec<ForecastPoint>, PredictError> {
        match (&self.model, &self.state) {
            (Some(m), Some(s)) => m.forecast_from(s, h, level),
            _ => Err(PredictError::NotFitted),
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::testdata;

    #[test]
    fn fits_after_twenty_samples_and_refits_on_cadence() {
        let x = testdata::arma(&[0.7], &[], 200, 1.0, 21);
        let mut f = Forecaster::new(FitOptions::default(), DEFAULT_WINDOW, 60)
            .with_error_ratio(f64::INFINITY);
        for (i, v) in x.iter().enumerate() {
            if i < 19 {
                assert_eq!(f.forecast(1, 0.9), Err(PredictError::NotFitted));
            }
            f.observe(*v + 10.0);
        }
        // Fits at sample 20, then after 60 more at 80, 140, 200.
        assert_eq!(f.refits(), 4);
        assert!(f.forecast(10, 0.9).is_ok_and(|p| p.len() == 10));
    }

    #[test]
    fn cheap_updates_match_a_fresh_filter() {
        // Between refits the incremental state must equal filtering the model over the
        // observed window: forecasts agree.
        let x: Vec<f64> = testdata::arma(&[0.6], &[0.3], 150, 1.0, 22)
            .iter()
            .map(|v| v + 5.0)
            .collect();
        let mut f = Forecaster::new(FitOptions::default(), DEFAULT_WINDOW, 1000)
            .with_error_ratio(f64::INFINITY);
        for v in &x {
            f.observe(*v);
        }
        assert_eq!(f.refits(), 1);
        let model = f.model().expect("fitted").clone();
        let want = model.forecast(&x, 5, 0.9).expect("forecast");
        let got = f.forecast(5, 0.9).expect("forecast");
        for (a, b) in got.iter().zip(&want) {
            assert!((a.mean - b.mean).abs() < 1e-9, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn cheap_updates_of_a_seasonal_model_match_a_fresh_filter() {
        let x: Vec<f64> = testdata::arma(&[0.5], &[], 460, 1.0, 25)
            .iter()
            .enumerate()
            .map(|(t, v)| 20.0 + 5.0 * (std::f64::consts::TAU * t as f64 / 36.0).cos() + v)
            .collect();
        let mut f =
            Forecaster::new(FitOptions::default(), 400, 400).with_error_ratio(f64::INFINITY);
        for v in &x {
            f.observe(*v);
        }
        // Fits at 20 and 420 samples; the window then holds x[20..420] plus 40 updates.
        assert_eq!(f.refits(), 2);
        let model = f.model().expect("fitted").clone();
        assert_eq!(model.period, Some(36), "{model:?}");
        let want = model.forecast(&x[20..], 50, 0.9).expect("forecast");
        let got = f.forecast(50, 0.9).expect("forecast");
        for (a, b) in got.iter().zip(&want) {
            assert!((a.mean - b.mean).abs() < 1e-9, "{got:?} vs {want:?}");
        }
        // A missing sample is filled with the one-step forecast, season included.
        let next = f.forecast(1, 0.9).expect("forecast")[0].mean;
        let mut g = f.clone();
        g.observe(f64::NAN);
        let mut h = f.clone();
        h.observe(next);
        assert_eq!(g.forecast(5, 0.9), h.forecast(5, 0.9));
    }

    #[test]
    fn level_shift_triggers_an_early_refit() {
        let mut x: Vec<f64> = testdata::arma(&[0.5], &[], 300, 1.0, 23)
            .iter()
            .map(|v| v + 10.0)
            .collect();
        for v in &mut x[200..] {
            *v += 30.0;
        }
        let mut f = Forecaster::new(FitOptions::default(), DEFAULT_WINDOW, 1000);
        for v in &x[..200] {
            f.observe(*v);
        }
        let before = f.refits();
        for v in &x[200..230] {
            f.observe(*v);
        }
        assert!(f.refits() > before, "the shift should trigger a refit");
        let pt = f.forecast(1, 0.9).expect("forecast")[0];
        assert!((pt.mean - 40.0).abs() < 3.0, "{pt:?}");
    }

    #[test]
    fn missing_samples_do_not_break_the_state() {
        let x = testdata::arma(&[0.5], &[], 100, 1.0, 24);
        let mut f = Forecaster::new(FitOptions::default(), DEFAULT_WINDOW, 30);
        for (i, v) in x.iter().enumerate() {
            f.observe(if i % 7 == 3 { f64::NAN } else { *v + 3.0 });
        }
        let p = f.forecast(5, 0.95).expect("forecast");
        assert!(p.iter().all(|p| p.mean.is_finite() && p.lower < p.upper));
    }
}
