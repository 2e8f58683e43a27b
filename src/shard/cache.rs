//! `ReadCache`: one tenant's cache of read results on this node (get,
//! query, vector search), and `CacheBudget`, the node-wide memory cap
//! every tenant's cache shares (issue 11 §6, spec C1).
//!
//! Exact semantics:
//!
//! - **Key**: the read as sent (the encoded get id, query or search with
//!   its `with_objects` flag) and the tenant's `complexity_limit`, so a
//!   read a lower limit would refuse is never answered from the cache.
//!   Traversals and scans are not cached. Errors are never cached.
//! - **Stamp**: an entry carries the [`ReadStamp`] taken *before* its data
//!   was read. A lookup under stamp `s` returns it only if its stamp is
//!   `s`. Every applied command that can change a read bumps the
//!   generation after its changes are visible, and a snapshot install or
//!   a restart brings a new store instance, so a hit is never older than
//!   the replica's current state; a result read while a write was being
//!   applied carries the pre-write stamp and is never returned after it.
//! - **Per tenant** ([`CacheLimits`]): at most `max_entries` entries
//!   (moka: TinyLFU admission, LRU eviction), each kept `ttl` after it was
//!   stored; `max_entries = 0` turns the tenant's cache off. Once the
//!   tenant's cache is full, a result is stored only when its key missed
//!   once lately (a doorkeeper of [`DOORKEEPER_SLOTS`] key hashes, as in
//!   TinyLFU): a stream of reads that never repeat (most vector
//!   searches) then costs no insert and no eviction, which took a sixth
//!   of the stack's search time in `bench engine`, while a read asked
//!   twice is cached from its second miss. Counted as `skipped`.
//! - **Node-wide**: every entry weighs its approximate bytes (key and
//!   result); a result is not stored when it would take the node's total
//!   past `cache.max_bytes`, or alone weigh more than a sixteenth of it
//!   (counted as `skipped`). Bytes are given back when moka evicts,
//!   expires, replaces or invalidates an entry, and when a tenant's cache
//!   is dropped or reconfigured. `cache.max_bytes = 0` turns caching off.
//! - **Isolation**: one `ReadCache` per loaded tenant, owned by it; no map
//!   is keyed by tenant, so a lookup can only reach its own tenant's
//!   entries, and there are as many caches as loaded tenants.
//! - **Counting**: the cache sits after the tenant's limiter and node
//!   admission, so a hit is a request like any other (rates, daily and
//!   monthly counts, concurrency). Hits and misses are counted per tenant
//!   on the node that served the read, since the tenant was loaded here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::proto::{CacheUsage, Object, Query, SearchHit, VectorSearch};
use crate::tenant::CacheLimits;

use super::actor::{ReadOp, ReadResult};
use super::data::ReadStamp;

/// The node-wide memory cap of every tenant's read cache.
#[derive(Debug)]
pub struct CacheBudget {
    max_bytes: u64,
    used: AtomicU64,
}

impl CacheBudget {
    /// A budget of `max_bytes` (0: caching off).
    pub fn new(max_bytes: u64) -> Arc<CacheBudget> {
        Arc::new(CacheBudget {
            max_bytes,
            used: AtomicU64::new(0),
        })
    }

    /// The cap, bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes held by cached entries now, over every tenant.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit under the cap.
    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max_bytes)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// A cached result and the state it was read from.
struct Entry {
    stamp: ReadStamp,
    result: ReadResult,
    bytes: u64,
}

/// One configuration's entries; closing or dropping it gives its bytes
/// back. The node's budget always holds the sum of every shelf's `bytes`:
/// each change moves both by the same amount, and `bytes` never goes
/// below zero (an eviction racing a close gives back nothing twice).
struct Shelf {
    limits: CacheLimits,
    /// Built on the first insert: a tenant that reads nothing (or sleeps)
    /// holds no moka instance.
    entries: std::sync::OnceLock<moka::sync::Cache<Vec<u8>, Arc<Entry>>>,
    /// Hashes of keys that missed while the cache was full (built when it
    /// first is): slot `h % DOORKEEPER_SLOTS` holds the last such `h`.
    seen: std::sync::OnceLock<Box<[AtomicU64]>>,
    bytes: Arc<AtomicU64>,
    budget: Arc<CacheBudget>,
}

/// Key hashes a full cache remembers to admit a repeated read.
pub const DOORKEEPER_SLOTS: usize = 256;

impl Shelf {
    fn new(limits: CacheLimits, budget: Arc<CacheBudget>) -> Shelf {
        Shelf {
            limits,
            entries: std::sync::OnceLock::new(),
            seen: std::sync::OnceLock::new(),
            bytes: Arc::new(AtomicU64::new(0)),
            budget,
        }
    }

    /// Whether `key` missed before while the cache was full (and
    /// remembers it for next time).
    fn seen_before(&self, key: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let h = h.finish();
        let seen = self
            .seen
            .get_or_init(|| (0..DOORKEEPER_SLOTS).map(|_| AtomicU64::new(0)).collect());
        seen[(h % DOORKEEPER_SLOTS as u64) as usize].swap(h, Ordering::Relaxed) == h
    }

    /// Whether the tenant's entries are at their count limit.
    fn full(&self) -> bool {
        self.built()
            .is_some_and(|e| e.entry_count() >= self.limits.max_entries)
    }

    /// The entries, if any was ever inserted.
    fn built(&self) -> Option<&moka::sync::Cache<Vec<u8>, Arc<Entry>>> {
        self.entries.get()
    }

    /// The entries, built now if need be.
    fn entries(&self) -> &moka::sync::Cache<Vec<u8>, Arc<Entry>> {
        self.entries.get_or_init(|| {
            let (b, bud) = (self.bytes.clone(), self.budget.clone());
            moka::sync::Cache::builder()
                .max_capacity(self.limits.max_entries)
                .time_to_live(self.limits.ttl.0)
                .eviction_listener(move |_k, e: Arc<Entry>, _cause| {
                    let n = e.bytes;
                    if b.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(n))
                        .is_ok()
                    {
                        bud.give_back(n);
                    }
                })
                .build()
        })
    }
}

impl Shelf {
    /// Gives every byte back (the shelf is retired; a reader still
    /// holding it may insert, which the drop gives back).
    fn close(&self) {
        self.budget.give_back(self.bytes.swap(0, Ordering::AcqRel));
    }
}

impl Drop for Shelf {
    fn drop(&mut self) {
        self.close();
    }
}

/// One tenant's read cache on this node.
pub struct ReadCache {
    budget: Arc<CacheBudget>,
    /// None: caching off for this tenant.
    shelf: RwLock<Option<Arc<Shelf>>>,
    /// Cleared for good ([`ReadCache::clear`]): `configure` no longer
    /// turns it on.
    closed: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    skipped: AtomicU64,
    /// The fraction of the node's budget this tenant's entries may hold
    /// (its C2 share; `f64` bits).
    share: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ReadCache {
    /// A tenant's cache with `limits`, within the node's `budget`.
    pub fn new(limits: CacheLimits, budget: Arc<CacheBudget>) -> Arc<ReadCache> {
        let c = Arc::new(ReadCache {
            budget,
            shelf: RwLock::new(None),
            closed: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            share: AtomicU64::new(1.0f64.to_bits()),
        });
        c.configure(limits);
        c
    }

    /// Takes new limits (a tier or settings change). Different limits
    /// start an empty cache; the old entries' bytes are given back. A
    /// cache cleared for good stays off.
    pub fn configure(&self, limits: CacheLimits) {
        let on = self.budget.max_bytes > 0 && limits.max_entries > 0 && !limits.ttl.0.is_zero();
        let mut shelf = self.shelf.write();
        // Read under the lock `clear` sets it under.
        let on = on && !self.closed.load(Ordering::Acquire);
        let old = match (&*shelf, on) {
            (Some(s), true) if s.limits == limits => return,
            (_, true) => shelf.replace(Arc::new(Shelf::new(limits, self.budget.clone()))),
            (_, false) => shelf.take(),
        };
        if let Some(old) = old {
            old.close();
        }
    }

    /// Caps this tenant's entries at `fraction` of the node's budget (its
    /// resource share, C2; 1.0 until set). Entries already held stay
    /// until they expire or are evicted.
    pub fn set_share(&self, fraction: f64) {
        self.share
            .store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::Release);
    }

    /// The most bytes this tenant's entries may hold.
    pub fn max_bytes(&self) -> u64 {
        let share = f64::from_bits(self.share.load(Ordering::Acquire));
        (self.budget.max_bytes as f64 * share) as u64
    }

    /// Drops every entry (their bytes are given back at once) and goes on
    /// caching: a hibernated tenant's cache.
    pub fn empty(&self) {
        let mut shelf = self.shelf.write();
        let fresh = shelf
            .as_ref()
            .map(|s| Arc::new(Shelf::new(s.limits, self.budget.clone())));
        if let Some(old) = fresh.and_then(|f| shelf.replace(f)) {
            old.close();
        }
    }

    /// Drops every entry and turns the cache off for good (the tenant is
    /// unloaded from this node); their bytes are given back at once.
    pub fn clear(&self) {
        let mut shelf = self.shelf.write();
        self.closed.store(true, Ordering::Release);
        if let Some(s) = shelf.take() {
            s.close();
        }
    }

    fn shelf(&self) -> Option<Arc<Shelf>> {
        self.shelf.read().clone()
    }

    /// Whether reads are cached for this tenant.
    pub fn enabled(&self) -> bool {
        self.shelf.read().is_some()
    }

    /// The cached result of the read `key` if it was read from the state
    /// `stamp` names; counts a hit or a miss.
    pub fn get(&self, key: &[u8], stamp: ReadStamp) -> Option<ReadResult> {
        let shelf = self.shelf()?;
        let Some(entries) = shelf.built() else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match entries.get(key) {
            Some(e) if e.stamp == stamp => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(e.result.clone())
            }
            Some(_) => {
                // Read from an older state: it can never be used again.
                entries.invalidate(key);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Stores the result of the read `key`, read after taking `stamp`, if
    /// the node's budget has room for it.
    pub fn insert(&self, key: Vec<u8>, stamp: ReadStamp, result: &ReadResult) {
        let Some(shelf) = self.shelf() else {
            return;
        };
        let bytes = ENTRY_OVERHEAD + key.len() as u64 + result_bytes(result);
        let over_share = shelf.bytes.load(Ordering::Acquire) + bytes > self.max_bytes();
        if bytes > self.budget.max_bytes / 16
            || (shelf.full() && !shelf.seen_before(&key))
            || over_share
            || !self.budget.try_take(bytes)
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        shelf.bytes.fetch_add(bytes, Ordering::AcqRel);
        let entry = Entry {
            stamp,
            result: result.clone(),
            bytes,
        };
        shelf.entries().insert(key, Arc::new(entry));
    }

    /// Runs moka's pending work (expiry, eviction), so that expired
    /// entries give their bytes back even while the tenant is idle.
    pub fn run_pending_tasks(&self) {
        if let Some(e) = self.shelf().as_deref().and_then(Shelf::built) {
            e.run_pending_tasks();
        }
    }

    /// Counters and size (entries as moka last counted them).
    pub fn stats(&self) -> CacheUsage {
        let (entries, bytes) = self.shelf().map_or((0, 0), |s| {
            (
                s.built().map_or(0, |e| e.entry_count()),
                s.bytes.load(Ordering::Acquire),
            )
        });
        CacheUsage {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

/// What a read's key is made of (encoded, it is the cache key).
#[derive(Serialize)]
enum KeyOf<'a> {
    Get(&'a str),
    Query(&'a Query),
    Search(&'a VectorSearch, bool),
}

/// The cache key of a read under a complexity limit; `None` for reads
/// that are not cached (traversals, scans).
pub fn key_of(op: &ReadOp, complexity_limit: u64) -> Option<Vec<u8>> {
    let k = match op {
        ReadOp::Get(id) => KeyOf::Get(id),
        ReadOp::Query(q) => KeyOf::Query(q),
        ReadOp::Search(s, with_objects) => KeyOf::Search(s, *with_objects),
        // A batch of searches is most often of queries never seen again
        // (bulk users), and one key per batch would rarely hit.
        ReadOp::Traverse(_) | ReadOp::Scan(..) | ReadOp::SearchBatch(..) => return None,
    };
    crate::codec::encode(&(k, complexity_limit)).ok()
}

/// Bytes an entry costs beyond its key and result (moka's node, the
/// entry's `Arc`, counters).
const ENTRY_OVERHEAD: u64 = 160;

/// About how many bytes a result holds in memory.
pub fn result_bytes(r: &ReadResult) -> u64 {
    match r {
        ReadResult::Object(o) => o.as_ref().map_or(8, object_bytes),
        ReadResult::Objects(v) => 24 + v.iter().map(object_bytes).sum::<u64>(),
        ReadResult::Hits(h) => hits_bytes(h),
        ReadResult::HitLists(lists) => 24 + lists.iter().map(|h| hits_bytes(h)).sum::<u64>(),
        ReadResult::Nodes(n) => {
            24 + n
                .iter()
                .map(|n| 80 + (n.id.len() + n.via.len() + n.label.len()) as u64)
                .sum::<u64>()
        }
    }
}

fn hits_bytes(h: &[SearchHit]) -> u64 {
    24 + h
        .iter()
        .map(|h| 48 + h.id.len() as u64 + h.object.as_ref().map_or(0, object_bytes))
        .sum::<u64>()
}

fn object_bytes(o: &Object) -> u64 {
    let props: u64 = o
        .properties
        .0
        .iter()
        .map(|(k, v)| 32 + k.len() as u64 + json_bytes(v))
        .sum();
    let vector = o.vector.as_ref().map_or(0, |v| 24 + 4 * v.len() as u64);
    120 + (o.id.len() + o.collection.len()) as u64 + props + vector
}

fn json_bytes(v: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 32,
        Value::String(s) => 32 + s.len() as u64,
        Value::Array(a) => 32 + a.iter().map(json_bytes).sum::<u64>(),
        Value::Object(m) => {
            48 + m
                .iter()
                .map(|(k, v)| 32 + k.len() as u64 + json_bytes(v))
                .sum::<u64>()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::tenant::Window;

    fn limits(max_entries: u64, ttl_ms: u64) -> CacheLimits {
        CacheLimits {
            ttl: Window(Duration::from_millis(ttl_ms)),
            max_entries,
        }
    }

    fn stamp(generation: u64) -> ReadStamp {
        ReadStamp {
            store: 1,
            generation,
        }
    }

    fn object(id: &str) -> ReadResult {
        ReadResult::Object(Some(Object {
            id: id.into(),
            collection: "c".into(),
            properties: Default::default(),
            created_at: 1,
            updated_at: 1,
            vector: None,
        }))
    }

    fn get(id: &str) -> Vec<u8> {
        key_of(&ReadOp::Get(id.into()), 10).unwrap()
    }

    #[test]
    fn an_entry_is_returned_only_under_the_stamp_it_was_read_at() {
        let c = ReadCache::new(limits(100, 60_000), CacheBudget::new(1 << 20));
        c.insert(get("a"), stamp(3), &object("a"));
        assert!(c.get(&get("a"), stamp(3)).is_some());
        // A write was applied since (generation 4): the entry is dropped.
        assert!(c.get(&get("a"), stamp(4)).is_none());
        assert!(c.get(&get("a"), stamp(3)).is_none());
        // Another store instance (a snapshot install), same generation.
        c.insert(get("a"), stamp(4), &object("a"));
        let other = ReadStamp {
            store: 2,
            generation: 4,
        };
        assert!(c.get(&get("a"), other).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (1, 3));
    }

    #[test]
    fn the_key_holds_the_complexity_limit_and_the_search_flag() {
        let q = Query {
            collection: "c".into(),
            filter: None,
            limit: 5,
        };
        let a = key_of(&ReadOp::Query(q.clone()), 10);
        assert_ne!(a, key_of(&ReadOp::Query(q), 11));
        let s = VectorSearch {
            collection: "c".into(),
            vector: vec![1.0],
            k: 1,
            filter: None,
        };
        assert_ne!(
            key_of(&ReadOp::Search(s.clone(), true), 10),
            key_of(&ReadOp::Search(s, false), 10)
        );
        assert_eq!(key_of(&ReadOp::Scan("c".into(), None, 1), 10), None);
    }

    #[test]
    fn a_full_cache_stores_a_read_only_from_its_second_miss() {
        let c = ReadCache::new(limits(4, 60_000), CacheBudget::new(1 << 20));
        for id in ["a", "b", "c", "d"] {
            c.insert(get(id), stamp(0), &object(id));
        }
        c.run_pending_tasks();
        // Full: a read never seen is not stored (no insert, no eviction).
        c.insert(get("e"), stamp(0), &object("e"));
        c.run_pending_tasks();
        assert!(c.get(&get("e"), stamp(0)).is_none());
        assert_eq!(c.stats().skipped, 1);
        // Its second miss is.
        c.insert(get("e"), stamp(0), &object("e"));
        c.run_pending_tasks();
        assert!(c.get(&get("e"), stamp(0)).is_some());
        assert_eq!(c.stats().skipped, 1);
        assert!(c.stats().entries <= 4, "{:?}", c.stats());
    }

    #[test]
    fn a_tenants_share_caps_its_part_of_the_node_budget() {
        let one = ENTRY_OVERHEAD + get("00").len() as u64 + result_bytes(&object("00"));
        let budget = CacheBudget::new(one * 100);
        let low = ReadCache::new(limits(1_000, 60_000), budget.clone());
        low.set_share(0.25);
        let other = ReadCache::new(limits(1_000, 60_000), budget.clone());
        for i in 0..40 {
            let id = format!("{i:02}");
            low.insert(get(&id), stamp(0), &object(&id));
            other.insert(get(&id), stamp(0), &object(&id));
        }
        // A quarter of 100 entries' bytes; the other tenant (no share
        // set) is bounded only by the budget.
        assert_eq!(low.stats().bytes, one * 25);
        assert_eq!(low.stats().skipped, 15);
        assert_eq!(other.stats().bytes, one * 40);
        assert_eq!(budget.used(), one * 65);
    }

    #[test]
    fn the_node_budget_caps_every_tenants_bytes_and_comes_back_when_a_cache_goes() {
        let one = ENTRY_OVERHEAD + get("00").len() as u64 + result_bytes(&object("00"));
        // Room for 48 entries of this size, over every tenant.
        let budget = CacheBudget::new(one * 48);
        let a = ReadCache::new(limits(100, 60_000), budget.clone());
        let b = ReadCache::new(limits(100, 60_000), budget.clone());
        for i in 0..40 {
            let id = format!("{i:02}");
            a.insert(get(&id), stamp(0), &object(&id));
        }
        for i in 0..40 {
            let id = format!("{i:02}");
            b.insert(get(&id), stamp(0), &object(&id));
        }
        assert_eq!(budget.used(), one * 48);
        assert_eq!(a.stats().skipped + b.stats().skipped, 80 - 48);
        assert_eq!(a.stats().bytes + b.stats().bytes, budget.used());
        drop(a);
        assert_eq!(budget.used(), one * 8);
        b.configure(limits(5, 60_000));
        assert_eq!(budget.used(), 0);
        b.configure(limits(0, 60_000));
        assert!(!b.enabled());
    }

    #[test]
    fn a_cleared_cache_gives_its_bytes_back_and_stays_off() {
        let budget = CacheBudget::new(1 << 20);
        let c = ReadCache::new(limits(100, 60_000), budget.clone());
        c.insert(get("a"), stamp(0), &object("a"));
        assert!(budget.used() > 0);
        c.clear();
        assert_eq!(budget.used(), 0);
        assert!(!c.enabled());
        assert!(c.get(&get("a"), stamp(0)).is_none());
        // A config change racing the unload does not turn it back on.
        c.configure(limits(50, 60_000));
        assert!(!c.enabled());
        c.insert(get("a"), stamp(0), &object("a"));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn entries_past_the_tenants_cap_or_ttl_are_evicted_and_give_their_bytes_back() {
        let budget = CacheBudget::new(1 << 20);
        let c = ReadCache::new(limits(10, 60_000), budget.clone());
        for i in 0..50 {
            let id = format!("{i:02}");
            c.insert(get(&id), stamp(0), &object(&id));
            c.run_pending_tasks();
        }
        assert!(c.stats().entries <= 10, "{:?}", c.stats());
        assert_eq!(c.stats().bytes, budget.used());
        let t = ReadCache::new(limits(10, 50), budget.clone());
        t.insert(get("x"), stamp(0), &object("x"));
        assert!(t.get(&get("x"), stamp(0)).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(t.get(&get("x"), stamp(0)).is_none());
        t.run_pending_tasks();
        assert_eq!(t.stats().bytes, 0);
    }
}
