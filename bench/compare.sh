#!/usr/bin/env bash
# Runs Tandem, the reference y-websocket server (@y/websocket-server, in-memory, from npm)
# and a bare tokio broadcast loop (examples/broadcast_baseline.rs: the machine's fan-out
# ceiling) under the same loads, one after the other, with the same load generator
# (examples/loadgen.rs), and writes the results as JSON lines plus a markdown table.
#
#   bench/compare.sh                 # everything, ~10 minutes on 2 cores
#   QUICK=1 bench/compare.sh         # shorter runs (smoke test of the script)
#
# Output: bench/results/<UTC time>.jsonl and the table in BENCHMARKS.md. Every server is
# started here on a loopback port and stopped by its PID; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=${QUICK:-0}
readers=1000
fanout_secs=10
step_secs=5
conns=19500
if [ "$quick" = 1 ]; then readers=200; fanout_secs=3; step_secs=2; conns=2000; fi

echo "== building (release)" >&2
cargo build --release --bin tandem --examples >&2
echo "== installing the reference server" >&2
(cd bench/reference && npm ci --no-audit --no-fund >&2)
ulimit -n "$(ulimit -Hn)" || true

loadgen=target/release/examples/loadgen
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
out="bench/results/$stamp.jsonl"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source bench/lib.sh

# start NAME → sets $pid and $base (the rooms' WebSocket base URL)
start() {
  local port; port=$(free_port)
  case "$1" in
    tandem)
      target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/tandem-$port" \
        --max-messages-per-sec 0 --heartbeat-timeout-secs 600 >"$work/tandem.log" 2>&1 &
      base="ws://127.0.0.1:$port/yjs" ;;
    reference)
      HOST=127.0.0.1 PORT=$port node bench/reference/node_modules/@y/websocket-server/src/server.js \
        >"$work/reference.log" 2>&1 &
      base="ws://127.0.0.1:$port" ;;
    bare)
      target/release/examples/broadcast_baseline "127.0.0.1:$port" >"$work/bare.log" 2>&1 &
      base="ws://127.0.0.1:$port" ;;
  esac
  pid=$!
  pids+=("$pid")
  wait_port "$port"
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

for server in tandem reference bare; do
  start "$server"
  run "$server" fanout fanout --url "$base" --readers "$readers" --rate 50 --secs "$fanout_secs"
  stop; start "$server"
  run "$server" fanout-200 fanout --url "$base" --readers "$readers" --rate 200 --secs "$fanout_secs"
  stop; start "$server"
  run "$server" saturate saturate --url "$base" --readers "$readers" --step-secs "$step_secs"
  stop
  if [ "$server" != bare ]; then
    start "$server"
    run "$server" rooms rooms --url "$base" --pid "$pid" --rooms 1000 --sessions 2
    stop; start "$server"
    run "$server" conns conns --url "$base" --pid "$pid" --count "$conns" --per-room 100
    stop; start "$server"
    limit=0; [ "$quick" = 1 ] && limit=20000
    run "$server" trace trace --url "$base" --pid "$pid" --file ../shared/data/automerge-paper.json.gz --limit "$limit"
    stop
  fi
done
# Activation of a room with a 100,000-update history, after its idle eviction compacted it.
port=$(free_port)
target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/activation" \
  --max-messages-per-sec 0 --room-idle-secs 1 >"$work/activation.log" 2>&1 &
pid=$!; pids+=("$pid"); wait_port "$port"
updates=100000; [ "$quick" = 1 ] && updates=20000
run tandem activation activation --url "ws://127.0.0.1:$port/yjs" --updates "$updates"
stop

# Churn: connect → sync → edit → close cycles over 100 rooms, then every room evicted.
port=$(free_port)
target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/churn" \
  --max-messages-per-sec 0 --room-idle-secs 2 >"$work/churn.log" 2>&1 &
pid=$!; pids+=("$pid"); wait_port "$port"
cycles=20000; [ "$quick" = 1 ] && cycles=2000
run tandem churn churn --url "ws://127.0.0.1:$port/yjs" --pid "$pid" --cycles "$cycles" --rooms 100 --edit
stop

start tandem
http_base=${base%/yjs}
run tandem stream-ws stream-fanout --url "$http_base" --subscribers "$readers" --transport ws
run tandem stream-sse stream-fanout --url "$http_base" --subscribers "$readers" --transport sse
stop

python3 bench/table.py "$out" >"$work/BENCHMARKS.md"  # reads the old one first
mv "$work/BENCHMARKS.md" BENCHMARKS.md
echo "== wrote $out and BENCHMARKS.md" >&2
