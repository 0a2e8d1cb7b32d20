//! Load forecasts. Pure: no I/O, no async.
