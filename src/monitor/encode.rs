//! Rendering: a `prometheus-client` collector over the blocks and the
//! scrape's [`NodeSample`], encoded as OpenMetrics text.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::proto::CacheUsage;

use super::block::Block;
use super::label::{Operation, OUTCOMES};
use super::{node_counters, Metrics, NodeSample, ADMIN, NONE, OTHER};

const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];

/// One scrape: the metrics and the gauges read for it.
#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    sample: NodeSample,
}

pub(super) fn render(metrics: Arc<Metrics>, sample: NodeSample) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { metrics, sample }));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

fn counter(m: &mut MetricEncoder<'_>, v: u64) -> std::fmt::Result {
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder<'_>, v: u64) -> std::fmt::Result {
    m.encode_gauge(&v)
}

/// Reads one sum of a [`Storage`].
type Field = fn(&Storage) -> u64;
/// Reads one sum of a [`CacheUsage`].
type CacheField = fn(&CacheUsage) -> u64;

/// Storage sums of one label.
#[derive(Default)]
struct Storage {
    bytes: u64,
    objects: u64,
    vectors: u64,
    max_bytes: u64,
    max_objects: u64,
    max_vectors: u64,
}

impl Scrape {
    /// Every exported block with its tenant label.
    fn blocks(&self, mut f: impl FnMut(&str, &Block) -> std::fmt::Result) -> std::fmt::Result {
        let mut r = Ok(());
        self.metrics.tenants.each(|t, b| {
            if r.is_ok() {
                r = f(t.unwrap_or(OTHER), b);
            }
        });
        r?;
        f(ADMIN, &self.metrics.admin)?;
        f(NONE, &self.metrics.none)
    }

    fn requests(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut fam = enc.encode_descriptor(
            "vektagraf_tenant_requests",
            "Requests by tenant, operation and outcome (ok, limit_<kind>, error_<kind>), counted on the node the client sent them to",
            None,
            MetricType::Counter,
        )?;
        self.blocks(|tenant, b| {
            for op in Operation::ALL {
                for (i, outcome) in OUTCOMES.iter().enumerate() {
                    let n = b.requests(op, i);
                    if n > 0 {
                        let labels = [
                            ("tenant", tenant),
                            ("operation", op.as_str()),
                            ("outcome", *outcome),
                        ];
                        counter(&mut fam.encode_family(&labels)?, n)?;
                    }
                }
            }
            Ok(())
        })
    }

    fn latency(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut fam = enc.encode_descriptor(
            "vektagraf_tenant_request_duration_seconds",
            "Request latency inside the node (router to answer), by tenant and operation",
            None,
            MetricType::Histogram,
        )?;
        self.blocks(|tenant, b| {
            for op in Operation::ALL {
                let l = b.latency(op);
                if l.count > 0 {
                    let labels = [("tenant", tenant), ("operation", op.as_str())];
                    fam.encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(l.sum, l.count, &l.buckets, None)?;
                }
            }
            Ok(())
        })
    }

    fn storage(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut by_label: BTreeMap<String, Storage> = BTreeMap::new();
        for t in &self.sample.tenants {
            let label = self
                .metrics
                .tenants
                .label_of(&t.tenant)
                .map_or_else(|| OTHER.to_string(), |l| l.to_string());
            let s = by_label.entry(label).or_default();
            s.bytes = s.bytes.saturating_add(t.usage.bytes);
            s.objects = s.objects.saturating_add(t.usage.objects);
            s.vectors = s.vectors.saturating_add(t.usage.vectors);
            s.max_bytes = s.max_bytes.saturating_add(t.max_bytes);
            s.max_objects = s.max_objects.saturating_add(t.max_objects);
            s.max_vectors = s.max_vectors.saturating_add(t.max_vectors);
        }
        let gauges: [(&str, &str, Field); 6] = [
            (
                "vektagraf_tenant_storage_bytes",
                "Bytes of objects and edges stored, tenants whose shard this node leads",
                |s| s.bytes,
            ),
            (
                "vektagraf_tenant_storage_limit_bytes",
                "storage_limit.max_storage_bytes (summed under _other)",
                |s| s.max_bytes,
            ),
            ("vektagraf_tenant_objects", "Objects stored", |s| s.objects),
            (
                "vektagraf_tenant_objects_limit",
                "storage_limit.max_objects (summed under _other)",
                |s| s.max_objects,
            ),
            ("vektagraf_tenant_vectors", "Objects with a vector", |s| {
                s.vectors
            }),
            (
                "vektagraf_tenant_vectors_limit",
                "storage_limit.max_vectors (summed under _other)",
                |s| s.max_vectors,
            ),
        ];
        for (name, help, get) in gauges {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (label, s) in &by_label {
                gauge(
                    &mut fam.encode_family(&[("tenant", label.as_str())])?,
                    get(s),
                )?;
            }
        }
        Ok(())
    }

    /// The tenants' read caches, summed by label like the storage gauges.
    /// A tenant's counters start at zero when it is loaded on this node;
    /// `_other`'s sum drops when a tenant leaves it for its own label (a
    /// counter reset to Prometheus).
    fn cache(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut by_label: BTreeMap<String, CacheUsage> = BTreeMap::new();
        for t in &self.sample.caches {
            let label = self
                .metrics
                .tenants
                .label_of(&t.tenant)
                .map_or_else(|| OTHER.to_string(), |l| l.to_string());
            let s = by_label.entry(label).or_default();
            let u = &t.usage;
            s.hits = s.hits.saturating_add(u.hits);
            s.misses = s.misses.saturating_add(u.misses);
            s.skipped = s.skipped.saturating_add(u.skipped);
            s.entries = s.entries.saturating_add(u.entries);
            s.bytes = s.bytes.saturating_add(u.bytes);
        }
        let families: [(&str, &str, MetricType, CacheField); 5] = [
            (
                "vektagraf_tenant_cache_hits",
                "Reads (get, query, vector search) answered from the tenant's read cache on this node",
                MetricType::Counter,
                |u| u.hits,
            ),
            (
                "vektagraf_tenant_cache_misses",
                "Cacheable reads the tenant's read cache on this node did not hold",
                MetricType::Counter,
                |u| u.misses,
            ),
            (
                "vektagraf_tenant_cache_skipped",
                "Results not cached: cache.max_bytes reached, or the result too large",
                MetricType::Counter,
                |u| u.skipped,
            ),
            (
                "vektagraf_tenant_cache_entries",
                "Results in the tenant's read cache on this node (as last counted; current within limits.quota_checkpoint_ms)",
                MetricType::Gauge,
                |u| u.entries,
            ),
            (
                "vektagraf_tenant_cache_bytes",
                "Approximate bytes of the tenant's read cache on this node",
                MetricType::Gauge,
                |u| u.bytes,
            ),
        ];
        for (name, help, kind, get) in families {
            let counts = matches!(kind, MetricType::Counter);
            let mut fam = enc.encode_descriptor(name, help, None, kind)?;
            for (label, u) in &by_label {
                let labels = [("tenant", label.as_str())];
                let mut m = fam.encode_family(&labels)?;
                match counts {
                    true => counter(&mut m, get(u))?,
                    false => gauge(&mut m, get(u))?,
                }
            }
        }
        Ok(())
    }

    fn node(&self, enc: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.sample;
        for (name, help, values) in [
            (
                "vektagraf_admission_in_flight",
                "Admission slots in use, by the priority of the tenant holding them",
                &s.in_flight,
            ),
            (
                "vektagraf_admission_queued",
                "Requests waiting for an admission slot, by priority",
                &s.queued,
            ),
        ] {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (p, v) in PRIORITIES.iter().zip(values.iter()) {
                gauge(&mut fam.encode_family(&[("priority", *p)])?, *v)?;
            }
        }
        let plain: [(&str, &str, u64); 11] = [
            (
                "vektagraf_cache_bytes",
                "Approximate bytes every tenant's read cache holds on this node",
                s.cache_bytes,
            ),
            (
                "vektagraf_cache_max_bytes",
                "cache.max_bytes (0: no read cache)",
                s.cache_max_bytes,
            ),
            (
                "vektagraf_admission_max_in_flight",
                "limits.max_in_flight",
                s.max_in_flight,
            ),
            (
                "vektagraf_raft_groups",
                "Tenant shard replicas (raft groups) open on this node",
                s.groups,
            ),
            (
                "vektagraf_raft_groups_led",
                "Of those, led by this node",
                s.groups_led,
            ),
            (
                "vektagraf_raft_groups_quiesced",
                "Of those, quiesced (no ticks until a request or message)",
                s.groups_quiesced,
            ),
            (
                "vektagraf_raft_apply_lag_entries",
                "Log entries known here but not yet applied, summed over groups",
                s.apply_lag,
            ),
            (
                "vektagraf_raft_apply_lag_entries_max",
                "The largest apply lag of one group",
                s.apply_lag_max,
            ),
            (
                "vektagraf_tenants_hibernated",
                "Tenant replicas loaded here whose shard is closed by hibernation",
                s.hibernated,
            ),
            (
                "vektagraf_tenant_labels",
                "Tenants with their own tenant label now (metrics.max_tenant_labels caps it)",
                self.metrics.tenants.labelled() as u64,
            ),
            (
                "vektagraf_tenant_labels_tracked",
                "Tenants whose activity is tracked for labelling",
                self.metrics.tenants.tracked() as u64,
            ),
        ];
        for (name, help, v) in plain {
            gauge(
                &mut enc.encode_descriptor(name, help, None, MetricType::Gauge)?,
                v,
            )?;
        }
        let c = node_counters();
        for (name, help, v) in [
            (
                "vektagraf_snapshots_sent",
                "Full snapshots streamed to followers and installed there",
                &c.snapshots_sent,
            ),
            (
                "vektagraf_snapshots_send_failed",
                "Snapshot streams that failed or were cancelled",
                &c.snapshots_send_failed,
            ),
            (
                "vektagraf_snapshots_installed",
                "Snapshots installed by replicas on this node",
                &c.snapshots_installed,
            ),
            (
                "vektagraf_tenant_hibernations",
                "Tenant replicas that closed their shard after being idle",
                &c.hibernations,
            ),
            (
                "vektagraf_tenant_reactivations",
                "Hibernated tenant replicas reopened by a request",
                &c.reactivations,
            ),
        ] {
            counter(
                &mut enc.encode_descriptor(name, help, None, MetricType::Counter)?,
                v.load(Relaxed),
            )?;
        }
        let (sum, count, buckets) = c.fsync.read();
        enc.encode_descriptor(
            "vektagraf_fsync_duration_seconds",
            "Latency of the raft log's fsyncs (one covers every write queued meanwhile)",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let (sum, count, buckets) = c.reactivation.read();
        enc.encode_descriptor(
            "vektagraf_tenant_reactivation_duration_seconds",
            "How long reopening a hibernated tenant replica took",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        if let Some((up, down)) = s.peers {
            let mut fam = enc.encode_descriptor(
                "vektagraf_peers",
                "Other live cluster nodes, by whether they answer the liveness probe",
                None,
                MetricType::Gauge,
            )?;
            gauge(&mut fam.encode_family(&[("state", "up")])?, up)?;
            gauge(&mut fam.encode_family(&[("state", "down")])?, down)?;
        }
        if let Some(leader) = s.meta_leader {
            gauge(
                &mut enc.encode_descriptor(
                    "vektagraf_meta_leader",
                    "1 if this node leads the metadata group (group 0)",
                    None,
                    MetricType::Gauge,
                )?,
                u64::from(leader),
            )?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.requests(&mut enc)?;
        self.latency(&mut enc)?;
        self.storage(&mut enc)?;
        self.cache(&mut enc)?;
        self.node(&mut enc)
    }
}
