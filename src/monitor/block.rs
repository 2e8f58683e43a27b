//! One exported `tenant` label's counters: requests by operation and
//! outcome, and a latency histogram by operation. All atomics: recording
//! is a few relaxed increments, never a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::label::{Operation, OUTCOMES};

/// Upper bounds of the latency buckets, seconds (`+Inf` follows).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const OPS: usize = Operation::ALL.len();
const OUTS: usize = OUTCOMES.len();
/// Buckets per operation: the bounds, then `+Inf`.
const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// Counters of one label.
#[derive(Debug)]
pub(crate) struct Block {
    /// `[op][outcome]`.
    requests: Box<[AtomicU64]>,
    /// `[op][bucket]`, not cumulative.
    buckets: Box<[AtomicU64]>,
    /// `[op]`: latency sum, microseconds.
    sum_us: Box<[AtomicU64]>,
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// A histogram read out of a [`Block`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Latency {
    /// Sum, seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// (upper bound, count in that bucket alone); the last bound is
    /// `f64::MAX` (`+Inf`).
    pub buckets: Vec<(f64, u64)>,
}

impl Block {
    pub(crate) fn new() -> Block {
        Block {
            requests: zeros(OPS * OUTS),
            buckets: zeros(OPS * SLOTS),
            sum_us: zeros(OPS),
        }
    }

    /// Counts one finished request.
    pub(crate) fn record(&self, op: Operation, outcome: usize, took: Duration) {
        let o = op.index();
        self.requests[o * OUTS + outcome].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let b = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[o * SLOTS + b].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us[o].fetch_add(us, Relaxed);
    }

    /// Requests of `op` that ended with outcome index `outcome`.
    pub(crate) fn requests(&self, op: Operation, outcome: usize) -> u64 {
        self.requests[op.index() * OUTS + outcome].load(Relaxed)
    }

    /// The latency histogram of `op`.
    pub(crate) fn latency(&self, op: Operation) -> Latency {
        let o = op.index();
        let buckets: Vec<(f64, u64)> = (0..SLOTS)
            .map(|b| {
                let le = LATENCY_BUCKETS.get(b).copied().unwrap_or(f64::MAX);
                (le, self.buckets[o * SLOTS + b].load(Relaxed))
            })
            .collect();
        Latency {
            sum: self.sum_us[o].load(Relaxed) as f64 / 1e6,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }

    /// Sets every counter to zero (a block handed to a new tenant).
    pub(crate) fn reset(&self) {
        for c in self
            .requests
            .iter()
            .chain(self.buckets.iter())
            .chain(self.sum_us.iter())
        {
            c.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lands_in_the_first_bucket_that_holds_it() {
        let b = Block::new();
        b.record(Operation::Get, 0, Duration::from_micros(800));
        b.record(Operation::Get, 0, Duration::from_secs(60));
        b.record(Operation::Get, 3, Duration::from_millis(1));
        let l = b.latency(Operation::Get);
        assert_eq!(l.count, 3);
        assert_eq!(l.buckets[1], (0.001, 2)); // 0.8 ms and exactly 1 ms
        assert_eq!(l.buckets[LATENCY_BUCKETS.len()], (f64::MAX, 1));
        assert!((l.sum - 60.0018).abs() < 1e-9, "{}", l.sum);
        assert_eq!(b.requests(Operation::Get, 0), 2);
        assert_eq!(b.requests(Operation::Get, 3), 1);
        assert_eq!(b.requests(Operation::Put, 0), 0);
        b.reset();
        assert_eq!(b.latency(Operation::Get).count, 0);
    }
}
