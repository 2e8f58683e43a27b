//! S4 retention: purging a tenant's objects older than a cutoff through
//! its shard leader's raft log, and the scheduled cleanup.
//!
//! A purge is `Command::PurgeOlderThan`, proposed by the replica that
//! leads the tenant's shard (a follower's proposal fails with
//! `ForwardToLeader`; the router sends admin purges to the leader), in
//! commands of at most [`PURGE_CHUNK`] objects, until one removes fewer.
//! Every replica applies the same deletes, and the storage counters drop
//! by exactly what was removed (apply subtracts each object's bytes, its
//! vector and its edges, as a delete does).
//!
//! The cleanup: every `retention.check_ms` the node looks at the tenants
//! whose shard it leads and that have a retention period
//! ([`crate::TenantConfig::retention`]). A tenant is cleaned when
//! `retention.interval_ms` passed since its last cleanup here, or at once
//! when its storage passed [`PRESSURE_RATIO`] of a storage limit (the
//! seed's cleanup at 90%). A purge is not a tenant request: it is not
//! admitted, rate-limited or counted in the tenant's usage.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::proto::Result;
use crate::storage::Command;

use super::{session, Database, Tenant};

/// Most objects one purge command deletes (one raft entry).
pub const PURGE_CHUNK: u32 = 1_000;

/// Storage use (of bytes, objects or vectors, against its limit) at which
/// the cleanup runs without waiting for its schedule.
pub const PRESSURE_RATIO: f64 = 0.9;

impl Database {
    /// S4: deletes `tenant`'s objects (of `collection`, or all) created
    /// before `cutoff_ms`, through its shard's raft log; returns how many.
    /// Runs on the replica that leads the shard (elsewhere it fails with
    /// `Unavailable`); not charged to the tenant's request budget.
    pub async fn purge_older_than(
        &self,
        tenant: &str,
        collection: Option<&str>,
        cutoff_ms: u64,
    ) -> Result<u64> {
        crate::tenant::validate_tenant_id(tenant)?;
        if let Some(c) = collection {
            crate::tenant::validate_name("collection", c, 64)?;
        }
        let t = self.tenant(tenant)?;
        purge(&t, collection, cutoff_ms, self.request_timeout()).await
    }

    /// The retention period of a loaded tenant (its tier's, overridden by
    /// its custom settings); `None`: kept forever.
    pub(crate) fn retention_of(&self, t: &Tenant) -> Option<Duration> {
        let cfg = t.config();
        let tier = self.inner.tiers.read().limits(cfg.tier).retention;
        cfg.retention(tier)
    }

    /// Starts the scheduled cleanup (it ends when the database is gone).
    pub(crate) fn start_retention(&self) {
        let weak = self.downgrade();
        let every = Duration::from_millis(self.inner.config.retention.check_ms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                cleanup_pass(&db, crate::util::now_ms()).await;
            }
        });
    }
}

async fn purge(
    t: &Tenant,
    collection: Option<&str>,
    cutoff_ms: u64,
    timeout: Duration,
) -> Result<u64> {
    let mut removed = 0;
    loop {
        let cmd = Command::PurgeOlderThan {
            collection: collection.map(str::to_string),
            cutoff_ms,
            max: PURGE_CHUNK,
        };
        let n = session::call_write(t, cmd, timeout).await?.done()?;
        removed += n;
        if n < PURGE_CHUNK as u64 {
            return Ok(removed);
        }
    }
}

/// The highest use of a storage limit (bytes, objects, vectors), as a
/// fraction of it.
fn storage_pressure(t: &Tenant) -> f64 {
    let Ok(data) = t.data() else { return 0.0 };
    let u = data.usage();
    let s = &t.config().storage_limit;
    [
        (u.bytes, s.max_storage_bytes),
        (u.objects, s.max_objects),
        (u.vectors, s.max_vectors),
    ]
    .into_iter()
    .filter(|(_, max)| *max > 0)
    .map(|(used, max)| used as f64 / max as f64)
    .fold(0.0, f64::max)
}

/// One look at the tenants this node leads: cleans those that are due.
async fn cleanup_pass(db: &Database, now_ms: u64) {
    let interval = db.inner.config.retention.interval_ms;
    for t in db.loaded_tenants() {
        let Some(period) = db.retention_of(&t) else {
            continue;
        };
        let last = t.retention_ran.load(Ordering::Relaxed);
        let due = now_ms.saturating_sub(last) >= interval;
        // A hibernated tenant is reopened when its cleanup is due (its
        // storage cannot grow while it sleeps), on the node whose replica
        // led its group when it went to sleep: a follower's would reopen
        // only to find it does not lead (and its raft ticks would wake
        // the group).
        let _awake = match t.is_asleep() {
            false => None,
            true if !due => continue,
            true if !db.led_at_rest(&t) => {
                t.retention_ran.store(now_ms, Ordering::Relaxed);
                continue;
            }
            true => match db.awake(&t).await {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(tenant = %t.config().tenant_id, error = %e, "retention: the tenant could not be reopened");
                    continue;
                }
            },
        };
        let Some(raft) = t.raft() else { continue };
        if !crate::shard::is_leader(&raft) {
            continue;
        }
        if !due && storage_pressure(&t) < PRESSURE_RATIO {
            continue;
        }
        t.retention_ran.store(now_ms, Ordering::Relaxed);
        t.wake();
        let cutoff = now_ms.saturating_sub(period.as_millis() as u64);
        let id = t.config().tenant_id.clone();
        match purge(&t, None, cutoff, db.request_timeout()).await {
            Ok(0) => tracing::debug!(tenant = %id, "retention: nothing to remove"),
            Ok(n) => {
                tracing::info!(tenant = %id, removed = n, cutoff_ms = cutoff, "retention: removed objects")
            }
            Err(e) => tracing::warn!(tenant = %id, error = %e, "retention cleanup failed"),
        }
    }
}
