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
# SERVER_CMD replaces the switchboard command line with another server's (run
# from the repository root, split on spaces, `{PORT}` replaced by the port; the
# server must accept connections on 127.0.0.1:{PORT}; its stdout goes to
# stderr); SERVER_FLAGS is then unused. scripts/peers.sh uses it to run the
# same loads against peer servers.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ -n "${SERVER_CMD:-}" ]; then
  cargo build --release --quiet --bin switchboard-load
else
  cargo build --release --quiet --bin switchboard --bin switchboard-load
fi
SERVER=target/release/switchboard
LOAD=target/release/switchboard-load
if [ "$(nproc)" -ge 2 ]; then PIN_S="taskset -c 0"; PIN_L="taskset -c 1"; else PIN_S=""; PIN_L=""; fi

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system) the server has used so far, in clock ticks.
# (Fields counted after the command name's closing parenthesis, which may hold spaces.)
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))

start_server() {
  # A free loopback port for each run, so runs never meet each other's servers.
  PORT=${PORT_OVERRIDE:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
  if [ -n "${SERVER_CMD:-}" ]; then
    # shellcheck disable=SC2086
    $PIN_S ${SERVER_CMD//\{PORT\}/$PORT} >&2 &
  else
    # shellcheck disable=SC2086
    $PIN_S "$SERVER" --listen "127.0.0.1:$PORT" --log-level warn --max-connections 19500 \
      --max-connections-per-user 100000 --rate-limit 0 ${SERVER_FLAGS:-} &
  fi
  SERVER_PID=$!
  # A failed run exits early (set -e): do not leave its server running.
  trap stop_server EXIT
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return; fi
    sleep 0.05
  done
  echo "server did not start" >&2
  exit 1
}

stop_server() {
  trap - EXIT
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

run_idle() {
  local n=${1:-10000}
  start_server
  sleep 0.2
  local base cpu0
  base=$(rss_kb "$SERVER_PID")
  cpu0=$(cpu_ticks "$SERVER_PID")
  local out held=""
  out=$(mktemp)
  # The server's CPU time is read the moment every connection is open (its
  # cost per handshake), its RSS a second later.
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" --mode idle --conns "$n" --hold 3 ${LOAD_FLAGS:-} \
    2> >(while read -r line; do
           if [ "$line" = READY ]; then
             cpu_ticks "$SERVER_PID" > "$out.cpu"
             sleep 1
             rss_kb "$SERVER_PID" > "$out.rss"
           fi
         done) > "$out"
  sleep 0.2
  held=$(cat "$out.rss" 2>/dev/null || echo 0)
  local cpu1
  cpu1=$(cat "$out.cpu" 2>/dev/null || echo "$cpu0")
  local after
  sleep 1
  after=$(rss_kb "$SERVER_PID")
  stop_server
  python3 - "$out" "$base" "$held" "$after" "$n" "$(( (cpu1 - cpu0) * TICK_US ))" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
base, held, after, n, cpu_us = (int(x) for x in sys.argv[2:7])
connected = max(res.get("connected", n), 1)
res.update(server_rss_kb_before=base, server_rss_kb_held=held, server_rss_kb_after=after,
           rss_bytes_per_conn=round((held - base) * 1024 / connected),
           connects_per_sec=round(connected / max(res.get("connect_s", 0), 1e-9)),
           server_cpu_us_per_connect=round(cpu_us / connected, 1))
print(json.dumps(res))
PY
  rm -f "$out" "$out.rss" "$out.cpu"
}

run_load() {
  start_server
  sleep 0.2
  local cpu0 out
  cpu0=$(cpu_ticks "$SERVER_PID")
  out=$(mktemp)
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" "$@" ${LOAD_FLAGS:-} 2>/dev/null > "$out"
  local cpu_us=$(( ($(cpu_ticks "$SERVER_PID") - cpu0) * TICK_US ))
  stop_server
  # The server process's CPU time over the wall time of the run (1.0: it
  # never slept). Loopback work that ksoftirqd does for it is not counted.
  python3 - "$out" "$cpu_us" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
wall = res.get("elapsed_s") or res.get("duration_s") or 0
res.update(server_cpu_s=int(sys.argv[2]) / 1e6)
if wall:
    res.update(server_core_busy=round(int(sys.argv[2]) / 1e6 / wall, 2))
print(json.dumps(res))
PY
  rm -f "$out"
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
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
