//! The peer transport's mutual TLS: only certificates from the cluster CA
//! that name the node they claim to be are accepted, on both ends. Real
//! quinn endpoints on loopback.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use vektagraf::net::peer::{PeerError, PeerNet, PeerRequest, PeerResponse, PeerService};
use vektagraf::net::tls::{load_identity, make_certs, read_certs};
use vektagraf::proto::Error;
use vektagraf::raft::{SnapshotMeta, Vote};

/// Answers every message with the caller's node id, as the server saw it.
struct WhoCalled;

impl PeerService for WhoCalled {
    fn handle(&self, from: u64, _req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async move { PeerResponse::Counter(Ok(from)) })
    }
    fn snapshot_staging(&self, _group: u64) -> Result<PathBuf, Error> {
        Err(Error::Unavailable {
            reason: "no snapshots here".into(),
        })
    }
    fn install_snapshot(
        &self,
        _g: u64,
        _v: Vote,
        _m: SnapshotMeta,
        _d: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        Box::pin(async { PeerResponse::Welcome })
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
    from.call(to, &PeerRequest::Registry(vec![]), Duration::from_secs(5))
        .await
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
