//! Wire types of whole-tenant export and import (the seed's
//! `TenantMigration`), admin requests only.
//!
//! An export is a cursor over a consistent cut of a tenant's shard: the
//! shard leader takes a RocksDB checkpoint of the shard (one applied raft
//! index), and pages through it by key. An import restores records
//! through the tenant's raft log with their timestamps.
//!
//! Every path is bounded: a page holds at most [`MAX_PAGE_ITEMS`] records
//! and about [`MAX_PAGE_BYTES`], scans at most [`MAX_PAGE_SCAN`] rows; an
//! import step carries at most [`MAX_IMPORT_ITEMS`] records; a node keeps
//! at most [`MAX_CURSORS_PER_TENANT`] open cursors per tenant and
//! [`MAX_CURSORS_PER_NODE`] in all, each dropped after
//! [`CURSOR_IDLE_MS`] without a request.

use serde::{Deserialize, Serialize};

use super::{CollectionSpec, Edge, Object, RequestUsage, StorageUsage};

pub use super::PropertyIndex;

/// Most records in one export page.
pub const MAX_PAGE_ITEMS: u32 = 1_000;
/// About the most bytes of records in one export page (a page stops
/// after the record that crosses it).
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// Most rows one page reads (with a `since` filter a page may return
/// fewer records than it reads, even none, with a `next` key).
pub const MAX_PAGE_SCAN: usize = 20_000;
/// Most records (objects plus edges) in one import step.
pub const MAX_IMPORT_ITEMS: usize = 1_000;
/// Most collection specs in one import step.
pub const MAX_IMPORT_COLLECTIONS: usize = 1_024;
/// Open export cursors per tenant on one node.
pub const MAX_CURSORS_PER_TENANT: usize = 2;
/// Open export cursors on one node.
pub const MAX_CURSORS_PER_NODE: usize = 16;
/// An export cursor unused this long is closed (its checkpoint removed).
pub const CURSOR_IDLE_MS: u64 = 300_000;

/// Opens an export of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOpen {
    /// The tenant.
    pub tenant_id: String,
    /// Only objects created or updated at or after this time (ms since
    /// the epoch), and the edges touching them.
    pub since_ms: Option<u64>,
}

/// What an opened export holds: the cut's facts and the tenant's
/// metadata, read on the shard leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportHead {
    /// The cursor to page with (closed by `ExportClose` or after
    /// [`CURSOR_IDLE_MS`]).
    pub cursor: u64,
    /// The raft log index the cut reflects (every entry up to it is in
    /// the cut, none after it).
    pub applied_index: u64,
    /// The node that holds the cursor.
    pub node: u64,
    /// The tenant's config.
    pub config: crate::tenant::TenantConfig,
    /// The tenant's users (ids only: keys and their secrets are never
    /// exported).
    pub users: Vec<String>,
    /// Collection specs, by name.
    pub collections: Vec<CollectionSpec>,
    /// Property indexes of the cut, by collection and property.
    pub indexes: Vec<PropertyIndex>,
    /// Storage counters of the cut.
    pub storage: StorageUsage,
    /// Request counters (the leader's limiter when the export opened).
    pub requests: RequestUsage,
}

/// Which records an export page reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExportSection {
    /// Objects, by id.
    Objects,
    /// Edges, by (from, label, to).
    Edges,
}

/// Asks for the next page of an open export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPageRequest {
    /// The tenant (routes the request to its shard leader).
    pub tenant_id: String,
    /// The cursor from [`ExportHead`].
    pub cursor: u64,
    /// Objects or edges.
    pub section: ExportSection,
    /// Start after this key (the previous page's `next`).
    pub after: Option<String>,
    /// Most records (at most [`MAX_PAGE_ITEMS`]).
    pub limit: u32,
}

/// A page of an export.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportPage {
    /// Objects (section `Objects`).
    pub objects: Vec<Object>,
    /// Edges (section `Edges`).
    pub edges: Vec<Edge>,
    /// The key to continue after; `None` when the section is done.
    pub next: Option<String>,
}

/// One step of an import into a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRequest {
    /// The target tenant (it must exist).
    pub tenant_id: String,
    /// The migration id (logged by the node).
    pub migration_id: String,
    /// What to restore.
    pub step: ImportStep,
}

/// What an import step restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImportStep {
    /// Declares collections; one that exists with the same spec is fine.
    Collections(Vec<CollectionSpec>),
    /// Objects (with their `created_at` and `updated_at`) and edges, one
    /// raft entry, a result per record (objects first). Restoring a
    /// record twice writes the same state, so a re-run is harmless.
    Records {
        /// Objects.
        objects: Vec<Object>,
        /// Edges (both ends must exist).
        edges: Vec<Edge>,
    },
    /// Raises the tenant's request counters to these (never lowers them).
    Counters(Box<RequestUsage>),
    /// Declares property indexes (after their collections, before the
    /// records, so restored objects fill them as they are written); one
    /// that exists is fine.
    Indexes(Vec<PropertyIndex>),
}
