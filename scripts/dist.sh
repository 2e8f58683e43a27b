#!/usr/bin/env bash
# Builds the release binary and packs it for copying to other machines:
#   dist/vektagraf        the binary without debug info (symbol names kept,
#                         so perf and backtraces still name functions)
#   dist/vektagraf.debug  its debug info (DWARF), linked by a .gnu_debuglink:
#                         put it beside the binary (or in /usr/lib/debug)
#                         and perf, gdb and addr2line find it.
# The build itself keeps `debug = 1` (cargo profiles are shared with the
# tests, and a profile change rebuilds RocksDB and FAISS).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo build --release --bin vektagraf
BIN="$CARGO_TARGET_DIR/release/vektagraf"
OUT="${DIST_DIR:-dist}"
mkdir -p "$OUT"
objcopy --only-keep-debug --compress-debug-sections=zlib "$BIN" "$OUT/vektagraf.debug"
objcopy --strip-debug --add-gnu-debuglink="$OUT/vektagraf.debug" "$BIN" "$OUT/vektagraf.tmp"
mv "$OUT/vektagraf.tmp" "$OUT/vektagraf"
chmod 0755 "$OUT/vektagraf"
"$OUT/vektagraf" --version >/dev/null
ls -l "$BIN" "$OUT/vektagraf" "$OUT/vektagraf.debug" | awk '{printf "%6.0f MB  %s\n", $5 / 1e6, $9}'
