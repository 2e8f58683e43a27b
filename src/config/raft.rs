//! `[raft]`: timing and snapshot settings of every raft group.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Raft timing and snapshot settings for shard groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSettings {
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, ms.
    pub election_timeout_min_ms: u64,
    /// Election timeout upper bound, ms.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept after a snapshot (so lagging followers avoid a transfer).
    pub keep_after_snapshot: u64,
    /// Timeout of a whole snapshot transfer, ms.
    pub install_snapshot_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            install_snapshot_timeout_ms: 60_000,
        }
    }
}

impl RaftSettings {
    /// The validated openraft config. Snapshots are openraft's to
    /// trigger every `snapshot_every` entries (the metadata group).
    pub fn to_openraft(&self, cluster: &str) -> Result<openraft::Config, ConfigError> {
        self.openraft(cluster, true)
    }

    /// The validated openraft config of a tenant shard group, whose
    /// snapshots its replica triggers itself (see
    /// `raft::snapshot_due`): openraft's own policy is off.
    pub fn to_openraft_shard(&self, cluster: &str) -> Result<openraft::Config, ConfigError> {
        self.openraft(cluster, false)
    }

    fn openraft(&self, cluster: &str, policy: bool) -> Result<openraft::Config, ConfigError> {
        openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_policy: if policy {
                openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every)
            } else {
                openraft::SnapshotPolicy::Never
            },
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            purge_batch_size: 256,
            max_payload_entries: 1024,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConfigError::new("raft", e.to_string()))
    }
}
