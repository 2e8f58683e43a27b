//! What a replicated group needs from the node's peer transport: raft's
//! own messages to one member's cluster node, tagged with the group.
//!
//! The raft layer defines this trait and the network layer implements it
//! (`net::peer::PeerNet`), so raft never names the transport: the
//! dependency points from `net` down to `raft`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use super::types::{ShardRaftConfig as C, SnapshotMeta, Vote};

/// Why a message to a member's node got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The node cannot be reached: no connection (no known address, a
    /// failed dial, backing off), or dropped by a fault filter. Raft
    /// treats the member as unreachable.
    #[error("{reason}")]
    Unreachable {
        /// Why, as the transport says it.
        reason: String,
    },
    /// The message may have left but no answer came: a timeout, a broken
    /// stream, an answer of the wrong kind.
    #[error("{reason}")]
    Network {
        /// Why, as the transport says it.
        reason: String,
    },
    /// The member's node answered with an error (raft's, or a refusal to
    /// serve the message).
    #[error("remote: {reason}")]
    Remote {
        /// The remote error.
        reason: String,
    },
}

/// A transport to the other members of replicated groups. Each call sends
/// one message to cluster node `node` for raft group `group` and waits
/// for its answer, at most `ttl`.
pub trait Transport: Send + Sync + 'static {
    /// AppendEntries.
    fn append(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: AppendEntriesRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<AppendEntriesResponse<C>, TransportError>>;

    /// RequestVote.
    fn vote(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: VoteRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<C>, TransportError>>;

    /// Pre-vote.
    fn pre_vote(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: VoteRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<VoteResponse<C>, TransportError>>;

    /// Sends the full snapshot whose files are in `dir` (with the
    /// leader's `vote` and the snapshot's `meta`) and waits until the
    /// member installed it.
    fn full_snapshot(
        self: Arc<Self>,
        node: u64,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<SnapshotResponse<C>, TransportError>>;

    /// TransferLeader: the leader hands its leadership to the member,
    /// which campaigns once it holds the leader's log.
    fn transfer_leader(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: TransferLeaderRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<TransferLeaderResponse<C>, TransportError>>;
}
