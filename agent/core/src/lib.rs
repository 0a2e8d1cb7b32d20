//! The pure core of godwit: load series, forecasts, the placement policy and the pre-copy
//! model, and the leaf types every configuration section is built from.
//!
//! **Invariant:** nothing here does I/O or runs async: no tokio and no I/O crates in this
//! crate's `Cargo.toml`. Its functions are tested with tables and properties and replayed by the
//! cluster simulator exactly as the agent runs them.

pub mod config;
pub mod policy;
pub mod predict;
pub mod series;
