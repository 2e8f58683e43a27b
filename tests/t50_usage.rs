//! Usage a bill can be based on (A1) and retention (S4), on a real node:
//! requests per operation per UTC day and month across restarts and a
//! kill -9, every tenant's usage over the wire, purges over the wire and
//! the scheduled cleanup, with usage dropping by exactly what went.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::node::{client, start_node, start_node_configured, Node};
use common::*;
use vektagraf::client::Client;
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{
    CollectionSpec, Error, NewObject, Query, StorageUsage, TenantUsage, VectorSearch,
};
use vektagraf::{Database, Session, TenantConfig, Tiers};

/// Counts by operation name, every operation listed.
fn ops(read: u64, write: u64, query: u64, vector_search: u64) -> BTreeMap<String, u64> {
    [
        ("read", read),
        ("write", write),
        ("query", query),
        ("vector_search", vector_search),
        ("graph_traverse", 0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn today() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    vektagraf::limits::calendar::day_label(vektagraf::limits::calendar::day_number(now))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `read` gets, `write` puts, `query` queries and `search` vector searches
/// in collection `items` (which must exist).
async fn load(s: &Session, read: u64, write: u64, query: u64, search: u64) {
    for i in 0..write {
        s.put(item(&format!("w{i}"), i as f32)).await.unwrap();
    }
    for _ in 0..read {
        s.get("w0").await.unwrap();
    }
    for _ in 0..query {
        s.query(Query {
            collection: "items".into(),
            filter: None,
            limit: 10,
        })
        .await
        .unwrap();
    }
    for _ in 0..search {
        s.vector_search_ids(VectorSearch {
            collection: "items".into(),
            vector: vec![1.0, 0.5, 1.0, -1.0],
            k: 3,
            filter: None,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_operation_per_day_and_month_survive_a_restart_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "bill")).await;
    items(&s).await; // one write
    load(&s, 7, 5, 3, 2).await;
    let u = s.usage().await.unwrap().requests;
    assert_eq!(u.date, today());
    assert_eq!(u.daily_by_operation, ops(7, 6, 3, 2));
    assert_eq!(u.monthly_by_operation, ops(7, 6, 3, 2));
    assert_eq!((u.daily, u.monthly), (18, 18));
    db.close().await.unwrap();

    let db = open(dir.path()).await;
    let s = db.session("bill", "u").await.unwrap();
    let u = s.usage().await.unwrap().requests;
    assert_eq!(u.daily_by_operation, ops(7, 6, 3, 2));
    assert_eq!(u.monthly_by_operation, ops(7, 6, 3, 2));
    // And they keep counting from there.
    s.get("w0").await.unwrap();
    let u = s.usage().await.unwrap().requests;
    assert_eq!(u.daily_by_operation["read"], 8);
    assert_eq!(u.monthly_by_operation["read"], 8);
    db.close().await.unwrap();
}

/// A tenant with a small daily limit (so a reservation step is 100
/// requests) and a key for it.
async fn billed_tenant(admin: &Client, id: &str) -> String {
    let mut cfg =
        TenantConfig::for_tier(&Tiers::default(), id, id, "tier4", serde_json::json!({})).unwrap();
    cfg.request_limit.daily_limit = 3_200;
    admin.create_tenant(cfg).await.unwrap();
    admin.create_user(id, "u").await.unwrap();
    admin
        .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
        .await
        .unwrap()
        .0
}

async fn drive(c: &Client, read: u64, write: u64, query: u64) {
    for i in 0..write {
        c.put(NewObject::new(
            "docs",
            &format!("d{i}"),
            serde_json::json!({"i": i}),
        ))
        .await
        .unwrap();
    }
    for _ in 0..read {
        c.get("d0").await.unwrap();
    }
    for _ in 0..query {
        c.query(Query {
            collection: "docs".into(),
            filter: None,
            limit: 5,
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_no_counted_request_of_any_operation() {
    let mut node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = billed_tenant(&admin, "crashy").await;
    let c = client(&node, &key).await.unwrap();
    c.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    drive(&c, 40, 25, 9).await;
    let made = ops(40, 26, 9, 0);
    assert_eq!(
        admin
            .usage(Some("crashy"))
            .await
            .unwrap()
            .requests
            .daily_by_operation,
        made
    );
    drop((c, admin));

    node.kill9_and_restart();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let u = admin.usage(Some("crashy")).await.unwrap().requests;
    // Nothing counted is lost; at most the reserved but unused part of
    // one step (daily_limit / 32 = 100) per operation is added.
    for (op, n) in &made {
        for (what, got) in [
            ("day", u.daily_by_operation[op]),
            ("month", u.monthly_by_operation[op]),
        ] {
            assert!(
                (*n..=*n + 100).contains(&got),
                "{op} this {what}: {got} after kill -9, {n} made"
            );
        }
    }
    assert_eq!(u.daily_by_operation["graph_traverse"], 0);
    // It counts on from there.
    let c = client(&node, &key).await.unwrap();
    let before = u.daily_by_operation["read"];
    drive(&c, 3, 0, 0).await;
    let after = admin.usage(Some("crashy")).await.unwrap().requests;
    assert_eq!(after.daily_by_operation["read"], before + 3);
}

fn cli(node: &Node, key: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vektagraf"))
        .args(["--addr", &node.addr.to_string(), "--ca"])
        .arg(&node.cert)
        .args(["--key", key, "--output", "json"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reads_every_tenants_usage_with_limits_and_ratios_over_the_wire() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let mut keys = Vec::new();
    for t in ["u_a", "u_b", "u_c"] {
        keys.push(billed_tenant(&admin, t).await);
    }
    let c = client(&node, &keys[1]).await.unwrap();
    c.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    drive(&c, 2, 4, 1).await;

    let report = admin.usage_all().await.unwrap();
    assert!(report.unavailable.is_empty(), "{:?}", report.unavailable);
    let ids: Vec<&str> = report
        .tenants
        .iter()
        .map(|u| u.tenant_id.as_str())
        .collect();
    assert_eq!(ids, ["u_a", "u_b", "u_c"]);
    let b = &report.tenants[1];
    assert_eq!(b.requests.daily_by_operation, ops(2, 5, 1, 0));
    assert_eq!(report.tenants[0].requests.daily, 0);
    let objects = b
        .limits
        .iter()
        .find(|l| l.limit == "storage_limit.max_objects")
        .unwrap();
    assert_eq!(objects.used, 4);
    assert_eq!(objects.ratio, 4.0 / objects.max as f64);
    let daily = b
        .limits
        .iter()
        .find(|l| l.limit == "request_limit.daily_limit")
        .unwrap();
    assert_eq!((daily.used, daily.max), (8, 3_200));

    // The CLI: one tenant and all of them.
    let all: serde_json::Value =
        serde_json::from_str(&cli(&node, &node.admin_key, &["tenant", "usage", "--all"])).unwrap();
    assert_eq!(all["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(
        all["tenants"][1]["requests"]["daily_by_operation"]["write"],
        5
    );
    let one: TenantUsage =
        serde_json::from_str(&cli(&node, &node.admin_key, &["tenant", "usage", "u_b"])).unwrap();
    assert_eq!(one.requests.daily_by_operation, ops(2, 5, 1, 0));

    // A tenant key reads only its own usage.
    assert!(matches!(
        c.usage(Some("u_a")).await,
        Err(Error::CrossTenantAccess { .. })
    ));
}

fn minus(a: &StorageUsage, b: &StorageUsage) -> StorageUsage {
    StorageUsage {
        bytes: a.bytes - b.bytes,
        objects: a.objects - b.objects,
        vectors: a.vectors - b.vectors,
        edges: a.edges - b.edges,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_older_than_over_the_wire_removes_the_old_objects_and_exactly_their_usage() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = billed_tenant(&admin, "purged").await;
    let c = client(&node, &key).await.unwrap();
    c.create_collection(CollectionSpec::vectors("docs", 2))
        .await
        .unwrap();
    let storage = || async { admin.usage(Some("purged")).await.unwrap().storage };
    let u0 = storage().await;
    for i in 0..3 {
        c.put(
            NewObject::new("docs", &format!("old{i}"), serde_json::json!({"i": i}))
                .with_vector(vec![1.0, i as f32]),
        )
        .await
        .unwrap();
    }
    let u_old = storage().await;
    // Creation times are in ms: let one pass on each side of the cutoff.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 0..2 {
        c.put(
            NewObject::new(
                "docs",
                &format!("new{i}"),
                serde_json::json!({"i": i, "pad": "xxxxxxxx"}),
            )
            .with_vector(vec![0.0, i as f32]),
        )
        .await
        .unwrap();
    }
    let u1 = storage().await;

    // Only an admin purges, with typed errors for bad input.
    assert!(matches!(
        c.purge_older_than("purged", None, cutoff).await,
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        admin
            .purge_older_than("purged", Some("no such/name"), cutoff)
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        admin.purge_older_than("nobody", None, cutoff).await,
        Err(Error::TenantNotFound { .. })
    ));

    assert_eq!(
        admin
            .purge_older_than("purged", None, cutoff)
            .await
            .unwrap(),
        3
    );
    let u2 = storage().await;
    assert_eq!(u2, minus(&u1, &minus(&u_old, &u0)));
    for i in 0..3 {
        assert!(c.get(&format!("old{i}")).await.unwrap().is_none());
    }
    assert!(c.get("new0").await.unwrap().is_some());
    let hits = c
        .search(
            VectorSearch {
                collection: "docs".into(),
                vector: vec![1.0, 0.0],
                k: 10,
                filter: None,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 2, "the purged vectors left the index");

    // The CLI: everything older than now (0 days) goes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let out: serde_json::Value = serde_json::from_str(&cli(
        &node,
        &node.admin_key,
        &["tenant", "purge-older-than", "purged", "--days", "0"],
    ))
    .unwrap();
    assert_eq!(out["removed"], 2);
    assert_eq!(storage().await, u0);
}

/// A node whose retention cleanup looks at its tenants every 100 ms and
/// cleans each every `interval_ms`.
async fn open_with_retention(dir: &Path, interval_ms: u64) -> Database {
    let mut c = config(dir);
    c.retention.check_ms = 100;
    c.retention.interval_ms = interval_ms;
    Database::open(dir, c).await.unwrap()
}

/// Waits (up to 30 s) until the tenant holds `n` objects.
async fn until_objects(s: &Session, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = s.usage().await.unwrap().storage.objects;
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{got} objects, waiting for {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_older_than_the_retention_period_disappear_on_schedule_and_usage_drops_by_exactly_them(
) {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_retention(dir.path(), 200).await;
    let mut cfg = roomy(&db, "kept");
    cfg.custom_settings
        .0
        .insert("retention_ms".into(), serde_json::json!(4_000));
    let s = tenant(&db, cfg).await;
    items(&s).await;
    let u0 = s.usage().await.unwrap().storage;
    for i in 0..5 {
        s.put(item(&format!("old{i}"), i as f32)).await.unwrap();
    }
    let u_old = s.usage().await.unwrap().storage;
    assert_eq!(u_old.objects, 5);
    // Two seconds later (half the period), younger objects.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..3 {
        s.put(item(&format!("new{i}"), 10.0 + i as f32))
            .await
            .unwrap();
    }
    let u1 = s.usage().await.unwrap().storage;

    // The old ones go once they are 4 s old; the young ones stay.
    until_objects(&s, 3).await;
    assert_eq!(
        s.usage().await.unwrap().storage,
        minus(&u1, &minus(&u_old, &u0))
    );
    assert!(s.get("old0").await.unwrap().is_none());
    assert!(s.get("new0").await.unwrap().is_some());
    // A cleanup is not a tenant request: only this test's requests count.
    let u = s.usage().await.unwrap().requests;
    assert_eq!(u.daily_by_operation["write"], 1 + 5 + 3);

    // Then the young ones, on the same schedule.
    until_objects(&s, 0).await;
    assert_eq!(s.usage().await.unwrap().storage, u0);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_past_90_percent_runs_the_cleanup_before_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    // Scheduled once an hour: only storage pressure can run it in this test
    // (the first look after start-up is its first scheduled run).
    let db = open_with_retention(dir.path(), 3_600_000).await;
    let mut cfg = roomy(&db, "full");
    cfg.storage_limit.max_objects = 10;
    cfg.custom_settings
        .0
        .insert("retention_ms".into(), serde_json::json!(2_000));
    let s = tenant(&db, cfg).await;
    items(&s).await;
    // Let the start-up run pass before any object exists.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        s.put(item(&format!("old{i}"), i as f32)).await.unwrap();
    }
    // Older than the period, at 50%: not due, so they stay.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(s.usage().await.unwrap().storage.objects, 5);
    // Four more: 90% of max_objects. The old five go; the new four stay.
    for i in 0..4 {
        s.put(item(&format!("new{i}"), 10.0 + i as f32))
            .await
            .unwrap();
    }
    until_objects(&s, 4).await;
    assert!(s.get("new3").await.unwrap().is_some());
    db.close().await.unwrap();
}

#[test]
fn retention_comes_from_the_tier_and_a_tenant_override() {
    let toml = vektagraf::tenant::DEFAULT_TIERS_TOML.replace(
        "\n\n[tiers.tier2]",
        "\nretention     = \"30d\"\n\n[tiers.tier2]",
    );
    let tiers = Tiers::from_toml(&toml).unwrap();
    let tier1 = tiers.limits(vektagraf::tenant::Tier::Tier1).retention;
    let cfg = |settings| TenantConfig::for_tier(&tiers, "r", "r", "tier1", settings).unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(cfg(serde_json::json!({})).retention(tier1), Some(30 * day));
    assert_eq!(
        cfg(serde_json::json!({"retention_ms": 1000})).retention(tier1),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        cfg(serde_json::json!({"retention_ms": 0})).retention(tier1),
        None
    );
    // The compiled-in tiers keep objects forever.
    let plain = Tiers::default();
    let t2 = TenantConfig::for_tier(&plain, "r", "r", "tier2", serde_json::json!({})).unwrap();
    assert_eq!(
        t2.retention(plain.limits(vektagraf::tenant::Tier::Tier2).retention),
        None
    );
    // Nonsense is refused, naming the key.
    let e = TenantConfig::for_tier(
        &plain,
        "r",
        "r",
        "tier2",
        serde_json::json!({"retention_ms": "1d"}),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidConfig { key, .. } if key == "custom_settings.retention_ms"),
        "{e:?}"
    );
}

/// A query of a collection that does not exist (fails `NotFound`).
fn missing() -> Query {
    Query {
        collection: "nope".into(),
        filter: None,
        limit: 5,
    }
}

/// A2 on a real node: the analytics report counts exactly the requests
/// made, with their errors, latencies, bytes, the storage held and the
/// price; what the node stored survives a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analytics_report_counts_the_requests_made_and_survives_a_kill_9() {
    let mut node = start_node_configured("", "[analytics]\nflush_ms = 200");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let from = now_ms();
    let key = billed_tenant(&admin, "seen").await;
    let c = client(&node, &key).await.unwrap();
    c.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    drive(&c, 10, 20, 0).await;
    for _ in 0..5 {
        let r = c.query(missing()).await;
        assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    }
    let made = 1 + 20 + 10 + 5;
    // Two flushes, so stored bytes are sampled over an interval.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = admin.analytics("seen", from, now_ms() + 1).await.unwrap();
    assert_eq!(r.total_requests, made);
    assert_eq!((r.errors, r.rejections), (5, 0));
    assert!((r.error_rate - 5.0 / made as f64).abs() < 1e-9);
    assert_eq!(r.resolution_ms, 60_000);
    assert_eq!(r.series.iter().map(|p| p.requests).sum::<u64>(), made);
    assert!(r.avg_latency_ms > 0.0 && r.p95_latency_ms >= r.avg_latency_ms.min(r.p95_latency_ms));
    assert!(r.p99_latency_ms >= r.p95_latency_ms);
    assert!(r.peak_concurrency >= 1);
    assert!(r.bandwidth_bytes > 0);
    assert_eq!(r.request_units, made + r.bandwidth_bytes.div_ceil(1024));
    assert!(r.storage_gb_hours > 0.0, "{}", r.storage_gb_hours);
    // tier4's base price alone is 1999.00 a month.
    assert!(
        r.estimated_monthly_cost >= 1999.0,
        "{}",
        r.estimated_monthly_cost
    );
    assert_eq!(r.currency, "USD");
    assert!(r.nodes_missing.is_empty());
    // Only the tenant's own requests: another tenant's are not in it.
    let other = billed_tenant(&admin, "other").await;
    let o = client(&node, &other).await.unwrap();
    o.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    drive(&o, 3, 3, 0).await;
    let again = admin.analytics("seen", from, now_ms() + 1).await.unwrap();
    assert_eq!(again.total_requests, made);

    // Stored (one flush after the last request), then kill -9.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop((c, o, admin));
    node.kill9_and_restart();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let r = admin.analytics("seen", from, now_ms() + 1).await.unwrap();
    assert_eq!(r.total_requests, made);
    assert_eq!(r.errors, 5);
    let o = admin.analytics("other", from, now_ms() + 1).await.unwrap();
    assert_eq!(o.total_requests, 1 + 3 + 3);

    // A scripted load and the recommendations it implies: 9 of 10
    // objects stored (storage past 80%) and 100 of 110 requests failing.
    let mut cfg = TenantConfig::for_tier(
        &Tiers::default(),
        "strained",
        "s",
        "tier2",
        serde_json::json!({}),
    )
    .unwrap();
    cfg.storage_limit.max_objects = 10;
    admin.create_tenant(cfg).await.unwrap();
    admin.create_user("strained", "u").await.unwrap();
    let (skey, _) = admin
        .create_key(KeyKind::Tenant, Some("strained"), Some("u"), None)
        .await
        .unwrap();
    let st = client(&node, &skey).await.unwrap();
    st.create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    for i in 0..9 {
        st.put(NewObject::new(
            "docs",
            &format!("d{i}"),
            serde_json::json!({}),
        ))
        .await
        .unwrap();
    }
    for _ in 0..100 {
        assert!(st.query(missing()).await.is_err());
    }
    let r = admin
        .analytics("strained", from, now_ms() + 1)
        .await
        .unwrap();
    assert_eq!((r.total_requests, r.errors), (110, 100));
    assert!((r.error_rate - 100.0 / 110.0).abs() < 1e-9);
    let recs: Vec<(&str, &str)> = r
        .recommendations
        .iter()
        .map(|x| (x.priority.as_str(), x.kind.as_str()))
        .collect();
    assert_eq!(
        recs,
        [("medium", "storage"), ("medium", "errors")],
        "{:?}",
        r.recommendations
    );
    assert!(r.recommendations[0]
        .message
        .contains("storage_limit.max_objects at 90%"));

    // Bad ranges and tenants are typed errors; tenant keys may not ask.
    let r = admin.analytics("seen", 10, 5).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let r = admin.analytics("seen", 0, now_ms()).await;
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let r = admin.analytics("nobody", from, now_ms()).await;
    assert!(matches!(r, Err(Error::TenantNotFound { .. })), "{r:?}");
    let c = client(&node, &key).await.unwrap();
    let r = c.analytics("seen", from, now_ms()).await;
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
}
