//! Serving an event subscription (`Request::SubscribeEvents`, A3) on its
//! stream, which stays open.
//!
//! The stream gets `EventsSubscribed` (or an error, and ends), then one
//! `Event` frame per event the filter passes (first the node's recent
//! ones), and `EventsLost { count }` when the subscriber fell more than
//! `events.capacity` events behind the node's bus: the bus never waits,
//! so a subscriber that does not read (QUIC flow control stops this
//! task's writes) only loses events. It ends when the client stops
//! reading the stream (drops it), the connection ends, or the key is
//! revoked (checked before every event sent).

use std::sync::Arc;

use parking_lot::Mutex;
use quinn::{RecvStream, SendStream};
use tokio::sync::broadcast::error::RecvError;

use crate::db::Database;
use crate::proto::wire::{Envelope, KeyInfo, KeyKind, Response};
use crate::proto::{Error, EventFilter};

use super::ConnState;

/// One of the connection's subscription slots, given back on drop.
struct ConnSlot(Arc<Mutex<ConnState>>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.subscriptions = st.subscriptions.saturating_sub(1);
    }
}

/// The filter `key` may use: a tenant key's is always its own tenant
/// (another tenant is refused); an admin key's is as asked.
pub(crate) fn scope(key: &KeyInfo, f: EventFilter) -> Result<EventFilter, Error> {
    match key.kind {
        KeyKind::Admin => Ok(f),
        KeyKind::Tenant => {
            let own = key.tenant_id.clone().ok_or(Error::MissingTenantContext)?;
            match f.tenant {
                Some(t) if t != own => Err(Error::CrossTenantAccess {
                    session_tenant: own,
                    target_tenant: t,
                }),
                _ => Ok(EventFilter {
                    tenant: Some(own),
                    min_level: f.min_level,
                }),
            }
        }
    }
}

async fn send(send: &mut SendStream, id: u64, r: Response) -> Result<(), String> {
    let frame = Envelope::new(id, r).to_frame().map_err(|e| e.to_string())?;
    send.write_all(&frame).await.map_err(|e| e.to_string())
}

/// Opens the subscription: the key, its scope, the connection's and the
/// node's caps.
fn open(
    db: &Database,
    state: &Arc<Mutex<ConnState>>,
    filter: EventFilter,
) -> Result<(String, EventFilter, ConnSlot, crate::monitor::Subscription), Error> {
    let key_id = {
        let st = state.lock();
        st.key.as_ref().map(|k| k.key_id.clone())
    }
    .ok_or_else(super::no_credentials)?;
    let key = db.key_still_valid(&key_id)?;
    let filter = scope(&key, filter)?;
    let max = db.config().events.max_subscriptions_per_connection;
    let slot = {
        let mut st = state.lock();
        if st.subscriptions >= max {
            return Err(Error::TooManySubscriptions {
                limit: max as u64,
                per_connection: true,
            });
        }
        st.subscriptions += 1;
        ConnSlot(state.clone())
    };
    let sub = db.events().subscribe(&filter)?;
    Ok((key_id, filter, slot, sub))
}

/// The cluster's live nodes as (id, client address); empty standalone.
fn nodes(db: &Database) -> Vec<(u64, String)> {
    if !db.is_clustered() {
        return Vec::new();
    }
    db.registry()
        .and_then(|r| r.nodes())
        .map(|ns| {
            ns.into_iter()
                .filter(|n| !n.removed)
                .map(|n| (n.id, n.client_addr))
                .collect()
        })
        .unwrap_or_default()
}

/// Serves one subscription until the client or the connection ends it.
pub(super) async fn serve(
    db: &Database,
    state: Arc<Mutex<ConnState>>,
    id: u64,
    filter: EventFilter,
    mut tx: SendStream,
    recv: RecvStream,
) {
    let (key_id, filter, _slot, mut sub) = match open(db, &state, filter) {
        Ok(o) => o,
        Err(e) => {
            if send(&mut tx, id, Response::Error(e)).await.is_ok() {
                let _ = tx.finish();
            }
            return;
        }
    };
    // Nothing more is read from the client; its end closes the stream.
    drop(recv);
    let node = db.events().node();
    tracing::debug!(key = %key_id, ?filter, "event subscription opened");
    let first = Response::EventsSubscribed {
        node,
        nodes: nodes(db),
    };
    if send(&mut tx, id, first).await.is_err() {
        return;
    }
    for e in std::mem::take(&mut sub.replay) {
        if send(&mut tx, id, Response::Event(Box::new((*e).clone())))
            .await
            .is_err()
        {
            return;
        }
    }
    // Resolves when the client dropped its end (STOP_SENDING) or the
    // connection ended.
    let stopped = tx.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            r = sub.rx.recv() => r,
            _ = &mut stopped => break,
        };
        let frame = match next {
            Ok(e) if filter.matches(&e) => Response::Event(Box::new((*e).clone())),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => Response::EventsLost { count: n },
            Err(RecvError::Closed) => break,
        };
        if let Err(e) = db.key_still_valid(&key_id) {
            let _ = send(&mut tx, id, Response::Error(e)).await;
            break;
        }
        if let Err(e) = send(&mut tx, id, frame).await {
            tracing::debug!(error = %e, "event subscription ended");
            return;
        }
    }
    let _ = tx.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EventLevel;

    fn key(kind: KeyKind, tenant: Option<&str>) -> KeyInfo {
        KeyInfo {
            key_id: "k".into(),
            kind,
            tenant_id: tenant.map(str::to_string),
            user_id: None,
            operations: None,
            created_at: 0,
            revoked: false,
        }
    }

    #[test]
    fn a_tenant_key_is_scoped_to_its_tenant_and_refused_another() {
        let k = key(KeyKind::Tenant, Some("a"));
        let f = |t: Option<&str>| EventFilter {
            tenant: t.map(str::to_string),
            min_level: EventLevel::Warning,
        };
        assert_eq!(scope(&k, f(None)).unwrap(), f(Some("a")));
        assert_eq!(scope(&k, f(Some("a"))).unwrap(), f(Some("a")));
        assert!(matches!(
            scope(&k, f(Some("b"))),
            Err(Error::CrossTenantAccess { .. })
        ));
        let admin = key(KeyKind::Admin, None);
        assert_eq!(scope(&admin, f(None)).unwrap(), f(None));
        assert_eq!(scope(&admin, f(Some("b"))).unwrap(), f(Some("b")));
    }
}
