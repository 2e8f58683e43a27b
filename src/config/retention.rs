//! `[retention]`: the scheduled cleanup of objects older than a tenant's
//! retention period (S4).

use serde::{Deserialize, Serialize};

/// `[retention]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How often each tenant with a retention period is cleaned, ms.
    pub interval_ms: u64,
    /// How often the node looks at its tenants, ms: a tenant whose
    /// storage passed 90% of a limit is cleaned at the next look instead
    /// of waiting for its schedule.
    pub check_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval_ms: 3_600_000,
            check_ms: 60_000,
        }
    }
}
