//! `kvstore`, godwit's example stateful service, and `kvcheck`, the client that proves a move
//! lost nothing.
//!
//! - [`store`]: the state file, a hash table in a `MAP_SHARED` mapping (layout in its doc);
//! - [`protocol`]: the line protocol;
//! - [`server`]: the TCP server over a store;
//! - [`check`]: the checking client;
//! - [`ballast`]: optional extra state dirtied at a set rate (for benchmarks);
//! - [`load`]: optional CPU load that follows a file (for the placement policy's tests).
//!
//! The binaries in `src/bin/` only parse arguments and call into these modules.

pub mod ballast;
pub mod check;
pub mod load;
pub mod protocol;
pub mod server;
pub mod store;
