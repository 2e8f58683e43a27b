//! `VectorIndex`: one FAISS index per collection, keyed by vector id.
//!
//! * Flat and IVF remove ids from the index on delete.
//! * HNSW cannot remove ids: deleted labels become tombstones that every
//!   search over-fetches past and filters out, and the index is rebuilt
//!   from its live vectors when tombstones pass a quarter of it. A deleted
//!   object is never returned.
//! * Cosine vectors are normalised and searched by inner product.

use std::collections::HashSet;
use std::sync::Arc;

use faiss::index::autotune::ParameterSpace;
use faiss::index::IndexImpl;
use faiss::index::TryClone;
use faiss::search_params::SearchParameters;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};

use crate::proto::{CollectionSpec, Error, IndexKind, Metric};

/// A vector search hit: (vector id, score).
pub type Hit = (u64, f32);

/// Most labels beyond `k` a search asks FAISS for to look past HNSW
/// tombstones (a query whose first `k + 4096` labels hold fewer than `k`
/// live ones gets fewer answers).
pub const MAX_TOMBSTONE_FETCH: usize = 4096;

fn faiss_err(e: faiss::error::Error) -> Error {
    Error::Storage {
        reason: format!("faiss: {e}"),
    }
}

/// The FAISS index of one collection.
pub struct VectorIndex {
    spec: CollectionSpec,
    dim: usize,
    index: IndexImpl,
    live: HashSet<u64>,
    /// Object id of each live label (so a search needs no store lookups).
    ids: std::collections::HashMap<u64, Arc<str>>,
    tombstones: HashSet<u64>,
    /// IVF only: trained yet? Until then the index is flat.
    trained_ivf: bool,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("collection", &self.spec.name)
            .field("live", &self.live.len())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

fn metric_type(m: Metric) -> MetricType {
    match m {
        Metric::L2 => MetricType::L2,
        Metric::Cosine | Metric::InnerProduct => MetricType::InnerProduct,
    }
}

fn build(spec: &CollectionSpec, dim: usize, ivf_trained: bool) -> Result<IndexImpl, Error> {
    let desc = match spec.index {
        IndexKind::Flat => "IDMap2,Flat".to_string(),
        IndexKind::Hnsw { m, .. } => format!("IDMap2,HNSW{m},Flat"),
        // IVF keeps ids itself; wrapping it in IDMap2 breaks remove_ids.
        IndexKind::Ivf { nlist, .. } if ivf_trained => format!("IVF{nlist},Flat"),
        IndexKind::Ivf { .. } => "IDMap2,Flat".to_string(),
    };
    let mut index =
        index_factory(dim as u32, &desc, metric_type(spec.metric)).map_err(faiss_err)?;
    let ps = ParameterSpace::new().map_err(faiss_err)?;
    match spec.index {
        IndexKind::Hnsw { ef_search, .. } => {
            ps.set_index_parameter(&index, "efSearch", ef_search as f64)
                .map_err(faiss_err)?;
        }
        IndexKind::Ivf { nprobe, .. } if ivf_trained => {
            ps.set_index_parameter(&index, "nprobe", nprobe as f64)
                .map_err(faiss_err)?;
        }
        _ => {}
    }
    index.set_verbose(false);
    Ok(index)
}

impl VectorIndex {
    /// An empty index for a collection with vectors.
    pub fn new(spec: &CollectionSpec) -> Result<VectorIndex, Error> {
        let dim = spec
            .dimension
            .ok_or_else(|| Error::invalid("dimension", "collection has no vectors"))?
            as usize;
        Ok(VectorIndex {
            spec: spec.clone(),
            dim,
            index: build(spec, dim, false)?,
            live: HashSet::new(),
            ids: Default::default(),
            tombstones: HashSet::new(),
            trained_ivf: false,
        })
    }

    /// The collection.
    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    /// Live vectors.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Tombstoned labels awaiting a rebuild (HNSW).
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn prepare(&self, v: &[f32]) -> Vec<f32> {
        if self.spec.metric == Metric::Cosine {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                return v.iter().map(|x| x / norm).collect();
            }
        }
        v.to_vec()
    }

    /// Adds vectors under their labels.
    pub fn add_many(&mut self, items: &[(u64, &[f32])]) -> Result<(), Error> {
        if items.is_empty() {
            return Ok(());
        }
        let mut flat = Vec::with_capacity(items.len() * self.dim);
        let mut ids = Vec::with_capacity(items.len());
        for (vid, v) in items {
            if v.len() != self.dim {
                return Err(Error::DimensionMismatch {
                    collection: self.spec.name.clone(),
                    expected: self.dim as u32,
                    got: v.len() as u32,
                });
            }
            flat.extend(self.prepare(v));
            ids.push(Idx::new(*vid));
        }
        self.index.add_with_ids(&flat, &ids).map_err(faiss_err)?;
        for (vid, _) in items {
            self.live.insert(*vid);
        }
        self.maybe_train_ivf()?;
        Ok(())
    }

    /// Adds one vector.
    pub fn add(&mut self, vid: u64, v: &[f32]) -> Result<(), Error> {
        self.add_many(&[(vid, v)])
    }

    /// Records the object id of a label.
    pub fn set_id(&mut self, vid: u64, id: &str) {
        self.ids.insert(vid, Arc::from(id));
    }

    /// The object id of a label, if known.
    pub fn id_of(&self, vid: u64) -> Option<Arc<str>> {
        self.ids.get(&vid).cloned()
    }

    /// Removes a label (tombstones it on HNSW).
    pub fn remove(&mut self, vid: u64) -> Result<(), Error> {
        self.ids.remove(&vid);
        if !self.live.remove(&vid) {
            return Ok(());
        }
        match self.spec.index {
            IndexKind::Hnsw { .. } => {
                self.tombstones.insert(vid);
                if self.tombstones.len() > 64 && self.tombstones.len() * 4 > self.live.len() {
                    self.rebuild()?;
                }
            }
            _ => {
                let sel = IdSelector::batch(&[Idx::new(vid)]).map_err(faiss_err)?;
                self.index.remove_ids(&sel).map_err(faiss_err)?;
            }
        }
        Ok(())
    }

    fn live_vectors(&self) -> Result<(Vec<u64>, Vec<f32>), Error> {
        let mut ids: Vec<u64> = self.live.iter().copied().collect();
        ids.sort_unstable();
        let mut data = vec![0f32; ids.len() * self.dim];
        for (i, id) in ids.iter().enumerate() {
            self.index
                .reconstruct(Idx::new(*id), &mut data[i * self.dim..(i + 1) * self.dim])
                .map_err(faiss_err)?;
        }
        Ok((ids, data))
    }

    /// Rebuilds the index from its live vectors (drops tombstones; trains IVF).
    pub fn rebuild(&mut self) -> Result<(), Error> {
        let (ids, data) = self.live_vectors()?;
        let train = matches!(self.spec.index, IndexKind::Ivf { nlist, .. } if ids.len() >= nlist as usize * 39);
        let mut index = build(&self.spec, self.dim, train)?;
        if train {
            index.train(&data).map_err(faiss_err)?;
        }
        let labels: Vec<Idx> = ids.iter().map(|i| Idx::new(*i)).collect();
        if !labels.is_empty() {
            index.add_with_ids(&data, &labels).map_err(faiss_err)?;
        }
        self.index = index;
        self.tombstones.clear();
        self.trained_ivf = train;
        Ok(())
    }

    fn maybe_train_ivf(&mut self) -> Result<(), Error> {
        if let IndexKind::Ivf { nlist, .. } = self.spec.index {
            if !self.trained_ivf && self.live.len() >= nlist as usize * 39 {
                self.rebuild()?;
            }
        }
        Ok(())
    }

    /// The score of `v` for `query` under the collection's metric, exactly
    /// as a search reports it (L2: squared distance; cosine: `1 - cos`;
    /// inner product: the product).
    pub fn exact_score(&self, query: &[f32], v: &[f32]) -> f32 {
        let (q, x) = (self.prepare(query), self.prepare(v));
        match self.spec.metric {
            Metric::L2 => q.iter().zip(&x).map(|(a, b)| (a - b) * (a - b)).sum(),
            Metric::Cosine => 1.0 - q.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>(),
            Metric::InnerProduct => q.iter().zip(&x).map(|(a, b)| a * b).sum(),
        }
    }

    /// The exact score against `query` of the vector stored under `vid`,
    /// read back from the index into `buf` (no object read). `None` when
    /// the label is not live, or the index keeps no vectors by label (a
    /// trained IVF).
    pub fn stored_score(&self, query: &[f32], vid: u64, buf: &mut [f32]) -> Option<f32> {
        if self.trained_ivf || buf.len() != self.dim || !self.live.contains(&vid) {
            return None;
        }
        self.index.reconstruct(Idx::new(vid), buf).ok()?;
        Some(self.exact_score(query, buf))
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// True when larger scores are closer (inner product).
    pub fn higher_is_closer(&self) -> bool {
        self.spec.metric == Metric::InnerProduct
    }

    fn score(&self, d: f32) -> f32 {
        match self.spec.metric {
            Metric::Cosine => 1.0 - d,
            _ => d,
        }
    }

    /// Runs FAISS's search of `q` (queries end to end) for `k` labels each, with
    /// `params` if given, through the C API's const entry points: a FAISS
    /// search does not change the index and may run on many threads at
    /// once (the Rust binding asks `&mut` of every index type it cannot
    /// prove so), so searches of one collection take a shared lock and
    /// run side by side.
    fn search_shared(
        &self,
        q: &[f32],
        k: usize,
        params: Option<&SearchParameters>,
    ) -> Result<(Vec<f32>, Vec<i64>), Error> {
        // Every query is `self.dim` long (checked by the callers).
        let n = q.len() / self.dim.max(1);
        let mut distances = vec![0f32; n * k];
        let mut labels = vec![-1i64; n * k];
        // SAFETY: `self.index` is a live index of dimension `self.dim`,
        // `q` holds `n` vectors of it, the outputs hold `n * k` entries
        // each, and FAISS's `Index::search` is const and safe to call
        // concurrently (every mutation takes `&mut self`).
        let rc = unsafe {
            let ix = self.index.inner_ptr() as *const faiss_sys::FaissIndex;
            match params {
                Some(p) => faiss_sys::faiss_Index_search_with_params(
                    ix,
                    n as faiss_sys::idx_t,
                    q.as_ptr(),
                    k as faiss_sys::idx_t,
                    p.inner_ptr() as *const _,
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                ),
                None => faiss_sys::faiss_Index_search(
                    ix,
                    n as faiss_sys::idx_t,
                    q.as_ptr(),
                    k as faiss_sys::idx_t,
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                ),
            }
        };
        if rc != 0 {
            // SAFETY: FAISS's last error of this thread, a C string or null.
            let reason = unsafe {
                let e = faiss_sys::faiss_get_last_error();
                if e.is_null() {
                    format!("error {rc}")
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                }
            };
            return Err(Error::Storage {
                reason: format!("faiss: {reason}"),
            });
        }
        Ok((distances, labels))
    }

    /// The `k` nearest live vectors, optionally only among `allowed` labels.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
    ) -> Result<Vec<Hit>, Error> {
        if query.len() != self.dim {
            return Err(Error::DimensionMismatch {
                collection: self.spec.name.clone(),
                expected: self.dim as u32,
                got: query.len() as u32,
            });
        }
        if k == 0 || self.live.is_empty() {
            return Ok(Vec::new());
        }
        let Some(ids) = allowed else {
            return Ok(self.search_many(&[query], k)?.pop().unwrap_or_default());
        };
        let q = self.prepare(query);
        let _one = super::omp::OneThread::new();
        let ids: Vec<Idx> = ids
            .iter()
            .filter(|i| self.live.contains(i))
            .map(|i| Idx::new(*i))
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let kk = k.min(ids.len());
        let sel = IdSelector::batch(&ids).map_err(faiss_err)?;
        // SearchParameters does not own the selector: free it after.
        let sel_ptr = sel.inner_ptr();
        let params = match (self.trained_ivf, self.spec.index) {
            (true, IndexKind::Ivf { nprobe, .. }) => {
                faiss::search_params::SearchParametersIVF::new_with(sel, nprobe as usize, 0)
                    .map_err(faiss_err)?
                    .upcast()
            }
            _ => SearchParameters::new(sel).map_err(faiss_err)?,
        };
        let r = self.search_shared(&q, kk, Some(&params));
        drop(params);
        // SAFETY: the selector was created above, is referenced only by
        // `params` (dropped), and is freed exactly once here.
        unsafe { faiss_sys::faiss_IDSelector_free(sel_ptr) };
        let (distances, labels) = r?;
        Ok(self.live_hits(&labels, &distances, k))
    }

    /// The `k` nearest live vectors of each query, from one FAISS call
    /// over all of them. Several queries run on the calling thread's
    /// OpenMP team (all cores) when no other search of several queries is
    /// running, else, like one query, with a team of one.
    pub fn search_many(&self, queries: &[&[f32]], k: usize) -> Result<Vec<Vec<Hit>>, Error> {
        if let Some(q) = queries.iter().find(|q| q.len() != self.dim) {
            return Err(Error::DimensionMismatch {
                collection: self.spec.name.clone(),
                expected: self.dim as u32,
                got: q.len() as u32,
            });
        }
        if k == 0 || self.live.is_empty() || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let mut flat = Vec::with_capacity(queries.len() * self.dim);
        for q in queries {
            flat.extend(self.prepare(q));
        }
        let _team = super::omp::ManyQueries::new(queries.len());
        // Tombstones (HNSW) take places in FAISS's answer: ask for a few
        // more than k, in proportion to their share, and ask again, four
        // times as many, for the queries that still found fewer than k
        // live vectors (before, every search asked for k + every
        // tombstone: after 1,000 deletes, 1,010 labels per query to
        // allocate, map and skip).
        let total = self.live.len() + self.tombstones.len();
        // Bounded: a tenant that deletes around its queries must not make
        // each ask for every label of the index.
        let cap = total.min(k.saturating_add(MAX_TOMBSTONE_FETCH));
        let mut kk = self.over_fetch(k).min(cap);
        let mut out = vec![Vec::new(); queries.len()];
        let mut pending: Vec<usize> = (0..queries.len()).collect();
        loop {
            let gathered;
            let qs = if pending.len() == queries.len() {
                &flat
            } else {
                gathered = pending
                    .iter()
                    .flat_map(|&i| &flat[i * self.dim..(i + 1) * self.dim])
                    .copied()
                    .collect::<Vec<f32>>();
                &gathered
            };
            let (distances, labels) = self.search_shared(qs, kk, None)?;
            let mut short = Vec::new();
            for ((&i, l), d) in pending
                .iter()
                .zip(labels.chunks(kk))
                .zip(distances.chunks(kk))
            {
                out[i] = self.live_hits(l, d, k);
                // A list with empty places (-1) is all FAISS could find:
                // HNSW stops exploring after efSearch candidates, so
                // asking for more would find no more.
                let exhausted = l.last().is_some_and(|&x| x < 0);
                if out[i].len() < k && kk < cap && !exhausted {
                    short.push(i);
                }
            }
            if short.is_empty() {
                return Ok(out);
            }
            pending = short;
            kk = kk.saturating_mul(4).min(cap);
        }
    }

    /// How many labels to ask FAISS for to find `k` live ones: `k` plus
    /// twice the tombstones' expected share of them, plus 16.
    fn over_fetch(&self, k: usize) -> usize {
        let dead = self.tombstones.len();
        if dead == 0 {
            return k;
        }
        let live = self.live.len().max(1);
        k + (k * dead).div_ceil(live) * 2 + 16
    }

    /// The first `k` live labels of one query's FAISS answer, scored.
    fn live_hits(&self, labels: &[i64], distances: &[f32], k: usize) -> Vec<Hit> {
        let mut hits = Vec::with_capacity(k.min(labels.len()));
        for (label, d) in labels.iter().zip(distances) {
            let Ok(vid) = u64::try_from(*label) else {
                continue;
            };
            if self.tombstones.contains(&vid) || !self.live.contains(&vid) {
                continue;
            }
            hits.push((vid, self.score(*d)));
            if hits.len() == k {
                break;
            }
        }
        hits
    }

    /// A plain FAISS search on the index, nothing around it (the benchmark's
    /// baseline). Returns labels, tombstones included.
    pub fn raw_search(&mut self, query: &[f32], k: usize) -> Result<Vec<u64>, Error> {
        // The best a FAISS user does for one query at a time: a team of
        // one, as `search` runs (with the default team, each query wakes
        // the calling thread's OpenMP team and raw FAISS ran slower than
        // the shard's own path).
        let _one = super::omp::OneThread::new();
        let r = self.index.search(query, k).map_err(faiss_err)?;
        Ok(r.labels.iter().filter_map(|l| l.get()).collect())
    }

    /// A plain FAISS search of several queries (`queries` holds them end
    /// to end) in one call with the default OpenMP team: the baseline of
    /// a batch search. Returns each query's labels, tombstones included.
    pub fn raw_search_many(&mut self, queries: &[f32], k: usize) -> Result<Vec<Vec<u64>>, Error> {
        let r = self.index.search(queries, k).map_err(faiss_err)?;
        Ok(r.labels
            .chunks(k.max(1))
            .map(|c| c.iter().filter_map(|l| l.get()).collect())
            .collect())
    }

    /// A copy of the index as it is now, to be written out later
    /// ([`IndexImage::write`](super::IndexImage::write)) without holding
    /// whatever lock keeps it still: FAISS clones the index in memory
    /// (about a copy of its vectors and graph).
    pub fn image(&self) -> Result<IndexImage, Error> {
        Ok(IndexImage {
            spec: self.spec.clone(),
            index: self.index.try_clone().map_err(faiss_err)?,
            live: self.live.iter().copied().collect(),
            tombstones: self.tombstones.iter().copied().collect(),
            trained_ivf: self.trained_ivf,
        })
    }

    /// An index read back from an image: `index` holds exactly the labels
    /// `live` and `tombstones` (HNSW), and was trained for IVF when
    /// `trained_ivf`. Object ids are set afterwards ([`set_id`](Self::set_id)).
    pub(super) fn from_parts(
        spec: &CollectionSpec,
        index: IndexImpl,
        live: HashSet<u64>,
        tombstones: HashSet<u64>,
        trained_ivf: bool,
    ) -> Result<VectorIndex, Error> {
        let dim = spec
            .dimension
            .ok_or_else(|| Error::invalid("dimension", "collection has no vectors"))?
            as usize;
        if index.d() as usize != dim {
            return Err(Error::storage(format!(
                "index has dimension {}, the collection {dim}",
                index.d()
            )));
        }
        let total = live.len() as u64 + tombstones.len() as u64;
        if index.ntotal() != total {
            return Err(Error::storage(format!(
                "index holds {} vectors, its labels {total}",
                index.ntotal()
            )));
        }
        let trained_ivf = trained_ivf && matches!(spec.index, IndexKind::Ivf { .. });
        let mut index = index;
        let ps = ParameterSpace::new().map_err(faiss_err)?;
        match spec.index {
            IndexKind::Hnsw { ef_search, .. } => {
                ps.set_index_parameter(&index, "efSearch", ef_search as f64)
                    .map_err(faiss_err)?;
            }
            IndexKind::Ivf { nprobe, .. } if trained_ivf => {
                ps.set_index_parameter(&index, "nprobe", nprobe as f64)
                    .map_err(faiss_err)?;
            }
            _ => {}
        }
        index.set_verbose(false);
        Ok(VectorIndex {
            spec: spec.clone(),
            dim,
            index,
            live,
            ids: Default::default(),
            tombstones,
            trained_ivf,
        })
    }

    /// The live labels.
    pub fn labels(&self) -> impl Iterator<Item = u64> + '_ {
        self.live.iter().copied()
    }
}

/// A point-in-time copy of a [`VectorIndex`] (see [`VectorIndex::image`]).
pub struct IndexImage {
    pub(super) spec: CollectionSpec,
    pub(super) index: IndexImpl,
    pub(super) live: Vec<u64>,
    pub(super) tombstones: Vec<u64>,
    pub(super) trained_ivf: bool,
}

impl std::fmt::Debug for IndexImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexImage")
            .field("collection", &self.spec.name)
            .field("live", &self.live.len())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

impl IndexImage {
    /// The collection.
    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: IndexKind, metric: Metric) -> CollectionSpec {
        CollectionSpec::vectors("c", 4).index(kind).metric(metric)
    }

    /// One of each index kind (IVF with `nlist` lists, 2 probed).
    fn kinds(nlist: u32) -> [IndexKind; 3] {
        [
            IndexKind::Flat,
            IndexKind::Hnsw {
                m: 8,
                ef_search: 32,
            },
            IndexKind::Ivf { nlist, nprobe: 2 },
        ]
    }

    fn fill(ix: &mut VectorIndex, n: u64) {
        for i in 1..=n {
            let f = i as f32;
            ix.add(i, &[f, f * 0.5, 1.0, -f]).unwrap();
        }
    }

    #[test]
    fn searches_of_one_index_run_on_many_threads_at_once_with_the_same_answers() {
        for kind in kinds(4) {
            let mut ix = VectorIndex::new(&spec(kind, Metric::L2)).unwrap();
            fill(&mut ix, 2_000);
            for vid in 100..=150 {
                ix.remove(vid).unwrap();
            }
            let queries: Vec<[f32; 4]> = (0..200)
                .map(|i| {
                    let f = (i * 9) as f32 + 0.3;
                    [f, f * 0.5, 1.0, -f]
                })
                .collect();
            let allowed: Vec<u64> = (1..=2_000).step_by(7).collect();
            let expected: Vec<_> = queries
                .iter()
                .map(|q| {
                    (
                        ix.search(q, 5, None).unwrap(),
                        ix.search(q, 3, Some(&allowed)).unwrap(),
                    )
                })
                .collect();
            let ix = &ix;
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (queries, expected, allowed) = (&queries, &expected, &allowed);
                    s.spawn(move || {
                        for round in 0..5 {
                            for (i, q) in queries.iter().enumerate().skip((t + round) % 3) {
                                let got = (
                                    ix.search(q, 5, None).unwrap(),
                                    ix.search(q, 3, Some(allowed)).unwrap(),
                                );
                                assert_eq!(got, expected[i], "{kind:?} query {i}");
                            }
                        }
                    });
                }
            });
        }
    }

    #[test]
    fn one_call_for_many_queries_answers_each_as_it_would_alone() {
        for metric in [Metric::L2, Metric::Cosine] {
            for kind in kinds(4) {
                let mut ix = VectorIndex::new(&spec(kind, metric)).unwrap();
                fill(&mut ix, 2_000);
                for vid in 100..=150 {
                    ix.remove(vid).unwrap();
                }
                // Fewer than 20 queries: from 20 on, FAISS's flat distances
                // (and IVF's list assignment) go through BLAS, whose
                // rounding differs from the one-query kernels.
                let queries: Vec<[f32; 4]> = (0..16)
                    .map(|i| {
                        let f = (i * 121) as f32 + 0.3;
                        [f, f * 0.5, 1.0, -f]
                    })
                    .collect();
                let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
                let many = ix.search_many(&refs, 5).unwrap();
                assert_eq!(many.len(), queries.len());
                for (q, got) in queries.iter().zip(&many) {
                    assert_eq!(got, &ix.search(q, 5, None).unwrap(), "{kind:?} {metric:?}");
                    assert!(got.iter().all(|(v, _)| !(100..=150).contains(v)));
                }
                assert_eq!(ix.search_many(&refs[..1], 5).unwrap()[..], many[..1]);
                assert!(ix.search_many(&[], 5).unwrap().is_empty());
                assert_eq!(ix.search_many(&refs[..2], 0).unwrap(), [vec![], vec![]]);
                let short: &[f32] = &[1.0, 2.0];
                assert!(matches!(
                    ix.search_many(&[refs[0], short], 5),
                    Err(Error::DimensionMismatch { got: 2, .. })
                ));
            }
        }
    }

    #[test]
    fn a_search_past_many_tombstones_asks_again_until_it_finds_k_live_vectors() {
        // efSearch 400: HNSW explores far enough to find live vectors
        // past 296 deleted ones.
        let kind = IndexKind::Hnsw {
            m: 8,
            ef_search: 400,
        };
        let mut ix = VectorIndex::new(&spec(kind, Metric::L2)).unwrap();
        fill(&mut ix, 2_000);
        // 296 tombstones around the query, fewer than a quarter of the
        // live vectors: no rebuild, so the first ask (k + 16 or so labels)
        // holds 4 live vectors, and the next ones find the fifth.
        for vid in 5..=300 {
            ix.remove(vid).unwrap();
        }
        assert_eq!(ix.tombstones(), 296);
        assert!(ix.over_fetch(5) < 40, "{}", ix.over_fetch(5));
        let q = [10.0, 5.0, 1.0, -10.0];
        let hits = ix.search(&q, 5, None).unwrap();
        let vids: Vec<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(vids, [4, 3, 2, 1, 301]);
        let far = [1_500.0, 750.0, 1.0, -1_500.0];
        let both = ix.search_many(&[&q, &far], 5).unwrap();
        assert_eq!(both[0], hits);
        assert_eq!(both[1].len(), 5);
        assert!(both[1].iter().all(|h| (1_490..=1_510).contains(&h.0)));
        // With efSearch 32, HNSW stops exploring inside the deleted run:
        // fewer than k answers, none deleted, and the asking stops.
        let mut narrow = VectorIndex::new(&spec(
            IndexKind::Hnsw {
                m: 8,
                ef_search: 32,
            },
            Metric::L2,
        ))
        .unwrap();
        fill(&mut narrow, 2_000);
        for vid in 5..=300 {
            narrow.remove(vid).unwrap();
        }
        let few = narrow.search(&q, 5, None).unwrap();
        assert!(!few.is_empty() && few.len() < 5, "{few:?}");
        assert!(few.iter().all(|h| !(5..=300).contains(&h.0)));
        // All but three deleted: three answers, never a deleted one.
        let mut small = VectorIndex::new(&spec(kind, Metric::L2)).unwrap();
        fill(&mut small, 10);
        for vid in 1..=7 {
            small.remove(vid).unwrap();
        }
        let left: Vec<u64> = small
            .search(&q, 5, None)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(left.len(), 3);
        assert!(left.iter().all(|v| (8..=10).contains(v)), "{left:?}");
    }

    #[test]
    fn deleted_vectors_are_never_returned() {
        for kind in kinds(2) {
            let mut ix = VectorIndex::new(&spec(kind, Metric::L2)).unwrap();
            fill(&mut ix, 200);
            let q = [10.0, 5.0, 1.0, -10.0];
            assert_eq!(ix.search(&q, 1, None).unwrap()[0].0, 10, "{kind:?}");
            for vid in 5..=15 {
                ix.remove(vid).unwrap();
            }
            let hits = ix.search(&q, 5, None).unwrap();
            assert_eq!(hits.len(), 5);
            assert!(
                hits.iter().all(|(v, _)| !(5..=15).contains(v)),
                "{kind:?}: {hits:?}"
            );
            if !matches!(kind, IndexKind::Hnsw { .. }) {
                // (HNSW filters during graph search, which misses very
                // selective filters; the shard scores filtered searches
                // exactly instead.)
                let filtered = ix.search(&q, 3, Some(&[10, 100, 150, 199])).unwrap();
                assert_eq!(
                    filtered.iter().map(|h| h.0).collect::<Vec<_>>(),
                    vec![100, 150, 199],
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn cosine_scores_are_one_minus_cos() {
        let mut ix = VectorIndex::new(&spec(IndexKind::Flat, Metric::Cosine)).unwrap();
        ix.add(1, &[1.0, 0.0, 0.0, 0.0]).unwrap();
        ix.add(2, &[0.0, 3.0, 0.0, 0.0]).unwrap();
        let hits = ix.search(&[2.0, 0.0, 0.0, 0.0], 2, None).unwrap();
        assert_eq!(hits[0].0, 1);
        assert!(hits[0].1.abs() < 1e-6);
        assert!((hits[1].1 - 1.0).abs() < 1e-6);
    }
}
