//! The fixed label values of the request metrics: which operation a
//! request is (`operation`) and how it ended (`outcome`). Both sets are
//! closed enums, so a request can never add a label value.

use crate::proto::wire::{Request, Response};
use crate::proto::{Error, LimitKind};

/// The `operation` label of a request. `Stale(..)` and `Once { .. }`
/// count as the request they wrap; admin requests are grouped by noun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Operation {
    /// `Ping`.
    Ping,
    /// `WhoAmI` and `Authenticate`.
    Session,
    /// `CreateCollection`.
    CreateCollection,
    /// `DropCollection`.
    DropCollection,
    /// `ListCollections`.
    ListCollections,
    /// `Put`.
    Put,
    /// `Update`.
    Update,
    /// `Delete`.
    Delete,
    /// `Transaction`.
    Transaction,
    /// `Batch`.
    Batch,
    /// `Get`.
    Get,
    /// `Query`.
    Query,
    /// `Scan`.
    Scan,
    /// `Search` (vector search).
    Search,
    /// `Traverse`.
    Traverse,
    /// `Usage`.
    Usage,
    /// `CanPerform`.
    CanPerform,
    /// Tenant administration (create, get, update, delete, list).
    Tenants,
    /// Users and keys.
    Access,
    /// Cluster nodes, shard info, moves, jobs, rebalance, drain.
    Cluster,
    /// Whole-tenant export and import steps.
    Migrate,
    /// `IndexProperty`.
    IndexProperty,
    /// `ListIndexes`.
    ListIndexes,
    /// `DropIndex`.
    DropIndex,
    /// `SearchBatch`.
    SearchBatch,
}

impl Operation {
    /// Every operation, in label-index order.
    pub const ALL: [Operation; 25] = [
        Operation::Ping,
        Operation::Session,
        Operation::CreateCollection,
        Operation::DropCollection,
        Operation::ListCollections,
        Operation::Put,
        Operation::Update,
        Operation::Delete,
        Operation::Transaction,
        Operation::Batch,
        Operation::Get,
        Operation::Query,
        Operation::Scan,
        Operation::Search,
        Operation::Traverse,
        Operation::Usage,
        Operation::CanPerform,
        Operation::Tenants,
        Operation::Access,
        Operation::Cluster,
        Operation::Migrate,
        Operation::IndexProperty,
        Operation::ListIndexes,
        Operation::DropIndex,
        Operation::SearchBatch,
    ];

    /// The operation of `req`.
    pub fn of(req: &Request) -> Operation {
        use Request::*;
        match req {
            Ping => Operation::Ping,
            Authenticate { .. } | WhoAmI => Operation::Session,
            CreateCollection(_) => Operation::CreateCollection,
            DropCollection(_) => Operation::DropCollection,
            IndexProperty { .. } => Operation::IndexProperty,
            ListIndexes { .. } => Operation::ListIndexes,
            DropIndex { .. } => Operation::DropIndex,
            ListCollections => Operation::ListCollections,
            Put(_) => Operation::Put,
            Update { .. } => Operation::Update,
            Delete(_) => Operation::Delete,
            Transaction(_) => Operation::Transaction,
            Batch(_) => Operation::Batch,
            Get(_) => Operation::Get,
            Query(_) => Operation::Query,
            Scan { .. } => Operation::Scan,
            Search { .. } => Operation::Search,
            SearchBatch { .. } => Operation::SearchBatch,
            Traverse(_) => Operation::Traverse,
            Usage(_) => Operation::Usage,
            CanPerform(_) => Operation::CanPerform,
            Stale(inner) => Operation::of(inner),
            Once { request, .. } => Operation::of(request),
            CreateTenant(_)
            | CreateTenantForTier { .. }
            | GetTenant(_)
            | UpdateTenant(..)
            | DeleteTenant(_)
            | ListTenants
            | PurgeOlderThan { .. }
            | Audit { .. }
            | Analytics { .. } => Operation::Tenants,
            CreateUser(..)
            | RemoveUser(..)
            | ListUsers(_)
            | CreateKey { .. }
            | RevokeKey(_)
            | RotateKey(_)
            | ListKeys(_) => Operation::Access,
            ClusterNodes
            | RemoveNode { .. }
            | ShardInfo(_)
            | MoveTenant { .. }
            | ListJobs
            | GetJob(_)
            | CancelJob(_)
            | Rebalance { .. }
            | DrainNode(_) => Operation::Cluster,
            // Served by the server itself (never through the router).
            SubscribeEvents(_) => Operation::Session,
            ExportOpen(_) | ExportPage(_) | ExportClose { .. } | Import(_) => Operation::Migrate,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Ping => "ping",
            Operation::Session => "session",
            Operation::CreateCollection => "create_collection",
            Operation::DropCollection => "drop_collection",
            Operation::ListCollections => "list_collections",
            Operation::Put => "put",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Transaction => "transaction",
            Operation::Batch => "batch",
            Operation::Get => "get",
            Operation::Query => "query",
            Operation::Scan => "scan",
            Operation::Search => "search",
            Operation::Traverse => "traverse",
            Operation::Usage => "usage",
            Operation::CanPerform => "can_perform",
            Operation::Tenants => "admin_tenants",
            Operation::Access => "admin_access",
            Operation::Cluster => "admin_cluster",
            Operation::Migrate => "admin_migrate",
            Operation::IndexProperty => "index_property",
            Operation::ListIndexes => "list_indexes",
            Operation::DropIndex => "drop_index",
            Operation::SearchBatch => "search_batch",
        }
    }

    /// Its index in [`Operation::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `outcome` label: `ok`, `limit_<kind>` for each limit that can
/// refuse a request, `error_<kind>` for each other error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome(u8);

/// Every outcome label value, in index order.
pub const OUTCOMES: [&str; 38] = [
    "ok",
    "limit_rate",
    "limit_operation_rate",
    "limit_daily",
    "limit_monthly",
    "limit_concurrency",
    "limit_complexity",
    "limit_result_size",
    "limit_storage_bytes",
    "limit_objects",
    "limit_object_size",
    "limit_vectors",
    "limit_vector_dimensions",
    "limit_batch_size",
    "error_operation_not_allowed",
    "error_overloaded",
    "error_tenant_disabled",
    "error_tenant_not_found",
    "error_tenant_exists",
    "error_invalid_tenant_id",
    "error_missing_tenant_context",
    "error_cross_tenant_access",
    "error_unauthorized_tenant_access",
    "error_not_found",
    "error_already_exists",
    "error_dimension_mismatch",
    "error_invalid_filter",
    "error_invalid_argument",
    "error_invalid_config",
    "error_unauthenticated",
    "error_permission_denied",
    "error_protocol",
    "error_unavailable",
    "error_timeout",
    "error_storage",
    "error_raft",
    "error_storage_full",
    "error_too_many_subscriptions",
];

impl Outcome {
    /// Success.
    pub const OK: Outcome = Outcome(0);

    /// The outcome of a finished request.
    pub fn of(result: &Result<Response, Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::OK,
            Err(e) => Outcome::of_error(e),
        }
    }

    /// The outcome of a refused or failed request.
    pub fn of_error(e: &Error) -> Outcome {
        Outcome(match e {
            Error::LimitExceeded(l) => match l.kind {
                LimitKind::Rate => 1,
                LimitKind::OperationRate(_) => 2,
                LimitKind::Daily => 3,
                LimitKind::Monthly => 4,
                LimitKind::Concurrency => 5,
                LimitKind::Complexity => 6,
                LimitKind::ResultSize => 7,
                LimitKind::StorageBytes => 8,
                LimitKind::Objects => 9,
                LimitKind::ObjectSize => 10,
                LimitKind::Vectors => 11,
                LimitKind::VectorDimensions => 12,
                LimitKind::BatchSize => 13,
            },
            Error::OperationNotAllowed { .. } => 14,
            Error::Overloaded { .. } => 15,
            Error::TenantDisabled { .. } => 16,
            Error::TenantNotFound { .. } => 17,
            Error::TenantExists { .. } => 18,
            Error::InvalidTenantId { .. } => 19,
            Error::MissingTenantContext => 20,
            Error::CrossTenantAccess { .. } => 21,
            Error::UnauthorizedTenantAccess { .. } => 22,
            Error::NotFound { .. } => 23,
            Error::AlreadyExists { .. } => 24,
            Error::DimensionMismatch { .. } => 25,
            Error::InvalidFilter { .. } => 26,
            Error::InvalidArgument { .. } => 27,
            Error::InvalidConfig { .. } => 28,
            Error::Unauthenticated { .. } => 29,
            Error::PermissionDenied { .. } => 30,
            Error::Protocol { .. } => 31,
            Error::Unavailable { .. } => 32,
            Error::Timeout { .. } => 33,
            Error::Storage { .. } => 34,
            Error::Raft { .. } => 35,
            Error::StorageFull { .. } => 36,
            Error::TooManySubscriptions { .. } => 37,
        })
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        OUTCOMES[self.0 as usize]
    }

    /// Its index in [`OUTCOMES`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LimitExceeded;

    #[test]
    fn operations_are_in_index_order_and_named_once() {
        for (i, op) in Operation::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
        let mut names: Vec<_> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Operation::ALL.len());
    }

    #[test]
    fn a_limit_names_its_kind_and_wrapped_requests_count_as_themselves() {
        let e = Error::LimitExceeded(LimitExceeded {
            kind: LimitKind::Daily,
            limit: 1,
            current: 1,
            requested: 1,
            retry_after_ms: None,
        });
        assert_eq!(Outcome::of_error(&e).as_str(), "limit_daily");
        assert_eq!(
            Outcome::of_error(&Error::not_found("object", "x")).as_str(),
            "error_not_found"
        );
        assert_eq!(Outcome::of(&Ok(Response::Ok)).as_str(), "ok");
        let stale = Request::Stale(Box::new(Request::Get("a".into())));
        assert_eq!(Operation::of(&stale), Operation::Get);
    }
}
