//! The `[predict]` section: forecasts of the node and its containers.

use serde::{Deserialize, Serialize};

use crate::config::Bounded;

/// Load forecasts of the node and its containers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    /// Samples of history kept per series and used for fitting.
    pub window: Bounded<30, 100_000>,
    /// Refit the model every N new samples (between refits the state is updated cheaply).
    pub refit_every: Bounded<1, 100_000>,
    /// Forecast horizon in samples.
    pub horizon: Bounded<1, 3600>,
    /// Level of the prediction intervals, in percent.
    pub level_percent: Bounded<50, 99>,
    /// Largest AR and MA orders tried when choosing the model.
    pub max_p: Bounded<0, 8>,
    pub max_q: Bounded<0, 8>,
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            window: Bounded(600),
            refit_every: Bounded(60),
            horizon: Bounded(60),
            level_percent: Bounded(80),
            max_p: Bounded(3),
            max_q: Bounded(2),
        }
    }
}
