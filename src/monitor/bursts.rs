//! Bursts of rejections (pure): when does a tenant's stream of limit
//! rejections deserve one event?
//!
//! Per (tenant, limit kind), a fixed window starts at the first
//! rejection after the previous window ended; rejections in it are
//! counted. The rejection that brings the count to `threshold` makes a
//! burst, unless one was reported for that key less than `window_ms`
//! ago: a sustained stream of rejections makes at most one event per
//! window, never one per rejection. Keys whose window ended are dropped
//! when the map passes [`MAX_KEYS`], so memory stays bounded whatever
//! the number of tenants.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::proto::LimitKind;

/// Keys kept before ended windows are swept.
pub const MAX_KEYS: usize = 10_000;

/// The rejection counter.
#[derive(Debug)]
pub struct RejectionBursts {
    threshold: u64,
    window_ms: u64,
    keys: Mutex<HashMap<(String, LimitKind), Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    count: u64,
    reported_ms: Option<u64>,
}

impl RejectionBursts {
    /// `threshold` rejections within `window_ms` make a burst.
    pub fn new(threshold: u64, window_ms: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            window_ms: window_ms.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The window, ms.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Counts one rejection at `now_ms`; `Some(count)` when it makes a
    /// burst to report.
    pub fn record(&self, tenant: &str, limit: LimitKind, now_ms: u64) -> Option<u64> {
        let mut keys = self.keys.lock();
        if keys.len() >= MAX_KEYS {
            let w = self.window_ms;
            keys.retain(|_, v| now_ms.saturating_sub(v.start_ms) < w);
        }
        let e = keys.entry((tenant.to_string(), limit)).or_insert(Window {
            start_ms: now_ms,
            count: 0,
            reported_ms: None,
        });
        if now_ms.saturating_sub(e.start_ms) >= self.window_ms {
            e.start_ms = now_ms;
            e.count = 0;
        }
        e.count += 1;
        let quiet = e
            .reported_ms
            .is_none_or(|r| now_ms.saturating_sub(r) >= self.window_ms);
        if e.count == self.threshold && quiet {
            e.reported_ms = Some(now_ms);
            return Some(e.count);
        }
        None
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_th_rejection_in_a_window_makes_one_burst() {
        let b = RejectionBursts::new(3, 1_000);
        assert_eq!(b.record("a", LimitKind::Rate, 0), None);
        assert_eq!(b.record("a", LimitKind::Rate, 10), None);
        assert_eq!(b.record("a", LimitKind::Rate, 20), Some(3));
        // More in the same window: nothing more.
        for t in 21..100 {
            assert_eq!(b.record("a", LimitKind::Rate, t), None);
        }
        // Another tenant, another kind: counted apart.
        assert_eq!(b.record("b", LimitKind::Rate, 30), None);
        assert_eq!(b.record("a", LimitKind::Daily, 30), None);
    }

    #[test]
    fn a_sustained_stream_makes_at_most_one_burst_per_window() {
        let b = RejectionBursts::new(2, 1_000);
        let mut bursts = vec![];
        // One rejection every 10 ms for 5 s.
        for t in (0..5_000).step_by(10) {
            if b.record("a", LimitKind::Rate, t).is_some() {
                bursts.push(t);
            }
        }
        // Windows start at 0, 1000, ...; each reports at its second
        // rejection, 1000 ms after the previous report.
        assert_eq!(bursts, vec![10, 1_010, 2_010, 3_010, 4_010]);
    }

    #[test]
    fn rejections_spread_thinner_than_the_threshold_never_make_a_burst() {
        let b = RejectionBursts::new(3, 1_000);
        for t in (0..10_000).step_by(600) {
            assert_eq!(b.record("a", LimitKind::Rate, t), None);
        }
    }

    #[test]
    fn memory_stays_bounded_with_many_tenants() {
        let b = RejectionBursts::new(3, 1_000);
        for i in 0..(MAX_KEYS as u64 * 3) {
            b.record(&format!("t{i}"), LimitKind::Rate, i * 1_000);
        }
        assert!(b.len() <= MAX_KEYS, "{}", b.len());
    }
}
