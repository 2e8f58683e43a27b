//! `vektagraf bench idle`: what many idle tenants cost a 3-node cluster
//! (real `vektagraf serve` processes on loopback), with hibernation off
//! and on, side by side in one run (issue 12): tenant creation latency
//! and rate, idle CPU, RSS, open files and disk per node, the first
//! request of a sleeping tenant, a node killed -9 while it leads idle
//! groups (the survivors' CPU, and how long until every sampled tenant
//! takes writes again), and the killed node's restart to its first
//! served request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientOptions};
use crate::proto::wire::KeyKind;
use crate::proto::{CollectionSpec, NewObject};

use super::cluster::{proc_usage, start_cluster_with, Nodes};
use super::hibernate::{create_tenants, dir_bytes, ms_pct};

/// Options of the cluster idle bench.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Tenants created with hibernation on.
    pub tenants: usize,
    /// Tenants created with hibernation off (each open replica costs
    /// about 1 MiB of RSS, so the off run is kept smaller).
    pub off_tenants: usize,
    /// Tenants given a key and an object: their first request after
    /// sleeping, and their writes after the node kill, are timed.
    pub sample: usize,
    /// Seconds of each idle measurement.
    pub seconds: u64,
}

/// Per node: CPU % of one core, RSS bytes, open files.
#[derive(Debug, Default, Clone, Copy)]
struct NodeIdle {
    cpu: f64,
    rss: u64,
    files: usize,
}

/// What one configuration measured.
#[derive(Debug, Default)]
struct Figures {
    tenants: usize,
    empty: Vec<NodeIdle>,
    create_p50_ms: f64,
    create_p99_ms: f64,
    create_per_s: f64,
    idle: Vec<NodeIdle>,
    shard_disk: u64,
    wake_p50_ms: f64,
    wake_p99_ms: f64,
    survivors_cpu: f64,
    writable_s: f64,
    write_p99_ms: f64,
    restart_to_first_s: f64,
}

/// Runs `op` until it succeeds, reporting each failure, for at most two
/// minutes from `from` (so the time taken counts from the first try).
async fn until_done<T, F, Fut>(
    tenant: usize,
    what: &str,
    from: Instant,
    mut op: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::proto::Result<T>>,
{
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if from.elapsed() > Duration::from_secs(120) => return Err(e.into()),
            Err(e) => eprintln!(
                "sampled tenant {tenant}: {what} failed after {:.1} s ({e}); trying again",
                from.elapsed().as_secs_f64()
            ),
        }
    }
}

async fn client_to(addr: SocketAddr, key: &str, ca: &Path, follow: bool) -> anyhow::Result<Client> {
    let mut opts = ClientOptions::new(vec![addr], key, ca)?;
    opts.max_retries = 20;
    opts.follow_leader = follow;
    Ok(Client::connect(opts).await?)
}

/// CPU, RSS and open files of the nodes `pids` over `secs` seconds.
async fn measure(pids: &[u32], secs: u64) -> anyhow::Result<Vec<NodeIdle>> {
    let before: Vec<f64> = pids
        .iter()
        .map(|p| proc_usage(*p).map(|u| u.0))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let wall = t.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| {
            let (cpu, rss, _) = proc_usage(*p)?;
            Ok(NodeIdle {
                cpu: (cpu - b) / wall * 100.0,
                rss,
                files: std::fs::read_dir(format!("/proc/{p}/fd"))?.count(),
            })
        })
        .collect()
}

/// Restarts node `i` (1-based) of `nodes` after a kill; waits until it
/// listens again.
fn restart(nodes: &mut Nodes, i: usize) -> anyhow::Result<()> {
    let log = nodes.dir.join(format!("node-{i}.log"));
    let before = std::fs::read_to_string(&log)?
        .matches("listening on")
        .count();
    let f = std::fs::OpenOptions::new().append(true).open(&log)?;
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--config"])
        .arg(nodes.dir.join(format!("node-{i}.toml")))
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()?;
    nodes.children[i - 1] = child;
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::read_to_string(&log)?
        .matches("listening on")
        .count()
        <= before
    {
        anyhow::ensure!(Instant::now() < deadline, "node {i} did not restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs one configuration on a fresh cluster: `after_idle_ms` 0 (off)
/// or the given value.
async fn run(
    dir: &Path,
    tenants: usize,
    sample: usize,
    seconds: u64,
    after_idle_ms: u64,
    base_port: u16,
) -> anyhow::Result<Figures> {
    let extra = format!(
        "rebalance_on_join = false\n\
         [hibernation]\nafter_idle_ms = {after_idle_ms}\ncheck_ms = 500\n"
    );
    let mut nodes = start_cluster_with(dir, 3, base_port, &extra)?;
    let ca = nodes.dir.join("certs/ca.crt");
    let admin_key = std::fs::read_to_string(nodes.dir.join("node-1/admin.key"))?
        .trim()
        .to_string();
    let addrs = nodes.client_addrs.clone();
    let pids = |n: &Nodes| n.children.iter().map(|c| c.id()).collect::<Vec<u32>>();
    let mut f = Figures {
        tenants,
        ..Default::default()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    f.empty = measure(&pids(&nodes), seconds).await?;

    // Creation, 8 at a time, through node 1.
    let workers = 8;
    let started = Instant::now();
    let mut created = create_tenants(addrs[0], &admin_key, &ca, tenants).await?;
    f.create_per_s = tenants as f64 / started.elapsed().as_secs_f64();
    f.create_p50_ms = ms_pct(&mut created, 0.5);
    f.create_p99_ms = ms_pct(&mut created, 0.99);
    eprintln!(
        "hibernation {}: created {tenants} tenants, {:.0}/s, p50 {:.1} ms",
        if after_idle_ms == 0 { "off" } else { "on" },
        f.create_per_s,
        f.create_p50_ms
    );

    // Keys and one object for the sampled tenants.
    let admin = client_to(addrs[0], &admin_key, &ca, true).await?;
    let mut keys = Vec::new();
    for i in 0..sample.min(tenants) {
        let id = format!("idle{i:05}");
        admin.create_user(&id, "u").await?;
        let (key, _) = admin
            .create_key(KeyKind::Tenant, Some(&id), Some("u"), None)
            .await?;
        keys.push(key);
    }
    let keys = Arc::new(keys);
    let each = move |keys: Arc<Vec<String>>,
                     addr: SocketAddr,
                     ca: PathBuf,
                     w: usize,
                     op: &'static str| async move {
        let mut took = Vec::new();
        for (i, key) in keys.iter().enumerate().skip(w).step_by(workers) {
            let c = client_to(addr, key, &ca, false).await?;
            let t = Instant::now();
            match op {
                "create" => {
                    c.create_collection(CollectionSpec::plain("kv")).await?;
                    c.put(NewObject::new("kv", "k", serde_json::json!({"v": i})))
                        .await?;
                }
                "get" => {
                    until_done(i, "first read", t, || c.get("k")).await?;
                }
                _ => {
                    // After the kill: a write may time out while its
                    // group still elects.
                    let o = NewObject::new("kv", "k", serde_json::json!({"v": i + 1}));
                    until_done(i, "write", t, || c.put(o.clone())).await?;
                }
            }
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok::<Vec<f64>, anyhow::Error>(took)
    };
    let all = |op: &'static str, addr: SocketAddr, parallel: bool| {
        let (keys, ca) = (keys.clone(), ca.clone());
        async move {
            let mut took = Vec::new();
            if parallel {
                let mut tasks = Vec::new();
                for w in 0..workers {
                    tasks.push(tokio::spawn(each(keys.clone(), addr, ca.clone(), w, op)));
                }
                for t in tasks {
                    took.extend(t.await??);
                }
            } else {
                for w in 0..workers {
                    took.extend(each(keys.clone(), addr, ca.clone(), w, op).await?);
                }
            }
            Ok::<Vec<f64>, anyhow::Error>(took)
        }
    };
    all("create", addrs[0], true).await?;

    // Idle: past quiescence and the hibernation threshold, then measured.
    let settle = crate::cluster::QUIESCE_AFTER + Duration::from_millis(after_idle_ms + 5_000);
    tokio::time::sleep(settle).await;
    f.idle = measure(&pids(&nodes), seconds).await?;
    f.shard_disk = (1..=3)
        .map(|i| dir_bytes(&nodes.dir.join(format!("node-{i}/shards"))))
        .sum();

    // The first request of each sampled tenant, one at a time, through
    // node 1 (forwarded to the leader's node where that is another).
    let mut wake = all("get", addrs[0], false).await?;
    f.wake_p50_ms = ms_pct(&mut wake, 0.5);
    f.wake_p99_ms = ms_pct(&mut wake, 0.99);

    // Node 2 killed -9 once the sampled groups are idle again: the
    // survivors' CPU over the next `seconds`, with no requests; then a
    // write to every sampled tenant through node 1.
    tokio::time::sleep(settle).await;
    let _ = nodes.children[1].kill();
    let _ = nodes.children[1].wait();
    let killed = Instant::now();
    let survivors = [pids(&nodes)[0], pids(&nodes)[2]];
    let m = measure(&survivors, seconds).await?;
    f.survivors_cpu = m.iter().map(|n| n.cpu).sum();
    let writes_from = Instant::now();
    let mut writes = all("put", addrs[0], true).await?;
    f.writable_s = writes_from.elapsed().as_secs_f64();
    f.write_p99_ms = ms_pct(&mut writes, 0.99);
    eprintln!(
        "node 2 killed; every sampled tenant written {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );

    // Node 2 restarts: time to its first served request (a read of a
    // sampled tenant through it, not following the leader).
    let t = Instant::now();
    restart(&mut nodes, 2)?;
    if let Some(key) = keys.first() {
        let c = client_to(addrs[1], key, &ca, false).await?;
        c.get("k").await?;
    }
    f.restart_to_first_s = t.elapsed().as_secs_f64();
    drop(admin);
    drop(nodes);
    Ok(f)
}

/// `vektagraf bench idle`.
pub async fn idle(opt: Options) -> anyhow::Result<()> {
    if opt.data.exists() {
        std::fs::remove_dir_all(&opt.data)?;
    }
    let off_n = opt.off_tenants.min(opt.tenants);
    println!(
        "3-node cluster on loopback, tier1 tenants (3 replicas each, one per node); \
         {} with a key and one object; idle measured over {} s",
        opt.sample, opt.seconds
    );
    // Hibernation on first: a failure of the off run (the configuration
    // of old) still leaves the on figures printed.
    let on = run(
        &opt.data.join("on"),
        opt.tenants,
        opt.sample,
        opt.seconds,
        2_000,
        28000,
    )
    .await?;
    let off = match run(
        &opt.data.join("off"),
        off_n,
        opt.sample,
        opt.seconds,
        0,
        27800,
    )
    .await
    {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("hibernation off: the run failed: {e:#}");
            None
        }
    };
    let mut t = super::hibernate::off_on_table(off_n, on.tenants);
    let row = |name: &str, a: String, b: String| vec![name.to_string(), a, b];
    let both = |g: &dyn Fn(&Figures) -> String| {
        let off = off
            .as_ref()
            .map_or_else(|| "failed (see above)".to_string(), g);
        (off, g(&on))
    };
    let mut add = |name: &str, g: &dyn Fn(&Figures) -> String| {
        let (a, b) = both(g);
        t.add_row(row(name, a, b));
    };
    let sum = |v: &[NodeIdle], g: fn(&NodeIdle) -> f64| v.iter().map(g).sum::<f64>();
    add("create p50 / p99 ms (8 at a time)", &|f| {
        format!("{:.1} / {:.1}", f.create_p50_ms, f.create_p99_ms)
    });
    add("creations per second", &|f| {
        format!("{:.0}", f.create_per_s)
    });
    add("idle CPU, % of one core, 3 nodes (empty)", &|f| {
        format!(
            "{:.1} ({:.1})",
            sum(&f.idle, |n| n.cpu),
            sum(&f.empty, |n| n.cpu)
        )
    });
    add("RSS MiB per node, empty → idle", &|f| {
        f.empty
            .iter()
            .zip(&f.idle)
            .map(|(e, i)| format!("{}→{}", e.rss >> 20, i.rss >> 20))
            .collect::<Vec<_>>()
            .join(", ")
    });
    add("RSS per tenant replica, KiB", &|f| {
        let d = sum(&f.idle, |n| n.rss as f64) - sum(&f.empty, |n| n.rss as f64);
        format!("{:.0}", d / (3.0 * f.tenants.max(1) as f64) / 1024.0)
    });
    add("open files per node", &|f| {
        f.idle
            .iter()
            .map(|n| n.files.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    });
    add("shard directories per replica, KiB", &|f| {
        format!(
            "{:.0}",
            f.shard_disk as f64 / (3.0 * f.tenants.max(1) as f64) / 1024.0
        )
    });
    add("first request of an idle tenant p50 / p99 ms", &|f| {
        format!("{:.1} / {:.1}", f.wake_p50_ms, f.wake_p99_ms)
    });
    add("node 2 killed: survivors' CPU, % of one core", &|f| {
        format!("{:.1}", f.survivors_cpu)
    });
    add(
        "then a write to each sampled tenant: all done in s (p99 ms)",
        &|f| format!("{:.1} ({:.0})", f.writable_s, f.write_p99_ms),
    );
    add("node 2 restart to its first request, s", &|f| {
        format!("{:.1}", f.restart_to_first_s)
    });
    println!("{t}");
    Ok(())
}
