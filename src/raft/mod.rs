//! openraft wiring: the type config, the shared RocksDB log store with
//! group commit, the shard state machine, and the group network over a
//! [`Transport`] that a higher layer (`net::peer`) implements: raft
//! names no transport.

mod log_store;
mod network;
mod recent;
mod state_machine;
mod transport;
mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use log_store::{LogStore, RaftLogDb, SyncHere};
pub use network::{member_node, LocalOnly, NoPeer, PeerClient, PeerNetwork};
pub use state_machine::{ShardSnapshot, ShardStateMachine};
pub use transport::{Transport, TransportError};
pub use types::{
    io_other, Entry, LogId, ShardRaft, ShardRaftConfig, SnapshotMeta, StoredMembership, Vote,
};

pub use crate::config::RaftSettings;
use crate::proto::Error;
use crate::shard::ShardData;

/// Starts (or restarts) a one-voter raft group for a shard replica and
/// waits until it leads and has re-applied its committed log.
pub async fn start_single_node_group(
    settings: &RaftSettings,
    replica_id: u64,
    logs: &Arc<RaftLogDb>,
    group: u64,
    data: Arc<ShardData>,
) -> Result<ShardRaft, Error> {
    let config = Arc::new(settings.to_openraft_shard("vektagraf")?);
    let sm = ShardStateMachine::new(data);
    let raft = openraft::Raft::new(
        replica_id,
        config,
        LocalOnly,
        logs.store_with(group, SyncHere::WhenAlone),
        sm,
    )
    .await
    .map_err(raft_err)?;
    if !raft.is_initialized().await.map_err(raft_err)? {
        let members = BTreeMap::from([(replica_id, openraft::BasicNode::new("local"))]);
        raft.initialize(members).await.map_err(raft_err)?;
    }
    raft.wait(Some(std::time::Duration::from_secs(30)))
        .state(openraft::ServerState::Leader, "single-node group leads")
        .await
        .map_err(raft_err)?;
    raft.wait_for_recovery(Some(std::time::Duration::from_secs(120)))
        .await
        .map_err(raft_err)?;
    Ok(raft)
}

/// Starts (or restarts) a replica of a replicated group over the peer
/// transport `net`. `initial`: the group's first membership, used only when
/// this replica's log is empty and it is one of the initial replicas
/// (replicas added later wait for the leader instead). Does not wait
/// for an election. `own_snapshots`: the replica triggers its snapshots
/// itself ([`snapshot_due`], tenant shards) instead of openraft's policy.
#[allow(clippy::too_many_arguments)] // each is one fact about the replica
pub async fn start_replicated_group(
    settings: &RaftSettings,
    replica_id: u64,
    logs: &Arc<RaftLogDb>,
    group: u64,
    data: Arc<ShardData>,
    net: Arc<dyn Transport>,
    initial: Option<BTreeMap<u64, openraft::BasicNode>>,
    own_snapshots: bool,
) -> Result<ShardRaft, Error> {
    // A tenant shard's replica triggers its own snapshots
    // ([`snapshot_due`]); the metadata group leaves them to openraft.
    let config = Arc::new(if own_snapshots {
        settings.to_openraft_shard("vektagraf")?
    } else {
        settings.to_openraft("vektagraf")?
    });
    let sm = ShardStateMachine::new(data);
    let network = PeerNetwork::new(net, group);
    let store = logs.store_with(group, SyncHere::UnlessLeading(replica_id));
    let raft = openraft::Raft::new(replica_id, config, network, store, sm)
        .await
        .map_err(raft_err)?;
    if let Some(members) = initial {
        if !raft.is_initialized().await.map_err(raft_err)? {
            // Every initial replica proposes the same membership at log
            // index 0; openraft accepts that on each of them.
            let first = members.keys().next() == Some(&replica_id);
            match raft.initialize(members).await {
                // The first initial replica campaigns at once instead of
                // waiting out an election timeout; placement puts it on
                // the least loaded node, which spreads leaders.
                Ok(()) if first => {
                    let _ = raft.trigger().elect(false).await;
                }
                Ok(()) => {}
                Err(openraft::errors::RaftError::APIError(
                    openraft::errors::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(raft_err(e)),
            }
        }
    }
    Ok(raft)
}

/// Whether `raft`'s core stopped on a storage error or a panic (not a
/// shutdown): the group is dead on this node until it restarts.
pub fn storage_fatal(raft: &ShardRaft) -> bool {
    use openraft::async_runtime::WatchReceiver;
    matches!(
        raft.metrics().borrow_watched().running_state,
        Err(openraft::errors::Fatal::StorageError(_) | openraft::errors::Fatal::Panicked)
    )
}

/// Maps any raft failure to the public error.
pub fn raft_err(e: impl std::fmt::Display) -> Error {
    Error::Raft {
        reason: e.to_string(),
    }
}

/// How far past `snapshot_every` a leader defers its next snapshot while a
/// replica lags behind what that snapshot would let it purge: by this
/// many times `snapshot_every` entries at most (a replica that is down
/// for good must not grow the log without bound).
pub const SNAPSHOT_DEFER_FACTOR: u64 = 20;

/// Whether a tenant shard replica should take a snapshot now: at least
/// `every` entries applied since its last one, unless it leads and a
/// replica's matched index is behind what the new snapshot would purge
/// (`applied - keep`). That replica is being sent a snapshot, or is
/// catching up from the log: purging now would make it need another
/// snapshot when this one lands, and a busy tenant's new replica would
/// never catch up (each snapshot outdated by the time it is installed).
/// The deferral ends once the log holds `every ×`
/// [`SNAPSHOT_DEFER_FACTOR`] entries past the last snapshot.
pub fn snapshot_due(m: &openraft::RaftMetrics<ShardRaftConfig>, every: u64, keep: u64) -> bool {
    let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
    let last = m.snapshot.as_ref().map_or(0, |l| l.index);
    let since = applied.saturating_sub(last);
    if since < every.max(1) {
        return false;
    }
    if since >= every.max(1).saturating_mul(SNAPSHOT_DEFER_FACTOR) {
        return true;
    }
    let purge_to = applied.saturating_sub(keep);
    let lagging = m.replication.as_ref().is_some_and(|r| {
        r.values()
            .any(|matched| matched.as_ref().map_or(0, |l| l.index) < purge_to)
    });
    !lagging
}
