//! The messages of a migration between two agents, on two transport services:
//!
//! - `"state"` ([`SERVICE`], [`Msg`]): the sender's rounds, the hash check, the commit and the
//!   decision, with the receiver's answers (see `transfer.rs` and `receiver.rs`);
//! - `"handoff"` ([`HANDOFF`], [`Handoff`]): the decided service's start on the target, or
//!   the source's abandon (see `handoff.rs` and `target.rs`).

use serde::{Deserialize, Serialize};

use super::drive::SwitchMode;
use super::scan::{BlockDigest, FileMeta};
use godwit_runtime::service::{ServiceSpec, ServiceTimings};

/// Name of the state service.
pub const SERVICE: &str = "state";

/// Name of the hand-off service (start a migrated service from committed state).
pub const HANDOFF: &str = "handoff";

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Msg {
    Begin {
        migration: String,
        service: String,
        /// The service's spec when a managed service moves: the target's journal keeps it, so
        /// it can start the service once the move is decided even without the source.
        spec: Option<Box<ServiceSpec>>,
        /// The operator asked to replace a service of that name on the target (`--replace`):
        /// without it, a target that defines, parks or keeps state of that name refuses.
        replace: bool,
    },
    /// The target took the `Begin` (its journal has the migration): rounds may follow.
    Begun,
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
    /// Start the decided service from its committed state, as this spec says.
    Start {
        migration: String,
        spec: Box<ServiceSpec>,
        /// The service's stops and starts as the source measured them: the target keeps them
        /// with its own, so its next move of the service knows them.
        timings: Option<ServiceTimings>,
    },
    /// The service runs on the target (the answer to `Start`, and to an `Abandon` that came
    /// after the service started there: it is never given back then).
    Started {
        pid: Option<u32>,
        /// The target's clock from the hand-off's arrival: spawned, healthy, VIP up (seconds).
        spawn_s: f64,
        healthy_s: f64,
        vip_s: Option<f64>,
        /// The service's own start: from its exec to its first passing check (seconds).
        start_s: Option<f64>,
    },
    /// The target does not run the service and never will for this migration.
    Failed {
        reason: String,
    },
    /// The target holds no such migration (never saw it, or forgot it when its source said
    /// so): it says nothing about where the service runs, so the source treats it as no
    /// answer, never as "given back".
    NotHeld {
        reason: String,
    },
    /// The caller may not ask this (it is not the migration's source): nothing changed.
    Refused {
        reason: String,
    },
    /// The source gives up waiting: the target stops the service and gives it back.
    Abandon {
        migration: String,
    },
    Abandoned,
    /// The source has acted on the outcome (it killed its instance, or runs the service
    /// again): the target may forget the migration. Until then it keeps the outcome, to give
    /// the same answer to a repeated hand-off however late it comes.
    Forget {
        migration: String,
        /// When the service runs on the target: the move's mode and the client-visible
        /// downtime the source measured, which the target keeps as its switch latency.
        switched: Option<Switched>,
    },
    Forgotten,
}

/// A committed move as the target's switch latency history takes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Switched {
    pub(super) mode: SwitchMode,
    /// From the freeze (or stop) to the service healthy on the target, seconds.
    pub(super) downtime_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_transport::{read_msg, write_msg};

    async fn round_trip<T: Serialize + serde::de::DeserializeOwned>(msg: &T) -> T {
        let mut frame = Vec::new();
        write_msg(&mut frame, msg).await.unwrap();
        read_msg(&mut frame.as_slice()).await.unwrap().unwrap()
    }

    fn spec() -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "kv",
            "image_id": "sha256:00",
            "command": ["bin/kv", "--dir", "{state}"],
            "env": { "A": "1" },
            "state": ["data"],
            "health": { "tcp": "127.0.0.1:7000", "send": "PING\n", "expect": "+PONG" },
            "demand": { "cpu": 0.5, "memory_bytes": 1048576 },
            "restart": { "policy": "on-failure" },
            "vip": "10.0.0.7",
            "autostart": false,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn specs_travel_typed_in_the_state_and_hand_off_messages() {
        let spec = spec();
        match round_trip(&Msg::Begin {
            migration: "kv-1".into(),
            service: "kv".into(),
            spec: Some(Box::new(spec.clone())),
            replace: false,
        })
        .await
        {
            Msg::Begin { spec: got, .. } => assert_eq!(got.as_deref(), Some(&spec)),
            other => panic!("{other:?}"),
        }
        match round_trip(&Handoff::Start {
            migration: "kv-1".into(),
            spec: Box::new(spec.clone()),
            timings: None,
        })
        .await
        {
            Handoff::Start { spec: got, .. } => assert_eq!(*got, spec),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_report_travels_typed_and_reads_as_the_same_json() {
        let estimate = godwit_core::policy::estimate(godwit_core::policy::PrecopyInput {
            state_bytes: 1e6,
            dirty_bytes_per_s: 1e5,
            bandwidth_bytes_per_s: 1e8,
            rtt_s: 0.001,
            downtime_target_s: 0.05,
            max_rounds: 8,
            scan_share: 0.5,
            round_bandwidth_bytes_per_s: 0.0,
            live_overhead_s: 0.0,
            later_dirty_bytes_per_s: 0.0,
            frozen_bandwidth_bytes_per_s: 0.0,
            stop_s: 0.0,
        });
        let mut transfer =
            super::super::DriveReport::new(estimate, godwit_core::policy::SwitchMode::Transitional);
        transfer.rounds.push(super::super::RoundStats {
            round: 0,
            bytes: 4096,
            ..Default::default()
        });
        transfer.dirty_rates.push(None);
        let report = super::super::agent::MigrationReport {
            id: "kv-1".into(),
            result: "committed".into(),
            transfer: Some(transfer),
            downtime_seconds: Some(0.02),
            compression: Some(godwit_transport::choose_level(&[], 1e8)),
            ..Default::default()
        };
        let got = round_trip(&crate::control::Reply::Report {
            report: Box::new(report.clone()),
            committed: true,
        })
        .await;
        let crate::control::Reply::Report { report: got, .. } = got else {
            panic!("not a report");
        };
        assert_eq!(
            serde_json::to_value(&*got).unwrap(),
            serde_json::to_value(&report).unwrap()
        );
    }
}
