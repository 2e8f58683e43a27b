//! Tenant lifecycle, restarts, crashes and purges on a real node.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::time::Duration;

use common::*;
use vektagraf::proto::{Error, OperationType, Query, VectorSearch, WriteOp};
use vektagraf::tenant::TenantUpdate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_list_and_reject_bad_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let cfg = vektagraf::TenantConfig::for_tier(
        &db.tiers(),
        "acme",
        "ACME",
        "enterprise",
        serde_json::json!({"region": "eu"}),
    )
    .unwrap();
    db.create_tenant(cfg).await.unwrap();
    let got = db.get_tenant("acme").await.unwrap();
    assert_eq!(got.tier, vektagraf::tenant::Tier::Tier4);
    assert_eq!(got.custom_settings.0["backup_frequency"], "hourly");
    assert!(matches!(
        db.create_tenant(got.clone()).await,
        Err(Error::TenantExists { .. })
    ));
    for bad in ["", "Upper", "../x", "a b", &"x".repeat(65)] {
        let mut c = got.clone();
        c.tenant_id = bad.to_string();
        assert!(
            matches!(
                db.create_tenant(c).await,
                Err(Error::InvalidTenantId { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        db.get_tenant("nobody").await,
        Err(Error::TenantNotFound { .. })
    ));
    let up = db
        .update_tenant(
            "acme",
            TenantUpdate {
                name: Some("ACME Inc".into()),
                tier: Some(vektagraf::tenant::Tier::Tier1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(up.name, "ACME Inc");
    assert_eq!(
        up.rate_limit.max_requests,
        db.tiers()
            .limits(vektagraf::tenant::Tier::Tier1)
            .rate_limit
            .max_requests
    );
    assert_eq!(db.list_tenants().await.unwrap().len(), 1);
    db.close().await.unwrap();
    // The registry is persisted.
    let db = open(dir.path()).await;
    assert_eq!(db.get_tenant("acme").await.unwrap().name, "ACME Inc");
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_delete_no_key_of_the_tenant_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "doomed")).await;
    let keep = tenant(&db, roomy(&db, "keeper")).await;
    items(&s).await;
    items(&keep).await;
    let ops = (0..50)
        .map(|i| WriteOp::Put(item(&format!("o{i}"), i as f32)))
        .collect();
    assert!(s.batch(ops).await.iter().all(|r| r.is_ok()));
    s.put_edge("o1", "rel", "o2", serde_json::json!({}))
        .await
        .unwrap();
    keep.put(item("k", 1.0)).await.unwrap();
    let group = db.tenant_group("doomed").unwrap();
    let (reg, log, dir_exists) = db.footprint("doomed", group).unwrap();
    assert!(
        reg > 0 && log > 0 && dir_exists,
        "the tenant has a footprint before: {reg} {log} {dir_exists}"
    );

    db.delete_tenant("doomed").await.unwrap();
    assert_eq!(db.footprint("doomed", group).unwrap(), (0, 0, false));
    assert!(matches!(
        s.get("o1").await,
        Err(Error::Unavailable { .. }) | Err(Error::TenantNotFound { .. })
    ));
    assert!(matches!(
        db.session("doomed", "u").await,
        Err(Error::TenantNotFound { .. })
    ));
    assert!(
        keep.get("k").await.unwrap().is_some(),
        "other tenants are untouched"
    );
    db.close().await.unwrap();

    // Nothing comes back after a restart, and the id can be reused from scratch.
    let db = open(dir.path()).await;
    assert!(matches!(
        db.get_tenant("doomed").await,
        Err(Error::TenantNotFound { .. })
    ));
    let s = tenant(&db, roomy(&db, "doomed")).await;
    assert_eq!(s.usage().await.unwrap().storage.objects, 0);
    assert_ne!(
        db.tenant_group("doomed").unwrap(),
        group,
        "a new group id, never reused"
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_data_search_results_usage_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "durable")).await;
    s.create_collection(vektagraf::proto::CollectionSpec::vectors("items", 4).index(
        vektagraf::proto::IndexKind::Hnsw {
            m: 8,
            ef_search: 32,
        },
    ))
    .await
    .unwrap();
    let ops = (0..200)
        .map(|i| WriteOp::Put(item(&format!("o{i}"), i as f32)))
        .collect();
    assert!(s.batch(ops).await.iter().all(|r| r.is_ok()));
    for i in 0..20 {
        s.delete(&format!("o{}", i * 3)).await.unwrap();
    }
    s.put_edge("o1", "next", "o2", serde_json::json!({}))
        .await
        .unwrap();
    let search = VectorSearch {
        collection: "items".into(),
        vector: vec![30.0, 15.0, 1.0, -30.0],
        k: 10,
        filter: None,
    };
    let hits_before = s.vector_search_ids(search.clone()).await.unwrap();
    let objects_before = s
        .query(Query {
            collection: "items".into(),
            filter: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let usage_before = s.usage().await.unwrap();
    db.close().await.unwrap();

    let db = open(dir.path()).await;
    let s = db.session("durable", "u").await.unwrap();
    let usage_after = s.usage().await.unwrap();
    assert_eq!(usage_after.storage, usage_before.storage);
    assert_eq!(usage_after.requests.daily, usage_before.requests.daily);
    assert_eq!(usage_after.requests.monthly, usage_before.requests.monthly);
    assert_eq!(
        usage_after.requests.by_operation,
        usage_before.requests.by_operation
    );
    assert_eq!(s.vector_search_ids(search).await.unwrap(), hits_before);
    assert_eq!(
        s.query(Query {
            collection: "items".into(),
            filter: None,
            limit: 1000
        })
        .await
        .unwrap(),
        objects_before
    );
    assert_eq!(
        s.traverse(vektagraf::proto::Traverse {
            start: "o1".into(),
            direction: vektagraf::proto::Direction::Out,
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
async fn counters_survive_a_restart_and_keep_enforcing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut cfg = roomy(&db, "quota");
    cfg.request_limit.daily_limit = 10;
    let s = tenant(&db, cfg).await;
    items(&s).await;
    for _ in 0..7 {
        s.get("x").await.unwrap();
    }
    db.close().await.unwrap();
    let db = open(dir.path()).await;
    let s = db.session("quota", "u").await.unwrap();
    // 8 requests were made; the close waits for the reservation in flight
    // and then saves the exact count, so a restart resumes at exactly 8.
    assert_eq!(s.usage().await.unwrap().requests.daily, 8);
    s.get("x").await.unwrap();
    s.get("x").await.unwrap();
    assert!(
        matches!(s.get("x").await, Err(Error::LimitExceeded(l)) if l.kind == vektagraf::proto::LimitKind::Daily)
    );
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shard_actor_is_restarted_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let s = tenant(&db, roomy(&db, "phoenix")).await;
    items(&s).await;
    s.put(item("a", 1.0)).await.unwrap();
    db.inject_shard_failure("phoenix").unwrap();
    // Wait for the supervisor to notice and restart the shard.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while db.shard_restarts("phoenix").await.unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "shard was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = None;
    while got.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "shard never served again"
        );
        got = s.get("a").await.ok().flatten();
    }
    s.put(item("b", 2.0)).await.unwrap();
    assert_eq!(s.usage().await.unwrap().storage.objects, 2);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_write_loop_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vektagraf"))
        .args(["write-loop", "--data"])
        .arg(dir.path())
        .args(["--tenant", "crash", "--writers", "16"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let mut lines = std::io::BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_string());
            if acked.len() >= 1500 {
                break;
            }
        }
    }
    // SIGKILL, by the PID we started, in the middle of the loop.
    unsafe_kill(child.id());
    let _ = child.wait();
    // Collect acks that were already in the pipe.
    for line in lines.map_while(Result::ok) {
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_string());
        }
    }
    assert!(
        acked.len() >= 1500,
        "child acknowledged {} writes",
        acked.len()
    );

    let db = open(dir.path()).await;
    let s = db.session("crash", "writer").await.unwrap();
    let mut missing = Vec::new();
    for id in &acked {
        if s.get(id).await.unwrap().is_none() {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let usage = s.usage().await.unwrap();
    assert!(usage.storage.objects >= acked.len() as u64);
    // Search agrees with storage after recovery (the index was rebuilt).
    let hits = s
        .vector_search_ids(VectorSearch {
            collection: "items".into(),
            vector: vec![0.0, 0.0, 1.0, 0.5],
            k: 5,
            filter: None,
        })
        .await
        .unwrap();
    assert_eq!(hits.len(), 5);
    let _ = OperationType::Read;
    db.close().await.unwrap();
}

fn unsafe_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
