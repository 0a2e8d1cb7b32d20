//! godwit: a node-local agent for edge hosts.
//!
//! The binary in `main.rs` only parses arguments; everything else lives here. See
//! `docs/ARCHITECTURE.md` for the code map and the invariants of each module.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod forecast;
pub mod gossip;
pub mod image;
pub mod inventory;
pub mod migrate;
pub mod policy;
pub mod predict;
pub mod probe;
pub mod series;
pub mod service;
pub mod transport;
