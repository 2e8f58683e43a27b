#!/usr/bin/env bash
# Runs every test (unit, integration, openraft's storage suite, the QUIC
# server tests, the peer mTLS test, the cluster fault tests on real
# processes in network namespaces (cluster-tests/, root only), and a
# bounded fuzz run of the wire decoder) in the release profile, the one
# profile RocksDB and FAISS are built in.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
start=$(date +%s)
cargo build --release --all-targets
cargo test --release --no-fail-fast -- --test-threads=2
# The frame/envelope decoder under libFuzzer, for a bounded time.
./scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
echo "test.sh: all tests passed in $(( $(date +%s) - start )) s"
