//! `[analytics]`: the stored request history the analytics report (A2)
//! is made from.

use serde::{Deserialize, Serialize};

/// `[analytics]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// How often the node stores what it gathered, ms (also the storage
    /// sampling interval).
    pub flush_ms: u64,
    /// How long per-minute rollups are kept, ms (a day).
    pub minutes_kept_ms: u64,
    /// How long per-hour rollups are kept, ms (90 days).
    pub hours_kept_ms: u64,
    /// How often old rollups are deleted, ms.
    pub trim_ms: u64,
    /// How often the storage of sleeping (hibernated) tenants is added to
    /// the history, ms: each time, the time since the last, at the bytes
    /// each held as it closed (also when it wakes, and for a report).
    pub rest_sample_ms: u64,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            flush_ms: 10_000,
            minutes_kept_ms: 24 * 3_600_000,
            hours_kept_ms: 90 * 24 * 3_600_000,
            trim_ms: 3_600_000,
            rest_sample_ms: 900_000,
        }
    }
}
