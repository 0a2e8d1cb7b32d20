//! The messages of a migration between two agents, on two transport services:
//!
//! - `"state"` ([`SERVICE`], [`Msg`]): the sender's rounds, the hash check, the commit and the
//!   decision, with the receiver's answers (see `transfer.rs` and `receiver.rs`);
//! - `"handoff"` ([`HANDOFF`], [`Handoff`]): the decided service's start on the target, or
//!   the source's abandon (see `handoff.rs` and `target.rs`).

use serde::{Deserialize, Serialize};

use super::scan::{BlockDigest, FileMeta};

/// Name of the state service.
pub const SERVICE: &str = "state";

/// Name of the hand-off service (start a migrated service from committed state).
pub const HANDOFF: &str = "handoff";

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    Begin {
        migration: String,
        service: String,
        /// The service's spec (JSON) when a managed service moves: the target's journal keeps
        /// it, so it can start the service once the move is decided even without the source.
        spec: Option<String>,
    },
    /// The listing; the changed blocks follow as placed pieces (file = index in `files`),
    /// in any order, up to the end marker.
    Round {
        round: u32,
        files: Vec<FileMeta>,
    },
    RoundDone {
        round: u32,
        bytes: u64,
    },
    /// The hash tree: every file's node (from the block digests the rounds kept, or from a
    /// full re-hash of the files when `full`) and the root over them.
    Verify {
        tree: Vec<(String, String)>,
        root: String,
        full: bool,
    },
    /// After a failed comparison: the receiver's block digests of these files (re-hashed from
    /// its copy when `full`), so the sender can resend what differs.
    Digests {
        files: Vec<String>,
        full: bool,
    },
    DigestsAre {
        files: Vec<(String, Vec<BlockDigest>)>,
    },
    Verified {
        /// The receiver's root; equal to the sender's when nothing differs.
        root: String,
        mismatches: Vec<String>,
        /// Time the receiver took to hash its copy, seconds.
        hash_seconds: f64,
    },
    Commit,
    Committed {
        path: String,
        /// Time to fsync the staging copy, seconds.
        sync_seconds: f64,
        /// Time to put it in place (exchange, parent fsync) and record the vote, seconds.
        exchange_seconds: f64,
    },
    Decided,
    Owned,
    Abort {
        reason: String,
    },
    Aborted,
    Failed {
        reason: String,
    },
}

/// How long the target may take to report a migrated service healthy.
pub(super) const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The hand-off service's messages: one request, one answer per stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Handoff {
    /// The spec as JSON (its serde shape is not one bincode encodes).
    Start {
        migration: String,
        spec: Vec<u8>,
    },
    /// The service runs on the target (the answer to `Start`, and to an `Abandon` that came
    /// after the service started there: it is never given back then).
    Started {
        pid: Option<u32>,
        /// The target's clock from the hand-off's arrival: spawned, healthy, VIP up (seconds).
        spawn_s: f64,
        healthy_s: f64,
        vip_s: Option<f64>,
    },
    /// The target does not run the service and never will for this migration.
    Failed {
        reason: String,
    },
    /// The source gives up waiting: the target stops the service and gives it back.
    Abandon {
        migration: String,
    },
    Abandoned,
}
