//! The network: TLS material, framing on QUIC streams, the client
//! endpoint server, and the peer transport between cluster nodes (the
//! raft layer's `Transport`). `peer`, `tls` and `frame` sit below the
//! engine; `server` sits above the router.

pub mod fault;
pub mod frame;
pub mod peer;
pub mod server;
pub mod tls;

pub use server::{Server, ServerSettings};
