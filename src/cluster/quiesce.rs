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
/// to every other node; a node unanswered for [`DOWN_AFTER`] counts as
/// down and the quiesced groups it led wake up.
pub(super) fn spawn_probe(db: &Database, cluster: &Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    let (weak, cluster) = (db.downgrade(), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut last_ok: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
        let mut down: HashSet<u64> = HashSet::new();
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let Some(db) = weak.upgrade() else { return };
            if !db.is_clustered() {
                return;
            }
            let Some(c) = cluster.upgrade() else { return };
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

    /// Wakes quiesced local replicas of groups whose leader is on `node`.
    pub(crate) fn wake_groups_led_by(&self, db: &Database, node: u64) {
        let tenants = db.loaded_tenants();
        let mut woken = 0;
        for t in tenants {
            if !t.quiesced().load(Ordering::Acquire) {
                continue;
            }
            let Some(raft) = t.raft() else { continue };
            let leader = raft.metrics().borrow_watched().current_leader;
            let on_node =
                leader.is_none_or(|l| t.replicas().iter().any(|r| r.id == l && r.node == node));
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
    pub fn touch(&self, db: &Database, tenant: &str) {
        if let Some(t) = db.loaded(tenant) {
            t.last_active()
                .store(crate::util::coarse_now_ms(), Ordering::Relaxed);
            wake(&t);
        }
    }

    /// Wakes this node's replica of `group` if it is quiesced (a raft
    /// message for it arrived).
    pub(super) fn wake_group(&self, db: &Database, group: u64) {
        if let Some(t) = db.loaded_group(group) {
            wake(&t);
        }
    }
}

/// Restarts a quiesced replica's raft ticks.
pub(super) fn wake(t: &Tenant) {
    if t.quiesced().load(Ordering::Acquire) && t.quiesced().swap(false, Ordering::AcqRel) {
        if let Some(raft) = t.raft() {
            raft.runtime_config().tick(true);
        }
    }
}
