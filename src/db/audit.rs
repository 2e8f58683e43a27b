//! A5: the audit log of tenant config changes, and the dynamic limit
//! policy that raises storage limits as a tenant grows.
//!
//! **The log.** Every change of a tenant's config (an admin's update, the
//! policy's raise, a creation, a deletion) is committed together with one
//! [`AuditEntry`] per field it changed, in the same registry commit (on a
//! cluster, the same group-0 entry): the log never misses a change and
//! never records one that did not happen. Entries are keyed by tenant,
//! then commit time, so one tenant's history is one prefix scan. They
//! outlive a deleted tenant until their retention ends: the tenant's
//! `audit_retention_years` (its custom settings, else its tier's, else
//! `[audit] default_retention_years`), and at most
//! `[audit] max_entries_per_tenant` each, trimmed by the metadata leader
//! (the only node on a standalone one) every `[audit] trim_ms`.
//!
//! **The policy.** A tenant that opted in (`custom_settings.auto_scale =
//! true`) and whose storage (bytes, objects or vectors) passed
//! [`AUTO_SCALE_AT`] of its limit gets that limit raised
//! ×[`AUTO_SCALE_FACTOR`], never past its tier's `auto_scale` ceiling (a
//! tier without one is never raised). The node leading the tenant's shard
//! looks every `[auto_scale] check_ms`, from the usage its shard applied
//! and the limits in the registry; it skips a tenant whose loaded config
//! is not yet the registry's (a change on its way here) and raises one
//! tenant at most once per `[auto_scale] cooldown_ms`, so a raise reaches
//! every node before the next is weighed. On a cluster the shard leader
//! holds no admin key, so it asks group 0's leader, which commits the
//! raise only if the asking node hosts one of the tenant's replicas, the
//! tenant opted in, and the change is one the policy could make (bytes,
//! objects and vectors limits each stay or grow within the ceiling;
//! nothing else changes: [`check_raise`]). Each raise is also a
//! `limits_raised` info event (A3).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::proto::{AuditEntry, ChangedBy, Error, Result, StorageUsage};
use crate::tenant::{StorageCeiling, StorageLimitConfig, TenantConfig, TenantUpdate};
use crate::tenant::{AUTO_SCALE_AT, AUTO_SCALE_FACTOR};

use super::{Database, Tenant};

/// Most audit entries one request returns.
pub const MAX_AUDIT_PAGE: usize = 1_000;
/// Longest reason an update may give.
pub const MAX_REASON_LEN: usize = 1_024;
/// Most audit entries one trim commit deletes.
const TRIM_CHUNK: usize = 1_000;
const YEAR_MS: u64 = 365 * 24 * 3_600_000 + 6 * 3_600_000;

/// The entries of a change from `old` to `new`: one per leaf field of
/// the config (dotted path) whose value differs. `created_at` is not
/// audited (it never changes).
pub(crate) fn diff(
    old: &TenantConfig,
    new: &TenantConfig,
    actor: &ChangedBy,
    reason: &str,
    at_ms: u64,
) -> Vec<AuditEntry> {
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    leaves_diff(String::new(), Some(&a), Some(&b), &mut changes);
    changes
        .into_iter()
        .filter(|(field, _, _)| field != "created_at")
        .map(|(field, before, after)| AuditEntry {
            at_ms,
            tenant_id: new.tenant_id.clone(),
            actor: actor.to_string(),
            field,
            old: before,
            new: after,
            reason: reason.to_string(),
        })
        .collect()
}

type Change = (String, Option<String>, Option<String>);

/// Appends to `out` every leaf under `path` that differs between `a` and
/// `b` (objects are walked; anything else is a leaf).
fn leaves_diff(
    path: String,
    a: Option<&serde_json::Value>,
    b: Option<&serde_json::Value>,
    out: &mut Vec<Change>,
) {
    use serde_json::Value::Object;
    match (a, b) {
        (Some(Object(x)), Some(Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leaves_diff(p, x.get(k), y.get(k), out);
            }
        }
        (a, b) if a != b => out.push((path, a.map(|v| v.to_string()), b.map(|v| v.to_string()))),
        _ => {}
    }
}

/// The entry of a creation (`new`) or a deletion (`old`) of a tenant.
pub(crate) fn lifecycle(
    cfg: &TenantConfig,
    created: bool,
    actor: &ChangedBy,
    at_ms: u64,
) -> AuditEntry {
    let tier = serde_json::Value::from(cfg.tier.as_str()).to_string();
    let (old, new, reason) = if created {
        (None, Some(tier), "created")
    } else {
        (Some(tier), None, "deleted")
    };
    AuditEntry {
        at_ms,
        tenant_id: cfg.tenant_id.clone(),
        actor: actor.to_string(),
        field: "tenant".into(),
        old,
        new,
        reason: reason.into(),
    }
}

/// What the policy would raise `limits` to for `usage`, with the reason;
/// `None`: nothing to raise (no limit past [`AUTO_SCALE_AT`], or each is
/// at its ceiling already).
pub(crate) fn raise(
    limits: &StorageLimitConfig,
    usage: &StorageUsage,
    ceiling: &StorageCeiling,
) -> Option<(StorageLimitConfig, String)> {
    let mut out = limits.clone();
    let mut why = Vec::new();
    for (name, used, limit, ceil) in [
        (
            "max_storage_bytes",
            usage.bytes,
            &mut out.max_storage_bytes,
            ceiling.max_storage_bytes,
        ),
        (
            "max_objects",
            usage.objects,
            &mut out.max_objects,
            ceiling.max_objects,
        ),
        (
            "max_vectors",
            usage.vectors,
            &mut out.max_vectors,
            ceiling.max_vectors,
        ),
    ] {
        let cur = *limit;
        if cur == 0 || cur >= ceil || (used as f64) <= cur as f64 * AUTO_SCALE_AT {
            continue;
        }
        let next = ((cur as f64 * AUTO_SCALE_FACTOR).ceil() as u64)
            .max(cur + 1)
            .min(ceil);
        *limit = next;
        why.push(format!(
            "{name}: {used} used of {cur} ({:.0}% > {:.0}%), raised x{AUTO_SCALE_FACTOR} to {next} (ceiling {ceil})",
            used as f64 * 100.0 / cur as f64,
            AUTO_SCALE_AT * 100.0
        ));
    }
    (!why.is_empty()).then(|| (out, format!("auto_scale: {}", why.join("; "))))
}

/// The keys to trim: for each tenant, entries older than its retention
/// (`retention_ms(tenant)`) and the oldest beyond `cap`. `entries` are in
/// key order (by tenant, then time).
pub(crate) fn to_trim(
    entries: Vec<(Vec<u8>, AuditEntry)>,
    now_ms: u64,
    cap: u64,
    retention_ms: impl Fn(&str) -> u64,
) -> Vec<Vec<u8>> {
    let mut by_tenant: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    for (k, e) in entries {
        by_tenant.entry(e.tenant_id).or_default().push((k, e.at_ms));
    }
    let mut out = Vec::new();
    for (tenant, rows) in by_tenant {
        let cutoff = now_ms.saturating_sub(retention_ms(&tenant));
        let excess = rows.len().saturating_sub(cap as usize);
        for (i, (k, at)) in rows.into_iter().enumerate() {
            if i < excess || at < cutoff {
                out.push(k);
            }
        }
    }
    out
}

impl Database {
    /// A5: the newest `limit` (at most [`MAX_AUDIT_PAGE`]) audit entries
    /// of `tenant`, or of every tenant, oldest first.
    pub fn audit_log(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>> {
        if let Some(t) = tenant {
            crate::tenant::validate_tenant_id(t)?;
        }
        let mut all = self.registry()?.audit(tenant)?;
        if tenant.is_none() {
            // Keyed by tenant first: put every tenant's in time order.
            all.sort_by_key(|e| e.at_ms);
        }
        let limit = limit.clamp(1, MAX_AUDIT_PAGE);
        let skip = all.len().saturating_sub(limit);
        Ok(all.split_off(skip))
    }

    /// Starts the audit trim and the dynamic limit policy (both end when
    /// the database is gone).
    pub(crate) fn start_audit_loops(&self) {
        let weak = self.downgrade();
        let trim = Duration::from_millis(self.inner.config.audit.trim_ms.max(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(trim);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                if let Err(e) = db.trim_audit(crate::util::now_ms()).await {
                    tracing::warn!(error = %e, "audit log trim failed");
                }
            }
        });
        let weak = self.downgrade();
        let check = Duration::from_millis(self.inner.config.auto_scale.check_ms.max(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(check);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                for t in db.loaded_tenants() {
                    if let Err(e) = db.auto_scale(&t).await {
                        let id = t.config().tenant_id.clone();
                        tracing::warn!(tenant = %id, error = %e, "auto_scale: raising limits failed");
                    }
                }
            }
        });
    }

    /// Removes the audit entries past their retention or their tenant's
    /// cap; returns how many. Runs where the registry is written: on a
    /// cluster, on the metadata leader only.
    pub(crate) async fn trim_audit(&self, now_ms: u64) -> Result<usize> {
        if self.hooks().is_some_and(|h| !h.leads_metadata()) {
            return Ok(0);
        }
        let reg = self.registry()?;
        let tiers = self.tiers();
        let settings = &self.inner.config.audit;
        let years: HashMap<String, u64> = reg
            .tenants()?
            .into_iter()
            .map(|r| {
                let tier = tiers.limits(r.config.tier).audit_retention_years;
                let y = r
                    .config
                    .audit_retention_years(tier, settings.default_retention_years);
                (r.config.tenant_id, y)
            })
            .collect();
        let retention = |t: &str| {
            years
                .get(t)
                .copied()
                .unwrap_or(settings.default_retention_years)
                .saturating_mul(YEAR_MS)
        };
        let keys = to_trim(
            reg.audit_keys()?,
            now_ms,
            settings.max_entries_per_tenant,
            retention,
        );
        let n = keys.len();
        for chunk in keys.chunks(TRIM_CHUNK) {
            reg.remove_audit(chunk.to_vec()).await?;
        }
        if n > 0 {
            tracing::info!(removed = n, "audit log trimmed");
        }
        Ok(n)
    }

    /// The dynamic limit policy for one tenant (see the module doc).
    async fn auto_scale(&self, t: &Tenant) -> Result<()> {
        let cfg = t.config();
        if !cfg.auto_scale() {
            return Ok(());
        }
        let Some(raft) = t.raft() else { return Ok(()) };
        if !crate::shard::is_leader(&raft) {
            return Ok(());
        }
        let now = crate::util::now_ms();
        let cooldown = self.inner.config.auto_scale.cooldown_ms;
        if now.saturating_sub(t.auto_scaled_at.load(Ordering::Relaxed)) < cooldown {
            return Ok(());
        }
        let Some(ceiling) = self.tiers().limits(cfg.tier).auto_scale else {
            return Ok(());
        };
        let rec = self.record(&cfg.tenant_id)?;
        if rec.config != *cfg {
            // A change on its way to this replica: weigh it next time.
            return Ok(());
        }
        let usage = t.data()?.usage();
        let Some((limits, reason)) = raise(&rec.config.storage_limit, &usage, &ceiling) else {
            return Ok(());
        };
        t.auto_scaled_at.store(now, Ordering::Relaxed);
        match self.hooks() {
            // Registry writes are group 0's leader's: it checks the raise.
            Some(h) => {
                h.raise_limits(self, &cfg.tenant_id, limits, &reason)
                    .await?
            }
            None => self.commit_raise(&cfg.tenant_id, limits, &reason).await?,
        }
        self.events().emit(
            crate::proto::EventLevel::Info,
            Some(&cfg.tenant_id),
            crate::proto::EventKind::LimitsRaised {
                reason: reason.clone(),
            },
            format!("storage limits raised by the dynamic limit policy: {reason}"),
        );
        Ok(())
    }
}

impl Database {
    /// Commits a raise of `tenant`'s storage limits by the dynamic limit
    /// policy, if the policy could have made it (see [`check_raise`]): on
    /// a cluster, group 0's leader runs this for the shard leader that
    /// asked, which holds no admin key.
    pub(crate) async fn commit_raise(
        &self,
        tenant: &str,
        limits: StorageLimitConfig,
        reason: &str,
    ) -> Result<()> {
        // Checked and applied under one lifecycle lock: no other change
        // lands between the check and the update it allows.
        let _g = self.lock_lifecycle().await;
        let rec = self.record(tenant)?;
        let cfg = &rec.config;
        if !cfg.auto_scale() {
            return Err(Error::PermissionDenied {
                reason: format!("tenant {tenant} did not opt in to auto_scale"),
            });
        }
        let ceiling = self.tiers().limits(cfg.tier).auto_scale;
        check_raise(&cfg.storage_limit, &limits, ceiling.as_ref())?;
        let update = TenantUpdate {
            storage_limit: Some(limits),
            ..Default::default()
        };
        self.update_tenant_locked(tenant, update, &ChangedBy::AutoScale, reason)
            .await
            .map(drop)
    }
}

/// Whether `new` is a raise the policy may make of `old`: the bytes,
/// objects and vectors limits each stay or grow, and one that grows stays
/// within the tier's `ceiling`; nothing else changes.
pub(crate) fn check_raise(
    old: &StorageLimitConfig,
    new: &StorageLimitConfig,
    ceiling: Option<&StorageCeiling>,
) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::InvalidConfig {
            key: "storage_limit".into(),
            reason: format!("not a raise the dynamic limit policy may make: {why}"),
        })
    };
    let Some(ceiling) = ceiling else {
        return refuse("the tier has no auto_scale ceiling".into());
    };
    let mut rest = new.clone();
    for (name, old, new, ceil, field) in [
        (
            "max_storage_bytes",
            old.max_storage_bytes,
            new.max_storage_bytes,
            ceiling.max_storage_bytes,
            &mut rest.max_storage_bytes,
        ),
        (
            "max_objects",
            old.max_objects,
            new.max_objects,
            ceiling.max_objects,
            &mut rest.max_objects,
        ),
        (
            "max_vectors",
            old.max_vectors,
            new.max_vectors,
            ceiling.max_vectors,
            &mut rest.max_vectors,
        ),
    ] {
        if new < old {
            return refuse(format!("{name} would fall from {old} to {new}"));
        }
        if new > old && new > ceil {
            return refuse(format!("{name} {new} is past the tier's ceiling {ceil}"));
        }
        *field = old;
    }
    if rest != *old {
        return refuse("it changes more than the bytes, objects and vectors limits".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Tiers;

    fn cfg() -> TenantConfig {
        TenantConfig::for_tier(
            &Tiers::default(),
            "acme",
            "A",
            "tier1",
            serde_json::json!({}),
        )
        .unwrap()
    }

    #[test]
    fn a_diff_names_each_changed_leaf_with_both_values() {
        let a = cfg();
        let mut b = a.clone();
        b.storage_limit.max_objects = 20_000;
        b.enabled = false;
        b.custom_settings
            .0
            .insert("auto_scale".into(), serde_json::json!(true));
        let d = diff(&a, &b, &ChangedBy::Key("k1".into()), "why", 7);
        let fields: Vec<&str> = d.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "custom_settings.auto_scale",
                "enabled",
                "storage_limit.max_objects"
            ]
        );
        let objects = &d[2];
        assert_eq!(objects.old.as_deref(), Some("10000"));
        assert_eq!(objects.new.as_deref(), Some("20000"));
        assert_eq!(objects.actor, "key:k1");
        assert_eq!((objects.at_ms, objects.reason.as_str()), (7, "why"));
        assert_eq!(objects.tenant_id, "acme");
        assert_eq!(d[0].old, None);
        assert!(diff(&a, &a, &ChangedBy::Embedded, "", 1).is_empty());
    }

    #[test]
    fn a_raise_from_a_peer_passes_only_if_the_policy_could_have_made_it() {
        let old = cfg().storage_limit;
        let ceiling = StorageCeiling {
            max_storage_bytes: u64::MAX,
            max_objects: 20_000,
            max_vectors: 20_000,
        };
        let with = |f: &dyn Fn(&mut StorageLimitConfig)| {
            let mut l = old.clone();
            f(&mut l);
            check_raise(&old, &l, Some(&ceiling))
        };
        assert!(with(&|l| l.max_objects = 15_000).is_ok());
        assert!(with(&|l| l.max_objects = 20_000).is_ok());
        assert!(with(&|_| {}).is_ok());
        for bad in [
            with(&|l| l.max_objects = 20_001),
            with(&|l| l.max_vectors = 9_999),
            with(&|l| l.hard_limits = !l.hard_limits),
            with(&|l| l.max_object_size += 1),
            check_raise(&old, &old, None),
        ] {
            assert!(
                matches!(&bad, Err(Error::InvalidConfig { key, .. }) if key == "storage_limit"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_policy_raises_past_80_percent_by_half_up_to_the_ceiling() {
        let limits = cfg().storage_limit; // 100 MiB, 10,000 objects and vectors
        let ceiling = StorageCeiling {
            max_storage_bytes: 1 << 30,
            max_objects: 12_000,
            max_vectors: 100_000,
        };
        let usage = |objects, vectors| StorageUsage {
            bytes: 1,
            objects,
            vectors,
            edges: 0,
        };
        assert!(
            raise(&limits, &usage(8_000, 0), &ceiling).is_none(),
            "80% is not past 80%"
        );
        let (up, why) = raise(&limits, &usage(8_001, 9_000), &ceiling).unwrap();
        assert_eq!(up.max_objects, 12_000, "x1.5 is 15,000, capped at 12,000");
        assert_eq!(up.max_vectors, 15_000);
        assert_eq!(up.max_storage_bytes, limits.max_storage_bytes);
        assert!(
            why.contains("max_objects") && why.contains("max_vectors"),
            "{why}"
        );
        assert!(
            raise(&up, &usage(11_999, 0), &ceiling).is_none(),
            "at its ceiling a limit stays"
        );
    }

    #[test]
    fn a_trim_drops_what_is_past_retention_and_the_oldest_beyond_the_cap() {
        let e = |t: &str, at| AuditEntry {
            at_ms: at,
            tenant_id: t.into(),
            actor: "x".into(),
            field: "f".into(),
            old: None,
            new: None,
            reason: String::new(),
        };
        let rows = vec![
            (b"a1".to_vec(), e("a", 10)),
            (b"a2".to_vec(), e("a", 20)),
            (b"a3".to_vec(), e("a", 30)),
            (b"b1".to_vec(), e("b", 10)),
            (b"b2".to_vec(), e("b", 95)),
        ];
        // a keeps 100 ms, b 10 ms; at most 2 each; now 100.
        let mut out = to_trim(rows, 100, 2, |t| if t == "a" { 100 } else { 10 });
        out.sort();
        assert_eq!(out, [b"a1".to_vec(), b"b1".to_vec()]);
    }
}
