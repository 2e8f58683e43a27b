//! The commands of a shard's raft log and their results.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::QuotaCounters;
use crate::proto::{CollectionSpec, Error, WriteOp, WriteOutcome};
use crate::tenant::StorageLimitConfig;

/// One raft log entry's payload. Applying it is deterministic: the same
/// command on the same state gives the same result on every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Writes. `atomic`: all or nothing (a transaction); otherwise each op
    /// gets its own result (a batch).
    Write {
        /// The ops, in order.
        ops: Vec<WriteOp>,
        /// Transaction (true) or batch (false).
        atomic: bool,
        /// Time stamped by the proposer, used for `created_at`.
        now_ms: u64,
    },
    /// Declares a collection.
    CreateCollection(CollectionSpec),
    /// Removes an empty collection.
    DropCollection(String),
    /// Sets the storage limits enforced at apply.
    SetLimits(StorageLimitConfig),
    /// Raises the persisted request counters (a reservation or a
    /// checkpoint): per period the larger count wins, so it never lowers
    /// them and is safe to apply twice ([`QuotaCounters::merge_max`]).
    /// The result is [`CommandResult::Quota`].
    CheckpointQuota(QuotaCounters),
    /// S4: deletes up to `max` objects created before `cutoff_ms`.
    PurgeOlderThan {
        /// Only this collection (all when `None`).
        collection: Option<String>,
        /// Creation-time cutoff.
        cutoff_ms: u64,
        /// Most objects deleted by this command.
        max: u32,
    },
    /// Cluster metadata (group 0 only): changes to the replicated registry,
    /// applied all together.
    Registry(Vec<RegOp>),
    /// Sets the persisted request counters exactly: the leader's last
    /// word on a graceful close, replacing unused reservation by the
    /// counts really admitted.
    SetQuota(QuotaCounters),
    /// Applies `cmd` at most once per (`client`, `seq`, `part`): the first
    /// time its result is remembered, later times that result is returned
    /// and nothing is written. Results of the client's sequences below
    /// `acked_below` (answers it has received) are forgotten.
    Once {
        /// The client's random id.
        client: u64,
        /// The client's sequence number of the request.
        seq: u64,
        /// Which command of the request (a batch is split into several).
        part: u32,
        /// Every sequence below this has been answered to the client.
        acked_below: u64,
        /// Proposer's clock, for expiry.
        now_ms: u64,
        /// The write.
        cmd: Box<Command>,
    },
    /// Forgets up to `max` exactly-once results recorded before
    /// `before_ms` (clients that went away).
    ExpireOnce {
        /// Cutoff (proposer's clock).
        before_ms: u64,
        /// Most results forgotten by this command.
        max: u32,
    },
    /// Restores exported records (tenant import, admin only): objects
    /// keep their `created_at` and `updated_at`, then edges are put. Like
    /// a batch, each record gets its own result (objects first) and the
    /// storage limits are enforced; restoring a record twice writes the
    /// same state.
    Restore {
        /// Objects with their timestamps.
        objects: Vec<crate::proto::Object>,
        /// Edges.
        edges: Vec<crate::proto::Edge>,
    },
    /// Indexes a property of a collection (see `storage::props`): the
    /// index is filled from the collection's objects in the same batch, so
    /// it is complete from the moment it exists. Indexing an indexed
    /// property again changes nothing. The result is the number of
    /// objects read.
    IndexProperty {
        /// Collection.
        collection: String,
        /// Dotted property path.
        property: String,
    },
    /// Drops a property index: deletes its declaration and every key of
    /// it, and takes their bytes off the tenant's storage bytes. The
    /// result is the number of keys deleted; an index that does not exist
    /// is `NotFound`.
    DropPropertyIndex {
        /// Collection.
        collection: String,
        /// Dotted property path.
        property: String,
    },
}

impl Command {
    /// Whether applying it can change what a read (get, query, search,
    /// traversal) returns. Read caches are invalidated by every command
    /// that can; counters, limits and exactly-once bookkeeping cannot.
    /// Deliberately no wildcard: a new command must decide.
    pub fn changes_reads(&self) -> bool {
        match self {
            Command::Write { .. }
            | Command::CreateCollection(_)
            | Command::DropCollection(_)
            | Command::PurgeOlderThan { .. }
            | Command::Registry(_)
            | Command::Once { .. }
            | Command::Restore { .. } => true,
            // The index changes how a filtered search finds its
            // candidates, never which objects match.
            Command::IndexProperty { .. }
            | Command::DropPropertyIndex { .. }
            | Command::SetLimits(_)
            | Command::CheckpointQuota(_)
            | Command::SetQuota(_)
            | Command::ExpireOnce { .. } => false,
        }
    }
}

/// The exactly-once results of one request as stored (a batch split into
/// several commands has one per part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnceRecord {
    /// When it was last applied to (proposer's clock).
    pub at_ms: u64,
    /// (part, the result returned the first time).
    pub results: Vec<(u32, CommandResult)>,
}

/// A client's mark: results below `below` are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnceLow {
    /// Every sequence below this is forgotten.
    pub below: u64,
    /// When it last moved (proposer's clock), for expiry.
    pub at_ms: u64,
}

/// One change to the replicated registry. Keys live in the state
/// machine's `meta` column family under `r/<table>/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RegOp {
    /// Sets a key.
    Put {
        /// Table (the local registry's column family).
        table: String,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Removes a key.
    Delete {
        /// Table.
        table: String,
        /// Key.
        key: Vec<u8>,
    },
    /// Removes every key starting with `prefix`.
    DeletePrefix {
        /// Table.
        table: String,
        /// Prefix.
        prefix: Vec<u8>,
    },
    /// Increments a big-endian `u64` counter (absent: 0); the command's
    /// result is the new value.
    Increment {
        /// Table.
        table: String,
        /// Key.
        key: Vec<u8>,
    },
}

impl RegOp {
    /// The state machine key of `table`/`key`.
    pub fn storage_key(table: &str, key: &[u8]) -> Vec<u8> {
        [b"r/", table.as_bytes(), b"/", key].concat()
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Write { ops, atomic, .. } => {
                write!(
                    f,
                    "write({} ops{})",
                    ops.len(),
                    if *atomic { ", atomic" } else { "" }
                )
            }
            Command::CreateCollection(c) => write!(f, "create_collection({})", c.name),
            Command::DropCollection(c) => write!(f, "drop_collection({c})"),
            Command::SetLimits(_) => write!(f, "set_limits"),
            Command::CheckpointQuota(q) => {
                write!(f, "checkpoint_quota(day {} = {})", q.day, q.daily)
            }
            Command::PurgeOlderThan { cutoff_ms, .. } => write!(f, "purge_older_than({cutoff_ms})"),
            Command::Registry(ops) => write!(f, "registry({} ops)", ops.len()),
            Command::SetQuota(q) => write!(f, "set_quota(day {} = {})", q.day, q.daily),
            Command::Once {
                client, seq, cmd, ..
            } => write!(f, "once({client:x}/{seq}: {cmd})"),
            Command::ExpireOnce { before_ms, .. } => write!(f, "expire_once({before_ms})"),
            Command::IndexProperty {
                collection,
                property,
            } => write!(f, "index_property({collection}.{property})"),
            Command::DropPropertyIndex {
                collection,
                property,
            } => write!(f, "drop_property_index({collection}.{property})"),
            Command::Restore { objects, edges } => {
                write!(
                    f,
                    "restore({} objects, {} edges)",
                    objects.len(),
                    edges.len()
                )
            }
        }
    }
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Blank and membership entries.
    #[default]
    None,
    /// A write: per-op results (for an atomic write, all `Ok` or the one
    /// error that aborted it), plus warnings.
    Write {
        /// Per-op outcomes.
        results: Vec<Result<WriteOutcome, Error>>,
        /// Threshold and soft-limit warnings.
        warnings: Vec<String>,
    },
    /// A command that succeeded or failed as a whole.
    Done(Result<u64, Error>),
    /// The persisted request counters just before and just after a
    /// [`Command::CheckpointQuota`].
    Quota {
        /// Before.
        before: Box<QuotaCounters>,
        /// After.
        after: Box<QuotaCounters>,
    },
}

impl CommandResult {
    /// The outcome of a command that succeeds or fails as a whole
    /// ([`CommandResult::Done`]); any other result is a storage error (a
    /// command answered with the wrong kind of result).
    pub fn done(self) -> Result<u64, Error> {
        match self {
            CommandResult::Done(r) => r,
            other => Err(Error::storage(format!("unexpected result {other:?}"))),
        }
    }
}
