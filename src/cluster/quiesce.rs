//! Quiescence: a shard group with no request for [`QUIESCE_AFTER`]
//! stops its raft ticks (its leader asks each follower; a follower that
//! holds the leader's whole log agrees). Any request or raft message for
//! the group wakes it, and the liveness probe wakes the groups a node led
//! when it stops answering.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::db::{Database, Tenant, TenantRecord};
use crate::net::peer::{PeerRequest, PeerResponse};
use crate::raft::ShardRaft;

use super::membership::BusyGuard;
use super::{Cluster, DOWN_AFTER, PROBE_EVERY};

/// A shard group with no request for this long quiesces: its replicas
/// stop their raft ticks, so an idle tenant sends no heartbeats.
pub const QUIESCE_AFTER: Duration = Duration::from_secs(10);

/// Starts the liveness probe of `cluster`: every [`PROBE_EVERY`] a ping
/// to every other node that answered no other call since the last look
/// (a group-0 leader's heartbeats answer for its followers); a node
/// unanswered for [`DOWN_AFTER`] counts as down and the quiesced groups
/// it led wake up.
pub(super) fn spawn_probe(db: &Database, cluster: &Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    let (weak, cluster) = (db.downgrade(), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut last_ok: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
        let mut down: HashSet<u64> = HashSet::new();
        // The other nodes, read again only when group 0 changed.
        let mut peers: Option<(u64, Vec<u64>)> = None;
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(db) = weak.upgrade() else { return };
            if !db.is_clustered() {
                return;
            }
            let Some(c) = cluster.upgrade() else { return };
            let applied = c.meta_applied();
            if peers.as_ref().is_none_or(|(at, _)| *at != applied) {
                let Ok(nodes) = db.registry().and_then(|r| r.nodes()) else {
                    continue;
                };
                let ids = nodes
                    .iter()
                    .filter(|n| !n.removed && n.id != c.me.id)
                    .map(|n| n.id)
                    .collect();
                peers = Some((applied, ids));
            }
            let ids = peers
                .as_ref()
                .map(|(_, p)| p.as_slice())
                .unwrap_or_default();
            let probes = ids.iter().map(|n| {
                let c = c.clone();
                let n = *n;
                async move {
                    let ok = c.net.answered_within(n, PROBE_EVERY)
                        || matches!(
                            c.net.call(n, &PeerRequest::Ping, DOWN_AFTER / 2).await,
                            Ok(PeerResponse::Pong)
                        );
                    (n, ok)
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
                    c.wake_groups_led_by(&db, n);
                }
            }
        }
    })
}

impl Cluster {
    /// Quiesces an idle group this node leads once every follower holds
    /// its whole log and agrees.
    pub(super) fn maybe_quiesce(&self, t: &Arc<Tenant>, raft: &ShardRaft, rec: &TenantRecord) {
        if t.quiesced().load(Ordering::Acquire) {
            return;
        }
        let c = self;
        let idle =
            crate::util::coarse_now_ms().saturating_sub(t.last_active().load(Ordering::Relaxed));
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
            // The exact request counts replace the leader's unused
            // reservation first, so a replica that hibernates later has
            // nothing to write; a pass after the entry is replicated
            // quiesces.
            match t.settle_quota(Duration::from_secs(5)).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => {
                    tracing::debug!(group, error = %e, "request counts not settled; not quiescing yet");
                    return;
                }
            }
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
            let idle = crate::util::coarse_now_ms()
                .saturating_sub(t.last_active().load(Ordering::Relaxed));
            if idle >= QUIESCE_AFTER.as_millis() as u64
                && raft.metrics().borrow_watched().last_log_index.unwrap_or(0) == last_index
            {
                t.quiesced().store(true, Ordering::Release);
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
    pub(super) fn quiesce_follower(
        &self,
        db: &Database,
        group: u64,
        leader: u64,
        last_index: u64,
    ) -> bool {
        let Some(t) = db.loaded_group(group) else {
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
            t.quiesced().store(true, Ordering::Release);
            raft.runtime_config().tick(false);
        }
        ok
    }

    /// Wakes quiesced local replicas of groups whose leader is on `node`,
    /// at most `cluster.wake_per_s` a second (each then campaigns when
    /// its election timeout passes). Replicas asleep here are left to
    /// their first request ([`Cluster::after_reopen`]).
    pub(crate) fn wake_groups_led_by(&self, db: &Database, node: u64) {
        let led: Vec<Arc<Tenant>> = db
            .loaded_tenants()
            .into_iter()
            .filter(|t| {
                if !t.quiesced().load(Ordering::Acquire) {
                    return false;
                }
                let Some(raft) = t.raft() else { return false };
                let leader = raft.metrics().borrow_watched().current_leader;
                leader.is_none_or(|l| t.replicas().iter().any(|r| r.id == l && r.node == node))
            })
            .collect();
        if led.is_empty() {
            return;
        }
        let per_s = self.settings.wake_per_s.max(1) as usize;
        tracing::info!(
            node,
            groups = led.len(),
            per_s,
            "waking the quiesced groups a down node led"
        );
        tokio::spawn(async move {
            // Batches every 50 ms: per_s / 20 groups each.
            let batch = per_s.div_ceil(20);
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for chunk in led.chunks(batch) {
                tick.tick().await;
                for t in chunk {
                    t.resume_ticks();
                }
            }
        });
    }

    /// Marks a local replica active (a request arrived) and wakes it.
    pub fn touch(&self, db: &Database, tenant: &str) {
        if let Some(t) = db.loaded(tenant) {
            t.wake();
        }
    }

    /// Wakes this node's replica of `group` if it is quiesced (a raft
    /// message for it arrived).
    pub(super) fn wake_group(&self, db: &Database, group: u64) {
        if let Some(t) = db.loaded_group(group) {
            t.resume_ticks();
        }
    }
}

impl Cluster {
    /// A replica reopened from hibernation for a request: when its leader
    /// is on a node that is down, it campaigns at once instead of waiting
    /// out an election timeout. The groups a dead node led stay asleep
    /// here until they are used, so they elect one at a time as their
    /// tenants come back, never all at once.
    pub(crate) async fn after_reopen(&self, t: &Tenant) {
        let Some(raft) = t.raft() else { return };
        let Some(node) = t.leader_node() else { return };
        if node != self.me.id && self.down.read().contains(&node) {
            tracing::info!(
                group = t.group(),
                node,
                "reopened replica's leader is on a down node; campaigning"
            );
            let _ = raft.trigger().elect(false).await;
        }
    }

    /// The node of the replica that campaigns first in a group that never
    /// had a leader (loaded asleep when its tenant was created, and
    /// opened by a request here): a request goes there, where opening
    /// the replica starts the first election. None when that is this node
    /// or the group has had a leader.
    pub(crate) fn first_replica_of_new_group(&self, t: &Tenant, raft: &ShardRaft) -> Option<u64> {
        let (no_leader, fresh) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_leader.is_none(),
                m.last_applied.is_none_or(|l| l.index == 0),
            )
        };
        if !(no_leader && fresh) {
            return None;
        }
        // `raft::start_replicated_group`: the lowest initial replica id.
        t.replicas()
            .iter()
            .filter(|r| r.initial)
            .min_by_key(|r| r.id)
            .map(|r| r.node)
            .filter(|n| *n != self.me.id)
    }

    /// Loads this node's replica of `rec` (asleep when hibernation is on)
    /// unless it already is: a request for a tenant created moments ago
    /// need not wait for the reconcile loop. An asleep load opens nothing
    /// and keeps the first of two racing loads; an open one waits for the
    /// reconcile pass under way.
    pub(crate) async fn load_here(
        &self,
        db: &Database,
        rec: &TenantRecord,
    ) -> crate::proto::Result<()> {
        let _one_at_a_time = match db.hibernation_on() {
            true => None,
            false => Some(self.reconciling.lock().await),
        };
        if db.loaded(&rec.config.tenant_id).is_some() {
            return Ok(());
        }
        let (replica, net) = self.replica_net(rec)?;
        db.open_replica(rec, replica, net).await
    }
}
