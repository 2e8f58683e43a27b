//! Vektagraf: a multi-tenant database for objects, vectors and graphs.
//!
//! # Module map
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | layered node configuration and its settings structs (the bottom layer) |
//! | [`proto`] | operations, data model, filters, errors: shared with clients |
//! | [`tenant`] | `TenantConfig`, tiers, id rules (pure) |
//! | [`limits`] | rate windows, quotas, concurrency, priority admission, cost model (pure) |
//! | [`storage`] | `ShardStore` over RocksDB, key layout, deterministic apply |
//! | [`vector`] | `VectorIndex` over FAISS |
//! | [`raft`] | openraft type config, shared log store with group commit, state machine, the `Transport` trait replication needs |
//! | [`shard`] | `ShardData`, the shard actor and its supervisor (ractor), each tenant's read cache |
//! | [`db`] | the engine, embedded API: `Database`, `Session` |
//! | [`cluster`] | group 0, membership, placement, reconcile, quiescence, the peer service |
//! | [`router`] | the router actor: every client request's front door, dispatch and routing |
//! | [`node`] | a running node: engine, cluster, router and server composed; the node supervisor |
//! | [`auth`] | API keys |
//! | [`net`] | TLS, framing, the QUIC server, the peer transport (implements `raft::Transport`) |
//! | [`client`] | the QUIC client driver |
//! | [`migrate`] | whole-tenant export and import files, on the driver (the node's side is in `db`) |
//! | [`codec`] | the one binary encoding (bincode 2) |
//! | [`monitor`] | Prometheus metrics: request counters with a capped tenant label, gauges read at scrape, the exposition (served by `node::metrics`); the node's live event bus |
//!
//! Dependency rule (one way, top to bottom):
//!
//! ```text
//! node ─→ net::server ─→ router ─→ cluster ─→ db ─→ shard ─→ raft ─→ storage, vector
//!                                     └─→ net::peer, net::tls ─→ raft
//! config ←─ every layer (config imports nothing of the crate)
//! ```
//!
//! `config` imports nothing else of the crate. The engine (`db`) never
//! names `cluster`, `router`, `net` or `node`: where it needs the cluster
//! it calls the `db::ClusterHooks` and `db::MetaGroup` traits the
//! cluster implements. `cluster` never names `router` or `node`: it
//! serves forwarded requests through its `Forwarded` trait, which the
//! router implements. `raft` and `shard` never name `db`, `cluster`,
//! `router`, `net` or `node`: a replicated group sends its messages
//! through the `raft::Transport` trait, which `net::peer::PeerNet`
//! implements (the cluster hands it to the shards as an
//! `Arc<dyn Transport>`). The peer transport (`net::peer`, `net::tls`,
//! `net::frame`) names neither `db`, `cluster`, `router` nor `node`; the
//! node record it carries is `proto::NodeRecord`. `net::server` is above
//! the router it hands requests to. `tests/t05_layers.rs` checks these
//! rules. `proto` imports nothing else of the crate but `codec` and the
//! shared `tenant` types; `client` imports only `proto`, `tenant` and
//! `net::{tls, frame}`; `migrate` only `client`, `proto`, `tenant`,
//! `codec`, `util` and `limits::calendar`; `monitor` only `proto` and
//! `config` (so any layer may count into it); the pure modules (`tenant`, `limits`) import only
//! `proto`; `storage`, `vector` and `raft` know nothing of actors; only
//! `shard`, `db`, `router` and `node` start actors.

pub mod auth;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod db;
pub mod limits;
pub mod migrate;
pub mod monitor;
pub mod net;
pub mod node;
pub mod proto;
pub mod raft;
pub mod router;
pub mod shard;
pub mod storage;
pub mod tenant;
pub mod util;
pub mod vector;

pub use config::NodeConfig;
pub use db::{Database, Session};
pub use node::Node;
pub use tenant::{TenantConfig, Tiers};
