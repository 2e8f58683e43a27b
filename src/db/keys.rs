//! API key management on the database: create, authenticate, revoke,
//! rotate. Records live in the registry (hash only); a copy is cached in
//! memory so a per-request check is a map lookup.

use std::collections::HashMap;
use std::path::Path;

use parking_lot::RwLock;

use crate::auth::key;
use crate::proto::wire::{KeyInfo, KeyKind};
use crate::proto::{Error, OperationType, Result};

use super::{Database, KeyRecord};

/// How long a key id found in no registry copy is answered "unknown"
/// without looking again.
pub const UNKNOWN_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The in-memory key cache.
pub(crate) struct KeyCache {
    pub(crate) keys: RwLock<HashMap<String, KeyRecord>>,
    /// Key ids recently looked up and not found (bounded, expiring).
    pub(crate) unknown: moka::sync::Cache<String, ()>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            keys: RwLock::default(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(UNKNOWN_KEY_TTL)
                .build(),
        }
    }
}

fn unauth(reason: &str) -> Error {
    Error::Unauthenticated {
        reason: reason.to_string(),
    }
}

impl Database {
    pub(crate) fn load_keys(&self) -> Result<()> {
        let all = self.registry()?.keys()?;
        *self.inner.keys.keys.write() = all.into_iter().map(|k| (k.key_id.clone(), k)).collect();
        Ok(())
    }

    /// Creates an API key. Tenant keys belong to one existing user of one
    /// tenant and may be restricted to some operations. Returns the full
    /// key (shown once) and its facts.
    pub async fn create_key(
        &self,
        kind: KeyKind,
        tenant: Option<&str>,
        user: Option<&str>,
        operations: Option<Vec<OperationType>>,
    ) -> Result<(String, KeyInfo)> {
        let (tenant_id, user_id) = match kind {
            KeyKind::Admin => (None, None),
            KeyKind::Tenant => {
                let t = tenant.ok_or(Error::MissingTenantContext)?;
                let u =
                    user.ok_or_else(|| Error::invalid("user_id", "a tenant key needs a user"))?;
                self.record(t)?;
                if self.registry()?.user(t, u)?.is_none() {
                    return Err(Error::not_found("user", u));
                }
                (Some(t.to_string()), Some(u.to_string()))
            }
        };
        let g = key::generate();
        let rec = KeyRecord {
            v: 1,
            key_id: g.key_id.clone(),
            secret_hash: g.secret_hash,
            kind,
            tenant_id,
            user_id,
            operations,
            created_at: crate::util::now_ms(),
            revoked: false,
        };
        self.registry()?.put_key(&rec).await?;
        let info = rec.info();
        self.inner.keys.keys.write().insert(rec.key_id.clone(), rec);
        tracing::info!(key_id = %info.key_id, kind = ?info.kind, tenant = ?info.tenant_id, "api key created");
        Ok((g.api_key, info))
    }

    /// Checks a full API key; returns its facts.
    pub fn authenticate(&self, api_key: &str) -> Result<KeyInfo> {
        let (id, secret) = key::parse(api_key).ok_or_else(|| unauth("malformed API key"))?;
        let keys = self.inner.keys.keys.read();
        let rec = keys.get(id).ok_or_else(|| unauth("unknown API key"))?;
        if !key::verify(secret, &rec.secret_hash) {
            return Err(unauth("wrong API key secret"));
        }
        if rec.revoked {
            return Err(unauth("API key revoked"));
        }
        Ok(rec.info())
    }

    /// [`authenticate`](Self::authenticate), waiting up to a second for
    /// this node's copy of the metadata to catch up when the key is
    /// unknown on a cluster node (a key created moments ago elsewhere).
    ///
    /// A miss never reloads the key table: it polls the one key id in the
    /// local registry, and a key id that stays unknown is remembered as
    /// unknown for two seconds, so guessing costs one lookup per
    /// key id at most.
    pub async fn authenticate_fresh(&self, api_key: &str) -> Result<KeyInfo> {
        let first = self.authenticate(api_key);
        if !self.is_clustered()
            || !matches!(&first, Err(Error::Unauthenticated { reason }) if reason == "unknown API key")
        {
            return first;
        }
        let Some((id, _)) = key::parse(api_key) else {
            return first;
        };
        if self.inner.keys.unknown.contains_key(id) {
            return first;
        }
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if let Some(rec) = self.registry()?.key(id)? {
                self.inner.keys.keys.write().insert(rec.key_id.clone(), rec);
                return self.authenticate(api_key);
            }
        }
        self.inner.keys.unknown.insert(id.to_string(), ());
        self.authenticate(api_key)
    }

    /// The key `key_id` a request forwarded by another node was made
    /// with, checked again here: it must exist (waiting up to a second for
    /// this node's copy of the metadata when it is not known yet) and not
    /// be revoked. The caller checks its kind and scope.
    pub async fn key_for_peer(&self, key_id: &str) -> Result<KeyInfo> {
        let first = self.key_still_valid(key_id);
        if !matches!(first, Err(Error::Unauthenticated { .. })) || !self.is_clustered() {
            return first;
        }
        if self.inner.keys.keys.read().contains_key(key_id) {
            return first; // revoked
        }
        for _ in 0..20 {
            if let Some(rec) = self.registry()?.key(key_id)? {
                self.inner.keys.keys.write().insert(rec.key_id.clone(), rec);
                return self.key_still_valid(key_id);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(unauth("unknown API key"))
    }

    /// Re-checks an authenticated key id (every request does this, so a
    /// revoked key fails on its next request).
    pub fn key_still_valid(&self, key_id: &str) -> Result<KeyInfo> {
        match self.inner.keys.keys.read().get(key_id) {
            Some(r) if !r.revoked => Ok(r.info()),
            Some(_) => Err(unauth("API key revoked")),
            None => Err(unauth("API key deleted")),
        }
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<KeyInfo> {
        let mut rec = self
            .inner
            .keys
            .keys
            .read()
            .get(key_id)
            .cloned()
            .ok_or_else(|| Error::not_found("key", key_id))?;
        rec.revoked = true;
        self.registry()?.put_key(&rec).await?;
        let info = rec.info();
        self.inner.keys.keys.write().insert(key_id.to_string(), rec);
        tracing::info!(%key_id, "api key revoked");
        Ok(info)
    }

    /// Revokes a key and issues a new one with the same scope.
    pub async fn rotate_key(&self, key_id: &str) -> Result<(String, KeyInfo)> {
        let old = self.revoke_key(key_id).await?;
        self.create_key(
            old.kind,
            old.tenant_id.as_deref(),
            old.user_id.as_deref(),
            old.operations,
        )
        .await
    }

    /// Keys (of one tenant, or all).
    pub fn list_keys(&self, tenant: Option<&str>) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self
            .inner
            .keys
            .keys
            .read()
            .values()
            .filter(|k| tenant.is_none() || k.tenant_id.as_deref() == tenant)
            .map(KeyRecord::info)
            .collect();
        v.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.key_id.cmp(&b.key_id))
        });
        v
    }

    /// Revokes every key of a tenant (or of one of its users).
    pub(crate) async fn revoke_keys_of(&self, tenant: &str, user: Option<&str>) -> Result<()> {
        let ids: Vec<String> = self
            .list_keys(Some(tenant))
            .into_iter()
            .filter(|k| !k.revoked && (user.is_none() || k.user_id.as_deref() == user))
            .map(|k| k.key_id)
            .collect();
        for id in ids {
            self.revoke_key(&id).await?;
        }
        Ok(())
    }

    /// Removes a tenant's key records entirely (tenant purge).
    pub(crate) async fn forget_keys_of(&self, tenant: &str) -> Result<()> {
        let ids: Vec<String> = self
            .list_keys(Some(tenant))
            .into_iter()
            .map(|k| k.key_id)
            .collect();
        for id in ids {
            self.registry()?.remove_key(&id).await?;
            self.inner.keys.keys.write().remove(&id);
        }
        Ok(())
    }

    /// Makes sure an admin key exists. On first start it creates one and
    /// writes it to `path`, readable only by its owner; returns that path.
    /// On a cluster only group 0's leader does (the node that bootstrapped
    /// it, on first start): a node joining a cluster uses its admin key.
    pub async fn ensure_admin_key(&self, path: &Path) -> Result<Option<std::path::PathBuf>> {
        if let Some(c) = self.hooks() {
            if !c.may_mint_admin_key(self).await? {
                return Ok(None);
            }
        }
        if self
            .list_keys(None)
            .iter()
            .any(|k| k.kind == KeyKind::Admin && !k.revoked)
        {
            return Ok(None);
        }
        let (api_key, _) = self.create_key(KeyKind::Admin, None, None, None).await?;
        crate::util::write_private(path, format!("{api_key}\n").as_bytes())?;
        Ok(Some(path.to_path_buf()))
    }
}
