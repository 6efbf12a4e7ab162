#!/usr/bin/env bash
# The issue-15 targets as the issue states them: the median of ROUNDS interleaved rounds
# (default 3), every load on a freshly started server, in one command:
#
#   bench/targets.sh            # ~12 minutes on 2 cores
#   ROUNDS=1 QUICK=1 bench/targets.sh   # a smoke test of the script (~1 minute)
#   LOADGEN_CPU=1 bench/targets.sh      # the load generator alone on CPU 1 (bench/lib.sh)
#
# Each round runs, one server after the other:
# - fan-out 1 → 1000 at 50 updates/s for Tandem and the bare relay (target: Tandem's p99
#   ≤ 1.10× the relay's, nobody missing an update);
# - saturate at p99 ≤ 100 ms for Tandem and Hocuspocus (target: Tandem's sustained
#   delivered/s ≥ 2× Hocuspocus's), on a ladder that starts at 800 updates/s and steps
#   ×1.25 (a doubling ladder could only say 2×, 4× or 8×, and a server's ceiling fell
#   anywhere within a factor of two of the step it held);
# - idle rooms for Tandem (2 sessions, a 100-character text; target ≤ 8 KiB per room,
#   reported as the cost of one more room and counted from the fresh process).
#
# Output: bench/results/targets-<UTC time>.jsonl and, on stdout and in the .md beside it,
# each round's figures, their medians and the ratios (bench/targets.py). Servers are
# started here on loopback ports and stopped by their PIDs; every load is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
quick=${QUICK:-0}
readers=1000; fanout_secs=10; step_secs=5; rooms=1000; warmup=100
if [ "$quick" = 1 ]; then readers=200; fanout_secs=3; step_secs=2; rooms=100; warmup=10; fi

echo "== building (release)" >&2
cargo build --release --bin tandem --examples >&2
echo "== installing Hocuspocus" >&2
(cd bench/hocuspocus && npm ci --no-audit --no-fund >&2)

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_begin "targets-"

for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds" >&2
  for server in tandem bare; do
    start "$server"
    run "$server" "fanout-$round" fanout --url "$base" --readers "$readers" --rate 50 --secs "$fanout_secs" "${proto[@]}"
    stop
  done
  for server in tandem hocuspocus; do
    start "$server"
    run "$server" "saturate-100-$round" saturate --url "$base" --readers "$readers" --step-secs "$step_secs" --p99-ms 100 --start-rate 800 --step-factor 1.25 --max-steps 16 --pid "$pid" "${proto[@]}"
    stop
  done
  start tandem
  run tandem "rooms-$round" rooms --url "$base" --pid "$pid" --warmup-rooms "$warmup" --rooms "$rooms" --sessions 2 --text-chars 100
  stop
done

python3 bench/targets.py "$out" | tee "${out%.jsonl}.md"
echo "== wrote $out and ${out%.jsonl}.md" >&2
