//! Group networks: [`LocalOnly`] for a one-voter group (there is nobody
//! to talk to), and [`PeerNetwork`] for a replicated group, over the
//! node's QUIC peer transport.

use std::future::Future;
use std::sync::Arc;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};

use crate::net::peer::{PeerError, PeerNet, PeerRequest, PeerResponse};

use super::state_machine::ShardSnapshot;
use super::types::{ShardRaftConfig as C, Vote};

/// Network factory for single-node groups.
#[derive(Debug, Clone, Default)]
pub struct LocalOnly;

/// A connection that is never usable.
#[derive(Debug, Clone, Default)]
pub struct NoPeer;

impl RaftNetworkFactory<C> for LocalOnly {
    type Network = NoPeer;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeer {
        NoPeer
    }
}

fn unreachable() -> Unreachable<C> {
    Unreachable::from_string("single-node group: no peer transport")
}

impl RaftNetworkV2<C> for NoPeer {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<C>,
        _o: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _o: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

/// Network factory of a replicated group: every message goes through the
/// node's [`PeerNet`], tagged with the group. A member's
/// [`BasicNode::addr`] holds the id of the cluster node hosting it.
#[derive(Clone)]
pub struct PeerNetwork {
    net: Arc<PeerNet>,
    group: u64,
}

impl PeerNetwork {
    /// The network of `group` over `net`.
    pub fn new(net: Arc<PeerNet>, group: u64) -> Self {
        Self { net, group }
    }
}

/// A group's connection to one member.
pub struct PeerClient {
    net: Arc<PeerNet>,
    group: u64,
    target: u64,
    node: Option<u64>,
}

/// The cluster node of a group member (its `addr` is the node id).
pub fn member_node(node: &BasicNode) -> Option<u64> {
    node.addr.parse().ok()
}

impl RaftNetworkFactory<C> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.net.clone(),
            group: self.group,
            target,
            node: member_node(node),
        }
    }
}

impl PeerClient {
    fn node(&self) -> Result<u64, Unreachable<C>> {
        self.node.ok_or_else(|| {
            Unreachable::from_string(format!("member {} names no cluster node", self.target))
        })
    }

    fn rpc_err(&self, e: PeerError) -> RPCError<C> {
        match e {
            PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::from_string(e)),
            _ => RPCError::Network(NetworkError::from_string(e)),
        }
    }

    async fn call(&self, req: PeerRequest, o: &RPCOption) -> Result<PeerResponse, RPCError<C>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        self.net
            .call(node, &req, o.hard_ttl())
            .await
            .map_err(|e| self.rpc_err(e))
    }
}

fn remote(e: impl std::fmt::Display) -> RPCError<C> {
    RPCError::Network(NetworkError::from_string(format!("remote: {e}")))
}

fn unexpected(r: PeerResponse) -> RPCError<C> {
    RPCError::Network(NetworkError::from_string(format!(
        "unexpected answer: {r:?}"
    )))
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        o: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let group = self.group;
        match self.call(PeerRequest::Append { group, rpc }, &o).await? {
            PeerResponse::Append(r) => r.map_err(remote),
            PeerResponse::Failed(e) => Err(remote(e)),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        o: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let group = self.group;
        match self.call(PeerRequest::Vote { group, rpc }, &o).await? {
            PeerResponse::Vote(r) => r.map_err(remote),
            PeerResponse::Failed(e) => Err(remote(e)),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        o: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let group = self.group;
        match self.call(PeerRequest::PreVote { group, rpc }, &o).await? {
            PeerResponse::Vote(r) => r.map_err(remote),
            PeerResponse::Failed(e) => Err(remote(e)),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        o: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let node = self.node().map_err(StreamingError::Unreachable)?;
        let send = self.net.send_snapshot(
            node,
            self.group,
            vote,
            snapshot.meta.clone(),
            &snapshot.snapshot.dir,
            o.hard_ttl(),
        );
        let r = tokio::select! {
            r = send => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let stream_err = |e: String| StreamingError::Network(NetworkError::from_string(e));
        match r {
            Ok(PeerResponse::Snapshot(r)) => r.map_err(|e| stream_err(format!("remote: {e}"))),
            Ok(PeerResponse::Failed(e)) => Err(stream_err(format!("remote: {e}"))),
            Ok(other) => Err(stream_err(format!("unexpected answer: {other:?}"))),
            Err(e @ PeerError::Unreachable { .. }) => {
                Err(StreamingError::Unreachable(Unreachable::from_string(e)))
            }
            Err(e) => Err(stream_err(e.to_string())),
        }
    }
}
