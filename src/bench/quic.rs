//! `vektagraf bench quic`: get, put, search and a batch of 64 searches
//! (`search64`, rows counted in requests) over QUIC on loopback against
//! the same operations through the embedded API, in one run, with 1 and
//! 64 concurrent tasks. The QUIC client runs in a process of its
//! own (`vektagraf bench quic-client`, started by the bench for each row),
//! as a user's would: it does not share the server's runtime or cores'
//! caches, and its cost is not counted against the server's.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions};
use crate::proto::wire::KeyKind;
use crate::proto::{CollectionSpec, NewObject, VectorSearch, WriteOp};
use crate::{Database, NodeConfig, Session, TenantConfig};

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory.
    pub data: PathBuf,
    /// Seconds per measurement.
    pub seconds: u64,
}

type Op = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

async fn measure(op: Op, tasks: usize, secs: u64) -> (f64, f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let s = Instant::now();
                if op(i).await {
                    lat.push(s.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
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
    (
        count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        p(0.5),
        p(0.99),
    )
}

fn vec16(i: u64) -> Vec<f32> {
    (0..16)
        .map(|j| ((i * 7 + j * 13) % 101) as f32 / 101.0)
        .collect()
}

/// Runs the benchmark and prints its figures.
pub async fn run(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    let db = Database::open(&opt.data, NodeConfig::with_data_dir(&opt.data)).await?;
    let mut cfg = TenantConfig::for_tier(
        &db.tiers(),
        "bench",
        "bench",
        "custom",
        serde_json::json!({}),
    )?;
    cfg.rate_limit.max_requests = u64::MAX / 8;
    cfg.request_limit.daily_limit = u64::MAX / 8;
    cfg.request_limit.monthly_limit = u64::MAX / 8;
    cfg.request_limit.concurrent_limit = 10_000;
    cfg.request_limit.complexity_limit = u64::MAX / 8;
    cfg.request_limit.max_result_size = 1_000_000;
    cfg.storage_limit.max_objects = u64::MAX / 8;
    cfg.storage_limit.max_vectors = u64::MAX / 8;
    cfg.storage_limit.max_storage_bytes = u64::MAX / 8;
    db.create_tenant(cfg).await?;
    db.create_user("bench", "b").await?;
    let s = db.session("bench", "b").await?;
    s.create_collection(CollectionSpec::vectors("v", 16))
        .await?;
    let ops: Vec<WriteOp> = (0..5000)
        .map(|i| {
            WriteOp::Put(
                NewObject::new("v", &format!("k{i}"), serde_json::json!({"i": i}))
                    .with_vector(vec16(i)),
            )
        })
        .collect();
    anyhow::ensure!(
        s.batch(ops).await.iter().all(|r| r.is_ok()),
        "preload failed"
    );

    let mut settings = db.config().server.clone();
    settings.listen = "127.0.0.1:0".parse()?;
    let router = crate::router::Router::start(db.clone(), None, Default::default(), None).await?;
    let server = crate::net::Server::start(db.clone(), router.clone(), settings).await?;
    let (key, _) = db
        .create_key(KeyKind::Tenant, Some("bench"), Some("b"), None)
        .await?;
    println!(
        "# vektagraf bench quic: loopback, the client in its own process on one connection, {} s per row",
        opt.seconds
    );
    println!(
        "{:<8} {:>5}  {:>12} {:>8} {:>8}  {:>12} {:>8} {:>8}  {:>6}",
        "op", "tasks", "embedded/s", "p50 ms", "p99 ms", "quic/s", "p50 ms", "p99 ms", "ratio"
    );
    for name in ["get", "put", "search", "search64"] {
        for tasks in [1usize, 64] {
            let emb = embedded_op(name, s.clone());
            let (e, e50, e99) = measure(emb, tasks, opt.seconds).await;
            let (q, q50, q99) = client_process(
                &ClientRun {
                    addr: server.local_addr,
                    ca: server.cert_path.clone(),
                    op: name.to_string(),
                    tasks,
                    seconds: opt.seconds,
                },
                &key,
            )
            .await?;
            println!("{name:<8} {tasks:>5}  {e:>12.0} {e50:>8.3} {e99:>8.3}  {q:>12.0} {q50:>8.3} {q99:>8.3}  {:>6.2}", q / e);
        }
    }
    server.shutdown().await;
    router.stop();
    db.close().await?;
    Ok(())
}

/// What the client process measures.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// The server.
    pub addr: std::net::SocketAddr,
    /// Its certificate.
    pub ca: PathBuf,
    /// `get`, `put` or `search`.
    pub op: String,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Seconds measured (after one of warm-up).
    pub seconds: u64,
}

/// The environment variable that hands the client process its key (not
/// on its command line, where `ps` shows it).
pub const KEY_ENV: &str = "VEKTAGRAF_BENCH_KEY";

/// Runs one row's QUIC half in a child process: (ops/s, p50 ms, p99 ms).
async fn client_process(run: &ClientRun, key: &str) -> anyhow::Result<(f64, f64, f64)> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["bench", "quic-client", "--server"])
        .arg(run.addr.to_string())
        .arg("--cert")
        .arg(&run.ca)
        .args(["--op", &run.op, "--tasks"])
        .arg(run.tasks.to_string())
        .arg("--seconds")
        .arg(run.seconds.to_string())
        .env(KEY_ENV, key)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bench quic-client failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Ok((f("rate"), f("p50_ms"), f("p99_ms")))
}

/// The client half (`vektagraf bench quic-client`): connects, warms up
/// for a second, measures, and prints one JSON line.
pub async fn run_client(run: ClientRun) -> anyhow::Result<()> {
    let key = std::env::var(KEY_ENV).map_err(|_| anyhow::anyhow!("{KEY_ENV} is not set"))?;
    let mut o = ClientOptions::new(vec![run.addr], &key, &run.ca)?;
    o.max_retries = 0;
    let c = Arc::new(Client::connect(o).await?);
    let op = quic_op(&run.op, c.clone());
    measure(op.clone(), run.tasks, 1).await;
    let (rate, p50, p99) = measure(op, run.tasks, run.seconds).await;
    c.close().await;
    println!(
        "{}",
        serde_json::json!({"rate": rate, "p50_ms": p50, "p99_ms": p99})
    );
    Ok(())
}

/// 64 searches in one batch request (`search64`; a batch is never
/// cached, so both sides search FAISS).
fn batch64(i: u64) -> Vec<VectorSearch> {
    (0..64)
        .map(|j| VectorSearch {
            collection: "v".into(),
            vector: vec16(i * 64 + j),
            k: 10,
            filter: None,
        })
        .collect()
}

fn embedded_op(name: &str, s: Session) -> Op {
    match name {
        "get" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move { s.get(&format!("k{}", i % 5000)).await.is_ok() })
        }),
        "put" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move {
                s.put(NewObject::new(
                    "v",
                    &format!("p{i}"),
                    serde_json::json!({"i": i}),
                ))
                .await
                .is_ok()
            })
        }),
        "search64" => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move { s.vector_search_batch(batch64(i), false).await.is_ok() })
        }),
        _ => Arc::new(move |i| {
            let s = s.clone();
            Box::pin(async move {
                s.vector_search_ids(VectorSearch {
                    collection: "v".into(),
                    vector: vec16(i),
                    k: 10,
                    filter: None,
                })
                .await
                .is_ok()
            })
        }),
    }
}

fn quic_op(name: &str, c: Arc<Client>) -> Op {
    match name {
        "get" => Arc::new(move |i| {
            let c = c.clone();
            Box::pin(async move { c.get(&format!("k{}", i % 5000)).await.is_ok() })
        }),
        "put" => Arc::new(move |i| {
            let c = c.clone();
            Box::pin(async move {
                c.put(NewObject::new(
                    "v",
                    &format!("q{i}"),
                    serde_json::json!({"i": i}),
                ))
                .await
                .is_ok()
            })
        }),
        "search64" => Arc::new(move |i| {
            let c = c.clone();
            Box::pin(async move { c.search_batch(batch64(i), false).await.is_ok() })
        }),
        _ => Arc::new(move |i| {
            let c = c.clone();
            Box::pin(async move {
                c.search(
                    VectorSearch {
                        collection: "v".into(),
                        vector: vec16(i),
                        k: 10,
                        filter: None,
                    },
                    false,
                )
                .await
                .is_ok()
            })
        }),
    }
}
