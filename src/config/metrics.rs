//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics` (off: no listener, nothing recorded is exported).
    pub enabled: bool,
    /// Address of the admin HTTP listener (loopback by default). A port
    /// already taken is logged as an error and the node runs without it.
    pub listen: SocketAddr,
    /// Tenants with their own `tenant` label; the rest are summed under
    /// `tenant="_other"`.
    pub max_tenant_labels: usize,
    /// How often the most active tenants are chosen again, ms.
    pub relabel_interval_ms: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_tenant_labels: 100,
            relabel_interval_ms: 15_000,
        }
    }
}
