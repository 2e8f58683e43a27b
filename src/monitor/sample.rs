//! What a scrape reads from the node besides the request counters:
//! gauges filled by the engine and the cluster at scrape time.

use crate::proto::{CacheUsage, StorageUsage};

/// One tenant's storage on this node (its shard leader's view).
#[derive(Debug, Clone, Default)]
pub struct TenantSample {
    /// The tenant.
    pub tenant: String,
    /// Storage in use.
    pub usage: StorageUsage,
    /// `storage_limit.max_storage_bytes`.
    pub max_bytes: u64,
    /// `storage_limit.max_objects`.
    pub max_objects: u64,
    /// `storage_limit.max_vectors`.
    pub max_vectors: u64,
}

/// One tenant's read cache on this node (every tenant loaded here,
/// leader or not: followers serve stale reads from their own cache).
#[derive(Debug, Clone, Default)]
pub struct CacheSample {
    /// The tenant.
    pub tenant: String,
    /// Hits and misses since the tenant was loaded here, entries, bytes.
    pub usage: CacheUsage,
}

/// Node-wide gauges at one scrape.
#[derive(Debug, Clone, Default)]
pub struct NodeSample {
    /// Admission slots in use, by priority rank (low, normal, high, critical).
    pub in_flight: [u64; 4],
    /// Requests waiting for a slot, by priority rank.
    pub queued: [u64; 4],
    /// `limits.max_in_flight`.
    pub max_in_flight: u64,
    /// Shard replicas (raft groups) open here, group 0 excluded.
    pub groups: u64,
    /// Of those, led by this node.
    pub groups_led: u64,
    /// Of those, quiesced (raft ticks stopped).
    pub groups_quiesced: u64,
    /// Tenant replicas loaded here whose shard is closed by hibernation.
    pub hibernated: u64,
    /// Committed (known) log entries not yet applied, summed over groups.
    pub apply_lag: u64,
    /// The largest such lag of one group.
    pub apply_lag_max: u64,
    /// Tenants whose shard this node leads (storage gauges).
    pub tenants: Vec<TenantSample>,
    /// Read caches of the tenants loaded here.
    pub caches: Vec<CacheSample>,
    /// Bytes every tenant's read cache holds on this node.
    pub cache_bytes: u64,
    /// `cache.max_bytes`.
    pub cache_max_bytes: u64,
    /// On a cluster: (peers answering the liveness probe, peers not).
    pub peers: Option<(u64, u64)>,
    /// On a cluster: whether this node leads group 0.
    pub meta_leader: Option<bool>,
}
