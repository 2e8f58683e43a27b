//! The openraft type configuration shared by every shard group.

use crate::storage::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Type config of a shard's raft group.
    pub ShardRaftConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// A raft log id.
pub type LogId = openraft::type_config::alias::LogIdOf<ShardRaftConfig>;
/// A vote.
pub type Vote = openraft::type_config::alias::VoteOf<ShardRaftConfig>;
/// A log entry.
pub type Entry = openraft::type_config::alias::EntryOf<ShardRaftConfig>;
/// Applied membership.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<ShardRaftConfig>;
/// Snapshot meta.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<ShardRaftConfig>;
/// A raft group handle.
pub type ShardRaft = openraft::Raft<ShardRaftConfig, super::ShardStateMachine>;

/// Wraps any error into the `io::Error` openraft's storage traits return.
pub fn io_other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
