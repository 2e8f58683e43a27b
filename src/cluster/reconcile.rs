//! The reconcile loop: every [`TICK`] (and at once when group 0
//! changes), bring this node's replicas, and on leaders the group
//! memberships and storage limits, up to the metadata.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::db::{Database, Replica, TenantRecord, TenantState};
use crate::proto::Result;
use crate::shard::is_leader;
use crate::storage::Command;

use super::{member, Cluster, TICK};

/// How often each node looks for orphan replicas: once at start, as soon
/// as its copy of the metadata is fresh, then at most this often while
/// group 0 changes (a tenant deleted or moved away) or a purge failed.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A replica no longer placed here that has heard nothing from its
/// group's leader this long leaves.
const LEADER_SILENT: Duration = Duration::from_secs(10);

/// The voters and learners `rec` places, as (replica id, node id).
fn record_members(rec: &TenantRecord) -> (BTreeMap<u64, u64>, BTreeMap<u64, u64>) {
    let (l, v): (Vec<&Replica>, Vec<&Replica>) = rec.replicas.iter().partition(|r| r.learner);
    (
        v.iter().map(|r| (r.id, r.node)).collect(),
        l.iter().map(|r| (r.id, r.node)).collect(),
    )
}

/// Starts the loop of `cluster` over `db`; it ends when either is gone.
pub(super) fn spawn_loop(db: &Database, cluster: &Arc<Cluster>) -> tokio::task::JoinHandle<()> {
    let (weak, cluster) = (db.downgrade(), Arc::downgrade(cluster));
    tokio::spawn(async move {
        let mut last_applied = None;
        let mut last_full = Instant::now() - Duration::from_secs(60);
        // The last sweep that ran: when, group 0's applied index it saw,
        // and whether it purged every orphan it found.
        let mut last_sweep: Option<(Instant, Option<u64>, bool)> = None;
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
                last_full = Instant::now();
                let index = applied.map(|l| l.index);
                let sweep = last_sweep.is_none_or(|(t, seen, clean)| {
                    (seen != index || !clean) && t.elapsed() > SWEEP_EVERY
                });
                if sweep {
                    // Not run (metadata not fresh yet): next pass.
                    if let Ok(clean) = c.sweep_orphans(&db).await {
                        last_sweep = Some((Instant::now(), index, clean));
                    }
                }
                match c.reconcile(&db, changed).await {
                    // A failed full pass is a full pass again next tick.
                    Ok(()) => last_applied = applied,
                    Err(e) => tracing::warn!(error = %e, "reconcile failed; retrying"),
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
        // With group 0 unchanged, no record changed: a sleeping replica
        // has nothing to converge, so the pass reads only the records of
        // the awake replicas, of those waiting to leave and of those that
        // failed to start. Idle, a node with 10,000 sleeping replicas read
        // and walked all 10,000 records every 2 s.
        let (records, candidates) = if full {
            let all = reg.tenants()?;
            *c.load.lock() = Some(super::placement::replica_load(&all));
            (all, db.loaded_ids())
        } else {
            let mut ids: BTreeSet<String> = db.awake_ids().into_iter().collect();
            ids.extend(c.leaving.lock().keys().cloned());
            ids.extend(c.unstarted.lock().iter().cloned());
            let mut recs = Vec::with_capacity(ids.len());
            for id in &ids {
                recs.extend(reg.tenant(id)?);
            }
            (recs, ids.into_iter().collect())
        };
        let me = c.me.id;
        let nodes = reg.nodes()?;
        let mine = nodes.iter().find(|n| n.id == me);
        if full && !c.removed.load(Ordering::Relaxed) && mine.is_some_and(|n| n.removed) {
            c.removed.store(true, Ordering::Relaxed);
            tracing::error!(
                node = me,
                "this node was removed from the cluster (node remove): it serves no clients \
                 and hands its replicas over; stop it, and wipe its data directory before it \
                 joins again"
            );
        }
        // A record written by an older version holds no incarnation (and
        // so would match any): this node's next join records its own.
        let unrecorded = mine.is_some_and(|n| n.incarnation == 0 && !n.removed);
        if unrecorded && full && !is_leader(&c.meta) {
            if let Some(l) = c.meta_leader().filter(|l| *l != me) {
                let req = crate::net::peer::PeerRequest::Join(c.me.clone());
                if let Err(e) = c.net.call(l, &req, Duration::from_secs(5)).await {
                    tracing::warn!(leader = l, error = %e, "could not record this node's incarnation; retrying");
                }
            }
        }
        // Group 0's voters, on its leader.
        if is_leader(&c.meta) {
            if mine.is_none() || unrecorded {
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
                    match opened {
                        Ok(()) => c.unstarted.lock().remove(id),
                        Err(e) => {
                            tracing::warn!(tenant = %id, error = %e, "could not start replica");
                            c.unstarted.lock().insert(id.clone())
                        }
                    };
                    continue;
                }
            };
            t.sync_config(&rec.config);
            let moved = t.sync_replicas(&rec.replicas);
            if t.is_asleep() {
                // A hibernated replica has nothing to converge until its
                // placement changes (a move, a node removed): then it
                // reopens, and whichever replica leads brings the group
                // to the record.
                if moved {
                    let (db, t) = (db.clone(), t.clone());
                    tokio::spawn(async move {
                        if let Err(e) = db.awake(&t).await {
                            tracing::warn!(group = t.group(), error = %e, "could not reopen a replica whose placement changed");
                        }
                    });
                }
                continue;
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
            let (voters, learners) = record_members(rec);
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
                t.resume_ticks();
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
        let stale: Vec<String> = candidates
            .into_iter()
            .filter(|id| !placed.contains(id) && db.loaded(id).is_some())
            .collect();
        c.leaving.lock().retain(|id, _| stale.contains(id));
        if full {
            c.unstarted.lock().retain(|id| placed.contains(id));
        }
        for id in stale {
            let rec = records.iter().find(|r| r.config.tenant_id == id);
            if let Some(rec) = rec.filter(|r| r.state == TenantState::Active) {
                if !c.may_leave(db, rec) {
                    continue;
                }
            }
            // Safe against a lagging copy of the metadata: a replica is
            // only loaded from a record, and group 0's state only moves
            // forward, so a record that placed it here and is gone now
            // was deleted or re-placed.
            c.leaving.lock().remove(&id);
            if let Some(t) = db.unload(&id) {
                tracing::info!(tenant = %id, group = t.group(), "replica no longer placed here; removing it");
                // Requests in flight finish; nothing reopens it after.
                let _shut = db.shut(&t).await;
                let _ = db.stop_shard(&id).await;
                if let Err(e) = db.purge_local(t.group()).await {
                    tracing::warn!(tenant = %id, error = %e, "could not purge replica");
                }
            }
        }
        Ok(())
    }

    /// Purges replicas that no record places here and that are not
    /// running: their shard directory and raft log keys. They are left
    /// by a tenant deleted, or a replica moved away, while this node was
    /// down or stopping mid-purge. Only with a fresh copy of the metadata
    /// ([`Cluster::check_fresh`]): every replica directory comes from a
    /// record, so a fresh copy knows of every one that should exist.
    /// Returns whether every orphan found was purged.
    pub(super) async fn sweep_orphans(&self, db: &Database) -> Result<bool> {
        self.check_fresh()?;
        let _one_at_a_time = self.reconciling.lock().await;
        let records = db.registry()?.tenants()?;
        let me = self.me.id;
        let mut known: HashSet<u64> = records
            .iter()
            .filter(|r| r.replicas.iter().any(|x| x.node == me))
            .map(|r| r.group)
            .collect();
        known.insert(0);
        known.extend(db.loaded_tenants().iter().map(|t| t.group()));
        let mut found: BTreeSet<u64> = db
            .raft_logs()
            .groups()
            .map_err(crate::proto::Error::storage)?
            .into_iter()
            .collect();
        let base = db.shard_dir(0);
        if let Some(Ok(dir)) = base.parent().map(std::fs::read_dir) {
            found.extend(
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok())),
            );
        }
        let mut clean = true;
        for group in found.into_iter().filter(|g| !known.contains(g)) {
            tracing::info!(
                group,
                "orphan replica (no tenant places it here): purging it"
            );
            if let Err(e) = db.purge_local(group).await {
                tracing::warn!(group, error = %e, "could not purge orphan replica");
                clean = false;
            }
        }
        Ok(clean)
    }

    /// Whether this node's replica of `rec`'s group, which `rec` no longer
    /// places here, may leave now: once the group's membership (the
    /// latest this replica has seen) no longer has it as a voter, the group has
    /// committed the joint step without it and goes on without its
    /// vote. Until then it stays a voter, so moving a replica never costs
    /// the group a vote it needs; if it leads, it first changes the
    /// membership to the record's. A leader stops replicating to a
    /// replica once the membership without it is in place, so that replica
    /// may never see that entry: one that has heard nothing from its
    /// leader for [`LEADER_SILENT`] leaves too (an election that needs
    /// its vote ends sooner, and then the new leader talks to it).
    fn may_leave(&self, db: &Database, rec: &TenantRecord) -> bool {
        let id = &rec.config.tenant_id;
        let Some(t) = db.loaded(id) else {
            return true;
        };
        if t.is_asleep() {
            // Its vote may still be needed: reopen it and decide then
            // (listed, so passes between group-0 changes look at it
            // again, also when this reopen fails).
            self.unstarted.lock().insert(id.clone());
            let (db, t) = (db.clone(), t.clone());
            tokio::spawn(async move {
                let _ = db.awake(&t).await;
            });
            return false;
        }
        let Some(raft) = t.raft() else {
            return true;
        };
        let (mine, voter, leads) = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            let mut voters = m.membership_config.membership().voter_ids();
            (
                m.id,
                voters.any(|v| v == m.id),
                m.state == openraft::ServerState::Leader,
            )
        };
        // A learner's vote is never needed.
        if !voter {
            return true;
        }
        let since = *self
            .leaving
            .lock()
            .entry(id.clone())
            .or_insert_with(Instant::now);
        let silent =
            crate::util::coarse_now_ms().saturating_sub(t.leader_heard().load(Ordering::Relaxed));
        if !leads && since.elapsed() > LEADER_SILENT && silent > LEADER_SILENT.as_millis() as u64 {
            tracing::info!(
                tenant = %id,
                replica = mine,
                silent_ms = silent,
                "replica no longer placed here: its leader stopped replicating to it; leaving"
            );
            return true;
        }
        if leads {
            let (voters, learners) = record_members(rec);
            self.converge_membership(rec.group, raft, voters, learners);
        }
        false
    }

    /// Waits (a few seconds at most) until a new group has a leader, when
    /// this node holds one of its replicas.
    pub(super) async fn wait_served(&self, db: &Database, rec: &TenantRecord) {
        if !rec.replicas.iter().any(|r| r.node == self.me.id) {
            return;
        }
        // With hibernation on, replicas load asleep and the first request
        // opens them (and holds the group's first election): creating a
        // tenant is its one metadata commit, and loading it here opens
        // nothing.
        if db.hibernation_on() {
            if let Err(e) = self.load_here(db, rec).await {
                tracing::warn!(tenant = %rec.config.tenant_id, error = %e, "could not load the new tenant's replica");
            }
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
