# Helpers the bench scripts share (sourced, not run).

# A loopback TCP port free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 10 s) until something listens on loopback port $1.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listening on $1" >&2; return 1
}

# run NAME LABEL ARGS… → runs the load generator ($loadgen) with ARGS and appends its last
# line to $out as one JSON line tagged with NAME (a server or store) and LABEL.
run() {
  local name=$1 label=$2; shift 2
  echo "== $name: $label" >&2
  local line
  if line=$("${loadgen_on[@]}" "$loadgen" "$@" | tail -n 1); then
    echo "{\"server\":\"$name\",\"label\":\"$label\",\"result\":$line}" >>"$out"
  else
    echo "{\"server\":\"$name\",\"label\":\"$label\",\"result\":{\"failed\":true}}" >>"$out"
  fi
}

# start NAME → starts server NAME (tandem, reference, hocuspocus or bare) on a free loopback
# port with its log in $work, adds its PID to the array pids (the caller stops them all on
# exit), and sets $pid, $base (the rooms' WebSocket base URL) and $proto (loadgen's
# protocol option for it).
start() {
  local port; port=$(free_port)
  proto=()
  case "$1" in
    tandem)
      "${server_on[@]}" target/release/tandem serve --listen "127.0.0.1:$port" --data-dir "$work/tandem-$port" \
        --max-messages-per-sec 0 --heartbeat-timeout-secs 600 >"$work/tandem.log" 2>&1 &
      base="ws://127.0.0.1:$port/yjs" ;;
    reference)
      HOST=127.0.0.1 PORT=$port "${server_on[@]}" node bench/reference/node_modules/@y/websocket-server/src/server.js \
        >"$work/reference.log" 2>&1 &
      base="ws://127.0.0.1:$port" ;;
    hocuspocus)
      "${server_on[@]}" node bench/hocuspocus/server.mjs "$port" >"$work/hocuspocus.log" 2>&1 &
      base="ws://127.0.0.1:$port"; proto=(--proto hocuspocus) ;;
    bare)
      "${server_on[@]}" target/release/examples/broadcast_baseline "127.0.0.1:$port" >"$work/bare.log" 2>&1 &
      base="ws://127.0.0.1:$port" ;;
    *) echo "unknown server $1 (servers: tandem reference hocuspocus bare)" >&2; exit 2 ;;
  esac
  pid=$!
  pids+=("$pid")
  wait_port "$port"
}
# stop → stops the server `start` last started.
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

# bench_begin PREFIX → raises the open-files limit and sets $loadgen, $stamp, $out
# (bench/results/PREFIX<stamp>.jsonl), a scratch directory $work and the array pids; on
# exit every server still in pids is stopped and $work removed.
#
# LOADGEN_CPU=N (optional) runs the load generator on CPU N alone and every server on the
# other CPUs, as if the clients were on another machine; the output's name then says
# `-loadgen-cpuN`. Unset (the default, and how the issues measure), the scheduler places
# both: on a small machine it often puts the load generator on the server's CPU, which
# then delays every delivery (BENCHMARKS.md, "Issue 15, tenth session").
bench_begin() {
  ulimit -n "$(ulimit -Hn)" || true
  loadgen=target/release/examples/loadgen
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  split_cpus
  mkdir -p bench/results
  out="bench/results/$1$stamp${LOADGEN_CPU:+-loadgen-cpu$LOADGEN_CPU}.jsonl"
  work=$(mktemp -d)
  pids=()
  trap bench_end EXIT
}

# Sets the commands that place the load generator (loadgen_on) and the servers
# (server_on) from LOADGEN_CPU; both empty when it is unset.
split_cpus() {
  loadgen_on=(); server_on=()
  [ -n "${LOADGEN_CPU:-}" ] || return 0
  local rest
  rest=$(python3 -c 'import os, sys
cpus = sorted(os.sched_getaffinity(0)); mine = int(sys.argv[1])
if mine not in cpus or len(cpus) < 2: sys.exit(1)
print(",".join(str(c) for c in cpus if c != mine))' "$LOADGEN_CPU") || {
    echo "LOADGEN_CPU=$LOADGEN_CPU: not one of this process's CPUs, or no CPU left for the servers" >&2
    exit 2
  }
  loadgen_on=(taskset -c "$LOADGEN_CPU")
  server_on=(taskset -c "$rest")
  echo "== load generator on CPU $LOADGEN_CPU, servers on CPUs $rest" >&2
}
bench_end() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
