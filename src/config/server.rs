//! `[server]`: the client endpoint.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Default largest request frame: the wire's `MAX_FRAME_BYTES` (which
/// asserts the two agree).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// `[server]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain (empty: self-signed, created on first start).
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Extra SANs for the self-signed certificate.
    pub extra_names: Vec<String>,
    /// Largest request frame, bytes.
    pub max_frame_bytes: usize,
    /// Requests in flight per connection.
    pub max_streams_per_connection: u32,
    /// Connections at once.
    pub max_connections: usize,
    /// Idle connections close after this, ms.
    pub idle_timeout_ms: u64,
    /// Handshake plus authentication must finish within this, ms.
    pub auth_timeout_ms: u64,
    /// Connections handshaking or not yet authenticated, at once.
    pub max_unauthenticated: usize,
    /// Of those, from one IP address.
    pub max_unauthenticated_per_ip: usize,
    /// Connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Failed authentications per IP address per minute.
    pub max_auth_failures_per_ip: u32,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7687)),
            cert: String::new(),
            key: String::new(),
            extra_names: Vec::new(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_streams_per_connection: 256,
            max_connections: 1024,
            idle_timeout_ms: 30_000,
            auth_timeout_ms: 5_000,
            max_unauthenticated: 256,
            max_unauthenticated_per_ip: 32,
            max_connections_per_ip: 512,
            max_auth_failures_per_ip: 30,
        }
    }
}
