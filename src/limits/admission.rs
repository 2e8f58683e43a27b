//! Node-wide admission with weighted fair shares (Q4, C2).
//!
//! The node runs at most `max_in_flight` operations at once. Below that,
//! admission is one step. When saturated, requests wait in a bounded FIFO
//! queue per tenant, and a finishing operation hands its slot to a waiting
//! tenant by start-time fair queueing: each grant advances the tenant's
//! virtual finish time by `1 / share`, and the slot goes to the waiting
//! tenant whose next start (`max(virtual clock, its finish)`) is earliest
//! (on a tie, the higher priority). So under saturation every waiting
//! tenant gets slots in proportion to its share: the seed's base 10% plus
//! its priority bonus of that base ([`share`]: low 14%, normal 16%, high
//! 18%, critical 20%). A low-priority tenant still progresses while
//! critical tenants are busy (5 slots to their 7), instead of waiting for
//! every critical request first. No tenant holds more than [`MAX_SHARE`]
//! of the slots while another waits; alone, it may use them all (the
//! scheduler never idles a slot someone wants).
//!
//! A tenant that goes idle forgets its finish time (it rejoins at the
//! clock: no credit saved up while idle, no debt held against it). The
//! per-tenant entries exist only while a tenant holds or waits for a
//! slot, so they are bounded by `max_in_flight + max_queued`. A full
//! queue, or a wait longer than `queue_timeout`, is refused with
//! `Overloaded`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::proto::Error;
use crate::tenant::Priority;

/// The seed's base share of node capacity for every active tenant.
pub const BASE_SHARE: f64 = 0.10;
/// The most of the node's slots one tenant holds while others wait.
pub const MAX_SHARE: f64 = 0.50;

/// A tenant's share of node capacity under contention: the seed's base
/// 10% plus its priority bonus (0.4, 0.6, 0.8 or 1.0 of the base), capped
/// at [`MAX_SHARE`].
pub fn share(priority: Priority) -> f64 {
    let bonus = match priority {
        Priority::Low => 0.4,
        Priority::Normal => 0.6,
        Priority::High => 0.8,
        Priority::Critical => 1.0,
    };
    (BASE_SHARE * (1.0 + bonus)).min(MAX_SHARE)
}

/// One tenant's place in the scheduler.
#[derive(Debug)]
struct Lane {
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Virtual time at which its last grant finishes.
    finish: f64,
    held: usize,
    rank: usize,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    /// Slots in use by priority rank.
    in_flight_by: [usize; 4],
    queued: usize,
    queued_by: [usize; 4],
    lanes: HashMap<Arc<str>, Lane>,
    /// The start time of the latest grant.
    clock: f64,
}

impl State {
    /// Counts a grant to `tenant`: its slot and its virtual time.
    fn grant(&mut self, tenant: &Arc<str>, rank: usize) {
        self.in_flight_by[rank] += 1;
        let lane = self.lanes.entry(tenant.clone()).or_insert_with(|| Lane {
            waiters: VecDeque::new(),
            finish: 0.0,
            held: 0,
            rank,
        });
        lane.rank = rank;
        lane.held += 1;
        let start = lane.finish.max(self.clock);
        lane.finish = start + 1.0 / share(rank_priority(rank));
        self.clock = start;
    }

    /// Forgets `tenant`'s lane when it neither holds nor waits.
    fn tidy(&mut self, tenant: &str) {
        if self
            .lanes
            .get(tenant)
            .is_some_and(|l| l.held == 0 && l.waiters.is_empty())
        {
            self.lanes.remove(tenant);
        }
    }

    /// The waiting tenant whose next grant starts first: among those
    /// under `cap` slots if any, else among all waiters.
    fn next(&self, cap: usize) -> Option<Arc<str>> {
        let key = |l: &Lane| (l.finish.max(self.clock), std::cmp::Reverse(l.rank));
        let pick = |under_cap: bool| {
            self.lanes
                .iter()
                .filter(|(_, l)| !l.waiters.is_empty() && (!under_cap || l.held < cap))
                .min_by(|(_, a), (_, b)| {
                    let (ka, kb) = (key(a), key(b));
                    ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
                })
                .map(|(t, _)| t.clone())
        };
        pick(true).or_else(|| pick(false))
    }
}

fn rank_priority(rank: usize) -> Priority {
    match rank {
        0 => Priority::Low,
        1 => Priority::Normal,
        2 => Priority::High,
        _ => Priority::Critical,
    }
}

/// A queued request. If it is dropped (timeout or cancellation) after a
/// slot was handed to it, the slot is released, never leaked.
struct Waiter {
    admission: Arc<Admission>,
    tenant: Arc<str>,
    rank: usize,
    rx: Option<oneshot::Receiver<()>>,
}

impl Waiter {
    /// Closes the channel; true if a slot arrived before it closed.
    fn take_late_slot(&mut self) -> bool {
        match self.rx.take() {
            Some(mut rx) => {
                rx.close();
                rx.try_recv().is_ok()
            }
            None => false,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.take_late_slot() {
            self.admission.release(&self.tenant, self.rank);
        } else {
            // Its closed sender stays queued until a release skips it;
            // the lane is tidied then.
        }
    }
}

/// The node's admission controller.
#[derive(Debug)]
pub struct Admission {
    max_in_flight: usize,
    max_queued: usize,
    /// Most slots one tenant holds while another waits.
    cap: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

/// A slot; handed to the next waiter (or freed) on drop.
#[derive(Debug)]
pub struct AdmissionPermit {
    admission: Arc<Admission>,
    tenant: Arc<str>,
    rank: usize,
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        self.admission.release(&self.tenant, self.rank);
    }
}

impl Admission {
    /// A controller with `max_in_flight` slots and room for `max_queued` waiters.
    pub fn new(max_in_flight: usize, max_queued: usize, queue_timeout: Duration) -> Arc<Self> {
        let max_in_flight = max_in_flight.max(1);
        Arc::new(Self {
            max_in_flight,
            max_queued,
            cap: ((max_in_flight as f64 * MAX_SHARE).ceil() as usize).max(1),
            queue_timeout,
            state: Mutex::new(State::default()),
        })
    }

    /// Takes a slot for `tenant`, waiting for its fair share when the
    /// node is saturated.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        priority: Priority,
    ) -> Result<AdmissionPermit, Error> {
        let rank = priority.rank();
        let tenant: Arc<str> = Arc::from(tenant);
        let permit = |adm: &Arc<Self>, tenant: &Arc<str>| AdmissionPermit {
            admission: Arc::clone(adm),
            tenant: tenant.clone(),
            rank,
        };
        let rx = {
            let mut st = self.state.lock();
            if st.in_flight < self.max_in_flight && st.queued == 0 {
                st.in_flight += 1;
                st.grant(&tenant, rank);
                return Ok(permit(self, &tenant));
            }
            if st.queued >= self.max_queued {
                return Err(self.overloaded());
            }
            let (tx, rx) = oneshot::channel();
            let lane = st.lanes.entry(tenant.clone()).or_insert_with(|| Lane {
                waiters: VecDeque::new(),
                finish: 0.0,
                held: 0,
                rank,
            });
            lane.rank = rank;
            lane.waiters.push_back(tx);
            st.queued += 1;
            st.queued_by[rank] += 1;
            rx
        };
        let mut waiter = Waiter {
            admission: Arc::clone(self),
            tenant: tenant.clone(),
            rank,
            rx: Some(rx),
        };
        let got = match waiter.rx.as_mut() {
            Some(rx) => matches!(
                tokio::time::timeout(self.queue_timeout, rx).await,
                Ok(Ok(()))
            ),
            None => false,
        };
        if got {
            waiter.rx = None;
            return Ok(permit(self, &tenant));
        }
        match waiter.take_late_slot() {
            true => Ok(permit(self, &tenant)),
            false => Err(self.overloaded()),
        }
    }

    fn overloaded(&self) -> Error {
        Error::Overloaded {
            retry_after_ms: (self.queue_timeout.as_millis() as u64 / 4).max(1),
        }
    }

    /// Frees a slot `tenant` held at priority rank `held`, or passes it to
    /// the waiting tenant whose turn it is.
    fn release(&self, tenant: &str, held: usize) {
        let mut st = self.state.lock();
        st.in_flight_by[held] = st.in_flight_by[held].saturating_sub(1);
        if let Some(l) = st.lanes.get_mut(tenant) {
            l.held = l.held.saturating_sub(1);
        }
        st.tidy(tenant);
        while let Some(next) = st.next(self.cap) {
            let Some(lane) = st.lanes.get_mut(&next) else {
                break;
            };
            let rank = lane.rank;
            let Some(tx) = lane.waiters.pop_front() else {
                break;
            };
            st.queued -= 1;
            st.queued_by[rank] = st.queued_by[rank].saturating_sub(1);
            if tx.send(()).is_ok() {
                st.grant(&next, rank);
                return; // the slot passes to the waiter
            }
            // That waiter gave up: try the next.
            st.tidy(&next);
        }
        st.in_flight -= 1;
    }

    /// (in flight, queued).
    pub fn load(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.in_flight, st.queued)
    }

    /// (slots in use, waiters) by priority rank, low to critical.
    pub fn load_by_priority(&self) -> ([usize; 4], [usize; 4]) {
        let st = self.state.lock();
        (st.in_flight_by, st.queued_by)
    }

    /// Tenants holding or waiting for a slot now.
    pub fn active_tenants(&self) -> usize {
        self.state.lock().lanes.len()
    }

    /// `max_in_flight`.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues `n` waiters of `tenant` on `a` (saturated); each reports its
    /// tenant into `order` when granted and holds the slot until `go`.
    async fn queue(
        a: &Arc<Admission>,
        tenant: &'static str,
        p: Priority,
        n: usize,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (a2, order) = (a.clone(), order.clone());
            let before = a.load().1;
            tasks.push(tokio::spawn(async move {
                let permit = a2.acquire(tenant, p).await.unwrap();
                order.lock().push(tenant);
                drop(permit);
            }));
            while a.load().1 == before {
                tokio::task::yield_now().await;
            }
        }
        tasks
    }

    #[test]
    fn shares_are_the_seeds_base_plus_the_priority_bonus() {
        let s = [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Critical,
        ]
        .map(share);
        let pct = s.map(|x| (x * 100.0).round() as u32);
        assert_eq!(pct, [14, 16, 18, 20]);
    }

    #[tokio::test]
    async fn a_low_priority_tenant_progresses_while_a_critical_one_floods_the_node() {
        let a = Admission::new(1, 1_000, Duration::from_secs(30));
        let held = a.acquire("x", Priority::Normal).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = queue(&a, "crit", Priority::Critical, 200, &order).await;
        tasks.extend(queue(&a, "low", Priority::Low, 200, &order).await);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock();
        // Grants go 20 : 14 by share while both wait (strict priority
        // would give "low" nothing before all 200 of "crit").
        let first: Vec<_> = order[..170].to_vec();
        let lows = first.iter().filter(|t| **t == "low").count();
        assert!(
            (68..=72).contains(&lows),
            "low got {lows} of the first 170 slots"
        );
        let first_low = order.iter().position(|t| *t == "low").unwrap();
        assert!(first_low <= 2, "low waited for {first_low} grants");
        assert_eq!(a.load(), (0, 0));
        assert_eq!(a.active_tenants(), 0);
    }

    #[tokio::test]
    async fn equal_priorities_alternate_and_an_idle_tenant_saves_no_credit() {
        let a = Admission::new(1, 1_000, Duration::from_secs(30));
        // "early" is served alone for a while: no credit or debt carried.
        for _ in 0..50 {
            drop(a.acquire("early", Priority::Normal).await.unwrap());
        }
        let held = a.acquire("x", Priority::Normal).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = queue(&a, "early", Priority::Normal, 10, &order).await;
        tasks.extend(queue(&a, "late", Priority::Normal, 10, &order).await);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock();
        let lates = order[..10].iter().filter(|t| **t == "late").count();
        assert!((4..=6).contains(&lates), "{order:?}");
    }

    #[tokio::test]
    async fn no_tenant_holds_more_than_half_the_slots_while_another_waits() {
        let a = Admission::new(4, 100, Duration::from_secs(30));
        let mut mine = Vec::new();
        for _ in 0..4 {
            mine.push(a.acquire("big", Priority::Critical).await.unwrap());
        }
        let order = Arc::new(Mutex::new(Vec::new()));
        // "big" queues more, "small" (low) queues one after.
        let mut tasks = queue(&a, "big", Priority::Critical, 3, &order).await;
        tasks.extend(queue(&a, "small", Priority::Low, 1, &order).await);
        // "big" holds 4 of 4, past its cap of 2: the first slot freed goes
        // to "small" even though "big" queued first at a higher share.
        drop(mine.pop());
        while order.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(order.lock()[0], "small");
        drop(mine);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(a.load(), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_is_overloaded() {
        let a = Admission::new(1, 1, Duration::from_secs(10));
        let _held = a.acquire("t", Priority::Normal).await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire("u", Priority::Low).await.map(|_| ()) });
        while a.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            a.acquire("v", Priority::Critical).await,
            Err(Error::Overloaded { .. })
        ));
        waiter.abort();
    }

    #[tokio::test]
    async fn a_timed_out_waiter_does_not_leak_a_slot() {
        let a = Admission::new(1, 4, Duration::from_millis(20));
        let held = a.acquire("t", Priority::Normal).await.unwrap();
        assert!(a.acquire("u", Priority::High).await.is_err());
        drop(held);
        assert_eq!(a.load(), (0, 0));
        let _p = a.acquire("u", Priority::Low).await.unwrap();
        assert_eq!(a.load(), (1, 0));
        assert_eq!(a.active_tenants(), 1);
    }
}
