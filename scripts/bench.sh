#!/usr/bin/env bash
# Reproducible load runs on loopback: the server pinned to core 0, the load
# tool to core 1 (when the machine has two cores), one JSON line per run.
#
#   scripts/bench.sh idle [N]            server RSS per idle connection (default N=10000)
#   scripts/bench.sh fanout [N] [K]      deliveries/s to N subscribers, K messages in flight
#   scripts/bench.sh ahead [N] [K]       deliveries/s to N subscribers, the publisher sending
#                                        message k+1 once message k reached its first
#                                        subscriber (a steady stream), at most K outstanding
#                                        (default 1000: in effect no cap)
#   scripts/bench.sh chat [N] [CHURN]    N connections in rooms of 10, each sending one message
#                                        a second to its room, CHURN reconnects a second
#                                        (default N=10000, CHURN=N/100): server CPU per
#                                        delivery, latency of every delivery
#   scripts/bench.sh latency [N] [RATE]  publish→delivery percentiles at RATE msg/s
#   scripts/bench.sh echo [N]            round trips/s, N connections with one message each
#   scripts/bench.sh joins [N]           join/leave pairs/s, N connections one request each
#   scripts/bench.sh dashboard [N]       what the dashboard costs the server: N idle
#                                        connections in N/10 rooms, then per request of
#                                        /api/overview (what it polls), /stats, /metrics
#                                        and /healthz the server's CPU and the bytes
#   scripts/bench.sh history-memory [M] [ROOMS]  memory per retained history message: M
#                                        messages of 64-byte data published through the
#                                        API to ROOMS rooms with history (defaults 100000,
#                                        100), server RSS before and after
#   scripts/bench.sh all                 the issue's target table
#
# Cluster mode (a local redis-server, started and stopped here; nodes on
# core 0, Redis and the load tool on core 1):
#   scripts/bench.sh cluster-fanout [N] [K]   one node, --cluster on, every member local
#   scripts/bench.sh cluster-latency [N] [RATE]  N subscribers over nodes A and B,
#                                        the publisher on node C, RATE msg/s
#                                        (PUBLISHER_CORE=1: node C on core 1)
#   scripts/bench.sh cluster-publish [K]  publishes/s one node pushes through one Redis
#                                        (one subscriber on another node, K in flight),
#                                        with Redis's CPU per 10,000 publishes
#   scripts/bench.sh cluster-joins [N]    join/leave pairs/s over two nodes (presence scripts)
#   scripts/bench.sh cluster             all of the above, beside their single-node figures
#
# TLS=1 runs any mode over TLS (wss://): a certificate for localhost is made
# with openssl for the run, the daemon gets --tls-cert/--tls-key and the load
# tool --tls-ca.
# SERVER_FLAGS adds daemon flags; LOAD_FLAGS adds load-tool flags;
# SERVER_BIN runs another switchboard binary (an older build: before/after).
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
SERVER=${SERVER_BIN:-target/release/switchboard}
if [ "${TLS:-0}" = 1 ]; then
  command -v openssl >/dev/null || { echo "TLS=1 needs openssl (apt-get install openssl)" >&2; exit 2; }
  TLS_DIR=$(mktemp -d)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
  SERVER_FLAGS="${SERVER_FLAGS:-} --tls-cert $TLS_DIR/cert.pem --tls-key $TLS_DIR/key.pem"
  LOAD_FLAGS="${LOAD_FLAGS:-} --tls-ca $TLS_DIR/cert.pem"
fi
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

run_dashboard() {
  local n=${1:-10000}
  start_server
  sleep 0.2
  local ready
  ready=$(mktemp)
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" --mode idle --conns "$n" --idle-rooms $((n / 10 > 0 ? n / 10 : 1)) \
    --hold 600 ${LOAD_FLAGS:-} 2>"$ready" >/dev/null &
  local load_pid=$!
  for _ in $(seq 1200); do grep -q READY "$ready" && break; sleep 0.1; done
  sleep 1
  $PIN_L python3 - "$PORT" "$SERVER_PID" "$n" "$(getconf CLK_TCK)" <<'PY'
import http.client, json, sys, time
port, pid, n, hz = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def cpu():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz
res = {"mode": "dashboard", "connections": n}
c0, t0 = cpu(), time.time()
time.sleep(5)
res["idle_server_cpu_percent"] = round(100 * (cpu() - c0) / (time.time() - t0), 2)
conn = http.client.HTTPConnection("127.0.0.1", port)
for path in ["/healthz", "/api/overview?top=10", "/stats", "/metrics"]:
    def get():
        conn.request("GET", path)
        r = conn.getresponse()
        return len(r.read())
    for _ in range(20):
        size = get()
    runs = 500
    c0, t0 = cpu(), time.perf_counter()
    for _ in range(runs):
        get()
    wall, used = time.perf_counter() - t0, cpu() - c0
    res[path] = {"bytes": size, "server_cpu_us": round(1e6 * used / runs, 1),
                 "round_trip_us": round(1e6 * wall / runs, 1)}
print(json.dumps(res))
PY
  kill "$load_pid" 2>/dev/null || true
  wait "$load_pid" 2>/dev/null || true
  rm -f "$ready"
  stop_server
}

run_history_memory() {
  local m=$1 rooms=$2
  SERVER_FLAGS="${SERVER_FLAGS:-} --history-size $(( (m + rooms - 1) / rooms )) \
    --history-max-bytes 4000000000 --api-key bench-api-key-0123456789" start_server
  sleep 0.3
  local before after
  before=$(rss_kb "$SERVER_PID")
  python3 - "$PORT" "$m" "$rooms" <<'PY'
import http.client, json, sys
port, m, rooms = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
headers = {"Authorization": "Bearer bench-api-key-0123456789", "Content-Type": "application/json"}
data = "x" * 54  # with the quotes and the i below: about 64 bytes of data
for i in range(m):
    body = json.dumps({"room": f"room-{i % rooms}", "data": {"i": i, "t": data}})
    c.request("POST", "/api/publish", body, headers)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  sleep 0.3
  after=$(rss_kb "$SERVER_PID")
  local stats
  stats=$(curl -fs -H "Authorization: Bearer bench-api-key-0123456789" "http://127.0.0.1:$PORT/stats")
  stop_server
  python3 - "$m" "$rooms" "$before" "$after" "$stats" <<'PY'
import json, sys
m, rooms, before, after = (int(x) for x in sys.argv[1:5])
h = json.loads(sys.argv[5])["history"]
print(json.dumps({"mode": "history-memory", "messages": m, "rooms": rooms,
    "held": h["messages"], "rss_before_kb": before, "rss_after_kb": after,
    "rss_bytes_per_message": round((after - before) * 1024 / h["messages"], 1),
    "counted_bytes_per_message": round(h["bytes"] / h["messages"], 1)}))
PY
}

run_load() {
  start_server
  sleep 0.2
  local cpu0 out
  cpu0=$(cpu_ticks "$SERVER_PID")
  out=$(mktemp)
  # The server's CPU time counts from READY (every connection open), so
  # set-up handshakes are not charged to the run.
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" --server "127.0.0.1:$PORT" "$@" ${LOAD_FLAGS:-} \
    2> >(while read -r line; do
           if [ "$line" = READY ]; then cpu_ticks "$SERVER_PID" > "$out.cpu0"; fi
         done) > "$out"
  sleep 0.1
  cpu0=$(cat "$out.cpu0" 2>/dev/null || echo "$cpu0")
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
if res.get("mode") == "chat" and res.get("deliveries"):
    # From READY: the churn's handshakes are part of the workload.
    res.update(server_cpu_us_per_delivery=round(int(sys.argv[2]) / res["deliveries"], 2))
print(json.dumps(res))
PY
  rm -f "$out" "$out.cpu0"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A local Redis for the cluster runs (REDIS_PORT, REDIS_PID).
start_redis() {
  command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
  REDIS_PORT=$(free_port)
  $PIN_L redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --loglevel warning >&2 &
  REDIS_PID=$!
  for _ in $(seq 100); do
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return; fi
    sleep 0.05
  done
  echo "redis-server did not start" >&2
  exit 1
}

# Redis's CPU seconds so far (user + system).
redis_cpu() {
  redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {t += $2} END {printf "%.6f", t}'
}

# Start cluster nodes on core 0 (NODE_PORTS, NODE_PIDS).
start_nodes() {
  NODE_PORTS=()
  NODE_PIDS=()
  for k in $(seq "$1"); do
    local port pin=$PIN_S
    port=$(free_port)
    # PUBLISHER_CORE=1: the last node (the publisher's) on core 1 with Redis
    # and the load tool, so the subscribers' nodes have core 0 as one node would.
    if [ "$k" = "$1" ] && [ "${PUBLISHER_CORE:-0}" = 1 ]; then pin=$PIN_L; fi
    # shellcheck disable=SC2086
    $pin "$SERVER" --listen "127.0.0.1:$port" --log-level warn --max-connections 19500 \
      --max-connections-per-user 100000 --rate-limit 0 \
      --cluster "redis://127.0.0.1:$REDIS_PORT" ${SERVER_FLAGS:-} &
    NODE_PIDS+=($!)
    NODE_PORTS+=("$port")
  done
  trap stop_cluster EXIT
  for port in "${NODE_PORTS[@]}"; do
    for _ in $(seq 100); do
      if curl -fs "http://127.0.0.1:$port/stats" | grep -q '"state":"up"'; then break; fi
      sleep 0.05
    done
  done
}

stop_cluster() {
  trap - EXIT
  for pid in "${NODE_PIDS[@]:-}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]:-}"; do wait "$pid" 2>/dev/null || true; done
  kill -TERM "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
}

# Run the load tool against the started nodes; prints its JSON with the
# nodes' CPU seconds and Redis's CPU seconds added.
run_cluster_load() {
  local cpu0=0 rcpu0 out
  for pid in "${NODE_PIDS[@]}"; do cpu0=$((cpu0 + $(cpu_ticks "$pid"))); done
  rcpu0=$(redis_cpu)
  out=$(mktemp)
  # shellcheck disable=SC2086
  $PIN_L "$LOAD" "$@" ${LOAD_FLAGS:-} 2>/dev/null > "$out"
  local cpu1=0
  for pid in "${NODE_PIDS[@]}"; do cpu1=$((cpu1 + $(cpu_ticks "$pid"))); done
  python3 - "$out" "$(( (cpu1 - cpu0) * TICK_US ))" "$rcpu0" "$(redis_cpu)" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
nodes_us, r0, r1 = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
res.update(nodes_cpu_s=nodes_us / 1e6, redis_cpu_s=round(r1 - r0, 3))
pubs = res.get("messages_completed")
# Per publish only where publishing is all Redis does (cluster-publish):
# at 100 msg/s its idle ticks and heartbeats would dominate.
if pubs and res.get("mode") == "fanout":
    res.update(redis_cpu_ms_per_10k_publishes=round((r1 - r0) * 1e3 * 10000 / pubs, 2))
print(json.dumps(res))
PY
  rm -f "$out"
  stop_cluster
}

case "${1:-all}" in
  joins) run_load --mode joins --conns "${2:-100}" --duration "${DURATION:-5}" ;;
  cluster-fanout)
    start_redis
    SERVER_FLAGS="${SERVER_FLAGS:-} --cluster redis://127.0.0.1:$REDIS_PORT" \
      run_load --mode fanout --conns "${2:-1000}" --in-flight "${3:-16}" --messages "${MESSAGES:-20000}" --wait-joined
    kill -TERM "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
    ;;
  cluster-latency)
    start_redis
    start_nodes 3
    run_cluster_load --server "127.0.0.1:${NODE_PORTS[2]}" \
      --subscribers-on "127.0.0.1:${NODE_PORTS[0]},127.0.0.1:${NODE_PORTS[1]}" --wait-joined \
      --mode latency --conns "${2:-1000}" --rate "${3:-100}" --duration "${DURATION:-10}"
    ;;
  cluster-publish)
    start_redis
    start_nodes 2
    run_cluster_load --server "127.0.0.1:${NODE_PORTS[1]}" \
      --subscribers-on "127.0.0.1:${NODE_PORTS[0]}" --wait-joined \
      --mode fanout --conns 1 --in-flight "${2:-256}" --messages "${MESSAGES:-200000}" --payload 100
    ;;
  cluster-joins)
    start_redis
    start_nodes 2
    run_cluster_load --server "127.0.0.1:${NODE_PORTS[0]}" \
      --subscribers-on "127.0.0.1:${NODE_PORTS[0]},127.0.0.1:${NODE_PORTS[1]}" \
      --mode joins --conns "${2:-100}" --duration "${DURATION:-5}"
    ;;
  cluster)
    "$0" fanout 1000 16
    "$0" cluster-fanout 1000 16
    "$0" latency 1000 100
    "$0" cluster-latency 1000 100
    "$0" cluster-publish 256
    "$0" joins 100
    "$0" cluster-joins 100
    ;;
  idle) run_idle "${2:-10000}" ;;
  history-memory) run_history_memory "${2:-100000}" "${3:-100}" ;;
  dashboard) run_dashboard "${2:-10000}" ;;
  fanout) run_load --mode fanout --conns "${2:-1000}" --in-flight "${3:-1}" --messages "${MESSAGES:-20000}" ;;
  chat) run_load --mode chat --conns "${2:-10000}" --room-size 10 --churn "${3:-$(( ${2:-10000} / 100 ))}" --duration "${DURATION:-20}" ;;
  ahead) run_load --mode fanout --ahead --conns "${2:-1000}" --in-flight "${3:-1000}" --messages "${MESSAGES:-20000}" ;;
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
  *) sed -n '2,42p' "$0"; exit 2 ;;
esac
