#!/usr/bin/env bash
# The read-only gate: formatting, clippy with -D warnings, docs, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps
./scripts/test.sh
