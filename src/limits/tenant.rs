//! The per-request limit check of one tenant: operation allowed, rate
//! (overall and per operation), daily and monthly quotas, concurrency.
//!
//! One mutex guards the counters; a check is a handful of integer
//! operations under it. All of them are checked before any is consumed, so
//! a rejection never uses up budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::proto::{Error, LimitExceeded, LimitKind, OperationType, PeriodUsage, RequestUsage};
use crate::tenant::TenantConfig;

use super::calendar;
use super::period::{self, OpCounts, OPS};
use super::rate::RateWindow;

/// Suggested wait after a concurrency rejection.
pub const CONCURRENCY_RETRY_MS: u64 = 10;

/// Request counters that persist (checkpointed through the shard's raft log).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaCounters {
    /// UTC day number of `daily`.
    pub day: u32,
    /// Requests on `day`.
    pub daily: u64,
    /// Month number of `monthly`.
    pub month: u32,
    /// Requests in `month`.
    pub monthly: u64,
    /// Requests by operation type since the tenant was created, in
    /// [`OperationType::ALL`] order (checkpointed every
    /// `limits.quota_checkpoint_ms`).
    pub by_operation: [u64; 5],
    /// Requests per operation on `day`, and the previous day with requests
    /// (reserved ahead like `daily`). Absent from exports of earlier
    /// versions (JSON): empty.
    #[serde(default)]
    pub day_ops: OpCounts,
    /// Requests per operation in `month`, and the previous month with
    /// requests (reserved ahead like `monthly`).
    #[serde(default)]
    pub month_ops: OpCounts,
    /// Start of the next UTC day or month, whichever comes first: until
    /// then `roll` has nothing to do (not persisted).
    #[serde(skip)]
    next_boundary: u64,
}

impl QuotaCounters {
    /// Whether `other` holds the same counts (the in-memory period
    /// boundary, which is not persisted, aside).
    pub fn same_counts(&self, other: &QuotaCounters) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        (a.next_boundary, b.next_boundary) = (0, 0);
        a == b
    }

    /// Raises these counters to `other`'s: for the same day or month the
    /// larger count wins, a later period replaces an earlier one, and the
    /// per-operation totals take the larger of each. Never lowers a count,
    /// so applying it twice, or out of order, changes nothing.
    pub fn merge_max(&mut self, other: &QuotaCounters) {
        self.next_boundary = 0;
        (self.day, self.daily, self.day_ops) = period::merge(
            (self.day, self.daily, &self.day_ops),
            (other.day, other.daily, &other.day_ops),
        );
        (self.month, self.monthly, self.month_ops) = period::merge(
            (self.month, self.monthly, &self.month_ops),
            (other.month, other.monthly, &other.month_ops),
        );
        for (mine, theirs) in self.by_operation.iter_mut().zip(other.by_operation) {
            *mine = (*mine).max(theirs);
        }
    }

    fn roll(&mut self, now_ms: u64) {
        if now_ms < self.next_boundary {
            return;
        }
        self.next_boundary =
            calendar::next_day_start(now_ms).min(calendar::next_month_start(now_ms));
        let day = calendar::day_number(now_ms);
        if day > self.day {
            self.day_ops.close(self.day, self.daily);
            self.day = day;
            self.daily = 0;
        }
        let month = calendar::month_number(now_ms);
        if month > self.month {
            self.month_ops.close(self.month, self.monthly);
            self.month = month;
            self.monthly = 0;
        }
    }
}

#[derive(Debug)]
struct State {
    enabled: bool,
    allowed: [bool; 5],
    overall: RateWindow,
    per_op: [Option<RateWindow>; 5],
    daily_limit: u64,
    monthly_limit: u64,
    concurrent_limit: u64,
    quota: QuotaCounters,
    /// Bumped on every admitted request; the checkpointer compares it.
    version: u64,
    rejected: u64,
    reserve: Reserve,
}

/// Durable reservations of the daily and monthly counts (on the replica
/// that leads the tenant's shard). Before a request is admitted, the
/// counts it brings the tenant to must already be persisted through the
/// shard's raft log as a ceiling, so a kill -9 can lose unused
/// reservation (the tenant is refused up to one [`reservation_step`] early
/// that day) but never an admitted request.
#[derive(Debug, Default)]
struct Reserve {
    /// Reservations are required (this replica leads the group).
    on: bool,
    /// No reservation has landed since `on` was set: the first one also
    /// raises the counts to whatever a previous leader had reserved.
    fresh: bool,
    /// Changes with every leadership change; a reservation proposed in an
    /// earlier epoch is ignored when it lands.
    epoch: u64,
    /// A reservation is being proposed.
    pending: bool,
    /// The durable ceiling.
    ceiling: Option<Ceiling>,
    /// Operations whose per-operation ceilings the next reservation
    /// raises (a request of it was not covered, or its ceiling runs low).
    wanted: [bool; OPS],
}

/// What is persisted as a ceiling: requests up to these counts may be
/// admitted. Per operation too, so its day and month counts are as
/// durable as the totals.
#[derive(Debug, Clone, Copy)]
struct Ceiling {
    day: u32,
    daily: u64,
    month: u32,
    monthly: u64,
    day_ops: [u64; OPS],
    month_ops: [u64; OPS],
}

impl Ceiling {
    fn of(c: &QuotaCounters) -> Self {
        Ceiling {
            day: c.day,
            daily: c.daily,
            month: c.month,
            monthly: c.monthly,
            day_ops: c.day_ops.ops,
            month_ops: c.month_ops.ops,
        }
    }
}

/// How many requests one reservation covers for a limit: 1/32 of it,
/// between 1 and 4,096. The most a kill -9 can cost a tenant is one step
/// of its daily and of its monthly budget.
pub fn reservation_step(limit: u64) -> u64 {
    (limit / 32).clamp(1, 4096)
}

/// The ceiling a reservation asks for after `used` requests: one step
/// more, capped at the limit (but always at least one more request).
fn next_ceiling(used: u64, limit: u64) -> u64 {
    used.saturating_add(reservation_step(limit))
        .min(limit.max(used.saturating_add(1)))
}

/// How many requests of one operation a reservation covers: the step of
/// the tighter of the daily and monthly limits. A kill -9 can overstate an
/// operation's day and month counts by at most this (the reserved but
/// unused part), as for the totals.
fn op_step(daily_limit: u64, monthly_limit: u64) -> u64 {
    reservation_step(daily_limit.min(monthly_limit))
}

/// Whether admitting one more request under `ceiling` leaves less than
/// half a step: time to reserve the next block.
fn runs_low(ceiling: u64, used: u64, limit: u64) -> bool {
    runs_low_by(ceiling, used, reservation_step(limit))
}

/// [`runs_low`] for a reservation of `step` requests.
fn runs_low_by(ceiling: u64, used: u64, step: u64) -> bool {
    ceiling.saturating_sub(used.saturating_add(1)) < step.div_ceil(2)
}

/// The outcome of [`TenantLimiter::admit_or_reserve`].
#[derive(Debug)]
pub enum Admit {
    /// Admitted. `refill`: the reservation runs low; start the next one
    /// (this caller is the only one told).
    Permit(Permit, bool),
    /// The request is within every limit but beyond the durable
    /// reservation: reserve (and wait for it), then ask again.
    Reserve,
}

/// The outcome of [`TenantLimiter::grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `granted` requests (at least 1) admitted for the follower.
    /// `refill`: the durable reservation runs low; start the next one.
    Granted {
        /// Requests granted.
        granted: u64,
        /// Start the next reservation.
        refill: bool,
    },
    /// Within every limit but beyond the durable reservation: reserve,
    /// then ask again.
    Reserve,
}

/// A reservation to propose: the counters to persist and the epoch to
/// hand back to [`TenantLimiter::reserved`].
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Counters (daily and monthly are the new ceilings).
    pub counters: QuotaCounters,
    /// Leadership epoch it was made in.
    pub epoch: u64,
}

/// Limit state of one tenant. Shared by its sessions and its shard actor.
#[derive(Debug)]
pub struct TenantLimiter {
    tenant_id: String,
    state: Mutex<State>,
    in_flight: AtomicU64,
}

/// Held while an operation runs; frees its concurrency slot on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<TenantLimiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantLimiter {
    /// A limiter for `cfg`, resuming from persisted counters.
    pub fn new(cfg: &TenantConfig, quota: QuotaCounters) -> Arc<Self> {
        let r = &cfg.rate_limit;
        let w = r.time_window.as_millis();
        let mut st = State {
            enabled: cfg.enabled,
            allowed: [false; 5],
            overall: RateWindow::new(r.max_requests + r.burst_allowance, w, r.sliding_window),
            per_op: Default::default(),
            daily_limit: 0,
            monthly_limit: 0,
            concurrent_limit: 0,
            quota,
            version: 0,
            rejected: 0,
            reserve: Reserve::default(),
        };
        Self::configure(&mut st, cfg);
        Arc::new(Self {
            tenant_id: cfg.tenant_id.clone(),
            state: Mutex::new(st),
            in_flight: AtomicU64::new(0),
        })
    }

    fn configure(st: &mut State, cfg: &TenantConfig) {
        let r = &cfg.rate_limit;
        let w = r.time_window.as_millis();
        st.enabled = cfg.enabled;
        st.overall
            .reconfigure(r.max_requests + r.burst_allowance, w, r.sliding_window);
        for op in OperationType::ALL {
            let i = op.index();
            match r.operation_types.get(&op) {
                None => {
                    st.allowed[i] = false;
                    st.per_op[i] = None;
                }
                Some(0) => {
                    st.allowed[i] = true;
                    st.per_op[i] = None;
                }
                Some(&n) => {
                    st.allowed[i] = true;
                    match &mut st.per_op[i] {
                        Some(win) => win.reconfigure(n, w, r.sliding_window),
                        slot => *slot = Some(RateWindow::new(n, w, r.sliding_window)),
                    }
                }
            }
        }
        st.daily_limit = cfg.request_limit.daily_limit;
        st.monthly_limit = cfg.request_limit.monthly_limit;
        st.concurrent_limit = cfg.request_limit.concurrent_limit as u64;
    }

    /// Applies a changed config; the next request sees it.
    pub fn update(&self, cfg: &TenantConfig) {
        Self::configure(&mut self.state.lock(), cfg);
    }

    /// The tenant.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    /// Admits one request of `op` at `now_ms`, or says which limit refuses
    /// it. Where reservations are required and do not cover the request,
    /// it is refused as `Unavailable` (callers that can wait use
    /// [`admit_or_reserve`](Self::admit_or_reserve)).
    pub fn admit(self: &Arc<Self>, op: OperationType, now_ms: u64) -> Result<Permit, Error> {
        match self.admit_or_reserve(op, now_ms)? {
            Admit::Permit(p, _) => Ok(p),
            Admit::Reserve => Err(Error::Unavailable {
                reason: format!(
                    "tenant {}: request counters are being persisted; retry",
                    self.tenant_id
                ),
            }),
        }
    }

    /// Admits one request of `op` at `now_ms`, says which limit refuses
    /// it, or asks for a reservation first.
    pub fn admit_or_reserve(
        self: &Arc<Self>,
        op: OperationType,
        now_ms: u64,
    ) -> Result<Admit, Error> {
        let mut st = self.state.lock();
        if let Err(e) = self.check_locked(&mut st, op, now_ms) {
            st.rejected += 1;
            return Err(e);
        }
        let refill = match Self::reservation_covers(&mut st, op) {
            Some(refill) => refill,
            None => return Ok(Admit::Reserve),
        };
        Self::record_locked(&mut st, op, now_ms);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Admit::Permit(
            Permit {
                limiter: Arc::clone(self),
            },
            refill,
        ))
    }

    /// Whether the durable reservation covers one more request of `op`
    /// (`None`: it does not; reserve first) and, if so, whether this
    /// caller should start the next one (it runs low and none is
    /// pending). Always covered where reservations are off (not the
    /// shard's leader).
    fn reservation_covers(st: &mut State, op: OperationType) -> Option<bool> {
        if !st.reserve.on {
            return Some(false);
        }
        let i = op.index();
        let q = &st.quota;
        let c = match st.reserve.ceiling {
            Some(c)
                if c.day == q.day
                    && c.month == q.month
                    && q.daily < c.daily
                    && q.monthly < c.monthly
                    && q.day_ops.ops[i] < c.day_ops[i]
                    && q.month_ops.ops[i] < c.month_ops[i] =>
            {
                c
            }
            _ => {
                st.reserve.wanted[i] = true;
                return None;
            }
        };
        let op_step = op_step(st.daily_limit, st.monthly_limit);
        let op_low = runs_low_by(c.day_ops[i], q.day_ops.ops[i], op_step)
            || runs_low_by(c.month_ops[i], q.month_ops.ops[i], op_step);
        if op_low {
            st.reserve.wanted[i] = true;
        }
        let low = runs_low(c.daily, q.daily, st.daily_limit)
            || runs_low(c.monthly, q.monthly, st.monthly_limit)
            || op_low;
        if low && !st.reserve.pending {
            st.reserve.pending = true;
            return Some(true);
        }
        Some(false)
    }

    /// Counts one admitted request in the windows and the counters.
    fn record_locked(st: &mut State, op: OperationType, now_ms: u64) {
        st.overall.record(now_ms);
        if let Some(w) = &mut st.per_op[op.index()] {
            w.record(now_ms);
        }
        st.quota.daily += 1;
        st.quota.monthly += 1;
        st.quota.by_operation[op.index()] += 1;
        st.quota.day_ops.ops[op.index()] += 1;
        st.quota.month_ops.ops[op.index()] += 1;
        st.version += 1;
    }

    /// The budget shape a grant of `op` is sized from: the tighter of the
    /// overall window and `op`'s own, as (requests, window ms).
    pub fn grant_shape(&self, op: OperationType) -> (u64, u64) {
        let st = self.state.lock();
        let overall = (st.overall.limit(), st.overall.window_ms());
        match &st.per_op[op.index()] {
            Some(w) if w.limit() < overall.0 => (w.limit(), w.window_ms()),
            _ => overall,
        }
    }

    /// Leader side of a grant (see [`super::grant`]): charges `debt`
    /// requests of `op` a follower admitted while it waited (counted even
    /// beyond the limits: they were served), then admits up to `cap` more
    /// on the follower's behalf, as many as the rate windows, the daily
    /// and monthly counts and the durable reservation allow. Refuses with
    /// the limit that is spent when not one fits; concurrency is the
    /// follower's to check. Near the end of the daily or monthly budget
    /// the grant shrinks to [`super::grant::trickle`] of what is left,
    /// split between `consumers`.
    pub fn grant(
        &self,
        op: OperationType,
        cap: u64,
        consumers: u64,
        debt: u64,
        now_ms: u64,
    ) -> Result<Grant, Error> {
        let mut st = self.state.lock();
        self.check_allowed(&st, op)?;
        st.quota.roll(now_ms);
        for _ in 0..debt.min(super::grant::MAX_GRANT) {
            Self::record_locked(&mut st, op, now_ms);
        }
        let left = st
            .daily_limit
            .saturating_sub(st.quota.daily)
            .min(st.monthly_limit.saturating_sub(st.quota.monthly));
        let cap = super::grant::trickle(cap, left, consumers);
        let mut granted = 0;
        let mut refill = false;
        while granted < cap {
            if let Err(e) = Self::check_budget(&mut st, op, now_ms) {
                if granted == 0 {
                    st.rejected += 1;
                    return Err(e);
                }
                break;
            }
            match Self::reservation_covers(&mut st, op) {
                Some(r) => refill |= r,
                None => {
                    if !st.reserve.pending {
                        st.reserve.pending = true;
                        refill = true;
                    }
                    if granted == 0 {
                        return Ok(Grant::Reserve);
                    }
                    break;
                }
            }
            Self::record_locked(&mut st, op, now_ms);
            granted += 1;
        }
        Ok(Grant::Granted { granted, refill })
    }

    /// Follower side: admits one request of `op` already paid for by a
    /// grant. Checks only what is this node's to check: the tenant is
    /// enabled, `op` allowed, and a concurrency slot free.
    pub fn admit_granted(self: &Arc<Self>, op: OperationType) -> Result<Permit, Error> {
        let st = self.state.lock();
        self.check_allowed(&st, op)?;
        self.check_concurrency(&st)?;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            limiter: Arc::clone(self),
        })
    }

    /// Turns reservations on (this replica now leads the tenant's shard)
    /// or off. Every change starts a new epoch and forgets the ceiling: a
    /// new leader's first reservation also raises its counts to what any
    /// earlier leader reserved.
    pub fn set_reserving(&self, on: bool) {
        let mut st = self.state.lock();
        if st.reserve.on == on {
            return;
        }
        let epoch = st.reserve.epoch + 1;
        st.reserve = Reserve {
            on,
            fresh: on,
            epoch,
            pending: false,
            ceiling: None,
            wanted: [false; OPS],
        };
    }

    /// The next reservation to propose at `now_ms`: the current counts
    /// plus one [`reservation_step`] each, capped at the limits.
    pub fn reservation(&self, now_ms: u64) -> Reservation {
        let mut st = self.state.lock();
        st.quota.roll(now_ms);
        let mut counters = st.quota.clone();
        counters.daily = next_ceiling(st.quota.daily, st.daily_limit);
        counters.monthly = next_ceiling(st.quota.monthly, st.monthly_limit);
        // Per operation: one step more for the operations that asked; the
        // others are persisted as counted (what is persisted never drops,
        // so an earlier ceiling of theirs stands).
        let step = op_step(st.daily_limit, st.monthly_limit);
        for i in 0..OPS {
            if std::mem::take(&mut st.reserve.wanted[i]) {
                counters.day_ops.ops[i] = counters.day_ops.ops[i].saturating_add(step);
                counters.month_ops.ops[i] = counters.month_ops.ops[i].saturating_add(step);
            }
        }
        st.reserve.pending = true;
        Reservation {
            counters,
            epoch: st.reserve.epoch,
        }
    }

    /// A reservation landed: `before` is what was persisted just before
    /// it applied, `after` what is persisted now. Ignored if leadership
    /// changed since it was made.
    pub fn reserved(&self, epoch: u64, before: &QuotaCounters, after: &QuotaCounters) {
        let mut st = self.state.lock();
        if !st.reserve.on || st.reserve.epoch != epoch {
            return;
        }
        st.reserve.pending = false;
        if st.reserve.fresh {
            // Whatever an earlier leader reserved may have been admitted.
            st.quota.merge_max(before);
            st.reserve.fresh = false;
        }
        st.reserve.ceiling = Some(Ceiling::of(after));
    }

    /// The exact counts to persist in place of this leader's unused
    /// reservation before its group goes idle (quiescence, hibernation):
    /// the ceiling drops to them at once, so a request from now on
    /// waits for a new reservation, which the log orders after the save.
    /// `None` while there is nothing of this leader's to save: it does
    /// not lead, a reservation is in flight, or its first one has not
    /// landed (its counts may still be behind an earlier leader's, and
    /// a save would lower what that leader persisted).
    pub fn settle(&self) -> Option<QuotaCounters> {
        let mut st = self.state.lock();
        if !st.reserve.on || st.reserve.fresh || st.reserve.pending {
            return None;
        }
        let counts = st.quota.clone();
        st.reserve.ceiling = Some(Ceiling::of(&counts));
        Some(counts)
    }

    /// This replica leads the tenant's shard but has not yet taken over
    /// the counts an earlier leader persisted (its first reservation has
    /// not landed): its own counts may be behind until one does.
    pub fn taking_over(&self) -> bool {
        let st = self.state.lock();
        st.reserve.on && st.reserve.fresh
    }

    /// A reservation failed to land; the next request may try again.
    pub fn reservation_failed(&self, epoch: u64) {
        let mut st = self.state.lock();
        if st.reserve.epoch == epoch {
            st.reserve.pending = false;
        }
    }

    /// R3 `can_perform_operation`: would `op` be admitted now? Consumes nothing.
    pub fn can_perform(&self, op: OperationType, now_ms: u64) -> Result<(), Error> {
        let mut st = self.state.lock();
        self.check_locked(&mut st, op, now_ms)
    }

    fn check_locked(&self, st: &mut State, op: OperationType, now_ms: u64) -> Result<(), Error> {
        self.check_allowed(st, op)?;
        self.check_concurrency(st)?;
        Self::check_budget(st, op, now_ms)
    }

    fn check_allowed(&self, st: &State, op: OperationType) -> Result<(), Error> {
        if !st.enabled {
            return Err(Error::TenantDisabled {
                tenant_id: self.tenant_id.clone(),
            });
        }
        if !st.allowed[op.index()] {
            return Err(Error::OperationNotAllowed { operation: op });
        }
        Ok(())
    }

    fn check_concurrency(&self, st: &State) -> Result<(), Error> {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if in_flight >= st.concurrent_limit {
            return Err(limit(
                LimitKind::Concurrency,
                st.concurrent_limit,
                in_flight,
                Some(CONCURRENCY_RETRY_MS),
            ));
        }
        Ok(())
    }

    /// The request budget: daily, monthly, overall and per-operation rate.
    fn check_budget(st: &mut State, op: OperationType, now_ms: u64) -> Result<(), Error> {
        st.quota.roll(now_ms);
        if st.quota.daily >= st.daily_limit {
            let wait = calendar::next_day_start(now_ms) - now_ms;
            return Err(limit(
                LimitKind::Daily,
                st.daily_limit,
                st.quota.daily,
                Some(wait),
            ));
        }
        if st.quota.monthly >= st.monthly_limit {
            let wait = calendar::next_month_start(now_ms) - now_ms;
            return Err(limit(
                LimitKind::Monthly,
                st.monthly_limit,
                st.quota.monthly,
                Some(wait),
            ));
        }
        if let Err(r) = st.overall.check(now_ms) {
            return Err(limit(
                LimitKind::Rate,
                st.overall.limit(),
                r.current,
                Some(r.retry_after_ms),
            ));
        }
        if let Some(w) = &mut st.per_op[op.index()] {
            if let Err(r) = w.check(now_ms) {
                return Err(limit(
                    LimitKind::OperationRate(op),
                    w.limit(),
                    r.current,
                    Some(r.retry_after_ms),
                ));
            }
        }
        Ok(())
    }

    /// Merges counters persisted by the shard (after a restart): for the
    /// same day or month the larger count wins, a newer period replaces.
    pub fn restore_quota(&self, persisted: QuotaCounters) {
        self.state.lock().quota.merge_max(&persisted);
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The persistent counters and a version that changes with them.
    pub fn quota_snapshot(&self) -> (QuotaCounters, u64) {
        let st = self.state.lock();
        (st.quota.clone(), st.version)
    }

    /// A usage report of the request counters at `now_ms`.
    pub fn request_usage(&self, now_ms: u64) -> RequestUsage {
        let mut st = self.state.lock();
        st.quota.roll(now_ms);
        let q = &st.quota;
        let past = |p: Option<period::PastPeriod>, label: fn(u32) -> String| {
            p.map(|p| PeriodUsage {
                period: p.n,
                label: label(p.n),
                requests: p.total,
                by_operation: by_op(&p.ops),
            })
        };
        RequestUsage {
            day: q.day,
            daily: q.daily,
            month: q.month,
            monthly: q.monthly,
            by_operation: by_op(&q.by_operation),
            rejected: st.rejected,
            date: calendar::day_label(q.day),
            month_label: calendar::month_label(q.month),
            daily_by_operation: by_op(&q.day_ops.ops),
            monthly_by_operation: by_op(&q.month_ops.ops),
            previous_day: past(q.day_ops.prev, calendar::day_label),
            previous_month: past(q.month_ops.prev, calendar::month_label),
        }
    }
}

/// Counts in [`OperationType::ALL`] order, by operation name.
fn by_op(counts: &[u64; OPS]) -> std::collections::BTreeMap<String, u64> {
    OperationType::ALL
        .iter()
        .map(|op| (op.as_str().to_string(), counts[op.index()]))
        .collect()
}

fn limit(kind: LimitKind, limit: u64, current: u64, retry_after_ms: Option<u64>) -> Error {
    Error::LimitExceeded(LimitExceeded {
        kind,
        limit,
        current,
        requested: 1,
        retry_after_ms,
    })
}

#[cfg(test)]
#[path = "tenant_period_test.rs"]
mod period_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Tiers;

    fn cfg() -> TenantConfig {
        let mut c =
            TenantConfig::for_tier(&Tiers::default(), "t", "T", "tier2", serde_json::json!({}))
                .unwrap();
        c.rate_limit.max_requests = 5;
        c.rate_limit.burst_allowance = 2;
        c.rate_limit.sliding_window = false;
        c.rate_limit.operation_types.insert(OperationType::Write, 3);
        c.rate_limit
            .operation_types
            .remove(&OperationType::GraphTraverse);
        c
    }

    fn kind(e: Error) -> LimitKind {
        e.limit().expect("limit error").kind
    }

    const T0: u64 = 1_795_809_600_000;

    #[test]
    fn burst_is_headroom_and_op_limit_is_separate() {
        let l = TenantLimiter::new(&cfg(), QuotaCounters::default());
        for _ in 0..3 {
            l.admit(OperationType::Write, T0).unwrap();
        }
        assert_eq!(
            kind(l.admit(OperationType::Write, T0).unwrap_err()),
            LimitKind::OperationRate(OperationType::Write)
        );
        for _ in 0..4 {
            l.admit(OperationType::Read, T0).unwrap();
        }
        let e = l.admit(OperationType::Read, T0).unwrap_err();
        let le = e.limit().unwrap();
        assert_eq!((le.kind, le.limit, le.current), (LimitKind::Rate, 7, 7));
        assert!(le.retry_after_ms.unwrap() > 0);
    }

    #[test]
    fn disallowed_operations_and_disabled_tenants() {
        let mut c = cfg();
        let l = TenantLimiter::new(&c, QuotaCounters::default());
        assert!(matches!(
            l.admit(OperationType::GraphTraverse, T0),
            Err(Error::OperationNotAllowed { .. })
        ));
        c.enabled = false;
        l.update(&c);
        assert!(matches!(
            l.admit(OperationType::Read, T0),
            Err(Error::TenantDisabled { .. })
        ));
    }

    #[test]
    fn concurrency_slots_are_returned_on_drop() {
        let mut c = cfg();
        c.request_limit.concurrent_limit = 2;
        c.rate_limit.max_requests = 1000;
        let l = TenantLimiter::new(&c, QuotaCounters::default());
        let a = l.admit(OperationType::Read, T0).unwrap();
        let _b = l.admit(OperationType::Read, T0).unwrap();
        assert_eq!(
            kind(l.admit(OperationType::Read, T0).unwrap_err()),
            LimitKind::Concurrency
        );
        drop(a);
        l.admit(OperationType::Read, T0).unwrap();
    }

    #[test]
    fn daily_and_monthly_roll_over_in_utc() {
        let mut c = cfg();
        c.rate_limit.max_requests = 1_000_000;
        c.request_limit.daily_limit = 3;
        c.request_limit.monthly_limit = 5;
        let l = TenantLimiter::new(&c, QuotaCounters::default());
        for _ in 0..3 {
            l.admit(OperationType::Read, T0).unwrap();
        }
        let e = l.admit(OperationType::Read, T0).unwrap_err();
        assert_eq!(kind(e.clone()), LimitKind::Daily);
        assert_eq!(
            e.retry_after().unwrap().as_millis() as u64,
            calendar::next_day_start(T0) - T0
        );
        let next_day = calendar::next_day_start(T0);
        l.admit(OperationType::Read, next_day).unwrap();
        l.admit(OperationType::Read, next_day).unwrap();
        assert_eq!(
            kind(l.admit(OperationType::Read, next_day).unwrap_err()),
            LimitKind::Monthly
        );
        let next_month = calendar::next_month_start(T0);
        l.admit(OperationType::Read, next_month).unwrap();
    }

    fn reserving(daily: u64) -> Arc<TenantLimiter> {
        let mut c = cfg();
        c.rate_limit.max_requests = 1_000_000;
        c.request_limit.daily_limit = daily;
        c.request_limit.monthly_limit = 1_000_000;
        let l = TenantLimiter::new(&c, QuotaCounters::default());
        l.set_reserving(true);
        l
    }

    fn permit(a: Admit) -> (Permit, bool) {
        match a {
            Admit::Permit(p, refill) => (p, refill),
            Admit::Reserve => panic!("asked to reserve"),
        }
    }

    #[test]
    fn reservation_steps() {
        assert_eq!(reservation_step(0), 1);
        assert_eq!(reservation_step(120), 3);
        assert_eq!(reservation_step(320), 10);
        assert_eq!(reservation_step(u64::MAX), 4096);
    }

    #[test]
    fn nothing_is_admitted_beyond_the_durable_reservation() {
        let l = reserving(320); // step 10
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
        let r = l.reservation(T0);
        assert_eq!((r.counters.daily, r.counters.monthly), (10, 4096));
        // The first reservation after taking over: an earlier leader had
        // reserved up to 40 today, so 40 may have been admitted.
        let mut before = QuotaCounters::default();
        before.merge_max(&r.counters);
        before.daily = 40;
        let mut after = before.clone();
        after.merge_max(&r.counters);
        l.reserved(r.epoch, &before, &after);
        assert_eq!(l.quota_snapshot().0.daily, 40);
        // The ceiling (40) does not cover the 41st request.
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
        let r = l.reservation(T0);
        assert_eq!(r.counters.daily, 50);
        let mut after = before.clone();
        after.merge_max(&r.counters);
        l.reserved(r.epoch, &before, &after);
        // 41..=50 are admitted; a refill is asked for exactly once, when
        // fewer than half a step (5) would be left.
        let mut refills = 0;
        for i in 41..=50u64 {
            let (_p, refill) = permit(l.admit_or_reserve(OperationType::Read, T0).unwrap());
            if refill {
                assert_eq!(i, 46);
                refills += 1;
            }
        }
        assert_eq!(refills, 1);
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
        assert_eq!(l.quota_snapshot().0.daily, 50);
    }

    #[test]
    fn settling_saves_the_exact_counts_and_the_next_request_reserves_again() {
        let l = reserving(320); // step 10
                                // Nothing to settle before this leader's first reservation lands.
        assert!(l.settle().is_none());
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
        let r = l.reservation(T0);
        assert!(l.settle().is_none(), "a reservation is in flight");
        let mut after = QuotaCounters::default();
        after.merge_max(&r.counters);
        l.reserved(r.epoch, &QuotaCounters::default(), &after);
        for _ in 0..3 {
            let _ = permit(l.admit_or_reserve(OperationType::Read, T0).unwrap());
        }
        let settled = l
            .settle()
            .expect("a leader with a landed reservation settles");
        assert_eq!((settled.daily, settled.monthly), (3, 3));
        assert!(settled.same_counts(&l.quota_snapshot().0));
        // The ceiling is the settled counts now: the 4th request waits
        // for a reservation, which lands after the save.
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
        assert_eq!(l.quota_snapshot().0.daily, 3);
        // A follower has nothing to settle.
        l.set_reserving(false);
        assert!(l.settle().is_none());
    }

    #[test]
    fn a_reservation_from_an_earlier_leadership_is_ignored() {
        let l = reserving(320);
        let old = l.reservation(T0);
        l.set_reserving(false);
        l.set_reserving(true);
        let mut after = QuotaCounters::default();
        after.merge_max(&old.counters);
        l.reserved(old.epoch, &QuotaCounters::default(), &after);
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, T0).unwrap(),
            Admit::Reserve
        ));
    }

    #[test]
    fn reservations_are_capped_at_the_limit_and_roll_with_the_day() {
        let l = reserving(12); // step 1
        for _ in 0..12 {
            assert!(matches!(
                l.admit_or_reserve(OperationType::Read, T0).unwrap(),
                Admit::Reserve
            ));
            let r = l.reservation(T0);
            assert!(r.counters.daily <= 12);
            let mut after = QuotaCounters::default();
            after.merge_max(&r.counters);
            l.reserved(r.epoch, &QuotaCounters::default(), &after);
            permit(l.admit_or_reserve(OperationType::Read, T0).unwrap());
        }
        assert_eq!(
            kind(l.admit_or_reserve(OperationType::Read, T0).unwrap_err()),
            LimitKind::Daily
        );
        // Yesterday's ceiling covers nothing today.
        let tomorrow = calendar::next_day_start(T0);
        assert!(matches!(
            l.admit_or_reserve(OperationType::Read, tomorrow).unwrap(),
            Admit::Reserve
        ));
    }

    #[test]
    fn merge_max_never_lowers_and_takes_later_periods() {
        let a = QuotaCounters {
            day: 10,
            daily: 5,
            month: 3,
            monthly: 50,
            by_operation: [1, 2, 3, 4, 5],
            ..Default::default()
        };
        let mut m = a.clone();
        m.merge_max(&QuotaCounters {
            day: 9,
            daily: 99,
            month: 3,
            monthly: 40,
            by_operation: [9, 0, 0, 0, 0],
            ..Default::default()
        });
        assert_eq!((m.day, m.daily, m.month, m.monthly), (10, 5, 3, 50));
        assert_eq!(m.by_operation, [9, 2, 3, 4, 5]);
        m.merge_max(&QuotaCounters {
            day: 11,
            daily: 1,
            month: 3,
            monthly: 60,
            ..Default::default()
        });
        assert_eq!((m.day, m.daily, m.month, m.monthly), (11, 1, 3, 60));
    }

    #[test]
    fn a_grant_takes_what_the_window_has_left_then_refuses_with_the_limit() {
        // Overall 5 + 2 burst = 7 per window; writes 3 per window.
        let l = TenantLimiter::new(&cfg(), QuotaCounters::default());
        assert_eq!(l.grant_shape(OperationType::Read), (7, 60_000));
        assert_eq!(l.grant_shape(OperationType::Write), (3, 60_000));
        l.admit(OperationType::Read, T0).unwrap();
        let g = l.grant(OperationType::Read, 4, 1, 0, T0).unwrap();
        assert_eq!(
            g,
            Grant::Granted {
                granted: 4,
                refill: false
            }
        );
        // Trickle: 2 left in the window, a grant of up to 4 gets 2.
        let g = l.grant(OperationType::Read, 4, 1, 0, T0).unwrap();
        assert_eq!(
            g,
            Grant::Granted {
                granted: 2,
                refill: false
            }
        );
        let e = l.grant(OperationType::Read, 4, 1, 0, T0).unwrap_err();
        assert_eq!(kind(e), LimitKind::Rate);
        // Everything granted counts: usage and the daily count.
        let (q, _) = l.quota_snapshot();
        assert_eq!(
            (q.daily, q.by_operation[OperationType::Read.index()]),
            (7, 7)
        );
    }

    #[test]
    fn a_grant_charges_debt_first_even_past_the_limit() {
        let l = TenantLimiter::new(&cfg(), QuotaCounters::default());
        let g = l.grant(OperationType::Read, 10, 1, 3, T0).unwrap();
        assert_eq!(
            g,
            Grant::Granted {
                granted: 4,
                refill: false
            }
        );
        // Spent: a debt of 2 is still charged, and nothing granted.
        assert_eq!(
            kind(l.grant(OperationType::Read, 10, 1, 2, T0).unwrap_err()),
            LimitKind::Rate
        );
        assert_eq!(l.quota_snapshot().0.daily, 9);
    }

    #[test]
    fn a_grant_stays_within_the_durable_reservation() {
        let l = reserving(320); // step 10
        assert_eq!(
            l.grant(OperationType::Read, 4, 1, 0, T0).unwrap(),
            Grant::Reserve
        );
        let r = l.reservation(T0);
        let before = QuotaCounters::default();
        l.reserved(r.epoch, &before, &r.counters);
        // Ceiling 10: 4, then 4 more with a refill asked (under half a
        // step left), then the last 2 of the ceiling.
        assert_eq!(
            l.grant(OperationType::Read, 4, 1, 0, T0).unwrap(),
            Grant::Granted {
                granted: 4,
                refill: false
            }
        );
        assert_eq!(
            l.grant(OperationType::Read, 4, 1, 0, T0).unwrap(),
            Grant::Granted {
                granted: 4,
                refill: true
            }
        );
        assert_eq!(
            l.grant(OperationType::Read, 4, 1, 0, T0).unwrap(),
            Grant::Granted {
                granted: 2,
                refill: false
            }
        );
        assert_eq!(
            l.grant(OperationType::Read, 4, 1, 0, T0).unwrap(),
            Grant::Reserve
        );
    }

    #[test]
    fn granted_requests_check_only_concurrency_and_permission() {
        let mut c = cfg();
        c.request_limit.concurrent_limit = 1;
        c.request_limit.daily_limit = 0; // spent: only the leader checks it
        let l = TenantLimiter::new(&c, QuotaCounters::default());
        let p = l.admit_granted(OperationType::Read).unwrap();
        assert_eq!(
            kind(l.admit_granted(OperationType::Read).unwrap_err()),
            LimitKind::Concurrency
        );
        drop(p);
        l.admit_granted(OperationType::Read).unwrap();
        assert!(matches!(
            l.admit_granted(OperationType::GraphTraverse),
            Err(Error::OperationNotAllowed { .. })
        ));
        assert_eq!(l.quota_snapshot().0.daily, 0);
    }

    #[test]
    fn can_perform_consumes_nothing() {
        let l = TenantLimiter::new(&cfg(), QuotaCounters::default());
        for _ in 0..100 {
            l.can_perform(OperationType::Write, T0).unwrap();
        }
        assert_eq!(l.quota_snapshot().0.daily, 0);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::tenant::{Tiers, Window};
    use proptest::collection::vec;
    use proptest::prelude::*;

    const T0: u64 = 1_795_809_600_000; // a UTC midnight
    const W: u64 = 1_000;

    /// Reads limited only by the overall window (`limit` per second).
    fn limiter(limit: u64, sliding: bool, daily: u64) -> Arc<TenantLimiter> {
        let mut c =
            TenantConfig::for_tier(&Tiers::default(), "t", "T", "tier2", serde_json::json!({}))
                .unwrap_or_else(|e| panic!("{e}"));
        c.rate_limit.max_requests = limit;
        c.rate_limit.burst_allowance = 0;
        c.rate_limit.sliding_window = sliding;
        c.rate_limit.time_window = Window(std::time::Duration::from_millis(W));
        c.rate_limit.operation_types.insert(OperationType::Read, 0);
        c.request_limit.daily_limit = daily;
        c.request_limit.monthly_limit = u64::MAX / 2;
        TenantLimiter::new(&c, QuotaCounters::default())
    }

    fn granted(r: Result<Grant, Error>) -> u64 {
        match r {
            Ok(Grant::Granted { granted, .. }) => granted,
            _ => 0,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// In every aligned window, what grants admit is at most the
        /// window's limit plus the debt charged in it.
        #[test]
        fn grants_stay_within_the_window_plus_charged_debt(
            limit in 1u64..40,
            sliding: bool,
            calls in vec((0u64..400, 1u64..30, 1u64..4, 0u64..4), 1..120),
        ) {
            let l = limiter(limit, sliding, u64::MAX / 2);
            let mut now = T0;
            let mut per_window: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
            for (gap, cap, consumers, debt) in calls {
                now += gap;
                let g = granted(l.grant(OperationType::Read, cap, consumers, debt, now));
                prop_assert!(g <= cap);
                let e = per_window.entry(now / W).or_default();
                e.0 += g;
                e.1 += debt;
                prop_assert!(e.0 <= limit, "granted {} of {} in one window", e.0, limit);
                let (q, _) = l.quota_snapshot();
                let total: u64 = per_window.values().map(|(g, d)| g + d).sum();
                prop_assert_eq!(q.daily, total);
            }
        }

        /// With reservations on, a grant never takes the daily count past
        /// the durable ceiling (only charged debt, already served, may).
        #[test]
        fn grants_never_pass_the_durable_reservation(
            daily in 1u64..400,
            calls in vec((0u64..50, 1u64..30, 1u64..4, 0u64..3, any::<bool>()), 1..150),
        ) {
            let l = limiter(1_000_000, false, daily);
            l.set_reserving(true);
            let mut now = T0;
            let mut ceiling = 0;
            for (gap, cap, consumers, debt, land) in calls {
                now += gap;
                if land {
                    let r = l.reservation(now);
                    let (before, _) = l.quota_snapshot();
                    l.reserved(r.epoch, &before, &r.counters);
                    ceiling = r.counters.daily;
                }
                let before = l.quota_snapshot().0.daily;
                let r = l.grant(OperationType::Read, cap, consumers, debt, now);
                let after = l.quota_snapshot().0.daily;
                if granted(r) > 0 {
                    prop_assert!(after <= ceiling.max(before + debt), "count {} past ceiling {}", after, ceiling);
                    prop_assert!(after <= daily.max(before + debt));
                } else {
                    prop_assert_eq!(after, before + debt);
                }
            }
        }
    }
}
