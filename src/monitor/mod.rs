//! Prometheus metrics: what the node counts and how it is exported.
//!
//! The router counts every request once, where it finishes on the node
//! the client sent it to ([`Metrics::record`]: tenant, operation,
//! outcome, latency; a request forwarded to the shard leader is counted
//! on the node that received it, not again on the leader). Tenants'
//! labels are capped ([`tenants`]): the most active `max_tenant_labels`
//! get their own `tenant` label, the rest are summed under
//! `tenant="_other"`. Requests of admin keys count under `tenant="_admin"`,
//! requests before a key names a tenant (ping, a revoked key) under
//! `tenant="_none"` (tenant ids start with a letter or digit, so these
//! never collide). Gauges (storage against limits, admission, raft
//! groups, peers) and each tenant's read cache counters (hits, misses,
//! skipped, kept by the cache itself) are read at scrape time into a
//! [`NodeSample`]; a few
//! node counters kept where the events happen are process-wide
//! ([`node_counters`]).
//!
//! The node's live event bus (A3) is here too ([`events`], with the pure
//! decisions of when an event is due: [`bands`], [`bursts`]).
//!
//! This module names only `proto` and `config` of the crate, so any layer
//! may count into it; `node::metrics` serves it over HTTP.

pub mod bands;
mod block;
pub mod bursts;
mod encode;
pub mod events;
pub mod history;
pub mod label;
mod sample;
pub mod tenants;

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

pub use block::LATENCY_BUCKETS;
pub use events::{EventBus, Subscription};
pub use label::{Operation, Outcome, OUTCOMES};
pub use sample::{CacheSample, NodeSample, TenantSample};
pub use tenants::TenantLabels;

use crate::config::MetricsSettings;

/// Label of tenants beyond the cap.
pub const OTHER: &str = "_other";
/// Label of admin keys' requests.
pub const ADMIN: &str = "_admin";
/// Label of requests that named no tenant.
pub const NONE: &str = "_none";

/// Who made a request, as far as the router learnt.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// A tenant key of this tenant.
    Tenant(&'a str),
    /// An admin key.
    Admin,
    /// No tenant known (ping, or the key was refused).
    Unknown,
}

/// Process-wide node counters, incremented where the events happen.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Full snapshots this node's replicas sent to followers (streams
    /// that completed).
    pub snapshots_sent: AtomicU64,
    /// Snapshot streams that failed or were cancelled.
    pub snapshots_send_failed: AtomicU64,
    /// Snapshots installed by this node's replicas.
    pub snapshots_installed: AtomicU64,
    /// Latency of the raft log's fsyncs (each covers every write that
    /// queued while the one before ran).
    pub fsync: FsyncLatency,
    /// Tenant replicas that closed their shard after being idle.
    pub hibernations: AtomicU64,
    /// Hibernated tenant replicas reopened by a request.
    pub reactivations: AtomicU64,
    /// How long a reopen took (same buckets as the fsyncs).
    pub reactivation: FsyncLatency,
}

/// Bounds of the fsync latency histogram, seconds.
pub const FSYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A histogram of fsync latencies.
#[derive(Debug, Default)]
pub struct FsyncLatency {
    buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl FsyncLatency {
    /// (sum in seconds, count, (upper bound, count in that bucket alone)),
    /// the last bound `f64::MAX`.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    FSYNC_BUCKETS.get(i).copied().unwrap_or(f64::MAX),
                    n.load(Relaxed),
                )
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        (self.sum_us.load(Relaxed) as f64 / 1e6, count, buckets)
    }
}

impl FsyncLatency {
    /// Counts one observation.
    fn observe(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = took.as_secs_f64();
        let i = FSYNC_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// Counts one fsync of the raft log that took `took`.
pub fn fsync_took(took: Duration) {
    node_counters().fsync.observe(took);
}

/// Counts a tenant replica that hibernated.
pub fn hibernated() {
    node_counters()
        .hibernations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts a hibernated tenant replica reopened in `took`.
pub fn reactivated(took: Duration) {
    let c = node_counters();
    c.reactivations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    c.reactivation.observe(took);
}

/// The process's node counters.
pub fn node_counters() -> &'static NodeCounters {
    static C: OnceLock<NodeCounters> = OnceLock::new();
    C.get_or_init(NodeCounters::default)
}

/// Counts a snapshot installed by a replica on this node.
pub fn snapshot_installed() {
    node_counters()
        .snapshots_installed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts a snapshot stream sent to a follower: `ok` if it was
/// installed there.
pub fn snapshot_sent(ok: bool) {
    let c = node_counters();
    match ok {
        true => &c.snapshots_sent,
        false => &c.snapshots_send_failed,
    }
    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The node's request metrics.
#[derive(Debug)]
pub struct Metrics {
    tenants: TenantLabels,
    admin: block::Block,
    none: block::Block,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&MetricsSettings::default())
    }
}

impl Metrics {
    /// Metrics with `settings.max_tenant_labels` labelled tenants.
    pub fn new(settings: &MetricsSettings) -> Metrics {
        Metrics {
            tenants: TenantLabels::new(settings.max_tenant_labels),
            admin: block::Block::new(),
            none: block::Block::new(),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, who: Who<'_>, op: Operation, outcome: Outcome, took: Duration) {
        match who {
            Who::Tenant(t) => self.tenants.record(t, op, outcome.index(), took),
            Who::Admin => self.admin.record(op, outcome.index(), took),
            Who::Unknown => self.none.record(op, outcome.index(), took),
        }
    }

    /// Chooses the labelled tenants again (see [`tenants`]).
    pub fn relabel(&self) {
        self.tenants.relabel();
    }

    /// The tenant labels.
    pub fn tenants(&self) -> &TenantLabels {
        &self.tenants
    }

    /// The whole exposition in the OpenMetrics text format (what
    /// `/metrics` answers), with the gauges of `sample`.
    pub fn render(self: &std::sync::Arc<Self>, sample: NodeSample) -> String {
        encode::render(self.clone(), sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_scrape_shows_each_tenant_request_under_its_labels() {
        let m = Arc::new(Metrics::default());
        let ms = Duration::from_millis(3);
        m.record(Who::Tenant("acme"), Operation::Put, Outcome::OK, ms);
        m.record(Who::Tenant("acme"), Operation::Put, Outcome::OK, ms);
        m.record(Who::Admin, Operation::Tenants, Outcome::OK, ms);
        let text = m.render(NodeSample {
            tenants: vec![TenantSample {
                tenant: "acme".into(),
                max_bytes: 100,
                ..Default::default()
            }],
            ..Default::default()
        });
        for line in [
            "vektagraf_tenant_requests_total{tenant=\"acme\",operation=\"put\",outcome=\"ok\"} 2",
            "vektagraf_tenant_requests_total{tenant=\"_admin\",operation=\"admin_tenants\",outcome=\"ok\"} 1",
            "vektagraf_tenant_request_duration_seconds_count{tenant=\"acme\",operation=\"put\"} 2",
            "vektagraf_tenant_request_duration_seconds_bucket{le=\"0.005\",tenant=\"acme\",operation=\"put\"} 2",
            "vektagraf_tenant_storage_limit_bytes{tenant=\"acme\"} 100",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn cache_counters_are_summed_by_label_like_the_storage_gauges() {
        let m = Arc::new(Metrics::new(&MetricsSettings {
            max_tenant_labels: 1,
            ..Default::default()
        }));
        let ms = Duration::from_millis(1);
        m.record(Who::Tenant("acme"), Operation::Get, Outcome::OK, ms);
        m.record(Who::Tenant("b"), Operation::Get, Outcome::OK, ms);
        let cache = |tenant: &str, hits, misses| CacheSample {
            tenant: tenant.into(),
            usage: crate::proto::CacheUsage {
                hits,
                misses,
                skipped: 1,
                entries: 2,
                bytes: 300,
            },
        };
        let text = m.render(NodeSample {
            caches: vec![cache("acme", 7, 3), cache("b", 1, 1), cache("c", 2, 0)],
            cache_bytes: 900,
            cache_max_bytes: 4096,
            ..Default::default()
        });
        for line in [
            "vektagraf_tenant_cache_hits_total{tenant=\"acme\"} 7",
            "vektagraf_tenant_cache_misses_total{tenant=\"acme\"} 3",
            "vektagraf_tenant_cache_hits_total{tenant=\"_other\"} 3",
            "vektagraf_tenant_cache_misses_total{tenant=\"_other\"} 1",
            "vektagraf_tenant_cache_skipped_total{tenant=\"_other\"} 2",
            "vektagraf_tenant_cache_entries{tenant=\"_other\"} 4",
            "vektagraf_tenant_cache_bytes{tenant=\"acme\"} 300",
            "vektagraf_cache_bytes 900",
            "vektagraf_cache_max_bytes 4096",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
