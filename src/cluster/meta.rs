//! Group 0, the metadata group: registry proposals (committed here when
//! this node leads, else forwarded to the leader) and the node's cache of
//! checked users, keyed by group 0's applied index.

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::db::Registry;
use crate::net::peer::{PeerRequest, PeerResponse};
use crate::proto::Result;
use crate::storage::{Command, CommandResult, RegOp};

use super::{unavailable, Cluster, FORWARD_TIMEOUT, LEADER_WAIT};

tokio::task_local! {
    /// The admin key whose request the current task serves (the router
    /// sets it around an admin request on a cluster node). Registry
    /// changes proposed through another node carry it, and that node
    /// checks it again: a peer's registry write without one is refused.
    pub static ADMIN_KEY: String;
}

/// Forwarding target when this node cannot commit.
pub(super) struct NotHere(Option<u64>);

impl Cluster {
    /// Whether `user` of `tenant` exists, from the node's cache while group
    /// 0 has not changed since it was checked (no registry read per
    /// request).
    pub(crate) fn user_exists(&self, reg: &Registry, tenant: &str, user: &str) -> Result<bool> {
        let version = self
            .meta
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        let key = (tenant.to_string(), user.to_string());
        if self.known_users.get(&key) == Some(version) {
            return Ok(true);
        }
        let exists = reg.user(tenant, user)?.is_some();
        if exists {
            self.known_users.insert(key, version);
        }
        Ok(exists)
    }

    /// A5: the dynamic limit policy's raise, committed by group 0's
    /// leader (this node, or the leader it asks; it checks the raise).
    pub(super) async fn raise_limits(
        &self,
        db: &crate::db::Database,
        tenant: &str,
        limits: crate::tenant::StorageLimitConfig,
        reason: &str,
    ) -> Result<()> {
        match self.meta_leader() {
            None => Err(unavailable("the metadata group has no leader")),
            Some(l) if l == self.me.id => db.commit_raise(tenant, limits, reason).await,
            Some(l) => {
                let req = PeerRequest::RaiseLimits {
                    tenant: tenant.to_string(),
                    limits,
                    reason: reason.to_string(),
                };
                match self.net.call(l, &req, FORWARD_TIMEOUT).await {
                    Ok(PeerResponse::Raised(r)) => r,
                    Ok(PeerResponse::Refused(why)) => Err(crate::proto::Error::PermissionDenied {
                        reason: why.to_string(),
                    }),
                    Ok(other) => Err(unavailable(format!(
                        "node {l} did not take the raise: {other:?}"
                    ))),
                    Err(e) => Err(unavailable(format!("node {l}: {e}"))),
                }
            }
        }
    }

    /// Commits registry changes through group 0, forwarding to its leader.
    pub(super) async fn propose_registry(&self, ops: Vec<RegOp>) -> Result<u64> {
        let deadline = Instant::now() + LEADER_WAIT * 2;
        loop {
            match self.commit_here(ops.clone()).await {
                Ok(v) => return Ok(v),
                Err(NotHere(leader)) => {
                    if let Some(l) = leader.filter(|l| *l != self.me.id) {
                        let req = PeerRequest::Registry {
                            ops: ops.clone(),
                            key_id: ADMIN_KEY.try_with(|k| k.clone()).ok(),
                        };
                        match self.net.call(l, &req, FORWARD_TIMEOUT).await {
                            Ok(PeerResponse::Counter(Ok(v))) => return Ok(v),
                            Ok(PeerResponse::Counter(Err(e))) if !e.is_retryable() => {
                                return Err(e)
                            }
                            Ok(PeerResponse::Refused(why)) => {
                                return Err(crate::proto::Error::PermissionDenied {
                                    reason: why.to_string(),
                                })
                            }
                            _ => {}
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable("the metadata group has no reachable leader"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Commits registry changes if this node leads group 0.
    pub(super) async fn commit_here(&self, ops: Vec<RegOp>) -> std::result::Result<u64, NotHere> {
        use openraft::errors::{ClientWriteError, RaftError};
        match self.meta.client_write(Command::Registry(ops)).await {
            Ok(r) => match r.data {
                CommandResult::Done(Ok(v)) => Ok(v),
                // Registry ops cannot fail at apply but storage errors.
                _ => Err(NotHere(None)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(NotHere(f.leader_id))
            }
            Err(_) => Err(NotHere(None)),
        }
    }
}
