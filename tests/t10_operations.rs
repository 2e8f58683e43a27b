//! Every operation type works on a real node.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vektagraf::proto::{
    CollectionSpec, Direction, Edge, Error, Filter, IndexKind, Metric, NewObject, Query, Traverse,
    VectorSearch, WriteOp, WriteOutcome,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_update_delete_transaction_batch() {
    trace();
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "ops")).await;
    items(&s).await;

    let r = s.put(item("a", 1.0)).await.unwrap();
    assert_eq!(r.outcomes, vec![WriteOutcome::Created]);
    let a = s.get("a").await.unwrap().expect("a");
    assert_eq!(a.properties.0["n"], 1.0);
    assert_eq!(a.vector.as_deref(), Some(&[1.0, 0.5, 1.0, -1.0][..]));
    assert!(a.created_at > 0);

    assert_eq!(
        s.put(item("a", 3.0)).await.unwrap().outcomes,
        vec![WriteOutcome::Updated]
    );
    s.update("a", serde_json::json!({"extra": true}), None)
        .await
        .unwrap();
    let a2 = s.get("a").await.unwrap().unwrap();
    assert_eq!(a2.properties.0["n"], 3.0);
    assert_eq!(a2.properties.0["extra"], true);
    assert_eq!(a2.created_at, a.created_at, "created_at survives updates");
    assert!(matches!(
        s.update("missing", serde_json::json!({}), None).await,
        Err(Error::NotFound { .. })
    ));

    // Transaction: all or nothing.
    let bad = s
        .transaction(vec![
            WriteOp::Put(item("t1", 1.0)),
            WriteOp::Put(NewObject::new("nope", "t2", serde_json::json!({}))),
        ])
        .await;
    assert!(matches!(bad, Err(Error::NotFound { .. })), "{bad:?}");
    assert!(
        s.get("t1").await.unwrap().is_none(),
        "a failed transaction leaves nothing"
    );
    s.transaction(vec![
        WriteOp::Put(item("t1", 1.0)),
        WriteOp::Put(item("t2", 2.0)),
    ])
    .await
    .unwrap();
    assert!(s.get("t2").await.unwrap().is_some());

    // Batch: a result per item; a bad item does not stop the others.
    let results = s
        .batch(vec![
            WriteOp::Put(item("b1", 1.0)),
            WriteOp::Put(NewObject::new("nope", "b2", serde_json::json!({}))),
            WriteOp::Put(item("b3", 3.0)),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert!(
        results[0].is_ok() && results[1].is_err() && results[2].is_ok(),
        "{results:?}"
    );

    assert_eq!(
        s.delete("b1").await.unwrap().outcomes,
        vec![WriteOutcome::Deleted { existed: true }]
    );
    assert_eq!(
        s.delete("b1").await.unwrap().outcomes,
        vec![WriteOutcome::Deleted { existed: false }]
    );
    assert!(s.get("b1").await.unwrap().is_none());
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_split_by_max_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "batchy");
    cfg.custom_settings
        .0
        .insert("max_batch_size".into(), serde_json::json!(7));
    // A write rate of 3 per window: 20 items in chunks of 7 make 3 requests.
    cfg.rate_limit
        .operation_types
        .insert(vektagraf::proto::OperationType::Write, 4);
    let s = tenant(&db, cfg).await;
    items(&s).await; // one write
    let ops = (0..20)
        .map(|i| WriteOp::Put(item(&format!("x{i}"), i as f32)))
        .collect();
    let results = s.batch(ops).await;
    assert_eq!(results.len(), 20);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // A fourth chunk exceeds the write rate: each of its items gets the error.
    let ops = (20..27)
        .map(|i| WriteOp::Put(item(&format!("x{i}"), i as f32)))
        .collect();
    let results = s.batch(ops).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(Error::LimitExceeded(_)))),
        "{results:?}"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_with_comparisons_in_and_or() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "q")).await;
    items(&s).await;
    let ops = (0..30)
        .map(|i| WriteOp::Put(item(&format!("o{i:02}"), i as f32)))
        .collect();
    assert!(s.batch(ops).await.iter().all(|r| r.is_ok()));
    let q = |f: &str, limit| Query {
        collection: "items".into(),
        filter: Some(Filter::parse(f).unwrap()),
        limit,
    };
    let ids = |v: Vec<vektagraf::proto::Object>| v.into_iter().map(|o| o.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.query(q(r#"{"n": {"$gte": 27}}"#, 10)).await.unwrap()),
        vec!["o27", "o28", "o29"]
    );
    assert_eq!(
        ids(s
            .query(q(r#"{"n": {"$in": [3, 5, 99]}}"#, 10))
            .await
            .unwrap()),
        vec!["o03", "o05"]
    );
    assert_eq!(
        ids(s
            .query(q(
                r#"{"$or": [{"n": {"$lt": 2}}, {"n": {"$gt": 28}}], "tag": "odd"}"#,
                10
            ))
            .await
            .unwrap()),
        vec!["o01", "o29"]
    );
    assert_eq!(
        s.query(q(r#"{"tag": "even"}"#, 4)).await.unwrap().len(),
        4,
        "limit caps rows"
    );
    let all = s
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 30);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_search_on_every_index_kind_never_returns_deleted_objects() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "vs")).await;
    for (name, kind, metric) in [
        ("flat", IndexKind::Flat, Metric::L2),
        (
            "hnsw",
            IndexKind::Hnsw {
                m: 8,
                ef_search: 64,
            },
            Metric::L2,
        ),
        (
            "ivf",
            IndexKind::Ivf {
                nlist: 2,
                nprobe: 2,
            },
            Metric::L2,
        ),
        ("cos", IndexKind::Flat, Metric::Cosine),
        ("ip", IndexKind::Flat, Metric::InnerProduct),
    ] {
        s.create_collection(CollectionSpec::vectors(name, 4).index(kind).metric(metric))
            .await
            .unwrap();
        let ops = (1..=120)
            .map(|i| {
                let f = i as f32;
                WriteOp::Put(
                    NewObject::new(name, &format!("{name}{i}"), serde_json::json!({"n": i}))
                        .with_vector(vec![f, f * 0.5, 1.0, -f]),
                )
            })
            .collect();
        assert!(s.batch(ops).await.iter().all(|r| r.is_ok()));
        let search = |k, filter| VectorSearch {
            collection: name.into(),
            vector: vec![10.0, 5.0, 1.0, -10.0],
            k,
            filter,
        };
        if metric == Metric::L2 {
            let hits = s.vector_search(search(3, None)).await.unwrap();
            assert_eq!(hits[0].id, format!("{name}10"), "{name}");
            assert!(hits[0].object.is_some());
            for i in 8..=12 {
                s.delete(&format!("{name}{i}")).await.unwrap();
            }
            let hits = s.vector_search_ids(search(6, None)).await.unwrap();
            assert_eq!(hits.len(), 6, "{name}");
            for h in &hits {
                let n: u32 = h.id[name.len()..].parse().unwrap();
                assert!(!(8..=12).contains(&n), "{name}: deleted {} returned", h.id);
            }
            // Updating a vector moves the object.
            s.update(
                &format!("{name}100"),
                serde_json::json!({}),
                Some(vec![10.0, 5.0, 1.0, -10.0]),
            )
            .await
            .unwrap();
            assert_eq!(
                s.vector_search_ids(search(1, None)).await.unwrap()[0].id,
                format!("{name}100")
            );
            // A filter gives exact results among the matches.
            let f = Filter::parse(r#"{"n": {"$gte": 50, "$lte": 52}}"#).unwrap();
            let hits = s.vector_search_ids(search(10, Some(f))).await.unwrap();
            assert_eq!(
                hits.iter().map(|h| h.id.clone()).collect::<Vec<_>>(),
                vec![
                    format!("{name}50"),
                    format!("{name}51"),
                    format!("{name}52")
                ]
            );
        } else {
            let hits = s.vector_search_ids(search(1, None)).await.unwrap();
            assert_eq!(hits.len(), 1);
            if metric == Metric::Cosine {
                // All vectors (f, f/2, 1, -f) point almost the same way for large f.
                assert!(hits[0].score >= 0.0 && hits[0].score < 0.01, "{hits:?}");
            }
        }
    }
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_traversal_follows_direction_labels_depth_and_node_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "g")).await;
    items(&s).await;
    for id in ["a", "b", "c", "d", "e"] {
        s.put(item(id, 1.0)).await.unwrap();
    }
    // a -knows-> b -knows-> c -likes-> d ; e -knows-> a
    for (f, l, t) in [
        ("a", "knows", "b"),
        ("b", "knows", "c"),
        ("c", "likes", "d"),
        ("e", "knows", "a"),
    ] {
        s.put_edge(f, l, t, serde_json::json!({"w": 1}))
            .await
            .unwrap();
    }
    let tr = |dir, labels: &[&str], depth, max| Traverse {
        start: "a".into(),
        direction: dir,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        max_depth: depth,
        max_nodes: max,
    };
    let ids = |v: Vec<vektagraf::proto::TraversedNode>| {
        v.into_iter().map(|n| (n.id, n.depth)).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(s.traverse(tr(Direction::Out, &[], 1, 10)).await.unwrap()),
        vec![("b".into(), 1)]
    );
    assert_eq!(
        ids(s.traverse(tr(Direction::Out, &[], 5, 10)).await.unwrap()),
        vec![("b".into(), 1), ("c".into(), 2), ("d".into(), 3)]
    );
    assert_eq!(
        ids(s
            .traverse(tr(Direction::Out, &["knows"], 5, 10))
            .await
            .unwrap()),
        vec![("b".into(), 1), ("c".into(), 2)]
    );
    assert_eq!(
        ids(s.traverse(tr(Direction::In, &[], 5, 10)).await.unwrap()),
        vec![("e".into(), 1)]
    );
    assert_eq!(
        s.traverse(tr(Direction::Both, &[], 5, 2))
            .await
            .unwrap()
            .len(),
        2,
        "max_nodes caps"
    );
    // Deleting an object removes its edges.
    s.delete("b").await.unwrap();
    assert!(s
        .traverse(tr(Direction::Out, &[], 5, 10))
        .await
        .unwrap()
        .is_empty());
    let e = s.put_edge("a", "knows", "zzz", serde_json::json!({})).await;
    assert!(
        matches!(e, Err(Error::NotFound { .. })),
        "edges need both ends"
    );
    let _ = Edge {
        from: String::new(),
        label: String::new(),
        to: String::new(),
        properties: Default::default(),
    };
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_cleanup_deletes_old_objects_and_frees_usage() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "ret")).await;
    items(&s).await;
    for i in 0..5 {
        s.put(item(&format!("old{i}"), i as f32)).await.unwrap();
    }
    let cutoff = vektagraf::util::now_ms() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.put(item("new", 9.0)).await.unwrap();
    let before = s.usage().await.unwrap().storage;
    assert_eq!(
        s.purge_older_than(Some("items"), cutoff, 100)
            .await
            .unwrap(),
        5
    );
    let after = s.usage().await.unwrap().storage;
    assert_eq!(after.objects, 1);
    assert_eq!(after.vectors, 1);
    assert!(after.bytes < before.bytes);
    assert!(s.get("new").await.unwrap().is_some());
    db.close().await.unwrap();
}
