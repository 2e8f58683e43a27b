//! The reconcile loop: every [`TICK`] (and at once when group 0
//! changes), bring this node's replicas, and on leaders the group
//! memberships and storage limits, up to the metadata.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::db::{Database, Replica, TenantRecord, TenantState};
use crate::proto::Result;
use crate::shard::is_leader;
use crate::storage::Command;

use super::quiesce::wake;
use super::{member, Cluster, TICK};

/// Starts the loop of `cluster` over `db`; it ends when either is gone.
pub(super) fn spawn_loop(db: &Database, cluster: &Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    let (weak, cluster) = (db.downgrade(), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut last_applied = None;
        let mut last_full = Instant::now() - Duration::from_secs(60);
        loop {
            tokio::time::sleep(TICK).await;
            let Some(db) = weak.upgrade() else { return };
            if !db.is_clustered() {
                return;
            }
            let Some(c) = cluster.upgrade() else { return };
            let applied = c.meta.metrics().borrow_watched().last_applied;
            // The full pass re-reads every record: only when group 0
            // changed, or every few seconds for the leaders' duties.
            let changed = applied != last_applied;
            if changed || last_full.elapsed() > Duration::from_secs(2) {
                last_applied = applied;
                last_full = Instant::now();
                if let Err(e) = c.reconcile(&db, changed).await {
                    tracing::warn!(error = %e, "reconcile failed; retrying");
                }
            }
        }
    })
}

impl Cluster {
    /// Brings this node's replicas and (on leaders) memberships up to the
    /// metadata. `full`: group 0 changed since the last pass.
    pub(super) async fn reconcile(&self, db: &Database, full: bool) -> Result<()> {
        let c = self;
        let _one_at_a_time = c.reconciling.lock().await;
        let reg = db.registry()?;
        c.refresh_addrs(&reg);
        if full {
            db.load_keys()?;
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
            let learners = live
                .iter()
                .filter(|n| !voters.contains(n))
                .map(|n| (*n, *n))
                .collect();
            c.converge_membership(
                0,
                c.meta.clone(),
                voters.into_iter().map(|v| (v, v)).collect(),
                learners,
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
            let loaded = db.loaded(id);
            let t = match loaded {
                Some(t) if t.group() == rec.group => t,
                Some(_) => continue,
                None => {
                    let opened = match c.replica_net(rec) {
                        Ok((replica, net)) => db.open_replica(rec, replica, net).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = opened {
                        tracing::warn!(tenant = %id, error = %e, "could not start replica");
                    }
                    continue;
                }
            };
            t.sync_config(&rec.config);
            t.sync_replicas(&rec.replicas);
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
            let (voters, learners): (BTreeMap<u64, u64>, BTreeMap<u64, u64>) = {
                let (l, v): (Vec<&Replica>, Vec<&Replica>) =
                    rec.replicas.iter().partition(|r| r.learner);
                (
                    v.iter().map(|r| (r.id, r.node)).collect(),
                    l.iter().map(|r| (r.id, r.node)).collect(),
                )
            };
            let members_differ = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                let mem = m.membership_config.membership();
                !mem.voter_ids().eq(voters.keys().copied())
                    || !mem.nodes().map(|(id, _)| *id).eq(voters
                        .keys()
                        .chain(learners.keys())
                        .copied()
                        .collect::<BTreeSet<_>>())
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
                c.converge_membership(rec.group, raft.clone(), voters, learners);
            } else if limits_differ {
                let cmd = Command::SetLimits(rec.config.storage_limit.clone());
                let raft = raft.clone();
                tokio::spawn(async move {
                    let _ = crate::shard::propose(&raft, cmd).await;
                });
            } else {
                c.maybe_quiesce(&t, &raft, rec);
            }
        }
        // Replicas no longer placed here.
        let stale: Vec<String> = db
            .loaded_ids()
            .into_iter()
            .filter(|id| !placed.contains(id))
            .collect();
        for id in stale {
            // Safe against a lagging copy of the metadata: a replica is
            // only loaded from a record, and group 0's state only moves
            // forward, so a record that placed it here and is gone now
            // was deleted or re-placed.
            if let Some(t) = db.unload(&id) {
                tracing::info!(tenant = %id, group = t.group(), "replica no longer placed here; removing it");
                let _ = db.stop_shard(&id).await;
                if let Err(e) = db.purge_local(t.group()).await {
                    tracing::warn!(tenant = %id, error = %e, "could not purge replica");
                }
            }
        }
        Ok(())
    }

    /// Waits (a few seconds at most) until a new group has a leader, when
    /// this node holds one of its replicas.
    pub(super) async fn wait_served(&self, db: &Database, rec: &TenantRecord) {
        if !rec.replicas.iter().any(|r| r.node == self.me.id) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.reconcile(db, true).await.is_ok() {
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
}
