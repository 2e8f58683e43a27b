//! `vektagraf bench migrate`: an online tenant move on a real 4-node
//! cluster on loopback, under a light read/write load, beside its
//! baselines, in one run.
//!
//! 1. Four node processes (replication factor 3, no snapshot bandwidth
//!    cap, `raft.snapshot_every = 5000`); a tenant with one HNSW32
//!    collection of Fashion-MNIST vectors with properties (train and test
//!    images, repeated with a small per-pass offset past 70,000), loaded
//!    through the client in batches of 500.
//! 2. Small writes until the shard leader takes a snapshot, so the log
//!    holds no loaded vectors and the new replica must get the snapshot
//!    (RocksDB checkpoint and FAISS files). Its files are hard-linked
//!    aside for the raw copy.
//! 3. Light load (paced writes, linearizable gets and searches from
//!    clients on every node): `--seconds` before the move, then during
//!    it, then 2 s after.
//! 4. `move_tenant` from the shard leader's node to the node without a
//!    replica; the leader's `ShardInfo` and the job are polled every
//!    50 ms (snapshot stream progress, the target's matched index, the
//!    leader), and a probe sends stale searches to the target (without
//!    following the leader) once the leader reports the target caught up
//!    to the snapshot, until the target answers with the reference hits.
//! 5. With the cluster stopped: the same snapshot files streamed between
//!    two in-process endpoints of the same peer transport
//!    ([`PeerNet::send_snapshot`], same quinn transport config, same
//!    receiving code, no cap, a receiver that only stores the files), and
//!    an HNSW index built from scratch from the same vectors in memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::future::BoxFuture;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use super::cluster::{client, start_cluster_with, Nodes};
use super::engine::{load_idx_images, FASHION_MNIST_DIR};
use crate::client::{Client, ClientOptions};
use crate::net::peer::{PeerNet, PeerRefusal, PeerRequest, PeerResponse, PeerService};
use crate::proto::wire::{KeyKind, Request, Response};
use crate::proto::{CollectionSpec, Error, IndexKind, JobState, NewObject, VectorSearch, WriteOp};
use crate::{TenantConfig, Tiers};

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Vectors in the tenant (Fashion-MNIST repeated past 70,000).
    pub vectors: usize,
    /// Seconds of load measured before the move.
    pub seconds: u64,
    /// First of the ports used (client `+1..4`, peer `+101..104`).
    pub base_port: u16,
    /// Snapshot stream cap of the cluster, MB/s (0: none).
    pub snapshot_mb_per_s: u64,
}

const TENANT: &str = "bench";
const COLLECTION: &str = "fmnist";
const BATCH: usize = 500;
const SNAPSHOT_EVERY: u64 = 5000;
const POLL: Duration = Duration::from_millis(50);
const NODES: usize = 4;
const CLASSES: [&str; 10] = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

/// Fashion-MNIST train + test images as f32 rows, and their labels.
struct Images {
    dim: usize,
    rows: Vec<f32>,
    labels: Vec<u8>,
}

impl Images {
    fn load() -> anyhow::Result<Images> {
        let dir = Path::new(FASHION_MNIST_DIR);
        let (dim, mut rows) = load_idx_images(&dir.join("train-images-idx3-ubyte.gz"), 60_000)?;
        let (_, test) = load_idx_images(&dir.join("t10k-images-idx3-ubyte.gz"), 10_000)?;
        rows.extend(test);
        let mut labels = load_idx_labels(&dir.join("train-labels-idx1-ubyte.gz"))?;
        labels.extend(load_idx_labels(&dir.join("t10k-labels-idx1-ubyte.gz"))?);
        anyhow::ensure!(labels.len() * dim == rows.len(), "labels and images differ");
        Ok(Images { dim, rows, labels })
    }

    fn base(&self) -> usize {
        self.labels.len()
    }

    /// Vector `i`: image `i % base`, offset by its pass so repeats differ.
    fn vector(&self, i: usize) -> Vec<f32> {
        let (b, pass) = (i % self.base(), (i / self.base()) as f32);
        self.rows[b * self.dim..(b + 1) * self.dim]
            .iter()
            .enumerate()
            .map(|(j, x)| x + pass * ((j % 7) as f32))
            .collect()
    }

    fn object(&self, i: usize) -> NewObject {
        let b = i % self.base();
        let label = self.labels[b] as usize;
        NewObject::new(
            COLLECTION,
            &i.to_string(),
            serde_json::json!({
                "label": label,
                "class": CLASSES[label % 10],
                "pass": i / self.base(),
                "source": if b < 60_000 { "train" } else { "test" },
                "image": b,
            }),
        )
        .with_vector(self.vector(i))
    }
}

fn load_idx_labels(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .with_context(|| format!("{} (apt-get install dataset-fashion-mnist)", path.display()))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() >= 8 && bytes[..4] == [0, 0, 8, 1],
        "not an IDX1 u8 file"
    );
    Ok(bytes[8..].to_vec())
}

fn unlimited() -> anyhow::Result<TenantConfig> {
    let mut c = TenantConfig::for_tier(
        &Tiers::default(),
        TENANT,
        TENANT,
        "custom",
        serde_json::json!({ "max_batch_size": BATCH }),
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

fn spec(dim: usize) -> CollectionSpec {
    CollectionSpec::vectors(COLLECTION, dim as u32).index(IndexKind::Hnsw {
        m: 32,
        ef_search: 64,
    })
}

async fn tenant_client(nodes: &Nodes, i: usize, key: &str) -> anyhow::Result<Client> {
    let mut o = ClientOptions::new(
        vec![nodes.client_addrs[i % nodes.client_addrs.len()]],
        key,
        &nodes.dir.join("certs/ca.crt"),
    )?;
    o.max_retries = 10;
    o.max_batch_size = BATCH;
    o.request_timeout = Duration::from_secs(120);
    Ok(Client::connect(o).await?)
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Hard-links every file under `from` into `to` (same layout).
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            link_tree(&e.path(), &dst)?;
        } else {
            std::fs::hard_link(e.path(), dst)?;
        }
    }
    Ok(())
}

/// The newest complete snapshot directory of a shard (`meta.bin` present).
fn snapshot_dir(shard: &Path) -> Option<PathBuf> {
    std::fs::read_dir(shard.join("snapshots"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("meta.bin").exists())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Write,
    Read,
    Search,
}

/// One client request of the light load: start (s since the bench's
/// epoch), latency (ms), success.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    ms: f64,
    kind: Kind,
    ok: bool,
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Sample>, Vec<String>)>>,
}

/// Paced clients, one connection each, spread over the nodes: 4 writers
/// (small puts, every 50 ms), 2 readers (linearizable gets of loaded
/// objects, every 50 ms), 1 searcher (k = 10, every 100 ms).
async fn start_load(
    nodes: &Nodes,
    key: &str,
    epoch: Instant,
    vectors: usize,
    query: Vec<f32>,
) -> anyhow::Result<Load> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let plan = [
        (Kind::Write, 50),
        (Kind::Write, 50),
        (Kind::Write, 50),
        (Kind::Write, 50),
        (Kind::Read, 50),
        (Kind::Read, 50),
        (Kind::Search, 100),
    ];
    for (i, (kind, pace)) in plan.into_iter().enumerate() {
        let c = tenant_client(nodes, i, key).await?;
        let (stop, query) = (stop.clone(), query.clone());
        tasks.push(tokio::spawn(async move {
            let (mut out, mut errors) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let start = Instant::now();
                let r: Result<(), String> = match kind {
                    Kind::Write => c
                        .put(NewObject::new(
                            "kv",
                            &format!("load-{i}-{n}"),
                            serde_json::json!({ "n": n, "pad": "x".repeat(200) }),
                        ))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Kind::Read => {
                        let id = ((n * 7919 + i * 104_729) % vectors).to_string();
                        match c.get(&id).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(format!("object {id} not found")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Kind::Search => c
                        .search(
                            VectorSearch {
                                collection: COLLECTION.into(),
                                vector: query.clone(),
                                k: 10,
                                filter: None,
                            },
                            false,
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                let ms = start.elapsed().as_secs_f64() * 1000.0;
                if let Err(e) = &r {
                    if errors.len() < 5 {
                        errors.push(e.clone());
                    }
                }
                out.push(Sample {
                    at: start.duration_since(epoch).as_secs_f64(),
                    ms,
                    kind,
                    ok: r.is_ok(),
                });
                tokio::time::sleep(Duration::from_millis(pace)).await;
            }
            (out, errors)
        }));
    }
    Ok(Load { stop, tasks })
}

/// What the pollers saw of the move, in seconds since the bench's epoch.
#[derive(Default, Debug)]
struct Seen {
    /// Job states, each with when it was first seen.
    states: Vec<(JobState, f64)>,
    reason: Option<String>,
    /// Snapshot stream to the target: first seen, all bytes sent, gone
    /// (installed and answered), bytes in all.
    stream_first: Option<f64>,
    stream_sent: Option<f64>,
    stream_gone: Option<f64>,
    stream_bytes: u64,
    streams: usize,
    /// The leader reports the target's replica past index 0.
    target_matched: Option<f64>,
    /// The target answered a stale search with the reference hits.
    target_search: Option<f64>,
    /// Leader changes: (when, new leader node).
    leaders: Vec<(f64, u64)>,
    /// Status polls that failed (they are not client load).
    poll_errors: u64,
}

fn state_at(seen: &Seen, s: JobState) -> Option<f64> {
    seen.states.iter().find(|(x, _)| *x == s).map(|(_, t)| *t)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn lat(samples: &[Sample], from: f64, to: f64, kinds: &[Kind]) -> (f64, f64, usize) {
    let mut v: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok && s.at >= from && s.at < to && kinds.contains(&s.kind))
        .map(|s| s.ms)
        .collect();
    let n = v.len();
    (pct(&mut v, 0.5), pct(&mut v, 0.99), n)
}

/// Receives a snapshot stream and only keeps its files.
struct Sink {
    dir: PathBuf,
    n: AtomicUsize,
}

impl PeerService for Sink {
    fn handle(&self, _from: u64, _req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async { PeerResponse::Pong })
    }

    fn admit(&self, _node: u64, _incarnation: u64) -> Result<(), PeerRefusal> {
        Ok(())
    }

    fn snapshot_staging(&self, _from: u64, _group: u64) -> Result<PathBuf, Box<PeerResponse>> {
        let d = self
            .dir
            .join(format!("in-{}", self.n.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&d)
            .map_err(|e| Box::new(PeerResponse::Failed(Error::storage(e))))?;
        Ok(d)
    }

    fn install_snapshot(
        &self,
        _group: u64,
        _vote: crate::raft::Vote,
        _meta: crate::raft::SnapshotMeta,
        dir: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        // Keep the files (moved out of the staging directory the
        // transport removes after the answer, so no deletion is timed).
        let kept = dir.with_extension("kept");
        Box::pin(async move {
            let _ = tokio::fs::rename(&dir, &kept).await;
            PeerResponse::Pong
        })
    }
}

/// The same files over the same peer transport, between two endpoints
/// in this process: (seconds until every byte was sent, seconds until
/// the receiver answered after its fsyncs).
async fn raw_copy(work: &Path, files: &Path) -> anyhow::Result<(f64, f64)> {
    let certs = work.join("raw-certs");
    crate::net::tls::make_certs(&certs, &[1, 2], &[])?;
    let ca = crate::net::tls::read_certs(&certs.join("ca.crt"))?;
    let id = |n: u64| {
        crate::net::tls::load_identity(
            &certs.join(format!("node-{n}.crt")),
            &certs.join(format!("node-{n}.key")),
        )
    };
    let lo: SocketAddr = "127.0.0.1:0".parse()?;
    let sender = PeerNet::bind(1, lo, &ca, &id(1)?)?;
    let receiver = PeerNet::bind(2, lo, &ca, &id(2)?)?;
    let sink_dir = work.join("raw-received");
    std::fs::create_dir_all(&sink_dir)?;
    receiver.serve(Arc::new(Sink {
        dir: sink_dir.clone(),
        n: AtomicUsize::new(0),
    }));
    sender.serve(Arc::new(Sink {
        dir: work.join("raw-unused"),
        n: AtomicUsize::new(0),
    }));
    sender.set_addr(2, receiver.local_addr()?);
    receiver.set_addr(1, sender.local_addr()?);
    sender.set_snapshot_rate(0);
    let meta = crate::raft::SnapshotMeta {
        last_log_id: None,
        last_membership: crate::raft::StoredMembership::default(),
    };
    let sent_at = Arc::new(Mutex::new(None::<f64>));
    let start = Instant::now();
    let watch = {
        let (sender, sent_at) = (sender.clone(), sent_at.clone());
        tokio::spawn(async move {
            loop {
                if let Some((_, sent, all)) = sender.snapshot_progress(7).first().copied() {
                    if all > 0 && sent >= all {
                        *sent_at.lock() = Some(start.elapsed().as_secs_f64());
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let r = sender
        .send_snapshot(
            2,
            7,
            crate::raft::Vote::new(1, 1),
            meta,
            files,
            Duration::from_secs(600),
        )
        .await;
    let done = start.elapsed().as_secs_f64();
    watch.abort();
    sender.close().await;
    receiver.close().await;
    anyhow::ensure!(
        matches!(r, Ok(PeerResponse::Pong)),
        "raw copy failed: {r:?}"
    );
    let received = dir_bytes(&sink_dir);
    let sent = dir_bytes(files);
    anyhow::ensure!(
        received == sent,
        "raw copy received {received} of {sent} bytes"
    );
    let _ = std::fs::remove_dir_all(&sink_dir);
    let at = *sent_at.lock();
    Ok((at.unwrap_or(done), done))
}

/// Stops node `i` (SIGTERM, by PID) and starts it again on its config.
async fn restart_node(nodes: &mut Nodes, i: usize) -> anyhow::Result<()> {
    let log = nodes.dir.join(format!("node-{}.log", i + 1));
    let child = &mut nodes.children[i];
    // SAFETY: kill(2) on a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = |l: &Path| {
        std::fs::read_to_string(l)
            .map(|s| s.matches("listening on").count())
            .unwrap_or(0)
    };
    let before = started(&log);
    let f = std::fs::OpenOptions::new().append(true).open(&log)?;
    *child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(nodes.dir.join(format!("node-{}.toml", i + 1)))
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while started(&log) <= before {
        anyhow::ensure!(Instant::now() < deadline, "node {} did not restart", i + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Runs the benchmark and prints its figures.
pub async fn run(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    std::fs::create_dir_all(&opt.data)?;
    let epoch = Instant::now();
    let images = Arc::new(Images::load()?);
    let dim = images.dim;
    println!(
        "# vektagraf bench migrate ({} cores): {} Fashion-MNIST vectors x {dim} with properties, HNSW32, \
         4 nodes on loopback, replication 3, snapshot cap {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opt.vectors,
        if opt.snapshot_mb_per_s == 0 {
            "none (cluster.snapshot_mb_per_s = 0)".to_string()
        } else {
            format!("{} MB/s", opt.snapshot_mb_per_s)
        }
    );
    let extra = format!(
        "snapshot_mb_per_s = {}\nrebalance_on_join = false\nmove_stall_timeout_ms = 600000\n\
         [raft]\nsnapshot_every = {SNAPSHOT_EVERY}\nkeep_after_snapshot = 100\n\
         install_snapshot_timeout_ms = 600000\n",
        opt.snapshot_mb_per_s
    );
    let work = opt.data.join("cluster");
    let mut nodes = start_cluster_with(&work, NODES, opt.base_port, &extra)?;
    let ca = work.join("certs/ca.crt");
    let admin_key = std::fs::read_to_string(work.join("node-1/admin.key"))?;
    let admin = client(nodes.client_addrs[0], admin_key.trim(), &ca).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while admin.cluster_nodes().await.map_or(0, |n| n.len()) < NODES {
        anyhow::ensure!(Instant::now() < deadline, "the 4 nodes did not join");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin.create_tenant(unlimited()?).await?;
    admin.create_user(TENANT, "b").await?;
    let (key, _) = admin
        .create_key(KeyKind::Tenant, Some(TENANT), Some("b"), None)
        .await?;
    let c = tenant_client(&nodes, 0, &key).await?;
    c.create_collection(spec(dim)).await?;
    c.create_collection(CollectionSpec::plain("kv")).await?;
    // The move driver runs on group 0's leader and cannot yet hand over
    // a leadership its own node holds (it dials itself): keep the
    // tenant's leader off that node, restarting the node that leads
    // both until they differ.
    for attempt in 0.. {
        let meta = admin
            .cluster_nodes()
            .await?
            .into_iter()
            .find(|n| n.leader)
            .map(|n| n.id);
        let shard = admin.shard_info(TENANT).await?.leader_node;
        if shard.is_some() && meta.is_some() && shard != meta {
            break;
        }
        anyhow::ensure!(attempt < 5, "the tenant's leader stays on group 0's leader");
        if let Some(n) = meta.filter(|n| Some(*n) == shard) {
            println!("restarting node {n} (it leads group 0 and the tenant)");
            restart_node(&mut nodes, n as usize - 1).await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // 1. Load.
    let t = Instant::now();
    let pb = bar(
        opt.vectors as u64,
        "load  [{bar:40}] {pos}/{len} vectors ({per_sec}, eta {eta})",
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for w in 0..4 {
        let c = tenant_client(&nodes, w, &key).await?;
        let (images, next, pb, n) = (images.clone(), next.clone(), pb.clone(), opt.vectors);
        loaders.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= n {
                    return anyhow::Ok(());
                }
                let ops: Vec<WriteOp> = (from..(from + BATCH).min(n))
                    .map(|i| WriteOp::Put(images.object(i)))
                    .collect();
                let len = ops.len() as u64;
                for r in c.batch(ops).await {
                    r.context("loading")?;
                }
                pb.inc(len);
            }
        }));
    }
    for l in loaders {
        l.await??;
    }
    pb.finish_and_clear();
    let load_secs = t.elapsed().as_secs_f64();
    println!(
        "loaded {} vectors through raft in {load_secs:.1} s ({:.0} vectors/s)",
        opt.vectors,
        opt.vectors as f64 / load_secs
    );

    // 2. Small writes up to the leader's next snapshot.
    let info = admin.shard_info(TENANT).await?;
    let leader = info.leader_node.context("the tenant has no leader")?;
    let group = info.group;
    let shard = work.join(format!("node-{leader}/shards/{group}"));
    let filler = (SNAPSHOT_EVERY - info.last_log_index % SNAPSHOT_EVERY + 20) as usize;
    let next = Arc::new(AtomicUsize::new(0));
    let mut fills = Vec::new();
    for w in 0..16 {
        let c = tenant_client(&nodes, w, &key).await?;
        let next = next.clone();
        fills.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= filler {
                    return anyhow::Ok(());
                }
                c.put(NewObject::new(
                    "kv",
                    &format!("fill-{i}"),
                    serde_json::json!({ "i": i }),
                ))
                .await?;
            }
        }));
    }
    for f in fills {
        f.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let snap = loop {
        if let Some(d) = snapshot_dir(&shard) {
            break d;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no snapshot appeared in {}",
            shard.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let raw_files = opt.data.join("raw-source");
    link_tree(&snap, &raw_files)?;
    let snap_bytes = dir_bytes(&raw_files);
    let faiss_bytes = dir_bytes(&raw_files.join("faiss"));
    let db_bytes = dir_bytes(&raw_files.join("db"));
    println!(
        "leader (node {leader}) snapshot after {filler} small writes: {:.1} MiB ({:.1} MiB RocksDB checkpoint, \
         {:.1} MiB FAISS files); shard directory on disk {:.1} MiB",
        snap_bytes as f64 / 1048576.0,
        db_bytes as f64 / 1048576.0,
        faiss_bytes as f64 / 1048576.0,
        dir_bytes(&shard) as f64 / 1048576.0
    );
    let before_usage = admin.shard_info(TENANT).await?.usage;

    // The reference answer for the target's probe.
    let query = images.vector(images.base() - 1);
    let reference = c
        .search(
            VectorSearch {
                collection: COLLECTION.into(),
                vector: query.clone(),
                k: 10,
                filter: None,
            },
            false,
        )
        .await?;
    let top = reference.first().map(|h| h.id.clone()).context("no hits")?;

    // 3. Load before the move.
    let load = start_load(&nodes, &key, epoch, opt.vectors, query.clone()).await?;
    tokio::time::sleep(Duration::from_secs(opt.seconds)).await;

    // 4. The move.
    let info = admin.shard_info(TENANT).await?;
    let source = info.leader_node.context("the tenant has no leader")?;
    let holders: Vec<u64> = info.replicas.iter().map(|r| r.1).collect();
    let target = (1..=NODES as u64)
        .find(|n| !holders.contains(n))
        .context("every node holds a replica")?;
    let t_move = epoch.elapsed().as_secs_f64();
    let job = admin.move_tenant(TENANT, target, Some(source)).await?;
    println!(
        "job {}: moving tenant {TENANT} (group {group}) from node {source} (leader) to node {target}",
        job.id
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let pb = bar(
        snap_bytes,
        "move  [{bar:40}] {bytes}/{total_bytes} {msg} ({elapsed})",
    );
    let prober = {
        let mut o = ClientOptions::new(vec![nodes.client_addrs[target as usize - 1]], &key, &ca)?;
        o.follow_leader = false;
        o.max_retries = 0;
        o.request_timeout = Duration::from_secs(5);
        let probe = Client::connect(o).await?;
        let (seen, done, query, top) = (seen.clone(), done.clone(), query.clone(), top.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if seen.lock().target_matched.is_some() {
                    let req = Request::Stale(Box::new(Request::Search {
                        search: VectorSearch {
                            collection: COLLECTION.into(),
                            vector: query.clone(),
                            k: 10,
                            filter: None,
                        },
                        with_objects: false,
                    }));
                    if let Ok(Response::Hits(h)) = probe.call(req).await {
                        if h.len() == 10 && h[0].id == top {
                            seen.lock().target_search = Some(epoch.elapsed().as_secs_f64());
                            return;
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(1800);
    let final_job = loop {
        let (i, j) = tokio::join!(admin.shard_info(TENANT), admin.job(job.id));
        let now = epoch.elapsed().as_secs_f64();
        let ended = {
            let mut s = seen.lock();
            match &i {
                Ok(i) => {
                    if let Some(l) = i.leader_node {
                        if s.leaders.last().map_or(l != source, |x| x.1 != l) {
                            s.leaders.push((now, l));
                        }
                    }
                    if s.target_matched.is_none()
                        && i.matched
                            .iter()
                            .any(|(r, ix)| *r == job.to_replica && *ix > 0)
                    {
                        s.target_matched = Some(now);
                    }
                    match i.snapshots.iter().find(|x| x.0 == target) {
                        Some(&(_, sent, all)) => {
                            if s.stream_first.is_none() || s.stream_gone.is_some() {
                                s.streams += 1;
                                s.stream_first = Some(now);
                                s.stream_sent = None;
                                s.stream_gone = None;
                            }
                            s.stream_bytes = all;
                            if sent >= all && s.stream_sent.is_none() {
                                s.stream_sent = Some(now);
                            }
                            pb.set_length(all);
                            pb.set_position(sent);
                        }
                        None => {
                            if s.stream_first.is_some() && s.stream_gone.is_none() {
                                s.stream_gone = Some(now);
                                s.stream_sent.get_or_insert(now);
                            }
                        }
                    }
                }
                Err(_) => s.poll_errors += 1,
            }
            match j {
                Ok(j) => {
                    if s.states.last().is_none_or(|x| x.0 != j.state) {
                        s.states.push((j.state, now));
                        pb.set_message(j.state.name());
                    }
                    if j.state.is_terminal() {
                        s.reason = j.reason.clone();
                        Some(j)
                    } else {
                        None
                    }
                }
                Err(_) => {
                    s.poll_errors += 1;
                    None
                }
            }
        };
        if let Some(j) = ended {
            break j;
        }
        anyhow::ensure!(Instant::now() < deadline, "the move did not end in 30 min");
        tokio::time::sleep(POLL).await;
    };
    let t_done = epoch.elapsed().as_secs_f64();
    pb.finish_and_clear();
    // The probe may still be on its way (the target answers after the
    // job ends only if it was slow to load).
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while seen.lock().target_search.is_none() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let _ = prober.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop.store(true, Ordering::Relaxed);
    let (mut samples, mut errors) = (Vec::new(), Vec::new());
    for t in load.tasks {
        let (s, e) = t.await?;
        samples.extend(s);
        errors.extend(e);
    }
    let after = admin.shard_info(TENANT).await?;
    drop(c);
    drop(admin);
    drop(nodes);

    // 5. Baselines, with the cluster stopped.
    let (raw_sent, raw_done) = raw_copy(&opt.data, &raw_files).await?;
    let rebuild = {
        let images = images.clone();
        let n = opt.vectors;
        tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
            let mut ix = crate::vector::VectorIndex::new(&spec(images.dim))?;
            let t = Instant::now();
            for from in (0..n).step_by(10_000) {
                let vs: Vec<Vec<f32>> = (from..(from + 10_000).min(n))
                    .map(|i| images.vector(i))
                    .collect();
                let items: Vec<(u64, &[f32])> = vs
                    .iter()
                    .enumerate()
                    .map(|(k, v)| ((from + k) as u64, v.as_slice()))
                    .collect();
                ix.add_many(&items)?;
            }
            Ok(t.elapsed().as_secs_f64())
        })
        .await??
    };

    // Figures.
    let s = seen.lock();
    let before = (t_move - opt.seconds as f64, t_move);
    let during = (t_move, t_done);
    let writes = [Kind::Write];
    let reads = [Kind::Read, Kind::Search];
    let failed = samples.iter().filter(|x| !x.ok).count();
    let hand_over_from = state_at(&s, JobState::TransferringLeadership)
        .map(|t| t - POLL.as_secs_f64() * 2.0)
        .unwrap_or(t_move);
    let hand_over_to = s.leaders.first().map(|x| x.0 + 1.0).unwrap_or(t_done);
    // Writes in flight at any time of the hand-over window.
    let mut pause: Vec<f64> = samples
        .iter()
        .filter(|x| {
            x.kind == Kind::Write && x.at < hand_over_to && x.at + x.ms / 1000.0 > hand_over_from
        })
        .map(|x| x.ms)
        .collect();
    let longest_pause = pause.iter().cloned().fold(0.0, f64::max);
    let pause_p99 = pct(&mut pause, 0.99);
    let longest_move_write = samples
        .iter()
        .filter(|x| x.kind == Kind::Write && x.at >= during.0 && x.at < during.1)
        .map(|x| x.ms)
        .fold(0.0, f64::max);
    let stream_secs = match (s.stream_first, s.stream_sent) {
        (Some(a), Some(b)) => (b - a).max(POLL.as_secs_f64()),
        _ => f64::NAN,
    };
    let moved = if s.stream_bytes > 0 {
        s.stream_bytes
    } else {
        snap_bytes
    };
    let move_mbs = mb(moved) / stream_secs;
    let raw_mbs = mb(snap_bytes) / raw_sent;
    let to_search = s.target_search.map(|t| t - t_move);

    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["measure", "vektagraf move", "baseline", "ratio", "target"]);
    table.add_row([
        "copy throughput".to_string(),
        format!(
            "{move_mbs:.0} MB/s ({:.0} MB snapshot stream in {stream_secs:.2} s)",
            mb(moved)
        ),
        format!(
            "{raw_mbs:.0} MB/s raw QUIC copy of the same files ({raw_sent:.2} s; {raw_done:.2} s with fsyncs)"
        ),
        format!("{:.2}x", move_mbs / raw_mbs),
        "≥ 0.5x".into(),
    ]);
    table.add_row([
        "move start → target answers a vector search".to_string(),
        to_search.map_or("never".into(), |t| format!("{t:.2} s")),
        format!(
            "{rebuild:.2} s HNSW32 build from scratch, in memory ({} vectors)",
            opt.vectors
        ),
        to_search.map_or("-".into(), |t| format!("{:.2}x", t / rebuild)),
        "< 1x".into(),
    ]);
    let row = |name: &str, kinds: &[Kind]| {
        let (b50, b99, bn) = lat(&samples, before.0, before.1, kinds);
        let (d50, d99, dn) = lat(&samples, during.0, during.1, kinds);
        [
            format!("client {name} p50 / p99"),
            format!("during: {d50:.2} / {d99:.2} ms ({dn} requests)"),
            format!("before: {b50:.2} / {b99:.2} ms ({bn} requests)"),
            format!("{:.2}x / {:.2}x", d50 / b50, d99 / b99),
            String::new(),
        ]
    };
    table.add_row(row("writes", &writes));
    table.add_row(row("reads (get, search)", &reads));
    table.add_row([
        "write pause at the leadership hand-over".to_string(),
        format!(
            "longest {longest_pause:.1} ms, p99 {pause_p99:.1} ms ({} writes in flight in the window)",
            pause.len()
        ),
        format!("longest write during the move {longest_move_write:.1} ms"),
        String::new(),
        "p99 ≤ 100 ms".into(),
    ]);
    table.add_row([
        "failed client requests".to_string(),
        format!("{failed} of {}", samples.len()),
        String::new(),
        String::new(),
        "0".into(),
    ]);
    println!();
    println!("{table}");
    println!();
    let fmt = |t: Option<f64>| t.map_or("-".into(), |t| format!("+{:.2} s", t - t_move));
    let states: Vec<String> = s
        .states
        .iter()
        .map(|(st, t)| format!("{st} {}", fmt(Some(*t))))
        .collect();
    println!(
        "job {} {}: {} (polled every {} ms; times from the move request)",
        final_job.id,
        final_job.state,
        states.join(", "),
        POLL.as_millis()
    );
    println!(
        "snapshot stream to node {target}: first seen {}, all bytes sent {}, installed and answered {} ({} stream(s)); \
         target caught up (leader's matched index) {}; leader moved to node {} {}; job done {}",
        fmt(s.stream_first),
        fmt(s.stream_sent),
        fmt(s.stream_gone),
        s.streams,
        fmt(s.target_matched),
        s.leaders.first().map_or(0, |x| x.1),
        fmt(s.leaders.first().map(|x| x.0)),
        fmt(Some(t_done)),
    );
    println!(
        "end to end: {:.0} MB moved in {:.1} s ({:.0} MB/s including snapshot stream, install, catch-up, \
         promotion, hand-over and removal)",
        mb(moved),
        t_done - t_move,
        mb(moved) / (t_done - t_move)
    );
    println!(
        "usage before {} objects / {} vectors, after {} objects / {} vectors (the load adds objects); \
         status polls that failed: {}",
        before_usage.objects, before_usage.vectors, after.usage.objects, after.usage.vectors, s.poll_errors
    );
    if final_job.state != JobState::Done {
        println!(
            "THE MOVE DID NOT COMPLETE: job {} ended {} ({}); the figures above cover the job until then",
            final_job.id,
            final_job.state,
            final_job.reason.as_deref().unwrap_or("no reason given")
        );
    }
    if !errors.is_empty() {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for e in errors {
            *by.entry(e).or_default() += 1;
        }
        println!("client errors (first of each task): {by:?}");
    }
    anyhow::ensure!(
        final_job.state == JobState::Done,
        "the move ended {}",
        final_job.state
    );
    Ok(())
}
