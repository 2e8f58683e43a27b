//! Issue 12, hibernation on a standalone node: an idle tenant closes its
//! shard and its next request reopens it with everything intact; first
//! requests racing each other share one reopen; requests racing the
//! hibernation itself are never lost; a restarted node opens shards on
//! first use; a kill -9 while tenants sleep loses nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::node::{client, start_node_configured};
use common::*;
use vektagraf::client::Client;
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{
    Direction, Error, EventFilter, EventKind, EventLevel, Filter, LimitKind, NewObject, Query,
    Traverse, VectorSearch,
};
use vektagraf::{Database, NodeConfig, TenantConfig, Tiers};

/// A node that hibernates tenants idle for 300 ms (looking every 50 ms).
fn sleepy(dir: &Path) -> NodeConfig {
    let mut c = config(dir);
    c.hibernation.after_idle_ms = 300;
    c.hibernation.check_ms = 50;
    c
}

async fn wait_asleep(db: &Database, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !db.is_hibernated(id).unwrap() {
        assert!(Instant::now() < deadline, "tenant {id} never hibernated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reactivations of `id` the node's event bus still holds.
fn reactivations(db: &Database, id: &str) -> usize {
    let sub = db
        .events()
        .subscribe(&EventFilter {
            tenant: Some(id.into()),
            min_level: EventLevel::Info,
        })
        .unwrap();
    sub.replay
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TenantReactivated { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hibernated_tenant_answers_its_next_request_with_everything_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path(), sleepy(tmp.path()))
        .await
        .unwrap();
    let mut cfg = roomy(&db, "sleeper");
    cfg.storage_limit.max_objects = 5;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for i in 0..3 {
        s.put(item(&format!("o{i}"), i as f32)).await.unwrap();
    }
    s.put_edge("o0", "next", "o1", serde_json::json!({}))
        .await
        .unwrap();
    s.get("o2").await.unwrap();
    let before = s.usage().await.unwrap();

    wait_asleep(&db, "sleeper").await;
    // Usage of a sleeping tenant is what it had, and reading it does not
    // wake it.
    let asleep = db.usage("sleeper").await.unwrap();
    assert_eq!(asleep.storage, before.storage);
    assert!(db.is_hibernated("sleeper").unwrap());

    let got = s.get("o1").await.unwrap().unwrap();
    assert_eq!(got.properties.0["n"], 1.0);
    assert!(!db.is_hibernated("sleeper").unwrap());
    let q = s
        .query(Query {
            collection: "items".into(),
            filter: Some(Filter::parse(r#"{"tag": "even"}"#).unwrap()),
            limit: 10,
        })
        .await
        .unwrap();
    let mut ids: Vec<String> = q.into_iter().map(|o| o.id).collect();
    ids.sort();
    assert_eq!(ids, ["o0", "o2"]);
    let hits = s
        .vector_search(VectorSearch {
            collection: "items".into(),
            vector: vec![2.0, 1.0, 1.0, -2.0],
            k: 1,
            filter: None,
        })
        .await
        .unwrap();
    assert_eq!(hits[0].id, "o2");
    let walk = s
        .traverse(Traverse {
            start: "o0".into(),
            direction: Direction::Out,
            labels: vec![],
            max_depth: 1,
            max_nodes: 10,
        })
        .await
        .unwrap();
    assert!(walk.iter().any(|n| n.id == "o1"), "{walk:?}");

    // The read cache works again: a repeated get is a hit.
    let hits = s.usage().await.unwrap().cache.hits;
    s.get("o1").await.unwrap();
    s.get("o1").await.unwrap();
    assert!(
        s.usage().await.unwrap().cache.hits > hits,
        "no cache hit after a wake"
    );
    // The request counters went on from where they were.
    let after = s.usage().await.unwrap();
    let count = |u: &vektagraf::proto::TenantUsage, op: &str| {
        u.requests.by_operation.get(op).copied().unwrap_or(0)
    };
    assert_eq!(count(&after, "read"), count(&before, "read") + 3);
    assert_eq!(count(&after, "write"), count(&before, "write"));
    assert_eq!(count(&after, "query"), count(&before, "query") + 1);
    // The storage limits are in force: 5 objects, 3 there.
    s.put(item("o3", 3.0)).await.unwrap();
    s.put(item("o4", 4.0)).await.unwrap();
    match s.put(item("o5", 5.0)).await {
        Err(Error::LimitExceeded(l)) => assert_eq!(l.kind, LimitKind::Objects),
        other => panic!("expected the objects limit, got {other:?}"),
    }
    // It sleeps again, and wakes again.
    wait_asleep(&db, "sleeper").await;
    assert_eq!(s.usage().await.unwrap().storage.objects, 5);
    assert_eq!(reactivations(&db, "sleeper"), 2);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_requests_racing_each_other_share_one_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path(), sleepy(tmp.path()))
        .await
        .unwrap();
    let s = tenant(&db, roomy(&db, "crowd")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    wait_asleep(&db, "crowd").await;
    let gets: Vec<_> = (0..16)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.get("a").await })
        })
        .collect();
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap().unwrap().id, "a");
    }
    assert_eq!(reactivations(&db, "crowd"), 1);
    db.close().await.unwrap();
}

/// Writes land at random moments around the idle threshold, so some race
/// the hibernation itself: every acknowledged one is there afterwards,
/// and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_hibernation_are_never_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = sleepy(tmp.path());
    cfg.hibernation.after_idle_ms = 40;
    cfg.hibernation.check_ms = 10;
    let db = Database::open(tmp.path(), cfg).await.unwrap();
    let s = tenant(&db, roomy(&db, "racer")).await;
    items(&s).await;
    let mut acked = Vec::new();
    for i in 0..60u64 {
        // 0-80 ms apart: before, at and after the 40 ms threshold.
        tokio::time::sleep(Duration::from_millis((i * 37) % 81)).await;
        let id = format!("r{i}");
        s.put(item(&id, i as f32)).await.unwrap();
        acked.push(id);
    }
    let sub = db
        .events()
        .subscribe(&EventFilter {
            tenant: Some("racer".into()),
            min_level: EventLevel::Info,
        })
        .unwrap();
    let slept = sub
        .replay
        .iter()
        .filter(|e| matches!(e.kind, EventKind::TenantHibernated))
        .count();
    assert!(
        slept >= 5,
        "only {slept} hibernations: the race was not run"
    );
    drop(sub);
    db.close().await.unwrap();
    let db = Database::open(tmp.path(), config(tmp.path()))
        .await
        .unwrap();
    let s = db.session("racer", "u").await.unwrap();
    for id in &acked {
        assert!(s.get(id).await.unwrap().is_some(), "{id} lost");
    }
    assert_eq!(s.usage().await.unwrap().storage.objects, 60);
    db.close().await.unwrap();
}

/// A restarted node loads its tenants asleep: the first request opens a
/// tenant's shard, the others stay shut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_opens_a_tenants_shard_on_its_first_request() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path(), config(tmp.path()))
        .await
        .unwrap();
    for i in 0..5 {
        let s = tenant(&db, roomy(&db, &format!("t{i}"))).await;
        items(&s).await;
        s.put(item("x", i as f32)).await.unwrap();
    }
    db.close().await.unwrap();
    let db = Database::open(tmp.path(), config(tmp.path()))
        .await
        .unwrap();
    for i in 0..5 {
        assert!(db.is_hibernated(&format!("t{i}")).unwrap());
    }
    let s = db.session("t3", "u").await.unwrap();
    assert_eq!(
        s.get("x").await.unwrap().unwrap().properties.0["n"],
        3.0,
        "t3's data"
    );
    assert!(!db.is_hibernated("t3").unwrap());
    for i in [0, 1, 2, 4] {
        assert!(db.is_hibernated(&format!("t{i}")).unwrap());
    }
    // Every tenant's usage, without opening the others' shards? No: a
    // tenant never opened since start has no resting figures, so the
    // report opens it; what matters is that the figures are right.
    for u in db.all_usage().await.unwrap() {
        assert_eq!(u.storage.objects, 1, "{}", u.tenant_id);
    }
    db.close().await.unwrap();
}

/// A deleted tenant stays deleted for a session that outlived it: its
/// shard is not reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_of_a_deleted_tenant_does_not_reopen_it() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path(), sleepy(tmp.path()))
        .await
        .unwrap();
    let s = tenant(&db, roomy(&db, "gone")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    wait_asleep(&db, "gone").await;
    db.delete_tenant("gone").await.unwrap();
    match s.get("a").await {
        Err(Error::TenantNotFound { tenant_id }) => assert_eq!(tenant_id, "gone"),
        other => panic!("expected TenantNotFound, got {other:?}"),
    }
    let group_dirs = std::fs::read_dir(tmp.path().join("shards"))
        .unwrap()
        .count();
    assert_eq!(group_dirs, 0, "the shard directory is gone");
    db.close().await.unwrap();
}

/// kill -9 of a server while its tenants sleep (and one is being woken):
/// every acknowledged write is there after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_tenants_sleep_loses_nothing() {
    let mut node = start_node_configured("[hibernation]\nafter_idle_ms = 200\ncheck_ms = 20\n", "");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let mut keys = Vec::new();
    let mut clients = Vec::new();
    for t in ["k1", "k2", "k3"] {
        let key = tenant_key(&admin, t).await;
        let c = std::sync::Arc::new(client(&node, &key).await.unwrap());
        keys.push(key);
        c.create_collection(vektagraf::proto::CollectionSpec::vectors("items", 4))
            .await
            .unwrap();
        clients.push(c);
    }
    let mut acked = Vec::new();
    for round in 0..4 {
        for (i, c) in clients.iter().enumerate() {
            let id = format!("o{round}");
            c.put(
                NewObject::new("items", &id, serde_json::json!({"i": i})).with_vector(vec![1.0; 4]),
            )
            .await
            .unwrap();
            acked.push((i, id));
        }
        // Long enough for all three to sleep.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // One wakes as the node dies.
    let waking = {
        let c = clients[0].clone();
        tokio::spawn(async move { c.get("o0").await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    node.kill9_and_restart();
    let _ = waking.await;
    for (i, t) in ["k1", "k2", "k3"].into_iter().enumerate() {
        let c = client(&node, &keys[i]).await.unwrap();
        for (j, id) in &acked {
            if *j == i {
                let o = c.get(id).await.unwrap();
                assert!(o.is_some(), "{t}/{id} lost");
                assert_eq!(o.unwrap().properties.0["i"], i);
            }
        }
    }
}

/// A tier4 tenant `id` with user "u" on a server, and a key for it.
async fn tenant_key(admin: &Client, id: &str) -> String {
    let cfg =
        TenantConfig::for_tier(&Tiers::default(), id, id, "tier4", serde_json::json!({})).unwrap();
    admin.create_tenant(cfg).await.unwrap();
    admin.create_user(id, "u").await.unwrap();
    admin
        .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_open_the_least_recently_used_idle_shards_close_early() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    // Idle time alone would close nothing during this test.
    cfg.hibernation.after_idle_ms = 600_000;
    cfg.hibernation.check_ms = 50;
    cfg.hibernation.max_open = 3;
    let db = Database::open(tmp.path(), cfg).await.unwrap();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let id = format!("t{i}");
        let s = tenant(&db, roomy(&db, &id)).await;
        items(&s).await;
        s.put(item("a", i as f32)).await.unwrap();
        sessions.push(s);
        // Distinct last-use times on the coarse clock.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = |db: &Database| {
        (0..6)
            .filter(|i| !db.is_hibernated(&format!("t{i}")).unwrap())
            .count()
    };
    // Each was used; once idle for a second, the oldest three close.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&db) > 3 {
        assert!(Instant::now() < deadline, "{} shards still open", open(&db));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open(&db), 3, "more closed than the cap asks");
    for i in 0..3 {
        assert!(
            db.is_hibernated(&format!("t{i}")).unwrap(),
            "t{i} was used first"
        );
    }
    // A closed one answers, and another makes room again.
    assert_eq!(sessions[0].get("a").await.unwrap().unwrap().id, "a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while open(&db) > 3 {
        assert!(Instant::now() < deadline, "{} shards still open", open(&db));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.close().await.unwrap();
}

/// A2 billing: a sleeping tenant's storage keeps accruing GB-hours at the
/// bytes it held as it closed (the periodic pass and a report both add
/// it), and neither reopens its shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sleeping_tenant_is_billed_for_its_storage_without_waking() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = sleepy(tmp.path());
    c.analytics.flush_ms = 100;
    c.analytics.rest_sample_ms = 200;
    let db = Database::open(tmp.path(), c).await.unwrap();
    let s = tenant(&db, roomy(&db, "resting")).await;
    items(&s).await;
    for i in 0..20 {
        s.put(item(&format!("o{i}"), i as f32)).await.unwrap();
    }
    let bytes = s.usage().await.unwrap().storage.bytes;
    assert!(bytes > 0);
    let now_ms = vektagraf::util::now_ms;
    let from = now_ms() - 1_000;
    wait_asleep(&db, "resting").await;
    let t0 = now_ms();
    let gb_hours = |r: &vektagraf::proto::AnalyticsReport| r.storage_gb_hours;
    let first = db
        .analytics("resting", from, now_ms() + 60_000)
        .await
        .unwrap();
    let t1 = now_ms();
    // Several periodic passes, then a report.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let t2 = now_ms();
    let second = db
        .analytics("resting", from, now_ms() + 60_000)
        .await
        .unwrap();
    let t3 = now_ms();
    assert!(db.is_hibernated("resting").unwrap(), "a report woke it");
    assert_eq!(reactivations(&db, "resting"), 0);
    // Exactly the bytes held over the time between the two reports (each
    // report bills up to the moment it reads the history).
    let per_ms = bytes as f64 / 1e9 / 3_600_000.0;
    let added = gb_hours(&second) - gb_hours(&first);
    let (lo, hi) = ((t2 - t1) as f64 * per_ms, (t3 - t0) as f64 * per_ms);
    assert!(
        added >= lo * 0.999 && added <= hi * 1.001,
        "added {added} GB-hours, expected between {lo} and {hi}"
    );
    db.close().await.unwrap();
}
