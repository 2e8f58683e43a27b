//! The cluster: the metadata group (group 0), membership, placement of
//! tenant shard groups, the reconcile loop that makes each node's running
//! replicas match the metadata, quiescence, and the peer service.
//!
//! It sits above the engine ([`Database`]): it drives the engine through
//! its small crate API (open and close replicas, loaded tenants and their
//! raft handles) and attaches itself as the engine's [`ClusterHooks`]
//! and [`MetaGroup`]. Routing of client requests lives in the router,
//! which serves forwarded requests through [`Forwarded`].
//!
//! - **Group 0** (`meta`) is a raft group like any shard's (same log
//!   store, same state machine type). Its state is the registry: nodes,
//!   tenants with their placement, users, key hashes and counters
//!   ([`Command::Registry`](crate::storage::Command::Registry)). Every
//!   node follows it (voters up to `cluster.meta_voters`, the rest
//!   learners) and reads the registry from its local copy.
//! - **Membership** (`membership`): joins, node removal, and bringing a
//!   group's voters to the record.
//! - **Placement** (`placement`): a new tenant's group gets
//!   `replication_factor` replicas on the live nodes holding the fewest
//!   replicas. Replica ids come from a counter in group 0, so they are
//!   never reused.
//! - **Reconcile** (`reconcile`, every node, every [`TICK`]): peer
//!   addresses from the node records; start replicas placed here; stop
//!   and purge replicas no longer placed here, a voter only once its
//!   group has committed a membership without it (it keeps voting until
//!   then); config changes; a node the registry marks removed stops
//!   serving clients. On
//!   leaders: bring group memberships (group 0's and each shard's) and
//!   storage limits up to the records.
//! - **Quiescence** (`quiesce`): idle groups stop their raft ticks; the
//!   liveness probe wakes the groups of a node that stops answering.
//! - **Peer service** (`service`): raft messages, snapshot install,
//!   registry proposals, joins, and forwarded requests (to the router),
//!   each checked first against what the sending node may do (`peers`:
//!   unknown and removed nodes, incarnations, replica hosts).
//! - **Incarnation** (`incarnation`): the random id of the node's data
//!   directory, recorded at join and presented to every peer.

pub mod incarnation;
mod membership;
mod meta;
mod peers;
mod placement;
mod quiesce;
mod reconcile;
mod service;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use parking_lot::Mutex;

use crate::db::{ClusterHooks, Database, MetaGroup, NodeRecord, Registry, Replica, TenantRecord};
use crate::net::peer::PeerNet;
use crate::net::tls;
use crate::proto::wire::{Request, Response};
use crate::proto::{Error, Result};
use crate::raft::{self, ShardRaft};
use crate::shard::ShardData;
use crate::storage::RegOp;

pub use meta::ADMIN_KEY;
pub use quiesce::QUIESCE_AFTER;

/// Reconcile period.
pub const TICK: Duration = Duration::from_millis(250);
/// Liveness probe period between nodes.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A node unanswered this long counts as down: quiesced groups it led
/// wake up and elect a new leader.
const DOWN_AFTER: Duration = Duration::from_millis(2000);
/// Longest wait for a leader before a request gets `Unavailable`.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Deadline of a forwarded request.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most forwarding hops of one request.
pub const MAX_HOPS: u8 = 2;
/// Users a node remembers having checked (see `Cluster::known_users`).
const KNOWN_USERS: u64 = 10_000;

/// Serves the client requests other nodes forward to this one. The
/// router implements it; the peer service calls it.
pub trait Forwarded: Send + Sync {
    /// A tenant's data request (`hops` so far), made with the API key
    /// `key_id` (to check again here).
    #[allow(clippy::too_many_arguments)]
    fn tenant(
        &self,
        db: Database,
        cluster: Arc<Cluster>,
        key_id: String,
        tenant: String,
        user: String,
        req: Request,
        hops: u8,
    ) -> BoxFuture<'static, Result<Response>>;
    /// An admin request (`hops` so far; its key was checked again by
    /// the peer service).
    fn admin(
        &self,
        db: Database,
        cluster: Arc<Cluster>,
        key_id: Option<String>,
        req: Request,
        hops: u8,
    ) -> BoxFuture<'static, Result<Response>>;
    /// Node `from` asks for a grant from `tenant`'s request budget (this
    /// node should lead its shard): `want` requests of `op`, after
    /// charging `debt`. Returns the number granted.
    fn grant(
        &self,
        db: Database,
        from: u64,
        tenant: String,
        op: crate::proto::OperationType,
        want: u64,
        debt: u64,
    ) -> BoxFuture<'static, Result<u64>>;
}

/// The cluster runtime of a node.
pub struct Cluster {
    me: NodeRecord,
    settings: crate::config::ClusterSettings,
    /// The peer transport.
    pub net: Arc<PeerNet>,
    meta: ShardRaft,
    meta_data: Arc<ShardData>,
    /// Membership changes in flight, by group.
    busy: Arc<Mutex<HashSet<u64>>>,
    /// One reconcile pass at a time (the loop, and tenant creation).
    reconciling: tokio::sync::Mutex<()>,
    /// Replicas per node as of the last reconcile pass, plus those placed
    /// here since (placement reads it instead of every tenant record).
    load: Mutex<Option<std::collections::HashMap<u64, usize>>>,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Nodes the liveness probe finds unreachable.
    down: parking_lot::RwLock<HashSet<u64>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Users (tenant, user) found in the registry, each with the group-0
    /// applied index it was checked at: any metadata change (a user
    /// removed, a tenant deleted) makes the entry stale.
    known_users: moka::sync::Cache<(String, String), u64>,
    /// Client addresses of the nodes (from the registry), for the leader
    /// hints the router gives drivers. Unspecified addresses are left out.
    client_addrs: parking_lot::RwLock<std::collections::HashMap<u64, SocketAddr>>,
    /// This node's view of the node records, for the peer checks (see
    /// `peers`).
    peers: parking_lot::RwLock<std::collections::HashMap<u64, NodeRecord>>,
    /// When this node last asked its peers for the node records (see
    /// `Cluster::relearn_peers`).
    relearned: Mutex<Option<std::time::Instant>>,
    /// Word from group 0's leader (see [`Cluster::check_fresh`]).
    meta_heard: Mutex<MetaHeard>,
    /// The registry marks this node removed: it serves no clients.
    removed: std::sync::atomic::AtomicBool,
    /// Replicas no longer placed here that still wait for their group to
    /// commit a membership without them, with when the wait began
    /// (at most one per loaded tenant).
    leaving: Mutex<std::collections::HashMap<String, Instant>>,
    /// Tenants every reconcile pass looks at again, even between group-0
    /// changes: replicas placed here that failed to start, and sleeping
    /// replicas no longer placed here that are reopened to leave (at most
    /// one per tenant record; a full pass keeps only those placed here).
    unstarted: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

/// What a follower of group 0 last heard from its leader.
#[derive(Debug, Default)]
struct MetaHeard {
    /// The last AppendEntries (heartbeats included) accepted from the
    /// leader: when, and the commit index it carried.
    latest: Option<(Instant, u64)>,
    /// The latest such message whose commit index this node has applied
    /// since: its copy holds everything committed before then.
    confirmed: Option<Instant>,
}

impl MetaHeard {
    /// Moves `confirmed` up to `latest` once its commit index is applied.
    fn confirm(&mut self, applied: u64) {
        if let Some((at, commit)) = self.latest {
            if applied >= commit && self.confirmed.is_none_or(|c| c < at) {
                self.confirmed = Some(at);
            }
        }
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        reason: reason.into(),
    }
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|e| Error::InvalidConfig {
        key: key.into(),
        reason: format!("{s:?}: {e}"),
    })
}

fn member(node: u64) -> BasicNode {
    BasicNode::new(node.to_string())
}

/// A pseudo-random index below `n` (0 when `n` is 0).
pub(crate) fn rand_index(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (crate::util::now_ms() as usize ^ std::process::id() as usize) % n
}

impl Cluster {
    /// The client address of node `node`, if it is a routable one.
    pub fn client_addr(&self, node: u64) -> Option<SocketAddr> {
        self.client_addrs.read().get(&node).copied()
    }

    /// Starts the cluster runtime of `db`'s node: peer endpoint, group 0,
    /// then bootstrap or join, the reconcile loop and the liveness probe.
    /// Attaches itself to the engine (registry, tenant lifecycle);
    /// `forwarded` serves requests other nodes forward here.
    pub async fn start(db: &Database, forwarded: Arc<dyn Forwarded>) -> Result<Arc<Cluster>> {
        let cfg = db.config();
        let cs = cfg.cluster.clone();
        let ca = tls::read_certs(cs.ca.as_ref())?;
        let identity = tls::load_identity(cs.cert.as_ref(), cs.key.as_ref())?;
        if !identity
            .chain
            .first()
            .is_some_and(|c| crate::net::peer::cert_names_node(c, cs.node_id))
        {
            return Err(Error::InvalidConfig {
                key: "cluster.cert".into(),
                reason: format!("the certificate is not valid for node-{}", cs.node_id),
            });
        }
        let listen = parse_addr("cluster.peer_listen", &cs.peer_listen)?;
        let incarnation = incarnation::load_or_create(&cfg.node.data_dir)?;
        let net = PeerNet::bind(cs.node_id, listen, &ca, &identity)?;
        net.set_incarnation(incarnation);
        let bound = net.local_addr()?;
        let me = NodeRecord {
            id: cs.node_id,
            peer_addr: if cs.advertise_peer.is_empty() {
                bound.to_string()
            } else {
                cs.advertise_peer.clone()
            },
            client_addr: if cs.advertise_client.is_empty() {
                cfg.server.listen.to_string()
            } else {
                cs.advertise_client.clone()
            },
            removed: false,
            draining: false,
            incarnation,
        };
        let (env, dir) = (db.storage_env().clone(), db.shard_dir(0));
        let meta_data = tokio::task::spawn_blocking(move || ShardData::open(&env, &dir))
            .await
            .map_err(raft::raft_err)??;
        let meta = raft::start_replicated_group(
            &cfg.raft,
            cs.node_id,
            db.raft_logs(),
            0,
            meta_data.clone(),
            net.clone(),
            None,
            false,
        )
        .await?;
        let cluster = Arc::new(Cluster {
            me: me.clone(),
            settings: cs.clone(),
            net: net.clone(),
            meta: meta.clone(),
            meta_data,
            busy: Arc::new(Mutex::new(HashSet::new())),
            reconciling: tokio::sync::Mutex::new(()),
            load: Mutex::new(None),
            known_users: moka::sync::Cache::builder()
                .max_capacity(KNOWN_USERS)
                .build(),
            probe: Mutex::new(None),
            down: parking_lot::RwLock::new(HashSet::new()),
            task: Mutex::new(None),
            client_addrs: Default::default(),
            peers: Default::default(),
            relearned: Mutex::new(None),
            removed: Default::default(),
            leaving: Default::default(),
            unstarted: Default::default(),
            meta_heard: Default::default(),
        });
        db.attach_cluster(cluster.clone(), cluster.clone());
        net.serve(Arc::new(service::Service::new(db, &cluster, forwarded)));
        // Addresses known from our own copy of the metadata.
        cluster.refresh_addrs(&*db.registry()?);
        if !meta.is_initialized().await.map_err(raft::raft_err)? {
            if cs.join.is_empty() {
                tracing::info!(node = me.id, "bootstrapping a new cluster");
                meta.initialize(BTreeMap::from([(me.id, member(me.id))]))
                    .await
                    .map_err(raft::raft_err)?;
                meta.wait(Some(Duration::from_secs(30)))
                    .state(
                        openraft::ServerState::Leader,
                        "bootstrap node leads group 0",
                    )
                    .await
                    .map_err(raft::raft_err)?;
                db.registry()?.put_node(&me).await?;
            } else {
                cluster.join(&cs.join).await?;
            }
        } else {
            let _ = meta.wait_for_recovery(Some(Duration::from_secs(30))).await;
        }
        *cluster.task.lock() = Some(reconcile::spawn_loop(db, &cluster));
        *cluster.probe.lock() = Some(quiesce::spawn_probe(db, &cluster));
        db.load_keys()?;
        tracing::info!(node = me.id, "cluster node open");
        Ok(cluster)
    }

    /// This node's record.
    pub fn me(&self) -> &NodeRecord {
        &self.me
    }

    /// Refuses client requests once the registry marks this node removed
    /// (`node remove`): its clients go to another node (the driver
    /// retries `Unavailable` on its other addresses).
    pub fn check_serving(&self) -> Result<()> {
        if self.removed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(unavailable(format!(
                "node {} was removed from the cluster and serves no clients; use another node",
                self.me.id
            )));
        }
        Ok(())
    }

    /// Notes an AppendEntries of `group` this node accepted from the
    /// group's leader, carrying commit index `commit` (heartbeats
    /// included): for group 0 the metadata lease, for a tenant's group
    /// whether its leader still counts on this replica.
    pub(crate) fn heard_from_leader(&self, db: &Database, group: u64, commit: u64) {
        if group != 0 {
            if let Some(t) = db.loaded_group(group) {
                t.leader_heard().store(
                    crate::util::coarse_now_ms(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
            return;
        }
        let applied = self.meta_applied();
        let mut h = self.meta_heard.lock();
        h.confirm(applied);
        h.latest = Some((Instant::now(), commit));
        h.confirm(applied);
    }

    fn meta_applied(&self) -> u64 {
        self.meta
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Refuses requests while this node's copy of the metadata may be
    /// stale: group 0's leader has not confirmed it within
    /// `cluster.metadata_lease_ms`. On the leader: a quorum acknowledged
    /// it within the lease; on a follower: a message from the leader
    /// within the lease whose commit index has been applied here. So a
    /// key revoked, a user removed or a tenant deleted stops working on
    /// every node within the lease, partitions included.
    pub fn check_fresh(&self) -> Result<()> {
        let lease = Duration::from_millis(self.settings.metadata_lease_ms);
        let (leads, alone, acked, applied) = {
            let m = self.meta.metrics();
            let m = m.borrow_watched();
            (
                m.state == openraft::ServerState::Leader,
                m.membership_config.membership().voter_ids().count() == 1,
                m.last_quorum_acked
                    .as_ref()
                    .map(|t| openraft::Instant::elapsed(&**t)),
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        let age = if leads {
            if alone {
                return Ok(());
            }
            acked
        } else {
            let mut h = self.meta_heard.lock();
            h.confirm(applied);
            h.confirmed.map(|c| c.elapsed())
        };
        match age {
            Some(age) if age < lease => Ok(()),
            _ => Err(unavailable(format!(
                "node {} has no word from the metadata group's leader within {} ms, so it \
                 cannot vouch for keys, users and tenants; use another node",
                self.me.id, self.settings.metadata_lease_ms
            ))),
        }
    }

    /// The metadata group's leader, if known.
    pub fn meta_leader(&self) -> Option<u64> {
        self.meta.metrics().borrow_watched().current_leader
    }

    /// The metadata group's raft handle.
    pub fn meta_raft(&self) -> &ShardRaft {
        &self.meta
    }

    /// Whether this node may create the cluster's first admin key: only
    /// group 0's leader, after a linearizable read (its key table is then
    /// current). A node that joins never does: it would mint a second
    /// admin key from a copy of the registry that has not caught up.
    pub async fn may_mint_admin_key(&self, db: &Database) -> Result<bool> {
        if !crate::shard::is_leader(&self.meta) {
            return Ok(false);
        }
        if self
            .meta
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .is_err()
        {
            return Ok(false);
        }
        db.load_keys()?;
        Ok(true)
    }

    /// Nodes the liveness probe finds unreachable now.
    pub fn down_nodes(&self) -> HashSet<u64> {
        self.down.read().clone()
    }

    /// Stops the reconcile loop and the liveness probe.
    pub fn stop_reconcile(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
        if let Some(t) = self.probe.lock().take() {
            t.abort();
        }
    }

    /// Stops group 0 and closes the peer transport.
    async fn shutdown(&self) {
        let _ = self.meta.shutdown().await;
        self.net.close().await;
    }

    /// The tenant groups whose replica on this node leads.
    pub fn groups_led(&self, db: &Database) -> Vec<u64> {
        db.loaded_tenants()
            .into_iter()
            .filter(|t| t.raft().is_some_and(|r| crate::shard::is_leader(&r)))
            .map(|t| t.group())
            .collect()
    }

    /// The raft handle of group `group` on this node: group 0, or a loaded
    /// tenant's shard.
    fn group_raft(&self, db: &Database, group: u64) -> Option<ShardRaft> {
        if group == 0 {
            return Some(self.meta.clone());
        }
        db.loaded_group(group).and_then(|t| t.raft())
    }

    /// The raft handle of group `group` on this node for a peer's
    /// message, reopening a hibernated replica first; the guard keeps the
    /// replica open while the message is served (None for group 0).
    async fn group_replica(
        &self,
        db: &Database,
        group: u64,
    ) -> Option<(ShardRaft, Option<crate::db::Awake>)> {
        if group == 0 {
            return Some((self.meta.clone(), None));
        }
        let t = db.loaded_group(group)?;
        let awake = match db.awake(&t).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(group, error = %e, "could not reopen a hibernated replica for a peer's message");
                return None;
            }
        };
        Some((t.raft()?, Some(awake)))
    }
}

impl MetaGroup for Cluster {
    fn data(&self) -> Result<Arc<ShardData>> {
        Ok(self.meta_data.clone())
    }

    fn propose(&self, ops: Vec<RegOp>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.propose_registry(ops))
    }
}

impl ClusterHooks for Cluster {
    fn place<'a>(&'a self, db: &'a Database, group: u64) -> BoxFuture<'a, Result<Vec<Replica>>> {
        Box::pin(Cluster::place(self, db, group))
    }

    fn wait_served<'a>(&'a self, db: &'a Database, rec: &'a TenantRecord) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::wait_served(self, db, rec))
    }

    fn user_exists(&self, reg: &Registry, tenant: &str, user: &str) -> Result<bool> {
        Cluster::user_exists(self, reg, tenant, user)
    }

    fn may_mint_admin_key<'a>(&'a self, db: &'a Database) -> BoxFuture<'a, Result<bool>> {
        Box::pin(Cluster::may_mint_admin_key(self, db))
    }

    fn leads_metadata(&self) -> bool {
        crate::shard::is_leader(self.meta_raft())
    }

    fn node_id(&self) -> u64 {
        self.me.id
    }

    fn raise_limits<'a>(
        &'a self,
        db: &'a Database,
        tenant: &'a str,
        limits: crate::tenant::StorageLimitConfig,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Cluster::raise_limits(self, db, tenant, limits, reason))
    }

    fn stop_background(&self) {
        self.stop_reconcile();
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(Cluster::shutdown(self))
    }
}
