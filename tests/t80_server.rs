//! The real server (a child process) and the real driver over loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::node::{client, raw_connection, raw_request, start_node};

use vektagraf::client::{Client, ClientOptions};
use vektagraf::proto::wire::{Envelope, KeyKind, Request, Response, ALPN};
use vektagraf::proto::{
    CollectionSpec, Direction, Error, Filter, LimitKind, NewObject, OperationType, Query, Traverse,
    VectorSearch, WriteOp,
};

/// Admin creates a tenant with a user and returns a tenant key.
async fn tenant_key(admin: &Client, tenant: &str, ops: Option<Vec<OperationType>>) -> String {
    if admin.get_tenant(tenant).await.is_err() {
        admin
            .create_tenant_for_tier(tenant, tenant, "enterprise")
            .await
            .unwrap();
        admin.create_user(tenant, "u").await.unwrap();
    }
    admin
        .create_key(KeyKind::Tenant, Some(tenant), Some("u"), ops)
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_through_the_driver() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = tenant_key(&admin, "acme", None).await;
    let c = client(&node, &key).await.unwrap();
    c.ping().await.unwrap();
    c.create_collection(CollectionSpec::vectors("items", 3))
        .await
        .unwrap();
    c.put(
        NewObject::new("items", "a", serde_json::json!({"n": 1})).with_vector(vec![1.0, 0.0, 0.0]),
    )
    .await
    .unwrap();
    c.put(
        NewObject::new("items", "b", serde_json::json!({"n": 2})).with_vector(vec![0.0, 1.0, 0.0]),
    )
    .await
    .unwrap();
    c.update("a", serde_json::json!({"m": true}), None)
        .await
        .unwrap();
    assert_eq!(c.get("a").await.unwrap().unwrap().properties.0["m"], true);
    c.transaction(vec![WriteOp::PutEdge(vektagraf::proto::Edge {
        from: "a".into(),
        label: "x".into(),
        to: "b".into(),
        properties: Default::default(),
    })])
    .await
    .unwrap();
    let batch: Vec<WriteOp> = (0..250)
        .map(|i| {
            WriteOp::Put(NewObject::new(
                "items",
                &format!("o{i}"),
                serde_json::json!({"n": i}),
            ))
        })
        .collect();
    assert!(c.batch(batch).await.iter().all(|r| r.is_ok()));
    let rows = c
        .query(Query {
            collection: "items".into(),
            filter: Some(Filter::parse(r#"{"n": {"$lt": 2}}"#).unwrap()),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 3); // a (n=1), o0, o1
                               // A property index, filled from the 252 objects, then a filtered
                               // search through it: of n < 2 (a, o0, o1) only a has a vector.
    assert_eq!(c.index_property("items", "n").await.unwrap(), 252);
    assert_eq!(c.index_property("items", "n").await.unwrap(), 0);
    let filtered = c
        .search(
            VectorSearch {
                collection: "items".into(),
                vector: vec![0.0, 1.0, 0.0],
                k: 5,
                filter: Some(Filter::parse(r#"{"n": {"$lt": 2}}"#).unwrap()),
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        filtered.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    for (coll, prop) in [("nope", "n"), ("items", "a b"), ("items", "")] {
        let e = c.index_property(coll, prop).await.unwrap_err();
        assert!(
            matches!(
                e,
                vektagraf::proto::Error::NotFound { .. }
                    | vektagraf::proto::Error::InvalidArgument { .. }
            ),
            "{coll}.{prop}: {e:?}"
        );
    }
    // Listed, then dropped: the search gives the same answer by reading
    // the collection, and a second drop is NotFound.
    let listed = c.indexes(None).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|i| (i.collection.as_str(), i.property.as_str()))
            .collect::<Vec<_>>(),
        [("items", "n")]
    );
    assert_eq!(c.indexes(Some("items")).await.unwrap(), listed);
    assert!(matches!(
        c.indexes(Some("nope")).await.unwrap_err(),
        vektagraf::proto::Error::NotFound { .. }
    ));
    for (coll, prop) in [("nope", "n"), ("items", "a b"), ("items", "m")] {
        let e = c.drop_index(coll, prop).await.unwrap_err();
        assert!(
            matches!(
                e,
                vektagraf::proto::Error::NotFound { .. }
                    | vektagraf::proto::Error::InvalidArgument { .. }
            ),
            "{coll}.{prop}: {e:?}"
        );
    }
    assert_eq!(c.drop_index("items", "n").await.unwrap(), 252);
    assert!(c.indexes(None).await.unwrap().is_empty());
    assert!(matches!(
        c.drop_index("items", "n").await.unwrap_err(),
        vektagraf::proto::Error::NotFound { .. }
    ));
    let unindexed = c
        .search(
            VectorSearch {
                collection: "items".into(),
                vector: vec![0.0, 1.0, 0.0],
                k: 5,
                filter: Some(Filter::parse(r#"{"n": {"$lt": 2}}"#).unwrap()),
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(unindexed, filtered);
    // A batch of searches: each answer as the single search's, in order;
    // more than MAX_SEARCH_BATCH is refused.
    let one = |v: Vec<f32>, k: u32, filter: Option<&str>| VectorSearch {
        collection: "items".into(),
        vector: v,
        k,
        filter: filter.map(|f| Filter::parse(f).unwrap()),
    };
    let batch = vec![
        one(vec![0.9, 0.1, 0.0], 3, None),
        one(vec![0.0, 1.0, 0.0], 5, Some(r#"{"n": {"$lt": 2}}"#)),
        one(vec![0.1, 0.2, 0.9], 1, None),
    ];
    let lists = c.search_batch(batch.clone(), false).await.unwrap();
    assert_eq!(lists.len(), 3);
    for (s, hits) in batch.into_iter().zip(lists) {
        assert_eq!(hits, c.search(s, false).await.unwrap());
    }
    let too_many = vec![one(vec![0.0, 1.0, 0.0], 1, None); vektagraf::db::MAX_SEARCH_BATCH + 1];
    assert!(matches!(
        c.search_batch(too_many, false).await.unwrap_err(),
        vektagraf::proto::Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        c.search_batch(vec![one(vec![1.0], 1, None)], false)
            .await
            .unwrap_err(),
        vektagraf::proto::Error::DimensionMismatch { .. }
    ));
    let hits = c
        .search(
            VectorSearch {
                collection: "items".into(),
                vector: vec![0.9, 0.1, 0.0],
                k: 1,
                filter: None,
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].id, "a");
    let nodes = c
        .traverse(Traverse {
            start: "a".into(),
            direction: Direction::Out,
            labels: vec![],
            max_depth: 2,
            max_nodes: 5,
        })
        .await
        .unwrap();
    assert_eq!(nodes[0].id, "b");
    assert_eq!(
        c.scan("items", Some("o5"), 3)
            .await
            .unwrap()
            .iter()
            .map(|o| o.id.clone())
            .collect::<Vec<_>>(),
        vec!["o50", "o51", "o52"]
    );
    c.delete("b").await.unwrap();
    assert!(c.get("b").await.unwrap().is_none());
    c.can_perform(OperationType::Write).await.unwrap();
    let u = c.usage(None).await.unwrap();
    assert_eq!(u.tenant_id, "acme");
    assert_eq!(u.storage.objects, 251);
    // Many requests in flight on one connection.
    let mut tasks = Vec::new();
    let c = std::sync::Arc::new(c);
    for i in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.get(&format!("o{i}")).await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_bind_the_tenant_and_bad_credentials_get_typed_errors() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key_a = tenant_key(&admin, "ta", None).await;
    let key_b = tenant_key(&admin, "tb", None).await;
    let a = client(&node, &key_a).await.unwrap();
    let b = client(&node, &key_b).await.unwrap();
    for c in [&a, &b] {
        c.create_collection(CollectionSpec::vectors("items", 2))
            .await
            .unwrap();
    }
    b.put(
        NewObject::new("items", "secret", serde_json::json!({"x": 1})).with_vector(vec![1.0, 1.0]),
    )
    .await
    .unwrap();
    b.put(NewObject::new("items", "s2", serde_json::json!({})))
        .await
        .unwrap();
    b.transaction(vec![WriteOp::PutEdge(vektagraf::proto::Edge {
        from: "secret".into(),
        label: "l".into(),
        to: "s2".into(),
        properties: Default::default(),
    })])
    .await
    .unwrap();

    // Tenant A's key on B's ids, for every operation type.
    assert!(a.get("secret").await.unwrap().is_none());
    assert!(matches!(
        a.update("secret", serde_json::json!({"x": 2}), None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(a
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 10
        })
        .await
        .unwrap()
        .is_empty());
    assert!(a
        .search(
            VectorSearch {
                collection: "items".into(),
                vector: vec![1.0, 1.0],
                k: 5,
                filter: None
            },
            false
        )
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        a.traverse(Traverse {
            start: "secret".into(),
            direction: Direction::Both,
            labels: vec![],
            max_depth: 2,
            max_nodes: 5
        })
        .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        a.usage(Some("tb")).await,
        Err(Error::CrossTenantAccess { .. })
    ));
    assert_eq!(b.get("secret").await.unwrap().unwrap().properties.0["x"], 1);

    // An admin key reaches no data; a tenant key manages nothing.
    assert!(matches!(
        admin.get("secret").await,
        Err(Error::PermissionDenied { .. })
    ));
    assert!(matches!(
        a.list_tenants().await,
        Err(Error::PermissionDenied { .. })
    ));

    // No credentials, a bad key, a revoked key, a read-only key writing.
    assert!(matches!(
        client(
            &node,
            "vk_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000"
        )
        .await,
        Err(Error::Unauthenticated { .. })
    ));
    assert!(matches!(
        client(&node, "not-a-key").await,
        Err(Error::Unauthenticated { .. })
    ));
    let (ro_key, ro_info) = admin
        .create_key(
            KeyKind::Tenant,
            Some("tb"),
            Some("u"),
            Some(vec![OperationType::Read, OperationType::Query]),
        )
        .await
        .unwrap();
    let ro = client(&node, &ro_key).await.unwrap();
    assert!(ro.get("secret").await.unwrap().is_some());
    assert!(matches!(
        ro.put(NewObject::new("items", "z", serde_json::json!({})))
            .await,
        Err(Error::PermissionDenied { .. })
    ));
    admin.revoke_key(&ro_info.key_id).await.unwrap();
    assert!(
        matches!(ro.get("secret").await, Err(Error::Unauthenticated { .. })),
        "a revoked key fails on its next request"
    );
    let (rotated, _) = admin
        .rotate_key(
            &client(&node, &key_b)
                .await
                .unwrap()
                .principal()
                .unwrap()
                .key_id,
        )
        .await
        .unwrap();
    assert!(matches!(
        b.get("secret").await,
        Err(Error::Unauthenticated { .. })
    ));
    assert!(client(&node, &rotated)
        .await
        .unwrap()
        .get("secret")
        .await
        .unwrap()
        .is_some());
    let raw = raw_connection(&node, ALPN).await.unwrap();
    let r = raw_request(
        &raw,
        &Envelope::new(1, Request::Get("secret".into()))
            .to_frame()
            .unwrap(),
    )
    .await;
    assert!(
        matches!(r, Response::Error(Error::Unauthenticated { .. })),
        "{r:?}"
    );

    // A wrong ALPN never gets a connection.
    assert!(raw_connection(&node, b"http/1.1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_typed_errors_and_the_node_keeps_serving() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let conn = raw_connection(&node, ALPN).await.unwrap();
    // An oversized length prefix: refused from the prefix, nothing more is read.
    let r = raw_request(&conn, &[0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]).await;
    assert!(
        matches!(&r, Response::Error(Error::Protocol { reason }) if reason.contains("exceeds")),
        "{r:?}"
    );
    // Garbage.
    let r = raw_request(&conn, &[0, 0, 0, 5, 1, 0xFF, 0xFF, 0xFF, 0xFF]).await;
    assert!(
        matches!(r, Response::Error(Error::Protocol { .. })),
        "{r:?}"
    );
    // Truncated: the prefix promises more than arrives.
    let r = raw_request(&conn, &[0, 0, 0, 50, 1, 2]).await;
    assert!(
        matches!(&r, Response::Error(Error::Protocol { reason }) if reason.contains("truncated")),
        "{r:?}"
    );
    // An unknown version.
    let v9 = vektagraf::codec::encode(&Envelope {
        version: vektagraf::proto::wire::WIRE_VERSION + 1,
        request_id: 1,
        body: Request::Ping,
        leader: None,
    })
    .unwrap();
    let mut frame = (v9.len() as u32).to_be_bytes().to_vec();
    frame.extend(v9);
    let r = raw_request(&conn, &frame).await;
    assert!(
        matches!(&r, Response::Error(Error::Protocol { reason }) if reason.contains("version")),
        "{r:?}"
    );
    // Trailing bytes after the envelope.
    let mut ping = vektagraf::codec::encode(&Envelope::new(3, Request::Ping)).unwrap();
    ping.push(0);
    let mut frame = (ping.len() as u32).to_be_bytes().to_vec();
    frame.extend(ping);
    assert!(matches!(
        raw_request(&conn, &frame).await,
        Response::Error(Error::Protocol { .. })
    ));
    // The same connection, and other clients, still work.
    assert_eq!(
        raw_request(&conn, &Envelope::new(4, Request::Ping).to_frame().unwrap()).await,
        Response::Pong
    );
    admin.ping().await.unwrap();
    assert!(admin.list_tenants().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_call_is_retried_by_the_driver_until_the_window_allows_it() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = tenant_key(&admin, "slow", None).await;
    let mut cfg = admin.get_tenant("slow").await.unwrap();
    cfg.rate_limit.max_requests = 3;
    cfg.rate_limit.burst_allowance = 0;
    cfg.rate_limit.sliding_window = false;
    cfg.rate_limit.time_window = vektagraf::tenant::Window(Duration::from_secs(2));
    admin
        .update_tenant(
            "slow",
            vektagraf::tenant::TenantUpdate {
                rate_limit: Some(cfg.rate_limit),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut o = ClientOptions::new(vec![node.addr], &key, &node.cert).unwrap();
    o.max_retries = 0;
    let strict = Client::connect(o.clone()).await.unwrap();
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = strict.get("x").await {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("the limit fires");
    assert!(
        matches!(&e, Error::LimitExceeded(l) if l.kind == LimitKind::Rate && l.retry_after_ms.is_some()),
        "{e:?}"
    );
    o.max_retries = 5;
    o.base_delay = Duration::from_millis(50);
    let patient = Client::connect(o).await.unwrap();
    patient.get("x").await.expect("retried after retry_after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_every_operation() {
    let node = start_node();
    let dir = tempfile::tempdir().unwrap();
    let run = |key: &str, args: &[&str]| -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_vektagraf"))
            .args(["--addr", &node.addr.to_string(), "--ca"])
            .arg(&node.cert)
            .args(["--key", key, "--output", "json"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let admin = node.admin_key.clone();
    let ok = |r: (bool, String, String)| {
        assert!(r.0, "stdout: {}\nstderr: {}", r.1, r.2);
        r.1
    };
    ok(run(
        &admin,
        &["tenant", "create", "cli_t", "--tier", "starter"],
    ));
    assert!(ok(run(&admin, &["tenant", "list"])).contains("cli_t"));
    ok(run(&admin, &["user", "create", "cli_t", "ann"]));
    // With --output json, one JSON document: the key and its facts.
    let created: serde_json::Value = serde_json::from_str(&ok(run(
        &admin,
        &["key", "create", "--tenant", "cli_t", "--user", "ann"],
    )))
    .unwrap();
    assert_eq!(created["tenant_id"], "cli_t");
    let key = created["api_key"].as_str().unwrap().to_string();
    ok(run(&key, &["collection", "create", "docs", "--dim", "2"]));
    ok(run(
        &key,
        &[
            "object",
            "put",
            "docs",
            "d1",
            "--json",
            r#"{"t": 1}"#,
            "--vector",
            "[1, 0]",
        ],
    ));
    assert!(ok(run(&key, &["object", "get", "d1"])).contains("\"t\": 1"));
    let jsonl = dir.path().join("in.jsonl");
    std::fs::write(
        &jsonl,
        (0..20)
            .map(|i| {
                format!(
                    "{{\"id\": \"j{i}\", \"properties\": {{\"i\": {i}}}, \"vector\": [0, {i}]}}\n"
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    ok(run(
        &key,
        &["import", jsonl.to_str().unwrap(), "--collection", "docs"],
    ));
    assert!(ok(run(
        &key,
        &["query", "docs", "--filter", r#"{"i": {"$gte": 18}}"#]
    ))
    .contains("j19"));
    assert!(ok(run(&key, &["collection", "index", "docs", "i"])).contains("21 objects read"));
    let hits = ok(run(
        &key,
        &[
            "search",
            "docs",
            "--vector",
            "[0, 5]",
            "--k",
            "2",
            "--filter",
            r#"{"i": {"$gte": 18}}"#,
        ],
    ));
    assert!(hits.contains("j18") && !hits.contains("j5"), "{hits}");
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(run(&key, args))).unwrap()
    };
    assert_eq!(
        json(&["collection", "list"])[0]["indexed_properties"],
        serde_json::json!(["i"])
    );
    assert_eq!(
        json(&["collection", "indexes"]),
        serde_json::json!([{"collection": "docs", "property": "i"}])
    );
    // Two vectors: one batch request, rows tagged with their query.
    let rows = json(&[
        "search", "docs", "--vector", "[1, 0]", "--vector", "[0, 5]", "--k", "1",
    ]);
    assert_eq!(rows[0]["query"], 1);
    assert_eq!(rows[0]["id"], "d1");
    assert_eq!(rows[1]["query"], 2);
    assert!(
        ok(run(&key, &["collection", "drop-index", "docs", "i"])).contains("dropped index docs.i")
    );
    assert_eq!(json(&["collection", "indexes"]), serde_json::json!([]));
    assert!(ok(run(
        &key,
        &["search", "docs", "--vector", "[1, 0]", "--k", "1"]
    ))
    .contains("d1"));
    ok(run(&key, &["edge", "put", "d1", "next", "j1"]));
    assert!(ok(run(&key, &["traverse", "d1"])).contains("j1"));
    let export = dir.path().join("out.jsonl");
    ok(run(
        &key,
        &["export", "docs", "--out", export.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read_to_string(&export).unwrap().lines().count(),
        21
    );
    ok(run(&key, &["object", "delete", "d1"]));
    assert!(ok(run(&admin, &["tenant", "usage", "cli_t"])).contains("\"objects\": 20"));
    // Errors say what went wrong and what to do.
    let (success, _, err) = run(&key, &["tenant", "list"]);
    assert!(
        !success && err.contains("permission denied") && err.contains("hint"),
        "{err}"
    );
    let (success, _, err) = run("vk_bad", &["ping"]);
    assert!(!success && err.contains("unauthenticated"), "{err}");
    ok(run(&admin, &["tenant", "delete", "cli_t"]));
    let _ = Path::new(&node.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_big_for_one_frame_gets_a_typed_error_and_the_connection_serves_on() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = tenant_key(&admin, "big", None).await;
    let c = client(&node, &key).await.unwrap();
    c.create_collection(CollectionSpec::plain("blobs"))
        .await
        .unwrap();
    // 20 objects of 1 MB: each fits a frame, all 20 (20 MB) do not.
    let blob = "y".repeat(1 << 20);
    for i in 0..20 {
        c.put(NewObject::new(
            "blobs",
            &format!("b{i:02}"),
            serde_json::json!({ "blob": blob }),
        ))
        .await
        .unwrap();
    }
    match c.scan("blobs", None, 100).await {
        Err(Error::LimitExceeded(l)) => {
            assert_eq!(l.kind, LimitKind::ResultSize, "{l:?}");
            assert_eq!(l.limit, vektagraf::proto::wire::MAX_FRAME_BYTES as u64);
            assert!(l.requested > l.limit, "{l:?}");
        }
        other => panic!("expected a result-size error, got {other:?}"),
    }
    // The same connection serves the next request, and a page that fits.
    let page = c.scan("blobs", None, 5).await.unwrap();
    assert_eq!(page.len(), 5);
}
