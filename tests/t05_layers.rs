//! The module layers are one-way: a lower layer never names a higher one.
//! Reads the source files; fails naming the file and the forbidden path.
//!
//! `node` → `net::server` → `router` → `cluster` → `db` (the engine) →
//! `shard` → `raft` → `storage`, `vector`; `cluster` also uses the peer
//! transport (`net::peer`, `net::tls`), which sits above `raft` (it
//! implements `raft::Transport`) and below `db`; `config` is the bottom
//! and imports nothing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    // Cargo names the tree under test at run time; a build reused from
    // another checkout would otherwise read that checkout's sources.
    let root =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let mut stack = vec![Path::new(&root).join("src").join(dir)];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p, text));
        }
    }
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out
}

/// Every mention of a forbidden path in `dir` (a directory or one file
/// under `src/`), as "file:line: text".
fn mentions(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        for (n, line) in text.lines().enumerate() {
            if forbidden.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn config_imports_nothing_of_the_crate() {
    let found = mentions("config", &["crate::", "super::super"]);
    assert!(
        found.is_empty(),
        "config must stay the bottom layer:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_engine_knows_nothing_of_cluster_router_net_or_node() {
    let found = mentions(
        "db",
        &[
            "crate::cluster",
            "crate::router",
            "crate::net",
            "crate::node",
        ],
    );
    assert!(found.is_empty(), "db is below them:\n{}", found.join("\n"));
}

#[test]
fn the_cluster_knows_nothing_of_router_or_node() {
    let found = mentions("cluster", &["crate::router", "crate::node"]);
    assert!(
        found.is_empty(),
        "cluster is below them:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_router_knows_nothing_of_the_node() {
    let found = mentions("router", &["crate::node"]);
    assert!(
        found.is_empty(),
        "router is below node:\n{}",
        found.join("\n")
    );
}

#[test]
fn raft_and_the_shards_know_nothing_of_the_engine_cluster_router_net_or_node() {
    let forbidden = [
        "crate::db",
        "crate::cluster",
        "crate::router",
        "crate::net",
        "crate::node",
        "crate::Database",
        "crate::Session",
    ];
    let mut found = mentions("raft", &forbidden);
    found.extend(mentions("shard", &forbidden));
    assert!(
        found.is_empty(),
        "raft and shard are below them (replication goes through raft::Transport):\n{}",
        found.join("\n")
    );
}

/// The peer transport, TLS and framing sit below the engine. (The client
/// server, `net/server.rs`, is above the router it hands requests to.)
#[test]
fn the_peer_transport_knows_nothing_of_the_engine_cluster_router_or_node() {
    let forbidden = [
        "crate::db",
        "crate::cluster",
        "crate::router",
        "crate::node",
        "crate::Database",
        "crate::Session",
    ];
    let mut found = Vec::new();
    for file in ["net/peer.rs", "net/tls.rs", "net/frame.rs"] {
        found.extend(mentions(file, &forbidden));
    }
    assert!(
        found.is_empty(),
        "net::peer, net::tls and net::frame are below them:\n{}",
        found.join("\n")
    );
}

/// Metrics are counted from every layer (the router, raft), so `monitor`
/// names nothing of the crate but `proto` and `config`.
#[test]
fn monitor_names_only_proto_and_config() {
    let found = mentions(
        "monitor",
        &[
            "crate::db",
            "crate::cluster",
            "crate::router",
            "crate::net",
            "crate::node",
            "crate::shard",
            "crate::raft",
            "crate::storage",
            "crate::limits",
            "crate::Database",
            "crate::Session",
        ],
    );
    assert!(
        found.is_empty(),
        "monitor is below every layer that counts into it:\n{}",
        found.join("\n")
    );
}
