//! Tenant shards: their data (`ShardData`), the actor that serves them,
//! the supervisor that restarts them, and each tenant's read cache
//! (`ReadCache`).

mod actor;
mod backlog;
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

/// Runs blocking work (disk, FAISS) from an async task without stalling
/// the runtime. On the multi-threaded runtime (the server's) it runs right
/// here, with the worker's other tasks handed to another thread
/// (`block_in_place`): no hop to a blocking-pool thread and back, which
/// costs two thread wake-ups on the request's own path. A current-thread
/// runtime (some tests) cannot do that, so there it goes to the pool.
pub async fn run_blocking<T, F>(f: F) -> Result<T, tokio::task::JoinError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}
