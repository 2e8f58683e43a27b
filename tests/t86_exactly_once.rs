//! Writes whose answers are lost are retried by the driver and apply
//! exactly once, on a real node process over QUIC.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::node::{raw_connection, raw_request, start_node, Node};
use vektagraf::client::{Client, ClientOptions};
use vektagraf::proto::wire::{Envelope, KeyKind, Request, Response, ALPN};
use vektagraf::proto::{CollectionSpec, NewObject, OperationType, WriteOp, WriteOutcome};

async fn tenant_client(node: &Node, lose_answers: u32) -> (Client, String) {
    let admin = connect(node, &node.admin_key, 0).await;
    if admin.get_tenant("once").await.is_err() {
        admin
            .create_tenant_for_tier("once", "once", "enterprise")
            .await
            .unwrap();
        admin.create_user("once", "u").await.unwrap();
    }
    let (key, _) = admin
        .create_key(KeyKind::Tenant, Some("once"), Some("u"), None)
        .await
        .unwrap();
    (connect(node, &key, lose_answers).await, key)
}

async fn connect(node: &Node, key: &str, lose_answers: u32) -> Client {
    let mut o = ClientOptions::new(vec![node.addr], key, &node.cert).unwrap();
    o.request_timeout = Duration::from_secs(10);
    o.base_delay = Duration::from_millis(10);
    o.fault_lose_write_answers = lose_answers;
    Client::connect(o).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_is_retried_and_returns_its_first_answer() {
    let node = start_node();
    let (setup, _) = tenant_client(&node, 0).await;
    setup
        .create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    // Every write's first answer is thrown away after the node ran it.
    let (c, _) = tenant_client(&node, 1_000).await;
    for i in 0..20 {
        let w = c
            .put(NewObject::new(
                "docs",
                &format!("d{i}"),
                serde_json::json!({"i": i}),
            ))
            .await
            .unwrap();
        // Applied twice, the retry would have answered Updated.
        assert_eq!(w.outcomes, vec![WriteOutcome::Created], "d{i}");
    }
    let w = c.delete("d0").await.unwrap();
    assert_eq!(w.outcomes, vec![WriteOutcome::Deleted { existed: true }]);
    // A batch split into several commands: each part once.
    let ops: Vec<WriteOp> = (0..250)
        .map(|i| {
            WriteOp::Put(NewObject::new(
                "docs",
                &format!("b{i}"),
                serde_json::json!({}),
            ))
        })
        .collect();
    let results = c.batch(ops).await;
    assert_eq!(results.len(), 250);
    assert!(
        results.iter().all(|r| r == &Ok(WriteOutcome::Created)),
        "{results:?}"
    );
    let usage = setup.usage(None).await.unwrap();
    assert_eq!(usage.storage.objects, 19 + 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_once_request_twice_applies_once_and_a_new_sequence_applies_again() {
    let node = start_node();
    let (setup, key) = tenant_client(&node, 0).await;
    setup
        .create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    let conn = raw_connection(&node, ALPN).await.unwrap();
    let auth = Envelope::new(1, Request::Authenticate { api_key: key })
        .to_frame()
        .unwrap();
    assert!(matches!(
        raw_request(&conn, &auth).await,
        Response::Principal(_)
    ));
    let once = |seq: u64| {
        Envelope::new(
            seq,
            Request::Once {
                client: 42,
                seq,
                acked_below: 1,
                request: Box::new(Request::Put(NewObject::new(
                    "docs",
                    "x",
                    serde_json::json!({"seq": seq}),
                ))),
            },
        )
        .to_frame()
        .unwrap()
    };
    let first = raw_request(&conn, &once(1)).await;
    let again = raw_request(&conn, &once(1)).await;
    assert_eq!(first, again);
    assert!(
        matches!(&first, Response::Write(w) if w.outcomes == vec![WriteOutcome::Created]),
        "{first:?}"
    );
    // The retry changed nothing: the object still holds the first write.
    let obj = setup.get("x").await.unwrap().unwrap();
    assert_eq!(obj.properties.0["seq"], 1);
    let next = raw_request(&conn, &once(2)).await;
    assert!(
        matches!(&next, Response::Write(w) if w.outcomes == vec![WriteOutcome::Updated]),
        "{next:?}"
    );
    // Once wraps writes only.
    let bad = Envelope::new(
        9,
        Request::Once {
            client: 42,
            seq: 3,
            acked_below: 1,
            request: Box::new(Request::Get("x".into())),
        },
    )
    .to_frame()
    .unwrap();
    let r = raw_request(&conn, &bad).await;
    assert!(
        matches!(
            r,
            Response::Error(vektagraf::proto::Error::InvalidArgument { .. })
        ),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_gets_its_first_answer_even_when_its_limit_is_spent_by_then() {
    let node = start_node();
    let (setup, _) = tenant_client(&node, 0).await;
    setup
        .create_collection(CollectionSpec::plain("docs"))
        .await
        .unwrap();
    // From now on one write in 30 days (so no refusal lifts within the
    // driver's deadline): the first attempt spends it.
    let admin = connect(&node, &node.admin_key, 0).await;
    let mut rate = admin.get_tenant("once").await.unwrap().rate_limit;
    rate.operation_types.insert(OperationType::Write, 1);
    rate.sliding_window = false;
    rate.time_window = vektagraf::tenant::Window(Duration::from_secs(30 * 86_400));
    admin
        .update_tenant(
            "once",
            vektagraf::tenant::TenantUpdate {
                rate_limit: Some(rate),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (c, _) = tenant_client(&node, 1).await;
    // The first answer is lost after the node ran the put; the retry
    // would be refused by the write rate if it were checked again.
    let w = c
        .put(NewObject::new("docs", "only", serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(w.outcomes, vec![WriteOutcome::Created]);
    // A new write is refused by the spent rate, as it should be.
    let e = c
        .put(NewObject::new("docs", "second", serde_json::json!({})))
        .await
        .unwrap_err();
    assert_eq!(
        e.limit().map(|l| l.kind),
        Some(vektagraf::proto::LimitKind::OperationRate(
            OperationType::Write
        )),
        "{e:?}"
    );
}
