#!/usr/bin/env bash
# A local three-node Tandem cluster in one command: PostgreSQL URL in, three nodes on
# loopback ports out (their URLs printed); Ctrl-C stops them.
#
#   examples/cluster.sh postgres://postgres@127.0.0.1:5432/test [SCHEMA]
#
# Builds the release binary if needed. Each node: HTTP on 127.0.0.1:4321+i, gossip on UDP
# 127.0.0.1:7331+i; one schema (default: tandem_dev) shared by all three.
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?usage: examples/cluster.sh POSTGRES_URL [SCHEMA]}
schema=${2:-tandem_dev}
cargo build --release --bin tandem >&2
seeds="127.0.0.1:7331,127.0.0.1:7332,127.0.0.1:7333"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 0 1 2; do
  target/release/tandem serve --listen "127.0.0.1:$((4321 + i))" --postgres-url "$url" \
    --postgres-schema "$schema" --node-id "node-$i" --gossip-listen "127.0.0.1:$((7331 + i))" \
    --seeds "$seeds" --cluster-id "$schema" &
  pids+=("$!")
done
sleep 2
echo
echo "cluster up: http://127.0.0.1:4321  http://127.0.0.1:4322  http://127.0.0.1:4323"
echo "  members:   curl http://127.0.0.1:4321/cluster"
echo "  an owner:  curl http://127.0.0.1:4321/route/my-room"
echo "Ctrl-C stops all three."
wait
