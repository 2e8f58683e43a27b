//! The cost model behind `complexity_limit` and `max_result_size` (Q3).
//!
//! Both are estimated from the request alone, before anything runs:
//!
//! | operation | complexity | result size |
//! |---|---|---|
//! | read | 1 | 1 |
//! | write (n ops) | n | n |
//! | query | 1 + 10·predicates + limit/10 | limit |
//! | vector_search | k + dimension/16 + 10·predicates | k |
//! | graph_traverse | max_nodes + 10·max_depth + 5·labels | max_nodes |
//!
//! Execution never returns more rows than the request asked for, so the
//! result-size check before execution is also a bound on the response.
//!
//! # Work while the read runs
//!
//! The estimate cannot see how many rows a filter skips or how many edges
//! a node has, so a read also meters what it touches ([`WorkMeter`]) and
//! stops with `LimitExceeded { kind: Complexity }` as soon as
//!
//! ```text
//! base + charged + ⌊touched / ROWS_PER_UNIT⌋ > complexity_limit
//! ```
//!
//! where `touched` counts every row (a collection member read by a query,
//! scan or filtered search) and every edge (read by a traversal), at
//! [`ROWS_PER_UNIT`] = 10 per unit, and `base` is the estimate without
//! its row term:
//!
//! | operation | base | charged as it runs |
//! |---|---|---|
//! | query, scan | 1 + 10·predicates | nothing |
//! | vector_search, filtered | k + dimension/16 + 10·predicates | nothing |
//! | vector_search, unfiltered | (reads no rows: the index answers) | nothing |
//! | graph_traverse | 10·max_depth + 5·labels | 1 per node returned |
//!
//! The estimate's row term is its guess at `touched`: a query's `limit/10`
//! is exact when every row it reads matches (no filter), so a read that
//! wastes nothing never costs more than its estimate and is never
//! stopped once admitted. A filter that skips rows, a filtered search
//! (which reads the whole collection) and edges that lead nowhere new
//! cost their reads on top.

use crate::proto::{Error, LimitExceeded, LimitKind, Query, Traverse, VectorSearch};

/// The estimated cost of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Estimated work.
    pub complexity: u64,
    /// Rows it may return.
    pub result_size: u64,
}

/// Cost estimates per operation.
pub mod estimate {
    use super::*;

    /// Get by id.
    pub fn read() -> Cost {
        Cost {
            complexity: 1,
            result_size: 1,
        }
    }

    /// `n` writes.
    pub fn write(n: usize) -> Cost {
        Cost {
            complexity: n as u64,
            result_size: n as u64,
        }
    }

    /// A property query.
    pub fn query(q: &Query) -> Cost {
        let preds = q.filter.as_ref().map_or(0, |f| f.predicates()) as u64;
        Cost {
            complexity: 1 + 10 * preds + q.limit as u64 / 10,
            result_size: q.limit as u64,
        }
    }

    /// A vector search.
    pub fn vector_search(s: &VectorSearch) -> Cost {
        let preds = s.filter.as_ref().map_or(0, |f| f.predicates()) as u64;
        Cost {
            complexity: s.k as u64 + s.vector.len() as u64 / 16 + 10 * preds,
            result_size: s.k as u64,
        }
    }

    /// Several vector searches in one request: the sum of theirs.
    pub fn vector_search_batch(searches: &[VectorSearch]) -> Cost {
        searches.iter().map(vector_search).fold(
            Cost {
                complexity: 0,
                result_size: 0,
            },
            |a, c| Cost {
                complexity: a.complexity.saturating_add(c.complexity),
                result_size: a.result_size.saturating_add(c.result_size),
            },
        )
    }

    /// A traversal.
    pub fn traverse(t: &Traverse) -> Cost {
        Cost {
            complexity: t.max_nodes as u64 + 10 * t.max_depth as u64 + 5 * t.labels.len() as u64,
            result_size: t.max_nodes as u64,
        }
    }
}

/// Rows or edges read per unit of complexity.
pub const ROWS_PER_UNIT: u64 = 10;

/// The complexity a read spends while it runs, against the tenant's
/// `complexity_limit` (the rule is in the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMeter {
    limit: u64,
    charged: u64,
    touched: u64,
}

impl WorkMeter {
    /// A meter with `base` units already spent, against `limit`.
    pub fn new(limit: u64, base: u64) -> Self {
        Self {
            limit,
            charged: base,
            touched: 0,
        }
    }

    /// A meter that never stops a read (internal reads, benchmarks).
    pub fn unbounded() -> Self {
        Self::new(u64::MAX, 0)
    }

    /// For a query: base `1 + 10·predicates`.
    pub fn for_query(limit: u64, q: &Query) -> Self {
        let preds = q.filter.as_ref().map_or(0, |f| f.predicates()) as u64;
        Self::new(limit, 1u64.saturating_add(preds.saturating_mul(10)))
    }

    /// For a scan (a query without a filter): base 1.
    pub fn for_scan(limit: u64) -> Self {
        Self::new(limit, 1)
    }

    /// For a vector search: its whole estimate (the rows a filtered
    /// search reads come on top).
    pub fn for_search(limit: u64, s: &VectorSearch) -> Self {
        Self::new(limit, estimate::vector_search(s).complexity)
    }

    /// For a batch of vector searches: the sum of their estimates (the
    /// rows their filters read come on top), against one limit.
    pub fn for_search_batch(limit: u64, searches: &[VectorSearch]) -> Self {
        Self::new(limit, estimate::vector_search_batch(searches).complexity)
    }

    /// For a traversal: base `10·max_depth + 5·labels`; each node returned
    /// is charged as it is found.
    pub fn for_traverse(limit: u64, t: &Traverse) -> Self {
        let base = (t.max_depth as u64)
            .saturating_mul(10)
            .saturating_add((t.labels.len() as u64).saturating_mul(5));
        Self::new(limit, base)
    }

    /// Units spent so far.
    pub fn spent(&self) -> u64 {
        self.charged.saturating_add(self.touched / ROWS_PER_UNIT)
    }

    /// Rows and edges read so far.
    pub fn touched(&self) -> u64 {
        self.touched
    }

    /// Counts `n` rows or edges read.
    pub fn touch(&mut self, n: u64) -> Result<(), Error> {
        let before = self.spent();
        self.touched = self.touched.saturating_add(n);
        self.check(before)
    }

    /// Charges `units` directly.
    pub fn charge(&mut self, units: u64) -> Result<(), Error> {
        let before = self.spent();
        self.charged = self.charged.saturating_add(units);
        self.check(before)
    }

    fn check(&self, before: u64) -> Result<(), Error> {
        let after = self.spent();
        if after <= self.limit {
            return Ok(());
        }
        Err(Error::LimitExceeded(LimitExceeded {
            kind: LimitKind::Complexity,
            limit: self.limit,
            current: before,
            requested: after - before,
            retry_after_ms: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn refusal(r: Result<(), Error>) -> (u64, u64, u64) {
        match r {
            Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Complexity => {
                (l.limit, l.current, l.requested)
            }
            other => panic!("expected a complexity refusal, got {other:?}"),
        }
    }

    #[test]
    fn ten_rows_cost_one_unit_and_the_first_row_past_the_limit_stops_the_read() {
        // Base 3 of 5: 29 rows fit (⌊29/10⌋ = 2), the 30th makes 6.
        let mut m = WorkMeter::new(5, 3);
        for _ in 0..29 {
            m.touch(1).unwrap();
        }
        assert_eq!(m.spent(), 5);
        assert_eq!(refusal(m.touch(1)), (5, 5, 1));
        assert_eq!(m.touched(), 30);
    }

    #[test]
    fn an_unfiltered_query_never_costs_more_than_its_estimate() {
        for limit in [0u32, 1, 9, 10, 11, 99, 490, 100_000] {
            let q = Query {
                collection: "c".into(),
                filter: None,
                limit,
            };
            let est = estimate::query(&q).complexity;
            let mut m = WorkMeter::for_query(est, &q);
            m.touch(limit as u64).unwrap();
            assert!(m.spent() <= est, "limit {limit}");
        }
    }

    #[test]
    fn charges_saturate_instead_of_wrapping() {
        let mut m = WorkMeter::new(u64::MAX, u64::MAX - 1);
        m.touch(u64::MAX).unwrap();
        m.touch(u64::MAX).unwrap();
        m.charge(u64::MAX).unwrap();
        assert_eq!(m.spent(), u64::MAX);
        let mut m = WorkMeter::new(10, 0);
        assert_eq!(refusal(m.charge(u64::MAX)), (10, 0, u64::MAX));
    }

    #[test]
    fn a_traversal_pays_for_depth_labels_and_each_node() {
        let t = Traverse {
            start: "a".into(),
            direction: crate::proto::Direction::Out,
            labels: vec!["x".into(), "y".into()],
            max_depth: 3,
            max_nodes: 5,
        };
        let m = WorkMeter::for_traverse(100, &t);
        assert_eq!(m.spent(), 40);
        assert!(m.spent() + t.max_nodes as u64 <= estimate::traverse(&t).complexity);
    }
}
