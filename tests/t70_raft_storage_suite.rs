//! openraft's own storage conformance suite, on our RocksDB log store and
#![allow(clippy::unwrap_used)]
//! state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use vektagraf::raft::{LogStore, RaftLogDb, ShardRaftConfig, ShardStateMachine, SyncHere};
use vektagraf::shard::ShardData;
use vektagraf::storage::StorageEnv;

/// Builds stores whose appends fsync as `.0` says.
struct Builder(SyncHere);

impl StoreBuilder<ShardRaftConfig, LogStore, ShardStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError<ShardRaftConfig>>
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = RaftLogDb::open(&dir.path().join("raft")).expect("log db");
        let data =
            ShardData::open(&StorageEnv::default(), &dir.path().join("shard")).expect("shard");
        Ok((
            dir,
            logs.store_with(7, self.0),
            ShardStateMachine::new(data),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<ShardRaftConfig>> {
    Suite::test_all(Builder(SyncHere::Never)).await
}

/// The same suite with appends that fsync on their own task: as a
/// one-voter group's, and as a replicated group's (which do so only while
/// the replica's vote is another's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_when_appends_fsync_on_their_own_task(
) -> Result<(), StorageError<ShardRaftConfig>> {
    Suite::test_all(Builder(SyncHere::WhenAlone)).await?;
    Suite::test_all(Builder(SyncHere::UnlessLeading(1))).await
}
