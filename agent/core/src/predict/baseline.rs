//! Baseline forecasts the ARMA models are measured against.

use super::PredictError;

/// Persistence ("naive") forecast: every step repeats the last value, `x̂_{t+k} = x_t`.
pub fn naive_persistence(history: &[f64], h: usize) -> Result<Vec<f64>, PredictError> {
    let last = *history
        .last()
        .ok_or(PredictError::TooFewSamples { needed: 1, got: 0 })?;
    Ok(vec![last; h])
}

/// Moving-average forecast: every step is the mean of the last `w = min(window, n)` values,
/// `x̂_{t+k} = (1/w) Σ_{i=0}^{w−1} x_{t−i}`.
pub fn moving_average(history: &[f64], window: usize, h: usize) -> Result<Vec<f64>, PredictError> {
    if window == 0 {
        return Err(PredictError::InvalidArgument(
            "moving-average window must be positive",
        ));
    }
    let w = window.min(history.len());
    if w == 0 {
        return Err(PredictError::TooFewSamples { needed: 1, got: 0 });
    }
    let m = history[history.len() - w..].iter().sum::<f64>() / w as f64;
    Ok(vec![m; h])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_by_hand() {
        assert_eq!(naive_persistence(&[1.0, 2.0, 7.0], 3), Ok(vec![7.0; 3]));
        assert!(naive_persistence(&[], 3).is_err());
        assert_eq!(moving_average(&[1.0, 2.0, 6.0], 2, 2), Ok(vec![4.0; 2]));
        assert_eq!(moving_average(&[1.0, 2.0, 6.0], 10, 1), Ok(vec![3.0]));
        assert!(moving_average(&[1.0], 0, 1).is_err());
        assert!(moving_average(&[], 3, 1).is_err());
    }
}
