//! A2: what each tenant did on this node, gathered per minute until the
//! engine stores it ([`Recorder::take`]). Bounded: one entry per tenant
//! and minute since the last take, at most [`MAX_PENDING`] (past that,
//! requests are dropped from the history and counted in
//! [`Recorder::dropped`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::proto::Rollup;

use super::Outcome;

/// One minute, ms.
pub const MINUTE_MS: u64 = 60_000;
/// Most (tenant, minute) entries held between two takes.
pub const MAX_PENDING: usize = 100_000;

/// The minute `ms` falls in (its start).
pub fn minute_of(ms: u64) -> u64 {
    ms - ms % MINUTE_MS
}

/// Per-tenant rollups of the current minutes, until taken.
#[derive(Debug, Default)]
pub struct Recorder {
    pending: Mutex<HashMap<(String, u64), Rollup>>,
    dropped: AtomicU64,
}

impl Recorder {
    fn with(&self, tenant: &str, now_ms: u64, f: impl FnOnce(&mut Rollup)) {
        let minute = minute_of(now_ms);
        let mut p = self.pending.lock();
        if let Some(r) = p.get_mut(&(tenant.to_string(), minute)) {
            f(r);
            return;
        }
        if p.len() >= MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut r = Rollup::at(minute);
        f(&mut r);
        p.insert((tenant.to_string(), minute), r);
    }

    /// Counts one finished request of `tenant`: its outcome, latency and
    /// the tenant's requests in flight on this node when it finished.
    pub fn request(
        &self,
        tenant: &str,
        now_ms: u64,
        outcome: Outcome,
        took: Duration,
        in_flight: u64,
    ) {
        let name = outcome.as_str();
        self.with(tenant, now_ms, |r| {
            r.requests += 1;
            if name.starts_with("limit_") {
                r.rejections += 1;
                if name == "limit_rate" || name == "limit_operation_rate" {
                    r.rate_rejections += 1;
                }
            } else if outcome != Outcome::OK {
                r.errors += 1;
            }
            r.latency(took);
            r.peak_concurrency = r.peak_concurrency.max(in_flight.max(1));
        });
    }

    /// Counts the bytes of one request and its response.
    pub fn bytes(&self, tenant: &str, now_ms: u64, bytes_in: u64, bytes_out: u64) {
        self.with(tenant, now_ms, |r| {
            r.bytes_in += bytes_in;
            r.bytes_out += bytes_out;
        });
    }

    /// Adds read cache counts and a storage sample (`bytes` held for
    /// `for_ms`; 0 when this node does not lead the tenant's shard).
    pub fn sample(
        &self,
        tenant: &str,
        now_ms: u64,
        cache_hits: u64,
        cache_misses: u64,
        bytes: Option<(u64, u64)>,
    ) {
        self.with(tenant, now_ms, |r| {
            r.cache_hits += cache_hits;
            r.cache_misses += cache_misses;
            if let Some((bytes, for_ms)) = bytes {
                r.storage_byte_ms = r
                    .storage_byte_ms
                    .saturating_add(bytes.saturating_mul(for_ms));
                r.storage_bytes_max = r.storage_bytes_max.max(bytes);
            }
        });
    }

    /// Everything gathered since the last take: (tenant, rollup).
    pub fn take(&self) -> Vec<(String, Rollup)> {
        let p = std::mem::take(&mut *self.pending.lock());
        p.into_iter().map(|((t, _), r)| (t, r)).collect()
    }

    /// Requests left out of the history because too much was pending.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_their_tenant_and_minute_with_their_outcome() {
        let r = Recorder::default();
        let t0 = 10 * MINUTE_MS + 5;
        r.request("a", t0, Outcome::OK, Duration::from_millis(3), 2);
        let rate = Outcome::of_error(&crate::proto::Error::LimitExceeded(
            crate::proto::LimitExceeded {
                kind: crate::proto::LimitKind::Rate,
                limit: 1,
                current: 1,
                requested: 1,
                retry_after_ms: None,
            },
        ));
        r.request("a", t0 + 1, rate, Duration::from_micros(100), 1);
        r.request(
            "a",
            t0,
            Outcome::of_error(&crate::proto::Error::not_found("object", "x")),
            Duration::from_millis(1),
            1,
        );
        r.request(
            "a",
            t0 + MINUTE_MS,
            Outcome::OK,
            Duration::from_millis(1),
            1,
        );
        r.bytes("b", t0, 10, 20);
        let mut got = r.take();
        got.sort_by_key(|(t, x)| (t.clone(), x.start_ms));
        assert_eq!(got.len(), 3);
        let (t, a) = &got[0];
        assert_eq!((t.as_str(), a.start_ms), ("a", 10 * MINUTE_MS));
        assert_eq!(
            (a.requests, a.rejections, a.rate_rejections, a.errors),
            (3, 1, 1, 1)
        );
        assert_eq!(a.peak_concurrency, 2);
        assert_eq!(a.latency_slots.iter().sum::<u64>(), 3);
        assert_eq!(
            a.latency_quantile_ms(1.0),
            Some(5.0),
            "3 ms falls under the 5 ms bound"
        );
        assert_eq!(got[1].1.start_ms, 11 * MINUTE_MS);
        assert_eq!((got[2].1.bytes_in, got[2].1.bytes_out), (10, 20));
        assert!(r.take().is_empty());
    }
}
