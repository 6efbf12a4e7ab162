#!/usr/bin/env bash
# A/B of two tandem binaries on Yjs fan-out, interleaved rounds on fresh servers:
#   BEFORE=path AFTER=path ROUNDS=2 bench/writev_ab.sh
# Each round: saturate (1 writer → 1000 readers, rate doubled from 100/s until p99 > 100 ms)
# and fan-out at 50 updates/s for 10 s. Prints one JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
lg=target/release/examples/loadgen
ulimit -n "$(ulimit -Hn)" || true
for round in $(seq 1 "${ROUNDS:-2}"); do
  for which in before after; do
    bin=${BEFORE:-/tmp/tandem-before}; [ $which = after ] && bin=${AFTER:-target/release/tandem}
    dir=$(mktemp -d); port=$(free_port)
    TANDEM_LOG=warn $bin serve --listen 127.0.0.1:$port --data-dir "$dir" --max-messages-per-sec 0 \
      --max-connections 100000 --heartbeat-timeout-secs 600 >/dev/null 2>&1 &
    pid=$!
    wait_port "$port"
    sat=$($lg saturate --url "ws://127.0.0.1:$port/yjs" --readers 1000 --start-rate 100 --step-secs 5 --p99-ms 100 --max-steps 7 2>/dev/null | tail -1)
    fan=$($lg fanout --url "ws://127.0.0.1:$port/yjs" --readers 1000 --rate 50 --secs 10 2>/dev/null | tail -1)
    echo "{\"round\":$round,\"which\":\"$which\",\"saturate\":$sat,\"fanout\":$fan}"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$dir"
  done
done
