//! The cluster: the metadata group (group 0), placement of tenant shard
//! groups, routing of requests to shard leaders, and the reconcile loop
//! that makes each node's running replicas match the metadata.
//!
//! - **Group 0** is a raft group like any shard's (same log store, same
//!   state machine type). Its state is the registry: nodes, tenants with
//!   their placement, users, key hashes and counters
//!   ([`Command::Registry`]). Every node follows it (voters up to
//!   `cluster.meta_voters`, the rest learners) and reads the registry
//!   from its local copy.
//! - **Placement**: a new tenant's group gets `replication_factor`
//!   replicas on the live nodes holding the fewest replicas. Replica ids
//!   come from a counter in group 0, so they are never reused.
//! - **Routing**: a tenant request is served on the node whose replica
//!   leads the group; any other node forwards it there over the peer
//!   transport (a stale read is served by any replica). Admin requests
//!   run on group 0's leader.
//! - **Reconcile** (every node, every [`TICK`]): peer addresses from the
//!   node records; start replicas placed here, stop and purge replicas
//!   no longer placed here; config changes. On leaders: bring group
//!   memberships (group 0's and each shard's) and storage limits up to
//!   the records.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use openraft::BasicNode;
use parking_lot::Mutex;

use crate::net::peer::{PeerNet, PeerRequest, PeerResponse, PeerService};
use crate::net::tls;
use crate::proto::wire::{ClusterNode, Request, Response, ShardInfo};
use crate::proto::{Error, Result};
use crate::raft::{self, ShardRaft, ShardSnapshot, SnapshotMeta, Vote};
use crate::shard::{is_leader, ReplicaNet, ShardData};
use crate::storage::{Command, CommandResult, RegOp};

use super::{Database, Inner, MetaGroup, NodeRecord, Registry, Replica, TenantRecord, TenantState};

/// Reconcile period.
pub const TICK: Duration = Duration::from_millis(250);
/// A shard group with no request for this long quiesces: its replicas
/// stop their raft ticks, so an idle tenant sends no heartbeats.
pub const QUIESCE_AFTER: Duration = Duration::from_secs(10);
/// Liveness probe period between nodes.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A node unanswered this long counts as down: quiesced groups it led
/// wake up and elect a new leader.
const DOWN_AFTER: Duration = Duration::from_millis(2000);
/// Longest wait for a leader before a request gets `Unavailable`.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Deadline of a forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most forwarding hops of one request.
const MAX_HOPS: u8 = 2;

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
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Nodes the liveness probe finds unreachable.
    down: parking_lot::RwLock<HashSet<u64>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Users (tenant, user) found in the registry, each with the group-0
    /// applied index it was checked at: any metadata change (a user
    /// removed, a tenant deleted) makes the entry stale.
    known_users: moka::sync::Cache<(String, String), u64>,
}

impl Cluster {
    /// Whether `user` of `tenant` exists, from the node's cache while group
    /// 0 has not changed since it was checked (no registry read per
    /// request).
    pub(crate) fn user_exists(&self, reg: &Registry, tenant: &str, user: &str) -> Result<bool> {
        let version = self
            .meta
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let key = (tenant.to_string(), user.to_string());
        if self.known_users.get(&key) == Some(version) {
            return Ok(true);
        }
        let exists = reg.user(tenant, user)?.is_some();
        if exists {
            self.known_users.insert(key, version);
        }
        Ok(exists)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

/// Users a node remembers having checked (see `Cluster::known_users`).
const KNOWN_USERS: u64 = 10_000;

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

/// Opens the cluster runtime of `db`: peer endpoint, group 0, then
/// bootstrap or join, and the reconcile loop.
pub(super) async fn start(db: &Database) -> Result<()> {
    let cfg = &db.inner.config;
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
    let net = PeerNet::bind(cs.node_id, listen, &ca, &identity)?;
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
    };
    let (env, dir) = (db.inner.env.clone(), db.shard_dir(0));
    let meta_data = tokio::task::spawn_blocking(move || ShardData::open(&env, &dir))
        .await
        .map_err(raft::raft_err)??;
    let meta = raft::start_replicated_group(
        &cfg.raft,
        cs.node_id,
        &db.inner.logs,
        0,
        meta_data.clone(),
        net.clone(),
        None,
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
        known_users: moka::sync::Cache::builder()
            .max_capacity(KNOWN_USERS)
            .build(),
        probe: Mutex::new(None),
        down: parking_lot::RwLock::new(HashSet::new()),
        task: Mutex::new(None),
    });
    *db.inner.registry.write() = Some(Arc::new(Registry::replicated(cluster.clone())));
    *db.inner.cluster.write() = Some(cluster.clone());
    net.serve(Arc::new(Service {
        db: Arc::downgrade(&db.inner),
    }));
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
    let weak = Arc::downgrade(&db.inner);
    let task = tokio::spawn(async move {
        let mut last_applied = None;
        let mut last_full = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::time::sleep(TICK).await;
            let Some(inner) = weak.upgrade() else { return };
            let db = Database { inner };
            let Some(c) = db.cluster() else { return };
            let applied = c.meta.metrics().borrow_watched().last_applied;
            // The full pass re-reads every record: only when group 0
            // changed, or every few seconds for the leaders' duties.
            let changed = applied != last_applied;
            if changed || last_full.elapsed() > Duration::from_secs(2) {
                last_applied = applied;
                last_full = Instant::now();
                if let Err(e) = db.reconcile(&c, changed).await {
                    tracing::warn!(error = %e, "reconcile failed; retrying");
                }
            }
        }
    });
    *cluster.task.lock() = Some(task);
    let weak = Arc::downgrade(&db.inner);
    let probe = tokio::spawn(async move {
        let mut last_ok: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
        let mut down: HashSet<u64> = HashSet::new();
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(inner) = weak.upgrade() else { return };
            let db = Database { inner };
            let Some(c) = db.cluster() else { return };
            let Ok(nodes) = db.registry().and_then(|r| r.nodes()) else {
                continue;
            };
            let peers: Vec<u64> = nodes
                .iter()
                .filter(|n| !n.removed && n.id != c.me.id)
                .map(|n| n.id)
                .collect();
            let probes = peers.iter().map(|n| {
                let c = c.clone();
                let n = *n;
                async move {
                    (
                        n,
                        matches!(
                            c.net.call(n, &PeerRequest::Ping, DOWN_AFTER / 2).await,
                            Ok(PeerResponse::Pong)
                        ),
                    )
                }
            });
            for (n, ok) in futures::future::join_all(probes).await {
                let seen = last_ok.entry(n).or_insert_with(Instant::now);
                if ok {
                    *seen = Instant::now();
                    if down.remove(&n) {
                        c.down.write().remove(&n);
                        tracing::info!(node = n, "peer node reachable again");
                    }
                } else if seen.elapsed() > DOWN_AFTER && down.insert(n) {
                    c.down.write().insert(n);
                    tracing::warn!(
                        node = n,
                        "peer node unreachable; waking the quiesced groups it led"
                    );
                    db.wake_groups_led_by(n);
                }
            }
        }
    });
    *cluster.probe.lock() = Some(probe);
    Ok(())
}

impl MetaGroup for Cluster {
    fn data(&self) -> Result<Arc<ShardData>> {
        Ok(self.meta_data.clone())
    }

    fn propose(&self, ops: Vec<RegOp>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.propose_registry(ops))
    }
}

impl Cluster {
    /// This node's record.
    pub fn me(&self) -> &NodeRecord {
        &self.me
    }

    /// The metadata group's leader, if known.
    pub fn meta_leader(&self) -> Option<u64> {
        self.meta.metrics().borrow_watched().current_leader
    }

    /// The metadata group's raft handle.
    pub fn meta_raft(&self) -> &ShardRaft {
        &self.meta
    }

    pub(super) fn stop_reconcile(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
        if let Some(t) = self.probe.lock().take() {
            t.abort();
        }
    }

    pub(super) async fn shutdown(&self) {
        let _ = self.meta.shutdown().await;
        self.net.close().await;
    }

    fn refresh_addrs(&self, reg: &Registry) {
        if let Ok(nodes) = reg.nodes() {
            for n in nodes {
                if n.id != self.me.id {
                    if let Ok(a) = n.peer_addr.parse() {
                        self.net.set_addr(n.id, a);
                    }
                }
            }
        }
    }

    async fn join(&self, through: &[String]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            for a in through {
                let addr = parse_addr("cluster.join", a)?;
                let req = PeerRequest::Join(self.me.clone());
                match self
                    .net
                    .call_addr(addr, &req, Duration::from_secs(20))
                    .await
                {
                    Ok(PeerResponse::Joined(Ok(nodes))) => {
                        for n in &nodes {
                            if n.id != self.me.id {
                                if let Ok(a) = n.peer_addr.parse() {
                                    self.net.set_addr(n.id, a);
                                }
                            }
                        }
                        tracing::info!(node = self.me.id, through = %addr, nodes = nodes.len(), "joined the cluster");
                        return Ok(());
                    }
                    Ok(PeerResponse::Joined(Err(e))) if !e.is_retryable() => return Err(e),
                    Ok(other) => {
                        tracing::info!(through = %addr, answer = ?other, "join not accepted yet")
                    }
                    Err(e) => tracing::info!(through = %addr, error = %e, "join: peer unreachable"),
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable(
                    "could not join the cluster through any --join address",
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Commits registry changes through group 0, forwarding to its leader.
    async fn propose_registry(&self, ops: Vec<RegOp>) -> Result<u64> {
        let deadline = Instant::now() + LEADER_WAIT * 2;
        loop {
            match self.commit_here(ops.clone()).await {
                Ok(v) => return Ok(v),
                Err(NotHere(leader)) => {
                    if let Some(l) = leader.filter(|l| *l != self.me.id) {
                        let req = PeerRequest::Registry(ops.clone());
                        match self.net.call(l, &req, FORWARD_TIMEOUT).await {
                            Ok(PeerResponse::Counter(Ok(v))) => return Ok(v),
                            Ok(PeerResponse::Counter(Err(e))) if !e.is_retryable() => {
                                return Err(e)
                            }
                            _ => {}
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable("the metadata group has no reachable leader"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Commits registry changes if this node leads group 0.
    async fn commit_here(&self, ops: Vec<RegOp>) -> std::result::Result<u64, NotHere> {
        use openraft::errors::{ClientWriteError, RaftError};
        match self.meta.client_write(Command::Registry(ops)).await {
            Ok(r) => match r.data {
                CommandResult::Done(Ok(v)) => Ok(v),
                // Registry ops cannot fail at apply but storage errors.
                _ => Err(NotHere(None)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(NotHere(f.leader_id))
            }
            Err(_) => Err(NotHere(None)),
        }
    }

    /// Places a new group: `replication_factor` live nodes, fewest
    /// replicas first. Replica ids are fresh.
    pub(super) async fn place(&self, db: &Database, group: u64) -> Result<Vec<Replica>> {
        let reg = db.registry()?;
        let nodes: Vec<NodeRecord> = reg.nodes()?.into_iter().filter(|n| !n.removed).collect();
        if nodes.is_empty() {
            return Err(unavailable("no live nodes to place a shard on"));
        }
        let load = replica_load(&reg.tenants()?);
        let mut ranked: Vec<(usize, u64, u64)> = nodes
            .iter()
            .map(|n| {
                let spread = n.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group;
                (load.get(&n.id).copied().unwrap_or(0), spread, n.id)
            })
            .collect();
        ranked.sort();
        let rf = self.settings.replication_factor.min(nodes.len());
        let mut out = Vec::with_capacity(rf);
        for (_, _, node) in ranked.into_iter().take(rf) {
            let id = reg.next_id("replica").await?;
            out.push(Replica {
                id,
                node,
                initial: true,
            });
        }
        Ok(out)
    }

    /// Waits (a few seconds at most) until a new group has a leader, when
    /// this node holds one of its replicas.
    pub(super) async fn wait_served(&self, db: &Database, rec: &TenantRecord) {
        if !rec.replicas.iter().any(|r| r.node == self.me.id) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if db.reconcile(self, true).await.is_ok() {
                if let Ok(t) = db.tenant(&rec.config.tenant_id) {
                    if let Some(raft) = t.raft() {
                        if raft.metrics().borrow_watched().current_leader.is_some() {
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The replica id and network of this node's replica of `rec`.
    pub(super) fn replica_net(&self, rec: &TenantRecord) -> Result<(u64, Option<ReplicaNet>)> {
        let mine = rec
            .replicas
            .iter()
            .find(|r| r.node == self.me.id)
            .ok_or_else(|| {
                unavailable(format!(
                    "tenant {} has no replica here",
                    rec.config.tenant_id
                ))
            })?;
        let initial = mine.initial.then(|| {
            rec.replicas
                .iter()
                .filter(|r| r.initial)
                .map(|r| (r.id, member(r.node)))
                .collect()
        });
        Ok((
            mine.id,
            Some(ReplicaNet {
                net: self.net.clone(),
                initial,
            }),
        ))
    }

    /// Spawns a membership change of `raft` (group `group`) to exactly
    /// `voters` (replica id → node), unless one is already running.
    fn converge_membership(&self, group: u64, raft: ShardRaft, voters: BTreeMap<u64, u64>) {
        let current: BTreeSet<u64> = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.state != openraft::ServerState::Leader {
                return;
            }
            m.membership_config.membership().voter_ids().collect()
        };
        let want: BTreeSet<u64> = voters.keys().copied().collect();
        if current == want || want.is_empty() {
            return;
        }
        if !self.busy.lock().insert(group) {
            return;
        }
        let guard = BusyGuard {
            busy: self.busy.clone(),
            group,
        };
        tokio::spawn(async move {
            let _guard = guard;
            for (id, node) in &voters {
                if !current.contains(id) {
                    if let Err(e) = raft.add_learner(*id, member(*node), true).await {
                        tracing::info!(group, replica = id, error = %e, "adding learner failed; will retry");
                        return;
                    }
                }
            }
            match raft.change_membership(want.clone(), false).await {
                Ok(_) => tracing::info!(group, voters = ?want, "membership changed"),
                Err(e) => tracing::info!(group, error = %e, "membership change failed; will retry"),
            }
        });
    }
}

/// Releases a group's membership-change slot when its task ends.
struct BusyGuard {
    busy: Arc<Mutex<HashSet<u64>>>,
    group: u64,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy.lock().remove(&self.group);
    }
}

/// Forwarding target when this node cannot commit.
struct NotHere(Option<u64>);

fn replica_load(recs: &[TenantRecord]) -> std::collections::HashMap<u64, usize> {
    let mut load = std::collections::HashMap::new();
    for r in recs {
        for rep in &r.replicas {
            *load.entry(rep.node).or_insert(0) += 1;
        }
    }
    load
}

/// Where a tenant request is served.
pub(crate) enum Route {
    /// On this node's replica.
    Local,
    /// On another node.
    Remote(u64),
}

impl Database {
    /// Brings this node's replicas and (on leaders) memberships up to the
    /// metadata. `full`: group 0 changed since the last pass.
    pub(super) async fn reconcile(&self, c: &Cluster, full: bool) -> Result<()> {
        let _one_at_a_time = c.reconciling.lock().await;
        let reg = self.registry()?;
        c.refresh_addrs(&reg);
        if full {
            self.load_keys()?;
        }
        let records = reg.tenants()?;
        let me = c.me.id;
        // Group 0's voters, on its leader.
        if is_leader(&c.meta) {
            let nodes = reg.nodes()?;
            if !nodes.iter().any(|n| n.id == me) {
                reg.put_node(&c.me).await?;
            }
            let current: BTreeSet<u64> = c
                .meta
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let live: Vec<u64> = nodes.iter().filter(|n| !n.removed).map(|n| n.id).collect();
            // Keep live voters; fill up to meta_voters from the others.
            let mut voters: BTreeSet<u64> = current
                .iter()
                .copied()
                .filter(|v| live.contains(v))
                .collect();
            for n in &live {
                if voters.len() >= c.settings.meta_voters {
                    break;
                }
                voters.insert(*n);
            }
            let learners: Vec<u64> = live
                .iter()
                .copied()
                .filter(|n| !voters.contains(n))
                .collect();
            for l in learners {
                let known = c
                    .meta
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .is_some();
                if !known {
                    let _ = c.meta.add_learner(l, member(l), false).await;
                }
            }
            c.converge_membership(
                0,
                c.meta.clone(),
                voters.into_iter().map(|v| (v, v)).collect(),
            );
        }
        // Replicas placed here.
        let mut placed = HashSet::new();
        for rec in &records {
            if rec.state != TenantState::Active || !rec.replicas.iter().any(|r| r.node == me) {
                continue;
            }
            let id = &rec.config.tenant_id;
            placed.insert(id.clone());
            let loaded = self.inner.tenants.read().get(id).cloned();
            let t = match loaded {
                Some(t) if t.group == rec.group => t,
                Some(_) => continue,
                None => {
                    if let Err(e) = self.load_tenant(rec).await {
                        tracing::warn!(tenant = %id, error = %e, "could not start replica");
                    }
                    continue;
                }
            };
            if *t.config() != rec.config {
                *t.config.write() = Arc::new(rec.config.clone());
                t.limiter.update(&rec.config);
            }
            if *t.replicas.read() != rec.replicas {
                *t.replicas.write() = rec.replicas.clone();
            }
            let Some(raft) = t.raft() else { continue };
            if !is_leader(&raft) {
                // A new group whose first election failed (its other
                // replicas were not running yet): its first replica
                // campaigns again rather than waiting out a timeout.
                let first = rec.replicas.iter().find(|r| r.initial).map(|r| r.node) == Some(me);
                let (no_leader, fresh) = {
                    let m = raft.metrics();
                    let m = m.borrow_watched();
                    (
                        m.current_leader.is_none(),
                        m.last_applied.is_none_or(|l| l.index == 0),
                    )
                };
                if first && no_leader && fresh {
                    let _ = raft.trigger().elect(false).await;
                }
                continue;
            }
            let voters: BTreeMap<u64, u64> = rec.replicas.iter().map(|r| (r.id, r.node)).collect();
            let members_differ = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                !m.membership_config
                    .membership()
                    .voter_ids()
                    .eq(voters.keys().copied())
            };
            let limits_differ = t
                .data()
                .map(|d| d.limits().as_ref() != Some(&rec.config.storage_limit))
                .unwrap_or(false);
            if members_differ || limits_differ {
                // Anything the leader sends needs it awake (heartbeats).
                wake(&t);
            }
            if members_differ {
                c.converge_membership(rec.group, raft.clone(), voters);
            } else if limits_differ {
                let cmd = Command::SetLimits(rec.config.storage_limit.clone());
                let raft = raft.clone();
                tokio::spawn(async move {
                    let _ = crate::shard::propose(&raft, cmd).await;
                });
            } else {
                self.maybe_quiesce(c, &t, &raft, rec);
            }
        }
        // Replicas no longer placed here.
        let stale: Vec<String> = self
            .inner
            .tenants
            .read()
            .keys()
            .filter(|id| !placed.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            // Safe against a lagging copy of the metadata: a replica is
            // only loaded from a record, and group 0's state only moves
            // forward, so a record that placed it here and is gone now
            // was deleted or re-placed.
            if let Some(t) = self.unload(&id) {
                tracing::info!(tenant = %id, group = t.group, "replica no longer placed here; removing it");
                let _ = self.stop_shard(&id).await;
                if let Err(e) = self.purge_local(t.group).await {
                    tracing::warn!(tenant = %id, error = %e, "could not purge replica");
                }
            }
        }
        Ok(())
    }

    /// Quiesces an idle group this node leads once every follower holds
    /// its whole log and agrees.
    fn maybe_quiesce(
        &self,
        c: &Cluster,
        t: &Arc<super::Tenant>,
        raft: &ShardRaft,
        rec: &TenantRecord,
    ) {
        use std::sync::atomic::Ordering;
        if t.quiesced.load(Ordering::Acquire) {
            return;
        }
        let idle =
            crate::util::coarse_now_ms().saturating_sub(t.last_active.load(Ordering::Relaxed));
        if idle < QUIESCE_AFTER.as_millis() as u64 {
            return;
        }
        let (leader, last_index, caught_up) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            let last = m.last_log_index.unwrap_or(0);
            let caught = m.replication.as_ref().is_some_and(|r| {
                r.values()
                    .all(|l| l.as_ref().map(|l| l.index) == Some(last))
            });
            (
                m.id,
                last,
                caught && m.last_applied.map(|l| l.index) == Some(last),
            )
        };
        if !caught_up || !c.busy.lock().insert(rec.group) {
            return;
        }
        let guard = BusyGuard {
            busy: c.busy.clone(),
            group: rec.group,
        };
        let followers: Vec<u64> = rec
            .replicas
            .iter()
            .filter(|r| r.node != c.me.id)
            .map(|r| r.node)
            .collect();
        let (net, t, raft, group) = (c.net.clone(), t.clone(), raft.clone(), rec.group);
        tokio::spawn(async move {
            let _guard = guard;
            let req = PeerRequest::Quiesce {
                group,
                leader,
                last_index,
            };
            for f in followers {
                match net.call(f, &req, Duration::from_secs(2)).await {
                    Ok(PeerResponse::Quiesced(true)) => {}
                    _ => return,
                }
            }
            // A request may have arrived meanwhile.
            let idle =
                crate::util::coarse_now_ms().saturating_sub(t.last_active.load(Ordering::Relaxed));
            if idle >= QUIESCE_AFTER.as_millis() as u64
                && raft.metrics().borrow_watched().last_log_index.unwrap_or(0) == last_index
            {
                t.quiesced.store(true, Ordering::Release);
                raft.runtime_config().tick(false);
                tracing::debug!(group, "group quiesced");
            } else {
                // Followers stopped ticking: wake them with a round.
                let _ = raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                    .await;
            }
        });
    }

    /// A follower's side of quiescence.
    fn quiesce_follower(&self, group: u64, leader: u64, last_index: u64) -> bool {
        use std::sync::atomic::Ordering;
        let Some(t) = self.inner.by_group.read().get(&group).cloned() else {
            return false;
        };
        let Some(raft) = t.raft() else { return false };
        let ok = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            m.current_leader == Some(leader)
                && m.state == openraft::ServerState::Follower
                && m.last_log_index.unwrap_or(0) == last_index
        };
        if ok {
            t.quiesced.store(true, Ordering::Release);
            raft.runtime_config().tick(false);
        }
        ok
    }

    /// Wakes quiesced local replicas of groups whose leader is on `node`.
    pub(crate) fn wake_groups_led_by(&self, node: u64) {
        let tenants: Vec<Arc<super::Tenant>> =
            self.inner.tenants.read().values().cloned().collect();
        let mut woken = 0;
        for t in tenants {
            if !t.quiesced.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            let Some(raft) = t.raft() else { continue };
            let leader = raft.metrics().borrow_watched().current_leader;
            let on_node = leader.is_none_or(|l| {
                t.replicas
                    .read()
                    .iter()
                    .any(|r| r.id == l && r.node == node)
            });
            if on_node {
                wake(&t);
                woken += 1;
            }
        }
        if woken > 0 {
            tracing::info!(node, groups = woken, "woke quiesced groups");
        }
    }

    /// Marks a local replica active (a request arrived) and wakes it.
    fn touch(&self, tenant: &str) {
        if let Some(t) = self.inner.tenants.read().get(tenant) {
            t.last_active.store(
                crate::util::coarse_now_ms(),
                std::sync::atomic::Ordering::Relaxed,
            );
            wake(t);
        }
    }

    fn wake_group(&self, group: u64) {
        if let Some(t) = self.inner.by_group.read().get(&group) {
            wake(t);
        }
    }

    /// Where a request for `tenant` is served; waits a while for a leader.
    pub(crate) async fn route(&self, tenant: &str, stale: bool) -> Result<Route> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let local = self.inner.tenants.read().get(tenant).cloned();
            match local {
                Some(t) => {
                    if let Some(raft) = t.raft() {
                        if stale || is_leader(&raft) {
                            return Ok(Route::Local);
                        }
                        let leader = raft.metrics().borrow_watched().current_leader;
                        if let Some(l) = leader {
                            let node = t.replicas.read().iter().find(|r| r.id == l).map(|r| r.node);
                            if let Some(n) = node.filter(|n| *n != c.me.id) {
                                return Ok(Route::Remote(n));
                            }
                        }
                    }
                }
                None => {
                    let rec = self.record(tenant)?;
                    // Not held here: any replica's reachable node routes it on.
                    let down = c.down.read().clone();
                    let mut nodes: Vec<u64> = rec
                        .replicas
                        .iter()
                        .map(|r| r.node)
                        .filter(|n| !down.contains(n))
                        .collect();
                    if nodes.is_empty() {
                        nodes = rec.replicas.iter().map(|r| r.node).collect();
                    }
                    if let Some(n) = nodes.get(rand_index(nodes.len())) {
                        return Ok(Route::Remote(*n));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable(format!(
                    "shard of tenant {tenant} has no leader"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Serves a tenant's data request on the node where it belongs.
    pub(crate) async fn serve_tenant(
        &self,
        tenant: &str,
        user: &str,
        req: Request,
        hops: u8,
    ) -> Result<Response> {
        let stale = matches!(req, Request::Stale(_));
        self.touch(tenant);
        match self.route(tenant, stale).await? {
            Route::Local => {
                let s = self.session(tenant, user).await?;
                crate::router::dispatch::data(&s, req).await
            }
            Route::Remote(node) => {
                if hops >= MAX_HOPS {
                    return Err(unavailable(format!(
                        "shard of tenant {tenant} is moving; retry"
                    )));
                }
                let c = self
                    .cluster()
                    .ok_or_else(|| unavailable("not a cluster node"))?;
                let fwd = PeerRequest::Forward {
                    tenant: tenant.to_string(),
                    user: user.to_string(),
                    hops: hops + 1,
                    request: req,
                };
                forward(&c, node, &fwd).await
            }
        }
    }

    /// Serves an admin request: on group 0's leader, or for usage, on a
    /// replica of the tenant.
    pub(crate) async fn serve_admin(&self, req: Request, hops: u8) -> Result<Response> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        let target = match &req {
            Request::ClusterNodes => return self.cluster_nodes().map(Response::ClusterNodes),
            Request::ListKeys(_) => None,
            Request::Usage(Some(t)) | Request::ShardInfo(t) => match self.route(t, true).await? {
                Route::Local => None,
                Route::Remote(n) => Some(n),
            },
            _ => {
                let deadline = Instant::now() + LEADER_WAIT;
                loop {
                    if is_leader(&c.meta) {
                        // Serve on current metadata.
                        c.meta
                            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                            .await
                            .map_err(|e| unavailable(e.to_string()))?;
                        break None;
                    }
                    if let Some(l) = c.meta_leader().filter(|l| *l != c.me.id) {
                        break Some(l);
                    }
                    if Instant::now() > deadline {
                        return Err(unavailable("the metadata group has no leader"));
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        };
        match target {
            None => match req {
                Request::RemoveNode(id) => {
                    self.remove_node(id).await?;
                    Ok(Response::Ok)
                }
                Request::ShardInfo(t) => self.shard_info(&t).map(Response::ShardInfo),
                req => crate::router::dispatch::admin(self, req).await,
            },
            Some(node) => {
                if hops >= MAX_HOPS {
                    return Err(unavailable("metadata leader is moving; retry"));
                }
                forward(&c, node, &PeerRequest::Admin(req, hops + 1)).await
            }
        }
    }

    fn shard_info(&self, tenant: &str) -> Result<ShardInfo> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        let t = self.tenant(tenant)?;
        let raft = t.raft().ok_or_else(|| unavailable("replica not running"))?;
        let (leader, voters) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_leader,
                m.membership_config.membership().voter_ids().collect(),
            )
        };
        let replicas: Vec<(u64, u64)> = t.replicas.read().iter().map(|r| (r.id, r.node)).collect();
        Ok(ShardInfo {
            tenant_id: tenant.to_string(),
            group: t.group,
            leader_node: leader.and_then(|l| replicas.iter().find(|r| r.0 == l).map(|r| r.1)),
            replicas,
            voters,
            answered_by: c.me.id,
            quiesced: t.quiesced.load(std::sync::atomic::Ordering::Acquire),
        })
    }

    fn cluster_nodes(&self) -> Result<Vec<ClusterNode>> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        let (voters, leader): (BTreeSet<u64>, Option<u64>) = {
            let m = c.meta.metrics();
            let m = m.borrow_watched();
            (
                m.membership_config.membership().voter_ids().collect(),
                m.current_leader,
            )
        };
        Ok(self
            .registry()?
            .nodes()?
            .into_iter()
            .map(|n| ClusterNode {
                voter: voters.contains(&n.id),
                leader: leader == Some(n.id),
                id: n.id,
                peer_addr: n.peer_addr,
                client_addr: n.client_addr,
                removed: n.removed,
            })
            .collect())
    }

    /// Admits a node (on group 0's leader): records it; the reconcile
    /// loop adds it to group 0.
    async fn handle_join(&self, rec: NodeRecord, hops: u8) -> Result<Vec<NodeRecord>> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        if !is_leader(&c.meta) {
            let leader = c
                .meta_leader()
                .filter(|l| *l != c.me.id)
                .ok_or_else(|| unavailable("the metadata group has no leader"))?;
            if hops >= MAX_HOPS {
                return Err(unavailable("metadata leader is moving; retry"));
            }
            let _ = hops;
            return match c
                .net
                .call(leader, &PeerRequest::Join(rec), FORWARD_TIMEOUT)
                .await?
            {
                PeerResponse::Joined(r) => r,
                other => Err(unavailable(format!("unexpected peer answer {other:?}"))),
            };
        }
        let reg = self.registry()?;
        if rec.id == 0 {
            return Err(Error::invalid("node_id", "must be at least 1"));
        }
        if let Some(old) = reg.nodes()?.into_iter().find(|n| n.id == rec.id) {
            if old.removed {
                return Err(Error::invalid(
                    "node_id",
                    format!("node {} was removed; a node id is never reused", rec.id),
                ));
            }
        }
        let mut rec = rec;
        rec.removed = false;
        reg.put_node(&rec).await?;
        if let Ok(a) = rec.peer_addr.parse() {
            c.net.set_addr(rec.id, a);
        }
        tracing::info!(node = rec.id, peer = %rec.peer_addr, "node joined");
        reg.nodes()
    }

    /// Removes a dead node: marks it removed and places each of its
    /// replicas on another live node (the shard leaders then change their
    /// memberships). Runs on group 0's leader.
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        let c = self
            .cluster()
            .ok_or_else(|| unavailable("not a cluster node"))?;
        if id == c.me.id {
            return Err(Error::invalid(
                "node",
                "a node cannot remove itself; ask another node",
            ));
        }
        let _g = self.inner.lifecycle.lock().await;
        let reg = self.registry()?;
        let mut node = reg
            .nodes()?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::not_found("node", id.to_string()))?;
        node.removed = true;
        reg.put_node(&node).await?;
        let live: Vec<u64> = reg
            .nodes()?
            .into_iter()
            .filter(|n| !n.removed)
            .map(|n| n.id)
            .collect();
        let mut moved = 0;
        let tenants = reg.tenants()?;
        // Kept current as replicas are placed (the dead node is no target).
        let mut load = replica_load(&tenants);
        for mut rec in tenants {
            if !rec.replicas.iter().any(|r| r.node == id) {
                continue;
            }
            rec.replicas.retain(|r| r.node != id);
            let target = live
                .iter()
                .filter(|n| !rec.replicas.iter().any(|r| r.node == **n))
                .min_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))
                .copied();
            if let Some(node) = target {
                let rid = reg.next_id("replica").await?;
                *load.entry(node).or_insert(0) += 1;
                rec.replicas.push(Replica {
                    id: rid,
                    node,
                    initial: false,
                });
            }
            reg.put_tenant(&rec).await?;
            moved += 1;
        }
        tracing::info!(node = id, replicas_moved = moved, "node removed");
        Ok(())
    }

    fn group_raft(&self, group: u64) -> Option<ShardRaft> {
        if group == 0 {
            return self.cluster().map(|c| c.meta.clone());
        }
        self.inner
            .by_group
            .read()
            .get(&group)
            .and_then(|t| t.raft())
    }
}

/// Restarts a quiesced replica's raft ticks.
fn wake(t: &super::Tenant) {
    use std::sync::atomic::Ordering;
    if t.quiesced.load(Ordering::Acquire) && t.quiesced.swap(false, Ordering::AcqRel) {
        if let Some(raft) = t.raft() {
            raft.runtime_config().tick(true);
        }
    }
}

/// Sends a forwarded request and unwraps the response it carries back.
async fn forward(c: &Cluster, node: u64, req: &PeerRequest) -> Result<Response> {
    match c.net.call(node, req, FORWARD_TIMEOUT).await? {
        PeerResponse::Reply(r) => r,
        PeerResponse::Failed(e) => Err(e),
        other => Err(unavailable(format!("unexpected peer answer {other:?}"))),
    }
}

fn rand_index(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (crate::util::now_ms() as usize ^ std::process::id() as usize) % n
}

/// Serves peer messages for a node.
struct Service {
    db: Weak<Inner>,
}

impl Service {
    fn db(&self) -> Option<Database> {
        self.db.upgrade().map(|inner| Database { inner })
    }
}

fn gone() -> PeerResponse {
    PeerResponse::Failed(unavailable("node is shutting down"))
}

fn no_group(group: u64) -> PeerResponse {
    PeerResponse::Failed(unavailable(format!(
        "group {group} has no replica on this node"
    )))
}

impl PeerService for Service {
    fn handle(&self, _from: u64, req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let db = self.db();
        Box::pin(async move {
            let Some(db) = db else { return gone() };
            // Any raft message for a quiesced replica wakes it.
            if let PeerRequest::Append { group, .. }
            | PeerRequest::Vote { group, .. }
            | PeerRequest::PreVote { group, .. } = &req
            {
                db.wake_group(*group);
            }
            match req {
                PeerRequest::Hello { .. } => PeerResponse::Welcome,
                PeerRequest::Ping => PeerResponse::Pong,
                PeerRequest::Quiesce {
                    group,
                    leader,
                    last_index,
                } => PeerResponse::Quiesced(db.quiesce_follower(group, leader, last_index)),
                PeerRequest::Append { group, rpc } => match db.group_raft(group) {
                    Some(r) => PeerResponse::Append(r.append_entries(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::Vote { group, rpc } => match db.group_raft(group) {
                    Some(r) => PeerResponse::Vote(r.vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::PreVote { group, rpc } => match db.group_raft(group) {
                    Some(r) => PeerResponse::Vote(r.pre_vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::Snapshot { .. } => PeerResponse::Failed(Error::Protocol {
                    reason: "snapshot header outside a snapshot stream".into(),
                }),
                PeerRequest::Forward {
                    tenant,
                    user,
                    hops,
                    request,
                } => PeerResponse::Reply(db.serve_tenant(&tenant, &user, request, hops).await),
                PeerRequest::Admin(req, hops) => {
                    PeerResponse::Reply(db.serve_admin(req, hops).await)
                }
                PeerRequest::Registry(ops) => {
                    match db.cluster() {
                        Some(c) => PeerResponse::Counter(c.commit_here(ops).await.map_err(|_| {
                            unavailable("this node does not lead the metadata group")
                        })),
                        None => gone(),
                    }
                }
                PeerRequest::Join(rec) => PeerResponse::Joined(db.handle_join(rec, 1).await),
            }
        })
    }

    fn snapshot_staging(&self, group: u64) -> Result<PathBuf> {
        let db = self
            .db()
            .ok_or_else(|| unavailable("node is shutting down"))?;
        if db.group_raft(group).is_none() {
            return Err(unavailable(format!(
                "group {group} has no replica on this node"
            )));
        }
        let dir = db.shard_dir(group).join(format!(
            "incoming-{}-{}",
            crate::util::now_ms(),
            rand_index(1 << 20)
        ));
        std::fs::create_dir_all(&dir).map_err(Error::storage)?;
        Ok(dir)
    }

    fn install_snapshot(
        &self,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        let raft = self.db().and_then(|db| db.group_raft(group));
        Box::pin(async move {
            let Some(raft) = raft else {
                return no_group(group);
            };
            let snap = openraft::Snapshot {
                meta,
                snapshot: ShardSnapshot { dir },
            };
            let last = snap.meta.last_log_id;
            let r = raft.install_full_snapshot(vote, snap).await;
            match &r {
                Ok(_) => {
                    tracing::info!(group, ?last, "installed a snapshot streamed by the leader")
                }
                Err(e) => tracing::warn!(group, error = %e, "snapshot install failed"),
            }
            PeerResponse::Snapshot(r)
        })
    }
}
