//! Tenant shards: their data (`ShardData`), the actor that serves them and
//! the supervisor that restarts them.

mod actor;
mod data;
mod supervisor;

pub use actor::{
    is_leader, propose, Consistency, ReadOp, ReadResult, ReplicaNet, ShardActor, ShardArgs,
    ShardMsg, ShardSlot,
};
pub use data::{
    copy_dir, write_atomic, IndexOrigin, IndexReport, ShardData, SnapshotPin, SnapshotStats,
    MAX_FILTER_SCAN,
};
pub use supervisor::{ShardSupervisor, SupervisorMsg, MAX_RESTARTS, RESTART_WINDOW};
