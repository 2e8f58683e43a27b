//! `ShardActor`: one per tenant shard replica on a node.
//!
//! It owns the shard's raft group and data and turns messages into calls.
//! The handler never awaits a raft commit itself: it starts the work on a
//! task and answers through the reply port when it lands, so one slow
//! write never serialises the tenant. Its mailbox holds only admitted
//! writes (each holds a tenant concurrency slot) plus a timer tick, so it
//! is bounded by `concurrent_limit`. Reads do not go through it: the
//! session runs [`read`] on the shard's raft and data itself.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::limits::{TenantLimiter, WorkMeter};
use crate::proto::{Error, Object, Query, SearchHit, Traverse, TraversedNode, VectorSearch};
use crate::raft::{self, RaftLogDb, RaftSettings, ShardRaft};
use crate::storage::{Command, CommandResult, StorageEnv};
use crate::tenant::StorageLimitConfig;

use super::cache::{self, ReadCache};
use super::data::ShardData;

/// How a read may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Consistency {
    /// After a read-index round: sees every write acknowledged before it.
    #[default]
    Linearizable,
    /// From local state, possibly behind the leader.
    Stale,
}

/// A read request.
#[derive(Debug, Clone)]
pub enum ReadOp {
    /// Get by id.
    Get(String),
    /// Property query.
    Query(Query),
    /// Vector search.
    Search(VectorSearch, bool),
    /// Several vector searches (with objects or not), answered in order.
    SearchBatch(Vec<VectorSearch>, bool),
    /// Traversal.
    Traverse(Traverse),
    /// A page of a collection in id order, after an id.
    Scan(String, Option<String>, u32),
}

/// A read result.
#[derive(Debug, Clone)]
pub enum ReadResult {
    /// Get.
    Object(Option<Object>),
    /// Query.
    Objects(Vec<Object>),
    /// Search.
    Hits(Vec<SearchHit>),
    /// A batch of searches: one list of hits per search, in order.
    HitLists(Vec<Vec<SearchHit>>),
    /// Traversal.
    Nodes(Vec<TraversedNode>),
}

/// Messages of a shard actor.
// Writes are nearly every message: boxing their command would add an
// allocation to each, to shrink the rare timer ticks.
#[allow(clippy::large_enum_variant)]
pub enum ShardMsg {
    /// Checkpoint the request counters if they changed.
    CheckpointQuota,
    /// Reserve the next block of daily and monthly requests durably
    /// (see [`TenantLimiter::reservation`]); answer when it has landed.
    Reserve(Option<RpcReplyPort<Result<(), Error>>>),
    /// Before the group goes idle: on the leader, replace its unused
    /// reservation by the exact request counts
    /// ([`TenantLimiter::settle`]), so a later close need not write.
    /// Answers whether it wrote an entry.
    Settle(RpcReplyPort<Result<bool, Error>>),
    /// Flush, checkpoint and stop the raft group (graceful close).
    Close(RpcReplyPort<Result<(), Error>>),
    /// Fault injection: the handler fails, as a bug would, and the
    /// supervisor restarts the shard from disk.
    Fail,
}

/// Where a running shard publishes its raft group and data.
pub type ShardSlot = Arc<Mutex<Option<(ShardRaft, Arc<ShardData>)>>>;

/// Everything a shard actor needs to (re)start from disk.
#[derive(Clone)]
pub struct ShardArgs {
    /// Tenant.
    pub tenant_id: String,
    /// Raft group id.
    pub group: u64,
    /// Raft node id of this replica (fresh per placement).
    pub replica: u64,
    /// Shard directory.
    pub dir: PathBuf,
    /// Shared RocksDB resources.
    pub env: StorageEnv,
    /// The node's raft log database.
    pub logs: Arc<RaftLogDb>,
    /// Raft settings.
    pub settings: RaftSettings,
    /// The tenant's limiter (its counters are restored from the shard).
    pub limiter: Arc<TenantLimiter>,
    /// Storage limits the tenant config wants in force.
    pub storage_limits: StorageLimitConfig,
    /// How often request counters are checkpointed.
    pub quota_checkpoint: Duration,
    /// Where the running instance publishes its raft and data, so the
    /// supervisor can stop a failed instance before restarting it.
    pub slot: ShardSlot,
    /// Where requests find the running actor; the supervisor sets it.
    pub route: Arc<parking_lot::RwLock<Option<ActorRef<ShardMsg>>>>,
    /// On a cluster: how the replica reaches the rest of its group.
    pub cluster: Option<ReplicaNet>,
    /// The tenant's read cache on this node, owned by the tenant (it
    /// outlives restarts of the actor; entries of an earlier instance never
    /// match its stamps). Weak, like the shard state's data: the state of a
    /// stopped actor goes to its supervisor, and cached results must not
    /// outlive the tenant there.
    pub cache: Weak<ReadCache>,
}

/// A replica's place in a replicated group.
#[derive(Clone)]
pub struct ReplicaNet {
    /// The node's peer transport.
    pub net: Arc<dyn crate::raft::Transport>,
    /// The group's first membership, when this replica is one of its
    /// initial members (it then initialises an empty log with it).
    pub initial: Option<std::collections::BTreeMap<u64, openraft::BasicNode>>,
}

/// The actor.
pub struct ShardActor;

/// Its state.
pub struct ShardState {
    args: ShardArgs,
    raft: ShardRaft,
    /// Weak: ractor hands a stopped actor's state to its supervisor in
    /// the termination event, which the supervisor reads only after the
    /// stop it is handling; a strong reference there kept the RocksDB
    /// instance open past `release` (5 s per tenant at shutdown).
    data: Weak<ShardData>,
    checkpointed: u64,
    /// When exactly-once results were last expired (coarse ms).
    expired_once_at: u64,
    /// Counter checkpoints and reservations still on their way through
    /// the log. A close waits for them before it saves the exact counts:
    /// a reservation that landed after that save would leave the stored
    /// count one reservation step above the requests admitted. At most
    /// one reservation is pending at a time and checkpoints go out once
    /// per tick, so this stays small; finished tasks are reaped on spawn.
    counter_writes: tokio::task::JoinSet<()>,
}

/// How long a node remembers a write's exactly-once result for a client
/// that never acknowledges it (a client that went away).
pub const ONCE_TTL: Duration = Duration::from_secs(600);

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let (env, dir) = (args.env.clone(), args.dir.clone());
        let data = tokio::task::spawn_blocking(move || ShardData::open(&env, &dir)).await??;
        let raft = match &args.cluster {
            None => {
                raft::start_single_node_group(
                    &args.settings,
                    args.replica,
                    &args.logs,
                    args.group,
                    data.clone(),
                )
                .await?
            }
            Some(c) => {
                raft::start_replicated_group(
                    &args.settings,
                    args.replica,
                    &args.logs,
                    args.group,
                    data.clone(),
                    c.net.clone(),
                    c.initial.clone(),
                    true,
                )
                .await?
            }
        };
        *args.slot.lock() = Some((raft.clone(), data.clone()));
        let ready = async {
            // Resume the request counters persisted through the log.
            args.limiter.restore_quota(data.quota()?);
            // Bring the storage limits in force up to the tenant config
            // (on a cluster, the leader's reconcile does it).
            if args.cluster.is_none() && data.limits().as_ref() != Some(&args.storage_limits) {
                propose(&raft, Command::SetLimits(args.storage_limits.clone())).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(e) = ready {
            // Do not leave a running group behind a failed start.
            let _ = raft.shutdown().await;
            args.slot.lock().take();
            return Err(e.into());
        }
        myself.send_interval(args.quota_checkpoint, || ShardMsg::CheckpointQuota);
        watch_leadership(&raft, args.limiter.clone());
        tracing::info!(tenant = %args.tenant_id, group = args.group, objects = data.object_count(), "shard started");
        let checkpointed = args.limiter.quota_snapshot().1;
        Ok(ShardState {
            args,
            raft,
            data: Arc::downgrade(&data),
            checkpointed,
            expired_once_at: crate::util::coarse_now_ms(),
            counter_writes: tokio::task::JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::CheckpointQuota => {
                // Expired entries give their bytes back while the tenant idles.
                if let Some(cache) = st.args.cache.upgrade() {
                    cache.run_pending_tasks();
                }
                // This replica's snapshots (see raft::snapshot_due); the
                // same timer as the counter checkpoint.
                let due = {
                    use openraft::async_runtime::WatchReceiver;
                    let m = st.raft.metrics();
                    let m = m.borrow_watched();
                    raft::snapshot_due(
                        &m,
                        st.args.settings.snapshot_every,
                        st.args.settings.keep_after_snapshot,
                    )
                };
                if due {
                    let _ = st.raft.trigger().snapshot().await;
                }
                // Only the leader's counts are the tenant's; they only ever
                // raise what is persisted (merge_max at apply).
                let (quota, version) = st.args.limiter.quota_snapshot();
                if version != st.checkpointed && is_leader(&st.raft) {
                    st.checkpointed = version;
                    let raft = st.raft.clone();
                    let tenant = st.args.tenant_id.clone();
                    let now = crate::util::coarse_now_ms();
                    // Results of clients that went away, at most once a
                    // minute and only while the tenant is active (an idle
                    // group stays quiet).
                    let expire = now.saturating_sub(st.expired_once_at) >= 60_000;
                    if expire {
                        st.expired_once_at = now;
                    }
                    while st.counter_writes.try_join_next().is_some() {}
                    st.counter_writes.spawn(async move {
                        if let Err(e) = propose(&raft, Command::CheckpointQuota(quota)).await {
                            tracing::warn!(%tenant, error = %e, "request counter checkpoint failed");
                        }
                        if expire {
                            let cmd = Command::ExpireOnce {
                                before_ms: crate::util::now_ms()
                                    .saturating_sub(ONCE_TTL.as_millis() as u64),
                                max: 10_000,
                            };
                            if let Err(e) = propose(&raft, cmd).await {
                                tracing::warn!(%tenant, error = %e, "expiring exactly-once results failed");
                            }
                        }
                    });
                }
            }
            ShardMsg::Reserve(reply) => {
                let limiter = st.args.limiter.clone();
                let r = limiter.reservation(crate::util::coarse_now_ms());
                let raft = st.raft.clone();
                while st.counter_writes.try_join_next().is_some() {}
                st.counter_writes.spawn(async move {
                    let landed = match propose(&raft, Command::CheckpointQuota(r.counters)).await {
                        Ok(CommandResult::Quota { before, after }) => {
                            limiter.reserved(r.epoch, &before, &after);
                            Ok(())
                        }
                        Ok(other) => Err(Error::Storage {
                            reason: format!("unexpected reservation result {other:?}"),
                        }),
                        Err(e) => Err(e),
                    };
                    if landed.is_err() {
                        limiter.reservation_failed(r.epoch);
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(landed);
                    }
                });
            }
            ShardMsg::Fail => {
                return Err(format!("injected failure in shard {}", st.args.tenant_id).into());
            }
            ShardMsg::Settle(reply) => {
                st.finish_counter_writes().await;
                let r = st.settle().await;
                let _ = reply.send(r);
            }
            ShardMsg::Close(reply) => {
                // Let the counter writes already under way land first, so
                // the exact save below is the last word on the counts.
                st.finish_counter_writes().await;
                let (quota, _) = st.args.limiter.quota_snapshot();
                // Nothing to save when the counts are already persisted
                // exactly (settled before the group went idle), or when
                // this leader never reserved (its counts may be behind an
                // earlier leader's).
                let needless = st.args.limiter.taking_over()
                    || st
                        .data
                        .upgrade()
                        .and_then(|d| d.quota().ok())
                        .is_some_and(|q| q.same_counts(&quota));
                let r = async {
                    // The leader replaces its unused reservation by the
                    // counts really admitted; a follower has none to keep.
                    // Best effort: without a quorum (the last node of a
                    // cluster to stop) the durable reservation stands, which
                    // never lets a tenant past a limit; it costs the tenant
                    // at most one reservation step of its budget.
                    if is_leader(&st.raft) && !needless {
                        let set = propose(&st.raft, Command::SetQuota(quota));
                        match tokio::time::timeout(CLOSE_QUOTA_WAIT, set).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(
                                tenant = %st.args.tenant_id, error = %e,
                                "request counts not saved at close; the durable reservation stands"
                            ),
                            Err(_) => tracing::warn!(
                                tenant = %st.args.tenant_id,
                                "request counts not saved within {CLOSE_QUOTA_WAIT:?} at close; the durable reservation stands"
                            ),
                        }
                    }
                    st.raft.shutdown().await.map_err(raft::raft_err)?;
                    if let Some(data) = st.data.upgrade() {
                        tokio::task::spawn_blocking(move || data.flush())
                            .await
                            .map_err(raft::raft_err)??;
                    }
                    Ok(())
                }
                .await;
                // The slot stays filled: the supervisor's release() waits on
                // it until the RocksDB instance is really closed.
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ShardMsg>,
        st: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // Idempotent: a closed group answers with an error we ignore.
        let _ = st.raft.shutdown().await;
        tracing::info!(tenant = %st.args.tenant_id, "shard stopped");
        Ok(())
    }
}

impl ShardState {
    /// Waits (a while) for the counter writes under way, so a save of the
    /// exact counts after them is the last word.
    async fn finish_counter_writes(&mut self) {
        let pending = async { while self.counter_writes.join_next().await.is_some() {} };
        if tokio::time::timeout(CLOSE_QUOTA_WAIT, pending)
            .await
            .is_err()
        {
            self.counter_writes.abort_all();
        }
    }

    /// [`ShardMsg::Settle`]: writes the leader's exact counts when they
    /// differ from what is persisted; whether it wrote.
    async fn settle(&mut self) -> Result<bool, Error> {
        if !is_leader(&self.raft) {
            return Ok(false);
        }
        let Some(data) = self.data.upgrade() else {
            return Ok(false);
        };
        let Some(counts) = self.args.limiter.settle() else {
            return Ok(false);
        };
        // The periodic checkpoint has nothing newer to write after this.
        self.checkpointed = self.args.limiter.quota_snapshot().1;
        if data.quota()?.same_counts(&counts) {
            return Ok(false);
        }
        tokio::time::timeout(
            CLOSE_QUOTA_WAIT,
            propose(&self.raft, Command::SetQuota(counts)),
        )
        .await
        .map_err(|_| Error::Unavailable {
            reason: format!("request counts not saved within {CLOSE_QUOTA_WAIT:?}"),
        })??;
        Ok(true)
    }
}

/// How long a closing leader waits to save its exact request counts.
const CLOSE_QUOTA_WAIT: Duration = Duration::from_secs(2);

/// The `SetLimits` to propose before `cmd` when the shard has no storage
/// limits in force yet. A standalone shard sets them in `pre_start`; a
/// new group on a cluster would otherwise wait for the leader's reconcile
/// pass (every 250 ms), and a write applied before it would meet no
/// limit at all. Proposed ahead of the write through the same log, the
/// limits apply before it on every replica.
fn limits_first(data: &ShardData, cmd: &Command, want: &StorageLimitConfig) -> Option<Command> {
    if data.limits().is_some() || matches!(cmd, Command::SetLimits(_)) {
        return None;
    }
    Some(Command::SetLimits(want.clone()))
}

/// Proposes a write and waits for its applied result: first the shard's
/// storage limits when none are in force yet (see `limits_first`), then
/// `cmd`. The caller's task runs it (see `db::session::call_write`).
pub async fn write(
    raft: &ShardRaft,
    data: &ShardData,
    cmd: Command,
    limits: &StorageLimitConfig,
) -> Result<CommandResult, Error> {
    if let Some(set) = limits_first(data, &cmd, limits) {
        propose(raft, set).await?;
    }
    propose(raft, cmd).await
}

/// Proposes a command and waits for its applied result.
pub async fn propose(raft: &ShardRaft, cmd: Command) -> Result<CommandResult, Error> {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(resp.data),
        Err(openraft::errors::RaftError::APIError(e)) => Err(Error::Unavailable {
            reason: e.to_string(),
        }),
        Err(e) => Err(raft::raft_err(e)),
    }
}

/// Keeps the limiter's reservations on exactly while this replica leads
/// its group; ends when the group shuts down.
fn watch_leadership(raft: &ShardRaft, limiter: Arc<TenantLimiter>) {
    use openraft::async_runtime::WatchReceiver;
    let mut rx = raft.server_metrics();
    tokio::spawn(async move {
        loop {
            let leader = rx.borrow_watched().state == openraft::ServerState::Leader;
            limiter.set_reserving(leader);
            if rx.changed().await.is_err() {
                limiter.set_reserving(false);
                return;
            }
        }
    });
}

/// Whether this replica currently leads its group.
pub fn is_leader(raft: &ShardRaft) -> bool {
    use openraft::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().state == openraft::ServerState::Leader
}

fn sole_voter_leader(raft: &ShardRaft) -> bool {
    use openraft::async_runtime::WatchReceiver;
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.state == openraft::ServerState::Leader
        && m.membership_config.membership().voter_ids().count() == 1
}

/// Serves a read: after the read-index round a linearizable read needs,
/// from the tenant's cache when it holds this read at the shard's current
/// stamp, else from the data (and caches the result), off the async
/// worker's duties. The session calls it on its own task: a read needs
/// nothing of the actor, and going through its mailbox cost two more
/// thread hops per read.
pub async fn read(
    raft: &ShardRaft,
    data: Arc<ShardData>,
    cache: Option<&ReadCache>,
    op: ReadOp,
    consistency: Consistency,
    complexity_limit: u64,
) -> Result<ReadResult, Error> {
    // In a one-voter group every acknowledged write is already applied here
    // (client_write returns after apply), so a local read is linearizable
    // as long as this replica is the leader; no read-index round needed.
    if consistency == Consistency::Linearizable && !sole_voter_leader(raft) {
        let at = raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map_err(|e| Error::Unavailable {
                reason: e.to_string(),
            })?;
        tracing::debug!(read_log_id = %at, "linearizable read confirmed");
    }
    // No cache (the tenant is going away, or caching is off): plain read.
    let cache = cache.filter(|c| c.enabled());
    let key = cache.and_then(|_| cache::key_of(&op, complexity_limit));
    // The stamp is taken after the read index is applied here and before
    // the data is read: see `ShardData::read_stamp`.
    let stamp = data.read_stamp();
    if let (Some(c), Some(k)) = (cache, key.as_ref()) {
        if let Some(hit) = c.get(k, stamp) {
            return Ok(hit);
        }
    }
    let short = matches!(&op, ReadOp::Search(s, _) if data.short_search(s));
    let reader = data.clone();
    let limit = complexity_limit;
    let run = move || match op {
        ReadOp::Get(id) => data.get(&id).map(ReadResult::Object),
        ReadOp::Query(q) => data
            .query(&q, &mut WorkMeter::for_query(limit, &q))
            .map(ReadResult::Objects),
        ReadOp::Search(s, with_objects) => data
            .vector_search(&s, with_objects, &mut WorkMeter::for_search(limit, &s))
            .map(ReadResult::Hits),
        ReadOp::SearchBatch(ss, with_objects) => data
            .vector_search_batch(
                &ss,
                with_objects,
                &mut WorkMeter::for_search_batch(limit, &ss),
            )
            .map(ReadResult::HitLists),
        ReadOp::Traverse(t) => data
            .traverse(&t, &mut WorkMeter::for_traverse(limit, &t))
            .map(ReadResult::Nodes),
        ReadOp::Scan(c, after, n) => data
            .scan(
                &c,
                after.as_deref(),
                n as usize,
                &mut WorkMeter::for_scan(limit),
            )
            .map(ReadResult::Objects),
    };
    // Disk and FAISS work never blocks an async worker, but for a short
    // search, whose hand-off would cost more than it saves.
    let result = if short {
        run()?
    } else {
        crate::shard::run_blocking(run)
            .await
            .map_err(raft::raft_err)??
    };
    // A result read while a write was applied could never be used again.
    if let (Some(c), Some(k)) = (cache, key) {
        if reader.read_stamp() == stamp {
            c.insert(k, stamp, &result);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::{CollectionSpec, LimitKind, NewObject, WriteOp};
    use crate::storage::StorageEnv;
    use crate::tenant::{TenantConfig, Tiers};

    fn put(id: &str) -> Command {
        Command::Write {
            ops: vec![WriteOp::Put(NewObject::new("c", id, serde_json::json!({})))],
            atomic: true,
            now_ms: 1,
        }
    }

    #[test]
    fn a_new_shards_first_write_is_preceded_by_its_storage_limits() {
        let dir = tempfile::tempdir().unwrap();
        let data = ShardData::open(&StorageEnv::default(), dir.path()).unwrap();
        let mut want =
            TenantConfig::for_tier(&Tiers::default(), "t", "T", "tier1", serde_json::json!({}))
                .unwrap()
                .storage_limit;
        want.max_objects = 1;
        let apply = |c: &Command| data.apply(Some(c), b"log-id", None).unwrap();
        // What the actor does with the first write of a group whose
        // limits have not been set: the limits go into the log first.
        let create = Command::CreateCollection(CollectionSpec::plain("c"));
        let first = limits_first(&data, &create, &want).unwrap();
        assert_eq!(first, Command::SetLimits(want.clone()));
        apply(&first);
        apply(&create);
        assert_eq!(limits_first(&data, &put("a"), &want), None);
        assert_eq!(
            limits_first(&data, &Command::SetLimits(want.clone()), &want),
            None
        );
        // So the very first writes already meet them.
        apply(&put("a"));
        match apply(&put("b")) {
            CommandResult::Write { results, .. } => {
                let e = results[0].clone().unwrap_err();
                assert_eq!(e.limit().unwrap().kind, LimitKind::Objects);
            }
            other => panic!("{other:?}"),
        }
    }
}
