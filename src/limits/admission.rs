//! Node-wide admission by priority (Q4).
//!
//! The node runs at most `max_in_flight` operations at once. Below that,
//! admission is one atomic step. When saturated, requests wait in one
//! bounded FIFO queue per priority; a finishing operation hands its slot to
//! the oldest waiter of the highest priority (critical > high > normal >
//! low). A full queue, or a wait longer than `queue_timeout`, is refused
//! with `Overloaded`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::proto::Error;
use crate::tenant::Priority;

#[derive(Debug)]
struct State {
    in_flight: usize,
    /// Slots in use by priority rank.
    in_flight_by: [usize; 4],
    queues: [VecDeque<oneshot::Sender<()>>; 4],
    queued: usize,
}

/// A queued request. If it is dropped (timeout or cancellation) after a
/// slot was handed to it, the slot is released, never leaked.
struct Waiter {
    admission: Arc<Admission>,
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
            self.admission.release(self.rank);
        }
    }
}

/// The node's admission controller.
#[derive(Debug)]
pub struct Admission {
    max_in_flight: usize,
    max_queued: usize,
    queue_timeout: Duration,
    state: Mutex<State>,
}

/// A slot; handed to the next waiter (or freed) on drop.
#[derive(Debug)]
pub struct AdmissionPermit {
    admission: Arc<Admission>,
    rank: usize,
}

impl Drop for AdmissionPermit {
    fn drop(&mut self) {
        self.admission.release(self.rank);
    }
}

impl Admission {
    /// A controller with `max_in_flight` slots and room for `max_queued` waiters.
    pub fn new(max_in_flight: usize, max_queued: usize, queue_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            max_in_flight: max_in_flight.max(1),
            max_queued,
            queue_timeout,
            state: Mutex::new(State {
                in_flight: 0,
                in_flight_by: [0; 4],
                queues: Default::default(),
                queued: 0,
            }),
        })
    }

    /// Takes a slot, waiting by priority when the node is saturated.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> Result<AdmissionPermit, Error> {
        let rank = priority.rank();
        let rx = {
            let mut st = self.state.lock();
            if st.in_flight < self.max_in_flight && st.queued == 0 {
                st.in_flight += 1;
                st.in_flight_by[rank] += 1;
                return Ok(AdmissionPermit {
                    admission: Arc::clone(self),
                    rank,
                });
            }
            if st.queued >= self.max_queued {
                return Err(self.overloaded());
            }
            let (tx, rx) = oneshot::channel();
            st.queues[rank].push_back(tx);
            st.queued += 1;
            rx
        };
        let mut waiter = Waiter {
            admission: Arc::clone(self),
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
            return Ok(AdmissionPermit {
                admission: Arc::clone(self),
                rank,
            });
        }
        match waiter.take_late_slot() {
            true => Ok(AdmissionPermit {
                admission: Arc::clone(self),
                rank,
            }),
            false => Err(self.overloaded()),
        }
    }

    fn overloaded(&self) -> Error {
        Error::Overloaded {
            retry_after_ms: (self.queue_timeout.as_millis() as u64 / 4).max(1),
        }
    }

    /// Frees a slot held at priority rank `held`, or passes it to the
    /// oldest waiter of the highest priority.
    fn release(&self, held: usize) {
        let mut st = self.state.lock();
        st.in_flight_by[held] = st.in_flight_by[held].saturating_sub(1);
        for rank in (0..4).rev() {
            while let Some(tx) = st.queues[rank].pop_front() {
                st.queued -= 1;
                if tx.send(()).is_ok() {
                    st.in_flight_by[rank] += 1;
                    return; // the slot passes to the waiter
                }
            }
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
        (st.in_flight_by, st.queues.each_ref().map(|q| q.len()))
    }

    /// `max_in_flight`.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saturated_slots_go_to_the_highest_priority_first() {
        let a = Admission::new(1, 16, Duration::from_secs(10));
        let held = a.acquire(Priority::Normal).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [
            Priority::Low,
            Priority::Normal,
            Priority::Critical,
            Priority::High,
        ] {
            let (a2, order) = (a.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = a2.acquire(p).await.unwrap();
                order.lock().push(p);
            }));
            while a.load().1 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(a.load_by_priority(), ([0, 1, 0, 0], [1, 1, 1, 1]));
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock(),
            vec![
                Priority::Critical,
                Priority::High,
                Priority::Normal,
                Priority::Low
            ]
        );
        assert_eq!(a.load(), (0, 0));
        assert_eq!(a.load_by_priority(), ([0; 4], [0; 4]));
    }

    #[tokio::test]
    async fn a_full_queue_is_overloaded() {
        let a = Admission::new(1, 1, Duration::from_secs(10));
        let _held = a.acquire(Priority::Normal).await.unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire(Priority::Low).await.map(|_| ()) });
        while a.load().1 < 1 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            a.acquire(Priority::Critical).await,
            Err(Error::Overloaded { .. })
        ));
        waiter.abort();
    }

    #[tokio::test]
    async fn a_timed_out_waiter_does_not_leak_a_slot() {
        let a = Admission::new(1, 4, Duration::from_millis(20));
        let held = a.acquire(Priority::Normal).await.unwrap();
        assert!(a.acquire(Priority::High).await.is_err());
        drop(held);
        assert_eq!(a.load(), (0, 0));
        let _p = a.acquire(Priority::Low).await.unwrap();
        assert_eq!(a.load(), (1, 0));
    }
}
