//! Whole-tenant export and import on a real node over QUIC, through the
//! `vektagraf tenant export` / `tenant import` commands.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::node::{client, start_node, Node};

use vektagraf::client::Client;
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{
    CollectionSpec, Direction, Edge, Error, Metric, NewObject, Object, Properties, Traverse,
    WriteOp,
};

/// Runs the CLI against `node` with the admin key.
fn cli(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vektagraf"))
        .args(["--addr", &node.addr.to_string(), "--ca"])
        .arg(&node.cert)
        .args(["--key", &node.admin_key, "--output", "json"])
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn tenant_client(node: &Node, admin: &Client, tenant: &str, user: &str) -> Client {
    let key = admin
        .create_key(KeyKind::Tenant, Some(tenant), Some(user), None)
        .await
        .unwrap()
        .0;
    client(node, &key).await.unwrap()
}

/// Every object of the tenant, by collection and id.
async fn all_objects(c: &Client) -> Vec<Object> {
    let mut out = Vec::new();
    let mut colls = c.collections().await.unwrap();
    colls.sort_by(|a, b| a.name.cmp(&b.name));
    for coll in colls {
        let mut after: Option<String> = None;
        loop {
            let page = c.scan(&coll.name, after.as_deref(), 100).await.unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|o| o.id.clone());
            out.extend(page);
        }
    }
    out
}

/// Every edge, as traversals of depth 1 from each object.
async fn all_edges(c: &Client, objects: &[Object]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for o in objects {
        let nodes = c
            .traverse(Traverse {
                start: o.id.clone(),
                direction: Direction::Out,
                labels: vec![],
                max_depth: 1,
                max_nodes: 1000,
            })
            .await
            .unwrap();
        for n in nodes {
            out.push((o.id.clone(), n.label, n.id));
        }
    }
    out.sort();
    out
}

async fn fill_source(node: &Node, admin: &Client) -> Client {
    let mut cfg = vektagraf::TenantConfig::for_tier(
        &vektagraf::Tiers::default(),
        "acme",
        "ACME Corp",
        "business",
        serde_json::json!({"region": "eu-west", "max_batch_size": 50}),
    )
    .unwrap();
    cfg.storage_limit.max_objects = 5_000;
    cfg.rate_limit.max_requests = 100_000;
    admin.create_tenant(cfg).await.unwrap();
    for u in ["alice", "bob"] {
        admin.create_user("acme", u).await.unwrap();
    }
    let c = tenant_client(node, admin, "acme", "alice").await;
    c.create_collection(CollectionSpec::vectors("docs", 3).metric(Metric::Cosine))
        .await
        .unwrap();
    c.create_collection(CollectionSpec::plain("notes"))
        .await
        .unwrap();
    let mut ops = Vec::new();
    for i in 0..60u32 {
        let f = i as f32;
        ops.push(WriteOp::Put(
            NewObject::new("docs", &format!("d{i:03}"), serde_json::json!({"i": i, "t": format!("doc {i}"), "nested": {"x": [1, 2.5, null]}}))
                .with_vector(vec![f * 0.1 + 0.01, 1.0 / (f + 1.0), -f]),
        ));
    }
    for i in 0..25u32 {
        ops.push(WriteOp::Put(NewObject::new(
            "notes",
            &format!("n{i:03}"),
            serde_json::json!({"body": "ünïcode ✓", "i": i}),
        )));
    }
    for r in c.batch(ops).await {
        r.unwrap();
    }
    // Updates (updated_at moves, created_at stays), a delete (and its edges).
    std::thread::sleep(std::time::Duration::from_millis(5));
    c.update(
        "d005",
        serde_json::json!({"edited": true}),
        Some(vec![9.0, 8.0, 7.0]),
    )
    .await
    .unwrap();
    let mut edges = Vec::new();
    for i in 0..40u32 {
        edges.push(WriteOp::PutEdge(Edge {
            from: format!("d{:03}", i),
            label: if i % 2 == 0 {
                "cites".into()
            } else {
                "about".into()
            },
            to: if i % 3 == 0 {
                format!("n{:03}", i % 25)
            } else {
                format!("d{:03}", (i * 7 + 1) % 60)
            },
            properties: Properties::from_json(serde_json::json!({"w": i})).unwrap(),
        }));
    }
    c.transaction(edges).await.unwrap();
    c.delete("d007").await.unwrap();
    // Property indexes, filled from the objects above.
    assert_eq!(c.index_property("docs", "i").await.unwrap(), 59);
    assert_eq!(c.index_property("notes", "i").await.unwrap(), 25);
    // Some reads for the request counters.
    for id in ["d001", "n003", "missing"] {
        c.get(id).await.unwrap();
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_exported_and_imported_under_another_id_is_equal_and_a_tampered_file_fails() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let src = fill_source(&node, &admin).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.vkx");
    let file_s = file.to_str().unwrap();

    // Phase 1: export.
    let before = admin.usage(Some("acme")).await.unwrap();
    let o = cli(&node, &["tenant", "export", "acme", "--out", file_s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("migration mig-"),
        "{}",
        text(&o)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["manifest"]["counts"]["objects"], 84, "{summary}");
    assert_eq!(summary["manifest"]["counts"]["vectors"], 59);
    assert_eq!(summary["manifest"]["counts"]["collections"], 2);
    assert_eq!(summary["manifest"]["counts"]["property_indexes"], 2);
    assert!(summary["applied_index"].as_u64().unwrap() > 0);
    let edges_in_file = summary["manifest"]["counts"]["edges"].as_u64().unwrap();
    assert!(edges_in_file > 30 && edges_in_file < 40, "{summary}");
    let body = std::fs::read_to_string(&file).unwrap();
    assert!(!body.contains("vk_"), "no key material in the file");
    assert!(
        body.contains(r#"{"property_index":{"collection":"docs","property":"i"}}"#),
        "{body}"
    );

    // Phase 2: import under another id.
    let o = cli(
        &node,
        &["tenant", "import", file_s, "--as", "acme2", "--batch", "7"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["verified"], true);
    assert_eq!(s["tenant_id"], "acme2");

    // Counters first (the comparisons below are requests of their own).
    let after = admin.usage(Some("acme2")).await.unwrap();
    assert_eq!(after.storage.objects, before.storage.objects);
    assert_eq!(after.storage.vectors, before.storage.vectors);
    assert_eq!(after.storage.edges, before.storage.edges);
    assert_eq!(after.requests.by_operation, before.requests.by_operation);
    assert_eq!(after.requests.monthly, before.requests.monthly);
    assert!(before.requests.by_operation["write"] > 0);

    // Config (but the id), users, collections, objects, edges.
    let (a, b) = (
        admin.get_tenant("acme").await.unwrap(),
        admin.get_tenant("acme2").await.unwrap(),
    );
    let mut b_as_a = b.clone();
    b_as_a.tenant_id = "acme".into();
    assert_eq!(a, b_as_a);
    assert_eq!(b.custom_settings.0["region"], "eu-west");
    assert_eq!(
        admin.list_users("acme2").await.unwrap(),
        admin.list_users("acme").await.unwrap()
    );
    let dst = tenant_client(&node, &admin, "acme2", "bob").await;
    let mut ca = src.collections().await.unwrap();
    let mut cb = dst.collections().await.unwrap();
    ca.sort_by(|x, y| x.name.cmp(&y.name));
    cb.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(ca, cb);
    let oa = all_objects(&src).await;
    let ob = all_objects(&dst).await;
    assert_eq!(oa.len(), 84);
    assert_eq!(
        oa, ob,
        "objects differ (created_at, updated_at, vectors included)"
    );
    let d5 = ob.iter().find(|o| o.id == "d005").unwrap();
    assert!(d5.updated_at > d5.created_at);
    assert_eq!(d5.vector, Some(vec![9.0, 8.0, 7.0]));
    let ea = all_edges(&src, &oa).await;
    assert_eq!(ea.len() as u64, edges_in_file);
    assert_eq!(ea, all_edges(&dst, &ob).await);
    // Searches work on the imported vectors.
    let hits = dst
        .search(
            vektagraf::proto::VectorSearch {
                collection: "docs".into(),
                vector: vec![9.0, 8.0, 7.0],
                k: 1,
                filter: None,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(hits[0].id, "d005");
    // The imported tenant has the indexes (the verify step compared them
    // too): a second declaration reads nothing.
    assert_eq!(dst.index_property("docs", "i").await.unwrap(), 0);
    assert_eq!(dst.index_property("notes", "i").await.unwrap(), 0);
    assert_eq!(dst.index_property("notes", "body").await.unwrap(), 25);

    // Phase 3: a tampered file (one digit of one object's created_at).
    let first_object = body.find("{\"object\":").unwrap();
    let pos = first_object
        + body[first_object..].find("\"created_at\":").unwrap()
        + "\"created_at\":".len()
        + 3;
    let mut bytes = body.clone().into_bytes();
    bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
    let bad = dir.path().join("bad.vkx");
    std::fs::write(&bad, &bytes).unwrap();
    let o = cli(
        &node,
        &["tenant", "import", bad.to_str().unwrap(), "--as", "acme3"],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fails verification"), "{}", text(&o));
    assert!(err.contains("migration mig-"), "{}", text(&o));
    assert!(matches!(
        admin.get_tenant("acme3").await,
        Err(Error::TenantNotFound { .. })
    ));
    // The library names the failure by type.
    let e = vektagraf::migrate::check_file(&bad).unwrap_err();
    assert!(
        matches!(e, vektagraf::migrate::MigrateError::Checksum { .. }),
        "{e}"
    );

    // Phase 4: importing over an existing tenant is refused.
    let o = cli(&node, &["tenant", "import", file_s, "--as", "acme2"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes_where_it_stopped_without_duplicates() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let src = fill_source(&node, &admin).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.vkx");
    let file_s = file.to_str().unwrap();
    let o = cli(&node, &["tenant", "export", "acme", "--out", file_s]);
    assert!(o.status.success(), "{}", text(&o));

    // Stopped after 3 batches of 10 records.
    let o = cli(
        &node,
        &[
            "tenant",
            "import",
            file_s,
            "--as",
            "copy",
            "--batch",
            "10",
            "--stop-after-batches",
            "3",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped after 3 batches"),
        "{}",
        text(&o)
    );
    let mid = admin.usage(Some("copy")).await.unwrap();
    assert_eq!(mid.storage.objects, 30);
    let progress = dir.path().join("acme.vkx.import-copy.progress");
    assert!(progress.exists());

    // Run again: resumes after 30 records, same migration id, verified.
    let o = cli(
        &node,
        &["tenant", "import", file_s, "--as", "copy", "--batch", "10"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["resumed_after"], 30);
    assert_eq!(s["verified"], true);
    assert!(!progress.exists());
    let end = admin.usage(Some("copy")).await.unwrap();
    let source = admin.usage(Some("acme")).await.unwrap();
    assert_eq!(end.storage.objects, source.storage.objects);
    assert_eq!(end.storage.edges, source.storage.edges);
    let dst = tenant_client(&node, &admin, "copy", "alice").await;
    assert_eq!(all_objects(&src).await, all_objects(&dst).await);

    // An export cursor is closed when the export ends.
    let _ = Path::new(file_s);
    let o = cli(
        &node,
        &[
            "tenant",
            "export",
            "copy",
            "--out",
            dir.path().join("again.vkx").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !node.dir.join("exports").exists()
            || std::fs::read_dir(node.dir.join("exports")).unwrap().count() == 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_need_an_admin_key_and_since_exports_only_recent_objects() {
    let node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let src = fill_source(&node, &admin).await;
    // A tenant key may not export (not even its own tenant).
    let r = src
        .call(vektagraf::proto::wire::Request::ExportOpen(
            vektagraf::proto::migrate::ExportOpen {
                tenant_id: "acme".into(),
                since_ms: None,
            },
        ))
        .await;
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
    // --since: only the object written after the mark, and its edges.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mark = vektagraf::util::now_ms();
    std::thread::sleep(std::time::Duration::from_millis(20));
    src.update("d010", serde_json::json!({"late": 1}), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("since.vkx");
    let o = cli(
        &node,
        &[
            "tenant",
            "export",
            "acme",
            "--out",
            file.to_str().unwrap(),
            "--since",
            &mark.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["manifest"]["counts"]["objects"], 1, "{s}");
    let e = s["manifest"]["counts"]["edges"].as_u64().unwrap();
    assert!(e >= 1, "edges touching d010: {s}");
}
