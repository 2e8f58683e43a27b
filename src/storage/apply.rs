//! Deterministic application of a [`Command`] to a shard.
//!
//! Storage limits are enforced here, against the exact counters in the
//! shard's meta, so concurrent writers can never slip past a hard limit
//! together, and every replica agrees. Each op is fully checked before it
//! changes the in-memory overlay, so a failed op leaves nothing behind; an
//! atomic write that fails discards the whole overlay.

use std::collections::{BTreeMap, HashMap};

use crate::proto::{
    CollectionSpec, Edge, Error, LimitExceeded, LimitKind, NewObject, StorageUsage, WriteOp,
    WriteOutcome,
};
use crate::tenant::{validate_name, StorageLimitConfig};

use super::command::{Command, CommandResult, OnceLow, OnceRecord, RegOp};
use super::props;
use super::store::{
    edge_in_key, edge_out_key, encode_value, member_key, meta_key, Batch, EdgeRecord, ObjectRecord,
    ShardStore, CF_EDGES, CF_MEMBERS, CF_META, CF_OBJECTS, CF_PROPS, CF_VIDS,
};

/// Longest object id.
pub const MAX_OBJECT_ID_LEN: usize = 128;

/// The in-memory copy of a shard's meta that apply reads and changes.
#[derive(Debug, Clone)]
pub struct ShardMeta {
    /// Exact usage.
    pub usage: StorageUsage,
    /// Limits in force.
    pub limits: Option<StorageLimitConfig>,
    /// Collections by name.
    pub collections: std::sync::Arc<BTreeMap<String, CollectionSpec>>,
    /// Next FAISS label.
    pub next_vid: u64,
    /// Indexed property paths by collection (see `storage::props`).
    pub indexed: std::sync::Arc<BTreeMap<String, Vec<String>>>,
}

impl ShardMeta {
    /// Loads the meta of a store.
    pub fn load(store: &ShardStore) -> Result<ShardMeta, Error> {
        let usage = store.get(CF_META, meta_key::USAGE)?.unwrap_or_default();
        let limits = store.get(CF_META, meta_key::LIMITS)?;
        let next_vid = store.get(CF_META, meta_key::NEXT_VID)?.unwrap_or(1);
        let mut collections = BTreeMap::new();
        store.scan_prefix(CF_META, meta_key::COLLECTION_PREFIX, |_, v| {
            let spec: CollectionSpec = super::store::decode_value(v)?;
            collections.insert(spec.name.clone(), spec);
            Ok(true)
        })?;
        let mut indexed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        store.scan_prefix(CF_META, meta_key::PROP_INDEX_PREFIX, |k, _| {
            if let Some((c, p)) = props::parse_declared(k) {
                indexed.entry(c).or_default().push(p);
            }
            Ok(true)
        })?;
        Ok(ShardMeta {
            usage,
            limits,
            collections: std::sync::Arc::new(collections),
            next_vid,
            indexed: std::sync::Arc::new(indexed),
        })
    }

    /// The property indexes, of `collection` or of all, sorted by
    /// collection and property.
    pub fn property_indexes(&self, collection: Option<&str>) -> Vec<crate::proto::PropertyIndex> {
        let mut out: Vec<_> = self
            .indexed
            .iter()
            .filter(|(c, _)| collection.is_none_or(|only| only == c.as_str()))
            .flat_map(|(c, paths)| {
                paths.iter().map(|p| crate::proto::PropertyIndex {
                    collection: c.clone(),
                    property: p.clone(),
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// A change the vector indexes must make once the batch is written.
#[derive(Debug, Clone, PartialEq)]
pub enum VectorChange {
    /// Add a vector under a label.
    Add {
        /// Collection.
        collection: String,
        /// FAISS label.
        vid: u64,
        /// The object id it maps back to.
        id: String,
        /// The vector.
        vector: Vec<f32>,
    },
    /// Remove a label.
    Remove {
        /// Collection.
        collection: String,
        /// FAISS label.
        vid: u64,
    },
}

/// The effects of one applied command.
#[derive(Debug)]
pub struct Applied {
    /// The result for the proposer.
    pub result: CommandResult,
    /// Changes for the vector indexes (empty when the command failed).
    pub vectors: Vec<VectorChange>,
    /// Collections created or dropped.
    pub collections_changed: bool,
    /// The new meta (to install after the batch is written).
    pub meta: ShardMeta,
}

/// Above this many sequences at once, forgetting uses a range delete
/// instead of point deletes.
const MAX_ONCE_POINT_DELETES: u64 = 1024;

/// The sequence below which `client`'s results are forgotten: every write
/// of it below this mark was answered.
pub fn once_low(store: &ShardStore, client: u64) -> Result<u64, Error> {
    Ok(store
        .get::<OnceLow>(CF_META, &meta_key::once_low(client))?
        .map_or(0, |l| l.below))
}

/// Forgets a client's exactly-once results below `below` (the client has
/// their answers): point deletes of the sequences since its last mark
/// `low` (read by the caller), so no write ever iterates over earlier
/// deletions.
fn forget_acknowledged(
    batch: &mut Batch<'_>,
    client: u64,
    low: u64,
    below: u64,
    now_ms: u64,
) -> Result<(), Error> {
    let low_key = meta_key::once_low(client);
    if below <= low {
        return Ok(());
    }
    if below - low <= MAX_ONCE_POINT_DELETES {
        for s in low..below {
            batch.delete(CF_META, &meta_key::once(client, s))?;
        }
    } else {
        batch.delete_range(
            CF_META,
            &meta_key::once(client, low),
            &meta_key::once(client, below),
        )?;
    }
    batch.put(
        CF_META,
        &low_key,
        &OnceLow {
            below,
            at_ms: now_ms,
        },
    )
}

/// Bytes an object counts for.
pub fn object_size(id: &str, rec: &ObjectRecord) -> Result<u64, Error> {
    Ok((id.len() + encode_value(rec)?.len()) as u64)
}

/// Bytes an edge counts for.
pub fn edge_size(from: &str, label: &str, to: &str, rec: &EdgeRecord) -> Result<u64, Error> {
    Ok((from.len() + label.len() + to.len() + 2 + encode_value(rec)?.len()) as u64)
}

/// Checks a vector against a collection (shared by the fail-fast pre-check
/// and by apply).
pub fn check_vector(spec: &CollectionSpec, v: &[f32]) -> Result<(), Error> {
    let Some(dim) = spec.dimension else {
        return Err(Error::invalid(
            "vector",
            format!("collection {} has no vectors", spec.name),
        ));
    };
    if v.len() != dim as usize {
        return Err(Error::DimensionMismatch {
            collection: spec.name.clone(),
            expected: dim,
            got: v.len() as u32,
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid("vector", "contains NaN or infinity"));
    }
    Ok(())
}

/// Checks a collection spec's shape and its dimension against the limits.
pub fn check_collection(spec: &CollectionSpec) -> Result<(), Error> {
    validate_name("collection", &spec.name, 64)?;
    if spec.name.contains(['.', ':']) {
        return Err(Error::invalid(
            "collection",
            "only A-Z, a-z, 0-9, '_' and '-' are allowed",
        ));
    }
    if spec.dimension == Some(0) {
        return Err(Error::invalid("dimension", "must be at least 1"));
    }
    if let crate::proto::IndexKind::Hnsw { m, ef_search } = spec.index {
        if !(2..=256).contains(&m) || !(1..=4096).contains(&ef_search) {
            return Err(Error::invalid(
                "index",
                "hnsw needs m in 2..=256 and ef_search in 1..=4096",
            ));
        }
    }
    if let crate::proto::IndexKind::Ivf { nlist, nprobe } = spec.index {
        if !(1..=65_536).contains(&nlist) || nprobe == 0 || nprobe > nlist {
            return Err(Error::invalid(
                "index",
                "ivf needs nlist in 1..=65536 and nprobe in 1..=nlist",
            ));
        }
    }
    Ok(())
}

struct Overlay<'s> {
    store: &'s ShardStore,
    meta: ShardMeta,
    /// Objects as stored before this command (read once).
    originals: std::cell::RefCell<HashMap<String, Option<ObjectRecord>>>,
    objects: HashMap<String, Option<ObjectRecord>>,
    edges: BTreeMap<(String, String, String), Option<EdgeRecord>>,
    vectors: Vec<VectorChange>,
    warnings: Vec<String>,
}

impl<'s> Overlay<'s> {
    fn object(&self, id: &str) -> Result<Option<ObjectRecord>, Error> {
        match self.objects.get(id) {
            Some(o) => Ok(o.clone()),
            None => self.original(id),
        }
    }

    fn original(&self, id: &str) -> Result<Option<ObjectRecord>, Error> {
        if let Some(o) = self.originals.borrow().get(id) {
            return Ok(o.clone());
        }
        let o = self.store.object(id)?;
        self.originals
            .borrow_mut()
            .insert(id.to_string(), o.clone());
        Ok(o)
    }

    fn edge(&self, from: &str, label: &str, to: &str) -> Result<Option<EdgeRecord>, Error> {
        let k = (from.to_string(), label.to_string(), to.to_string());
        match self.edges.get(&k) {
            Some(e) => Ok(e.clone()),
            None => self.store.get(CF_EDGES, &edge_out_key(from, label, to)),
        }
    }

    /// Every edge touching `id`, as (from, label, to).
    fn edges_of(&self, id: &str) -> Result<Vec<(String, String, String)>, Error> {
        let mut found = std::collections::BTreeSet::new();
        for (dir, prefix) in [
            ('o', [b"o", id.as_bytes(), b"\0"].concat()),
            ('i', [b"i", id.as_bytes(), b"\0"].concat()),
        ] {
            self.store.scan_prefix(CF_EDGES, &prefix, |k, _| {
                let rest = &k[prefix.len()..];
                if let Some(pos) = rest.iter().position(|&b| b == 0) {
                    let label = String::from_utf8_lossy(&rest[..pos]).into_owned();
                    let other = String::from_utf8_lossy(&rest[pos + 1..]).into_owned();
                    found.insert(if dir == 'o' {
                        (id.to_string(), label, other)
                    } else {
                        (other, label, id.to_string())
                    });
                }
                Ok(true)
            })?;
        }
        for (k, v) in &self.edges {
            if k.0 == id || k.2 == id {
                if v.is_some() {
                    found.insert(k.clone());
                } else {
                    found.remove(k);
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    fn limits(&self) -> Option<&StorageLimitConfig> {
        self.meta.limits.as_ref()
    }

    /// Bytes of the property index keys of object `id` as `rec` (keys and
    /// values), under the collection's indexes now.
    fn index_bytes(&self, id: &str, rec: &ObjectRecord) -> u64 {
        let Some(paths) = self.meta.indexed.get(&rec.collection) else {
            return 0;
        };
        let value = props::key_value(rec.vector.as_ref().map(|_| rec.vid)).len();
        props::keys_of(&rec.collection, id, &rec.properties, paths)
            .map(|k| (k.len() + value) as u64)
            .sum()
    }

    /// Bytes object `id` as `rec` counts toward the tenant's storage: the
    /// object and its property index keys.
    fn stored_size(&self, id: &str, rec: &ObjectRecord) -> Result<u64, Error> {
        Ok(object_size(id, rec)? + self.index_bytes(id, rec))
    }

    /// Checks that growing a counter from `before` to `after` is allowed;
    /// records a warning when it crosses the threshold or a soft limit.
    fn check_growth(
        &mut self,
        kind: LimitKind,
        before: u64,
        after: u64,
        requested: u64,
    ) -> Result<(), Error> {
        let Some(l) = self.limits() else {
            return Ok(());
        };
        let limit = match kind {
            LimitKind::StorageBytes => l.max_storage_bytes,
            LimitKind::Objects => l.max_objects,
            LimitKind::Vectors => l.max_vectors,
            LimitKind::ObjectSize => l.max_object_size,
            _ => return Ok(()),
        };
        let (hard, threshold) = (l.hard_limits, l.warning_threshold);
        if after > before || kind == LimitKind::ObjectSize {
            if after > limit {
                if hard {
                    return Err(Error::LimitExceeded(LimitExceeded {
                        kind,
                        limit,
                        current: before,
                        requested,
                        retry_after_ms: None,
                    }));
                }
                self.warnings.push(format!(
                    "soft limit {} exceeded: {after} > {limit} (hard_limits = false)",
                    kind.config_key()
                ));
                return Ok(());
            }
            if kind != LimitKind::ObjectSize {
                let mark = (limit as f64 * threshold).ceil() as u64;
                if before < mark && after >= mark {
                    self.warnings.push(format!(
                        "{} at {:.0}% of its limit ({after}/{limit}, warning_threshold {threshold})",
                        kind.config_key(),
                        after as f64 * 100.0 / limit.max(1) as f64
                    ));
                }
            }
        }
        Ok(())
    }

    fn apply_op(&mut self, op: &WriteOp, now_ms: u64) -> Result<WriteOutcome, Error> {
        match op {
            WriteOp::Put(obj) => self.put(obj, now_ms),
            WriteOp::Update {
                id,
                properties,
                vector,
            } => {
                let Some(old) = self.object(id)? else {
                    return Err(Error::not_found("object", id));
                };
                let mut merged = old.properties.clone();
                for (k, v) in &properties.0 {
                    merged.0.insert(k.clone(), v.clone());
                }
                let new = NewObject {
                    id: id.clone(),
                    collection: old.collection.clone(),
                    properties: merged,
                    vector: vector.clone().or(old.vector.clone()),
                };
                self.put(&new, now_ms)
            }
            WriteOp::Delete { id } => self.delete(id),
            WriteOp::PutEdge(e) => self.put_edge(e),
            WriteOp::DeleteEdge { from, label, to } => {
                let Some(old) = self.edge(from, label, to)? else {
                    return Ok(WriteOutcome::Deleted { existed: false });
                };
                let size = edge_size(from, label, to, &old)?;
                self.meta.usage.bytes = self.meta.usage.bytes.saturating_sub(size);
                self.meta.usage.edges = self.meta.usage.edges.saturating_sub(1);
                self.edges
                    .insert((from.clone(), label.clone(), to.clone()), None);
                Ok(WriteOutcome::Deleted { existed: true })
            }
        }
    }

    fn put(&mut self, obj: &NewObject, now_ms: u64) -> Result<WriteOutcome, Error> {
        self.put_stamped(obj, now_ms, None)
    }

    /// A put; `stamps` (`created_at`, `updated_at`) replace the usual
    /// ones (kept `created_at`, `now_ms`) when restoring an export.
    fn put_stamped(
        &mut self,
        obj: &NewObject,
        now_ms: u64,
        stamps: Option<(u64, u64)>,
    ) -> Result<WriteOutcome, Error> {
        validate_name("id", &obj.id, MAX_OBJECT_ID_LEN)?;
        let spec = self
            .meta
            .collections
            .get(&obj.collection)
            .cloned()
            .ok_or_else(|| Error::not_found("collection", &obj.collection))?;
        if let Some(v) = &obj.vector {
            check_vector(&spec, v)?;
        }
        let old = self.object(&obj.id)?;
        if let Some(o) = &old {
            if o.collection != obj.collection {
                return Err(Error::AlreadyExists {
                    kind: "object".into(),
                    id: format!("{} (in collection {})", obj.id, o.collection),
                });
            }
        }
        let mut rec = ObjectRecord {
            collection: obj.collection.clone(),
            properties: obj.properties.clone(),
            created_at: stamps
                .map_or_else(|| old.as_ref().map_or(now_ms, |o| o.created_at), |s| s.0),
            updated_at: stamps.map_or(now_ms, |s| s.1),
            vector: obj.vector.clone(),
            vid: 0,
        };
        if rec.vector.is_some() {
            rec.vid = self.meta.next_vid;
        }
        let new_size = object_size(&obj.id, &rec)?;
        // Storage bytes count the object's property index keys too; the
        // per-object size limit counts the object alone.
        let new_total = new_size + self.index_bytes(&obj.id, &rec);
        let old_total = match &old {
            Some(o) => self.stored_size(&obj.id, o)?,
            None => 0,
        };
        let u = self.meta.usage.clone();
        self.check_growth(LimitKind::ObjectSize, new_size, new_size, new_size)?;
        // Counters saturate: a wrapped count would pass every limit check.
        let objects_after = u.objects.saturating_add(u64::from(old.is_none()));
        self.check_growth(LimitKind::Objects, u.objects, objects_after, 1)?;
        let had_vec = old.as_ref().is_some_and(|o| o.vector.is_some());
        let vectors_after = u
            .vectors
            .saturating_add(u64::from(rec.vector.is_some()))
            .saturating_sub(u64::from(had_vec));
        self.check_growth(
            LimitKind::Vectors,
            u.vectors,
            vectors_after,
            u64::from(rec.vector.is_some()),
        )?;
        let bytes_after = u.bytes.saturating_add(new_total).saturating_sub(old_total);
        self.check_growth(LimitKind::StorageBytes, u.bytes, bytes_after, new_total)?;
        // Checked: now change the overlay.
        if let Some(o) = &old {
            if o.vector.is_some() {
                self.vectors.push(VectorChange::Remove {
                    collection: o.collection.clone(),
                    vid: o.vid,
                });
            }
        }
        if let Some(v) = &rec.vector {
            self.meta.next_vid += 1;
            self.vectors.push(VectorChange::Add {
                collection: rec.collection.clone(),
                vid: rec.vid,
                id: obj.id.clone(),
                vector: v.clone(),
            });
        }
        self.meta.usage.objects = objects_after;
        self.meta.usage.vectors = vectors_after;
        self.meta.usage.bytes = bytes_after;
        let existed = old.is_some();
        self.objects.insert(obj.id.clone(), Some(rec));
        Ok(if existed {
            WriteOutcome::Updated
        } else {
            WriteOutcome::Created
        })
    }

    fn delete(&mut self, id: &str) -> Result<WriteOutcome, Error> {
        let Some(old) = self.object(id)? else {
            return Ok(WriteOutcome::Deleted { existed: false });
        };
        for (from, label, to) in self.edges_of(id)? {
            if let Some(e) = self.edge(&from, &label, &to)? {
                let size = edge_size(&from, &label, &to, &e)?;
                self.meta.usage.bytes = self.meta.usage.bytes.saturating_sub(size);
                self.meta.usage.edges = self.meta.usage.edges.saturating_sub(1);
                self.edges.insert((from, label, to), None);
            }
        }
        let size = self.stored_size(id, &old)?;
        self.meta.usage.bytes = self.meta.usage.bytes.saturating_sub(size);
        self.meta.usage.objects = self.meta.usage.objects.saturating_sub(1);
        if old.vector.is_some() {
            self.meta.usage.vectors = self.meta.usage.vectors.saturating_sub(1);
            self.vectors.push(VectorChange::Remove {
                collection: old.collection.clone(),
                vid: old.vid,
            });
        }
        self.objects.insert(id.to_string(), None);
        Ok(WriteOutcome::Deleted { existed: true })
    }

    fn put_edge(&mut self, e: &Edge) -> Result<WriteOutcome, Error> {
        validate_name("label", &e.label, 64)?;
        for end in [&e.from, &e.to] {
            if self.object(end)?.is_none() {
                return Err(Error::not_found("object", end.as_str()));
            }
        }
        let rec = EdgeRecord {
            properties: e.properties.clone(),
        };
        let new_size = edge_size(&e.from, &e.label, &e.to, &rec)?;
        let old = self.edge(&e.from, &e.label, &e.to)?;
        let old_size = match &old {
            Some(o) => edge_size(&e.from, &e.label, &e.to, o)?,
            None => 0,
        };
        let u = self.meta.usage.clone();
        let bytes_after = u.bytes.saturating_add(new_size).saturating_sub(old_size);
        self.check_growth(LimitKind::StorageBytes, u.bytes, bytes_after, new_size)?;
        self.meta.usage.bytes = bytes_after;
        if old.is_none() {
            self.meta.usage.edges = self.meta.usage.edges.saturating_add(1);
        }
        self.edges
            .insert((e.from.clone(), e.label.clone(), e.to.clone()), Some(rec));
        Ok(if old.is_some() {
            WriteOutcome::Updated
        } else {
            WriteOutcome::Created
        })
    }

    /// Writes the overlay into a batch.
    fn flush_into(&self, batch: &mut Batch<'_>) -> Result<(), Error> {
        for (id, rec) in &self.objects {
            let old = self.original(id)?;
            // Property index keys: the old record's out, the new one's in
            // (a key both hold is deleted, then put again: it stays).
            for (r, put) in [(&old, false), (rec, true)] {
                let Some(r) = r else { continue };
                let Some(paths) = self.meta.indexed.get(&r.collection) else {
                    continue;
                };
                let value = props::key_value(r.vector.as_ref().map(|_| r.vid));
                for k in props::keys_of(&r.collection, id, &r.properties, paths) {
                    if put {
                        batch.put_raw(CF_PROPS, &k, &value)?;
                    } else {
                        batch.delete(CF_PROPS, &k)?;
                    }
                }
            }
            if let Some(o) = &old {
                batch.delete(CF_MEMBERS, &member_key(&o.collection, id))?;
                if o.vector.is_some() {
                    batch.delete(CF_VIDS, &o.vid.to_be_bytes())?;
                }
            }
            match rec {
                Some(r) => {
                    batch.put(CF_OBJECTS, id.as_bytes(), r)?;
                    batch.put_raw(CF_MEMBERS, &member_key(&r.collection, id), &[])?;
                    if r.vector.is_some() {
                        batch.put_raw(CF_VIDS, &r.vid.to_be_bytes(), id.as_bytes())?;
                    }
                }
                None => batch.delete(CF_OBJECTS, id.as_bytes())?,
            }
        }
        for ((from, label, to), rec) in &self.edges {
            match rec {
                Some(r) => {
                    batch.put(CF_EDGES, &edge_out_key(from, label, to), r)?;
                    batch.put_raw(CF_EDGES, &edge_in_key(to, label, from), &[])?;
                }
                None => {
                    batch.delete(CF_EDGES, &edge_out_key(from, label, to))?;
                    batch.delete(CF_EDGES, &edge_in_key(to, label, from))?;
                }
            }
        }
        batch.put(CF_META, meta_key::USAGE, &self.meta.usage)?;
        batch.put(CF_META, meta_key::NEXT_VID, &self.meta.next_vid)?;
        Ok(())
    }
}

/// Applies `cmd` on top of `store` and `meta`, adding its writes to `batch`.
/// Nothing is written when the command fails as a whole.
pub fn apply(
    store: &ShardStore,
    meta: &ShardMeta,
    cmd: &Command,
    batch: &mut Batch<'_>,
) -> Result<Applied, Error> {
    let mut ov = Overlay {
        store,
        meta: meta.clone(),
        originals: Default::default(),
        objects: HashMap::new(),
        edges: BTreeMap::new(),
        vectors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut collections_changed = false;
    let result = match cmd {
        Command::Write {
            ops,
            atomic,
            now_ms,
        } => {
            let mut results = Vec::with_capacity(ops.len());
            let mut failed = None;
            for (i, op) in ops.iter().enumerate() {
                let r = ov.apply_op(op, *now_ms);
                if *atomic {
                    if let Err(e) = &r {
                        failed = Some((i, e.clone()));
                        break;
                    }
                }
                results.push(r);
            }
            if let Some((_, e)) = failed {
                return Ok(Applied {
                    result: CommandResult::Write {
                        results: vec![Err(e)],
                        warnings: Vec::new(),
                    },
                    vectors: Vec::new(),
                    collections_changed: false,
                    meta: meta.clone(),
                });
            }
            ov.flush_into(batch)?;
            CommandResult::Write {
                results,
                warnings: std::mem::take(&mut ov.warnings),
            }
        }
        Command::CreateCollection(spec) => {
            let r = create_collection(&mut ov, spec);
            if r.is_ok() {
                batch.put(
                    CF_META,
                    &[meta_key::COLLECTION_PREFIX, spec.name.as_bytes()].concat(),
                    spec,
                )?;
                collections_changed = true;
            }
            CommandResult::Done(r)
        }
        Command::DropCollection(name) => {
            let r = drop_collection(&mut ov, name);
            if r.is_ok() {
                batch.delete(
                    CF_META,
                    &[meta_key::COLLECTION_PREFIX, name.as_bytes()].concat(),
                )?;
                // Its property indexes go with it (empty: so is it).
                if let Some(paths) = std::sync::Arc::make_mut(&mut ov.meta.indexed).remove(name) {
                    for p in paths {
                        batch.delete(CF_META, &props::declared_key(name, &p))?;
                    }
                }
                collections_changed = true;
            }
            CommandResult::Done(r)
        }
        Command::IndexProperty {
            collection,
            property,
        } => CommandResult::Done(index_property(&mut ov, batch, collection, property)),
        Command::DropPropertyIndex {
            collection,
            property,
        } => CommandResult::Done(drop_property_index(&mut ov, batch, collection, property)),
        Command::SetLimits(l) => {
            ov.meta.limits = Some(l.clone());
            batch.put(CF_META, meta_key::LIMITS, l)?;
            CommandResult::Done(Ok(0))
        }
        Command::CheckpointQuota(q) => {
            let before: crate::limits::QuotaCounters =
                store.get(CF_META, meta_key::QUOTA)?.unwrap_or_default();
            let mut after = before.clone();
            after.merge_max(q);
            batch.put(CF_META, meta_key::QUOTA, &after)?;
            CommandResult::Quota {
                before: Box::new(before),
                after: Box::new(after),
            }
        }
        Command::Once {
            client,
            seq,
            part,
            acked_below,
            now_ms,
            cmd,
        } => {
            let key = meta_key::once(*client, *seq);
            let mut rec = store
                .get::<OnceRecord>(CF_META, &key)?
                .unwrap_or(OnceRecord {
                    at_ms: *now_ms,
                    results: Vec::new(),
                });
            // Nothing written: the first answer, or a refusal.
            let answer = |result: CommandResult| Applied {
                result,
                vectors: Vec::new(),
                collections_changed: false,
                meta: meta.clone(),
            };
            if let Some((_, first)) = rec.results.iter().find(|(p, _)| p == part) {
                // Applied before: the first answer.
                return Ok(answer(first.clone()));
            }
            let low = once_low(store, *client)?;
            if *seq < low {
                // The client has its answer and has moved on (a later
                // request of it acknowledged this one, so the result was
                // forgotten): this is a late copy, such as a forward that
                // sat in a stopped node. Applying it again would undo the
                // writes made since.
                return Ok(answer(CommandResult::Done(Err(Error::invalid(
                    "request",
                    format!(
                        "a late copy of write {seq} of client {client}, which was answered \
                         already; not applied again"
                    ),
                )))));
            }
            if matches!(
                **cmd,
                Command::Once { .. } | Command::ExpireOnce { .. } | Command::Registry(_)
            ) {
                return Ok(answer(CommandResult::Done(Err(Error::invalid(
                    "command",
                    "only a write can be applied once",
                )))));
            }
            let inner = apply(store, meta, cmd, batch)?;
            rec.at_ms = *now_ms;
            rec.results.push((*part, inner.result.clone()));
            batch.put(CF_META, &key, &rec)?;
            forget_acknowledged(batch, *client, low, (*acked_below).min(*seq), *now_ms)?;
            return Ok(inner);
        }
        Command::ExpireOnce { before_ms, max } => {
            let mut old = Vec::new();
            for prefix in [meta_key::ONCE_PREFIX, meta_key::ONCE_LOW_PREFIX] {
                store.scan_prefix(CF_META, prefix, |k, v| {
                    let at_ms = if prefix == meta_key::ONCE_PREFIX {
                        super::store::decode_value::<OnceRecord>(v)?.at_ms
                    } else {
                        super::store::decode_value::<OnceLow>(v)?.at_ms
                    };
                    if at_ms < *before_ms {
                        old.push(k.to_vec());
                    }
                    Ok(old.len() < *max as usize)
                })?;
            }
            let n = old.len() as u64;
            for k in old {
                batch.delete(CF_META, &k)?;
            }
            CommandResult::Done(Ok(n))
        }
        Command::SetQuota(q) => {
            batch.put(CF_META, meta_key::QUOTA, q)?;
            CommandResult::Done(Ok(q.daily))
        }
        Command::PurgeOlderThan {
            collection,
            cutoff_ms,
            max,
        } => {
            let mut victims = Vec::new();
            if *max == 0 {
                return Ok(Applied {
                    result: CommandResult::Done(Ok(0)),
                    vectors: Vec::new(),
                    collections_changed: false,
                    meta: meta.clone(),
                });
            }
            let prefix = collection
                .as_ref()
                .map(|c| [c.as_bytes(), b"\0"].concat())
                .unwrap_or_default();
            let mut scanned = 0u64;
            store.scan_prefix(CF_MEMBERS, &prefix, |k, _| {
                scanned += 1;
                if let Some(pos) = k.iter().position(|&b| b == 0) {
                    let id = String::from_utf8_lossy(&k[pos + 1..]).into_owned();
                    if let Some(rec) = store.object(&id)? {
                        if rec.created_at < *cutoff_ms {
                            victims.push(id);
                        }
                    }
                }
                Ok(victims.len() < *max as usize)
            })?;
            for id in &victims {
                ov.delete(id)?;
            }
            ov.flush_into(batch)?;
            CommandResult::Done(Ok(victims.len() as u64))
        }
        Command::Registry(ops) => CommandResult::Done(Ok(apply_registry(store, ops, batch)?)),
        Command::Restore { objects, edges } => {
            let mut results = Vec::with_capacity(objects.len() + edges.len());
            for o in objects {
                let new = NewObject {
                    id: o.id.clone(),
                    collection: o.collection.clone(),
                    properties: o.properties.clone(),
                    vector: o.vector.clone(),
                };
                results.push(ov.put_stamped(
                    &new,
                    o.updated_at,
                    Some((o.created_at, o.updated_at)),
                ));
            }
            for e in edges {
                results.push(ov.put_edge(e));
            }
            ov.flush_into(batch)?;
            CommandResult::Write {
                results,
                warnings: std::mem::take(&mut ov.warnings),
            }
        }
    };
    Ok(Applied {
        result,
        vectors: ov.vectors,
        collections_changed,
        meta: ov.meta,
    })
}

fn create_collection(ov: &mut Overlay<'_>, spec: &CollectionSpec) -> Result<u64, Error> {
    check_collection(spec)?;
    if ov.meta.collections.contains_key(&spec.name) {
        return Err(Error::AlreadyExists {
            kind: "collection".into(),
            id: spec.name.clone(),
        });
    }
    if ov.meta.collections.len() >= 1024 {
        return Err(Error::invalid(
            "collection",
            "a tenant may have at most 1024 collections",
        ));
    }
    if let (Some(d), Some(l)) = (spec.dimension, ov.limits()) {
        let max = l.max_vector_dimensions as u64;
        if d as u64 > max {
            if l.hard_limits {
                return Err(Error::LimitExceeded(LimitExceeded {
                    kind: LimitKind::VectorDimensions,
                    limit: max,
                    current: 0,
                    requested: d as u64,
                    retry_after_ms: None,
                }));
            }
            ov.warnings.push(format!(
                "soft limit storage_limit.max_vector_dimensions exceeded: {d} > {max}"
            ));
        }
    }
    std::sync::Arc::make_mut(&mut ov.meta.collections).insert(spec.name.clone(), spec.clone());
    Ok(0)
}

/// Most objects a collection may hold when one of its properties gets an
/// index (the index is filled in one batch).
pub const MAX_INDEX_BACKFILL: u64 = 1_000_000;

/// [`Command::IndexProperty`]: declares the index and writes a key for
/// every object of the collection holding an indexable value there. Adds
/// nothing to `batch` when it fails.
fn index_property(
    ov: &mut Overlay<'_>,
    batch: &mut Batch<'_>,
    collection: &str,
    property: &str,
) -> Result<u64, Error> {
    props::check_path(property)?;
    if !ov.meta.collections.contains_key(collection) {
        return Err(Error::not_found("collection", collection));
    }
    let have = ov.meta.indexed.get(collection).cloned().unwrap_or_default();
    if have.iter().any(|p| p == property) {
        return Ok(0);
    }
    if have.len() >= props::MAX_INDEXED_PER_COLLECTION {
        return Err(Error::invalid(
            "property",
            format!(
                "{collection} already has {} indexed properties, the most a collection may have",
                props::MAX_INDEXED_PER_COLLECTION
            ),
        ));
    }
    let path = [property.to_string()];
    let prefix = [collection.as_bytes(), b"\0"].concat();
    let mut keys = Vec::new();
    let mut read = 0u64;
    ov.store.scan_prefix(CF_MEMBERS, &prefix, |k, _| {
        read += 1;
        if read > MAX_INDEX_BACKFILL {
            return Err(Error::invalid(
                "property",
                format!("{collection} holds more than {MAX_INDEX_BACKFILL} objects, too many to index at once"),
            ));
        }
        let id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if let Some(rec) = ov.store.object(&id)? {
            let value = props::key_value(rec.vector.as_ref().map(|_| rec.vid));
            keys.extend(
                props::keys_of(collection, &id, &rec.properties, &path).map(|k| (k, value.clone())),
            );
        }
        Ok(true)
    })?;
    // The keys count toward the tenant's storage bytes, as every later
    // write's do.
    let added: u64 = keys.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let before = ov.meta.usage.bytes;
    let after = before.saturating_add(added);
    ov.check_growth(LimitKind::StorageBytes, before, after, added)?;
    ov.meta.usage.bytes = after;
    // Saved here: only writes flush the usage, and a reopen before the
    // next write must not lose the keys' bytes.
    batch.put(CF_META, meta_key::USAGE, &ov.meta.usage)?;
    for (k, v) in &keys {
        batch.put_raw(CF_PROPS, k, v)?;
    }
    batch.put_raw(CF_META, &props::declared_key(collection, property), &[])?;
    std::sync::Arc::make_mut(&mut ov.meta.indexed)
        .entry(collection.to_string())
        .or_default()
        .push(property.to_string());
    Ok(read)
}

/// [`Command::DropPropertyIndex`]: deletes the index's declaration and
/// its keys (one range delete), and takes the keys' bytes off the storage
/// bytes. Adds nothing to `batch` when it fails.
fn drop_property_index(
    ov: &mut Overlay<'_>,
    batch: &mut Batch<'_>,
    collection: &str,
    property: &str,
) -> Result<u64, Error> {
    let declared = ov
        .meta
        .indexed
        .get(collection)
        .is_some_and(|paths| paths.iter().any(|p| p == property));
    if !declared {
        return Err(Error::not_found(
            "property index",
            format!("{collection}.{property}"),
        ));
    }
    let prefix = props::property_prefix(collection, property);
    let (mut keys, mut bytes) = (0u64, 0u64);
    ov.store.scan_prefix(CF_PROPS, &prefix, |k, v| {
        keys += 1;
        bytes += (k.len() + v.len()) as u64;
        Ok(true)
    })?;
    // The prefix ends in the 0x00 after the path: every key of this
    // index, and no other, sorts below the same prefix ending in 0x01.
    let mut end = prefix.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    batch.delete_range(CF_PROPS, &prefix, &end)?;
    batch.delete(CF_META, &props::declared_key(collection, property))?;
    ov.meta.usage.bytes = ov.meta.usage.bytes.saturating_sub(bytes);
    batch.put(CF_META, meta_key::USAGE, &ov.meta.usage)?;
    let indexed = std::sync::Arc::make_mut(&mut ov.meta.indexed);
    if let Some(paths) = indexed.get_mut(collection) {
        paths.retain(|p| p != property);
        if paths.is_empty() {
            indexed.remove(collection);
        }
    }
    Ok(keys)
}

fn drop_collection(ov: &mut Overlay<'_>, name: &str) -> Result<u64, Error> {
    if !ov.meta.collections.contains_key(name) {
        return Err(Error::not_found("collection", name));
    }
    let mut empty = true;
    ov.store
        .scan_prefix(CF_MEMBERS, &[name.as_bytes(), b"\0"].concat(), |_, _| {
            empty = false;
            Ok(false)
        })?;
    if !empty {
        return Err(Error::invalid(
            "collection",
            format!("{name} is not empty; delete its objects first"),
        ));
    }
    std::sync::Arc::make_mut(&mut ov.meta.collections).remove(name);
    Ok(0)
}

/// Applies registry changes; returns the last counter value incremented.
fn apply_registry(store: &ShardStore, ops: &[RegOp], batch: &mut Batch<'_>) -> Result<u64, Error> {
    let mut last = 0;
    // Counters incremented earlier in this command are not yet in the store.
    let mut counters: HashMap<Vec<u8>, u64> = HashMap::new();
    for op in ops {
        match op {
            RegOp::Put { table, key, value } => {
                batch.put_raw(CF_META, &RegOp::storage_key(table, key), value)?
            }
            RegOp::Delete { table, key } => {
                batch.delete(CF_META, &RegOp::storage_key(table, key))?
            }
            RegOp::DeletePrefix { table, prefix } => {
                let p = RegOp::storage_key(table, prefix);
                let mut doomed = Vec::new();
                store.scan_prefix(CF_META, &p, |k, _| {
                    doomed.push(k.to_vec());
                    Ok(true)
                })?;
                for k in doomed {
                    batch.delete(CF_META, &k)?;
                }
            }
            RegOp::Increment { table, key } => {
                let k = RegOp::storage_key(table, key);
                let cur = match counters.get(&k) {
                    Some(v) => *v,
                    None => match store.get_raw(CF_META, &k)? {
                        Some(b) => {
                            u64::from_be_bytes(b.as_slice().try_into().map_err(Error::storage)?)
                        }
                        None => 0,
                    },
                };
                last = cur + 1;
                counters.insert(k.clone(), last);
                batch.put_raw(CF_META, &k, &last.to_be_bytes())?;
            }
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::storage::StorageEnv;
    use crate::tenant::{TenantConfig, Tiers};

    fn put(obj: NewObject) -> Command {
        Command::Write {
            ops: vec![WriteOp::Put(obj)],
            atomic: true,
            now_ms: 1,
        }
    }

    /// Applies `cmd` over `meta` and writes its batch; the new meta.
    fn run(store: &ShardStore, meta: &ShardMeta, cmd: &Command) -> (CommandResult, ShardMeta) {
        let mut batch = store.batch();
        let a = apply(store, meta, cmd, &mut batch).unwrap();
        batch.commit().unwrap();
        (a.result, a.meta)
    }

    #[test]
    fn usage_counters_saturate_instead_of_wrapping_past_the_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(&StorageEnv::default(), dir.path()).unwrap();
        let meta = ShardMeta::load(&store).unwrap();
        let create = Command::CreateCollection(CollectionSpec::vectors("c", 2));
        let (_, meta) = run(&store, &meta, &create);
        let with_vec = NewObject::new("c", "a", serde_json::json!({})).with_vector(vec![1.0, 2.0]);
        let (_, meta) = run(&store, &meta, &put(with_vec));
        assert_eq!(meta.usage.vectors, 1);

        // A vector count that lags its objects (0 while "a" has one):
        // replacing "a" without a vector goes to 0, not to u64::MAX.
        let mut lagging = meta.clone();
        lagging.usage.vectors = 0;
        let plain = NewObject::new("c", "a", serde_json::json!({}));
        let (r, after) = run(&store, &lagging, &put(plain));
        assert!(matches!(r, CommandResult::Write { .. }), "{r:?}");
        assert_eq!(after.usage.vectors, 0);

        // Bytes near the top: a new object saturates at u64::MAX and meets
        // the hard limit, instead of wrapping to a few bytes and passing.
        let mut full = after.clone();
        full.usage.bytes = u64::MAX - 1;
        full.limits = Some(
            TenantConfig::for_tier(&Tiers::default(), "t", "T", "tier1", serde_json::json!({}))
                .unwrap()
                .storage_limit,
        );
        let (r, unchanged) = run(
            &store,
            &full,
            &put(NewObject::new("c", "b", serde_json::json!({"k": 1}))),
        );
        match r {
            CommandResult::Write { results, .. } => {
                let e = results[0].clone().unwrap_err();
                assert_eq!(e.limit().unwrap().kind, LimitKind::StorageBytes);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(unchanged.usage.bytes, u64::MAX - 1);
    }
}
