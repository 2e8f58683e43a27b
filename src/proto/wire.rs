//! The client wire protocol: frames, the versioned envelope, requests and
//! responses.
//!
//! A frame is a `u32` big-endian length, then that many bytes of a bincode
//! payload: an [`Envelope`]. The length is checked against
//! [`MAX_FRAME_BYTES`] before anything is allocated, decoding has a byte
//! limit, and trailing bytes are rejected. One request and its response
//! travel on one QUIC bidirectional stream, so many requests can be in
//! flight on one connection.

use serde::{Deserialize, Serialize};

use super::{
    CollectionSpec, Error, NewObject, Object, OperationType, Query, SearchHit, TenantUsage,
    Traverse, TraversedNode, VectorSearch, WriteOp, WriteOutcome, WriteResult,
};
use crate::codec;

/// ALPN of the client protocol.
pub const ALPN: &[u8] = b"vektagraf/1";
/// The envelope version this build speaks.
pub const WIRE_VERSION: u16 = 9;
/// Largest frame accepted (16 MiB).
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix exceeds the reader's limit ([`MAX_FRAME_BYTES`]
    /// or less; before authentication, 4 KiB).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The length the prefix claims.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("truncated frame: {0}")]
    Truncated(String),
    /// The payload is not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// The envelope's version is not spoken here.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion(u16),
}

/// Every message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Wire version ([`WIRE_VERSION`]).
    pub version: u16,
    /// Chosen by the client; echoed in the response.
    pub request_id: u64,
    /// The request or response.
    pub body: T,
    /// In a response to a tenant's request served through another node:
    /// the client address of the node leading the tenant's shard, where
    /// the driver goes next to save the hop. Always `None` in requests.
    pub leader: Option<std::net::SocketAddr>,
}

impl<T: Serialize> Envelope<T> {
    /// A current-version envelope.
    pub fn new(request_id: u64, body: T) -> Self {
        Self {
            version: WIRE_VERSION,
            request_id,
            body,
            leader: None,
        }
    }

    /// With a leader hint (see [`leader`](Self::leader)).
    pub fn with_leader(mut self, leader: Option<std::net::SocketAddr>) -> Self {
        self.leader = leader;
        self
    }

    /// The whole frame: length prefix and payload.
    pub fn to_frame(&self) -> Result<Vec<u8>, FrameError> {
        let payload = codec::encode(self).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if payload.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

/// Reads a frame's length prefix, refusing oversized frames before any
/// allocation.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > max {
        return Err(FrameError::TooLarge { len: n, max });
    }
    Ok(n)
}

/// Decodes a payload (without its prefix) into an envelope. The version is
/// read first, so an unknown version gets its own error even if the rest
/// of the payload has a different shape.
pub fn decode_envelope<T: serde::de::DeserializeOwned>(
    payload: &[u8],
) -> Result<Envelope<T>, FrameError> {
    let version: u16 = match payload {
        // bincode varint: one byte below 251, else a tag then LE bytes.
        [b, ..] if *b < 251 => *b as u16,
        [251, lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
        [] => return Err(FrameError::Truncated("empty payload".into())),
        _ => return Err(FrameError::Malformed("bad version field".into())),
    };
    if version != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    codec::decode_untrusted(payload, codec::DecodeLimits::for_input(payload.len())).map_err(|e| {
        match e {
            codec::CodecError::Decode(m) if m.contains("UnexpectedEnd") => FrameError::Truncated(m),
            other => FrameError::Malformed(other.to_string()),
        }
    })
}

/// Decodes a whole frame held in memory (prefix included); used by the
/// fuzz target and tests.
pub fn decode_frame<T: serde::de::DeserializeOwned>(
    frame: &[u8],
) -> Result<Envelope<T>, FrameError> {
    if frame.len() < 4 {
        return Err(FrameError::Truncated("no length prefix".into()));
    }
    let n = frame_len([frame[0], frame[1], frame[2], frame[3]], MAX_FRAME_BYTES)?;
    let rest = &frame[4..];
    if rest.len() < n {
        return Err(FrameError::Truncated(format!(
            "{} of {n} bytes",
            rest.len()
        )));
    }
    if rest.len() > n {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the frame",
            rest.len() - n
        )));
    }
    decode_envelope(rest)
}

/// What kind of key a principal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyKind {
    /// Manages tenants, users and keys; reaches no tenant's data.
    Admin,
    /// One user of one tenant.
    Tenant,
}

/// Public facts about an API key (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key id (the public part of the key).
    pub key_id: String,
    /// Admin or tenant key.
    pub kind: KeyKind,
    /// Tenant (tenant keys).
    pub tenant_id: Option<String>,
    /// User (tenant keys).
    pub user_id: Option<String>,
    /// Operations the key may run (`None`: all the tenant allows).
    pub operations: Option<Vec<OperationType>>,
    /// Creation time, ms.
    pub created_at: u64,
    /// Revoked keys fail on their next request.
    pub revoked: bool,
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness; needs no credentials.
    Ping,
    /// Binds the connection to a key. Must come first.
    Authenticate {
        /// The full key as shown at creation.
        api_key: String,
    },
    /// Who am I.
    WhoAmI,

    // ----- admin -----
    /// Create a tenant.
    CreateTenant(crate::tenant::TenantConfig),
    /// Create a tenant from a tier or standard name.
    CreateTenantForTier {
        /// Id.
        tenant_id: String,
        /// Display name.
        name: String,
        /// Tier or standard name.
        tier: String,
    },
    /// Read a tenant.
    GetTenant(String),
    /// Update a tenant.
    UpdateTenant(String, crate::tenant::TenantUpdate),
    /// Delete a tenant and purge its data.
    DeleteTenant(String),
    /// List tenants.
    ListTenants,
    /// A tenant's usage (admin) or the caller's tenant (`None`, tenant keys).
    Usage(Option<String>),
    /// Add a user.
    CreateUser(String, String),
    /// Remove a user (revokes their keys).
    RemoveUser(String, String),
    /// List a tenant's users.
    ListUsers(String),
    /// Create a key; the response carries the secret, shown once.
    CreateKey {
        /// Admin or tenant key.
        kind: KeyKind,
        /// Tenant (tenant keys).
        tenant_id: Option<String>,
        /// User (tenant keys).
        user_id: Option<String>,
        /// Restrict to these operations.
        operations: Option<Vec<OperationType>>,
    },
    /// Revoke a key.
    RevokeKey(String),
    /// Revoke a key and issue a new one with the same scope.
    RotateKey(String),
    /// List keys (of a tenant, or all).
    ListKeys(Option<String>),

    // ----- data (tenant keys; the tenant comes from the key) -----
    /// Declare a collection.
    CreateCollection(CollectionSpec),
    /// Remove an empty collection.
    DropCollection(String),
    /// List collections.
    ListCollections,
    /// Create or replace an object.
    Put(NewObject),
    /// Merge properties.
    Update {
        /// Id.
        id: String,
        /// Properties (JSON text).
        properties_json: String,
        /// New vector.
        vector: Option<Vec<f32>>,
    },
    /// Delete an object.
    Delete(String),
    /// Atomic transaction.
    Transaction(Vec<WriteOp>),
    /// Batch (split by the tenant's max_batch_size on the server too).
    Batch(Vec<WriteOp>),
    /// Get by id.
    Get(String),
    /// Property query.
    Query(Query),
    /// Vector search.
    Search {
        /// The search.
        search: VectorSearch,
        /// Include objects in hits.
        with_objects: bool,
    },
    /// Traversal.
    Traverse(Traverse),
    /// R3: would this operation be admitted now?
    CanPerform(OperationType),
    /// A page of a collection, by id order, for export.
    Scan {
        /// Collection.
        collection: String,
        /// Start after this id.
        after: Option<String>,
        /// Page size.
        limit: u32,
    },
    /// A read served from the local state of any replica (possibly
    /// behind the leader) instead of a linearizable read.
    Stale(Box<Request>),
    /// The cluster's nodes (admin).
    ClusterNodes,
    /// Removes a dead node from the cluster; its shard replicas are
    /// placed again on live nodes (admin). A node that answers its peers
    /// is refused unless `force`.
    RemoveNode {
        /// Node id.
        id: u64,
        /// Remove it even though it is alive (drain it first instead).
        force: bool,
    },
    /// Where a tenant's shard group runs and who leads it (admin).
    ShardInfo(String),
    /// A write applied at most once per (`client`, `seq`): a retry of a
    /// write whose answer was lost returns the first answer and changes
    /// nothing. The driver wraps every write in one.
    Once {
        /// The client's random id.
        client: u64,
        /// The request's sequence number (unique per client).
        seq: u64,
        /// The client has received the answers of every sequence below
        /// this; the node forgets them.
        acked_below: u64,
        /// The write.
        request: Box<Request>,
    },
    /// Moves one replica of a tenant's shard group to node `to` (from
    /// node `from`, or one the cluster picks), online (admin). Answers
    /// the registered job.
    MoveTenant {
        /// Tenant.
        tenant: String,
        /// Target node.
        to: u64,
        /// Source node.
        from: Option<u64>,
    },
    /// Move jobs: running ones and the recent history (admin).
    ListJobs,
    /// One move job (admin).
    GetJob(u64),
    /// Cancels a move job; the group goes back to its old membership
    /// (admin).
    CancelJob(u64),
    /// Balances replicas and leaderships over the live nodes (admin).
    Rebalance {
        /// Only plan; start nothing.
        dry_run: bool,
    },
    /// Moves every replica off a node and stops placing new ones there
    /// (admin).
    DrainNode(u64),
    /// Opens a consistent export of a tenant on its shard leader (admin;
    /// `vektagraf tenant export`).
    ExportOpen(super::migrate::ExportOpen),
    /// The next page of an open export (admin).
    ExportPage(super::migrate::ExportPageRequest),
    /// Closes an export cursor (admin).
    ExportClose {
        /// The tenant.
        tenant_id: String,
        /// The cursor.
        cursor: u64,
    },
    /// One step of restoring an export into a tenant (admin;
    /// `vektagraf tenant import`).
    Import(super::migrate::ImportRequest),
    /// S4: deletes the tenant's objects created before `cutoff_ms` (admin;
    /// `vektagraf tenant purge-older-than`), through its shard leader's
    /// raft log. Answers [`Response::Purged`].
    PurgeOlderThan {
        /// The tenant.
        tenant_id: String,
        /// Only this collection (all when `None`).
        collection: Option<String>,
        /// Objects created before this (ms since the Unix epoch) go.
        cutoff_ms: u64,
    },
    /// A5: the newest audit entries of a tenant's config changes, or of
    /// every tenant's (admin; `vektagraf audit`). Answers
    /// [`Response::Audit`].
    Audit {
        /// The tenant (every tenant when `None`).
        tenant_id: Option<String>,
        /// How many of the newest (at most `db::MAX_AUDIT_PAGE`).
        limit: u32,
    },
    /// A2: a tenant's analytics report over `from_ms..to_ms`, from every
    /// node's history (admin; `vektagraf analytics`). Answers
    /// [`Response::Analytics`].
    Analytics {
        /// The tenant.
        tenant_id: String,
        /// Range start, ms since the Unix epoch.
        from_ms: u64,
        /// Range end, ms.
        to_ms: u64,
    },
    /// A3: subscribes to this node's live events. The stream stays open:
    /// the node answers [`Response::EventsSubscribed`], then one
    /// [`Response::Event`] frame per event (first the recent ones the
    /// filter matches), and [`Response::EventsLost`] when the subscriber
    /// fell behind, until the client closes the stream or the connection
    /// ends. A tenant key subscribes to its own tenant only (`tenant`
    /// `None` means its own; another is refused with
    /// `CrossTenantAccess`); an admin key to every event or one tenant's.
    SubscribeEvents(super::EventFilter),
    /// Index a property of a collection, so filtered searches on it need
    /// not read the whole collection; answers with the objects read to
    /// fill it.
    IndexProperty {
        /// Collection.
        collection: String,
        /// Dotted property path.
        property: String,
    },
    /// The tenant's property indexes, of one collection or of all.
    /// Answers [`Response::Indexes`].
    ListIndexes {
        /// Only this collection's (all when `None`).
        collection: Option<String>,
    },
    /// Drops a property index: its keys are deleted and stop counting
    /// toward storage bytes; filtered searches plan without it. Answers
    /// [`Response::IndexDropped`].
    DropIndex {
        /// Collection.
        collection: String,
        /// Dotted property path.
        property: String,
    },
    /// Several vector searches in one request (at most
    /// `db::MAX_SEARCH_BATCH`), answered in order with
    /// [`Response::HitLists`]; counted as one vector-search request whose
    /// cost is the sum of its searches'.
    SearchBatch {
        /// The searches.
        searches: Vec<VectorSearch>,
        /// Include objects in hits.
        with_objects: bool,
    },
}

impl Request {
    /// The operation type a data request counts as (None: admin or control).
    pub fn operation(&self) -> Option<OperationType> {
        use Request::*;
        Some(match self {
            CreateCollection(_)
            | DropCollection(_)
            | IndexProperty { .. }
            | DropIndex { .. }
            | Put(_)
            | Update { .. }
            | Delete(_)
            | Transaction(_)
            | Batch(_) => OperationType::Write,
            Get(_) | ListCollections | ListIndexes { .. } | CanPerform(_) => OperationType::Read,
            Query(_) | Scan { .. } => OperationType::Query,
            Search { .. } | SearchBatch { .. } => OperationType::VectorSearch,
            Traverse(_) => OperationType::GraphTraverse,
            Stale(inner) => return inner.operation(),
            Once { request, .. } => return request.operation(),
            _ => return None,
        })
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Plain success.
    Ok,
    /// Pong.
    Pong,
    /// The principal.
    Principal(KeyInfo),
    /// A tenant config.
    Tenant(crate::tenant::TenantConfig),
    /// Tenant configs.
    Tenants(Vec<crate::tenant::TenantConfig>),
    /// Usage.
    Usage(Box<TenantUsage>),
    /// User ids.
    Users(Vec<String>),
    /// A new key: the secret, shown once, and its facts.
    NewKey {
        /// The full key.
        api_key: String,
        /// Its facts.
        info: KeyInfo,
    },
    /// Keys.
    Keys(Vec<KeyInfo>),
    /// Collections.
    Collections(Vec<CollectionSpec>),
    /// A write.
    Write(WriteResult),
    /// Per-item batch results.
    Batch(Vec<Result<WriteOutcome, Error>>),
    /// An object or nothing.
    Object(Option<Object>),
    /// Objects.
    Objects(Vec<Object>),
    /// Search hits.
    Hits(Vec<SearchHit>),
    /// Traversal nodes.
    Nodes(Vec<TraversedNode>),
    /// The request failed.
    Error(Error),
    /// Cluster nodes: (id, peer address, client address, removed, leads
    /// the metadata group).
    ClusterNodes(Vec<ClusterNode>),
    /// A tenant shard group's placement.
    ShardInfo(Box<ShardInfo>),
    /// A move job.
    Job(crate::proto::MoveJob),
    /// Move jobs.
    Jobs(Vec<crate::proto::MoveJob>),
    /// A rebalance or drain plan.
    Plan(crate::proto::Plan),
    /// What removing a node did.
    Removed(NodeRemoval),
    /// An opened export.
    ExportOpened(Box<super::migrate::ExportHead>),
    /// A page of an export.
    ExportPage(super::migrate::ExportPage),
    /// Every tenant's usage (an admin's `Usage(None)`).
    UsageReport(crate::proto::UsageReport),
    /// Objects removed by a purge.
    Purged {
        /// How many.
        removed: u64,
    },
    /// Audit entries, oldest first.
    Audit(Vec<crate::proto::AuditEntry>),
    /// An analytics report.
    Analytics(Box<crate::proto::AnalyticsReport>),
    /// An event subscription is open on `node` (0: standalone). `nodes`
    /// lists every live node of the cluster as (id, client address), so
    /// the driver can subscribe to the others too (events are raised on
    /// the node that runs the check); empty on a standalone node.
    EventsSubscribed {
        /// The answering node.
        node: u64,
        /// The cluster's live nodes.
        nodes: Vec<(u64, String)>,
    },
    /// One event of a subscription.
    Event(Box<super::Event>),
    /// The subscriber fell behind: this many events were lost (never
    /// sent) since its previous frame.
    EventsLost {
        /// How many.
        count: u64,
    },
    /// A property index exists (`IndexProperty`).
    Indexed {
        /// Objects read to fill it (0: it existed already).
        objects_read: u64,
    },
    /// Property indexes, by collection and property (`ListIndexes`).
    Indexes(Vec<crate::proto::PropertyIndex>),
    /// A property index was dropped (`DropIndex`).
    IndexDropped {
        /// Index keys deleted (one per object that held an indexable
        /// value there).
        keys_removed: u64,
    },
    /// The hits of each search of a `SearchBatch`, in order.
    HitLists(Vec<Vec<SearchHit>>),
}

/// A tenant shard group's placement, as one of its replicas sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Tenant.
    pub tenant_id: String,
    /// Raft group.
    pub group: u64,
    /// (replica id, node id) of each replica.
    pub replicas: Vec<(u64, u64)>,
    /// Node of the current leader, if known.
    pub leader_node: Option<u64>,
    /// Voters of the group's current membership (replica ids).
    pub voters: Vec<u64>,
    /// The node that answered.
    pub answered_by: u64,
    /// Its replica is quiesced (idle: raft ticks stopped).
    pub quiesced: bool,
    /// Learners of the group's membership (replica ids).
    pub learners: Vec<u64>,
    /// The membership is joint: a change is half way through.
    pub joint: bool,
    /// The answering replica's last log index.
    pub last_log_index: u64,
    /// The answering replica's applied index.
    pub applied: u64,
    /// On the leader: each replica's matched log index.
    pub matched: Vec<(u64, u64)>,
    /// On the leader: snapshot streams being sent, as (node, bytes sent,
    /// bytes in all).
    pub snapshots: Vec<(u64, u64, u64)>,
    /// Stored data of the answering replica.
    pub usage: crate::proto::StorageUsage,
    /// Voters the group should have (the cluster's replication factor).
    pub replication_factor: u64,
    /// The answering replica's raft term (it grows with each election).
    pub term: u64,
}

/// What `RemoveNode` did to the tenants that had a replica on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoval {
    /// The node removed.
    pub node: u64,
    /// Tenants whose replica there was placed again on a live node.
    pub replaced: Vec<String>,
    /// Tenants left with fewer replicas than the replication factor (no
    /// live node to place on); they are brought up to it when a node
    /// joins.
    pub under_replicated: Vec<String>,
}

/// A cluster node as `ClusterNodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// Peer address.
    pub peer_addr: String,
    /// Client address.
    pub client_addr: String,
    /// Removed from the cluster.
    pub removed: bool,
    /// Voter of the metadata group.
    pub voter: bool,
    /// Leader of the metadata group.
    pub leader: bool,
    /// Draining: no new replicas are placed here (`node drain`).
    pub draining: bool,
    /// Tenant shard replicas placed on it (learners included).
    pub replicas: u64,
    /// Tenant shard groups it leads (None: it did not answer).
    pub leads: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let env = Envelope::new(42, Request::Get("x".into()));
        let frame = env.to_frame().unwrap();
        assert_eq!(decode_frame::<Request>(&frame).unwrap(), env);
        // Truncated.
        assert!(matches!(
            decode_frame::<Request>(&frame[..frame.len() - 1]),
            Err(FrameError::Truncated(_))
        ));
        // Trailing bytes.
        let mut long = frame.clone();
        long.push(0);
        assert!(matches!(
            decode_frame::<Request>(&long),
            Err(FrameError::Malformed(_))
        ));
        // Oversized prefix: refused from the prefix alone.
        assert_eq!(
            frame_len([0xFF, 0xFF, 0xFF, 0xFF], MAX_FRAME_BYTES),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_BYTES
            })
        );
        // Unknown version.
        let v1 = Envelope {
            version: 1,
            request_id: 1,
            body: Request::Ping,
            leader: None,
        };
        let f1 = crate::codec::encode(&v1).unwrap();
        assert_eq!(
            decode_envelope::<Request>(&f1),
            Err(FrameError::UnsupportedVersion(1))
        );
        // A leader hint round-trips.
        let hinted =
            Envelope::new(7, Response::Pong).with_leader(Some("10.0.0.1:7687".parse().unwrap()));
        let frame = hinted.to_frame().unwrap();
        assert_eq!(decode_frame::<Response>(&frame).unwrap(), hinted);
        // Garbage.
        assert!(decode_envelope::<Request>(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
