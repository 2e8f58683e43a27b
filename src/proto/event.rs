//! Events of the live event stream (A3): what a node reports to its
//! subscribers (`vektagraf events`, `Client::events`).
//!
//! An [`Event`] is raised on one node (named in it) by a periodic check
//! or by the request path, and carries a [`EventLevel`], the tenant it is
//! about (none for node- or cluster-wide events), a typed [`EventKind`]
//! and a human message. A subscriber chooses what it receives with an
//! [`EventFilter`]; a tenant key's filter is always its own tenant.

use serde::{Deserialize, Serialize};

use super::LimitKind;

/// How serious an event is. Ordered: `Info < Warning < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum EventLevel {
    /// Something happened (a move started or finished).
    #[default]
    Info,
    /// Needs attention soon (a limit approached, a burst of rejections).
    Warning,
    /// Needs attention now (storage over 95%, a shard without a leader).
    Critical,
}

impl EventLevel {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warning => "warning",
            EventLevel::Critical => "critical",
        }
    }

    /// Parses `info`, `warning` or `critical`.
    pub fn parse(s: &str) -> Option<EventLevel> {
        match s {
            "info" => Some(EventLevel::Info),
            "warning" => Some(EventLevel::Warning),
            "critical" => Some(EventLevel::Critical),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A limit's use crossed `threshold_pct` (80, 90 or 95) of it upward
    /// (limit-approach check, on the tenant's shard leader). Raised once
    /// per crossing: again only after the use fell below and rose again.
    LimitApproached {
        /// The limit's config key (`storage_limit.max_storage_bytes`,
        /// `storage_limit.max_objects`, `storage_limit.max_vectors`,
        /// `request_limit.daily_limit`, `request_limit.monthly_limit`).
        limit: String,
        /// Used when checked.
        used: u64,
        /// The limit.
        max: u64,
        /// The threshold crossed, percent.
        threshold_pct: u8,
    },
    /// Storage over 95% of a storage limit (health check, on the tenant's
    /// shard leader). Raised once until the use falls below 95% again.
    StorageCritical {
        /// The limit's config key.
        limit: String,
        /// Used when checked.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// Many requests of the tenant refused by one limit in a short window
    /// (request path, on the node that received them). At most one per
    /// tenant and limit kind per window.
    RejectionBurst {
        /// The limit that refused them.
        limit: LimitKind,
        /// Rejections counted in the window when the event was raised.
        count: u64,
        /// The window, ms.
        window_ms: u64,
    },
    /// This node's replica of the tenant's shard group has seen no leader
    /// for two health checks in a row.
    ShardLeaderless {
        /// The raft group.
        group: u64,
    },
    /// The replica that reported [`EventKind::ShardLeaderless`] sees a
    /// leader again.
    ShardLeaderRestored {
        /// The raft group.
        group: u64,
        /// The leader's node.
        leader_node: u64,
    },
    /// A move job left `registered` (group 0's leader).
    MoveStarted {
        /// The job.
        job: u64,
        /// Source node.
        from_node: u64,
        /// Target node.
        to_node: u64,
    },
    /// A move job finished.
    MoveFinished {
        /// The job.
        job: u64,
        /// Source node.
        from_node: u64,
        /// Target node.
        to_node: u64,
    },
    /// A move job failed and was rolled back.
    MoveFailed {
        /// The job.
        job: u64,
        /// Why.
        reason: String,
    },
    /// A move job was cancelled and rolled back.
    MoveCancelled {
        /// The job.
        job: u64,
        /// Why.
        reason: String,
    },
    /// A5: the dynamic limit policy raised the tenant's storage limits
    /// (on the node leading its shard; the change is in the audit log).
    LimitsRaised {
        /// What was raised, from what to what.
        reason: String,
    },
    /// Issue 12: the tenant's replica on this node closed its shard after
    /// being idle (`[hibernation] after_idle_ms`).
    TenantHibernated,
    /// Issue 12: a request reopened the tenant's hibernated replica.
    TenantReactivated {
        /// How long the reopen took, ms.
        took_ms: u64,
    },
}

impl EventKind {
    /// A short name of the kind (`limit_approached`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::LimitApproached { .. } => "limit_approached",
            EventKind::StorageCritical { .. } => "storage_critical",
            EventKind::RejectionBurst { .. } => "rejection_burst",
            EventKind::ShardLeaderless { .. } => "shard_leaderless",
            EventKind::ShardLeaderRestored { .. } => "shard_leader_restored",
            EventKind::MoveStarted { .. } => "move_started",
            EventKind::MoveFinished { .. } => "move_finished",
            EventKind::MoveFailed { .. } => "move_failed",
            EventKind::MoveCancelled { .. } => "move_cancelled",
            EventKind::LimitsRaised { .. } => "limits_raised",
            EventKind::TenantHibernated => "tenant_hibernated",
            EventKind::TenantReactivated { .. } => "tenant_reactivated",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it was raised, ms since the Unix epoch.
    pub at_ms: u64,
    /// The node that raised it (0: a standalone node).
    pub node: u64,
    /// Its number on that node (increasing from 1 since the node
    /// started).
    pub seq: u64,
    /// How serious.
    pub level: EventLevel,
    /// The tenant it is about (`None`: node- or cluster-wide).
    pub tenant: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// What happened, for people.
    pub message: String,
}

/// Which events a subscriber receives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only this tenant's events (`None`: every event; admin keys only).
    pub tenant: Option<String>,
    /// Only events at least this serious.
    pub min_level: EventLevel,
}

impl EventFilter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        e.level >= self.min_level
            && match &self.tenant {
                Some(t) => e.tenant.as_deref() == Some(t.as_str()),
                None => true,
            }
    }
}

/// What an event subscription yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventItem {
    /// An event.
    Event(Event),
    /// The subscriber fell behind on `node`: this many events were lost
    /// there (the node never waits for a subscriber).
    Lost {
        /// The node.
        node: u64,
        /// Events lost.
        count: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(level: EventLevel, tenant: Option<&str>) -> Event {
        Event {
            at_ms: 1,
            node: 0,
            seq: 1,
            level,
            tenant: tenant.map(str::to_string),
            kind: EventKind::ShardLeaderless { group: 1 },
            message: String::new(),
        }
    }

    #[test]
    fn a_filter_passes_its_tenant_at_or_above_its_level_only() {
        let f = EventFilter {
            tenant: Some("a".into()),
            min_level: EventLevel::Warning,
        };
        assert!(f.matches(&ev(EventLevel::Warning, Some("a"))));
        assert!(f.matches(&ev(EventLevel::Critical, Some("a"))));
        assert!(!f.matches(&ev(EventLevel::Info, Some("a"))));
        assert!(!f.matches(&ev(EventLevel::Critical, Some("b"))));
        assert!(!f.matches(&ev(EventLevel::Critical, None)));
        let all = EventFilter::default();
        assert!(all.matches(&ev(EventLevel::Info, None)));
        assert!(all.matches(&ev(EventLevel::Info, Some("b"))));
    }
}
