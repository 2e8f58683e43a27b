//! Dynamic limits with an audit trail (A5), on a real node over QUIC:
//! every change of a tenant's config is audited (who, when, which field,
//! old and new value, why) and survives a kill -9; the opt-in policy
//! raises a storage limit used past 80% by x1.5, never past its tier's
//! ceiling; the log is bounded and only admin keys read it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::node::{client, start_node, start_node_configured, Node};
use vektagraf::client::Client;
use vektagraf::proto::wire::KeyKind;
use vektagraf::proto::{AuditEntry, CollectionSpec, Error, LimitKind, NewObject};
use vektagraf::tenant::TenantUpdate;
use vektagraf::{TenantConfig, Tiers};

/// A tier1 tenant with room for `objects` objects, the policy on or off,
/// and a tenant key with a `docs` collection.
async fn small_tenant(admin: &Client, id: &str, objects: u64, auto_scale: bool) -> String {
    let mut cfg = TenantConfig::for_tier(
        &Tiers::default(),
        id,
        id,
        "tier1",
        serde_json::json!({ "auto_scale": auto_scale }),
    )
    .unwrap();
    cfg.storage_limit.max_objects = objects;
    admin.create_tenant(cfg).await.unwrap();
    admin.create_user(id, "u").await.unwrap();
    admin
        .create_key(KeyKind::Tenant, Some(id), Some("u"), None)
        .await
        .unwrap()
        .0
}

async fn put_n(node: &Node, key: &str, from: u64, to: u64) {
    let c = client(node, key).await.unwrap();
    if from == 0 {
        c.create_collection(CollectionSpec::plain("docs"))
            .await
            .unwrap();
    }
    for i in from..to {
        c.put(NewObject::new(
            "docs",
            &format!("d{i}"),
            serde_json::json!({ "i": i }),
        ))
        .await
        .unwrap();
    }
}

/// Waits (20 s at most) until `tenant`'s object limit is `want`.
async fn await_max_objects(admin: &Client, tenant: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = admin
            .get_tenant(tenant)
            .await
            .unwrap()
            .storage_limit
            .max_objects;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "max_objects of {tenant} is {got}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fields(entries: &[AuditEntry]) -> Vec<(&str, Option<&str>, Option<&str>)> {
    entries
        .iter()
        .map(|e| (e.field.as_str(), e.old.as_deref(), e.new.as_deref()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_change_is_audited_with_who_when_what_and_why_and_survives_a_kill_9() {
    let mut node = start_node();
    let admin = client(&node, &node.admin_key).await.unwrap();
    let me = format!("key:{}", admin.principal().unwrap().key_id);
    let before = vektagraf::util::now_ms();
    small_tenant(&admin, "acme", 10, false).await;
    let mut up = TenantUpdate {
        reason: Some("ticket 42: more room".into()),
        ..Default::default()
    };
    let mut storage = admin.get_tenant("acme").await.unwrap().storage_limit;
    storage.max_objects = 500;
    storage.max_vectors = 600;
    up.storage_limit = Some(storage);
    admin.update_tenant("acme", up).await.unwrap();
    // A change that changes nothing leaves nothing to audit.
    admin
        .update_tenant("acme", TenantUpdate::default())
        .await
        .unwrap();
    admin
        .update_tenant(
            "acme",
            TenantUpdate {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let log = admin.audit(Some("acme"), 100).await.unwrap();
    assert_eq!(
        fields(&log),
        [
            ("tenant", None, Some("\"tier1\"")),
            ("storage_limit.max_objects", Some("10"), Some("500")),
            ("storage_limit.max_vectors", Some("10000"), Some("600")),
            ("enabled", Some("true"), Some("false")),
        ]
    );
    assert!(log.iter().all(|e| e.actor == me && e.tenant_id == "acme"));
    assert!(log.iter().all(|e| e.at_ms >= before));
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert_eq!(log[0].reason, "created");
    assert_eq!(log[1].reason, "ticket 42: more room");
    assert_eq!(log[2].reason, "ticket 42: more room");
    assert_eq!(log[3].reason, "");
    // The newest N, oldest first.
    let last = admin.audit(Some("acme"), 2).await.unwrap();
    assert_eq!(last, log[2..]);

    drop(admin);
    node.kill9_and_restart();
    let admin = client(&node, &node.admin_key).await.unwrap();
    assert_eq!(admin.audit(Some("acme"), 100).await.unwrap(), log);
    // A deleted tenant's history stays, ending with its deletion.
    admin.delete_tenant("acme").await.unwrap();
    let after = admin.audit(Some("acme"), 100).await.unwrap();
    assert_eq!(after.len(), 5);
    assert_eq!(fields(&after[4..]), [("tenant", Some("\"tier1\""), None)]);
    assert_eq!(after[4].reason, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_raises_a_storage_limit_past_80_percent_by_half_up_to_the_tier_ceiling() {
    // tier1's ceiling: 20 objects.
    let tiers_dir = tempfile::tempdir().unwrap();
    let tiers = tiers_dir.path().join("tiers.toml");
    let text = vektagraf::tenant::DEFAULT_TIERS_TOML.replacen(
        "auto_scale    = { max_storage_bytes = 1073741824, max_objects = 100000, max_vectors = 100000 }",
        "auto_scale    = { max_storage_bytes = 1073741824, max_objects = 20, max_vectors = 100000 }",
        1,
    );
    assert_ne!(
        text,
        vektagraf::tenant::DEFAULT_TIERS_TOML,
        "tier1's ceiling line moved"
    );
    std::fs::write(&tiers, text).unwrap();
    let node = start_node_configured(
        &format!("tiers_file = {:?}", tiers.display().to_string()),
        "[auto_scale]\ncheck_ms = 150\ncooldown_ms = 300",
    );
    let admin = client(&node, &node.admin_key).await.unwrap();
    let grows = small_tenant(&admin, "grows", 10, true).await;
    let stays = small_tenant(&admin, "stays", 10, false).await;

    // 8 of 10 is 80%, not past it: no raise.
    put_n(&node, &grows, 0, 8).await;
    put_n(&node, &stays, 0, 9).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // ten looks
    assert_eq!(
        admin
            .get_tenant("grows")
            .await
            .unwrap()
            .storage_limit
            .max_objects,
        10
    );
    // 9 of 10: raised to 15; 13 of 15: x1.5 is 23, capped at 20.
    put_n(&node, &grows, 8, 9).await;
    await_max_objects(&admin, "grows", 15).await;
    put_n(&node, &grows, 9, 13).await;
    await_max_objects(&admin, "grows", 20).await;
    // At its ceiling it stays, and the limit holds there.
    put_n(&node, &grows, 13, 20).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        admin
            .get_tenant("grows")
            .await
            .unwrap()
            .storage_limit
            .max_objects,
        20
    );
    let c = client(&node, &grows).await.unwrap();
    let r = c
        .put(NewObject::new("docs", "d20", serde_json::json!({})))
        .await;
    assert!(
        matches!(&r, Err(Error::LimitExceeded(l)) if l.kind == LimitKind::Objects),
        "{r:?}"
    );

    let log = admin.audit(Some("grows"), 100).await.unwrap();
    let raises: Vec<&AuditEntry> = log.iter().filter(|e| e.actor == "auto_scale").collect();
    assert_eq!(
        raises
            .iter()
            .map(|e| (e.field.as_str(), e.old.as_deref(), e.new.as_deref()))
            .collect::<Vec<_>>(),
        [
            ("storage_limit.max_objects", Some("10"), Some("15")),
            ("storage_limit.max_objects", Some("15"), Some("20")),
        ]
    );
    assert!(
        raises[0].reason.contains("9 used of 10"),
        "{}",
        raises[0].reason
    );
    assert!(
        raises[1].reason.contains("ceiling 20"),
        "{}",
        raises[1].reason
    );

    // A tenant that did not opt in keeps its limit at 90%.
    assert_eq!(
        admin
            .get_tenant("stays")
            .await
            .unwrap()
            .storage_limit
            .max_objects,
        10
    );
    assert!(admin
        .audit(Some("stays"), 100)
        .await
        .unwrap()
        .iter()
        .all(|e| e.actor != "auto_scale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_bounded_per_tenant_and_only_admin_keys_read_it() {
    let node = start_node_configured("", "[audit]\nmax_entries_per_tenant = 3\ntrim_ms = 150");
    let admin = client(&node, &node.admin_key).await.unwrap();
    let key = small_tenant(&admin, "busy", 10, false).await;
    for n in 11..=15 {
        let mut s = admin.get_tenant("busy").await.unwrap().storage_limit;
        s.max_objects = n;
        admin
            .update_tenant(
                "busy",
                TenantUpdate {
                    storage_limit: Some(s),
                    reason: Some(format!("step {n}")),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    // Six entries made (the creation and five changes); the trim keeps
    // the newest three.
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = admin.audit(Some("busy"), 100).await.unwrap();
        if log.len() <= 3 || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        log.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        ["step 13", "step 14", "step 15"]
    );

    // A tenant key may not read it; a bad tenant id is a typed error.
    let c = client(&node, &key).await.unwrap();
    let r = c.audit(Some("busy"), 10).await;
    assert!(matches!(r, Err(Error::PermissionDenied { .. })), "{r:?}");
    let r = admin.audit(Some("bad/id"), 10).await;
    assert!(matches!(r, Err(Error::InvalidTenantId { .. })), "{r:?}");
    // A reason too long is refused and changes nothing.
    let r = admin
        .update_tenant(
            "busy",
            TenantUpdate {
                enabled: Some(false),
                reason: Some("x".repeat(2_000)),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
    assert!(admin.get_tenant("busy").await.unwrap().enabled);
    // Every tenant's: the newest, oldest first, within the page size.
    let all = admin.audit(None, 5_000).await.unwrap();
    assert!(all.len() <= vektagraf::db::MAX_AUDIT_PAGE);
    assert!(all.iter().all(|e| e.tenant_id == "busy"));
}
