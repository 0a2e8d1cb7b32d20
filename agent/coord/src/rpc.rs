//! The messages between nodes, and [`Wire`]: how a message reaches another node. The agent's
//! wire is the QUIC transport with mutual TLS (`"raft"` and `"coord"` services); a simulation
//! supplies its own.

use std::future::Future;

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::{NodeId, TypeConfig};

/// A member of the Raft group, as the membership records it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (its certificate's name).
    pub name: String,
    /// Where its transport listens (`ip:port`).
    pub addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// One Raft message.
#[derive(Debug, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Its answer: the receiver's result, or why the receiver could not handle it.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(AppendEntriesResponse<NodeId>),
    Vote(VoteResponse<NodeId>),
    Snapshot(InstallSnapshotResponse<NodeId>),
    /// The receiver's Raft refused or failed (shut down, not yet started, ...).
    Failed(String),
}

/// A request to the coordinator (the leader), from any node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordRpc {
    /// Commit a command to the placement log.
    Write(crate::Cmd),
    /// Renew the sender's lease (and tell the leader who and where it is).
    Renew(Renewal),
}

/// A node's lease renewal: who it is, so the leader can make it a learner or a voter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Renewal {
    pub member: Member,
    /// Its site (voters are spread across sites).
    pub site: String,
    /// Whether it may vote (`voter` and `witness` roles).
    pub votes: bool,
    /// Whether it runs services (a witness does not).
    pub runs_services: bool,
    /// What it can hold and holds now (from its probe), for placing failed-over services;
    /// `None` until it has measured.
    pub capacity: Option<NodeCapacity>,
}

/// A node's capacity and load, as its renewal reports them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub cpu_cores: f64,
    /// Cores in use now.
    pub cpu_used: f64,
    pub memory_bytes: f64,
    pub memory_used: f64,
}

/// The coordinator's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordReply {
    /// The command's outcome and the index it was committed at.
    Written { outcome: crate::Outcome, index: u64 },
    /// Lease granted, as of the leader's commit index (the node acts on its placements only
    /// once it has applied that far) and term.
    Granted { committed: u64, term: u64 },
    /// Not the leader; the leader it knows of, if any.
    NotLeader { leader: Option<Member> },
    /// Failed (no quorum, shutting down, ...).
    Failed(String),
}

/// How a message reaches another node and its answer comes back. An error is a network
/// failure (unreachable, timed out, cut), which Raft retries.
pub trait Wire: Clone + Send + Sync + 'static {
    /// Sends `rpc` to `to` and waits for its reply.
    fn raft(
        &self,
        to: &Member,
        rpc: RaftRpc,
    ) -> impl Future<Output = Result<RaftReply, String>> + Send;

    /// Sends a coordinator request to `to` and waits for its reply.
    fn coord(
        &self,
        to: &Member,
        rpc: CoordRpc,
    ) -> impl Future<Output = Result<CoordReply, String>> + Send;
}
