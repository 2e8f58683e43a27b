//! Vektagraf: a multi-tenant database for objects, vectors and graphs.
//!
//! # Module map
//!
//! | module | what it holds |
//! |---|---|
//! | [`proto`] | operations, data model, filters, errors: shared with clients |
//! | [`tenant`] | `TenantConfig`, tiers, id rules (pure) |
//! | [`limits`] | rate windows, quotas, concurrency, priority admission, cost model (pure) |
//! | [`storage`] | `ShardStore` over RocksDB, key layout, deterministic apply |
//! | [`vector`] | `VectorIndex` over FAISS |
//! | [`raft`] | openraft type config, shared log store with group commit, state machine |
//! | [`shard`] | `ShardData`, the shard actor and its supervisor (ractor) |
//! | [`db`] | the embedded API: `Database`, `Session` |
//! | [`config`] | layered node configuration |
//! | [`auth`] | API keys |
//! | [`net`] | TLS, framing, the QUIC server |
//! | [`router`] | the router actor: every client request's front door, and request dispatch |
//! | [`client`] | the QUIC client driver |
//! | [`codec`] | the one binary encoding (bincode 2) |
//!
//! Dependency rule: `proto` imports nothing else of the crate but `codec`
//! and the shared `tenant` types; `client` imports only `proto`, `tenant`
//! and `net::{tls, frame}`;
//! the pure modules (`tenant`, `limits`) import only `proto`; `storage`,
//! `vector` and `raft` know nothing of actors; only `shard` and `db` start
//! actors.

pub mod auth;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod db;
pub mod limits;
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
