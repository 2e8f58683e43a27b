//! Group networks: [`LocalOnly`] for a one-voter group (there is nobody
//! to talk to), and [`PeerNetwork`] for a replicated group, over the
//! node's peer [`Transport`].

use std::future::Future;
use std::sync::Arc;

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};

use super::state_machine::ShardSnapshot;
use super::transport::{Transport, TransportError};
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
/// node's [`Transport`], tagged with the group. A member's
/// [`BasicNode::addr`] holds the id of the cluster node hosting it.
#[derive(Clone)]
pub struct PeerNetwork {
    net: Arc<dyn Transport>,
    group: u64,
}

impl PeerNetwork {
    /// The network of `group` over `net`.
    pub fn new(net: Arc<dyn Transport>, group: u64) -> Self {
        Self { net, group }
    }
}

/// A group's connection to one member.
pub struct PeerClient {
    net: Arc<dyn Transport>,
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
}

fn rpc_err(e: TransportError) -> RPCError<C> {
    match e {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::from_string(e)),
        _ => RPCError::Network(NetworkError::from_string(e)),
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        o: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        let net = self.net.clone();
        net.append(node, self.group, rpc, o.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        o: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        let net = self.net.clone();
        net.vote(node, self.group, rpc, o.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn transfer_leader(
        &mut self,
        rpc: openraft::raft::TransferLeaderRequest<C>,
        o: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<C>, RPCError<C>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        let net = self.net.clone();
        net.transfer_leader(node, self.group, rpc, o.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        o: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        let node = self.node().map_err(RPCError::Unreachable)?;
        let net = self.net.clone();
        net.pre_vote(node, self.group, rpc, o.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<C, ShardSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        o: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let node = self.node().map_err(StreamingError::Unreachable)?;
        let send = self.net.clone().full_snapshot(
            node,
            self.group,
            vote,
            snapshot.meta.clone(),
            snapshot.snapshot.dir.clone(),
            o.hard_ttl(),
        );
        let r = tokio::select! {
            r = send => r,
            closed = cancel => {
                crate::monitor::snapshot_sent(false);
                return Err(StreamingError::Closed(closed));
            }
        };
        crate::monitor::snapshot_sent(r.is_ok());
        r.map_err(|e| match e {
            TransportError::Unreachable { .. } => {
                StreamingError::Unreachable(Unreachable::from_string(e))
            }
            _ => StreamingError::Network(NetworkError::from_string(e)),
        })
    }
}
