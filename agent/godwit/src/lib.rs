//! godwit: a node-local agent for edge hosts.
//!
//! This crate is the composition root: the daemon that owns every task, the HTTP API, the CLI and
//! the configuration that composes each crate's section. The binary in `main.rs` only parses
//! arguments. The other crates are re-exported under their module names so that callers (the
//! integration tests, the benchmarks) see one library. See `docs/ARCHITECTURE.md` for the code map.

pub mod act;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod forecast;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod node_summary;
pub mod peers;

pub use godwit_coord as coord;
pub use godwit_core::{policy, predict, series};
pub use godwit_gossip as gossip;
pub use godwit_image as image;
pub use godwit_migrate as migrate;
pub use godwit_probe as probe;
pub use godwit_runtime::{inventory, service};
pub use godwit_transport as transport;
