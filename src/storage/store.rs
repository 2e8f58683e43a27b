//! `ShardStore`: one shard's state machine data in its own RocksDB instance.
//!
//! Column families and keys:
//!
//! | cf | key | value |
//! |---|---|---|
//! | `objects` | object id | [`ObjectRecord`] |
//! | `members` | collection `\0` id | empty (collection scans) |
//! | `edges` | `o` from `\0` label `\0` to | [`EdgeRecord`] |
//! | `edges` | `i` to `\0` label `\0` from | empty (reverse index) |
//! | `vids` | vid (u64 BE) | object id (FAISS label → object) |
//! | `meta` | see [`meta_key`] | versioned values |
//!
//! Every value starts with a format version byte. The shard's data, its
//! applied log id and its usage counters change in one write batch, so they
//! always agree. The WAL is not synced: after a crash the raft log
//! re-applies everything after the last applied entry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch,
    WriteBufferManager, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::proto::{Error, Object, Properties};

/// Format version of every stored value.
pub const FORMAT_VERSION: u8 = 1;

/// Column family names.
pub const CF_OBJECTS: &str = "objects";
/// Collection membership index.
pub const CF_MEMBERS: &str = "members";
/// Edges, both directions.
pub const CF_EDGES: &str = "edges";
/// FAISS label to object id.
pub const CF_VIDS: &str = "vids";
/// Applied state, usage, collections, counters.
pub const CF_META: &str = "meta";

/// Property indexes (see `storage::props`).
pub const CF_PROPS: &str = "props";
const CFS: [&str; 6] = [CF_OBJECTS, CF_MEMBERS, CF_EDGES, CF_VIDS, CF_META, CF_PROPS];

/// Keys of the `meta` column family.
pub mod meta_key {
    /// Last applied raft log id.
    pub const APPLIED: &[u8] = b"applied";
    /// Last applied membership.
    pub const MEMBERSHIP: &[u8] = b"membership";
    /// Exact storage usage.
    pub const USAGE: &[u8] = b"usage";
    /// Storage limits in force (set through the log).
    pub const LIMITS: &[u8] = b"limits";
    /// Next vector id.
    pub const NEXT_VID: &[u8] = b"next_vid";
    /// Daily and monthly request counters.
    pub const QUOTA: &[u8] = b"quota";
    /// Prefix of collection specs: `coll/<name>`.
    pub const COLLECTION_PREFIX: &[u8] = b"coll/";
    /// Prefix of property index declarations:
    /// `pidx/<collection>\0<property path>` (see `storage::props`).
    pub const PROP_INDEX_PREFIX: &[u8] = b"pidx/";
    /// Prefix of exactly-once results: `once/<client u64 BE><seq u64 BE>`.
    pub const ONCE_PREFIX: &[u8] = b"once/";
    /// Prefix of each client's forgotten-below mark:
    /// `oncelow/<client u64 BE>`.
    pub const ONCE_LOW_PREFIX: &[u8] = b"oncelow/";

    /// The key of one request's exactly-once results.
    pub fn once(client: u64, seq: u64) -> Vec<u8> {
        [ONCE_PREFIX, &client.to_be_bytes(), &seq.to_be_bytes()].concat()
    }

    /// The key of a client's forgotten-below mark.
    pub fn once_low(client: u64) -> Vec<u8> {
        [ONCE_LOW_PREFIX, &client.to_be_bytes()].concat()
    }
}

/// An object as stored (its id is the key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Collection.
    pub collection: String,
    /// Properties.
    pub properties: Properties,
    /// Creation time (ms).
    pub created_at: u64,
    /// Update time (ms).
    pub updated_at: u64,
    /// Vector, if any.
    pub vector: Option<Vec<f32>>,
    /// FAISS label of the vector (0 when none).
    pub vid: u64,
}

impl ObjectRecord {
    /// The public object.
    pub fn into_object(self, id: String) -> Object {
        Object {
            id,
            collection: self.collection,
            properties: self.properties,
            created_at: self.created_at,
            updated_at: self.updated_at,
            vector: self.vector,
        }
    }
}

/// An edge's stored value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// Properties.
    pub properties: Properties,
}

/// Encodes a value with the format version byte.
pub fn encode_value<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    let body = codec::encode(v).map_err(Error::storage)?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a versioned value.
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => codec::decode(body).map_err(Error::storage),
        Some((v, _)) => Err(Error::storage(format!("unknown stored format version {v}"))),
        None => Err(Error::storage("empty stored value")),
    }
}

/// Key of an outgoing edge.
pub fn edge_out_key(from: &str, label: &str, to: &str) -> Vec<u8> {
    [
        b"o",
        from.as_bytes(),
        b"\0",
        label.as_bytes(),
        b"\0",
        to.as_bytes(),
    ]
    .concat()
}

/// Key of an incoming edge.
pub fn edge_in_key(to: &str, label: &str, from: &str) -> Vec<u8> {
    [
        b"i",
        to.as_bytes(),
        b"\0",
        label.as_bytes(),
        b"\0",
        from.as_bytes(),
    ]
    .concat()
}

/// Key of a collection membership entry.
pub fn member_key(collection: &str, id: &str) -> Vec<u8> {
    [collection.as_bytes(), b"\0", id.as_bytes()].concat()
}

/// RocksDB resources shared by every shard instance of a node: one block
/// cache and one write-buffer budget.
#[derive(Clone)]
pub struct StorageEnv {
    cache: Cache,
    wbm: Arc<WriteBufferManager>,
    max_open_files: i32,
}

impl StorageEnv {
    /// A shared environment with `cache_bytes` of block cache and
    /// `write_buffer_bytes` of memtables across all shards.
    ///
    /// The memtable budget makes the instance being written flush when
    /// the node is over it; it never stalls writes. With stalls on, a
    /// write waits until the node's memtables drop below the budget, but
    /// RocksDB flushes only the instance being written: once idle
    /// instances hold the budget (hundreds of open shards with a few
    /// writes each, hibernation off), every write of the node waited for
    /// ever. Each instance's own memtables stay bounded by its write
    /// buffer size.
    pub fn new(cache_bytes: usize, write_buffer_bytes: usize, max_open_files: i32) -> Self {
        let cache = Cache::new_lru_cache(cache_bytes);
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(
            write_buffer_bytes,
            false,
            cache.clone(),
        );
        Self {
            cache,
            wbm: Arc::new(wbm),
            max_open_files,
        }
    }

    fn options(&self) -> Options {
        let mut bbt = BlockBasedOptions::default();
        bbt.set_block_cache(&self.cache);
        // A put reads the object it replaces, and most puts make a new
        // one: without a filter each such miss searched every table's
        // index (12% of a write-heavy node's CPU, perf). The filters live
        // in the shared block cache, so thousands of instances stay
        // within its bound.
        bbt.set_bloom_filter(10.0, false);
        bbt.set_cache_index_and_filter_blocks(true);
        bbt.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut o = Options::default();
        o.set_block_based_table_factory(&bbt);
        o.set_write_buffer_manager(&self.wbm);
        o.set_write_buffer_size(4 << 20);
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
        // Thousands of small instances per node: keep what each reserves
        // on disk small (RocksDB preallocates 4 MiB of MANIFEST and ~1.1x
        // the write buffer of WAL per open instance).
        o.set_manifest_preallocation_size(64 << 10);
        // The WAL preallocation block is capped by this; without it each
        // instance reserved ~60 MiB (measured). Also flushes the oldest
        // memtable once an instance's WAL passes it.
        o.set_max_total_wal_size(4 << 20);
        // No info LOG file per instance (its options dump alone is 84 KiB,
        // kept twice): RocksDB's warnings and errors go to the node log.
        o.set_log_level(rocksdb::LogLevel::Warn);
        o.set_info_logger(rocksdb::InfoLogger::new_callback_logger(
            rocksdb::LogLevel::Warn,
            |level, msg| {
                use rocksdb::LogLevel::{Error, Fatal, Warn};
                if matches!(level, Warn | Error | Fatal) {
                    tracing::warn!(target: "rocksdb", ?level, "{}", msg.trim_end());
                }
            },
        ));
        o.set_max_open_files(self.max_open_files);
        o.set_max_background_jobs(2);
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        o
    }
}

impl Default for StorageEnv {
    fn default() -> Self {
        Self::new(64 << 20, 64 << 20, 64)
    }
}

/// One shard's RocksDB instance.
pub struct ShardStore {
    db: DB,
    path: PathBuf,
    /// Unique among every instance this process opened (see
    /// [`ShardStore::instance`]).
    instance: u64,
}

/// The next [`ShardStore::instance`].
static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("path", &self.path)
            .finish()
    }
}

impl ShardStore {
    /// Opens (or creates) the instance at `path`.
    pub fn open(env: &StorageEnv, path: &Path) -> Result<ShardStore, Error> {
        let opts = env.options();
        let cfs = CFS
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, env.options()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(Error::storage)?;
        Ok(ShardStore {
            db,
            path: path.to_path_buf(),
            instance: NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// A number no other instance opened by this process has: a shard
    /// whose store is replaced (a snapshot install) or reopened (a
    /// restart) reads from a new instance, which read caches tell apart.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// The directory of the instance.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::storage(format!("column family {name} missing")))
    }

    /// Raw get.
    pub fn get_raw(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.db.get_cf(self.cf(cf)?, key).map_err(Error::storage)
    }

    /// Versioned get.
    pub fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> Result<Option<T>, Error> {
        match self.get_raw(cf, key)? {
            Some(b) => Ok(Some(decode_value(&b)?)),
            None => Ok(None),
        }
    }

    /// An object record by id.
    pub fn object(&self, id: &str) -> Result<Option<ObjectRecord>, Error> {
        self.get(CF_OBJECTS, id.as_bytes())
    }

    /// Iterates keys (and values) of `cf` starting with `prefix`, calling
    /// `f` until it returns false.
    pub fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.scan_prefix_from(cf, prefix, prefix, f)
    }

    /// Like [`scan_prefix`](Self::scan_prefix), starting at key `start`.
    pub fn scan_prefix_from(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let iter = self.db.iterator_cf(
            self.cf(cf)?,
            IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(Error::storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Writes a batch built with [`ShardStore::batch`].
    pub fn write(&self, batch: WriteBatch) -> Result<(), Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(batch, &wo).map_err(Error::storage)
    }

    /// [`write`](Self::write), unless RocksDB would make it wait (a write
    /// stall or slowdown while flushes and compactions catch up): then
    /// nothing is written and it returns false.
    pub fn write_without_waiting(&self, batch: WriteBatch) -> Result<bool, Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        wo.set_no_slowdown(true);
        match self.db.write_opt(batch, &wo) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(false),
            Err(e) => Err(Error::storage(e)),
        }
    }

    /// A batch writer bound to this store's column families.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            batch: WriteBatch::default(),
        }
    }

    /// Flushes memtables and the WAL (used before a graceful close).
    pub fn flush(&self) -> Result<(), Error> {
        self.db.flush_wal(true).map_err(Error::storage)?;
        for cf in CFS {
            self.db.flush_cf(self.cf(cf)?).map_err(Error::storage)?;
        }
        Ok(())
    }

    /// A consistent on-disk copy (hard-linked SSTs) at `dir`, which must not exist.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), Error> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(Error::storage)?;
        cp.create_checkpoint(dir).map_err(Error::storage)
    }

    /// Every (cf, key) in the store; used by tests and the purge check.
    pub fn count_keys(&self) -> Result<usize, Error> {
        let mut n = 0;
        for cf in CFS {
            for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
                item.map_err(Error::storage)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A write batch over a [`ShardStore`]'s column families.
pub struct Batch<'a> {
    store: &'a ShardStore,
    batch: WriteBatch,
}

impl Batch<'_> {
    /// Puts a versioned value.
    pub fn put<T: Serialize>(&mut self, cf: &str, key: &[u8], v: &T) -> Result<(), Error> {
        let bytes = encode_value(v)?;
        self.put_raw(cf, key, &bytes)
    }

    /// Puts raw bytes.
    pub fn put_raw(&mut self, cf: &str, key: &[u8], v: &[u8]) -> Result<(), Error> {
        self.batch.put_cf(self.store.cf(cf)?, key, v);
        Ok(())
    }

    /// Deletes a key.
    pub fn delete(&mut self, cf: &str, key: &[u8]) -> Result<(), Error> {
        self.batch.delete_cf(self.store.cf(cf)?, key);
        Ok(())
    }

    /// Deletes the keys in `[from, to)`.
    pub fn delete_range(&mut self, cf: &str, from: &[u8], to: &[u8]) -> Result<(), Error> {
        self.batch.delete_range_cf(self.store.cf(cf)?, from, to);
        Ok(())
    }

    /// Writes the batch.
    pub fn commit(self) -> Result<(), Error> {
        self.store.write(self.batch)
    }

    /// Writes the batch unless that would wait (see
    /// [`ShardStore::write_without_waiting`]); whether it was written.
    pub fn commit_without_waiting(self) -> Result<bool, Error> {
        self.store.write_without_waiting(self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Idle instances holding more than the node's memtable budget do not
    /// stall a write to another instance. With stalls on, this write
    /// waited for ever (as every write of a node with hundreds of idle
    /// open shards did).
    #[test]
    fn idle_instances_over_the_memtable_budget_do_not_stall_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = StorageEnv::new(8 << 20, 1 << 20, 16);
        let stores: Vec<ShardStore> = (0..12)
            .map(|i| ShardStore::open(&env, &dir.path().join(i.to_string())).expect("open"))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let put = |s: &ShardStore, cf: &str, k: &[u8]| {
                let mut b = s.batch();
                // Past the memtable arena's inline block: each memtable
                // written reserves a whole arena block of the budget.
                b.put_raw(cf, k, &[7u8; 8 << 10]).expect("put");
                b.commit().expect("commit");
            };
            // Every instance takes a write in each column family (each
            // memtable reserves an arena block), then sits idle.
            for s in &stores {
                for cf in CFS {
                    put(s, cf, b"k");
                }
            }
            for i in 0..50u32 {
                put(&stores[0], CF_META, &i.to_be_bytes());
            }
            let _ = tx.send(());
            // The instances close before the shared environment does.
            drop(stores);
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a write stalled behind the memtables of idle instances");
        writer.join().expect("writer");
        drop(env);
    }
}
