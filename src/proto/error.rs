//! The one error type every public operation returns, and its wire code.
//!
//! Every rejection is typed: a caller can branch on *which* limit was hit
//! ([`LimitKind`]), read the limit's value, the current usage and, where
//! waiting helps, `retry_after`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ops::OperationType;

/// Which limit rejected a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LimitKind {
    /// `rate_limit.max_requests` (+ `burst_allowance`) per `time_window`.
    Rate,
    /// The per-operation rate in `rate_limit.operation_types`.
    OperationRate(OperationType),
    /// `request_limit.daily_limit` (UTC day).
    Daily,
    /// `request_limit.monthly_limit` (UTC month).
    Monthly,
    /// `request_limit.concurrent_limit`.
    Concurrency,
    /// `request_limit.complexity_limit`.
    Complexity,
    /// `request_limit.max_result_size`.
    ResultSize,
    /// `storage_limit.max_storage_bytes`.
    StorageBytes,
    /// `storage_limit.max_objects`.
    Objects,
    /// `storage_limit.max_object_size`.
    ObjectSize,
    /// `storage_limit.max_vectors`.
    Vectors,
    /// `storage_limit.max_vector_dimensions`.
    VectorDimensions,
    /// `custom_settings.max_batch_size` (only for the raw batch command; the
    /// session splits batches itself).
    BatchSize,
}

impl LimitKind {
    /// The spec's `limitType` string for this limit.
    pub fn limit_type(self) -> &'static str {
        match self {
            LimitKind::Rate | LimitKind::OperationRate(_) => "rate_limit",
            LimitKind::Daily | LimitKind::Monthly => "request_quota",
            LimitKind::Concurrency => "concurrency_limit",
            LimitKind::Complexity => "complexity_limit",
            LimitKind::ResultSize => "result_size_limit",
            LimitKind::StorageBytes
            | LimitKind::Objects
            | LimitKind::ObjectSize
            | LimitKind::Vectors
            | LimitKind::VectorDimensions => "storage_limit",
            LimitKind::BatchSize => "batch_size_limit",
        }
    }

    /// The config key that sets this limit.
    pub fn config_key(self) -> String {
        match self {
            LimitKind::Rate => "rate_limit.max_requests".into(),
            LimitKind::OperationRate(op) => format!("rate_limit.operation_types.{}", op.as_str()),
            LimitKind::Daily => "request_limit.daily_limit".into(),
            LimitKind::Monthly => "request_limit.monthly_limit".into(),
            LimitKind::Concurrency => "request_limit.concurrent_limit".into(),
            LimitKind::Complexity => "request_limit.complexity_limit".into(),
            LimitKind::ResultSize => "request_limit.max_result_size".into(),
            LimitKind::StorageBytes => "storage_limit.max_storage_bytes".into(),
            LimitKind::Objects => "storage_limit.max_objects".into(),
            LimitKind::ObjectSize => "storage_limit.max_object_size".into(),
            LimitKind::Vectors => "storage_limit.max_vectors".into(),
            LimitKind::VectorDimensions => "storage_limit.max_vector_dimensions".into(),
            LimitKind::BatchSize => "custom_settings.max_batch_size".into(),
        }
    }
}

/// A limit rejection: which limit, its value, the usage it met, and when a
/// retry can succeed (absent where waiting does not help, e.g. storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitExceeded {
    /// The limit that fired.
    pub kind: LimitKind,
    /// The configured value of the limit.
    pub limit: u64,
    /// Usage at the time of the check (before this request).
    pub current: u64,
    /// What this request asked for (1 for a request, bytes for storage, ...).
    pub requested: u64,
    /// How long to wait before a retry can succeed, in milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl LimitExceeded {
    /// `retry_after` as a `Duration`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_ms.map(Duration::from_millis)
    }
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// A tenant limit rejected the request.
    #[error("{} exceeded ({}): limit {}, current {}, requested {}{}", .0.kind.limit_type(), .0.kind.config_key(), .0.limit, .0.current, .0.requested, retry_hint(&.0.retry_after_ms))]
    LimitExceeded(LimitExceeded),
    /// The tenant's `operation_types` does not allow this operation.
    #[error("operation {operation:?} is not allowed for this tenant (rate_limit.operation_types)")]
    OperationNotAllowed {
        /// The refused operation.
        operation: OperationType,
    },
    /// The node is saturated and the admission queue for this priority is full.
    #[error("node overloaded: admission queue full; retry after {retry_after_ms} ms")]
    Overloaded {
        /// Suggested wait.
        retry_after_ms: u64,
    },
    /// The tenant exists but is disabled.
    #[error("tenant {tenant_id} is disabled")]
    TenantDisabled {
        /// The tenant.
        tenant_id: String,
    },
    /// No tenant with this id.
    #[error("tenant {tenant_id} not found")]
    TenantNotFound {
        /// The tenant.
        tenant_id: String,
    },
    /// A tenant with this id already exists.
    #[error("tenant {tenant_id} already exists")]
    TenantExists {
        /// The tenant.
        tenant_id: String,
    },
    /// The tenant id is malformed.
    #[error("invalid tenant id {tenant_id:?}: {reason}")]
    InvalidTenantId {
        /// The rejected id.
        tenant_id: String,
        /// Why.
        reason: String,
    },
    /// No session context: the operation names no tenant.
    #[error("missing tenant context")]
    MissingTenantContext,
    /// The request names a tenant other than the session's.
    #[error("cross-tenant access: session of tenant {session_tenant} cannot touch tenant {target_tenant}")]
    CrossTenantAccess {
        /// The session's tenant.
        session_tenant: String,
        /// The tenant the request tried to reach.
        target_tenant: String,
    },
    /// The user does not belong to the tenant.
    #[error("unauthorized tenant access: user {user_id} does not belong to tenant {tenant_id}")]
    UnauthorizedTenantAccess {
        /// The user.
        user_id: String,
        /// The tenant.
        tenant_id: String,
    },
    /// An object, edge or collection does not exist (in this tenant).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "object", "collection", "edge", "user".
        kind: String,
        /// Its id.
        id: String,
    },
    /// Something with this id already exists.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "object", "collection", "user".
        kind: String,
        /// Its id.
        id: String,
    },
    /// A vector of the wrong length for its collection.
    #[error(
        "vector dimension mismatch in collection {collection}: expected {expected}, got {got}"
    )]
    DimensionMismatch {
        /// The collection.
        collection: String,
        /// Its declared dimension.
        expected: u32,
        /// The length given.
        got: u32,
    },
    /// A malformed filter expression.
    #[error("invalid filter: {reason}")]
    InvalidFilter {
        /// What is wrong.
        reason: String,
    },
    /// Any other malformed argument.
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument {
        /// The argument.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid config {key}: {reason}")]
    InvalidConfig {
        /// The config key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// No valid credential: none given, unknown, malformed or revoked.
    #[error("unauthenticated: {reason}; pass a valid API key (--key or VEKTAGRAF_KEY)")]
    Unauthenticated {
        /// Why.
        reason: String,
    },
    /// The credential is valid but may not do this.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// Why.
        reason: String,
    },
    /// A malformed frame or envelope, or an unsupported wire version.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// The shard is not serving (starting, stopping, or failed).
    #[error("shard unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request did not finish in time. It may or may not have happened.
    #[error("timed out after {after_ms} ms; the operation may or may not have been applied")]
    Timeout {
        /// The deadline.
        after_ms: u64,
    },
    /// Disk or index failure inside the node.
    #[error("storage failure: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// Raft failure inside the node.
    #[error("replication failure: {reason}")]
    Raft {
        /// What failed.
        reason: String,
    },
    /// The disk of the node serving the tenant's writes is nearly full:
    /// writes other than deletes are refused until space returns (reads
    /// and deletes still work). Nothing was written.
    #[error(
        "node {node}'s disk is nearly full: {free_bytes} bytes free, below its reserve of \
         {reserve_bytes} (storage.min_free_bytes); writes other than deletes are refused \
         until space returns"
    )]
    StorageFull {
        /// The node whose disk is full (0: a standalone node).
        node: u64,
        /// Bytes free on its data directory's filesystem.
        free_bytes: u64,
        /// The reserve kept free.
        reserve_bytes: u64,
    },
    /// An event subscription beyond `events.max_subscriptions` (the
    /// node's) or `events.max_subscriptions_per_connection`.
    #[error(
        "too many event subscriptions: at most {limit} (per connection, not node-wide: {per_connection})"
    )]
    TooManySubscriptions {
        /// The cap reached.
        limit: u64,
        /// The connection's cap (else the node's).
        per_connection: bool,
    },
}

fn retry_hint(ms: &Option<u64>) -> String {
    match ms {
        Some(ms) => format!("; retry after {ms} ms"),
        None => String::new(),
    }
}

impl Error {
    /// The stable wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::LimitExceeded(l) => match l.kind {
                LimitKind::Rate | LimitKind::OperationRate(_) => ErrorCode::RateLimited,
                LimitKind::Daily | LimitKind::Monthly => ErrorCode::QuotaExceeded,
                LimitKind::Concurrency => ErrorCode::ConcurrencyLimited,
                LimitKind::Complexity => ErrorCode::ComplexityLimited,
                LimitKind::ResultSize => ErrorCode::ResultSizeLimited,
                LimitKind::BatchSize => ErrorCode::InvalidArgument,
                _ => ErrorCode::StorageLimited,
            },
            Error::OperationNotAllowed { .. } => ErrorCode::OperationNotAllowed,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::TenantDisabled { .. } => ErrorCode::TenantDisabled,
            Error::TenantNotFound { .. } => ErrorCode::TenantNotFound,
            Error::TenantExists { .. } => ErrorCode::AlreadyExists,
            Error::InvalidTenantId { .. } => ErrorCode::InvalidTenantId,
            Error::MissingTenantContext => ErrorCode::MissingTenantContext,
            Error::CrossTenantAccess { .. } => ErrorCode::CrossTenantAccess,
            Error::UnauthorizedTenantAccess { .. } => ErrorCode::UnauthorizedTenantAccess,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Error::DimensionMismatch { .. } => ErrorCode::DimensionMismatch,
            Error::InvalidFilter { .. } => ErrorCode::InvalidFilter,
            Error::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Error::InvalidConfig { .. } => ErrorCode::InvalidArgument,
            Error::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            Error::PermissionDenied { .. } => ErrorCode::PermissionDenied,
            Error::Protocol { .. } => ErrorCode::Protocol,
            Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::Timeout { .. } => ErrorCode::Timeout,
            Error::Storage { .. } => ErrorCode::Internal,
            Error::Raft { .. } => ErrorCode::Internal,
            Error::StorageFull { .. } => ErrorCode::StorageFull,
            Error::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
        }
    }

    /// How long to wait before retrying, where waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::LimitExceeded(l) => l.retry_after(),
            Error::Overloaded { retry_after_ms } => Some(Duration::from_millis(*retry_after_ms)),
            _ => None,
        }
    }

    /// True for errors a client may retry (after `retry_after` if given).
    pub fn is_retryable(&self) -> bool {
        self.retry_after().is_some() || matches!(self, Error::Unavailable { .. })
    }

    /// The limit rejection inside, if this is one.
    pub fn limit(&self) -> Option<&LimitExceeded> {
        match self {
            Error::LimitExceeded(l) => Some(l),
            _ => None,
        }
    }

    /// A storage failure.
    pub fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage {
            reason: e.to_string(),
        }
    }

    /// An invalid argument.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Something not found.
    pub fn not_found(kind: &str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind: kind.to_string(),
            id: id.into(),
        }
    }
}

/// Stable numeric error codes, shared by the server and the client driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// Rate limit.
    RateLimited = 1,
    /// Daily or monthly quota.
    QuotaExceeded = 2,
    /// Concurrency slots.
    ConcurrencyLimited = 3,
    /// Query complexity.
    ComplexityLimited = 4,
    /// Result size.
    ResultSizeLimited = 5,
    /// Storage limits.
    StorageLimited = 6,
    /// Operation type not allowed.
    OperationNotAllowed = 7,
    /// Node overloaded.
    Overloaded = 8,
    /// Tenant disabled.
    TenantDisabled = 20,
    /// Tenant not found.
    TenantNotFound = 21,
    /// Invalid tenant id.
    InvalidTenantId = 22,
    /// Missing tenant context.
    MissingTenantContext = 23,
    /// Cross-tenant access.
    CrossTenantAccess = 24,
    /// Unauthorized tenant access.
    UnauthorizedTenantAccess = 25,
    /// No valid credential.
    Unauthenticated = 26,
    /// Credential may not do this.
    PermissionDenied = 27,
    /// Malformed frame or unsupported version.
    Protocol = 28,
    /// Not found.
    NotFound = 40,
    /// Already exists.
    AlreadyExists = 41,
    /// Vector dimension mismatch.
    DimensionMismatch = 42,
    /// Malformed filter.
    InvalidFilter = 43,
    /// Other malformed argument.
    InvalidArgument = 44,
    /// Shard unavailable.
    Unavailable = 60,
    /// Timed out.
    Timeout = 61,
    /// Internal failure.
    Internal = 62,
    /// The serving node's disk is nearly full.
    StorageFull = 63,
    /// Too many event subscriptions.
    TooManySubscriptions = 64,
}

/// Shorthand for results of Vektagraf operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
