//! Each limit fires with its own typed error at the limit, and not below.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vektagraf::proto::{
    CollectionSpec, Error, LimitKind, NewObject, OperationType, Query, WriteOp,
};
use vektagraf::tenant::{TenantUpdate, Window};

fn kind(r: Result<impl std::fmt::Debug, Error>) -> LimitKind {
    match r {
        Err(Error::LimitExceeded(l)) => l.kind,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

fn limit_of(r: Result<impl std::fmt::Debug, Error>) -> vektagraf::proto::LimitExceeded {
    match r {
        Err(Error::LimitExceeded(l)) => l,
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_with_burst_and_per_operation_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "rate");
    cfg.rate_limit.max_requests = 8;
    cfg.rate_limit.burst_allowance = 2;
    cfg.rate_limit.time_window = Window(Duration::from_secs(3600));
    cfg.rate_limit.sliding_window = false;
    cfg.rate_limit
        .operation_types
        .insert(OperationType::Write, 3);
    let s = tenant(&db, cfg).await;
    items(&s).await; // write 1
    s.put(item("a", 1.0)).await.unwrap(); // write 2
    s.put(item("b", 1.0)).await.unwrap(); // write 3: at the per-op limit
    let l = limit_of(s.put(item("c", 1.0)).await);
    assert_eq!(
        (l.kind, l.limit, l.current),
        (LimitKind::OperationRate(OperationType::Write), 3, 3)
    );
    assert!(l.retry_after_ms.unwrap() > 0);
    // Overall: 3 writes so far; 7 more requests reach max + burst = 10.
    for _ in 0..7 {
        s.get("a").await.unwrap();
    }
    let l = limit_of(s.get("a").await);
    assert_eq!((l.kind, l.limit, l.current), (LimitKind::Rate, 10, 10));
    assert!(l.retry_after_ms.is_some());
    assert_eq!(l.kind.limit_type(), "rate_limit");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_types_decide_what_is_allowed_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "ops");
    cfg.rate_limit
        .operation_types
        .remove(&OperationType::GraphTraverse);
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    let t = vektagraf::proto::Traverse {
        start: "a".into(),
        direction: vektagraf::proto::Direction::Out,
        labels: vec![],
        max_depth: 1,
        max_nodes: 1,
    };
    assert!(matches!(
        s.traverse(t).await,
        Err(Error::OperationNotAllowed {
            operation: OperationType::GraphTraverse
        })
    ));
    assert!(matches!(
        s.can_perform_operation(OperationType::GraphTraverse),
        Err(Error::OperationNotAllowed { .. })
    ));
    s.can_perform_operation(OperationType::Read).unwrap();
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_and_monthly_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "daily");
    cfg.request_limit.daily_limit = 4;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for _ in 0..3 {
        s.get("x").await.unwrap();
    }
    let l = limit_of(s.get("x").await);
    assert_eq!((l.kind, l.limit, l.current), (LimitKind::Daily, 4, 4));
    let wait = l.retry_after_ms.unwrap();
    assert!(
        wait > 0 && wait <= 86_400_000,
        "retry at the next UTC midnight: {wait}"
    );

    let mut cfg = roomy(&db, "monthly");
    cfg.request_limit.monthly_limit = 3;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.get("x").await.unwrap();
    s.get("x").await.unwrap();
    assert_eq!(kind(s.get("x").await), LimitKind::Monthly);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "conc");
    cfg.request_limit.concurrent_limit = 2;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    // A long transaction holds one slot; a second operation still fits
    // (below the limit); a third while both run does not.
    let mut saw_limit = false;
    for attempt in 0..20 {
        let big: Vec<WriteOp> = (0..3000)
            .map(|i| WriteOp::Put(item(&format!("t{attempt}-{i}"), i as f32)))
            .collect();
        let big2 = big
            .iter()
            .map(|op| match op {
                WriteOp::Put(o) => WriteOp::Put(NewObject {
                    id: format!("{}b", o.id),
                    ..o.clone()
                }),
                other => other.clone(),
            })
            .collect::<Vec<_>>();
        let (s1, s2) = (s.clone(), s.clone());
        let t1 = tokio::spawn(async move { s1.transaction(big).await });
        while s.usage().await.unwrap().in_flight < 1 && !t1.is_finished() {
            tokio::task::yield_now().await;
        }
        let t2 = tokio::spawn(async move { s2.transaction(big2).await });
        while s.usage().await.unwrap().in_flight < 2 && !t2.is_finished() {
            tokio::task::yield_now().await;
        }
        if s.usage().await.unwrap().in_flight == 2 {
            let l = limit_of(s.get("t0-0").await);
            assert_eq!((l.kind, l.limit, l.current), (LimitKind::Concurrency, 2, 2));
            assert!(l.retry_after_ms.is_some());
            saw_limit = true;
        }
        t1.await.unwrap().unwrap();
        t2.await.unwrap().unwrap();
        if saw_limit {
            break;
        }
    }
    assert!(saw_limit, "never observed two operations in flight");
    assert_eq!(s.usage().await.unwrap().in_flight, 0, "slots come back");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complexity_and_result_size_are_checked_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "cx");
    cfg.request_limit.complexity_limit = 50;
    cfg.request_limit.max_result_size = 400;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    let q = |limit| Query {
        collection: "items".into(),
        filter: None,
        limit,
    };
    // cost = 1 + limit / 10: 490 -> 50 (at the limit) but result size 490 > 400.
    let l = limit_of(s.query(q(401)).await);
    assert_eq!(
        (l.kind, l.limit, l.requested),
        (LimitKind::ResultSize, 400, 401)
    );
    s.query(q(400)).await.unwrap();
    let mut cfg = db.get_tenant("cx").await.unwrap();
    cfg.request_limit.max_result_size = 10_000;
    db.update_tenant(
        "cx",
        TenantUpdate {
            request_limit: Some(cfg.request_limit),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.query(q(490)).await.unwrap(); // complexity 50: at the limit
    let l = limit_of(s.query(q(500)).await); // complexity 51
    assert_eq!(
        (l.kind, l.limit, l.requested),
        (LimitKind::Complexity, 50, 51)
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_query_is_stopped_by_the_rows_it_reads_not_only_its_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "rows");
    cfg.request_limit.complexity_limit = 20;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for chunk in 0..5 {
        // A write of n ops costs n: 20 at a time fit.
        let ops = (chunk * 20..chunk * 20 + 20)
            .map(|i| WriteOp::Put(item(&format!("i{i:03}"), i as f32)))
            .collect();
        s.transaction(ops).await.unwrap();
    }
    let q = |filter: &str| Query {
        collection: "items".into(),
        filter: Some(vektagraf::proto::Filter::parse(filter).unwrap()),
        limit: 10,
    };
    // Estimated 1 + 10 + 1 = 12, admitted; it reads all 100 rows for 5
    // matches: 11 + 100/10 = 21 > 20, refused as it runs.
    let l = limit_of(s.query(q(r#"{"n": {"$gte": 95}}"#)).await);
    assert_eq!(
        (l.kind, l.limit, l.current, l.requested),
        (LimitKind::Complexity, 20, 20, 1)
    );
    // The first 10 rows all match: 11 + 10/10 = 12.
    assert_eq!(s.query(q(r#"{"n": {"$gte": 0}}"#)).await.unwrap().len(), 10);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_limits_objects_bytes_size_vectors_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "st");
    cfg.storage_limit.max_objects = 5;
    cfg.storage_limit.max_vectors = 3;
    cfg.storage_limit.max_vector_dimensions = 8;
    cfg.storage_limit.max_object_size = 600;
    let s = tenant(&db, cfg).await;
    // Dimensions: 8 is allowed, 9 is not.
    s.create_collection(CollectionSpec::vectors("items", 4))
        .await
        .unwrap();
    s.create_collection(CollectionSpec::vectors("eight", 8))
        .await
        .unwrap();
    let l = limit_of(
        s.create_collection(CollectionSpec::vectors("nine", 9))
            .await,
    );
    assert_eq!(
        (l.kind, l.limit, l.requested),
        (LimitKind::VectorDimensions, 8, 9)
    );
    s.create_collection(CollectionSpec::plain("plain"))
        .await
        .unwrap();
    // Vectors: 3 allowed.
    for i in 0..3 {
        s.put(item(&format!("v{i}"), i as f32)).await.unwrap();
    }
    let l = limit_of(s.put(item("v3", 3.0)).await);
    assert_eq!((l.kind, l.limit, l.current), (LimitKind::Vectors, 3, 3));
    // Objects: 5 allowed (3 with vectors + 2 plain).
    s.put(NewObject::new("plain", "p0", serde_json::json!({})))
        .await
        .unwrap();
    s.put(NewObject::new("plain", "p1", serde_json::json!({})))
        .await
        .unwrap();
    let l = limit_of(
        s.put(NewObject::new("plain", "p2", serde_json::json!({})))
            .await,
    );
    assert_eq!((l.kind, l.limit, l.current), (LimitKind::Objects, 5, 5));
    // Replacing an existing object at the limit is fine.
    s.put(NewObject::new("plain", "p1", serde_json::json!({"x": 1})))
        .await
        .unwrap();
    // Object size: just under 600 passes, over fails.
    let body = |n: usize| NewObject::new("plain", "p1", serde_json::json!({"s": "x".repeat(n)}));
    s.put(body(500)).await.unwrap();
    let l = limit_of(s.put(body(700)).await);
    assert_eq!((l.kind, l.limit), (LimitKind::ObjectSize, 600));
    assert!(l.requested > 600 && l.retry_after_ms.is_none());
    // Bytes: lower the byte limit to just above current usage.
    let used = s.usage().await.unwrap().storage.bytes;
    let mut c = db.get_tenant("st").await.unwrap();
    c.storage_limit.max_storage_bytes = used + 10;
    c.storage_limit.max_objects = 100;
    db.update_tenant(
        "st",
        TenantUpdate {
            storage_limit: Some(c.storage_limit),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let l = limit_of(
        s.put(NewObject::new(
            "plain",
            "p9",
            serde_json::json!({"s": "y".repeat(100)}),
        ))
        .await,
    );
    assert_eq!(
        (l.kind, l.limit, l.current),
        (LimitKind::StorageBytes, used + 10, used)
    );
    assert_eq!(
        s.usage().await.unwrap().storage.bytes,
        used,
        "a refused write changes nothing"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_limits_let_writes_through_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "soft");
    cfg.storage_limit.max_objects = 2;
    cfg.storage_limit.hard_limits = false;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    s.put(item("b", 1.0)).await.unwrap();
    let r = s
        .put(item("c", 1.0))
        .await
        .expect("soft limit lets it through");
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("soft limit") && w.contains("max_objects")),
        "{:?}",
        r.warnings
    );
    assert_eq!(s.usage().await.unwrap().storage.objects, 3);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_fires_at_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "warn");
    cfg.storage_limit.max_objects = 10;
    cfg.storage_limit.warning_threshold = 0.8;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for i in 0..7 {
        let r = s.put(item(&format!("o{i}"), 1.0)).await.unwrap();
        assert!(
            r.warnings.is_empty(),
            "no warning below 80%: {:?}",
            r.warnings
        );
    }
    assert!(s.usage().await.unwrap().warnings.is_empty());
    let r = s.put(item("o7", 1.0)).await.unwrap();
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("max_objects") && w.contains("80%")),
        "{:?}",
        r.warnings
    );
    assert!(s
        .usage()
        .await
        .unwrap()
        .warnings
        .iter()
        .any(|w| w.contains("max_objects")));
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_writers_racing_for_the_last_slots_leave_exactly_max_objects() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "race");
    cfg.storage_limit.max_objects = 100;
    cfg.request_limit.concurrent_limit = 64;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    let ops = (0..90)
        .map(|i| WriteOp::Put(item(&format!("pre{i}"), 1.0)))
        .collect();
    assert!(s.batch(ops).await.iter().all(|r| r.is_ok()));
    let ok = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (s, ok) = (s.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..3 {
                match s.put(item(&format!("w{w}-{i}"), 1.0)).await {
                    Ok(_) => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(Error::LimitExceeded(l)) => assert_eq!(l.kind, LimitKind::Objects),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), 10);
    assert_eq!(s.usage().await.unwrap().storage.objects, 100);
    let all = s
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 100);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_changed_live_applies_to_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "live");
    cfg.rate_limit
        .operation_types
        .insert(OperationType::Read, 2);
    cfg.rate_limit.time_window = Window(Duration::from_secs(3600));
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.get("a").await.unwrap();
    s.get("a").await.unwrap();
    assert_eq!(
        kind(s.get("a").await),
        LimitKind::OperationRate(OperationType::Read)
    );
    let mut c = db.get_tenant("live").await.unwrap();
    c.rate_limit.operation_types.insert(OperationType::Read, 5);
    db.update_tenant(
        "live",
        TenantUpdate {
            rate_limit: Some(c.rate_limit),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.get("a").await.expect("the raised limit applies at once");
    // Storage limits change live too, through the shard's log.
    s.put(item("x", 1.0)).await.unwrap();
    let mut c = db.get_tenant("live").await.unwrap();
    c.storage_limit.max_objects = 1;
    db.update_tenant(
        "live",
        TenantUpdate {
            storage_limit: Some(c.storage_limit),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(kind(s.put(item("y", 1.0)).await), LimitKind::Objects);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tenant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "off")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    db.disable_tenant("off").await.unwrap();
    assert!(matches!(
        s.get("a").await,
        Err(Error::TenantDisabled { .. })
    ));
    assert!(matches!(
        s.put(item("b", 1.0)).await,
        Err(Error::TenantDisabled { .. })
    ));
    db.enable_tenant("off").await.unwrap();
    assert!(s.get("a").await.unwrap().is_some());
    db.close().await.unwrap();
}

/// C2: with the node saturated by a critical and a low-priority tenant
/// alike, the low one is admitted at least its configured share of the
/// node (14%; by fair queueing it gets 14/34 of the slots the two
/// contend for, about 41%), and each of its requests is served while the
/// flood goes on. Under strict priority it got nothing until the
/// critical tenant's queue ran dry, and its requests timed out as
/// `Overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_priority_tenant_gets_its_share_while_a_critical_one_saturates_the_node() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.max_in_flight = 1;
    cfg.limits.max_queued = 256;
    cfg.limits.queue_timeout_ms = 5_000;
    let db = vektagraf::Database::open(dir.path(), cfg).await.unwrap();
    let mut sessions = Vec::new();
    for (id, p) in [
        ("hot", vektagraf::tenant::Priority::Critical),
        ("meek", vektagraf::tenant::Priority::Low),
    ] {
        let mut c = roomy(&db, id);
        c.request_limit.priority = p;
        c.request_limit.concurrent_limit = 64;
        let s = Arc::new(tenant(&db, c).await);
        items(&s).await;
        for i in 0..20 {
            s.put(item(&format!("o{i}"), i as f32)).await.unwrap();
        }
        sessions.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let refused: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut flood = Vec::new();
    for (who, s) in sessions.iter().enumerate() {
        for _ in 0..12 {
            let (s, stop, served, refused) =
                (s.clone(), stop.clone(), served.clone(), refused.clone());
            flood.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let q = Query {
                        collection: "items".into(),
                        filter: None,
                        limit: 20,
                    };
                    match s.query(q).await {
                        Ok(_) => served[who].fetch_add(1, Relaxed),
                        Err(_) => refused[who].fetch_add(1, Relaxed),
                    };
                }
            }));
        }
    }
    // Until 1,500 requests are served in all, with both queues full.
    while served[0].load(Relaxed) + served[1].load(Relaxed) < 1_500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = db.admission_load().1;
    stop.store(true, Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let (hot, meek) = (served[0].load(Relaxed), served[1].load(Relaxed));
    assert!(queued >= 8, "the node was not saturated ({queued} waiting)");
    let share = meek as f64 / (hot + meek) as f64;
    assert!(
        share >= 0.14,
        "the low-priority tenant got {meek} of {} slots ({:.1}%)",
        hot + meek,
        share * 100.0
    );
    // The critical tenant's weight (20%) against the low one's (14%)
    // would give it 59%, but no tenant gets past half the slots while
    // another waits: about an even split, never a starved critical one.
    // (This asserted hot > meek, a coin flip under that cap.)
    assert!(
        hot as f64 / (hot + meek) as f64 >= 0.45,
        "the critical tenant got {hot} against {meek}"
    );
    assert_eq!(
        refused[1].load(Relaxed),
        0,
        "low-priority requests were refused"
    );
    db.close().await.unwrap();
}
