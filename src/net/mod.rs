//! The network: TLS material, framing on QUIC streams, and the client
//! endpoint server. (Peer transport for replication comes with the
//! cluster issue.)

pub mod frame;
pub mod peer;
pub mod server;
pub mod tls;

pub use server::{Server, ServerSettings};
