//! `Backlog`: vector changes written to RocksDB but not yet to FAISS.
//!
//! An apply writes a command's objects, vectors included, to RocksDB in
//! one batch and queues the command's FAISS changes here; the command is
//! acknowledged then. A blocking-pool job ([`ShardData`]'s indexer) takes
//! everything queued and applies it in order, consecutive adds to one
//! collection in one FAISS call: an HNSW add of hundreds of vectors runs
//! on every core, where one add per vector ran on one, and it overlaps
//! the next entries' raft appends and RocksDB writes instead of holding
//! up the apply (and so every later write of the shard).
//!
//! Nothing is lost by this: RocksDB is the truth and the indexes are
//! rebuilt from it at open. And no reader sees less than before: every
//! reader of an index first calls [`Backlog::catch_up`], which applies
//! whatever is still queued (or waits for the job applying it), so a
//! search sees every write acknowledged before it began.
//!
//! Bounded: past [`MAX_BACKLOG_BYTES`] of queued vectors an apply catches
//! up itself before it returns, so a writer faster than FAISS is slowed to
//! FAISS's pace rather than queueing without end.
//!
//! [`ShardData`]: super::ShardData

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::proto::Error;
use crate::storage::VectorChange;

/// Most bytes of vectors queued before an apply indexes them itself.
pub const MAX_BACKLOG_BYTES: usize = 64 << 20;

/// What the caller of [`Backlog::push`] must do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Nothing: an indexing job is already scheduled.
    Queued,
    /// Schedule an indexing job (none is).
    Schedule,
    /// The backlog is full: catch up before returning.
    Full,
}

#[derive(Default)]
struct Queue {
    changes: Vec<VectorChange>,
    /// Bytes of vectors in `changes`.
    bytes: usize,
    /// An indexing job is scheduled or running.
    scheduled: bool,
}

/// The queue, and the turn that keeps its changes in order.
#[derive(Default)]
pub(super) struct Backlog {
    queue: Mutex<Queue>,
    /// Held while taking changes from the queue and applying them, so two
    /// catch-ups never apply their changes out of order.
    turn: Mutex<()>,
    /// Changes queued or being applied; 0 lets a reader skip both locks.
    unindexed: AtomicUsize,
}

fn bytes_of(changes: &[VectorChange]) -> usize {
    changes
        .iter()
        .map(|c| match c {
            VectorChange::Add { vector, .. } => vector.len() * 4,
            VectorChange::Remove { .. } => 0,
        })
        .sum()
}

impl Backlog {
    /// Queues `changes` (in order, after everything queued before).
    pub(super) fn push(&self, changes: Vec<VectorChange>) -> Pushed {
        if changes.is_empty() {
            return Pushed::Queued;
        }
        let mut q = self.queue.lock();
        q.bytes += bytes_of(&changes);
        // Release pairs with the Acquire in `catch_up`: a reader that sees
        // 0 saw every change applied, one that sees more takes the turn.
        self.unindexed.fetch_add(changes.len(), Ordering::Release);
        q.changes.extend(changes);
        if q.bytes > MAX_BACKLOG_BYTES {
            Pushed::Full
        } else if q.scheduled {
            Pushed::Queued
        } else {
            q.scheduled = true;
            Pushed::Schedule
        }
    }

    /// Applies every queued change with `apply` (all of them, in queue
    /// order), or waits for the catch-up applying them. On return every
    /// change pushed before the call is in the indexes, unless `apply`
    /// failed: its error is returned and those changes are dropped.
    pub(super) fn catch_up(
        &self,
        apply: impl FnOnce(Vec<VectorChange>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.unindexed.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let _turn = self.turn.lock();
        let changes = {
            let mut q = self.queue.lock();
            q.bytes = 0;
            std::mem::take(&mut q.changes)
        };
        if changes.is_empty() {
            return Ok(());
        }
        let n = changes.len();
        let r = apply(changes);
        self.unindexed.fetch_sub(n, Ordering::Release);
        r
    }

    /// The indexing job's last step: true (and no job is scheduled any
    /// more) when nothing is queued; false when more arrived meanwhile and
    /// the job must catch up again.
    pub(super) fn finish(&self) -> bool {
        let mut q = self.queue.lock();
        if q.changes.is_empty() {
            q.scheduled = false;
            true
        } else {
            false
        }
    }

    /// Drops everything queued (a snapshot install replaces the indexes
    /// the changes were meant for), after any catch-up in progress.
    pub(super) fn clear(&self) {
        let _turn = self.turn.lock();
        let mut q = self.queue.lock();
        self.unindexed.fetch_sub(q.changes.len(), Ordering::Release);
        q.changes.clear();
        q.bytes = 0;
    }

    /// Changes queued or being applied.
    pub(super) fn len(&self) -> usize {
        self.unindexed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(vid: u64, dim: usize) -> VectorChange {
        VectorChange::Add {
            collection: "c".into(),
            vid,
            id: format!("o{vid}"),
            vector: vec![0.0; dim],
        }
    }

    fn vids(changes: &[VectorChange]) -> Vec<u64> {
        changes
            .iter()
            .map(|c| match c {
                VectorChange::Add { vid, .. } | VectorChange::Remove { vid, .. } => *vid,
            })
            .collect()
    }

    #[test]
    fn the_first_push_schedules_one_job_and_finish_ends_it_only_when_empty() {
        let b = Backlog::default();
        assert_eq!(b.push(vec![]), Pushed::Queued);
        assert_eq!(b.push(vec![add(1, 4)]), Pushed::Schedule);
        assert_eq!(b.push(vec![add(2, 4)]), Pushed::Queued);
        assert_eq!(b.len(), 2);
        assert!(!b.finish(), "two changes are still queued");
        let mut seen = Vec::new();
        b.catch_up(|c| {
            seen.extend(vids(&c));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(b.len(), 0);
        assert!(b.finish());
        assert_eq!(b.push(vec![add(3, 4)]), Pushed::Schedule, "the job ended");
    }

    #[test]
    fn a_full_backlog_asks_the_writer_to_catch_up() {
        let b = Backlog::default();
        let dim = MAX_BACKLOG_BYTES / 4 / 2;
        assert_eq!(b.push(vec![add(1, dim)]), Pushed::Schedule);
        assert_eq!(b.push(vec![add(2, dim + 1)]), Pushed::Full);
        b.catch_up(|_| Ok(())).unwrap();
        assert_eq!(
            b.push(vec![add(3, dim)]),
            Pushed::Queued,
            "job still scheduled"
        );
    }

    #[test]
    fn catch_ups_racing_apply_every_change_once_and_in_order() {
        let b = std::sync::Arc::new(Backlog::default());
        let applied = std::sync::Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            let pusher = {
                let b = b.clone();
                s.spawn(move || {
                    for i in 0..2000 {
                        b.push(vec![add(i, 1)]);
                    }
                })
            };
            for _ in 0..3 {
                let (b, applied) = (b.clone(), applied.clone());
                s.spawn(move || {
                    for _ in 0..500 {
                        b.catch_up(|c| {
                            applied.lock().extend(vids(&c));
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
            pusher.join().unwrap();
        });
        b.catch_up(|c| {
            applied.lock().extend(vids(&c));
            Ok(())
        })
        .unwrap();
        assert_eq!(*applied.lock(), (0..2000).collect::<Vec<_>>());
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn clear_drops_the_queue_and_a_failed_apply_reports_its_error() {
        let b = Backlog::default();
        b.push(vec![add(1, 2), add(2, 2)]);
        b.clear();
        assert_eq!(b.len(), 0);
        b.catch_up(|_| panic!("nothing is queued")).unwrap();
        b.push(vec![add(3, 2)]);
        let e = b.catch_up(|_| Err(Error::storage("faiss: out of memory")));
        assert!(matches!(e, Err(Error::Storage { .. })), "{e:?}");
        assert_eq!(b.len(), 0, "the failed changes are not retried");
    }
}
