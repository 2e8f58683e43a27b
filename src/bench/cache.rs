//! `vektagraf bench cache`: repeated reads (get, filtered query, vector
//! search, and search with a trickle of writes) through the embedded API,
//! on two tenants of one node holding the same data: one with the read
//! cache off (`cache_max_entries = 0`), one with the default cache. Each
//! row runs the same operation stream against both, one after the other,
//! and prints throughput, p50/p99 and the cache's hit rate side by side.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::{
    CollectionSpec, Filter, NewObject, OperationType, Query, VectorSearch, WriteOp,
};
use crate::{Database, NodeConfig, Session, TenantConfig};

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Seconds per measurement.
    pub seconds: u64,
    /// Objects in each tenant.
    pub objects: usize,
    /// Concurrent tasks, one row each.
    pub tasks: Vec<usize>,
}

/// Dimension of the bench vectors.
const DIM: usize = 64;
/// Distinct reads of each kind that repeat (all fit in the default
/// 1,000 entries).
const HOT: u64 = 100;
/// Buckets of the `bucket` property the queries filter on.
const BUCKETS: u64 = 50;

type Op = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Throughput (ops/s), p50 and p99 (ms), and failed operations.
struct Figures {
    per_s: f64,
    p50: f64,
    p99: f64,
    failed: u64,
}

async fn measure(op: Op, tasks: usize, secs: u64) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let (count, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (op, stop, count, failed) = (op.clone(), stop.clone(), count.clone(), failed.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t as u64 * 7919;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                if op(i).await {
                    lat.push(s.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap_or_default());
    }
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Figures {
        per_s: count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        p50: p(0.5),
        p99: p(0.99),
        failed: failed.load(Ordering::Relaxed),
    }
}

fn vector(i: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| ((i * 31 + j * 17) % 113) as f32 / 113.0)
        .collect()
}

fn unlimited(db: &Database, id: &str, settings: serde_json::Value) -> anyhow::Result<TenantConfig> {
    let mut cfg = TenantConfig::for_tier(&db.tiers(), id, id, "custom", settings)?;
    cfg.rate_limit.max_requests = u64::MAX / 8;
    for op in OperationType::ALL {
        cfg.rate_limit.operation_types.insert(op, 0);
    }
    let q = &mut cfg.request_limit;
    q.daily_limit = u64::MAX / 8;
    q.monthly_limit = u64::MAX / 8;
    q.concurrent_limit = 10_000;
    q.complexity_limit = 1_000_000;
    let s = &mut cfg.storage_limit;
    s.max_objects = u64::MAX / 8;
    s.max_vectors = u64::MAX / 8;
    s.max_storage_bytes = u64::MAX / 8;
    Ok(cfg)
}

async fn load(db: &Database, cfg: TenantConfig, objects: usize) -> anyhow::Result<Session> {
    let id = cfg.tenant_id.clone();
    db.create_tenant(cfg).await?;
    db.create_user(&id, "b").await?;
    let s = db.session(&id, "b").await?;
    s.create_collection(CollectionSpec::vectors("docs", DIM as u32))
        .await?;
    let ops: Vec<WriteOp> = (0..objects as u64)
        .map(|i| {
            let props =
                serde_json::json!({"bucket": i % BUCKETS, "title": format!("document {i}")});
            WriteOp::Put(NewObject::new("docs", &format!("d{i}"), props).with_vector(vector(i)))
        })
        .collect();
    anyhow::ensure!(
        s.batch(ops).await.iter().all(|r| r.is_ok()),
        "preload of {id} failed"
    );
    Ok(s)
}

fn search(i: u64) -> VectorSearch {
    VectorSearch {
        collection: "docs".into(),
        vector: vector(i % HOT),
        k: 10,
        filter: None,
    }
}

/// The operation of a row, on session `s`.
fn op(name: &str, s: Session) -> Op {
    match name {
        "get" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move { s.get(&format!("d{}", (i * 13) % HOT)).await.is_ok() })
        }),
        "query" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move {
                let Ok(filter) = Filter::parse(&format!(r#"{{"bucket": {}}}"#, i % BUCKETS)) else {
                    return false;
                };
                let q = Query {
                    collection: "docs".into(),
                    filter: Some(filter),
                    limit: 20,
                };
                s.query(q).await.is_ok()
            })
        }),
        "search" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move { s.vector_search_ids(search(i)).await.is_ok() })
        }),
        // One write in 50 operations: each invalidates the tenant's cache.
        _ => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move {
                if i % 50 == 0 {
                    let o = NewObject::new(
                        "docs",
                        &format!("w{}", i % 1000),
                        serde_json::json!({"bucket": 0}),
                    )
                    .with_vector(vector(i));
                    s.put(o).await.is_ok()
                } else {
                    s.vector_search_ids(search(i)).await.is_ok()
                }
            })
        }),
    }
}

/// Runs the benchmark and prints its figures.
pub async fn run(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    let db = Database::open(&opt.data, NodeConfig::with_data_dir(&opt.data)).await?;
    let off = unlimited(&db, "nocache", serde_json::json!({"cache_max_entries": 0}))?;
    let on = unlimited(&db, "cached", serde_json::json!({}))?;
    let loading = Instant::now();
    let plain = load(&db, off, opt.objects).await?;
    let cached = load(&db, on, opt.objects).await?;
    println!(
        "# vektagraf bench cache: embedded API, {} objects ({DIM}-d vectors, flat index) per tenant, \
         {HOT} distinct reads repeated per kind, {} s per cell (loaded in {:.1} s)",
        opt.objects,
        opt.seconds,
        loading.elapsed().as_secs_f64()
    );
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "operation",
        "tasks",
        "no cache ops/s",
        "p50 / p99 ms",
        "cache ops/s",
        "p50 / p99 ms",
        "speed-up",
        "hit rate",
    ]);
    let kinds = [
        ("get", "get by id"),
        ("query", "filtered query (limit 20)"),
        ("search", "vector search k=10"),
        ("mixed", "search, 1 write in 50"),
    ];
    let mut failed = 0;
    for (name, label) in kinds {
        for &tasks in &opt.tasks {
            let a = measure(op(name, plain.clone()), tasks, opt.seconds).await;
            let before = db.cache_usage("cached")?;
            let b = measure(op(name, cached.clone()), tasks, opt.seconds).await;
            let after = db.cache_usage("cached")?;
            let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
            let rate = hits as f64 / (hits + misses).max(1) as f64;
            failed += a.failed + b.failed;
            table.add_row([
                label.to_string(),
                tasks.to_string(),
                format!("{:.0}", a.per_s),
                format!("{:.3} / {:.3}", a.p50, a.p99),
                format!("{:.0}", b.per_s),
                format!("{:.3} / {:.3}", b.p50, b.p99),
                format!("{:.2}x", b.per_s / a.per_s.max(1e-9)),
                format!("{:.1}%", rate * 100.0),
            ]);
        }
    }
    println!("{table}");
    let (used, max) = db.cache_memory();
    let u = db.cache_usage("cached")?;
    println!(
        "cache of tenant `cached`: {} entries, {} KiB; node cache {} KiB of {} KiB; failed operations: {failed}",
        u.entries,
        u.bytes / 1024,
        used / 1024,
        max / 1024
    );
    // Sessions hold their tenants: they go before the database closes.
    drop((plain, cached));
    db.close().await?;
    Ok(())
}
