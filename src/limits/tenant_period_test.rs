//! The per-operation day and month counts of [`TenantLimiter`]: as
//! durable as the totals across a kill -9, and rolled into the previous
//! period at UTC midnight.

use super::*;
use crate::tenant::Tiers;

const T0: u64 = 1_795_809_600_000; // 2026-11-27T20:00:00Z

fn cfg(daily: u64) -> TenantConfig {
    let mut c = TenantConfig::for_tier(&Tiers::default(), "t", "T", "tier4", serde_json::json!({}))
        .unwrap();
    c.rate_limit.max_requests = 1_000_000;
    c.request_limit.daily_limit = daily;
    c.request_limit.monthly_limit = 10 * daily;
    c
}

fn limiter(daily: u64) -> Arc<TenantLimiter> {
    TenantLimiter::new(&cfg(daily), QuotaCounters::default())
}

/// Admits one request of `op` on a leader, reserving through `persisted`
/// (what a `CheckpointQuota` apply does: a max-merge) whenever asked to.
fn admit(l: &Arc<TenantLimiter>, persisted: &mut QuotaCounters, op: OperationType, now: u64) {
    loop {
        match l.admit_or_reserve(op, now).unwrap() {
            Admit::Permit(_p, refill) => {
                if refill {
                    reserve(l, persisted, now);
                }
                return;
            }
            Admit::Reserve => reserve(l, persisted, now),
        }
    }
}

fn reserve(l: &Arc<TenantLimiter>, persisted: &mut QuotaCounters, now: u64) {
    let r = l.reservation(now);
    let before = persisted.clone();
    persisted.merge_max(&r.counters);
    l.reserved(r.epoch, &before, persisted);
}

#[test]
fn a_kill_9_never_loses_an_admitted_request_of_any_operation() {
    let daily = 3_200; // step 100
    let step = reservation_step(daily);
    let l = limiter(daily);
    l.set_reserving(true);
    let mut persisted = QuotaCounters::default();
    let ops = [
        OperationType::Read,
        OperationType::Write,
        OperationType::Read,
        OperationType::VectorSearch,
        OperationType::Query,
    ];
    let mut made = [0u64; 5];
    for i in 0..1_234 {
        let op = ops[i % ops.len()];
        admit(&l, &mut persisted, op, T0);
        made[op.index()] += 1;
        // At every point a kill -9 could strike, what is persisted covers
        // every admitted request of every operation, and overstates one by
        // at most a step.
        for o in OperationType::ALL {
            let (d, m) = (
                persisted.day_ops.ops[o.index()],
                persisted.month_ops.ops[o.index()],
            );
            assert!(d >= made[o.index()], "{o}: day {d} < {}", made[o.index()]);
            assert!(m >= made[o.index()], "{o}: month {m} < {}", made[o.index()]);
            assert!(d <= made[o.index()] + step, "{o}: day {d} overstates");
        }
    }
    // An operation never used is never reserved for.
    assert_eq!(
        persisted.day_ops.ops[OperationType::GraphTraverse.index()],
        0
    );
    // A restarted leader resumes from what was persisted: nothing lost.
    let again = limiter(daily);
    again.restore_quota(persisted.clone());
    let u = again.request_usage(T0);
    for o in OperationType::ALL {
        assert!(u.daily_by_operation[o.as_str()] >= made[o.index()]);
        assert!(u.monthly_by_operation[o.as_str()] >= made[o.index()]);
    }
    // A graceful close writes the exact counts (SetQuota replaces).
    let (exact, _) = l.quota_snapshot();
    let u = TenantLimiter::new(&cfg(daily), exact).request_usage(T0);
    for o in OperationType::ALL {
        assert_eq!(u.daily_by_operation[o.as_str()], made[o.index()]);
    }
}

#[test]
fn per_operation_counts_roll_into_the_previous_day_and_month() {
    let l = limiter(1_000);
    for _ in 0..3 {
        l.admit(OperationType::Read, T0).unwrap();
    }
    l.admit(OperationType::Write, T0).unwrap();
    let u = l.request_usage(T0);
    assert_eq!(u.date, "2026-11-27");
    assert_eq!(u.month_label, "2026-11");
    assert_eq!(u.daily_by_operation["read"], 3);
    assert_eq!(u.daily_by_operation["write"], 1);
    assert_eq!(u.previous_day, None);

    // The next UTC day, still November.
    let t1 = calendar::next_day_start(T0) + 1;
    l.admit(OperationType::Query, t1).unwrap();
    let u = l.request_usage(t1);
    assert_eq!((u.date.as_str(), u.daily), ("2026-11-28", 1));
    assert_eq!(u.daily_by_operation["read"], 0);
    assert_eq!(u.daily_by_operation["query"], 1);
    assert_eq!(u.monthly_by_operation["read"], 3);
    assert_eq!(u.monthly_by_operation["query"], 1);
    let prev = u.previous_day.expect("previous day");
    assert_eq!((prev.label.as_str(), prev.requests), ("2026-11-27", 4));
    assert_eq!(prev.by_operation["read"], 3);

    // December: November becomes the previous month.
    let t2 = calendar::next_month_start(T0) + 1;
    let u = l.request_usage(t2);
    assert_eq!((u.month_label.as_str(), u.monthly), ("2026-12", 0));
    let pm = u.previous_month.expect("previous month");
    assert_eq!((pm.label.as_str(), pm.requests), ("2026-11", 5));
    assert_eq!(pm.by_operation["write"], 1);
    // The previous day is the last one with requests: Nov 28.
    assert_eq!(u.previous_day.expect("previous day").label, "2026-11-28");
}
