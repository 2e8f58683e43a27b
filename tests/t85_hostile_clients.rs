//! What an unauthenticated or hostile client can do to a real node
//! process over QUIC: nothing that takes it down or keeps others out.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::node::{client, raw_connection, raw_connection_from, raw_request, start_node_with};
use vektagraf::client::{Client, ClientOptions};
use vektagraf::net::server::{CLOSE_AUTH_TIMEOUT, PRE_AUTH_MAX_FRAME};
use vektagraf::proto::wire::{Envelope, Request, Response, ALPN};
use vektagraf::proto::Error;

/// A frame whose request nests `Stale` `depth` times, built byte by byte
/// (the test never holds the deep value itself).
fn deep_stale_frame(depth: usize) -> Vec<u8> {
    let one = vektagraf::codec::encode(&Envelope::new(7, Request::Stale(Box::new(Request::Ping))))
        .unwrap();
    let zero = vektagraf::codec::encode(&Envelope::new(7, Request::Ping)).unwrap();
    // one = header + [Stale tag] + [Ping tag] + [no leader hint];
    // zero = header + [Ping tag] + [no leader hint].
    let header = &zero[..zero.len() - 2];
    let stale_tag = &one[header.len()..one.len() - 2];
    let mut payload = header.to_vec();
    for _ in 0..depth {
        payload.extend_from_slice(stale_tag);
    }
    payload.extend_from_slice(&zero[zero.len() - 2..]);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

fn auth_frame(key: &str) -> Vec<u8> {
    Envelope::new(
        1,
        Request::Authenticate {
            api_key: key.to_string(),
        },
    )
    .to_frame()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_frame_gets_a_typed_error_and_the_node_stays_up() {
    let mut node = start_node_with("");
    let frame = deep_stale_frame(100_000);
    assert!(frame.len() > 90_000 && frame.len() < 200_000);

    // Before authenticating: refused by size, from the prefix alone.
    let conn = raw_connection(&node, ALPN).await.unwrap();
    let r = raw_request(&conn, &frame).await;
    assert!(
        matches!(&r, Response::Error(Error::Protocol { reason })
            if reason.contains(&format!("{PRE_AUTH_MAX_FRAME}-byte limit"))),
        "{r:?}"
    );

    // Authenticated: decoded with a depth bound, refused with a typed error.
    let r = raw_request(&conn, &auth_frame(&node.admin_key)).await;
    assert!(matches!(r, Response::Principal(_)), "{r:?}");
    let r = raw_request(&conn, &frame).await;
    assert!(
        matches!(&r, Response::Error(Error::Protocol { reason }) if reason.contains("nested deeper")),
        "{r:?}"
    );
    // A legitimate nesting still works on the same connection.
    let r = raw_request(&conn, &deep_stale_frame(1)).await;
    assert!(matches!(r, Response::Error(_)), "{r:?}"); // Stale(Ping) is not a data request
    assert!(node.alive(), "the node process died");
    let admin = client(&node, &node.admin_key).await.unwrap();
    admin.ping().await.unwrap();
    admin.list_tenants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authenticating_only_ping_and_authenticate_are_served_then_the_connection_closes() {
    let node = start_node_with("auth_timeout_ms = 1500");
    let conn = raw_connection(&node, ALPN).await.unwrap();
    let ping = Envelope::new(2, Request::Ping).to_frame().unwrap();
    assert_eq!(raw_request(&conn, &ping).await, Response::Pong);
    let list = Envelope::new(3, Request::ListTenants).to_frame().unwrap();
    let r = raw_request(&conn, &list).await;
    assert!(
        matches!(r, Response::Error(Error::Unauthenticated { .. })),
        "{r:?}"
    );
    // Never authenticates: closed with the auth-timeout code.
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the unauthenticated connection was not closed");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, CLOSE_AUTH_TIMEOUT.into(), "{c:?}")
        }
        other => panic!("closed for another reason: {other:?}"),
    }
    // One that authenticates in time stays open past the timeout.
    let conn = raw_connection(&node, ALPN).await.unwrap();
    let r = raw_request(&conn, &auth_frame(&node.admin_key)).await;
    assert!(matches!(r, Response::Principal(_)), "{r:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(conn.close_reason().is_none());
    assert!(matches!(
        raw_request(&conn, &list).await,
        Response::Tenants(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_connections_does_not_keep_clients_out() {
    // Few slots, so the flood would fill them all if it could.
    let node = start_node_with(
        "max_connections = 16\nmax_unauthenticated = 64\nmax_unauthenticated_per_ip = 8\nauth_timeout_ms = 3000",
    );
    let attacker: SocketAddr = "127.0.0.2:0".parse().unwrap();
    // The attacker opens connections as fast as it can and never
    // authenticates; it holds on to every one it gets.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match raw_connection_from(&node, ALPN, attacker).await {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    println!("flood: {} connections held, {refused} refused", held.len());
    assert!(
        held.len() <= 8,
        "{} unauthenticated connections from one address",
        held.len()
    );
    assert!(refused >= 52);
    // Meanwhile clients that authenticate get in, up to max_connections.
    let mut clients = Vec::new();
    for _ in 0..12 {
        let c = client(&node, &node.admin_key).await.unwrap();
        c.ping().await.unwrap();
        clients.push(c);
    }
    for c in &clients {
        c.list_tenants().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let node = start_node_with("max_auth_failures_per_ip = 3");
    let from: SocketAddr = "127.0.0.3:0".parse().unwrap();
    let wrong = format!("{}x", &node.admin_key[..node.admin_key.len() - 1]);
    for _ in 0..3 {
        let conn = raw_connection_from(&node, ALPN, from).await.unwrap();
        let r = raw_request(&conn, &auth_frame(&wrong)).await;
        assert!(
            matches!(r, Response::Error(Error::Unauthenticated { .. })),
            "{r:?}"
        );
    }
    // Now even the right key is refused from that address ...
    let conn = raw_connection_from(&node, ALPN, from).await.unwrap();
    let r = raw_request(&conn, &auth_frame(&node.admin_key)).await;
    assert!(
        matches!(&r, Response::Error(Error::Unauthenticated { reason }) if reason.contains("failed authentications")),
        "{r:?}"
    );
    // ... but not from another one.
    let conn = raw_connection(&node, ALPN).await.unwrap();
    let r = raw_request(&conn, &auth_frame(&node.admin_key)).await;
    assert!(matches!(r, Response::Principal(_)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_never_lets_a_tenant_past_its_daily_limit() {
    use vektagraf::proto::wire::KeyKind;
    use vektagraf::proto::LimitKind;
    use vektagraf::tenant::TenantUpdate;
    const LIMIT: u64 = 120;
    let mut node = start_node_with("");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let mut cfg = admin
        .create_tenant_for_tier("daily", "daily", "enterprise")
        .await
        .unwrap();
    cfg.request_limit.daily_limit = LIMIT;
    admin
        .update_tenant(
            "daily",
            TenantUpdate {
                request_limit: Some(cfg.request_limit.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    admin.create_user("daily", "u").await.unwrap();
    let (key, _) = admin
        .create_key(KeyKind::Tenant, Some("daily"), Some("u"), None)
        .await
        .unwrap();
    let c = client(&node, &key).await.unwrap();
    let mut admitted = 0u64;
    for _ in 0..108 {
        c.get("x").await.unwrap();
        admitted += 1;
    }
    // At once: no checkpoint interval has passed.
    node.kill9_and_restart();
    let c = client(&node, &key).await.unwrap();
    let after = c.usage(None).await.unwrap().requests.daily;
    assert!(
        after >= admitted,
        "the count went down across kill -9: {after} after {admitted} admitted"
    );
    loop {
        match c.get("x").await {
            Ok(_) => admitted += 1,
            Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Daily => break,
            Err(e) => panic!("{e}"),
        }
    }
    println!("daily limit {LIMIT}: count read {after} after kill -9; {admitted} admitted in all");
    // A driver that retries does not wait for tomorrow: a refusal whose
    // retry_after lies past its deadline comes back at once.
    let mut o = ClientOptions::new(vec![node.addr], &key, &node.cert).unwrap();
    o.max_retries = 5;
    let patient = Client::connect(o).await.unwrap();
    let t = std::time::Instant::now();
    let r = patient.get("x").await;
    assert!(
        matches!(&r, Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Daily),
        "{r:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "waited {:?} for a daily quota",
        t.elapsed()
    );
    assert!(
        admitted <= LIMIT,
        "{admitted} admitted against a daily limit of {LIMIT}"
    );
    // The loss is bounded by one reservation step.
    let step = vektagraf::limits::reservation_step(LIMIT);
    assert!(
        admitted + step >= LIMIT,
        "{admitted} admitted: more than {step} lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_address_is_skipped_after_the_connect_timeout() {
    let node = start_node_with("");
    // Nothing listens on the first address.
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let o = ClientOptions::new(vec![dead, node.addr], &node.admin_key, &node.cert).unwrap();
    assert_eq!(o.connect_timeout, Duration::from_secs(2));
    let t = std::time::Instant::now();
    let c = Client::connect(o).await.unwrap();
    c.ping().await.unwrap();
    // Well before the 30 s request timeout the old driver waited.
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}
