//! Node configuration: compiled-in defaults, a file, environment
//! overrides, then validation into typed settings.
//!
//! This module imports nothing else of the crate: it is the bottom layer
//! every other module may read. Checks that need another module's
//! knowledge (tier names) run where that module is used
//! (`Database::open`); a bound shared with another module is a constant
//! here whose relation the other module asserts in a unit test.

mod analytics;
mod audit;
mod error;
mod events;
mod hibernation;
mod metrics;
mod raft;
mod retention;
mod server;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use analytics::AnalyticsSettings;
pub use audit::{AuditSettings, AutoScaleSettings};
pub use error::ConfigError;
pub use events::EventsSettings;
pub use hibernation::HibernationSettings;
pub use metrics::MetricsSettings;
pub use raft::RaftSettings;
pub use retention::RetentionSettings;
pub use server::{ServerSettings, DEFAULT_MAX_FRAME_BYTES};

/// Largest `limits.max_command_bytes`: half the decoder's byte limit
/// (`codec::MAX_DECODE_BYTES`, which asserts the relation).
pub const MAX_COMMAND_BYTES: usize = 32 << 20;

/// The compiled-in defaults (`config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "VEKTAGRAF__";

/// `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Optional tiers file (empty: compiled-in presets).
    pub tiers_file: String,
}

/// `[multi_tenancy]` (T1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiTenancyConfig {
    /// Multi-tenancy on.
    pub enabled: bool,
    /// Sessions must name a user of the tenant.
    pub strict_isolation: bool,
    /// Tier for auto-created tenants.
    pub default_tier: String,
    /// Create unknown tenants on first use.
    pub auto_create_tenants: bool,
}

/// `[limits]`: node-wide admission and request bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLimits {
    /// Concurrent operations on the node.
    pub max_in_flight: usize,
    /// Waiting requests.
    pub max_queued: usize,
    /// Longest wait for a slot, ms.
    pub queue_timeout_ms: u64,
    /// Request deadline, ms.
    pub request_timeout_ms: u64,
    /// Largest write command, bytes.
    pub max_command_bytes: usize,
    /// Counter checkpoint interval, ms.
    pub quota_checkpoint_ms: u64,
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Shared block cache.
    pub block_cache_bytes: usize,
    /// Shared memtable budget.
    pub write_buffer_bytes: usize,
    /// Open files per shard.
    pub max_open_files_per_shard: i32,
    /// Bytes kept free on the data directory's filesystem: below this
    /// (or below 5% of the filesystem, whichever is smaller) the node
    /// refuses tenant writes other than deletes with `StorageFull`,
    /// rather than fill the disk and stop. 0: no reserve.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

fn default_min_free_bytes() -> u64 {
    256 << 20
}

/// `[cache]`: the read cache (C1). Per-tenant sizes and TTLs are set per
/// tier (`config/tiers.toml`); this is the node's cap over all tenants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Approximate bytes all tenants' cached results may hold on this
    /// node (0: no read cache).
    pub max_bytes: u64,
}

/// The whole node config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[multi_tenancy]`.
    pub multi_tenancy: MultiTenancyConfig,
    /// `[limits]`.
    pub limits: NodeLimits,
    /// `[storage]`.
    pub storage: StorageSection,
    /// `[raft]`.
    pub raft: RaftSettings,
    /// `[server]`.
    pub server: ServerSettings,
    /// `[cluster]`.
    pub cluster: ClusterSettings,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// `[cache]`.
    pub cache: CacheSection,
    /// `[retention]`.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// `[audit]`.
    #[serde(default)]
    pub audit: AuditSettings,
    /// `[auto_scale]`.
    #[serde(default)]
    pub auto_scale: AutoScaleSettings,
    /// `[analytics]`.
    #[serde(default)]
    pub analytics: AnalyticsSettings,
    /// `[events]`.
    #[serde(default)]
    pub events: EventsSettings,
    /// `[hibernation]`.
    #[serde(default)]
    pub hibernation: HibernationSettings,
}

/// `[cluster]`: multi-node operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Run as a cluster node (off: a standalone node).
    pub enabled: bool,
    /// This node's id (at least 1, unique, never reused after removal).
    pub node_id: u64,
    /// Peer endpoint (QUIC, mutual TLS, ALPN `vektagraf-peer/1`).
    pub peer_listen: String,
    /// Peer address other nodes dial (empty: `peer_listen`).
    pub advertise_peer: String,
    /// Client address other nodes tell clients (empty: `server.listen`).
    pub advertise_client: String,
    /// Cluster CA certificate (PEM), from `vektagraf certs`.
    pub ca: String,
    /// This node's certificate chain (SAN `node-<id>`) and key.
    pub cert: String,
    /// Key of `cert`.
    pub key: String,
    /// Peer addresses of existing nodes to join through (empty with an
    /// uninitialised metadata group: bootstrap a new cluster).
    pub join: Vec<String>,
    /// Replicas per tenant shard (capped by the live nodes).
    pub replication_factor: usize,
    /// Voters of the metadata group (the rest of the nodes are learners).
    pub meta_voters: usize,
    /// Tenant move jobs running at once, cluster-wide (more wait, in
    /// order, as `registered`).
    pub max_moves_in_flight: usize,
    /// A move job that makes no progress this long fails and puts the
    /// group back as it was.
    pub move_stall_timeout_ms: u64,
    /// Rebalance replicas and leaderships when a node joins.
    pub rebalance_on_join: bool,
    /// Bandwidth cap of each snapshot stream a node sends, MB/s (0: no
    /// cap). With `max_moves_in_flight` it bounds the cluster's move
    /// traffic.
    pub snapshot_mb_per_s: u64,
    /// How long this node's copy of the metadata (keys, users, tenants)
    /// stays trusted without word from group 0's leader, ms. Past it
    /// (say, cut off by a partition) the node refuses requests rather
    /// than honour a key revoked, a user removed or a tenant deleted
    /// elsewhere: this is the bound on how long those take to apply
    /// everywhere.
    pub metadata_lease_ms: u64,
    /// When a node stops answering, the quiesced groups it led wake here
    /// at most this many a second (each then holds an election): a node
    /// dying with thousands of idle leaders costs the others a bounded
    /// stream of elections, not a storm. Groups asleep here wake on
    /// their first request instead.
    pub wake_per_s: u64,
}

fn cfg_err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(key, reason)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

impl NodeConfig {
    /// Defaults, then `file` (if any), then `VEKTAGRAF__*` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<NodeConfig, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let text = match file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| cfg_err("--config", format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        Self::from_layers(text.as_deref(), &env)
    }

    /// Builds a config from an optional file text and (key, value) overrides.
    pub fn from_layers(
        file: Option<&str>,
        env: &[(String, String)],
    ) -> Result<NodeConfig, ConfigError> {
        let mut v: toml::Value =
            toml::from_str(DEFAULT_TOML).map_err(|e| cfg_err("default.toml", e.to_string()))?;
        if let Some(text) = file {
            let f: toml::Value =
                toml::from_str(text).map_err(|e| cfg_err("config file", e.to_string()))?;
            merge(&mut v, f);
        }
        for (k, val) in env {
            let path: Vec<String> = k[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.len() != 2 {
                return Err(cfg_err(k, "use VEKTAGRAF__SECTION__KEY"));
            }
            let parsed = toml::from_str::<toml::Value>(&format!("x = {val}"))
                .ok()
                .and_then(|t| t.get("x").cloned())
                .unwrap_or_else(|| toml::Value::String(val.clone()));
            let mut over = toml::map::Map::new();
            let mut inner = toml::map::Map::new();
            inner.insert(path[1].clone(), parsed);
            over.insert(path[0].clone(), toml::Value::Table(inner));
            merge(&mut v, toml::Value::Table(over));
        }
        let cfg: NodeConfig = v
            .try_into()
            .map_err(|e: toml::de::Error| cfg_err("config", e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The defaults with a different data directory (tests, the quickstart).
    pub fn with_data_dir(dir: &Path) -> NodeConfig {
        #[allow(clippy::expect_used)]
        let mut c = Self::from_layers(None, &[]).expect("compiled-in defaults are valid");
        c.node.data_dir = dir.to_path_buf();
        c
    }

    /// Rejects nonsense, naming the key. (The default tier's name is
    /// checked against the tiers by `Database::open`.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_in_flight == 0 {
            return Err(cfg_err("limits.max_in_flight", "must be at least 1"));
        }
        if l.request_timeout_ms == 0 || l.queue_timeout_ms == 0 || l.quota_checkpoint_ms == 0 {
            return Err(cfg_err("limits", "timeouts and intervals must be positive"));
        }
        if l.max_command_bytes < 4096 || l.max_command_bytes > MAX_COMMAND_BYTES {
            return Err(cfg_err(
                "limits.max_command_bytes",
                "must be in 4 KiB..=32 MiB",
            ));
        }
        self.raft.to_openraft("check")?;
        let r = &self.retention;
        if r.interval_ms == 0 {
            return Err(cfg_err("retention.interval_ms", "must be at least 1"));
        }
        if r.check_ms == 0 {
            return Err(cfg_err("retention.check_ms", "must be at least 1"));
        }
        if self.hibernation.check_ms == 0 {
            return Err(cfg_err("hibernation.check_ms", "must be at least 1"));
        }
        let e = &self.events;
        for (key, v) in [
            ("events.health_check_ms", e.health_check_ms),
            ("events.limit_check_ms", e.limit_check_ms),
            ("events.capacity", e.capacity as u64),
            ("events.max_subscriptions", e.max_subscriptions as u64),
            (
                "events.max_subscriptions_per_connection",
                e.max_subscriptions_per_connection as u64,
            ),
            ("events.burst_rejections", e.burst_rejections),
            ("events.burst_window_ms", e.burst_window_ms),
        ] {
            if v == 0 {
                return Err(cfg_err(key, "must be at least 1"));
            }
        }
        if e.capacity > 1 << 20 || e.recent > 1 << 16 {
            return Err(cfg_err(
                "events.capacity",
                "capacity must be at most 1048576 and recent at most 65536",
            ));
        }
        let m = &self.metrics;
        if m.enabled && !(1..=10_000).contains(&m.max_tenant_labels) {
            return Err(cfg_err("metrics.max_tenant_labels", "must be in 1..=10000"));
        }
        if m.relabel_interval_ms < 100 {
            return Err(cfg_err(
                "metrics.relabel_interval_ms",
                "must be at least 100",
            ));
        }
        let c = &self.cluster;
        if c.enabled {
            if c.node_id == 0 {
                return Err(cfg_err("cluster.node_id", "must be at least 1"));
            }
            for (k, v) in [
                ("cluster.ca", &c.ca),
                ("cluster.cert", &c.cert),
                ("cluster.key", &c.key),
            ] {
                if v.is_empty() {
                    return Err(cfg_err(
                        k,
                        "required when cluster.enabled (see `vektagraf certs`)",
                    ));
                }
            }
            if c.wake_per_s == 0 {
                return Err(cfg_err("cluster.wake_per_s", "must be at least 1"));
            }
            if c.metadata_lease_ms < 1000 {
                return Err(cfg_err(
                    "cluster.metadata_lease_ms",
                    "must be at least 1000 (longer than a metadata leader election)",
                ));
            }
            if c.replication_factor == 0 || c.meta_voters == 0 {
                return Err(cfg_err(
                    "cluster",
                    "replication_factor and meta_voters must be at least 1",
                ));
            }
            if c.max_moves_in_flight == 0 {
                return Err(cfg_err("cluster.max_moves_in_flight", "must be at least 1"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_errors_name_the_key() {
        let c = NodeConfig::from_layers(
            Some("[limits]\nmax_in_flight = 8\n"),
            &[
                ("VEKTAGRAF__LIMITS__MAX_QUEUED".into(), "7".into()),
                ("VEKTAGRAF__NODE__DATA_DIR".into(), "/tmp/x".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.limits.max_in_flight, 8);
        assert_eq!(c.limits.max_queued, 7);
        assert_eq!(c.node.data_dir, PathBuf::from("/tmp/x"));
        let e = NodeConfig::from_layers(Some("[limits]\nmax_in_flight = 0\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("limits.max_in_flight"), "{e}");
        assert!(NodeConfig::from_layers(Some("[limits]\nbogus = 1\n"), &[]).is_err());
    }
}
