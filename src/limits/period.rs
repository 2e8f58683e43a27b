//! Requests per operation in UTC days and months (A1 usage a bill can be
//! based on), kept bounded: the current period and the one before it.
//!
//! A period is a UTC day number or a month number (see [`super::calendar`]).
//! [`OpCounts`] holds the current period's count per operation (the period
//! number and its total live beside it, in [`super::QuotaCounters`]) and
//! the last earlier period that had requests ([`PastPeriod`]). Two copies
//! of the same counters (a leader's and what is persisted) merge with
//! [`merge`]: per period the larger count of each field wins, the newest
//! period is the current one and the newest earlier one is kept as
//! `prev`. Counts only ever grow within a period, so the merge never
//! loses a request one of the copies counted, and applying it twice or
//! out of order changes nothing.

use serde::{Deserialize, Serialize};

/// Number of operation types ([`crate::proto::OperationType::ALL`]).
pub const OPS: usize = 5;

/// A closed period: its number, total requests, and requests per
/// operation (in [`crate::proto::OperationType::ALL`] order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastPeriod {
    /// UTC day or month number.
    pub n: u32,
    /// Requests in it.
    pub total: u64,
    /// Requests per operation.
    pub ops: [u64; OPS],
}

/// Requests per operation in the current period, and the previous period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Requests per operation in the current period.
    pub ops: [u64; OPS],
    /// The last earlier period that had requests.
    pub prev: Option<PastPeriod>,
}

impl OpCounts {
    /// The current period `n` (with `total` requests) ends: it becomes
    /// `prev` unless it had no request (then the older `prev` stays), and
    /// the per-operation counts start again at zero.
    pub fn close(&mut self, n: u32, total: u64) {
        if total > 0 || self.ops.iter().any(|&c| c > 0) {
            self.prev = Some(PastPeriod {
                n,
                total,
                ops: self.ops,
            });
        }
        self.ops = [0; OPS];
    }
}

/// Merges two copies of one kind of period (days or months): `a` and `b`
/// are (current period number, its total, per-operation counts). Returns
/// the merged (current period, total, counts): the newer current period,
/// with per field the larger count of the copies that are on it; `prev`
/// is the newest earlier period either copy knows, merged the same way.
pub fn merge(a: (u32, u64, &OpCounts), b: (u32, u64, &OpCounts)) -> (u32, u64, OpCounts) {
    let mut all: Vec<PastPeriod> = Vec::with_capacity(4);
    for (n, total, c) in [a, b] {
        all.push(PastPeriod {
            n,
            total,
            ops: c.ops,
        });
        all.extend(c.prev);
    }
    let cur_n = a.0.max(b.0);
    let fold = |n: u32| {
        let mut out = PastPeriod {
            n,
            ..PastPeriod::default()
        };
        for p in all.iter().filter(|p| p.n == n) {
            out.total = out.total.max(p.total);
            for (o, c) in out.ops.iter_mut().zip(p.ops) {
                *o = (*o).max(c);
            }
        }
        out
    };
    let cur = fold(cur_n);
    let prev = all
        .iter()
        .map(|p| p.n)
        .filter(|&n| n < cur_n)
        .max()
        .map(fold)
        .filter(|p| p.total > 0 || p.ops.iter().any(|&c| c > 0));
    (cur_n, cur.total, OpCounts { ops: cur.ops, prev })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ops: [u64; OPS], prev: Option<(u32, u64, [u64; OPS])>) -> OpCounts {
        OpCounts {
            ops,
            prev: prev.map(|(n, total, ops)| PastPeriod { n, total, ops }),
        }
    }

    #[test]
    fn same_period_takes_the_larger_count_of_each_operation() {
        let a = counts([3, 0, 1, 0, 0], Some((9, 4, [4, 0, 0, 0, 0])));
        let b = counts([1, 2, 1, 0, 0], None);
        let (n, total, m) = merge((10, 4, &a), (10, 3, &b));
        assert_eq!((n, total), (10, 4));
        assert_eq!(m, counts([3, 2, 1, 0, 0], Some((9, 4, [4, 0, 0, 0, 0]))));
        // Either order, and twice, gives the same.
        assert_eq!(merge((10, 3, &b), (10, 4, &a)), (n, total, m));
        assert_eq!(merge((n, total, &m), (10, 4, &a)), (n, total, m));
    }

    #[test]
    fn a_newer_period_replaces_and_the_older_one_becomes_prev() {
        let old = counts([5, 1, 0, 0, 0], Some((8, 2, [2, 0, 0, 0, 0])));
        let new = counts([0, 0, 0, 1, 0], None);
        let (n, total, m) = merge((9, 6, &old), (10, 1, &new));
        assert_eq!((n, total), (10, 1));
        assert_eq!(m, counts([0, 0, 0, 1, 0], Some((9, 6, [5, 1, 0, 0, 0]))));
        // The newer copy already knew day 9 with fewer: the larger wins.
        let newer = counts([0, 0, 0, 2, 0], Some((9, 3, [3, 0, 0, 0, 0])));
        let (_, _, m2) = merge((10, 2, &newer), (9, 6, &old));
        assert_eq!(m2, counts([0, 0, 0, 2, 0], Some((9, 6, [5, 1, 0, 0, 0]))));
    }

    #[test]
    fn close_keeps_one_previous_period_with_requests() {
        let mut c = counts([2, 0, 0, 0, 1], Some((3, 1, [1, 0, 0, 0, 0])));
        c.close(5, 3);
        assert_eq!(c, counts([0; OPS], Some((5, 3, [2, 0, 0, 0, 1]))));
        // An empty period does not push out the last one with requests.
        c.close(6, 0);
        assert_eq!(c, counts([0; OPS], Some((5, 3, [2, 0, 0, 0, 1]))));
    }
}
