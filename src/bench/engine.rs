//! `vektagraf bench engine`: three side-by-side measurements in one run.
//!
//! 1. Durable writes: a raw RocksDB synced-write loop (1 writer, 256 B)
//!    against Vektagraf puts (each acknowledged only after its raft entry
//!    is fsynced) with 1 and 64 concurrent writers.
//! 2. Vector search on Fashion-MNIST (60k x 784): queries/s and recall@10
//!    through the whole stack (session, limits, read cache, read index,
//!    FAISS), called from a runtime task as the server does, against raw
//!    FAISS searches on the very same index, in interleaved rounds; then
//!    batches of 64 queries per request against one FAISS call per 64.
//! 3. The per-request limit check (rate, concurrency, daily, monthly) over
//!    1,000 tenants, against governor's keyed check over 1,000 keys.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::limits::{QuotaCounters, TenantLimiter};
use crate::proto::{CollectionSpec, IndexKind, NewObject, OperationType, VectorSearch, WriteOp};
use crate::{Database, NodeConfig, TenantConfig};

/// Where Debian's `dataset-fashion-mnist` puts the data.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory.
    pub data: PathBuf,
    /// Seconds per write measurement.
    pub seconds: u64,
    /// Vectors indexed.
    pub vectors: usize,
    /// Queries run.
    pub queries: usize,
    /// Run the vector part.
    pub vectors_enabled: bool,
}

/// Reads an IDX3 gzip file of u8 images as f32 rows.
pub fn load_idx_images(path: &Path, max: usize) -> anyhow::Result<(usize, Vec<f32>)> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("{} (apt-get install dataset-fashion-mnist)", path.display()))?;
    let mut gz = flate2::read::GzDecoder::new(f);
    let mut bytes = Vec::new();
    gz.read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() >= 16 && bytes[..4] == [0, 0, 8, 3],
        "not an IDX3 u8 file"
    );
    let be = |i: usize| {
        u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
    };
    let (n, rows, cols) = (be(4), be(8), be(12));
    let d = rows * cols;
    let n = n.min(max);
    anyhow::ensure!(bytes.len() >= 16 + n * d, "truncated IDX file");
    Ok((d, bytes[16..16 + n * d].iter().map(|&b| b as f32).collect()))
}

fn unlimited(db: &Database, id: &str) -> anyhow::Result<TenantConfig> {
    let mut c = TenantConfig::for_tier(
        &db.tiers(),
        id,
        id,
        "custom",
        serde_json::json!({"max_batch_size": 500}),
    )?;
    c.rate_limit.max_requests = u64::MAX / 8;
    c.rate_limit
        .operation_types
        .values_mut()
        .for_each(|v| *v = 0);
    let s = &mut c.storage_limit;
    s.max_storage_bytes = u64::MAX / 8;
    s.max_objects = u64::MAX / 8;
    s.max_vectors = u64::MAX / 8;
    s.max_object_size = 64 << 20;
    s.max_vector_dimensions = 4096;
    let q = &mut c.request_limit;
    q.daily_limit = u64::MAX / 8;
    q.monthly_limit = u64::MAX / 8;
    q.concurrent_limit = 10_000;
    q.complexity_limit = u64::MAX / 8;
    q.max_result_size = 1_000_000;
    Ok(c)
}

fn raw_rocksdb_synced(dir: &Path, secs: u64) -> anyhow::Result<f64> {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    let db = rocksdb::DB::open(&o, dir)?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    let value = vec![b'x'; 256];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        db.put_opt(format!("key{n:012}"), &value, &wo)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn ours_writes(
    db: &Database,
    tenant: &str,
    writers: usize,
    secs: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let s = db.session(tenant, "bench").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let payload = "x".repeat(256);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for w in 0..writers {
        let (s, stop, count, payload) = (s.clone(), stop.clone(), count.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                s.put(NewObject::new(
                    "kv",
                    &format!("w{writers}-{w}-{i}"),
                    serde_json::json!({"v": payload}),
                ))
                .await?;
                lat.push(t.elapsed());
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    Ok((rate, lat))
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0
}

/// Runs the benchmark and prints its figures.
pub async fn run(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    std::fs::create_dir_all(&opt.data)?;
    println!(
        "# vektagraf bench engine ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1. Durable writes.
    let raw = {
        let dir = opt.data.join("raw-rocksdb");
        let secs = opt.seconds;
        tokio::task::spawn_blocking(move || raw_rocksdb_synced(&dir, secs)).await??
    };
    let db = Database::open(
        opt.data.join("node"),
        NodeConfig::with_data_dir(&opt.data.join("node")),
    )
    .await?;
    db.create_tenant(unlimited(&db, "bench")?).await?;
    db.create_user("bench", "bench").await?;
    db.session("bench", "bench")
        .await?
        .create_collection(CollectionSpec::plain("kv"))
        .await?;
    let (one, lat1) = ours_writes(&db, "bench", 1, opt.seconds).await?;
    let (many, lat64) = ours_writes(&db, "bench", 64, opt.seconds).await?;
    println!("\n## durable writes (256 B values, every ack after fsync)");
    println!("raw rocksdb synced put, 1 writer   : {raw:>9.0} writes/s");
    println!("vektagraf put, 1 writer            : {one:>9.0} writes/s  p50 {:.2} ms  p99 {:.2} ms  ({:.2}x raw)", pct(&lat1, 0.5), pct(&lat1, 0.99), one / raw);
    println!("vektagraf put, 64 writers          : {many:>9.0} writes/s  p50 {:.2} ms  p99 {:.2} ms  ({:.2}x raw single writer)", pct(&lat64, 0.5), pct(&lat64, 0.99), many / raw);

    // 2. Vector search.
    if opt.vectors_enabled {
        vector_bench(&db, &opt).await?;
    }
    db.close().await?;

    // 3. Limit check.
    limit_bench();
    Ok(())
}

async fn vector_bench(db: &Database, opt: &Options) -> anyhow::Result<()> {
    use faiss::Index;
    let dir = Path::new(FASHION_MNIST_DIR);
    let (d, base) = load_idx_images(&dir.join("train-images-idx3-ubyte.gz"), opt.vectors)?;
    let (_, queries) = load_idx_images(&dir.join("t10k-images-idx3-ubyte.gz"), opt.queries)?;
    let n = base.len() / d;
    let nq = queries.len() / d;
    println!(
        "\n## vector search: Fashion-MNIST {n} x {d}, {nq} queries, k = 10, HNSW32 efSearch 64"
    );
    // Exact ground truth.
    let t = Instant::now();
    let mut flat = faiss::index_factory(d as u32, "Flat", faiss::MetricType::L2)?;
    flat.add(&base)?;
    let gt = flat.search(&queries, 10)?;
    drop(flat);
    let gt: Vec<Vec<u64>> = gt
        .labels
        .chunks(10)
        .map(|c| c.iter().filter_map(|l| l.get()).collect())
        .collect();
    println!(
        "ground truth (exact flat search)   : {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (s, took) = insert_fmnist(db, "vectors", &base, d).await?;
    println!(
        "insert through raft + index build  : {:.1} s ({:.0} vectors/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );

    let recall = |found: &[Vec<u64>]| -> f64 {
        let mut hit = 0;
        for (f, g) in found.iter().zip(&gt) {
            hit += f.iter().filter(|x| g.contains(x)).count();
        }
        hit as f64 / (gt.len() * 10) as f64
    };

    // The three ways, interleaved in rounds over slices of the queries,
    // so background work left by the insert (RocksDB flushes and
    // compactions) and the shared machine's noise weigh on each alike.
    let data = db.shard_data("vectors")?;
    let ix = data.vector_index("fmnist").context("index")?;
    let store = data.store();
    const ROUNDS: usize = 5;
    let per_round = nq.div_ceil(ROUNDS);
    let (mut ours_s, mut raw_s, mut direct_s) = (0.0, 0.0, 0.0);
    let mut ours = Vec::with_capacity(nq);
    let mut raw_labels = Vec::with_capacity(nq);
    for slice in queries.chunks(per_round * d) {
        // Through the stack, from a task on the runtime's workers, as the
        // server's connection tasks call it.
        let (session, part) = (s.clone(), slice.to_vec());
        let t = Instant::now();
        let found = tokio::spawn(async move {
            let mut found = Vec::with_capacity(part.len() / d);
            for q in part.chunks(d) {
                let hits = session.vector_search_ids(top10(q)).await?;
                found.push(
                    hits.iter()
                        .filter_map(|h| h.id.parse::<u64>().ok())
                        .collect::<Vec<_>>(),
                );
            }
            Ok::<_, crate::proto::Error>(found)
        })
        .await??;
        ours_s += t.elapsed().as_secs_f64();
        ours.extend(found);
        // Raw FAISS on the same index object.
        let t = Instant::now();
        {
            let mut ix = ix.write();
            for q in slice.chunks(d) {
                raw_labels.push(ix.raw_search(q, 10)?);
            }
        }
        raw_s += t.elapsed().as_secs_f64();
        // The shard's own search path, called directly (no session,
        // limits, cache or thread hop): shows where the overhead lives.
        let t = Instant::now();
        for q in slice.chunks(d) {
            let s = top10(q);
            std::hint::black_box(data.vector_search(
                &s,
                false,
                &mut crate::limits::WorkMeter::unbounded(),
            )?);
        }
        direct_s += t.elapsed().as_secs_f64();
    }
    let (ours_qps, raw_qps, direct_qps) =
        (nq as f64 / ours_s, nq as f64 / raw_s, nq as f64 / direct_s);
    let raw: Vec<Vec<u64>> = raw_labels
        .iter()
        .map(|ls| {
            ls.iter()
                .filter_map(|vid| {
                    store
                        .get_raw(crate::storage::CF_VIDS, &vid.to_be_bytes())
                        .ok()
                        .flatten()
                })
                .filter_map(|id| String::from_utf8_lossy(&id).parse::<u64>().ok())
                .collect()
        })
        .collect();
    println!(
        "raw faiss search, same index       : {raw_qps:>9.0} queries/s  recall@10 {:.4}",
        recall(&raw)
    );
    println!(
        "shard search called directly       : {direct_qps:>9.0} queries/s  ({:.2}x raw)",
        direct_qps / raw_qps
    );
    println!("vektagraf vector_search            : {ours_qps:>9.0} queries/s  recall@10 {:.4}  ({:.2}x raw)", recall(&ours), ours_qps / raw_qps);
    // Batches of BATCH queries: one request through the stack against one
    // FAISS call over the same queries (both with the default OpenMP
    // team, so both spread over the cores), alternating per batch.
    const BATCH: usize = 64;
    let (mut ours_b, mut raw_b) = (0.0, 0.0);
    let mut ours_batched = Vec::with_capacity(nq);
    let mut raw_batched = Vec::with_capacity(nq);
    for chunk in queries.chunks(BATCH * d) {
        let searches: Vec<VectorSearch> = chunk.chunks(d).map(top10).collect();
        let session = s.clone();
        let t = Instant::now();
        let lists = tokio::spawn(async move { session.vector_search_batch(searches, false).await })
            .await??;
        ours_b += t.elapsed().as_secs_f64();
        ours_batched.extend(lists.into_iter().map(|hits| {
            hits.iter()
                .filter_map(|h| h.id.parse::<u64>().ok())
                .collect::<Vec<_>>()
        }));
        let t = Instant::now();
        let labels = ix.write().raw_search_many(chunk, 10)?;
        raw_b += t.elapsed().as_secs_f64();
        raw_batched.extend(labels);
    }
    let (ours_bqps, raw_bqps) = (nq as f64 / ours_b, nq as f64 / raw_b);
    println!(
        "raw faiss, {BATCH} queries per call    : {raw_bqps:>9.0} queries/s  ({} labels)",
        raw_batched.iter().map(Vec::len).sum::<usize>()
    );
    println!(
        "vektagraf search_batch of {BATCH}       : {ours_bqps:>9.0} queries/s  recall@10 {:.4}  ({:.2}x raw batch, {:.2}x one at a time)",
        recall(&ours_batched),
        ours_bqps / raw_bqps,
        ours_bqps / ours_qps
    );
    filtered_bench(&s, &base, &queries, ours_qps, d).await?;
    after_deletes_bench(&s, &queries, d, nq.min(2_000)).await
}

/// The unfiltered k = 10 search of `q` in `fmnist` that every search
/// line of this bench runs.
fn top10(q: &[f32]) -> VectorSearch {
    VectorSearch {
        collection: "fmnist".into(),
        vector: q.to_vec(),
        k: 10,
        filter: None,
    }
}

/// Search throughput (batches of 64, uncached) before and after deleting
/// 1,000 objects, which leaves 1,000 HNSW tombstones that every search
/// must look past (the index is rebuilt only past a quarter).
async fn after_deletes_bench(
    s: &crate::Session,
    queries: &[f32],
    d: usize,
    nq: usize,
) -> anyhow::Result<()> {
    let qps = |s: crate::Session, qs: Vec<f32>| async move {
        let t = Instant::now();
        for chunk in qs.chunks(64 * d) {
            let searches = chunk.chunks(d).map(top10).collect();
            std::hint::black_box(s.vector_search_batch(searches, false).await?);
        }
        Ok::<_, crate::proto::Error>((qs.len() / d) as f64 / t.elapsed().as_secs_f64())
    };
    let qs = queries[..nq * d].to_vec();
    let before = qps(s.clone(), qs.clone()).await?;
    let deletes = (0..1_000)
        .map(|i| WriteOp::Delete {
            id: format!("{}", i * 37),
        })
        .collect();
    let failed = s.batch(deletes).await.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} deletes failed");
    let after = qps(s.clone(), qs).await?;
    println!(
        "search_batch after 1,000 deletes   : {after:>9.0} queries/s  ({:.2}x before them, {before:.0})",
        after / before
    );
    Ok(())
}

/// Filtered searches through the stack: every object has `p10` = its
/// number % 10 and `p100` = its number % 100 (both indexed), and query j
/// asks for `p10` = j % 10 (10% of the collection passes: a post-filter)
/// or `p100` = j % 100 (1%: an allow-list), against the same queries
/// unfiltered (`unfiltered_qps`, the stack's search measured above: the
/// same queries again would be read-cache hits); recall@10 against an
/// exact search of the rows that pass.
async fn filtered_bench(
    s: &crate::Session,
    base: &[f32],
    queries: &[f32],
    unfiltered_qps: f64,
    d: usize,
) -> anyhow::Result<()> {
    const QUERIES: usize = 500;
    let t = Instant::now();
    let mut filled = 0;
    for p in ["p10", "p100"] {
        filled += s.index_property("fmnist", p).await?;
    }
    let indexed_s = t.elapsed().as_secs_f64();
    let queries: Vec<&[f32]> = queries.chunks(d).take(QUERIES).collect();
    let nq = queries.len();
    println!(
        "\n## filtered vector search: {nq} queries, k = 10; p10 and p100 indexed in {indexed_s:.1} s ({filled} objects read)"
    );
    let exact = |q: &[f32], keep: &dyn Fn(usize) -> bool| -> Vec<u64> {
        let mut all: Vec<(f32, usize)> = base
            .chunks(d)
            .enumerate()
            .filter(|(i, _)| keep(*i))
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        all.iter().take(10).map(|(_, i)| *i as u64).collect()
    };
    for (label, modulus) in [
        ("p10 = j % 10 (10%)", 10usize),
        ("p100 = j % 100 (1%)", 100),
    ] {
        let field = format!("p{modulus}");
        let truth: Vec<Vec<u64>> = queries
            .iter()
            .enumerate()
            .map(|(j, q)| exact(q, &|i| i % modulus == j % modulus))
            .collect();
        let t = Instant::now();
        let mut hit = 0usize;
        for (j, q) in queries.iter().enumerate() {
            let filter = Some(crate::proto::Filter::eq(&field, j % modulus));
            let hits = s
                .vector_search_ids(VectorSearch {
                    collection: "fmnist".into(),
                    vector: q.to_vec(),
                    k: 10,
                    filter,
                })
                .await?;
            hit += hits
                .iter()
                .filter_map(|h| h.id.parse::<u64>().ok())
                .filter(|id| truth[j].contains(id))
                .count();
        }
        let qps = nq as f64 / t.elapsed().as_secs_f64();
        let recall = hit as f64 / (nq * 10) as f64;
        println!(
            "{label:<35}: {qps:>9.0} queries/s  recall@10 {recall:.4}  ({:.2}x unfiltered)",
            qps / unfiltered_qps
        );
    }
    Ok(())
}

/// Creates tenant `tenant` with an HNSW32 collection `fmnist` and inserts
/// `base` (rows of `d`) through raft in batches, each acknowledged after
/// its fsync, then searches once (which waits until FAISS holds every
/// vector): the session, and how long all of it took.
async fn insert_fmnist(
    db: &Database,
    tenant: &str,
    base: &[f32],
    d: usize,
) -> anyhow::Result<(crate::Session, Duration)> {
    db.create_tenant(unlimited(db, tenant)?).await?;
    db.create_user(tenant, "bench").await?;
    let s = db.session(tenant, "bench").await?;
    s.create_collection(
        CollectionSpec::vectors("fmnist", d as u32).index(IndexKind::Hnsw {
            m: 32,
            ef_search: 64,
        }),
    )
    .await?;
    let t = Instant::now();
    let ops: Vec<WriteOp> = base
        .chunks(d)
        .enumerate()
        .map(|(i, v)| {
            WriteOp::Put(
                NewObject::new(
                    "fmnist",
                    &format!("{i}"),
                    serde_json::json!({"p10": i % 10, "p100": i % 100}),
                )
                .with_vector(v.to_vec()),
            )
        })
        .collect();
    let results = s.batch(ops).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} inserts failed: {:?}",
        results.iter().find(|r| r.is_err())
    );
    // Acknowledged writes may still be queued for FAISS; a search waits
    // for them, so the time counts the whole index build.
    let hits = s
        .vector_search_ids(VectorSearch {
            collection: "fmnist".into(),
            vector: base[..d].to_vec(),
            k: 1,
            filter: None,
        })
        .await?;
    let took = t.elapsed();
    anyhow::ensure!(
        hits.first().is_some_and(|h| h.id == "0"),
        "the first vector is its own nearest: {hits:?}"
    );
    Ok((s, took))
}

/// `vektagraf bench import`: Fashion-MNIST's training vectors inserted
/// through raft into an HNSW32 collection (every batch durable before its
/// answer, and the time runs until a search finds every vector indexed)
/// against raw FAISS building the same HNSW32
/// index from the same vectors in one call, in one run.
pub async fn import(opt: Options) -> anyhow::Result<()> {
    use faiss::Index;
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    std::fs::create_dir_all(&opt.data)?;
    let dir = Path::new(FASHION_MNIST_DIR);
    let (d, base) = load_idx_images(&dir.join("train-images-idx3-ubyte.gz"), opt.vectors)?;
    let n = base.len() / d;
    println!(
        "# vektagraf bench import: Fashion-MNIST {n} x {d} into HNSW32 ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let raw = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let mut ix =
                faiss::index_factory(d as u32, "IDMap2,HNSW32,Flat", faiss::MetricType::L2)?;
            let ids: Vec<faiss::Idx> = (0..(base.len() / d) as u64).map(faiss::Idx::new).collect();
            ix.add_with_ids(&base, &ids)?;
            Ok(t.elapsed())
        })
        .await??
    };
    println!(
        "raw faiss HNSW32 build, one add    : {:>6.1} s ({:.0} vectors/s)",
        raw.as_secs_f64(),
        n as f64 / raw.as_secs_f64()
    );
    let db = Database::open(
        opt.data.join("node"),
        NodeConfig::with_data_dir(&opt.data.join("node")),
    )
    .await?;
    let (_, ours) = insert_fmnist(&db, "import", &base, d).await?;
    println!(
        "vektagraf batch insert through raft: {:>6.1} s ({:.0} vectors/s, {:.2}x raw faiss's time)",
        ours.as_secs_f64(),
        n as f64 / ours.as_secs_f64(),
        ours.as_secs_f64() / raw.as_secs_f64()
    );
    db.close().await?;
    Ok(())
}

fn limit_bench() {
    use std::hint::black_box;
    use std::num::NonZeroU32;
    const TENANTS: usize = 1000;
    const ITERS: usize = 5_000_000;
    let tiers = crate::Tiers::default();
    let limiters: Vec<Arc<TenantLimiter>> = (0..TENANTS)
        .map(|i| {
            let mut c = TenantConfig::for_tier(
                &tiers,
                &format!("t{i}"),
                "t",
                "tier2",
                serde_json::json!({}),
            )
            .unwrap_or_else(|_| unreachable!());
            c.rate_limit.max_requests = u64::MAX / 8;
            c.rate_limit
                .operation_types
                .insert(OperationType::Read, u64::MAX / 8);
            c.request_limit.daily_limit = u64::MAX / 8;
            c.request_limit.monthly_limit = u64::MAX / 8;
            TenantLimiter::new(&c, QuotaCounters::default())
        })
        .collect();
    let t = Instant::now();
    for i in 0..ITERS {
        let p = limiters[i % TENANTS].admit(OperationType::Read, crate::util::coarse_now_ms());
        black_box(&p);
    }
    let ours = t.elapsed().as_nanos() as f64 / ITERS as f64;

    let gov = governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX));
    for k in 0..TENANTS as u32 {
        let _ = gov.check_key(&k);
    }
    let t = Instant::now();
    for i in 0..ITERS {
        black_box(gov.check_key(&((i % TENANTS) as u32)).is_ok());
    }
    let theirs = t.elapsed().as_nanos() as f64 / ITERS as f64;
    println!("\n## per-request limit check, {TENANTS} tenants, single thread");
    println!("vektagraf admit (op allowed, concurrency, daily, monthly, rate, op rate; incl. clock read): {ours:.1} ns");
    println!("governor keyed check_key (rate only)                                                  : {theirs:.1} ns  ({:.2}x ours)", ours / theirs);
}
