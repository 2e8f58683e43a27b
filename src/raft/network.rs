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

/// Most bytes of entries one AppendEntries message carries: a quarter of
/// the peer frame limit, so a batch of big entries is split, never
/// refused as a whole (which would stop the group replicating).
pub const APPEND_MAX_BYTES: usize = crate::codec::MAX_DECODE_BYTES / 4;

/// `rpc` cut to the entries that fit in `max` bytes (at least one): the
/// request to send and, if entries were left out, the log id of the
/// last one sent (openraft then sends the rest next).
pub fn fit_append(
    mut rpc: AppendEntriesRequest<C>,
    max: usize,
) -> (AppendEntriesRequest<C>, Option<super::types::LogId>) {
    if rpc.entries.len() <= 1 {
        return (rpc, None);
    }
    let mut total = 0usize;
    let mut keep = rpc.entries.len();
    for (i, e) in rpc.entries.iter().enumerate() {
        // An entry that cannot be measured cannot be encoded either: the
        // send reports it.
        total = total.saturating_add(crate::codec::encoded_len(e).unwrap_or(0));
        if total > max && i > 0 {
            keep = i;
            break;
        }
    }
    if keep == rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    (rpc, last)
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
        let (rpc, cut) = fit_append(rpc, APPEND_MAX_BYTES);
        match net.append(node, self.group, rpc, o.hard_ttl()).await {
            // Only the first part went: say how far it matched.
            Ok(AppendEntriesResponse::Success) if cut.is_some() => {
                Ok(AppendEntriesResponse::PartialSuccess(cut))
            }
            r => r.map_err(rpc_err),
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::vote::RaftLeaderIdExt;
    use openraft::EntryPayload;

    use super::*;
    use crate::proto::{NewObject, WriteOp};
    use crate::raft::types::{Entry, LogId};
    use crate::storage::Command;

    fn log_id(index: u64) -> LogId {
        let leader = openraft::type_config::alias::LeaderIdOf::<C>::new_committed(1, 1);
        LogId::new(leader, index)
    }

    /// An entry holding one object of about `bytes` bytes.
    fn entry(index: u64, bytes: usize) -> Entry {
        let op = WriteOp::Put(NewObject::new(
            "kv",
            &format!("k{index}"),
            serde_json::json!({ "pad": "x".repeat(bytes) }),
        ));
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Command::Write {
                ops: vec![op],
                atomic: true,
                now_ms: 1,
            }),
        }
    }

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<C> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(0)),
            entries,
            leader_commit: Some(log_id(0)),
        }
    }

    #[test]
    fn a_batch_over_the_byte_cap_is_cut_after_the_last_entry_that_fits() {
        // Ten entries of ~1 MB against a 3.5 MB cap: three go.
        let rpc = request((1..=10).map(|i| entry(i, 1 << 20)).collect());
        let (sent, last) = fit_append(rpc, 7 << 19);
        assert_eq!(sent.entries.len(), 3);
        assert_eq!(last, Some(log_id(3)));
        assert!(crate::codec::encoded_len(&sent).unwrap() < 7 << 19);
        // What fits goes whole.
        let rpc = request((1..=10).map(|i| entry(i, 100)).collect());
        let (sent, last) = fit_append(rpc, 7 << 19);
        assert_eq!((sent.entries.len(), last), (10, None));
        // One entry over the cap still goes (the frame limit is 4× the cap).
        let rpc = request(vec![entry(1, 4 << 20), entry(2, 10)]);
        let (sent, last) = fit_append(rpc, 1 << 20);
        assert_eq!(sent.entries.len(), 1);
        assert_eq!(last, Some(log_id(1)));
    }
}
