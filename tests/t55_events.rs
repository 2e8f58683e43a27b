//! The live event stream (A3) on a real node: limit-approach events as a
//! tenant fills up, seen through the driver's stream and the CLI; a
//! tenant key sees only its own tenant's events and is refused another's;
//! the level filter; a subscriber that does not read loses events, is
//! told how many, and never slows the node.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::node::{client, start_node_with, Node};
use futures::StreamExt;
use vektagraf::client::{Client, EventStream};
use vektagraf::proto::wire::{Envelope, KeyKind, Request, Response};
use vektagraf::proto::{
    CollectionSpec, Error, Event, EventFilter, EventItem, EventKind, EventLevel, NewObject,
};
use vektagraf::{TenantConfig, Tiers};

/// Fast checks (100 ms instead of 30 s and 5 min).
const FAST_CHECKS: &str = "[events]\nhealth_check_ms = 100\nlimit_check_ms = 100\n";

/// A failure guard for waits on a condition (never a timing assert).
const GUARD: Duration = Duration::from_secs(60);

/// A tenant with at most `max_objects` objects, a collection `docs` and
/// a key; the key's client.
async fn tenant(node: &Node, admin: &Client, id: &str, max_objects: u64) -> (String, Client) {
    let mut cfg =
        TenantConfig::for_tier(&Tiers::default(), id, id, "tier4", serde_json::json!({})).unwrap();
    cfg.storage_limit.max_objects = max_objects;
    admin.create_tenant(cfg).await.unwrap();
    admin.create_user(id, "u").await.unwrap();
    let key = admin
        .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
        .await
        .unwrap()
        .0;
    let c = client(node, &key).await.unwrap();
    c.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    (key, c)
}

/// Puts objects `from..to` of `docs`.
async fn fill(c: &Client, from: u64, to: u64) {
    for i in from..to {
        c.put(NewObject::new(
            "docs",
            &format!("d{i}"),
            serde_json::json!({"i": i}),
        ))
        .await
        .unwrap();
    }
}

/// The next event of `s` (lost-event notices are not expected here).
async fn next_event(s: &mut EventStream) -> Event {
    let item = tokio::time::timeout(GUARD, s.next())
        .await
        .expect("no event within the guard")
        .expect("the stream ended")
        .unwrap();
    match item {
        EventItem::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The threshold of a `LimitApproached` event on `max_objects`.
fn objects_threshold(e: &Event) -> Option<u8> {
    match &e.kind {
        EventKind::LimitApproached {
            limit,
            threshold_pct,
            ..
        } if limit == "storage_limit.max_objects" => Some(*threshold_pct),
        _ => None,
    }
}

fn filter(tenant: Option<&str>, min_level: EventLevel) -> EventFilter {
    EventFilter {
        tenant: tenant.map(str::to_string),
        min_level,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_filling_up_is_warned_at_80_90_and_95_percent_in_order_and_only_its_key_sees_it() {
    let node = start_node_with(FAST_CHECKS);
    let admin = client(&node, &node.admin_key).await.unwrap();
    let (key, c) = tenant(&node, &admin, "filling", 20).await;
    let (other_key, other) = tenant(&node, &admin, "other", 20).await;

    // Phase 1: subscribers. The tenant's own key (no tenant named: its
    // own), the other tenant's key, and the admin at critical only.
    let mut own = c.events(filter(None, EventLevel::Info)).await.unwrap();
    let mut others = other.events(filter(None, EventLevel::Info)).await.unwrap();
    let mut critical = admin
        .events(filter(None, EventLevel::Critical))
        .await
        .unwrap();
    // Another tenant's events are refused to a tenant key.
    match other
        .events(filter(Some("filling"), EventLevel::Info))
        .await
    {
        Err(Error::CrossTenantAccess {
            session_tenant,
            target_tenant,
        }) => assert_eq!(
            (session_tenant.as_str(), target_tenant.as_str()),
            ("other", "filling")
        ),
        Err(e) => panic!("expected CrossTenantAccess, got {e}"),
        Ok(_) => panic!("a tenant key subscribed to another tenant's events"),
    }

    // Phase 2: fill to 80%, 90%, 95%, waiting for each event.
    let mut seen = Vec::new();
    for (from, to, pct, level) in [
        (0, 16, 80, EventLevel::Warning),
        (16, 18, 90, EventLevel::Warning),
        (18, 19, 95, EventLevel::Critical),
    ] {
        fill(&c, from, to).await;
        let e = next_event(&mut own).await;
        assert_eq!(e.tenant.as_deref(), Some("filling"), "{e:?}");
        assert_eq!(objects_threshold(&e), Some(pct), "{e:?}");
        assert_eq!(e.level, level, "{e:?}");
        seen.push(pct);
    }
    assert_eq!(seen, vec![80, 90, 95]);
    // Phase 3: full; the health check says storage is critical.
    fill(&c, 19, 20).await;
    let e = next_event(&mut own).await;
    assert!(
        matches!(&e.kind, EventKind::StorageCritical { limit, used: 20, max: 20 } if limit == "storage_limit.max_objects"),
        "{e:?}"
    );
    assert_eq!(e.level, EventLevel::Critical);

    // The admin's critical-only subscription skipped 80% and 90%.
    let first = next_event(&mut critical).await;
    assert_eq!(objects_threshold(&first), Some(95), "{first:?}");
    let second = next_event(&mut critical).await;
    assert!(
        matches!(second.kind, EventKind::StorageCritical { .. }),
        "{second:?}"
    );

    // Phase 4: the other tenant reaches 80% itself; everything its key
    // saw up to that event is its own.
    fill(&other, 0, 16).await;
    let e = next_event(&mut others).await;
    assert_eq!(e.tenant.as_deref(), Some("other"), "{e:?}");
    assert_eq!(objects_threshold(&e), Some(80), "{e:?}");

    // Phase 5: the CLI replays the recent events the key may see.
    let lines = cli(&node, &key, &["events", "--json", "--wait-ms", "300"]);
    let items: Vec<EventItem> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let thresholds: Vec<u8> = items
        .iter()
        .filter_map(|i| match i {
            EventItem::Event(e) => {
                assert_eq!(e.tenant.as_deref(), Some("filling"), "{e:?}");
                objects_threshold(e)
            }
            _ => None,
        })
        .collect();
    assert_eq!(thresholds, vec![80, 90, 95], "{lines}");
    let other_lines = cli(&node, &other_key, &["events", "--json", "--wait-ms", "300"]);
    assert!(!other_lines.contains("filling"), "{other_lines}");
    assert!(other_lines.contains("\"other\""), "{other_lines}");
}

fn cli(node: &Node, key: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vektagraf"))
        .args(["--addr", &node.addr.to_string(), "--ca"])
        .arg(&node.cert)
        .args(["--key", key])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vektagraf {args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Writes a frame on a new stream of `conn` and reads the answer's
/// first frame; the stream's receiving half comes back for more.
async fn open_stream(conn: &quinn::Connection, req: Request) -> (Response, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&Envelope::new(1, req).to_frame().unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    let env = vektagraf::net::frame::read_frame::<Response>(&mut recv, 1 << 20)
        .await
        .unwrap();
    (env.body, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_told_how_many_events_it_lost_and_writes_go_on() {
    // Every rejection makes an event (a burst of one per millisecond);
    // the bus holds 8 per subscriber.
    let node =
        start_node_with("[events]\ncapacity = 8\nburst_rejections = 1\nburst_window_ms = 1\n");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let (_, c) = tenant(&node, &admin, "busy", 1).await;
    fill(&c, 0, 1).await;

    // Phase 1: a subscriber whose QUIC receive windows hold 2 KB.
    let certs = vektagraf::net::tls::read_certs(&node.cert).unwrap();
    let mut t = vektagraf::net::tls::transport(Duration::from_secs(30), None, 16).unwrap();
    t.stream_receive_window(2048u32.into());
    t.receive_window(4096u32.into());
    let cfg = vektagraf::net::tls::client_config(&certs, vektagraf::proto::wire::ALPN, t).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let conn = ep.connect(node.addr, "localhost").unwrap().await.unwrap();
    let (auth, _) = open_stream(
        &conn,
        Request::Authenticate {
            api_key: node.admin_key.clone(),
        },
    )
    .await;
    assert!(matches!(auth, Response::Principal(_)), "{auth:?}");
    let (first, mut recv) = open_stream(
        &conn,
        Request::SubscribeEvents(filter(None, EventLevel::Info)),
    )
    .await;
    assert!(
        matches!(first, Response::EventsSubscribed { node: 0, .. }),
        "{first:?}"
    );

    // Phase 2: 400 rejected writes (each an event) while the subscriber
    // reads nothing: every one is answered, and so is a write after.
    for i in 0..400 {
        let r = c
            .put(NewObject::new(
                "docs",
                &format!("x{i}"),
                serde_json::json!({}),
            ))
            .await;
        assert!(
            matches!(&r, Err(Error::LimitExceeded(l)) if l.kind == vektagraf::proto::LimitKind::Objects),
            "{r:?}"
        );
        // At least a millisecond apart, so each makes its own burst.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.delete("d0").await.unwrap();
    c.put(NewObject::new("docs", "d1", serde_json::json!({})))
        .await
        .unwrap();

    // Phase 3: the subscriber reads again: events, then a notice of how
    // many it lost.
    let (mut events, mut lost) = (0u64, 0u64);
    while lost == 0 {
        let env = tokio::time::timeout(
            GUARD,
            vektagraf::net::frame::read_frame::<Response>(&mut recv, 1 << 20),
        )
        .await
        .expect("no frame within the guard")
        .unwrap();
        match env.body {
            Response::Event(e) => {
                assert!(matches!(e.kind, EventKind::RejectionBurst { .. }), "{e:?}");
                events += 1;
            }
            Response::EventsLost { count } => lost = count,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(lost > 0);
    // It was told of what it lost: it could not have held every event.
    assert!(events < 400, "{events} events arrived before the notice");
    // The node still serves.
    admin.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_beyond_the_connection_cap_are_refused_with_a_typed_error() {
    let node = start_node_with("[events]\nmax_subscriptions_per_connection = 2\n");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let a = admin.events(EventFilter::default()).await.unwrap();
    let _b = admin.events(EventFilter::default()).await.unwrap();
    match admin.events(EventFilter::default()).await {
        Err(Error::TooManySubscriptions {
            limit: 2,
            per_connection: true,
        }) => {}
        Err(e) => panic!("expected TooManySubscriptions, got {e}"),
        Ok(_) => panic!("a third subscription on one connection was accepted"),
    }
    // One dropped, one more fits (once the node saw the stream end).
    drop(a);
    let mut opened = false;
    for _ in 0..200 {
        if admin.events(EventFilter::default()).await.is_ok() {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        opened,
        "the slot of a dropped subscription was never given back"
    );
}
