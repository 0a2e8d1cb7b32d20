//! openraft's network over a [`Wire`]: one client per target, each RPC a message and its reply.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::rpc::{Member, RaftReply, RaftRpc, Wire};
use crate::{NodeId, TypeConfig};

/// Makes a [`Client`] per target.
#[derive(Clone)]
pub struct Network<W: Wire> {
    pub(crate) wire: W,
}

/// The client of one target.
pub struct Client<W: Wire> {
    wire: W,
    member: Member,
}

impl<W: Wire> RaftNetworkFactory<TypeConfig> for Network<W> {
    type Network = Client<W>;

    async fn new_client(&mut self, _target: NodeId, node: &Member) -> Client<W> {
        Client {
            wire: self.wire.clone(),
            member: node.clone(),
        }
    }
}

#[derive(Debug)]
struct WireError(String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl<W: Wire> Client<W> {
    async fn call<E: std::error::Error>(
        &self,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<RaftReply, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        let sent = tokio::time::timeout(option.hard_ttl(), self.wire.raft(&self.member, rpc)).await;
        match sent {
            Err(_) => Err(RPCError::Unreachable(Unreachable::new(&WireError(
                format!(
                    "{} did not answer within {:?}",
                    self.member,
                    option.hard_ttl()
                ),
            )))),
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&WireError(e)))),
            Ok(Ok(RaftReply::Failed(e))) => Err(RPCError::Unreachable(Unreachable::new(
                &WireError(format!("{}: {e}", self.member)),
            ))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        reply: RaftReply,
    ) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
        RPCError::Unreachable(Unreachable::new(&WireError(format!(
            "{} answered {reply:?} out of turn",
            self.member
        ))))
    }
}

impl<W: Wire> RaftNetwork<TypeConfig> for Client<W> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(RaftRpc::Append(rpc), &option).await? {
            RaftReply::Append(r) => Ok(r),
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(RaftRpc::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(r) => Ok(r),
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(RaftRpc::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => Ok(r),
            other => Err(self.unexpected(other)),
        }
    }
}
