//! Types shared by the engine, the wire and the client: operations, the
//! data model, filters and errors. Nothing here imports server modules.

mod analytics;
mod audit;
mod error;
mod event;
mod filter;
mod job;
pub mod migrate;
mod node;
mod ops;
pub mod wire;

pub use analytics::{AnalyticsReport, Recommendation, Rollup, ROLLUP_LATENCY_BOUNDS, ROLLUP_SLOTS};
pub use audit::{AuditEntry, ChangedBy};
pub use error::{Error, ErrorCode, LimitExceeded, LimitKind, Result};
pub use event::{Event, EventFilter, EventItem, EventKind, EventLevel};
pub use filter::{CmpOp, Filter, Scalar, MAX_FILTER_DEPTH, MAX_FILTER_PREDICATES, MAX_IN_VALUES};
pub use job::{JobState, MoveJob, Plan, PlanStep};
pub use node::NodeRecord;
pub use ops::*;
