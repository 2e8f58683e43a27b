//! The node's event bus (A3): every event raised on this node goes
//! through [`EventBus::emit`], which logs it (tracing, at the event's
//! level), keeps it in a small ring of recent events and broadcasts it to
//! the subscriptions.
//!
//! The broadcast is `tokio::sync::broadcast` with `events.capacity`
//! slots: `emit` never waits for a subscriber. A subscriber more than
//! `capacity` events behind loses the oldest ones and learns how many
//! when it next receives (`RecvError::Lagged(n)`), which the server turns
//! into an `EventsLost` frame. Subscriptions are capped per node
//! (`events.max_subscriptions`, a semaphore held by each
//! [`Subscription`]).
//!
//! Emitting and subscribing take the same short lock, so a new
//! subscription gets each event exactly once: either in its replay of
//! the recent ones or on its receiver, never both, never neither.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use super::bursts::RejectionBursts;
use crate::config::EventsSettings;
use crate::proto::{Error, Event, EventFilter, EventKind, EventLevel, LimitKind};

/// The node's event bus.
#[derive(Debug)]
pub struct EventBus {
    node: u64,
    tx: broadcast::Sender<Arc<Event>>,
    ring: Mutex<Ring>,
    recent: usize,
    slots: Arc<Semaphore>,
    max_subscriptions: usize,
    bursts: RejectionBursts,
}

#[derive(Debug, Default)]
struct Ring {
    events: VecDeque<Arc<Event>>,
    seq: u64,
}

/// An open subscription: the recent events its filter matched when it
/// was opened, then its receiver. Holds one of the node's subscription
/// slots until dropped.
#[derive(Debug)]
pub struct Subscription {
    /// Recent events (oldest first) that matched the filter.
    pub replay: Vec<Arc<Event>>,
    /// Every event emitted after the replay (filter them with
    /// [`EventFilter::matches`]).
    pub rx: broadcast::Receiver<Arc<Event>>,
    _slot: OwnedSemaphorePermit,
}

impl EventBus {
    /// The bus of node `node` (0: standalone).
    pub fn new(node: u64, settings: &EventsSettings) -> EventBus {
        let (tx, _) = broadcast::channel(settings.capacity.max(1));
        EventBus {
            node,
            tx,
            ring: Mutex::new(Ring::default()),
            recent: settings.recent,
            slots: Arc::new(Semaphore::new(settings.max_subscriptions)),
            max_subscriptions: settings.max_subscriptions,
            bursts: RejectionBursts::new(settings.burst_rejections, settings.burst_window_ms),
        }
    }

    /// The node that raises this bus's events.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Raises an event: logs it, keeps it among the recent ones and
    /// sends it to every subscription. Never waits.
    pub fn emit(
        &self,
        level: EventLevel,
        tenant: Option<&str>,
        kind: EventKind,
        message: String,
    ) -> Arc<Event> {
        let t = tenant.unwrap_or("");
        let name = kind.name();
        match level {
            EventLevel::Info => tracing::info!(event = name, tenant = t, "{message}"),
            EventLevel::Warning => tracing::warn!(event = name, tenant = t, "{message}"),
            EventLevel::Critical => {
                tracing::error!(event = name, tenant = t, critical = true, "{message}")
            }
        }
        let mut ring = self.ring.lock();
        ring.seq += 1;
        let e = Arc::new(Event {
            at_ms: now_ms(),
            node: self.node,
            seq: ring.seq,
            level,
            tenant: tenant.map(str::to_string),
            kind,
            message,
        });
        if self.recent > 0 {
            if ring.events.len() == self.recent {
                ring.events.pop_front();
            }
            ring.events.push_back(e.clone());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(e.clone());
        e
    }

    /// Opens a subscription: the recent events `filter` matches, then a
    /// receiver of every later event. Refused beyond
    /// `events.max_subscriptions`.
    pub fn subscribe(&self, filter: &EventFilter) -> Result<Subscription, Error> {
        let slot =
            self.slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManySubscriptions {
                    limit: self.max_subscriptions as u64,
                    per_connection: false,
                })?;
        let ring = self.ring.lock();
        let replay = ring
            .events
            .iter()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        let rx = self.tx.subscribe();
        drop(ring);
        Ok(Subscription {
            replay,
            rx,
            _slot: slot,
        })
    }

    /// Subscriptions open now.
    pub fn subscriptions(&self) -> usize {
        self.max_subscriptions - self.slots.available_permits()
    }

    /// Counts a request of `tenant` refused by `limit`; raises a
    /// [`EventKind::RejectionBurst`] warning when that makes a burst
    /// (see [`RejectionBursts`]).
    pub fn rejected(&self, tenant: &str, limit: LimitKind) {
        let now = now_ms();
        if let Some(count) = self.bursts.record(tenant, limit, now) {
            let window_ms = self.bursts.window_ms();
            self.emit(
                EventLevel::Warning,
                Some(tenant),
                EventKind::RejectionBurst {
                    limit,
                    count,
                    window_ms,
                },
                format!(
                    "{count} requests refused by {} within {} s",
                    limit.config_key(),
                    window_ms as f64 / 1000.0
                ),
            );
        }
    }
}

/// Now, ms since the Unix epoch (this module names no `util`).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(capacity: usize, recent: usize) -> EventBus {
        EventBus::new(
            7,
            &EventsSettings {
                capacity,
                recent,
                max_subscriptions: 2,
                ..EventsSettings::default()
            },
        )
    }

    fn info(bus: &EventBus, tenant: &str, n: u64) {
        bus.emit(
            EventLevel::Info,
            Some(tenant),
            EventKind::MoveStarted {
                job: n,
                from_node: 1,
                to_node: 2,
            },
            format!("{n}"),
        );
    }

    #[tokio::test]
    async fn a_new_subscriber_gets_the_matching_recent_events_then_the_new_ones() {
        let b = bus(16, 3);
        for n in 1..=4 {
            info(&b, if n % 2 == 0 { "a" } else { "b" }, n);
        }
        let f = EventFilter {
            tenant: Some("a".into()),
            min_level: EventLevel::Info,
        };
        let mut s = b.subscribe(&f).unwrap();
        // The ring kept 2, 3, 4; "a" matched 2 and 4.
        let seqs: Vec<u64> = s.replay.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 4]);
        info(&b, "a", 5);
        let e = s.rx.recv().await.unwrap();
        assert_eq!((e.seq, e.node), (5, 7));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_it_lost() {
        let b = bus(4, 0);
        let mut s = b.subscribe(&EventFilter::default()).unwrap();
        for n in 1..=10 {
            info(&b, "a", n);
        }
        match s.rx.recv().await {
            Err(broadcast::error::RecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        // Then the 4 newest.
        assert_eq!(s.rx.recv().await.unwrap().seq, 7);
    }

    #[test]
    fn subscriptions_beyond_the_cap_are_refused_with_a_typed_error() {
        let b = bus(4, 0);
        let s1 = b.subscribe(&EventFilter::default()).unwrap();
        let _s2 = b.subscribe(&EventFilter::default()).unwrap();
        assert_eq!(
            b.subscribe(&EventFilter::default()).unwrap_err(),
            Error::TooManySubscriptions {
                limit: 2,
                per_connection: false
            }
        );
        drop(s1);
        assert_eq!(b.subscriptions(), 1);
        assert!(b.subscribe(&EventFilter::default()).is_ok());
    }
}
