//! Coordination: the Raft group (openraft behind a thin adapter), the placement log with
//! epochs, leases on `CLOCK_BOOTTIME`, and fencing.
//!
//! | module | owns |
//! | --- | --- |
//! | `placement.rs` | [`Placement`]: the log's state machine (pure), epochs and compare-and-set |
//! | `clock.rs` | [`BootTime`]: lease time that keeps counting through suspend |
//! | `guard.rs` | the fence guard process (`godwit fence-guard`) and the agent's [`GuardHandle`] |
//! | `rpc.rs` | the messages between nodes, and [`Wire`], the one thing a network must do |
//! | `store/` | [`LogStore`] and [`StateMachine`]: the log, vote and snapshots on disk (fsync before anything is acknowledged) |
//! | `network.rs` | openraft's network over a [`Wire`] |
//!
//! Only this crate touches openraft.

use std::io::Cursor;

pub mod clock;
pub mod config;
pub mod epochs;
pub mod guard;
pub mod network;
pub mod node;
pub mod placement;
pub mod quic;
#[cfg(test)]
mod quic_tests;
pub mod rpc;
#[cfg(test)]
mod sim_net;
#[cfg(test)]
mod sim_size;
#[cfg(test)]
mod sim_tests;
pub mod store;

pub use clock::{BootTime, Clock};
pub use config::{Bootstrap, CoordinatorSection, PolicyMode};
pub use guard::{GuardHandle, GuardOptions};
pub use placement::{Cmd, Ha, Outcome, PauseRecord, Placement, Reason, ServiceEntry};
pub use rpc::{Member, RaftReply, RaftRpc, Wire};
pub use store::{LogStore, StateMachine, StoreError};

/// A node's id in the Raft group: derived from its name (see [`node_id`]).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The Raft types of the placement log.
    pub TypeConfig:
        D = Cmd,
        R = Outcome,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The id of a node named `name`: FNV-1a over the name, so that every node derives the same id
/// for the same name without a registry. Zero is avoided (openraft uses it nowhere special, but
/// operators read it as "none").
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}
