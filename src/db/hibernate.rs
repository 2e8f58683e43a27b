//! Hibernation (issue 12): a tenant replica idle for
//! `[hibernation] after_idle_ms` closes its shard (the actor, its raft
//! group, its RocksDB instance and FAISS indexes) and keeps only the
//! small in-memory [`Tenant`]: config, limiter (its counters; the close
//! saved them exactly), an emptied read cache (still on). Its next request reopens the
//! shard from disk, as a restart would.
//!
//! Every request holds an [`Awake`] guard (a read guard of the tenant's
//! `life` lock) while it runs. The hibernation loop only *tries* the
//! write side: a tenant with a request in flight is never closed under
//! it, and hibernation never makes a request wait. A request that finds
//! the tenant asleep takes the write side, reopens the shard once, and
//! downgrades; concurrent first requests queue behind that one reopen.
//! A writer is only ever queued while the tenant is asleep, when no read
//! guard exists, so a request may take nested guards safely.
//!
//! With hibernation on, a node loads its tenants asleep at start (and a
//! cluster node the replicas placed on it later): each shard opens on
//! first use.
//!
//! On a cluster a replica hibernates only while its group is quiesced
//! (`cluster/quiesce.rs`): its leader saved the exact request counts and
//! every follower holds the whole log, so closing writes nothing to the
//! log and no peer is owed a message. Whatever reaches a sleeping replica
//! reopens it: a request routed to it, and any raft message or snapshot
//! from a peer (the peer service holds an [`Awake`] guard while it
//! serves one). A leader reopens as the leader (openraft restores a
//! committed vote of its own), so waking a group costs no election.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::{Error, EventKind, EventLevel, Result};

use super::{Database, Tenant};

/// Whether a tenant's shard is open on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Open: requests run.
    Awake,
    /// Closed by hibernation (or not opened yet since start).
    Asleep,
}

/// Keeps a tenant's shard open while held (see the module doc).
pub(crate) type Awake = tokio::sync::OwnedRwLockReadGuard<Life>;

/// What a replica keeps of its shard while it hibernates.
#[derive(Debug, Clone)]
pub(crate) struct Rest {
    /// Its storage usage as it closed (nothing changes it while asleep):
    /// usage reports and checks read it without a reopen.
    pub(crate) usage: crate::proto::StorageUsage,
    /// Until when (ms) its storage held at rest is in the analytics
    /// history (see [`Database::bill_rest`]).
    pub(crate) billed_to_ms: u64,
}

impl Tenant {
    /// Whether its shard is closed by hibernation.
    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }

    /// Its storage usage as it hibernated (None: awake, or asleep since
    /// start and never opened).
    pub(crate) fn rested_usage(&self) -> Option<crate::proto::StorageUsage> {
        self.rested.lock().as_ref().map(|r| r.usage.clone())
    }
}

impl Database {
    /// Whether hibernation is on (`[hibernation] after_idle_ms` > 0).
    pub(crate) fn hibernation_on(&self) -> bool {
        self.inner.config.hibernation.after_idle_ms > 0
    }

    /// Whether this node's replica of `t` led its group when it last
    /// saved a vote: a committed vote for itself (a sleeping leader
    /// reopens as the leader). Read from the raft log store, without
    /// opening the shard. A standalone node's replica always leads.
    pub(crate) fn led_at_rest(&self, t: &Tenant) -> bool {
        use openraft::vote::RaftLeaderId;
        let Some(hooks) = self.hooks() else {
            return true;
        };
        let me = hooks.node_id();
        let Some(replica) = t
            .replicas
            .read()
            .iter()
            .find(|r| r.node == me)
            .map(|r| r.id)
        else {
            return false;
        };
        match self.raft_logs().vote_of(t.group) {
            Ok(Some(v)) => v.is_committed() && *v.leader_id().node_id() == replica,
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(group = t.group, error = %e, "vote not readable");
                false
            }
        }
    }

    /// A2 billing of storage held at rest: moves `rest`'s billing mark
    /// to `to_ms` and returns what to add to `t`'s storage history
    /// (bytes, held for ms), when this node's replica led its group as it
    /// went to sleep (the leader's node bills a tenant's storage, asleep
    /// or awake) and holds any bytes.
    pub(crate) fn bill_rest(&self, t: &Tenant, rest: &mut Rest, to_ms: u64) -> Option<(u64, u64)> {
        let held = to_ms.checked_sub(rest.billed_to_ms).filter(|ms| *ms > 0)?;
        rest.billed_to_ms = to_ms;
        (rest.usage.bytes > 0 && self.led_at_rest(t)).then_some((rest.usage.bytes, held))
    }

    /// [`bill_rest`](Self::bill_rest) into the node's recorder (stored
    /// at the next flush).
    pub(crate) fn record_rest(&self, t: &Tenant, rest: &mut Rest, to_ms: u64) {
        if let Some(held) = self.bill_rest(t, rest, to_ms) {
            let id = t.config().tenant_id.clone();
            self.inner.recorder.sample(&id, to_ms, 0, 0, Some(held));
        }
    }

    /// Holds `t` awake for a request, reopening its shard first if it
    /// hibernated; marks it active.
    pub(crate) async fn awake(&self, t: &Arc<Tenant>) -> Result<Awake> {
        t.last_active
            .store(crate::util::coarse_now_ms(), Ordering::Relaxed);
        let guard = t.life.clone().read_owned().await;
        if *guard == Life::Awake {
            return Ok(guard);
        }
        drop(guard);
        let mut w = t.life.clone().write_owned().await;
        if *w == Life::Asleep {
            if self.registry().is_err() || self.inner.closing.load(Ordering::Acquire) {
                return Err(Error::Unavailable {
                    reason: "database is closed".into(),
                });
            }
            // A session may outlive its tenant: a deleted one stays shut.
            let id = t.config().tenant_id.clone();
            if !self.loaded(&id).is_some_and(|l| Arc::ptr_eq(&l, t)) {
                return Err(Error::TenantNotFound { tenant_id: id });
            }
            let started = Instant::now();
            self.start_shard(t).await?;
            *w = Life::Awake;
            t.asleep.store(false, Ordering::Release);
            self.inner.awake.write().insert(t.group, t.clone());
            // Reactivated if it hibernated here; else opened on first use
            // (since the node started, or since it was created).
            // Its storage at rest is billed up to the last flush, from
            // which the open shard's samples count.
            let rest = t.rested.lock().take();
            let hibernated = rest.is_some();
            if let Some(mut rest) = rest {
                self.record_rest(t, &mut rest, self.history_flushed_ms());
            }
            let took = started.elapsed();
            let id = t.config().tenant_id.clone();
            if hibernated {
                crate::monitor::reactivated(took);
                tracing::info!(tenant = %id, took_ms = took.as_millis() as u64, "tenant reactivated");
                self.events().emit(
                    EventLevel::Info,
                    Some(&id),
                    EventKind::TenantReactivated {
                        took_ms: took.as_millis() as u64,
                    },
                    format!("tenant {id} reopened its shard in {took:?}"),
                );
            } else {
                tracing::info!(tenant = %id, took_ms = took.as_millis() as u64, "tenant shard opened on first use");
            }
        }
        t.last_active
            .store(crate::util::coarse_now_ms(), Ordering::Relaxed);
        Ok(w.downgrade())
    }

    /// Closes `t`'s shard if it is awake, idle since `idle_before` (coarse
    /// ms) and nothing holds it; returns whether it did.
    pub(crate) async fn hibernate(&self, t: &Arc<Tenant>, idle_before: u64) -> Result<bool> {
        let Ok(mut w) = t.life.clone().try_write_owned() else {
            return Ok(false); // a request holds it
        };
        if *w == Life::Asleep || t.last_active.load(Ordering::Relaxed) > idle_before {
            return Ok(false);
        }
        // A cluster replica sleeps only while its group is quiesced (a
        // raft message waking it un-quiesces it first).
        if self.is_clustered() && !t.quiesced.load(Ordering::Acquire) {
            return Ok(false);
        }
        let id = t.config().tenant_id.clone();
        if !self.is_clustered() {
            // The exact request counts, so the close writes nothing after
            // the snapshot below (a cluster leader settled them before
            // its group quiesced).
            if let Err(e) = t.settle_quota(Duration::from_secs(5)).await {
                tracing::debug!(tenant = %id, error = %e, "request counts not settled before hibernating");
            }
        }
        save_indexes(t).await;
        // Set whether or not the data is at hand: it also marks the
        // tenant as hibernated (its next open is a reactivation).
        // Billed at rest from the last flush, to which the open shard's
        // samples counted.
        *t.rested.lock() = Some(Rest {
            usage: t.data().map(|d| d.usage()).unwrap_or_default(),
            billed_to_ms: self.history_flushed_ms(),
        });
        // Marked first: loops that look without the lock skip it now.
        t.asleep.store(true, Ordering::Release);
        self.remove_awake(t);
        if let Err(e) = self.stop_shard(&id).await {
            // The shard may be half closed: a reopen is the way back.
            tracing::warn!(tenant = %id, error = %e, "tenant shard did not close cleanly while hibernating");
        }
        t.cache.empty();
        // A reopened replica's raft group ticks until it quiesces again.
        t.quiesced.store(false, Ordering::Release);
        *w = Life::Asleep;
        crate::monitor::hibernated();
        tracing::info!(tenant = %id, "tenant hibernated");
        self.events().emit(
            EventLevel::Info,
            Some(&id),
            EventKind::TenantHibernated,
            format!("tenant {id} closed its shard after being idle"),
        );
        Ok(true)
    }

    /// Starts the loop that hibernates idle tenant replicas (it ends when
    /// the database is gone).
    pub(crate) fn start_hibernation(&self) {
        if !self.hibernation_on() {
            return;
        }
        let weak = self.downgrade();
        let h = self.inner.config.hibernation.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(h.check_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(db) = weak.upgrade() else { return };
                if db.inner.closing.load(Ordering::Acquire) {
                    return;
                }
                let clustered = db.is_clustered();
                let now = crate::util::coarse_now_ms();
                let sleepy = |t: &Tenant, idle_before: u64| {
                    !t.is_asleep()
                        && t.last_active.load(Ordering::Relaxed) <= idle_before
                        && (!clustered || t.quiesced.load(Ordering::Acquire))
                };
                // Idle past the threshold; then, while more shards than
                // `max_open` are open, the least recently used of those
                // idle for a second.
                let idle_before = now.saturating_sub(h.after_idle_ms);
                let mut open = db.awake_tenants();
                let mut due: Vec<(Arc<Tenant>, u64)> = open
                    .iter()
                    .filter(|t| sleepy(t, idle_before))
                    .map(|t| (t.clone(), idle_before))
                    .collect();
                if h.max_open > 0 {
                    let excess = open.len().saturating_sub(h.max_open + due.len());
                    if excess > 0 {
                        let recent = now.saturating_sub(MIN_IDLE_MS);
                        open.retain(|t| {
                            sleepy(t, recent) && !due.iter().any(|(d, _)| Arc::ptr_eq(d, t))
                        });
                        open.sort_by_key(|t| t.last_active.load(Ordering::Relaxed));
                        due.extend(open.into_iter().take(excess).map(|t| (t, recent)));
                    }
                }
                let mut closed = 0;
                for (t, idle_before) in due {
                    match db.hibernate(&t, idle_before).await {
                        Ok(true) => closed += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(tenant = %t.config().tenant_id, error = %e, "hibernation failed")
                        }
                    }
                }
                if closed > 0 {
                    let _ = tokio::task::spawn_blocking(give_back_freed_memory).await;
                }
            }
        });
    }

    /// Holds `t` shut for good (a deletion): waits for the requests that
    /// hold it awake, then marks it asleep; its shard is stopped by the
    /// caller while this is held.
    pub(crate) async fn shut(&self, t: &Arc<Tenant>) -> tokio::sync::OwnedRwLockWriteGuard<Life> {
        let mut w = t.life.clone().write_owned().await;
        *w = Life::Asleep;
        t.asleep.store(true, Ordering::Release);
        self.remove_awake(t);
        w
    }

    /// Forgets `t` among the open shards (if it is the one listed).
    fn remove_awake(&self, t: &Arc<Tenant>) {
        let mut awake = self.inner.awake.write();
        if awake.get(&t.group).is_some_and(|a| Arc::ptr_eq(a, t)) {
            awake.remove(&t.group);
        }
    }

    /// Ids of the loaded tenants whose shard is open here.
    pub(crate) fn awake_ids(&self) -> Vec<String> {
        self.inner
            .awake
            .read()
            .values()
            .map(|t| t.config().tenant_id.clone())
            .collect()
    }

    /// Loaded tenants whose shard is open here.
    pub(crate) fn awake_tenants(&self) -> Vec<Arc<Tenant>> {
        self.inner.awake.read().values().cloned().collect()
    }

    /// Tenants loaded here whose shard is closed by hibernation (or not
    /// opened yet).
    pub(crate) fn hibernated_count(&self) -> u64 {
        let loaded = self.inner.tenants.read().len();
        loaded.saturating_sub(self.inner.awake.read().len()) as u64
    }

    /// Whether tenant `id`'s shard is closed by hibernation on this node
    /// (diagnostics and tests).
    #[doc(hidden)]
    pub fn is_hibernated(&self, id: &str) -> Result<bool> {
        Ok(self.tenant(id)?.is_asleep())
    }
}

/// Before a tenant with vectors closes: a snapshot at its applied index
/// unless the newest one is there already, so that its next open loads
/// the FAISS indexes from their files instead of rebuilding them from
/// the stored vectors (measured with 10,000 Fashion-MNIST vectors in
/// HNSW32: 632 ms to the first search after a wake when rebuilt).
async fn save_indexes(t: &Tenant) {
    use openraft::async_runtime::WatchReceiver;
    let (Some(raft), Ok(data)) = (t.raft(), t.data()) else {
        return;
    };
    if data.usage().vectors == 0 {
        return;
    }
    let current = |raft: &crate::raft::ShardRaft| {
        let m = raft.metrics();
        let m = m.borrow_watched();
        (m.snapshot, m.last_applied)
    };
    let (snapshot, applied) = current(&raft);
    if applied.is_none() || snapshot == applied {
        return;
    }
    if raft.trigger().snapshot().await.is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (snapshot, _) = current(&raft);
        if snapshot.is_some_and(|s| Some(s) >= applied) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(tenant = %t.config().tenant_id, "no snapshot within 30 s before hibernating; its indexes are rebuilt when it opens");
}

/// With `hibernation.max_open` exceeded, a replica idle this long may
/// close before `after_idle_ms`.
const MIN_IDLE_MS: u64 = 1_000;

/// Returns the memory the closed shards freed to the system: glibc's
/// allocator keeps freed pages in its arenas otherwise, so a node whose
/// tenants went to sleep would keep the RSS they had while open.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // own arenas; it has no preconditions.
    let _released = unsafe { libc::malloc_trim(0) };
}
