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

use crate::proto::{Query, Traverse, VectorSearch};

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

    /// A traversal.
    pub fn traverse(t: &Traverse) -> Cost {
        Cost {
            complexity: t.max_nodes as u64 + 10 * t.max_depth as u64 + 5 * t.labels.len() as u64,
            result_size: t.max_nodes as u64,
        }
    }
}
