//! What another node may do here. The transport proves which node id a
//! peer's certificate names; its rights come from the metadata:
//!
//! - a node id with no record may only say `Hello`, `Ping` and `Join`,
//!   and only under the id its certificate names (a member may forward
//!   the join it received);
//! - a removed node, or one presenting another incarnation than its
//!   record holds, is refused at `Hello` and on every message;
//! - raft messages (append, vote, pre-vote, hand-over, quiesce, snapshot)
//!   for a tenant group come only from nodes hosting a replica of it (in
//!   the group's placement record or its raft membership); for group 0
//!   from its members and learners, which are the live nodes; a grant
//!   from a tenant's budget goes only to a node hosting its replica;
//! - `TransferLeader` comes only from group 0's leader (it drives
//!   moves); a shard status read without an admin key only from group
//!   0's leader or a node hosting the tenant's replica;
//! - a join relayed by a member for another node is admitted by group
//!   0's leader only once it dialled the joining node at its address and
//!   found that node's certificate and incarnation there;
//! - registry writes and admin requests need the admin key of the
//!   request they forward (checked in `service`), and forwarded tenant
//!   requests their client's key (checked by the router).
//!
//! The node's view of the records is refreshed by every reconcile pass,
//! seeded by the answer to its own join, and read from the registry on a
//! miss.

use openraft::async_runtime::WatchReceiver;

use crate::db::{Database, NodeRecord};
use crate::net::peer::{PeerRefusal, PeerRequest};

use super::Cluster;

/// Whether a node with record `r` (if any) presenting `incarnation` may
/// connect.
pub(super) fn check_record(r: &NodeRecord, incarnation: u64) -> Result<(), PeerRefusal> {
    if r.removed {
        return Err(PeerRefusal::RemovedNode { node: r.id });
    }
    if r.incarnation != 0 && r.incarnation != incarnation {
        return Err(PeerRefusal::IncarnationMismatch {
            node: r.id,
            recorded: r.incarnation,
            presented: incarnation,
        });
    }
    Ok(())
}

impl Cluster {
    /// Adds or updates records in the node's view of its peers (records
    /// are never deleted, only marked removed).
    pub(super) fn learn_peers(&self, nodes: &[NodeRecord]) {
        let mut view = self.peers.write();
        for n in nodes {
            view.insert(n.id, n.clone());
        }
    }

    /// The record of node `id`, from the view, else from the registry.
    fn peer_record(&self, db: &Database, id: u64) -> Option<NodeRecord> {
        if let Some(r) = self.peers.read().get(&id) {
            return Some(r.clone());
        }
        let nodes = db.registry().and_then(|r| r.nodes()).ok()?;
        self.learn_peers(&nodes);
        nodes.into_iter().find(|n| n.id == id)
    }

    /// Admission of node `node` at `Hello`: refuses a removed node and a
    /// changed incarnation. A node without a record is admitted: it may
    /// only join (see [`authorize`](Self::authorize)).
    pub(super) fn admit_peer(
        &self,
        db: &Database,
        node: u64,
        incarnation: u64,
    ) -> Result<(), PeerRefusal> {
        match self.peer_record(db, node) {
            Some(r) => check_record(&r, incarnation),
            None => Ok(()),
        }
    }

    /// Whether a join of `rec` may go ahead, by this node's view (group
    /// 0's leader checks again on its own).
    pub(super) fn check_join(&self, db: &Database, rec: &NodeRecord) -> Result<(), PeerRefusal> {
        match self.peer_record(db, rec.id) {
            Some(r) => check_record(&r, rec.incarnation),
            None => Ok(()),
        }
    }

    /// Whether node `from` may send `req`.
    pub(super) fn authorize(
        &self,
        db: &Database,
        from: u64,
        req: &PeerRequest,
    ) -> Result<(), PeerRefusal> {
        let known = self.known(db, from)?;
        match req {
            PeerRequest::Hello { .. } | PeerRequest::Ping => return Ok(()),
            PeerRequest::Join(rec) if rec.id != from && !known => {
                return Err(PeerRefusal::JoinIdMismatch {
                    certificate: from,
                    joining: rec.id,
                })
            }
            PeerRequest::Join(_) => return Ok(()),
            _ if !known => return Err(PeerRefusal::UnknownNode { node: from }),
            _ => {}
        }
        match req {
            PeerRequest::Append { group, .. }
            | PeerRequest::Vote { group, .. }
            | PeerRequest::PreVote { group, .. }
            | PeerRequest::HandOver { group, .. }
            | PeerRequest::Quiesce { group, .. }
            | PeerRequest::Snapshot { group, .. } => self.check_hosts(db, *group, from),
            PeerRequest::Grant { tenant, .. } => match db.loaded(tenant) {
                Some(t) => self.check_hosts(db, t.group(), from),
                None => Ok(()),
            },
            // Moves run on group 0's leader; another member handing a
            // group's leadership around would be a disruption, not a move.
            PeerRequest::TransferLeader { .. } => self.check_meta_leader(from, "transfer leader"),
            // Only a node hosting one of the tenant's replicas (by group
            // 0's record, which the receiver, group 0's leader, holds).
            PeerRequest::RaiseLimits { tenant, .. } => match db.record(tenant) {
                Ok(rec) if !rec.replicas.iter().any(|r| r.node == from) => {
                    Err(PeerRefusal::NotAReplica {
                        node: from,
                        group: rec.group,
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Whether node `from` may send raft messages (a snapshot) of `group`.
    pub(super) fn authorize_group(
        &self,
        db: &Database,
        from: u64,
        group: u64,
    ) -> Result<(), PeerRefusal> {
        if !self.known(db, from)? {
            return Err(PeerRefusal::UnknownNode { node: from });
        }
        self.check_hosts(db, group, from)
    }

    /// Whether node `from` is a live node (Ok(false): unknown).
    fn known(&self, db: &Database, from: u64) -> Result<bool, PeerRefusal> {
        match self.peer_record(db, from) {
            Some(r) if r.removed => Err(PeerRefusal::RemovedNode { node: from }),
            Some(_) => Ok(true),
            // A record not applied here yet, but its node is already in
            // group 0's membership.
            None => Ok(self.in_meta_membership(from)),
        }
    }

    /// Whether node `node` hosts a replica of `group` (group 0: any live
    /// node). A group with no replica here passes: its messages are
    /// answered "no replica on this node" anyway.
    pub(super) fn check_hosts(
        &self,
        db: &Database,
        group: u64,
        node: u64,
    ) -> Result<(), PeerRefusal> {
        if group == 0 {
            return Ok(());
        }
        let Some(t) = db.loaded_group(group) else {
            return Ok(());
        };
        let placed = t.replicas().iter().any(|r| r.node == node);
        let member = || {
            let name = node.to_string();
            t.raft().is_some_and(|r| {
                r.metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .nodes()
                    .any(|(_, n)| n.addr == name)
            })
        };
        if placed || member() {
            Ok(())
        } else {
            Err(PeerRefusal::NotAReplica { node, group })
        }
    }

    /// Whether node `from` leads group 0, as this node sees it.
    pub(super) fn check_meta_leader(&self, from: u64, what: &str) -> Result<(), PeerRefusal> {
        let leader = self.meta_leader();
        if leader == Some(from) {
            Ok(())
        } else {
            Err(PeerRefusal::NotMetadataLeader {
                node: from,
                what: what.to_string(),
                leader,
            })
        }
    }

    /// Whether node `from` may read `tenant`'s shard status without an
    /// admin key: group 0's leader (its move jobs do) or a node hosting a
    /// replica of the tenant's group.
    pub(super) fn check_status_reader(
        &self,
        db: &Database,
        from: u64,
        tenant: &str,
    ) -> Result<(), PeerRefusal> {
        if self.check_meta_leader(from, "shard status").is_ok() {
            return Ok(());
        }
        match db.loaded(tenant) {
            Some(t) if self.check_hosts(db, t.group(), from).is_ok() => Ok(()),
            _ => Err(PeerRefusal::NotAnAdminForward {
                node: from,
                what: "shard status".into(),
            }),
        }
    }

    fn in_meta_membership(&self, node: u64) -> bool {
        self.meta
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(removed: bool, incarnation: u64) -> NodeRecord {
        NodeRecord {
            id: 4,
            peer_addr: String::new(),
            client_addr: String::new(),
            removed,
            draining: false,
            incarnation,
        }
    }

    #[test]
    fn a_record_admits_its_incarnation_only_and_never_once_removed() {
        assert_eq!(check_record(&rec(false, 7), 7), Ok(()));
        assert_eq!(
            check_record(&rec(false, 7), 8),
            Err(PeerRefusal::IncarnationMismatch {
                node: 4,
                recorded: 7,
                presented: 8
            })
        );
        // A record from before incarnations matches any.
        assert_eq!(check_record(&rec(false, 0), 8), Ok(()));
        assert_eq!(
            check_record(&rec(true, 7), 7),
            Err(PeerRefusal::RemovedNode { node: 4 })
        );
    }
}
