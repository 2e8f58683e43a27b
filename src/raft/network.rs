//! The network of a one-voter group: there is nobody to talk to.
//!
//! Replication across nodes (the cluster issue) replaces this with a QUIC
//! transport; until then a group's membership is only its own node, and
//! openraft never calls these.

use std::future::Future;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkV2};

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
