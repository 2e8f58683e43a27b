#!/usr/bin/env bash
# Runs the engine benchmark (durable writes, vector search, limit checks).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo build --release --bin vektagraf
exec "$CARGO_TARGET_DIR/release/vektagraf" bench engine "$@"
