//! Live state migration: a service's declared state moves to a peer in rounds (everything,
//! then what changed), is verified by a hash tree and committed there in one rename.
//!
//! # Code map
//!
//! | file | what |
//! | --- | --- |
//! | `source_machine.rs` | [`source_machine::step`]: the source's phases, pure: `(state, event) -> (state, effects)` |
//! | `target_machine.rs` | [`target_machine::step`]: the target's journalled phases, pure, the same way |
//! | `protocol.rs` | the messages of the `"state"` and `"handoff"` transport services |
//! | `scan.rs` | [`StateScan`]: the state on disk, and which 4 KiB blocks changed since sent |
//! | `transfer.rs` | the `"state"` service's sending side: [`StateSender`] |
//! | `receiver.rs` | its receiving side: staging, hash check, the commit (the target machine's vote) |
//! | `drive.rs` | [`drive`]: mode from the pre-copy model, live rounds, freeze, verify, commit, hand-off; runs the source machine's effects |
//! | `source.rs` | [`agent::Migrator`]: a managed service to another node, end to end |
//! | `handoff.rs` | the source's side of the hand-off (start, or abandon) |
//! | `target.rs` | [`agent::Target`]: the hand-off's target side, the watcher, the target's recovery |
//! | `vip.rs` | the VIP's takeover on the target at the cut-over |
//! | `recovery.rs` | the source's crash recovery at start |
//! | `switches.rs` | [`agent::SwitchHistory`]: this node's past transitional switch latencies as a target, kept on disk |
//! | `model.rs` | a committed move's report read into what the model learns (the figures and medians are pure, in `godwit_core::policy::learned`) |
//! | `tasks.rs` | [`Tasks`]: the owner of every task a migration spawns, stopped by the daemon |
//! | `audit.rs` | [`agent::MigrationReport`], the counters and the audit log |
//! | `journal.rs` | [`journal::Journal`]: each side's durable record of a migration; [`journal::JournalGuard`] changes it |
//! | `progress.rs` | [`Progress`]: where a running migration is, for `godwit migrate` to show |
//! | `control.rs` | the `"control"` transport service: a caller with a certificate starts a migration and follows it |
//! | `agent.rs` | the names the daemon, the API and the tests use |
//! | `fuzzing.rs` | the journal and protocol fuzz targets' entry points (feature `fuzzing`) |
//!
//! # Invariants
//!
//! - **Nothing is lost between rounds.** A block is resent whenever its content differs from
//!   what was last sent (block digests; the scan sees every writer, `O_DIRECT` and mmap
//!   included). The final round runs with the service frozen or stopped, so after it the
//!   copy equals the source; [`StateSender::verify`] compares the hash tree each side kept
//!   from the blocks it read or wrote (or, with the full check, re-hashes every file).
//! - **Nothing is visible at the destination before the commit**, which is one exchange of the
//!   fsynced staging directory with the destination; any other end removes the staging copy
//!   and leaves the destination as it was.
//! - **One place**: the end is a two-phase commit decided by the source and journalled on both
//!   sides (`journal.rs`), so a crash of either agent is resolved when it starts again.
//! - **Paths from the peer are checked**: relative, no `..`; names of services and migrations
//!   are plain.
//! - **Only a caller with a certificate starts a migration**: the `"control"` service over
//!   mutual TLS (a node or an operator of the cluster CA, and the fencing check), never the
//!   HTTP API. Every refusal is audited and counted like a migration.

pub mod agent;
mod audit;
pub mod control;
mod drive;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
mod handoff;
pub mod journal;
mod model;
mod progress;
mod protocol;
mod receiver;
mod recovery;
mod scan;
mod source;
pub mod source_machine;
mod switches;
mod target;
pub mod target_machine;
mod tasks;
mod transfer;
mod vip;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod tests;

pub use drive::{choose_mode, drive, Cutover, DriveReport, Source, SwitchMode};
pub use error::MigrateError;
pub use progress::{eta_live, Phase, Progress};
pub use protocol::SERVICE;
pub use receiver::{register, register_with, TargetHooks};
pub use scan::{file_node, hash_tree, tree_root, Extent, FileMeta, StateScan, BLOCK};
pub use tasks::Tasks;
pub use transfer::{Committed, RoundStats, StateSender, Verified};
