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

use crate::proto::{Error, LimitExceeded, LimitKind, OperationType, RequestUsage};
use crate::tenant::TenantConfig;

use super::calendar;
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
    /// Requests by operation type, in [`OperationType::ALL`] order.
    pub by_operation: [u64; 5],
    /// Start of the next UTC day or month, whichever comes first: until
    /// then `roll` has nothing to do (not persisted).
    #[serde(skip)]
    next_boundary: u64,
}

impl QuotaCounters {
    fn roll(&mut self, now_ms: u64) {
        if now_ms < self.next_boundary {
            return;
        }
        self.next_boundary =
            calendar::next_day_start(now_ms).min(calendar::next_month_start(now_ms));
        let day = calendar::day_number(now_ms);
        if day != self.day {
            self.day = day;
            self.daily = 0;
        }
        let month = calendar::month_number(now_ms);
        if month != self.month {
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

    /// Admits one request of `op` at `now_ms`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, op: OperationType, now_ms: u64) -> Result<Permit, Error> {
        let mut st = self.state.lock();
        if let Err(e) = self.check_locked(&mut st, op, now_ms) {
            st.rejected += 1;
            return Err(e);
        }
        st.overall.record(now_ms);
        if let Some(w) = &mut st.per_op[op.index()] {
            w.record(now_ms);
        }
        st.quota.daily += 1;
        st.quota.monthly += 1;
        st.quota.by_operation[op.index()] += 1;
        st.version += 1;
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            limiter: Arc::clone(self),
        })
    }

    /// R3 `can_perform_operation`: would `op` be admitted now? Consumes nothing.
    pub fn can_perform(&self, op: OperationType, now_ms: u64) -> Result<(), Error> {
        let mut st = self.state.lock();
        self.check_locked(&mut st, op, now_ms)
    }

    fn check_locked(&self, st: &mut State, op: OperationType, now_ms: u64) -> Result<(), Error> {
        if !st.enabled {
            return Err(Error::TenantDisabled {
                tenant_id: self.tenant_id.clone(),
            });
        }
        if !st.allowed[op.index()] {
            return Err(Error::OperationNotAllowed { operation: op });
        }
        let in_flight = self.in_flight.load(Ordering::Acquire);
        if in_flight >= st.concurrent_limit {
            return Err(limit(
                LimitKind::Concurrency,
                st.concurrent_limit,
                in_flight,
                Some(CONCURRENCY_RETRY_MS),
            ));
        }
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
        let mut st = self.state.lock();
        let q = &mut st.quota;
        q.next_boundary = 0;
        if persisted.day > q.day {
            q.day = persisted.day;
            q.daily = persisted.daily;
        } else if persisted.day == q.day {
            q.daily = q.daily.max(persisted.daily);
        }
        if persisted.month > q.month {
            q.month = persisted.month;
            q.monthly = persisted.monthly;
        } else if persisted.month == q.month {
            q.monthly = q.monthly.max(persisted.monthly);
        }
        for (mine, theirs) in q.by_operation.iter_mut().zip(persisted.by_operation) {
            *mine = (*mine).max(theirs);
        }
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
        RequestUsage {
            day: st.quota.day,
            daily: st.quota.daily,
            month: st.quota.month,
            monthly: st.quota.monthly,
            by_operation: OperationType::ALL
                .iter()
                .map(|op| (op.as_str().to_string(), st.quota.by_operation[op.index()]))
                .collect(),
            rejected: st.rejected,
        }
    }
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

    #[test]
    fn can_perform_consumes_nothing() {
        let l = TenantLimiter::new(&cfg(), QuotaCounters::default());
        for _ in 0..100 {
            l.can_perform(OperationType::Write, T0).unwrap();
        }
        assert_eq!(l.quota_snapshot().0.daily, 0);
    }
}
