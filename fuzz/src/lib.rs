//! The wire decoder of Vektagraf, built from the main crate's sources.
#![allow(dead_code, unused_imports)]

#[path = "../../src/codec/mod.rs"]
pub mod codec;
#[path = "../../src/proto/mod.rs"]
pub mod proto;
#[path = "../../src/tenant/mod.rs"]
pub mod tenant;
#[path = "../../src/util.rs"]
pub mod util;
