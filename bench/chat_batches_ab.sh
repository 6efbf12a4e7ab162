#!/usr/bin/env bash
# A/B of two tandem binaries on the chat stream, interleaved rounds on fresh servers:
# BEFORE=path AFTER=path bench/chat_batches_ab.sh (defaults: /tmp/tandem-before, target/release/tandem).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
lg=target/release/examples/loadgen
for round in 1 2 3; do
  for which in before after; do
    bin=${BEFORE:-/tmp/tandem-before}; [ $which = after ] && bin=${AFTER:-target/release/tandem}
    dir=$(mktemp -d); port=$(free_port)
    TANDEM_LOG=warn $bin serve --listen 127.0.0.1:$port --data-dir $dir --max-messages-per-sec 0 --max-connections 100000 >/dev/null 2>&1 &
    pid=$!
    wait_port $port
    tp=$($lg stream-throughput --url ws://127.0.0.1:$port --count 30000 2>/dev/null | tail -1)
    fo=$($lg stream-fanout --url ws://127.0.0.1:$port --subscribers 500 --count 2000 2>/dev/null | tail -1)
    echo "round $round $which throughput=$tp"
    echo "round $round $which fanout=$fo"
    kill $pid; wait $pid 2>/dev/null || true; rm -rf $dir
  done
done
