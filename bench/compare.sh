#!/usr/bin/env bash
# Runs Tandem, the reference y-websocket server (@y/websocket-server, in-memory, from npm),
# Hocuspocus (@hocuspocus/server, in memory, from npm: bench/hocuspocus/) and a bare tokio
# broadcast loop (examples/broadcast_baseline.rs: the machine's fan-out ceiling) under the
# same loads, one after the other, with the same load generator (examples/loadgen.rs), and
# writes the results as JSON lines plus a markdown table.
#
#   bench/compare.sh                 # everything, ~20 minutes on 2 cores
#   QUICK=1 bench/compare.sh         # shorter runs (smoke test of the script)
#   SERVERS="tandem hocuspocus" LOADS="fanout saturate" bench/compare.sh   # a part
#
# SERVERS: of tandem reference hocuspocus bare (default: all four). LOADS: of fanout
# (50 and 200 updates/s), saturate (p99 bounds 500 ms and 100 ms; the rate from 50/s, ×1.5
# a step, so a ceiling is placed within 1.5×), rooms, conns, trace,
# and the Tandem-only activation, churn, stream (default: all).
#
# Output: bench/results/<UTC time>.jsonl and its table, bench/results/<UTC time>.md; a full
# run (all servers and loads, not QUICK) also writes the table to BENCHMARKS.md. Every
# server is started here on a loopback port and stopped by its PID; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=${QUICK:-0}
readers=1000
fanout_secs=10
step_secs=5
conns=19500
if [ "$quick" = 1 ]; then readers=200; fanout_secs=3; step_secs=2; conns=2000; fi
all_servers="tandem reference hocuspocus bare"
all_loads="fanout saturate rooms conns trace activation churn stream"
servers=${SERVERS:-$all_servers}
loads=${LOADS:-$all_loads}
full=0
[ "$quick" = 0 ] && [ "$servers" = "$all_servers" ] && [ "$loads" = "$all_loads" ] && full=1
want() { [[ " $loads " == *" $1 "* ]]; }

echo "== building (release)" >&2
cargo build --release --bin tandem --examples >&2
echo "== installing the reference server and Hocuspocus" >&2
(cd bench/reference && npm ci --no-audit --no-fund >&2)
(cd bench/hocuspocus && npm ci --no-audit --no-fund >&2)

# shellcheck source=bench/lib.sh
source bench/lib.sh
if [ -n "${LOADGEN_CPU:-}" ]; then
  echo "compare.sh writes BENCHMARKS.md's top table, measured as the issues measure: run it without LOADGEN_CPU (targets.sh and ab.sh take it)" >&2
  exit 2
fi
bench_begin ""

# Every load on a freshly started server.
for server in $servers; do
  if want fanout; then
    start "$server"
    run "$server" fanout fanout --url "$base" --readers "$readers" --rate 50 --secs "$fanout_secs" "${proto[@]}"
    stop; start "$server"
    run "$server" fanout-200 fanout --url "$base" --readers "$readers" --rate 200 --secs "$fanout_secs" "${proto[@]}"
    stop
  fi
  if want saturate; then
    for bound in 500 100; do
      label=saturate; [ "$bound" != 500 ] && label="saturate-$bound"
      start "$server"
      run "$server" "$label" saturate --url "$base" --readers "$readers" --step-secs "$step_secs" --p99-ms "$bound" \
        --start-rate 50 --step-factor 1.5 --max-steps 16 --pid "$pid" "${proto[@]}"
      stop
    done
  fi
  [ "$server" = bare ] && continue
  if want rooms; then
    start "$server"
    run "$server" rooms rooms --url "$base" --pid "$pid" --warmup-rooms 100 --rooms 1000 --sessions 2 --text-chars 100 "${proto[@]}"
    stop
  fi
  if want conns; then
    start "$server"
    run "$server" conns conns --url "$base" --pid "$pid" --count "$conns" --per-room 100 "${proto[@]}"
    stop
  fi
  if want trace; then
    start "$server"
    limit=0; [ "$quick" = 1 ] && limit=20000
    run "$server" trace trace --url "$base" --pid "$pid" --file ../shared/data/automerge-paper.json.gz --limit "$limit" "${proto[@]}"
    stop
  fi
done
if ! [[ " $servers " == *" tandem "* ]]; then loads=""; fi  # the rest is Tandem's alone

# Activation of a room with a 100,000-update history, after its idle eviction compacted it.
if want activation; then
port=$(free_port)
target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/activation" \
  --max-messages-per-sec 0 --room-idle-secs 1 >"$work/activation.log" 2>&1 &
pid=$!; pids+=("$pid"); wait_port "$port"
updates=100000; [ "$quick" = 1 ] && updates=20000
run tandem activation activation --url "ws://127.0.0.1:$port/yjs" --updates "$updates"
stop
fi

# Churn: connect → sync → edit → close cycles over 100 rooms, then every room evicted.
if want churn; then
port=$(free_port)
target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/churn" \
  --max-messages-per-sec 0 --room-idle-secs 2 >"$work/churn.log" 2>&1 &
pid=$!; pids+=("$pid"); wait_port "$port"
cycles=20000; [ "$quick" = 1 ] && cycles=2000
run tandem churn churn --url "ws://127.0.0.1:$port/yjs" --pid "$pid" --cycles "$cycles" --rooms 100 --edit
stop
fi

if want stream; then
start tandem
http_base=${base%/yjs}
run tandem stream-ws stream-fanout --url "$http_base" --subscribers "$readers" --transport ws
run tandem stream-sse stream-fanout --url "$http_base" --subscribers "$readers" --transport sse
stop
fi

python3 bench/table.py "$out" >"${out%.jsonl}.md"  # carries over BENCHMARKS.md's Stores section
if [ "$full" = 1 ]; then
  cp "${out%.jsonl}.md" BENCHMARKS.md
  echo "== wrote $out and BENCHMARKS.md" >&2
else
  echo "== wrote $out and ${out%.jsonl}.md (BENCHMARKS.md only from a full run)" >&2
fi
