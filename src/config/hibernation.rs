//! `[hibernation]`: idle tenant replicas close their shard and reopen on
//! their next request (issue 12).

use serde::{Deserialize, Serialize};

/// `[hibernation]` settings. Every key has a default, so a config file
/// without the section (or with some keys) is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HibernationSettings {
    /// A tenant replica that served no request for this long, ms, closes
    /// its shard (RocksDB instance, FAISS indexes, raft group, actor);
    /// its next request reopens it. 0: never (every shard stays open, and
    /// a node opens every shard at start).
    pub after_idle_ms: u64,
    /// How often the node looks for idle replicas, ms.
    pub check_ms: u64,
    /// Open shard replicas this node aims to stay under (0: no cap):
    /// past it, the least recently used replicas idle for a second close
    /// early (on a cluster, only those whose group has quiesced). It
    /// bounds open files and memory whatever the number of tenants, as
    /// long as that many are not all busy.
    pub max_open: usize,
}

impl Default for HibernationSettings {
    fn default() -> Self {
        Self {
            after_idle_ms: 600_000,
            check_ms: 1_000,
            max_open: 2_000,
        }
    }
}
