//! Placement: which nodes hold a new tenant's shard group, and this
//! node's place in a group.

use std::collections::HashMap;

use crate::db::{Database, NodeRecord, Replica, TenantRecord};
use crate::proto::Result;
use crate::shard::ReplicaNet;

use super::{member, unavailable, Cluster};

impl Cluster {
    /// Places a new group: `replication_factor` live nodes (not
    /// draining), fewest replicas first. Replica ids are fresh.
    pub(super) async fn place(&self, db: &Database, group: u64) -> Result<Vec<Replica>> {
        let reg = db.registry()?;
        let nodes: Vec<NodeRecord> = reg
            .nodes()?
            .into_iter()
            .filter(|n| !n.removed && !n.draining)
            .collect();
        if nodes.is_empty() {
            return Err(unavailable("no live nodes to place a shard on"));
        }
        let cached = self.load.lock().clone();
        let load = match cached {
            Some(l) => l,
            None => replica_load(&reg.tenants()?),
        };
        let live: Vec<u64> = nodes.iter().map(|n| n.id).collect();
        let chosen = choose_nodes(&live, &load, group, self.settings.replication_factor);
        if let Some(l) = self.load.lock().as_mut() {
            for n in &chosen {
                *l.entry(*n).or_insert(0) += 1;
            }
        }
        let mut out = Vec::with_capacity(chosen.len());
        for node in chosen {
            let id = reg.take_id("replica").await?;
            out.push(Replica {
                id,
                node,
                initial: true,
                learner: false,
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

/// The nodes of a new group's replicas: `replication_factor` distinct
/// nodes of `live` (all of them when there are fewer), those with the
/// fewest replicas in `load` first. Ties are broken by a hash of the node
/// id and the group, so equally loaded nodes take turns across groups.
pub(super) fn choose_nodes(
    live: &[u64],
    load: &HashMap<u64, usize>,
    group: u64,
    replication_factor: usize,
) -> Vec<u64> {
    let mut ranked: Vec<(usize, u64, u64)> = live
        .iter()
        .map(|&n| {
            let spread = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group;
            (load.get(&n).copied().unwrap_or(0), spread, n)
        })
        .collect();
    ranked.sort();
    ranked.dedup_by_key(|r| r.2);
    ranked
        .into_iter()
        .take(replication_factor)
        .map(|(_, _, n)| n)
        .collect()
}

/// Replicas per node over every record.
/// The least loaded of `live` holding no replica of `rec`'s group.
pub(super) fn least_loaded(
    live: &[u64],
    load: &HashMap<u64, usize>,
    rec: &TenantRecord,
) -> Option<u64> {
    live.iter()
        .filter(|n| !rec.replicas.iter().any(|r| r.node == **n))
        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))
        .copied()
}

pub(super) fn replica_load(recs: &[TenantRecord]) -> HashMap<u64, usize> {
    let mut load = HashMap::new();
    for r in recs {
        for rep in &r.replicas {
            *load.entry(rep.node).or_insert(0) += 1;
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{hash_map, vec};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Distinct live nodes, min(replication factor, live nodes) of
        /// them, and no node left out is less loaded than one chosen.
        #[test]
        fn replicas_go_to_distinct_live_nodes_least_loaded_first(
            live in vec(0u64..40, 0..12),
            load in hash_map(0u64..40, 0usize..20, 0..40),
            group: u64,
            rf in 0usize..6,
        ) {
            let chosen = choose_nodes(&live, &load, group, rf);
            let distinct: std::collections::BTreeSet<u64> = live.iter().copied().collect();
            let picked: std::collections::BTreeSet<u64> = chosen.iter().copied().collect();
            prop_assert_eq!(picked.len(), chosen.len(), "a node twice: {:?}", chosen);
            prop_assert!(picked.is_subset(&distinct));
            prop_assert_eq!(chosen.len(), rf.min(distinct.len()));
            let of = |n: &u64| load.get(n).copied().unwrap_or(0);
            let most_chosen = chosen.iter().map(of).max().unwrap_or(0);
            for n in distinct.difference(&picked) {
                prop_assert!(of(n) >= most_chosen, "{} (load {}) left out for load {}", n, of(n), most_chosen);
            }
        }
    }
}
