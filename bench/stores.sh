#!/usr/bin/env bash
# sled vs PostgreSQL in one run, Tandem on each store under the same loads, one after the
# other, with the same load generator (examples/loadgen.rs):
#   - fan-out: 1 writer → 1,000 readers at 50 updates/s (p50/p99);
#   - the automerge-paper editing trace through the server (time, server CPU);
#   - chat: acknowledged messages per second into one room (8 publishers, 64 in flight each);
#   - activation of a room written with 100,000 updates, after its idle eviction.
#
#   bench/stores.sh                  # ~5 minutes on 2 cores after the release build
#   QUICK=1 bench/stores.sh          # shorter runs (smoke test of the script)
#
# PostgreSQL: $TANDEM_BENCH_POSTGRES_URL, else $TANDEM_TEST_POSTGRES_URL, else the machine's
# postgres://postgres@127.0.0.1:5432/test; each server gets a fresh schema, dropped at the
# end. Output: bench/results/stores-<UTC time>.jsonl, and the "Stores" section of
# BENCHMARKS.md rewritten in place (not by a QUICK run). Every server is started here on a loopback port and
# stopped by its PID; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=${QUICK:-0}
readers=1000; fanout_secs=10; messages=50000; updates=100000; trace_limit=0
if [ "$quick" = 1 ]; then readers=200; fanout_secs=3; messages=5000; updates=20000; trace_limit=20000; fi
pg_url=${TANDEM_BENCH_POSTGRES_URL:-${TANDEM_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}

echo "== building (release)" >&2
cargo build --release --bin tandem --examples >&2
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_begin "stores-"
schemas=()
# lib.sh's cleanup, and every schema made here dropped.
cleanup() {
  for schema in "${schemas[@]}"; do
    psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  done
  bench_end
}
trap cleanup EXIT

# start STORE [FLAGS…] → sets $pid and $port (in place of lib.sh's `start`: one server,
# two stores; lib.sh's `stop` stops it)
start() {
  local store=$1; shift
  port=$(free_port)
  local flags=(--listen "127.0.0.1:$port" --data-dir "$work/sled-$port"
    --max-messages-per-sec 0 --heartbeat-timeout-secs 600)
  if [ "$store" = postgres ]; then
    local schema="bench_${stamp,,}_$port"
    schemas+=("$schema")
    flags+=(--postgres-url "$pg_url" --postgres-schema "$schema")
  fi
  target/release/tandem serve "${flags[@]}" "$@" >"$work/$store-$port.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
}

for store in sled postgres; do
  start "$store"
  run "$store" fanout fanout --url "ws://127.0.0.1:$port/yjs" --readers "$readers" --rate 50 --secs "$fanout_secs"
  stop; start "$store"
  run "$store" trace trace --url "ws://127.0.0.1:$port/yjs" --pid "$pid" --file ../shared/data/automerge-paper.json.gz --limit "$trace_limit"
  stop; start "$store"
  run "$store" chat stream-throughput --url "ws://127.0.0.1:$port" --count "$messages"
  stop; start "$store" --room-idle-secs 1
  run "$store" activation activation --url "ws://127.0.0.1:$port/yjs" --updates "$updates"
  stop
done

if [ "$quick" = 1 ]; then
  echo "== wrote $out (BENCHMARKS.md only from a full run)" >&2
else
  python3 bench/stores_table.py "$out" BENCHMARKS.md
  echo "== wrote $out and the Stores section of BENCHMARKS.md" >&2
fi
