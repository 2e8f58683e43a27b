//! The engine's gauges for a metrics scrape: admission load, the raft
//! groups open here, the storage of the tenants whose shard this node
//! leads, and the read cache of every tenant loaded here.

use openraft::async_runtime::WatchReceiver;

use crate::monitor::{CacheSample, NodeSample, TenantSample};

use super::Database;

impl Database {
    /// Reads the engine's gauges (cheap: atomics and watch channels, one
    /// pass over the loaded tenants).
    pub fn metrics_sample(&self) -> NodeSample {
        let admission = &self.inner.admission;
        let (in_flight, queued) = admission.load_by_priority();
        let mut s = NodeSample {
            in_flight: in_flight.map(|n| n as u64),
            queued: queued.map(|n| n as u64),
            max_in_flight: admission.max_in_flight() as u64,
            cache_bytes: self.inner.cache_budget.used(),
            cache_max_bytes: self.inner.cache_budget.max_bytes(),
            hibernated: self.hibernated_count(),
            ..Default::default()
        };
        for t in self.loaded_tenants() {
            s.caches.push(CacheSample {
                tenant: t.config().tenant_id.clone(),
                usage: t.cache.stats(),
            });
            let Some(raft) = t.raft() else { continue };
            let (leading, lag) = {
                let m = raft.metrics();
                let m = m.borrow_watched();
                let applied = m.last_applied.as_ref().map_or(0, |l| l.index);
                (
                    m.state == openraft::ServerState::Leader,
                    m.last_log_index.unwrap_or(0).saturating_sub(applied),
                )
            };
            s.groups += 1;
            s.apply_lag = s.apply_lag.saturating_add(lag);
            s.apply_lag_max = s.apply_lag_max.max(lag);
            if t.quiesced().load(std::sync::atomic::Ordering::Acquire) {
                s.groups_quiesced += 1;
            }
            if !leading {
                continue;
            }
            s.groups_led += 1;
            let Ok(data) = t.data() else { continue };
            let cfg = t.config();
            let l = &cfg.storage_limit;
            s.tenants.push(TenantSample {
                tenant: cfg.tenant_id.clone(),
                usage: data.usage(),
                max_bytes: l.max_storage_bytes,
                max_objects: l.max_objects,
                max_vectors: l.max_vectors,
            });
        }
        s
    }
}
