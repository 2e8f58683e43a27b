//! `Session`: every data operation, in one tenant's context and limits.
//!
//! Each operation runs the same steps, in this order:
//! 1. validate the input (typed errors, nothing proposed);
//! 2. estimate its cost: complexity and result size (Q3);
//! 3. the tenant limiter: enabled, operation allowed, concurrency, daily,
//!    monthly, rate (R1-R2, Q1-Q2), all checked before any is consumed;
//! 4. node admission by priority (Q4);
//! 5. for writes, a fail-fast storage pre-check; then the shard actor,
//!    which proposes through raft (storage limits are enforced exactly at
//!    apply) or serves the read.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;

use crate::limits::{estimate, Cost};
use crate::proto::{
    CollectionSpec, Edge, Error, LimitExceeded, LimitKind, NewObject, Object, OperationType,
    Properties, PropertyIndex, Query, Result, SearchHit, TenantUsage, Traverse, TraversedNode,
    VectorSearch, WriteOp, WriteOutcome, WriteResult,
};
use crate::shard::{Consistency, ReadOp, ReadResult, ShardData, ShardMsg};
use crate::storage::{self, Command, CommandResult, ObjectRecord};
use crate::tenant::TenantConfig;

use super::{Inner, Tenant};

/// A client's exactly-once tag for one request (see
/// [`Session::with_once`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnceTag {
    /// The client's random id.
    pub client: u64,
    /// The request's sequence number.
    pub seq: u64,
    /// Every sequence below this has been answered to the client.
    pub acked_below: u64,
}

/// Most ops in one transaction (a transaction is one raft entry).
pub const MAX_TRANSACTION_OPS: usize = 10_000;

/// Most searches in one batch search request.
pub const MAX_SEARCH_BATCH: usize = 256;

/// A (tenant, user) context. All its operations touch only its tenant.
#[derive(Clone)]
pub struct Session {
    db: Arc<Inner>,
    tenant: Arc<Tenant>,
    user: String,
    consistency: Consistency,
    once: Option<OnceTag>,
    /// The request was paid for by a grant of the shard leader's budget.
    granted: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tenant", &self.tenant_id())
            .field("user", &self.user)
            .finish()
    }
}

fn limit_err(kind: LimitKind, limit: u64, current: u64, requested: u64) -> Error {
    Error::LimitExceeded(LimitExceeded {
        kind,
        limit,
        current,
        requested,
        retry_after_ms: None,
    })
}

/// Asks the shard actor and waits for its answer, within `timeout`.
pub(crate) async fn call_shard<T: Send + 'static>(
    actor: &ActorRef<ShardMsg>,
    msg: impl FnOnce(ractor::RpcReplyPort<Result<T>>) -> ShardMsg,
    timeout: Duration,
) -> Result<T> {
    match actor.call(msg, Some(timeout)).await {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => Err(Error::Timeout {
            after_ms: timeout.as_millis() as u64,
        }),
        Ok(CallResult::SenderError) | Err(_) => Err(Error::Unavailable {
            reason: "shard stopped while serving the request".into(),
        }),
    }
}

/// Proposes `cmd` on the tenant's shard and waits for its applied
/// result, within `timeout`. It runs on the caller's task: a write needs
/// nothing of the shard actor, and its mailbox cost two thread hops.
pub(crate) async fn call_write(
    tenant: &Tenant,
    cmd: Command,
    timeout: Duration,
) -> Result<CommandResult> {
    let (raft, data) = tenant.shard()?;
    let cfg = tenant.config();
    within(
        timeout,
        crate::shard::write(&raft, &data, cmd, &cfg.storage_limit),
    )
    .await
}

/// `fut`'s result, or [`Error::Timeout`] when it takes longer than `timeout`.
async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| Error::Timeout {
            after_ms: timeout.as_millis() as u64,
        })?
}

impl Session {
    pub(crate) fn new(db: Arc<Inner>, tenant: Arc<Tenant>, user: String) -> Self {
        Self {
            db,
            tenant,
            user,
            consistency: Consistency::Linearizable,
            once: None,
            granted: false,
        }
    }

    /// The session's tenant.
    pub fn tenant_id(&self) -> String {
        self.tenant.config().tenant_id.clone()
    }

    /// The session's user.
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// The same session with its writes applied at most once under the
    /// client's (`client`, `seq`): a retry returns the first answer.
    pub fn with_once(mut self, tag: OnceTag) -> Self {
        self.once = Some(tag);
        self
    }

    /// Proposes a write command (wrapped for exactly-once when the session
    /// carries a tag; `part` numbers the commands of one request). The
    /// caller holds the tenant awake ([`hold`](Self::hold)).
    async fn propose(&self, cmd: Command, part: u32) -> Result<CommandResult> {
        self.db.reserve.check(&cmd)?;
        let cmd = match self.once {
            Some(t) => Command::Once {
                client: t.client,
                seq: t.seq,
                part,
                acked_below: t.acked_below,
                now_ms: crate::util::now_ms(),
                cmd: Box::new(cmd),
            },
            None => cmd,
        };
        call_write(&self.tenant, cmd, self.timeout()).await
    }

    /// The same session with stale (local) reads allowed.
    pub fn with_consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    /// Checks that a request naming `tenant_id` stays in this session's
    /// tenant (X1): anything else is `CrossTenantAccess`.
    pub fn check_tenant(&self, tenant_id: &str) -> Result<()> {
        let mine = self.tenant_id();
        if tenant_id.is_empty() {
            return Err(Error::MissingTenantContext);
        }
        if tenant_id != mine {
            tracing::warn!(session_tenant = %mine, target = %tenant_id, user = %self.user, "cross-tenant access refused");
            return Err(Error::CrossTenantAccess {
                session_tenant: mine,
                target_tenant: tenant_id.to_string(),
            });
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.db.config.limits.request_timeout_ms)
    }

    /// Steps 2-4: cost, tenant limits, node admission. Returns the guards
    /// that hold the concurrency and admission slots.
    async fn admit(
        &self,
        op: OperationType,
        cost: Cost,
    ) -> Result<(
        crate::limits::Permit,
        crate::limits::AdmissionPermit,
        Arc<TenantConfig>,
    )> {
        let cfg = self.tenant.config();
        let q = &cfg.request_limit;
        if cost.result_size > q.max_result_size {
            return Err(limit_err(
                LimitKind::ResultSize,
                q.max_result_size,
                0,
                cost.result_size,
            ));
        }
        if cost.complexity > q.complexity_limit {
            return Err(limit_err(
                LimitKind::Complexity,
                q.complexity_limit,
                0,
                cost.complexity,
            ));
        }
        let permit = self.admit_tenant(op).await?;
        let slot = self
            .db
            .admission
            .acquire(&cfg.tenant_id, q.priority)
            .await?;
        Ok((permit, slot, cfg))
    }

    /// The tenant limiter's check. Where the daily and monthly counts must
    /// be reserved durably first (on the shard's leader), waits for the
    /// reservation; when one runs low, starts the next in the background.
    async fn admit_tenant(&self, op: OperationType) -> Result<crate::limits::Permit> {
        use crate::limits::Admit;
        if self.granted {
            return self.tenant.limiter.admit_granted(op);
        }
        for _ in 0..4 {
            match self
                .tenant
                .limiter
                .admit_or_reserve(op, crate::util::coarse_now_ms())?
            {
                Admit::Permit(p, refill) => {
                    if refill {
                        self.tenant.start_reservation();
                    }
                    return Ok(p);
                }
                Admit::Reserve => self.tenant.reserve(self.timeout()).await?,
            }
        }
        Err(Error::Unavailable {
            reason: "request counters could not be reserved; retry".into(),
        })
    }

    /// This session's next request was already admitted against the
    /// tenant's budget on its shard leader (a grant, drawn by the router):
    /// only permission and concurrency are checked here.
    pub(crate) fn granted(&self) -> Session {
        let mut s = self.clone();
        s.granted = true;
        s
    }

    /// R3 `can_perform_operation`: would `op` be admitted now? Consumes nothing.
    pub fn can_perform_operation(&self, op: OperationType) -> Result<()> {
        self.tenant
            .limiter
            .can_perform(op, crate::util::coarse_now_ms())
    }

    // ----- writes -----

    async fn write(
        &self,
        ops: Vec<WriteOp>,
        atomic: bool,
        part: u32,
    ) -> Result<(Vec<Result<WriteOutcome>>, Vec<String>)> {
        let _awake = self.hold().await?;
        // A retry of an exactly-once write that has been applied gets its
        // first answer, before any limit or pre-check could refuse it (a
        // batch's early errors are not remembered: it goes the long way,
        // and the apply still answers it once).
        if let (Some(t), true) = (self.once, atomic) {
            match self.tenant.data()?.once_result(t.client, t.seq, part)? {
                Some(CommandResult::Write { results, warnings }) => return Ok((results, warnings)),
                Some(CommandResult::Done(Err(e))) => return Err(e),
                _ => {}
            }
        }
        let (_p, _s, cfg) = self
            .admit(OperationType::Write, estimate::write(ops.len()))
            .await?;
        let data = self.tenant.data()?;
        // A transaction fails as a whole on the first bad op; a batch keeps
        // each bad op's error in its slot and proposes the rest.
        let mut early: Vec<Option<Error>> = Vec::with_capacity(ops.len());
        let mut passing = Vec::with_capacity(ops.len());
        let mut size = 64usize;
        for op in ops {
            match precheck(&data, &cfg, &op) {
                Ok(bytes) => {
                    size += bytes;
                    early.push(None);
                    passing.push(op);
                }
                Err(e) if atomic => return Err(e),
                Err(e) => early.push(Some(e)),
            }
        }
        if passing.is_empty() {
            return Ok((
                early
                    .into_iter()
                    .map(|e| Err(e.unwrap_or_else(|| Error::storage("lost result"))))
                    .collect(),
                Vec::new(),
            ));
        }
        let cmd = Command::Write {
            ops: passing,
            atomic,
            now_ms: crate::util::now_ms(),
        };
        // `size` is the encoded size of the records, a close upper bound
        // of the command's (one encode less per write).
        if size > self.db.config.limits.max_command_bytes {
            return Err(Error::invalid(
                "write",
                format!("{size} bytes encoded; the node accepts at most {} per command (limits.max_command_bytes)", self.db.config.limits.max_command_bytes),
            ));
        }
        let r = self.propose(cmd, part).await?;
        match r {
            CommandResult::Write { results, warnings } => {
                for w in &warnings {
                    tracing::warn!(tenant = %cfg.tenant_id, "{w}");
                }
                if atomic {
                    return Ok((results, warnings));
                }
                let mut applied = results.into_iter();
                let merged = early
                    .into_iter()
                    .map(|e| match e {
                        Some(e) => Err(e),
                        None => applied
                            .next()
                            .unwrap_or_else(|| Err(Error::storage("missing result"))),
                    })
                    .collect();
                Ok((merged, warnings))
            }
            other => Err(Error::storage(format!("unexpected result {other:?}"))),
        }
    }

    async fn write_one(&self, op: WriteOp) -> Result<WriteResult> {
        let (mut results, warnings) = self.write(vec![op], true, 0).await?;
        let outcome = results
            .pop()
            .unwrap_or_else(|| Err(Error::storage("empty result")))?;
        Ok(WriteResult {
            outcomes: vec![outcome],
            warnings,
            log_index: 0,
        })
    }

    /// Creates or replaces an object.
    pub async fn put(&self, obj: NewObject) -> Result<WriteResult> {
        self.write_one(WriteOp::Put(obj)).await
    }

    /// Merges properties into an object (and optionally replaces its vector).
    pub async fn update(
        &self,
        id: &str,
        properties: serde_json::Value,
        vector: Option<Vec<f32>>,
    ) -> Result<WriteResult> {
        self.write_one(WriteOp::Update {
            id: id.to_string(),
            properties: Properties::from_json(properties)?,
            vector,
        })
        .await
    }

    /// Deletes an object and its edges.
    pub async fn delete(&self, id: &str) -> Result<WriteResult> {
        self.write_one(WriteOp::Delete { id: id.to_string() }).await
    }

    /// Adds or replaces an edge.
    pub async fn put_edge(
        &self,
        from: &str,
        label: &str,
        to: &str,
        properties: serde_json::Value,
    ) -> Result<WriteResult> {
        self.write_one(WriteOp::PutEdge(Edge {
            from: from.to_string(),
            label: label.to_string(),
            to: to.to_string(),
            properties: Properties::from_json(properties)?,
        }))
        .await
    }

    /// Removes an edge.
    pub async fn delete_edge(&self, from: &str, label: &str, to: &str) -> Result<WriteResult> {
        self.write_one(WriteOp::DeleteEdge {
            from: from.to_string(),
            label: label.to_string(),
            to: to.to_string(),
        })
        .await
    }

    /// An atomic transaction: every op applies, or none does (the error of
    /// the first failing op is returned).
    pub async fn transaction(&self, ops: Vec<WriteOp>) -> Result<WriteResult> {
        if ops.is_empty() || ops.len() > MAX_TRANSACTION_OPS {
            return Err(Error::invalid(
                "ops",
                format!("a transaction holds 1 to {MAX_TRANSACTION_OPS} ops"),
            ));
        }
        let (results, warnings) = self.write(ops, true, 0).await?;
        let outcomes = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(WriteResult {
            outcomes,
            warnings,
            log_index: 0,
        })
    }

    /// M4: a batch, split into chunks of the tenant's `max_batch_size`
    /// (each chunk is one request and one raft entry), with a result for
    /// every item. A chunk refused as a whole (a limit, say) gives its
    /// error to each of its items; later chunks still run.
    pub async fn batch(&self, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome>> {
        let size = self.tenant.config().max_batch_size();
        let mut out = Vec::with_capacity(ops.len());
        let mut iter = ops.into_iter().peekable();
        let mut part = 0u32;
        while iter.peek().is_some() {
            let chunk: Vec<WriteOp> = iter.by_ref().take(size).collect();
            part += 1;
            let n = chunk.len();
            match self.write(chunk, false, part).await {
                Ok((results, _)) => out.extend(results),
                Err(e) => out.extend(std::iter::repeat_n(Err(e), n)),
            }
        }
        out
    }

    /// Declares a collection.
    pub async fn create_collection(&self, spec: CollectionSpec) -> Result<()> {
        storage::check_collection(&spec)?;
        let _awake = self.hold().await?;
        let (_p, _s, _) = self.admit(OperationType::Write, estimate::write(1)).await?;
        self.propose(Command::CreateCollection(spec), 0)
            .await?
            .done()
            .map(|_| ())
    }

    /// Indexes `property` (a dotted path) of `collection`: a filtered
    /// vector search whose filter has an equality, `$in` or number range
    /// on it reads only the objects the index selects when they are few,
    /// and otherwise post-filters an over-fetching vector search. The
    /// index is filled from the collection's objects in the same raft
    /// entry, and kept with every write after. Returns the objects read;
    /// indexing an indexed property again reads none.
    pub async fn index_property(&self, collection: &str, property: &str) -> Result<u64> {
        let _awake = self.hold().await?;
        let (_p, _s, _) = self.admit(OperationType::Write, estimate::write(1)).await?;
        let cmd = Command::IndexProperty {
            collection: collection.to_string(),
            property: property.to_string(),
        };
        self.propose(cmd, 0).await?.done()
    }

    /// Drops the index of `property` of `collection`: its keys are
    /// deleted and no longer count toward the tenant's storage bytes;
    /// filtered searches on the property then plan without it. Returns
    /// the keys deleted; an index that does not exist is `NotFound`.
    pub async fn drop_index(&self, collection: &str, property: &str) -> Result<u64> {
        storage::props::check_path(property)?;
        let _awake = self.hold().await?;
        if self.tenant.data()?.collection(collection).is_none() {
            return Err(Error::not_found("collection", collection));
        }
        let (_p, _s, _) = self.admit(OperationType::Write, estimate::write(1)).await?;
        let cmd = Command::DropPropertyIndex {
            collection: collection.to_string(),
            property: property.to_string(),
        };
        self.propose(cmd, 0).await?.done()
    }

    /// The tenant's property indexes, of `collection` or of every
    /// collection, sorted by collection and property. Naming a collection
    /// that does not exist is `NotFound`.
    pub async fn indexes(&self, collection: Option<&str>) -> Result<Vec<PropertyIndex>> {
        let _awake = self.hold().await?;
        let data = self.tenant.data()?;
        if let Some(c) = collection {
            if data.collection(c).is_none() {
                return Err(Error::not_found("collection", c));
            }
        }
        Ok(data.property_indexes(collection))
    }

    /// Removes an empty collection.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        let _awake = self.hold().await?;
        let (_p, _s, _) = self.admit(OperationType::Write, estimate::write(1)).await?;
        self.propose(Command::DropCollection(name.to_string()), 0)
            .await?
            .done()
            .map(|_| ())
    }

    /// The tenant's collections.
    pub async fn collections(&self) -> Result<Vec<CollectionSpec>> {
        let _awake = self.hold().await?;
        Ok(self.tenant.data()?.collections())
    }

    /// S4: deletes up to `max` objects created before `cutoff_ms`; returns how many.
    pub async fn purge_older_than(
        &self,
        collection: Option<&str>,
        cutoff_ms: u64,
        max: u32,
    ) -> Result<u64> {
        let _awake = self.hold().await?;
        let (_p, _s, _) = self
            .admit(OperationType::Write, estimate::write(max as usize))
            .await?;
        let cmd = Command::PurgeOlderThan {
            collection: collection.map(str::to_string),
            cutoff_ms,
            max,
        };
        self.propose(cmd, 0).await?.done()
    }

    // ----- reads -----

    /// Admits a read by its estimate, then runs it bounded by what it
    /// really touches (the same `complexity_limit`, see `WorkMeter`).
    async fn read(&self, op: OperationType, cost: Cost, req: ReadOp) -> Result<ReadResult> {
        let _awake = self.hold().await?;
        self.read_awake(op, cost, req).await
    }

    /// [`read`](Self::read), for a caller that holds the tenant awake.
    async fn read_awake(&self, op: OperationType, cost: Cost, req: ReadOp) -> Result<ReadResult> {
        let (_p, _s, cfg) = self.admit(op, cost).await?;
        let limit = cfg.request_limit.complexity_limit;
        let (raft, data) = self.tenant.shard()?;
        let cache = &self.tenant.cache;
        let read = crate::shard::read(&raft, data, Some(cache), req, self.consistency, limit);
        within(self.timeout(), read).await
    }

    /// Get by id. An id of another tenant is simply not found here.
    pub async fn get(&self, id: &str) -> Result<Option<Object>> {
        crate::tenant::validate_name("id", id, storage::MAX_OBJECT_ID_LEN)?;
        match self
            .read(
                OperationType::Read,
                estimate::read(),
                ReadOp::Get(id.to_string()),
            )
            .await?
        {
            ReadResult::Object(o) => Ok(o),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// Property query.
    pub async fn query(&self, q: Query) -> Result<Vec<Object>> {
        if let Some(f) = &q.filter {
            f.validate()?;
        }
        match self
            .read(OperationType::Query, estimate::query(&q), ReadOp::Query(q))
            .await?
        {
            ReadResult::Objects(o) => Ok(o),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// k-NN search, optionally filtered; hits carry their objects.
    pub async fn vector_search(&self, s: VectorSearch) -> Result<Vec<SearchHit>> {
        self.search_inner(s, true).await
    }

    /// k-NN search returning ids and scores only.
    pub async fn vector_search_ids(&self, s: VectorSearch) -> Result<Vec<SearchHit>> {
        self.search_inner(s, false).await
    }

    async fn search_inner(&self, s: VectorSearch, with_objects: bool) -> Result<Vec<SearchHit>> {
        if let Some(f) = &s.filter {
            f.validate()?;
        }
        let _awake = self.hold().await?;
        let spec = self
            .tenant
            .data()?
            .collection(&s.collection)
            .ok_or_else(|| Error::not_found("collection", &s.collection))?;
        storage::check_vector(&spec, &s.vector)?;
        match self
            .read_awake(
                OperationType::VectorSearch,
                estimate::vector_search(&s),
                ReadOp::Search(s, with_objects),
            )
            .await?
        {
            ReadResult::Hits(h) => Ok(h),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// Several k-NN searches in one request (at most
    /// [`MAX_SEARCH_BATCH`]), answered in
    /// order: the unfiltered ones of a collection and one `k` go to FAISS
    /// in one call, spread over the cores. It is admitted as one
    /// vector-search request whose estimated cost is the sum of its
    /// searches' (checked against `complexity_limit` and
    /// `max_result_size`). Any bad search fails the
    /// batch; results are not cached. With 20 or more queries for one
    /// flat (or IVF) index, FAISS computes the distances with BLAS, so a
    /// score may differ from the single search's in its last bits.
    pub async fn vector_search_batch(
        &self,
        searches: Vec<VectorSearch>,
        with_objects: bool,
    ) -> Result<Vec<Vec<SearchHit>>> {
        if searches.len() > MAX_SEARCH_BATCH {
            return Err(Error::invalid(
                "searches",
                format!(
                    "{} searches; at most {} per request",
                    searches.len(),
                    MAX_SEARCH_BATCH
                ),
            ));
        }
        for s in &searches {
            if let Some(f) = &s.filter {
                f.validate()?;
            }
        }
        let _awake = self.hold().await?;
        let data = self.tenant.data()?;
        for s in &searches {
            let spec = data
                .collection(&s.collection)
                .ok_or_else(|| Error::not_found("collection", &s.collection))?;
            storage::check_vector(&spec, &s.vector)?;
        }
        let cost = estimate::vector_search_batch(&searches);
        match self
            .read_awake(
                OperationType::VectorSearch,
                cost,
                ReadOp::SearchBatch(searches, with_objects),
            )
            .await?
        {
            ReadResult::HitLists(h) => Ok(h),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// A page of a collection in id order (export); counts as a query.
    pub async fn scan(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Object>> {
        let q = Query {
            collection: collection.to_string(),
            filter: None,
            limit,
        };
        match self
            .read(
                OperationType::Query,
                estimate::query(&q),
                ReadOp::Scan(collection.to_string(), after.map(str::to_string), limit),
            )
            .await?
        {
            ReadResult::Objects(o) => Ok(o),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// Breadth-first traversal.
    pub async fn traverse(&self, t: Traverse) -> Result<Vec<TraversedNode>> {
        crate::tenant::validate_name("start", &t.start, storage::MAX_OBJECT_ID_LEN)?;
        if t.labels.len() > 64 {
            return Err(Error::invalid("labels", "at most 64 labels"));
        }
        match self
            .read(
                OperationType::GraphTraverse,
                estimate::traverse(&t),
                ReadOp::Traverse(t),
            )
            .await?
        {
            ReadResult::Nodes(n) => Ok(n),
            _ => Err(Error::storage("unexpected read result")),
        }
    }

    /// The tenant's usage.
    pub async fn usage(&self) -> Result<TenantUsage> {
        let _awake = self.hold().await?;
        super::usage_of(&self.tenant)
    }

    /// Keeps the session's tenant open on this node while held, reopening
    /// its shard first if it hibernated (`db/hibernate.rs`). One request
    /// takes one guard: a second, nested one could wait behind a tenant
    /// deletion that waits for the first.
    pub(crate) async fn hold(&self) -> Result<super::hibernate::Awake> {
        super::Database {
            inner: self.db.clone(),
        }
        .awake(&self.tenant)
        .await
    }

    /// [`usage`](Self::usage), on a replica that has just become the
    /// shard's leader only once it took over the counts earlier leaders
    /// persisted (its first reservation), so the counts never lag.
    pub async fn leader_usage(&self) -> Result<TenantUsage> {
        let _awake = self.hold().await?;
        if self.tenant.limiter().taking_over() {
            self.tenant.reserve(self.timeout()).await?;
        }
        super::usage_of(&self.tenant)
    }
}

/// Fail-fast checks before a write enters the log. Apply re-checks
/// everything exactly; this only keeps bad or hopeless writes out of it.
/// Returns about how many bytes the op adds to the command.
fn precheck(data: &ShardData, cfg: &TenantConfig, op: &WriteOp) -> Result<usize> {
    use crate::tenant::validate_name;
    let s = &cfg.storage_limit;
    let obj = match op {
        WriteOp::Put(o) => o,
        WriteOp::Update {
            id,
            properties,
            vector,
        } => {
            validate_name("id", id, storage::MAX_OBJECT_ID_LEN)?;
            if let Some(v) = vector {
                if let Some(rec) = data.store().object(id)? {
                    if let Some(spec) = data.collection(&rec.collection) {
                        storage::check_vector(&spec, v)?;
                    }
                }
            }
            return Ok(id.len()
                + properties.encoded_len()
                + vector.as_ref().map_or(0, |v| v.len() * 4)
                + 16);
        }
        WriteOp::Delete { id } => {
            validate_name("id", id, storage::MAX_OBJECT_ID_LEN)?;
            return Ok(id.len() + 8);
        }
        WriteOp::PutEdge(e) => {
            for id in [&e.from, &e.to] {
                validate_name("id", id, storage::MAX_OBJECT_ID_LEN)?;
            }
            validate_name("label", &e.label, 64)?;
            return Ok(e.from.len() + e.to.len() + e.label.len() + e.properties.encoded_len() + 16);
        }
        WriteOp::DeleteEdge { from, label, to } => {
            return Ok(from.len() + label.len() + to.len() + 16)
        }
    };
    validate_name("id", &obj.id, storage::MAX_OBJECT_ID_LEN)?;
    let spec = data
        .collection(&obj.collection)
        .ok_or_else(|| Error::not_found("collection", &obj.collection))?;
    if let Some(v) = &obj.vector {
        storage::check_vector(&spec, v)?;
    }
    let rec = ObjectRecord {
        collection: obj.collection.clone(),
        properties: obj.properties.clone(),
        created_at: 0,
        updated_at: 0,
        vector: obj.vector.clone(),
        vid: 0,
    };
    let size = storage::object_size(&obj.id, &rec)?;
    if !s.hard_limits {
        return Ok(size as usize + 16);
    }
    if size > s.max_object_size {
        return Err(limit_err(
            LimitKind::ObjectSize,
            s.max_object_size,
            size,
            size,
        ));
    }
    let usage = data.usage();
    let at_limit = usage.objects >= s.max_objects
        || usage.bytes + size > s.max_storage_bytes
        || (obj.vector.is_some() && usage.vectors >= s.max_vectors);
    // Only a write that would grow a counter past its limit needs to know
    // whether the object exists (one read); most writes skip it.
    if at_limit && data.store().object(&obj.id)?.is_none() {
        if usage.objects >= s.max_objects {
            return Err(limit_err(
                LimitKind::Objects,
                s.max_objects,
                usage.objects,
                1,
            ));
        }
        if obj.vector.is_some() && usage.vectors >= s.max_vectors {
            return Err(limit_err(
                LimitKind::Vectors,
                s.max_vectors,
                usage.vectors,
                1,
            ));
        }
        return Err(limit_err(
            LimitKind::StorageBytes,
            s.max_storage_bytes,
            usage.bytes,
            size,
        ));
    }
    Ok(size as usize + 16)
}
