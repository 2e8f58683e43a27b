//! `vektagraf bench cluster`: replicated write throughput and latency of a
//! 1-node and a 3-node Vektagraf cluster and a 3-node etcd 3.4 cluster,
//! side by side in one run, all on loopback: 256-byte values, 1 and 64
//! concurrent clients, each client its own connection, clients spread
//! over the nodes round-robin (writes to followers are forwarded to the
//! leader by both systems).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{Client, ClientOptions};
use crate::proto::wire::KeyKind;
use crate::proto::{CollectionSpec, NewObject};
use crate::{TenantConfig, Tiers};

use super::etcd::{put_load, LoadResult};

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Seconds per measurement.
    pub seconds: u64,
    /// Concurrency levels.
    pub clients: Vec<usize>,
    /// Value size, bytes.
    pub value_size: usize,
    /// Skip etcd.
    pub no_etcd: bool,
}

/// Real node processes of one Vektagraf cluster on loopback.
pub(crate) struct Nodes {
    pub(crate) dir: PathBuf,
    pub(crate) children: Vec<Child>,
    pub(crate) client_addrs: Vec<SocketAddr>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM by PID: a graceful stop.
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_cluster(dir: &Path, n: usize, base_port: u16) -> anyhow::Result<Nodes> {
    start_cluster_with(dir, n, base_port, "")
}

/// Starts `n` node processes on loopback (client ports `base_port + i`,
/// peer ports `base_port + 100 + i`); `extra` is appended to each node's
/// config right after its `[cluster]` keys (more cluster keys, then
/// further sections).
pub(crate) fn start_cluster_with(
    dir: &Path,
    n: usize,
    base_port: u16,
    extra: &str,
) -> anyhow::Result<Nodes> {
    let exe = std::env::current_exe()?;
    std::fs::create_dir_all(dir)?;
    let ids: Vec<u64> = (1..=n as u64).collect();
    crate::net::tls::make_certs(&dir.join("certs"), &ids, &[])?;
    let mut nodes = Nodes {
        dir: dir.to_path_buf(),
        children: Vec::new(),
        client_addrs: Vec::new(),
    };
    for i in 1..=n {
        let c = dir.join("certs");
        let client = SocketAddr::from(([127, 0, 0, 1], base_port + i as u16));
        let peer = SocketAddr::from(([127, 0, 0, 1], base_port + 100 + i as u16));
        let join = if i == 1 {
            String::new()
        } else {
            format!("\"127.0.0.1:{}\"", base_port + 101)
        };
        let toml = format!(
            "[node]\ndata_dir = \"{d}/node-{i}\"\n\
             [server]\nlisten = \"{client}\"\ncert = \"{c}/node-{i}.crt\"\nkey = \"{c}/node-{i}.key\"\n\
             [metrics]\nenabled = false\n\
             [cluster]\nenabled = true\nnode_id = {i}\npeer_listen = \"{peer}\"\n\
             ca = \"{c}/ca.crt\"\ncert = \"{c}/node-{i}.crt\"\nkey = \"{c}/node-{i}.key\"\njoin = [{join}]\n{extra}\n",
            d = dir.display(),
            c = c.display(),
        );
        let cfg = dir.join(format!("node-{i}.toml"));
        std::fs::write(&cfg, toml)?;
        let log = dir.join(format!("node-{i}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new(&exe)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        nodes.children.push(child);
        nodes.client_addrs.push(client);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if std::fs::read_to_string(&log)?.contains("listening on") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {i} did not start; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(nodes)
}

pub(crate) async fn client(addr: SocketAddr, key: &str, ca: &Path) -> anyhow::Result<Client> {
    let mut opts = ClientOptions::new(vec![addr], key, ca)?;
    opts.max_retries = 10;
    Ok(Client::connect(opts).await?)
}

/// Creates the bench tenant and returns a tenant key.
async fn prepare(nodes: &Nodes) -> anyhow::Result<String> {
    let ca = nodes.dir.join("certs/ca.crt");
    let admin_key = std::fs::read_to_string(nodes.dir.join("node-1/admin.key"))?;
    let admin = client(nodes.client_addrs[0], admin_key.trim(), &ca).await?;
    let mut cfg = TenantConfig::for_tier(
        &Tiers::default(),
        "bench",
        "bench",
        "custom",
        serde_json::json!({}),
    )?;
    cfg.rate_limit.max_requests = u64::MAX / 8;
    cfg.request_limit.daily_limit = u64::MAX / 8;
    cfg.request_limit.monthly_limit = u64::MAX / 8;
    cfg.request_limit.concurrent_limit = 10_000;
    cfg.storage_limit.max_objects = u64::MAX / 8;
    cfg.storage_limit.max_storage_bytes = u64::MAX / 8;
    admin.create_tenant(cfg).await?;
    admin.create_user("bench", "b").await?;
    let (key, _) = admin
        .create_key(KeyKind::Tenant, Some("bench"), Some("b"), None)
        .await?;
    let c = client(nodes.client_addrs[0], &key, &ca).await?;
    c.create_collection(CollectionSpec::plain("kv")).await?;
    Ok(key)
}

async fn vk_load(
    nodes: &Nodes,
    key: &str,
    clients: usize,
    value: &str,
    secs: u64,
) -> anyhow::Result<LoadResult> {
    let ca = nodes.dir.join("certs/ca.crt");
    let mut conns = Vec::new();
    for i in 0..clients {
        let addr = nodes.client_addrs[i % nodes.client_addrs.len()];
        conns.push(client(addr, key, &ca).await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        let (stop, value) = (stop.clone(), value.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let obj = NewObject::new(
                    "kv",
                    &format!("c{i}-{n}"),
                    serde_json::json!({ "v": value }),
                );
                let s = Instant::now();
                match c.put(obj).await {
                    Ok(_) => lat.push(s.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut r = LoadResult::default();
    for t in tasks {
        let (lat, errors) = t.await?;
        r.latencies_us.extend(lat);
        r.errors += errors;
    }
    r.elapsed = start.elapsed();
    r.ops = r.latencies_us.len() as u64;
    r.latencies_us.sort_unstable();
    Ok(r)
}

/// Sequential gets by one client for `secs`, to node `addr`.
async fn get_latency(
    nodes: &Nodes,
    key: &str,
    addr: SocketAddr,
    follow: bool,
    secs: u64,
) -> anyhow::Result<LoadResult> {
    let mut opts = ClientOptions::new(vec![addr], key, &nodes.dir.join("certs/ca.crt"))?;
    opts.follow_leader = follow;
    let c = Client::connect(opts).await?;
    c.put(NewObject::new("kv", "hop", serde_json::json!({ "v": 1 })))
        .await?;
    // Warm up (and, when following, move to the leader).
    for _ in 0..20 {
        c.get("hop").await?;
    }
    let mut r = LoadResult::default();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let s = Instant::now();
        match c.get("hop").await {
            Ok(_) => r.latencies_us.push(s.elapsed().as_micros() as u64),
            Err(_) => r.errors += 1,
        }
    }
    r.elapsed = start.elapsed();
    r.ops = r.latencies_us.len() as u64;
    r.latencies_us.sort_unstable();
    Ok(r)
}

/// Linearizable gets through the shard leader's node and through a
/// follower's, with and without the driver following the leader hint.
async fn hop_cost(nodes: &Nodes, key: &str, secs: u64) -> anyhow::Result<()> {
    let ca = nodes.dir.join("certs/ca.crt");
    let admin_key = std::fs::read_to_string(nodes.dir.join("node-1/admin.key"))?;
    let admin = client(nodes.client_addrs[0], admin_key.trim(), &ca).await?;
    let leader = admin
        .shard_info("bench")
        .await?
        .leader_node
        .context("the bench tenant has no leader")? as usize;
    let follower = (1..=nodes.client_addrs.len())
        .find(|n| *n != leader)
        .context("no follower")?;
    println!();
    println!("linearizable gets, 1 client, {secs} s each: the cost of the forwarding hop");
    println!(
        "{:<40} {:>10} {:>9} {:>9}",
        "path", "gets/s", "p50 ms", "p99 ms"
    );
    for (name, node, follow) in [
        ("to the leader's node", leader, true),
        ("to a follower, following the leader", follower, true),
        ("to a follower, forwarded (no following)", follower, false),
    ] {
        let r = get_latency(nodes, key, nodes.client_addrs[node - 1], follow, secs).await?;
        println!(
            "{name:<40} {:>10.0} {:>9.3} {:>9.3}",
            r.per_sec(),
            r.percentile_ms(50.0),
            r.percentile_ms(99.0)
        );
    }
    Ok(())
}

fn row(name: &str, clients: usize, r: &LoadResult) {
    println!(
        "{name:<22} {clients:>7} {:>10.0} {:>9.2} {:>9.2} {:>7}",
        r.per_sec(),
        r.percentile_ms(50.0),
        r.percentile_ms(99.0),
        r.errors
    );
}

/// Runs the benchmark and prints its figures.
pub async fn run(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    std::fs::create_dir_all(&opt.data)?;
    let value = "x".repeat(opt.value_size.saturating_sub(10));
    println!(
        "replicated puts, {} B values, {} s per run, on loopback (fsync on every commit in all three)",
        opt.value_size, opt.seconds
    );
    println!(
        "{:<22} {:>7} {:>10} {:>9} {:>9} {:>7}",
        "system", "clients", "puts/s", "p50 ms", "p99 ms", "errors"
    );
    let mut results: Vec<(String, usize, f64)> = Vec::new();
    for (name, n, port) in [
        ("vektagraf 1 node", 1usize, 27600u16),
        ("vektagraf 3 nodes", 3, 27700),
    ] {
        let nodes = start_cluster(&opt.data.join(format!("vk{n}")), n, port)
            .with_context(|| format!("starting {name}"))?;
        let key = prepare(&nodes).await?;
        for &c in &opt.clients {
            let r = vk_load(&nodes, &key, c, &value, opt.seconds).await?;
            row(name, c, &r);
            results.push((name.to_string(), c, r.per_sec()));
        }
        if n > 1 {
            hop_cost(&nodes, &key, opt.seconds).await?;
            println!();
        }
        drop(nodes);
    }
    if !opt.no_etcd {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/etcd-cluster.sh");
        let edir = opt.data.join("etcd");
        let up = Command::new(&script)
            .arg("up")
            .arg(&edir)
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(
            up.success(),
            "etcd cluster did not start ({})",
            script.display()
        );
        let endpoints: Vec<SocketAddr> = (1..=3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 23790 + i)))
            .collect();
        let r = async {
            for &c in &opt.clients {
                let r = put_load(
                    &endpoints,
                    c,
                    opt.value_size,
                    Duration::from_secs(opt.seconds),
                )
                .await?;
                row("etcd 3.4, 3 nodes", c, &r);
                results.push(("etcd".into(), c, r.per_sec()));
            }
            Ok::<(), anyhow::Error>(())
        }
        .await;
        let _ = Command::new(&script)
            .arg("down")
            .arg(&edir)
            .stdout(Stdio::null())
            .status();
        r?;
        println!();
        for &c in &opt.clients {
            let get = |n: &str| results.iter().find(|r| r.0 == n && r.1 == c).map(|r| r.2);
            if let (Some(v3), Some(e), Some(v1)) = (
                get("vektagraf 3 nodes"),
                get("etcd"),
                get("vektagraf 1 node"),
            ) {
                println!(
                    "{c:>3} clients: vektagraf 3 nodes / etcd 3 nodes = {:.2}x; vektagraf 3 nodes / 1 node = {:.2}x",
                    v3 / e,
                    v3 / v1
                );
            }
        }
    }
    Ok(())
}

/// CPU time (user + system, seconds) and resident memory (bytes) of a
/// process, from /proc.
pub(crate) fn proc_usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let threads: u64 = f.get(17).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((ticks as f64 / hz, rss_kb * 1024, threads))
}
