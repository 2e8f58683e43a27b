//! `vektagraf bench shares`: weighted fair shares of a saturated node
//! (C2). Tenants of each priority flood one node (few admission slots,
//! many tasks each) with the same query for a while; the bench prints
//! each tenant's admitted rate, its part of what was admitted, and the
//! part its share implies (its share over the sum of the contending
//! tenants' shares), side by side.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::share;
use crate::proto::{CollectionSpec, NewObject, OperationType, Query};
use crate::tenant::Priority;
use crate::{Database, NodeConfig, TenantConfig};

/// Bench options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scratch directory (wiped first).
    pub data: PathBuf,
    /// Seconds per measurement.
    pub seconds: u64,
    /// The node's admission slots.
    pub slots: usize,
    /// Tasks per tenant.
    pub tasks: usize,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Runs the bench and prints its table.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&o.data);
    let mut cfg = NodeConfig::with_data_dir(&o.data);
    cfg.limits.max_in_flight = o.slots.max(1);
    cfg.limits.max_queued = (o.tasks * 8).max(64);
    cfg.limits.queue_timeout_ms = 30_000;
    let db = Database::open(&o.data, cfg).await.map_err(err)?;
    let all = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];
    let mut sessions = Vec::new();
    for p in all {
        let id = format!("{p:?}").to_lowercase();
        let mut c = TenantConfig::for_tier(&db.tiers(), &id, &id, "tier4", serde_json::json!({}))
            .map_err(err)?;
        c.request_limit.priority = p;
        c.request_limit.concurrent_limit = 10_000;
        c.rate_limit.max_requests = 100_000_000;
        for op in OperationType::ALL {
            c.rate_limit.operation_types.insert(op, 0);
        }
        c.custom_settings
            .0
            .insert("cache_max_entries".into(), serde_json::json!(0));
        db.create_tenant(c).await.map_err(err)?;
        db.create_user(&id, "u").await.map_err(err)?;
        let s = Arc::new(db.session(&id, "u").await.map_err(err)?);
        s.create_collection(CollectionSpec::plain("items"))
            .await
            .map_err(err)?;
        for i in 0..200 {
            s.put(NewObject::new(
                "items",
                &format!("o{i}"),
                serde_json::json!({ "i": i }),
            ))
            .await
            .map_err(err)?;
        }
        sessions.push((p, s));
    }
    println!(
        "vektagraf bench shares: {} admission slots, {} tasks per tenant, {} s per row, a 200-row query each",
        o.slots, o.tasks, o.seconds
    );
    println!(
        "{:<30} {:<9} {:>10} {:>9} {:>9} {:>9}",
        "contending", "tenant", "served/s", "got", "share", "p99 ms"
    );
    let rows: [&[usize]; 3] = [&[0, 3], &[1, 3], &[0, 1, 2, 3]];
    for row in rows {
        let names: Vec<String> = row
            .iter()
            .map(|i| format!("{:?}", sessions[*i].0).to_lowercase())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for &i in row {
            let served = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..o.tasks {
                let (s, stop, served) = (sessions[i].1.clone(), stop.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let q = Query {
                            collection: "items".into(),
                            filter: None,
                            limit: 200,
                        };
                        if s.query(q).await.is_ok() {
                            served.fetch_add(1, Ordering::Relaxed);
                            lat.push(t.elapsed());
                        }
                    }
                    lat
                }));
            }
            handles.push((i, served, tasks));
        }
        tokio::time::sleep(Duration::from_secs(o.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut results = Vec::new();
        for (i, served, tasks) in handles {
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap_or_default());
            }
            lat.sort();
            let p99 = lat
                .get(lat.len().saturating_sub(1) * 99 / 100)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            results.push((i, served.load(Ordering::Relaxed), p99));
        }
        let total: u64 = results.iter().map(|r| r.1).sum();
        let shares: f64 = row.iter().map(|i| share(sessions[*i].0)).sum();
        for (i, n, p99) in results {
            let p = sessions[i].0;
            println!(
                "{:<30} {:<9} {:>10.0} {:>8.1}% {:>8.1}% {:>9.1}",
                names.join("+"),
                format!("{p:?}").to_lowercase(),
                n as f64 / o.seconds as f64,
                n as f64 * 100.0 / total.max(1) as f64,
                share(p) * 100.0 / shares,
                p99
            );
        }
    }
    db.close().await.map_err(err)?;
    Ok(())
}
