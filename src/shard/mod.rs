//! Tenant shards: their data (`ShardData`), the actor that serves them,
//! the supervisor that restarts them, and each tenant's read cache
//! (`ReadCache`).

mod actor;
mod cache;
mod data;
mod supervisor;

pub use actor::{
    is_leader, propose, read, write, Consistency, ReadOp, ReadResult, ReplicaNet, ShardActor,
    ShardArgs, ShardMsg, ShardSlot,
};
pub use cache::{key_of, result_bytes, CacheBudget, ReadCache};
pub use data::{
    copy_dir, write_atomic, IndexOrigin, IndexReport, ReadStamp, ShardData, SnapshotPin,
    SnapshotStats, MAX_FILTER_SCAN,
};
pub use supervisor::{ShardSupervisor, SupervisorMsg, MAX_RESTARTS, RESTART_WINDOW};
