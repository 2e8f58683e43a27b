#!/usr/bin/env bash
# A local 3-member etcd 3.4 cluster on loopback, the baseline for the etcd
# comparison benchmark (src/bench/etcd.rs).
#
#   scripts/etcd-cluster.sh up DIR      wipe DIR's previous cluster, start 3 members, wait until healthy
#   scripts/etcd-cluster.sh status DIR  member PIDs and `etcdctl endpoint status`; non-zero if unhealthy
#   scripts/etcd-cluster.sh down DIR    stop the recorded PIDs (TERM, then KILL), remove the data
#
# Member N (1-3): client URL http://127.0.0.1:2379N, peer URL
# http://127.0.0.1:2380N, data DIR/etcd-N.data, log DIR/etcd-N.log,
# PID DIR/etcd-N.pid. `down` keeps the logs; `up` removes them.
# Settings are etcd's defaults (snapshot-count 100000, heartbeat 100 ms,
# election 1000 ms) except the backend quota and the log level.
# Environment: ETCD, ETCDCTL (binaries), ETCD_UP_TIMEOUT (seconds to wait
# for health, 30), ETCD_DOWN_TIMEOUT (seconds between TERM and KILL, 10).
set -euo pipefail

ETCD="${ETCD:-/usr/bin/etcd}"
ETCDCTL="${ETCDCTL:-/usr/bin/etcdctl}"
UP_TIMEOUT="${ETCD_UP_TIMEOUT:-30}"
DOWN_TIMEOUT="${ETCD_DOWN_TIMEOUT:-10}"
MEMBERS=(1 2 3)
QUOTA=$((8 * 1024 * 1024 * 1024)) # 8 GiB, etcd's largest recommended quota
export ETCDCTL_API=3

die() {
  echo "etcd-cluster: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 up|down|status DIR" >&2
  exit 2
}

client_url() { echo "http://127.0.0.1:$((23790 + $1))"; }
peer_url() { echo "http://127.0.0.1:$((23800 + $1))"; }

endpoints() {
  local i eps=()
  for i in "${MEMBERS[@]}"; do eps+=("$(client_url "$i")"); done
  local IFS=,
  echo "${eps[*]}"
}

initial_cluster() {
  local i parts=()
  for i in "${MEMBERS[@]}"; do parts+=("etcd-$i=$(peer_url "$i")"); done
  local IFS=,
  echo "${parts[*]}"
}

# The PID recorded for member $1, if that process is still alive and is the
# etcd we started on this data dir (not a recycled PID); empty otherwise.
live_pid() {
  local f="$DIR/etcd-$1.pid" pid
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [ -r "/proc/$pid/cmdline" ] || return 0
  if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--data-dir=$DIR/etcd-$1.data"; then
    echo "$pid"
  fi
}

# Stops every recorded, still-running member: TERM, then KILL after
# DOWN_TIMEOUT seconds. Only the recorded PIDs are signalled.
stop_members() {
  local i pid pids=()
  for i in "${MEMBERS[@]}"; do
    pid="$(live_pid "$i")"
    if [ -n "$pid" ]; then
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local deadline=$((SECONDS + DOWN_TIMEOUT)) alive
  while :; do
    alive=()
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive+=("$pid"); fi
    done
    [ ${#alive[@]} -gt 0 ] || return 0
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  echo "etcd-cluster: ${alive[*]} still running after ${DOWN_TIMEOUT}s; sending KILL" >&2
  for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${alive[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}

remove_data() {
  local i
  for i in "${MEMBERS[@]}"; do
    rm -rf "$DIR/etcd-$i.data" "$DIR/etcd-$i.pid"
  done
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

healthy() {
  "$ETCDCTL" --endpoints="$(endpoints)" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1
}

cmd_up() {
  [ -x "$ETCD" ] || die "$ETCD not found (Debian package etcd-server)"
  [ -x "$ETCDCTL" ] || die "$ETCDCTL not found (Debian package etcd-client)"
  # Remains of an earlier cluster in DIR: stop it, wipe it, logs included.
  stop_members
  remove_data
  local i
  for i in "${MEMBERS[@]}"; do rm -f "$DIR/etcd-$i.log"; done
  for i in "${MEMBERS[@]}"; do
    for port in $((23790 + i)) $((23800 + i)); do
      if port_in_use "$port"; then
        die "127.0.0.1:$port is already in use (another etcd? try: $0 down DIR of that cluster)"
      fi
    done
  done
  local token="etcd-bench-$$-$RANDOM" cluster
  cluster="$(initial_cluster)"
  for i in "${MEMBERS[@]}"; do
    # setsid: own session, so a hangup of the caller's terminal does not
    # reach it; all fds redirected, so callers capturing this script's
    # output are not held open by the member.
    setsid "$ETCD" \
      --name="etcd-$i" \
      --data-dir="$DIR/etcd-$i.data" \
      --listen-client-urls="$(client_url "$i")" \
      --advertise-client-urls="$(client_url "$i")" \
      --listen-peer-urls="$(peer_url "$i")" \
      --initial-advertise-peer-urls="$(peer_url "$i")" \
      --initial-cluster="$cluster" \
      --initial-cluster-token="$token" \
      --initial-cluster-state=new \
      --quota-backend-bytes="$QUOTA" \
      --logger=zap \
      --log-outputs=stderr \
      --log-level=warn \
      </dev/null >>"$DIR/etcd-$i.log" 2>&1 &
    echo $! >"$DIR/etcd-$i.pid"
  done
  local deadline=$((SECONDS + UP_TIMEOUT))
  while ! healthy; do
    for i in "${MEMBERS[@]}"; do
      if [ -z "$(live_pid "$i")" ]; then
        echo "etcd-cluster: member $i exited; last lines of $DIR/etcd-$i.log:" >&2
        tail -n 20 "$DIR/etcd-$i.log" >&2 || true
        stop_members
        exit 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "etcd-cluster: not healthy after ${UP_TIMEOUT}s; stopping it" >&2
      "$ETCDCTL" --endpoints="$(endpoints)" --dial-timeout=1s --command-timeout=2s \
        endpoint health >&2 || true
      stop_members
      exit 1
    fi
    sleep 0.2
  done
  echo "etcd-cluster: healthy: $(endpoints)"
}

cmd_status() {
  local i pid rc=0 running=0
  for i in "${MEMBERS[@]}"; do
    pid="$(live_pid "$i")"
    if [ -n "$pid" ]; then
      echo "etcd-$i: pid $pid, $(client_url "$i")"
      running=$((running + 1))
    else
      echo "etcd-$i: not running"
      rc=1
    fi
  done
  [ "$running" -gt 0 ] || return 1
  "$ETCDCTL" --endpoints="$(endpoints)" --dial-timeout=1s --command-timeout=2s \
    endpoint status -w table || rc=1
  "$ETCDCTL" --endpoints="$(endpoints)" --dial-timeout=1s --command-timeout=2s \
    endpoint health || rc=1
  return "$rc"
}

cmd_down() {
  stop_members
  remove_data
  echo "etcd-cluster: down (logs kept in $DIR)"
}

[ $# -eq 2 ] || usage
case "$1" in
  up)
    mkdir -p "$2"
    DIR="$(cd "$2" && pwd -P)"
    cmd_up
    ;;
  down | status)
    if [ ! -d "$2" ]; then
      [ "$1" = down ] && exit 0
      die "$2: no such directory"
    fi
    DIR="$(cd "$2" && pwd -P)"
    "cmd_$1"
    ;;
  *) usage ;;
esac
