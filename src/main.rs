//! The `vektagraf` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

mod cli;
mod quickstart;

#[derive(Parser)]
#[command(
    name = "vektagraf",
    version,
    about = "Multi-tenant database for objects, vectors and graphs"
)]
struct Cli {
    #[command(flatten)]
    conn: cli::Conn,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a node: the engine behind a QUIC endpoint (ALPN vektagraf/1).
    Serve {
        /// Node config file (see config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Join a cluster through this node's peer address (repeatable;
        /// sets cluster.enabled and adds to cluster.join).
        #[arg(long)]
        join: Vec<String>,
        /// Address to listen on for clients (sets server.listen; default
        /// 127.0.0.1:7687). An `--addr` given to `serve` means the same.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Creates a cluster CA, node certificates and client trust material.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "./certs")]
        out: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        nodes: Vec<u64>,
        /// Extra host names or IPs for every node certificate.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
    #[command(flatten)]
    Remote(cli::Remote),
    /// Prints a shell completion script, e.g.
    /// `vektagraf completions bash > /etc/bash_completion.d/vektagraf`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Runs the embedded quickstart: two tenants, every operation, limits, usage.
    Quickstart {
        /// Data directory (wiped first).
        #[arg(long, default_value = "./data/quickstart")]
        data: PathBuf,
        /// Node config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Benchmarks (not tests): figures measured side by side in one run.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Writes objects in a loop, printing `ACK <id>` after each
    /// acknowledged write (used by the crash test).
    #[command(hide = true)]
    WriteLoop {
        /// Data directory.
        #[arg(long)]
        data: PathBuf,
        /// Tenant.
        #[arg(long, default_value = "crash")]
        tenant: String,
        /// Concurrent writers.
        #[arg(long, default_value_t = 8)]
        writers: usize,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Fair shares (C2): each priority's admitted rate on a saturated node
    /// against the part its share implies.
    Shares {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-shares")]
        data: PathBuf,
        /// Seconds per row.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// The node's admission slots (limits.max_in_flight).
        #[arg(long, default_value_t = 2)]
        slots: usize,
        /// Tasks per tenant.
        #[arg(long, default_value_t = 16)]
        tasks: usize,
    },
    /// Read cache: repeated get, query and search throughput with and without it.
    Cache {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-cache")]
        data: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Objects in each of the two tenants.
        #[arg(long, default_value_t = 20_000)]
        objects: usize,
        /// Concurrent tasks, comma-separated (a row each).
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        tasks: Vec<usize>,
    },
    /// Engine: durable writes vs raw RocksDB, search vs raw FAISS, limit check vs governor.
    Engine {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench")]
        data: PathBuf,
        /// Seconds per write measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Fashion-MNIST vectors indexed (at most 60000).
        #[arg(long, default_value_t = 60000)]
        vectors: usize,
        /// Search queries run (at most 10000).
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Skip the vector part.
        #[arg(long)]
        no_vectors: bool,
    },
    /// Cluster: replicated puts on 1 and 3 Vektagraf nodes vs 3 etcd 3.4 nodes.
    Cluster {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-cluster")]
        data: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// Skip etcd.
        #[arg(long)]
        no_etcd: bool,
    },
    /// Idle cost: CPU and memory of a 3-node cluster holding many idle
    /// tenants; with --standalone, of one standalone node with
    /// hibernation off and on, side by side.
    Idle {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-idle")]
        data: PathBuf,
        /// Tenants (with hibernation on).
        #[arg(long, default_value_t = 1000)]
        tenants: usize,
        /// Tenants with hibernation off (at most --tenants): every open
        /// replica costs about 1 MiB of RSS.
        #[arg(long, default_value_t = 1000)]
        off_tenants: usize,
        /// Cluster: tenants given a key and one object, whose first
        /// request after sleeping and whose writes after a node kill are
        /// timed.
        #[arg(long, default_value_t = 200)]
        sample: usize,
        /// Seconds of each measurement.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// One standalone node instead of a 3-node cluster.
        #[arg(long)]
        standalone: bool,
    },
    /// Online tenant move of a Fashion-MNIST tenant (≥ 1 GiB by default)
    /// on a 4-node loopback cluster under light load, vs a raw QUIC copy
    /// of the same files and an index rebuild.
    Migrate {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-migrate")]
        data: PathBuf,
        /// Vectors in the tenant (Fashion-MNIST's 70,000 repeated with an
        /// offset per pass).
        #[arg(long, default_value_t = 250_000)]
        vectors: usize,
        /// Seconds of load measured before the move.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// First port: clients on +1..4, peers on +101..104.
        #[arg(long, default_value_t = 28000)]
        base_port: u16,
        /// Snapshot stream cap of the cluster, MB/s (0: none).
        #[arg(long, default_value_t = 0)]
        snapshot_mb_per_s: u64,
    },
    /// Import: Fashion-MNIST inserted through raft into an HNSW32
    /// collection vs raw FAISS building the same index.
    Import {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-import")]
        data: PathBuf,
        /// Fashion-MNIST vectors inserted (at most 60000).
        #[arg(long, default_value_t = 60_000)]
        vectors: usize,
    },
    /// QUIC: get, put, search over loopback vs the embedded API.
    Quic {
        /// Scratch data directory (wiped first).
        #[arg(long, default_value = "/var/tmp/vektagraf-bench-quic")]
        data: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// The client process of `bench quic` (started by it).
    #[command(hide = true)]
    QuicClient {
        /// Server address.
        #[arg(long)]
        server: std::net::SocketAddr,
        /// Server certificate.
        #[arg(long)]
        cert: PathBuf,
        /// get, put, search or search64 (64 searches per request).
        #[arg(long)]
        op: String,
        /// Concurrent tasks.
        #[arg(long)]
        tasks: usize,
        /// Seconds measured.
        #[arg(long)]
        seconds: u64,
    },
}

fn main() -> std::process::ExitCode {
    // Errors as an operator reads them: the message and its causes, never
    // a backtrace (RUST_BACKTRACE set in a shell would add one).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let matches = Cli::command().get_matches();
    // Whether --addr was typed (not its default, nor VEKTAGRAF_ADDR).
    let addr_typed = matches.value_source("addr") == Some(clap::parser::ValueSource::CommandLine);
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Quickstart { data, config } => quickstart::run(&data, config.as_deref()).await,
            Cmd::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "vektagraf", &mut script);
                // A closed pipe (`| head`) is not an error worth a panic.
                use std::io::Write;
                let _ = std::io::stdout().write_all(&script);
                Ok(())
            }
            Cmd::Bench { which } => match which {
                BenchCmd::Shares {
                    data,
                    seconds,
                    slots,
                    tasks,
                } => {
                    vektagraf::bench::shares::run(vektagraf::bench::shares::Options {
                        data,
                        seconds,
                        slots,
                        tasks,
                    })
                    .await
                }
                BenchCmd::Cache {
                    data,
                    seconds,
                    objects,
                    tasks,
                } => {
                    vektagraf::bench::cache::run(vektagraf::bench::cache::Options {
                        data,
                        seconds,
                        objects,
                        tasks,
                    })
                    .await
                }
                BenchCmd::Engine {
                    data,
                    seconds,
                    vectors,
                    queries,
                    no_vectors,
                } => {
                    vektagraf::bench::engine::run(vektagraf::bench::engine::Options {
                        data,
                        seconds,
                        vectors: vectors.min(60_000),
                        queries: queries.min(10_000),
                        vectors_enabled: !no_vectors,
                    })
                    .await
                }
                BenchCmd::Cluster {
                    data,
                    seconds,
                    clients,
                    no_etcd,
                } => {
                    vektagraf::bench::cluster::run(vektagraf::bench::cluster::Options {
                        data,
                        seconds,
                        clients,
                        value_size: 256,
                        no_etcd,
                    })
                    .await
                }
                BenchCmd::Idle {
                    data,
                    tenants,
                    off_tenants,
                    seconds,
                    standalone: true,
                    ..
                } => {
                    vektagraf::bench::hibernate::idle(vektagraf::bench::hibernate::Options {
                        data,
                        tenants,
                        off_tenants,
                        seconds,
                    })
                    .await
                }
                BenchCmd::Idle {
                    data,
                    tenants,
                    off_tenants,
                    sample,
                    seconds,
                    standalone: false,
                } => {
                    vektagraf::bench::idle_cluster::idle(vektagraf::bench::idle_cluster::Options {
                        data,
                        tenants,
                        off_tenants,
                        sample,
                        seconds,
                    })
                    .await
                }
                BenchCmd::Migrate {
                    data,
                    vectors,
                    seconds,
                    base_port,
                    snapshot_mb_per_s,
                } => {
                    vektagraf::bench::migrate::run(vektagraf::bench::migrate::Options {
                        data,
                        vectors: vectors.max(1000),
                        seconds,
                        base_port,
                        snapshot_mb_per_s,
                    })
                    .await
                }
                BenchCmd::Import { data, vectors } => {
                    vektagraf::bench::engine::import(vektagraf::bench::engine::Options {
                        data,
                        seconds: 0,
                        vectors,
                        queries: 0,
                        vectors_enabled: true,
                    })
                    .await
                }
                BenchCmd::Quic { data, seconds } => {
                    vektagraf::bench::quic::run(vektagraf::bench::quic::Options { data, seconds })
                        .await
                }
                BenchCmd::QuicClient {
                    server: addr,
                    cert: ca,
                    op,
                    tasks,
                    seconds,
                } => {
                    vektagraf::bench::quic::run_client(vektagraf::bench::quic::ClientRun {
                        addr,
                        ca,
                        op,
                        tasks,
                        seconds,
                    })
                    .await
                }
            },
            Cmd::WriteLoop {
                data,
                tenant,
                writers,
            } => write_loop(&data, &tenant, writers).await,
            Cmd::Serve {
                config,
                join,
                listen,
            } => {
                // `serve --addr A` listens on A (VEKTAGRAF_ADDR, set for
                // the client commands, does not move a node).
                let listen = match (listen, addr_typed) {
                    (Some(_), true) => {
                        anyhow::bail!("give serve either --listen or --addr, not both")
                    }
                    (Some(l), false) => Some(l),
                    (None, true) => match cli.conn.addr.as_slice() {
                        [one] => Some(*one),
                        _ => anyhow::bail!("serve listens on one address: give --addr one"),
                    },
                    (None, false) => None,
                };
                serve(config.as_deref(), join, listen).await
            }
            Cmd::Certs { out, nodes, hosts } => {
                let files = vektagraf::net::tls::make_certs(&out, &nodes, &hosts)?;
                println!(
                    "cluster CA (clients trust this): {}",
                    files.ca_cert.display()
                );
                for (id, c, k) in files.nodes {
                    println!("node {id}: cert {} key {}", c.display(), k.display());
                }
                println!(
                    "set [server] cert/key in each node's config; clients pass --ca {}",
                    files.ca_cert.display()
                );
                Ok(())
            }
            Cmd::Remote(cmd) => cli::run(cli.conn, cmd).await,
        }
    })
}

async fn serve(
    config: Option<&std::path::Path>,
    join: Vec<String>,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let mut cfg = vektagraf::NodeConfig::load(config)?;
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    if !join.is_empty() {
        cfg.cluster.enabled = true;
        cfg.cluster.join.extend(join);
    }
    cfg.validate()?;
    let data_dir = cfg.node.data_dir.clone();
    let node = vektagraf::Node::start(cfg).await?;
    let key_path = data_dir.join("admin.key");
    if let Some(p) = node.db().ensure_admin_key(&key_path).await? {
        println!(
            "admin key created: {} (mode 0600; shown nowhere else)",
            p.display()
        );
    } else if node.cluster().is_some() && !key_path.exists() {
        println!("admin key: this node joined a cluster; use the one its first node created");
    }
    let server = node.server();
    if let Some(c) = node.cluster() {
        println!(
            "cluster node {} peer endpoint {}",
            c.me().id,
            c.me().peer_addr
        );
    }
    if let Some(m) = node.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    println!("listening on {}", server.local_addr);
    println!(
        "certificate {} sha256 {}",
        server.cert_path.display(),
        server.fingerprint
    );
    println!(
        "connect: vektagraf --addr {} --ca {} --key-file {} tenant list",
        server.local_addr,
        server.cert_path.display(),
        key_path.display()
    );
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let db = node.db().clone();
    let meta = node.cluster().map(|c| c.meta_raft().clone());
    let storage_failed = async move {
        while !db.storage_failed() && !meta.as_ref().is_some_and(vektagraf::raft::storage_fatal) {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = storage_failed => {
            // Fail-stop, as etcd does: the raft log refuses every write,
            // or a replica's raft core stopped on a storage error, so
            // replicas here are dead while the node would look alive.
            // Exit for the supervisor to restart it once the disk is
            // fixed; the log and the shards recover at start.
            tracing::error!(
                "storage failed (a full disk or an I/O error; see the errors above); exiting with status {STORAGE_FAILED_EXIT} so a supervisor restarts this node"
            );
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), node.shutdown()).await;
            std::process::exit(STORAGE_FAILED_EXIT);
        }
    }
    println!("shutting down");
    node.shutdown().await?;
    Ok(())
}

/// Exit status of a node whose storage failed (EX_TEMPFAIL).
const STORAGE_FAILED_EXIT: i32 = 75;

async fn write_loop(data: &std::path::Path, tenant: &str, writers: usize) -> anyhow::Result<()> {
    use std::io::Write;
    use vektagraf::proto::{CollectionSpec, NewObject};
    let db = vektagraf::Database::open(data, vektagraf::NodeConfig::with_data_dir(data)).await?;
    if db.get_tenant(tenant).await.is_err() {
        let mut cfg = vektagraf::TenantConfig::for_tier(
            &db.tiers(),
            tenant,
            tenant,
            "tier4",
            serde_json::json!({}),
        )?;
        cfg.rate_limit.max_requests = 1_000_000_000;
        cfg.request_limit.daily_limit = u64::MAX / 4;
        cfg.request_limit.monthly_limit = u64::MAX / 4;
        db.create_tenant(cfg).await?;
        db.create_user(tenant, "writer").await?;
    }
    let s = db.session(tenant, "writer").await?;
    if s.collections().await?.is_empty() {
        s.create_collection(CollectionSpec::vectors("items", 4))
            .await?;
    }
    println!("READY");
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let id = format!("w{w}-{i}");
                let obj = NewObject::new("items", &id, serde_json::json!({"i": i, "w": w}))
                    .with_vector(vec![i as f32, w as f32, 1.0, 0.5]);
                match s.put(obj).await {
                    Ok(_) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ACK {id}");
                        let _ = out.flush();
                    }
                    Err(e) => {
                        eprintln!("write {id} failed: {e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
