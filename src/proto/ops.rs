//! The data model and the five operation types.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::filter::Filter;
use super::Error;

/// The five operation types of the spec. Limits, counters and
/// `operation_types` are keyed by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationType {
    /// Get by id.
    Read,
    /// Put, update, delete, transactions, batches, collection changes.
    Write,
    /// Property filters.
    Query,
    /// k nearest neighbours.
    VectorSearch,
    /// Walk edges from an object.
    GraphTraverse,
}

impl OperationType {
    /// All five, in a fixed order (the index used by counters).
    pub const ALL: [OperationType; 5] = [
        OperationType::Read,
        OperationType::Write,
        OperationType::Query,
        OperationType::VectorSearch,
        OperationType::GraphTraverse,
    ];

    /// The spec's name: `read`, `write`, `query`, `vector_search`, `graph_traverse`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Read => "read",
            OperationType::Write => "write",
            OperationType::Query => "query",
            OperationType::VectorSearch => "vector_search",
            OperationType::GraphTraverse => "graph_traverse",
        }
    }

    /// Parses the spec's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == s)
    }

    /// Position in [`OperationType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OperationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A JSON object of properties.
///
/// In human-readable formats (JSON, TOML) it is a plain map; in binary
/// formats (bincode on disk and on the wire) it is carried as JSON text,
/// because bincode cannot decode self-describing values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties(pub serde_json::Map<String, serde_json::Value>);

impl Properties {
    /// An empty property map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds properties from a JSON value, which must be an object.
    pub fn from_json(v: serde_json::Value) -> Result<Self, super::Error> {
        match v {
            serde_json::Value::Object(m) => Ok(Properties(m)),
            serde_json::Value::Null => Ok(Properties::default()),
            other => Err(super::Error::invalid(
                "properties",
                format!("must be a JSON object, got {}", json_kind(&other)),
            )),
        }
    }

    /// Looks up a dotted path such as `address.city`.
    pub fn get_path(&self, path: &str) -> Option<&serde_json::Value> {
        let mut parts = path.split('.');
        let first = parts.next()?;
        let mut cur = self.0.get(first)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    /// Size of the JSON text, used for storage accounting.
    pub fn encoded_len(&self) -> usize {
        serde_json::to_vec(&self.0).map(|v| v.len()).unwrap_or(0)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let text = serde_json::to_string(&self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(Properties(serde_json::Map::deserialize(d)?))
        } else {
            let text = String::deserialize(d)?;
            let map = serde_json::from_str(&text).map_err(serde::de::Error::custom)?;
            Ok(Properties(map))
        }
    }
}

/// Distance metric of a collection's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Squared Euclidean distance (smaller is closer).
    #[default]
    L2,
    /// Cosine distance, `1 - cos` (smaller is closer). Vectors are normalised.
    Cosine,
    /// Inner product (larger is closer; the score is returned as is).
    InnerProduct,
}

/// The FAISS index behind a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// Exact search (`IDMap2,Flat`). Deletes remove ids from the index.
    #[default]
    Flat,
    /// HNSW graph (`IDMap2,HNSW{m},Flat`). Deletes are tombstones filtered
    /// out of every result; the index is rebuilt when they pile up.
    Hnsw {
        /// Neighbours per node (FAISS `M`).
        m: u32,
        /// `efSearch` used for queries.
        ef_search: u32,
    },
    /// Inverted file (`IDMap2,IVF{nlist},Flat`), trained from the stored
    /// vectors once `nlist * 39` exist; exact flat search until then.
    Ivf {
        /// Number of lists.
        nlist: u32,
        /// Lists probed per query.
        nprobe: u32,
    },
}

/// A property index of a collection (`Session::index_property`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PropertyIndex {
    /// The collection.
    pub collection: String,
    /// The indexed property (a dotted path).
    pub property: String,
}

/// Declares a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    /// Collection name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// Vector dimension; `None` for a collection without vectors.
    pub dimension: Option<u32>,
    /// Distance metric.
    #[serde(default)]
    pub metric: Metric,
    /// FAISS index kind.
    #[serde(default)]
    pub index: IndexKind,
}

impl CollectionSpec {
    /// A collection of objects with vectors of `dimension`, L2, flat index.
    pub fn vectors(name: &str, dimension: u32) -> Self {
        Self {
            name: name.to_string(),
            dimension: Some(dimension),
            metric: Metric::L2,
            index: IndexKind::Flat,
        }
    }

    /// A collection of objects without vectors.
    pub fn plain(name: &str) -> Self {
        Self {
            name: name.to_string(),
            dimension: None,
            metric: Metric::L2,
            index: IndexKind::Flat,
        }
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the index kind.
    pub fn index(mut self, index: IndexKind) -> Self {
        self.index = index;
        self
    }
}

/// A stored object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Id, unique within the tenant.
    pub id: String,
    /// The collection it belongs to.
    pub collection: String,
    /// JSON properties.
    pub properties: Properties,
    /// Creation time, milliseconds since the Unix epoch (set by the leader
    /// when the write is proposed; kept on update).
    pub created_at: u64,
    /// Last update time, milliseconds since the Unix epoch.
    pub updated_at: u64,
    /// Optional vector, of the collection's dimension.
    pub vector: Option<Vec<f32>>,
}

/// A new or replacement object, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewObject {
    /// Id, unique within the tenant (`[A-Za-z0-9_.:-]{1,128}`).
    pub id: String,
    /// Collection.
    pub collection: String,
    /// Properties.
    pub properties: Properties,
    /// Optional vector.
    pub vector: Option<Vec<f32>>,
}

impl NewObject {
    /// An object with properties and no vector.
    pub fn new(collection: &str, id: &str, properties: serde_json::Value) -> Self {
        Self {
            id: id.to_string(),
            collection: collection.to_string(),
            properties: Properties::from_json(properties).unwrap_or_default(),
            vector: None,
        }
    }

    /// Adds a vector.
    pub fn with_vector(mut self, v: Vec<f32>) -> Self {
        self.vector = Some(v);
        self
    }
}

/// A labelled, directed edge between two objects of the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Source object id.
    pub from: String,
    /// Label (`[A-Za-z0-9_-]{1,64}`).
    pub label: String,
    /// Target object id.
    pub to: String,
    /// Edge properties.
    pub properties: Properties,
}

/// One write inside a transaction or batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Create or replace an object.
    Put(NewObject),
    /// Merge properties into an existing object (and optionally replace its
    /// vector). Fails with `NotFound` if it does not exist.
    Update {
        /// Object id.
        id: String,
        /// Properties to set (top-level merge).
        properties: Properties,
        /// New vector, if any.
        vector: Option<Vec<f32>>,
    },
    /// Delete an object and its edges. Deleting a missing object is a no-op
    /// that reports `existed: false`.
    Delete {
        /// Object id.
        id: String,
    },
    /// Add or replace an edge. Both ends must exist.
    PutEdge(Edge),
    /// Remove an edge.
    DeleteEdge {
        /// Source.
        from: String,
        /// Label.
        label: String,
        /// Target.
        to: String,
    },
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// The object was created.
    Created,
    /// The object or edge was replaced or updated.
    Updated,
    /// The object or edge was deleted (`existed` false when there was nothing).
    Deleted {
        /// Whether anything was there.
        existed: bool,
    },
}

/// The result of a committed write: outcomes and any warnings it raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteResult {
    /// One outcome per op, in order.
    pub outcomes: Vec<WriteOutcome>,
    /// Warnings (threshold crossed, soft limit exceeded).
    pub warnings: Vec<String>,
    /// Raft log index the write committed at.
    pub log_index: u64,
}

/// Property query over one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The collection.
    pub collection: String,
    /// Optional filter.
    pub filter: Option<Filter>,
    /// Maximum rows returned.
    pub limit: u32,
}

/// k-nearest-neighbour search over one collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorSearch {
    /// The collection.
    pub collection: String,
    /// Query vector.
    pub vector: Vec<f32>,
    /// Number of neighbours.
    pub k: u32,
    /// Optional property filter. The results are exact when the filter
    /// is answered by reading the collection or an index's few candidates,
    /// and as approximate as the vector index when it post-filters an
    /// over-fetching search (see `Session::index_property`).
    pub filter: Option<Filter>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// Object id.
    pub id: String,
    /// Distance (L2: squared distance; cosine: `1 - cos`; inner product: score).
    pub score: f32,
    /// The object, when requested.
    pub object: Option<Object>,
}

/// Direction for traversals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Follow edges from source to target.
    Out,
    /// Follow edges from target to source.
    In,
    /// Both.
    Both,
}

/// Breadth-first traversal from a start object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traverse {
    /// Start object id.
    pub start: String,
    /// Direction.
    pub direction: Direction,
    /// Only these labels (empty: all).
    pub labels: Vec<String>,
    /// Maximum depth (1 = direct neighbours).
    pub max_depth: u32,
    /// Maximum nodes returned (not counting the start).
    pub max_nodes: u32,
}

/// A node reached by a traversal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraversedNode {
    /// Object id.
    pub id: String,
    /// Depth at which it was first reached.
    pub depth: u32,
    /// The object id it was reached from.
    pub via: String,
    /// The label of that edge.
    pub label: String,
}

/// Usage counters of one tenant (storage is exact, from the state machine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUsage {
    /// Bytes of objects and edges (keys plus encoded values).
    pub bytes: u64,
    /// Objects.
    pub objects: u64,
    /// Objects with a vector.
    pub vectors: u64,
    /// Edges.
    pub edges: u64,
}

/// Request counters of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestUsage {
    /// UTC day number (days since 1970-01-01) of `daily`.
    pub day: u32,
    /// Requests this UTC day.
    pub daily: u64,
    /// UTC month number (`year * 12 + month - 1`) of `monthly`.
    pub month: u32,
    /// Requests this UTC month.
    pub monthly: u64,
    /// Requests by operation type since the tenant was created.
    pub by_operation: BTreeMap<String, u64>,
    /// Rejected requests since start-up (on the node that answered).
    pub rejected: u64,
    #[serde(default)]
    /// `day` as `YYYY-MM-DD` (UTC).
    pub date: String,
    #[serde(default)]
    /// `month` as `YYYY-MM` (UTC).
    pub month_label: String,
    #[serde(default)]
    /// Requests by operation type this UTC day (durable like `daily`).
    pub daily_by_operation: BTreeMap<String, u64>,
    #[serde(default)]
    /// Requests by operation type this UTC month (durable like `monthly`).
    pub monthly_by_operation: BTreeMap<String, u64>,
    #[serde(default)]
    /// The last earlier UTC day with requests (kept one day back).
    pub previous_day: Option<PeriodUsage>,
    #[serde(default)]
    /// The last earlier UTC month with requests (kept one month back).
    pub previous_month: Option<PeriodUsage>,
}

/// Requests of one closed UTC day or month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    /// The day number (days since 1970-01-01) or month number
    /// (`year * 12 + month - 1`).
    pub period: u32,
    /// It as `YYYY-MM-DD` or `YYYY-MM`.
    pub label: String,
    /// Requests in it.
    pub requests: u64,
    /// Requests by operation type in it.
    pub by_operation: BTreeMap<String, u64>,
}

/// One limit of a tenant against what it uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitUse {
    /// The limit's config key (`storage_limit.max_storage_bytes`,
    /// `storage_limit.max_objects`, `storage_limit.max_vectors`,
    /// `request_limit.daily_limit`, `request_limit.monthly_limit`).
    pub limit: String,
    /// Used now.
    pub used: u64,
    /// The limit.
    pub max: u64,
    /// `used / max` (0 when the limit is 0).
    pub ratio: f64,
}

/// Every tenant's usage (an admin's `tenant usage --all`), each from its
/// shard leader.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Each tenant that answered, by tenant id.
    pub tenants: Vec<TenantUsage>,
    /// Tenants whose usage could not be read now (no shard leader, ...),
    /// with why.
    pub unavailable: Vec<(String, Error)>,
}

/// A tenant's usage report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantUsage {
    /// The tenant.
    pub tenant_id: String,
    /// Storage counters.
    pub storage: StorageUsage,
    /// Request counters.
    pub requests: RequestUsage,
    /// Operations in flight now.
    pub in_flight: u64,
    /// Active warnings.
    pub warnings: Vec<String>,
    #[serde(default)]
    /// Storage and request counts against the tenant's limits, with ratios.
    pub limits: Vec<LimitUse>,
    /// The read cache on the node that answered (C1).
    pub cache: CacheUsage,
}

/// A tenant's read cache on one node, since the tenant was loaded there.
/// A hit is still a request: it is counted in `requests` too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheUsage {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Cacheable reads (get, query, vector search) that were not.
    pub misses: u64,
    /// Results not stored: the node's `cache.max_bytes` was reached, or
    /// the result alone weighs more than a sixteenth of it.
    pub skipped: u64,
    /// Entries held now (as last counted).
    pub entries: u64,
    /// Approximate bytes they hold.
    pub bytes: u64,
}

impl CacheUsage {
    /// Hits over cacheable reads (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }
}
