//! The operator CLI, built only on the client driver.

mod migrate;
mod moves;
mod table;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use vektagraf::client::{Client, ClientOptions};
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{
    CollectionSpec, Direction, Error, Filter, IndexKind, Metric, NewObject, OperationType,
    Properties, Query, Traverse, VectorSearch, WriteOp,
};
use vektagraf::tenant::TenantUpdate;

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum Output {
    /// Pretty JSON.
    Json,
    /// Aligned columns.
    #[default]
    Table,
}

/// How to reach a node.
#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Node address(es).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:7687",
        env = "VEKTAGRAF_ADDR",
        value_delimiter = ','
    )]
    pub addr: Vec<SocketAddr>,
    /// API key (or VEKTAGRAF_KEY, or --key-file).
    #[arg(long, global = true, env = "VEKTAGRAF_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// File holding the API key (default: ./data/admin.key if present).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// Certificate to trust: the node's self-signed cert or the cluster CA.
    #[arg(
        long,
        global = true,
        env = "VEKTAGRAF_CA",
        default_value = "./data/tls/server.crt"
    )]
    pub ca: PathBuf,
    /// Name on the server certificate.
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Retries of retryable errors.
    #[arg(long, global = true, default_value_t = 3)]
    pub max_retries: u32,
}

/// CLI commands that talk to a node.
#[derive(Debug, Subcommand)]
pub enum Remote {
    /// Tenants (admin key).
    Tenant {
        #[command(subcommand)]
        cmd: TenantCmd,
    },
    /// Users of a tenant (admin key).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// API keys (admin key).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Collections (tenant key).
    Collection {
        #[command(subcommand)]
        cmd: CollectionCmd,
    },
    /// Objects (tenant key).
    Object {
        #[command(subcommand)]
        cmd: ObjectCmd,
    },
    /// Edges between objects (tenant key).
    Edge {
        #[command(subcommand)]
        cmd: EdgeCmd,
    },
    /// Property query (tenant key).
    Query {
        /// Collection.
        collection: String,
        /// Filter JSON, e.g. '{"price": {"$lt": 10}}'.
        #[arg(long)]
        filter: Option<String>,
        /// Rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Vector search (tenant key).
    Search {
        /// Collection.
        collection: String,
        /// Query vector as JSON, e.g. '[0.1, 0.2]'. Give it several times
        /// to send the searches in one batch request (at most 256).
        #[arg(long, required = true)]
        vector: Vec<String>,
        /// Neighbours.
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// Filter JSON.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Graph traversal (tenant key).
    Traverse {
        /// Start object.
        start: String,
        /// out, in or both.
        #[arg(long, default_value = "out")]
        direction: String,
        /// Labels, comma-separated.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Depth.
        #[arg(long, default_value_t = 2)]
        depth: u32,
        /// Most nodes.
        #[arg(long, default_value_t = 100)]
        max_nodes: u32,
    },
    /// Imports JSONL objects ({"id", "properties", "vector"}) into a collection.
    Import {
        /// The JSONL file.
        file: PathBuf,
        /// Collection.
        #[arg(long)]
        collection: String,
    },
    /// Applies the write operations of a JSONL file, one per line:
    /// {"op": "put", "collection", "id", "properties", "vector"},
    /// {"op": "update", "id", "properties", "vector"}, {"op": "delete", "id"},
    /// {"op": "put_edge", "from", "label", "to", "properties"},
    /// {"op": "delete_edge", "from", "label", "to"}.
    Batch {
        /// The JSONL file.
        file: PathBuf,
        /// All or nothing, as one transaction (default: each operation on
        /// its own, in batches of 500).
        #[arg(long)]
        atomic: bool,
    },
    /// Exports a collection as JSONL.
    Export {
        /// Collection.
        collection: String,
        /// Output file (default stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Usage of the key's tenant (or, with an admin key, of TENANT).
    Usage {
        /// Tenant (admin keys).
        tenant: Option<String>,
    },
    /// A5: the audit log of tenant config changes: who changed which
    /// limit when, from what to what, and why (admin key).
    Audit {
        /// Only this tenant's changes.
        #[arg(long)]
        tenant: Option<String>,
        /// How many of the newest (at most 1,000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// A2: a tenant's analytics over a time range, cluster-wide: requests,
    /// error rate, latency (mean, p95, p99), throughput, peak concurrency,
    /// cache hit rate, storage GB-hours, request units, bandwidth, the
    /// estimated monthly cost, recommendations, and the request and
    /// latency series as sparklines (admin key).
    Analytics {
        /// Tenant id.
        tenant: String,
        /// Start: a UTC date or time (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ) or
        /// ms (default: --hours before --to).
        #[arg(long)]
        from: Option<String>,
        /// End (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Hours before --to when --from is not given.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Checks the node answers.
    Ping,
    /// Cluster nodes (admin key).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Tenant move jobs (admin key).
    Job {
        #[command(subcommand)]
        cmd: JobCmd,
    },
    /// The cluster as a whole (admin key).
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Live events (limits approached, storage critical, bursts of
    /// rejections, shards without a leader, moves) from every node: the
    /// recent ones, then, with --follow, new ones until Ctrl-C. A tenant
    /// key sees only its own tenant's.
    Events {
        /// Keep printing new events until Ctrl-C.
        #[arg(long)]
        follow: bool,
        /// Only this tenant's events (admin keys; a tenant key always
        /// gets its own).
        #[arg(long)]
        tenant: Option<String>,
        /// Only events at least this serious: info, warning or critical.
        #[arg(long, default_value = "info", value_parser = ["info", "warning", "critical"])]
        level: String,
        /// One JSON object per line (same as --output json).
        #[arg(long)]
        json: bool,
        /// Without --follow: how long to wait for events, ms.
        #[arg(long, default_value_t = 1000)]
        wait_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Running move jobs and the recent history.
    List,
    /// One job.
    Get {
        /// Job id.
        id: u64,
        /// Follow it with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Cancels a job: the tenant's group goes back to its old membership.
    Cancel {
        /// Job id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Balances replicas and leaderships over the live nodes: prints the
    /// plan, then starts its move jobs.
    Rebalance {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Lists the cluster's nodes.
    List,
    /// Removes a dead node; its shard replicas are placed on live nodes.
    /// A node that still answers is refused: drain it first, or --force.
    Remove {
        /// Node id.
        id: u64,
        /// Remove it even though it still answers its peers.
        #[arg(long)]
        force: bool,
    },
    /// Moves every replica off a live node (before maintenance or
    /// `node remove`); no new replicas are placed on it.
    Drain {
        /// Node id.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant on a tier or standard name.
    Create {
        /// Id.
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// tier1..tier4, custom, starter, professional, business, enterprise.
        #[arg(long, default_value = "tier2")]
        tier: String,
    },
    /// Show a tenant.
    Get { id: String },
    /// Update a tenant with a TenantUpdate JSON, e.g. '{"enabled": false}'
    /// or '{"custom_settings": {"auto_scale": true}}'. Every changed field
    /// goes into the audit log (`vektagraf audit`).
    Update {
        /// Id.
        id: String,
        /// The update.
        #[arg(long)]
        json: String,
        /// Why, kept in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Disable a tenant.
    Disable { id: String },
    /// Enable a tenant.
    Enable { id: String },
    /// Delete a tenant and purge its data.
    Delete { id: String },
    /// List tenants.
    List,
    /// Usage of a tenant from its shard leader: requests per operation this
    /// UTC day and month (and the previous ones), storage against its
    /// limits with ratios, warnings. `--all`: every tenant.
    Usage {
        /// Tenant id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every tenant, cluster-wide.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Deletes a tenant's objects created before a time (S4), through its
    /// shard leader's raft log; prints how many went.
    PurgeOlderThan {
        /// Tenant id.
        id: String,
        /// Objects created before this UTC date or time (YYYY-MM-DD,
        /// YYYY-MM-DDTHH:MM:SSZ, or ms) go.
        #[arg(long, required_unless_present = "days", conflicts_with = "days")]
        before: Option<String>,
        /// Objects created more than this many days ago go.
        #[arg(long)]
        days: Option<u64>,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
    },
    /// Exports a whole tenant (config, users, collections, objects with
    /// timestamps and vectors, edges, request counters) from one
    /// consistent cut into a file with a manifest of counts and checksums.
    Export {
        /// Tenant id.
        id: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// Only objects created or updated since this UTC date or time
        /// (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or ms), and the edges
        /// touching them. Deletions are not carried.
        #[arg(long)]
        since: Option<String>,
    },
    /// Imports a tenant export file, resumably, and verifies the result.
    Import {
        /// The export file.
        file: PathBuf,
        /// Import under this tenant id.
        #[arg(long = "as")]
        as_id: Option<String>,
        /// Records per import request (1 to 1000).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Stop after this many record batches (tests of resumption).
        #[arg(long, hide = true)]
        stop_after_batches: Option<u64>,
    },
    /// Where a tenant's replicas are, who leads, and how far behind each
    /// replica is.
    Placement { id: String },
    /// Moves one replica of a tenant's shard to another node, online.
    Move {
        /// Tenant.
        id: String,
        /// Target node.
        #[arg(long)]
        to: u64,
        /// Source node (default: the cluster picks one).
        #[arg(long)]
        from: Option<u64>,
        /// Follow the job with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user.
    Create { tenant: String, user: String },
    /// Remove a user (revokes their keys).
    Remove { tenant: String, user: String },
    /// List users.
    List { tenant: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a tenant key for a user (shown once).
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// User.
        #[arg(long)]
        user: String,
        /// Restrict to operations, e.g. read,query,vector_search.
        #[arg(long, value_delimiter = ',')]
        ops: Option<Vec<String>>,
    },
    /// Create another admin key.
    CreateAdmin,
    /// Revoke a key.
    Revoke { key_id: String },
    /// Revoke a key and issue a new one with the same scope.
    Rotate { key_id: String },
    /// List keys.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CollectionCmd {
    /// Declare a collection.
    Create {
        /// Name.
        name: String,
        /// Vector dimension (none: no vectors).
        #[arg(long)]
        dim: Option<u32>,
        /// l2, cosine or inner_product.
        #[arg(long, default_value = "l2")]
        metric: String,
        /// flat, hnsw or ivf.
        #[arg(long, default_value = "flat")]
        index: String,
    },
    /// List collections.
    List,
    /// Drop an empty collection.
    Drop { name: String },
    /// Index a property (dotted path) of a collection, for filtered
    /// searches: equality, $in and number ranges on it use the index.
    Index {
        /// Collection.
        name: String,
        /// Property path.
        property: String,
    },
    /// List property indexes (of one collection, or of all).
    Indexes {
        /// Only this collection's.
        name: Option<String>,
    },
    /// Drop a property index: its keys are deleted and stop counting
    /// toward the tenant's storage bytes.
    DropIndex {
        /// Collection.
        name: String,
        /// Property path.
        property: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EdgeCmd {
    /// Add or replace an edge FROM -LABEL-> TO.
    Put {
        /// Source object.
        from: String,
        /// Label.
        label: String,
        /// Target object.
        to: String,
        /// Properties JSON.
        #[arg(long, default_value = "{}")]
        json: String,
    },
    /// Remove an edge.
    Delete {
        from: String,
        label: String,
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ObjectCmd {
    /// Create or replace an object.
    Put {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
        /// Properties JSON.
        #[arg(long, default_value = "{}")]
        json: String,
        /// Vector JSON.
        #[arg(long)]
        vector: Option<String>,
    },
    /// Show an object.
    Get {
        /// Id.
        id: String,
        /// Read any replica's local state (may be behind the leader).
        #[arg(long)]
        stale: bool,
    },
    /// Merge properties into an existing object (and optionally replace
    /// its vector).
    Update {
        /// Id.
        id: String,
        /// Properties to set, JSON (top-level merge).
        #[arg(long, default_value = "{}")]
        json: String,
        /// New vector JSON.
        #[arg(long)]
        vector: Option<String>,
    },
    /// Delete an object.
    Delete { id: String },
}

fn hint(e: &Error, conn: &Conn) -> String {
    match e {
        Error::Unauthenticated { .. } => "pass a valid key with --key, --key-file or VEKTAGRAF_KEY (the first admin key is in <data_dir>/admin.key)".into(),
        Error::PermissionDenied { .. } => "use a key with the right scope: admin keys manage tenants, tenant keys reach data".into(),
        Error::Unavailable { reason } if reason.contains("failed authentications") => {
            "too many failed authentications from this address: wait for the window to pass, and check the key".into()
        }
        Error::Unavailable { reason } if reason.contains("removed from the cluster") => {
            "this node was removed from the cluster: give another node's address with --addr".into()
        }
        Error::Unavailable { reason } if reason.contains("metadata group") => {
            "this node has lost touch with the cluster (a partition, or a lost quorum): give another node's address with --addr, or check `vektagraf node list` elsewhere".into()
        }
        Error::Unavailable { reason }
            if reason.contains("max_connections")
                || reason.contains("busy")
                || reason.contains("refused") =>
        {
            format!(
            "the node at {:?} refused the connection: it is at its connection limit (server.max_connections, or max_connections_per_ip for this address), or failed authentications from this address are being refused; close idle clients, raise the limit, or give another node with --addr",
            conn.addr
        )
        }
        Error::Unavailable { .. } | Error::Timeout { .. } => format!(
            "is a node running at {:?}? start one with `vektagraf serve`, and trust its certificate with --ca (now {})",
            conn.addr,
            conn.ca.display()
        ),
        Error::StorageFull { node, .. } => format!(
            "free disk space on node {node} (or delete data: deletes still work); writes resume by themselves once its free space is above the reserve"
        ),
        Error::LimitExceeded(l) => match l.retry_after() {
            Some(d) => format!("the tenant hit {}; retry after {:.1} s or raise the limit", l.kind.config_key(), d.as_secs_f64()),
            None => format!("the tenant hit {}; free space or raise the limit (`vektagraf tenant update`)", l.kind.config_key()),
        },
        Error::TenantNotFound { .. } => "list tenants with `vektagraf tenant list`".into(),
        Error::TooManySubscriptions { .. } => "close other `vektagraf events` subscriptions, or raise events.max_subscriptions on the node".into(),
        Error::CrossTenantAccess { .. } => "a tenant key sees only its own tenant: leave out --tenant, or use an admin key".into(),
        Error::InvalidFilter { .. } => "filters look like '{\"price\": {\"$lt\": 10}, \"tag\": {\"$in\": [\"a\"]}}'".into(),
        _ => String::new(),
    }
}

fn api_key(conn: &Conn) -> anyhow::Result<String> {
    if let Some(k) = &conn.key {
        return Ok(k.trim().to_string());
    }
    let file = conn
        .key_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("./data/admin.key"));
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "no API key: pass --key, set VEKTAGRAF_KEY, or --key-file (tried {})",
                file.display()
            )
        })
}

fn print<T: Serialize>(out: Output, v: &T) -> anyhow::Result<()> {
    table::value(out, v)
}

fn parse_vec(s: &str) -> anyhow::Result<Vec<f32>> {
    serde_json::from_str(s).context("a vector is a JSON array of numbers, e.g. '[0.1, 0.2]'")
}

fn parse_ops(ops: &[String]) -> anyhow::Result<Vec<OperationType>> {
    ops.iter()
        .map(|o| OperationType::parse(o).with_context(|| format!("unknown operation {o:?}: use read, write, query, vector_search, graph_traverse")))
        .collect()
}

/// Runs a remote command; errors print what went wrong and what to do.
pub async fn run(conn: Conn, cmd: Remote) -> anyhow::Result<()> {
    let mut opts = ClientOptions::new(conn.addr.clone(), &api_key(&conn)?, &conn.ca)
        .map_err(|e| anyhow::anyhow!("{e}\nhint: --ca must name the node's certificate (<data_dir>/tls/server.crt) or the cluster CA"))?;
    opts.server_name = conn.server_name.clone();
    opts.max_retries = conn.max_retries;
    let result = async {
        let client = Client::connect(opts).await?;
        let r = exec(&client, conn.output, cmd).await;
        client.close().await;
        r
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(CliError::Api(e)) => {
            let h = hint(&e, &conn);
            if h.is_empty() {
                anyhow::bail!("{e}")
            }
            anyhow::bail!("{e}\nhint: {h}")
        }
        Err(CliError::Other(e)) => Err(e),
    }
}

/// The columns of objects listed in a table.
const OBJECT_COLUMNS: &[table::Column] = &[
    ("id", "id"),
    ("collection", "collection"),
    ("created", "created_at"),
    ("updated", "updated_at"),
    ("properties", "properties"),
    ("vector", "vector"),
];

enum CliError {
    Api(Error),
    Other(anyhow::Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Api(e)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Other(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Other(e.into())
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::Other(e.into())
    }
}

async fn exec(c: &Client, out: Output, cmd: Remote) -> Result<(), CliError> {
    match cmd {
        Remote::Ping => {
            c.ping().await?;
            println!("pong");
        }
        Remote::Analytics {
            tenant,
            from,
            to,
            hours,
        } => {
            let time = |flag: &str, v: &str| {
                vektagraf::migrate::parse_since(v).map_err(|e| anyhow::anyhow!("--{flag} {e}"))
            };
            let to_ms = match to {
                Some(t) => time("to", &t)?,
                None => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            };
            let from_ms = match from {
                Some(f) => time("from", &f)?,
                None => to_ms.saturating_sub(hours.saturating_mul(3_600_000)),
            };
            let report = c.analytics(&tenant, from_ms, to_ms).await?;
            table::analytics(out, &report)?
        }
        Remote::Audit { tenant, limit } => {
            let entries = c.audit(tenant.as_deref(), limit).await?;
            if let Output::Json = out {
                print(out, &entries)?;
            } else {
                // Values are JSON text: show strings without their quotes.
                let value = |v: &Option<String>| match v {
                    None => serde_json::Value::Null,
                    Some(t) => match serde_json::from_str::<serde_json::Value>(t) {
                        Ok(serde_json::Value::String(s)) => s.into(),
                        _ => t.clone().into(),
                    },
                };
                let rows: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "changed_at": e.at_ms,
                            "tenant": e.tenant_id,
                            "by": e.actor,
                            "field": e.field,
                            "old": value(&e.old),
                            "new": value(&e.new),
                            "reason": e.reason,
                        })
                    })
                    .collect();
                table::rows(
                    out,
                    &rows,
                    &[
                        ("when", "changed_at"),
                        ("tenant", "tenant"),
                        ("by", "by"),
                        ("field", "field"),
                        ("old", "old"),
                        ("new", "new"),
                        ("reason", "reason"),
                    ],
                )?
            }
        }
        Remote::Node { cmd } => match cmd {
            NodeCmd::List => {
                let nodes = c.cluster_nodes().await?;
                if let Output::Json = out {
                    print(out, &nodes)?
                } else {
                    let rows: Vec<serde_json::Value> = nodes
                        .iter()
                        .map(|n| {
                            let role = if n.leader {
                                "metadata leader"
                            } else if n.voter {
                                "voter"
                            } else {
                                "learner"
                            };
                            let state = if n.removed {
                                "removed"
                            } else if n.leads.is_none() {
                                // It did not answer the node asking, within 2 s.
                                "unreachable"
                            } else if n.draining {
                                "draining"
                            } else {
                                "live"
                            };
                            serde_json::json!({"id": n.id, "client_addr": n.client_addr, "peer_addr": n.peer_addr, "role": role, "state": state, "replicas": n.replicas, "leads": n.leads})
                        })
                        .collect();
                    table::rows(
                        out,
                        &rows,
                        &[
                            ("node", "id"),
                            ("client address", "client_addr"),
                            ("peer address", "peer_addr"),
                            ("group 0", "role"),
                            ("state", "state"),
                            ("replicas", "replicas"),
                            ("leads", "leads"),
                        ],
                    )?
                }
            }
            NodeCmd::Remove { id, force } => {
                let r = c.remove_node(id, force).await?;
                if let Output::Json = out {
                    print(out, &r)?;
                } else {
                    println!(
                        "node {id} removed; {} tenant replica(s) placed again on live nodes",
                        r.replaced.len()
                    );
                    if !r.under_replicated.is_empty() {
                        println!(
                            "warning: no live node to place on; under-replicated until a node joins: {}",
                            r.under_replicated.join(", ")
                        );
                    }
                }
            }
            NodeCmd::Drain { id } => {
                let plan = c.drain_node(id).await?;
                moves::print_plan(out, &plan, false)?;
                println!("node {id} is draining: no new replicas go there");
            }
        },
        Remote::Job { cmd } => match cmd {
            JobCmd::List => moves::print_jobs(out, &c.jobs().await?)?,
            JobCmd::Get { id, watch: false } => moves::print_jobs(out, &[c.job(id).await?])?,
            JobCmd::Get { id, watch: true } => {
                let j = moves::watch(c, id).await?;
                moves::outcome(&j)?
            }
            JobCmd::Cancel { id } => {
                let j = c.cancel_job(id).await?;
                println!(
                    "job {id}: cancel requested; the group of {} goes back to its old membership",
                    j.tenant_id
                );
            }
        },
        Remote::Cluster { cmd } => match cmd {
            ClusterCmd::Rebalance { dry_run } => {
                let plan = c.rebalance(dry_run).await?;
                moves::print_plan(out, &plan, dry_run)?
            }
        },
        Remote::Tenant { cmd } => match cmd {
            TenantCmd::Create { id, name, tier } => print(
                out,
                &c.create_tenant_for_tier(&id, name.as_deref().unwrap_or(&id), &tier)
                    .await?,
            )?,
            TenantCmd::Get { id } => print(out, &c.get_tenant(&id).await?)?,
            TenantCmd::Update { id, json, reason } => {
                let mut up: TenantUpdate = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("bad update JSON: {e}"))?;
                if reason.is_some() {
                    up.reason = reason;
                }
                print(out, &c.update_tenant(&id, up).await?)?
            }
            TenantCmd::Disable { id } => print(
                out,
                &c.update_tenant(
                    &id,
                    TenantUpdate {
                        enabled: Some(false),
                        ..Default::default()
                    },
                )
                .await?,
            )?,
            TenantCmd::Enable { id } => print(
                out,
                &c.update_tenant(
                    &id,
                    TenantUpdate {
                        enabled: Some(true),
                        ..Default::default()
                    },
                )
                .await?,
            )?,
            TenantCmd::Delete { id } => {
                c.delete_tenant(&id).await?;
                println!("deleted tenant {id} and purged its data");
            }
            TenantCmd::List => table::rows(
                out,
                &c.list_tenants().await?,
                &[
                    ("tenant", "tenant_id"),
                    ("name", "name"),
                    ("tier", "tier"),
                    ("enabled", "enabled"),
                ],
            )?,
            TenantCmd::Usage { id: Some(id), .. } => print(out, &c.usage(Some(&id)).await?)?,
            TenantCmd::Usage { id: None, .. } => {
                let report = c.usage_all().await?;
                if matches!(out, Output::Json) {
                    print(out, &report)?
                } else {
                    let mut rows: Vec<serde_json::Value> = report
                        .tenants
                        .iter()
                        .map(|u| {
                            let ratio = |k: &str| {
                                u.limits
                                    .iter()
                                    .find(|l| l.limit == k)
                                    .map_or(0.0, |l| (l.ratio * 1000.0).round() / 10.0)
                            };
                            serde_json::json!({
                                "tenant_id": u.tenant_id,
                                "date": u.requests.date,
                                "today": u.requests.daily,
                                "month": u.requests.monthly,
                                "today_by_op": u.requests.daily_by_operation,
                                "storage_%": ratio("storage_limit.max_storage_bytes"),
                                "objects_%": ratio("storage_limit.max_objects"),
                                "warnings": u.warnings.len(),
                            })
                        })
                        .collect();
                    rows.extend(
                        report.unavailable.iter().map(
                            |(t, e)| serde_json::json!({"tenant_id": t, "error": e.to_string()}),
                        ),
                    );
                    table::rows(
                        out,
                        &rows,
                        &[
                            ("tenant", "tenant_id"),
                            ("date", "date"),
                            ("today", "today"),
                            ("this month", "month"),
                            ("today by operation", "today_by_op"),
                            ("storage %", "storage_%"),
                            ("objects %", "objects_%"),
                            ("warnings", "warnings"),
                            ("error", "error"),
                        ],
                    )?
                }
            }
            TenantCmd::PurgeOlderThan {
                id,
                before,
                days,
                collection,
            } => {
                let cutoff_ms = match (before, days) {
                    (Some(b), _) => vektagraf::migrate::parse_since(&b)
                        .map_err(|e| anyhow::anyhow!("--before {e}"))?,
                    (None, Some(d)) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        now.saturating_sub(d.saturating_mul(86_400_000))
                    }
                    (None, None) => return Err(anyhow::anyhow!("give --before or --days").into()),
                };
                let removed = c
                    .purge_older_than(&id, collection.as_deref(), cutoff_ms)
                    .await?;
                print(
                    out,
                    &serde_json::json!({"tenant_id": id, "cutoff_ms": cutoff_ms, "cutoff_at": cutoff_ms, "removed": removed}),
                )?
            }
            TenantCmd::Export {
                id,
                out: file,
                since,
            } => migrate::export(c, out, &id, file, since).await?,
            TenantCmd::Import {
                file,
                as_id,
                batch,
                stop_after_batches,
            } => migrate::import(c, out, file, as_id, batch, stop_after_batches).await?,
            TenantCmd::Placement { id } => moves::placement(c, out, &id).await?,
            TenantCmd::Move {
                id,
                to,
                from,
                watch,
            } => {
                let j = c.move_tenant(&id, to, from).await?;
                println!(
                    "job {}: moving a replica of {id} from node {} to node {to}",
                    j.id, j.from_node
                );
                if watch {
                    let j = moves::watch(c, j.id).await?;
                    moves::outcome(&j)?
                } else {
                    println!("follow it with `vektagraf job get {} --watch`", j.id);
                }
            }
        },
        Remote::User { cmd } => match cmd {
            UserCmd::Create { tenant, user } => {
                c.create_user(&tenant, &user).await?;
                println!("created user {user} in {tenant}");
            }
            UserCmd::Remove { tenant, user } => {
                c.remove_user(&tenant, &user).await?;
                println!("removed user {user} from {tenant} (their keys are revoked)");
            }
            UserCmd::List { tenant } => {
                let users: Vec<serde_json::Value> = c
                    .list_users(&tenant)
                    .await?
                    .into_iter()
                    .map(|u| serde_json::json!({ "user": u }))
                    .collect();
                table::rows(out, &users, &[("user", "user")])?
            }
        },
        Remote::Key { cmd } => match cmd {
            KeyCmd::Create { tenant, user, ops } => {
                let ops = ops.map(|o| parse_ops(&o)).transpose()?;
                let (key, info) = c
                    .create_key(KeyKind::Tenant, Some(&tenant), Some(&user), ops)
                    .await?;
                eprintln!("store this key now; it is not shown again");
                if matches!(out, Output::Json) {
                    // One JSON document: the key and its public facts.
                    let mut v = serde_json::to_value(&info)?;
                    v["api_key"] = key.into();
                    print(out, &v)?;
                } else {
                    println!("{key}");
                }
            }
            KeyCmd::CreateAdmin => {
                let (key, _) = c.create_key(KeyKind::Admin, None, None, None).await?;
                eprintln!("store this key now; it is not shown again");
                println!("{key}");
            }
            KeyCmd::Revoke { key_id } => {
                c.revoke_key(&key_id).await?;
                println!("revoked {key_id}");
            }
            KeyCmd::Rotate { key_id } => {
                let (key, info) = c.rotate_key(&key_id).await?;
                eprintln!(
                    "revoked {key_id}; new key {} (not shown again):",
                    info.key_id
                );
                println!("{key}");
            }
            KeyCmd::List { tenant } => table::rows(
                out,
                &c.list_keys(tenant.as_deref()).await?,
                &[
                    ("key id", "key_id"),
                    ("kind", "kind"),
                    ("tenant", "tenant_id"),
                    ("user", "user_id"),
                    ("operations", "operations"),
                    ("created", "created_at"),
                    ("revoked", "revoked"),
                ],
            )?,
        },
        Remote::Collection { cmd } => match cmd {
            CollectionCmd::Create {
                name,
                dim,
                metric,
                index,
            } => {
                let metric = match metric.as_str() {
                    "l2" => Metric::L2,
                    "cosine" => Metric::Cosine,
                    "inner_product" | "ip" => Metric::InnerProduct,
                    m => {
                        return Err(anyhow::anyhow!(
                            "unknown metric {m}: use l2, cosine or inner_product"
                        )
                        .into())
                    }
                };
                let index = match index.as_str() {
                    "flat" => IndexKind::Flat,
                    "hnsw" => IndexKind::Hnsw {
                        m: 32,
                        ef_search: 64,
                    },
                    "ivf" => IndexKind::Ivf {
                        nlist: 64,
                        nprobe: 8,
                    },
                    i => {
                        return Err(
                            anyhow::anyhow!("unknown index {i}: use flat, hnsw or ivf").into()
                        )
                    }
                };
                c.create_collection(CollectionSpec {
                    name: name.clone(),
                    dimension: dim,
                    metric,
                    index,
                })
                .await?;
                println!("created collection {name}");
            }
            CollectionCmd::List => {
                // Each collection with its indexed properties.
                let indexes = c.indexes(None).await?;
                let mut rows = Vec::new();
                for spec in c.collections().await? {
                    let mut row = serde_json::to_value(&spec)
                        .map_err(|e| anyhow::anyhow!("collection spec: {e}"))?;
                    let indexed: Vec<&str> = indexes
                        .iter()
                        .filter(|i| i.collection == spec.name)
                        .map(|i| i.property.as_str())
                        .collect();
                    row["indexed_properties"] = serde_json::json!(indexed);
                    rows.push(row);
                }
                table::rows(
                    out,
                    &rows,
                    &[
                        ("collection", "name"),
                        ("dimension", "dimension"),
                        ("metric", "metric"),
                        ("index", "index"),
                        ("indexed properties", "indexed_properties"),
                    ],
                )?
            }
            CollectionCmd::Drop { name } => {
                c.drop_collection(&name).await?;
                println!("dropped collection {name}");
            }
            CollectionCmd::Index { name, property } => {
                let n = c.index_property(&name, &property).await?;
                println!("indexed {name}.{property} ({n} objects read)");
            }
            CollectionCmd::Indexes { name } => table::rows(
                out,
                &c.indexes(name.as_deref()).await?,
                &[("collection", "collection"), ("property", "property")],
            )?,
            CollectionCmd::DropIndex { name, property } => {
                let n = c.drop_index(&name, &property).await?;
                println!("dropped index {name}.{property} ({n} keys deleted)");
            }
        },
        Remote::Object { cmd } => match cmd {
            ObjectCmd::Put {
                collection,
                id,
                json,
                vector,
            } => {
                let props: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("bad properties JSON: {e}"))?;
                let mut o = NewObject {
                    id,
                    collection,
                    properties: Properties::from_json(props)?,
                    vector: None,
                };
                if let Some(v) = vector {
                    o.vector = Some(parse_vec(&v)?);
                }
                print(out, &c.put(o).await?)?
            }
            ObjectCmd::Get { id, stale } => match if stale {
                c.get_stale(&id).await?
            } else {
                c.get(&id).await?
            } {
                Some(o) => print(out, &o)?,
                None => return Err(Error::not_found("object", &id).into()),
            },
            ObjectCmd::Update { id, json, vector } => {
                let props: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("bad properties JSON: {e}"))?;
                let vector = vector.map(|v| parse_vec(&v)).transpose()?;
                print(out, &c.update(&id, props, vector).await?)?
            }
            ObjectCmd::Delete { id } => print(out, &c.delete(&id).await?)?,
        },
        Remote::Edge { cmd } => match cmd {
            EdgeCmd::Put {
                from,
                label,
                to,
                json,
            } => {
                let props: serde_json::Value = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("bad properties JSON: {e}"))?;
                let edge = vektagraf::proto::Edge {
                    from,
                    label,
                    to,
                    properties: Properties::from_json(props)?,
                };
                print(out, &c.transaction(vec![WriteOp::PutEdge(edge)]).await?)?
            }
            EdgeCmd::Delete { from, label, to } => print(
                out,
                &c.transaction(vec![WriteOp::DeleteEdge { from, label, to }])
                    .await?,
            )?,
        },
        Remote::Query {
            collection,
            filter,
            limit,
        } => {
            let filter = filter.map(|f| Filter::parse(&f)).transpose()?;
            table::rows(
                out,
                &c.query(Query {
                    collection,
                    filter,
                    limit,
                })
                .await?,
                OBJECT_COLUMNS,
            )?
        }
        Remote::Search {
            collection,
            vector,
            k,
            filter,
        } => {
            let filter = filter.map(|f| Filter::parse(&f)).transpose()?;
            // What the score is depends on the collection's metric.
            let metric = c
                .collections()
                .await?
                .into_iter()
                .find(|s| s.name == collection)
                .map(|s| s.metric);
            let searches = vector
                .iter()
                .map(|v| {
                    Ok(VectorSearch {
                        collection: collection.clone(),
                        vector: parse_vec(v)?,
                        k,
                        filter: filter.clone(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let batch = searches.len() > 1;
            let lists = match <[VectorSearch; 1]>::try_from(searches) {
                Ok([one]) => vec![c.search(one, false).await?],
                Err(many) => c.search_batch(many, false).await?,
            };
            let label = match metric {
                Some(Metric::L2) => "squared_l2_distance",
                Some(Metric::Cosine) => "cosine_distance",
                Some(Metric::InnerProduct) => "inner_product_similarity",
                None => "score",
            };
            let rows: Vec<serde_json::Value> = lists
                .iter()
                .enumerate()
                .flat_map(|(q, hits)| {
                    hits.iter().enumerate().map(move |(i, h)| {
                        serde_json::json!({"query": q + 1, "rank": i + 1, "id": h.id, label: h.score})
                    })
                })
                .collect();
            let header = label.replace('_', " ");
            let mut columns = vec![("rank", "rank"), ("id", "id"), (header.as_str(), label)];
            if batch {
                columns.insert(0, ("query", "query"));
            }
            table::rows(out, &rows, &columns)?
        }
        Remote::Traverse {
            start,
            direction,
            labels,
            depth,
            max_nodes,
        } => {
            let direction = match direction.as_str() {
                "out" => Direction::Out,
                "in" => Direction::In,
                "both" => Direction::Both,
                d => {
                    return Err(
                        anyhow::anyhow!("unknown direction {d}: use out, in or both").into(),
                    )
                }
            };
            table::rows(
                out,
                &c.traverse(Traverse {
                    start,
                    direction,
                    labels,
                    max_depth: depth,
                    max_nodes,
                })
                .await?,
                &[
                    ("id", "id"),
                    ("depth", "depth"),
                    ("via", "via"),
                    ("label", "label"),
                ],
            )?
        }
        Remote::Import { file, collection } => import(c, &file, &collection).await?,
        Remote::Batch { file, atomic } => batch(c, out, &file, atomic).await?,
        Remote::Export {
            collection,
            out: path,
        } => export(c, &collection, path).await?,
        Remote::Usage { tenant } => print(out, &c.usage(tenant.as_deref()).await?)?,
        Remote::Events {
            follow,
            tenant,
            level,
            json,
            wait_ms,
        } => {
            let json = json || matches!(out, Output::Json);
            events(c, follow, tenant, &level, json, wait_ms).await?
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Line {
    id: String,
    #[serde(default)]
    properties: serde_json::Value,
    #[serde(default)]
    vector: Option<Vec<f32>>,
}

async fn import(c: &Client, file: &std::path::Path, collection: &str) -> Result<(), CliError> {
    let total = std::io::BufReader::new(std::fs::File::open(file)?)
        .lines()
        .count();
    let reader = std::io::BufReader::new(std::fs::File::open(file)?);
    let (mut done, mut failed) = (0usize, 0usize);
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "import [{bar:30}] {pos}/{len} lines  {per_sec}  eta {eta}  {msg}",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .progress_chars("=> "),
    );
    let mut chunk = Vec::new();
    let mut lines = reader.lines().enumerate();
    loop {
        let next = lines.next();
        if let Some((n, line)) = &next {
            let line = line
                .as_ref()
                .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(line).map_err(|e| {
                anyhow::anyhow!(
                    "line {}: {e} (expected {{\"id\", \"properties\", \"vector\"}})",
                    n + 1
                )
            })?;
            chunk.push(WriteOp::Put(NewObject {
                id: l.id,
                collection: collection.to_string(),
                properties: Properties::from_json(l.properties)?,
                vector: l.vector,
            }));
        }
        if chunk.len() >= 500 || (next.is_none() && !chunk.is_empty()) {
            for r in c.batch(std::mem::take(&mut chunk)).await {
                match r {
                    Ok(_) => done += 1,
                    Err(e) => {
                        failed += 1;
                        if failed <= 5 {
                            bar.println(format!("item failed: {e}"));
                        }
                    }
                }
            }
            bar.set_position((done + failed) as u64);
            bar.set_message(format!("{done} ok, {failed} failed"));
        }
        if next.is_none() {
            break;
        }
    }
    bar.finish();
    println!("imported {done} objects into {collection} ({failed} failed)");
    if failed > 0 {
        return Err(anyhow::anyhow!("{failed} objects were not imported").into());
    }
    Ok(())
}

/// One line of a `batch` file.
#[derive(serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum BatchLine {
    Put {
        collection: String,
        id: String,
        #[serde(default)]
        properties: serde_json::Value,
        #[serde(default)]
        vector: Option<Vec<f32>>,
    },
    Update {
        id: String,
        #[serde(default)]
        properties: serde_json::Value,
        #[serde(default)]
        vector: Option<Vec<f32>>,
    },
    Delete {
        id: String,
    },
    PutEdge {
        from: String,
        label: String,
        to: String,
        #[serde(default)]
        properties: serde_json::Value,
    },
    DeleteEdge {
        from: String,
        label: String,
        to: String,
    },
}

fn props(v: serde_json::Value) -> Result<Properties, Error> {
    match v {
        serde_json::Value::Null => Properties::from_json(serde_json::json!({})),
        v => Properties::from_json(v),
    }
}

impl BatchLine {
    fn into_op(self) -> Result<(String, WriteOp), Error> {
        Ok(match self {
            BatchLine::Put {
                collection,
                id,
                properties,
                vector,
            } => (
                "put".into(),
                WriteOp::Put(NewObject {
                    id,
                    collection,
                    properties: props(properties)?,
                    vector,
                }),
            ),
            BatchLine::Update {
                id,
                properties,
                vector,
            } => (
                "update".into(),
                WriteOp::Update {
                    id,
                    properties: props(properties)?,
                    vector,
                },
            ),
            BatchLine::Delete { id } => ("delete".into(), WriteOp::Delete { id }),
            BatchLine::PutEdge {
                from,
                label,
                to,
                properties,
            } => (
                "put_edge".into(),
                WriteOp::PutEdge(vektagraf::proto::Edge {
                    from,
                    label,
                    to,
                    properties: props(properties)?,
                }),
            ),
            BatchLine::DeleteEdge { from, label, to } => (
                "delete_edge".into(),
                WriteOp::DeleteEdge { from, label, to },
            ),
        })
    }
}

/// What an op names, for the outcome table.
fn op_target(op: &WriteOp) -> String {
    match op {
        WriteOp::Put(o) => o.id.clone(),
        WriteOp::Update { id, .. } | WriteOp::Delete { id } => id.clone(),
        WriteOp::PutEdge(e) => format!("{} -[{}]-> {}", e.from, e.label, e.to),
        WriteOp::DeleteEdge { from, label, to } => format!("{from} -[{label}]-> {to}"),
    }
}

/// Most operations of one `batch` request (the node refuses larger
/// batches with its `max_batch_size`).
const BATCH_CHUNK: usize = 500;

async fn batch(
    c: &Client,
    out: Output,
    file: &std::path::Path,
    atomic: bool,
) -> Result<(), CliError> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?,
    );
    let mut ops = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: BatchLine = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "line {}: {e} (each line is one op: see `vektagraf batch --help`)",
                n + 1
            )
        })?;
        let (kind, op) = l.into_op()?;
        ops.push((n + 1, kind, op));
    }
    let mut rows = Vec::with_capacity(ops.len());
    let mut failed = 0;
    if atomic {
        let targets: Vec<(usize, String, String)> = ops
            .iter()
            .map(|(n, k, op)| (*n, k.clone(), op_target(op)))
            .collect();
        let r = c
            .transaction(ops.into_iter().map(|(_, _, op)| op).collect())
            .await?;
        for ((line, kind, target), outcome) in targets.into_iter().zip(r.outcomes) {
            rows.push(serde_json::json!({"line": line, "op": kind, "target": target, "outcome": format!("{outcome:?}")}));
        }
    } else {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<_> = ops.by_ref().take(BATCH_CHUNK).collect();
            let targets: Vec<(usize, String, String)> = chunk
                .iter()
                .map(|(n, k, op)| (*n, k.clone(), op_target(op)))
                .collect();
            let results = c
                .batch(chunk.into_iter().map(|(_, _, op)| op).collect())
                .await;
            for ((line, kind, target), r) in targets.into_iter().zip(results) {
                let outcome = match r {
                    Ok(o) => format!("{o:?}"),
                    Err(e) => {
                        failed += 1;
                        format!("failed: {e}")
                    }
                };
                rows.push(serde_json::json!({"line": line, "op": kind, "target": target, "outcome": outcome}));
            }
        }
    }
    table::rows(
        out,
        &rows,
        &[
            ("line", "line"),
            ("op", "op"),
            ("target", "target"),
            ("outcome", "outcome"),
        ],
    )?;
    if failed > 0 {
        return Err(anyhow::anyhow!("{failed} of {} operations failed", rows.len()).into());
    }
    Ok(())
}

async fn export(c: &Client, collection: &str, path: Option<PathBuf>) -> Result<(), CliError> {
    let mut w: Box<dyn Write> = match &path {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut after: Option<String> = None;
    let mut n = 0;
    loop {
        let page = c.scan(collection, after.as_deref(), 500).await?;
        if page.is_empty() {
            break;
        }
        for o in &page {
            let line = serde_json::json!({"id": o.id, "properties": o.properties, "vector": o.vector, "created_at": o.created_at});
            writeln!(w, "{line}")?;
            n += 1;
        }
        after = page.last().map(|o| o.id.clone());
    }
    w.flush()?;
    eprintln!("exported {n} objects from {collection}");
    Ok(())
}

/// `vektagraf events`: prints events as they arrive, for `wait_ms` or
/// (with `follow`) until Ctrl-C.
async fn events(
    c: &Client,
    follow: bool,
    tenant: Option<String>,
    level: &str,
    json: bool,
    wait_ms: u64,
) -> Result<(), CliError> {
    use futures::StreamExt;
    use vektagraf::proto::{EventFilter, EventItem, EventLevel};
    let min_level = EventLevel::parse(level)
        .ok_or_else(|| anyhow::anyhow!("--level must be info, warning or critical"))?;
    let mut stream = c.events(EventFilter { tenant, min_level }).await?;
    let deadline = tokio::time::sleep(std::time::Duration::from_millis(wait_ms));
    tokio::pin!(deadline);
    let mut stdout = std::io::stdout();
    loop {
        let item = tokio::select! {
            i = stream.next() => i,
            () = &mut deadline, if !follow => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(item) = item else { break };
        let line = match (&item, json) {
            (Err(e), _) => {
                eprintln!("{e}");
                continue;
            }
            (Ok(i), true) => serde_json::to_string(i)?,
            (Ok(EventItem::Event(e)), false) => format!(
                "{}  {:<8}  {:<16}  node {}  {}",
                table::rfc3339(e.at_ms),
                e.level.as_str(),
                e.tenant.as_deref().unwrap_or("-"),
                e.node,
                e.message
            ),
            (Ok(EventItem::Lost { node, count }), false) => {
                format!("-- {count} events lost on node {node}: this subscriber fell behind")
            }
        };
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    Ok(())
}
