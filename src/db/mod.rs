//! The embedded API: [`Database`] manages tenants and users and hands out
//! [`Session`]s, each bound to one (tenant, user), that run operations.
//!
//! This is the engine, below the cluster, the router, the network and the
//! node: it names none of them. The cluster drives it through a small
//! crate API (open and close a tenant replica, the loaded tenants, their
//! raft handles, placement and quiescence state) and attaches itself as
//! the engine's [`ClusterHooks`] and [`MetaGroup`].

mod analytics;
mod audit;
mod export;
mod health;
mod hibernate;
mod keys;
mod metrics;
mod registry;
mod retention;
mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use ractor::{Actor, ActorCell, ActorRef};

use crate::config::NodeConfig;
use crate::limits::{Admission, QuotaCounters, TenantLimiter};
use crate::proto::{CacheUsage, ChangedBy, Error, LimitKind, OperationType, Result, TenantUsage};
use crate::raft::RaftLogDb;
use crate::shard::{
    CacheBudget, ReadCache, ReplicaNet, ShardArgs, ShardData, ShardMsg, ShardSupervisor,
    SupervisorMsg,
};
use crate::storage::{DiskReserve, StorageEnv};
use crate::tenant::{
    validate_name, validate_tenant_id, CacheLimits, TenantConfig, TenantUpdate, Tier, Tiers,
};

/// Moved to `proto` (the peer transport carries it too); kept here for
/// the engine's callers.
pub use crate::proto::NodeRecord;
pub use analytics::{Resolution, HOUR_MS};
pub use audit::MAX_AUDIT_PAGE;
pub(crate) use hibernate::Awake;
pub use registry::{
    KeyRecord, MetaGroup, Registry, Replica, TenantRecord, TenantState, UserRecord,
};
pub use session::{OnceTag, Session, MAX_SEARCH_BATCH, MAX_TRANSACTION_OPS};

/// The tenant used for every session when multi-tenancy is disabled.
pub const DEFAULT_TENANT: &str = "default";

/// What the engine asks of the cluster layer on a cluster node. The
/// cluster implements it and attaches itself with
/// `Database::attach_cluster`; a standalone node has none.
pub trait ClusterHooks: Send + Sync {
    /// Places a new tenant's shard group `group`: its replicas.
    fn place<'a>(&'a self, db: &'a Database, group: u64) -> BoxFuture<'a, Result<Vec<Replica>>>;
    /// Waits (a few seconds at most) until a new tenant's group is served,
    /// when this node holds one of its replicas.
    fn wait_served<'a>(&'a self, db: &'a Database, rec: &'a TenantRecord) -> BoxFuture<'a, ()>;
    /// Whether `user` of `tenant` exists, from the node's cache of checked
    /// users while the metadata is unchanged.
    fn user_exists(&self, reg: &Registry, tenant: &str, user: &str) -> Result<bool>;
    /// Whether this node may create the cluster's first admin key (group
    /// 0's leader, with a current key table; never a joining node).
    fn may_mint_admin_key<'a>(&'a self, db: &'a Database) -> BoxFuture<'a, Result<bool>>;
    /// Whether this node leads the metadata group (group 0) now.
    fn leads_metadata(&self) -> bool;
    /// This node's id in the cluster.
    fn node_id(&self) -> u64;
    /// A5: has group 0's leader commit the dynamic limit policy's raise
    /// of `tenant`'s storage limits (it checks the raise; see
    /// `Database::commit_raise`).
    fn raise_limits<'a>(
        &'a self,
        db: &'a Database,
        tenant: &'a str,
        limits: crate::tenant::StorageLimitConfig,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// Stops the cluster's background loops (first step of a close).
    fn stop_background(&self);
    /// Stops the metadata group and the peer transport (after the
    /// engine's shards, before its log store closes).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// A loaded tenant: config, limiter, and the route to its shard actor.
pub(crate) struct Tenant {
    config: RwLock<Arc<TenantConfig>>,
    group: u64,
    limiter: Arc<TenantLimiter>,
    route: Arc<RwLock<Option<ActorRef<ShardMsg>>>>,
    slot: crate::shard::ShardSlot,
    /// Cluster placement of its shard group (empty on a single node).
    replicas: RwLock<Vec<Replica>>,
    /// Last request served here (coarse ms), for quiescence.
    last_active: std::sync::atomic::AtomicU64,
    /// The group's raft ticks are off here (an idle, quiesced group).
    quiesced: std::sync::atomic::AtomicBool,
    /// Its read cache on this node.
    cache: Arc<ReadCache>,
    /// Each tier's cache limits (shared by every tenant of the node).
    cache_tiers: Arc<CacheTiers>,
    /// Last AppendEntries (heartbeats included) this replica accepted
    /// from its group's leader (coarse ms; load time until the first).
    leader_heard: std::sync::atomic::AtomicU64,
    /// When the scheduled retention cleanup last ran here (ms; 0: not yet).
    retention_ran: std::sync::atomic::AtomicU64,
    /// When the dynamic limit policy last raised its limits from here
    /// (ms; 0: never).
    auto_scaled_at: std::sync::atomic::AtomicU64,
    /// Whether its shard is open here or closed by hibernation; every
    /// request holds a read guard while it runs (`db/hibernate.rs`).
    life: Arc<tokio::sync::RwLock<hibernate::Life>>,
    /// `life` is `Asleep` (a lock-free look for loops and metrics).
    asleep: std::sync::atomic::AtomicBool,
    /// How its shard opens (the storage limits are refreshed each time).
    args: ShardArgs,
    /// What it kept when it hibernated here (None: awake, or asleep
    /// since start and never opened).
    rested: Mutex<Option<hibernate::Rest>>,
}

/// Each tier's read cache limits, from the tiers file.
type CacheTiers = std::collections::BTreeMap<Tier, CacheLimits>;

impl Tenant {
    pub(crate) fn config(&self) -> Arc<TenantConfig> {
        self.config.read().clone()
    }

    pub(crate) fn data(&self) -> Result<Arc<ShardData>> {
        self.shard().map(|(_, d)| d)
    }

    pub(crate) fn raft(&self) -> Option<crate::raft::ShardRaft> {
        self.slot.lock().as_ref().map(|(r, _)| r.clone())
    }

    /// Its shard's raft group and data, while the shard is open here.
    pub(crate) fn shard(&self) -> Result<(crate::raft::ShardRaft, Arc<ShardData>)> {
        self.slot
            .lock()
            .as_ref()
            .map(|(r, d)| (r.clone(), d.clone()))
            .ok_or_else(|| Error::Unavailable {
                reason: format!("shard of tenant {} is not running", self.config().tenant_id),
            })
    }

    pub(crate) fn actor(&self) -> Result<ActorRef<ShardMsg>> {
        self.route.read().clone().ok_or_else(|| Error::Unavailable {
            reason: format!("shard of tenant {} is not running", self.config().tenant_id),
        })
    }

    /// The node whose replica leads the tenant's group, as this replica
    /// sees it (`None`: no leader known, or no replica running here).
    pub(crate) fn leader_node(&self) -> Option<u64> {
        use openraft::async_runtime::WatchReceiver;
        let leader = self.raft()?.metrics().borrow_watched().current_leader?;
        self.replicas
            .read()
            .iter()
            .find(|r| r.id == leader)
            .map(|r| r.node)
    }

    /// Marks the replica active and restarts its raft ticks if it was
    /// quiesced (before a proposal that is not a tenant request).
    pub(crate) fn wake(&self) {
        self.last_active.store(
            crate::util::coarse_now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.resume_ticks();
    }

    /// Restarts the replica's raft ticks if it was quiesced (a raft
    /// message or a request for it arrived); does not mark it active.
    pub(crate) fn resume_ticks(&self) {
        use std::sync::atomic::Ordering;
        if self.quiesced.load(Ordering::Acquire) && self.quiesced.swap(false, Ordering::AcqRel) {
            if let Some(raft) = self.raft() {
                raft.runtime_config().tick(true);
            }
        }
    }

    /// The tenant's limiter on this node.
    pub(crate) fn limiter(&self) -> &Arc<TenantLimiter> {
        &self.limiter
    }

    /// Starts the next durable reservation of the request counts in the
    /// background (the limiter said it runs low).
    pub(crate) fn start_reservation(&self) {
        if let Ok(actor) = self.actor() {
            let _ = actor.cast(ShardMsg::Reserve(None));
        }
    }

    /// Reserves the next block of the request counts durably and waits
    /// for it.
    pub(crate) async fn reserve(&self, timeout: Duration) -> Result<()> {
        let actor = self.actor()?;
        session::call_shard(&actor, |tx| ShardMsg::Reserve(Some(tx)), timeout).await
    }

    /// Saves the exact request counts in place of the leader's unused
    /// reservation before the group goes idle; whether it wrote an entry
    /// (false on a follower, or when nothing changed).
    pub(crate) async fn settle_quota(&self, timeout: Duration) -> Result<bool> {
        let actor = self.actor()?;
        session::call_shard(&actor, ShardMsg::Settle, timeout).await
    }

    /// The raft group of its shard.
    pub(crate) fn group(&self) -> u64 {
        self.group
    }

    /// Takes a newer config (from the cluster's metadata): the next
    /// request sees its limits.
    pub(crate) fn sync_config(&self, config: &TenantConfig) {
        if *self.config() != *config {
            *self.config.write() = Arc::new(config.clone());
            self.limiter.update(config);
            self.cache.configure(self.cache_limits(config));
            self.cache
                .set_share(crate::limits::share(config.request_limit.priority));
        }
    }

    /// The read cache limits `config` gives this tenant (its tier's,
    /// overridden by its custom settings).
    fn cache_limits(&self, config: &TenantConfig) -> CacheLimits {
        let tier = self
            .cache_tiers
            .get(&config.tier)
            .copied()
            .unwrap_or_default();
        config.cache_limits(&tier)
    }

    /// The cluster placement of its group (empty on a single node).
    pub(crate) fn replicas(&self) -> Vec<Replica> {
        self.replicas.read().clone()
    }

    /// Takes a newer placement (from the cluster's metadata); whether it
    /// changed.
    pub(crate) fn sync_replicas(&self, replicas: &[Replica]) -> bool {
        if *self.replicas.read() == replicas {
            return false;
        }
        *self.replicas.write() = replicas.to_vec();
        true
    }

    /// When a request last arrived here (coarse ms).
    pub(crate) fn last_active(&self) -> &std::sync::atomic::AtomicU64 {
        &self.last_active
    }

    /// When this replica last accepted an AppendEntries from its
    /// group's leader (coarse ms).
    pub(crate) fn leader_heard(&self) -> &std::sync::atomic::AtomicU64 {
        &self.leader_heard
    }

    /// Whether the group's raft ticks are off here (quiesced).
    pub(crate) fn quiesced(&self) -> &std::sync::atomic::AtomicBool {
        &self.quiesced
    }
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    dir: PathBuf,
    tiers: RwLock<Tiers>,
    registry: RwLock<Option<Arc<Registry>>>,
    logs: Arc<RaftLogDb>,
    env: StorageEnv,
    pub(crate) admission: Arc<Admission>,
    tenants: RwLock<HashMap<String, Arc<Tenant>>>,
    /// Loaded tenants by raft group (peer messages name the group).
    by_group: RwLock<HashMap<u64, Arc<Tenant>>>,
    /// Loaded tenants whose shard is open here, by group: the hibernation
    /// loop looks at these only, so its cost does not grow with the
    /// tenants asleep.
    awake: RwLock<HashMap<u64, Arc<Tenant>>>,
    /// The cluster layer (None on a standalone node).
    cluster: RwLock<Option<Arc<dyn ClusterHooks>>>,
    supervisor: ActorRef<SupervisorMsg>,
    keys: keys::KeyCache,
    /// Serialises tenant lifecycle changes (create, update, delete).
    lifecycle: tokio::sync::Mutex<()>,
    /// Open tenant export cursors (`db/export.rs`).
    exports: export::Exports,
    /// The node-wide memory cap of the tenants' read caches.
    cache_budget: Arc<CacheBudget>,
    /// Each tier's read cache limits.
    cache_tiers: Arc<CacheTiers>,
    /// The free space kept on the data directory's disk.
    pub(crate) reserve: DiskReserve,
    /// A2: this node's stored request history (None once closed).
    history: RwLock<Option<Arc<analytics::HistoryStore>>>,
    /// A2: requests gathered since the last history flush.
    recorder: crate::monitor::history::Recorder,
    /// The node's live event bus (A3).
    events: Arc<crate::monitor::EventBus>,
    /// What the periodic event checks remember (`db/health.rs`).
    checks: health::CheckState,
    /// `close` has begun: no hibernated shard reopens.
    closing: std::sync::atomic::AtomicBool,
}

/// A Vektagraf node's engine, embedded in this process.
///
/// ```no_run
/// # async fn demo() -> vektagraf::proto::Result<()> {
/// use vektagraf::{Database, NodeConfig, TenantConfig};
/// let db = Database::open("./data", NodeConfig::with_data_dir("./data".as_ref())).await?;
/// let cfg = TenantConfig::for_tier(&db.tiers(), "acme", "ACME", "starter", serde_json::json!({}))?;
/// db.create_tenant(cfg).await?;
/// db.create_user("acme", "alice").await?;
/// let s = db.session("acme", "alice").await?;
/// s.create_collection(vektagraf::proto::CollectionSpec::vectors("docs", 3)).await?;
/// db.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// A [`Database`] handle that does not keep it open (background tasks
/// of the layers above hold one).
#[derive(Clone)]
pub(crate) struct WeakDatabase(std::sync::Weak<Inner>);

impl WeakDatabase {
    /// The database, while it is open somewhere.
    pub(crate) fn upgrade(&self) -> Option<Database> {
        self.0.upgrade().map(|inner| Database { inner })
    }
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::storage(e)
}

impl Database {
    /// Opens (or creates) a node's data under `dir` and starts every
    /// tenant's shard. With `cluster.enabled` the engine opens empty: the
    /// cluster layer (`node::Node`) attaches the registry and starts the
    /// replicas placed here.
    pub async fn open(dir: impl AsRef<Path>, config: NodeConfig) -> Result<Database> {
        Self::open_in(dir, config, None).await
    }

    /// [`open`](Self::open), with the shard supervisor linked under
    /// `parent` (the node's supervisor) when given.
    pub(crate) async fn open_in(
        dir: impl AsRef<Path>,
        mut config: NodeConfig,
        parent: Option<ActorCell>,
    ) -> Result<Database> {
        let dir = dir.as_ref().to_path_buf();
        config.node.data_dir = dir.clone();
        config.validate()?;
        if crate::tenant::Tier::parse(&config.multi_tenancy.default_tier).is_none() {
            return Err(Error::InvalidConfig {
                key: "multi_tenancy.default_tier".into(),
                reason: "unknown tier".into(),
            });
        }
        std::fs::create_dir_all(dir.join("shards")).map_err(io)?;
        export::remove_leftovers(&dir);
        let tiers = if config.node.tiers_file.is_empty() {
            Tiers::default()
        } else {
            Tiers::load(Path::new(&config.node.tiers_file))?
        };
        let logs = RaftLogDb::open(&dir.join("raft")).map_err(io)?;
        let s = &config.storage;
        let env = StorageEnv::new(
            s.block_cache_bytes,
            s.write_buffer_bytes,
            s.max_open_files_per_shard,
        );
        let l = &config.limits;
        let admission = Admission::new(
            l.max_in_flight,
            l.max_queued,
            Duration::from_millis(l.queue_timeout_ms),
        );
        let spawned = match parent {
            Some(parent) => Actor::spawn_linked(None, ShardSupervisor, (), parent).await,
            None => Actor::spawn(None, ShardSupervisor, ()).await,
        };
        let (supervisor, _) = spawned.map_err(|e| Error::Unavailable {
            reason: format!("supervisor failed to start: {e}"),
        })?;
        let clustered = config.cluster.enabled;
        let cache_budget = CacheBudget::new(config.cache.max_bytes);
        let cache_tiers = Arc::new(
            [
                Tier::Tier1,
                Tier::Tier2,
                Tier::Tier3,
                Tier::Tier4,
                Tier::Custom,
            ]
            .into_iter()
            .map(|t| (t, tiers.limits(t).cache))
            .collect(),
        );
        let history = Arc::new(analytics::HistoryStore::open(&dir.join("analytics"))?);
        let registry = if clustered {
            None
        } else {
            Some(Arc::new(Registry::open(&dir.join("node"))?))
        };
        let reserve = DiskReserve::new(
            &dir,
            config.storage.min_free_bytes,
            if clustered { config.cluster.node_id } else { 0 },
        );
        let events = Arc::new(crate::monitor::EventBus::new(
            if clustered { config.cluster.node_id } else { 0 },
            &config.events,
        ));
        let db = Database {
            inner: Arc::new(Inner {
                events,
                checks: health::CheckState::default(),
                reserve,
                config,
                dir,
                tiers: RwLock::new(tiers),
                registry: RwLock::new(registry),
                logs,
                env,
                admission,
                tenants: RwLock::new(HashMap::new()),
                by_group: RwLock::new(HashMap::new()),
                awake: RwLock::new(HashMap::new()),
                cluster: RwLock::new(None),
                supervisor,
                keys: keys::KeyCache::default(),
                lifecycle: tokio::sync::Mutex::new(()),
                exports: export::Exports::default(),
                cache_budget,
                cache_tiers,
                history: RwLock::new(Some(history)),
                recorder: Default::default(),
                closing: Default::default(),
            }),
        };
        db.start_retention();
        db.start_audit_loops();
        db.start_history();
        db.start_event_checks();
        db.start_hibernation();
        if clustered {
            // The registry is the metadata group's: the cluster layer
            // attaches it, and starts shards as placement assigns them.
            tracing::info!(dir = %db.inner.dir.display(), node = db.inner.config.cluster.node_id, "cluster node engine open");
            return Ok(db);
        }
        db.load_keys()?;
        for rec in db.registry()?.tenants()? {
            match rec.state {
                TenantState::Active => db.load_tenant(&rec, true).await?,
                TenantState::Deleting => {
                    db.forget_keys_of(&rec.config.tenant_id).await?;
                    db.purge(&rec).await?
                }
            }
        }
        tracing::info!(dir = %db.inner.dir.display(), tenants = db.inner.tenants.read().len(), "database open");
        Ok(db)
    }

    /// Closes every shard gracefully: checkpoints counters, stops raft groups, flushes.
    pub async fn close(&self) -> Result<()> {
        let cluster = self.inner.cluster.read().clone();
        if let Some(c) = &cluster {
            c.stop_background();
        }
        let _g = self.inner.lifecycle.lock().await;
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let mut first_err = None;
        // What the history gathered since its last flush is kept.
        if let Err(e) = self.flush_history(crate::util::now_ms()) {
            tracing::warn!(error = %e, "analytics history not flushed at close");
        }
        let ids: Vec<String> = self.inner.tenants.read().keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.stop_shard(&id).await {
                first_err.get_or_insert(e);
            }
        }
        // Cached results go with their tenants, even while sessions still
        // hold them.
        let gone: Vec<Arc<Tenant>> = self.inner.tenants.write().drain().map(|(_, t)| t).collect();
        for t in gone {
            t.cache.clear();
        }
        self.inner.by_group.write().clear();
        self.inner.awake.write().clear();
        if let Some(c) = cluster {
            c.shutdown().await;
        }
        self.inner.cluster.write().take();
        self.inner.supervisor.stop(None);
        // Release the node's RocksDB instances so the directory can be
        // opened again (even by this process).
        self.inner.logs.close();
        self.inner.registry.write().take();
        self.inner.history.write().take();
        tracing::info!(dir = %self.inner.dir.display(), "database closed");
        first_err.map_or(Ok(()), Err)
    }

    /// Attaches the cluster layer: the registry becomes the metadata
    /// group's (`meta`), and tenant lifecycle goes through `hooks`.
    pub(crate) fn attach_cluster(&self, hooks: Arc<dyn ClusterHooks>, meta: Arc<dyn MetaGroup>) {
        *self.inner.registry.write() = Some(Arc::new(Registry::replicated(meta)));
        *self.inner.cluster.write() = Some(hooks);
    }

    /// The node's live event bus (A3): the periodic checks, the request
    /// path and move jobs raise events there; the server streams them to
    /// subscribers.
    pub fn events(&self) -> &Arc<crate::monitor::EventBus> {
        &self.inner.events
    }

    /// Whether this node runs as part of a cluster (its cluster layer is
    /// attached).
    pub fn is_clustered(&self) -> bool {
        self.inner.cluster.read().is_some()
    }

    fn hooks(&self) -> Option<Arc<dyn ClusterHooks>> {
        self.inner.cluster.read().clone()
    }

    /// A handle that does not keep the database open.
    pub(crate) fn downgrade(&self) -> WeakDatabase {
        WeakDatabase(Arc::downgrade(&self.inner))
    }

    /// The storage environment shared by every shard instance.
    pub(crate) fn storage_env(&self) -> &StorageEnv {
        &self.inner.env
    }

    /// Whether this node's storage failed (a full disk, an I/O error):
    /// the shared raft log refuses writes, or a tenant replica's raft
    /// core stopped on a storage error (its state machine could not
    /// apply). Either way those groups have stopped until the node
    /// restarts.
    pub fn storage_failed(&self) -> bool {
        // Only open shards run a raft core; walking every loaded tenant
        // (cloning 10,000 handles four times a second) was most of an idle
        // node's CPU.
        self.inner.logs.failed()
            || self
                .awake_tenants()
                .iter()
                .any(|t| t.raft().is_some_and(|r| crate::raft::storage_fatal(&r)))
    }

    /// The node's raft log store (every group's log).
    pub(crate) fn raft_logs(&self) -> &Arc<RaftLogDb> {
        &self.inner.logs
    }

    /// Serialises tenant lifecycle changes (create, update, delete, and
    /// the cluster's node removal).
    pub(crate) async fn lock_lifecycle(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.lifecycle.lock().await
    }

    /// The loaded tenant `id`, if its replica runs here.
    pub(crate) fn loaded(&self, id: &str) -> Option<Arc<Tenant>> {
        self.inner.tenants.read().get(id).cloned()
    }

    /// Every loaded tenant.
    pub(crate) fn loaded_tenants(&self) -> Vec<Arc<Tenant>> {
        self.inner.tenants.read().values().cloned().collect()
    }

    /// Ids of the loaded tenants.
    pub(crate) fn loaded_ids(&self) -> Vec<String> {
        self.inner.tenants.read().keys().cloned().collect()
    }

    /// The loaded tenant whose shard is raft group `group`.
    pub(crate) fn loaded_group(&self, group: u64) -> Option<Arc<Tenant>> {
        self.inner.by_group.read().get(&group).cloned()
    }

    pub(crate) fn registry(&self) -> Result<Arc<Registry>> {
        self.inner
            .registry
            .read()
            .clone()
            .ok_or_else(|| Error::Unavailable {
                reason: "database is closed".into(),
            })
    }

    /// The node's admission load: (operations in flight, requests
    /// waiting for a slot).
    pub fn admission_load(&self) -> (usize, usize) {
        self.inner.admission.load()
    }

    /// The node config.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The tier presets.
    pub fn tiers(&self) -> Tiers {
        self.inner.tiers.read().clone()
    }

    /// Stops a tenant's shard actor (its raft group shuts down).
    pub(crate) async fn stop_shard(&self, tenant: &str) -> Result<()> {
        let r = self
            .inner
            .supervisor
            .call(
                |tx| SupervisorMsg::Stop(tenant.to_string(), tx),
                Some(Duration::from_secs(120)),
            )
            .await;
        match r {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err(Error::Unavailable {
                reason: "supervisor did not answer".into(),
            }),
        }
    }

    /// Where raft group `group` keeps its data on this node.
    pub(crate) fn shard_dir(&self, group: u64) -> PathBuf {
        self.inner.dir.join("shards").join(group.to_string())
    }

    /// Starts this node's (one-voter) replica of a standalone tenant;
    /// `lazy`: only loads it (asleep) when hibernation is on, its shard
    /// opens on first use.
    async fn load_tenant(&self, rec: &TenantRecord, lazy: bool) -> Result<()> {
        self.open_replica_as(rec, rec.replica, None, lazy).await
    }

    /// Loads the tenant with this node's replica `replica` of `rec`'s
    /// shard group; `net`: how it reaches the rest of a replicated group
    /// (None: a one-voter group). With hibernation on, the replica loads
    /// asleep: its shard opens on the first request or raft message for
    /// it (so a node with many tenants starts fast, and a new tenant
    /// costs no election until it is used).
    pub(crate) async fn open_replica(
        &self,
        rec: &TenantRecord,
        replica: u64,
        net: Option<ReplicaNet>,
    ) -> Result<()> {
        self.open_replica_as(rec, replica, net, true).await
    }

    async fn open_replica_as(
        &self,
        rec: &TenantRecord,
        replica: u64,
        net: Option<ReplicaNet>,
        lazy: bool,
    ) -> Result<()> {
        let limiter = TenantLimiter::new(&rec.config, QuotaCounters::default());
        let tier_cache = self
            .inner
            .cache_tiers
            .get(&rec.config.tier)
            .copied()
            .unwrap_or_default();
        let cache = ReadCache::new(
            rec.config.cache_limits(&tier_cache),
            self.inner.cache_budget.clone(),
        );
        cache.set_share(crate::limits::share(rec.config.request_limit.priority));
        let slot: crate::shard::ShardSlot = Arc::new(Mutex::new(None));
        let route = Arc::new(RwLock::new(None));
        let args = ShardArgs {
            tenant_id: rec.config.tenant_id.clone(),
            group: rec.group,
            replica,
            dir: self.shard_dir(rec.group),
            env: self.inner.env.clone(),
            logs: self.inner.logs.clone(),
            settings: self.inner.config.raft.clone(),
            limiter: limiter.clone(),
            storage_limits: rec.config.storage_limit.clone(),
            quota_checkpoint: Duration::from_millis(self.inner.config.limits.quota_checkpoint_ms),
            slot: slot.clone(),
            route: route.clone(),
            cluster: net,
            cache: Arc::downgrade(&cache),
        };
        // With hibernation on, a shard opens on its first use.
        let lazy = lazy && self.hibernation_on();
        let tenant = Arc::new(Tenant {
            config: RwLock::new(Arc::new(rec.config.clone())),
            group: rec.group,
            limiter,
            route,
            slot,
            replicas: RwLock::new(rec.replicas.clone()),
            last_active: std::sync::atomic::AtomicU64::new(crate::util::coarse_now_ms()),
            leader_heard: std::sync::atomic::AtomicU64::new(crate::util::coarse_now_ms()),
            quiesced: std::sync::atomic::AtomicBool::new(false),
            // A tenant loaded asleep is not reopened at start for its
            // cleanup: the first is one interval on.
            retention_ran: std::sync::atomic::AtomicU64::new(if lazy {
                crate::util::now_ms()
            } else {
                0
            }),
            auto_scaled_at: std::sync::atomic::AtomicU64::new(0),
            cache,
            cache_tiers: self.inner.cache_tiers.clone(),
            life: Arc::new(tokio::sync::RwLock::new(if lazy {
                hibernate::Life::Asleep
            } else {
                hibernate::Life::Awake
            })),
            asleep: std::sync::atomic::AtomicBool::new(lazy),
            args,
            rested: Mutex::new(None),
        });
        if lazy {
            // Nothing opened: a load racing this one (the reconcile loop
            // and a request's route) keeps whichever came first.
            let mut tenants = self.inner.tenants.write();
            if !tenants.contains_key(&rec.config.tenant_id) {
                self.inner
                    .by_group
                    .write()
                    .insert(rec.group, tenant.clone());
                tenants.insert(rec.config.tenant_id.clone(), tenant);
            }
            return Ok(());
        }
        self.start_shard(&tenant).await?;
        self.inner.awake.write().insert(rec.group, tenant.clone());
        self.inner
            .by_group
            .write()
            .insert(rec.group, tenant.clone());
        self.inner
            .tenants
            .write()
            .insert(rec.config.tenant_id.clone(), tenant);
        Ok(())
    }

    /// Opens a loaded tenant's shard (its actor, raft group and data),
    /// with the storage limits its config has now.
    async fn start_shard(&self, t: &Tenant) -> Result<()> {
        let mut args = t.args.clone();
        args.storage_limits = t.config().storage_limit.clone();
        let started = self
            .inner
            .supervisor
            .call(
                |tx| SupervisorMsg::Start(Box::new(args), tx),
                Some(Duration::from_secs(600)),
            )
            .await;
        match started {
            Ok(ractor::rpc::CallResult::Success(r)) => r.map(drop),
            _ => Err(Error::Unavailable {
                reason: "supervisor did not answer".into(),
            }),
        }
    }

    /// Forgets a loaded tenant (its shard is stopped separately).
    pub(crate) fn unload(&self, id: &str) -> Option<Arc<Tenant>> {
        let t = self.inner.tenants.write().remove(id)?;
        self.inner.by_group.write().remove(&t.group);
        self.inner.awake.write().remove(&t.group);
        // Its cached results go now (sessions may still hold the tenant).
        t.cache.clear();
        Some(t)
    }

    /// Removes every byte of a tenant: shard directory, raft log, registry.
    async fn purge(&self, rec: &TenantRecord) -> Result<()> {
        self.purge_local(rec.group).await?;
        self.registry()?
            .remove_tenant(&rec.config.tenant_id, &[])
            .await?;
        tracing::info!(tenant = %rec.config.tenant_id, group = rec.group, "tenant purged");
        Ok(())
    }

    /// Removes this node's copy of a shard group: directory and raft log.
    pub(crate) async fn purge_local(&self, group: u64) -> Result<()> {
        let dir = self.shard_dir(group);
        // A closing RocksDB instance may still be finishing a background
        // flush into the directory: retry for a while.
        let mut attempt = 0;
        while dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt < 100 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying shard directory removal");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(io(e)),
            }
        }
        self.inner.logs.purge_group(group).await.map_err(io)?;
        Ok(())
    }

    pub(crate) fn tenant(&self, id: &str) -> Result<Arc<Tenant>> {
        self.inner
            .tenants
            .read()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::TenantNotFound {
                tenant_id: id.to_string(),
            })
    }

    /// The active registry record of tenant `id`.
    pub(crate) fn record(&self, id: &str) -> Result<TenantRecord> {
        self.registry()?
            .tenant(id)?
            .filter(|r| r.state == TenantState::Active)
            .ok_or_else(|| Error::TenantNotFound {
                tenant_id: id.to_string(),
            })
    }

    // ----- tenant lifecycle (T4) -----

    /// Creates a tenant and starts its shard.
    pub async fn create_tenant(&self, config: TenantConfig) -> Result<TenantConfig> {
        self.create_tenant_as(config, &ChangedBy::Embedded).await
    }

    /// [`create_tenant`](Self::create_tenant) by `actor` (audited).
    pub async fn create_tenant_as(
        &self,
        mut config: TenantConfig,
        actor: &ChangedBy,
    ) -> Result<TenantConfig> {
        config.validate()?;
        if config.created_at == 0 {
            config.created_at = crate::util::now_ms();
        }
        let _g = self.inner.lifecycle.lock().await;
        if self.registry()?.tenant(&config.tenant_id)?.is_some() {
            return Err(Error::TenantExists {
                tenant_id: config.tenant_id,
            });
        }
        let group = self.registry()?.take_id("group").await?;
        if let Some(c) = self.hooks() {
            let mut rec = TenantRecord::new(config.clone(), group, 0);
            rec.replicas = c.place(self, group).await?;
            let created = audit::lifecycle(&config, true, actor, crate::util::now_ms());
            self.registry()?
                .put_tenant_audited(&rec, &[created])
                .await?;
            drop(_g);
            c.wait_served(self, &rec).await;
            tracing::info!(tenant = %config.tenant_id, tier = %config.tier, group, replicas = ?rec.replicas, "tenant created");
            return Ok(config);
        }
        let replica = self.registry()?.take_id("replica").await?;
        let rec = TenantRecord::new(config.clone(), group, replica);
        let created = audit::lifecycle(&config, true, actor, crate::util::now_ms());
        self.registry()?
            .put_tenant_audited(&rec, &[created])
            .await?;
        // With hibernation on it loads asleep: its shard is created on
        // first use, and creating it costs its registry writes only.
        if let Err(e) = self.load_tenant(&rec, true).await {
            // Leave nothing half-created behind.
            let _ = self.stop_shard(&config.tenant_id).await;
            let _ = self.purge(&rec).await;
            return Err(e);
        }
        tracing::info!(tenant = %config.tenant_id, tier = %config.tier, group, "tenant created");
        Ok(config)
    }

    /// A tenant's config.
    pub async fn get_tenant(&self, id: &str) -> Result<TenantConfig> {
        validate_tenant_id(id)?;
        if self.is_clustered() {
            return Ok(self.record(id)?.config);
        }
        Ok((*self.tenant(id)?.config()).clone())
    }

    /// Every tenant's config, by id.
    pub async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
        if self.is_clustered() {
            let mut v: Vec<TenantConfig> = self
                .registry()?
                .tenants()?
                .into_iter()
                .filter(|r| r.state == TenantState::Active)
                .map(|r| r.config)
                .collect();
            v.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
            return Ok(v);
        }
        let mut v: Vec<TenantConfig> = self
            .inner
            .tenants
            .read()
            .values()
            .map(|t| (*t.config()).clone())
            .collect();
        v.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(v)
    }

    /// Changes a tenant's config. The next request sees the new limits;
    /// storage limits take effect through the shard's log. Audited as a
    /// change by the embedded API.
    pub async fn update_tenant(&self, id: &str, update: TenantUpdate) -> Result<TenantConfig> {
        self.update_tenant_as(id, update, &ChangedBy::Embedded)
            .await
    }

    /// [`update_tenant`](Self::update_tenant) by `actor`: every field the
    /// update changes goes into the audit log (A5) in the same commit,
    /// with the update's reason.
    pub async fn update_tenant_as(
        &self,
        id: &str,
        update: TenantUpdate,
        actor: &ChangedBy,
    ) -> Result<TenantConfig> {
        validate_tenant_id(id)?;
        let reason = update.reason.clone().unwrap_or_default();
        let _g = self.inner.lifecycle.lock().await;
        self.update_tenant_locked(id, update, actor, &reason).await
    }

    /// The body of [`update_tenant_as`](Self::update_tenant_as), for a
    /// caller holding the lifecycle lock; `reason` goes into the audit
    /// entries.
    async fn update_tenant_locked(
        &self,
        id: &str,
        update: TenantUpdate,
        actor: &ChangedBy,
        reason: &str,
    ) -> Result<TenantConfig> {
        if reason.len() > audit::MAX_REASON_LEN {
            return Err(Error::InvalidConfig {
                key: "reason".into(),
                reason: format!("longer than {} bytes", audit::MAX_REASON_LEN),
            });
        }
        let at = crate::util::now_ms();
        if self.is_clustered() {
            // Every node's reconcile loop brings its replica's config up
            // to the record; the shard leader sets the storage limits.
            let mut rec = self.record(id)?;
            let new = update.apply(&self.tiers(), &rec.config)?;
            let entries = audit::diff(&rec.config, &new, actor, reason, at);
            rec.config = new.clone();
            self.registry()?.put_tenant_audited(&rec, &entries).await?;
            tracing::info!(tenant = %id, enabled = new.enabled, %actor, changed = entries.len(), "tenant updated");
            return Ok(new);
        }
        let tenant = self.tenant(id)?;
        let mut rec = self.record(id)?;
        let new = update.apply(&self.tiers(), &rec.config)?;
        let storage_changed = new.storage_limit != rec.config.storage_limit;
        let entries = audit::diff(&rec.config, &new, actor, reason, at);
        rec.config = new.clone();
        self.registry()?.put_tenant_audited(&rec, &entries).await?;
        *tenant.config.write() = Arc::new(new.clone());
        tenant.limiter.update(&new);
        tenant.cache.configure(tenant.cache_limits(&new));
        tenant
            .cache
            .set_share(crate::limits::share(new.request_limit.priority));
        if storage_changed {
            let _awake = self.awake(&tenant).await?;
            let cmd = crate::storage::Command::SetLimits(new.storage_limit.clone());
            session::call_write(&tenant, cmd, self.request_timeout()).await?;
        }
        tracing::info!(tenant = %id, enabled = new.enabled, %actor, changed = entries.len(), "tenant updated");
        Ok(new)
    }

    /// Disables a tenant: every operation is refused until it is enabled.
    pub async fn disable_tenant(&self, id: &str) -> Result<TenantConfig> {
        self.update_tenant(
            id,
            TenantUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
    }

    /// Enables a disabled tenant.
    pub async fn enable_tenant(&self, id: &str) -> Result<TenantConfig> {
        self.update_tenant(
            id,
            TenantUpdate {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
    }

    /// Deletes a tenant and purges every byte of its data.
    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        self.delete_tenant_as(id, &ChangedBy::Embedded).await
    }

    /// [`delete_tenant`](Self::delete_tenant) by `actor` (audited; the
    /// audit log keeps the tenant's entries until their retention ends).
    pub async fn delete_tenant_as(&self, id: &str, actor: &ChangedBy) -> Result<()> {
        validate_tenant_id(id)?;
        let _g = self.inner.lifecycle.lock().await;
        let mut rec = self.record(id)?;
        let deleted = audit::lifecycle(&rec.config, false, actor, crate::util::now_ms());
        if self.is_clustered() {
            // Each node's reconcile loop purges its replica once the
            // record is gone.
            self.forget_keys_of(id).await?;
            self.registry()?.remove_tenant(id, &[deleted]).await?;
            tracing::info!(tenant = %id, group = rec.group, %actor, "tenant deleted");
            return Ok(());
        }
        rec.state = TenantState::Deleting;
        self.registry()?
            .put_tenant_audited(&rec, &[deleted])
            .await?;
        // In-flight requests finish first; later ones find it gone.
        let _shut = match self.loaded(id) {
            Some(t) => Some(self.shut(&t).await),
            None => None,
        };
        self.unload(id);
        self.stop_shard(id).await?;
        self.forget_keys_of(id).await?;
        self.purge(&rec).await
    }

    // ----- users (X2) -----

    /// Adds a user to a tenant.
    pub async fn create_user(&self, tenant: &str, user: &str) -> Result<()> {
        validate_name("user_id", user, 128)?;
        self.record(tenant)?;
        if self.registry()?.user(tenant, user)?.is_some() {
            return Err(Error::AlreadyExists {
                kind: "user".into(),
                id: user.to_string(),
            });
        }
        self.registry()?
            .put_user(&UserRecord::new(tenant, user))
            .await
    }

    /// Removes a user from a tenant.
    pub async fn remove_user(&self, tenant: &str, user: &str) -> Result<()> {
        if self.registry()?.user(tenant, user)?.is_none() {
            return Err(Error::not_found("user", user));
        }
        self.revoke_keys_of(tenant, Some(user)).await?;
        self.registry()?.remove_user(tenant, user).await
    }

    /// Users of a tenant.
    pub async fn list_users(&self, tenant: &str) -> Result<Vec<String>> {
        self.record(tenant)?;
        Ok(self
            .registry()?
            .users(tenant)?
            .into_iter()
            .map(|u| u.user_id)
            .collect())
    }

    // ----- sessions (X1) -----

    /// Whether `user` of `tenant` exists (on a cluster node, from its
    /// cache of checked users while group 0 is unchanged).
    fn user_exists(&self, tenant: &str, user: &str) -> Result<bool> {
        let reg = self.registry()?;
        match self.hooks() {
            Some(c) => c.user_exists(&reg, tenant, user),
            None => Ok(reg.user(tenant, user)?.is_some()),
        }
    }

    /// A session of `user` in `tenant`. Every operation of the session runs
    /// in that tenant; with `strict_isolation` the user must belong to it.
    pub async fn session(&self, tenant: &str, user: &str) -> Result<Session> {
        let mt = &self.inner.config.multi_tenancy;
        let tenant_id = if mt.enabled { tenant } else { DEFAULT_TENANT };
        if tenant_id.is_empty() {
            return Err(Error::MissingTenantContext);
        }
        validate_tenant_id(tenant_id)?;
        let t = match self.tenant(tenant_id) {
            Ok(t) => t,
            Err(Error::TenantNotFound { .. }) if mt.auto_create_tenants || !mt.enabled => {
                let cfg = TenantConfig::for_tier(
                    &self.tiers(),
                    tenant_id,
                    tenant_id,
                    &mt.default_tier,
                    serde_json::json!({}),
                )?;
                match self.create_tenant(cfg).await {
                    Ok(_) | Err(Error::TenantExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.tenant(tenant_id)?
            }
            Err(e) => return Err(e),
        };
        if mt.enabled && mt.strict_isolation && !self.user_exists(tenant_id, user)? {
            return Err(Error::UnauthorizedTenantAccess {
                user_id: user.to_string(),
                tenant_id: tenant_id.to_string(),
            });
        }
        Ok(Session::new(self.inner.clone(), t, user.to_string()))
    }

    // ----- usage (A1) -----

    /// A tenant's usage: storage, requests, warnings.
    pub async fn usage(&self, tenant: &str) -> Result<TenantUsage> {
        validate_tenant_id(tenant)?;
        let t = self.tenant(tenant)?;
        // A hibernated tenant answers from what it had when it closed.
        let _awake = match t.rested_usage() {
            Some(_) if t.is_asleep() => None,
            _ => Some(self.awake(&t).await?),
        };
        if t.limiter.taking_over() {
            // A new leader answers from the counts it takes over (its
            // first reservation merges what earlier leaders persisted),
            // never from its own copy, which lags.
            t.reserve(self.request_timeout()).await?;
        }
        usage_of(&t)
    }

    /// Every tenant's usage.
    pub async fn all_usage(&self) -> Result<Vec<TenantUsage>> {
        let mut ids = self.loaded_ids();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.usage(&id).await?);
        }
        Ok(out)
    }

    /// Every tenant's usage on a standalone node (`tenant usage --all`),
    /// by tenant id; a tenant whose shard does not answer is listed as
    /// unavailable.
    pub async fn usage_report(&self) -> Result<crate::proto::UsageReport> {
        let mut report = crate::proto::UsageReport::default();
        for cfg in self.list_tenants().await? {
            match self.usage(&cfg.tenant_id).await {
                Ok(u) => report.tenants.push(u),
                Err(e) => report.unavailable.push((cfg.tenant_id, e)),
            }
        }
        Ok(report)
    }

    /// A tenant's read cache on this node: hits, misses, entries and
    /// bytes (pending expiries are run first, so the counts are current).
    /// The metrics exporter reads it.
    pub fn cache_usage(&self, tenant: &str) -> Result<CacheUsage> {
        let t = self.tenant(tenant)?;
        t.cache.run_pending_tasks();
        Ok(t.cache.stats())
    }

    /// Bytes the tenants' read caches hold on this node, and the cap
    /// (`cache.max_bytes`).
    pub fn cache_memory(&self) -> (u64, u64) {
        let b = &self.inner.cache_budget;
        (b.used(), b.max_bytes())
    }

    /// R3: would `op` be admitted for `tenant` now? Consumes nothing.
    pub fn can_perform_operation(&self, tenant: &str, op: OperationType) -> Result<()> {
        self.tenant(tenant)?
            .limiter
            .can_perform(op, crate::util::coarse_now_ms())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.limits.request_timeout_ms)
    }

    // ----- diagnostics -----

    /// The raft group id of a tenant's shard.
    pub fn tenant_group(&self, tenant: &str) -> Result<u64> {
        Ok(self.tenant(tenant)?.group)
    }

    /// What is left on this node of a tenant that had raft group `group`:
    /// (registry keys mentioning it, raft log keys of the group, shard dir exists).
    pub fn footprint(&self, tenant: &str, group: u64) -> Result<(usize, usize, bool)> {
        Ok((
            self.registry()?.keys_mentioning(tenant)?,
            self.inner.logs.group_key_count(group).map_err(io)?,
            self.shard_dir(group).exists(),
        ))
    }

    /// Times the tenant's shard was restarted by its supervisor.
    pub async fn shard_restarts(&self, tenant: &str) -> Result<usize> {
        match self
            .inner
            .supervisor
            .call(
                |tx| SupervisorMsg::Restarts(tenant.to_string(), tx),
                Some(Duration::from_secs(120)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(n)) => Ok(n),
            _ => Err(Error::Unavailable {
                reason: "supervisor did not answer".into(),
            }),
        }
    }

    /// The running shard data of a tenant (benchmarks and diagnostics).
    #[doc(hidden)]
    pub fn shard_data(&self, tenant: &str) -> Result<Arc<ShardData>> {
        self.tenant(tenant)?.data()
    }

    /// Fault injection for tests: makes the tenant's shard actor fail as a
    /// bug would. The supervisor restarts it from disk.
    #[doc(hidden)]
    pub fn inject_shard_failure(&self, tenant: &str) -> Result<()> {
        self.tenant(tenant)?
            .actor()?
            .cast(ShardMsg::Fail)
            .map_err(|e| Error::Unavailable {
                reason: e.to_string(),
            })
    }
}

pub(crate) fn usage_of(t: &Tenant) -> Result<TenantUsage> {
    let cfg = t.config();
    let now = crate::util::now_ms();
    let storage = match t.data() {
        Ok(d) => d.usage(),
        Err(e) => t.rested_usage().ok_or(e)?,
    };
    let requests = t.limiter.request_usage(now);
    let mut warnings = Vec::new();
    let s = &cfg.storage_limit;
    for (kind, used, limit) in [
        (LimitKind::StorageBytes, storage.bytes, s.max_storage_bytes),
        (LimitKind::Objects, storage.objects, s.max_objects),
        (LimitKind::Vectors, storage.vectors, s.max_vectors),
    ] {
        if limit > 0 && used as f64 >= limit as f64 * s.warning_threshold {
            warnings.push(format!(
                "{} at {:.0}% ({used}/{limit})",
                kind.config_key(),
                used as f64 * 100.0 / limit as f64
            ));
        }
    }
    let q = &cfg.request_limit;
    let limits = [
        (LimitKind::StorageBytes, storage.bytes, s.max_storage_bytes),
        (LimitKind::Objects, storage.objects, s.max_objects),
        (LimitKind::Vectors, storage.vectors, s.max_vectors),
        (LimitKind::Daily, requests.daily, q.daily_limit),
        (LimitKind::Monthly, requests.monthly, q.monthly_limit),
    ]
    .into_iter()
    .map(|(kind, used, max)| crate::proto::LimitUse {
        limit: kind.config_key(),
        used,
        max,
        ratio: if max == 0 {
            0.0
        } else {
            used as f64 / max as f64
        },
    })
    .collect();
    for (kind, used, limit) in [
        (LimitKind::Daily, requests.daily, q.daily_limit),
        (LimitKind::Monthly, requests.monthly, q.monthly_limit),
    ] {
        if limit > 0 && used as f64 >= limit as f64 * s.warning_threshold {
            warnings.push(format!(
                "{} at {:.0}% ({used}/{limit})",
                kind.config_key(),
                used as f64 * 100.0 / limit as f64
            ));
        }
    }
    Ok(TenantUsage {
        tenant_id: cfg.tenant_id.clone(),
        storage,
        requests,
        in_flight: t.limiter.in_flight(),
        warnings,
        limits,
        cache: {
            // Pending expiries first, so the entry count is current.
            t.cache.run_pending_tasks();
            t.cache.stats()
        },
    })
}

impl From<crate::config::ConfigError> for Error {
    fn from(e: crate::config::ConfigError) -> Self {
        Error::InvalidConfig {
            key: e.key,
            reason: e.reason,
        }
    }
}
