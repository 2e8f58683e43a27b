//! OpenMP team size around FAISS searches.
//!
//! FAISS parallelises with OpenMP, one thread team per calling thread.
//! A one-query search gains nothing from a team, yet `IndexIDMap::search`
//! opens a parallel region for every call (to map its k labels), which
//! wakes the calling thread's team. Searches run on the blocking pool,
//! whose threads take turns, so that team was usually asleep: `perf` on
//! `bench engine` put 79% of the search phase under `GOMP_parallel`, and
//! the stack's search lost to raw FAISS called from one warm thread. A
//! search therefore runs with a team of one; bulk adds and rebuilds keep
//! the default (all cores, or `OMP_NUM_THREADS`).

use std::os::raw::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

extern "C" {
    fn omp_set_num_threads(n: c_int);
    fn omp_get_max_threads() -> c_int;
}

/// The team size a thread starts with (`OMP_NUM_THREADS`, else the
/// number of cores).
fn default_team() -> c_int {
    static DEFAULT: OnceLock<c_int> = OnceLock::new();
    // SAFETY: reads this thread's OpenMP setting; read before any thread
    // changes its own (every change goes through `OneThread`).
    *DEFAULT.get_or_init(|| unsafe { omp_get_max_threads() })
}

/// Runs FAISS calls on this thread with a team of one while held.
pub(super) struct OneThread(c_int);

impl OneThread {
    pub(super) fn new() -> OneThread {
        let before = default_team();
        // SAFETY: sets this thread's own OpenMP team size.
        unsafe { omp_set_num_threads(1) };
        OneThread(before)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { omp_set_num_threads(self.0) };
    }
}

/// Searches of several queries running now, on any thread.
static MANY_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The team of a search of `queries` queries, while held: the default
/// team when it is the only search of several queries running, else one
/// thread. Teams of concurrent batch searches would share the cores
/// several times over, and OpenMP's spinning workers then thrash them.
pub(super) struct ManyQueries {
    counted: bool,
    _one: Option<OneThread>,
}

impl ManyQueries {
    pub(super) fn new(queries: usize) -> ManyQueries {
        let many = queries > 1;
        let alone = many && MANY_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) == 0;
        ManyQueries {
            counted: many,
            _one: (!alone).then(OneThread::new),
        }
    }
}

impl Drop for ManyQueries {
    fn drop(&mut self) {
        if self.counted {
            MANY_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
