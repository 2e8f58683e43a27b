//! The peer transport: QUIC between cluster nodes, with mutual TLS from the
//! cluster CA.
//!
//! - Each node runs one quinn endpoint (ALPN `vektagraf-peer/1`) that both
//!   accepts and dials. A dialer checks the server certificate against
//!   `node-<target>`; the first stream of a connection is a `Hello`
//!   naming the dialer, whose client certificate must be valid for
//!   `node-<id>`. A certificate from another CA fails the handshake.
//! - A certificate proves a node id, not rights: the [`PeerService`]
//!   admits the node at `Hello` (both ends: the dialer checks the
//!   `Welcome`), and decides what each of its messages may do. Both
//!   carry the node's incarnation (the random id of its data directory),
//!   so a node that lost its disk is refused under its old id. Refusals
//!   are typed ([`PeerRefusal`]).
//! - One connection per pair of nodes carries every raft group's messages
//!   (each tagged with its group) and forwarded requests: an accepted
//!   connection is also used for calls back to its dialer.
//! - One message and its answer per bidirectional stream. Frames are a
//!   `u32` length and a bincode payload, at most
//!   [`PEER_MAX_FRAME`](crate::codec::MAX_DECODE_BYTES) bytes.
//! - Snapshots stream: a header naming the files, then their bytes, in
//!   1 MiB pieces, straight into a staging directory on the receiver.
//! - [`PeerNet`] is the raft layer's [`Transport`]: raft messages become
//!   `Append`/`Vote`/`PreVote`/`Snapshot` requests, and their answers
//!   and failures become raft's results and [`TransportError`]s.
//! - Dials time out after [`CONNECT_TIMEOUT`]; failed dials back off
//!   exponentially up to [`MAX_BACKOFF`]. A [`FaultFilter`] can drop or
//!   delay messages to chosen nodes (for fault tests on one machine);
//!   [`fault`](super::fault) does the same for a real process, from a
//!   file named by `VEKTAGRAF_FAULTS`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::codec;
use crate::proto::wire::{Request, Response};
use crate::proto::{Error, NodeRecord};
use crate::raft::{ShardRaftConfig as C, SnapshotMeta, Transport, TransportError, Vote};
use crate::storage::RegOp;

use super::tls::{self, Identity};

/// ALPN of the peer protocol.
pub const PEER_ALPN: &[u8] = b"vektagraf-peer/1";
/// Largest peer frame.
pub const PEER_MAX_FRAME: usize = codec::MAX_DECODE_BYTES;
/// Longest wait for a QUIC handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between two dials of an unreachable node.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Streams in flight per peer connection.
const MAX_PEER_STREAMS: u32 = 4096;
const CHUNK: usize = 1 << 20;

/// A message to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// First stream of a connection: the dialer's node id.
    Hello {
        /// Node id (checked against the client certificate).
        node: u64,
        /// The dialer's incarnation (the random id of its data directory;
        /// checked against its node record).
        incarnation: u64,
    },
    /// Raft AppendEntries for a group.
    Append {
        /// Group.
        group: u64,
        /// The RPC.
        rpc: openraft::raft::AppendEntriesRequest<C>,
    },
    /// Raft RequestVote.
    Vote {
        /// Group.
        group: u64,
        /// The RPC.
        rpc: openraft::raft::VoteRequest<C>,
    },
    /// Raft pre-vote.
    PreVote {
        /// Group.
        group: u64,
        /// The RPC.
        rpc: openraft::raft::VoteRequest<C>,
    },
    /// A full snapshot follows on the stream: these files, in order.
    Snapshot {
        /// Group.
        group: u64,
        /// The leader's vote.
        vote: Vote,
        /// Snapshot meta.
        meta: SnapshotMeta,
        /// Relative paths and sizes.
        files: Vec<(String, u64)>,
    },
    /// A client request forwarded to the node serving a tenant's shard.
    Forward {
        /// The id of the API key the client authenticated with; the
        /// serving node checks it again (exists, not revoked, of this
        /// tenant and user, allows the operation).
        key_id: String,
        /// Tenant.
        tenant: String,
        /// User.
        user: String,
        /// Forwarding hops so far (bounded).
        hops: u8,
        /// The request (`Request::Stale` for a read from any replica).
        request: Request,
    },
    /// An admin request forwarded to the metadata group's leader (or a
    /// tenant's shard leader).
    Admin {
        /// The admin key the client authenticated with (checked again
        /// where served). None only for a node's own `ShardInfo` reads.
        key_id: Option<String>,
        /// The request.
        request: Request,
        /// Forwarding hops so far (bounded).
        hops: u8,
    },
    /// A follower's router asks the shard leader's node for a grant of
    /// `want` requests of `op` from `tenant`'s budget, reporting `debt`
    /// it admitted while waiting (see `limits::grant`).
    Grant {
        /// Tenant.
        tenant: String,
        /// Operation type.
        op: crate::proto::OperationType,
        /// Requests asked for.
        want: u64,
        /// Requests admitted on credit, to charge first.
        debt: u64,
    },
    /// Registry changes proposed to the metadata group's leader: only as
    /// part of an admin request, whose key the leader checks again.
    Registry {
        /// The changes.
        ops: Vec<RegOp>,
        /// The admin key of the request that made them (None: refused).
        key_id: Option<String>,
    },
    /// A node asks to join the cluster.
    Join(NodeRecord),
    /// The leader of an idle group asks its followers to stop their
    /// raft ticks (quiescence); they agree only if they follow that
    /// leader and hold its whole log.
    Quiesce {
        /// Group.
        group: u64,
        /// The leader's replica id.
        leader: u64,
        /// The leader's last log index.
        last_index: u64,
    },
    /// Liveness probe between nodes.
    Ping,
    /// The move-job driver asks the node leading `group` to hand the
    /// leadership to replica `to`.
    TransferLeader {
        /// Group.
        group: u64,
        /// Replica id to lead.
        to: u64,
    },
    /// Which tenant groups does the node lead? (The balancer asks.)
    Leading,
    /// Raft TransferLeader: the group's leader hands over to this node's
    /// replica.
    HandOver {
        /// Group.
        group: u64,
        /// The RPC.
        rpc: openraft::raft::TransferLeaderRequest<C>,
    },
    /// A5: the dynamic limit policy's raise of a tenant's storage limits,
    /// sent by the node leading the tenant's shard to group 0's leader,
    /// which commits it as `auto_scale` only if the sender hosts one of
    /// the tenant's replicas, the tenant opted in, and every limit only
    /// grows, up to its tier's ceiling (no admin key is needed, and no
    /// other change can pass).
    RaiseLimits {
        /// Tenant.
        tenant: String,
        /// The raised storage limits.
        limits: crate::tenant::StorageLimitConfig,
        /// Why (the policy's reason).
        reason: String,
    },
    /// A2: the node's stored request history of a tenant (for an admin's
    /// analytics report; the key is checked again here).
    History {
        /// The admin key of the request.
        key_id: String,
        /// Tenant.
        tenant: String,
        /// Per minute (else per hour).
        minutes: bool,
        /// Range start, ms.
        from_ms: u64,
        /// Range end, ms.
        to_ms: u64,
    },
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Hello accepted.
    Welcome {
        /// The answering node's incarnation (the dialer checks it).
        incarnation: u64,
    },
    /// AppendEntries.
    Append(Result<openraft::raft::AppendEntriesResponse<C>, openraft::errors::RaftError<C>>),
    /// Vote or pre-vote.
    Vote(Result<openraft::raft::VoteResponse<C>, openraft::errors::RaftError<C>>),
    /// Snapshot installed (or refused).
    Snapshot(Result<openraft::raft::SnapshotResponse<C>, openraft::errors::Fatal<C>>),
    /// A forwarded request's response.
    Reply(Result<Response, Error>),
    /// A registry change: the last counter value.
    Counter(Result<u64, Error>),
    /// Requests granted (at least 1), or the limit that refuses.
    Granted(Result<u64, Error>),
    /// Quiesce accepted (true) or refused.
    Quiesced(bool),
    /// Liveness answer.
    Pong,
    /// Join result: the cluster's node records.
    Joined(Result<Vec<NodeRecord>, Error>),
    /// The message could not be served here.
    Failed(Error),
    /// Leadership transfer started (or refused: not the leader).
    Transferring(Result<(), Error>),
    /// The tenant groups this node's replicas lead.
    Leading(Vec<u64>),
    /// TransferLeader delivered (or refused).
    HandOver(Result<openraft::raft::TransferLeaderResponse<C>, openraft::errors::Fatal<C>>),
    /// The sending node has no right to this message, or to connect.
    Refused(PeerRefusal),
    /// A2: this node's rollups of a tenant, oldest first.
    History(Result<Vec<crate::proto::Rollup>, Error>),
    /// A5: a dynamic limit raise committed (or why not).
    Raised(Result<(), Error>),
}

/// Why a cluster node refuses another, whose certificate is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PeerRefusal {
    /// No node record has this id: the node may only join (or ping).
    #[error("node {node} is unknown to the cluster; it may only join")]
    UnknownNode {
        /// The node.
        node: u64,
    },
    /// The node was removed; a node id is never reused.
    #[error("node {node} was removed from the cluster and a node id is never reused; join it under a new id")]
    RemovedNode {
        /// The node.
        node: u64,
    },
    /// The node's data directory is not the one the cluster recorded: it
    /// lost its votes and log.
    #[error(
        "node {node} presents incarnation {presented:016x} but the cluster recorded \
         {recorded:016x}: it lost or replaced its data directory (votes and log); \
         remove it (`vektagraf node remove {node} --force`) and join it under a new node id"
    )]
    IncarnationMismatch {
        /// The node.
        node: u64,
        /// In its node record.
        recorded: u64,
        /// Presented now.
        presented: u64,
    },
    /// A join naming another node than the joiner's certificate.
    #[error("a join from node {certificate} (its certificate) names node {joining}")]
    JoinIdMismatch {
        /// The id the certificate names.
        certificate: u64,
        /// The id in the join.
        joining: u64,
    },
    /// A raft message (or grant) for a group the node hosts no replica of.
    #[error("node {node} hosts no replica of group {group}")]
    NotAReplica {
        /// The node.
        node: u64,
        /// The group.
        group: u64,
    },
    /// A registry write or admin request that is not the forward of an
    /// authenticated admin request.
    #[error("{what} from node {node} carries no admin key: a peer may only forward an authenticated admin request")]
    NotAnAdminForward {
        /// The node.
        node: u64,
        /// What was refused ("registry write", "admin request").
        what: String,
    },
    /// A request only the metadata group's leader sends (it drives
    /// moves), from another node.
    #[error("{what} from node {node}: only the metadata group's leader (node {leader:?} as this node sees it) sends it")]
    NotMetadataLeader {
        /// The node.
        node: u64,
        /// What was refused ("transfer leader").
        what: String,
        /// Group 0's leader as the refusing node sees it.
        leader: Option<u64>,
    },
}

/// Why a peer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// No connection (dial failed, or backing off after a failure).
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// Target.
        node: u64,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("node {node} did not answer within {after:?}")]
    Timeout {
        /// Target.
        node: u64,
        /// The deadline.
        after: Duration,
    },
    /// The stream broke or carried garbage.
    #[error("peer stream to node {node}: {reason}")]
    Stream {
        /// Target.
        node: u64,
        /// Why.
        reason: String,
    },
    /// The connection was refused at `Hello`, by the peer or by this
    /// node (see [`PeerRefusal`]).
    #[error("connection with node {node} refused: {reason}")]
    Refused {
        /// Target.
        node: u64,
        /// Why.
        reason: PeerRefusal,
    },
}

impl From<PeerError> for Error {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Refused { .. } => Error::PermissionDenied {
                reason: e.to_string(),
            },
            _ => Error::Unavailable {
                reason: e.to_string(),
            },
        }
    }
}

impl From<PeerError> for TransportError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Unreachable { .. } | PeerError::Refused { .. } => {
                TransportError::Unreachable {
                    reason: e.to_string(),
                }
            }
            PeerError::Timeout { .. } | PeerError::Stream { .. } => TransportError::Network {
                reason: e.to_string(),
            },
        }
    }
}

/// What a node serves to its peers.
pub trait PeerService: Send + Sync + 'static {
    /// Whether node `node` (its certificate checked), presenting
    /// `incarnation`, may connect: called at `Hello` on the accepting end,
    /// and on the dialing end with the `Welcome`.
    fn admit(&self, node: u64, incarnation: u64) -> Result<(), PeerRefusal>;
    /// Answers one message from node `from`.
    fn handle(&self, from: u64, req: PeerRequest) -> BoxFuture<'static, PeerResponse>;
    /// A fresh, empty directory to receive a snapshot of `group` from
    /// node `from` into, or the answer to give instead (a refusal, no
    /// replica here).
    fn snapshot_staging(&self, from: u64, group: u64) -> Result<PathBuf, Box<PeerResponse>>;
    /// Installs a received snapshot (its files are in `dir`).
    fn install_snapshot(
        &self,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
    ) -> BoxFuture<'static, PeerResponse>;
}

/// Drops or delays messages to chosen nodes: fault injection for tests
/// that cannot use network namespaces. Empty by default.
#[derive(Debug, Default)]
pub struct FaultFilter {
    dropped: RwLock<HashSet<u64>>,
    delay: RwLock<HashMap<u64, Duration>>,
}

impl FaultFilter {
    /// Drops every message to `node` (true) or stops dropping (false).
    pub fn set_dropped(&self, node: u64, dropped: bool) {
        if dropped {
            self.dropped.write().insert(node);
        } else {
            self.dropped.write().remove(&node);
        }
    }

    /// Delays every message to `node` by `d` (zero: no delay).
    pub fn set_delay(&self, node: u64, d: Duration) {
        if d.is_zero() {
            self.delay.write().remove(&node);
        } else {
            self.delay.write().insert(node, d);
        }
    }
}

#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// Earliest next dial and the current backoff.
    backoff: Mutex<Option<(Instant, Duration)>>,
    /// When the node last answered a call (coarse ms; 0: never).
    answered: std::sync::atomic::AtomicU64,
}

/// The node's peer endpoint and its connections.
pub struct PeerNet {
    me: u64,
    /// This node's incarnation, presented in `Hello` and `Welcome`.
    incarnation: std::sync::atomic::AtomicU64,
    endpoint: Endpoint,
    client: quinn::ClientConfig,
    addrs: RwLock<HashMap<u64, SocketAddr>>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    service: RwLock<Option<Arc<dyn PeerService>>>,
    /// Fault injection.
    pub faults: FaultFilter,
    /// Bandwidth cap of each snapshot stream sent, bytes/s (0: none).
    snapshot_rate: std::sync::atomic::AtomicU64,
    /// Snapshot streams being sent: (group, node) → (bytes sent, bytes in
    /// all). At most one per group and follower, removed when it ends.
    sending: Mutex<HashMap<(u64, u64), (u64, u64)>>,
}

fn tls_config_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidConfig {
        key: "cluster.tls".into(),
        reason: e.to_string(),
    }
}

/// The node name a certificate must carry.
pub fn node_name(id: u64) -> String {
    format!("node-{id}")
}

/// Whether a DER certificate is valid for `node-<id>` (its SANs).
pub fn cert_names_node(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

fn transport() -> Result<quinn::TransportConfig, Error> {
    let mut t = tls::transport(
        Duration::from_secs(10),
        Some(Duration::from_secs(2)),
        MAX_PEER_STREAMS,
    )?;
    t.max_concurrent_uni_streams(0u32.into());
    Ok(t)
}

impl PeerNet {
    /// Binds the peer endpoint. `ca`: the cluster CA; `identity`: this
    /// node's certificate (SAN `node-<me>`) and key.
    pub fn bind(
        me: u64,
        listen: SocketAddr,
        ca: &[CertificateDer<'static>],
        identity: &Identity,
    ) -> Result<Arc<PeerNet>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c.clone()).map_err(tls_config_err)?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            tls::provider(),
        )
        .build()
        .map_err(tls_config_err)?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_config_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(tls_config_err)?;
        server_tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
                .map_err(tls_config_err)?,
        ));
        server.transport_config(Arc::new(transport()?));
        let mut client_tls = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_config_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(tls_config_err)?;
        client_tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
                .map_err(tls_config_err)?,
        ));
        client.transport_config(Arc::new(transport()?));
        let endpoint = Endpoint::server(server, listen).map_err(|e| Error::InvalidConfig {
            key: "cluster.peer_listen".into(),
            reason: format!("cannot bind {listen}: {e}"),
        })?;
        Ok(Arc::new(PeerNet {
            me,
            incarnation: std::sync::atomic::AtomicU64::new(0),
            endpoint,
            client,
            addrs: RwLock::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            service: RwLock::new(None),
            faults: FaultFilter::default(),
            snapshot_rate: std::sync::atomic::AtomicU64::new(0),
            sending: Mutex::new(HashMap::new()),
        }))
    }

    /// Caps each snapshot stream this node sends at `mb_per_s` MB/s (0:
    /// no cap).
    pub fn set_snapshot_rate(&self, mb_per_s: u64) {
        self.snapshot_rate.store(
            mb_per_s.saturating_mul(1_000_000),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Snapshot streams of `group` being sent now: (node, bytes sent,
    /// bytes in all).
    pub fn snapshot_progress(&self, group: u64) -> Vec<(u64, u64, u64)> {
        self.sending
            .lock()
            .iter()
            .filter(|((g, _), _)| *g == group)
            .map(|((_, n), (sent, all))| (*n, *sent, *all))
            .collect()
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// Sets the incarnation this node presents (0 until set).
    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation
            .store(incarnation, std::sync::atomic::Ordering::Relaxed);
    }

    /// The incarnation this node presents.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.endpoint.local_addr().map_err(Error::storage)
    }

    /// Sets (or changes) the address of a node.
    pub fn set_addr(&self, node: u64, addr: SocketAddr) {
        let old = self.addrs.write().insert(node, addr);
        if old.is_some() && old != Some(addr) {
            // A moved node: drop the old connection.
            self.slots.lock().remove(&node);
        }
    }

    /// The known address of a node.
    pub fn addr(&self, node: u64) -> Option<SocketAddr> {
        self.addrs.read().get(&node).copied()
    }

    /// Starts accepting connections, serving them with `service`.
    pub fn serve(self: &Arc<Self>, service: Arc<dyn PeerService>) {
        *self.service.write() = Some(service);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(incoming) = me.endpoint.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => me.accepted(conn).await,
                        Err(e) => tracing::debug!(error = %e, "peer handshake failed"),
                    }
                });
            }
        });
    }

    /// Closes the endpoint.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }

    async fn accepted(self: Arc<Self>, conn: Connection) {
        let remote = conn.remote_address();
        // The first stream names the dialer; its certificate must agree.
        let from = match tokio::time::timeout(CONNECT_TIMEOUT, conn.accept_bi()).await {
            Ok(Ok((mut send, mut recv))) => {
                let hello: Result<PeerRequest, _> = read_msg(&mut recv).await;
                let Ok(PeerRequest::Hello { node, incarnation }) = hello else {
                    conn.close(1u32.into(), b"expected hello");
                    return;
                };
                let certified = conn
                    .peer_identity()
                    .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
                    .and_then(|chain| chain.first().map(|c| cert_names_node(c, node)))
                    .unwrap_or(false);
                if !certified {
                    tracing::warn!(%remote, claimed = node, "peer certificate does not name the node it claims; refused");
                    let _ = write_msg(
                        &mut send,
                        &PeerResponse::Failed(Error::Unauthenticated {
                            reason: format!("certificate is not valid for {}", node_name(node)),
                        }),
                    )
                    .await;
                    conn.close(2u32.into(), b"certificate does not match node id");
                    return;
                }
                let service = self.service.read().clone();
                if let Some(Err(why)) = service.map(|s| s.admit(node, incarnation)) {
                    tracing::warn!(%remote, node, reason = %why, "peer connection refused");
                    let _ = write_msg(&mut send, &PeerResponse::Refused(why)).await;
                    let _ = send.finish();
                    // Let the answer reach the dialer before the close.
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, send.stopped()).await;
                    conn.close(3u32.into(), b"peer refused");
                    return;
                }
                let welcome = PeerResponse::Welcome {
                    incarnation: self.incarnation(),
                };
                if write_msg(&mut send, &welcome).await.is_err() {
                    return;
                }
                node
            }
            _ => return,
        };
        tracing::debug!(%remote, node = from, "peer connected");
        // Calls back to this node may use this connection.
        let slot = self.slot(from);
        {
            let mut c = slot.conn.lock().await;
            if c.as_ref().is_none_or(|c| c.close_reason().is_some()) {
                *c = Some(conn.clone());
            }
        }
        self.serve_streams(from, conn).await;
    }

    async fn serve_streams(self: Arc<Self>, from: u64, conn: Connection) {
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let Some(service) = self.service.read().clone() else {
                return;
            };
            tokio::spawn(serve_stream(service, from, send, recv));
        }
    }

    fn slot(&self, node: u64) -> Arc<Slot> {
        self.slots.lock().entry(node).or_default().clone()
    }

    async fn connection(self: &Arc<Self>, node: u64) -> Result<Connection, PeerError> {
        let slot = self.slot(node);
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if let Some((next, _)) = *slot.backoff.lock() {
            if Instant::now() < next {
                return Err(PeerError::Unreachable {
                    node,
                    reason: "backing off after a failed dial".into(),
                });
            }
        }
        let r = self.dial(node).await;
        match r {
            Ok(c) => {
                *slot.backoff.lock() = None;
                *guard = Some(c.clone());
                let me = self.clone();
                let serve = c.clone();
                tokio::spawn(async move { me.serve_streams(node, serve).await });
                Ok(c)
            }
            Err(e) => {
                let mut b = slot.backoff.lock();
                let delay = b
                    .map(|(_, d)| (d * 2).min(MAX_BACKOFF))
                    .unwrap_or(Duration::from_millis(50));
                *b = Some((Instant::now() + delay, delay));
                Err(e)
            }
        }
    }

    async fn dial(&self, node: u64) -> Result<Connection, PeerError> {
        let addr = self.addr(node).ok_or_else(|| PeerError::Unreachable {
            node,
            reason: "no known address".into(),
        })?;
        self.connect(addr, &node_name(node), Some(node)).await
    }

    /// Dials `addr` expecting a certificate valid for `server_name`, and
    /// introduces this node (`Hello`); the connection is usable once the
    /// peer welcomes it and, when `node` is known (not a join), this
    /// node's service admits the peer's incarnation.
    async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        node: Option<u64>,
    ) -> Result<Connection, PeerError> {
        let (conn, incarnation) = self.greet(addr, server_name, node).await?;
        let service = self.service.read().clone();
        if let (Some(node), Some(service)) = (node, service) {
            if let Err(reason) = service.admit(node, incarnation) {
                tracing::warn!(%addr, node, reason = %reason, "refused to connect to a peer");
                conn.close(3u32.into(), b"peer refused");
                return Err(PeerError::Refused { node, reason });
            }
        }
        Ok(conn)
    }

    /// Confirms that node `node` answers at `addr`: its certificate names
    /// it, and it welcomes this node. Returns the incarnation it presents.
    /// Group 0's leader checks a join relayed by another member this way.
    pub async fn verify_node(&self, addr: SocketAddr, node: u64) -> Result<u64, PeerError> {
        let (conn, incarnation) = self.greet(addr, &node_name(node), Some(node)).await?;
        conn.close(0u32.into(), b"verified");
        Ok(incarnation)
    }

    /// Dials `addr` expecting a certificate valid for `server_name` and
    /// says `Hello`: the connection and the incarnation the peer presents.
    async fn greet(
        &self,
        addr: SocketAddr,
        server_name: &str,
        node: Option<u64>,
    ) -> Result<(Connection, u64), PeerError> {
        let id = node.unwrap_or(0);
        let unreachable = |reason: String| PeerError::Unreachable { node: id, reason };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(format!("handshake with {addr} timed out")))?
            .map_err(|e| unreachable(format!("{addr}: {e}")))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let hello = PeerRequest::Hello {
            node: self.me,
            incarnation: self.incarnation(),
        };
        write_msg(&mut send, &hello).await.map_err(unreachable)?;
        let _ = send.finish();
        let incarnation = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            read_msg::<PeerResponse>(&mut recv),
        )
        .await
        {
            Ok(Ok(PeerResponse::Welcome { incarnation })) => incarnation,
            Ok(Ok(PeerResponse::Refused(reason))) => {
                return Err(PeerError::Refused { node: id, reason })
            }
            Ok(Ok(other)) => return Err(unreachable(format!("hello refused: {other:?}"))),
            Ok(Err(e)) => return Err(unreachable(format!("hello: {e}"))),
            Err(_) => return Err(unreachable("hello timed out".into())),
        };
        Ok((conn, incarnation))
    }

    async fn faulted(&self, node: u64) -> Result<(), PeerError> {
        if self.faults.dropped.read().contains(&node) {
            return Err(PeerError::Unreachable {
                node,
                reason: "dropped by the fault filter".into(),
            });
        }
        let delay = self.faults.delay.read().get(&node).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if super::fault::apply(node, super::fault::Direction::Out).await {
            return Err(PeerError::Stream {
                node,
                reason: "lost (VEKTAGRAF_FAULTS)".into(),
            });
        }
        Ok(())
    }

    /// Sends one message and waits for its answer, at most `timeout`.
    pub async fn call(
        self: &Arc<Self>,
        node: u64,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        self.faulted(node).await?;
        let stream_err = |reason: String| PeerError::Stream { node, reason };
        let fut = async {
            let conn = self.connection(node).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| stream_err(e.to_string()))?;
            write_msg(&mut send, req).await.map_err(stream_err)?;
            let _ = send.finish();
            read_msg::<PeerResponse>(&mut recv)
                .await
                .map_err(stream_err)
        };
        let answer =
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| PeerError::Timeout {
                    node,
                    after: timeout,
                })??;
        self.slot(node).answered.store(
            crate::util::coarse_now_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(answer)
    }

    /// Whether `node` answered a call within `within`: a round trip
    /// (a raft heartbeat's answer, say) that spares the liveness probe
    /// its ping.
    pub fn answered_within(&self, node: u64, within: Duration) -> bool {
        let at = match self.slots.lock().get(&node) {
            Some(s) => s.answered.load(std::sync::atomic::Ordering::Relaxed),
            None => return false,
        };
        at > 0 && crate::util::coarse_now_ms().saturating_sub(at) < within.as_millis() as u64
    }

    /// Sends one message over a one-off connection to an address whose
    /// node id is not known yet (joining): the certificate must come from
    /// the cluster CA and name the address's IP.
    pub async fn call_addr(
        &self,
        addr: SocketAddr,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        let err = |reason: String| PeerError::Unreachable { node: 0, reason };
        let fut = async {
            let conn = self.connect(addr, &addr.ip().to_string(), None).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(e.to_string()))?;
            write_msg(&mut send, req).await.map_err(err)?;
            let _ = send.finish();
            let r = read_msg::<PeerResponse>(&mut recv).await.map_err(err);
            conn.close(0u32.into(), b"done");
            r
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PeerError::Timeout {
                node: 0,
                after: timeout,
            })?
    }

    /// Streams the snapshot in `dir` (every file, recursively) to `node`
    /// and waits for it to be installed. `timeout` bounds each step that
    /// should be quick (connecting, each chunk written, so a stalled
    /// stream fails), not the whole stream: a big snapshot under the
    /// bandwidth cap takes as long as it takes. The wait for the install
    /// answer grows with the snapshot's size (the receiver copies it and
    /// loads its indexes).
    pub async fn send_snapshot(
        self: &Arc<Self>,
        node: u64,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: &Path,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        self.faulted(node).await?;
        let stream_err = |reason: String| PeerError::Stream { node, reason };
        let files = list_files(dir).map_err(|e| stream_err(e.to_string()))?;
        let timed_out = || PeerError::Timeout {
            node,
            after: timeout,
        };
        let conn = tokio::time::timeout(timeout, self.connection(node))
            .await
            .map_err(|_| timed_out())??;
        let (mut send, mut recv) = tokio::time::timeout(timeout, conn.open_bi())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| stream_err(e.to_string()))?;
        let header = PeerRequest::Snapshot {
            group,
            vote,
            meta,
            files: files.clone(),
        };
        write_msg(&mut send, &header).await.map_err(stream_err)?;
        let total: u64 = files.iter().map(|(_, l)| *l).sum();
        let _progress = Sending::start(self, group, node, total);
        let rate = self
            .snapshot_rate
            .load(std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        let mut buf = vec![0u8; CHUNK];
        for (name, len) in &files {
            let mut f = tokio::fs::File::open(dir.join(name))
                .await
                .map_err(|e| stream_err(format!("{name}: {e}")))?;
            let mut left = *len;
            while left > 0 {
                let n = (left as usize).min(CHUNK);
                tokio::io::AsyncReadExt::read_exact(&mut f, &mut buf[..n])
                    .await
                    .map_err(|e| stream_err(format!("{name}: {e}")))?;
                tokio::time::timeout(timeout, send.write_all(&buf[..n]))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| stream_err(e.to_string()))?;
                left -= n as u64;
                sent += n as u64;
                if let Some(p) = self.sending.lock().get_mut(&(group, node)) {
                    p.0 = sent;
                }
                if rate > 0 {
                    // Ahead of the cap: wait until the bytes sent are due.
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        let _ = send.finish();
        let install = timeout + Duration::from_secs_f64(total as f64 / INSTALL_FLOOR_BYTES_PER_S);
        tokio::time::timeout(install, read_msg::<PeerResponse>(&mut recv))
            .await
            .map_err(|_| PeerError::Timeout {
                node,
                after: install,
            })?
            .map_err(stream_err)
    }
}

/// The slowest install a snapshot's receiver is allowed (bytes/s): the
/// wait for its answer grows by the snapshot's size at this rate.
const INSTALL_FLOOR_BYTES_PER_S: f64 = 20e6;

/// Marks a snapshot stream in [`PeerNet::snapshot_progress`] while it
/// lives.
struct Sending<'a> {
    net: &'a PeerNet,
    key: (u64, u64),
}

impl<'a> Sending<'a> {
    fn start(net: &'a PeerNet, group: u64, node: u64, total: u64) -> Sending<'a> {
        net.sending.lock().insert((group, node), (0, total));
        Sending {
            net,
            key: (group, node),
        }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.net.sending.lock().remove(&self.key);
    }
}

/// A peer's remote error.
fn remote(e: impl std::fmt::Display) -> TransportError {
    TransportError::Remote {
        reason: e.to_string(),
    }
}

/// An answer of the wrong kind.
fn unexpected(r: PeerResponse) -> TransportError {
    TransportError::Network {
        reason: format!("unexpected answer: {r:?}"),
    }
}

/// The answer to a vote or a pre-vote.
fn vote_answer(
    r: Result<PeerResponse, PeerError>,
) -> Result<openraft::raft::VoteResponse<C>, TransportError> {
    match r? {
        PeerResponse::Vote(r) => r.map_err(remote),
        PeerResponse::Failed(e) => Err(remote(e)),
        other => Err(unexpected(other)),
    }
}

impl Transport for PeerNet {
    fn transfer_leader(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: openraft::raft::TransferLeaderRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<openraft::raft::TransferLeaderResponse<C>, TransportError>> {
        Box::pin(async move {
            match self
                .call(node, &PeerRequest::HandOver { group, rpc }, ttl)
                .await?
            {
                PeerResponse::HandOver(r) => r.map_err(remote),
                PeerResponse::Failed(e) => Err(remote(e)),
                other => Err(unexpected(other)),
            }
        })
    }

    fn append(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: openraft::raft::AppendEntriesRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<openraft::raft::AppendEntriesResponse<C>, TransportError>> {
        Box::pin(async move {
            match self
                .call(node, &PeerRequest::Append { group, rpc }, ttl)
                .await?
            {
                PeerResponse::Append(r) => r.map_err(remote),
                PeerResponse::Failed(e) => Err(remote(e)),
                other => Err(unexpected(other)),
            }
        })
    }

    fn vote(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: openraft::raft::VoteRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<openraft::raft::VoteResponse<C>, TransportError>> {
        Box::pin(async move {
            vote_answer(
                self.call(node, &PeerRequest::Vote { group, rpc }, ttl)
                    .await,
            )
        })
    }

    fn pre_vote(
        self: Arc<Self>,
        node: u64,
        group: u64,
        rpc: openraft::raft::VoteRequest<C>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<openraft::raft::VoteResponse<C>, TransportError>> {
        Box::pin(async move {
            vote_answer(
                self.call(node, &PeerRequest::PreVote { group, rpc }, ttl)
                    .await,
            )
        })
    }

    fn full_snapshot(
        self: Arc<Self>,
        node: u64,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<openraft::raft::SnapshotResponse<C>, TransportError>> {
        Box::pin(async move {
            match self
                .send_snapshot(node, group, vote, meta, &dir, ttl)
                .await?
            {
                PeerResponse::Snapshot(r) => r.map_err(remote),
                PeerResponse::Failed(e) => Err(remote(e)),
                other => Err(unexpected(other)),
            }
        })
    }
}

/// Every regular file under `dir`, as (relative path, size), sorted.
fn list_files(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let path = rel.join(e.file_name());
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                out.push((path.to_string_lossy().into_owned(), e.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A relative path that stays inside its directory.
fn safe_relative(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

async fn serve_stream(
    service: Arc<dyn PeerService>,
    from: u64,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    if super::fault::apply(from, super::fault::Direction::In).await {
        return; // lost: the stream closes unanswered
    }
    let resp = match read_msg::<PeerRequest>(&mut recv).await {
        Ok(PeerRequest::Snapshot {
            group,
            vote,
            meta,
            files,
        }) => match service.snapshot_staging(from, group) {
            Ok(dir) => {
                // The staging directory goes whatever happens (a node
                // killed meanwhile sweeps it at the shard's next open).
                let r = match receive_files(&dir, &files, &mut recv).await {
                    Ok(()) => {
                        service
                            .install_snapshot(group, vote, meta, dir.clone())
                            .await
                    }
                    Err(e) => {
                        tracing::info!(group, from, error = %e, "snapshot receive failed");
                        PeerResponse::Failed(e)
                    }
                };
                let _ = tokio::fs::remove_dir_all(&dir).await;
                r
            }
            Err(answer) => *answer,
        },
        Ok(req) => service.handle(from, req).await,
        Err(e) => PeerResponse::Failed(Error::Protocol { reason: e }),
    };
    if write_msg(&mut send, &resp).await.is_ok() {
        let _ = send.finish();
    }
}

/// Receives the snapshot files named in its header into `dir`.
async fn receive_files(
    dir: &Path,
    files: &[(String, u64)],
    recv: &mut RecvStream,
) -> Result<(), Error> {
    let proto = |reason: String| Error::Protocol { reason };
    let mut buf = vec![0u8; CHUNK];
    for (name, len) in files {
        if !safe_relative(name) {
            return Err(proto(format!(
                "snapshot file name {name:?} is not a plain relative path"
            )));
        }
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::storage)?;
        }
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(Error::storage)?;
        let mut left = *len;
        while left > 0 {
            let n = (left as usize).min(CHUNK);
            recv.read_exact(&mut buf[..n])
                .await
                .map_err(|e| proto(format!("snapshot stream ended inside {name}: {e}")))?;
            f.write_all(&buf[..n]).await.map_err(Error::storage)?;
            left -= n as u64;
        }
        f.sync_all().await.map_err(Error::storage)?;
    }
    Ok(())
}

/// Writes one length-prefixed message.
async fn write_msg<T: Serialize>(send: &mut SendStream, v: &T) -> Result<(), String> {
    let body = codec::encode(v).map_err(|e| e.to_string())?;
    if body.len() > PEER_MAX_FRAME {
        return Err(format!(
            "message of {} bytes exceeds the peer frame limit",
            body.len()
        ));
    }
    let len = (body.len() as u32).to_be_bytes();
    send.write_all(&len).await.map_err(|e| e.to_string())?;
    send.write_all(&body).await.map_err(|e| e.to_string())
}

/// Reads one length-prefixed message (length checked before allocating).
async fn read_msg<T: DeserializeOwned>(recv: &mut RecvStream) -> Result<T, String> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let n = u32::from_be_bytes(prefix) as usize;
    if n > PEER_MAX_FRAME {
        return Err(format!("peer frame of {n} bytes exceeds the limit"));
    }
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    codec::decode_untrusted(&body, codec::DecodeLimits::for_peer(n)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_errors_reach_raft_as_unreachable_or_network_with_their_text() {
        let unreachable = PeerError::Unreachable {
            node: 3,
            reason: "no known address".into(),
        };
        assert_eq!(
            TransportError::from(unreachable),
            TransportError::Unreachable {
                reason: "node 3 unreachable: no known address".into()
            }
        );
        let timeout = PeerError::Timeout {
            node: 3,
            after: Duration::from_millis(50),
        };
        assert_eq!(
            TransportError::from(timeout),
            TransportError::Network {
                reason: "node 3 did not answer within 50ms".into()
            }
        );
        let failed = remote(Error::Protocol {
            reason: "bad".into(),
        });
        assert!(failed.to_string().starts_with("remote: "), "{failed}");
        assert!(matches!(
            unexpected(PeerResponse::Pong),
            TransportError::Network { reason } if reason == "unexpected answer: Pong"
        ));
    }

    #[test]
    fn snapshot_file_names_must_stay_inside() {
        assert!(safe_relative("db/000012.sst"));
        assert!(safe_relative("meta.bin"));
        assert!(!safe_relative("../etc/passwd"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("db/../../x"));
        assert!(!safe_relative(""));
    }
}
