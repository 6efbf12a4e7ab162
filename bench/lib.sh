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
  if line=$("$loadgen" "$@" | tail -n 1); then
    echo "{\"server\":\"$name\",\"label\":\"$label\",\"result\":$line}" >>"$out"
  else
    echo "{\"server\":\"$name\",\"label\":\"$label\",\"result\":{\"failed\":true}}" >>"$out"
  fi
}
