#!/usr/bin/env bash
# Runs an N-node Vektagraf cluster on loopback.
#
#   scripts/cluster.sh up [N]      build, make certs and configs, start N nodes
#   scripts/cluster.sh status [N]  PIDs, liveness, and the cluster's node list
#   scripts/cluster.sh down [N]    stop the nodes by their recorded PIDs
#
# Everything lives in $CLUSTER_DIR (default ./data/cluster-N): certs/,
# node-<i>/ (data, node.log, node.pid) and node-<i>.toml. Node i listens
# for clients on 127.0.0.1:(17686+i), for peers on 127.0.0.1:(17786+i) and
# serves Prometheus metrics on http://127.0.0.1:(9463+i)/metrics.
# Node 1 bootstraps the cluster; the others join through it. Talk to it:
#   vektagraf --addr 127.0.0.1:17687 --ca $CLUSTER_DIR/certs/ca.crt \
#     --server-name localhost --key-file $CLUSTER_DIR/node-1/admin.key node list
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-status}"
N="${2:-3}"
DIR="${CLUSTER_DIR:-./data/cluster-$N}"
. scripts/env.sh
BIN="${VEKTAGRAF_BIN:-$CARGO_TARGET_DIR/release/vektagraf}"

client_port() { echo $((17686 + $1)); }
peer_port() { echo $((17786 + $1)); }

write_config() {
  local i=$1
  cat > "$DIR/node-$i.toml" <<EOF
[node]
data_dir = "$DIR/node-$i"

[server]
listen = "127.0.0.1:$(client_port "$i")"
cert = "$DIR/certs/node-$i.crt"
key = "$DIR/certs/node-$i.key"

[metrics]
listen = "127.0.0.1:$((9463 + i))"

[cluster]
enabled = true
node_id = $i
peer_listen = "127.0.0.1:$(peer_port "$i")"
ca = "$DIR/certs/ca.crt"
cert = "$DIR/certs/node-$i.crt"
key = "$DIR/certs/node-$i.key"
join = [$([ "$i" = 1 ] || echo "\"127.0.0.1:$(peer_port 1)\"")]
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  ./scripts/setup.sh
  [ -x "$BIN" ] || cargo build --release --bin vektagraf
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if [ ! -f "$DIR/certs/ca.crt" ]; then
    "$BIN" certs --out "$DIR/certs" --nodes "$(seq -s, 1 "$N")" >/dev/null
  fi
  for i in $(seq 1 "$N"); do
    mkdir -p "$DIR/node-$i"
    write_config "$i"
    if alive "$DIR/node-$i/node.pid"; then
      echo "node $i already running (pid $(cat "$DIR/node-$i/node.pid"))"
      continue
    fi
    "$BIN" serve --config "$DIR/node-$i.toml" >> "$DIR/node-$i/node.log" 2>&1 &
    echo $! > "$DIR/node-$i/node.pid"
    for _ in $(seq 1 300); do
      grep -q "listening on" "$DIR/node-$i/node.log" 2>/dev/null && break
      alive "$DIR/node-$i/node.pid" || { tail -20 "$DIR/node-$i/node.log"; exit 1; }
      sleep 0.1
    done
    grep -q "listening on" "$DIR/node-$i/node.log" || { tail -20 "$DIR/node-$i/node.log"; exit 1; }
    echo "node $i up: pid $(cat "$DIR/node-$i/node.pid"), clients 127.0.0.1:$(client_port "$i"), peers 127.0.0.1:$(peer_port "$i")"
  done
  echo "cluster dir: $DIR"
}

status() {
  local any=0
  for i in $(seq 1 "$N"); do
    if alive "$DIR/node-$i/node.pid"; then
      echo "node $i: running (pid $(cat "$DIR/node-$i/node.pid"))"
      any=1
    else
      echo "node $i: stopped"
    fi
  done
  if [ "$any" = 1 ]; then
    for i in $(seq 1 "$N"); do
      if alive "$DIR/node-$i/node.pid"; then
        "$BIN" --addr "127.0.0.1:$(client_port "$i")" --ca "$DIR/certs/ca.crt" \
          --key-file "$DIR/node-1/admin.key" node list || true
        break
      fi
    done
  fi
}

down() {
  for i in $(seq 1 "$N"); do
    local pidf="$DIR/node-$i/node.pid"
    if alive "$pidf"; then
      local pid
      pid="$(cat "$pidf")"
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "node $i stopped (pid $pid)"
    fi
    rm -f "$pidf"
  done
}

case "$cmd" in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down [N]" >&2; exit 2 ;;
esac
