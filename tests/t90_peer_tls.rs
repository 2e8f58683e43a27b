//! The peer transport's mutual TLS: only certificates from the cluster CA
//! that name the node they claim to be are accepted, on both ends; and a
//! certificate proves an id, not rights (issue 10 §2): unknown and removed
//! nodes, a lost disk, raft messages from non-replicas, forwards without
//! a valid key are refused. Real quinn endpoints on loopback, real
//! cluster nodes in this process.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use vektagraf::net::peer::{
    PeerError, PeerNet, PeerRefusal, PeerRequest, PeerResponse, PeerService,
};
use vektagraf::net::tls::{load_identity, make_certs, read_certs};
use vektagraf::proto::Error;
use vektagraf::raft::{SnapshotMeta, Vote};

/// Answers every message with the caller's node id, as the server saw it.
struct WhoCalled;

impl PeerService for WhoCalled {
    fn admit(&self, _node: u64, _incarnation: u64) -> Result<(), PeerRefusal> {
        Ok(())
    }
    fn handle(&self, from: u64, _req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async move { PeerResponse::Counter(Ok(from)) })
    }
    fn snapshot_staging(&self, _from: u64, _group: u64) -> Result<PathBuf, Box<PeerResponse>> {
        Err(Box::new(PeerResponse::Failed(Error::Unavailable {
            reason: "no snapshots here".into(),
        })))
    }
    fn install_snapshot(
        &self,
        _g: u64,
        _v: Vote,
        _m: SnapshotMeta,
        _d: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async { PeerResponse::Pong })
    }
}

fn node(
    dir: &std::path::Path,
    ca_dir: &str,
    trust_dir: &str,
    me: u64,
    cert_of: u64,
) -> Arc<PeerNet> {
    let ca = read_certs(&dir.join(trust_dir).join("ca.crt")).unwrap();
    let id = load_identity(
        &dir.join(ca_dir).join(format!("node-{cert_of}.crt")),
        &dir.join(ca_dir).join(format!("node-{cert_of}.key")),
    )
    .unwrap();
    PeerNet::bind(me, "127.0.0.1:0".parse().unwrap(), &ca, &id).unwrap()
}

async fn ask(from: &Arc<PeerNet>, to: u64) -> Result<PeerResponse, PeerError> {
    let req = PeerRequest::Registry {
        ops: vec![],
        key_id: None,
    };
    from.call(to, &req, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_need_a_cluster_ca_certificate_that_names_their_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_certs(&dir.join("cluster"), &[1, 2, 3], &[]).unwrap();
    make_certs(&dir.join("foreign"), &[1, 2], &[]).unwrap();

    let server = node(dir, "cluster", "cluster", 1, 1);
    server.serve(Arc::new(WhoCalled));
    let addr = server.local_addr().unwrap();

    // A member with its own certificate is served, and known by its id.
    let good = node(dir, "cluster", "cluster", 2, 2);
    good.set_addr(1, addr);
    match ask(&good, 1).await.unwrap() {
        PeerResponse::Counter(Ok(from)) => assert_eq!(from, 2),
        other => panic!("unexpected {other:?}"),
    }

    // A certificate from another CA fails the handshake.
    let foreign = node(dir, "foreign", "cluster", 2, 2);
    foreign.set_addr(1, addr);
    assert!(matches!(
        ask(&foreign, 1).await,
        Err(PeerError::Unreachable { .. })
    ));

    // A cluster certificate of node 3 cannot pose as node 2.
    let impostor = node(dir, "cluster", "cluster", 2, 3);
    impostor.set_addr(1, addr);
    assert!(matches!(
        ask(&impostor, 1).await,
        Err(PeerError::Unreachable { .. })
    ));

    // The dialer checks the server too: node 1's certificate does not
    // name node 3, so dialing "node 3" at node 1's address is refused.
    let careful = node(dir, "cluster", "cluster", 2, 2);
    careful.set_addr(3, addr);
    assert!(matches!(
        ask(&careful, 3).await,
        Err(PeerError::Unreachable { .. })
    ));

    // A server with a foreign certificate is refused by the dialer.
    let rogue = node(dir, "foreign", "foreign", 1, 1);
    rogue.serve(Arc::new(WhoCalled));
    let member = node(dir, "cluster", "cluster", 2, 2);
    member.set_addr(1, rogue.local_addr().unwrap());
    assert!(matches!(
        ask(&member, 1).await,
        Err(PeerError::Unreachable { .. })
    ));

    // Failed dials back off: an immediate retry does not dial again.
    match ask(&member, 1).await {
        Err(PeerError::Unreachable { reason, .. }) => {
            assert!(reason.contains("backing off"), "{reason}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------
// Peers hold only the rights they need (issue 10 §2): a real cluster node
// (node 1, bootstrapped in this process) and peers that hold genuine
// cluster-CA certificates of other node ids.

use vektagraf::proto::wire::{KeyKind, Request, Response};
use vektagraf::proto::{NodeRecord, OperationType};
use vektagraf::storage::RegOp;

/// A one-node cluster (node 1) in `dir/node-1`, with certificates for
/// nodes 1 to 9 in `dir/cluster`.
async fn cluster_node(dir: &std::path::Path, id: u64, join: Option<String>) -> vektagraf::Node {
    let certs = dir.join("cluster");
    if !certs.join("ca.crt").exists() {
        make_certs(&certs, &(1..=9).collect::<Vec<_>>(), &[]).unwrap();
    }
    let mut cfg = vektagraf::NodeConfig::with_data_dir(&dir.join(format!("node-{id}")));
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics.enabled = false;
    cfg.cluster.enabled = true;
    cfg.cluster.node_id = id;
    cfg.cluster.peer_listen = "127.0.0.1:0".into();
    cfg.cluster.ca = certs.join("ca.crt").display().to_string();
    cfg.cluster.cert = certs.join(format!("node-{id}.crt")).display().to_string();
    cfg.cluster.key = certs.join(format!("node-{id}.key")).display().to_string();
    cfg.cluster.join = join.into_iter().collect();
    // The peers below are no real nodes: they must not become voters of
    // group 0 or hold replicas (a voter that never answers stalls a
    // group), and nothing moves to them.
    cfg.cluster.meta_voters = 1;
    cfg.cluster.replication_factor = 1;
    cfg.cluster.rebalance_on_join = false;
    vektagraf::Node::start(cfg).await.unwrap()
}

/// A peer holding node `id`'s certificate, of incarnation `id` (a data
/// directory of its own), knowing node 1's address.
fn peer_of(dir: &std::path::Path, id: u64, node1: &vektagraf::Node) -> Arc<PeerNet> {
    let p = node(dir, "cluster", "cluster", id, id);
    p.set_incarnation(id);
    p.set_addr(1, peer_addr(node1));
    p
}

fn peer_addr(n: &vektagraf::Node) -> std::net::SocketAddr {
    n.cluster().unwrap().net.local_addr().unwrap()
}

/// A peer from [`peer_of`] that joined the cluster under its own id.
async fn member(dir: &std::path::Path, id: u64, node1: &vektagraf::Node) -> Arc<PeerNet> {
    let p = peer_of(dir, id, node1);
    let r = call(&p, PeerRequest::Join(record(id))).await;
    assert!(matches!(r, Ok(PeerResponse::Joined(Ok(_)))), "{r:?}");
    p
}

/// The join record of a peer from [`peer_of`].
fn record(id: u64) -> NodeRecord {
    NodeRecord {
        id,
        peer_addr: "127.0.0.1:9".into(),
        client_addr: "127.0.0.1:9".into(),
        removed: false,
        draining: false,
        incarnation: id,
    }
}

/// The refusal in an answer, if it is one.
fn refusal(r: &Result<PeerResponse, PeerError>) -> Option<PeerRefusal> {
    match r {
        Ok(PeerResponse::Refused(why)) | Err(PeerError::Refused { reason: why, .. }) => {
            Some(why.clone())
        }
        _ => None,
    }
}

/// The error of a forwarded request's reply.
fn reply_err(r: Result<PeerResponse, PeerError>) -> Error {
    match r {
        Ok(PeerResponse::Reply(Err(e))) | Ok(PeerResponse::Counter(Err(e))) => e,
        other => panic!("expected a refused reply, got {other:?}"),
    }
}

async fn call(p: &Arc<PeerNet>, req: PeerRequest) -> Result<PeerResponse, PeerError> {
    p.call(1, &req, Duration::from_secs(10)).await
}

/// Whether the answer is a refusal (of the connection or of the message).
fn refused(r: &Result<PeerResponse, PeerError>) -> bool {
    matches!(
        r,
        Err(_)
            | Ok(PeerResponse::Failed(_))
            | Ok(PeerResponse::Refused(_))
            | Ok(PeerResponse::Reply(Err(_)))
            | Ok(PeerResponse::Counter(Err(_)))
            | Ok(PeerResponse::Joined(Err(_)))
    )
}

/// A tenant "t1" with user "u" on the cluster.
async fn tenant_t1(n: &vektagraf::Node) {
    let db = n.db();
    let cfg =
        vektagraf::TenantConfig::for_tier(&db.tiers(), "t1", "t1", "tier4", serde_json::json!({}))
            .unwrap();
    db.create_tenant(cfg).await.unwrap();
    db.create_user("t1", "u").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_node_may_only_join_and_only_under_its_certificates_id() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    let stranger = peer_of(tmp.path(), 7, &n1);

    // A registry write from a node the cluster does not know.
    let r = call(
        &stranger,
        PeerRequest::Registry {
            ops: vec![RegOp::Increment {
                table: "counters".into(),
                key: b"group".to_vec(),
            }],
            key_id: None,
        },
    )
    .await;
    assert!(refused(&r), "registry write from an unknown node: {r:?}");
    assert_eq!(refusal(&r), Some(PeerRefusal::UnknownNode { node: 7 }));
    // An admin request.
    let r = call(
        &stranger,
        PeerRequest::Admin {
            key_id: None,
            request: Request::ListTenants,
            hops: 1,
        },
    )
    .await;
    assert!(refused(&r), "admin request from an unknown node: {r:?}");
    assert_eq!(refusal(&r), Some(PeerRefusal::UnknownNode { node: 7 }));
    // Node 7's certificate cannot join node 8.
    let r = call(&stranger, PeerRequest::Join(record(8))).await;
    assert!(refused(&r), "join under another id: {r:?}");
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::JoinIdMismatch {
            certificate: 7,
            joining: 8
        })
    );
    // Under its own id it joins.
    let r = call(&stranger, PeerRequest::Join(record(7))).await;
    assert!(matches!(r, Ok(PeerResponse::Joined(Ok(_)))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_node_is_refused_even_on_an_open_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    let seven = member(tmp.path(), 7, &n1).await;
    assert!(!refused(&call(&seven, PeerRequest::Leading).await));
    n1.cluster()
        .unwrap()
        .remove_node(n1.db(), 7, true)
        .await
        .unwrap();
    let r = call(&seven, PeerRequest::Leading).await;
    assert!(refused(&r), "removed node on its open connection: {r:?}");
    assert_eq!(refusal(&r), Some(PeerRefusal::RemovedNode { node: 7 }));
    // And on a new connection.
    let again = peer_of(tmp.path(), 7, &n1);
    let r = call(&again, PeerRequest::Ping).await;
    assert!(refused(&r), "removed node on a new connection: {r:?}");
    assert_eq!(refusal(&r), Some(PeerRefusal::RemovedNode { node: 7 }));
    // Nor may it join again.
    let r = call(&again, PeerRequest::Join(record(7))).await;
    assert!(refused(&r), "removed node joining again: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_for_a_group_come_only_from_nodes_hosting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let group = n1.db().tenant_group("t1").unwrap();
    let seven = member(tmp.path(), 7, &n1).await;
    // Node 7 is a cluster member but hosts no replica of t1's group.
    let rpc = openraft::raft::VoteRequest::new(vektagraf::raft::Vote::new(1, 99), None);
    let r = call(&seven, PeerRequest::PreVote { group, rpc }).await;
    assert!(
        refused(&r),
        "pre-vote from a node hosting no replica: {r:?}"
    );
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotAReplica { node: 7, group })
    );
    let r = call(
        &seven,
        PeerRequest::Quiesce {
            group,
            leader: 99,
            last_index: 0,
        },
    )
    .await;
    assert!(refused(&r), "quiesce from a node hosting no replica: {r:?}");
    // Group 0: an unknown node is no member.
    let stranger = peer_of(tmp.path(), 8, &n1);
    let rpc = openraft::raft::VoteRequest::new(vektagraf::raft::Vote::new(1, 8), None);
    let r = call(&stranger, PeerRequest::PreVote { group: 0, rpc }).await;
    assert!(refused(&r), "group 0 pre-vote from an unknown node: {r:?}");
    assert_eq!(refusal(&r), Some(PeerRefusal::UnknownNode { node: 8 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_request_is_served_only_under_a_valid_key_of_its_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let db = n1.db();
    let cfg =
        vektagraf::TenantConfig::for_tier(&db.tiers(), "t2", "t2", "tier4", serde_json::json!({}))
            .unwrap();
    db.create_tenant(cfg).await.unwrap();
    db.create_user("t2", "u").await.unwrap();
    let seven = member(tmp.path(), 7, &n1).await;
    let forward = |key_id: &str| PeerRequest::Forward {
        key_id: key_id.to_string(),
        tenant: "t1".into(),
        user: "u".into(),
        hops: 1,
        request: Request::ListCollections,
    };
    // A key id the cluster never issued.
    let r = call(&seven, forward("00000000deadbeef")).await;
    assert!(matches!(reply_err(r), Error::Unauthenticated { .. }));
    // A revoked key.
    let (_, revoked) = db
        .create_key(KeyKind::Tenant, Some("t1"), Some("u"), None)
        .await
        .unwrap();
    db.revoke_key(&revoked.key_id).await.unwrap();
    let r = call(&seven, forward(&revoked.key_id)).await;
    assert!(matches!(reply_err(r), Error::Unauthenticated { .. }));
    // A key of another tenant.
    let (_, other) = db
        .create_key(KeyKind::Tenant, Some("t2"), Some("u"), None)
        .await
        .unwrap();
    let r = call(&seven, forward(&other.key_id)).await;
    assert!(matches!(reply_err(r), Error::CrossTenantAccess { .. }));
    // A key that may not read.
    let (_, writer) = db
        .create_key(
            KeyKind::Tenant,
            Some("t1"),
            Some("u"),
            Some(vec![OperationType::Write]),
        )
        .await
        .unwrap();
    let r = call(&seven, forward(&writer.key_id)).await;
    assert!(matches!(reply_err(r), Error::PermissionDenied { .. }));
    // An admin key reaches no tenant's data.
    let (_, admin) = db
        .create_key(KeyKind::Admin, None, None, None)
        .await
        .unwrap();
    let r = call(&seven, forward(&admin.key_id)).await;
    assert!(matches!(reply_err(r), Error::PermissionDenied { .. }));
    // The tenant's own key is served.
    let (_, good) = db
        .create_key(KeyKind::Tenant, Some("t1"), Some("u"), None)
        .await
        .unwrap();
    let r = call(&seven, forward(&good.key_id)).await;
    assert!(
        matches!(r, Ok(PeerResponse::Reply(Ok(Response::Collections(_))))),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_writes_and_admin_requests_from_a_peer_need_an_admin_key() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let seven = member(tmp.path(), 7, &n1).await;
    let db = n1.db();
    // A member mints itself an admin key record: refused.
    let write = |key_id: Option<String>| PeerRequest::Registry {
        ops: vec![RegOp::Increment {
            table: "counters".into(),
            key: b"group".to_vec(),
        }],
        key_id,
    };
    let r = call(&seven, write(None)).await;
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotAnAdminForward {
            node: 7,
            what: "registry write".into()
        })
    );
    let admin_req = |key_id: Option<String>| PeerRequest::Admin {
        key_id,
        request: Request::ListTenants,
        hops: 1,
    };
    let r = call(&seven, admin_req(None)).await;
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotAnAdminForward {
            node: 7,
            what: "admin request".into()
        })
    );
    // A tenant key is no admin key; a revoked admin key holds nothing.
    let (_, tenant_key) = db
        .create_key(KeyKind::Tenant, Some("t1"), Some("u"), None)
        .await
        .unwrap();
    let r = call(&seven, admin_req(Some(tenant_key.key_id.clone()))).await;
    assert!(matches!(reply_err(r), Error::PermissionDenied { .. }));
    let r = call(&seven, write(Some(tenant_key.key_id))).await;
    assert!(matches!(reply_err(r), Error::PermissionDenied { .. }));
    let (_, old) = db
        .create_key(KeyKind::Admin, None, None, None)
        .await
        .unwrap();
    db.revoke_key(&old.key_id).await.unwrap();
    let r = call(&seven, admin_req(Some(old.key_id.clone()))).await;
    assert!(matches!(reply_err(r), Error::Unauthenticated { .. }));
    // The forward of an authenticated admin request is served.
    let (_, admin) = db
        .create_key(KeyKind::Admin, None, None, None)
        .await
        .unwrap();
    let r = call(&seven, admin_req(Some(admin.key_id.clone()))).await;
    assert!(
        matches!(r, Ok(PeerResponse::Reply(Ok(Response::Tenants(_))))),
        "{r:?}"
    );
    let r = call(&seven, write(Some(admin.key_id))).await;
    assert!(matches!(r, Ok(PeerResponse::Counter(Ok(_)))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_lost_its_disk_cannot_rejoin_under_its_old_id() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    // Node 7 joins; later it comes back with an empty data directory (a
    // new incarnation), at the address it joined with.
    let seven = peer_of(tmp.path(), 7, &n1);
    let wiped = peer_of(tmp.path(), 7, &n1);
    wiped.set_incarnation(0x77);
    let mut rec = record(7);
    rec.peer_addr = wiped.local_addr().unwrap().to_string();
    let r = call(&seven, PeerRequest::Join(rec.clone())).await;
    assert!(matches!(r, Ok(PeerResponse::Joined(Ok(_)))), "{r:?}");

    wiped.serve(Arc::new(WhoCalled));
    rec.incarnation = 0x77;
    let r = call(&wiped, PeerRequest::Join(rec.clone())).await;
    assert!(refused(&r), "rejoin after a disk loss: {r:?}");
    let mismatch = PeerRefusal::IncarnationMismatch {
        node: 7,
        recorded: 7,
        presented: 0x77,
    };
    assert_eq!(refusal(&r), Some(mismatch.clone()));

    // Node 1 refuses to talk to it either (the dialer checks the
    // Welcome) once the old node's connection is gone; its earlier dials
    // may still be backing off.
    seven.close().await;
    let net = &n1.cluster().unwrap().net;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = net
            .call(7, &PeerRequest::Ping, Duration::from_secs(5))
            .await;
        if let Some(why) = refusal(&r) {
            assert_eq!(why, mismatch);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 never refused: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // With its old incarnation (its disk back) it is still welcome.
    let restored = peer_of(tmp.path(), 7, &n1);
    rec.incarnation = 7;
    let r = call(&restored, PeerRequest::Join(rec)).await;
    assert!(matches!(r, Ok(PeerResponse::Joined(Ok(_)))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joining_a_cluster_mints_no_admin_key() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    let first = n1
        .db()
        .ensure_admin_key(&tmp.path().join("admin-1.key"))
        .await
        .unwrap();
    assert!(first.is_some(), "the bootstrap node mints the admin key");
    let n2 = cluster_node(tmp.path(), 2, Some(peer_addr(&n1).to_string())).await;
    let second = n2
        .db()
        .ensure_admin_key(&tmp.path().join("admin-2.key"))
        .await
        .unwrap();
    assert!(second.is_none(), "the joining node minted an admin key");
    let admins = n1
        .db()
        .list_keys(None)
        .into_iter()
        .filter(|k| k.kind == KeyKind::Admin)
        .count();
    assert_eq!(admins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_metadata_leader_may_hand_a_groups_leadership_around() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let group = n1.db().tenant_group("t1").unwrap();
    let seven = member(tmp.path(), 7, &n1).await;
    // Node 7 is a member, but node 1 leads group 0.
    let r = call(&seven, PeerRequest::TransferLeader { group, to: 1 }).await;
    assert!(refused(&r), "transfer leader from a member: {r:?}");
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotMetadataLeader {
            node: 7,
            what: "transfer leader".into(),
            leader: Some(1),
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dynamic_limit_raise_comes_only_from_a_node_hosting_the_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let group = n1.db().tenant_group("t1").unwrap();
    let before = n1.db().get_tenant("t1").await.unwrap().storage_limit;
    let seven = member(tmp.path(), 7, &n1).await;
    // Node 7 is a member without a replica of t1: it may not raise.
    let mut limits = before.clone();
    limits.max_objects *= 2;
    let raise = PeerRequest::RaiseLimits {
        tenant: "t1".into(),
        limits,
        reason: "auto_scale: from a stranger".into(),
    };
    let r = call(&seven, raise).await;
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotAReplica { node: 7, group }),
        "{r:?}"
    );
    assert_eq!(
        n1.db().get_tenant("t1").await.unwrap().storage_limit,
        before
    );
    assert_eq!(n1.db().audit_log(Some("t1"), 10).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_status_read_without_a_key_comes_only_from_a_replica_or_the_metadata_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    tenant_t1(&n1).await;
    let seven = member(tmp.path(), 7, &n1).await;
    // Node 7 hosts no replica of t1 and does not lead group 0.
    let status = PeerRequest::Admin {
        key_id: None,
        request: Request::ShardInfo("t1".into()),
        hops: 1,
    };
    let r = call(&seven, status).await;
    assert!(refused(&r), "keyless shard status from a member: {r:?}");
    assert_eq!(
        refusal(&r),
        Some(PeerRefusal::NotAnAdminForward {
            node: 7,
            what: "shard status".into()
        })
    );
    // Under an admin key it is served.
    let (_, admin) = n1
        .db()
        .create_key(KeyKind::Admin, None, None, None)
        .await
        .unwrap();
    let status = PeerRequest::Admin {
        key_id: Some(admin.key_id),
        request: Request::ShardInfo("t1".into()),
        hops: 1,
    };
    let r = call(&seven, status).await;
    assert!(
        matches!(r, Ok(PeerResponse::Reply(Ok(Response::ShardInfo(_))))),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relayed_join_is_admitted_only_once_the_joiner_answers_at_its_address() {
    let tmp = tempfile::tempdir().unwrap();
    let n1 = cluster_node(tmp.path(), 1, None).await;
    let seven = member(tmp.path(), 7, &n1).await;
    // The records as group 0's leader holds them: a join's answer.
    let known = |id: u64| {
        let seven = seven.clone();
        async move {
            match call(&seven, PeerRequest::Join(record(7))).await {
                Ok(PeerResponse::Joined(Ok(nodes))) => nodes.iter().any(|n| n.id == id),
                other => panic!("{other:?}"),
            }
        }
    };
    // Member 7 relays a join for node 8, which does not answer there.
    let r = call(&seven, PeerRequest::Join(record(8))).await;
    assert!(
        refused(&r),
        "relayed join of a node that is not there: {r:?}"
    );
    assert!(!known(8).await, "node 8 was recorded");
    // Node 8 answers at its address, but with another incarnation than
    // the relayed join claims.
    let eight = peer_of(tmp.path(), 8, &n1);
    eight.serve(Arc::new(WhoCalled));
    let mut rec = record(8);
    rec.peer_addr = eight.local_addr().unwrap().to_string();
    rec.incarnation = 0x99;
    let r = call(&seven, PeerRequest::Join(rec.clone())).await;
    assert!(
        matches!(
            r,
            Ok(PeerResponse::Joined(Err(Error::PermissionDenied { .. })))
        ),
        "relayed join claiming another incarnation: {r:?}"
    );
    assert!(!known(8).await, "node 8 was recorded");
    // The real thing: node 8, incarnation 8, at that address.
    rec.incarnation = 8;
    let r = call(&seven, PeerRequest::Join(rec)).await;
    assert!(matches!(r, Ok(PeerResponse::Joined(Ok(_)))), "{r:?}");
    assert!(known(8).await, "node 8 was not recorded");
}
