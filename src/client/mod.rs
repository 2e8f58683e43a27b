//! The QUIC client driver.
//!
//! One connection (to the first reachable address) carries every request,
//! each on its own stream, so concurrent calls share it. The connection is
//! authenticated with an API key; the server takes the tenant and user
//! from that key. Retryable errors (rate limits, concurrency, overload,
//! unavailability, lost connections) are retried with exponential backoff
//! and jitter, never sooner than the server's `retry_after`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vektagraf::proto::Error> {
//! use vektagraf::client::{Client, ClientOptions};
//! use vektagraf::proto::{CollectionSpec, NewObject};
//! let opts = ClientOptions::new(vec!["127.0.0.1:7687".parse().unwrap()], "vk_...", "data/tls/server.crt".as_ref())?;
//! let c = Client::connect(opts).await?;
//! c.create_collection(CollectionSpec::vectors("docs", 3)).await?;
//! c.put(NewObject::new("docs", "d1", serde_json::json!({"t": 1})).with_vector(vec![0.1, 0.2, 0.3])).await?;
//! let got = c.get("d1").await?;
//! # Ok(()) }
//! ```
//!
//! This module imports only `proto` and `net::{tls, frame}`: no server code.

mod events;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint};
use rand::Rng;
use rustls::pki_types::CertificateDer;

use crate::net::frame::{read_frame, write_frame};
use crate::net::tls;
use crate::proto::wire::{Envelope, KeyInfo, KeyKind, Request, Response, ALPN, MAX_FRAME_BYTES};
use crate::proto::{
    CollectionSpec, Error, NewObject, Object, OperationType, PropertyIndex, Query, Result,
    SearchHit, TenantUsage, Traverse, TraversedNode, VectorSearch, WriteOp, WriteOutcome,
    WriteResult,
};
use crate::tenant::{TenantConfig, TenantUpdate};

pub use events::EventStream;

/// How the driver connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Node addresses, tried in order.
    pub addrs: Vec<SocketAddr>,
    /// Name the server certificate must carry (default `localhost`).
    pub server_name: String,
    /// Certificates to trust: the node's self-signed certificate or the cluster CA.
    pub trust: Vec<CertificateDer<'static>>,
    /// The API key.
    pub api_key: String,
    /// Deadline of one attempt; retries never wait past this from the
    /// first attempt either (a refusal whose `retry_after` lies beyond it,
    /// a daily quota for example, returns at once).
    pub request_timeout: Duration,
    /// Longest wait for one address to answer a connect (then the next
    /// address is tried).
    pub connect_timeout: Duration,
    /// Retries after the first attempt (R4 `max_retries`).
    pub max_retries: u32,
    /// First backoff (R4 `base_delay`), doubled per retry, with jitter.
    pub base_delay: Duration,
    /// Longest single wait.
    pub max_delay: Duration,
    /// Items per batch request (the tenant's `max_batch_size`).
    pub max_batch_size: usize,
    /// Follow the leader hints of a cluster: send a tenant's requests to
    /// the node leading its shard, saving the forwarding hop (default on;
    /// off when the nodes' client addresses are not reachable as the
    /// cluster records them).
    pub follow_leader: bool,
    /// Fault injection for tests: the first answer to each of the first
    /// this many writes is thrown away as if the network had lost it (the
    /// write has run on the node), so the driver retries it.
    pub fault_lose_write_answers: u32,
}

impl ClientOptions {
    /// Options with defaults: 3 retries from 100 ms, 30 s timeout.
    pub fn new(addrs: Vec<SocketAddr>, api_key: &str, trust_pem: &Path) -> Result<Self> {
        Ok(Self {
            addrs,
            server_name: "localhost".into(),
            trust: tls::read_certs(trust_pem)?,
            api_key: api_key.to_string(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            max_batch_size: crate::tenant::DEFAULT_MAX_BATCH_SIZE,
            follow_leader: true,
            fault_lose_write_answers: 0,
        })
    }
}

/// A connected, authenticated client.
pub struct Client {
    opts: ClientOptions,
    endpoint: Endpoint,
    /// The live connection (a plain lock: the fast path never awaits).
    conn: parking_lot::Mutex<Option<Connection>>,
    /// Serialises (re)connecting.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    principal: parking_lot::Mutex<Option<KeyInfo>>,
    /// Random id under which the nodes remember this client's writes.
    client_id: u64,
    /// Next write sequence number.
    next_seq: AtomicU64,
    /// Sequence numbers of writes not yet answered (bounded by the
    /// requests in flight).
    unanswered: parking_lot::Mutex<std::collections::BTreeSet<u64>>,
    /// Answers still to throw away (fault injection).
    lose_answers: std::sync::atomic::AtomicU32,
    /// The node leading this key's tenant's shard, as the last node that
    /// forwarded a request said: tried before the configured addresses.
    leader: parking_lot::Mutex<Option<SocketAddr>>,
    /// A hinted address this client could not reach, and when: not
    /// followed again for [`UNREACHABLE_FOR`] (say, behind NAT).
    unreachable: parking_lot::Mutex<Option<(SocketAddr, std::time::Instant)>>,
}

/// How long a hinted leader address that could not be reached is ignored.
const UNREACHABLE_FOR: Duration = Duration::from_secs(60);

/// A connection that has received nothing for this long (while its
/// keep-alives, every [`KEEP_ALIVE`], should have drawn an answer) is
/// taken for dead: the request is retried elsewhere when that is safe.
const SILENT_FOR: Duration = Duration::from_millis(1_500);
/// Keep-alive interval of the driver's connections.
const KEEP_ALIVE: Duration = Duration::from_millis(500);

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        reason: e.to_string(),
    }
}

fn unexpected(r: Response) -> Error {
    match r {
        Response::Error(e) => e,
        other => Error::Protocol {
            reason: format!("unexpected response {other:?}"),
        },
    }
}

impl Client {
    /// Connects to the first reachable address and authenticates.
    pub async fn connect(opts: ClientOptions) -> Result<Client> {
        let endpoint =
            Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).map_err(unavailable)?;
        Self::connect_with(opts, endpoint).await
    }

    /// Like [`connect`](Self::connect), over an already bound UDP socket
    /// (for example one bound inside another network namespace).
    pub async fn connect_on(opts: ClientOptions, socket: std::net::UdpSocket) -> Result<Client> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| unavailable("no async runtime for the QUIC endpoint"))?;
        let endpoint = Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(unavailable)?;
        Self::connect_with(opts, endpoint).await
    }

    async fn connect_with(opts: ClientOptions, mut endpoint: Endpoint) -> Result<Client> {
        let transport = tls::transport(Duration::from_secs(30), Some(KEEP_ALIVE), 1024)?;
        endpoint.set_default_client_config(tls::client_config(&opts.trust, ALPN, transport)?);
        let c = Client {
            endpoint,
            conn: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            principal: parking_lot::Mutex::new(None),
            client_id: rand::thread_rng().gen(),
            next_seq: AtomicU64::new(1),
            unanswered: parking_lot::Mutex::new(std::collections::BTreeSet::new()),
            lose_answers: std::sync::atomic::AtomicU32::new(opts.fault_lose_write_answers),
            leader: parking_lot::Mutex::new(None),
            unreachable: parking_lot::Mutex::new(None),
            opts,
        };
        c.connection().await?;
        Ok(c)
    }

    /// The node address this client's live connection goes to (after a
    /// leader hint, the shard leader's), if connected.
    pub fn connected_to(&self) -> Option<SocketAddr> {
        self.live().map(|c| c.remote_address())
    }

    /// The key's facts, as the server reported them.
    pub fn principal(&self) -> Option<KeyInfo> {
        self.principal.lock().clone()
    }

    /// The live connection, (re)connecting and authenticating if needed.
    async fn connection(&self) -> Result<Connection> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let mut last = Error::Unavailable {
            reason: "no address given".into(),
        };
        let leader = *self.leader.lock();
        let addrs = leader
            .iter()
            .chain(self.opts.addrs.iter().filter(|a| Some(**a) != leader));
        for addr in addrs {
            if let Some(l) = leader.filter(|l| l != addr) {
                // The hinted leader could not be reached: forget it.
                *self.leader.lock() = None;
                *self.unreachable.lock() = Some((l, std::time::Instant::now()));
            }
            let connecting = match self.endpoint.connect(*addr, &self.opts.server_name) {
                Ok(c) => c,
                Err(e) => {
                    last = unavailable(format!("{addr}: {e}"));
                    continue;
                }
            };
            match tokio::time::timeout(self.opts.connect_timeout, connecting).await {
                Ok(Ok(conn)) => {
                    // A connection is healthy only after a round trip.
                    let r = self
                        .round_trip(
                            &conn,
                            &Request::Authenticate {
                                api_key: self.opts.api_key.clone(),
                            },
                        )
                        .await?;
                    match r {
                        Response::Principal(info) => {
                            *self.principal.lock() = Some(info);
                            *self.conn.lock() = Some(conn.clone());
                            return Ok(conn);
                        }
                        other => return Err(unexpected(other)),
                    }
                }
                Ok(Err(e)) => last = unavailable(format!("{addr}: {e}")),
                Err(_) => {
                    last = unavailable(format!(
                        "{addr}: no answer within {} ms (connect_timeout)",
                        self.opts.connect_timeout.as_millis()
                    ))
                }
            }
        }
        Err(last)
    }

    fn live(&self) -> Option<Connection> {
        self.conn
            .lock()
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// Follows a leader hint: the next connection goes to `addr`.
    fn follow(&self, conn: &Connection, addr: SocketAddr) {
        if conn.remote_address() == addr || *self.leader.lock() == Some(addr) {
            return;
        }
        if let Some((bad, at)) = *self.unreachable.lock() {
            if bad == addr && at.elapsed() < UNREACHABLE_FOR {
                return;
            }
        }
        tracing::debug!(%addr, "following the shard leader");
        *self.leader.lock() = Some(addr);
        let mut live = self.conn.lock();
        if live
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            // Requests in flight keep their handle; new ones reconnect.
            *live = None;
        }
    }

    /// Resolves when `conn` has received nothing for [`SILENT_FOR`].
    async fn silent(conn: &Connection) {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut quiet = Duration::ZERO;
        let step = Duration::from_millis(250);
        loop {
            tokio::time::sleep(step).await;
            let now = conn.stats().udp_rx.datagrams;
            if now == seen {
                quiet += step;
                if quiet >= SILENT_FOR {
                    return;
                }
            } else {
                (seen, quiet) = (now, Duration::ZERO);
            }
        }
    }

    async fn round_trip(&self, conn: &Connection, req: &Request) -> Result<Response> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fut = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(unavailable)?;
            write_frame(&mut send, &Envelope::new(id, req))
                .await
                .map_err(unavailable)?;
            let env = read_frame::<Response>(&mut recv, MAX_FRAME_BYTES)
                .await
                .map_err(|e| Error::Protocol {
                    reason: e.to_string(),
                })?;
            if env.request_id != id && env.request_id != 0 {
                return Err(Error::Protocol {
                    reason: format!("response id {} for request {id}", env.request_id),
                });
            }
            if let Some(addr) = env.leader.filter(|_| self.opts.follow_leader) {
                self.follow(conn, addr);
            }
            Ok(env.body)
        };
        let watched = async {
            tokio::select! {
                r = fut => r,
                () = Self::silent(conn) => {
                    conn.close(0u32.into(), b"no answer");
                    Err(unavailable(format!(
                        "{}: the node stopped answering (nothing received for {} ms)",
                        conn.remote_address(),
                        SILENT_FOR.as_millis()
                    )))
                }
            }
        };
        match tokio::time::timeout(self.opts.request_timeout, watched).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                after_ms: self.opts.request_timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends a request, retrying retryable failures (R4). Every write
    /// goes out as [`Request::Once`] under this client's id and a new
    /// sequence number, so a write whose answer was lost is retried too
    /// and applies once: the retry gets the first answer.
    pub async fn call(&self, req: Request) -> Result<Response> {
        if req.operation() != Some(OperationType::Write) || matches!(req, Request::Once { .. }) {
            return self.call_attempts(req).await;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let acked_below = {
            let mut open = self.unanswered.lock();
            open.insert(seq);
            open.first().copied().unwrap_or(seq)
        };
        let once = Request::Once {
            client: self.client_id,
            seq,
            acked_below,
            request: Box::new(req),
        };
        let r = self.call_attempts(once).await;
        self.unanswered.lock().remove(&seq);
        r
    }

    async fn call_attempts(&self, req: Request) -> Result<Response> {
        let deadline = tokio::time::Instant::now() + self.opts.request_timeout;
        let mut attempt = 0u32;
        loop {
            let mut sent = false;
            let result = match self.connection().await {
                Ok(conn) => {
                    sent = true;
                    match self.round_trip(&conn, &req).await {
                        Ok(Response::Error(e)) => Err(e),
                        Ok(_)
                            if attempt == 0
                                && matches!(req, Request::Once { .. })
                                && self.lose_answer() =>
                        {
                            Err(unavailable("answer lost (fault injection)"))
                        }
                        other => other,
                    }
                }
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            // A write that reached the node and then lost its answer may have
            // happened: it is not retried (limit rejections are, they
            // happened before anything ran).
            // Writes the driver sends as `Once` are safe to retry.
            let maybe_applied = sent
                && matches!(err, Error::Unavailable { .. } | Error::Timeout { .. })
                && req.operation() == Some(OperationType::Write)
                && !matches!(req, Request::Once { .. });
            let retryable =
                err.is_retryable() && !maybe_applied && !matches!(err, Error::Timeout { .. });
            if !retryable || attempt >= self.opts.max_retries {
                return Err(err);
            }
            if matches!(err, Error::Unavailable { .. }) {
                *self.conn.lock() = None;
                // The leader may be gone: start again from the addresses
                // given; the node that answers hints the new leader.
                *self.leader.lock() = None;
            }
            let backoff = self.opts.base_delay.saturating_mul(1 << attempt.min(16));
            let jitter = rand::thread_rng().gen_range(0.5..1.5);
            let wait = backoff
                .mul_f64(jitter)
                .max(err.retry_after().unwrap_or_default())
                .min(self.opts.max_delay);
            // Never wait past the deadline: a refusal that lifts later
            // (a daily quota) is returned now.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if err.retry_after().unwrap_or_default() > left.min(self.opts.max_delay) || wait >= left
            {
                return Err(err);
            }
            tracing::debug!(attempt, ?wait, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    fn lose_answer(&self) -> bool {
        self.lose_answers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn expect_ok(&self, req: Request) -> Result<()> {
        match self.call(req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn expect_write(&self, req: Request) -> Result<WriteResult> {
        match self.call(req).await? {
            Response::Write(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    // ----- data -----

    /// Liveness.
    pub async fn ping(&self) -> Result<()> {
        match self.call(Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Declares a collection.
    pub async fn create_collection(&self, spec: CollectionSpec) -> Result<()> {
        self.expect_ok(Request::CreateCollection(spec)).await
    }

    /// Removes an empty collection.
    pub async fn drop_collection(&self, name: &str) -> Result<()> {
        self.expect_ok(Request::DropCollection(name.into())).await
    }

    /// Indexes a property of a collection (see
    /// [`Session::index_property`](crate::Session::index_property));
    /// returns the objects read to fill the index.
    pub async fn index_property(&self, collection: &str, property: &str) -> Result<u64> {
        match self
            .call(Request::IndexProperty {
                collection: collection.into(),
                property: property.into(),
            })
            .await?
        {
            Response::Indexed { objects_read } => Ok(objects_read),
            other => Err(unexpected(other)),
        }
    }

    /// The property indexes of `collection`, or of every collection.
    pub async fn indexes(&self, collection: Option<&str>) -> Result<Vec<PropertyIndex>> {
        match self
            .call(Request::ListIndexes {
                collection: collection.map(str::to_string),
            })
            .await?
        {
            Response::Indexes(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// Drops a property index (see
    /// [`Session::drop_index`](crate::Session::drop_index)); returns the
    /// index keys deleted.
    pub async fn drop_index(&self, collection: &str, property: &str) -> Result<u64> {
        match self
            .call(Request::DropIndex {
                collection: collection.into(),
                property: property.into(),
            })
            .await?
        {
            Response::IndexDropped { keys_removed } => Ok(keys_removed),
            other => Err(unexpected(other)),
        }
    }

    /// Lists collections.
    pub async fn collections(&self) -> Result<Vec<CollectionSpec>> {
        match self.call(Request::ListCollections).await? {
            Response::Collections(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// Creates or replaces an object.
    pub async fn put(&self, obj: NewObject) -> Result<WriteResult> {
        self.expect_write(Request::Put(obj)).await
    }

    /// Merges properties (and optionally replaces the vector).
    pub async fn update(
        &self,
        id: &str,
        properties: serde_json::Value,
        vector: Option<Vec<f32>>,
    ) -> Result<WriteResult> {
        self.expect_write(Request::Update {
            id: id.into(),
            properties_json: properties.to_string(),
            vector,
        })
        .await
    }

    /// Deletes an object.
    pub async fn delete(&self, id: &str) -> Result<WriteResult> {
        self.expect_write(Request::Delete(id.into())).await
    }

    /// An atomic transaction.
    pub async fn transaction(&self, ops: Vec<WriteOp>) -> Result<WriteResult> {
        self.expect_write(Request::Transaction(ops)).await
    }

    /// A batch split into requests of `max_batch_size` items, with a result per item.
    pub async fn batch(&self, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome>> {
        let mut out = Vec::with_capacity(ops.len());
        for chunk in ops.chunks(self.opts.max_batch_size.max(1)) {
            match self.call(Request::Batch(chunk.to_vec())).await {
                Ok(Response::Batch(r)) => out.extend(r),
                Ok(other) => out.extend(std::iter::repeat_n(Err(unexpected(other)), chunk.len())),
                Err(e) => out.extend(std::iter::repeat_n(Err(e), chunk.len())),
            }
        }
        out
    }

    /// Get by id.
    pub async fn get(&self, id: &str) -> Result<Option<Object>> {
        match self.call(Request::Get(id.into())).await? {
            Response::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Get by id from any replica's local state: no read-index round,
    /// possibly behind the leader (a stale read).
    pub async fn get_stale(&self, id: &str) -> Result<Option<Object>> {
        match self
            .call(Request::Stale(Box::new(Request::Get(id.into()))))
            .await?
        {
            Response::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// The cluster's nodes (admin key).
    pub async fn cluster_nodes(&self) -> Result<Vec<crate::proto::wire::ClusterNode>> {
        match self.call(Request::ClusterNodes).await? {
            Response::ClusterNodes(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// Where a tenant's shard group runs and who leads it (admin key).
    pub async fn shard_info(&self, tenant: &str) -> Result<crate::proto::wire::ShardInfo> {
        match self.call(Request::ShardInfo(tenant.into())).await? {
            Response::ShardInfo(i) => Ok(*i),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a dead node; its replicas are placed on live nodes (admin
    /// key). A node that still answers its peers is refused unless
    /// `force` (drain it first).
    pub async fn remove_node(
        &self,
        id: u64,
        force: bool,
    ) -> Result<crate::proto::wire::NodeRemoval> {
        match self.call(Request::RemoveNode { id, force }).await? {
            Response::Removed(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Moves one replica of `tenant`'s shard group to node `to` (from
    /// node `from`, or one the cluster picks), online; returns the job
    /// (admin key).
    pub async fn move_tenant(
        &self,
        tenant: &str,
        to: u64,
        from: Option<u64>,
    ) -> Result<crate::proto::MoveJob> {
        let req = Request::MoveTenant {
            tenant: tenant.into(),
            to,
            from,
        };
        self.job_answer(req).await
    }

    /// Move jobs: running ones and the recent history (admin key).
    pub async fn jobs(&self) -> Result<Vec<crate::proto::MoveJob>> {
        match self.call(Request::ListJobs).await? {
            Response::Jobs(j) => Ok(j),
            other => Err(unexpected(other)),
        }
    }

    /// One move job (admin key).
    pub async fn job(&self, id: u64) -> Result<crate::proto::MoveJob> {
        self.job_answer(Request::GetJob(id)).await
    }

    /// Cancels a move job (admin key).
    pub async fn cancel_job(&self, id: u64) -> Result<crate::proto::MoveJob> {
        self.job_answer(Request::CancelJob(id)).await
    }

    async fn job_answer(&self, req: Request) -> Result<crate::proto::MoveJob> {
        match self.call(req).await? {
            Response::Job(j) => Ok(j),
            other => Err(unexpected(other)),
        }
    }

    /// Plans, and unless `dry_run` starts, a rebalance of replicas and
    /// leaderships (admin key).
    pub async fn rebalance(&self, dry_run: bool) -> Result<crate::proto::Plan> {
        self.plan_answer(Request::Rebalance { dry_run }).await
    }

    /// Drains node `id`: moves every replica off it (admin key).
    pub async fn drain_node(&self, id: u64) -> Result<crate::proto::Plan> {
        self.plan_answer(Request::DrainNode(id)).await
    }

    async fn plan_answer(&self, req: Request) -> Result<crate::proto::Plan> {
        match self.call(req).await? {
            Response::Plan(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Property query.
    pub async fn query(&self, q: Query) -> Result<Vec<Object>> {
        match self.call(Request::Query(q)).await? {
            Response::Objects(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Vector search.
    pub async fn search(&self, search: VectorSearch, with_objects: bool) -> Result<Vec<SearchHit>> {
        match self
            .call(Request::Search {
                search,
                with_objects,
            })
            .await?
        {
            Response::Hits(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Several searches in one request (at most
    /// [`MAX_SEARCH_BATCH`](crate::db::MAX_SEARCH_BATCH)): one list of
    /// hits per search, in order.
    pub async fn search_batch(
        &self,
        searches: Vec<VectorSearch>,
        with_objects: bool,
    ) -> Result<Vec<Vec<SearchHit>>> {
        match self
            .call(Request::SearchBatch {
                searches,
                with_objects,
            })
            .await?
        {
            Response::HitLists(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Traversal.
    pub async fn traverse(&self, t: Traverse) -> Result<Vec<TraversedNode>> {
        match self.call(Request::Traverse(t)).await? {
            Response::Nodes(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    /// A page of a collection after an id (export).
    pub async fn scan(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Object>> {
        match self
            .call(Request::Scan {
                collection: collection.into(),
                after: after.map(str::to_string),
                limit,
            })
            .await?
        {
            Response::Objects(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// R3: would `op` be admitted now?
    pub async fn can_perform(&self, op: OperationType) -> Result<()> {
        self.expect_ok(Request::CanPerform(op)).await
    }

    /// Usage of the key's tenant, or (admin) of `tenant`.
    pub async fn usage(&self, tenant: Option<&str>) -> Result<TenantUsage> {
        match self
            .call(Request::Usage(tenant.map(str::to_string)))
            .await?
        {
            Response::Usage(u) => Ok(*u),
            other => Err(unexpected(other)),
        }
    }

    // ----- admin -----

    /// Every tenant's usage, each from its shard leader (admin).
    pub async fn usage_all(&self) -> Result<crate::proto::UsageReport> {
        match self.call(Request::Usage(None)).await? {
            Response::UsageReport(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// S4: deletes `tenant`'s objects (of `collection`, or all) created
    /// before `cutoff_ms`, through its shard leader; returns how many
    /// (admin).
    pub async fn purge_older_than(
        &self,
        tenant: &str,
        collection: Option<&str>,
        cutoff_ms: u64,
    ) -> Result<u64> {
        let req = Request::PurgeOlderThan {
            tenant_id: tenant.to_string(),
            collection: collection.map(str::to_string),
            cutoff_ms,
        };
        match self.call(req).await? {
            Response::Purged { removed } => Ok(removed),
            other => Err(unexpected(other)),
        }
    }

    /// A5: the newest `limit` audit entries of `tenant`'s config changes
    /// (or every tenant's), oldest first (admin).
    pub async fn audit(
        &self,
        tenant: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::proto::AuditEntry>> {
        let req = Request::Audit {
            tenant_id: tenant.map(str::to_string),
            limit,
        };
        match self.call(req).await? {
            Response::Audit(entries) => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// A2: `tenant`'s analytics report over `from_ms..to_ms`, from every
    /// node's history (admin).
    pub async fn analytics(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<crate::proto::AnalyticsReport> {
        let req = Request::Analytics {
            tenant_id: tenant.to_string(),
            from_ms,
            to_ms,
        };
        match self.call(req).await? {
            Response::Analytics(r) => Ok(*r),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a tenant.
    pub async fn create_tenant(&self, cfg: TenantConfig) -> Result<TenantConfig> {
        self.tenant_call(Request::CreateTenant(cfg)).await
    }

    /// Creates a tenant on a tier or standard name.
    pub async fn create_tenant_for_tier(
        &self,
        tenant_id: &str,
        name: &str,
        tier: &str,
    ) -> Result<TenantConfig> {
        self.tenant_call(Request::CreateTenantForTier {
            tenant_id: tenant_id.into(),
            name: name.into(),
            tier: tier.into(),
        })
        .await
    }

    /// Reads a tenant.
    pub async fn get_tenant(&self, id: &str) -> Result<TenantConfig> {
        self.tenant_call(Request::GetTenant(id.into())).await
    }

    /// Updates a tenant.
    pub async fn update_tenant(&self, id: &str, up: TenantUpdate) -> Result<TenantConfig> {
        self.tenant_call(Request::UpdateTenant(id.into(), up)).await
    }

    async fn tenant_call(&self, req: Request) -> Result<TenantConfig> {
        match self.call(req).await? {
            Response::Tenant(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a tenant and its data.
    pub async fn delete_tenant(&self, id: &str) -> Result<()> {
        self.expect_ok(Request::DeleteTenant(id.into())).await
    }

    /// Lists tenants.
    pub async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
        match self.call(Request::ListTenants).await? {
            Response::Tenants(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a user.
    pub async fn create_user(&self, tenant: &str, user: &str) -> Result<()> {
        self.expect_ok(Request::CreateUser(tenant.into(), user.into()))
            .await
    }

    /// Removes a user.
    pub async fn remove_user(&self, tenant: &str, user: &str) -> Result<()> {
        self.expect_ok(Request::RemoveUser(tenant.into(), user.into()))
            .await
    }

    /// Lists users.
    pub async fn list_users(&self, tenant: &str) -> Result<Vec<String>> {
        match self.call(Request::ListUsers(tenant.into())).await? {
            Response::Users(u) => Ok(u),
            other => Err(unexpected(other)),
        }
    }

    /// Creates a key; returns the secret (shown once) and its facts.
    pub async fn create_key(
        &self,
        kind: KeyKind,
        tenant: Option<&str>,
        user: Option<&str>,
        operations: Option<Vec<OperationType>>,
    ) -> Result<(String, KeyInfo)> {
        let req = Request::CreateKey {
            kind,
            tenant_id: tenant.map(str::to_string),
            user_id: user.map(str::to_string),
            operations,
        };
        match self.call(req).await? {
            Response::NewKey { api_key, info } => Ok((api_key, info)),
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<()> {
        self.expect_ok(Request::RevokeKey(key_id.into())).await
    }

    /// Rotates a key.
    pub async fn rotate_key(&self, key_id: &str) -> Result<(String, KeyInfo)> {
        match self.call(Request::RotateKey(key_id.into())).await? {
            Response::NewKey { api_key, info } => Ok((api_key, info)),
            other => Err(unexpected(other)),
        }
    }

    /// Lists keys.
    pub async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>> {
        match self
            .call(Request::ListKeys(tenant.map(str::to_string)))
            .await?
        {
            Response::Keys(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let conn = self.conn.lock().take();
        if let Some(c) = conn {
            c.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
