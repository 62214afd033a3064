#!/usr/bin/env bash
# Reproducible load runs on loopback: the server pinned to core 0, the load
# tool to core 1 (when the machine has two cores), one JSON line per run.
#
#   scripts/bench.sh idle [N]            server RSS per idle connection (default N=10000)
#   scripts/bench.sh fanout [N] [K]      deliveries/s to N subscribers, K messages in flight
#   scripts/bench.sh latency [N] [RATE]  publish→delivery percentiles at RATE msg/s
#   scripts/bench.sh echo [N]            round trips/s, N connections with one message each
#   scripts/bench.sh all                 the issue's target table
#
# SERVER_FLAGS adds daemon flags; LOAD_FLAGS adds load-tool flags.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bin switchboard --bin switchboard-load
SERVER=target/release/switchboard
LOAD=target/release/switchboard-load
if [ "$(nproc)" -ge 2 ]; then PIN_S="taskset -c 0"; PIN_L="taskset -c 1"; else PIN_S=""; PIN_L=""; fi

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_server() {
  # A free loopback port for each run, so runs never meet each other's servers.
  PORT=${PORT_OVERRIDE:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  # shellcheck disable=SC2086
  $PIN_S "$SERVER" --listen "127.0.0.1:$PORT" --log-level warn --max-connections 19500 \
    --max-connections-per-user 100000 --rate-limit 0 ${SERVER_FLAGS:-} &
  SERVER_PID=$!
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
    sleep 0.05
  done
  echo "server did not start" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

run_idle() {
  local n=${1:-10000}
  start_server
  sleep 0.2
  local base
  base=$(rss_kb "$SERVER_PID")
  local out held=""
  out=$(mktemp)
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" --mode idle --conns "$n" --hold 3 ${LOAD_FLAGS:-} \
    2> >(while read -r line; do
           if [ "$line" = READY ]; then sleep 1; rss_kb "$SERVER_PID" > "$out.rss"; fi
         done) > "$out"
  sleep 0.2
  held=$(cat "$out.rss" 2>/dev/null || echo 0)
  local after
  sleep 1
  after=$(rss_kb "$SERVER_PID")
  stop_server
  python3 - "$out" "$base" "$held" "$after" "$n" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
base, held, after, n = (int(x) for x in sys.argv[2:6])
res.update(server_rss_kb_before=base, server_rss_kb_held=held, server_rss_kb_after=after,
           rss_bytes_per_conn=round((held - base) * 1024 / max(res.get("connected", n), 1)))
print(json.dumps(res))
PY
  rm -f "$out" "$out.rss"
}

run_load() {
  start_server
  sleep 0.2
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" "$@" ${LOAD_FLAGS:-} 2>/dev/null
  stop_server
}

case "${1:-all}" in
  idle) run_idle "${2:-10000}" ;;
  fanout) run_load --mode fanout --conns "${2:-1000}" --in-flight "${3:-1}" --messages "${MESSAGES:-20000}" ;;
  latency) run_load --mode latency --conns "${2:-1000}" --rate "${3:-100}" --duration "${DURATION:-10}" ;;
  echo) run_load --mode echo --conns "${2:-100}" --duration "${DURATION:-5}" ;;
  all)
    "$0" fanout 1000 1
    "$0" fanout 1000 16
    "$0" fanout 1000 256
    "$0" latency 1000 100
    "$0" idle 10000
    "$0" idle 19000
    "$0" echo 100
    ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
