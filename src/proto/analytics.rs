//! A2: the analytics report of a tenant and the rollups it is made of.

use serde::{Deserialize, Serialize};

/// Latency histogram bounds of a rollup, seconds (the `/metrics`
/// buckets); one more slot counts the slower ones.
pub const ROLLUP_LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Slots of a rollup's latency histogram.
pub const ROLLUP_SLOTS: usize = ROLLUP_LATENCY_BOUNDS.len() + 1;

/// What one tenant did in one period (a minute or an hour) on one node,
/// or summed over the nodes. Every field adds up across nodes and
/// periods, except `peak_concurrency` and `storage_bytes_max` (the
/// larger is kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    /// Start of the period, ms since the Unix epoch.
    pub start_ms: u64,
    /// Requests finished (every outcome).
    pub requests: u64,
    /// Requests that failed with an error other than a limit.
    pub errors: u64,
    /// Requests refused by a limit (any kind).
    pub rejections: u64,
    /// Of them, refused by a rate limit (overall or per operation).
    pub rate_rejections: u64,
    /// Sum of latencies, µs.
    pub latency_us: u64,
    /// Latencies per [`ROLLUP_LATENCY_BOUNDS`] slot (the last: slower).
    pub latency_slots: [u64; ROLLUP_SLOTS],
    /// Most of the tenant's requests in flight at once on one node.
    pub peak_concurrency: u64,
    /// Read cache hits.
    pub cache_hits: u64,
    /// Read cache misses.
    pub cache_misses: u64,
    /// Request bytes received.
    pub bytes_in: u64,
    /// Response bytes sent.
    pub bytes_out: u64,
    /// Stored bytes integrated over time (byte·ms), sampled on the
    /// shard's leader.
    pub storage_byte_ms: u64,
    /// Most bytes stored seen in the period.
    pub storage_bytes_max: u64,
}

impl Rollup {
    /// An empty rollup of the period starting at `start_ms`.
    pub fn at(start_ms: u64) -> Rollup {
        Rollup {
            start_ms,
            ..Default::default()
        }
    }

    /// Adds `o` (another node's, or a later part of the same period).
    pub fn add(&mut self, o: &Rollup) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.rejections += o.rejections;
        self.rate_rejections += o.rate_rejections;
        self.latency_us += o.latency_us;
        for (a, b) in self.latency_slots.iter_mut().zip(o.latency_slots) {
            *a += b;
        }
        self.peak_concurrency = self.peak_concurrency.max(o.peak_concurrency);
        self.cache_hits += o.cache_hits;
        self.cache_misses += o.cache_misses;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.storage_byte_ms += o.storage_byte_ms;
        self.storage_bytes_max = self.storage_bytes_max.max(o.storage_bytes_max);
    }

    /// Counts one latency.
    pub fn latency(&mut self, took: std::time::Duration) {
        self.latency_us += took.as_micros() as u64;
        let s = took.as_secs_f64();
        let slot = ROLLUP_LATENCY_BOUNDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(ROLLUP_LATENCY_BOUNDS.len());
        self.latency_slots[slot] += 1;
    }

    /// The latency at quantile `q` (0..=1), ms: the upper bound of the
    /// histogram slot it falls in (the slowest slot reports its lower
    /// bound). `None` without requests.
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency_slots.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.latency_slots.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let bound = ROLLUP_LATENCY_BOUNDS
                    .get(i)
                    .or(ROLLUP_LATENCY_BOUNDS.last())
                    .copied()
                    .unwrap_or_default();
                return Some(bound * 1000.0);
            }
        }
        None
    }
}

/// What to do about a tenant, and how soon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// `high`, `medium` or `low`.
    pub priority: String,
    /// What it is about: `storage`, `rate_limit`, `errors`, `tier`.
    pub kind: String,
    /// What was seen and what to do.
    pub message: String,
}

/// A2: a tenant's activity over a time range, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsReport {
    /// The tenant.
    pub tenant_id: String,
    /// Start of the range, ms.
    pub from_ms: u64,
    /// End of the range, ms.
    pub to_ms: u64,
    /// The series' period: 60,000 (minutes, within the last day) or
    /// 3,600,000 (hours).
    pub resolution_ms: u64,
    /// Requests finished.
    pub total_requests: u64,
    /// Failed with an error other than a limit.
    pub errors: u64,
    /// `errors / total_requests` (0 without requests).
    pub error_rate: f64,
    /// Refused by a limit.
    pub rejections: u64,
    /// Of them, by a rate limit.
    pub rate_rejections: u64,
    /// Mean latency, ms.
    pub avg_latency_ms: f64,
    /// 95th percentile latency, ms (histogram slot bound).
    pub p95_latency_ms: f64,
    /// 99th percentile latency, ms (histogram slot bound).
    pub p99_latency_ms: f64,
    /// Requests per second over the range the tenant existed in.
    pub throughput_rps: f64,
    /// Most requests in flight at once on one node.
    pub peak_concurrency: u64,
    /// Read cache hits / (hits + misses); `None` without cached reads.
    pub cache_hit_rate: Option<f64>,
    /// Stored gigabytes (10^9 bytes) integrated over hours.
    pub storage_gb_hours: f64,
    /// Request units: one per request plus one per KiB moved either way.
    pub request_units: u64,
    /// Bytes received and sent.
    pub bandwidth_bytes: u64,
    /// Estimated cost of a month at this range's rate, from the tier's
    /// price table.
    pub estimated_monthly_cost: f64,
    /// Currency of the price table.
    pub currency: String,
    /// What to do, most urgent first.
    pub recommendations: Vec<Recommendation>,
    /// The series, oldest first (periods without activity left out).
    pub series: Vec<Rollup>,
    /// Nodes whose history could not be read (their part is missing).
    pub nodes_missing: Vec<u64>,
}
