//! openraft's own storage conformance suite, on our RocksDB log store and
#![allow(clippy::unwrap_used)]
//! state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use vektagraf::raft::{LogStore, RaftLogDb, ShardRaftConfig, ShardStateMachine};
use vektagraf::shard::ShardData;
use vektagraf::storage::StorageEnv;

struct Builder;

impl StoreBuilder<ShardRaftConfig, LogStore, ShardStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ShardStateMachine), StorageError<ShardRaftConfig>>
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = RaftLogDb::open(&dir.path().join("raft")).expect("log db");
        let data =
            ShardData::open(&StorageEnv::default(), &dir.path().join("shard")).expect("shard");
        Ok((dir, logs.store(7), ShardStateMachine::new(data)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb() -> Result<(), StorageError<ShardRaftConfig>> {
    Suite::test_all(Builder).await
}
