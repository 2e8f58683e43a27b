//! The persisted tenant registry: tenants, their users, and id counters,
//! in the node's own small RocksDB instance (`node/`). Every change is a
//! synced write. Values are versioned JSON (`{"v":1,...}`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::proto::{AuditEntry, Error, MoveJob, NodeRecord};
use crate::shard::ShardData;
use crate::storage::{RegOp, CF_META};
use crate::tenant::TenantConfig;

const CF_TENANTS: &str = "tenants";
const CF_USERS: &str = "users";
const CF_COUNTERS: &str = "counters";
const CF_KEYS: &str = "keys";
const CF_NODES: &str = "nodes";
const CF_JOBS: &str = "jobs";
const CF_AUDIT: &str = "audit";
const TABLES: [&str; 7] = [
    CF_TENANTS,
    CF_USERS,
    CF_COUNTERS,
    CF_KEYS,
    CF_NODES,
    CF_JOBS,
    CF_AUDIT,
];
const VERSION: u32 = 1;

/// Lifecycle of a tenant record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantState {
    /// Serving (or disabled through its config).
    Active,
    /// Being purged; finished on the next start if interrupted.
    Deleting,
}

/// A tenant as the registry stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Format version.
    pub v: u32,
    /// The config.
    pub config: TenantConfig,
    /// Raft group id of its shard.
    pub group: u64,
    /// Raft node id of this node's replica (single node).
    pub replica: u64,
    /// Lifecycle state.
    pub state: TenantState,
    /// Cluster placement: the replicas of the shard group (empty on a
    /// single node).
    #[serde(default)]
    pub replicas: Vec<Replica>,
}

/// One replica of a tenant's shard group on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// Raft node id inside the group: fresh per placement, never reused.
    pub id: u64,
    /// The cluster node holding it.
    pub node: u64,
    /// Part of the group's first membership (initialises the group);
    /// replicas added later join as learners instead.
    pub initial: bool,
    /// Wanted as a learner, not a voter (the target of a move while it
    /// catches up).
    #[serde(default)]
    pub learner: bool,
}

/// A user of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Format version.
    pub v: u32,
    /// User id.
    pub user_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Creation time, ms.
    pub created_at: u64,
}

/// Where a replicated registry reads and proposes: the cluster's
/// metadata group (group 0).
pub trait MetaGroup: Send + Sync {
    /// Group 0's local state (possibly behind the leader).
    fn data(&self) -> Result<Arc<ShardData>, Error>;
    /// Commits `ops` through group 0 (forwarded to its leader when this
    /// node does not lead); returns the last incremented counter value.
    fn propose(&self, ops: Vec<RegOp>) -> BoxFuture<'_, Result<u64, Error>>;
}

/// A key and its value.
type KeyValue = (Vec<u8>, Vec<u8>);

enum Backend {
    /// The node's own RocksDB instance (`node/`), synced writes.
    Local(DB),
    /// The cluster metadata group.
    Replicated(Arc<dyn MetaGroup>),
}

/// The registry: tenants, users, keys, nodes and counters. Local on a
/// single node; on a cluster, the state of the metadata raft group.
pub struct Registry {
    backend: Backend,
    /// Ids this registry reserved in blocks and has not handed out yet,
    /// by counter name ([`Registry::take_id`]).
    blocks: tokio::sync::Mutex<HashMap<String, std::ops::RangeInclusive<u64>>>,
}

/// How many ids [`Registry::take_id`] reserves at a time.
const ID_BLOCK: u64 = 64;

fn st(e: impl std::fmt::Display) -> Error {
    Error::storage(e)
}

fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    [tenant.as_bytes(), b"\0", user.as_bytes()].concat()
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(v).map_err(st)
}

fn put(table: &str, key: impl Into<Vec<u8>>, value: Vec<u8>) -> RegOp {
    RegOp::Put {
        table: table.into(),
        key: key.into(),
        value,
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl Registry {
    /// Opens (or creates) the local registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let cfs = TABLES.map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(Registry {
            backend: Backend::Local(DB::open_cf_descriptors(&o, path, cfs).map_err(st)?),
            blocks: Default::default(),
        })
    }

    /// A registry over the cluster's metadata group.
    pub fn replicated(group: Arc<dyn MetaGroup>) -> Registry {
        Registry {
            backend: Backend::Replicated(group),
            blocks: Default::default(),
        }
    }

    /// Whether this registry is the cluster's replicated one.
    pub fn is_replicated(&self) -> bool {
        matches!(self.backend, Backend::Replicated(_))
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match &self.backend {
            Backend::Local(db) => {
                let cf = db
                    .cf_handle(table)
                    .ok_or_else(|| st(format!("column family {table} missing")))?;
                db.get_cf(cf, key).map_err(st)
            }
            Backend::Replicated(g) => g.data()?.meta_raw(&RegOp::storage_key(table, key)),
        }
    }

    /// Keys (without the prefix of the table) and values of `table`
    /// starting with `prefix`, in key order.
    fn scan(&self, table: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, Error> {
        let mut out = Vec::new();
        match &self.backend {
            Backend::Local(db) => {
                let cf = db
                    .cf_handle(table)
                    .ok_or_else(|| st(format!("column family {table} missing")))?;
                let it =
                    db.iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward));
                for item in it {
                    let (k, v) = item.map_err(st)?;
                    if !k.starts_with(prefix) {
                        break;
                    }
                    out.push((k.to_vec(), v.to_vec()));
                }
            }
            Backend::Replicated(g) => {
                let base = RegOp::storage_key(table, b"");
                let full = RegOp::storage_key(table, prefix);
                g.data()?.store().scan_prefix(CF_META, &full, |k, v| {
                    out.push((k[base.len()..].to_vec(), v.to_vec()));
                    Ok(true)
                })?;
            }
        }
        Ok(out)
    }

    /// Applies `ops` atomically and durably; returns the last incremented
    /// counter value (0 when none).
    async fn commit(&self, ops: Vec<RegOp>) -> Result<u64, Error> {
        let db = match &self.backend {
            Backend::Local(db) => db,
            Backend::Replicated(g) => return g.propose(ops).await,
        };
        let cf = |t: &str| {
            db.cf_handle(t)
                .ok_or_else(|| st(format!("column family {t} missing")))
        };
        let mut b = WriteBatch::default();
        let mut last = 0;
        // Counters incremented earlier in this commit are not stored yet.
        let mut counters: HashMap<(String, Vec<u8>), u64> = HashMap::new();
        for op in ops {
            match op {
                RegOp::Put { table, key, value } => b.put_cf(cf(&table)?, key, value),
                RegOp::Delete { table, key } => b.delete_cf(cf(&table)?, key),
                RegOp::DeletePrefix { table, prefix } => {
                    b.delete_range_cf(cf(&table)?, &prefix, &prefix_end(&prefix))
                }
                RegOp::Increment { table, key } => {
                    let cur = match counters.get(&(table.clone(), key.clone())) {
                        Some(v) => *v,
                        None => match db.get_cf(cf(&table)?, &key).map_err(st)? {
                            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(st)?),
                            None => 0,
                        },
                    };
                    last = cur + 1;
                    b.put_cf(cf(&table)?, &key, last.to_be_bytes());
                    counters.insert((table, key), last);
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(b, &wo).map_err(st)?;
        Ok(last)
    }

    fn decode_all<T: DeserializeOwned>(&self, table: &str, prefix: &[u8]) -> Result<Vec<T>, Error> {
        self.scan(table, prefix)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(st))
            .collect()
    }

    /// Allocates the next value of a named counter (starting at 1), durably.
    pub async fn next_id(&self, name: &str) -> Result<u64, Error> {
        self.commit(vec![RegOp::Increment {
            table: CF_COUNTERS.into(),
            key: name.as_bytes().to_vec(),
        }])
        .await
    }

    /// The next id of a named counter from a block this registry reserved
    /// ([`ID_BLOCK`] ids in one commit): unique like [`Registry::next_id`]
    /// (a block is reserved durably before any of it is used, and the
    /// counter never goes back), but not dense: ids left in a block when
    /// the node stops are skipped. Creating a tenant on a cluster thus
    /// costs no commit of its own for its group and replica ids.
    pub async fn take_id(&self, name: &str) -> Result<u64, Error> {
        let mut blocks = self.blocks.lock().await;
        if let Some(ids) = blocks.get_mut(name) {
            if let Some(id) = ids.next() {
                return Ok(id);
            }
        }
        let ops = (0..ID_BLOCK)
            .map(|_| RegOp::Increment {
                table: CF_COUNTERS.into(),
                key: name.as_bytes().to_vec(),
            })
            .collect();
        let last = self.commit(ops).await?;
        let first = last + 1 - ID_BLOCK;
        blocks.insert(name.to_string(), first + 1..=last);
        Ok(first)
    }

    /// Stores a tenant record.
    pub async fn put_tenant(&self, rec: &TenantRecord) -> Result<(), Error> {
        self.put_tenant_audited(rec, &[]).await
    }

    /// Stores a tenant record and, in the same commit, the audit entries
    /// of the change: the log never misses a change nor records one that
    /// did not happen.
    pub async fn put_tenant_audited(
        &self,
        rec: &TenantRecord,
        audit: &[AuditEntry],
    ) -> Result<(), Error> {
        let mut ops = vec![put(CF_TENANTS, rec.config.tenant_id.as_bytes(), json(rec)?)];
        ops.extend(audit_ops(audit)?);
        self.commit(ops).await.map(drop)
    }

    /// A tenant's audit entries (or every tenant's), oldest first.
    pub fn audit(&self, tenant: Option<&str>) -> Result<Vec<AuditEntry>, Error> {
        let prefix = tenant.map(audit_prefix).unwrap_or_default();
        let rows: Vec<AuditRow> = self.decode_all(CF_AUDIT, &prefix)?;
        Ok(rows.into_iter().map(|r| r.entry).collect())
    }

    /// Removes the audit entries of `tenant` stored at `keys` (as
    /// [`audit_keys`](Self::audit_keys) returned them).
    pub async fn remove_audit(&self, keys: Vec<Vec<u8>>) -> Result<(), Error> {
        let ops = keys
            .into_iter()
            .map(|key| RegOp::Delete {
                table: CF_AUDIT.into(),
                key,
            })
            .collect();
        self.commit(ops).await.map(drop)
    }

    /// Every audit entry with its key, in key order (by tenant, then
    /// time).
    pub fn audit_keys(&self) -> Result<Vec<(Vec<u8>, AuditEntry)>, Error> {
        self.scan(CF_AUDIT, b"")?
            .into_iter()
            .map(|(k, v)| {
                let row: AuditRow = serde_json::from_slice(&v).map_err(st)?;
                Ok((k, row.entry))
            })
            .collect()
    }

    /// Every tenant record.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, Error> {
        let out: Vec<TenantRecord> = self.decode_all(CF_TENANTS, b"")?;
        if let Some(r) = out.iter().find(|r| r.v != VERSION) {
            return Err(st(format!("unknown tenant record version {}", r.v)));
        }
        Ok(out)
    }

    /// One tenant record.
    pub fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, Error> {
        match self.get(CF_TENANTS, tenant.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(st)?)),
            None => Ok(None),
        }
    }

    /// Removes a tenant and all its users, adding `audit` in the same
    /// commit.
    pub async fn remove_tenant(&self, tenant: &str, audit: &[AuditEntry]) -> Result<(), Error> {
        let mut ops = vec![
            RegOp::Delete {
                table: CF_TENANTS.into(),
                key: tenant.as_bytes().to_vec(),
            },
            RegOp::DeletePrefix {
                table: CF_USERS.into(),
                prefix: user_key(tenant, ""),
            },
        ];
        ops.extend(audit_ops(audit)?);
        self.commit(ops).await.map(drop)
    }

    /// Adds a user.
    pub async fn put_user(&self, rec: &UserRecord) -> Result<(), Error> {
        let op = put(CF_USERS, user_key(&rec.tenant_id, &rec.user_id), json(rec)?);
        self.commit(vec![op]).await.map(drop)
    }

    /// Removes a user.
    pub async fn remove_user(&self, tenant: &str, user: &str) -> Result<(), Error> {
        let op = RegOp::Delete {
            table: CF_USERS.into(),
            key: user_key(tenant, user),
        };
        self.commit(vec![op]).await.map(drop)
    }

    /// A user of a tenant.
    pub fn user(&self, tenant: &str, user: &str) -> Result<Option<UserRecord>, Error> {
        match self.get(CF_USERS, &user_key(tenant, user))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(st)?)),
            None => Ok(None),
        }
    }

    /// Users of a tenant.
    pub fn users(&self, tenant: &str) -> Result<Vec<UserRecord>, Error> {
        self.decode_all(CF_USERS, &user_key(tenant, ""))
    }

    /// Stores an API key record.
    pub async fn put_key(&self, rec: &KeyRecord) -> Result<(), Error> {
        let op = put(CF_KEYS, rec.key_id.as_bytes(), json(rec)?);
        self.commit(vec![op]).await.map(drop)
    }

    /// Removes an API key record.
    pub async fn remove_key(&self, key_id: &str) -> Result<(), Error> {
        let op = RegOp::Delete {
            table: CF_KEYS.into(),
            key: key_id.as_bytes().to_vec(),
        };
        self.commit(vec![op]).await.map(drop)
    }

    /// One API key record.
    pub fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, Error> {
        match self.get(CF_KEYS, key_id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(st)?)),
            None => Ok(None),
        }
    }

    /// Every API key record.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, Error> {
        self.decode_all(CF_KEYS, b"")
    }

    /// Stores a cluster node record.
    pub async fn put_node(&self, rec: &NodeRecord) -> Result<(), Error> {
        let op = put(CF_NODES, rec.id.to_be_bytes(), json(rec)?);
        self.commit(vec![op]).await.map(drop)
    }

    /// Every cluster node record, by id.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.decode_all(CF_NODES, b"")
    }

    /// Stores a move job and, in the same commit, the tenant record the
    /// job's new state needs (so the record never runs ahead of the job
    /// or behind it).
    pub async fn put_job(&self, job: &MoveJob, rec: Option<&TenantRecord>) -> Result<(), Error> {
        let mut ops = vec![put(CF_JOBS, job.id.to_be_bytes(), json(job)?)];
        if let Some(rec) = rec {
            ops.push(put(CF_TENANTS, rec.config.tenant_id.as_bytes(), json(rec)?));
        }
        self.commit(ops).await.map(drop)
    }

    /// One move job.
    pub fn job(&self, id: u64) -> Result<Option<MoveJob>, Error> {
        match self.get(CF_JOBS, &id.to_be_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(st)?)),
            None => Ok(None),
        }
    }

    /// Every move job kept (in flight, and the bounded history), oldest
    /// first.
    pub fn jobs(&self) -> Result<Vec<MoveJob>, Error> {
        self.decode_all(CF_JOBS, b"")
    }

    /// Forgets finished jobs (history trimming).
    pub async fn remove_jobs(&self, ids: &[u64]) -> Result<(), Error> {
        let ops = ids
            .iter()
            .map(|id| RegOp::Delete {
                table: CF_JOBS.into(),
                key: id.to_be_bytes().to_vec(),
            })
            .collect();
        self.commit(ops).await.map(drop)
    }

    /// Registry keys that mention `tenant` (the purge test uses it). The
    /// move-job history (ids and node numbers only, kept bounded) and the
    /// audit log of limit changes (the operator's record, which outlives
    /// the tenant until its retention ends) are not counted.
    pub fn keys_mentioning(&self, tenant: &str) -> Result<usize, Error> {
        let needle = tenant.as_bytes();
        let mentions = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let mut n = 0;
        for table in TABLES
            .into_iter()
            .filter(|t| *t != CF_JOBS && *t != CF_AUDIT)
        {
            for (k, v) in self.scan(table, b"")? {
                if mentions(&k) || (table != CF_COUNTERS && mentions(&v)) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// An audit entry as stored (versioned JSON like every record here).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AuditRow {
    v: u32,
    #[serde(flatten)]
    entry: AuditEntry,
}

fn audit_prefix(tenant: &str) -> Vec<u8> {
    [tenant.as_bytes(), b"\0"].concat()
}

/// The puts of `entries`: keyed by tenant, then commit time in ns and
/// the entry's place in the change (so one change's entries keep their
/// order and two changes never share a key).
fn audit_ops(entries: &[AuditEntry]) -> Result<Vec<RegOp>, Error> {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let key = [
                audit_prefix(&e.tenant_id).as_slice(),
                &ns.to_be_bytes(),
                &(i as u32).to_be_bytes(),
            ]
            .concat();
            let row = AuditRow {
                v: VERSION,
                entry: e.clone(),
            };
            Ok(put(CF_AUDIT, key, json(&row)?))
        })
        .collect()
}

/// An API key as stored: its hash, never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Format version.
    pub v: u32,
    /// Public id.
    pub key_id: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Admin or tenant key.
    pub kind: crate::proto::wire::KeyKind,
    /// Tenant (tenant keys).
    pub tenant_id: Option<String>,
    /// User (tenant keys).
    pub user_id: Option<String>,
    /// Allowed operations (`None`: all).
    pub operations: Option<Vec<crate::proto::OperationType>>,
    /// Creation time, ms.
    pub created_at: u64,
    /// Revoked.
    pub revoked: bool,
}

impl KeyRecord {
    /// The public facts.
    pub fn info(&self) -> crate::proto::wire::KeyInfo {
        crate::proto::wire::KeyInfo {
            key_id: self.key_id.clone(),
            kind: self.kind,
            tenant_id: self.tenant_id.clone(),
            user_id: self.user_id.clone(),
            operations: self.operations.clone(),
            created_at: self.created_at,
            revoked: self.revoked,
        }
    }
}

impl TenantRecord {
    /// A new active record.
    pub fn new(config: TenantConfig, group: u64, replica: u64) -> Self {
        Self {
            v: VERSION,
            config,
            group,
            replica,
            state: TenantState::Active,
            replicas: Vec::new(),
        }
    }
}

impl UserRecord {
    /// A new user.
    pub fn new(tenant: &str, user: &str) -> Self {
        Self {
            v: VERSION,
            user_id: user.to_string(),
            tenant_id: tenant.to_string(),
            created_at: crate::util::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn ids_from_blocks_are_unique_across_blocks_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2 {
            let reg = Registry::open(dir.path()).unwrap();
            for _ in 0..(ID_BLOCK + 5) {
                assert!(seen.insert(reg.take_id("group").await.unwrap()));
            }
            // Interleaved with plain allocations of the same counter.
            assert!(seen.insert(reg.next_id("group").await.unwrap()));
        }
        // Two blocks and a bit per open: a reopen skips what was left.
        assert_eq!(seen.len() as u64, 2 * (ID_BLOCK + 6));
        assert!(*seen.last().unwrap() <= 2 * (2 * ID_BLOCK + 1));
    }
}
