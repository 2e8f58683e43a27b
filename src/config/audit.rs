//! `[audit]` and `[auto_scale]`: the audit trail of limit changes and the
//! dynamic limit policy (A5).

use serde::{Deserialize, Serialize};

/// `[audit]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Most entries kept per tenant; the oldest beyond go at the next trim.
    pub max_entries_per_tenant: u64,
    /// How often the metadata leader trims the log (retention and the
    /// cap), ms.
    pub trim_ms: u64,
    /// Retention of a tenant whose tier and settings name none, years.
    pub default_retention_years: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            max_entries_per_tenant: 10_000,
            trim_ms: 3_600_000,
            default_retention_years: 1,
        }
    }
}

/// `[auto_scale]` settings: how often the dynamic limit policy looks at
/// the tenants that opted in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoScaleSettings {
    /// How often the node looks at the tenants whose shard it leads, ms
    /// (the seed's 5 minutes).
    pub check_ms: u64,
    /// Least time between two raises of one tenant's limits, ms: a raise
    /// reaches every node's view of the tenant before the next is
    /// considered.
    pub cooldown_ms: u64,
}

impl Default for AutoScaleSettings {
    fn default() -> Self {
        Self {
            check_ms: 300_000,
            cooldown_ms: 10_000,
        }
    }
}
