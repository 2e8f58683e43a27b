//! Tenant move jobs, rebalancing and drains: the router drives them.
//!
//! A move job ([`MoveJob`]) moves one replica of a tenant's shard group
//! from one node to another while the tenant keeps serving. Jobs live in
//! group 0; the node leading group 0 drives them, one task per job, and
//! whichever node leads next resumes them. Every state change is
//! committed (together with the tenant record it needs) before it is
//! acted on, and every action is idempotent, so a kill -9 anywhere leaves
//! a job that either resumes or ends in a terminal state:
//!
//! ```text
//! registered ─▶ adding_learner ─▶ catching_up ─▶ promoting ─▶ transferring_leadership ─▶ removing_source ─▶ done
//!      │              └──────────────┴──────────────┴─────────────┴──▶ cancelled / failed (group as it was)
//!      └─▶ cancelled
//! ```
//!
//! The record is the wanted membership: the shard leader's reconcile
//! pass brings the raft group to it (the target joins as a learner, is
//! promoted to voter, the source leaves). The group has 3 of 4 voters
//! live if one node dies while it holds both source and target, so it
//! never has fewer live voters than it needs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;

use crate::cluster::Cluster;
use crate::db::{Database, Replica, TenantRecord, TenantState, WeakDatabase};
use crate::net::peer::{PeerRequest, PeerResponse};
use crate::proto::{Error, JobState, MoveJob, Plan, PlanStep, Result};
use crate::shard::is_leader;

use super::balance::{self, GroupView};

/// How often the driver looks at the jobs.
const TICK: Duration = Duration::from_millis(250);
/// Finished jobs kept in the history.
pub const HISTORY: usize = 1000;
/// Jobs not yet finished, at most (registrations beyond are refused).
pub const MAX_PENDING: usize = 10_000;
/// A target this many entries behind the leader (or fewer) is caught up.
const CAUGHT_UP: u64 = 64;
/// A target that gains nothing this long while the source leads gets
/// the leadership moved off the source (it may be cut off from it).
const SOURCE_STALL: Duration = Duration::from_secs(8);
/// Leadership checks after a rebalance that only handed leaderships over.
const LEAD_CHECKS: u32 = 5;
/// How long after hand-overs the leaders are checked again.
const LEAD_CHECK_AFTER: Duration = Duration::from_secs(3);
/// The origin of those checks.
const LEADS_AGAIN: &str = "rebalance (leaders, again)";
/// How often under-replicated tenants are looked for.
const TOP_UP_EVERY: Duration = Duration::from_secs(5);
/// Pause between leadership transfer requests of one job.
const TRANSFER_EVERY: Duration = Duration::from_secs(2);

fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        reason: reason.into(),
    }
}

/// What the driver remembers of a running job (lost with group 0's
/// leadership; the next driver starts afresh).
#[derive(Default, Clone)]
struct Live {
    /// Entries behind, bytes of a snapshot stream (sent, all).
    behind: u64,
    snapshot: (u64, u64),
    /// Last time the target gained entries or bytes.
    progressed: Option<Instant>,
    /// Last leadership transfer asked for.
    transferred: Option<Instant>,
    /// The error of the last step, if it failed (logged when it changes).
    failing: Option<String>,
    /// Lowest lag seen while catching up, and the largest share (‰) of
    /// a snapshot stream sent.
    best: u64,
    best_share: u64,
    /// Last progress line logged.
    reported: Option<Instant>,
}

/// The move-job driver and the rebalancer of a cluster node.
pub struct Mover {
    /// Serialises job record changes on this node (a cancel and a state
    /// change never overwrite each other).
    records: tokio::sync::Mutex<()>,
    /// Jobs with a running step task.
    running: Mutex<HashSet<u64>>,
    live: Mutex<HashMap<u64, Live>>,
    /// Leadership balancing waits until these jobs end.
    pending_leads: Mutex<Option<BTreeSet<u64>>>,
    /// Nodes seen, for rebalancing when one joins.
    nodes_seen: Mutex<Option<BTreeSet<u64>>>,
    /// When under-replicated tenants were last looked for, and group 0's
    /// applied index then.
    topped_up: Mutex<Option<(Instant, Option<u64>)>>,
    /// Hand-overs were asked: check the leaders again at this time, this
    /// many more times at most (a hand-over can fail or land elsewhere).
    leads_again: Mutex<Option<(Instant, u32)>>,
    /// Group 0's applied index at the end of a tick that left nothing to
    /// do (no unfinished job, no check pending): until group 0 changes,
    /// ticks skip reading the jobs table.
    quiet_at: Mutex<Option<Option<u64>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for Mover {
    fn default() -> Self {
        Self::new()
    }
}

impl Mover {
    /// A driver with nothing running yet ([`Mover::start`] starts it).
    pub fn new() -> Mover {
        Mover {
            records: tokio::sync::Mutex::new(()),
            running: Mutex::new(HashSet::new()),
            live: Mutex::new(HashMap::new()),
            pending_leads: Mutex::new(None),
            nodes_seen: Mutex::new(None),
            topped_up: Mutex::new(None),
            leads_again: Mutex::new(None),
            quiet_at: Mutex::new(None),
            task: Mutex::new(None),
        }
    }

    /// Starts the driver loop of `db`'s node; it acts while the node leads
    /// group 0 and ends with the node.
    pub fn start(self: &Arc<Self>, db: &Database, cluster: &Arc<Cluster>) {
        cluster
            .net
            .set_snapshot_rate(db.config().cluster.snapshot_mb_per_s);
        let (db, c, me) = (
            db.downgrade(),
            Arc::downgrade(cluster),
            Arc::downgrade(self),
        );
        *self.task.lock() = Some(tokio::spawn(drive(db, c, me)));
    }

    /// Stops the driver loop.
    pub fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }

    /// Registers a move of `tenant`'s replica to node `to` (from node
    /// `from`, or the replica on the most loaded node that does not lead).
    /// Runs on group 0's leader.
    pub async fn register(
        &self,
        db: &Database,
        tenant: &str,
        to: u64,
        from: Option<u64>,
        origin: &str,
    ) -> Result<MoveJob> {
        let _g = self.records.lock().await;
        let reg = db.registry()?;
        let rec = reg
            .tenant(tenant)?
            .filter(|r| r.state == TenantState::Active)
            .ok_or_else(|| Error::not_found("tenant", tenant))?;
        let nodes = reg.nodes()?;
        let target = nodes
            .iter()
            .find(|n| n.id == to)
            .ok_or_else(|| Error::not_found("node", to.to_string()))?;
        if target.removed || target.draining {
            return Err(Error::invalid(
                "to",
                format!("node {to} is removed or draining"),
            ));
        }
        if rec.replicas.iter().any(|r| r.node == to) {
            return Err(Error::invalid(
                "to",
                format!("node {to} already holds a replica of tenant {tenant}"),
            ));
        }
        let jobs = reg.jobs()?;
        if let Some(j) = jobs
            .iter()
            .find(|j| j.tenant_id == tenant && !j.state.is_terminal())
        {
            return Err(Error::invalid(
                "tenant",
                format!("tenant {tenant} is already moving (job {})", j.id),
            ));
        }
        if jobs.iter().filter(|j| !j.state.is_terminal()).count() >= MAX_PENDING {
            return Err(unavailable("too many move jobs waiting; retry later"));
        }
        let voters: Vec<&Replica> = rec.replicas.iter().filter(|r| !r.learner).collect();
        let source = match from {
            Some(f) => voters
                .iter()
                .find(|r| r.node == f)
                .copied()
                .ok_or_else(|| {
                    Error::invalid(
                        "from",
                        format!("node {f} holds no replica of tenant {tenant}"),
                    )
                })?,
            None => {
                let load = balance::load(
                    &nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
                    &group_views(&reg.tenants()?, &HashMap::new()),
                );
                let leader = db.loaded(tenant).and_then(|t| t.leader_node());
                voters
                    .iter()
                    .max_by_key(|r| {
                        (
                            load.get(&r.node).map(|l| l.0).unwrap_or(0),
                            Some(r.node) != leader,
                            std::cmp::Reverse(r.node),
                        )
                    })
                    .copied()
                    .ok_or_else(|| unavailable(format!("tenant {tenant} has no voters")))?
            }
        };
        let now = crate::util::now_ms();
        let job = MoveJob {
            v: 1,
            id: reg.next_id("job").await?,
            tenant_id: tenant.to_string(),
            group: rec.group,
            from_node: source.node,
            from_replica: source.id,
            to_node: to,
            to_replica: reg.take_id("replica").await?,
            state: JobState::Registered,
            cancel_requested: false,
            reason: None,
            origin: origin.to_string(),
            created_ms: now,
            updated_ms: now,
            behind: 0,
            snapshot_sent: 0,
            snapshot_bytes: 0,
        };
        reg.put_job(&job, None).await?;
        tracing::info!(
            job = job.id,
            tenant,
            from = job.from_node,
            to,
            origin,
            "move job registered"
        );
        Ok(job)
    }

    /// Asks a job to cancel; the driver puts the group back as it was.
    /// Refused once the source is being removed.
    pub async fn cancel(&self, db: &Database, id: u64) -> Result<MoveJob> {
        let _g = self.records.lock().await;
        let reg = db.registry()?;
        let mut job = reg
            .job(id)?
            .ok_or_else(|| Error::not_found("job", id.to_string()))?;
        if job.state.is_terminal() {
            return Err(Error::invalid(
                "job",
                format!("job {id} already ended ({})", job.state),
            ));
        }
        if !job.state.can_roll_back() {
            return Err(Error::invalid(
                "job",
                format!("job {id} is removing its source replica; too late to cancel (move it back instead)"),
            ));
        }
        job.cancel_requested = true;
        reg.put_job(&job, None).await?;
        tracing::info!(job = id, tenant = %job.tenant_id, "move job cancel requested");
        Ok(job)
    }

    /// A job, with its live progress when this node drives it.
    pub fn job(&self, db: &Database, id: u64) -> Result<MoveJob> {
        let job = db
            .registry()?
            .job(id)?
            .ok_or_else(|| Error::not_found("job", id.to_string()))?;
        Ok(self.with_progress(job))
    }

    /// Every job kept: running ones and the bounded history.
    pub fn jobs(&self, db: &Database) -> Result<Vec<MoveJob>> {
        Ok(db
            .registry()?
            .jobs()?
            .into_iter()
            .map(|j| self.with_progress(j))
            .collect())
    }

    fn with_progress(&self, mut job: MoveJob) -> MoveJob {
        if let Some(l) = self.live.lock().get(&job.id) {
            job.behind = l.behind;
            (job.snapshot_sent, job.snapshot_bytes) = l.snapshot;
        }
        job
    }

    /// Plans (and unless `dry_run`, starts) a rebalance: moves emptying
    /// draining nodes and balancing replicas, then leadership hand-overs.
    pub async fn rebalance(
        &self,
        db: &Database,
        c: &Cluster,
        dry_run: bool,
        origin: &str,
    ) -> Result<Plan> {
        let reg = db.registry()?;
        let nodes = reg.nodes()?;
        let live: Vec<u64> = nodes
            .iter()
            .filter(|n| !n.removed && !n.draining)
            .map(|n| n.id)
            .collect();
        let draining: Vec<u64> = nodes
            .iter()
            .filter(|n| !n.removed && n.draining)
            .map(|n| n.id)
            .collect();
        let up: Vec<u64> = nodes.iter().filter(|n| !n.removed).map(|n| n.id).collect();
        let leaders = leaders(db, c, &up).await;
        let recs: Vec<TenantRecord> = reg
            .tenants()?
            .into_iter()
            .filter(|r| r.state == TenantState::Active)
            .collect();
        let groups = group_views(&recs, &leaders);
        let all: Vec<u64> = live.iter().chain(&draining).copied().collect();
        let before = balance::load(&all, &groups);
        let (steps, after_groups) = balance::plan(&live, &draining, &groups);
        let after = balance::load(&all, &after_groups);
        let mut plan = Plan {
            steps,
            jobs: Vec::new(),
            before: before.iter().map(|(n, (r, l))| (*n, *r, *l)).collect(),
            after: after.iter().map(|(n, (r, l))| (*n, *r, *l)).collect(),
        };
        if dry_run {
            return Ok(plan);
        }
        let moving: HashSet<String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                PlanStep::Move { tenant, .. } => Some(tenant.clone()),
                PlanStep::Lead { .. } => None,
            })
            .collect();
        for s in &plan.steps {
            match s {
                PlanStep::Move { tenant, from, to } => {
                    match self.register(db, tenant, *to, Some(*from), origin).await {
                        Ok(j) => plan.jobs.push(j.id),
                        Err(e) => {
                            tracing::warn!(tenant, from, to, error = %e, "rebalance: move not registered")
                        }
                    }
                }
                // Hand-overs of groups that also move wait for a later
                // pass (the move may hand the leadership over itself).
                PlanStep::Lead { tenant, from, to } if !moving.contains(tenant) => {
                    if let Err(e) = lead(db, c, tenant, *from, *to).await {
                        tracing::info!(tenant, from, to, error = %e, "rebalance: hand-over failed");
                    }
                }
                PlanStep::Lead { .. } => {}
            }
        }
        if !plan.jobs.is_empty() {
            // Leaders are balanced again once the moves end.
            *self.pending_leads.lock() = Some(plan.jobs.iter().copied().collect());
            *self.leads_again.lock() = None;
        } else if plan.steps.is_empty() {
            *self.leads_again.lock() = None;
        } else {
            // Only hand-overs: look again shortly, a few times, until the
            // leaders are within one of each other.
            let mut again = self.leads_again.lock();
            let left = match *again {
                Some((_, n)) if origin == LEADS_AGAIN => n,
                _ => LEAD_CHECKS,
            };
            *again = (left > 0).then(|| (Instant::now() + LEAD_CHECK_AFTER, left - 1));
        }
        tracing::info!(
            origin,
            steps = plan.steps.len(),
            jobs = plan.jobs.len(),
            "rebalance started"
        );
        Ok(plan)
    }

    /// Marks node `id` draining (no new replicas; placement skips it) and
    /// moves every replica off it.
    pub async fn drain(&self, db: &Database, c: &Cluster, id: u64) -> Result<Plan> {
        let reg = db.registry()?;
        let mut node = reg
            .nodes()?
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::not_found("node", id.to_string()))?;
        if node.removed {
            return Err(Error::invalid("node", format!("node {id} was removed")));
        }
        if !node.draining {
            node.draining = true;
            reg.put_node(&node).await?;
            tracing::info!(node = id, "node draining");
        }
        self.rebalance(db, c, false, "drain").await
    }

    /// One step of every unfinished job (each on its own task), history
    /// trimming, and the rebalance a join or a finished rebalance asks
    /// for.
    async fn tick(self: &Arc<Self>, db: &Database, c: &Arc<Cluster>) -> Result<()> {
        let applied = c
            .meta_raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index);
        // Read before the jobs table: everything below saw at least this
        // much of group 0. A rebalance asked for by an admin sets these
        // without a group-0 change.
        let checks_pending =
            self.leads_again.lock().is_some() || self.pending_leads.lock().is_some();
        if *self.quiet_at.lock() == Some(applied) && !checks_pending {
            return Ok(());
        }
        let reg = db.registry()?;
        let jobs = reg.jobs()?;
        let settings = &db.config().cluster;
        let mut active = jobs
            .iter()
            .filter(|j| !j.state.is_terminal() && j.state != JobState::Registered)
            .count();
        for job in jobs.iter().filter(|j| !j.state.is_terminal()) {
            if job.state == JobState::Registered && !job.cancel_requested {
                if active >= settings.max_moves_in_flight {
                    continue;
                }
                active += 1;
            }
            if !self.running.lock().insert(job.id) {
                continue;
            }
            let (me, db, c, job) = (self.clone(), db.clone(), c.clone(), job.clone());
            tokio::spawn(async move {
                let id = job.id;
                let r = me.step(&db, &c, job).await;
                let failing = r.as_ref().err().map(|e| e.to_string());
                let changed = {
                    let mut all = me.live.lock();
                    let l = all.entry(id).or_default();
                    let changed = l.failing != failing;
                    l.failing = failing.clone();
                    changed
                };
                if let (Some(e), true) = (failing, changed) {
                    tracing::info!(job = id, error = %e, "move step failed; retrying");
                }
                me.running.lock().remove(&id);
            });
        }
        // Bounded history.
        let done: Vec<u64> = jobs
            .iter()
            .filter(|j| j.state.is_terminal())
            .map(|j| j.id)
            .collect();
        if done.len() > HISTORY {
            reg.remove_jobs(&done[..done.len() - HISTORY]).await?;
        }
        let live_ids: HashSet<u64> = jobs
            .iter()
            .filter(|j| !j.state.is_terminal())
            .map(|j| j.id)
            .collect();
        self.live.lock().retain(|id, _| live_ids.contains(id));
        // Leadership balancing after a rebalance's moves.
        let waiting = self.pending_leads.lock().clone();
        if let Some(w) = waiting {
            if w.iter().all(|id| !live_ids.contains(id)) {
                *self.pending_leads.lock() = None;
                self.rebalance(db, c, false, "rebalance (leaders)").await?;
            }
        }
        // Hand-overs asked earlier: are the leaders balanced now?
        let again = self
            .leads_again
            .lock()
            .is_some_and(|(at, _)| Instant::now() >= at);
        if again && live_ids.is_empty() {
            self.rebalance(db, c, false, LEADS_AGAIN).await?;
        }
        // Tenants short of the replication factor (a node was removed
        // with nowhere to place its replicas, or the tenant was created
        // while the cluster was small) get a replica where there is room.
        // Only what group 0 holds makes a tenant short (its record, the
        // nodes, the jobs): with group 0 unchanged since the last look,
        // none is, and reading every record again (10,000 every 5 s) is
        // skipped. `applied` was read before the jobs were: a change
        // landing since is seen again next tick.
        let due = self
            .topped_up
            .lock()
            .is_none_or(|(at, seen)| at.elapsed() >= TOP_UP_EVERY && seen != applied);
        if due {
            let busy: HashSet<String> = jobs
                .iter()
                .filter(|j| !j.state.is_terminal())
                .map(|j| j.tenant_id.clone())
                .collect();
            *self.topped_up.lock() = Some((Instant::now(), None));
            c.top_up(db, &busy).await?;
            *self.topped_up.lock() = Some((Instant::now(), applied));
        }
        // A node joined: rebalance.
        let nodes: BTreeSet<u64> = reg
            .nodes()?
            .iter()
            .filter(|n| !n.removed)
            .map(|n| n.id)
            .collect();
        let joined = {
            let mut seen = self.nodes_seen.lock();
            let joined = seen.as_ref().is_some_and(|s| !nodes.is_subset(s));
            *seen = Some(nodes);
            joined
        };
        if joined && settings.rebalance_on_join {
            tracing::info!("a node joined; rebalancing");
            self.rebalance(db, c, false, "rebalance (join)").await?;
        }
        let quiet = live_ids.is_empty()
            && self.running.lock().is_empty()
            && self.pending_leads.lock().is_none()
            && self.leads_again.lock().is_none()
            && self
                .topped_up
                .lock()
                .is_some_and(|(_, seen)| seen == applied);
        *self.quiet_at.lock() = quiet.then_some(applied);
        Ok(())
    }

    /// Commits `job` in state `next` (with `rec`, when the state needs a
    /// record change), unless the stored job changed since it was read.
    async fn advance(
        &self,
        db: &Database,
        job: &MoveJob,
        next: JobState,
        reason: Option<String>,
        rec: Option<&TenantRecord>,
    ) -> Result<()> {
        let _g = self.records.lock().await;
        let reg = db.registry()?;
        let Some(stored) = reg.job(job.id)? else {
            return Ok(());
        };
        if stored != *job {
            return Ok(());
        }
        let mut j = stored;
        j.state = next;
        j.reason = reason;
        j.updated_ms = crate::util::now_ms();
        reg.put_job(&j, rec).await?;
        if next.is_terminal() {
            tracing::info!(job = j.id, tenant = %j.tenant_id, state = %next, reason = j.reason.as_deref().unwrap_or(""), "move job ended");
        } else {
            tracing::info!(job = j.id, tenant = %j.tenant_id, from = j.from_node, to = j.to_node, state = %next, "move job");
        }
        move_event(db, job.state, &j);
        if let Some(l) = self.live.lock().get_mut(&j.id) {
            l.progressed = Some(Instant::now());
        }
        Ok(())
    }

    /// Ends `job` as `end` (cancelled or failed), taking the target out
    /// of the record so the group goes back to its old membership.
    async fn roll_back(
        &self,
        db: &Database,
        job: &MoveJob,
        rec: Option<TenantRecord>,
        end: JobState,
        reason: String,
    ) -> Result<()> {
        let rec = rec.map(|mut r| {
            r.replicas.retain(|x| x.id != job.to_replica);
            r
        });
        self.advance(db, job, end, Some(reason), rec.as_ref()).await
    }

    /// Acts on one job once: checks the shard group and moves the job on
    /// when its current state is reached.
    async fn step(&self, db: &Database, c: &Arc<Cluster>, job: MoveJob) -> Result<()> {
        let reg = db.registry()?;
        let rec = reg
            .tenant(&job.tenant_id)?
            .filter(|r| r.state == TenantState::Active && r.group == job.group);
        let Some(mut rec) = rec else {
            return self
                .advance(
                    db,
                    &job,
                    JobState::Failed,
                    Some("the tenant was deleted".into()),
                    None,
                )
                .await;
        };
        let stall = Duration::from_millis(db.config().cluster.move_stall_timeout_ms);
        let live = {
            let mut all = self.live.lock();
            let l = all.entry(job.id).or_insert_with(|| Live {
                progressed: Some(Instant::now()),
                best: u64::MAX,
                ..Live::default()
            });
            l.clone()
        };
        let source_here = rec
            .replicas
            .iter()
            .any(|r| r.id == job.from_replica && !r.learner);
        if job.state == JobState::Registered {
            if job.cancel_requested {
                return self
                    .advance(
                        db,
                        &job,
                        JobState::Cancelled,
                        Some("cancelled before it started".into()),
                        None,
                    )
                    .await;
            }
            let target_ok = reg
                .nodes()?
                .iter()
                .any(|n| n.id == job.to_node && !n.removed);
            let why = if !source_here {
                Some("the source replica left the group".to_string())
            } else if !target_ok {
                Some(format!("node {} is gone", job.to_node))
            } else if rec.replicas.iter().any(|r| r.node == job.to_node) {
                Some(format!("node {} already holds a replica", job.to_node))
            } else {
                None
            };
            if let Some(why) = why {
                return self
                    .advance(db, &job, JobState::Failed, Some(why), None)
                    .await;
            }
            rec.replicas.push(Replica {
                id: job.to_replica,
                node: job.to_node,
                initial: false,
                learner: true,
            });
            return self
                .advance(db, &job, JobState::AddingLearner, None, Some(&rec))
                .await;
        }
        if job.state.can_roll_back() {
            if job.cancel_requested {
                return self
                    .roll_back(
                        db,
                        &job,
                        Some(rec),
                        JobState::Cancelled,
                        "cancelled by the operator".into(),
                    )
                    .await;
            }
            if !source_here {
                return self
                    .roll_back(
                        db,
                        &job,
                        Some(rec),
                        JobState::Failed,
                        "the source replica left the group (its node was removed?)".into(),
                    )
                    .await;
            }
            let idle = live.progressed.map(|p| p.elapsed()).unwrap_or_default();
            if idle > stall {
                let why = format!(
                    "no progress for {} s in state {}",
                    idle.as_secs(),
                    job.state
                );
                return self
                    .roll_back(db, &job, Some(rec), JobState::Failed, why)
                    .await;
            }
        }
        let info = super::route::shard_status(db, c, &job.tenant_id).await?;
        match job.state {
            JobState::AddingLearner => {
                if info.learners.contains(&job.to_replica) || info.voters.contains(&job.to_replica)
                {
                    return self
                        .advance(db, &job, JobState::CatchingUp, None, None)
                        .await;
                }
            }
            JobState::CatchingUp => {
                let matched = info
                    .matched
                    .iter()
                    .find(|(r, _)| *r == job.to_replica)
                    .map(|(_, m)| *m);
                let behind = matched
                    .map(|m| info.last_log_index.saturating_sub(m))
                    .unwrap_or(info.last_log_index.max(1));
                let snapshot = info
                    .snapshots
                    .iter()
                    .find(|(n, _, _)| *n == job.to_node)
                    .map(|(_, s, a)| (*s, *a))
                    .unwrap_or((0, 0));
                {
                    let mut all = self.live.lock();
                    let l = all.entry(job.id).or_default();
                    // Progress: a new lowest lag, or snapshot bytes.
                    // (A snapshot stream that restarts makes no progress
                    // until it gets further, as a share of its size, than
                    // any stream before it: a stream that keeps failing
                    // part way stalls the job.)
                    let share = (snapshot.0 * 1000).checked_div(snapshot.1).unwrap_or(0);
                    if behind < l.best || share > l.best_share || l.progressed.is_none() {
                        l.progressed = Some(Instant::now());
                        l.best = l.best.min(behind);
                        l.best_share = l.best_share.max(share);
                    }
                    if l.reported
                        .is_none_or(|r| r.elapsed() > Duration::from_secs(5))
                    {
                        l.reported = Some(Instant::now());
                        tracing::info!(
                            job = job.id,
                            behind,
                            matched = ?matched,
                            snapshot_sent = snapshot.0,
                            snapshot_bytes = snapshot.1,
                            leader = ?info.leader_node,
                            "move job catching up"
                        );
                    }
                    l.behind = behind;
                    l.snapshot = snapshot;
                }
                if matched.is_some() && behind <= CAUGHT_UP && snapshot == (0, 0) {
                    for r in rec.replicas.iter_mut().filter(|r| r.id == job.to_replica) {
                        r.learner = false;
                    }
                    return self
                        .advance(db, &job, JobState::Promoting, None, Some(&rec))
                        .await;
                }
                // The source leads but the target gains nothing (perhaps
                // cut off from the source): lead from elsewhere.
                let stuck = live.progressed.is_some_and(|p| p.elapsed() > SOURCE_STALL);
                if stuck && info.leader_node == Some(job.from_node) {
                    if let Some(other) = rec
                        .replicas
                        .iter()
                        .find(|r| !r.learner && r.node != job.from_node)
                    {
                        self.transfer(db, c, &job, other.id, &live).await;
                    }
                }
            }
            JobState::Promoting => {
                if info.voters.contains(&job.to_replica) && !info.joint {
                    return self
                        .advance(db, &job, JobState::TransferringLeadership, None, None)
                        .await;
                }
            }
            JobState::TransferringLeadership => match info.leader_node {
                Some(n) if n == job.from_node => {
                    self.transfer(db, c, &job, job.to_replica, &live).await;
                }
                Some(_) => {
                    rec.replicas.retain(|r| r.id != job.from_replica);
                    return self
                        .advance(db, &job, JobState::RemovingSource, None, Some(&rec))
                        .await;
                }
                None => {}
            },
            JobState::RemovingSource => {
                let gone = !info.voters.contains(&job.from_replica)
                    && !info.learners.contains(&job.from_replica)
                    && !info.joint;
                if gone {
                    return self.advance(db, &job, JobState::Done, None, None).await;
                }
            }
            JobState::Registered | JobState::Done | JobState::Cancelled | JobState::Failed => {}
        }
        Ok(())
    }

    /// Asks the source's node to hand the group's leadership to replica
    /// `to` (at most every [`TRANSFER_EVERY`]).
    async fn transfer(&self, db: &Database, c: &Cluster, job: &MoveJob, to: u64, live: &Live) {
        if live
            .transferred
            .is_some_and(|t| t.elapsed() < TRANSFER_EVERY)
        {
            return;
        }
        if let Some(l) = self.live.lock().get_mut(&job.id) {
            l.transferred = Some(Instant::now());
        }
        match hand_over(db, c, job.from_node, job.group, to).await {
            Ok(()) => {
                tracing::info!(
                    job = job.id,
                    group = job.group,
                    to,
                    "leadership hand-over asked"
                )
            }
            Err(e) => tracing::info!(job = job.id, error = %e, "leadership hand-over not started"),
        }
    }
}

/// The driver loop: acts while this node leads group 0.
async fn drive(db: WeakDatabase, c: Weak<Cluster>, me: Weak<Mover>) {
    let mut was_leader = false;
    loop {
        tokio::time::sleep(TICK).await;
        let (Some(db), Some(c), Some(me)) = (db.upgrade(), c.upgrade(), me.upgrade()) else {
            return;
        };
        let leads = is_leader(c.meta_raft());
        if leads != was_leader {
            // A new term of driving: forget what a previous one knew.
            me.live.lock().clear();
            *me.quiet_at.lock() = None;
            *me.nodes_seen.lock() = None;
            *me.pending_leads.lock() = None;
            was_leader = leads;
            if leads {
                tracing::info!(
                    node = c.me().id,
                    "driving move jobs (this node leads group 0)"
                );
            }
        }
        if !leads {
            continue;
        }
        if let Err(e) = me.tick(&db, &c).await {
            tracing::warn!(error = %e, "move-job driver pass failed; retrying");
        }
    }
}

/// The groups of `recs` for the balancer, with leaders from `leaders`.
fn group_views(recs: &[TenantRecord], leaders: &HashMap<u64, u64>) -> Vec<GroupView> {
    recs.iter()
        .map(|r| GroupView {
            tenant: r.config.tenant_id.clone(),
            nodes: r.replicas.iter().map(|x| x.node).collect(),
            leader: leaders.get(&r.group).copied(),
        })
        .collect()
}

/// Which node leads each group (asking every node in `nodes`, all at
/// once, which groups it leads; unreachable nodes lead nothing we know
/// of).
pub(super) async fn leaders(db: &Database, c: &Cluster, nodes: &[u64]) -> HashMap<u64, u64> {
    leaders_answered(db, c, nodes).await.0
}

/// [`leaders`], and the nodes that answered.
pub(super) async fn leaders_answered(
    db: &Database,
    c: &Cluster,
    nodes: &[u64],
) -> (HashMap<u64, u64>, BTreeSet<u64>) {
    let asks = nodes.iter().map(|&n| async move {
        let groups = if n == c.me().id {
            Ok(c.groups_led(db))
        } else {
            match c
                .net
                .call(n, &PeerRequest::Leading, Duration::from_secs(2))
                .await
            {
                Ok(PeerResponse::Leading(g)) => Ok(g),
                other => Err(other),
            }
        };
        (n, groups)
    });
    let mut out = HashMap::new();
    let mut answered = BTreeSet::new();
    for (n, groups) in futures::future::join_all(asks).await {
        match groups {
            Ok(gs) => {
                answered.insert(n);
                for g in gs {
                    out.insert(g, n);
                }
            }
            Err(e) => {
                tracing::info!(node = n, answer = ?e, "could not learn which groups a node leads")
            }
        }
    }
    (out, answered)
}

/// Hands `tenant`'s leadership from node `from` to its replica on `to`.
async fn lead(db: &Database, c: &Cluster, tenant: &str, from: u64, to: u64) -> Result<()> {
    let rec = db
        .registry()?
        .tenant(tenant)?
        .ok_or_else(|| Error::not_found("tenant", tenant))?;
    let target = rec
        .replicas
        .iter()
        .find(|r| r.node == to && !r.learner)
        .ok_or_else(|| unavailable(format!("node {to} holds no voter of {tenant}")))?;
    hand_over(db, c, from, rec.group, target.id).await
}

/// Asks node `node` (which should lead `group`) to hand the leadership
/// to replica `to`; this node's own replica directly.
async fn hand_over(db: &Database, c: &Cluster, node: u64, group: u64, to: u64) -> Result<()> {
    if node == c.me().id {
        return c.transfer_leader(db, group, to).await;
    }
    let req = PeerRequest::TransferLeader { group, to };
    match c.net.call(node, &req, Duration::from_secs(2)).await {
        Ok(PeerResponse::Transferring(r)) => r,
        Ok(PeerResponse::Failed(e)) => Err(e),
        Ok(other) => Err(unavailable(format!("unexpected peer answer {other:?}"))),
        Err(e) => Err(unavailable(e.to_string())),
    }
}

/// Raises the event of a move job's transition from `from` to `j.state`
/// (on group 0's leader, which alone drives jobs): started when it leaves
/// `registered`, and its end.
fn move_event(db: &Database, from: JobState, j: &MoveJob) {
    use crate::proto::{EventKind, EventLevel};
    let (job, from_node, to_node) = (j.id, j.from_node, j.to_node);
    let reason = j.reason.clone().unwrap_or_default();
    let (level, kind, message) = match j.state {
        JobState::Done => (
            EventLevel::Info,
            EventKind::MoveFinished {
                job,
                from_node,
                to_node,
            },
            format!(
                "move job {job} finished: replica moved from node {from_node} to node {to_node}"
            ),
        ),
        JobState::Failed => (
            EventLevel::Warning,
            EventKind::MoveFailed {
                job,
                reason: reason.clone(),
            },
            format!("move job {job} failed and was rolled back: {reason}"),
        ),
        JobState::Cancelled => (
            EventLevel::Info,
            EventKind::MoveCancelled {
                job,
                reason: reason.clone(),
            },
            format!("move job {job} was cancelled: {reason}"),
        ),
        _ if from == JobState::Registered => (
            EventLevel::Info,
            EventKind::MoveStarted {
                job,
                from_node,
                to_node,
            },
            format!("move job {job} started: node {from_node} to node {to_node}"),
        ),
        _ => return,
    };
    db.events().emit(level, Some(&j.tenant_id), kind, message);
}
