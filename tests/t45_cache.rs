//! The per-tenant read cache (issue 11 §6, C1) on the real engine: a write
//! is visible to the next read of the same key (get, query, search; also
//! stale reads, racing readers and a shard restart), a repeated read is a
//! hit that still counts as a request, tenants never share entries, and
//! the TTL, entry cap and node memory cap take effect. Embedded and over
//! QUIC.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{item, items, open, roomy, tenant};
use vektagraf::proto::{CacheUsage, Error, Filter, LimitKind, OperationType, Query, VectorSearch};
use vektagraf::shard::Consistency;
use vektagraf::{Database, NodeConfig, Session};

fn n_of(o: &vektagraf::proto::Object) -> f64 {
    o.properties.0["n"].as_f64().unwrap()
}

fn cache(db: &Database, t: &str) -> CacheUsage {
    db.cache_usage(t).unwrap()
}

fn even() -> Query {
    Query {
        collection: "items".into(),
        filter: Some(Filter::parse(r#"{"tag": "even"}"#).unwrap()),
        limit: 100,
    }
}

fn near(v: [f32; 4]) -> VectorSearch {
    VectorSearch {
        collection: "items".into(),
        vector: v.to_vec(),
        k: 3,
        filter: None,
    }
}

fn vec_of(n: f32) -> [f32; 4] {
    [n, n * 0.5, 1.0, -n]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_visible_to_the_next_get_query_and_search_never_a_stale_hit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "acme")).await;
    items(&s).await;
    for i in 0..10 {
        s.put(item(&format!("i{i}"), i as f32)).await.unwrap();
    }

    // get: a miss, then a hit; after an update the next get sees it.
    assert_eq!(n_of(&s.get("i1").await.unwrap().unwrap()), 1.0);
    assert_eq!(n_of(&s.get("i1").await.unwrap().unwrap()), 1.0);
    let c = cache(&db, "acme");
    assert_eq!((c.hits, c.misses), (1, 1), "{c:?}");
    s.update("i1", serde_json::json!({"n": 101.0}), None)
        .await
        .unwrap();
    assert_eq!(n_of(&s.get("i1").await.unwrap().unwrap()), 101.0);
    s.delete("i1").await.unwrap();
    assert!(s.get("i1").await.unwrap().is_none());
    // A cached "not found" goes too.
    assert!(s.get("new").await.unwrap().is_none());
    s.put(item("new", 4.0)).await.unwrap();
    assert!(s.get("new").await.unwrap().is_some());

    // query: cached, then a new matching object appears in the next one.
    let before = s.query(even()).await.unwrap().len();
    assert_eq!(s.query(even()).await.unwrap().len(), before);
    let hits = cache(&db, "acme").hits;
    s.put(item("i20", 20.0)).await.unwrap();
    let after = s.query(even()).await.unwrap();
    assert_eq!(after.len(), before + 1);
    assert!(after.iter().any(|o| o.id == "i20"));
    assert_eq!(
        cache(&db, "acme").hits,
        hits,
        "the query after a write is a miss"
    );

    // search: cached, then a new exact neighbour is the next top hit.
    let q = near(vec_of(55.0));
    let top = s.vector_search(q.clone()).await.unwrap()[0].id.clone();
    assert_eq!(s.vector_search(q.clone()).await.unwrap()[0].id, top);
    s.put(item("i55", 55.0)).await.unwrap();
    assert_eq!(s.vector_search(q.clone()).await.unwrap()[0].id, "i55");
    // And its object is the new one after an update (with_objects).
    s.update("i55", serde_json::json!({"n": 56.0}), None)
        .await
        .unwrap();
    let hit = &s.vector_search(q).await.unwrap()[0];
    assert_eq!(n_of(hit.object.as_ref().unwrap()), 56.0);

    // Stale reads (allowed to lag the leader) are never older than this
    // replica's data: on one node, the write just made.
    let stale = s.clone().with_consistency(Consistency::Stale);
    assert_eq!(n_of(&stale.get("i2").await.unwrap().unwrap()), 2.0);
    s.update("i2", serde_json::json!({"n": 202.0}), None)
        .await
        .unwrap();
    assert_eq!(n_of(&stale.get("i2").await.unwrap().unwrap()), 202.0);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_a_writer_never_read_a_value_older_than_the_last_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "race")).await;
    items(&s).await;
    s.put(item("c", 0.0)).await.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (s, acked, done) = (s.clone(), acked.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while done.load(Ordering::Acquire) == 0 {
                let floor = acked.load(Ordering::Acquire) as f64;
                let got = n_of(&s.get("c").await.unwrap().unwrap());
                assert!(got >= floor, "read {got} after {floor} was acknowledged");
                let hits = s.query(even()).await.unwrap();
                let c = hits.iter().find(|o| o.id == "c").map(n_of);
                assert!(
                    c.is_some_and(|n| n >= floor),
                    "query saw {c:?} after {floor}"
                );
                reads += 1;
            }
            reads
        }));
    }
    for n in 1..=150u64 {
        // Even values only, so "c" always matches the query.
        let v = (2 * n) as f32;
        s.put(item("c", v)).await.unwrap();
        acked.store(v as u64, Ordering::Release);
        assert_eq!(n_of(&s.get("c").await.unwrap().unwrap()), v as f64);
    }
    done.store(1, Ordering::Release);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    let c = cache(&db, "race");
    assert!(
        c.hits > 0,
        "the readers hit the cache between writes: {c:?}"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_still_a_request_counted_and_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "limited");
    cfg.rate_limit
        .operation_types
        .insert(OperationType::Read, 3);
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    async fn reads(s: &Session) -> u64 {
        s.usage()
            .await
            .unwrap()
            .requests
            .by_operation
            .get("read")
            .copied()
            .unwrap_or(0)
    }
    let before = reads(&s).await;
    for _ in 0..3 {
        s.get("a").await.unwrap();
    }
    let u = s.usage().await.unwrap();
    assert_eq!((u.cache.hits, u.cache.misses), (2, 1), "{:?}", u.cache);
    assert_eq!(reads(&s).await - before, 3, "hits are counted as requests");
    // The fourth get would be a hit; the per-operation rate refuses it.
    match s.get("a").await {
        Err(Error::LimitExceeded(l)) => {
            assert_eq!(l.kind, LimitKind::OperationRate(OperationType::Read))
        }
        other => panic!("expected a rate refusal, got {other:?}"),
    }
    assert_eq!(cache(&db, "limited").hits, 2);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_cached_entries() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let a = tenant(&db, roomy(&db, "alpha")).await;
    let b = tenant(&db, roomy(&db, "beta")).await;
    for s in [&a, &b] {
        items(s).await;
    }
    a.put(item("same", 1.0)).await.unwrap();
    a.put(item("only_a", 3.0)).await.unwrap();
    b.put(item("same", 2.0)).await.unwrap();
    // Alpha caches its answers.
    for _ in 0..2 {
        assert_eq!(n_of(&a.get("same").await.unwrap().unwrap()), 1.0);
        assert!(a.get("only_a").await.unwrap().is_some());
        assert_eq!(
            a.vector_search(near(vec_of(3.0))).await.unwrap()[0].id,
            "only_a"
        );
    }
    // Beta asks the very same reads: its own data, all misses.
    assert_eq!(n_of(&b.get("same").await.unwrap().unwrap()), 2.0);
    assert!(b.get("only_a").await.unwrap().is_none());
    assert_eq!(
        b.vector_search(near(vec_of(3.0))).await.unwrap()[0].id,
        "same"
    );
    let (ca, cb) = (cache(&db, "alpha"), cache(&db, "beta"));
    assert_eq!((ca.hits, ca.misses), (3, 3), "{ca:?}");
    assert_eq!((cb.hits, cb.misses), (0, 3), "{cb:?}");
    // A write in beta leaves alpha's entries alone.
    b.put(item("only_a", 9.0)).await.unwrap();
    assert!(a.get("only_a").await.unwrap().is_some());
    assert_eq!(cache(&db, "alpha").hits, 4);
    assert_eq!(n_of(&b.get("only_a").await.unwrap().unwrap()), 9.0);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_and_the_entry_cap_of_a_tenant_take_effect_and_can_be_changed() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "small");
    cfg.custom_settings
        .0
        .insert("cache_ttl_ms".into(), 400.into());
    cfg.custom_settings
        .0
        .insert("cache_max_entries".into(), 5.into());
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for i in 0..20 {
        s.put(item(&format!("i{i}"), i as f32)).await.unwrap();
    }
    // The entry cap: 20 distinct reads leave at most 5 entries.
    for _ in 0..3 {
        for i in 0..20 {
            s.get(&format!("i{i}")).await.unwrap();
        }
    }
    let c = cache(&db, "small");
    assert!(c.entries <= 5, "{c:?}");

    // The TTL: a fresh entry is a hit, then a miss once 400 ms have passed.
    s.get("ttl").await.unwrap();
    s.put(item("ttl", 1.0)).await.unwrap();
    let stored = Instant::now();
    s.get("ttl").await.unwrap();
    let hits = cache(&db, "small").hits;
    s.get("ttl").await.unwrap();
    assert_eq!(cache(&db, "small").hits, hits + 1);
    let expired = loop {
        let before = cache(&db, "small");
        s.get("ttl").await.unwrap();
        if cache(&db, "small").misses > before.misses {
            break stored.elapsed();
        }
        assert!(stored.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        expired >= Duration::from_millis(400),
        "expired after {expired:?}"
    );

    // Settings changed live: the cache turns off (no hits, no misses).
    db.update_tenant(
        "small",
        vektagraf::tenant::TenantUpdate {
            custom_settings: Some(vektagraf::proto::Properties(
                serde_json::json!({"cache_max_entries": 0})
                    .as_object()
                    .unwrap()
                    .clone(),
            )),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let before = cache(&db, "small");
    for _ in 0..3 {
        s.get("ttl").await.unwrap();
    }
    let after = cache(&db, "small");
    assert_eq!(
        (after.hits, after.misses, after.entries),
        (before.hits, before.misses, 0)
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_memory_cap_holds_over_every_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.cache.max_bytes = 64 * 1024;
    let db = Database::open(dir.path(), config).await.unwrap();
    let mut sessions = Vec::new();
    for t in ["big1", "big2"] {
        let s = tenant(&db, roomy(&db, t)).await;
        items(&s).await;
        for i in 0..100 {
            let o = vektagraf::proto::NewObject::new(
                "items",
                &format!("o{i}"),
                serde_json::json!({"text": "x".repeat(1000)}),
            );
            s.put(o).await.unwrap();
        }
        sessions.push(s);
    }
    for s in &sessions {
        for i in 0..100 {
            s.get(&format!("o{i}")).await.unwrap();
        }
    }
    let (c1, c2) = (cache(&db, "big1"), cache(&db, "big2"));
    let (used, max) = db.cache_memory();
    assert_eq!(max, 64 * 1024);
    assert!(used <= max, "{used} of {max}");
    // Each tenant holds at most its resource share of the budget (C2),
    // and filled most of it.
    let share = vektagraf::limits::share(roomy(&db, "x").request_limit.priority);
    let cap = (max as f64 * share) as u64;
    for c in [&c1, &c2] {
        assert!(c.bytes <= cap && c.bytes > cap / 2, "{} of {cap}", c.bytes);
    }
    assert_eq!(c1.bytes + c2.bytes, used);
    assert!(c1.skipped + c2.skipped > 0, "{c1:?} {c2:?}");
    // Deleting a tenant gives its bytes back.
    db.delete_tenant("big1").await.unwrap();
    assert_eq!(db.cache_memory().0, c2.bytes);

    // With max_bytes = 0 nothing is cached.
    let dir2 = tempfile::tempdir().unwrap();
    let mut off = NodeConfig::with_data_dir(dir2.path());
    off.cache.max_bytes = 0;
    let db2 = Database::open(dir2.path(), off).await.unwrap();
    let s = tenant(&db2, roomy(&db2, "plain")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    s.get("a").await.unwrap();
    s.get("a").await.unwrap();
    assert_eq!(db2.cache_usage("plain").unwrap(), CacheUsage::default());
    db2.close().await.unwrap();
    // Closing the node empties the caches of tenants whose sessions are
    // still held (big2 reads again, now that big1's bytes are back).
    for i in 0..100 {
        sessions[1].get(&format!("o{i}")).await.unwrap();
    }
    assert!(db.cache_memory().0 > 0);
    db.close().await.unwrap();
    assert_eq!(db.cache_memory().0, 0);
    drop(sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_never_answers_from_entries_of_its_earlier_instance() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "phoenix")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    s.get("a").await.unwrap();
    s.get("a").await.unwrap();
    assert_eq!(cache(&db, "phoenix").hits, 1);
    db.inject_shard_failure("phoenix").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.shard_restarts("phoenix").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "shard was not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = loop {
        if let Ok(Some(o)) = s.get("a").await {
            break o;
        }
        assert!(Instant::now() < deadline, "shard never served again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(n_of(&got), 1.0);
    // The first read of the new instance was a miss (a new store instance).
    assert_eq!(cache(&db, "phoenix").hits, 1);
    s.update("a", serde_json::json!({"n": 2.0}), None)
        .await
        .unwrap();
    assert_eq!(n_of(&s.get("a").await.unwrap().unwrap()), 2.0);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quic_a_repeated_read_is_a_hit_and_usage_reports_it() {
    use vektagraf::client::{Client, ClientOptions};
    use vektagraf::proto::wire::KeyKind;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "net")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    let mut settings = db.config().server.clone();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    let router = vektagraf::router::Router::start(db.clone(), None, Default::default(), None)
        .await
        .unwrap();
    let server = vektagraf::net::Server::start(db.clone(), router.clone(), settings)
        .await
        .unwrap();
    let (key, _) = db
        .create_key(KeyKind::Tenant, Some("net"), Some("u"), None)
        .await
        .unwrap();
    let opts = ClientOptions::new(vec![server.local_addr], &key, &server.cert_path).unwrap();
    let c = Client::connect(opts).await.unwrap();
    assert_eq!(n_of(&c.get("a").await.unwrap().unwrap()), 1.0);
    assert_eq!(n_of(&c.get("a").await.unwrap().unwrap()), 1.0);
    assert_eq!(n_of(&c.get_stale("a").await.unwrap().unwrap()), 1.0);
    let top = c.search(near(vec_of(1.0)), false).await.unwrap()[0]
        .id
        .clone();
    assert_eq!(c.search(near(vec_of(1.0)), false).await.unwrap()[0].id, top);
    c.put(item("a", 3.0)).await.unwrap();
    assert_eq!(n_of(&c.get("a").await.unwrap().unwrap()), 3.0);
    let u = c.usage(None).await.unwrap();
    // get miss, hit, stale hit, search miss, hit, get after the write miss.
    assert_eq!((u.cache.hits, u.cache.misses), (3, 3), "{:?}", u.cache);
    assert!(u.cache.entries >= 1 && u.cache.bytes > 0, "{:?}", u.cache);
    c.close().await;
    server.shutdown().await;
    router.stop();
    db.close().await.unwrap();
}
