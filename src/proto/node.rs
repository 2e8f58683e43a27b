//! A cluster node's record: what the metadata group stores about it and
//! what a joining node sends. Here, below both the engine (which keeps
//! the registry) and the peer transport (which carries `Join`), so
//! neither names the other.

use serde::{Deserialize, Serialize};

/// A cluster node as the metadata group records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (also its raft id in group 0).
    pub id: u64,
    /// Peer endpoint address (QUIC, mutual TLS).
    pub peer_addr: String,
    /// Client endpoint address.
    pub client_addr: String,
    /// Removed by the admin: its replicas were placed elsewhere.
    pub removed: bool,
    /// Being drained (`node drain`): no new replicas are placed here and
    /// its replicas move away.
    #[serde(default)]
    pub draining: bool,
    /// The node's incarnation: a random id created with its data
    /// directory (see `cluster::incarnation`), recorded when it joins. A
    /// node presenting another one lost its data (votes and log) and is
    /// refused under this id. 0: not recorded (a record from before
    /// incarnations), which any incarnation matches.
    #[serde(default)]
    pub incarnation: u64,
}
