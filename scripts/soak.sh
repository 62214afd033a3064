#!/usr/bin/env bash
# Soak test: churn (joins, leaves, messages, typing, presence, privates,
# pings, clean and abrupt disconnects, reconnects) against a fresh release
# daemon on loopback, then check that the server's registry is empty again and
# report its memory.
#
#   scripts/soak.sh [SECONDS] [CONNS]      (defaults: 120 s, 5000 clients)
#
# Prints one JSON object on stdout: the server's VmRSS (kB) at start, right
# after the run and once the registry is empty (plus VmHWM, its peak), the
# load tool's report, the final /stats, and the anomalies seen. Exits 1 when
# the registry does not return to empty within ~15 s, when the server sent a
# close code other than 1000/1001, when the load tool failed, or when the
# server did not exit cleanly on SIGTERM. RSS is reported, never judged: the
# allocator may keep freed memory.
#
# Environment: SOAK_FLAGS adds load-tool flags (e.g. "--rate 1000 --seed 7"),
# SERVER_FLAGS adds daemon flags, PORT picks the port (default: a free one),
# PIN=1 pins the server to core 0 and the load tool to core 1.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-120}
CONNS=${2:-5000}

ulimit -n "$(ulimit -Hn)"
cargo build --release --bin switchboard --bin switchboard-load >&2
SERVER=target/release/switchboard
LOAD=target/release/switchboard-load

if [ -z "${PORT:-}" ]; then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
PIN_S=() PIN_L=()
if [ "${PIN:-0}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  PIN_S=(taskset -c 0) PIN_L=(taskset -c 1)
fi

WORK=$(mktemp -d)
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local rc=0
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_PID=""
    return "$rc"
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo null; }
stats() { curl -sf --max-time 2 "http://127.0.0.1:$PORT/stats"; }

# shellcheck disable=SC2086
"${PIN_S[@]}" "$SERVER" --listen "127.0.0.1:$PORT" --log-level warn --max-connections 19000 \
  ${SERVER_FLAGS:-} 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  if curl -sf --max-time 1 "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "soak: the server exited at start:" >&2
    cat "$WORK/server.log" >&2
    exit 1
  fi
  sleep 0.05
done
sleep 0.5
RSS_BASE=$(rss_kb VmRSS)
echo "soak: server pid $SERVER_PID on 127.0.0.1:$PORT, VmRSS ${RSS_BASE} kB; $CONNS clients for ${SECS}s" >&2

LOAD_RC=0
# shellcheck disable=SC2086
"${PIN_L[@]}" "$LOAD" --server "127.0.0.1:$PORT" --mode soak --conns "$CONNS" --duration "$SECS" \
  ${SOAK_FLAGS:-} >"$WORK/load.json" || LOAD_RC=$?
RSS_AFTER_RUN=$(rss_kb VmRSS)
if ! jq -e 'type == "object"' "$WORK/load.json" >/dev/null 2>&1; then
  echo '{"error":"the load tool printed no JSON report"}' >"$WORK/load.json"
fi

# The registry must empty out: every client closed, every user and room gone.
EMPTY=false
STATS=null
for _ in $(seq 75); do
  if STATS=$(stats) && jq -e '.total_connections == 0 and .total_users == 0 and .rooms == {}' \
    <<<"$STATS" >/dev/null; then
    EMPTY=true
    break
  fi
  sleep 0.2
done
[ -n "$STATS" ] || STATS=null
RSS_AFTER_EMPTY=$(rss_kb VmRSS)
RSS_PEAK=$(rss_kb VmHWM)
SERVER_ALIVE=true
kill -0 "$SERVER_PID" 2>/dev/null || SERVER_ALIVE=false

SERVER_RC=0
stop_server || SERVER_RC=$?
SERVER_LOG_LINES=$(wc -l <"$WORK/server.log")

jq -n \
  --argjson secs "$SECS" --argjson conns "$CONNS" --arg port "$PORT" \
  --argjson base "${RSS_BASE:-null}" --argjson after_run "${RSS_AFTER_RUN:-null}" \
  --argjson after_empty "${RSS_AFTER_EMPTY:-null}" --argjson peak "${RSS_PEAK:-null}" \
  --slurpfile load "$WORK/load.json" --argjson stats "$STATS" \
  --argjson empty "$EMPTY" --argjson load_rc "$LOAD_RC" --argjson server_rc "$SERVER_RC" \
  --argjson alive "$SERVER_ALIVE" --argjson log_lines "$SERVER_LOG_LINES" \
  --rawfile log "$WORK/server.log" '
  ($load[0]) as $l
  | ([($l.unexpected_close_codes // {}), ($l.close_replies // {})]
     | map(keys[]) | unique | map(select(. != "1000" and . != "1001"))) as $bad_codes
  | {
      seconds: $secs, conns: $conns, port: ($port | tonumber),
      server_rss_kb: {
        baseline: $base, after_run: $after_run, after_empty: $after_empty, peak_hwm: $peak,
        growth_after_empty: (if $base and $after_empty then $after_empty - $base else null end)
      },
      registry_empty: $empty,
      server_alive_after_run: $alive,
      server_exit_status: $server_rc,
      load_exit_status: $load_rc,
      bad_close_codes: $bad_codes,
      anomalies: ([
        (if $empty then empty else "registry not empty ~15 s after the run" end),
        (if $load_rc != 0 then "load tool exited \($load_rc): \($l.error // "?")" else empty end),
        (if $alive then empty else "server died during the run" end),
        (if $server_rc != 0 then "server exited \($server_rc) on SIGTERM" else empty end),
        ($bad_codes[] | "server close code \(.)"),
        (($l.unexpected_close_codes // {}) | to_entries[] | "server-initiated close \(.key) x\(.value)"),
        (($l.unexpected_drops // {}) | to_entries[] | "connection lost without close (\(.key)) x\(.value)"),
        (($l.closes_without_reply // {}) | to_entries[] | "clean close got no close frame (\(.key)) x\(.value)"),
        (if ($l.close_timeouts // 0) > 0 then "close timeouts x\($l.close_timeouts)" else empty end),
        (if ($l.replies_missing // 0) > 0 then "replies missing at clean close x\($l.replies_missing)" else empty end),
        (if ($l.unsolicited_replies // 0) > 0 then "unsolicited replies x\($l.unsolicited_replies)" else empty end),
        (if ($l.frames_before_welcome // 0) > 0 then "frames before welcome x\($l.frames_before_welcome)" else empty end),
        (if ($l.unclosed_at_end // 0) > 0 then "clients not closed cleanly at the end x\($l.unclosed_at_end)" else empty end),
        (($l.handshake_failures // {}) | to_entries[] | "handshake failed (\(.key)) x\(.value)"),
        (($l.error_replies // {}) | to_entries[]
          | select(.key != "not_in_room" and .key != "user_offline")
          | "error reply \(.key) x\(.value)"),
        (if $log_lines > 0 then "server logged \($log_lines) warning/error lines" else empty end)
      ]),
      races: (($l.error_replies // {}) | with_entries(select(.key == "not_in_room" or .key == "user_offline"))),
      server_log_tail: ($log | split("\n") | map(select(length > 0)) | .[-20:]),
      load: $l,
      final_stats: $stats
    }'

FAIL=0
if [ "$EMPTY" != true ]; then
  echo "soak: FAIL: the registry is not empty:" >&2
  echo "$STATS" >&2
  FAIL=1
fi
if [ "$LOAD_RC" -ne 0 ]; then
  echo "soak: FAIL: the load tool exited $LOAD_RC" >&2
  FAIL=1
fi
BAD=$(jq -r '[(.unexpected_close_codes // {}), (.close_replies // {})] | map(keys[]) | unique
  | map(select(. != "1000" and . != "1001")) | join(",")' "$WORK/load.json")
if [ -n "$BAD" ]; then
  echo "soak: FAIL: the server sent close codes $BAD" >&2
  FAIL=1
fi
if [ "$SERVER_ALIVE" != true ] || [ "$SERVER_RC" -ne 0 ]; then
  echo "soak: FAIL: the server died or exited $SERVER_RC" >&2
  FAIL=1
fi
[ "$FAIL" = 0 ] && echo "soak: OK" >&2
exit "$FAIL"
