//! Membership: joining the cluster, admitting and removing nodes, and
//! bringing a raft group's voters to the record.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use parking_lot::Mutex;

use crate::db::{Database, NodeRecord, Registry, Replica, TenantRecord, TenantState};
use crate::net::peer::{PeerRequest, PeerResponse};
use crate::proto::wire::NodeRemoval;
use crate::proto::{Error, Result};
use crate::raft::ShardRaft;
use crate::shard::is_leader;

use super::placement::{least_loaded, replica_load};
use super::{member, parse_addr, unavailable, Cluster, FORWARD_TIMEOUT, MAX_HOPS};

/// A learner is promoted to voter only once its matched log index is
/// within this many entries of the leader's last.
const PROMOTE_WITHIN: u64 = 100;

impl Cluster {
    pub(super) fn refresh_addrs(&self, reg: &Registry) {
        if let Ok(nodes) = reg.nodes() {
            self.learn_peers(&nodes);
            let mut clients = std::collections::HashMap::new();
            for n in &nodes {
                if let Ok(a) = n.client_addr.parse::<std::net::SocketAddr>() {
                    if !a.ip().is_unspecified() && !n.removed {
                        clients.insert(n.id, a);
                    }
                }
            }
            *self.client_addrs.write() = clients;
            for n in nodes {
                if n.id != self.me.id {
                    if let Ok(a) = n.peer_addr.parse() {
                        self.net.set_addr(n.id, a);
                    }
                }
            }
        }
    }

    pub(super) async fn join(&self, through: &[String]) -> Result<()> {
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
                        // The leader's records: whom to take group 0's
                        // log from before this node's own copy has them.
                        self.learn_peers(&nodes);
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
                    Ok(PeerResponse::Refused(why))
                    | Err(crate::net::peer::PeerError::Refused { reason: why, .. }) => {
                        tracing::error!(node = self.me.id, through = %addr, reason = %why, "the cluster refuses this node");
                        return Err(Error::PermissionDenied {
                            reason: format!("the cluster refuses this node: {why}"),
                        });
                    }
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

    /// Asks the known live nodes for the node records, the way a join
    /// does (at most once every 5 s, in the background). Called when a
    /// node unknown here sends group 0's raft messages: this node's copy
    /// of the registry may be behind (it was down while that node joined,
    /// and that node now leads group 0), and without the record it would
    /// refuse the log that brings it.
    pub(super) fn relearn_peers(self: &Arc<Self>) {
        {
            let mut last = self.relearned.lock();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let c = self.clone();
        tokio::spawn(async move {
            let known: Vec<u64> = c
                .peers
                .read()
                .values()
                .filter(|n| !n.removed && n.id != c.me.id)
                .map(|n| n.id)
                .collect();
            let req = PeerRequest::Join(c.me.clone());
            for n in known {
                if let Ok(PeerResponse::Joined(Ok(nodes))) =
                    c.net.call(n, &req, Duration::from_secs(5)).await
                {
                    c.learn_peers(&nodes);
                    tracing::info!(through = n, nodes = nodes.len(), "node records refreshed");
                    return;
                }
            }
        });
    }

    /// Admits a node (on group 0's leader): records it; the reconcile
    /// loop adds it to group 0. `from` is the node whose certificate sent
    /// the join: the joiner itself, or a member relaying it, in which case
    /// group 0's leader first confirms the joiner at its address.
    pub(super) async fn handle_join(
        &self,
        db: &Database,
        rec: NodeRecord,
        from: u64,
        hops: u8,
    ) -> Result<Vec<NodeRecord>> {
        let c = self;
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
                PeerResponse::Refused(why) => Err(Error::PermissionDenied {
                    reason: why.to_string(),
                }),
                other => Err(unavailable(format!("unexpected peer answer {other:?}"))),
            };
        }
        let reg = db.registry()?;
        if rec.id == 0 {
            return Err(Error::invalid("node_id", "must be at least 1"));
        }
        if rec.incarnation == 0 {
            return Err(Error::invalid(
                "incarnation",
                "a joining node presents the incarnation of its data directory",
            ));
        }
        if from != rec.id {
            self.confirm_joiner(&rec).await?;
        }
        let mut rec = rec;
        rec.removed = false;
        if let Some(old) = reg.nodes()?.into_iter().find(|n| n.id == rec.id) {
            if let Err(why) = super::peers::check_record(&old, rec.incarnation) {
                tracing::warn!(node = rec.id, reason = %why, "join refused");
                return Err(Error::PermissionDenied {
                    reason: why.to_string(),
                });
            }
            // A node joining again keeps what the admin set.
            rec.draining = old.draining;
            if old.incarnation == 0 {
                tracing::info!(node = rec.id, incarnation = %format!("{:016x}", rec.incarnation), "node record without an incarnation (older version) now holds one");
            }
        }
        reg.put_node(&rec).await?;
        c.learn_peers(std::slice::from_ref(&rec));
        if let Ok(a) = rec.peer_addr.parse() {
            c.net.set_addr(rec.id, a);
        }
        tracing::info!(node = rec.id, peer = %rec.peer_addr, "node joined");
        reg.nodes()
    }

    /// Confirms a join relayed by another member: `rec`'s node answers at
    /// its peer address, with a certificate naming it and the incarnation
    /// the join claims. Without this a member could record any node id at
    /// any address.
    async fn confirm_joiner(&self, rec: &NodeRecord) -> Result<()> {
        let addr: std::net::SocketAddr = rec.peer_addr.parse().map_err(|_| {
            Error::invalid(
                "peer_addr",
                format!("{:?} is not a socket address", rec.peer_addr),
            )
        })?;
        match tokio::time::timeout(Duration::from_secs(10), self.net.verify_node(addr, rec.id))
            .await
        {
            Ok(Ok(inc)) if inc == rec.incarnation => Ok(()),
            Ok(Ok(inc)) => {
                tracing::warn!(node = rec.id, %addr, claimed = %format!("{:016x}", rec.incarnation), found = %format!("{inc:016x}"), "relayed join refused: another incarnation answers there");
                Err(Error::PermissionDenied {
                    reason: format!(
                        "node {} at {addr} presents incarnation {inc:016x}, not the {:016x} its join claims",
                        rec.id, rec.incarnation
                    ),
                })
            }
            Ok(Err(e)) => Err(unavailable(format!(
                "could not confirm joining node {} at {addr}: {e}",
                rec.id
            ))),
            Err(_) => Err(unavailable(format!(
                "could not confirm joining node {} at {addr}: no answer within 10 s",
                rec.id
            ))),
        }
    }

    /// Removes node `id`: marks it removed and places each of its tenant
    /// replicas on the least loaded live node holding none of that group.
    /// A node that answers its peers is refused unless `force` (drain it
    /// instead: its replicas move while it serves). Tenants with no live
    /// node to place on are reported as under-replicated; the router's
    /// mover brings them up to the replication factor when a node joins.
    pub async fn remove_node(&self, db: &Database, id: u64, force: bool) -> Result<NodeRemoval> {
        let c = self;
        if id == c.me.id {
            return Err(Error::invalid(
                "node",
                "a node cannot remove itself; ask another node",
            ));
        }
        if !force && c.answers(id).await {
            return Err(Error::invalid(
                "node",
                format!(
                    "node {id} is alive and answers its peers: drain it first \
                     (`vektagraf node drain {id}`), stop it, or remove it with --force"
                ),
            ));
        }
        let _g = db.lock_lifecycle().await;
        let reg = db.registry()?;
        let mut node = reg
            .nodes()?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::not_found("node", id.to_string()))?;
        node.removed = true;
        reg.put_node(&node).await?;
        c.learn_peers(std::slice::from_ref(&node));
        let live = placeable(&reg)?;
        let mut out = NodeRemoval {
            node: id,
            replaced: Vec::new(),
            under_replicated: Vec::new(),
        };
        let tenants = reg.tenants()?;
        // Kept current as replicas are placed (the dead node is no target).
        let mut load = replica_load(&tenants);
        for mut rec in tenants {
            if !rec.replicas.iter().any(|r| r.node == id) {
                continue;
            }
            rec.replicas.retain(|r| r.node != id);
            let tenant = rec.config.tenant_id.clone();
            if place_replica(&reg, &mut rec, &live, &mut load)
                .await?
                .is_some()
            {
                out.replaced.push(tenant);
            } else {
                tracing::warn!(tenant = %tenant, node = id, "no live node to place the replica on: under-replicated");
                out.under_replicated.push(tenant);
            }
            reg.put_tenant(&rec).await?;
        }
        tracing::info!(
            node = id,
            replaced = out.replaced.len(),
            under_replicated = out.under_replicated.len(),
            forced = force,
            "node removed"
        );
        Ok(out)
    }

    /// Brings tenants with fewer voters than the replication factor up to
    /// it, one replica each, on the least loaded live nodes (none while a
    /// move job of that tenant runs). Returns the tenants given a replica.
    pub async fn top_up(&self, db: &Database, busy: &HashSet<String>) -> Result<Vec<String>> {
        let _g = db.lock_lifecycle().await;
        let reg = db.registry()?;
        let live = placeable(&reg)?;
        let tenants = reg.tenants()?;
        let mut load = replica_load(&tenants);
        let mut out = Vec::new();
        for mut rec in tenants {
            let voters = rec.replicas.iter().filter(|r| !r.learner).count();
            if rec.state != TenantState::Active
                || voters >= self.settings.replication_factor
                || busy.contains(&rec.config.tenant_id)
            {
                continue;
            }
            let Some(node) = place_replica(&reg, &mut rec, &live, &mut load).await? else {
                continue;
            };
            tracing::info!(tenant = %rec.config.tenant_id, node, voters, "under-replicated tenant: adding a replica");
            reg.put_tenant(&rec).await?;
            out.push(rec.config.tenant_id.clone());
        }
        Ok(out)
    }

    /// Whether node `id` answers a peer request within two seconds.
    async fn answers(&self, id: u64) -> bool {
        self.net
            .call(id, &PeerRequest::Leading, Duration::from_secs(2))
            .await
            .is_ok()
    }

    /// Spawns a membership change of `raft` (group `group`) to exactly
    /// `voters` and `learners` (replica id → node), unless one is already
    /// running. New voters are added as learners first and promoted once
    /// they hold the log; wanted learners are added without waiting;
    /// members in neither map are removed.
    pub(super) fn converge_membership(
        &self,
        group: u64,
        raft: ShardRaft,
        voters: BTreeMap<u64, u64>,
        learners: BTreeMap<u64, u64>,
    ) {
        let (current, nodes) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.state != openraft::ServerState::Leader {
                return;
            }
            let mem = m.membership_config.membership();
            let voters: BTreeSet<u64> = mem.voter_ids().collect();
            let nodes: BTreeSet<u64> = mem.nodes().map(|(id, _)| *id).collect();
            (voters, nodes)
        };
        let want: BTreeSet<u64> = voters.keys().copied().collect();
        let all: BTreeSet<u64> = want.iter().chain(learners.keys()).copied().collect();
        if want.is_empty() || (current == want && nodes == all) {
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
            for (id, node) in &learners {
                if !nodes.contains(id) {
                    if let Err(e) = raft.add_learner(*id, member(*node), false).await {
                        tracing::info!(group, replica = id, error = %e, "adding learner failed; will retry");
                        return;
                    }
                    tracing::info!(group, replica = id, node, "learner added");
                }
            }
            for (id, node) in &voters {
                if !nodes.contains(id) {
                    if let Err(e) = raft.add_learner(*id, member(*node), true).await {
                        tracing::info!(group, replica = id, error = %e, "adding learner failed; will retry");
                        return;
                    }
                }
            }
            if current != want {
                // add_learner(blocking) returns after a while even when the
                // learner has not caught up (or never answered): promote
                // only learners the leader has brought near its log, so a
                // node that joined and died cannot become a voter the
                // group needs for its quorum. The next pass tries again.
                let behind: Vec<u64> = {
                    let m = raft.metrics();
                    let m = m.borrow_watched();
                    let last = m.last_log_index.unwrap_or(0);
                    want.iter()
                        .filter(|id| !current.contains(id))
                        .filter(|id| {
                            let matched = m
                                .replication
                                .as_ref()
                                .and_then(|r| r.get(*id).cloned().flatten())
                                .map_or(0, |l| l.index);
                            matched.saturating_add(PROMOTE_WITHIN) < last
                        })
                        .copied()
                        .collect()
                };
                if !behind.is_empty() {
                    tracing::debug!(group, ?behind, "learners not caught up yet; not promoting");
                    return;
                }
                match raft
                    .change_membership(ChangeMembers::ReplaceAllVoters(want.clone()), false)
                    .await
                {
                    Ok(_) => tracing::info!(group, voters = ?want, "membership changed"),
                    Err(e) => {
                        tracing::info!(group, error = %e, "membership change failed; will retry");
                        return;
                    }
                }
            }
            let extra: BTreeSet<u64> = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                let mem = m.membership_config.membership();
                let voters: BTreeSet<u64> = mem.voter_ids().collect();
                mem.nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| !all.contains(id) && !voters.contains(id))
                    .collect()
            };
            if !extra.is_empty() {
                match raft
                    .change_membership(ChangeMembers::RemoveNodes(extra.clone()), false)
                    .await
                {
                    Ok(_) => tracing::info!(group, removed = ?extra, "learners removed"),
                    Err(e) => {
                        tracing::info!(group, error = %e, "removing learners failed; will retry")
                    }
                }
            }
        });
    }

    /// Hands the leadership of `group` (led by this node's replica) to
    /// replica `to`.
    pub async fn transfer_leader(&self, db: &Database, group: u64, to: u64) -> Result<()> {
        let raft = self
            .group_raft(db, group)
            .ok_or_else(|| unavailable(format!("group {group} has no replica on this node")))?;
        if !is_leader(&raft) {
            return Err(unavailable(format!(
                "this node does not lead group {group}"
            )));
        }
        self.wake_group(db, group);
        raft.trigger()
            .transfer_leader(to)
            .await
            .map_err(crate::raft::raft_err)?;
        tracing::info!(group, to, "leadership transfer started");
        Ok(())
    }
}

/// Releases a group's membership-change slot when its task ends.
pub(super) struct BusyGuard {
    pub(super) busy: Arc<Mutex<HashSet<u64>>>,
    pub(super) group: u64,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.busy.lock().remove(&self.group);
    }
}

/// Live nodes that may take new replicas (not removed, not draining).
fn placeable(reg: &Registry) -> Result<Vec<u64>> {
    Ok(reg
        .nodes()?
        .into_iter()
        .filter(|n| !n.removed && !n.draining)
        .map(|n| n.id)
        .collect())
}

/// Adds a voter replica of `rec`'s group on the least loaded of `live`
/// holding none (a new replica id; `load` counts it). Returns its node,
/// or None when every live node already holds one.
async fn place_replica(
    reg: &Registry,
    rec: &mut TenantRecord,
    live: &[u64],
    load: &mut HashMap<u64, usize>,
) -> Result<Option<u64>> {
    let Some(node) = least_loaded(live, load, rec) else {
        return Ok(None);
    };
    let id = reg.take_id("replica").await?;
    *load.entry(node).or_insert(0) += 1;
    rec.replicas.push(Replica {
        id,
        node,
        initial: false,
        learner: false,
    });
    Ok(Some(node))
}
