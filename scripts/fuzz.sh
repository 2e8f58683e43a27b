#!/usr/bin/env bash
# Fuzzes the frame/envelope decoder for a bounded time (default 60 s),
# on threads with the server's 2 MiB stacks, with inputs up to 1 MiB.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-60}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/vektagraf-fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/frame
cargo fuzz run frame corpus/frame -- -max_total_time="$SECS" -max_len=1048576 -rss_limit_mb=2048
