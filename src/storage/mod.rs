//! Storage: the shard state machine's RocksDB instance (`ShardStore`), its
//! key layout, and the deterministic apply of log commands.

mod apply;
mod command;
pub mod props;
mod reserve;
mod store;

pub use apply::{
    apply, check_collection, check_vector, edge_size, object_size, Applied, ShardMeta,
    VectorChange, MAX_OBJECT_ID_LEN,
};
pub use command::{Command, CommandResult, OnceRecord, RegOp};
pub use reserve::DiskReserve;
pub use store::{
    decode_value, edge_in_key, edge_out_key, encode_value, member_key, meta_key, Batch, EdgeRecord,
    ObjectRecord, ShardStore, StorageEnv, CF_EDGES, CF_MEMBERS, CF_META, CF_OBJECTS, CF_PROPS,
    CF_VIDS, FORMAT_VERSION,
};
