//! Benchmarks run by `vektagraf bench ...` (not tests).

pub mod cache;
pub mod cluster;
pub mod engine;
pub mod etcd;
pub mod hibernate;
pub mod idle_cluster;
pub mod migrate;
pub mod quic;
pub mod shares;
