//! `vektagraf bench idle --standalone`: the idle cost of a standalone
//! node holding many tenants, with hibernation off and on, side by side
//! in one run: tenant creation latency, idle CPU, RSS, open files and
//! disk, stop and restart-to-first-request times, and the latency of a
//! hibernated tenant's first request (issue 12).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proto::wire::KeyKind;
use crate::proto::NewObject;

use super::cluster::client;

/// Options of the standalone idle bench.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Tenants created with hibernation on.
    pub tenants: usize,
    /// Tenants created with hibernation off (each open shard costs about
    /// 1 MiB of RSS and 4 MiB of disk, so the off run is kept smaller).
    pub off_tenants: usize,
    /// Seconds of the idle measurement.
    pub seconds: u64,
}

/// What one configuration measured.
#[derive(Debug, Default)]
struct Figures {
    tenants: usize,
    create_p50_ms: f64,
    create_p99_ms: f64,
    cpu_pct: f64,
    rss: u64,
    open_files: usize,
    disk: u64,
    shard_disk: u64,
    stop_s: f64,
    restart_to_first_s: f64,
    rss_restarted: u64,
    wake_p50_ms: f64,
    wake_p99_ms: f64,
}

struct Server {
    child: Child,
    cfg: PathBuf,
    data: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts `vektagraf serve` and waits until it listens.
    fn start(cfg: &Path, data: &Path, log: &Path) -> anyhow::Result<Server> {
        let before = std::fs::read_to_string(log)
            .map(|t| t.matches("listening on").count())
            .unwrap_or(0);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(["serve", "--config"])
            .arg(cfg)
            // Hibernations are timed from the log.
            .env("RUST_LOG", "warn,vektagraf::db::hibernate=info")
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        let s = Server {
            child,
            cfg: cfg.to_path_buf(),
            data: data.to_path_buf(),
            log: log.to_path_buf(),
        };
        s.wait_listening(before)?;
        Ok(s)
    }

    /// Waits for the `n`+1-th "listening on" line of the log.
    fn wait_listening(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let text = std::fs::read_to_string(&self.log)?;
            if text.matches("listening on").count() > n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node did not start; see {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM by PID, then waits for the exit; returns how long it took.
    fn stop(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        // SAFETY: kill(2) on a child we started and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait()?;
        Ok(t.elapsed())
    }
}

impl Server {
    /// Writes a standalone node's config under `dir` (client address
    /// `addr`, no metrics, the given hibernation) and starts it.
    fn configured(
        dir: &Path,
        addr: SocketAddr,
        after_idle_ms: u64,
        check_ms: u64,
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        let cfg = dir.join("node.toml");
        std::fs::write(
            &cfg,
            format!(
                "[node]\ndata_dir = {:?}\n[server]\nlisten = \"{addr}\"\n\
                 [metrics]\nenabled = false\n\
                 [hibernation]\nafter_idle_ms = {after_idle_ms}\ncheck_ms = {check_ms}\n",
                data.display().to_string()
            ),
        )?;
        let s = Server::start(&cfg, &data, &dir.join("node.log"))?;
        anyhow::ensure!(s.ca().exists(), "no certificate at {}", s.ca().display());
        Ok(s)
    }

    /// The node's self-signed certificate (what clients trust).
    fn ca(&self) -> PathBuf {
        self.data.join("tls/server.crt")
    }
}

/// Creates tenants `idle00000`.. (`n`, tier1) through the node at `addr`,
/// 8 at a time; the latency of each, ms.
pub(super) async fn create_tenants(
    addr: SocketAddr,
    admin_key: &str,
    ca: &Path,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (key, ca) = (admin_key.to_string(), ca.to_path_buf());
        tasks.push(tokio::spawn(async move {
            let admin = client(addr, &key, &ca).await?;
            let mut took = Vec::new();
            for i in (w..n).step_by(workers) {
                let id = format!("idle{i:05}");
                let t = Instant::now();
                admin.create_tenant_for_tier(&id, &id, "tier1").await?;
                took.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<Vec<f64>, anyhow::Error>(took)
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        created.extend(t.await??);
    }
    Ok(created)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn ms_pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub(super) fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                // Blocks in use (a preallocated file counts what it holds).
                Ok(m) => total += std::os::unix::fs::MetadataExt::blocks(&m) * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Runs one configuration: `after_idle_ms` 0 (off) or the given value.
async fn run(
    dir: &Path,
    opt: &Options,
    tenants: usize,
    after_idle_ms: u64,
) -> anyhow::Result<Figures> {
    let addr: SocketAddr = "127.0.0.1:27950".parse()?;
    let mut server = Server::configured(dir, addr, after_idle_ms, 200)?;
    let (data, ca) = (server.data.clone(), server.ca());
    let admin_key = std::fs::read_to_string(data.join("admin.key"))?;
    let admin = client(addr, admin_key.trim(), &ca).await?;
    let mut f = Figures {
        tenants,
        ..Default::default()
    };
    let mut created = create_tenants(addr, admin_key.trim(), &ca, tenants).await?;
    f.create_p50_ms = ms_pct(&mut created, 0.5);
    f.create_p99_ms = ms_pct(&mut created, 0.99);
    // Keys and a little data for the tenants whose first request is timed.
    let woken = tenants.min(100);
    let mut keys = Vec::new();
    for i in 0..woken {
        let id = format!("idle{i:05}");
        admin.create_user(&id, "u").await?;
        let (key, _) = admin
            .create_key(KeyKind::Tenant, Some(&id), Some("u"), None)
            .await?;
        let c = client(addr, &key, &ca).await?;
        c.create_collection(crate::proto::CollectionSpec::plain("kv"))
            .await?;
        c.put(NewObject::new("kv", "k", serde_json::json!({"v": i})))
            .await?;
        keys.push(key);
    }
    drop(admin);
    // Idle: past the hibernation threshold, then measured.
    tokio::time::sleep(Duration::from_millis(after_idle_ms + 3_000)).await;
    let pid = server.child.id();
    let (cpu0, _, _) = super::cluster::proc_usage(pid)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(opt.seconds)).await;
    let (cpu1, rss, _) = super::cluster::proc_usage(pid)?;
    f.cpu_pct = (cpu1 - cpu0) / t.elapsed().as_secs_f64() * 100.0;
    f.rss = rss;
    f.open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    f.disk = dir_bytes(&data);
    f.shard_disk = dir_bytes(&data.join("shards"));
    // First requests of sleeping (or idle) tenants.
    let mut wake = Vec::new();
    for key in &keys {
        let c = client(addr, key, &ca).await?;
        let t = Instant::now();
        c.get("k").await?;
        wake.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    f.wake_p50_ms = ms_pct(&mut wake, 0.5);
    f.wake_p99_ms = ms_pct(&mut wake, 0.99);
    // Stop, restart, first request.
    f.stop_s = server.stop()?.as_secs_f64();
    let t = Instant::now();
    let restarted = Server::start(&server.cfg, &server.data, &server.log)?;
    if let Some(key) = keys.first() {
        let c = client(addr, key, &ca).await?;
        c.get("k").await?;
    }
    f.restart_to_first_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.rss_restarted = super::cluster::proc_usage(restarted.child.id())?.1;
    drop(restarted);
    Ok(f)
}

/// Reactivation latency p50 / p99 (ms) of two hibernated tenants: one
/// with 1,000 small objects (first request: a get) and one with 10,000
/// Fashion-MNIST vectors in an HNSW index (first request: a k = 10
/// search), each put to sleep and woken `rounds` times.
async fn reactivation(dir: &Path, rounds: usize) -> anyhow::Result<[(f64, f64); 2]> {
    let addr: SocketAddr = "127.0.0.1:27951".parse()?;
    let server = Server::configured(dir, addr, 1000, 100)?;
    let (data, ca, log) = (server.data.clone(), server.ca(), server.log.clone());
    let admin_key = std::fs::read_to_string(data.join("admin.key"))?;
    let admin = client(addr, admin_key.trim(), &ca).await?;
    let (dim, images) = super::engine::load_idx_images(
        &Path::new(super::engine::FASHION_MNIST_DIR).join("train-images-idx3-ubyte.gz"),
        10_000,
    )?;
    let mut keys = Vec::new();
    for id in ["small", "large"] {
        let mut cfg = crate::TenantConfig::for_tier(
            &crate::Tiers::default(),
            id,
            id,
            "tier4",
            serde_json::json!({}),
        )?;
        cfg.rate_limit.max_requests = 10_000_000;
        cfg.storage_limit.max_vector_dimensions = 4096;
        admin.create_tenant(cfg).await?;
        admin.create_user(id, "u").await?;
        let (key, _) = admin
            .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
            .await?;
        let c = client(addr, &key, &ca).await?;
        if id == "small" {
            c.create_collection(crate::proto::CollectionSpec::plain("kv"))
                .await?;
            let ops = (0..1000)
                .map(|i| {
                    crate::proto::WriteOp::Put(NewObject::new(
                        "kv",
                        &format!("o{i}"),
                        serde_json::json!({"v": i, "name": format!("object {i}")}),
                    ))
                })
                .collect();
            for r in c.batch(ops).await {
                r?;
            }
        } else {
            c.create_collection(
                crate::proto::CollectionSpec::vectors("img", dim as u32).index(
                    crate::proto::IndexKind::Hnsw {
                        m: 32,
                        ef_search: 64,
                    },
                ),
            )
            .await?;
            let ops: Vec<_> = images
                .chunks(dim)
                .enumerate()
                .map(|(i, v)| {
                    crate::proto::WriteOp::Put(
                        NewObject::new("img", &format!("i{i}"), serde_json::json!({}))
                            .with_vector(v.to_vec()),
                    )
                })
                .collect();
            for r in c.batch(ops).await {
                r?;
            }
        }
        keys.push(key);
    }
    let slept = |id: &str| -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(&log)?
            .lines()
            .filter(|l| l.contains("tenant hibernated") && l.contains(id))
            .count())
    };
    let mut out = [(0.0, 0.0); 2];
    for (n, (id, key)) in ["small", "large"].iter().zip(&keys).enumerate() {
        let c = client(addr, key, &ca).await?;
        let mut took = Vec::new();
        // Asleep since its load (nothing else wakes it); each round wakes
        // it with one timed request, then waits until it sleeps again.
        let mut before = 0;
        for _ in 0..rounds {
            let deadline = Instant::now() + Duration::from_secs(60);
            while slept(id)? == before {
                anyhow::ensure!(Instant::now() < deadline, "{id} did not hibernate");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            before = slept(id)?;
            let t = Instant::now();
            if *id == "small" {
                c.get("o7").await?;
            } else {
                c.search(
                    crate::proto::VectorSearch {
                        collection: "img".into(),
                        vector: images[..dim].to_vec(),
                        k: 10,
                        filter: None,
                    },
                    false,
                )
                .await?;
            }
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        out[n] = (ms_pct(&mut took, 0.5), ms_pct(&mut took, 0.99));
    }
    drop(server);
    Ok(out)
}

/// `vektagraf bench idle --standalone`.
pub async fn idle(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    println!(
        "standalone node, tier1 tenants (100 with one object), idle {} s:",
        opt.seconds
    );
    let off_n = opt.off_tenants.min(opt.tenants);
    let off = run(&opt.data.join("off"), &opt, off_n, 0).await?;
    let on = run(&opt.data.join("on"), &opt, opt.tenants, 2_000).await?;
    let mut t = off_on_table(off.tenants, on.tenants);
    let row = |name: &str, a: String, b: String| vec![name.to_string(), a, b];
    // Bytes as "MiB (KiB per tenant)", per the run's own tenants.
    let per_tenant = |b: u64, f: &Figures| {
        format!(
            "{} ({:.0})",
            b >> 20,
            b as f64 / f.tenants.max(1) as f64 / 1024.0
        )
    };
    t.add_row(row(
        "create p50 / p99 ms",
        format!("{:.1} / {:.1}", off.create_p50_ms, off.create_p99_ms),
        format!("{:.1} / {:.1}", on.create_p50_ms, on.create_p99_ms),
    ));
    t.add_row(row(
        "idle CPU, % of one core",
        format!("{:.1}", off.cpu_pct),
        format!("{:.1}", on.cpu_pct),
    ));
    t.add_row(row(
        "RSS MiB (per tenant KiB)",
        per_tenant(off.rss, &off),
        per_tenant(on.rss, &on),
    ));
    t.add_row(row(
        "RSS MiB after a restart and 1 request",
        per_tenant(off.rss_restarted, &off),
        per_tenant(on.rss_restarted, &on),
    ));
    t.add_row(row(
        "open files",
        off.open_files.to_string(),
        on.open_files.to_string(),
    ));
    t.add_row(row(
        "disk MiB (per tenant KiB)",
        per_tenant(off.disk, &off),
        per_tenant(on.disk, &on),
    ));
    t.add_row(row(
        "of which shards/ (per tenant KiB)",
        per_tenant(off.shard_disk, &off),
        per_tenant(on.shard_disk, &on),
    ));
    t.add_row(row(
        "first request p50 / p99 ms",
        format!("{:.1} / {:.1}", off.wake_p50_ms, off.wake_p99_ms),
        format!("{:.1} / {:.1}", on.wake_p50_ms, on.wake_p99_ms),
    ));
    t.add_row(row(
        "SIGTERM to exit, s",
        format!("{:.1}", off.stop_s),
        format!("{:.1}", on.stop_s),
    ));
    t.add_row(row(
        "restart to first request, s",
        format!("{:.1}", off.restart_to_first_s),
        format!("{:.1}", on.restart_to_first_s),
    ));
    println!("{t}");
    let [small, large] = reactivation(&opt.data.join("wake"), 10).await?;
    println!(
        "reactivation of a hibernated tenant (10 rounds each), p50 / p99: \
         1,000 objects, a get: {:.1} / {:.1} ms; 10,000 Fashion-MNIST vectors \
         (HNSW32), a k = 10 search: {:.1} / {:.1} ms",
        small.0, small.1, large.0, large.1
    );
    Ok(())
}

/// The side-by-side table of `bench idle` (standalone and cluster): a
/// row name, then the hibernation-off and hibernation-on figures.
pub(super) fn off_on_table(off_tenants: usize, on_tenants: usize) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        String::new(),
        format!("hibernation off, {off_tenants} tenants"),
        format!("hibernation on (2 s idle), {on_tenants} tenants"),
    ]);
    t
}
