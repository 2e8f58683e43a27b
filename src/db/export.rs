//! Whole-tenant export and import, the engine's side (admin requests; the
//! file format and the drivers are in [`crate::migrate`]).
//!
//! **Export** runs on the node whose replica leads the tenant's shard.
//! [`Database::export_open`] waits until the replica has applied every
//! committed entry (a read-index round), then takes a RocksDB checkpoint
//! of the shard's store (hard links) under `<data_dir>/exports/<cursor>/`
//! and opens it. A command's data and its applied log id are written in
//! one batch, so the checkpoint is a consistent cut at the applied index
//! it holds. Pages ([`Database::export_page`]) read the checkpoint by key,
//! never the live store, so writes during an export do not show. A node
//! keeps at most [`MAX_CURSORS_PER_TENANT`] cursors per tenant and
//! [`MAX_CURSORS_PER_NODE`] in all; one unused for [`CURSOR_IDLE_MS`] is
//! dropped with its checkpoint, and a node removes leftover checkpoints
//! when it opens.
//!
//! **Import** ([`Database::import`]) proposes ordinary raft commands on
//! the tenant's shard: `CreateCollection`, `Restore` (objects with their
//! timestamps, then edges; storage limits enforced at apply like any
//! write) and `CheckpointQuota` (a max-merge of the request counters).
//! Import steps take a node admission slot but are not charged to the
//! tenant's request budget: the counters are restored from the export.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::limits::QuotaCounters;
use crate::proto::migrate::{
    ExportHead, ExportOpen, ExportPage, ExportPageRequest, ExportSection, ImportRequest,
    ImportStep, PropertyIndex, CURSOR_IDLE_MS, MAX_CURSORS_PER_NODE, MAX_CURSORS_PER_TENANT,
    MAX_IMPORT_COLLECTIONS, MAX_IMPORT_ITEMS, MAX_PAGE_BYTES, MAX_PAGE_ITEMS, MAX_PAGE_SCAN,
};
use crate::proto::{
    Edge, Error, LimitExceeded, LimitKind, OperationType, RequestUsage, Result, WriteOutcome,
};
use crate::storage::{
    self, meta_key, Command, CommandResult, EdgeRecord, ObjectRecord, ShardMeta, ShardStore,
    CF_EDGES, CF_META, CF_OBJECTS,
};
use crate::tenant::validate_tenant_id;

use super::session::call_write;
use super::Database;

/// A checkpoint opened as a store; removed from disk when the last
/// reader drops it.
struct Cut {
    store: Option<ShardStore>,
    dir: PathBuf,
}

impl Cut {
    fn store(&self) -> Result<&ShardStore> {
        self.store
            .as_ref()
            .ok_or_else(|| Error::storage("export checkpoint closed"))
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        drop(self.store.take());
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "export checkpoint not removed");
        }
    }
}

struct Cursor {
    tenant: String,
    since_ms: Option<u64>,
    cut: Arc<Cut>,
    last_used: Instant,
}

/// The open export cursors of a node.
#[derive(Default)]
pub(crate) struct Exports {
    cursors: Mutex<HashMap<u64, Cursor>>,
}

impl Exports {
    /// Drops cursors idle for [`CURSOR_IDLE_MS`] (their checkpoints are
    /// removed outside the lock).
    fn expire(&self) {
        let idle = Duration::from_millis(CURSOR_IDLE_MS);
        let gone: Vec<Cursor> = {
            let mut c = self.cursors.lock();
            let old: Vec<u64> = c
                .iter()
                .filter(|(_, v)| v.last_used.elapsed() >= idle)
                .map(|(k, _)| *k)
                .collect();
            old.iter().filter_map(|k| c.remove(k)).collect()
        };
        for g in &gone {
            tracing::info!(tenant = %g.tenant, "export cursor expired");
        }
    }

    /// `Err` when `tenant` may open no more cursors here.
    fn room_for(c: &HashMap<u64, Cursor>, tenant: &str) -> Result<()> {
        let of_tenant = c.values().filter(|v| v.tenant == tenant).count();
        let (limit, current) = if of_tenant >= MAX_CURSORS_PER_TENANT {
            (MAX_CURSORS_PER_TENANT, of_tenant)
        } else if c.len() >= MAX_CURSORS_PER_NODE {
            (MAX_CURSORS_PER_NODE, c.len())
        } else {
            return Ok(());
        };
        Err(Error::LimitExceeded(LimitExceeded {
            kind: LimitKind::Concurrency,
            limit: limit as u64,
            current: current as u64,
            requested: 1,
            retry_after_ms: Some(CURSOR_IDLE_MS),
        }))
    }
}

/// Removes export checkpoints left by an earlier run of the node.
pub(crate) fn remove_leftovers(data_dir: &Path) {
    let dir = data_dir.join("exports");
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "old export checkpoints not removed");
        }
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::storage(format!("export task failed: {e}"))
}

/// The request counters of a usage report as persisted counters.
pub fn quota_of(u: &RequestUsage) -> QuotaCounters {
    let mut q = QuotaCounters::default();
    (q.day, q.daily, q.month, q.monthly) = (u.day, u.daily, u.month, u.monthly);
    let ops = |m: &std::collections::BTreeMap<String, u64>| {
        let mut a = [0u64; 5];
        for (name, n) in m {
            if let Some(op) = OperationType::parse(name) {
                a[op.index()] = *n;
            }
        }
        a
    };
    let past = |p: &Option<crate::proto::PeriodUsage>| {
        p.as_ref().map(|p| crate::limits::period::PastPeriod {
            n: p.period,
            total: p.requests,
            ops: ops(&p.by_operation),
        })
    };
    q.by_operation = ops(&u.by_operation);
    q.day_ops.ops = ops(&u.daily_by_operation);
    q.day_ops.prev = past(&u.previous_day);
    q.month_ops.ops = ops(&u.monthly_by_operation);
    q.month_ops.prev = past(&u.previous_month);
    q
}

impl Database {
    /// Opens a consistent export of `tenant` on this node (its shard
    /// leader's, on a cluster): see the module docs of `db::export`.
    pub async fn export_open(&self, req: ExportOpen) -> Result<ExportHead> {
        let id = req.tenant_id.as_str();
        validate_tenant_id(id)?;
        let t = self.tenant(id)?;
        let _awake = self.awake(&t).await?;
        let exports = &self.inner.exports;
        exports.expire();
        Exports::room_for(&exports.cursors.lock(), id)?;
        if let Some(raft) = t.raft() {
            raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map_err(|e| Error::Unavailable {
                    reason: format!("export needs the shard leader: {e}"),
                })?;
        }
        let cursor = rand::random::<u64>() | 1;
        let dir = self
            .inner
            .dir
            .join("exports")
            .join(format!("{cursor:016x}"));
        let live = t.data()?.store();
        let env = self.storage_env().clone();
        let cut_dir = dir.clone();
        let (cut, applied_index, meta) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(cut_dir.parent().unwrap_or(&cut_dir))
                .map_err(Error::storage)?;
            live.checkpoint(&cut_dir)?;
            drop(live);
            let cut = Cut {
                store: Some(ShardStore::open(&env, &cut_dir)?),
                dir: cut_dir,
            };
            let store = cut.store()?;
            let applied = match store.get_raw(CF_META, meta_key::APPLIED)? {
                Some(b) => {
                    crate::codec::decode::<crate::raft::LogId>(&b)
                        .map_err(Error::storage)?
                        .index
                }
                None => 0,
            };
            let meta = ShardMeta::load(store)?;
            Ok::<_, Error>((cut, applied, meta))
        })
        .await
        .map_err(blocking_err)??;
        let config = self.get_tenant(id).await?;
        let mut users = self.list_users(id).await?;
        users.sort();
        let head = ExportHead {
            cursor,
            applied_index,
            node: self.inner.config.cluster.node_id,
            config,
            users,
            collections: meta.collections.values().cloned().collect(),
            indexes: meta.property_indexes(None),
            storage: meta.usage.clone(),
            requests: t.limiter().request_usage(crate::util::now_ms()),
        };
        {
            let mut c = exports.cursors.lock();
            Exports::room_for(&c, id)?;
            c.insert(
                cursor,
                Cursor {
                    tenant: id.to_string(),
                    since_ms: req.since_ms,
                    cut: Arc::new(cut),
                    last_used: Instant::now(),
                },
            );
        }
        tracing::info!(tenant = id, cursor, applied_index, dir = %dir.display(), "export opened");
        Ok(head)
    }

    /// The next page of an open export.
    pub async fn export_page(&self, req: ExportPageRequest) -> Result<ExportPage> {
        self.inner.exports.expire();
        let (cut, since) = {
            let mut c = self.inner.exports.cursors.lock();
            let cur = c
                .get_mut(&req.cursor)
                .filter(|c| c.tenant == req.tenant_id)
                .ok_or_else(|| {
                    Error::not_found(
                        "export cursor",
                        format!(
                            "{:016x} of tenant {} (closed, expired after {} s idle, or held by \
                             another node: the shard leader changed; export again)",
                            req.cursor,
                            req.tenant_id,
                            CURSOR_IDLE_MS / 1000
                        ),
                    )
                })?;
            cur.last_used = Instant::now();
            (cur.cut.clone(), cur.since_ms)
        };
        let limit = req.limit.clamp(1, MAX_PAGE_ITEMS) as usize;
        tokio::task::spawn_blocking(move || {
            let store = cut.store()?;
            match req.section {
                ExportSection::Objects => objects_page(store, req.after, limit, since),
                ExportSection::Edges => edges_page(store, req.after, limit, since),
            }
        })
        .await
        .map_err(blocking_err)?
    }

    /// Closes an export cursor (a cursor already gone is fine).
    pub fn export_close(&self, tenant: &str, cursor: u64) -> Result<()> {
        let gone = {
            let mut c = self.inner.exports.cursors.lock();
            match c.get(&cursor) {
                Some(v) if v.tenant == tenant => c.remove(&cursor),
                _ => None,
            }
        };
        if gone.is_some() {
            tracing::info!(tenant, cursor, "export closed");
        }
        Ok(())
    }

    /// Open export cursors on this node (tests).
    #[doc(hidden)]
    pub fn export_cursors(&self) -> usize {
        self.inner.exports.cursors.lock().len()
    }

    /// One step of an import into an existing tenant, on its shard
    /// leader: a result per collection or record.
    pub async fn import(&self, req: ImportRequest) -> Result<Vec<Result<WriteOutcome>>> {
        let id = req.tenant_id.as_str();
        validate_tenant_id(id)?;
        let t = self.tenant(id)?;
        let _awake = self.awake(&t).await?;
        let _slot = self
            .inner
            .admission
            .acquire(id, t.config().request_limit.priority)
            .await?;
        let timeout = self.request_timeout();
        let migration = req.migration_id.as_str();
        match req.step {
            ImportStep::Collections(specs) => {
                if specs.len() > MAX_IMPORT_COLLECTIONS {
                    return Err(Error::invalid(
                        "collections",
                        format!("at most {MAX_IMPORT_COLLECTIONS} per import step"),
                    ));
                }
                tracing::info!(
                    migration,
                    tenant = id,
                    n = specs.len(),
                    "import: collections"
                );
                let data = t.data()?;
                let mut out = Vec::with_capacity(specs.len());
                for spec in specs {
                    storage::check_collection(&spec)?;
                    match data.collection(&spec.name) {
                        Some(have) if have == spec => {
                            out.push(Ok(WriteOutcome::Updated));
                            continue;
                        }
                        Some(_) => {
                            out.push(Err(Error::AlreadyExists {
                                kind: "collection (with another spec)".into(),
                                id: spec.name.clone(),
                            }));
                            continue;
                        }
                        None => {}
                    }
                    out.push(
                        call_write(&t, Command::CreateCollection(spec), timeout)
                            .await?
                            .done()
                            .map(|_| WriteOutcome::Created),
                    );
                }
                Ok(out)
            }
            ImportStep::Records { objects, edges } => {
                let n = objects.len() + edges.len();
                if n > MAX_IMPORT_ITEMS {
                    return Err(Error::invalid(
                        "records",
                        format!("{n} records; at most {MAX_IMPORT_ITEMS} per import step"),
                    ));
                }
                if n == 0 {
                    return Ok(Vec::new());
                }
                let size: usize = objects
                    .iter()
                    .map(|o| {
                        o.id.len()
                            + o.collection.len()
                            + o.properties.encoded_len()
                            + o.vector.as_ref().map_or(0, |v| v.len() * 4)
                            + 32
                    })
                    .chain(edges.iter().map(|e| {
                        e.from.len() + e.label.len() + e.to.len() + e.properties.encoded_len() + 16
                    }))
                    .sum();
                let max = self.inner.config.limits.max_command_bytes;
                if size > max {
                    return Err(Error::invalid(
                        "records",
                        format!("{size} bytes; the node accepts at most {max} per command (limits.max_command_bytes): send fewer records per step"),
                    ));
                }
                tracing::debug!(
                    migration,
                    tenant = id,
                    objects = objects.len(),
                    edges = edges.len(),
                    "import: records"
                );
                match call_write(&t, Command::Restore { objects, edges }, timeout).await? {
                    CommandResult::Write { results, warnings } => {
                        for w in &warnings {
                            tracing::warn!(migration, tenant = id, "{w}");
                        }
                        Ok(results)
                    }
                    other => Err(Error::storage(format!("unexpected result {other:?}"))),
                }
            }
            ImportStep::Indexes(indexes) => {
                if indexes.len() > MAX_IMPORT_COLLECTIONS {
                    return Err(Error::invalid(
                        "indexes",
                        format!("at most {MAX_IMPORT_COLLECTIONS} per import step"),
                    ));
                }
                tracing::info!(
                    migration,
                    tenant = id,
                    n = indexes.len(),
                    "import: property indexes"
                );
                let mut out = Vec::with_capacity(indexes.len());
                for PropertyIndex {
                    collection,
                    property,
                } in indexes
                {
                    let cmd = Command::IndexProperty {
                        collection,
                        property,
                    };
                    out.push(
                        call_write(&t, cmd, timeout)
                            .await?
                            .done()
                            .map(|_| WriteOutcome::Created),
                    );
                }
                Ok(out)
            }
            ImportStep::Counters(usage) => {
                tracing::info!(
                    migration,
                    tenant = id,
                    daily = usage.daily,
                    monthly = usage.monthly,
                    "import: request counters"
                );
                let q = quota_of(&usage);
                t.limiter().restore_quota(q.clone());
                match call_write(&t, Command::CheckpointQuota(q), timeout).await? {
                    CommandResult::Quota { .. } => Ok(Vec::new()),
                    CommandResult::Done(Err(e)) => Err(e),
                    other => Err(Error::storage(format!("unexpected result {other:?}"))),
                }
            }
        }
    }
}

/// The key after which a page continues: `after` plus a zero byte.
fn start_after(prefix: &[u8], after: Option<&str>) -> Vec<u8> {
    match after {
        Some(a) => [prefix, a.as_bytes(), b"\0"].concat(),
        None => prefix.to_vec(),
    }
}

/// Bounds of one page: items, bytes and rows read.
struct PageBudget {
    limit: usize,
    items: usize,
    bytes: usize,
    scanned: usize,
}

impl PageBudget {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            items: 0,
            bytes: 0,
            scanned: 0,
        }
    }

    /// Counts a record of `bytes` (or a skipped row: `None`); false when
    /// the page is full.
    fn take(&mut self, bytes: Option<usize>) -> bool {
        self.scanned += 1;
        if let Some(b) = bytes {
            self.items += 1;
            self.bytes += b;
        }
        self.items < self.limit && self.bytes < MAX_PAGE_BYTES && self.scanned < MAX_PAGE_SCAN
    }
}

fn objects_page(
    store: &ShardStore,
    after: Option<String>,
    limit: usize,
    since: Option<u64>,
) -> Result<ExportPage> {
    let mut page = ExportPage::default();
    let mut budget = PageBudget::new(limit);
    let mut last = None;
    let mut full = false;
    let start = start_after(b"", after.as_deref());
    store.scan_prefix_from(CF_OBJECTS, b"", &start, |k, v| {
        let rec: ObjectRecord = storage::decode_value(v)?;
        let id = String::from_utf8_lossy(k).into_owned();
        let keep = since.is_none_or(|s| rec.updated_at >= s);
        let size = keep.then(|| k.len() + v.len());
        if keep {
            page.objects.push(rec.into_object(id.clone()));
        }
        last = Some(id);
        full = !budget.take(size);
        Ok(!full)
    })?;
    page.next = if full { last } else { None };
    Ok(page)
}

fn edges_page(
    store: &ShardStore,
    after: Option<String>,
    limit: usize,
    since: Option<u64>,
) -> Result<ExportPage> {
    let mut page = ExportPage::default();
    let mut budget = PageBudget::new(limit);
    let mut last = None;
    let mut full = false;
    let start = start_after(b"o", after.as_deref());
    let fresh = |id: &str| -> Result<bool> {
        Ok(match since {
            None => true,
            Some(s) => store.object(id)?.is_some_and(|o| o.updated_at >= s),
        })
    };
    store.scan_prefix_from(CF_EDGES, b"o", &start, |k, v| {
        let rest = &k[1..];
        let mut parts = rest.splitn(3, |b| *b == 0);
        let (Some(from), Some(label), Some(to)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::storage("malformed edge key"));
        };
        let edge = Edge {
            from: String::from_utf8_lossy(from).into_owned(),
            label: String::from_utf8_lossy(label).into_owned(),
            to: String::from_utf8_lossy(to).into_owned(),
            properties: storage::decode_value::<EdgeRecord>(v)?.properties,
        };
        let keep = fresh(&edge.from)? || fresh(&edge.to)?;
        let size = keep.then(|| k.len() + v.len());
        if keep {
            page.edges.push(edge);
        }
        last = Some(String::from_utf8_lossy(rest).into_owned());
        full = !budget.take(size);
        Ok(!full)
    })?;
    page.next = if full { last } else { None };
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_at_its_item_limit_and_at_the_scan_limit() {
        let mut b = PageBudget::new(2);
        assert!(b.take(Some(10)));
        assert!(!b.take(Some(10)));
        let mut b = PageBudget::new(1000);
        for _ in 0..MAX_PAGE_SCAN - 1 {
            assert!(b.take(None));
        }
        assert!(!b.take(None));
        let mut b = PageBudget::new(1000);
        assert!(!b.take(Some(MAX_PAGE_BYTES)));
    }

    #[test]
    fn pages_continue_strictly_after_the_last_key() {
        assert_eq!(start_after(b"o", Some("a\0x\0b")), b"oa\0x\0b\0".to_vec());
        assert_eq!(start_after(b"", None), Vec::<u8>::new());
    }

    #[test]
    fn request_counters_map_onto_persisted_counters() {
        let mut u = RequestUsage {
            day: 20_000,
            daily: 7,
            month: 24_300,
            monthly: 90,
            ..RequestUsage::default()
        };
        u.by_operation.insert("write".into(), 5);
        u.by_operation.insert("vector_search".into(), 2);
        let q = quota_of(&u);
        assert_eq!(
            (q.day, q.daily, q.month, q.monthly),
            (20_000, 7, 24_300, 90)
        );
        assert_eq!(q.by_operation, [0, 5, 0, 2, 0]);
    }
}
