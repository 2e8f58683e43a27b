#!/usr/bin/env bash
# Builds Vektagraf and runs the embedded quickstart (data in ./data/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo build --release --bin vektagraf
exec "$CARGO_TARGET_DIR/release/vektagraf" quickstart "$@"
