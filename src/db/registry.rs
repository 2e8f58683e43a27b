//! The persisted tenant registry: tenants, their users, and id counters,
//! in the node's own small RocksDB instance (`node/`). Every change is a
//! synced write. Values are versioned JSON (`{"v":1,...}`).

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::proto::Error;
use crate::tenant::TenantConfig;

const CF_TENANTS: &str = "tenants";
const CF_USERS: &str = "users";
const CF_COUNTERS: &str = "counters";
const CF_KEYS: &str = "keys";
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
    /// Raft node id of this node's replica.
    pub replica: u64,
    /// Lifecycle state.
    pub state: TenantState,
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

/// The registry database.
pub struct Registry {
    db: DB,
}

fn st(e: impl std::fmt::Display) -> Error {
    Error::storage(e)
}

fn user_key(tenant: &str, user: &str) -> Vec<u8> {
    [tenant.as_bytes(), b"\0", user.as_bytes()].concat()
}

impl Registry {
    /// Opens (or creates) the registry at `path`.
    pub fn open(path: &Path) -> Result<Registry, Error> {
        let mut o = Options::default();
        o.create_if_missing(true);
        o.create_missing_column_families(true);
        let cfs = [CF_TENANTS, CF_USERS, CF_COUNTERS, CF_KEYS]
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(Registry {
            db: DB::open_cf_descriptors(&o, path, cfs).map_err(st)?,
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, Error> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| st(format!("column family {name} missing")))
    }

    fn write(&self, b: WriteBatch) -> Result<(), Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(b, &wo).map_err(st)
    }

    /// Allocates the next value of a named counter (starting at 1), durably.
    pub fn next_id(&self, name: &str) -> Result<u64, Error> {
        let cf = self.cf(CF_COUNTERS)?;
        let cur = match self.db.get_cf(cf, name).map_err(st)? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(st)?),
            None => 0,
        };
        let next = cur + 1;
        let mut b = WriteBatch::default();
        b.put_cf(cf, name, next.to_be_bytes());
        self.write(b)?;
        Ok(next)
    }

    /// Stores a tenant record.
    pub fn put_tenant(&self, rec: &TenantRecord) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        let json = serde_json::to_vec(rec).map_err(st)?;
        b.put_cf(self.cf(CF_TENANTS)?, rec.config.tenant_id.as_bytes(), json);
        self.write(b)
    }

    /// Every tenant record.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, Error> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_TENANTS)?, IteratorMode::Start)
        {
            let (_, v) = item.map_err(st)?;
            let rec: TenantRecord = serde_json::from_slice(&v).map_err(st)?;
            if rec.v != VERSION {
                return Err(st(format!("unknown tenant record version {}", rec.v)));
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Removes a tenant and all its users.
    pub fn remove_tenant(&self, tenant: &str) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_TENANTS)?, tenant.as_bytes());
        let lo = user_key(tenant, "");
        let mut hi = tenant.as_bytes().to_vec();
        hi.push(1);
        b.delete_range_cf(self.cf(CF_USERS)?, lo, hi);
        self.write(b)
    }

    /// Adds a user.
    pub fn put_user(&self, rec: &UserRecord) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_USERS)?,
            user_key(&rec.tenant_id, &rec.user_id),
            serde_json::to_vec(rec).map_err(st)?,
        );
        self.write(b)
    }

    /// Removes a user.
    pub fn remove_user(&self, tenant: &str, user: &str) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_USERS)?, user_key(tenant, user));
        self.write(b)
    }

    /// A user of a tenant.
    pub fn user(&self, tenant: &str, user: &str) -> Result<Option<UserRecord>, Error> {
        match self
            .db
            .get_cf(self.cf(CF_USERS)?, user_key(tenant, user))
            .map_err(st)?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(st)?)),
            None => Ok(None),
        }
    }

    /// Users of a tenant.
    pub fn users(&self, tenant: &str) -> Result<Vec<UserRecord>, Error> {
        let mut out = Vec::new();
        let prefix = user_key(tenant, "");
        for item in self.db.iterator_cf(
            self.cf(CF_USERS)?,
            IteratorMode::From(&prefix, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(st)?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(st)?);
        }
        Ok(out)
    }

    /// Stores an API key record.
    pub fn put_key(&self, rec: &KeyRecord) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_KEYS)?,
            rec.key_id.as_bytes(),
            serde_json::to_vec(rec).map_err(st)?,
        );
        self.write(b)
    }

    /// Removes an API key record.
    pub fn remove_key(&self, key_id: &str) -> Result<(), Error> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_KEYS)?, key_id.as_bytes());
        self.write(b)
    }

    /// Every API key record.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, Error> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_KEYS)?, IteratorMode::Start) {
            let (_, v) = item.map_err(st)?;
            out.push(serde_json::from_slice(&v).map_err(st)?);
        }
        Ok(out)
    }

    /// Registry keys that mention `tenant` (the purge test uses it).
    pub fn keys_mentioning(&self, tenant: &str) -> Result<usize, Error> {
        let needle = tenant.as_bytes();
        let mut n = 0;
        for cf in [CF_TENANTS, CF_USERS, CF_COUNTERS, CF_KEYS] {
            for item in self.db.iterator_cf(self.cf(cf)?, IteratorMode::Start) {
                let (k, v) = item.map_err(st)?;
                let mentions = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
                if mentions(&k) || (cf != CF_COUNTERS && mentions(&v)) {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
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
