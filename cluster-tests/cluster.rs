//! Cluster fault tests: real `vektagraf serve` processes, each in its own
//! network namespace (`netns.sh`), faults by kill -9 and nftables cuts.
//! After each fault the tests check that no acknowledged write is lost
//! and that every key's read/write history is linearizable (`lincheck`).
//!
//! Needs root (namespaces); run through `scripts/test.sh`. The tests run
//! one at a time (a lock), each with its own namespaces and directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "lincheck.rs"]
mod lincheck;

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lincheck::{Op, OpKind};
use vektagraf::client::{Client, ClientOptions};
use vektagraf::proto::wire::{KeyKind, ShardInfo};
use vektagraf::proto::{
    CollectionSpec, Error, JobState, LimitKind, MoveJob, NewObject, WriteOutcome,
};
use vektagraf::tenant::Window;
use vektagraf::{TenantConfig, Tiers};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The namespace script of the tree under test: cargo names it at run
/// time (a build reused from another checkout keeps its own path).
fn netns_script() -> std::path::PathBuf {
    std::path::Path::new(&manifest_dir()).join("cluster-tests/netns.sh")
}

fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}
const BIN: &str = env!("CARGO_BIN_EXE_vektagraf");
const CLIENT_PORT: u16 = 7687;
const PEER_PORT: u16 = 7787;

fn netns(args: &[&str]) {
    let out = Command::new(netns_script())
        .args(args)
        .output()
        .expect("netns.sh");
    assert!(
        out.status.success(),
        "netns.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` with the calling thread inside network namespace `name`.
fn in_netns<T>(name: &str, f: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let orig = File::open("/proc/thread-self/ns/net").expect("own netns");
    let target = File::open(format!("/var/run/netns/{name}")).expect("target netns");
    // SAFETY: setns on valid namespace fds; only this thread changes.
    unsafe {
        assert_eq!(libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET), 0);
    }
    let r = f();
    // SAFETY: as above, back to where the thread was.
    unsafe {
        assert_eq!(libc::setns(orig.as_raw_fd(), libc::CLONE_NEWNET), 0);
    }
    r
}

/// N real nodes in namespaces `<prefix>1..N`, clients in `<prefix>hub`.
struct TestCluster {
    prefix: String,
    n: usize,
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
    starts: Vec<usize>,
    admin_key: String,
}

impl TestCluster {
    fn ip(i: usize) -> String {
        format!("10.99.0.{i}")
    }

    fn client_addr(i: usize) -> SocketAddr {
        format!("{}:{CLIENT_PORT}", Self::ip(i)).parse().unwrap()
    }

    /// Creates namespaces and certificates for `capacity` nodes and starts
    /// the first `n` (node 1 bootstraps, the rest join).
    async fn start(name: &str, n: usize, capacity: usize) -> TestCluster {
        Self::start_with(name, n, capacity, "").await
    }

    /// [`TestCluster::start`] with `extra` lines in each node's
    /// `[cluster]` section. Rebalancing on join is off unless `extra`
    /// turns it on (most tests place replicas themselves).
    async fn start_with(name: &str, n: usize, capacity: usize, extra: &str) -> TestCluster {
        let prefix = format!("vk{}{name}x", std::process::id() % 10_000);
        netns(&["create", &prefix, &capacity.to_string()]);
        let dir = PathBuf::from(format!("/var/tmp/vektagraf-cluster-tests/{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ids: Vec<String> = (1..=capacity).map(|i| i.to_string()).collect();
        let hosts: Vec<String> = (1..=capacity).map(Self::ip).collect();
        let st = Command::new(BIN)
            .args(["certs", "--out"])
            .arg(dir.join("certs"))
            .args(["--nodes", &ids.join(","), "--hosts", &hosts.join(",")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        for i in 1..=capacity {
            let c = dir.join("certs");
            let join = if i == 1 {
                String::new()
            } else {
                format!("\"{}:{PEER_PORT}\"", Self::ip(1))
            };
            let toml = format!(
                "[node]\ndata_dir = \"{d}/node-{i}\"\n\
                 [limits]\nquota_checkpoint_ms = 500\n\
                 [raft]\nheartbeat_ms = 200\nelection_timeout_min_ms = 800\nelection_timeout_max_ms = 1600\nsnapshot_every = 300\nkeep_after_snapshot = 50\n\
                 [server]\nlisten = \"{ip}:{CLIENT_PORT}\"\ncert = \"{c}/node-{i}.crt\"\nkey = \"{c}/node-{i}.key\"\n\
                 [cluster]\nenabled = true\nnode_id = {i}\npeer_listen = \"{ip}:{PEER_PORT}\"\n\
                 ca = \"{c}/ca.crt\"\ncert = \"{c}/node-{i}.crt\"\nkey = \"{c}/node-{i}.key\"\njoin = [{join}]\n\
                 {rebalance}{extra}\n",
                rebalance = if extra.contains("rebalance_on_join") {
                    ""
                } else {
                    "rebalance_on_join = false\n"
                },
                d = dir.display(),
                c = c.display(),
                ip = Self::ip(i),
            );
            std::fs::write(dir.join(format!("node-{i}.toml")), toml).unwrap();
        }
        let mut c = TestCluster {
            prefix,
            n: capacity,
            dir,
            nodes: (0..capacity).map(|_| None).collect(),
            starts: vec![0; capacity],
            admin_key: String::new(),
        };
        for i in 1..=n {
            c.spawn(i).await;
        }
        c.admin_key = std::fs::read_to_string(c.dir.join("node-1/admin.key"))
            .unwrap()
            .trim()
            .to_string();
        c
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("node-{i}.{}.log", self.starts[i - 1]))
    }

    /// Starts node `i` and waits until it serves clients.
    async fn spawn(&mut self, i: usize) {
        self.starts[i - 1] += 1;
        let log = self.log(i);
        let f = File::create(&log).unwrap();
        let child = Command::new(netns_script())
            .args([
                "exec",
                &self.prefix,
                &i.to_string(),
                BIN,
                "serve",
                "--config",
            ])
            .arg(self.dir.join(format!("node-{i}.toml")))
            // VK_NODE_LOG replaces the nodes' log filter (debugging).
            .env(
                "RUST_LOG",
                std::env::var("VK_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,quinn=warn".into()),
            )
            .env("VEKTAGRAF_FAULTS", self.faults_file(i))
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        self.nodes[i - 1] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                return;
            }
            if let Some(c) = self.nodes[i - 1].as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("node {i} exited ({st}):\n{text}");
                }
            }
            assert!(Instant::now() < deadline, "node {i} did not start:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 of node `i` (by its PID).
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The peer fault file node `i` re-reads (`net/fault.rs`).
    fn faults_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("faults-{i}"))
    }

    /// Replaces node `i`'s peer fault rules (written whole, then renamed,
    /// so the node never reads half a file). `""` clears them.
    fn set_faults(&self, i: usize, rules: &str) {
        let tmp = self.dir.join(format!("faults-{i}.tmp"));
        std::fs::write(&tmp, rules).unwrap();
        std::fs::rename(&tmp, self.faults_file(i)).unwrap();
    }

    /// Clears every node's fault rules and nftables rules.
    fn heal_all(&self) {
        for i in 1..=self.n {
            self.set_faults(i, "");
        }
        netns(&["heal", &self.prefix, &self.n.to_string()]);
    }

    /// Adds an nftables rule to chain `chain` (input/output) of node `i`.
    fn nft(&self, i: usize, chain: &str, rule: &str) {
        let ns = format!("{}{i}", self.prefix);
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "nft", "add", "rule", "inet", "vkfault", chain,
            ])
            .args(rule.split_whitespace())
            .output()
            .expect("nft");
        assert!(
            out.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends `sig` to node `i`'s process (by its PID).
    fn signal(&self, i: usize, sig: i32) {
        if let Some(c) = &self.nodes[i - 1] {
            // SAFETY: kill(2) on the PID of a child we spawned and have
            // not reaped.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGSTOP of node `i`: it keeps its sockets but runs nothing.
    fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    /// Node `i`'s exit status, once its process has exited.
    fn exit_status(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i - 1]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether node `i`'s process is running (not exited).
    fn alive(&mut self, i: usize) -> bool {
        self.nodes[i - 1]
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM to node `i`; waits up to `within` for it to exit (then
    /// kills it -9) and returns its exit status and how long it took.
    fn terminate(&mut self, i: usize, within: Duration) -> (std::process::ExitStatus, Duration) {
        self.signal(i, libc::SIGTERM);
        let t = Instant::now();
        let mut child = self.nodes[i - 1].take().expect("node not running");
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return (st, t.elapsed());
            }
            if t.elapsed() > within {
                let _ = child.kill();
                let st = child.wait().expect("wait");
                return (st, t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn client(&self, node: usize, key: &str) -> Client {
        self.client_losing(node, key, 0).await
    }

    /// A client whose first answer to each of its first `lose` writes is
    /// thrown away (the driver's fault injection), forcing retries.
    async fn client_losing(&self, node: usize, key: &str, lose: u32) -> Client {
        self.client_with(node, key, |o| o.fault_lose_write_answers = lose)
            .await
    }

    /// A client to node `node` with options adjusted by `adjust`.
    async fn client_with(
        &self,
        node: usize,
        key: &str,
        adjust: impl FnOnce(&mut ClientOptions),
    ) -> Client {
        let socket = in_netns(&format!("{}hub", self.prefix), || {
            std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
        });
        socket.set_nonblocking(true).unwrap();
        let mut opts = ClientOptions::new(
            vec![Self::client_addr(node)],
            key,
            &self.dir.join("certs/ca.crt"),
        )
        .unwrap();
        opts.request_timeout = Duration::from_secs(8);
        opts.max_retries = 5;
        adjust(&mut opts);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_on(opts.clone(), socket.try_clone().unwrap()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("client to node {node}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => panic!("client to node {node}: {e}"),
            }
        }
    }

    async fn admin(&self, node: usize) -> Client {
        self.client(node, &self.admin_key.clone()).await
    }

    /// A tenant with a user, a key, and collection `kv`; returns the key.
    async fn tenant(&self, id: &str, cfg: Option<TenantConfig>) -> String {
        let admin = self.admin(1).await;
        let cfg = cfg.unwrap_or_else(|| roomy(id));
        admin.create_tenant(cfg).await.unwrap();
        admin.create_user(id, "u").await.unwrap();
        let (key, _) = admin
            .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
            .await
            .unwrap();
        let c = self.client(2, &key).await;
        retry(|| c.create_collection(CollectionSpec::plain("kv"))).await;
        key
    }

    async fn shard_leader(&self, tenant: &str, via: usize) -> usize {
        let admin = self.admin(via).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(info) = admin.shard_info(tenant).await {
                if let Some(l) = info.leader_node {
                    return l as usize;
                }
            }
            assert!(Instant::now() < deadline, "no leader for {tenant}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 1..=self.n {
            self.resume(i);
            self.kill(i);
        }
        let _ = Command::new(netns_script())
            .args(["destroy", &self.prefix, &self.n.to_string()])
            .output();
        if !std::thread::panicking() && std::env::var_os("VK_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn roomy(id: &str) -> TenantConfig {
    let mut c =
        TenantConfig::for_tier(&Tiers::default(), id, id, "tier4", serde_json::json!({})).unwrap();
    c.rate_limit.max_requests = 10_000_000;
    c.request_limit.daily_limit = 1_000_000_000;
    c.request_limit.monthly_limit = 1_000_000_000;
    c
}

/// Retries an idempotent call on retryable errors for up to 30 s.
async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("gave up: {e}"),
        }
    }
}

/// A concurrent register workload over a few keys, plus insert-only
/// objects, recording a history for the checker.
struct Workload {
    t0: Instant,
    ops: std::sync::Mutex<Vec<Op>>,
    /// Acknowledged unique inserts.
    inserted: std::sync::Mutex<Vec<String>>,
    stop: AtomicBool,
    seq: AtomicU64,
    /// Requests that failed after the driver's retries, and the first
    /// few errors.
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

impl Workload {
    fn new() -> Arc<Workload> {
        Arc::new(Workload {
            t0: Instant::now(),
            ops: std::sync::Mutex::new(Vec::new()),
            inserted: std::sync::Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            errors: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn failure(&self, client: u64, e: &Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(format!("client {client} at {:?}: {e}", self.t0.elapsed()));
        }
    }

    /// Operations answered (ok) between `from` and `to` (ns since t0).
    fn answered_between(&self, from: u64, to: u64) -> usize {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.ret.is_some_and(|r| r >= from && r <= to))
            .count()
    }

    /// One recorded register write of `key` through `client`.
    async fn write(&self, client: &Client, id: u64, key: &str) -> Result<(), Error> {
        let v = format!("c{id}-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let call = self.now();
        let r = client
            .put(NewObject::new("kv", key, serde_json::json!({ "v": v })))
            .await;
        let ret = self.now();
        self.ops.lock().unwrap().push(Op {
            client: id,
            key: key.into(),
            kind: OpKind::Write(Some(v)),
            call,
            ret: r.is_ok().then_some(ret),
        });
        r.map(|_| ())
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn value(o: &vektagraf::proto::Object) -> Option<String> {
        o.properties
            .get_path("v")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    async fn run_client(self: Arc<Self>, client: Arc<Client>, id: u64) {
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let key = KEYS[((n * 7 + id * 3) % KEYS.len() as u64) as usize];
            let call = self.now();
            match n % 3 {
                0 => {
                    let r = client.get(key).await;
                    let ret = self.now();
                    let op = match r {
                        Ok(o) => Op {
                            client: id,
                            key: key.into(),
                            kind: OpKind::Read(o.as_ref().and_then(Self::value)),
                            call,
                            ret: Some(ret),
                        },
                        Err(e) => {
                            self.failure(id, &e);
                            continue;
                        }
                    };
                    self.ops.lock().unwrap().push(op);
                }
                1 => {
                    let v = format!("c{id}-{}", self.seq.fetch_add(1, Ordering::Relaxed));
                    let obj = NewObject::new("kv", key, serde_json::json!({ "v": v }));
                    let r = client.put(obj).await;
                    let ret = self.now();
                    if let Err(e) = &r {
                        self.failure(id, e);
                    }
                    self.ops.lock().unwrap().push(Op {
                        client: id,
                        key: key.into(),
                        kind: OpKind::Write(Some(v)),
                        call,
                        // Any failure may still have been applied.
                        ret: r.is_ok().then_some(ret),
                    });
                }
                _ => {
                    let u = format!("u{id}-{n}");
                    let obj = NewObject::new("kv", &u, serde_json::json!({ "v": "x" }));
                    match client.put(obj).await {
                        Ok(_) => self.inserted.lock().unwrap().push(u),
                        Err(e) => self.failure(id, &e),
                    }
                }
            }
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Final reads of every key, then checks: acknowledged inserts all
    /// present (on the node of `reader`), and the history linearizable.
    async fn verify(&self, reader: &Client) {
        for key in KEYS {
            let call = self.now();
            let o = retry(|| reader.get(key)).await;
            let ret = self.now();
            self.ops.lock().unwrap().push(Op {
                client: 999,
                key: key.into(),
                kind: OpKind::Read(o.as_ref().and_then(Self::value)),
                call,
                ret: Some(ret),
            });
        }
        let inserted = self.inserted.lock().unwrap().clone();
        let mut lost = Vec::new();
        for id in &inserted {
            if retry(|| reader.get(id)).await.is_none() {
                lost.push(id.clone());
            }
        }
        assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
        let ops = self.ops.lock().unwrap().clone();
        let writes = ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Write(_)))
            .count();
        let acked = ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Write(_)) && o.ret.is_some())
            .count();
        eprintln!(
            "history: {} ops ({writes} writes, {acked} acknowledged), {} acknowledged inserts",
            ops.len(),
            inserted.len()
        );
        assert!(
            acked > 20,
            "the workload made too little progress: {acked} writes"
        );
        match lincheck::check(&ops) {
            Ok(stats) => eprintln!("linearizable: {stats}"),
            Err(v) => panic!("not linearizable: {v}"),
        }
    }
}

/// Starts one workload client per node (clients connect to their node).
async fn start_workload(
    c: &TestCluster,
    key: &str,
    nodes: &[usize],
) -> (Arc<Workload>, Vec<tokio::task::JoinHandle<()>>) {
    let w = Workload::new();
    let mut tasks = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let client = Arc::new(c.client(*node, key).await);
        tasks.push(tokio::spawn(w.clone().run_client(client, k as u64)));
    }
    (w, tasks)
}

async fn stop_workload(w: &Workload, tasks: Vec<tokio::task::JoinHandle<()>>) {
    w.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
}

fn skip_unless_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: cluster tests need root for network namespaces");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_then_whole_cluster_restart_loses_no_acknowledged_write() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("a", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 1]).await;
    sleep_s(3.0).await;
    let leader = c.shard_leader("acme", 1).await;
    eprintln!("kill -9 of shard leader node {leader}");
    c.kill(leader);
    sleep_s(5.0).await;
    eprintln!("restarting node {leader}");
    c.spawn(leader).await;
    sleep_s(3.0).await;
    stop_workload(&w, tasks).await;
    // The restarted node catches up: its stale reads see the last insert.
    let last = w.inserted.lock().unwrap().last().cloned().unwrap();
    let on_restarted = c.client(leader, &key).await;
    retry(|| async {
        match on_restarted.get_stale(&last).await? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable {
                reason: "restarted replica not caught up yet".into(),
            }),
        }
    })
    .await;
    // Every node dies at once, then the whole cluster restarts.
    eprintln!("kill -9 of every node, then restart");
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.spawn(i).await;
    }
    let reader = c.client(2, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_of_the_leader_and_of_a_follower_keep_histories_linearizable() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("b", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 2]).await;
    sleep_s(2.0).await;
    let leader = c.shard_leader("acme", 1).await;
    eprintln!("isolating shard leader node {leader} (minority of one)");
    netns(&["isolate", &c.prefix, "3", &leader.to_string()]);
    sleep_s(6.0).await;
    // The majority side elected a new leader and serves.
    let other = (1..=3).find(|i| *i != leader).unwrap();
    let new_leader = c.shard_leader("acme", other).await;
    assert_ne!(new_leader, leader, "the isolated node cannot stay leader");
    netns(&["heal", &c.prefix, "3"]);
    sleep_s(2.0).await;
    let follower = (1..=3).find(|i| *i != new_leader).unwrap();
    eprintln!("healed; now isolating follower node {follower}");
    netns(&["isolate", &c.prefix, "3", &follower.to_string()]);
    sleep_s(4.0).await;
    netns(&["heal", &c.prefix, "3"]);
    sleep_s(3.0).await;
    stop_workload(&w, tasks).await;
    let reader = c.client(leader, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_dead_node_under_load_replicates_its_shards_onto_a_new_node() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("c", 3, 5).await;
    let key = c.tenant("acme", None).await;
    // A fourth node joins; it holds no replica of acme yet.
    c.spawn(4).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 4]).await;
    sleep_s(2.0).await;
    let admin = c.admin(1).await;
    let before = retry(|| admin.shard_info("acme")).await;
    assert!(!before.replicas.iter().any(|r| r.1 == 4), "{before:?}");
    // Kill a replica node that is not node 1 (which the admin talks to).
    let victim = before
        .replicas
        .iter()
        .map(|r| r.1 as usize)
        .find(|n| *n != 1)
        .unwrap();
    // Alive, it cannot be removed by mistake.
    match admin.remove_node(victim as u64, false).await {
        Err(Error::InvalidArgument { reason, .. }) => {
            assert!(reason.contains("alive"), "{reason}")
        }
        other => panic!("removing a live node: {other:?}"),
    }
    eprintln!("kill -9 of node {victim}, then removing it");
    c.kill(victim);
    sleep_s(1.0).await;
    // Dead, it is the one node that does not answer (`node list` shows
    // it unreachable); the others answer which groups they lead.
    let nodes = retry(|| admin.cluster_nodes()).await;
    for n in &nodes {
        assert_eq!(n.leads.is_none(), n.id == victim as u64, "{nodes:?}");
    }
    let removal = retry(|| admin.remove_node(victim as u64, false)).await;
    assert_eq!(removal.replaced, ["acme"], "{removal:?}");
    assert!(removal.under_replicated.is_empty(), "{removal:?}");
    // The group's membership converges on a replica on node 4.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let i = retry(|| admin.shard_info("acme")).await;
        let on4 = i.replicas.iter().find(|r| r.1 == 4).map(|r| r.0);
        if let Some(r4) = on4 {
            if i.voters.contains(&r4) && i.voters.len() == 3 {
                break i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "membership did not converge: {i:?}"
        );
        sleep_s(0.5).await;
    };
    eprintln!("converged: {after:?}");
    sleep_s(2.0).await;
    stop_workload(&w, tasks).await;
    // Node 4's replica has the data (stale read from its own state).
    let on4 = c.client(4, &key).await;
    let last = w.inserted.lock().unwrap().last().cloned().unwrap();
    retry(|| async {
        match on4.get_stale(&last).await? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable {
                reason: "node 4 not caught up".into(),
            }),
        }
    })
    .await;
    let nodes = admin.cluster_nodes().await.unwrap();
    assert!(nodes.iter().any(|n| n.id == victim as u64 && n.removed));
    let reader = c.client(4, &key).await;
    w.verify(&reader).await;

    // Another replica's node dies with no free node to take its place:
    // acme is reported under-replicated, then brought back to three
    // voters when a fifth node joins.
    let second = after
        .replicas
        .iter()
        .map(|r| r.1 as usize)
        .find(|n| *n != 1 && *n != 4)
        .unwrap();
    eprintln!("kill -9 of node {second}: nowhere to place its replica");
    c.kill(second);
    sleep_s(1.0).await;
    let removal = retry(|| admin.remove_node(second as u64, false)).await;
    assert!(removal.replaced.is_empty(), "{removal:?}");
    assert_eq!(removal.under_replicated, ["acme"], "{removal:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let short = loop {
        let i = settled(&admin, "acme", 60).await;
        if !nodes_of(&i).contains(&(second as u64)) {
            break i;
        }
        assert!(Instant::now() < deadline, "node {second} kept: {i:?}");
        sleep_s(0.5).await;
    };
    assert_eq!(short.voters.len(), 2, "{short:?}");
    assert_eq!(short.replication_factor, 3);
    c.spawn(5).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let i = retry(|| admin.shard_info("acme")).await;
        let on5 = i.replicas.iter().find(|r| r.1 == 5).map(|r| r.0);
        if on5.is_some_and(|r| i.voters.contains(&r)) && i.voters.len() == 3 && !i.joint {
            break;
        }
        assert!(Instant::now() < deadline, "acme not topped up: {i:?}");
        sleep_s(0.5).await;
    }
    let on5 = c.client(5, &key).await;
    retry(|| async {
        match on5.get_stale(&last).await? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable {
                reason: "node 5 not caught up".into(),
            }),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_removed_live_node_stops_serving_and_votes_until_the_new_membership_commits() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("g", 3, 4).await;
    // A tenant whose shard leader is group 0's leader, so the two other
    // nodes can be the one removed and the one paused without stalling
    // group 0. Placement may put shard leaders anywhere, so the shard's
    // leadership is moved: a short pause of its leader's node (never
    // group 0's leader) makes the two others elect one of them, while
    // writes through group 0's leader keep the group busy (a quiesced
    // group's resumed node could take the leadership back).
    let tenant = "acme".to_string();
    let key = c.tenant(&tenant, None).await;
    let meta_leader = |via: usize| {
        let c = &c;
        async move {
            let admin = c.admin(via).await;
            let nodes = retry(|| admin.cluster_nodes()).await;
            nodes.iter().find(|n| n.leader).map(|n| n.id as usize)
        }
    };
    let mut leader = c.shard_leader(&tenant, 1).await;
    let mut tries = 0;
    loop {
        let Some(m) = meta_leader(leader).await else {
            sleep_s(0.5).await;
            continue;
        };
        if m == leader {
            break;
        }
        tries += 1;
        assert!(
            tries <= 16,
            "the shard's leadership never moved to group 0's leader"
        );
        eprintln!("group 0 led by node {m}, the shard by node {leader}: pausing node {leader}");
        let busy = Arc::new(AtomicBool::new(true));
        let writer = {
            let (client, busy) = (c.client(m, &key).await, busy.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while busy.load(Ordering::Relaxed) {
                    let id = format!("arrange{i}");
                    let _ = client
                        .put(NewObject::new("kv", &id, serde_json::json!({ "i": i })))
                        .await;
                    i += 1;
                    sleep_s(0.05).await;
                }
            })
        };
        c.pause(leader);
        let _ = leader_other_than(&c, &tenant, m, leader).await;
        c.resume(leader);
        sleep_s(1.0).await;
        busy.store(false, Ordering::Relaxed);
        let _ = writer.await;
        leader = c.shard_leader(&tenant, m).await;
    }
    let others: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
    let (victim, paused) = (others[0], others[1]);
    c.spawn(4).await;
    let (w, tasks) = start_workload(&c, &key, &[leader]).await;
    sleep_s(2.0).await;
    // With `paused` stopped, the old membership's majority is the leader
    // and the victim: the change can only commit if the victim, removed
    // from the registry, still votes.
    eprintln!("SIGSTOP of node {paused}; node remove {victim} --force (it is alive)");
    c.pause(paused);
    let via = c.admin(leader).await;
    let removal = retry(|| via.remove_node(victim as u64, true)).await;
    assert_eq!(
        removal.replaced,
        std::slice::from_ref(&tenant),
        "{removal:?}"
    );
    assert!(removal.under_replicated.is_empty(), "{removal:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let i = retry(|| via.shard_info(&tenant)).await;
        let on4 = i.replicas.iter().find(|r| r.1 == 4).map(|r| r.0);
        if on4.is_some_and(|r| i.voters.contains(&r)) && i.voters.len() == 3 && !i.joint {
            eprintln!("committed while node {paused} was paused: {i:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the membership without node {victim} did not commit while node {paused} was paused: {i:?}"
        );
        sleep_s(0.5).await;
    }
    // The removed node refuses clients, with a reason that says so.
    let mut o = ClientOptions::new(
        vec![TestCluster::client_addr(victim)],
        &key,
        &c.dir.join("certs/ca.crt"),
    )
    .unwrap();
    o.max_retries = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let socket = in_netns(&format!("{}hub", c.prefix), || {
            std::net::UdpSocket::bind("0.0.0.0:0").unwrap()
        });
        socket.set_nonblocking(true).unwrap();
        let r = match Client::connect_on(o.clone(), socket).await {
            Ok(cl) => cl.get("k0").await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Err(Error::Unavailable { reason }) if reason.contains("removed") => break,
            other => assert!(
                Instant::now() < deadline,
                "removed node {victim} still serves: {other:?}"
            ),
        }
        sleep_s(0.5).await;
    }
    c.resume(paused);
    sleep_s(2.0).await;
    stop_workload(&w, tasks).await;
    // The victim's replica is gone from its disk once it left.
    let group = retry(|| via.shard_info(&tenant)).await.group;
    wait_gone(&c.dir.join(format!("node-{victim}/shards/{group}")), 40).await;
    let reader = c.client(4, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_stops_every_node_with_status_0_and_loses_nothing() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("h", 3, 3).await;
    let key = c.tenant("acme", None).await;
    for t in ["b", "c", "d"] {
        c.tenant(t, None).await;
    }
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3]).await;
    sleep_s(3.0).await;
    stop_workload(&w, tasks).await;
    let admin = c.admin(1).await;
    let before = retry(|| admin.usage(Some("acme"))).await.requests;
    let nodes = retry(|| admin.cluster_nodes()).await;
    let meta = nodes.iter().find(|n| n.leader).map(|n| n.id as usize);
    // Group 0's leader second: the last node stops with no quorum left.
    let mut order: Vec<usize> = (1..=3).filter(|n| Some(*n) != meta).collect();
    order.insert(1, meta.unwrap_or(1));
    order.dedup();
    for i in order {
        let (status, took) = c.terminate(i, Duration::from_secs(20));
        eprintln!("node {i}: {status} {took:?} after SIGTERM");
        assert!(status.success(), "node {i} exited {status} after SIGTERM");
    }
    for i in 1..=3 {
        c.spawn(i).await;
    }
    let admin = c.admin(1).await;
    let after = retry(|| admin.usage(Some("acme"))).await.requests;
    assert!(
        after.daily >= before.daily && after.monthly >= before.monthly,
        "request counts went down across the stop: {before:?} then {after:?}"
    );
    let reader = c.client(2, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_key_and_a_deleted_tenant_stop_working_on_a_cut_off_node_within_the_lease() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    const LEASE_MS: u64 = 3000;
    let mut c =
        TestCluster::start_with("l", 3, 3, &format!("metadata_lease_ms = {LEASE_MS}\n")).await;
    let key = c.tenant("acme", None).await;
    let gone_key = c.tenant("gone", None).await;
    c.tenant("gone2", None).await;
    let admin = c.admin(1).await;
    let gone_group = retry(|| admin.shard_info("gone")).await.group;
    let gone2_group = retry(|| admin.shard_info("gone2")).await.group;
    // A node that is neither group 0's leader nor (for acme) the shard
    // leader serves stale reads from its own replica.
    let meta = retry(|| admin.cluster_nodes())
        .await
        .iter()
        .find(|n| n.leader)
        .map(|n| n.id as usize);
    let lead = c.shard_leader("acme", 1).await;
    let cut = (1..=3)
        .find(|n| Some(*n) != meta && *n != lead)
        .expect("a third node");
    let put = c.client(lead, &key).await;
    retry(|| put.put(NewObject::new("kv", "k0", serde_json::json!({"v": 1})))).await;
    // Pinned to the cut-off node: no following the leader's hint.
    let on_cut = c.client_with(cut, &key, |o| o.follow_leader = false).await;
    let gone_on_cut = c
        .client_with(cut, &gone_key, |o| o.follow_leader = false)
        .await;
    retry(|| async {
        match on_cut.get_stale("k0").await? {
            Some(_) => Ok(()),
            None => Err(Error::Unavailable {
                reason: "not replicated yet".into(),
            }),
        }
    })
    .await;
    retry(|| gone_on_cut.get_stale("x")).await;
    eprintln!("node {cut} cut off from its peers; revoking acme's key and deleting tenant gone");
    netns(&["isolate", &c.prefix, "3", &cut.to_string()]);
    let key_id = key.split('_').nth(1).unwrap().to_string();
    let via = c.admin(meta.unwrap_or(lead)).await;
    retry(|| via.revoke_key(&key_id)).await;
    retry(|| via.delete_tenant("gone")).await;
    let cut_at = Instant::now();
    // Within the lease (plus a heartbeat and a margin for a loaded
    // machine), the cut-off node refuses both.
    let refused = |r: &Result<Option<vektagraf::proto::Object>, Error>| {
        matches!(
            r,
            Err(Error::Unavailable { .. } | Error::Unauthenticated { .. })
                | Err(Error::TenantNotFound { .. })
        )
    };
    let deadline = Duration::from_millis(LEASE_MS + 5_000);
    loop {
        let (a, b) = (
            on_cut.get_stale("k0").await,
            gone_on_cut.get_stale("x").await,
        );
        if refused(&a) && refused(&b) {
            eprintln!(
                "refused {:?} after the revocation: {a:?} / {b:?}",
                cut_at.elapsed()
            );
            break;
        }
        assert!(
            cut_at.elapsed() < deadline,
            "node {cut} still serves a revoked key or a deleted tenant: {a:?} / {b:?}"
        );
        sleep_s(0.2).await;
    }
    netns(&["heal", &c.prefix, "3"]);
    // Healed: the revocation itself is what refuses now.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match on_cut.get_stale("k0").await {
            Err(Error::Unauthenticated { reason }) if reason.contains("revoked") => break,
            other => assert!(Instant::now() < deadline, "after healing: {other:?}"),
        }
        sleep_s(0.3).await;
    }
    // The deleted tenant's replica is purged on the node that was cut off.
    let shard = |g: u64| c.dir.join(format!("node-{cut}/shards/{g}"));
    wait_gone(&shard(gone_group), 30).await;
    // A tenant deleted while the node is down, and a replica directory
    // no record knows (a purge cut short): both swept after a restart.
    assert!(shard(gone2_group).exists());
    c.kill(cut);
    retry(|| via.delete_tenant("gone2")).await;
    let orphan = c.dir.join(format!("node-{cut}/shards/999999/db"));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("CURRENT"), b"left behind").unwrap();
    c.spawn(cut).await;
    let shard = |g: u64| c.dir.join(format!("node-{cut}/shards/{g}"));
    wait_gone(&shard(gone2_group), 30).await;
    wait_gone(&shard(999_999), 30).await;
}

/// Waits up to `secs` for `path` to disappear.
async fn wait_gone(path: &std::path::Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} still there", path.display());
        sleep_s(0.5).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_quota_is_exact_with_writers_on_every_node_and_tenants_stay_isolated() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("d", 3, 3).await;
    let mut cfg = roomy("quota");
    cfg.storage_limit.max_objects = 40;
    cfg.storage_limit.hard_limits = true;
    let qkey = c.tenant("quota", Some(cfg)).await;
    let okey = c.tenant("other", None).await;
    // Three writers, one per node, 30 distinct objects each, at once.
    let mut tasks = Vec::new();
    for node in 1..=3usize {
        let client = c.client(node, &qkey).await;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0, 0);
            for i in 0..30 {
                let obj = NewObject::new("kv", &format!("n{node}-{i}"), serde_json::json!({}));
                match client.put(obj).await {
                    Ok(_) => ok += 1,
                    Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Objects => limited += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (ok, limited)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (ok, limited) = t.await.unwrap();
        assert_eq!(ok + limited, 30);
        total += ok;
    }
    assert_eq!(total, 40, "exactly the quota is admitted across nodes");
    let admin = c.admin(3).await;
    let usage = retry(|| admin.usage(Some("quota"))).await;
    assert_eq!(usage.storage.objects, 40);
    // Isolation on every node: the other tenant sees none of these ids,
    // and its own object is invisible to the quota tenant.
    let mine = c.client(1, &okey).await;
    retry(|| {
        mine.put(NewObject::new(
            "kv",
            "secret",
            serde_json::json!({"v": "o"}),
        ))
    })
    .await;
    for node in 1..=3usize {
        let other = c.client(node, &okey).await;
        assert_eq!(other.get("n1-0").await.unwrap(), None, "node {node}");
        assert_eq!(other.get_stale("n2-0").await.unwrap(), None, "node {node}");
        let quota = c.client(node, &qkey).await;
        assert_eq!(quota.get("secret").await.unwrap(), None, "node {node}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_quiesced_tenant_survives_the_death_of_its_leader_node() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("e", 3, 3).await;
    let key = c.tenant("sleepy", None).await;
    let writer = c.client(1, &key).await;
    retry(|| {
        writer.put(NewObject::new(
            "kv",
            "k",
            serde_json::json!({"v": "before"}),
        ))
    })
    .await;
    // Idle for longer than QUIESCE_AFTER: every replica stops ticking.
    let admin = c.admin(1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let info = retry(|| admin.shard_info("sleepy")).await;
        if info.quiesced {
            break info.leader_node.expect("a quiesced group has a leader") as usize;
        }
        assert!(
            Instant::now() < deadline,
            "the idle group did not quiesce: {info:?}"
        );
        sleep_s(1.0).await;
    };
    // Its leader's node dies; the followers must notice (liveness probe),
    // wake, elect, and serve both reads and writes.
    eprintln!("group quiesced; kill -9 of its leader node {leader}");
    c.kill(leader);
    let other = (1..=3).find(|i| *i != leader).unwrap();
    let client = c.client(other, &key).await;
    let got = retry(|| client.get("k")).await.expect("object survives");
    assert_eq!(Workload::value(&got).as_deref(), Some("before"));
    retry(|| client.put(NewObject::new("kv", "k", serde_json::json!({"v": "after"})))).await;
    let got = retry(|| client.get("k")).await.unwrap();
    assert_eq!(Workload::value(&got).as_deref(), Some("after"));
    let admin = c.admin(other).await;
    let info = retry(|| admin.shard_info("sleepy")).await;
    assert_ne!(info.leader_node, Some(leader as u64), "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_three_split_with_the_leader_in_the_minority_keeps_histories_linearizable() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("f", 5, 5).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 4, 5]).await;
    sleep_s(2.0).await;
    let admin = c.admin(1).await;
    let info = retry(|| admin.shard_info("acme")).await;
    let leader = c.shard_leader("acme", 1).await;
    // The minority: the shard leader's node and a node holding no replica.
    let spare = (1..=5usize)
        .find(|n| !info.replicas.iter().any(|r| r.1 as usize == *n))
        .unwrap();
    let minority = [leader, spare];
    let majority: Vec<usize> = (1..=5).filter(|n| !minority.contains(n)).collect();
    eprintln!("split {minority:?} | {majority:?}");
    for a in minority {
        for b in &majority {
            netns(&["cut", &c.prefix, &a.to_string(), &b.to_string()]);
        }
    }
    sleep_s(6.0).await;
    // The majority side elected a leader among the other two replicas.
    let new_leader = c.shard_leader("acme", majority[0]).await;
    assert!(
        majority.contains(&new_leader),
        "leader {new_leader} is not on the majority side"
    );
    netns(&["heal", &c.prefix, "5"]);
    sleep_s(3.0).await;
    stop_workload(&w, tasks).await;
    let reader = c.client(leader, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_whose_answers_are_lost_apply_exactly_once_across_a_leader_kill() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("x", 3, 3).await;
    let key = c.tenant("once", None).await;
    let leader = c.shard_leader("once", 1).await;
    // Writers on the two other nodes; the first answer to every write is
    // lost after the write ran, so every write is retried at least once.
    let mut tasks = Vec::new();
    for node in (1..=3usize).filter(|n| *n != leader) {
        let client = c.client_losing(node, &key, u32::MAX).await;
        tasks.push(tokio::spawn(async move {
            let (mut created, mut failed) = (Vec::new(), 0);
            for i in 0..150 {
                let id = format!("n{node}-{i}");
                match client
                    .put(NewObject::new("kv", &id, serde_json::json!({})))
                    .await
                {
                    Ok(w) => {
                        // Applied twice, the retry would answer Updated.
                        assert_eq!(w.outcomes, vec![WriteOutcome::Created], "{id}");
                        created.push(id);
                    }
                    // Retries exhausted during the failover: outcome unknown.
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (created, failed)
        }));
    }
    sleep_s(2.0).await;
    eprintln!("kill -9 of shard leader node {leader} under retried writes");
    c.kill(leader);
    let (mut created, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (ok, f) = t.await.unwrap();
        created.extend(ok);
        failed += f;
    }
    c.spawn(leader).await;
    let reader = c.client((leader % 3) + 1, &key).await;
    for id in &created {
        assert!(
            retry(|| reader.get(id)).await.is_some(),
            "{id} acknowledged but missing"
        );
    }
    eprintln!(
        "exactly once: {} writes answered Created after a lost answer and a retry, {failed} gave up during the failover",
        created.len()
    );
    assert!(
        created.len() >= 200,
        "too few writes succeeded: {}",
        created.len()
    );
}

/// Counts of one client's requests in a quota test.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    admitted: u64,
    /// Refused by the limit the test is about.
    limited: u64,
    /// Any other error (unavailable during a failover, timeouts).
    other: u64,
}

impl std::ops::AddAssign for Spent {
    fn add_assign(&mut self, o: Spent) {
        self.admitted += o.admitted;
        self.limited += o.limited;
        self.other += o.other;
    }
}

/// Clients that never retry (each call is one admission decision), two
/// per node in `nodes`: one sending linearizable gets (forwarded to the
/// shard leader from a follower), one stale gets (served by the replica
/// it reaches, on a follower from a grant).
async fn one_shot_clients(c: &TestCluster, key: &str, nodes: &[usize]) -> Vec<(bool, Arc<Client>)> {
    let mut out = Vec::new();
    for &n in nodes {
        for stale in [false, true] {
            let client = c.client_with(n, key, |o| o.max_retries = 0).await;
            out.push((stale, Arc::new(client)));
        }
    }
    out
}

/// Sends gets of object `k` from every client, each paced `every`, until
/// `stop` says so; counts what was admitted and what `kind` refused.
async fn spend(
    clients: &[(bool, Arc<Client>)],
    kind: LimitKind,
    every: Duration,
    stop: impl Fn(&Spent, Instant) -> bool + Send + Sync + 'static,
) -> Spent {
    let total = Arc::new(std::sync::Mutex::new(Spent::default()));
    let stop = Arc::new(stop);
    let mut tasks = Vec::new();
    for (stale, client) in clients.iter().cloned() {
        let (total, stop) = (total.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let issued = Instant::now();
                let so_far = *total.lock().unwrap();
                if stop(&so_far, issued) {
                    return;
                }
                let r = if stale {
                    client.get_stale("k").await
                } else {
                    client.get("k").await
                };
                {
                    let mut t = total.lock().unwrap();
                    match r {
                        Ok(_) => t.admitted += 1,
                        Err(Error::LimitExceeded(le)) if le.kind == kind => t.limited += 1,
                        Err(_) => t.other += 1,
                    }
                }
                tokio::time::sleep_until((issued + every).into()).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let t = *total.lock().unwrap();
    t
}

/// The tenant's daily count as its shard leader holds it.
async fn daily_count(c: &TestCluster, tenant: &str, via: usize) -> u64 {
    let admin = c.admin(via).await;
    retry(|| admin.usage(Some(tenant))).await.requests.daily
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_cluster_wide_with_stale_and_linearizable_reads_on_every_node() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("r", 3, 3).await;
    const R: u64 = 20;
    const SECONDS: u64 = 30;
    let mut cfg = roomy("rate");
    cfg.rate_limit.max_requests = R;
    cfg.rate_limit.burst_allowance = 0;
    cfg.rate_limit.time_window = Window(Duration::from_secs(1));
    cfg.rate_limit.sliding_window = false;
    let key = c.tenant("rate", Some(cfg)).await;
    let writer = c.client(1, &key).await;
    retry(|| writer.put(NewObject::new("kv", "k", serde_json::json!({})))).await;
    let clients = one_shot_clients(&c, &key, &[1, 2, 3]).await;
    // Six clients, one request each per 30 ms: about 200 a second, 10 x R.
    // Start on a whole second, so the run covers exactly SECONDS windows.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let to_whole = Duration::from_millis(1_000 - (now.as_millis() % 1_000) as u64);
    tokio::time::sleep(to_whole + Duration::from_secs(1)).await;
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let spent = spend(
        &clients,
        LimitKind::Rate,
        Duration::from_millis(30),
        move |_, at| at >= end,
    )
    .await;
    let expected = R * SECONDS;
    let ratio = spent.admitted as f64 / expected as f64;
    eprintln!(
        "global rate: {} admitted in {SECONDS} s at R = {R}/s (expected {expected}, ratio {ratio:.3}); {} refused by the rate limit, {} other errors",
        spent.admitted, spent.limited, spent.other
    );
    assert!(
        spent.limited > 5 * expected,
        "the load must be about 10 x R: {spent:?}"
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "admitted {} is not within 5% of R x {SECONDS} = {expected}",
        spent.admitted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daily_quota_holds_across_a_leader_kill_and_a_restart_of_every_node() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("q", 3, 3).await;
    const N: u64 = 300;
    let mut cfg = roomy("daily");
    cfg.request_limit.daily_limit = N;
    let key = c.tenant("daily", Some(cfg)).await;
    let writer = c.client(1, &key).await;
    retry(|| writer.put(NewObject::new("kv", "k", serde_json::json!({})))).await;
    let leader = c.shard_leader("daily", 1).await;
    let others: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
    let base = daily_count(&c, "daily", others[0]).await;
    let every = Duration::from_millis(20);
    // The budget is spent when every client has been refused 10 times
    // (5 x 10 > 40 errors in a row would take a very unlucky schedule).
    let spent_out = |clients: usize| move |s: &Spent, _: Instant| s.limited >= 10 * clients as u64;

    // 1. Half the budget through all three nodes.
    let all = one_shot_clients(&c, &key, &[1, 2, 3]).await;
    let half = (N - base) / 2;
    let first = spend(&all, LimitKind::Daily, every, move |s, _| {
        s.admitted >= half
    })
    .await;
    let after_first = daily_count(&c, "daily", others[0]).await;
    eprintln!(
        "daily: base {base}, phase 1 admitted {} (count now {after_first})",
        first.admitted
    );
    assert!(
        after_first >= base + first.admitted,
        "the count lags what was admitted"
    );
    drop(all);

    // 2. kill -9 of the shard leader; the rest through the other nodes.
    eprintln!("kill -9 of shard leader node {leader}");
    c.kill(leader);
    let rest_clients = one_shot_clients(&c, &key, &others).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let n_clients = rest_clients.len();
    let rest = spend(&rest_clients, LimitKind::Daily, every, move |s, at| {
        spent_out(n_clients)(s, at) || at > deadline
    })
    .await;
    let after_kill = daily_count(&c, "daily", others[0]).await;
    let admitted = base + first.admitted + rest.admitted;
    eprintln!(
        "daily: phase 2 admitted {}, refused {} (daily), {} other; count {after_kill}; total admitted {admitted} of {N}",
        rest.admitted, rest.limited, rest.other
    );
    assert!(
        rest.limited >= 10 * n_clients as u64,
        "the budget was never spent: {rest:?}"
    );
    assert!(
        after_kill >= after_first,
        "the count went down: {after_first} -> {after_kill}"
    );
    assert!(
        after_kill >= admitted,
        "count {after_kill} < admitted {admitted}"
    );
    // The stated bound (ARCHITECTURE.md, "Limits across the cluster"):
    // debt of at most a quarter of a grant per follower, grants at most
    // ceil(left / 6) here: 300 + 2 * floor(50 / 4).
    let bound = N + 2 * (N.div_ceil(6) / 4);
    assert!(
        admitted <= bound,
        "admitted {admitted} > N + bound = {bound}"
    );
    // Under-admission is bounded too: a lost reservation step and lost
    // unspent grants.
    assert!(
        admitted + 2 * vektagraf::limits::reservation_step(N) + 20 >= N,
        "only {admitted} of {N} admitted"
    );

    // 3. Every node killed -9 and restarted: the count does not go down and
    //    nothing more is admitted today.
    c.spawn(leader).await;
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.spawn(i).await;
    }
    let after_restart = daily_count(&c, "daily", 1).await;
    let all = one_shot_clients(&c, &key, &[1, 2, 3]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let n_clients = all.len();
    let again = spend(&all, LimitKind::Daily, every, move |s, at| {
        spent_out(n_clients)(s, at) || at > deadline
    })
    .await;
    let total = admitted + again.admitted;
    eprintln!(
        "daily: after restarting every node the count is {after_restart}; {} more admitted, {} refused; total {total} of {N} (bound {bound})",
        again.admitted, again.limited
    );
    assert!(
        after_restart >= after_kill,
        "the count went down: {after_kill} -> {after_restart}"
    );
    assert!(total <= bound, "admitted {total} > N + bound = {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_in_flight_through_a_leader_kill_complete_on_the_new_leader() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("f", 3, 3).await;
    let key = c.tenant("fail", None).await;
    let leader = c.shard_leader("fail", 1).await;
    // A driver given a follower's address follows the leader hint: after
    // one request it talks to the leader directly (no forwarding hop).
    let follower = (1..=3usize).find(|n| *n != leader).unwrap();
    let probe = c.client(follower, &key).await;
    assert_eq!(
        probe.connected_to(),
        Some(TestCluster::client_addr(follower))
    );
    retry(|| probe.get("nothing")).await;
    retry(|| probe.get("nothing")).await;
    assert_eq!(
        probe.connected_to(),
        Some(TestCluster::client_addr(leader)),
        "the driver did not follow the leader hint"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    // Two writers on each surviving node, one put per 10 ms each.
    for node in (1..=3usize).filter(|n| *n != leader) {
        for w in 0..2 {
            let client = c.client(node, &key).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                // (issued ms, done ms, ok) of every put.
                let mut log = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let issued = t0.elapsed().as_millis() as u64;
                    let r = client
                        .put(NewObject::new(
                            "kv",
                            &format!("n{node}w{w}-{i}"),
                            serde_json::json!({}),
                        ))
                        .await;
                    log.push((
                        issued,
                        t0.elapsed().as_millis() as u64,
                        r.map_err(|e| e.to_string()),
                    ));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                log
            }));
        }
    }
    sleep_s(3.0).await;
    killed_at.store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    eprintln!("kill -9 of shard leader node {leader} under writes from the other nodes");
    c.kill(leader);
    sleep_s(10.0).await;
    stop.store(true, Ordering::Relaxed);
    let k = killed_at.load(Ordering::Relaxed);
    let mut log = Vec::new();
    for t in tasks {
        log.extend(t.await.unwrap());
    }
    let failed: Vec<_> = log.iter().filter(|(_, _, r)| r.is_err()).collect();
    let first_fresh = log
        .iter()
        .filter(|(issued, _, r)| *issued >= k && r.is_ok())
        .map(|(_, done, _)| done - k)
        .min();
    let in_flight_done = log
        .iter()
        .filter(|(issued, done, _)| *issued < k && *done >= k)
        .map(|(_, done, _)| done - k)
        .max();
    let before = log.iter().filter(|(i, _, _)| *i < k).count();
    eprintln!(
        "failover: {} writes ({before} before the kill); the first write issued after the kill succeeded {:?} ms after it; writes in flight at the kill finished within {in_flight_done:?} ms after it; {} failed; election timeout 800-1600 ms",
        log.len(),
        first_fresh,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "writes failed across the failover: {failed:?}"
    );
    assert!(first_fresh.is_some(), "no write succeeded after the kill");
}

// ----- tenant moves, rebalancing and drains -----

/// Move tests: a slow snapshot stream (1 MB/s), so a move of a tenant
/// with a few MB takes seconds and faults land in its middle.
const SLOW_MOVES: &str = "snapshot_mb_per_s = 1\nmove_stall_timeout_ms = 60000\n";

/// Writes `n` objects of about 1 KB each into `kv` (batches of 100).
/// Their padding is pseudo-random hex, which RocksDB cannot compress
/// away: the snapshot really is about `n` KB, and a 1 MB/s stream of it
/// takes seconds.
async fn preload(c: &TestCluster, key: &str, n: usize) {
    let client = c.client(1, key).await;
    let pad = |i: usize| {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..63)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect::<String>()
    };
    for start in (0..n).step_by(100) {
        let ops: Vec<vektagraf::proto::WriteOp> = (start..(start + 100).min(n))
            .map(|i| {
                vektagraf::proto::WriteOp::Put(NewObject::new(
                    "kv",
                    &format!("pre{i}"),
                    serde_json::json!({ "v": "pre", "pad": pad(i) }),
                ))
            })
            .collect();
        retry(|| client.transaction(ops.clone())).await;
    }
}

/// Polls job `id` until it reaches a state `ready` accepts or ends.
async fn job_until(
    admin: &Client,
    id: u64,
    secs: u64,
    ready: impl Fn(JobState) -> bool,
) -> MoveJob {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        match admin.job(id).await {
            Ok(j) if ready(j.state) || j.state.is_terminal() => return j,
            Ok(j) => last = Some(j),
            Err(e) => eprintln!("job {id}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not get there in {secs} s: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job_end(admin: &Client, id: u64, secs: u64) -> MoveJob {
    let j = job_until(admin, id, secs, |s| s.is_terminal()).await;
    eprintln!("job {id} ended: {j:?}");
    j
}

/// Waits until `tenant`'s group has exactly the replicas of its record
/// as voters, no learners and no change under way; returns its info.
async fn settled(admin: &Client, tenant: &str, secs: u64) -> ShardInfo {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(i) = admin.shard_info(tenant).await {
            let mut record: Vec<u64> = i.replicas.iter().map(|r| r.0).collect();
            record.sort();
            let mut voters = i.voters.clone();
            voters.sort();
            if voters == record && i.learners.is_empty() && !i.joint && i.leader_node.is_some() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "group of {tenant} did not settle: {i:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn nodes_of(i: &ShardInfo) -> std::collections::BTreeSet<u64> {
    i.replicas.iter().map(|r| r.1).collect()
}

/// The node of 1..=n holding no replica of the group.
fn free_node(i: &ShardInfo, n: u64) -> u64 {
    (1..=n)
        .find(|x| !nodes_of(i).contains(x))
        .expect("a free node")
}

async fn driver_node(admin: &Client) -> u64 {
    retry(|| admin.cluster_nodes())
        .await
        .iter()
        .find(|n| n.leader)
        .map(|n| n.id)
        .expect("group 0 has a leader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_moves_to_another_node_under_load_with_no_failed_request() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("m", 3, 4, SLOW_MOVES).await;
    let key = c.tenant("acme", None).await;
    c.spawn(4).await;
    preload(&c, &key, 2000).await;
    let admin = c.admin(4).await;
    let before = retry(|| admin.usage(Some("acme"))).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 4]).await;
    sleep_s(1.0).await;
    let info = settled(&admin, "acme", 30).await;
    // The leader's replica moves: the hardest case (a hand-over).
    let from = info.leader_node.unwrap();
    let to = free_node(&info, 4);
    let built = |c: &TestCluster| {
        std::fs::read_to_string(c.log(from as usize))
            .unwrap()
            .matches("snapshot built")
            .count()
    };
    let job = admin.move_tenant("acme", to, Some(from)).await.unwrap();
    eprintln!(
        "moving acme's replica from node {from} to node {to}: job {}",
        job.id
    );
    job_until(&admin, job.id, 60, |s| s >= JobState::CatchingUp).await;
    let built_before = built(&c);
    let job = job_end(&admin, job.id, 180).await;
    assert_eq!(job.state, JobState::Done, "{job:?}");
    // The source kept taking snapshots (of every group it holds) while it
    // streamed one to the target at 1 MB/s; the stream was not cut by
    // them (a snapshot being sent is pinned), so the target installed
    // one and no receive failed.
    eprintln!(
        "snapshots built during the transfer: {}",
        built(&c) - built_before
    );
    let target_log = std::fs::read_to_string(c.log(to as usize)).unwrap();
    assert!(
        target_log.contains("installed a snapshot streamed by the leader"),
        "node {to} never installed a snapshot"
    );
    assert!(
        !target_log.contains("snapshot receive failed"),
        "a snapshot stream to node {to} broke"
    );
    let after = settled(&admin, "acme", 30).await;
    sleep_s(1.0).await;
    stop_workload(&w, tasks).await;
    assert!(
        nodes_of(&after).contains(&to) && !nodes_of(&after).contains(&from),
        "{after:?}"
    );
    assert_eq!(after.voters.len(), 3, "{after:?}");
    let failed = w.failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "requests failed during the move: {:?}",
        w.errors.lock().unwrap()
    );
    // The source purged its replica (once the membership without it was
    // in place: within its leader's silence, 10 s, and a reconcile pass).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(c.log(from as usize))
        .unwrap()
        .contains("replica no longer placed here")
    {
        assert!(Instant::now() < deadline, "node {from} kept its replica");
        sleep_s(0.5).await;
    }
    // Usage moved with the shard: exact object counts, request counts
    // never went back.
    let usage = retry(|| admin.usage(Some("acme"))).await;
    let reader = c.client(to as usize, &key).await;
    let mut keys_written = 0;
    for k in KEYS {
        if retry(|| reader.get(k)).await.is_some() {
            keys_written += 1;
        }
    }
    let inserted = w.inserted.lock().unwrap().len() as u64;
    assert_eq!(
        usage.storage.objects,
        before.storage.objects + inserted + keys_written,
        "object count after the move: {usage:?} (before {before:?})"
    );
    assert!(
        usage.requests.daily >= before.requests.daily + inserted,
        "request counters went back: {usage:?} (before {before:?})"
    );
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_source_the_target_and_the_driver_in_the_middle_of_moves_loses_nothing() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("k", 3, 4, SLOW_MOVES).await;
    let key = c.tenant("acme", None).await;
    c.spawn(4).await;
    preload(&c, &key, 2000).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 4]).await;
    for victim_role in ["source", "target", "driver"] {
        let probe = c.admin(1).await;
        let info = settled(&probe, "acme", 60).await;
        let driver = driver_node(&probe).await;
        let to = free_node(&info, 4);
        let from = *nodes_of(&info)
            .iter()
            .find(|n| **n != driver)
            .expect("a replica off the driver");
        let victim = match victim_role {
            "source" => from,
            "target" => to,
            _ => driver,
        };
        // Talk through a node that survives.
        let via = (1..=4u64).find(|n| *n != victim).unwrap();
        let admin = c.admin(via as usize).await;
        let job = retry(|| admin.move_tenant("acme", to, Some(from))).await;
        let mid = job_until(&admin, job.id, 60, |s| {
            matches!(s, JobState::CatchingUp | JobState::Promoting)
        })
        .await;
        eprintln!(
            "{victim_role}: job {} from {from} to {to} in state {}; kill -9 of node {victim}",
            job.id, mid.state
        );
        c.kill(victim as usize);
        sleep_s(3.0).await;
        c.spawn(victim as usize).await;
        let end = job_end(&admin, job.id, 240).await;
        eprintln!(
            "{victim_role}: job {} ended {} ({:?})",
            job.id, end.state, end.reason
        );
        let after = settled(&admin, "acme", 60).await;
        assert_eq!(after.voters.len(), 3, "{after:?}");
        match end.state {
            JobState::Done => {
                assert!(
                    nodes_of(&after).contains(&to) && !nodes_of(&after).contains(&from),
                    "{after:?}"
                )
            }
            JobState::Failed | JobState::Cancelled => {
                assert_eq!(
                    nodes_of(&after),
                    nodes_of(&info),
                    "a failed move must leave the group as it was"
                )
            }
            s => panic!("job ended in {s}"),
        }
    }
    stop_workload(&w, tasks).await;
    let reader = c.client(1, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_between_source_and_target_during_a_move_loses_nothing() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("p", 3, 4, SLOW_MOVES).await;
    let key = c.tenant("acme", None).await;
    c.spawn(4).await;
    preload(&c, &key, 2000).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 4]).await;
    let admin = c.admin(1).await;
    let info = settled(&admin, "acme", 30).await;
    let from = info.leader_node.unwrap();
    let to = free_node(&info, 4);
    let job = admin.move_tenant("acme", to, Some(from)).await.unwrap();
    job_until(&admin, job.id, 60, |s| s >= JobState::CatchingUp).await;
    eprintln!("cutting node {from} (source, leader) from node {to} (target)");
    netns(&["cut", &c.prefix, &from.to_string(), &to.to_string()]);
    sleep_s(10.0).await;
    netns(&["heal", &c.prefix, "4"]);
    let end = job_end(&admin, job.id, 240).await;
    assert_eq!(end.state, JobState::Done, "{end:?}");
    let after = settled(&admin, "acme", 60).await;
    assert!(
        nodes_of(&after).contains(&to) && !nodes_of(&after).contains(&from),
        "{after:?}"
    );
    stop_workload(&w, tasks).await;
    let reader = c.client(to as usize, &key).await;
    w.verify(&reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cancelled_in_the_middle_leaves_the_group_as_it_was() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("n", 3, 4, SLOW_MOVES).await;
    let key = c.tenant("acme", None).await;
    c.spawn(4).await;
    preload(&c, &key, 3000).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2]).await;
    let admin = c.admin(2).await;
    let info = settled(&admin, "acme", 30).await;
    let to = free_node(&info, 4);
    let job = admin.move_tenant("acme", to, None).await.unwrap();
    let mid = job_until(&admin, job.id, 60, |s| s == JobState::CatchingUp).await;
    assert_eq!(mid.state, JobState::CatchingUp, "{mid:?}");
    admin.cancel_job(job.id).await.unwrap();
    let end = job_end(&admin, job.id, 60).await;
    assert_eq!(end.state, JobState::Cancelled, "{end:?}");
    let after = settled(&admin, "acme", 60).await;
    assert_eq!(nodes_of(&after), nodes_of(&info), "{after:?}");
    let mut v1 = after.voters.clone();
    let mut v0 = info.voters.clone();
    v1.sort();
    v0.sort();
    assert_eq!(v1, v0, "voters changed");
    // The target dropped what it had received.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(c.log(to as usize))
        .unwrap()
        .contains("replica no longer placed here")
    {
        assert!(
            Instant::now() < deadline,
            "node {to} kept the cancelled replica"
        );
        sleep_s(0.5).await;
    }
    // A finished job cannot be cancelled.
    assert!(admin.cancel_job(job.id).await.is_err());
    stop_workload(&w, tasks).await;
    w.verify(&admin_reader(&c, &key).await).await;
}

async fn admin_reader(c: &TestCluster, key: &str) -> Client {
    c.client(1, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_joining_a_loaded_cluster_gets_its_share_and_a_drain_empties_it() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("r", 3, 4, "rebalance_on_join = true\n").await;
    let key = c.tenant("acme", None).await;
    let admin = c.admin(1).await;
    for i in 0..7 {
        retry(|| admin.create_tenant(roomy(&format!("t{i}")))).await;
    }
    preload(&c, &key, 500).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3]).await;
    sleep_s(1.0).await;
    eprintln!("node 4 joins");
    c.spawn(4).await;
    // 8 groups × 3 replicas over 4 nodes: 6 each; leaders 2 each.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let plan = retry(|| admin.rebalance(true)).await;
        let jobs = retry(|| admin.jobs()).await;
        let running = jobs.iter().filter(|j| !j.state.is_terminal()).count();
        let spread = |f: fn(&(u64, usize, usize)) -> usize| {
            let v: Vec<usize> = plan.before.iter().map(f).collect();
            v.iter().max().unwrap() - v.iter().min().unwrap()
        };
        eprintln!("load {:?}, {running} jobs running", plan.before);
        if running == 0 && plan.before.len() == 4 && spread(|x| x.1) <= 1 && spread(|x| x.2) <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced: {plan:?}\n{jobs:?}"
        );
        sleep_s(2.0).await;
    }
    let jobs = retry(|| admin.jobs()).await;
    assert!(jobs.iter().all(|j| j.state == JobState::Done), "{jobs:?}");
    assert!(
        jobs.iter().any(|j| j.to_node == 4),
        "nothing moved to node 4: {jobs:?}"
    );
    eprintln!("balanced; draining node 4");
    let plan = admin.drain_node(4).await.unwrap();
    assert!(!plan.jobs.is_empty(), "{plan:?}");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let plan = retry(|| admin.rebalance(true)).await;
        let jobs = retry(|| admin.jobs()).await;
        let running = jobs.iter().filter(|j| !j.state.is_terminal()).count();
        let on4 = plan
            .before
            .iter()
            .find(|x| x.0 == 4)
            .map(|x| x.1)
            .unwrap_or(0);
        if running == 0 && on4 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 not drained: {plan:?}\n{jobs:?}"
        );
        sleep_s(2.0).await;
    }
    // No tenant lost a replica.
    for t in ["acme", "t0", "t1", "t2", "t3", "t4", "t5", "t6"] {
        let i = settled(&admin, t, 60).await;
        assert_eq!(i.voters.len(), 3, "{i:?}");
        assert!(!nodes_of(&i).contains(&4), "{i:?}");
    }
    // `node list` says the same: node 4 holds and leads nothing, and the
    // others hold all 24 replicas and lead all 8 groups.
    let nodes = retry(|| admin.cluster_nodes()).await;
    let n4 = nodes.iter().find(|n| n.id == 4).expect("node 4 listed");
    assert!(
        n4.draining && n4.replicas == 0 && n4.leads == Some(0),
        "{nodes:?}"
    );
    assert_eq!(
        nodes.iter().map(|n| n.replicas).sum::<u64>(),
        24,
        "{nodes:?}"
    );
    assert_eq!(
        nodes.iter().filter_map(|n| n.leads).sum::<u64>(),
        8,
        "{nodes:?}"
    );
    // A new tenant is not placed on the draining node.
    retry(|| admin.create_tenant(roomy("late"))).await;
    let late = settled(&admin, "late", 60).await;
    assert!(!nodes_of(&late).contains(&4), "{late:?}");
    stop_workload(&w, tasks).await;
    let failed = w.failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "requests failed: {:?}", w.errors.lock().unwrap());
    w.verify(&c.client(1, &key).await).await;
}

/// Every object of a tenant (collection `kv`, then `vecs`), by id.
async fn tenant_objects(c: &Client) -> Vec<vektagraf::proto::Object> {
    let mut out = Vec::new();
    for coll in ["kv", "vecs"] {
        let mut after: Option<String> = None;
        loop {
            let page = retry(|| c.scan(coll, after.as_deref(), 200)).await;
            if page.is_empty() {
                break;
            }
            after = page.last().map(|o| o.id.clone());
            out.extend(page);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_exported_from_one_cluster_imports_into_another_equal_and_a_tampered_file_fails() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("acme.vkx");
    // Cluster A: a tenant with two collections, vectors, edges, reads.
    let (objects, edges, usage, config) = {
        let c = TestCluster::start("ea", 3, 3).await;
        let mut cfg = roomy("acme");
        cfg.custom_settings =
            vektagraf::proto::Properties::from_json(serde_json::json!({"region": "eu"})).unwrap();
        let key = c.tenant("acme", Some(cfg)).await;
        let admin = c.admin(1).await;
        admin.create_user("acme", "carol").await.unwrap();
        let t = c.client(2, &key).await;
        retry(|| t.create_collection(CollectionSpec::vectors("vecs", 4))).await;
        let mut ops = Vec::new();
        for i in 0..300u32 {
            let f = i as f32;
            ops.push(vektagraf::proto::WriteOp::Put(
                NewObject::new("vecs", &format!("v{i:04}"), serde_json::json!({"i": i}))
                    .with_vector(vec![f, f * 0.5, 1.0 / (f + 1.0), -f]),
            ));
            ops.push(vektagraf::proto::WriteOp::Put(NewObject::new(
                "kv",
                &format!("k{i:04}"),
                serde_json::json!({"s": format!("value {i}")}),
            )));
        }
        for chunk in ops.chunks(100) {
            for r in t.batch(chunk.to_vec()).await {
                r.unwrap();
            }
        }
        let edges: Vec<_> = (0..200u32)
            .map(|i| {
                vektagraf::proto::WriteOp::PutEdge(vektagraf::proto::Edge {
                    from: format!("v{i:04}"),
                    label: "near".into(),
                    to: format!("k{:04}", (i * 13) % 300),
                    properties: vektagraf::proto::Properties::new(),
                })
            })
            .collect();
        for chunk in edges.chunks(100) {
            retry(|| t.transaction(chunk.to_vec())).await;
        }
        for i in 0..20 {
            t.get(&format!("k{i:04}")).await.unwrap();
        }
        // Export through a node that does not lead the shard (forwarded).
        let leader = c.shard_leader("acme", 1).await;
        let via = (1..=3).find(|n| *n != leader).unwrap();
        let admin_via = c.admin(via).await;
        let usage = admin.usage(Some("acme")).await.unwrap();
        let opts = vektagraf::migrate::ExportOptions {
            tenant_id: "acme".into(),
            out: file.clone(),
            since_ms: None,
            progress: false,
        };
        let s = vektagraf::migrate::export_tenant(&admin_via, &opts)
            .await
            .unwrap();
        eprintln!(
            "exported {} objects, {} edges at index {} via node {via} (leader {leader})",
            s.manifest.counts.objects, s.manifest.counts.edges, s.applied_index
        );
        assert_eq!(s.manifest.counts.objects, 600);
        assert_eq!(s.manifest.counts.vectors, 300);
        assert_eq!(s.manifest.counts.edges, 200);
        let objects = tenant_objects(&t).await;
        assert_eq!(objects.len(), 600);
        (
            objects,
            200u64,
            usage,
            admin.get_tenant("acme").await.unwrap(),
        )
    };
    // Cluster B: import under another id, through node 2.
    let c = TestCluster::start("eb", 3, 3).await;
    let admin = c.admin(2).await;
    let mut opts = vektagraf::migrate::ImportOptions::new(&file);
    opts.as_tenant = Some("acme-b".into());
    opts.batch = 250;
    let s = vektagraf::migrate::import_tenant(&admin, &opts)
        .await
        .unwrap();
    assert!(s.verified);
    let got = admin.usage(Some("acme-b")).await.unwrap();
    assert_eq!(got.storage.objects, usage.storage.objects);
    assert_eq!(got.storage.vectors, usage.storage.vectors);
    assert_eq!(got.storage.edges, edges);
    assert_eq!(got.requests.by_operation, usage.requests.by_operation);
    let mut cfg = admin.get_tenant("acme-b").await.unwrap();
    cfg.tenant_id = "acme".into();
    assert_eq!(cfg, config);
    let mut users = admin.list_users("acme-b").await.unwrap();
    users.sort();
    assert_eq!(users, vec!["carol".to_string(), "u".to_string()]);
    let (key, _) = admin
        .create_key(KeyKind::Tenant, Some("acme-b"), Some("carol"), None)
        .await
        .unwrap();
    let t = c.client(3, &key).await;
    assert_eq!(tenant_objects(&t).await, objects);
    // A file with one byte changed in a record fails before any write.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    let bad = work.path().join("bad.vkx");
    std::fs::write(&bad, &bytes).unwrap();
    let mut opts = vektagraf::migrate::ImportOptions::new(&bad);
    opts.as_tenant = Some("acme-c".into());
    let e = vektagraf::migrate::import_tenant(&admin, &opts)
        .await
        .unwrap_err();
    eprintln!("tampered file: {e}");
    assert!(matches!(
        e.error,
        vektagraf::migrate::MigrateError::Checksum { .. }
            | vektagraf::migrate::MigrateError::Damaged { .. }
    ));
    assert!(matches!(
        admin.get_tenant("acme-c").await,
        Err(Error::TenantNotFound { .. })
    ));
}

// ----- pauses, delay and loss, a full disk, a seeded nemesis (issue 10) -----

/// Waits until node `via` names a leader of `tenant` other than `not`.
async fn leader_other_than(c: &TestCluster, tenant: &str, via: usize, not: usize) -> usize {
    let admin = c.admin(via).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(i) = admin.shard_info(tenant).await {
            if let Some(l) = i.leader_node.filter(|l| *l as usize != not) {
                return l as usize;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader of {tenant} other than node {not} (asked node {via})"
        );
        sleep_s(0.2).await;
    }
}

/// Waits until node `node`'s own replica (a stale read) holds `id`.
async fn caught_up(c: &TestCluster, node: usize, key: &str, id: &str) {
    let client = c.client(node, key).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = client.get_stale(id).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {node} did not catch up to {id}"
        );
        sleep_s(0.3).await;
    }
}

/// Drops `pct`% of the peer packets (UDP port 7787, both ends of every
/// peer connection) in `chain` of node `i`: packet loss, which QUIC
/// repairs by retransmission.
fn peer_loss(c: &TestCluster, i: usize, chain: &str, pct: u32) {
    c.nft(
        i,
        chain,
        &format!("udp dport {PEER_PORT} numgen random mod 100 < {pct} counter drop"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pauses_of_the_leader_and_of_a_follower_lose_nothing_and_the_paused_leader_steps_down() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("ga", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 1]).await;
    sleep_s(2.0).await;
    let leader = c.shard_leader("acme", 1).await;
    let other = (1..=3).find(|i| *i != leader).unwrap();
    // A client of the leader's node, connected before the pause, whose
    // deadline outlasts it: its write waits inside the stopped process
    // and is served by a node that has missed a whole term.
    let stale = c
        .client_with(leader, &key, |o| {
            o.request_timeout = Duration::from_secs(40);
            o.max_retries = 0;
        })
        .await;
    retry(|| stale.get("k0")).await;
    eprintln!("SIGSTOP of shard leader node {leader} for 12 s");
    let t = Instant::now();
    c.pause(leader);
    let paused_at = w.now();
    let w2 = w.clone();
    let stale_write = tokio::spawn(async move {
        let r = w2.write(&stale, 100, "k1").await;
        (r, Instant::now())
    });
    let new_leader = leader_other_than(&c, "acme", other, leader).await;
    eprintln!("node {new_leader} leads {:?} into the pause", t.elapsed());
    let probe = c.client(new_leader, &key).await;
    retry(|| {
        probe.put(NewObject::new(
            "kv",
            "during-leader-pause",
            serde_json::json!({}),
        ))
    })
    .await;
    tokio::time::sleep_until((t + Duration::from_secs(12)).into()).await;
    let during = w.answered_between(paused_at, w.now());
    c.resume(leader);
    let resumed = Instant::now();
    eprintln!("SIGCONT of node {leader}: {during} operations answered during its pause");
    assert!(
        during > 0,
        "nothing was answered while the leader was paused"
    );
    // The resumed node learns the new term: it names another leader, and
    // its replica catches up on what was written without it.
    let seen = leader_other_than(&c, "acme", leader, leader).await;
    eprintln!(
        "the resumed node names node {seen} leader {:?} after SIGCONT",
        resumed.elapsed()
    );
    caught_up(&c, leader, &key, "during-leader-pause").await;
    let (r, done) = stale_write.await.unwrap();
    eprintln!(
        "the write sent to the paused leader answered {:?} after SIGCONT: {r:?} (the checker places it)",
        done.saturating_duration_since(resumed)
    );

    sleep_s(2.0).await;
    let leader2 = c.shard_leader("acme", other).await;
    let follower = (1..=3).find(|i| *i != leader2).unwrap();
    eprintln!("SIGSTOP of follower node {follower} for 12 s (leader: node {leader2})");
    let t = Instant::now();
    c.pause(follower);
    let paused_at = w.now();
    let probe = c.client(leader2, &key).await;
    retry(|| {
        probe.put(NewObject::new(
            "kv",
            "during-follower-pause",
            serde_json::json!({}),
        ))
    })
    .await;
    eprintln!(
        "a write committed {:?} into the follower's pause",
        t.elapsed()
    );
    tokio::time::sleep_until((t + Duration::from_secs(12)).into()).await;
    let during = w.answered_between(paused_at, w.now());
    c.resume(follower);
    eprintln!("SIGCONT of node {follower}: {during} operations answered during its pause");
    assert!(
        during > 0,
        "nothing was answered while a follower was paused"
    );
    caught_up(&c, follower, &key, "during-follower-pause").await;
    sleep_s(2.0).await;
    stop_workload(&w, tasks).await;
    let reader = c.client(other, &key).await;
    w.verify(&reader).await;
}

/// A write forwarded to a leader that is cut off stays in flight (QUIC
/// retransmits it); the forwarding node routes it again to the new leader,
/// the client gets its answer and writes on. When the cut heals, the old
/// leader (a follower by then) receives the late copy and routes it to the
/// new leader: it must not apply again and undo the writes made since.
/// (The nemesis test met this with a stopped leader, SIGSTOP then SIGCONT.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_copy_of_a_rerouted_write_does_not_apply_again() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("gz", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let mut via = 1;
    for round in 1..=3 {
        let leader = c.shard_leader("acme", via).await;
        let follower = (1..=3).find(|i| *i != leader).unwrap();
        via = follower;
        // Talks to the follower's node only: its writes are forwarded.
        let client = c
            .client_with(follower, &key, |o| {
                o.follow_leader = false;
                o.request_timeout = Duration::from_secs(20);
            })
            .await;
        let put = |v: String| NewObject::new("kv", "late", serde_json::json!({ "v": v }));
        retry(|| client.put(put(format!("{round}-before")))).await;
        eprintln!("round {round}: cutting off shard leader node {leader}");
        netns(&["isolate", &c.prefix, "3", &leader.to_string()]);
        // Forwarded to the cut-off leader, then routed again to the next.
        client.put(put(format!("{round}-stuck"))).await.unwrap();
        // Acknowledges the write above (its result is forgotten), then
        // the value every later read must see.
        client.put(put(format!("{round}-last"))).await.unwrap();
        c.heal_all();
        sleep_s(4.0).await;
        let seen = retry(|| client.get("late")).await.unwrap();
        assert_eq!(
            seen.properties.0.get("v"),
            Some(&serde_json::json!(format!("{round}-last"))),
            "round {round}: a write made after the rerouted one was undone"
        );
    }
}

/// Short pauses (the peers' connections to the paused node survive them)
/// of whichever node leads, each followed at once by requests through
/// that node: two workload clients per node reconnect to it the moment it
/// resumes, while it may still believe it leads. Nothing it answers may
/// be older than what the new leader acknowledged meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_resumed_from_short_pauses_serves_no_stale_read() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("gp", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 1, 2, 3]).await;
    sleep_s(2.0).await;
    let mut via = 1;
    for round in 1..=5 {
        let leader = c.shard_leader("acme", via).await;
        via = (1..=3).find(|i| *i != leader).unwrap();
        eprintln!("round {round}: SIGSTOP of shard leader node {leader} for 4 s");
        c.pause(leader);
        sleep_s(4.0).await;
        c.resume(leader);
        sleep_s(2.5).await;
    }
    stop_workload(&w, tasks).await;
    let reader = c.client(via, &key).await;
    w.verify(&reader).await;
}

/// Sleeps `secs` and returns the operations answered meanwhile.
async fn phase(w: &Workload, name: &str, secs: f64) -> usize {
    let from = w.now();
    sleep_s(secs).await;
    let n = w.answered_between(from, w.now());
    eprintln!("{name}: {n} operations answered in {secs} s");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_and_loss_one_way_and_both_ways_slow_the_cluster_but_lose_nothing() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let c = TestCluster::start("gb", 3, 3).await;
    let key = c.tenant("acme", None).await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 1]).await;
    sleep_s(2.0).await;
    let leader = c.shard_leader("acme", 1).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut served = Vec::new();
    served.push(phase(&w, "no fault", 4.0).await);

    // Delay through the transport's fault filter (no netem here).
    c.set_faults(leader, "peer=* dir=out delay_ms=150 jitter_ms=100\n");
    served.push(phase(&w, "one way: the leader's requests 150-250 ms late", 6.0).await);
    c.heal_all();
    for i in 1..=3 {
        c.set_faults(i, "peer=* dir=both delay_ms=100 jitter_ms=100\n");
    }
    served.push(
        phase(
            &w,
            "both ways: every request 100-200 ms late at each end",
            6.0,
        )
        .await,
    );
    c.heal_all();
    // Message loss through the filter.
    c.set_faults(leader, "peer=* dir=out drop_percent=20\n");
    served.push(phase(&w, "one way: 20% of the leader's requests lost", 6.0).await);
    c.heal_all();
    for i in 1..=3 {
        c.set_faults(
            i,
            "peer=* dir=both drop_percent=10 delay_ms=20 jitter_ms=40\n",
        );
    }
    served.push(
        phase(
            &w,
            "both ways: 10% of requests lost, 20-60 ms late, at each end",
            6.0,
        )
        .await,
    );
    c.heal_all();
    // Packet loss with nftables: QUIC retransmits.
    peer_loss(&c, leader, "output", 30);
    served.push(
        phase(
            &w,
            "one way: 30% of the leader's peer packets lost (nftables)",
            6.0,
        )
        .await,
    );
    c.heal_all();
    peer_loss(&c, follower, "input", 20);
    peer_loss(&c, follower, "output", 20);
    served.push(
        phase(
            &w,
            "both ways: 20% of a follower's peer packets lost each way",
            6.0,
        )
        .await,
    );
    c.heal_all();
    for i in 1..=3 {
        peer_loss(&c, i, "input", 10);
    }
    served.push(phase(&w, "10% of the peer packets into every node lost", 6.0).await);
    c.heal_all();
    served.push(phase(&w, "healed", 3.0).await);
    assert!(
        served.iter().all(|n| *n > 0),
        "a phase answered nothing: {served:?}"
    );
    stop_workload(&w, tasks).await;
    let reader = c.client(follower, &key).await;
    w.verify(&reader).await;
}

/// A tmpfs mounted on a directory, unmounted when dropped (also when the
/// test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }

    /// Free bytes.
    fn free(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs fills the zeroed struct from a valid C path.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            assert_eq!(libc::statvfs(path.as_ptr(), &mut s), 0);
            s.f_bavail as u64 * s.f_frsize as u64
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `n` bytes of random hex (incompressible for RocksDB).
fn noise(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n / 2];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_a_follower_stops_that_node_and_it_catches_up_when_space_returns() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("gc", 2, 3).await;
    // Node 3's data directory on a 64 MiB tmpfs.
    let disk = Tmpfs::mount(&c.dir.join("node-3"), "64m");
    c.spawn(3).await;
    let key = c.tenant("acme", None).await;
    let admin = c.admin(1).await;
    let info = settled(&admin, "acme", 60).await;
    assert!(nodes_of(&info).contains(&3), "{info:?}");
    // Node 3 must be a follower: if it leads, a short pause hands the
    // leadership to another node.
    while c.shard_leader("acme", 1).await == 3 {
        c.pause(3);
        let _ = leader_other_than(&c, "acme", 1, 3).await;
        c.resume(3);
        sleep_s(1.0).await;
    }
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 1]).await;
    // Fill node 3's disk through node 3 (its writes go to the leader and
    // come back as log entries): 64 KB incompressible values, 4 a request.
    let filler = c.client(3, &key).await;
    let fill_from = w.now();
    let (mut acked, mut errors, mut slowest) = (Vec::new(), Vec::new(), Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut full_since: Option<Instant> = None;
    let mut i = 0;
    let mut exited = None;
    while Instant::now() < deadline
        && exited.is_none()
        && full_since.is_none_or(|t| t.elapsed() < Duration::from_secs(20))
    {
        let ids: Vec<String> = (i..i + 4).map(|j| format!("big{j}")).collect();
        i += 4;
        let ops = ids
            .iter()
            .map(|id| {
                vektagraf::proto::WriteOp::Put(NewObject::new(
                    "kv",
                    id,
                    serde_json::json!({ "pad": noise(64 << 10) }),
                ))
            })
            .collect();
        let t = Instant::now();
        let r = filler.transaction(ops).await;
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(_) => acked.extend(ids),
            Err(e) => {
                if errors.len() < 10 {
                    eprintln!("write through the full node: {e} ({:?})", e.code());
                }
                errors.push(e);
                sleep_s(0.2).await;
            }
        }
        if full_since.is_none() && disk.free() < (4 << 20) {
            eprintln!("node 3's disk is full after {} objects", acked.len());
            full_since = Some(Instant::now());
        }
        exited = c.exit_status(3);
    }
    let during = w.answered_between(fill_from, w.now());
    eprintln!(
        "filling: {} objects acknowledged, {} requests failed, slowest {slowest:?}; {during} workload operations answered by nodes 1 and 2; {} bytes free",
        acked.len(),
        errors.len(),
        disk.free()
    );
    assert!(full_since.is_some(), "the disk never filled");
    assert!(
        slowest < Duration::from_secs(30),
        "a write hung for {slowest:?}"
    );
    assert!(during > 0, "the other nodes stopped serving");
    assert!(
        errors.iter().all(|e| !matches!(e, Error::Protocol { .. })),
        "untyped failures: {errors:?}"
    );
    // Fail-stop: the raft log append that hit the full disk leaves the
    // log store refusing writes (RocksDB's background error), so node 3
    // exits with status 75 for its supervisor to restart it.
    let status = exited.unwrap_or_else(|| {
        panic!(
            "node 3 still runs with a failed raft log (see {})",
            c.log(3).display()
        )
    });
    assert_eq!(status.code(), Some(75), "node 3: {status}");
    eprintln!("node 3 stopped on its full disk: {status}");
    let r3 = info.replicas.iter().find(|r| r.1 == 3).unwrap().0;
    let (stuck, last_index) = replica_lag(&c, "acme", r3).await;
    eprintln!("node 3's replica matched {stuck:?} of {last_index} on the leader");
    // Space returns; the supervisor (here, the test) restarts node 3.
    disk.resize("512m");
    eprintln!("node 3's disk grown to 512 MiB; restarting it");
    c.nodes[2] = None;
    c.spawn(3).await;
    stop_workload(&w, tasks).await;
    // Its own replica catches up: the leader's matched index for it
    // reaches the leader's last entry.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (m, last) = replica_lag(&c, "acme", r3).await;
        if m == Some(last) {
            eprintln!("node 3 caught up after its restart: matched {last}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up: matched {m:?} of {last}"
        );
        sleep_s(0.5).await;
    }
    // Nothing acknowledged is lost, on node 3's own replica either.
    let own = c.client(3, &key).await;
    for id in &acked {
        assert!(
            retry(|| own.get_stale(id)).await.is_some(),
            "{id} acknowledged but missing on node 3"
        );
    }
    let reader = c.client(1, &key).await;
    for id in &acked {
        assert!(retry(|| reader.get(id)).await.is_some(), "{id} lost");
    }
    w.verify(&reader).await;
    c.kill(3);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_the_leader_refuses_writes_with_storage_full_and_they_resume_when_space_returns(
) {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    // Nodes 2 and 3 on 512 MiB tmpfs disks, whose reserve is 5% of that
    // (25.6 MiB, below the configured 64 MiB).
    let mut c = TestCluster::start_with("gf", 1, 3, "[storage]\nmin_free_bytes = 67108864\n").await;
    let disks = [
        Tmpfs::mount(&c.dir.join("node-2"), "512m"),
        Tmpfs::mount(&c.dir.join("node-3"), "512m"),
    ];
    c.spawn(2).await;
    c.spawn(3).await;
    let key = c.tenant("acme", None).await;
    let admin = c.admin(1).await;
    let info = settled(&admin, "acme", 60).await;
    assert_eq!(nodes_of(&info).len(), 3, "{info:?}");
    // The shard leader must be on a tmpfs node: a short pause of node 1
    // hands the leadership over.
    let mut leader = c.shard_leader("acme", 2).await;
    while leader == 1 {
        c.pause(1);
        let _ = leader_other_than(&c, "acme", 2, 1).await;
        c.resume(1);
        sleep_s(1.0).await;
        leader = c.shard_leader("acme", 2).await;
    }
    let disk = &disks[leader - 2];
    // Clients of node 1, a follower: the leader's refusal comes back
    // through the forward.
    let client = c.client(1, &key).await;
    let put = |id: String| {
        let client = &client;
        async move {
            client
                .put(NewObject::new("kv", &id, serde_json::json!({ "v": id })))
                .await
        }
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("k{i}");
        retry(|| put(id.clone())).await;
        acked.push(id);
    }
    // A ballast file leaves node `leader` 12 MiB: under its reserve, with
    // room for what the reserve is for (raft logs, compactions).
    let ballast = c.dir.join(format!("node-{leader}/ballast"));
    let size = disk.free().saturating_sub(12 << 20);
    {
        use std::io::Write;
        let mut f = File::create(&ballast).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    eprintln!(
        "node {leader} (the shard leader) has {} bytes free",
        disk.free()
    );
    // Writes get StorageFull, typed, naming the node.
    // (Free space is measured every 500 ms: a write or two may still
    // pass, and counts as acknowledged.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = Vec::new();
    let refusal = loop {
        let id = format!("r{}", refused.len() + acked.len());
        match put(id.clone()).await {
            Err(e @ Error::StorageFull { .. }) => {
                refused.push(id);
                break e;
            }
            Ok(_) => acked.push(id),
            Err(e) => panic!("a write on a full leader: {e:?}"),
        }
        assert!(Instant::now() < deadline, "writes never refused");
        sleep_s(0.3).await;
    };
    eprintln!("write refused: {refusal}");
    assert!(
        matches!(refusal, Error::StorageFull { node, free_bytes, reserve_bytes }
            if node == leader as u64 && free_bytes < reserve_bytes),
        "{refusal:?}"
    );
    assert_eq!(refusal.code(), vektagraf::proto::ErrorCode::StorageFull);
    // Reads and deletes still work; the node stays up.
    for id in &acked {
        assert!(client.get(id).await.unwrap().is_some(), "{id} unreadable");
    }
    client.delete("k0").await.unwrap();
    sleep_s(3.0).await;
    assert!(
        c.alive(leader),
        "node {leader} stopped on a disk below its reserve"
    );
    assert!(
        matches!(put("still".into()).await, Err(Error::StorageFull { .. })),
        "a write went through while the disk was still full"
    );
    refused.push("still".into());
    // Space returns: writes are accepted again within a second or so.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match put("after".into()).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes still refused after space returned: {e}"
            ),
        }
        sleep_s(0.3).await;
    }
    // Nothing acknowledged is lost; the refused writes left nothing.
    let reader = c.client(2, &key).await;
    for id in acked.iter().skip(1) {
        assert!(retry(|| reader.get(id)).await.is_some(), "{id} lost");
    }
    assert!(retry(|| reader.get("k0")).await.is_none(), "k0 deleted");
    assert!(retry(|| reader.get("after")).await.is_some());
    for id in &refused {
        assert!(
            retry(|| reader.get(id)).await.is_none(),
            "{id} refused but written"
        );
    }
    for i in 1..=3 {
        c.kill(i);
    }
    drop(disks);
}

/// On `tenant`'s leader: replica `r`'s matched index and the leader's
/// last log index.
async fn replica_lag(c: &TestCluster, tenant: &str, r: u64) -> (Option<u64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = c.shard_leader(tenant, 1).await;
        if let Ok(i) = c.admin(leader).await.shard_info(tenant).await {
            if i.answered_by == leader as u64 && !i.matched.is_empty() {
                let m = i.matched.iter().find(|x| x.0 == r).map(|x| x.1);
                return (m, i.last_log_index);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer from {tenant}'s leader"
        );
        sleep_s(0.2).await;
    }
}

/// The fault schedule of the nemesis: what, on which node, for how long.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    Isolate,
    Loss(u32),
    Delay(u64),
    Move,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_random_nemesis_of_kills_pauses_partitions_loss_delay_and_moves_loses_nothing() {
    use rand::{Rng, SeedableRng};
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let seed: u64 = std::env::var("VK_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let secs: u64 = std::env::var("VK_NEMESIS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!(
        "nemesis seed {seed}, {secs} s (replay: VK_NEMESIS_SEED={seed} VK_NEMESIS_SECS={secs})"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = 4;
    let mut c = TestCluster::start("gd", n, n).await;
    let key = c.tenant("acme", None).await;
    let admin_key = c.admin_key.clone();
    let admin = c
        .client_with(1, &admin_key, |o| {
            o.addrs = (1..=n).map(TestCluster::client_addr).collect();
        })
        .await;
    let (w, tasks) = start_workload(&c, &key, &[1, 2, 3, 4, 1]).await;
    sleep_s(2.0).await;
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut jobs, mut schedule) = (Vec::new(), Vec::new());
    while Instant::now() < end {
        let fault = match rng.gen_range(0..6) {
            0 => Fault::Kill,
            1 => Fault::Pause,
            2 => Fault::Isolate,
            3 => Fault::Loss(rng.gen_range(10..40)),
            4 => Fault::Delay(rng.gen_range(50..300)),
            _ => Fault::Move,
        };
        // Half the faults hit the shard leader's node, the rest any node.
        let at_leader = rng.gen_bool(0.5);
        let any = rng.gen_range(1..=n);
        let hold = rng.gen_range(2.0..7.0);
        let quiet = rng.gen_range(1.0..3.0);
        let node = if at_leader {
            match tokio::time::timeout(Duration::from_secs(5), admin.shard_info("acme")).await {
                Ok(Ok(i)) => i.leader_node.map(|l| l as usize).unwrap_or(any),
                _ => any,
            }
        } else {
            any
        };
        let at = w.t0.elapsed();
        eprintln!("nemesis at {at:.1?}: {fault:?} of node {node} for {hold:.1} s");
        schedule.push(format!("{at:.1?} {fault:?} node {node} {hold:.1}s"));
        match fault {
            Fault::Kill => {
                c.kill(node);
                sleep_s(hold).await;
                c.spawn(node).await;
            }
            Fault::Pause => {
                c.pause(node);
                sleep_s(hold).await;
                c.resume(node);
            }
            Fault::Isolate => {
                netns(&["isolate", &c.prefix, &n.to_string(), &node.to_string()]);
                sleep_s(hold).await;
                c.heal_all();
            }
            Fault::Loss(pct) => {
                peer_loss(&c, node, "input", pct);
                peer_loss(&c, node, "output", pct);
                sleep_s(hold).await;
                c.heal_all();
            }
            Fault::Delay(ms) => {
                c.set_faults(
                    node,
                    &format!("peer=* dir=both delay_ms={ms} jitter_ms={ms}\n"),
                );
                sleep_s(hold).await;
                c.heal_all();
            }
            Fault::Move => {
                // A membership change: one replica moves to the node
                // without one (unless a move is running).
                let running = match admin.jobs().await {
                    Ok(j) => j.iter().any(|j| !j.state.is_terminal()),
                    Err(_) => true,
                };
                match admin.shard_info("acme").await {
                    Ok(i) if !running && nodes_of(&i).len() < n => {
                        let to = free_node(&i, n as u64);
                        match admin.move_tenant("acme", to, None).await {
                            Ok(j) => {
                                eprintln!("move job {} to node {to}", j.id);
                                jobs.push(j.id);
                            }
                            Err(e) => eprintln!("move to node {to} refused: {e}"),
                        }
                    }
                    _ => eprintln!("no move: one is running or no shard info"),
                }
                sleep_s(hold).await;
            }
        }
        sleep_s(quiet).await;
    }
    eprintln!(
        "nemesis done ({} faults); healing everything",
        schedule.len()
    );
    c.heal_all();
    for i in 1..=n {
        c.resume(i);
        if !c.alive(i) {
            c.spawn(i).await;
        }
    }
    for id in &jobs {
        let j = job_end(&admin, *id, 180).await;
        assert!(j.state.is_terminal(), "{j:?}");
    }
    let info = settled(&admin, "acme", 90).await;
    assert_eq!(info.voters.len(), 3, "{info:?}");
    sleep_s(2.0).await;
    stop_workload(&w, tasks).await;
    let errors = w.errors.lock().unwrap().clone();
    eprintln!(
        "{} requests failed after the driver's retries; first: {:?}",
        w.failed.load(Ordering::Relaxed),
        errors.first()
    );
    let reader = c.client(1, &key).await;
    w.verify(&reader).await;
    eprintln!("schedule (seed {seed}):\n{}", schedule.join("\n"));
}

/// Requests per operation of `tenant` this UTC day, from its shard leader
/// (asked through node `via`).
async fn today_by_op(c: &TestCluster, tenant: &str, via: usize) -> [u64; 3] {
    let admin = c.admin(via).await;
    let u = retry(|| admin.usage(Some(tenant))).await.requests;
    assert_eq!(
        u.daily_by_operation, u.monthly_by_operation,
        "a fresh tenant's month is its day"
    );
    let d = &u.daily_by_operation;
    [d["read"], d["write"], d["query"]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_per_operation_today_equals_the_requests_made_through_every_node() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start("u", 3, 3).await;
    let mut cfg = roomy("bill");
    cfg.request_limit.daily_limit = 3_200; // a reservation step: 100 requests
    let key = c.tenant("bill", Some(cfg)).await;
    c.tenant("other", None).await;
    let base = today_by_op(&c, "bill", 3).await;

    // 1. Through each node in turn, without retries or leader following:
    // every request is served by the node it was sent to, or forwarded by
    // it to the shard leader.
    let mut made = [0u64; 3]; // read, write, query
    for node in 1..=3 {
        let cl = c
            .client_with(node, &key, |o| {
                o.follow_leader = false;
                o.max_retries = 0;
            })
            .await;
        for i in 0..2 * node {
            cl.put(NewObject::new(
                "kv",
                &format!("n{node}-{i}"),
                serde_json::json!({}),
            ))
            .await
            .unwrap();
            made[1] += 1;
        }
        for _ in 0..3 + node {
            cl.get("n1-0").await.unwrap();
            made[0] += 1;
        }
        for _ in 0..node {
            cl.query(vektagraf::proto::Query {
                collection: "kv".into(),
                filter: None,
                limit: 5,
            })
            .await
            .unwrap();
            made[2] += 1;
        }
    }
    let expect = [base[0] + made[0], base[1] + made[1], base[2] + made[2]];
    // Whichever node is asked, the answer is the leader's: exactly what
    // was made.
    for via in 1..=3 {
        assert_eq!(
            today_by_op(&c, "bill", via).await,
            expect,
            "usage via node {via} (read, write, query); made {made:?} on {base:?}"
        );
    }

    // 2. Every tenant, cluster-wide, through any node.
    let all = c.admin(2).await.usage_all().await.unwrap();
    assert!(all.unavailable.is_empty(), "{:?}", all.unavailable);
    let ids: Vec<&str> = all.tenants.iter().map(|u| u.tenant_id.as_str()).collect();
    assert_eq!(ids, ["bill", "other"]);
    let bill = &all.tenants[0].requests.daily_by_operation;
    assert_eq!([bill["read"], bill["write"], bill["query"]], expect);

    // 3. kill -9 of the shard leader: the new leader's counts hold every
    // request made, and at most one reservation step (100) more.
    let leader = c.shard_leader("bill", 1).await;
    let via = (1..=3).find(|n| *n != leader).unwrap();
    eprintln!("kill -9 of shard leader node {leader}");
    c.kill(leader);
    let after = today_by_op(&c, "bill", via).await;
    for i in 0..3 {
        assert!(
            (expect[i]..=expect[i] + 100).contains(&after[i]),
            "after kill -9 of the leader: {after:?}, made {expect:?}"
        );
    }
}

/// A5 on a cluster: the policy raises a tenant's storage limit once, from
/// its shard leader, through group 0; the audit entry (and the admin's
/// manual change) is read the same through every node, and survives a
/// kill -9 of group 0's leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auto_scaled_limit_is_raised_once_and_audited_on_every_node_past_a_kill_of_the_metadata_leader(
) {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with(
        "as",
        3,
        3,
        "\n[auto_scale]\ncheck_ms = 200\ncooldown_ms = 1000",
    )
    .await;
    let mut cfg = roomy("grows");
    cfg.storage_limit.max_objects = 10;
    cfg.custom_settings
        .0
        .insert("auto_scale".into(), serde_json::json!(true));
    let key = c.tenant("grows", Some(cfg)).await;
    let cl = c.client(2, &key).await;
    for i in 0..9 {
        retry(|| {
            cl.put(NewObject::new(
                "kv",
                &format!("o{i}"),
                serde_json::json!({}),
            ))
        })
        .await;
    }
    // 9 of 10: raised to 15, seen through every node.
    for via in 1..=3 {
        let admin = c.admin(via).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let t = retry(|| admin.get_tenant("grows")).await;
            if t.storage_limit.max_objects == 15 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "max_objects via node {via}: {}",
                t.storage_limit.max_objects
            );
            sleep_s(0.2).await;
        }
    }
    // Give every node's loop a few more looks: still one raise.
    sleep_s(2.0).await;
    let admin = c.admin(3).await;
    let mut s = retry(|| admin.get_tenant("grows")).await.storage_limit;
    s.max_vectors = 77;
    let up = vektagraf::tenant::TenantUpdate {
        storage_limit: Some(s),
        reason: Some("manual".into()),
        ..Default::default()
    };
    retry(|| admin.update_tenant("grows", up.clone())).await;
    let summary = |log: &[vektagraf::proto::AuditEntry]| {
        log.iter()
            .map(|e| {
                (
                    e.actor.clone(),
                    e.field.clone(),
                    e.old.clone(),
                    e.new.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let me = format!("key:{}", admin.principal().unwrap().key_id);
    let want = vec![
        (
            me.clone(),
            "tenant".to_string(),
            None,
            Some("\"tier4\"".to_string()),
        ),
        (
            "auto_scale".to_string(),
            "storage_limit.max_objects".to_string(),
            Some("10".to_string()),
            Some("15".to_string()),
        ),
        (
            me.clone(),
            "storage_limit.max_vectors".to_string(),
            Some("10000000".to_string()),
            Some("77".to_string()),
        ),
    ];
    for via in 1..=3 {
        let a = c.admin(via).await;
        let log = retry(|| a.audit(Some("grows"), 100)).await;
        assert_eq!(summary(&log), want, "audit via node {via}");
    }

    // kill -9 of group 0's leader: the log is still there, whole.
    let meta = {
        let nodes = retry(|| admin.cluster_nodes()).await;
        nodes
            .iter()
            .find(|n| n.leader)
            .map(|n| n.id as usize)
            .unwrap()
    };
    c.kill(meta);
    let via = if meta == 1 { 2 } else { 1 };
    let a = c.admin(via).await;
    let log = retry(|| a.audit(Some("grows"), 100)).await;
    assert_eq!(
        summary(&log),
        want,
        "audit via node {via} after node {meta} was killed"
    );
}

/// A2 on a cluster: the analytics report asked through any node adds up
/// the history of every node, so requests sent through all three are all
/// in it, exactly; a node that is down is named as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_analytics_report_adds_up_the_requests_every_node_received() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("an", 3, 3, "\n[analytics]\nflush_ms = 200").await;
    let key = c.tenant("seen", None).await;
    let from = vektagraf::util::now_ms() - 60_000;
    async fn total(c: &TestCluster, via: usize, from: u64) -> (u64, Vec<u64>) {
        let a = c.admin(via).await;
        let r = retry(|| a.analytics("seen", from, vektagraf::util::now_ms() + 60_000)).await;
        (r.total_requests, r.nodes_missing)
    }
    sleep_s(1.0).await; // every node flushed the setup's requests
    let (base, missing) = total(&c, 1, from).await;
    assert!(missing.is_empty(), "{missing:?}");
    let mut made = 0u64;
    for node in 1..=3 {
        let cl = c
            .client_with(node, &key, |o| {
                o.follow_leader = false;
                o.max_retries = 0;
            })
            .await;
        for i in 0..3 * node {
            cl.put(NewObject::new(
                "kv",
                &format!("n{node}-{i}"),
                serde_json::json!({}),
            ))
            .await
            .unwrap();
            cl.get(&format!("n{node}-{i}")).await.unwrap();
            made += 2;
        }
    }
    sleep_s(1.0).await;
    for via in 1..=3 {
        let (n, missing) = total(&c, via, from).await;
        assert!(missing.is_empty(), "via {via}: {missing:?}");
        assert_eq!(
            n,
            base + made,
            "analytics via node {via}: base {base}, made {made}"
        );
    }
    // A node down: its part is missing, and the report says so.
    c.kill(3);
    let (n, missing) = total(&c, 1, from).await;
    assert_eq!(missing, [3]);
    assert!(
        n < base + made,
        "node 3's requests cannot be counted without it"
    );
}

/// Hibernation after 1.5 s idle (a group quiesces after 10 s first).
const HIBERNATE: &str = "\n[hibernation]\nafter_idle_ms = 1500\ncheck_ms = 200\n";

/// A2 billing on a cluster: a tenant's stored bytes count once, awake or
/// asleep: while every replica sleeps, the node whose replica led the
/// group adds them (not every node, and not none).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_tenants_storage_is_billed_once_by_the_node_that_led_it() {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let extra = format!("{HIBERNATE}[analytics]\nflush_ms = 200\nrest_sample_ms = 300\n");
    let c = TestCluster::start_with("bi", 3, 3, &extra).await;
    let key = c.tenant("billed", None).await;
    let writer = c.client(1, &key).await;
    for i in 0..50 {
        retry(|| {
            writer.put(NewObject::new(
                "kv",
                &format!("k{i}"),
                serde_json::json!({"pad": "x".repeat(200)}),
            ))
        })
        .await;
    }
    let admin = c.admin(1).await;
    let bytes = retry(|| admin.usage(Some("billed"))).await.storage.bytes;
    assert!(bytes > 10_000, "{bytes}");
    let from = vektagraf::util::now_ms() - 60_000;
    let gb_hours = || async {
        let to = vektagraf::util::now_ms() + 120_000;
        let r = retry(|| admin.analytics("billed", from, to)).await;
        assert!(r.nodes_missing.is_empty(), "{:?}", r.nodes_missing);
        (r.storage_gb_hours, vektagraf::util::now_ms())
    };
    let (first, t1) = gb_hours().await;
    // Quiesced, then asleep on every node, then asleep for a while.
    all_hibernate(&c, "billed", hibernations(&c, "billed")).await;
    sleep_s(10.0).await;
    let (second, t2) = gb_hours().await;
    let expected = bytes as f64 * (t2 - t1) as f64 / 1e9 / 3_600_000.0;
    let ratio = (second - first) / expected;
    eprintln!(
        "billed {:.3e} GB-hours over {} ms; held {bytes} bytes: {ratio:.3} of once",
        second - first,
        t2 - t1
    );
    // Unbilled while asleep would be about half; billed by every node,
    // about twice.
    assert!(
        (0.85..1.15).contains(&ratio),
        "storage billed {ratio:.3} times what the tenant held over the time"
    );
}

/// Lines of node `i`'s current log with `what` about tenant `tenant`.
fn logged(c: &TestCluster, i: usize, what: &str, tenant: &str) -> usize {
    std::fs::read_to_string(c.log(i))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what) && l.contains(tenant))
        .count()
}

/// Waits until every node has logged one more hibernation of `tenant`
/// than `since` (counts per node, from [`logged`]).
async fn all_hibernate(c: &TestCluster, tenant: &str, since: [usize; 3]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: Vec<usize> = (1..=3)
            .map(|i| logged(c, i, "tenant hibernated", tenant))
            .collect();
        if now.iter().zip(since).all(|(n, s)| *n > s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every replica of {tenant} hibernated: {now:?} (before {since:?})"
        );
        sleep_s(0.5).await;
    }
}

fn hibernations(c: &TestCluster, tenant: &str) -> [usize; 3] {
    [1, 2, 3].map(|i| logged(c, i, "tenant hibernated", tenant))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hibernated_replicas_reopen_on_a_request_and_on_raft_messages_without_an_election_and_survive_kill_9(
) {
    if skip_unless_root() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with("h", 3, 3, HIBERNATE).await;
    let key = c.tenant("sleepy", None).await;
    let writer = c.client(1, &key).await;
    for i in 0..20 {
        retry(|| {
            writer.put(NewObject::new(
                "kv",
                &format!("k{i}"),
                serde_json::json!({"v": i}),
            ))
        })
        .await;
    }
    let admin = c.admin(1).await;
    let before = retry(|| admin.shard_info("sleepy")).await;
    let leader = before.leader_node.expect("a leader") as usize;
    let followers: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();

    // 1. Idle: the group quiesces, then every replica closes its shard.
    all_hibernate(&c, "sleepy", [0; 3]).await;
    let woken_before = [1, 2, 3].map(|i| logged(&c, i, "tenant reactivated", "sleepy"));
    eprintln!(
        "every replica hibernated; leader node {leader}, term {}",
        before.term
    );

    // 2. A read through a follower's node: that replica reopens to find
    //    the leader, whose node reopens it as the leader: no election.
    let reader = c
        .client_with(followers[0], &key, |o| o.follow_leader = false)
        .await;
    let got = reader
        .get("k7")
        .await
        .expect("the first read after hibernation");
    assert_eq!(got.unwrap().properties.0["v"], 7);
    let after = retry(|| admin.shard_info("sleepy")).await;
    assert_eq!(
        (after.term, after.leader_node),
        (before.term, before.leader_node),
        "waking the group held an election"
    );

    // 3. A write: the leader's appends reach the other follower, which
    //    got no request; the raft message alone reopens it, and it holds
    //    the entry.
    retry(|| writer.put(NewObject::new("kv", "k7", serde_json::json!({"v": 70})))).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = retry(|| admin.shard_info("sleepy")).await;
        let f1_replica = info
            .replicas
            .iter()
            .find(|r| r.1 == followers[1] as u64)
            .unwrap()
            .0;
        let matched = info.matched.iter().find(|m| m.0 == f1_replica).map(|m| m.1);
        if matched == Some(info.last_log_index) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower on node {} never took the write: {info:?}",
            followers[1]
        );
        sleep_s(0.2).await;
    }
    for i in [leader, followers[1]] {
        assert!(
            logged(&c, i, "tenant reactivated", "sleepy") > woken_before[i - 1],
            "node {i} never reopened its replica"
        );
    }
    assert_eq!(retry(|| admin.shard_info("sleepy")).await.term, before.term);

    // 4. Asleep again, every node killed -9 and restarted: nothing is
    //    lost, and the request counts are exact (the leader saved them
    //    before its group went idle, so no unused reservation survives).
    let counted = daily_count(&c, "sleepy", 1).await;
    all_hibernate(&c, "sleepy", hibernations(&c, "sleepy")).await;
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.spawn(i).await;
    }
    assert_eq!(
        daily_count(&c, "sleepy", 2).await,
        counted,
        "the request count changed across hibernation and kill -9"
    );
    let reader = c.client(3, &key).await;
    for i in 0..20 {
        let id = format!("k{i}");
        let got = retry(|| reader.get(&id)).await.expect("object survives");
        let want = if i == 7 { 70 } else { i };
        assert_eq!(got.properties.0["v"], want, "k{i}");
    }
}
