//! `ShardData`: a shard's store, meta and vector indexes, shared by its
//! raft state machine (writes) and its readers.
//!
//! Directory layout under `shards/<group>/`:
//!
//! ```text
//! CURRENT            name of the live data directory (written atomically)
//! data-<n>/          the RocksDB instance (ShardStore)
//! snapshots/<id>/    the latest snapshot: db/ (a RocksDB checkpoint),
//!                    faiss/ (each collection's index files), meta.bin;
//!                    older ones only while a send still reads them
//! snapshots/LATEST   name of the latest snapshot (written atomically)
//! incoming-*/        a snapshot being received (swept at open)
//! ```
//!
//! A snapshot being sent to a peer is pinned ([`SnapshotPin`]): a newer
//! snapshot does not remove it until the send ends, so a slow stream is
//! never cut by the leader's own compaction.
//!
//! The vectors live in RocksDB with their objects; the FAISS indexes are
//! derived from them. A snapshot carries each collection's index as of the
//! checkpoint (`vector::IndexImage`, tagged with the checkpoint's applied
//! log id and the collection's spec fingerprint): the index is cloned in
//! memory under the apply lock, with the checkpoint, and written to disk
//! after the lock is released. Installing a snapshot, and opening a shard
//! whose store is exactly at its newest snapshot's applied log id, load
//! those files when their tag, spec and checksums match and their labels
//! are exactly the store's vectors of that collection (`vids`, checked
//! label by label); any other collection is rebuilt from the stored
//! vectors. [`IndexReport`] says which, and why.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::limits::{QuotaCounters, WorkMeter};
use crate::proto::{
    CollectionSpec, Direction, Error, Object, Query, SearchHit, StorageUsage, Traverse,
    TraversedNode, VectorSearch,
};
use crate::storage::{
    self, meta_key, Applied, Command, CommandResult, ShardMeta, ShardStore, StorageEnv,
    VectorChange, CF_EDGES, CF_MEMBERS, CF_META, CF_OBJECTS, CF_VIDS,
};
use crate::tenant::StorageLimitConfig;
use crate::vector::{self, VectorIndex};

use super::backlog::{Backlog, Pushed};

/// Most rows a filtered vector search evaluates to build its allow-list.
pub const MAX_FILTER_SCAN: usize = 1_000_000;

/// Most candidates a filtered search reads from a property index and
/// scores exactly; a filter passing more objects is applied to an
/// over-fetching vector search instead (see `ShardData::filtered_search`).
pub const ALLOW_LIST_MAX: usize = 4096;
/// Most neighbours a post-filtered search fetches before it falls back
/// to reading the whole collection.
pub const POST_FILTER_MAX: usize = 16_384;

/// The `k` nearest live vectors of `ix` to `query`, as (object id, score),
/// nearest first. A label maps back through the index's own id map, else
/// through the `vids` column family; one neither knows is skipped.
fn nearest(
    store: &ShardStore,
    ix: &RwLock<VectorIndex>,
    query: &[f32],
    k: usize,
) -> Result<Vec<(String, f32)>, Error> {
    Ok(nearest_many(store, ix, &[query], k)?
        .pop()
        .unwrap_or_default())
}

/// [`nearest`] for several queries of one index and one `k`, in one FAISS
/// call (and another for those that found too few past HNSW tombstones):
/// each query's (object id, score) list.
fn nearest_many(
    store: &ShardStore,
    ix: &RwLock<VectorIndex>,
    queries: &[&[f32]],
    k: usize,
) -> Result<Vec<Vec<(String, f32)>>, Error> {
    let (lists, known) = {
        let ix = ix.read();
        let lists = ix.search_many(queries, k)?;
        let known: Vec<Vec<Option<Arc<str>>>> = lists
            .iter()
            .map(|hits| hits.iter().map(|(vid, _)| ix.id_of(*vid)).collect())
            .collect();
        (lists, known)
    };
    let mut out = Vec::with_capacity(lists.len());
    for (hits, known) in lists.into_iter().zip(known) {
        let mut named = Vec::with_capacity(hits.len());
        for ((vid, score), known) in hits.into_iter().zip(known) {
            let id = match known {
                Some(id) => id.to_string(),
                None => match store.get_raw(CF_VIDS, &vid.to_be_bytes())? {
                    Some(id) => String::from_utf8_lossy(&id).into_owned(),
                    None => continue,
                },
            };
            named.push((id, score));
        }
        out.push(named);
    }
    Ok(out)
}

/// A filtered search's candidate from a property index: the object id and
/// its FAISS label.
type Candidate = (String, Option<u64>);

/// How long a shard remembers that a filter's plan passes more than
/// [`ALLOW_LIST_MAX`] objects (it is counted again after). A stale verdict
/// only picks the post-filter for a filter that became selective, and
/// the post-filter is exact all the same (it falls back to the full read
/// when too few neighbours pass).
const BROAD_TTL: Duration = Duration::from_secs(1);
/// Most plans a shard remembers as broad.
const BROAD_PLANS: u64 = 1024;

/// A plan's key among a shard's broad plans: a hash of the collection and
/// the plan (a collision only changes which plan runs, never a result).
fn plan_key(collection: &str, plan: &storage::props::Plan) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    collection.hash(&mut h);
    format!("{plan:?}").hash(&mut h);
    h.finish()
}

/// Most vector components a search may compare to run on an async
/// worker (see [`ShardData::short_search`]): about 0.3 ms here.
pub const INLINE_SEARCH_WORK: u64 = 4_000_000;
/// Most hits of a search run on an async worker.
pub const INLINE_SEARCH_K: u32 = 100;

/// Most ops of a write that [`ShardData::light`] applies inline.
pub const LIGHT_OPS: usize = 8;

/// How a collection's vector index was made when the shard opened or
/// installed a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOrigin {
    /// Read from the snapshot's index files.
    Loaded,
    /// Built from the stored vectors; why the files were not used.
    Rebuilt(String),
}

/// The origin of every vector index of a shard, by collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Collection → origin.
    pub collections: BTreeMap<String, IndexOrigin>,
}

impl IndexReport {
    /// Collections whose index was loaded from files.
    pub fn loaded(&self) -> Vec<&str> {
        self.with(|o| *o == IndexOrigin::Loaded)
    }

    /// Collections whose index was rebuilt from the stored vectors.
    pub fn rebuilt(&self) -> Vec<&str> {
        self.with(|o| *o != IndexOrigin::Loaded)
    }

    fn with(&self, f: impl Fn(&IndexOrigin) -> bool) -> Vec<&str> {
        self.collections
            .iter()
            .filter(|(_, o)| f(o))
            .map(|(c, _)| c.as_str())
            .collect()
    }
}

/// What the last snapshot build cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// How long the apply lock was held (checkpoint and index clones).
    pub lock_held: Duration,
    /// Of which cloning the vector indexes.
    pub index_clone: Duration,
    /// Writing the index files, after the lock.
    pub index_write: Duration,
    /// Bytes of index files written.
    pub index_bytes: u64,
}

/// A shard's data and indexes.
pub struct ShardData {
    env: StorageEnv,
    dir: PathBuf,
    store: RwLock<Arc<ShardStore>>,
    meta: RwLock<ShardMeta>,
    vectors: RwLock<Indexes>,
    /// Serialises apply, snapshot build and install.
    apply_lock: Mutex<()>,
    /// How the indexes were made at the last open or install.
    index_report: Mutex<IndexReport>,
    snapshot_stats: Mutex<SnapshotStats>,
    /// Bumped after every applied command that can change a read's
    /// answer (see [`ShardData::read_stamp`]).
    generation: AtomicU64,
    /// Snapshots being sent, by directory name (see [`SnapshotPin`]).
    pins: Arc<Mutex<HashMap<String, usize>>>,
    /// Vector changes applied to the store and not yet to the indexes.
    backlog: Backlog,
    /// This shard, for the indexing jobs it schedules.
    me: Weak<ShardData>,
    /// Plans of filtered searches counted broad lately (see
    /// [`BROAD_TTL`]); made at the first filtered search.
    broad_plans: std::sync::OnceLock<moka::sync::Cache<u64, ()>>,
}

/// Keeps a snapshot directory on disk while a send reads it. Dropping the
/// last pin of a snapshot that is no longer the latest removes it.
#[derive(Debug)]
pub struct SnapshotPin {
    snaps: PathBuf,
    name: String,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for SnapshotPin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        let left = match pins.get_mut(&self.name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            _ => {
                pins.remove(&self.name);
                0
            }
        };
        if left == 0 && latest_name(&self.snaps).as_deref() != Some(self.name.as_str()) {
            let _ = std::fs::remove_dir_all(self.snaps.join(&self.name));
        }
    }
}

impl std::fmt::Debug for ShardData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardData").field("dir", &self.dir).finish()
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::storage(e)
}

/// Writes `contents` to `path` atomically (temp, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err)?;
    f.write_all(contents).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
    }
    Ok(())
}

impl ShardData {
    /// Opens the shard at `dir`, creating it if needed. Its vector indexes
    /// are loaded from the newest snapshot's files when the store is at
    /// that snapshot's applied log id (and the files check out), and
    /// rebuilt from the stored vectors otherwise.
    pub fn open(env: &StorageEnv, dir: &Path) -> Result<Arc<ShardData>, Error> {
        std::fs::create_dir_all(dir).map_err(io_err)?;
        sweep_leftovers(dir);
        let current = dir.join("CURRENT");
        let name = match std::fs::read_to_string(&current) {
            Ok(s) => s.trim().to_string(),
            Err(_) => {
                write_atomic(&current, b"data-0")?;
                "data-0".to_string()
            }
        };
        let store = ShardStore::open(env, &dir.join(&name))?;
        let meta = ShardMeta::load(&store)?;
        let files = latest_snapshot_in(dir).map(|s| s.join("faiss"));
        let (vectors, report) = load_vectors(&store, &meta, files.as_deref(), &group_of(dir))?;
        Ok(Arc::new_cyclic(|me| ShardData {
            env: env.clone(),
            dir: dir.to_path_buf(),
            store: RwLock::new(Arc::new(store)),
            meta: RwLock::new(meta),
            vectors: RwLock::new(vectors),
            apply_lock: Mutex::new(()),
            index_report: Mutex::new(report),
            snapshot_stats: Mutex::new(SnapshotStats::default()),
            generation: AtomicU64::new(0),
            pins: Arc::default(),
            backlog: Backlog::default(),
            me: me.clone(),
            broad_plans: std::sync::OnceLock::new(),
        }))
    }

    /// How the vector indexes were made at the last open or snapshot
    /// install: loaded from files or rebuilt, by collection.
    pub fn index_report(&self) -> IndexReport {
        self.index_report.lock().clone()
    }

    /// What the last snapshot build cost (zero before the first).
    pub fn snapshot_stats(&self) -> SnapshotStats {
        *self.snapshot_stats.lock()
    }

    /// The shard directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live store.
    pub fn store(&self) -> Arc<ShardStore> {
        self.store.read().clone()
    }

    /// Exact storage usage.
    pub fn usage(&self) -> StorageUsage {
        self.meta.read().usage.clone()
    }

    /// Storage limits in force (as last set through the log).
    pub fn limits(&self) -> Option<StorageLimitConfig> {
        self.meta.read().limits.clone()
    }

    /// A collection's spec.
    pub fn collection(&self, name: &str) -> Option<CollectionSpec> {
        self.meta.read().collections.get(name).cloned()
    }

    /// Whether applying `cmd` is a few small RocksDB writes and nothing
    /// more: no FAISS work, no scan, no cascade (at most
    /// [`LIGHT_OPS`] ops, none touching a vector or deleting an object).
    /// The state machine applies such entries on its own task; anything
    /// else goes to a blocking thread.
    pub fn light(&self, cmd: &Command) -> bool {
        use crate::proto::WriteOp;
        match cmd {
            Command::Write { ops, .. } => {
                ops.len() <= LIGHT_OPS
                    && ops.iter().all(|op| match op {
                        WriteOp::Put(o) => {
                            o.vector.is_none()
                                && self
                                    .meta
                                    .read()
                                    .collections
                                    .get(&o.collection)
                                    .is_some_and(|c| c.dimension.is_none())
                        }
                        WriteOp::Update { vector, .. } => vector.is_none(),
                        WriteOp::PutEdge(_) | WriteOp::DeleteEdge { .. } => true,
                        WriteOp::Delete { .. } => false,
                    })
            }
            Command::Once { cmd, .. } => self.light(cmd),
            Command::SetLimits(_) | Command::CheckpointQuota(_) | Command::SetQuota(_) => true,
            _ => false,
        }
    }

    /// All collections.
    pub fn collections(&self) -> Vec<CollectionSpec> {
        self.meta.read().collections.values().cloned().collect()
    }

    /// The property indexes, of `collection` or of all, sorted.
    pub fn property_indexes(&self, collection: Option<&str>) -> Vec<crate::proto::PropertyIndex> {
        self.meta.read().property_indexes(collection)
    }

    /// The answer remembered for part `part` of a client's exactly-once
    /// write (`client`, `seq`), if it has been applied here.
    pub fn once_result(
        &self,
        client: u64,
        seq: u64,
        part: u32,
    ) -> Result<Option<CommandResult>, Error> {
        let rec = self
            .store()
            .get::<crate::storage::OnceRecord>(CF_META, &meta_key::once(client, seq))?;
        Ok(rec.and_then(|r| {
            r.results
                .into_iter()
                .find(|(p, _)| *p == part)
                .map(|(_, r)| r)
        }))
    }

    /// Persisted request counters.
    pub fn quota(&self) -> Result<QuotaCounters, Error> {
        Ok(self
            .store()
            .get(CF_META, meta_key::QUOTA)?
            .unwrap_or_default())
    }

    /// Raw bytes of a meta key (the raft module keeps its ids there).
    pub fn meta_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.store().get_raw(CF_META, key)
    }

    /// Applies one command at a log position. `applied` is the encoded log
    /// id (and `membership` the encoded membership, if it changed), written
    /// in the same batch as the command's data.
    pub fn apply(
        &self,
        cmd: Option<&Command>,
        applied: &[u8],
        membership: Option<&[u8]>,
    ) -> Result<CommandResult, Error> {
        self.apply_with(cmd, applied, membership, true)
            .map(|r| r.unwrap_or_default())
    }

    /// [`apply`](Self::apply) for a caller that must not block (the state
    /// machine's async task, for a light entry): `None`, with nothing
    /// changed, when RocksDB would make the write wait for flushes or
    /// compactions; the caller then applies it where it may wait.
    pub fn apply_without_waiting(
        &self,
        cmd: Option<&Command>,
        applied: &[u8],
        membership: Option<&[u8]>,
    ) -> Result<Option<CommandResult>, Error> {
        self.apply_with(cmd, applied, membership, false)
    }

    fn apply_with(
        &self,
        cmd: Option<&Command>,
        applied: &[u8],
        membership: Option<&[u8]>,
        may_wait: bool,
    ) -> Result<Option<CommandResult>, Error> {
        let _g = self.apply_lock.lock();
        // Dropped before `_g`: bumps the generation after every change of
        // this command is visible, on every exit path (errors included).
        let _bump = cmd
            .filter(|c| c.changes_reads())
            .map(|_| Bump(&self.generation));
        let store = self.store();
        let mut batch = store.batch();
        let meta = self.meta.read().clone();
        let outcome = match cmd {
            Some(c) => Some(storage::apply(&store, &meta, c, &mut batch)?),
            None => None,
        };
        batch.put_raw(CF_META, meta_key::APPLIED, applied)?;
        if let Some(m) = membership {
            batch.put_raw(CF_META, meta_key::MEMBERSHIP, m)?;
        }
        // A dropped property index leaves the planner before its keys
        // leave the store: a filtered search that finds the index gone
        // after reading its keys plans again (see `filtered_search`).
        let kept_indexes = match (&outcome, cmd) {
            (Some(a), Some(Command::DropPropertyIndex { .. })) => Some(std::mem::replace(
                &mut self.meta.write().indexed,
                a.meta.indexed.clone(),
            )),
            _ => None,
        };
        let committed = if may_wait {
            batch.commit().map(|()| true)
        } else {
            batch.commit_without_waiting()
        };
        if !matches!(committed, Ok(true)) {
            if let Some(kept) = kept_indexes {
                self.meta.write().indexed = kept;
            }
            return committed.map(|_| None);
        }
        let Some(Applied {
            result,
            vectors,
            collections_changed,
            meta: new_meta,
        }) = outcome
        else {
            return Ok(Some(CommandResult::None));
        };
        *self.meta.write() = new_meta;
        if collections_changed {
            // Earlier changes go to the indexes they were made for.
            self.catch_up()?;
            self.sync_collections()?;
        }
        self.apply_vectors(vectors)?;
        Ok(Some(result))
    }

    /// What a read is about to see: the store instance and the
    /// generation, read *before* the data. A result read after taking
    /// stamp `s` is at least as new as the state `s` names; it is reused
    /// only while [`read_stamp`](Self::read_stamp) still equals `s`, that
    /// is until the next applied write bumps the generation or a snapshot
    /// install (or a restart) brings another store instance.
    pub fn read_stamp(&self) -> ReadStamp {
        // Acquire pairs with the Release bump after an apply: every change
        // of the applies counted here is visible to the reads that follow.
        let generation = self.generation.load(Ordering::Acquire);
        let store = self.store.read().instance();
        ReadStamp { store, generation }
    }

    fn sync_collections(&self) -> Result<(), Error> {
        let specs = self.collections();
        let mut map = self.vectors.write();
        map.retain(|name, _| specs.iter().any(|s| &s.name == name));
        for s in specs {
            if s.dimension.is_some() && !map.contains_key(&s.name) {
                map.insert(s.name.clone(), Arc::new(RwLock::new(VectorIndex::new(&s)?)));
            }
        }
        Ok(())
    }

    /// Queues an applied command's index changes (see `backlog`): an
    /// indexing job applies them, or this apply does when the backlog is
    /// full or no runtime runs jobs.
    fn apply_vectors(&self, changes: Vec<VectorChange>) -> Result<(), Error> {
        match self.backlog.push(changes) {
            Pushed::Queued => Ok(()),
            Pushed::Full => self.catch_up(),
            Pushed::Schedule => {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let me = self.me.clone();
                        rt.spawn_blocking(move || {
                            if let Some(data) = me.upgrade() {
                                data.index_backlog();
                            }
                        });
                    }
                    Err(_) => self.index_backlog(),
                }
                Ok(())
            }
        }
    }

    /// The indexing job: catches up until nothing is queued.
    fn index_backlog(&self) {
        loop {
            if let Err(e) = self.catch_up() {
                tracing::error!(
                    group = %group_of(&self.dir), error = %e,
                    "vector index: changes could not be applied; searches miss them until the shard reopens"
                );
            }
            if self.backlog.finish() {
                return;
            }
        }
    }

    /// Brings every vector index up to date with the store: on return, a
    /// search sees every write applied before the call.
    pub fn catch_up(&self) -> Result<(), Error> {
        self.backlog.catch_up(|changes| self.index_now(changes))
    }

    /// Changes queued for the vector indexes (0 when they are up to date).
    pub fn unindexed(&self) -> usize {
        self.backlog.len()
    }

    /// Applies `changes` in order, each run of adds to one collection in
    /// one FAISS call.
    fn index_now(&self, changes: Vec<VectorChange>) -> Result<(), Error> {
        let map = self.vectors.read();
        let mut run: Vec<(u64, String, Vec<f32>)> = Vec::new();
        let mut run_of = String::new();
        let flush = |run: &mut Vec<(u64, String, Vec<f32>)>, collection: &str| {
            if run.is_empty() {
                return Ok(());
            }
            let items = std::mem::take(run);
            let Some(ix) = map.get(collection) else {
                return Ok(());
            };
            let mut ix = ix.write();
            let refs: Vec<(u64, &[f32])> = items
                .iter()
                .map(|(vid, _, v)| (*vid, v.as_slice()))
                .collect();
            ix.add_many(&refs)?;
            for (vid, id, _) in &items {
                ix.set_id(*vid, id);
            }
            Ok::<(), Error>(())
        };
        for ch in changes {
            match ch {
                VectorChange::Add {
                    collection,
                    vid,
                    id,
                    vector,
                } => {
                    if collection != run_of {
                        flush(&mut run, &run_of)?;
                        run_of = collection;
                    }
                    run.push((vid, id, vector));
                }
                VectorChange::Remove { collection, vid } => {
                    flush(&mut run, &run_of)?;
                    if let Some(ix) = map.get(&collection) {
                        ix.write().remove(vid)?;
                    }
                }
            }
        }
        flush(&mut run, &run_of)
    }

    // ----- reads -----

    /// Get by id.
    pub fn get(&self, id: &str) -> Result<Option<Object>, Error> {
        Ok(self
            .store()
            .object(id)?
            .map(|r| r.into_object(id.to_string())))
    }

    /// Calls `f` for each object of a collection, in id order, until it
    /// returns false; every row read is counted on `meter`, which stops
    /// the scan with its error.
    fn for_each_in(
        &self,
        collection: &str,
        meter: &mut WorkMeter,
        mut f: impl FnMut(Object) -> bool,
    ) -> Result<(), Error> {
        let store = self.store();
        let prefix = [collection.as_bytes(), b"\0"].concat();
        store.scan_prefix(CF_MEMBERS, &prefix, |k, _| {
            meter.touch(1)?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            match store.object(&id)? {
                Some(rec) => Ok(f(rec.into_object(id))),
                None => Ok(true),
            }
        })
    }

    /// Property query; the rows it reads are counted on `meter`.
    pub fn query(&self, q: &Query, meter: &mut WorkMeter) -> Result<Vec<Object>, Error> {
        if self.collection(&q.collection).is_none() {
            return Err(Error::not_found("collection", &q.collection));
        }
        let mut out = Vec::new();
        let limit = q.limit as usize;
        if limit == 0 {
            return Ok(out);
        }
        self.for_each_in(&q.collection, meter, |o| {
            if q.filter.as_ref().is_none_or(|f| f.matches(&o.properties)) {
                out.push(o);
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    /// A page of a collection in id order, starting after `after`; the
    /// rows it reads are counted on `meter`.
    pub fn scan(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
        meter: &mut WorkMeter,
    ) -> Result<Vec<Object>, Error> {
        if self.collection(collection).is_none() {
            return Err(Error::not_found("collection", collection));
        }
        let store = self.store();
        let prefix = [collection.as_bytes(), b"\0"].concat();
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let start = match after {
            Some(a) => [prefix.as_slice(), a.as_bytes(), b"\0"].concat(),
            None => prefix.clone(),
        };
        store.scan_prefix_from(CF_MEMBERS, &prefix, &start, |k, _| {
            meter.touch(1)?;
            let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if let Some(rec) = store.object(&id)? {
                out.push(rec.into_object(id));
            }
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// k-NN search; exact under a filter. A filtered search reads every
    /// row of the collection, counted on `meter`.
    pub fn vector_search(
        &self,
        s: &VectorSearch,
        with_objects: bool,
        meter: &mut WorkMeter,
    ) -> Result<Vec<SearchHit>, Error> {
        let spec = self
            .collection(&s.collection)
            .ok_or_else(|| Error::not_found("collection", &s.collection))?;
        storage::check_vector(&spec, &s.vector)?;
        self.catch_up()?;
        let ix = self
            .vectors
            .read()
            .get(&s.collection)
            .cloned()
            .ok_or_else(|| Error::not_found("collection", &s.collection))?;
        let store = self.store();
        let hits = match &s.filter {
            None => nearest(&store, &ix, &s.vector, s.k as usize)?,
            Some(f) => return self.filtered_search(s, f, &ix, with_objects, meter),
        };
        let mut out = Vec::with_capacity(hits.len());
        for (id, score) in hits {
            let object = if with_objects { self.get(&id)? } else { None };
            out.push(SearchHit { id, score, object });
        }
        Ok(out)
    }

    /// Several k-NN searches, answered in order. The unfiltered searches
    /// of one collection and one `k` go to FAISS in one call, which
    /// spreads them over the cores (grouped by `k` too, so no search costs
    /// more than it was admitted for); filtered ones run as
    /// [`vector_search`](Self::vector_search) does, all on one `meter`.
    /// The first bad search (unknown collection, wrong dimension) fails
    /// the whole batch.
    pub fn vector_search_batch(
        &self,
        searches: &[VectorSearch],
        with_objects: bool,
        meter: &mut WorkMeter,
    ) -> Result<Vec<Vec<SearchHit>>, Error> {
        for s in searches {
            let spec = self
                .collection(&s.collection)
                .ok_or_else(|| Error::not_found("collection", &s.collection))?;
            storage::check_vector(&spec, &s.vector)?;
        }
        self.catch_up()?;
        let mut out: Vec<Option<Vec<SearchHit>>> = vec![None; searches.len()];
        // Unfiltered searches by collection and k, in order of first
        // appearance.
        let mut groups: Vec<((&str, u32), Vec<usize>)> = Vec::new();
        for (i, s) in searches.iter().enumerate() {
            if s.filter.is_some() {
                out[i] = Some(self.vector_search(s, with_objects, meter)?);
            } else {
                let key = (s.collection.as_str(), s.k);
                match groups.iter_mut().find(|(g, _)| *g == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            }
        }
        let store = self.store();
        for ((collection, k), members) in groups {
            let ix = self
                .vectors
                .read()
                .get(collection)
                .cloned()
                .ok_or_else(|| Error::not_found("collection", collection))?;
            let queries: Vec<&[f32]> = members
                .iter()
                .map(|&i| searches[i].vector.as_slice())
                .collect();
            let lists = nearest_many(&store, &ix, &queries, k as usize)?;
            for (&i, hits) in members.iter().zip(lists) {
                let mut named = Vec::with_capacity(hits.len());
                for (id, score) in hits {
                    let object = if with_objects { self.get(&id)? } else { None };
                    named.push(SearchHit { id, score, object });
                }
                out[i] = Some(named);
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// A vector search under a filter, planned by selectivity (see
    /// `storage::props` for the indexes):
    ///
    /// 1. No indexed property narrows the filter: every object of the
    ///    collection is read and scored exactly.
    /// 2. An index yields at most [`ALLOW_LIST_MAX`] candidates (the
    ///    fewest of any conjunct it answers): only they are read and
    ///    scored exactly (an allow-list; recall 1).
    /// 3. Otherwise the filter passes many objects: the vector index is
    ///    searched for more neighbours than asked, in proportion to the
    ///    filter's selectivity (bounded below by the count), and those
    ///    that pass are kept (a post-filter), fetching more while too few
    ///    pass. Past [`POST_FILTER_MAX`] neighbours it falls back to 1.
    fn filtered_search(
        &self,
        s: &VectorSearch,
        f: &crate::proto::Filter,
        ix: &Arc<RwLock<VectorIndex>>,
        with_objects: bool,
        meter: &mut WorkMeter,
    ) -> Result<Vec<SearchHit>, Error> {
        use storage::props;
        let k = s.k as usize;
        let store = self.store();
        let indexed = self.meta.read().indexed.get(&s.collection).cloned();
        let planned = indexed
            .as_ref()
            .map_or_else(props::Planned::default, |paths| props::plan(f, paths));
        // Whether every index planned on is still declared. A drop
        // removes the declaration before it deletes the keys, so a search
        // that read keys of a dropped index sees it gone here, and plans
        // again without it (at most once per index dropped meanwhile).
        let still_indexed = || {
            let meta = self.meta.read();
            let now = meta.indexed.get(&s.collection);
            planned
                .plans
                .iter()
                .all(|p| now.is_some_and(|paths| paths.contains(&p.path)))
        };
        // The plan with the fewest candidates, if one has at most
        // ALLOW_LIST_MAX (counted up to one more), else the first plan
        // with more. A plan counted broad within BROAD_TTL is not counted
        // again: a repeated broad filter skips thousands of key reads.
        let mut fewest: Option<(&props::Plan, Vec<Candidate>)> = None;
        let mut broad: Option<&props::Plan> = None;
        let known_broad = self.broad_plans.get_or_init(|| {
            moka::sync::Cache::builder()
                .max_capacity(BROAD_PLANS)
                .time_to_live(BROAD_TTL)
                .build()
        });
        for plan in &planned.plans {
            let key = plan_key(&s.collection, plan);
            if known_broad.contains_key(&key) {
                broad.get_or_insert(plan);
                continue;
            }
            let mut ids = Vec::new();
            props::scan(&store, &s.collection, plan, |id, vid| {
                meter.touch(1)?;
                ids.push((id.to_string(), vid));
                Ok(ids.len() <= ALLOW_LIST_MAX)
            })?;
            if ids.len() > ALLOW_LIST_MAX {
                known_broad.insert(key, ());
                broad.get_or_insert(plan);
            } else if fewest.as_ref().is_none_or(|(_, b)| ids.len() < b.len()) {
                fewest = Some((plan, ids));
            }
        }
        let higher = ix.read().higher_is_closer();
        let mut best: std::collections::BinaryHeap<Scored> =
            std::collections::BinaryHeap::with_capacity(k + 1);
        let keep = |id: String, score: f32, best: &mut std::collections::BinaryHeap<Scored>| {
            let key = if higher { -score } else { score };
            best.push(Scored { key, score, id });
            if best.len() > k {
                best.pop();
            }
        };
        let score =
            |o: Object, best: &mut std::collections::BinaryHeap<Scored>, ix: &VectorIndex| {
                if let (Some(v), true) = (&o.vector, f.matches(&o.properties)) {
                    keep(o.id, ix.exact_score(&s.vector, v), best);
                }
            };
        let read_all = match (fewest, broad) {
            (Some((_, ids)), _) => {
                let ix = ix.read();
                let mut buf = vec![0f32; ix.dim()];
                for (id, vid) in ids {
                    // The index is the whole filter: score the candidate's
                    // vector from FAISS, without reading the object.
                    if planned.covers {
                        if let Some(score) =
                            vid.and_then(|v| ix.stored_score(&s.vector, v, &mut buf))
                        {
                            keep(id, score, &mut best);
                            continue;
                        }
                    }
                    meter.touch(1)?;
                    if let Some(rec) = store.object(&id)? {
                        if rec.collection == s.collection {
                            score(rec.into_object(id), &mut best, &ix);
                        }
                    }
                }
                false
            }
            (None, Some(plan)) => {
                let test = planned.covers.then_some(plan);
                if let Some(hits) = self.post_filter(s, f, test, ix, with_objects, meter)? {
                    if !still_indexed() {
                        return self.filtered_search(s, f, ix, with_objects, meter);
                    }
                    return Ok(hits);
                }
                true
            }
            (None, None) => true,
        };
        if !read_all && !still_indexed() {
            return self.filtered_search(s, f, ix, with_objects, meter);
        }
        if read_all {
            let ix = ix.read();
            let mut scanned = 0usize;
            self.for_each_in(&s.collection, meter, |o| {
                scanned += 1;
                score(o, &mut best, &ix);
                scanned < MAX_FILTER_SCAN
            })?;
        }
        let mut hits = best.into_vec();
        hits.sort_by(|a, b| a.key.total_cmp(&b.key).then_with(|| a.id.cmp(&b.id)));
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let object = if with_objects { self.get(&h.id)? } else { None };
            out.push(SearchHit {
                id: h.id,
                score: h.score,
                object,
            });
        }
        Ok(out)
    }

    /// Whether `s` is a search short enough to run on an async worker
    /// rather than in `block_in_place` (whose hand-off of the worker to
    /// another thread cost a twentieth of the stack's search time in
    /// `bench engine`): unfiltered, at most [`INLINE_SEARCH_K`] hits, the
    /// index up to date (no catch-up to run), and FAISS's work estimated
    /// at most [`INLINE_SEARCH_WORK`] (vector components compared: HNSW
    /// about `2·m·max(efSearch, k)` vectors, IVF `nprobe` lists, flat
    /// every vector).
    pub fn short_search(&self, s: &VectorSearch) -> bool {
        if s.filter.is_some() || s.k > INLINE_SEARCH_K || self.unindexed() > 0 {
            return false;
        }
        let Some(ix) = self.vectors.read().get(&s.collection).cloned() else {
            return false;
        };
        let ix = ix.read();
        let (live, spec) = (ix.len() as u64, ix.spec());
        let dim = u64::from(spec.dimension.unwrap_or(0));
        let compared = match spec.index {
            crate::proto::IndexKind::Flat => live,
            crate::proto::IndexKind::Hnsw { m, ef_search } => {
                2 * u64::from(m) * u64::from(ef_search.max(s.k))
            }
            crate::proto::IndexKind::Ivf { nlist, nprobe } => {
                live / u64::from(nlist.max(1)) * u64::from(nprobe)
            }
        };
        compared.min(live).saturating_mul(dim) <= INLINE_SEARCH_WORK
    }

    /// Plan 3 of [`filtered_search`](Self::filtered_search): the nearest
    /// neighbours that pass `f`, from an over-fetching vector search.
    /// With `covering` (a plan that is the whole filter), a neighbour is
    /// tested against the index, else its object is read. `None` when
    /// [`POST_FILTER_MAX`] neighbours held too few matches.
    fn post_filter(
        &self,
        s: &VectorSearch,
        f: &crate::proto::Filter,
        covering: Option<&storage::props::Plan>,
        ix: &Arc<RwLock<VectorIndex>>,
        with_objects: bool,
        meter: &mut WorkMeter,
    ) -> Result<Option<Vec<SearchHit>>, Error> {
        let k = s.k as usize;
        let store = self.store();
        let live = ix.read().len();
        // More than ALLOW_LIST_MAX objects pass the indexed conjunct: at
        // least that share of the collection.
        let share = (ALLOW_LIST_MAX as f64 / live.max(1) as f64).min(1.0);
        let mut fetch = ((k as f64 / share) * 1.5).ceil() as usize;
        fetch = fetch.clamp(k, POST_FILTER_MAX).min(live);
        loop {
            let mut out = Vec::with_capacity(k);
            for (id, score) in nearest(&store, ix, &s.vector, fetch)? {
                meter.touch(1)?;
                let held = match covering {
                    Some(plan) => storage::props::holds(&store, &s.collection, plan, &id)?,
                    None => None,
                };
                let object = match held {
                    Some(false) => continue,
                    Some(true) if !with_objects => None,
                    _ => {
                        let Some(rec) = store.object(&id)? else {
                            continue;
                        };
                        if !f.matches(&rec.properties) {
                            continue;
                        }
                        with_objects.then(|| rec.into_object(id.clone()))
                    }
                };
                out.push(SearchHit { id, score, object });
                if out.len() == k {
                    return Ok(Some(out));
                }
            }
            if fetch >= live {
                return Ok(Some(out));
            }
            if fetch >= POST_FILTER_MAX {
                return Ok(None);
            }
            fetch = (fetch * 4).min(POST_FILTER_MAX).min(live);
        }
    }

    /// Neighbours of `id` along edges in `dir`, as (neighbour, label);
    /// every edge read is counted on `meter`.
    fn neighbours(
        &self,
        store: &ShardStore,
        id: &str,
        dir: Direction,
        labels: &[String],
        out: &mut Vec<(String, String)>,
        meter: &mut WorkMeter,
    ) -> Result<(), Error> {
        let dirs: &[u8] = match dir {
            Direction::Out => b"o",
            Direction::In => b"i",
            Direction::Both => b"oi",
        };
        for d in dirs {
            let prefix = [&[*d][..], id.as_bytes(), b"\0"].concat();
            store.scan_prefix(CF_EDGES, &prefix, |k, _| {
                meter.touch(1)?;
                let rest = &k[prefix.len()..];
                if let Some(pos) = rest.iter().position(|&b| b == 0) {
                    let label = String::from_utf8_lossy(&rest[..pos]).into_owned();
                    if labels.is_empty() || labels.contains(&label) {
                        out.push((
                            String::from_utf8_lossy(&rest[pos + 1..]).into_owned(),
                            label,
                        ));
                    }
                }
                Ok(true)
            })?;
        }
        Ok(())
    }

    /// Breadth-first traversal, bounded by depth and node count; the edges
    /// it reads and the nodes it returns are charged on `meter`.
    pub fn traverse(
        &self,
        t: &Traverse,
        meter: &mut WorkMeter,
    ) -> Result<Vec<TraversedNode>, Error> {
        let store = self.store();
        if store.object(&t.start)?.is_none() {
            return Err(Error::not_found("object", &t.start));
        }
        let mut seen: HashSet<String> = HashSet::from([t.start.clone()]);
        let mut queue = VecDeque::from([(t.start.clone(), 0u32)]);
        let mut out = Vec::new();
        let mut nbrs = Vec::new();
        while let Some((id, depth)) = queue.pop_front() {
            if depth >= t.max_depth {
                continue;
            }
            nbrs.clear();
            self.neighbours(&store, &id, t.direction, &t.labels, &mut nbrs, meter)?;
            for (n, label) in nbrs.drain(..) {
                if out.len() >= t.max_nodes as usize {
                    return Ok(out);
                }
                if seen.insert(n.clone()) {
                    meter.charge(1)?;
                    out.push(TraversedNode {
                        id: n.clone(),
                        depth: depth + 1,
                        via: id.clone(),
                        label,
                    });
                    queue.push_back((n, depth + 1));
                }
            }
        }
        Ok(out)
    }

    /// Edges from `id` (out) as (label, to).
    pub fn edges_from(&self, id: &str) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        let mut meter = WorkMeter::unbounded();
        self.neighbours(&self.store(), id, Direction::Out, &[], &mut out, &mut meter)?;
        Ok(out.into_iter().map(|(to, label)| (label, to)).collect())
    }

    // ----- snapshots -----

    /// Builds a snapshot: a checkpoint of the store under `snapshots/<id>/db`,
    /// every collection's vector index under `faiss/` (tagged with the
    /// checkpoint's applied log id), and `meta.bin`, made by `make_meta`
    /// from the applied log id and membership (raw bytes) the checkpoint
    /// reflects. The checkpoint and in-memory clones of the indexes are
    /// taken under the apply lock; the index files are written after it.
    /// The directory appears complete or not at all; older snapshots are
    /// removed afterwards.
    pub fn build_snapshot<M>(
        &self,
        id: &str,
        make_meta: impl FnOnce(Option<Vec<u8>>, Option<Vec<u8>>) -> Result<(M, Vec<u8>), Error>,
    ) -> Result<(PathBuf, M), Error> {
        let snaps = self.dir.join("snapshots");
        std::fs::create_dir_all(&snaps).map_err(io_err)?;
        let target = snaps.join(id);
        let building = snaps.join(format!("{id}.building"));
        for d in [&target, &building] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(io_err)?;
            }
        }
        std::fs::create_dir_all(&building).map_err(io_err)?;
        let mut stats = SnapshotStats::default();
        let (applied, membership, images) = {
            let _g = self.apply_lock.lock();
            let locked = Instant::now();
            let store = self.store();
            store.checkpoint(&building.join("db"))?;
            let applied = store.get_raw(CF_META, meta_key::APPLIED)?;
            let membership = store.get_raw(CF_META, meta_key::MEMBERSHIP)?;
            let cloning = Instant::now();
            let mut images = Vec::new();
            if applied.is_some() {
                // The images must reflect `applied` exactly.
                self.catch_up()?;
                for (name, ix) in self.vectors.read().iter() {
                    match ix.read().image() {
                        Ok(im) => images.push(im),
                        // The receiver rebuilds this one.
                        Err(e) => tracing::warn!(
                            group = %group_of(&self.dir), collection = %name, error = %e,
                            "snapshot: could not clone the vector index"
                        ),
                    }
                }
            }
            stats.index_clone = cloning.elapsed();
            stats.lock_held = locked.elapsed();
            (applied, membership, images)
        };
        if let Some(applied) = &applied {
            let writing = Instant::now();
            let faiss_dir = building.join("faiss");
            for im in images {
                let name = im.spec().name.clone();
                match im.write(&faiss_dir, applied) {
                    Ok(n) => stats.index_bytes += n,
                    // Without its manifest a collection is rebuilt.
                    Err(e) => {
                        tracing::warn!(
                            group = %group_of(&self.dir), collection = %name, error = %e,
                            "snapshot: could not write the vector index"
                        );
                        let _ = std::fs::remove_file(faiss_dir.join(format!("{name}.manifest")));
                    }
                }
            }
            stats.index_write = writing.elapsed();
        }
        let (meta, bytes) = make_meta(applied, membership)?;
        write_atomic(&building.join("meta.bin"), &bytes)?;
        std::fs::rename(&building, &target).map_err(io_err)?;
        self.make_latest(id)?;
        tracing::info!(
            group = %group_of(&self.dir),
            lock_held_ms = stats.lock_held.as_secs_f64() * 1e3,
            index_clone_ms = stats.index_clone.as_secs_f64() * 1e3,
            index_write_ms = stats.index_write.as_secs_f64() * 1e3,
            index_bytes = stats.index_bytes,
            "snapshot built"
        );
        *self.snapshot_stats.lock() = stats;
        Ok((target, meta))
    }

    /// Replaces the shard's state with the snapshot in `snapshot` (its
    /// `db/` checkpoint and `faiss/` index files). Each collection's index
    /// is loaded from the files when they reflect the checkpoint exactly,
    /// and rebuilt from the stored vectors otherwise; the report says
    /// which. The new store, its meta and its indexes are swapped in
    /// together, so no read sees a mix.
    pub fn install_snapshot(&self, snapshot: &Path) -> Result<IndexReport, Error> {
        let _g = self.apply_lock.lock();
        let current = std::fs::read_to_string(self.dir.join("CURRENT")).map_err(io_err)?;
        let n: u64 = current
            .trim()
            .trim_start_matches("data-")
            .parse()
            .unwrap_or(0);
        let next = format!("data-{}", n + 1);
        let target = self.dir.join(&next);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io_err)?;
        }
        copy_dir(&snapshot.join("db"), &target)?;
        std::fs::File::open(&target)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
        let store = ShardStore::open(&self.env, &target)?;
        let meta = ShardMeta::load(&store)?;
        let (vectors, report) = load_vectors(
            &store,
            &meta,
            Some(&snapshot.join("faiss")),
            &group_of(&self.dir),
        )?;
        write_atomic(&self.dir.join("CURRENT"), next.as_bytes())?;
        // Queued changes were made for the indexes being replaced.
        self.backlog.clear();
        let old = {
            let mut st = self.store.write();
            let mut me = self.meta.write();
            let mut ve = self.vectors.write();
            *me = meta;
            *ve = vectors;
            std::mem::replace(&mut *st, Arc::new(store))
        };
        let old_path = old.path().to_path_buf();
        drop(old);
        let _ = std::fs::remove_dir_all(old_path);
        *self.index_report.lock() = report.clone();
        Ok(report)
    }

    /// Path of the newest snapshot, if any.
    pub fn latest_snapshot(&self) -> Option<PathBuf> {
        latest_snapshot_in(&self.dir)
    }

    /// The newest snapshot, pinned until the pin drops: a send reads it
    /// whole even when newer snapshots are made meanwhile.
    pub fn pin_latest_snapshot(&self) -> Option<(PathBuf, SnapshotPin)> {
        let mut pins = self.pins.lock();
        let dir = latest_snapshot_in(&self.dir)?;
        let name = dir.file_name()?.to_string_lossy().into_owned();
        *pins.entry(name.clone()).or_default() += 1;
        Some((
            dir,
            SnapshotPin {
                snaps: self.dir.join("snapshots"),
                name,
                pins: self.pins.clone(),
            },
        ))
    }

    /// Keeps a snapshot received from a peer (the files in `received`) as
    /// this shard's latest, named `name`, with `meta` as its `meta.bin`.
    pub fn adopt_snapshot(&self, received: &Path, name: &str, meta: &[u8]) -> Result<(), Error> {
        let snaps = self.dir.join("snapshots");
        if received.starts_with(&snaps) {
            return Ok(());
        }
        std::fs::create_dir_all(&snaps).map_err(io_err)?;
        let building = snaps.join(format!("{name}.building"));
        let _ = std::fs::remove_dir_all(&building);
        copy_dir(received, &building)?;
        write_atomic(&building.join("meta.bin"), meta)?;
        let target = snaps.join(name);
        if target.exists() && !self.pins.lock().contains_key(name) {
            std::fs::remove_dir_all(&target).map_err(io_err)?;
        }
        if !target.exists() {
            std::fs::rename(&building, &target).map_err(io_err)?;
        } else {
            // A send still reads the same snapshot; it is identical.
            let _ = std::fs::remove_dir_all(&building);
        }
        self.make_latest(name)
    }

    /// Records snapshot `name` as the latest, then removes every other
    /// snapshot that no send has pinned.
    fn make_latest(&self, name: &str) -> Result<(), Error> {
        let snaps = self.dir.join("snapshots");
        let pins = self.pins.lock();
        write_atomic(&snaps.join(LATEST), name.as_bytes())?;
        for entry in std::fs::read_dir(&snaps).map_err(io_err)?.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n != name && !pins.contains_key(&n) && entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// The vector index of a collection (benchmarks compare against it).
    pub fn vector_index(&self, collection: &str) -> Option<Arc<RwLock<VectorIndex>>> {
        if let Err(e) = self.catch_up() {
            tracing::error!(group = %group_of(&self.dir), error = %e, "vector index catch-up");
        }
        self.vectors.read().get(collection).cloned()
    }

    /// Flushes the store before a graceful close.
    pub fn flush(&self) -> Result<(), Error> {
        self.store().flush()
    }

    /// Number of keys in the store (diagnostics and purge tests).
    pub fn key_count(&self) -> Result<usize, Error> {
        self.store().count_keys()
    }

    /// Objects stored (from the exact counters).
    pub fn object_count(&self) -> u64 {
        self.meta.read().usage.objects
    }

    /// Scans objects CF ids (for export).
    pub fn for_each_object(&self, mut f: impl FnMut(Object) -> bool) -> Result<(), Error> {
        let store = self.store();
        store.scan_prefix(CF_OBJECTS, b"", |k, v| {
            let rec: storage::ObjectRecord = storage::decode_value(v)?;
            Ok(f(rec.into_object(String::from_utf8_lossy(k).into_owned())))
        })
    }
}

/// Which state of a shard a read saw (see [`ShardData::read_stamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadStamp {
    /// The store instance ([`ShardStore::instance`]).
    pub store: u64,
    /// Commands applied that could change a read, since the shard opened.
    pub generation: u64,
}

/// Bumps a shard's generation when dropped (at the end of an apply).
struct Bump<'a>(&'a AtomicU64);

impl Drop for Bump<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A filtered-search candidate, ordered by `key` (smaller is closer).
struct Scored {
    key: f32,
    score: f32,
    id: String,
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.key.total_cmp(&o.key).is_eq() && self.id == o.id
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Scored {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key.total_cmp(&o.key).then_with(|| self.id.cmp(&o.id))
    }
}

/// Path of the newest complete snapshot under a shard directory.
/// The file under `snapshots/` naming the latest snapshot.
const LATEST: &str = "LATEST";

/// A complete snapshot directory.
fn complete(p: &Path) -> bool {
    p.join("meta.bin").is_file()
        && p.join("db").is_dir()
        && !p.to_string_lossy().ends_with(".building")
}

/// The name `snapshots/LATEST` records, if any.
fn latest_name(snaps: &Path) -> Option<String> {
    let n = std::fs::read_to_string(snaps.join(LATEST)).ok()?;
    let n = n.trim();
    (!n.is_empty()).then(|| n.to_string())
}

fn latest_snapshot_in(dir: &Path) -> Option<PathBuf> {
    let snaps = dir.join("snapshots");
    if let Some(p) = latest_name(&snaps).map(|n| snaps.join(n)) {
        if complete(&p) {
            return Some(p);
        }
    }
    // Written before LATEST existed: the newest complete one.
    std::fs::read_dir(&snaps)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| complete(p))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Removes what a crash can leave behind: snapshots half received
/// (`incoming-*`) or half built (`snapshots/*.building`), and snapshots
/// other than the latest (their sends died with the process).
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("incoming-") {
            tracing::info!(path = %e.path().display(), "removing a snapshot left half received");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let snaps = dir.join("snapshots");
    let keep = latest_snapshot_in(dir);
    let Ok(entries) = std::fs::read_dir(&snaps) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && Some(&p) != keep.as_ref() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// The group of a shard directory (`shards/<group>`), for logs.
fn group_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A shard's vector indexes, by collection.
type Indexes = HashMap<String, Arc<RwLock<VectorIndex>>>;

/// Stored vectors, by collection: (label, object id, vector).
type Batches = HashMap<String, Vec<(u64, String, Vec<f32>)>>;

/// Every collection's vector index for `store`: loaded from the index
/// files in `files` (a snapshot's `faiss/`) when they are tagged with the
/// store's applied log id and the collection's spec, check out, and hold
/// exactly the store's labels of that collection with the same object
/// ids; rebuilt from the stored vectors otherwise. Logs and reports which.
fn load_vectors(
    store: &ShardStore,
    meta: &ShardMeta,
    files: Option<&Path>,
    group: &str,
) -> Result<(Indexes, IndexReport), Error> {
    let started = Instant::now();
    let applied = store.get_raw(CF_META, meta_key::APPLIED)?;
    let mut loaded: HashMap<String, VectorIndex> = HashMap::new();
    let mut why: BTreeMap<String, String> = BTreeMap::new();
    for spec in meta.collections.values() {
        if spec.dimension.is_none() {
            continue;
        }
        let r = match (files, &applied) {
            (None, _) => Err("no snapshot to load from".to_string()),
            (Some(_), None) => Err("the store has no applied log id".to_string()),
            (Some(dir), Some(a)) => vector::read_image(dir, spec, a),
        };
        match r {
            Ok(ix) => {
                loaded.insert(spec.name.clone(), ix);
            }
            Err(reason) => {
                why.insert(spec.name.clone(), reason);
            }
        }
    }
    // One pass over the store's labels: each must be a loaded label with
    // the same object id, or a vector of a collection being rebuilt.
    let names: Vec<String> = loaded.keys().cloned().collect();
    let owner: HashMap<u64, usize> = names
        .iter()
        .enumerate()
        .flat_map(|(i, c)| loaded[c].labels().map(move |l| (l, i)))
        .collect();
    let mut matched = vec![0usize; names.len()];
    let mut strays: HashSet<String> = HashSet::new();
    let mut batches: Batches = HashMap::new();
    store.scan_prefix(CF_VIDS, b"", |k, id| {
        let id = String::from_utf8_lossy(id);
        let vid = <[u8; 8]>::try_from(k).ok().map(u64::from_be_bytes);
        if let Some(&i) = vid.and_then(|v| owner.get(&v)) {
            if let (Some(ix), Some(v)) = (loaded.get_mut(&names[i]), vid) {
                ix.set_id(v, &id);
                matched[i] += 1;
            }
            return Ok(true);
        }
        if let Some(rec) = store.object(&id)? {
            if let Some(v) = rec.vector {
                if loaded.contains_key(&rec.collection) {
                    strays.insert(rec.collection);
                } else {
                    batches
                        .entry(rec.collection)
                        .or_default()
                        .push((rec.vid, id.into_owned(), v));
                }
            }
        }
        Ok(true)
    })?;
    let mut demoted = HashSet::new();
    for (i, name) in names.iter().enumerate() {
        let have = loaded.get(name).map_or(0, |ix| ix.len());
        if strays.contains(name) || matched[i] != have {
            why.insert(
                name.clone(),
                format!(
                    "the file's {have} labels are not the store's vectors ({} matched{})",
                    matched[i],
                    if strays.contains(name) {
                        ", and the store has others"
                    } else {
                        ""
                    }
                ),
            );
            loaded.remove(name);
            demoted.insert(name.clone());
        }
    }
    if !demoted.is_empty() {
        // Rare (a file that passed its checks but not the store's): read
        // those collections' vectors in a second pass.
        store.scan_prefix(CF_VIDS, b"", |_, id| {
            let id = String::from_utf8_lossy(id);
            if let Some(rec) = store.object(&id)? {
                if let (Some(v), true) = (rec.vector, demoted.contains(&rec.collection)) {
                    batches
                        .entry(rec.collection)
                        .or_default()
                        .push((rec.vid, id.into_owned(), v));
                }
            }
            Ok(true)
        })?;
    }
    let mut report = IndexReport::default();
    let mut indexes = HashMap::new();
    for (name, ix) in loaded {
        tracing::info!(group, collection = %name, vectors = ix.len(), outcome = "loaded",
            "vector index loaded from the snapshot's files");
        report.collections.insert(name.clone(), IndexOrigin::Loaded);
        indexes.insert(name, Arc::new(RwLock::new(ix)));
    }
    for (name, reason) in why {
        let Some(spec) = meta.collections.get(&name) else {
            continue;
        };
        let building = Instant::now();
        let mut ix = VectorIndex::new(spec)?;
        for chunk in batches.remove(&name).unwrap_or_default().chunks(4096) {
            let refs: Vec<(u64, &[f32])> =
                chunk.iter().map(|(v, _, x)| (*v, x.as_slice())).collect();
            ix.add_many(&refs)?;
            for (vid, id, _) in chunk {
                ix.set_id(*vid, id);
            }
        }
        tracing::info!(group, collection = %name, vectors = ix.len(), outcome = "rebuilt",
            reason = %reason, ms = building.elapsed().as_millis() as u64,
            "vector index rebuilt from the stored vectors");
        report
            .collections
            .insert(name.clone(), IndexOrigin::Rebuilt(reason));
        indexes.insert(name, Arc::new(RwLock::new(ix)));
    }
    tracing::debug!(
        group,
        ms = started.elapsed().as_millis() as u64,
        "vector indexes ready"
    );
    Ok((indexes, report))
}

/// Copies a directory of files (hard links where possible).
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to).map_err(io_err)?;
    for entry in std::fs::read_dir(from).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if entry.file_type().map_err(io_err)?.is_dir() {
            copy_dir(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::{CollectionSpec, NewObject, WriteOp, WriteOutcome};

    fn once(seq: u64, acked_below: u64, cmd: Command) -> Command {
        Command::Once {
            client: 7,
            seq,
            part: 0,
            acked_below,
            now_ms: 1_000 + seq,
            cmd: Box::new(cmd),
        }
    }

    fn put(id: &str) -> Command {
        Command::Write {
            ops: vec![WriteOp::Put(NewObject::new("c", id, serde_json::json!({})))],
            atomic: true,
            now_ms: 1,
        }
    }

    fn outcome(r: CommandResult) -> WriteOutcome {
        match r {
            CommandResult::Write { mut results, .. } => results.pop().unwrap().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// 20,000 objects in `c` (4-d vectors, flat index): `p10` = i % 10,
    /// `p2` = i % 2, `price` = i, `tag` = "t{i % 7}"; `p10` indexed before
    /// the writes, `p2` and `price` after (filled from the data).
    fn indexed_rows() -> (tempfile::TempDir, Arc<ShardData>) {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        let index = |p: &str| Command::IndexProperty {
            collection: "c".into(),
            property: p.into(),
        };
        apply(&Command::CreateCollection(CollectionSpec::vectors("c", 4)));
        assert!(matches!(apply(&index("p10")), CommandResult::Done(Ok(0))));
        for chunk in (0..20_000u32).collect::<Vec<_>>().chunks(1000) {
            let ops = chunk
                .iter()
                .map(|&i| {
                    let props = serde_json::json!({"p10": i % 10, "p2": i % 2, "price": i, "tag": format!("t{}", i % 7)});
                    WriteOp::Put(NewObject::new("c", &format!("o{i}"), props).with_vector(row(i)))
                })
                .collect();
            apply(&Command::Write {
                ops,
                atomic: true,
                now_ms: 1,
            });
        }
        assert!(matches!(
            apply(&index("p2")),
            CommandResult::Done(Ok(20_000))
        ));
        assert!(matches!(
            apply(&index("price")),
            CommandResult::Done(Ok(20_000))
        ));
        (dir, data)
    }

    fn row(i: u32) -> Vec<f32> {
        let x = i as f32;
        vec![
            (x * 0.37).sin(),
            (x * 0.71).cos(),
            (i % 97) as f32 / 97.0,
            (i % 89) as f32 / 89.0,
        ]
    }

    /// (ids in order, rows read) of a filtered search for the 10 nearest.
    fn filtered(data: &ShardData, q: &[f32], filter: &str) -> (Vec<String>, u64) {
        let s = VectorSearch {
            collection: "c".into(),
            vector: q.to_vec(),
            k: 10,
            filter: Some(crate::proto::Filter::parse(filter).unwrap()),
        };
        let mut meter = WorkMeter::unbounded();
        let hits = data.vector_search(&s, false, &mut meter).unwrap();
        (hits.into_iter().map(|h| h.id).collect(), meter.touched())
    }

    /// The 10 nearest of the live objects passing `filter`, by brute force.
    fn nearest(
        live: &[u32],
        props: impl Fn(u32) -> serde_json::Value,
        q: &[f32],
        filter: &str,
    ) -> Vec<String> {
        let f = crate::proto::Filter::parse(filter).unwrap();
        let mut all: Vec<(f32, u32)> = live
            .iter()
            .filter(|&&i| f.matches(&crate::proto::Properties::from_json(props(i)).unwrap()))
            .map(|&i| {
                (
                    row(i).iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(),
                    i,
                )
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.iter().take(10).map(|(_, i)| format!("o{i}")).collect()
    }

    /// The 1 nearest object id to `v` in `c` (unfiltered).
    fn top(data: &ShardData, v: Vec<f32>) -> Option<String> {
        let s = VectorSearch {
            collection: "c".into(),
            vector: v,
            k: 1,
            filter: None,
        };
        let hits = data
            .vector_search(&s, false, &mut WorkMeter::unbounded())
            .unwrap();
        hits.into_iter().next().map(|h| h.id)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledged_vector_is_searchable_at_once_though_faiss_indexes_it_later() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: Command| data.apply(Some(&c), b"log-id", None).unwrap();
        let write = |op: WriteOp| Command::Write {
            ops: vec![op],
            atomic: true,
            now_ms: 1,
        };
        let v = |i: u32| vec![i as f32, 1.0, 0.0, 0.0];
        apply(Command::CreateCollection(CollectionSpec::vectors("c", 4)));
        let mut queued_after_an_ack = 0;
        for i in 0..300u32 {
            let obj = NewObject::new("c", &format!("o{i}"), serde_json::json!({}));
            apply(write(WriteOp::Put(obj.with_vector(v(i)))));
            queued_after_an_ack += usize::from(data.unindexed() > 0);
            assert_eq!(top(&data, v(i)).as_deref(), Some(format!("o{i}").as_str()));
            if i % 3 == 0 {
                apply(write(WriteOp::Delete {
                    id: format!("o{i}"),
                }));
                let after = top(&data, v(i));
                assert_ne!(
                    after,
                    Some(format!("o{i}")),
                    "a deleted vector is never found"
                );
            }
        }
        assert!(
            queued_after_an_ack > 0,
            "no write was acknowledged before its vector reached FAISS"
        );
        // A snapshot's index images reflect its applied log id exactly.
        for i in 300..600u32 {
            let obj = NewObject::new("c", &format!("o{i}"), serde_json::json!({}));
            apply(write(WriteOp::Put(obj.with_vector(v(i)))));
        }
        data.build_snapshot("s1", |_, _| Ok(((), Vec::new())))
            .unwrap();
        assert_eq!(data.unindexed(), 0);
        assert_eq!(data.vector_index("c").unwrap().read().len(), 600 - 100);
        let copy = tempfile::tempdir().unwrap();
        let b = ShardData::open(&StorageEnv::default(), copy.path()).unwrap();
        let report = b
            .install_snapshot(&dir.path().join("snapshots/s1"))
            .unwrap();
        assert_eq!(report.loaded(), vec!["c"], "{report:?}");
        assert_eq!(b.vector_index("c").unwrap().read().len(), 500);
    }

    #[test]
    fn only_small_unfiltered_searches_on_an_up_to_date_index_are_short() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: Command| data.apply(Some(&c), b"log-id", None).unwrap();
        let fill = |collection: &str, dim: usize, n: u32| {
            let ops = (0..n)
                .map(|i| {
                    let o = NewObject::new(
                        collection,
                        &format!("{collection}{i}"),
                        serde_json::json!({"p": i}),
                    );
                    WriteOp::Put(o.with_vector(vec![i as f32; dim]))
                })
                .collect();
            apply(Command::Write {
                ops,
                atomic: true,
                now_ms: 1,
            });
        };
        apply(Command::CreateCollection(CollectionSpec::vectors(
            "small", 4,
        )));
        apply(Command::CreateCollection(CollectionSpec::vectors(
            "big", 1000,
        )));
        fill("small", 4, 10);
        fill("big", 1000, 5000);
        let search = |collection: &str, dim: usize, k: u32, filter: Option<&str>| VectorSearch {
            collection: collection.into(),
            vector: vec![1.0; dim],
            k,
            filter: filter.map(|f| crate::proto::Filter::parse(f).unwrap()),
        };
        assert!(data.short_search(&search("small", 4, 10, None)));
        assert!(!data.short_search(&search("small", 4, 10, Some(r#"{"p": 1}"#))));
        assert!(!data.short_search(&search("small", 4, INLINE_SEARCH_K + 1, None)));
        // 5,000 × 1,000 components compared by a flat search.
        assert!(!data.short_search(&search("big", 1000, 10, None)));
        assert!(!data.short_search(&search("none", 4, 10, None)));
    }

    #[test]
    fn filtered_searches_match_a_brute_force_whichever_plan_runs() {
        let (_dir, data) = indexed_rows();
        let live: Vec<u32> = (0..20_000).collect();
        let props = |i: u32| serde_json::json!({"p10": i % 10, "p2": i % 2, "price": i, "tag": format!("t{}", i % 7)});
        // (filter, most rows it may read: which plan ran)
        let cases = [
            // Allow-list: 2,000 candidates from the index. The filter is all
            // indexed: they are scored from FAISS, no object read.
            (r#"{"p10": 3}"#, 2_000),
            // Not all indexed: each candidate's object is read too.
            (r#"{"p10": {"$in": [1, 2]}, "tag": "t3"}"#, 8_001),
            (
                r#"{"price": {"$gte": 100, "$lt": 150}, "p10": {"$ne": 4}}"#,
                101,
            ),
            // Post-filter: 10,000 pass p2, so the count stops at 4,097.
            (r#"{"p2": 1}"#, 5_000),
            (r#"{"p2": 0, "tag": "t5"}"#, 5_000),
            // Nothing indexed narrows it: every row.
            (r#"{"tag": "t2"}"#, u64::MAX),
        ];
        for q in [[0.3, -0.2, 0.5, 0.1], [-0.9, 0.4, 0.05, 0.8]] {
            for (filter, most) in cases {
                let (got, read) = filtered(&data, &q, filter);
                assert_eq!(got, nearest(&live, props, &q, filter), "{filter}");
                assert!(
                    read <= most,
                    "{filter}: read {read} rows, expected at most {most}"
                );
                if most == u64::MAX {
                    assert!(read >= 20_000, "{filter}: read {read}");
                }
            }
        }
        // A broad plan counted lately is not counted again.
        let q = [0.1, 0.2, 0.3, 0.4];
        let (first, read_first) = filtered(&data, &q, r#"{"p2": 1, "price": {"$gte": 1}}"#);
        let counted = Instant::now();
        let (again, read_again) = filtered(&data, &q, r#"{"p2": 1, "price": {"$gte": 1}}"#);
        assert_eq!(first, again);
        if counted.elapsed() < BROAD_TTL {
            assert!(
                read_again + ALLOW_LIST_MAX as u64 <= read_first,
                "read {read_first} rows, then {read_again}"
            );
        }
    }

    #[test]
    fn property_index_keys_count_toward_storage_bytes_and_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: Command| data.apply(Some(&c), b"log-id", None).unwrap();
        let write = |ops: Vec<WriteOp>| Command::Write {
            ops,
            atomic: true,
            now_ms: 1,
        };
        let index = |p: &str| Command::IndexProperty {
            collection: "c".into(),
            property: p.into(),
        };
        let key_bytes = |id: &str, v: serde_json::Value| -> u64 {
            let props = crate::proto::Properties::from_json(v).unwrap();
            storage::props::keys_of("c", id, &props, &["p".to_string()])
                .map(|k| k.len() as u64)
                .sum()
        };
        apply(Command::CreateCollection(CollectionSpec::plain("c")));
        let puts = (0..10)
            .map(|i| {
                WriteOp::Put(NewObject::new(
                    "c",
                    &format!("o{i}"),
                    serde_json::json!({"p": format!("v{i}")}),
                ))
            })
            .collect();
        apply(write(puts));
        let plain = data.usage().bytes;
        let keys: u64 = (0..10)
            .map(|i| key_bytes(&format!("o{i}"), serde_json::json!({"p": format!("v{i}")})))
            .sum();
        // An index whose keys would pass the storage limit is refused whole.
        apply(Command::SetLimits(StorageLimitConfig {
            max_storage_bytes: plain + keys - 1,
            max_objects: 100,
            max_object_size: 1 << 20,
            max_vectors: 100,
            max_vector_dimensions: 16,
            warning_threshold: 1.0,
            hard_limits: true,
        }));
        match apply(index("p")) {
            CommandResult::Done(Err(Error::LimitExceeded(l))) => {
                assert_eq!(l.kind, crate::proto::LimitKind::StorageBytes)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(data.usage().bytes, plain);
        assert!(data.meta.read().indexed.get("c").is_none());
        let mut roomy = data.limits().unwrap();
        roomy.max_storage_bytes = 1 << 30;
        apply(Command::SetLimits(roomy));
        assert!(matches!(apply(index("p")), CommandResult::Done(Ok(10))));
        assert_eq!(data.usage().bytes, plain + keys);
        drop(data);
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        assert_eq!(data.usage().bytes, plain + keys, "saved with the index");
        let apply = |c: Command| data.apply(Some(&c), b"log-id", None).unwrap();
        // An update moves the count by the keys' difference; deletes give
        // every byte back.
        let longer = serde_json::json!({"p": "a much longer value than before"});
        apply(write(vec![WriteOp::Put(NewObject::new("c", "o3", longer))]));
        assert!(data.usage().bytes > plain + keys);
        let deletes = (0..10)
            .map(|i| WriteOp::Delete {
                id: format!("o{i}"),
            })
            .collect();
        apply(write(deletes));
        assert_eq!(data.usage().bytes, 0);
    }

    #[test]
    fn a_batch_search_answers_each_search_as_it_would_alone() {
        let (_dir, data) = indexed_rows();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        apply(&Command::CreateCollection(CollectionSpec::vectors("d", 4)));
        let mut ops: Vec<WriteOp> = (0..300u32)
            .map(|i| {
                WriteOp::Put(
                    NewObject::new("d", &format!("d{i}"), serde_json::json!({"i": i}))
                        .with_vector(row(i * 3)),
                )
            })
            .collect();
        // Deleted objects of `c`: neither answer may hold them.
        ops.extend((0..200).map(|i| WriteOp::Delete {
            id: format!("o{}", i * 7),
        }));
        apply(&Command::Write {
            ops,
            atomic: true,
            now_ms: 2,
        });
        let search = |c: &str, i: u32, k: u32, filter: Option<&str>| VectorSearch {
            collection: c.into(),
            vector: row(i * 11 + 1),
            k,
            filter: filter.map(|f| crate::proto::Filter::parse(f).unwrap()),
        };
        let searches = vec![
            search("c", 1, 10, None),
            search("d", 2, 3, None),
            search("c", 3, 1, None),
            search("c", 4, 10, Some(r#"{"p10": 3}"#)),
            search("d", 5, 20, None),
            search("c", 6, 25, None),
            search("c", 7, 10, Some(r#"{"tag": "t2"}"#)),
        ];
        for with_objects in [false, true] {
            let mut meter = WorkMeter::unbounded();
            let got = data
                .vector_search_batch(&searches, with_objects, &mut meter)
                .unwrap();
            assert_eq!(got.len(), searches.len());
            for (s, hits) in searches.iter().zip(&got) {
                let alone = data
                    .vector_search(s, with_objects, &mut WorkMeter::unbounded())
                    .unwrap();
                assert_eq!(hits, &alone, "{s:?}");
                assert_eq!(hits.len(), s.k as usize);
                assert!(hits.iter().all(|h| h.object.is_some() == with_objects));
            }
            // The filtered searches' reads are counted on the one meter.
            assert!(meter.touched() > 0);
        }
        assert!(data
            .vector_search_batch(&[], false, &mut WorkMeter::unbounded())
            .unwrap()
            .is_empty());
        // One bad search fails the batch.
        let mut bad = searches.clone();
        bad.push(search("nope", 1, 1, None));
        assert!(matches!(
            data.vector_search_batch(&bad, false, &mut WorkMeter::unbounded()),
            Err(Error::NotFound { .. })
        ));
        bad.pop();
        bad.push(VectorSearch {
            vector: vec![1.0; 3],
            ..search("d", 1, 1, None)
        });
        assert!(matches!(
            data.vector_search_batch(&bad, false, &mut WorkMeter::unbounded()),
            Err(Error::DimensionMismatch { .. })
        ));
        // A small complexity limit stops the filtered reads.
        assert!(matches!(
            data.vector_search_batch(&searches, false, &mut WorkMeter::new(200, 0)),
            Err(Error::LimitExceeded(_))
        ));
    }

    #[test]
    fn a_dropped_index_loses_its_keys_and_their_bytes_and_stays_dropped() {
        let (dir, data) = indexed_rows();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        let drop_index = |p: &str| Command::DropPropertyIndex {
            collection: "c".into(),
            property: p.into(),
        };
        let keys = |data: &ShardData, p: &str| {
            let (mut n, mut bytes) = (0u64, 0u64);
            data.store()
                .scan_prefix(
                    storage::CF_PROPS,
                    &storage::props::property_prefix("c", p),
                    |k, v| {
                        n += 1;
                        bytes += (k.len() + v.len()) as u64;
                        Ok(true)
                    },
                )
                .unwrap();
            (n, bytes)
        };
        let q = row(5);
        let (exact, read_indexed) = filtered(&data, &q, r#"{"p10": 3}"#);
        let before = data.usage().bytes;
        let (n, p10_bytes) = keys(&data, "p10");
        assert_eq!(n, 20_000);
        let p2_before = keys(&data, "p2");
        assert!(matches!(
            apply(&drop_index("p10")),
            CommandResult::Done(Ok(20_000))
        ));
        assert_eq!(keys(&data, "p10"), (0, 0));
        // The neighbouring indexes keep every key ("p2" sorts right after
        // "p10"'s range; "price" shares its first letter).
        assert_eq!(keys(&data, "p2"), p2_before);
        assert_eq!(keys(&data, "price").0, 20_000);
        assert_eq!(data.usage().bytes, before - p10_bytes);
        assert_eq!(
            data.property_indexes(None)
                .into_iter()
                .map(|i| i.property)
                .collect::<Vec<_>>(),
            ["p2", "price"]
        );
        // The same answer, now from reading the collection.
        let (got, read_all) = filtered(&data, &q, r#"{"p10": 3}"#);
        assert_eq!(got, exact);
        assert!(
            read_all >= 20_000 && read_indexed < 20_000,
            "{read_indexed} then {read_all}"
        );
        // Again: not found, and nothing changes.
        assert!(matches!(
            apply(&drop_index("p10")),
            CommandResult::Done(Err(Error::NotFound { .. }))
        ));
        assert!(matches!(
            data.apply(
                Some(&Command::DropPropertyIndex {
                    collection: "nope".into(),
                    property: "p2".into()
                }),
                b"log-id",
                None
            ),
            Ok(CommandResult::Done(Err(Error::NotFound { .. })))
        ));
        assert_eq!(data.usage().bytes, before - p10_bytes);
        // Writes after the drop keep no key for it, and every byte is
        // given back when the objects go.
        drop(data);
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        assert_eq!(data.property_indexes(Some("c")).len(), 2);
        // The count was saved with the drop.
        assert_eq!(data.usage().bytes, before - p10_bytes);
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        apply(&Command::Write {
            ops: vec![WriteOp::Put(
                NewObject::new("c", "o1", serde_json::json!({"p10": 7})).with_vector(row(1)),
            )],
            atomic: true,
            now_ms: 2,
        });
        assert_eq!(keys(&data, "p10"), (0, 0));
        for chunk in (0..20_000u32).collect::<Vec<_>>().chunks(1000) {
            let ops = chunk
                .iter()
                .map(|&i| WriteOp::Delete {
                    id: format!("o{i}"),
                })
                .collect();
            apply(&Command::Write {
                ops,
                atomic: true,
                now_ms: 3,
            });
        }
        assert_eq!(data.usage().bytes, 0);
        assert_eq!((keys(&data, "p2").0, keys(&data, "price").0), (0, 0));
    }

    #[test]
    fn property_indexes_follow_updates_deletes_and_a_reopen() {
        let (dir, data) = indexed_rows();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        let one = |op: WriteOp| Command::Write {
            ops: vec![op],
            atomic: true,
            now_ms: 2,
        };
        apply(&one(WriteOp::Update {
            id: "o5".into(),
            properties: crate::proto::Properties::from_json(serde_json::json!({"p10": 11}))
                .unwrap(),
            vector: None,
        }));
        apply(&one(WriteOp::Delete { id: "o6".into() }));
        apply(&one(WriteOp::Put(
            NewObject::new("c", "o7", serde_json::json!({"p10": 11})).with_vector(row(7)),
        )));
        // The index keys themselves (a search re-checks each candidate's
        // properties, so it would hide a stale key).
        let listed = |f: &str| {
            let paths = data.meta.read().indexed["c"].clone();
            let plan = storage::props::plan(&crate::proto::Filter::parse(f).unwrap(), &paths)
                .plans
                .remove(0);
            let mut ids = Vec::new();
            storage::props::scan(&data.store(), "c", &plan, |id, _| {
                ids.push(id.to_string());
                Ok(true)
            })
            .unwrap();
            ids
        };
        assert_eq!(listed(r#"{"p10": 11}"#), ["o5", "o7"]);
        for (f, gone) in [
            (r#"{"p10": 5}"#, "o5"),
            (r#"{"p10": 6}"#, "o6"),
            (r#"{"p2": 1}"#, "o7"),
            (r#"{"p2": 0}"#, "o6"),
        ] {
            let ids = listed(f);
            assert!(
                !ids.contains(&gone.to_string()) && ids.len() >= 1998,
                "{f}: {} ids",
                ids.len()
            );
        }
        assert_eq!(listed(r#"{"price": {"$gte": 5, "$lte": 8}}"#), ["o5", "o8"]);
        let q = row(5);
        let ids = |f: &str| filtered(&data, &q, f).0;
        assert_eq!(ids(r#"{"p10": 11}"#), ["o5", "o7"]);
        assert!(!ids(r#"{"p10": 5}"#).contains(&"o5".to_string()));
        assert!(!ids(r#"{"p10": 6}"#).contains(&"o6".to_string()));
        // o7 lost p2 and price: the indexes on them no longer list it.
        assert!(!ids(r#"{"price": {"$gte": 7, "$lte": 7}}"#).contains(&"o7".to_string()));
        drop(data);
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let (got, read) = filtered(&data, &q, r#"{"p10": 11}"#);
        // Two index keys read; the filter is all indexed, so both are
        // scored from FAISS without reading their objects.
        assert_eq!((got, read), (vec!["o5".to_string(), "o7".to_string()], 2));
        // Bad paths and unknown collections are refused; nothing changes.
        for (c, p) in [("c", "a..b"), ("c", "a b"), ("nope", "p")] {
            let r = data.apply(
                Some(&Command::IndexProperty {
                    collection: c.into(),
                    property: p.into(),
                }),
                b"log-id",
                None,
            );
            assert!(
                matches!(r, Ok(CommandResult::Done(Err(_)))),
                "{c}.{p}: {r:?}"
            );
        }
    }

    #[test]
    fn only_small_writes_without_vectors_or_cascades_are_light() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        apply(&Command::CreateCollection(CollectionSpec::plain("c")));
        apply(&Command::CreateCollection(CollectionSpec::vectors("v", 2)));
        let write = |ops: Vec<WriteOp>| Command::Write {
            ops,
            atomic: true,
            now_ms: 1,
        };
        let plain = |id: &str| WriteOp::Put(NewObject::new("c", id, serde_json::json!({})));
        assert!(data.light(&put("a")));
        assert!(data.light(&once(1, 0, put("a"))));
        assert!(data.light(&write(
            (0..LIGHT_OPS).map(|i| plain(&i.to_string())).collect()
        )));
        assert!(!data.light(&write(
            (0..=LIGHT_OPS).map(|i| plain(&i.to_string())).collect()
        )));
        // A vector (even none, into a vector collection: it may drop one).
        let v = NewObject::new("v", "x", serde_json::json!({}));
        assert!(!data.light(&write(vec![WriteOp::Put(v.clone())])));
        assert!(!data.light(&write(vec![WriteOp::Put(v.with_vector(vec![1.0, 2.0]))])));
        assert!(!data.light(&write(vec![WriteOp::Put(NewObject::new(
            "nope",
            "x",
            serde_json::json!({})
        ))])));
        // A delete cascades to the object's edges.
        assert!(!data.light(&write(vec![WriteOp::Delete { id: "a".into() }])));
        assert!(!data.light(&Command::CreateCollection(CollectionSpec::plain("d"))));
        assert!(!data.light(&Command::PurgeOlderThan {
            collection: None,
            cutoff_ms: 1,
            max: 10
        }));
    }

    fn complexity(r: Result<impl std::fmt::Debug, Error>) -> (u64, u64, u64) {
        match r {
            Err(Error::LimitExceeded(l)) if l.kind == crate::proto::LimitKind::Complexity => {
                (l.limit, l.current, l.requested)
            }
            other => panic!("expected a complexity refusal, got {other:?}"),
        }
    }

    /// A shard with collection `c` of 100 objects `o00`..`o99` (`n` = 0..99,
    /// a 2-d vector each) and 300 edges from `o00`: to every other object
    /// under "a", then under "b" to `o01`..`o99`, then under "c" to `o01`..`o99`.
    fn hundred_rows() -> (tempfile::TempDir, Arc<ShardData>) {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        apply(&Command::CreateCollection(CollectionSpec::vectors("c", 2)));
        let objects = (0..100)
            .map(|i| {
                let o = NewObject::new("c", &format!("o{i:02}"), serde_json::json!({"n": i}));
                WriteOp::Put(o.with_vector(vec![i as f32, 1.0]))
            })
            .collect();
        let edges = ["a", "b", "c"]
            .iter()
            .flat_map(|l| {
                (1..100).map(move |i| {
                    WriteOp::PutEdge(crate::proto::Edge {
                        from: "o00".into(),
                        label: l.to_string(),
                        to: format!("o{i:02}"),
                        properties: Default::default(),
                    })
                })
            })
            .collect();
        for ops in [objects, edges] {
            apply(&Command::Write {
                ops,
                atomic: true,
                now_ms: 1,
            });
        }
        (dir, data)
    }

    #[test]
    fn a_filtered_query_that_reads_more_rows_than_the_complexity_limit_allows_is_refused() {
        let (_dir, data) = hundred_rows();
        let q = Query {
            collection: "c".into(),
            filter: Some(crate::proto::Filter::parse(r#"{"n": {"$gte": 95}}"#).unwrap()),
            limit: 10,
        };
        // Estimate 1 + 10·1 + 10/10 = 12 passes a limit of 20; the scan
        // reads all 100 rows for 5 matches: 11 + 100/10 = 21.
        let r = data.query(&q, &mut WorkMeter::for_query(20, &q));
        assert_eq!(complexity(r), (20, 20, 1));
        let mut meter = WorkMeter::for_query(21, &q);
        assert_eq!(data.query(&q, &mut meter).unwrap().len(), 5);
        assert_eq!((meter.touched(), meter.spent()), (100, 21));
        // Unfiltered, the same limit reads only the 10 rows it returns.
        let all = Query {
            filter: None,
            ..q.clone()
        };
        let mut meter = WorkMeter::for_query(2, &all);
        assert_eq!(data.query(&all, &mut meter).unwrap().len(), 10);
        assert_eq!(meter.touched(), 10);
        // A scan reads what it returns too.
        let r = data.scan("c", None, 100, &mut WorkMeter::for_scan(10));
        assert_eq!(complexity(r), (10, 10, 1));
        assert_eq!(
            data.scan("c", None, 100, &mut WorkMeter::for_scan(11))
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn a_filtered_search_pays_for_every_row_it_scores() {
        let (_dir, data) = hundred_rows();
        let s = VectorSearch {
            collection: "c".into(),
            vector: vec![99.0, 1.0],
            k: 3,
            filter: Some(crate::proto::Filter::parse(r#"{"n": {"$lt": 50}}"#).unwrap()),
        };
        // Base k + 2/16 + 10 = 13, plus 100 rows / 10 = 23.
        let r = data.vector_search(&s, false, &mut WorkMeter::for_search(22, &s));
        assert_eq!(complexity(r), (22, 22, 1));
        let hits = data
            .vector_search(&s, false, &mut WorkMeter::for_search(23, &s))
            .unwrap();
        let ids: Vec<_> = hits.iter().map(|h| h.id.as_str()).collect();
        assert_eq!(ids, ["o49", "o48", "o47"]);
        // Unfiltered, the index answers: only the base.
        let s = VectorSearch { filter: None, ..s };
        let mut meter = WorkMeter::for_search(3, &s);
        assert_eq!(data.vector_search(&s, false, &mut meter).unwrap().len(), 3);
        assert_eq!(meter.touched(), 0);
    }

    #[test]
    fn a_traversal_from_a_node_with_many_edges_stops_at_the_complexity_limit() {
        let (_dir, data) = hundred_rows();
        // Only label "c" leads anywhere: the 198 edges under "a" and "b"
        // are read for nothing. Base 10·1 + 5·1 = 15; 297 edges read = 29;
        // 5 nodes returned = 5: 49 in all.
        let t = Traverse {
            start: "o00".into(),
            direction: Direction::Out,
            labels: vec!["c".into()],
            max_depth: 1,
            max_nodes: 5,
        };
        let r = data.traverse(&t, &mut WorkMeter::for_traverse(48, &t));
        assert_eq!(complexity(r), (48, 48, 1));
        let mut meter = WorkMeter::for_traverse(49, &t);
        assert_eq!(data.traverse(&t, &mut meter).unwrap().len(), 5);
        assert_eq!(meter.spent(), 49);
    }

    #[test]
    fn once_applies_once_forgets_acknowledged_results_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        apply(&once(
            1,
            1,
            Command::CreateCollection(CollectionSpec::plain("c")),
        ));
        assert_eq!(outcome(apply(&once(2, 1, put("x")))), WriteOutcome::Created);
        // The retry answers as the first time did and writes nothing.
        let usage = data.usage();
        assert_eq!(outcome(apply(&once(2, 1, put("x")))), WriteOutcome::Created);
        assert_eq!(data.usage(), usage);
        // Sequence 3 acknowledges 1 and 2: their results are forgotten,
        // and a late copy of 2 (a forward that sat in a stopped node) is
        // refused and writes nothing: applied again, it would undo every
        // write to "x" made since.
        assert_eq!(outcome(apply(&once(3, 3, put("y")))), WriteOutcome::Created);
        let newer = Command::Write {
            ops: vec![WriteOp::Put(NewObject::new(
                "c",
                "x",
                serde_json::json!({"v": 2}),
            ))],
            atomic: true,
            now_ms: 1,
        };
        assert_eq!(outcome(apply(&once(4, 4, newer))), WriteOutcome::Updated);
        let late = apply(&once(2, 4, put("x")));
        assert!(
            matches!(
                &late,
                CommandResult::Done(Err(Error::InvalidArgument { .. }))
            ),
            "{late:?}"
        );
        let x = data.get("x").unwrap().unwrap();
        assert_eq!(
            x.properties.0.get("v"),
            Some(&serde_json::json!(2)),
            "the late copy undid a write"
        );
        // Expiry forgets what is left: sequence 4 and the client's
        // forgotten-below mark.
        let r = apply(&Command::ExpireOnce {
            before_ms: u64::MAX,
            max: 100,
        });
        assert_eq!(r, CommandResult::Done(Ok(2)));
        assert_eq!(
            apply(&Command::ExpireOnce {
                before_ms: u64::MAX,
                max: 100
            }),
            CommandResult::Done(Ok(0))
        );
        // A nested Once is refused.
        let r = apply(&once(9, 3, once(10, 3, put("z"))));
        assert!(matches!(r, CommandResult::Done(Err(_))), "{r:?}");
    }
}

#[cfg(test)]
#[path = "data_snapshot_test.rs"]
mod snapshot_tests;
