#!/usr/bin/env bash
# Builds Vektagraf, starts a real node with the default config (data in
# ./data, QUIC on 127.0.0.1:7687), and walks through the quickstart over
# the network with the CLI. The node keeps running afterwards (its PID is in
# ./data/node.pid); stop it with: kill "$(cat data/node.pid)".
# Set STOP=1 to stop it at the end. `vektagraf quickstart` runs the same
# tour on the embedded API instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
cargo build --release --bin vektagraf
BIN="$CARGO_TARGET_DIR/release/vektagraf"
mkdir -p data
if [ -f data/node.pid ] && kill -0 "$(cat data/node.pid)" 2>/dev/null; then
  echo "a node is already running (pid $(cat data/node.pid)); using it"
else
  "$BIN" serve > data/node.log 2>&1 &
  echo $! > data/node.pid
  for _ in $(seq 1 100); do
    grep -q "listening on" data/node.log 2>/dev/null && break
    sleep 0.1
  done
  grep -q "listening on" data/node.log || { cat data/node.log; exit 1; }
fi
cat data/node.log | grep -E "listening|certificate|admin key" || true
V() { echo "+ vektagraf $*"; "$BIN" "$@"; }
ADMIN="$(cat data/admin.key)"
export VEKTAGRAF_KEY="$ADMIN"
"$BIN" tenant get acme_corp >/dev/null 2>&1 && V tenant delete acme_corp
V tenant create acme_corp --name "ACME Corporation" --tier business
V tenant create startup_inc --name "Startup Inc" --tier starter 2>/dev/null || true
V user create acme_corp alice
KEY="$("$BIN" key create --tenant acme_corp --user alice 2>/dev/null)"
echo "tenant key for alice@acme_corp: ${KEY:0:22}..."
export VEKTAGRAF_KEY="$KEY"
V collection create products --dim 4 --metric cosine --index hnsw
for i in 1 2 3 4 5 6; do
  V object put products "p$i" --json "{\"name\": \"product $i\", \"price\": $((i * 10)), \"category\": \"$([ $((i % 2)) = 0 ] && echo shoes || echo hats)\"}" --vector "[$i, 1, 0.5, $((7 - i))]" >/dev/null
done
V edge put p1 similar p2 >/dev/null
V edge put p2 bundle p3 >/dev/null
V object get p1
V query products --filter '{"price": {"$lt": 40}, "category": {"$in": ["shoes", "hats"]}}'
V search products --vector '[2, 1, 0.5, 5]' --k 3 --filter '{"category": "shoes"}'
V traverse p1 --depth 2
V usage
export VEKTAGRAF_KEY="$ADMIN"
V tenant usage acme_corp --output json
echo
echo "connect yourself:  $BIN --key-file data/admin.key tenant list"
if [ "${STOP:-0}" = 1 ]; then
  kill "$(cat data/node.pid)" && rm -f data/node.pid
  echo "node stopped"
else
  echo "the node keeps running (pid $(cat data/node.pid)); stop it with: kill \"\$(cat data/node.pid)\""
fi
