//! Shared fixtures for the integration tests: a real node (RocksDB, FAISS,
//! openraft) in a temp dir, tenants with chosen limits.
#![allow(dead_code, clippy::unwrap_used)]

pub mod node;

use std::path::Path;

use vektagraf::proto::{CollectionSpec, NewObject, OperationType};
use vektagraf::{Database, NodeConfig, Session, TenantConfig};

/// A node config for tests: fast counter checkpoints.
pub fn config(dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::with_data_dir(dir);
    c.limits.quota_checkpoint_ms = 200;
    c
}

/// Opens a node in `dir`.
pub async fn open(dir: &Path) -> Database {
    Database::open(dir, config(dir)).await.expect("open")
}

/// A tenant config with generous limits, to be narrowed by each test.
pub fn roomy(db: &Database, id: &str) -> TenantConfig {
    let mut c =
        TenantConfig::for_tier(&db.tiers(), id, id, "tier4", serde_json::json!({})).unwrap();
    c.rate_limit.max_requests = 1_000_000;
    c.rate_limit.burst_allowance = 0;
    for op in OperationType::ALL {
        c.rate_limit.operation_types.insert(op, 0);
    }
    c
}

/// Creates a tenant with user "u" and returns a session.
pub async fn tenant(db: &Database, cfg: TenantConfig) -> Session {
    let id = cfg.tenant_id.clone();
    db.create_tenant(cfg).await.expect("create tenant");
    db.create_user(&id, "u").await.expect("create user");
    db.session(&id, "u").await.expect("session")
}

/// Creates collection `items` with 4-d vectors.
pub async fn items(s: &Session) {
    s.create_collection(CollectionSpec::vectors("items", 4))
        .await
        .expect("collection");
}

/// An object of `items`.
pub fn item(id: &str, n: f32) -> NewObject {
    NewObject::new(
        "items",
        id,
        serde_json::json!({"n": n, "tag": if n as i64 % 2 == 0 { "even" } else { "odd" }}),
    )
    .with_vector(vec![n, n * 0.5, 1.0, -n])
}

/// Sets up tracing once (RUST_LOG controls it).
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
