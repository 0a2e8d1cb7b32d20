//! Load forecasts: ARIMA(p, d, q) models with d ∈ {0, 1} fitted to a node's recent load, as
//! rule 3 of the cluster task-allocation design asks (MISSION.md D.3): pre-process the series,
//! make it stationary, fit AR(p), MA(q) or ARMA(p, q), forecast from the latest observations.
//!
//! Architecture invariant: this module is pure. No I/O, no async, no clocks, no global state;
//! every function depends on its arguments only and gives the same output for the same input.
//!
//! The pipeline, each step in its own file:
//!
//! 1. [`preprocess`]: fill missing samples (linear interpolation, carried at the edges) and clip
//!    outliers with a Hampel filter (`preprocess.rs`).
//! 2. [`needs_differencing`]: an augmented Dickey-Fuller test decides whether the series is
//!    differenced once (`stationarity.rs`).
//! 3. Estimation (`estimate.rs`): AR(p) by Burg's method, ARMA(p, q) and MA(q) by
//!    Hannan-Rissanen, both refined by conditional least squares (Gauss-Newton); fits are kept
//!    stationary and invertible.
//! 4. [`fit`]: the order (p, q) is chosen by AIC or BIC over a small grid (`model.rs`).
//!    Seasonality (`season.rs`): a least-squares periodogram looks for a dominant period in
//!    `8 ..= n/2`; when one explains enough of the variance, harmonics at that period are fitted
//!    by least squares, the ARIMA search is run again on what they leave, and the seasonal model
//!    is kept only when its criterion (harmonic parameters and the period search charged) is
//!    lower. Forecasts then add the harmonics' extrapolation to the ARIMA forecast of the
//!    residuals; the intervals come from the residual model.
//! 5. [`Model::forecast`]: h-step means and prediction intervals from the psi-weights.
//! 6. [`Forecaster`]: holds a model, updates its state cheaply with each new sample and refits on
//!    a cadence or when its one-step errors grow (`forecaster.rs`).
//!
//! The conventions used throughout: with `w_t` the series after `d` differences and `μ` its mean
//! (the drift when `d = 1`), `y_t = w_t − μ` follows
//! `y_t = φ_1 y_{t−1} + … + φ_p y_{t−p} + e_t + θ_1 e_{t−1} + … + θ_q e_{t−q}`,
//! `e_t` white noise with variance `σ²`. Note the plus sign on the MA terms.

mod baseline;
mod config;
mod estimate;
mod forecaster;
mod model;
mod preprocess;
mod season;
mod stationarity;
mod stats;
#[doc(hidden)]
pub mod testdata;

use serde::{Deserialize, Serialize};

pub use baseline::{moving_average, naive_persistence};
pub use config::PredictConfig;
pub use estimate::{
    burg, hannan_rissanen, is_invertible, is_stationary, levinson_durbin, yule_walker, Levinson,
};
pub use forecaster::{Forecaster, DEFAULT_ERROR_RATIO, DEFAULT_WINDOW};
pub use model::{fit, fit_order, psi_weights, ForecastPoint, Model};
pub use preprocess::{fill_missing, hampel, preprocess, preprocess_with};
pub use stationarity::{adf_test, needs_differencing, AdfTest};
pub use stats::{autocovariance, normal_quantile};

/// Why a fit or a forecast could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    /// The series is too short for what was asked.
    #[error("too few samples: need at least {needed}, got {got}")]
    TooFewSamples { needed: usize, got: usize },
    /// A sample is NaN or infinite where clean data is required (see [`preprocess`]).
    #[error("sample {index} is not finite")]
    NonFinite { index: usize },
    /// A linear system had no usable solution, even with a ridge.
    #[error("singular system in {context}")]
    Singular { context: &'static str },
    /// An option or argument is out of its range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// No candidate order of the grid could be fitted.
    #[error("no candidate model could be fitted")]
    NoCandidate,
    /// [`Forecaster::forecast`] was called before the first fit.
    #[error("no model fitted yet")]
    NotFitted,
}

/// The information criterion that chooses the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// `AIC = −2 ln L + 2k`.
    Aic,
    /// `BIC = −2 ln L + k ln n`.
    Bic,
}

/// Whether the series is differenced before the ARMA fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Differencing {
    /// `d = 1` when the ADF test does not reject a unit root at 5%, else `d = 0`.
    Auto,
    /// Always `d = 0`.
    Never,
    /// Always `d = 1`.
    Always,
}

/// Options of [`fit`] and [`Forecaster`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FitOptions {
    /// Largest AR order tried (the grid is `0..=max_p`). At most 8.
    pub max_p: usize,
    /// Largest MA order tried (the grid is `0..=max_q`). At most 8.
    pub max_q: usize,
    /// Criterion that picks the order.
    pub criterion: Criterion,
    /// How `d` is chosen.
    pub differencing: Differencing,
    /// Hampel threshold `k`: a sample farther than `k · 1.4826 · MAD` from its window's median
    /// is clipped to that bound. `f64::INFINITY` disables clipping.
    pub hampel_k: f64,
    /// Hampel half-window: the window of sample `i` is `i − w ..= i + w`. 0 disables clipping.
    pub hampel_window: usize,
    /// Refine the initial estimates by conditional least squares (Gauss-Newton).
    pub refine: bool,
    /// Also try a seasonal model: a dominant period in `8 ..= n/2` found by a least-squares
    /// periodogram, a few harmonics at that period, and the ARIMA search on what they leave
    /// (kept only when the criterion prefers it; see [`fit`]).
    pub seasonal: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            max_p: 3,
            max_q: 2,
            criterion: Criterion::Aic,
            differencing: Differencing::Auto,
            hampel_k: preprocess::DEFAULT_HAMPEL_K,
            hampel_window: preprocess::DEFAULT_HAMPEL_WINDOW,
            refine: true,
            seasonal: true,
        }
    }
}

impl FitOptions {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), PredictError> {
        if self.max_p > 8 || self.max_q > 8 {
            return Err(PredictError::InvalidArgument(
                "max_p and max_q must be at most 8",
            ));
        }
        if self.hampel_k.is_nan() || self.hampel_k <= 0.0 {
            return Err(PredictError::InvalidArgument("hampel_k must be positive"));
        }
        Ok(())
    }
}
