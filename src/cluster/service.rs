//! The peer service: what this node answers to other nodes. Raft
//! messages and snapshots go to the group's replica here, registry
//! proposals to group 0, joins to membership; forwarded client requests
//! go to the router (through [`Forwarded`]).

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;

use crate::db::{Database, WeakDatabase};
use crate::net::peer::{PeerRequest, PeerResponse, PeerService};
use crate::proto::{Error, Result};
use crate::raft::{ShardSnapshot, SnapshotMeta, Vote};

use super::{rand_index, unavailable, Cluster, Forwarded};

/// Serves peer messages for a node.
pub(super) struct Service {
    db: WeakDatabase,
    cluster: Weak<Cluster>,
    forwarded: Arc<dyn Forwarded>,
}

impl Service {
    pub(super) fn new(
        db: &Database,
        cluster: &Arc<Cluster>,
        forwarded: Arc<dyn Forwarded>,
    ) -> Self {
        Self {
            db: db.downgrade(),
            cluster: Arc::downgrade(cluster),
            forwarded,
        }
    }

    fn db(&self) -> Option<Database> {
        self.db.upgrade()
    }
}

fn gone() -> PeerResponse {
    PeerResponse::Failed(unavailable("node is shutting down"))
}

fn no_group(group: u64) -> PeerResponse {
    PeerResponse::Failed(unavailable(format!(
        "group {group} has no replica on this node"
    )))
}

impl PeerService for Service {
    fn handle(&self, from: u64, req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let (db, c, forwarded) = (self.db(), self.cluster.upgrade(), self.forwarded.clone());
        Box::pin(async move {
            let (Some(db), Some(c)) = (db, c) else {
                return gone();
            };
            // Any raft message for a quiesced replica wakes it.
            if let PeerRequest::Append { group, .. }
            | PeerRequest::Vote { group, .. }
            | PeerRequest::PreVote { group, .. }
            | PeerRequest::HandOver { group, .. } = &req
            {
                c.wake_group(&db, *group);
            }
            match req {
                PeerRequest::Hello { .. } => PeerResponse::Welcome,
                PeerRequest::Ping => PeerResponse::Pong,
                PeerRequest::Quiesce {
                    group,
                    leader,
                    last_index,
                } => PeerResponse::Quiesced(c.quiesce_follower(&db, group, leader, last_index)),
                PeerRequest::Append { group, rpc } => match c.group_raft(&db, group) {
                    Some(r) => {
                        let commit = rpc.leader_commit.map_or(0, |l| l.index);
                        let answer = r.append_entries(rpc).await;
                        if answer.as_ref().is_ok_and(|a| a.is_success()) {
                            c.heard_from_leader(&db, group, commit);
                        }
                        PeerResponse::Append(answer)
                    }
                    None => no_group(group),
                },
                PeerRequest::Vote { group, rpc } => match c.group_raft(&db, group) {
                    Some(r) => PeerResponse::Vote(r.vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::PreVote { group, rpc } => match c.group_raft(&db, group) {
                    Some(r) => PeerResponse::Vote(r.pre_vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::Snapshot { .. } => PeerResponse::Failed(Error::Protocol {
                    reason: "snapshot header outside a snapshot stream".into(),
                }),
                PeerRequest::Forward {
                    tenant,
                    user,
                    hops,
                    request,
                } => {
                    PeerResponse::Reply(forwarded.tenant(db, c, tenant, user, request, hops).await)
                }
                PeerRequest::Admin(req, hops) => {
                    PeerResponse::Reply(forwarded.admin(db, c, req, hops).await)
                }
                PeerRequest::Grant {
                    tenant,
                    op,
                    want,
                    debt,
                } => PeerResponse::Granted(forwarded.grant(db, from, tenant, op, want, debt).await),
                PeerRequest::Registry(ops) => PeerResponse::Counter(
                    c.commit_here(ops)
                        .await
                        .map_err(|_| unavailable("this node does not lead the metadata group")),
                ),
                PeerRequest::Join(rec) => PeerResponse::Joined(c.handle_join(&db, rec, 1).await),
                PeerRequest::TransferLeader { group, to } => {
                    PeerResponse::Transferring(c.transfer_leader(&db, group, to).await)
                }
                PeerRequest::Leading => PeerResponse::Leading(c.groups_led(&db)),
                PeerRequest::HandOver { group, rpc } => match c.group_raft(&db, group) {
                    Some(r) => PeerResponse::HandOver(r.handle_transfer_leader(rpc).await),
                    None => no_group(group),
                },
            }
        })
    }

    fn snapshot_staging(&self, group: u64) -> Result<PathBuf> {
        let (Some(db), Some(c)) = (self.db(), self.cluster.upgrade()) else {
            return Err(unavailable("node is shutting down"));
        };
        if c.group_raft(&db, group).is_none() {
            return Err(unavailable(format!(
                "group {group} has no replica on this node"
            )));
        }
        let dir = db.shard_dir(group).join(format!(
            "incoming-{}-{}",
            crate::util::now_ms(),
            rand_index(1 << 20)
        ));
        std::fs::create_dir_all(&dir).map_err(Error::storage)?;
        Ok(dir)
    }

    fn install_snapshot(
        &self,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        let raft = self
            .db()
            .zip(self.cluster.upgrade())
            .and_then(|(db, c)| c.group_raft(&db, group));
        Box::pin(async move {
            let Some(raft) = raft else {
                return no_group(group);
            };
            let snap = openraft::Snapshot {
                meta,
                snapshot: ShardSnapshot::at(dir),
            };
            let last = snap.meta.last_log_id;
            let r = raft.install_full_snapshot(vote, snap).await;
            match &r {
                Ok(_) => {
                    tracing::info!(group, ?last, "installed a snapshot streamed by the leader")
                }
                Err(e) => tracing::warn!(group, error = %e, "snapshot install failed"),
            }
            PeerResponse::Snapshot(r)
        })
    }
}
