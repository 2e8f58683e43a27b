//! Cluster-wide request budgets on the router (issue 8): the leader of a
//! tenant's shard owns the tenant's budget; a router that serves a stale
//! read on a follower replica spends a grant drawn from that leader. The
//! arithmetic is pure and unit-tested in [`crate::limits::grant`]; this
//! module holds the per-node state and the one peer round trip.
//!
//! - Follower side ([`Grants::admit_stale`]): per (tenant, operation) a
//!   [`GrantBucket`]. One request at a time asks the leader; requests
//!   that find the bucket empty while a refill is in flight wait for it
//!   (bounded by the request's deadline). A refusal (the budget is spent)
//!   is remembered until its `retry_after`, so a tenant over its limit
//!   costs the leader one round trip per refusal period, not one per
//!   request.
//! - Leader side ([`Grants::serve`]): per tenant a [`GrantLedger`] sizes
//!   the grant; the tenant's limiter admits it (rate windows, daily and
//!   monthly counts, durable reservation).
//!
//! Both maps are bounded caches (moka) keyed by tenant; an entry unused
//! for a few grant lifetimes is dropped, which loses nothing (an unspent
//! grant expires anyway).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::db::Database;
use crate::limits::grant::{GrantBucket, GrantLedger, Take, GRANT_TTL_MS};
use crate::limits::Grant;
use crate::proto::{Error, OperationType, Result};

/// Most (tenant, operation) buckets and tenant ledgers a node keeps.
const MAX_ENTRIES: u64 = 200_000;
/// How long a request waits for a refill in flight before asking itself.
const REFILL_WAIT: Duration = Duration::from_secs(2);

/// One tenant-operation's grant on this node.
#[derive(Default)]
struct Slot {
    bucket: Mutex<GrantBucket>,
    /// The leader's last refusal: until when (ms) it is remembered here,
    /// when (ms) the leader said to retry, and the error.
    refusal: Mutex<Option<(u64, u64, Error)>>,
    /// Woken when a refill lands (or fails).
    refilled: Notify,
}

/// How a follower asks the leader for a grant: `(tenant, op, want, debt)`
/// → the number granted, or the limit that refuses.
pub trait AskLeader: Send + Sync {
    /// Sends one grant request to the shard leader's node.
    fn ask(
        &self,
        tenant: &str,
        op: OperationType,
        want: u64,
        debt: u64,
    ) -> futures::future::BoxFuture<'static, Result<u64>>;
}

/// A node's grant state (shared by its router and its peer service).
pub struct Grants {
    slots: moka::sync::Cache<(String, OperationType), Arc<Slot>>,
    ledgers: moka::sync::Cache<String, Arc<Mutex<GrantLedger>>>,
}

impl Default for Grants {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("buckets", &self.slots.entry_count())
            .field("ledgers", &self.ledgers.entry_count())
            .finish()
    }
}

fn now_ms() -> u64 {
    crate::util::now_ms()
}

impl Grants {
    /// Empty state.
    pub fn new() -> Self {
        let idle = Duration::from_millis(10 * GRANT_TTL_MS);
        Grants {
            slots: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_idle(idle)
                .build(),
            ledgers: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Follower side: admits one stale read of `op` for `tenant` against
    /// a grant from the shard leader (asked through `leader`), or says
    /// which limit refuses it.
    pub async fn admit_stale(
        &self,
        tenant: &str,
        op: OperationType,
        leader: Arc<dyn AskLeader>,
    ) -> Result<()> {
        let slot = self
            .slots
            .get_with((tenant.to_string(), op), || Arc::new(Slot::default()));
        // A handful of rounds: take, or wait for / fetch a refill.
        for _ in 0..4 {
            let now = now_ms();
            if let Some((until, retry_at, e)) = slot.refusal.lock().clone() {
                if now < until {
                    return Err(with_retry_after(e, retry_at.saturating_sub(now)));
                }
            }
            // Decide under the lock, act (and await) after it.
            let (take, debt, pending) = {
                let mut b = slot.bucket.lock();
                let pending = b.refill_pending();
                (b.take(now), b.debt(), pending)
            };
            match take {
                Take::Admit | Take::AdmitInDebt => return Ok(()),
                Take::AdmitAndRefill { want } => {
                    let (slot, tenant) = (slot.clone(), tenant.to_string());
                    tokio::spawn(async move {
                        let _ = fetch(&slot, &tenant, op, want, debt, &*leader).await;
                    });
                    return Ok(());
                }
                Take::Wait { .. } if pending => {
                    // Someone else's refill is in flight: wait for it. The
                    // wakeup is registered before the state is looked at
                    // again, so a refill landing in between is not missed.
                    let notified = slot.refilled.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if slot.bucket.lock().refill_pending() {
                        let _ = tokio::time::timeout(REFILL_WAIT, notified).await;
                        let mut b = slot.bucket.lock();
                        if b.refill_pending() {
                            // It did not land in time: ask ourselves next round.
                            b.refused(0);
                        }
                    }
                }
                Take::Wait { want } => {
                    fetch(&slot, tenant, op, want, debt, &*leader).await?;
                }
            }
        }
        Err(Error::Unavailable {
            reason: format!(
                "tenant {tenant}: no request budget could be drawn from the shard leader; retry"
            ),
        })
    }

    /// Leader side: `node` asks for `want` requests of `op` for `tenant`
    /// and reports `debt` it admitted while waiting. Returns the number
    /// granted (at least 1), or the limit that refuses.
    pub async fn serve(
        &self,
        db: &Database,
        node: u64,
        tenant: &str,
        op: OperationType,
        want: u64,
        debt: u64,
    ) -> Result<u64> {
        let t = db.tenant(tenant)?;
        // A hibernated leader reopens as the leader.
        let _awake = db.awake(&t).await?;
        // Only the leader's limiter holds the authoritative budget: a
        // node that lost the lead since the follower looked refuses.
        if !t.raft().is_some_and(|r| crate::shard::is_leader(&r)) {
            return Err(Error::Unavailable {
                reason: format!("this node does not lead the shard of tenant {tenant}; retry"),
            });
        }
        let limiter = t.limiter();
        let ledger = self.ledgers.get_with(tenant.to_string(), || {
            Arc::new(Mutex::new(GrantLedger::default()))
        });
        let (limit, window_ms) = limiter.grant_shape(op);
        let (cap, consumers) = {
            let mut l = ledger.lock();
            let cap = l.cap_for(node, now_ms(), limit, window_ms);
            (cap, l.active() as u64 + 1)
        };
        let cap = cap.min(want.max(1));
        let timeout = Duration::from_millis(db.config().limits.request_timeout_ms);
        let mut debt = debt;
        for _ in 0..4 {
            match limiter.grant(op, cap, consumers, debt, now_ms())? {
                Grant::Granted { granted, refill } => {
                    if refill {
                        t.start_reservation();
                    }
                    return Ok(granted);
                }
                Grant::Reserve => {
                    // Charged once; now wait for the durable reservation.
                    debt = 0;
                    t.reserve(timeout).await?;
                }
            }
        }
        Err(Error::Unavailable {
            reason: "request counters could not be reserved; retry".into(),
        })
    }
}

/// Asks the leader and applies the answer to `slot`; wakes its waiters.
async fn fetch(
    slot: &Slot,
    tenant: &str,
    op: OperationType,
    want: u64,
    debt: u64,
    leader: &dyn AskLeader,
) -> Result<()> {
    let r = leader.ask(tenant, op, want, debt).await;
    let now = now_ms();
    let out = match r {
        Ok(granted) => {
            slot.bucket.lock().refill(granted, debt, now);
            *slot.refusal.lock() = None;
            Ok(())
        }
        Err(e) => {
            match e.limit().and_then(|l| l.retry_after_ms) {
                // The leader charged the debt, then refused.
                Some(after) => {
                    slot.bucket.lock().refused(debt);
                    // Remembered for at most a grant's lifetime, so a
                    // raised limit is seen within a second.
                    let until = now + after.min(GRANT_TTL_MS);
                    *slot.refusal.lock() = Some((until, now + after, e.clone()));
                }
                None => slot.bucket.lock().refused(0),
            }
            Err(e)
        }
    };
    slot.refilled.notify_waiters();
    out
}

/// `e` with its `retry_after` set to `ms` (a remembered refusal ages).
fn with_retry_after(e: Error, ms: u64) -> Error {
    match e {
        Error::LimitExceeded(mut le) => {
            le.retry_after_ms = Some(ms.max(1));
            Error::LimitExceeded(le)
        }
        e => e,
    }
}
