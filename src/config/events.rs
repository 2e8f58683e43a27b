//! `[events]`: the live event stream (A3): its periodic checks, the
//! node's event bus and the subscriptions it serves.

use serde::{Deserialize, Serialize};

/// `[events]` settings. Every key has a default, so a config file
/// without the section (or with some keys) is valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// How often the health check runs, ms (the seed's 30 s): storage
    /// over 95% of a limit, tenant shards without a leader.
    pub health_check_ms: u64,
    /// How often the limit-approach check runs, ms (the seed's 5 min):
    /// storage and daily/monthly request counts crossing 80, 90 or 95% of
    /// their limits.
    pub limit_check_ms: u64,
    /// Events the node's bus holds for each subscriber that has not
    /// taken them yet; a subscriber further behind loses the oldest and
    /// is told how many.
    pub capacity: usize,
    /// Recent events kept in memory and replayed to a new subscriber
    /// (those its filter matches).
    pub recent: usize,
    /// Subscriptions the node serves at once.
    pub max_subscriptions: usize,
    /// Subscriptions one connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Limit rejections of one tenant (of one limit kind) within
    /// `burst_window_ms` that make a rejection-burst event.
    pub burst_rejections: u64,
    /// The window of `burst_rejections`, ms; at most one burst event per
    /// tenant and limit kind per window.
    pub burst_window_ms: u64,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            health_check_ms: 30_000,
            limit_check_ms: 300_000,
            capacity: 1024,
            recent: 256,
            max_subscriptions: 256,
            max_subscriptions_per_connection: 8,
            burst_rejections: 20,
            burst_window_ms: 10_000,
        }
    }
}
