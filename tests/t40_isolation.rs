//! A session of tenant A can never read, change, search or traverse B's data.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vektagraf::proto::{Direction, Error, Query, Traverse, VectorSearch, WriteOp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_cannot_reach_tenant_b_with_b_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let a = tenant(&db, roomy(&db, "tenant_a")).await;
    let b = tenant(&db, roomy(&db, "tenant_b")).await;
    items(&a).await;
    items(&b).await;
    for i in 0..10 {
        b.put(item(&format!("b{i}"), i as f32)).await.unwrap();
    }
    b.put_edge("b1", "rel", "b2", serde_json::json!({}))
        .await
        .unwrap();
    a.put(item("a0", 100.0)).await.unwrap();
    let b_usage = b.usage().await.unwrap().storage;

    // Read.
    assert!(a.get("b1").await.unwrap().is_none());
    // Query and search see only A's objects.
    let rows = a
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        vec!["a0"]
    );
    let hits = a
        .vector_search_ids(VectorSearch {
            collection: "items".into(),
            vector: vec![1.0, 0.5, 1.0, -1.0],
            k: 10,
            filter: None,
        })
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        vec!["a0"]
    );
    // Traverse from B's node.
    let t = Traverse {
        start: "b1".into(),
        direction: Direction::Both,
        labels: vec![],
        max_depth: 3,
        max_nodes: 10,
    };
    assert!(matches!(a.traverse(t).await, Err(Error::NotFound { .. })));
    // Change: update, delete, edge to B's ids, and a put with B's id creates A's own object.
    assert!(matches!(
        a.update("b1", serde_json::json!({"hacked": true}), None)
            .await,
        Err(Error::NotFound { .. })
    ));
    a.delete("b1").await.unwrap();
    assert!(matches!(
        a.put_edge("a0", "rel", "b2", serde_json::json!({})).await,
        Err(Error::NotFound { .. })
    ));
    a.put(item("b3", 7.0)).await.unwrap();
    let r = a
        .transaction(vec![WriteOp::Delete { id: "b4".into() }])
        .await
        .unwrap();
    assert_eq!(
        r.outcomes,
        vec![vektagraf::proto::WriteOutcome::Deleted { existed: false }]
    );

    // B is untouched.
    assert_eq!(b.usage().await.unwrap().storage, b_usage);
    assert_eq!(
        b.get("b1")
            .await
            .unwrap()
            .unwrap()
            .properties
            .0
            .get("hacked"),
        None
    );
    assert_eq!(b.get("b3").await.unwrap().unwrap().properties.0["n"], 3.0);
    assert_eq!(
        b.traverse(Traverse {
            start: "b1".into(),
            direction: Direction::Out,
            labels: vec![],
            max_depth: 1,
            max_nodes: 5
        })
        .await
        .unwrap()
        .len(),
        1
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_users_of_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let a = tenant(&db, roomy(&db, "ta")).await;
    tenant(&db, roomy(&db, "tb")).await;
    db.create_user("tb", "bob").await.unwrap();
    assert!(matches!(
        db.session("ta", "bob").await,
        Err(Error::UnauthorizedTenantAccess { .. })
    ));
    assert!(matches!(
        db.session("ta", "nobody").await,
        Err(Error::UnauthorizedTenantAccess { .. })
    ));
    assert!(matches!(
        db.session("", "u").await,
        Err(Error::MissingTenantContext)
    ));
    assert!(matches!(
        db.session("nope", "u").await,
        Err(Error::TenantNotFound { .. })
    ));
    assert!(matches!(
        a.check_tenant("tb"),
        Err(Error::CrossTenantAccess { .. })
    ));
    assert!(matches!(
        a.check_tenant(""),
        Err(Error::MissingTenantContext)
    ));
    a.check_tenant("ta").unwrap();
    db.close().await.unwrap();
}
