//! Bad input changes nothing and gets a typed error.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vektagraf::proto::{
    CollectionSpec, Error, Filter, LimitKind, NewObject, Query, VectorSearch, WriteOp,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_typed_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "strict");
    cfg.storage_limit.max_object_size = 2048;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    let before = s.usage().await.unwrap().storage;
    let rows_before = s
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 100,
        })
        .await
        .unwrap();

    // Wrong vector dimension: put, update, search.
    let e = s
        .put(NewObject::new("items", "x", serde_json::json!({})).with_vector(vec![1.0, 2.0, 3.0]))
        .await;
    assert!(
        matches!(
            e,
            Err(Error::DimensionMismatch {
                expected: 4,
                got: 3,
                ..
            })
        ),
        "{e:?}"
    );
    let e = s
        .update("a", serde_json::json!({}), Some(vec![1.0; 5]))
        .await;
    assert!(
        matches!(
            e,
            Err(Error::DimensionMismatch {
                expected: 4,
                got: 5,
                ..
            })
        ),
        "{e:?}"
    );
    let e = s
        .vector_search(VectorSearch {
            collection: "items".into(),
            vector: vec![1.0],
            k: 3,
            filter: None,
        })
        .await;
    assert!(matches!(e, Err(Error::DimensionMismatch { .. })), "{e:?}");
    let e = s
        .put(
            NewObject::new("items", "x", serde_json::json!({})).with_vector(vec![
                f32::NAN,
                0.0,
                0.0,
                0.0,
            ]),
        )
        .await;
    assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{e:?}");
    // Oversized object.
    let e = s
        .put(NewObject::new(
            "items",
            "big",
            serde_json::json!({"blob": "z".repeat(4096)}),
        ))
        .await;
    assert!(
        matches!(e, Err(Error::LimitExceeded(ref l)) if l.kind == LimitKind::ObjectSize),
        "{e:?}"
    );
    // Over the node's command size (a whole transaction).
    let huge: Vec<WriteOp> = (0..40)
        .map(|i| {
            WriteOp::Put(NewObject::new(
                "items",
                &format!("h{i}"),
                serde_json::json!({"blob": "q".repeat(1_000_000)}),
            ))
        })
        .collect();
    assert!(matches!(
        s.transaction(huge).await,
        Err(Error::LimitExceeded(_)) | Err(Error::InvalidArgument { .. })
    ));
    // Invalid ids and names.
    for bad in ["", "has space", "a/b", &"x".repeat(200)] {
        assert!(
            matches!(
                s.put(NewObject::new("items", bad, serde_json::json!({})))
                    .await,
                Err(Error::InvalidArgument { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.create_collection(CollectionSpec::vectors("bad name", 4))
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        s.create_collection(CollectionSpec::vectors("zero", 0))
            .await,
        Err(Error::InvalidArgument { .. })
    ));
    // Invalid tenant ids.
    for bad in ["", "UPPER", "../etc", "a b"] {
        let e = db.get_tenant(bad).await;
        assert!(
            matches!(e, Err(Error::InvalidTenantId { .. })),
            "{bad:?}: {e:?}"
        );
    }
    assert!(matches!(
        db.session("../etc", "u").await,
        Err(Error::InvalidTenantId { .. })
    ));
    // Malformed filters.
    for text in [
        "{",
        r#"{"n": {"$regex": "x"}}"#,
        r#"{"$or": []}"#,
        r#"{"n": {"$gt": [1]}}"#,
    ] {
        assert!(
            matches!(Filter::parse(text), Err(Error::InvalidFilter { .. })),
            "{text}"
        );
    }
    let hand_built = Filter::In {
        field: "n".into(),
        values: vec![],
    };
    let e = s
        .query(Query {
            collection: "items".into(),
            filter: Some(hand_built.clone()),
            limit: 10,
        })
        .await;
    assert!(matches!(e, Err(Error::InvalidFilter { .. })), "{e:?}");
    let e = s
        .vector_search(VectorSearch {
            collection: "items".into(),
            vector: vec![0.0; 4],
            k: 1,
            filter: Some(hand_built),
        })
        .await;
    assert!(matches!(e, Err(Error::InvalidFilter { .. })), "{e:?}");
    // Unknown collection.
    assert!(matches!(
        s.put(NewObject::new("nope", "x", serde_json::json!({})))
            .await,
        Err(Error::NotFound { .. })
    ));

    // Nothing changed, and the node still serves.
    assert_eq!(s.usage().await.unwrap().storage, before);
    assert_eq!(
        s.query(Query {
            collection: "items".into(),
            filter: None,
            limit: 100
        })
        .await
        .unwrap(),
        rows_before
    );
    s.put(item("b", 2.0)).await.unwrap();
    db.close().await.unwrap();
}
