//! Routing on a cluster: where a request runs. A tenant's data request
//! runs on the node whose replica leads the tenant's group; any other
//! node forwards it there over the peer transport (at most
//! [`MAX_HOPS`] hops; a stale read is served by any replica). Admin
//! requests run on group 0's leader, after a read-index round.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;

use crate::cluster::{
    rand_index, Cluster, Forwarded, ADMIN_KEY, FORWARD_TIMEOUT, LEADER_WAIT, MAX_HOPS,
};
use crate::db::Database;
use crate::net::peer::{PeerRequest, PeerResponse};
use crate::proto::wire::{ClusterNode, Request, Response, ShardInfo};
use crate::proto::{Error, OperationType, Result};
use crate::shard::is_leader;

use super::dispatch;
use super::grants::{AskLeader, Grants};
use super::moves::Mover;

/// How long a follower waits for the shard leader's grant.
const GRANT_TIMEOUT: Duration = Duration::from_secs(2);

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        reason: reason.into(),
    }
}

/// Where a tenant request is served.
pub(crate) enum Route {
    /// On this node's replica.
    Local,
    /// On another node.
    Remote(u64),
}

/// Where a request for `tenant` is served; waits a while for a leader.
pub(crate) async fn route(db: &Database, c: &Cluster, tenant: &str, stale: bool) -> Result<Route> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let local = db.loaded(tenant);
        match local {
            Some(t) => {
                if t.is_asleep() {
                    // Reopen it to learn where the leader is (the request
                    // holds it awake once it is served here).
                    drop(db.awake(&t).await?);
                    c.after_reopen(&t).await;
                }
                if let Some(raft) = t.raft() {
                    if stale || is_leader(&raft) {
                        return Ok(Route::Local);
                    }
                    if let Some(n) = t.leader_node().filter(|n| *n != c.me().id) {
                        return Ok(Route::Remote(n));
                    }
                    if let Some(n) = c.first_replica_of_new_group(&t, &raft) {
                        return Ok(Route::Remote(n));
                    }
                }
            }
            None => {
                let rec = db.record(tenant)?;
                if db.hibernation_on() && rec.replicas.iter().any(|r| r.node == c.me().id) {
                    // Placed here moments ago: load it (asleep, which
                    // opens nothing) rather than wait for the reconcile
                    // loop. With hibernation off the reconcile pass opens
                    // it; until then another replica's node serves.
                    c.load_here(db, &rec).await?;
                    continue;
                }
                // Not held here: any replica's reachable node routes it on.
                let down = c.down_nodes();
                let mut nodes: Vec<u64> = rec
                    .replicas
                    .iter()
                    .map(|r| r.node)
                    .filter(|n| !down.contains(n) && *n != c.me().id)
                    .collect();
                if nodes.is_empty() {
                    nodes = rec
                        .replicas
                        .iter()
                        .map(|r| r.node)
                        .filter(|n| *n != c.me().id)
                        .collect();
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

/// Serves a tenant's data request, made with the key `key_id`, on the
/// node where it belongs. A stale read served by a follower replica is
/// paid for from a grant of the shard leader's budget ([`Grants`]), so
/// the tenant's limits hold cluster-wide.
#[allow(clippy::too_many_arguments)]
pub async fn serve_tenant(
    db: &Database,
    c: &Arc<Cluster>,
    grants: &Grants,
    key_id: &str,
    tenant: &str,
    user: &str,
    req: Request,
    hops: u8,
) -> Result<Response> {
    let stale = matches!(req, Request::Stale(_));
    c.touch(db, tenant);
    // A request forwarded to a leader that dies (or loses leadership)
    // while it waits is routed again to the new leader, if that is safe:
    // reads, and writes under an exactly-once tag.
    let mut reroutes = 0;
    loop {
        let Route::Remote(node) = route(db, c, tenant, stale).await? else {
            break;
        };
        if hops >= MAX_HOPS {
            return Err(unavailable(format!(
                "shard of tenant {tenant} is moving; retry"
            )));
        }
        let fwd = PeerRequest::Forward {
            key_id: key_id.to_string(),
            tenant: tenant.to_string(),
            user: user.to_string(),
            hops: hops + 1,
            request: req.clone(),
        };
        let watched = (!stale)
            .then(|| db.loaded(tenant).and_then(|t| t.raft()))
            .flatten();
        let Some(raft) = watched else {
            return forward(c, node, &fwd).await;
        };
        let leader = raft.metrics().borrow_watched().current_leader;
        tokio::select! {
            r = forward(c, node, &fwd) => return r,
            () = leader_moves(&raft, leader) => {}
        }
        let safe =
            req.operation() != Some(OperationType::Write) || matches!(req, Request::Once { .. });
        reroutes += 1;
        if !safe || reroutes > 3 {
            return Err(unavailable(format!(
                "the shard leader of tenant {tenant} changed while the request was in flight; \
                 it may or may not have been applied"
            )));
        }
        tracing::info!(
            tenant,
            node,
            "shard leader changed under a forwarded request; routing it again"
        );
    }
    let s = db.session(tenant, user).await?;
    if stale {
        if let (Some(op), Some(leader)) = (req.operation(), follower_of(db, c, tenant)?) {
            let ask = Arc::new(LeaderNode {
                cluster: c.clone(),
                node: leader,
            });
            grants.admit_stale(tenant, op, ask).await?;
            return dispatch::data(&s.granted(), req).await;
        }
    }
    dispatch::data(&s, req).await
}

/// The client address of the node leading `tenant`'s shard, when that is
/// another node than this one: the hint a driver follows to send its
/// next requests there directly.
pub fn leader_hint(db: &Database, c: &Cluster, tenant: &str) -> Option<std::net::SocketAddr> {
    let node = db.loaded(tenant)?.leader_node()?;
    (node != c.me().id).then(|| c.client_addr(node)).flatten()
}

/// Resolves once `raft`'s view of its leader is no longer `leader`.
async fn leader_moves(raft: &crate::raft::ShardRaft, leader: Option<u64>) {
    let mut rx = raft.metrics();
    loop {
        if rx.borrow_watched().current_leader != leader {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// `Some(leader's node)` when this node's replica of `tenant` is a
/// follower; `None` when it leads. A follower that knows no leader
/// refuses: stale reads are paid from the leader's budget.
fn follower_of(db: &Database, c: &Cluster, tenant: &str) -> Result<Option<u64>> {
    let t = db.tenant(tenant)?;
    let raft = t.raft().ok_or_else(|| unavailable("replica not running"))?;
    if is_leader(&raft) {
        return Ok(None);
    }
    match t.leader_node() {
        Some(n) if n == c.me().id => Ok(None),
        Some(n) => Ok(Some(n)),
        None => Err(unavailable(format!(
            "shard of tenant {tenant} has no leader to draw a request budget from; retry"
        ))),
    }
}

/// Asks node `node` (the shard leader's) for grants.
struct LeaderNode {
    cluster: Arc<Cluster>,
    node: u64,
}

impl AskLeader for LeaderNode {
    fn ask(
        &self,
        tenant: &str,
        op: OperationType,
        want: u64,
        debt: u64,
    ) -> BoxFuture<'static, Result<u64>> {
        let (c, node) = (self.cluster.clone(), self.node);
        let req = PeerRequest::Grant {
            tenant: tenant.to_string(),
            op,
            want,
            debt,
        };
        Box::pin(async move {
            match c.net.call(node, &req, GRANT_TIMEOUT).await? {
                PeerResponse::Granted(r) => r,
                PeerResponse::Failed(e) => Err(e),
                other => Err(unavailable(format!("unexpected peer answer {other:?}"))),
            }
        })
    }
}

/// Serves an admin request made with the admin key `key_id`: on group
/// 0's leader, or for a tenant's usage, shard info, export and import, on
/// its shard leader (the authoritative counts and state). Forwards carry
/// the key; registry changes it makes through another node carry it too
/// ([`ADMIN_KEY`]). `key_id` is None only for a node's own `ShardInfo`
/// read.
pub async fn serve_admin(
    db: &Database,
    c: &Cluster,
    mover: &Mover,
    key_id: Option<&str>,
    req: Request,
    hops: u8,
) -> Result<Response> {
    match key_id {
        Some(k) => {
            ADMIN_KEY
                .scope(
                    k.to_string(),
                    serve_admin_as(db, c, mover, key_id, req, hops),
                )
                .await
        }
        None => serve_admin_as(db, c, mover, None, req, hops).await,
    }
}

async fn serve_admin_as(
    db: &Database,
    c: &Cluster,
    mover: &Mover,
    key_id: Option<&str>,
    req: Request,
    hops: u8,
) -> Result<Response> {
    let target = match &req {
        Request::ClusterNodes => return cluster_nodes(db, c).await.map(Response::ClusterNodes),
        Request::ListKeys(_) => None,
        Request::Usage(None) => {
            return usage_report(db, c, mover, key_id, hops)
                .await
                .map(Response::UsageReport)
        }
        Request::Usage(Some(t)) => match route(db, c, t, false).await? {
            Route::Local => {
                // Only a leader's counts are the tenant's: confirm it
                // still leads before answering from them.
                if let Some(raft) = db.loaded(t).and_then(|t| t.raft()) {
                    raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                }
                None
            }
            Route::Remote(n) => Some(n),
        },
        Request::PurgeOlderThan { tenant_id: t, .. }
        | Request::Analytics { tenant_id: t, .. }
        | Request::ShardInfo(t)
        | Request::ExportOpen(crate::proto::migrate::ExportOpen { tenant_id: t, .. })
        | Request::ExportPage(crate::proto::migrate::ExportPageRequest { tenant_id: t, .. })
        | Request::ExportClose { tenant_id: t, .. }
        | Request::Import(crate::proto::migrate::ImportRequest { tenant_id: t, .. }) => {
            match route(db, c, t, false).await? {
                Route::Local => None,
                Route::Remote(n) => Some(n),
            }
        }
        _ => {
            let deadline = Instant::now() + LEADER_WAIT;
            loop {
                if is_leader(c.meta_raft()) {
                    // Serve on current metadata.
                    c.meta_raft()
                        .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                        .await
                        .map_err(|e| unavailable(e.to_string()))?;
                    break None;
                }
                if let Some(l) = c.meta_leader().filter(|l| *l != c.me().id) {
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
            Request::RemoveNode { id, force } => {
                c.remove_node(db, id, force).await.map(Response::Removed)
            }
            Request::ShardInfo(t) => {
                shard_info(db, c, &t).map(|i| Response::ShardInfo(Box::new(i)))
            }
            Request::MoveTenant { tenant, to, from } => mover
                .register(db, &tenant, to, from, "move")
                .await
                .map(Response::Job),
            Request::Analytics {
                tenant_id,
                from_ms,
                to_ms,
            } => analytics(db, c, key_id, &tenant_id, from_ms, to_ms)
                .await
                .map(|r| Response::Analytics(Box::new(r))),
            Request::ListJobs => mover.jobs(db).map(Response::Jobs),
            Request::GetJob(id) => mover.job(db, id).map(Response::Job),
            Request::CancelJob(id) => mover.cancel(db, id).await.map(Response::Job),
            Request::Rebalance { dry_run } => mover
                .rebalance(db, c, dry_run, "rebalance")
                .await
                .map(Response::Plan),
            Request::DrainNode(id) => mover.drain(db, c, id).await.map(Response::Plan),
            req => dispatch::admin(db, req, key_id).await,
        },
        Some(node) => {
            if hops >= MAX_HOPS {
                return Err(unavailable("metadata leader is moving; retry"));
            }
            let fwd = PeerRequest::Admin {
                key_id: key_id.map(str::to_string),
                request: req,
                hops: hops + 1,
            };
            forward(c, node, &fwd).await
        }
    }
}

/// Every tenant's usage, cluster-wide: each from its shard leader (here
/// or forwarded), 16 at a time, by tenant id.
async fn usage_report(
    db: &Database,
    c: &Cluster,
    mover: &Mover,
    key_id: Option<&str>,
    hops: u8,
) -> Result<crate::proto::UsageReport> {
    use futures::StreamExt;
    let ids: Vec<String> = db
        .list_tenants()
        .await?
        .into_iter()
        .map(|cfg| cfg.tenant_id)
        .collect();
    let answers: Vec<(String, Result<Response>)> = futures::stream::iter(ids)
        .map(|t| async move {
            let req = Request::Usage(Some(t.clone()));
            let r = Box::pin(serve_admin_as(db, c, mover, key_id, req, hops)).await;
            (t, r)
        })
        .buffered(16)
        .collect()
        .await;
    let mut report = crate::proto::UsageReport::default();
    for (t, r) in answers {
        match r {
            Ok(Response::Usage(u)) => report.tenants.push(*u),
            Ok(other) => report
                .unavailable
                .push((t, Error::storage(format!("unexpected answer {other:?}")))),
            Err(e) => report.unavailable.push((t, e)),
        }
    }
    Ok(report)
}

fn shard_info(db: &Database, c: &Cluster, tenant: &str) -> Result<ShardInfo> {
    let t = db.tenant(tenant)?;
    let raft = t.raft().ok_or_else(|| unavailable("replica not running"))?;
    let m = raft.metrics();
    let m = m.borrow_watched();
    let mem = m.membership_config.membership();
    let voters: Vec<u64> = mem.voter_ids().collect();
    let learners: Vec<u64> = mem.learner_ids().collect();
    let replicas: Vec<(u64, u64)> = t.replicas().iter().map(|r| (r.id, r.node)).collect();
    let leading = m.state == openraft::ServerState::Leader;
    let matched = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, l)| (*id, l.as_ref().map(|l| l.index).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    Ok(ShardInfo {
        tenant_id: tenant.to_string(),
        group: t.group(),
        leader_node: m
            .current_leader
            .and_then(|l| replicas.iter().find(|r| r.0 == l).map(|r| r.1)),
        replicas,
        voters,
        answered_by: c.me().id,
        quiesced: t.quiesced().load(std::sync::atomic::Ordering::Acquire),
        learners,
        joint: mem.get_joint_config().len() > 1,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        matched,
        snapshots: if leading {
            c.net.snapshot_progress(t.group())
        } else {
            Vec::new()
        },
        usage: t.data().map(|d| d.usage()).unwrap_or_default(),
        replication_factor: db.config().cluster.replication_factor as u64,
        term: m.current_term,
    })
}

/// A tenant group's status as its leader sees it (routed there).
pub(crate) async fn shard_status(db: &Database, c: &Cluster, tenant: &str) -> Result<ShardInfo> {
    match route(db, c, tenant, false).await? {
        Route::Local => shard_info(db, c, tenant),
        Route::Remote(n) => {
            let req = PeerRequest::Admin {
                key_id: ADMIN_KEY.try_with(|k| k.clone()).ok(),
                request: Request::ShardInfo(tenant.to_string()),
                hops: 1,
            };
            match forward(c, n, &req).await? {
                Response::ShardInfo(i) => Ok(*i),
                other => Err(unavailable(format!("unexpected answer {other:?}"))),
            }
        }
    }
}

/// Every node with its role in group 0, its replica count (from the
/// registry) and how many tenant groups it leads (asked of each live
/// node).
/// A2 on a cluster, on the tenant's shard leader: every live node's
/// history of the tenant (this node's read here, the others' asked over
/// the peer transport with the admin's key), added up into the report.
async fn analytics(
    db: &Database,
    c: &Cluster,
    key_id: Option<&str>,
    tenant: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<crate::proto::AnalyticsReport> {
    let Some(key_id) = key_id else {
        return Err(Error::PermissionDenied {
            reason: "an analytics report needs an admin key".into(),
        });
    };
    let res = db.analytics_range(from_ms, to_ms)?;
    let me = c.me().id;
    let live: Vec<u64> = db
        .registry()?
        .nodes()?
        .into_iter()
        .filter(|n| !n.removed && n.id != me)
        .map(|n| n.id)
        .collect();
    let req = PeerRequest::History {
        key_id: key_id.to_string(),
        tenant: tenant.to_string(),
        minutes: res == crate::db::Resolution::Minute,
        from_ms,
        to_ms,
    };
    let asks = live.iter().map(|&n| {
        let req = &req;
        async move {
            let r = c.net.call(n, req, Duration::from_secs(5)).await;
            (n, r)
        }
    });
    let mut series = vec![db.history_local(tenant, res, from_ms, to_ms)?];
    let mut missing = Vec::new();
    for (n, r) in futures::future::join_all(asks).await {
        match r {
            Ok(PeerResponse::History(Ok(s))) => series.push(s),
            other => {
                tracing::info!(node = n, answer = ?other, "analytics: a node's history is missing");
                missing.push(n);
            }
        }
    }
    db.analytics_report(tenant, res, from_ms, to_ms, series, missing)
        .await
}

async fn cluster_nodes(db: &Database, c: &Cluster) -> Result<Vec<ClusterNode>> {
    let (voters, leader): (BTreeSet<u64>, Option<u64>) = {
        let m = c.meta_raft().metrics();
        let m = m.borrow_watched();
        (
            m.membership_config.membership().voter_ids().collect(),
            m.current_leader,
        )
    };
    let reg = db.registry()?;
    let nodes = reg.nodes()?;
    let mut replicas: HashMap<u64, u64> = HashMap::new();
    for t in reg.tenants()? {
        for r in &t.replicas {
            *replicas.entry(r.node).or_default() += 1;
        }
    }
    let live: Vec<u64> = nodes.iter().filter(|n| !n.removed).map(|n| n.id).collect();
    let (led, answered) = super::moves::leaders_answered(db, c, &live).await;
    let mut leads: HashMap<u64, u64> = HashMap::new();
    for node in led.into_values() {
        *leads.entry(node).or_default() += 1;
    }
    Ok(nodes
        .into_iter()
        .map(|n| ClusterNode {
            voter: voters.contains(&n.id),
            leader: leader == Some(n.id),
            draining: n.draining,
            replicas: replicas.get(&n.id).copied().unwrap_or(0),
            leads: answered
                .contains(&n.id)
                .then(|| leads.get(&n.id).copied().unwrap_or(0)),
            id: n.id,
            peer_addr: n.peer_addr,
            client_addr: n.client_addr,
            removed: n.removed,
        })
        .collect())
}

/// Sends a forwarded request and unwraps the response it carries back.
async fn forward(c: &Cluster, node: u64, req: &PeerRequest) -> Result<Response> {
    match c.net.call(node, req, FORWARD_TIMEOUT).await? {
        PeerResponse::Reply(r) => r,
        PeerResponse::Failed(e) => Err(e),
        other => Err(unavailable(format!("unexpected peer answer {other:?}"))),
    }
}

/// Serves the requests other nodes forward here (the cluster's peer
/// service calls it), and grants from the budgets of tenants whose shard
/// this node leads.
pub struct PeerRequests {
    /// The node's grant state (shared with its router).
    pub grants: Arc<Grants>,
    /// The node's move-job driver (shared with its router).
    pub mover: Arc<Mover>,
}

impl Forwarded for PeerRequests {
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
    ) -> BoxFuture<'static, Result<Response>> {
        let grants = self.grants.clone();
        Box::pin(async move {
            // The node that forwarded it checked the key; so does this one.
            let key = db.key_for_peer(&key_id).await?;
            dispatch::key_reaches(&key, &tenant, &user, &req)?;
            serve_tenant(&db, &cluster, &grants, &key_id, &tenant, &user, req, hops).await
        })
    }

    fn admin(
        &self,
        db: Database,
        cluster: Arc<Cluster>,
        key_id: Option<String>,
        req: Request,
        hops: u8,
    ) -> BoxFuture<'static, Result<Response>> {
        let mover = self.mover.clone();
        Box::pin(
            async move { serve_admin(&db, &cluster, &mover, key_id.as_deref(), req, hops).await },
        )
    }

    fn grant(
        &self,
        db: Database,
        from: u64,
        tenant: String,
        op: OperationType,
        want: u64,
        debt: u64,
    ) -> BoxFuture<'static, Result<u64>> {
        let grants = self.grants.clone();
        Box::pin(async move { grants.serve(&db, from, &tenant, op, want, debt).await })
    }
}
