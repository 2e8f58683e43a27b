//! Placement: which nodes hold a new tenant's shard group, and this
//! node's place in a group.

use std::collections::HashMap;

use crate::db::{Database, NodeRecord, Replica, TenantRecord};
use crate::proto::Result;
use crate::shard::ReplicaNet;

use super::{member, unavailable, Cluster};

impl Cluster {
    /// Places a new group: `replication_factor` live nodes, fewest
    /// replicas first. Replica ids are fresh.
    pub(super) async fn place(&self, db: &Database, group: u64) -> Result<Vec<Replica>> {
        let reg = db.registry()?;
        let nodes: Vec<NodeRecord> = reg.nodes()?.into_iter().filter(|n| !n.removed).collect();
        if nodes.is_empty() {
            return Err(unavailable("no live nodes to place a shard on"));
        }
        let load = replica_load(&reg.tenants()?);
        let mut ranked: Vec<(usize, u64, u64)> = nodes
            .iter()
            .map(|n| {
                let spread = n.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group;
                (load.get(&n.id).copied().unwrap_or(0), spread, n.id)
            })
            .collect();
        ranked.sort();
        let rf = self.settings.replication_factor.min(nodes.len());
        let mut out = Vec::with_capacity(rf);
        for (_, _, node) in ranked.into_iter().take(rf) {
            let id = reg.next_id("replica").await?;
            out.push(Replica {
                id,
                node,
                initial: true,
            });
        }
        Ok(out)
    }

    /// The replica id and network of this node's replica of `rec`.
    pub(super) fn replica_net(&self, rec: &TenantRecord) -> Result<(u64, Option<ReplicaNet>)> {
        let mine = rec
            .replicas
            .iter()
            .find(|r| r.node == self.me.id)
            .ok_or_else(|| {
                unavailable(format!(
                    "tenant {} has no replica here",
                    rec.config.tenant_id
                ))
            })?;
        let initial = mine.initial.then(|| {
            rec.replicas
                .iter()
                .filter(|r| r.initial)
                .map(|r| (r.id, member(r.node)))
                .collect()
        });
        Ok((
            mine.id,
            Some(ReplicaNet {
                net: self.net.clone(),
                initial,
            }),
        ))
    }
}

/// Replicas per node over every record.
pub(super) fn replica_load(recs: &[TenantRecord]) -> HashMap<u64, usize> {
    let mut load = HashMap::new();
    for r in recs {
        for rep in &r.replicas {
            *load.entry(rep.node).or_insert(0) += 1;
        }
    }
    load
}
