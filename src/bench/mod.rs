//! Benchmarks run by `vektagraf bench ...` (not tests).

pub mod engine;
pub mod quic;
