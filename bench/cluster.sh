#!/usr/bin/env bash
# A three-node cluster on loopback (release build, one PostgreSQL schema), measured:
#   - proxy cost: 1 writer → 200 readers of a room owned by node 0, half of the readers
#     connected to node 1 (relayed to node 0), p50/p99 of both halves in the same run;
#   - failover: TRIALS times, kill -9 the owner of a busy chat room and time until another
#     node acknowledges a publish to it (median and worst).
#
#   bench/cluster.sh            # ~2 minutes after the release build
#   TRIALS=3 bench/cluster.sh
#
# PostgreSQL: $TANDEM_BENCH_POSTGRES_URL, else $TANDEM_TEST_POSTGRES_URL, else
# postgres://postgres@127.0.0.1:5432/test. Every server is started here on loopback ports and
# stopped by its PID; every load is bounded. Prints one JSON line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${TRIALS:-5}
pg_url=${TANDEM_BENCH_POSTGRES_URL:-${TANDEM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}
cargo build --release --bin tandem --examples >&2
work=$(mktemp -d)
pids=()
schemas=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for schema in "${schemas[@]}"; do psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=="udp" else socket.SOCK_STREAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }

# cluster NAME → starts 3 nodes; sets node_pid[i], node_port[i]
cluster() {
  local schema="bench_cluster_$1_$$"
  schemas+=("$schema")
  local gossip=() seeds=""
  for i in 0 1 2; do gossip[$i]=$(free_port udp); seeds+="127.0.0.1:${gossip[$i]},"; done
  for i in 0 1 2; do
    node_port[$i]=$(free_port tcp)
    target/release/tandem serve --listen "127.0.0.1:${node_port[$i]}" --data-dir "$work/n$i-$1" \
      --postgres-url "$pg_url" --postgres-schema "$schema" --node-id "node-$i" \
      --gossip-listen "127.0.0.1:${gossip[$i]}" --seeds "${seeds%,}" --cluster-id "$schema" \
      --max-messages-per-sec 0 --heartbeat-timeout-secs 600 >"$work/n$i-$1.log" 2>&1 &
    node_pid[$i]=$!; pids+=("${node_pid[$i]}")
  done
  for i in 0 1 2; do
    for _ in $(seq 1 300); do
      n=$(curl -s "http://127.0.0.1:${node_port[$i]}/cluster" 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
      [ "$n" = 3 ] && break; sleep 0.1
    done
  done
}
owner_of() { curl -s "http://127.0.0.1:${node_port[0]}/route/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["owner"]["id"][5:])'; }

# Proxy cost: a room owned by node 0.
cluster proxy
room=""
for i in $(seq 1 200); do
  if [ "$(owner_of "fan$i")" = 0 ]; then room="fan$i"; break; fi
done
line=$(target/release/examples/loadgen fanout --url "ws://127.0.0.1:${node_port[0]}/yjs" \
  --proxied-url "ws://127.0.0.1:${node_port[1]}/yjs" --room "$room" --readers 200 --rate 50 --secs 10 | tail -n 1)
echo "{\"measure\":\"proxy\",\"result\":$line}"
for pid in "${node_pid[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done

# Failover trials.
for t in $(seq 1 "$trials"); do
  cluster "failover$t"
  room="busy$t"
  owner=$(owner_of "$room")
  survivor=$(( (owner + 1) % 3 ))
  for n in $(seq 1 50); do
    curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -H "Idempotency-Key: m$n" \
      -L --post302 -d '{}' "http://127.0.0.1:${node_port[$survivor]}/rooms/$room/messages"
  done
  start=$(date +%s.%N)
  kill -9 "${node_pid[$owner]}"
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -L -X POST -H 'Content-Type: application/json' \
      -H "Idempotency-Key: after" -d '{}' "http://127.0.0.1:${node_port[$survivor]}/rooms/$room/messages" || true)
    [ "$code" = 200 ] && break
    if python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $start < 30 else 1)"; then sleep 0.05; else code=timeout; break; fi
  done
  secs=$(python3 -c "print(round($(date +%s.%N) - $start, 3))")
  echo "{\"measure\":\"failover\",\"trial\":$t,\"secs\":$secs,\"status\":\"$code\"}"
  for pid in "${node_pid[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
done
