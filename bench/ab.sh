#!/usr/bin/env bash
# A/B of two tandem binaries on Tandem's own loads: interleaved rounds, every load on a
# freshly started server, the same load generator for both, so a change is judged against
# the build before it in the same run on this noisy machine:
#
#   BEFORE=/tmp/tandem-before AFTER=target/release/tandem bench/ab.sh
#   ROUNDS=3 LOADS="fanout saturate" bench/ab.sh
#
# LOADS, of (default: all):
#   fanout      1 writer → 1,000 readers at 50 and at 200 updates/s, 10 s each
#   saturate    1 → 1,000, rate ×1.25 from 1,000/s until p99 > 100 ms (server CPU per step)
#   trace       the automerge-paper editing trace, writer → 2 observers
#   activation  a room with a 100,000-update history, evicted, then joined
#   stream      chat: 1 publisher → 1,000 WebSocket subscribers; 8 publishers' acked throughput
# ROUNDS: default 2. BEFORE: default /tmp/tandem-before; AFTER: default target/release/tandem.
#
# Output: bench/results/ab-<UTC time>.jsonl, one line per run tagged "before"/"after"
# with its round in the label, and a summary on stdout (bench/ab.py). Servers are started
# here on loopback ports and stopped by their PIDs; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-2}
loads=${LOADS:-fanout saturate trace activation stream}
declare -A bins=([before]=${BEFORE:-/tmp/tandem-before} [after]=${AFTER:-target/release/tandem})
for which in before after; do
  [ -x "${bins[$which]}" ] || { echo "no $which binary at ${bins[$which]}" >&2; exit 2; }
done
cargo build --release --examples >&2

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_begin "ab-"

# serve WHICH [flags…] → starts that binary on a fresh data directory; sets $pid, $port.
serve() {
  local which=$1; shift
  port=$(free_port)
  TANDEM_LOG=warn "${server_on[@]}" "${bins[$which]}" serve --listen "127.0.0.1:$port" \
    --data-dir "$work/$which-$port" --max-messages-per-sec 0 --max-connections 100000 \
    --heartbeat-timeout-secs 600 "$@" >>"$work/$which.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_port "$port"
}
want() { [[ " $loads " == *" $1 "* ]]; }

for round in $(seq 1 "$rounds"); do
  for which in before after; do
    echo "== round $round: $which" >&2
    if want fanout; then
      for rate in 50 200; do
        serve "$which"
        run "$which" "fanout-$rate-$round" fanout --url "ws://127.0.0.1:$port/yjs" --readers 1000 --rate "$rate" --secs 10
        stop
      done
    fi
    if want saturate; then
      serve "$which"
      run "$which" "saturate-$round" saturate --url "ws://127.0.0.1:$port/yjs" --readers 1000 \
        --start-rate 1000 --step-factor 1.25 --step-secs 5 --p99-ms 100 --max-steps 12 --pid "$pid"
      stop
    fi
    if want trace; then
      serve "$which"
      run "$which" "trace-$round" trace --url "ws://127.0.0.1:$port/yjs" --pid "$pid" \
        --file ../shared/data/automerge-paper.json.gz --limit 0
      stop
    fi
    if want activation; then
      serve "$which" --room-idle-secs 1
      run "$which" "activation-$round" activation --url "ws://127.0.0.1:$port/yjs" --updates 100000
      stop
    fi
    if want stream; then
      serve "$which"
      run "$which" "stream-fanout-$round" stream-fanout --url "ws://127.0.0.1:$port" --subscribers 1000 --transport ws
      stop
      serve "$which"
      run "$which" "stream-throughput-$round" stream-throughput --url "ws://127.0.0.1:$port" --count 30000
      stop
    fi
  done
done

python3 bench/ab.py "$out"
echo "== wrote $out" >&2
