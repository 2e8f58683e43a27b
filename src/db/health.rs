//! A3's periodic checks: the health check (every
//! `events.health_check_ms`, the seed's 30 s) and the limit-approach
//! check (every `events.limit_check_ms`, the seed's 5 min), raising
//! events on the node's [`EventBus`](crate::monitor::EventBus).
//!
//! - **Limit approach** (warning at 80% and 90%, critical at 95%): for
//!   each tenant whose shard this node leads, storage bytes, objects,
//!   vectors and the daily and monthly request counts against their
//!   limits (those of `usage`, [`super::usage_of`]). An event only when a
//!   use crosses a threshold upward since the last check on this node
//!   ([`crate::monitor::bands`]).
//! - **Storage critical** (health check): storage over 95% of a storage
//!   limit, on the shard leader; once until it falls below 95% again.
//! - **Shard without a leader** (health check): this node's replica of a
//!   tenant's group has known no leader at two checks in a row
//!   (critical); when it sees a leader again, an info event. Every
//!   replica reports its own view (a group without a leader has no leader
//!   to report for it), so a cluster with three replicas may raise it
//!   three times, each naming its node.
//!
//! Checks that need the authoritative counts run only on the shard
//! leader, so three replicas do not raise the same event three times. A
//! new leader (failover, restart) starts with empty bands and reports a
//! use already past a threshold once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::monitor::bands::{self, Bands};
use crate::proto::{EventKind, EventLevel};

use super::{usage_of, Database, Tenant};

/// The storage ratio above which the health check raises
/// [`EventKind::StorageCritical`] (the seed's 95%).
pub const CRITICAL_RATIO: f64 = 0.95;

/// What the checks remember between runs on this node.
#[derive(Default)]
pub(crate) struct CheckState {
    bands: Mutex<Bands>,
    /// (tenant, limit) keys over [`CRITICAL_RATIO`] at the last health
    /// check.
    critical: Mutex<HashSet<(String, String)>>,
    /// Tenants whose replica here saw no leader: the consecutive checks,
    /// and whether the event was raised.
    leaderless: Mutex<HashMap<String, (u32, bool)>>,
}

impl Database {
    /// Starts the health and limit-approach checks (they end when the
    /// database is gone).
    pub(crate) fn start_event_checks(&self) {
        let ev = &self.inner.config.events;
        for (every, limits) in [(ev.health_check_ms, false), (ev.limit_check_ms, true)] {
            let weak = self.downgrade();
            let every = Duration::from_millis(every);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(db) = weak.upgrade() else { return };
                    if limits {
                        db.limit_check();
                    } else {
                        db.health_check();
                    }
                }
            });
        }
    }

    /// One limit-approach check of the tenants this node leads.
    pub(crate) fn limit_check(&self) {
        let led = led_tenants(self);
        let state = &self.inner.checks;
        let ids: HashSet<String> = led.iter().map(|t| t.config().tenant_id.clone()).collect();
        let mut raised = Vec::new();
        {
            let mut b = state.bands.lock();
            b.retain(|t| ids.contains(t));
            for t in &led {
                let Ok(u) = usage_of(t) else { continue };
                for l in u.limits.iter().filter(|l| l.max > 0) {
                    if let Some(band) = b.observe(&u.tenant_id, &l.limit, l.ratio) {
                        raised.push((u.tenant_id.clone(), l.clone(), band));
                    }
                }
            }
        }
        for (tenant, l, band) in raised {
            let pct = bands::threshold_pct(band);
            let level = if band >= 3 {
                EventLevel::Critical
            } else {
                EventLevel::Warning
            };
            self.inner.events.emit(
                level,
                Some(&tenant),
                EventKind::LimitApproached {
                    limit: l.limit.clone(),
                    used: l.used,
                    max: l.max,
                    threshold_pct: pct,
                },
                format!(
                    "{} passed {pct}% of its limit ({}/{}, {:.1}%)",
                    l.limit,
                    l.used,
                    l.max,
                    l.ratio * 100.0
                ),
            );
        }
    }

    /// One health check: storage over 95% on the tenants this node
    /// leads, and replicas here that see no leader.
    pub(crate) fn health_check(&self) {
        let state = &self.inner.checks;
        let led = led_tenants(self);
        let mut over = HashSet::new();
        let mut raised = Vec::new();
        for t in &led {
            let Ok(u) = usage_of(t) else { continue };
            for l in u.limits.iter().filter(|l| l.max > 0) {
                if !l.limit.starts_with("storage_limit.") || l.ratio <= CRITICAL_RATIO {
                    continue;
                }
                let key = (u.tenant_id.clone(), l.limit.clone());
                if !state.critical.lock().contains(&key) {
                    raised.push((u.tenant_id.clone(), l.clone()));
                }
                over.insert(key);
            }
        }
        *state.critical.lock() = over;
        for (tenant, l) in raised {
            self.inner.events.emit(
                EventLevel::Critical,
                Some(&tenant),
                EventKind::StorageCritical {
                    limit: l.limit.clone(),
                    used: l.used,
                    max: l.max,
                },
                format!(
                    "storage critical: {} at {:.1}% ({}/{})",
                    l.limit,
                    l.ratio * 100.0,
                    l.used,
                    l.max
                ),
            );
        }
        self.leader_check();
    }

    fn leader_check(&self) {
        use openraft::async_runtime::WatchReceiver;
        let state = &self.inner.checks;
        let mut seen = HashMap::new();
        let mut events = Vec::new();
        {
            let old = state.leaderless.lock();
            // Only open shards run a raft core (a sleeping replica is
            // not watched for a leader).
            for t in self.awake_tenants() {
                let Some(raft) = t.raft() else { continue };
                let id = t.config().tenant_id.clone();
                let leaderless = raft.metrics().borrow_watched().current_leader.is_none();
                let (n, raised) = old.get(&id).copied().unwrap_or((0, false));
                if leaderless {
                    let n = n + 1;
                    let raise = n >= 2 && !raised;
                    if raise {
                        events.push((id.clone(), t.group(), None));
                    }
                    seen.insert(id, (n, raised || raise));
                } else if raised {
                    events.push((id, t.group(), Some(t.leader_node().unwrap_or(0))));
                }
            }
        }
        *state.leaderless.lock() = seen;
        for (tenant, group, restored) in events {
            let (level, kind, message) = match restored {
                None => (
                    EventLevel::Critical,
                    EventKind::ShardLeaderless { group },
                    format!("shard group {group} has no leader (seen from this node's replica at two health checks)"),
                ),
                Some(leader_node) => (
                    EventLevel::Info,
                    EventKind::ShardLeaderRestored { group, leader_node },
                    format!("shard group {group} has a leader again (node {leader_node})"),
                ),
            };
            self.inner.events.emit(level, Some(&tenant), kind, message);
        }
    }
}

/// The loaded tenants whose shard this node's replica leads.
fn led_tenants(db: &Database) -> Vec<Arc<Tenant>> {
    // Only open shards run a raft core.
    db.awake_tenants()
        .into_iter()
        .filter(|t| t.raft().is_some_and(|r| crate::shard::is_leader(&r)))
        .collect()
}
