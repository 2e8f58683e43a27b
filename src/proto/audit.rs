//! A5: the audit trail of tenant limit changes.

use serde::{Deserialize, Serialize};

/// One change to one field of a tenant's config, as the audit log keeps
/// it: who, when, which field, the old and the new value, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the change was committed, ms since the Unix epoch.
    pub at_ms: u64,
    /// The tenant.
    pub tenant_id: String,
    /// Who made it: `key:<key_id>` (an admin key over the wire),
    /// `auto_scale` (the dynamic limit policy), `embedded` (the embedded
    /// API) or `system`.
    pub actor: String,
    /// The field, dotted (`storage_limit.max_storage_bytes`, `tier`,
    /// `enabled`); `tenant` for a creation or deletion.
    pub field: String,
    /// The value before, as JSON text (`None`: it did not exist).
    pub old: Option<String>,
    /// The value after, as JSON text (`None`: removed).
    pub new: Option<String>,
    /// Why: the operator's reason, or the policy's rule and figures.
    pub reason: String,
}

/// Who changes a tenant's config, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedBy {
    /// An admin key (its public id).
    Key(String),
    /// The dynamic limit policy (A5).
    AutoScale,
    /// A caller of the embedded API.
    Embedded,
    /// The node itself, for no caller (a forwarded request that named no
    /// key).
    System,
}

impl std::fmt::Display for ChangedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangedBy::Key(k) => write!(f, "key:{k}"),
            ChangedBy::AutoScale => f.write_str("auto_scale"),
            ChangedBy::Embedded => f.write_str("embedded"),
            ChangedBy::System => f.write_str("system"),
        }
    }
}
