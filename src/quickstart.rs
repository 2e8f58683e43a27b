//! The embedded quickstart: two tenants on two tiers, every operation type,
//! a rate limit and a storage limit, and the usage report.

use std::path::Path;

use anyhow::Context;
use vektagraf::proto::{
    CollectionSpec, Direction, Error, Filter, IndexKind, LimitKind, Metric, NewObject,
    OperationType, Query, Traverse, VectorSearch, WriteOp,
};
use vektagraf::tenant::TenantUpdate;
use vektagraf::{Database, NodeConfig, TenantConfig};

fn vec8(seed: u64) -> Vec<f32> {
    (0..8)
        .map(|i| ((seed * 31 + i * 7) % 17) as f32 / 17.0)
        .collect()
}

pub async fn run(data: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    if data.exists() {
        std::fs::remove_dir_all(data).with_context(|| format!("wiping {}", data.display()))?;
    }
    let cfg = NodeConfig::load(config)?;
    let db = Database::open(data, cfg).await?;
    println!("== opened a node at {}", data.display());

    // Two tenants on two tiers (standard names map onto tier presets).
    let acme = TenantConfig::for_tier(
        &db.tiers(),
        "acme_corp",
        "ACME Corporation",
        "business",
        serde_json::json!({"industry": "technology"}),
    )?;
    let startup = TenantConfig::for_tier(
        &db.tiers(),
        "startup_inc",
        "Startup Inc",
        "starter",
        serde_json::json!({"industry": "fintech"}),
    )?;
    for t in [acme, startup] {
        let t = db.create_tenant(t).await?;
        println!(
            "created tenant {} on {} (custom_settings {})",
            t.tenant_id,
            t.tier,
            serde_json::to_string(&t.custom_settings)?
        );
    }
    db.create_user("acme_corp", "alice").await?;
    db.create_user("startup_inc", "sam").await?;
    let a = db.session("acme_corp", "alice").await?;
    let s = db.session("startup_inc", "sam").await?;

    // Data: a vector collection, objects, edges.
    a.create_collection(
        CollectionSpec::vectors("products", 8)
            .metric(Metric::Cosine)
            .index(IndexKind::Hnsw {
                m: 16,
                ef_search: 64,
            }),
    )
    .await?;
    let mut ops = Vec::new();
    for i in 0..20u64 {
        let cat = ["shoes", "hats", "bags"][i as usize % 3];
        ops.push(WriteOp::Put(
            NewObject::new("products", &format!("p{i}"), serde_json::json!({"name": format!("product {i}"), "price": 10 + i * 5, "category": cat}))
                .with_vector(vec8(i)),
        ));
    }
    let results = a.batch(ops).await;
    println!(
        "write (batch): {} objects, {} ok",
        results.len(),
        results.iter().filter(|r| r.is_ok()).count()
    );
    a.transaction(vec![
        WriteOp::PutEdge(vektagraf::proto::Edge {
            from: "p0".into(),
            label: "similar".into(),
            to: "p1".into(),
            properties: Default::default(),
        }),
        WriteOp::PutEdge(vektagraf::proto::Edge {
            from: "p1".into(),
            label: "similar".into(),
            to: "p2".into(),
            properties: Default::default(),
        }),
        WriteOp::PutEdge(vektagraf::proto::Edge {
            from: "p2".into(),
            label: "bundle".into(),
            to: "p3".into(),
            properties: Default::default(),
        }),
    ])
    .await?;
    println!("write (transaction): 3 edges");
    a.update("p0", serde_json::json!({"price": 9}), None)
        .await?;
    a.delete("p19").await?;

    // The five operation types.
    let p0 = a.get("p0").await?.context("p0 exists")?;
    println!("read: p0 = {}", serde_json::to_string(&p0.properties)?);
    let cheap = a
        .query(Query {
            collection: "products".into(),
            filter: Some(Filter::parse(
                r#"{"price": {"$lt": 40}, "category": {"$in": ["shoes", "bags"]}}"#,
            )?),
            limit: 10,
        })
        .await?;
    println!(
        "query: price < 40 and category in [shoes, bags] -> {:?}",
        cheap.iter().map(|o| &o.id).collect::<Vec<_>>()
    );
    let hits = a
        .vector_search_ids(VectorSearch {
            collection: "products".into(),
            vector: vec8(3),
            k: 3,
            filter: Some(Filter::eq("category", "shoes")),
        })
        .await?;
    println!(
        "vector_search: near p3 among shoes -> {:?}",
        hits.iter()
            .map(|h| format!("{} ({:.3})", h.id, h.score))
            .collect::<Vec<_>>()
    );
    let nodes = a
        .traverse(Traverse {
            start: "p0".into(),
            direction: Direction::Out,
            labels: vec![],
            max_depth: 3,
            max_nodes: 10,
        })
        .await?;
    println!(
        "graph_traverse: from p0 -> {:?}",
        nodes
            .iter()
            .map(|n| format!("{}@{} via {}", n.id, n.depth, n.label))
            .collect::<Vec<_>>()
    );

    // Isolation: the startup tenant cannot see acme's ids.
    s.create_collection(CollectionSpec::plain("notes")).await?;
    println!(
        "isolation: startup_inc get(\"p0\") -> {:?}",
        s.get("p0").await?.map(|o| o.id)
    );
    match db.session("acme_corp", "sam").await {
        Err(e) => println!("isolation: sam on acme_corp -> {e}"),
        Ok(_) => anyhow::bail!("sam must not reach acme_corp"),
    }

    // A rate limit: the starter tier allows 50 writes per minute.
    let mut n = 0;
    let err = loop {
        match s
            .put(NewObject::new(
                "notes",
                &format!("n{n}"),
                serde_json::json!({"text": "hello"}),
            ))
            .await
        {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        if n > 1000 {
            anyhow::bail!("rate limit never fired");
        }
    };
    println!("rate limit after {n} writes: {err}");
    assert!(matches!(
        err.limit().map(|l| l.kind),
        Some(LimitKind::OperationRate(OperationType::Write)) | Some(LimitKind::Rate)
    ));
    println!(
        "  can_perform_operation(write) -> {:?}",
        s.can_perform_operation(OperationType::Write)
            .err()
            .map(|e| e.to_string())
    );

    // A storage limit: lower acme's max_objects live, then write past it.
    let mut acme_cfg = db.get_tenant("acme_corp").await?;
    acme_cfg.storage_limit.max_objects = 25;
    db.update_tenant(
        "acme_corp",
        TenantUpdate {
            storage_limit: Some(acme_cfg.storage_limit),
            ..Default::default()
        },
    )
    .await?;
    let mut i = 100;
    let err: Error = loop {
        match a
            .put(
                NewObject::new(
                    "products",
                    &format!("p{i}"),
                    serde_json::json!({"price": i}),
                )
                .with_vector(vec8(i)),
            )
            .await
        {
            Ok(r) => {
                for w in r.warnings {
                    println!("  warning: {w}");
                }
                i += 1
            }
            Err(e) => break e,
        }
    };
    println!("storage limit after {} more objects: {err}", i - 100);

    // Usage.
    for u in db.all_usage().await? {
        println!("usage {}: {}", u.tenant_id, serde_json::to_string(&u)?);
    }
    db.close().await?;
    println!("== closed cleanly");
    Ok(())
}
