#!/usr/bin/env bash
# The mutating counterpart of gate.sh: formats and applies clippy fixes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo fmt --all
cargo clippy --release --all-targets --fix --allow-dirty --allow-staged
