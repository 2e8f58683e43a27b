//! Cluster-wide request budgets: the arithmetic of grants. Pure, no I/O.
//!
//! A tenant's request budget (rate windows, daily and monthly counts) is
//! owned by the leader of its shard: every request that reaches the
//! leader is admitted against the leader's limiter. A follower that serves
//! a stale read spends a *grant* instead: a number of requests the leader
//! has already admitted on its behalf (counted in its windows and its
//! durable daily and monthly counts) and handed over. The design follows
//! CockroachDB's distributed token bucket (grants sized to a target
//! period, a trickle near the limit, debt paid back), reduced to what a
//! window limiter needs:
//!
//! * [`GrantBucket`] (follower side): spends granted requests locally, asks
//!   for the next grant when half a grant is left, sized to what this node
//!   used in the last [`GRANT_PERIOD_MS`]; unspent requests expire after
//!   [`GRANT_TTL_MS`]. While a refill is in flight it may run into a small
//!   debt (at most a quarter of its last grant) instead of stalling; the
//!   next grant request carries the debt, and the leader charges it before
//!   it grants anything.
//! * [`GrantLedger`] (leader side): which nodes draw grants, and the most
//!   one grant may be: the node's share of [`GRANT_PERIOD_MS`] worth of the
//!   limit, split between the leader and every node that drew a grant in
//!   the last 2 × [`GRANT_TTL_MS`]. A node that stops asking (dead,
//!   partitioned) drops out of the split after that.
//!
//! What a grant may over-admit is stated in ARCHITECTURE.md ("Limits
//! across the cluster"); the functions here are what that bound is
//! computed from.

/// The demand one grant aims to cover: this much of a node's traffic.
pub const GRANT_PERIOD_MS: u64 = 250;
/// Granted requests not spent within this are dropped.
pub const GRANT_TTL_MS: u64 = 1_000;
/// Largest grant, whatever the limit.
pub const MAX_GRANT: u64 = 4_096;
/// Most nodes a ledger tracks (more share the last slot's fate: they are
/// still served, only not counted in the split).
pub const MAX_LEDGER_NODES: usize = 64;

/// The most one grant may be for a limit of `limit` requests per
/// `window_ms`, split `consumers` ways: [`GRANT_PERIOD_MS`] worth of the
/// limit divided by the consumers, rounded up, between 1 and [`MAX_GRANT`].
pub fn grant_cap(limit: u64, window_ms: u64, consumers: u64) -> u64 {
    let per_period = (limit as u128 * GRANT_PERIOD_MS as u128).div_ceil(window_ms.max(1) as u128);
    let share = per_period.div_ceil(consumers.max(1) as u128);
    (share as u64).clamp(1, MAX_GRANT)
}

/// Near the end of a daily or monthly budget grants shrink: with `left`
/// requests of it left, split between `consumers` (the leader and the
/// followers drawing grants), one grant is at most half a share, so the
/// budget trickles out to every consumer instead of going to the first
/// asker, and the debt a follower can run into (a quarter of its last
/// grant) shrinks with it.
pub fn trickle(cap: u64, left: u64, consumers: u64) -> u64 {
    cap.min(left.div_ceil(2 * consumers.max(1)).max(1))
}

/// The most debt a bucket may run into after a grant of `granted`.
pub fn max_debt(granted: u64) -> u64 {
    granted / 4
}

/// Leader side: the nodes drawing grants of one tenant.
#[derive(Debug, Default)]
pub struct GrantLedger {
    /// (node, last grant request at ms).
    nodes: Vec<(u64, u64)>,
}

impl GrantLedger {
    /// Records a grant request of `node` at `now_ms` and returns the most
    /// it may be granted for a limit of `limit` per `window_ms`. The leader
    /// itself is always one of the consumers.
    pub fn cap_for(&mut self, node: u64, now_ms: u64, limit: u64, window_ms: u64) -> u64 {
        self.expire(now_ms);
        if let Some(e) = self.nodes.iter_mut().find(|(n, _)| *n == node) {
            e.1 = now_ms;
        } else if self.nodes.len() < MAX_LEDGER_NODES {
            self.nodes.push((node, now_ms));
        }
        grant_cap(limit, window_ms, self.nodes.len() as u64 + 1)
    }

    /// Forgets nodes that have not asked in 2 × [`GRANT_TTL_MS`]: their
    /// last grant has expired, so they no longer take a share.
    pub fn expire(&mut self, now_ms: u64) {
        self.nodes
            .retain(|(_, at)| now_ms.saturating_sub(*at) < 2 * GRANT_TTL_MS);
    }

    /// Nodes currently sharing the budget (the leader not counted).
    pub fn active(&self) -> usize {
        self.nodes.len()
    }
}

/// What [`GrantBucket::take`] decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted from the grant.
    Admit,
    /// Admitted; the grant runs low: ask for `want` more in the background
    /// (this caller is the only one told).
    AdmitAndRefill {
        /// Requests to ask for.
        want: u64,
    },
    /// Admitted into debt while a refill is in flight.
    AdmitInDebt,
    /// Nothing left: ask for `want` and wait for the answer (a refill may
    /// already be in flight; then wait for that one).
    Wait {
        /// Requests to ask for.
        want: u64,
    },
}

/// Follower side: the grant one node holds for one tenant.
#[derive(Debug, Default, Clone)]
pub struct GrantBucket {
    tokens: u64,
    expires_at: u64,
    debt: u64,
    debt_cap: u64,
    refill_pending: bool,
    /// Requests asked for in the current and the previous period.
    period_start: u64,
    cur: u64,
    prev: u64,
}

impl GrantBucket {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests left in the grant at `now_ms` (0 once it expired).
    pub fn tokens(&self, now_ms: u64) -> u64 {
        if now_ms >= self.expires_at {
            0
        } else {
            self.tokens
        }
    }

    /// Debt to report with the next grant request.
    pub fn debt(&self) -> u64 {
        self.debt
    }

    /// A refill has been asked for and not answered.
    pub fn refill_pending(&self) -> bool {
        self.refill_pending
    }

    fn count_demand(&mut self, now_ms: u64) {
        let start = now_ms - now_ms % GRANT_PERIOD_MS;
        if start != self.period_start {
            self.prev = if start == self.period_start + GRANT_PERIOD_MS {
                self.cur
            } else {
                0
            };
            self.cur = 0;
            self.period_start = start;
        }
        self.cur += 1;
    }

    /// What to ask for: the demand of the last full period (or of this one,
    /// if larger), at least 1, plus the debt to pay back.
    pub fn want(&self) -> u64 {
        self.prev
            .max(self.cur)
            .clamp(1, MAX_GRANT)
            .saturating_add(self.debt)
    }

    /// One request at `now_ms`.
    pub fn take(&mut self, now_ms: u64) -> Take {
        self.count_demand(now_ms);
        if now_ms >= self.expires_at {
            self.tokens = 0;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            let low = self.tokens <= self.debt_cap.max(1) * 2;
            if low && !self.refill_pending {
                self.refill_pending = true;
                return Take::AdmitAndRefill { want: self.want() };
            }
            return Take::Admit;
        }
        if self.refill_pending && self.debt < self.debt_cap {
            self.debt += 1;
            return Take::AdmitInDebt;
        }
        self.refill_pending = true;
        Take::Wait { want: self.want() }
    }

    /// The leader granted `granted` at `now_ms`, having charged `paid` of
    /// the debt this node reported with the request.
    pub fn refill(&mut self, granted: u64, paid: u64, now_ms: u64) {
        self.debt = self.debt.saturating_sub(paid);
        self.tokens = self.tokens(now_ms).saturating_add(granted);
        self.expires_at = now_ms.saturating_add(GRANT_TTL_MS);
        self.debt_cap = max_debt(granted);
        self.refill_pending = false;
    }

    /// The leader refused (the budget is spent) or could not be asked. It
    /// charged `paid` of the reported debt; no more debt until a grant.
    pub fn refused(&mut self, paid: u64) {
        self.debt = self.debt.saturating_sub(paid);
        self.debt_cap = 0;
        self.refill_pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_795_809_600_000; // a multiple of GRANT_PERIOD_MS

    #[test]
    fn caps_are_a_period_of_the_limit_split_between_consumers() {
        // 40 a second: 10 per 250 ms; leader alone with one follower: 5.
        assert_eq!(grant_cap(40, 1_000, 2), 5);
        // three ways: 10/3 rounds up.
        assert_eq!(grant_cap(40, 1_000, 3), 4);
        // A per-minute limit: 100/min is 0.42 per period: still 1.
        assert_eq!(grant_cap(100, 60_000, 3), 1);
        assert_eq!(grant_cap(u64::MAX, 1, 1), MAX_GRANT);
        assert_eq!(grant_cap(10, 0, 0), MAX_GRANT.min(2_500));
    }

    #[test]
    fn grants_trickle_near_the_end_of_the_budget() {
        // 300 left, three consumers: at most 50.
        assert_eq!(trickle(4_096, 300, 3), 50);
        assert_eq!(trickle(10, 300, 3), 10);
        // 7 left: ceil(7 / 6) = 2; 1 left: 1; nothing left: still asks 1
        // (the limiter refuses it).
        assert_eq!(trickle(4_096, 7, 3), 2);
        assert_eq!(trickle(4_096, 1, 3), 1);
        assert_eq!(trickle(4_096, 0, 3), 1);
    }

    #[test]
    fn an_empty_bucket_waits_then_spends_its_grant_and_refills_at_half() {
        let mut b = GrantBucket::new();
        assert_eq!(b.take(T0), Take::Wait { want: 1 });
        assert!(b.refill_pending());
        b.refill(8, 0, T0); // debt cap 2: refill when 4 are left
        assert_eq!(b.tokens(T0), 8);
        for _ in 0..3 {
            assert_eq!(b.take(T0 + 1), Take::Admit);
        }
        // The 4th leaves 4 = 2 x debt cap: time to ask, sized to demand
        // (5 requests so far in this period).
        assert_eq!(b.take(T0 + 1), Take::AdmitAndRefill { want: 5 });
        // Told once only.
        assert_eq!(b.take(T0 + 2), Take::Admit);
    }

    #[test]
    fn debt_is_bounded_and_reported_with_the_next_request() {
        let mut b = GrantBucket::new();
        let _ = b.take(T0);
        b.refill(8, 0, T0);
        for _ in 0..8 {
            let _ = b.take(T0);
        }
        assert_eq!(b.tokens(T0), 0);
        assert!(b.refill_pending());
        // Refill in flight: two more into debt (8 / 4), then wait.
        assert_eq!(b.take(T0), Take::AdmitInDebt);
        assert_eq!(b.take(T0), Take::AdmitInDebt);
        assert_eq!(b.debt(), 2);
        // 12 asked in this period + 2 debt.
        assert_eq!(b.take(T0), Take::Wait { want: 14 });
        // The leader charged the 2 and granted 10.
        b.refill(10, 2, T0 + 5);
        assert_eq!(b.debt(), 0);
        assert_eq!(b.tokens(T0 + 5), 10);
    }

    #[test]
    fn a_refusal_stops_new_debt_and_keeps_what_was_not_charged() {
        let mut b = GrantBucket::new();
        let _ = b.take(T0);
        b.refill(4, 0, T0); // debt cap 1
        for _ in 0..4 {
            let _ = b.take(T0);
        }
        assert_eq!(b.take(T0), Take::AdmitInDebt);
        b.refused(0); // the leader could not be asked: debt stays
        assert_eq!(b.debt(), 1);
        assert_eq!(b.take(T0), Take::Wait { want: 7 + 1 });
        b.refused(1);
        assert_eq!(b.debt(), 0);
        assert!(matches!(b.take(T0), Take::Wait { .. }));
    }

    #[test]
    fn unspent_grants_expire() {
        let mut b = GrantBucket::new();
        let _ = b.take(T0);
        b.refill(100, 0, T0);
        assert_eq!(b.tokens(T0 + GRANT_TTL_MS - 1), 100);
        assert_eq!(b.tokens(T0 + GRANT_TTL_MS), 0);
        assert!(matches!(b.take(T0 + GRANT_TTL_MS), Take::Wait { .. }));
        // A refill on top of a live grant adds; on an expired one, replaces.
        b.refill(3, 0, T0 + GRANT_TTL_MS);
        b.refill(2, 0, T0 + GRANT_TTL_MS + 1);
        assert_eq!(b.tokens(T0 + GRANT_TTL_MS + 1), 5);
    }

    #[test]
    fn demand_is_measured_per_period() {
        let mut b = GrantBucket::new();
        b.refill(1_000, 0, T0);
        for _ in 0..30 {
            let _ = b.take(T0 + 10);
        }
        assert_eq!(b.want(), 30);
        for _ in 0..5 {
            let _ = b.take(T0 + GRANT_PERIOD_MS + 1);
        }
        assert_eq!(b.want(), 30); // the last full period's 30
        let _ = b.take(T0 + 3 * GRANT_PERIOD_MS);
        assert_eq!(b.want(), 1); // a gap forgets it
    }

    #[test]
    fn the_ledger_splits_between_active_nodes_and_drops_dead_ones() {
        let mut l = GrantLedger::default();
        // 80/s: 20 per period. Leader + node 2: 10 each.
        assert_eq!(l.cap_for(2, T0, 80, 1_000), 10);
        // Node 3 joins: three ways, 7.
        assert_eq!(l.cap_for(3, T0 + 100, 80, 1_000), 7);
        assert_eq!(l.active(), 2);
        // Node 2 dies; node 3 keeps asking. After 2 x TTL node 2's share
        // returns to the others.
        assert_eq!(l.cap_for(3, T0 + 2 * GRANT_TTL_MS - 1, 80, 1_000), 7);
        assert_eq!(l.cap_for(3, T0 + 2 * GRANT_TTL_MS, 80, 1_000), 10);
        assert_eq!(l.active(), 1);
    }

    #[test]
    fn the_ledger_is_bounded() {
        let mut l = GrantLedger::default();
        for n in 0..(MAX_LEDGER_NODES as u64 + 10) {
            l.cap_for(n, T0, 1_000_000, 1_000);
        }
        assert_eq!(l.active(), MAX_LEDGER_NODES);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Take,
        /// The leader grants `granted` and charges `pay` (a fraction in
        /// 256ths) of the debt.
        Refill {
            granted: u64,
            pay: u8,
        },
        Refused {
            pay: u8,
        },
    }

    fn step() -> impl Strategy<Value = (u64, Step)> {
        let s = prop_oneof![
            6 => Just(Step::Take),
            2 => (0u64..64, any::<u8>()).prop_map(|(granted, pay)| Step::Refill { granted, pay }),
            1 => any::<u8>().prop_map(|pay| Step::Refused { pay }),
        ];
        (prop_oneof![3 => Just(0u64), 1 => 0u64..1_500], s)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Tokens never exceed what was granted and is unexpired; debt
        /// grows only by admitting in debt, up to `max_debt` of the last
        /// grant; every admitted request was granted, paid back, or is
        /// owed.
        #[test]
        fn a_bucket_admits_only_what_was_granted_or_is_owed(steps in vec(step(), 1..300)) {
            let mut b = GrantBucket::new();
            let mut now = 1_795_809_600_000u64;
            let (mut granted, mut paid, mut from_tokens, mut admitted) = (0u64, 0u64, 0u64, 0u64);
            let mut last: Option<(u64, u64)> = None; // (granted, at)
            for (gap, s) in steps {
                now += gap;
                let debt_before = b.debt();
                match s {
                    Step::Take => {
                        let pending = b.refill_pending();
                        match b.take(now) {
                            Take::Admit | Take::AdmitAndRefill { .. } => {
                                from_tokens += 1;
                                admitted += 1;
                                prop_assert_eq!(b.debt(), debt_before);
                            }
                            Take::AdmitInDebt => {
                                admitted += 1;
                                prop_assert!(pending, "debt without a refill in flight");
                                prop_assert_eq!(b.debt(), debt_before + 1);
                                let cap = last.map_or(0, |(g, _)| max_debt(g));
                                prop_assert!(b.debt() <= cap, "debt {} > max_debt {}", b.debt(), cap);
                            }
                            Take::Wait { want } => {
                                prop_assert!(want > b.debt());
                                prop_assert_eq!(b.debt(), debt_before);
                            }
                        }
                    }
                    Step::Refill { granted: g, pay } => {
                        let p = b.debt() * pay as u64 / 255;
                        b.refill(g, p, now);
                        granted += g;
                        paid += p;
                        last = Some((g, now));
                        prop_assert_eq!(b.debt(), debt_before - p);
                    }
                    Step::Refused { pay } => {
                        let p = b.debt() * pay as u64 / 255;
                        b.refused(p);
                        paid += p;
                        prop_assert_eq!(b.debt(), debt_before - p);
                    }
                }
                prop_assert!(b.tokens(now) <= granted - from_tokens);
                match last {
                    Some((_, at)) if now < at + GRANT_TTL_MS => {}
                    _ => prop_assert_eq!(b.tokens(now), 0),
                }
                prop_assert!(admitted <= granted + paid + b.debt());
            }
        }

        /// A grant's cap is in [1, MAX_GRANT] and never grows with more
        /// consumers; the trickle is in [1, cap], never grows with more
        /// consumers and never shrinks with more left.
        #[test]
        fn caps_are_bounded_and_shrink_with_consumers(
            limit in prop_oneof![0u64..100_000, any::<u64>()],
            window in prop_oneof![0u64..100_000, any::<u64>()],
            consumers in 0u64..200,
            left in prop_oneof![0u64..10_000, any::<u64>()],
        ) {
            let cap = grant_cap(limit, window, consumers);
            prop_assert!((1..=MAX_GRANT).contains(&cap));
            prop_assert!(grant_cap(limit, window, consumers + 1) <= cap);
            let t = trickle(cap, left, consumers);
            prop_assert!((1..=cap).contains(&t));
            prop_assert!(trickle(cap, left, consumers + 1) <= t);
            prop_assert!(trickle(cap, left.saturating_add(1), consumers) >= t);
        }

        /// The ledger splits between the leader and exactly the nodes that
        /// asked within the last 2 × GRANT_TTL_MS.
        #[test]
        fn the_ledger_counts_the_nodes_that_asked_recently(
            asks in vec((0u64..8, 0u64..1_500), 1..200),
            limit in 1u64..1_000_000,
        ) {
            let mut ledger = GrantLedger::default();
            let mut seen: std::collections::HashMap<u64, u64> = Default::default();
            let mut now = 0u64;
            for (node, gap) in asks {
                now += gap;
                seen.insert(node, now);
                let recent = seen.values().filter(|&&at| now - at < 2 * GRANT_TTL_MS).count() as u64;
                let cap = ledger.cap_for(node, now, limit, 60_000);
                prop_assert_eq!(cap, grant_cap(limit, 60_000, recent + 1));
                prop_assert_eq!(ledger.active() as u64, recent);
            }
        }
    }
}
