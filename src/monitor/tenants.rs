//! Which tenants get their own `tenant` label: at most `cap` of them,
//! the most active on this node; every other tenant's requests are
//! counted in one shared block exported as `tenant="_other"`.
//!
//! **Request path.** A tenant's slot is found in one of [`SHARDS`]
//! read-locked maps (by hash of its id); the slot says which labelled
//! block, if any, the tenant owns. The block's owner is checked under
//! that block's own read lock (contended only by the tenant's own
//! requests), then its counters are incremented. A tenant seen for the
//! first time takes a free block if one is left (so until `cap` tenants
//! are seen, each is labelled from its first request).
//!
//! **Relabelling** ([`TenantLabels::relabel`], every
//! `metrics.relabel_interval_ms`): each slot's score becomes
//! `score/2 + requests since the last pass` (an exponential average with
//! a half-life of one pass). Unlabelled tenants, most active first, take
//! free blocks; when none is free, one takes the block of the least
//! active labelled tenant if its score is more than twice that tenant's
//! (hysteresis, so two tenants of similar activity do not swap labels
//! every pass). A block handed over is reset: the new owner's series
//! start from zero, the old owner's series stop being exported (its
//! requests since the last scrape are lost from the export, and from
//! then on they count in `_other`). Unlabelled slots idle for
//! [`IDLE_PASSES`] passes are forgotten.
//!
//! **Bounds.** Exported tenant labels: at most `cap` plus `_other`.
//! Slots: at most [`MAX_TRACKED`]; beyond that a new tenant counts in
//! `_other` without a slot until idle ones are forgotten.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::block::Block;
use super::label::Operation;

/// Maps of slots, by hash of the tenant id.
pub const SHARDS: usize = 32;
/// Most tenants with a slot at once.
pub const MAX_TRACKED: usize = 65_536;
/// Passes without a request before an unlabelled slot is forgotten.
pub const IDLE_PASSES: u32 = 8;

const NONE: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    /// Index of the owned block, or `NONE`.
    block: AtomicU32,
    /// Requests since the last pass.
    recent: AtomicU64,
    /// `score/2 + recent` at each pass.
    score: AtomicU64,
    /// Passes in a row without a request.
    idle: AtomicU32,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            block: AtomicU32::new(NONE),
            recent: AtomicU64::new(0),
            score: AtomicU64::new(0),
            idle: AtomicU32::new(0),
        }
    }
}

#[derive(Debug)]
struct Owned {
    owner: RwLock<Option<Arc<str>>>,
    block: Block,
}

type SlotMap = HashMap<Arc<str>, Arc<Slot>>;

/// The label cap (see the module doc).
#[derive(Debug)]
pub struct TenantLabels {
    max_tracked: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[RwLock<SlotMap>]>,
    tracked: AtomicUsize,
    owned: Box<[Owned]>,
    other: Block,
    free: Mutex<Vec<u32>>,
    relabelling: Mutex<()>,
}

impl TenantLabels {
    /// At most `cap` labelled tenants (and [`MAX_TRACKED`] slots).
    pub fn new(cap: usize) -> TenantLabels {
        Self::with_tracking(cap, MAX_TRACKED)
    }

    /// At most `cap` labelled tenants and `max_tracked` slots.
    pub fn with_tracking(cap: usize, max_tracked: usize) -> TenantLabels {
        let cap = cap.min(NONE as usize - 1);
        TenantLabels {
            max_tracked,
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            tracked: AtomicUsize::new(0),
            owned: (0..cap)
                .map(|_| Owned {
                    owner: RwLock::new(None),
                    block: Block::new(),
                })
                .collect(),
            other: Block::new(),
            // Popped from the end: blocks are handed out from index 0.
            free: Mutex::new((0..cap as u32).rev().collect()),
            relabelling: Mutex::new(()),
        }
    }

    fn shard(&self, tenant: &str) -> &RwLock<SlotMap> {
        let h = self.hasher.hash_one(tenant) as usize;
        &self.shards[h % SHARDS]
    }

    /// Counts one finished request of `tenant`.
    pub fn record(&self, tenant: &str, op: Operation, outcome: usize, took: Duration) {
        if let Some(i) = self.touch(tenant) {
            let o = &self.owned[i];
            let owner = o.owner.read();
            if owner.as_deref() == Some(tenant) {
                o.block.record(op, outcome, took);
                return;
            }
        }
        self.other.record(op, outcome, took);
    }

    /// Notes a request of `tenant`; the block it owns, if any.
    fn touch(&self, tenant: &str) -> Option<usize> {
        let shard = self.shard(tenant);
        if let Some(s) = shard.read().get(tenant) {
            s.recent.fetch_add(1, Relaxed);
            return index(s.block.load(Acquire));
        }
        if self.tracked.load(Relaxed) >= self.max_tracked {
            return None;
        }
        let slot = {
            let mut map = shard.write();
            map.entry(Arc::from(tenant))
                .or_insert_with(|| {
                    self.tracked.fetch_add(1, Relaxed);
                    Arc::new(Slot::new())
                })
                .clone()
        };
        slot.recent.fetch_add(1, Relaxed);
        let free = self.free.lock().pop();
        if let Some(i) = free {
            if !self.claim(i, tenant, &slot) {
                self.free.lock().push(i);
            }
        }
        index(slot.block.load(Acquire))
    }

    /// Hands free block `i` to `tenant`; false if its slot already owns
    /// one (the caller keeps `i`).
    fn claim(&self, i: u32, tenant: &str, slot: &Slot) -> bool {
        let o = &self.owned[i as usize];
        {
            let mut owner = o.owner.write();
            o.block.reset();
            *owner = Some(Arc::from(tenant));
        }
        if slot
            .block
            .compare_exchange(NONE, i, AcqRel, Acquire)
            .is_err()
        {
            *o.owner.write() = None;
            return false;
        }
        true
    }

    /// One relabelling pass (see the module doc).
    pub fn relabel(&self) {
        let _one = self.relabelling.lock();
        let mut slots: Vec<(Arc<str>, Arc<Slot>, u64)> = Vec::new();
        let mut forget = false;
        for shard in self.shards.iter() {
            for (t, s) in shard.read().iter() {
                let recent = s.recent.swap(0, Relaxed);
                let score = s.score.load(Relaxed) / 2 + recent;
                s.score.store(score, Relaxed);
                let idle = if recent == 0 {
                    s.idle.fetch_add(1, Relaxed).saturating_add(1)
                } else {
                    s.idle.store(0, Relaxed);
                    0
                };
                forget |= idle >= IDLE_PASSES;
                slots.push((t.clone(), s.clone(), score));
            }
        }
        if forget {
            for shard in self.shards.iter() {
                let mut map = shard.write();
                let before = map.len();
                map.retain(|_, s| {
                    s.block.load(Acquire) != NONE || s.idle.load(Relaxed) < IDLE_PASSES
                });
                self.tracked.fetch_sub(before - map.len(), Relaxed);
            }
        }
        // Least active labelled first; most active unlabelled first.
        let mut labelled: Vec<&(Arc<str>, Arc<Slot>, u64)> = slots
            .iter()
            .filter(|(_, s, _)| s.block.load(Acquire) != NONE)
            .collect();
        labelled.sort_by_key(|(_, _, score)| *score);
        let mut outsiders: Vec<&(Arc<str>, Arc<Slot>, u64)> = slots
            .iter()
            .filter(|(_, s, score)| *score > 0 && s.block.load(Acquire) == NONE)
            .collect();
        outsiders.sort_by_key(|(_, _, score)| std::cmp::Reverse(*score));
        let mut lowest = labelled.into_iter();
        for (tenant, slot, score) in outsiders {
            let free = self.free.lock().pop();
            let i = match free {
                Some(i) => i,
                None => {
                    let Some((_, victim, vscore)) = lowest.next() else {
                        break;
                    };
                    if vscore.saturating_mul(2) >= *score {
                        break; // sorted: no later outsider beats it either
                    }
                    let i = victim.block.swap(NONE, AcqRel);
                    if i == NONE {
                        continue;
                    }
                    *self.owned[i as usize].owner.write() = None;
                    i
                }
            };
            if !self.claim(i, tenant, slot) {
                self.free.lock().push(i);
            }
        }
    }

    /// The label `tenant`'s gauges go under: its id if it owns a block,
    /// else `None` (`_other`).
    pub fn label_of(&self, tenant: &str) -> Option<Arc<str>> {
        let i = index(self.shard(tenant).read().get(tenant)?.block.load(Acquire))?;
        let owner = self.owned[i].owner.read();
        owner.as_ref().filter(|o| &***o == tenant).cloned()
    }

    /// Calls `f` with each labelled tenant and its block (under the
    /// block's read lock), then with `None` and the `_other` block.
    pub(crate) fn each(&self, mut f: impl FnMut(Option<&str>, &Block)) {
        for o in self.owned.iter() {
            let owner = o.owner.read();
            if let Some(t) = owner.as_deref() {
                f(Some(t), &o.block);
            }
        }
        f(None, &self.other);
    }

    /// Tenants with their own label now.
    pub fn labelled(&self) -> usize {
        self.owned
            .iter()
            .filter(|o| o.owner.read().is_some())
            .count()
    }

    /// Tenants with a slot now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Relaxed)
    }
}

fn index(i: u32) -> Option<usize> {
    (i != NONE).then_some(i as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(1);

    fn total(l: &TenantLabels) -> (u64, usize) {
        let (mut n, mut labels) = (0, 0);
        l.each(|_, b| {
            labels += 1;
            n += b.requests(Operation::Get, 0);
        });
        (n, labels)
    }

    #[test]
    fn the_first_tenants_up_to_the_cap_are_labelled_and_the_rest_summed() {
        let l = TenantLabels::new(3);
        for (t, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
            for _ in 0..n {
                l.record(t, Operation::Get, 0, D);
            }
        }
        let mut seen = Vec::new();
        l.each(|t, b| seen.push((t.map(str::to_string), b.requests(Operation::Get, 0))));
        assert_eq!(
            seen,
            vec![
                (Some("a".into()), 1),
                (Some("b".into()), 2),
                (Some("c".into()), 3),
                (None, 9)
            ]
        );
        assert_eq!(l.label_of("c").as_deref(), Some("c"));
        assert_eq!(l.label_of("d"), None);
    }

    #[test]
    fn relabelling_gives_a_label_to_a_tenant_more_than_twice_as_active() {
        let l = TenantLabels::new(2);
        for t in ["a", "b"] {
            for _ in 0..10 {
                l.record(t, Operation::Get, 0, D);
            }
        }
        for _ in 0..20 {
            l.record("c", Operation::Get, 0, D); // not more than twice: stays out
        }
        for _ in 0..21 {
            l.record("d", Operation::Get, 0, D);
        }
        l.relabel();
        assert_eq!(l.labelled(), 2);
        assert_eq!(l.label_of("d").as_deref(), Some("d"));
        assert!(l.label_of("a").is_some() ^ l.label_of("b").is_some());
        assert_eq!(l.label_of("c"), None);
        // d's block starts from zero; its next request counts there.
        l.record("d", Operation::Get, 0, D);
        let mut d = 0;
        l.each(|t, b| {
            if t == Some("d") {
                d = b.requests(Operation::Get, 0);
            }
        });
        assert_eq!(d, 1);
    }

    /// The cap with 2,000 tenants, driven directly (no node): labels stay
    /// at the cap plus `_other`, no request is lost while nobody is
    /// displaced, and the most active tenants end up labelled.
    #[test]
    fn two_thousand_tenants_export_at_most_the_cap_plus_other() {
        let l = TenantLabels::new(100);
        let mut made = 0;
        for i in 0..2000 {
            for _ in 0..(1 + i % 3) {
                l.record(&format!("t{i}"), Operation::Get, 0, D);
                made += 1;
            }
        }
        assert_eq!(total(&l), (made, 101));
        assert_eq!(l.tracked(), 2000);
        // Tenants 1900.. become far busier.
        for _ in 0..3 {
            for i in 1900..2000 {
                for _ in 0..50 {
                    l.record(&format!("t{i}"), Operation::Get, 0, D);
                }
            }
            l.relabel();
        }
        assert_eq!(total(&l).1, 101);
        for i in 1900..2000 {
            assert!(l.label_of(&format!("t{i}")).is_some(), "t{i}");
        }
        // Idle unlabelled tenants are forgotten.
        for _ in 0..IDLE_PASSES {
            l.relabel();
        }
        assert_eq!(l.tracked(), 100);
    }

    #[test]
    fn beyond_max_tracked_a_new_tenant_counts_in_other() {
        let l = TenantLabels::with_tracking(1, 2);
        for t in ["a", "b", "c"] {
            l.record(t, Operation::Get, 0, D);
        }
        assert_eq!(l.tracked(), 2);
        assert_eq!(total(&l), (3, 2));
    }
}
