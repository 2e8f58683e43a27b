//! The peer service: what this node answers to other nodes. Each message
//! is first checked against the sender's rights ([`super::peers`]). Raft
//! messages and snapshots go to the group's replica here, registry
//! proposals to group 0 (with the admin key of the request behind them,
//! checked again here), joins to membership; forwarded client requests
//! go to the router (through [`Forwarded`]), which checks their keys
//! again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;

use crate::db::{Database, WeakDatabase};
use crate::net::peer::{PeerRefusal, PeerRequest, PeerResponse, PeerService};
use crate::proto::wire::{KeyKind, Request};
use crate::proto::{Error, Result};
use crate::raft::{ShardSnapshot, SnapshotMeta, Vote};

use super::{rand_index, unavailable, Cluster, Forwarded};

/// Serves peer messages for a node.
pub(super) struct Service {
    db: WeakDatabase,
    cluster: Weak<Cluster>,
    forwarded: Arc<dyn Forwarded>,
    warned: Warned,
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
            warned: Warned::default(),
        }
    }

    fn db(&self) -> Option<Database> {
        self.db.upgrade()
    }
}

fn gone() -> PeerResponse {
    PeerResponse::Failed(unavailable("node is shutting down"))
}

/// How often a refusal of the same kind from the same node is logged at
/// warn level (a removed node still running retries many times a second).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// When each (node, message kind) refusal was last logged at warn level.
type Warned = Arc<Mutex<HashMap<(u64, &'static str), Instant>>>;

/// Logs and answers a refusal.
fn refused(warned: &Warned, from: u64, what: &'static str, why: PeerRefusal) -> PeerResponse {
    let now = Instant::now();
    let loud = {
        let mut w = warned.lock();
        let due = w
            .get(&(from, what))
            .is_none_or(|t| now.duration_since(*t) >= WARN_EVERY);
        if due {
            w.insert((from, what), now);
        }
        due
    };
    if loud {
        tracing::warn!(node = from, message = what, reason = %why, "peer message refused");
    } else {
        tracing::debug!(node = from, message = what, reason = %why, "peer message refused");
    }
    PeerResponse::Refused(why)
}

/// The name of a message kind, for logs.
fn kind(req: &PeerRequest) -> &'static str {
    match req {
        PeerRequest::Hello { .. } => "hello",
        PeerRequest::Append { .. } => "append",
        PeerRequest::Vote { .. } => "vote",
        PeerRequest::PreVote { .. } => "pre-vote",
        PeerRequest::Snapshot { .. } => "snapshot",
        PeerRequest::Forward { .. } => "forward",
        PeerRequest::Admin { .. } => "admin request",
        PeerRequest::Grant { .. } => "grant",
        PeerRequest::Registry { .. } => "registry write",
        PeerRequest::Join(_) => "join",
        PeerRequest::Quiesce { .. } => "quiesce",
        PeerRequest::Ping => "ping",
        PeerRequest::TransferLeader { .. } => "transfer leader",
        PeerRequest::Leading => "leading",
        PeerRequest::HandOver { .. } => "hand-over",
        PeerRequest::History { .. } => "history",
        PeerRequest::RaiseLimits { .. } => "limit raise",
    }
}

/// Checks the admin key a registry write or admin request from a peer
/// carries: it must exist here (waiting briefly for this node's copy of
/// the metadata), be unrevoked and be an admin key.
async fn admin_key(db: &Database, key_id: &str) -> Result<()> {
    let key = db.key_for_peer(key_id).await?;
    if key.kind != KeyKind::Admin {
        return Err(Error::PermissionDenied {
            reason: format!("key {key_id} is not an admin key"),
        });
    }
    Ok(())
}

fn no_group(group: u64) -> PeerResponse {
    PeerResponse::Failed(unavailable(format!(
        "group {group} has no replica on this node"
    )))
}

impl PeerService for Service {
    fn handle(&self, from: u64, req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let (db, c, forwarded) = (self.db(), self.cluster.upgrade(), self.forwarded.clone());
        let warned = self.warned.clone();
        Box::pin(async move {
            let (Some(db), Some(c)) = (db, c) else {
                return gone();
            };
            if let Err(why) = c.authorize(&db, from, &req) {
                let group_0 = matches!(
                    req,
                    PeerRequest::Append { group: 0, .. }
                        | PeerRequest::Vote { group: 0, .. }
                        | PeerRequest::PreVote { group: 0, .. }
                );
                if group_0 && matches!(why, PeerRefusal::UnknownNode { .. }) {
                    c.relearn_peers();
                }
                return refused(&warned, from, kind(&req), why);
            }
            // Any raft message for a quiesced replica wakes it.
            if let PeerRequest::Append { group, .. }
            | PeerRequest::Vote { group, .. }
            | PeerRequest::PreVote { group, .. }
            | PeerRequest::HandOver { group, .. } = &req
            {
                c.wake_group(&db, *group);
            }
            match req {
                PeerRequest::Hello { .. } => PeerResponse::Welcome {
                    incarnation: c.me.incarnation,
                },
                PeerRequest::Ping => PeerResponse::Pong,
                PeerRequest::Quiesce {
                    group,
                    leader,
                    last_index,
                } => PeerResponse::Quiesced(c.quiesce_follower(&db, group, leader, last_index)),
                PeerRequest::Append { group, rpc } => match c.group_replica(&db, group).await {
                    Some((r, _awake)) => {
                        let commit = rpc.leader_commit.map_or(0, |l| l.index);
                        let answer = r.append_entries(rpc).await;
                        if answer.as_ref().is_ok_and(|a| a.is_success()) {
                            c.heard_from_leader(&db, group, commit);
                        }
                        PeerResponse::Append(answer)
                    }
                    None => no_group(group),
                },
                PeerRequest::Vote { group, rpc } => match c.group_replica(&db, group).await {
                    Some((r, _awake)) => PeerResponse::Vote(r.vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::PreVote { group, rpc } => match c.group_replica(&db, group).await {
                    Some((r, _awake)) => PeerResponse::Vote(r.pre_vote(rpc).await),
                    None => no_group(group),
                },
                PeerRequest::Snapshot { .. } => PeerResponse::Failed(Error::Protocol {
                    reason: "snapshot header outside a snapshot stream".into(),
                }),
                PeerRequest::Forward {
                    key_id,
                    tenant,
                    user,
                    hops,
                    request,
                } => PeerResponse::Reply(
                    forwarded
                        .tenant(db, c, key_id, tenant, user, request, hops)
                        .await,
                ),
                PeerRequest::Admin {
                    key_id,
                    request,
                    hops,
                } => {
                    match &key_id {
                        Some(k) => {
                            if let Err(e) = admin_key(&db, k).await {
                                return PeerResponse::Reply(Err(e));
                            }
                        }
                        // A node's own read of a tenant's shard status.
                        None => {
                            if let Request::ShardInfo(t) = &request {
                                if let Err(why) = c.check_status_reader(&db, from, t) {
                                    return refused(&warned, from, "shard status", why);
                                }
                            } else {
                                let what = "admin request".to_string();
                                return refused(
                                    &warned,
                                    from,
                                    "admin request",
                                    PeerRefusal::NotAnAdminForward { node: from, what },
                                );
                            }
                        }
                    }
                    PeerResponse::Reply(forwarded.admin(db, c, key_id, request, hops).await)
                }
                PeerRequest::Grant {
                    tenant,
                    op,
                    want,
                    debt,
                } => PeerResponse::Granted(forwarded.grant(db, from, tenant, op, want, debt).await),
                PeerRequest::Registry { ops, key_id } => {
                    let Some(k) = key_id else {
                        let what = "registry write".to_string();
                        return refused(
                            &warned,
                            from,
                            "registry write",
                            PeerRefusal::NotAnAdminForward { node: from, what },
                        );
                    };
                    if let Err(e) = admin_key(&db, &k).await {
                        tracing::warn!(node = from, key_id = %k, error = %e, "registry write refused: its admin key does not hold");
                        return PeerResponse::Counter(Err(e));
                    }
                    PeerResponse::Counter(
                        c.commit_here(ops)
                            .await
                            .map_err(|_| unavailable("this node does not lead the metadata group")),
                    )
                }
                PeerRequest::Join(rec) => match c.check_join(&db, &rec) {
                    Err(why) => refused(&warned, from, "join", why),
                    Ok(()) => PeerResponse::Joined(c.handle_join(&db, rec, from, 1).await),
                },
                PeerRequest::TransferLeader { group, to } => {
                    PeerResponse::Transferring(c.transfer_leader(&db, group, to).await)
                }
                PeerRequest::Leading => PeerResponse::Leading(c.groups_led(&db)),
                PeerRequest::History {
                    key_id,
                    tenant,
                    minutes,
                    from_ms,
                    to_ms,
                } => {
                    if let Err(e) = admin_key(&db, &key_id).await {
                        return PeerResponse::History(Err(e));
                    }
                    let res = if minutes {
                        crate::db::Resolution::Minute
                    } else {
                        crate::db::Resolution::Hour
                    };
                    PeerResponse::History(db.history_local(&tenant, res, from_ms, to_ms))
                }
                PeerRequest::RaiseLimits {
                    tenant,
                    limits,
                    reason,
                } => {
                    let r = if c.meta_leader() == Some(c.me.id) {
                        db.commit_raise(&tenant, limits, &reason).await
                    } else {
                        Err(unavailable("this node does not lead the metadata group"))
                    };
                    if let Err(e) = &r {
                        tracing::warn!(node = from, tenant = %tenant, error = %e, "a dynamic limit raise was not committed");
                    }
                    PeerResponse::Raised(r)
                }
                PeerRequest::HandOver { group, rpc } => match c.group_replica(&db, group).await {
                    Some((r, _awake)) => {
                        PeerResponse::HandOver(r.handle_transfer_leader(rpc).await)
                    }
                    None => no_group(group),
                },
            }
        })
    }

    fn admit(&self, node: u64, incarnation: u64) -> std::result::Result<(), PeerRefusal> {
        match (self.db(), self.cluster.upgrade()) {
            (Some(db), Some(c)) => c.admit_peer(&db, node, incarnation),
            // Shutting down: every message is answered as such.
            _ => Ok(()),
        }
    }

    fn snapshot_staging(
        &self,
        from: u64,
        group: u64,
    ) -> std::result::Result<PathBuf, Box<PeerResponse>> {
        let (Some(db), Some(c)) = (self.db(), self.cluster.upgrade()) else {
            return Err(Box::new(gone()));
        };
        if let Err(why) = c.authorize_group(&db, from, group) {
            return Err(Box::new(refused(&self.warned, from, "snapshot", why)));
        }
        // A hibernated replica is reopened by the install.
        if group != 0 && db.loaded_group(group).is_none() {
            return Err(Box::new(no_group(group)));
        }
        let dir = db.shard_dir(group).join(format!(
            "incoming-{}-{}",
            crate::util::now_ms(),
            rand_index(1 << 20)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Box::new(PeerResponse::Failed(Error::storage(e))))?;
        Ok(dir)
    }

    fn install_snapshot(
        &self,
        group: u64,
        vote: Vote,
        meta: SnapshotMeta,
        dir: PathBuf,
    ) -> BoxFuture<'static, PeerResponse> {
        let (db, c) = (self.db(), self.cluster.upgrade());
        Box::pin(async move {
            let (Some(db), Some(c)) = (db, c) else {
                return gone();
            };
            let Some((raft, _awake)) = c.group_replica(&db, group).await else {
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
