#!/usr/bin/env bash
# The loads of scripts/bench.sh against peer servers: the same load tool, the
# same pinning (server on core 0, load tool on core 1 when there are two), one
# JSON line per run, tagged with "peer".
#
#   scripts/peers.sh idle [N]            server RSS per idle connection (default N=10000)
#   scripts/peers.sh fanout [N] [K]      deliveries/s to N subscribers, K messages in flight
#   scripts/peers.sh ahead [N] [K]       the same with the next message sent once the previous
#                                        one reached its first subscriber (a steady stream)
#   scripts/peers.sh chat [N] [CHURN]    rooms of 10, one message a second each, CHURN reconnects/s
#   scripts/peers.sh latency [N] [RATE]  publish→delivery percentiles at RATE msg/s
#   scripts/peers.sh echo [N]            round trips/s, N connections with one message each
#   scripts/peers.sh all                 the issue's target table
#
# PEERS picks the peers, in order (default "uws ws tokio"):
#   uws    benches/peers/node/uws-server.js  (uWebSockets.js, npm package `uwebsockets`)
#   ws     benches/peers/node/ws-server.js   (Node.js `ws`)
#   tokio  benches/peers/tokio               (tokio + tokio-tungstenite)
# Each speaks the subset of switchboard's protocol that the load tool uses.
# Missing pieces are installed first: `npm ci` in benches/peers/node, and the
# tokio peer built into target/. MESSAGES, DURATION and LOAD_FLAGS work as in
# scripts/bench.sh. 20,000 connections need as many file descriptors: the
# soft `ulimit -n` is raised to the hard limit here (the servers inherit it).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

NODE_DIR=benches/peers/node
TOKIO_DIR=benches/peers/tokio
PEERS=${PEERS:-uws ws tokio}

case "${1:-all}" in
  idle | fanout | ahead | chat | latency | echo | all) ;;
  *) sed -n '2,23p' "$0"; exit 2 ;;
esac

for peer in $PEERS; do
  case $peer in
    uws | ws | tokio) ;;
    *) echo "unknown peer: $peer (known: uws ws tokio)" >&2; exit 2 ;;
  esac
done

case " $PEERS " in
  *" uws "* | *" ws "*)
    command -v node >/dev/null || { echo "node is needed for the uws and ws peers" >&2; exit 1; }
    if [ "$NODE_DIR/package-lock.json" -nt "$NODE_DIR/node_modules/.package-lock.json" ]; then
      (cd "$NODE_DIR" && npm ci --no-audit --no-fund >&2)
    fi
    ;;
esac
case " $PEERS " in
  *" tokio "*)
    (cd "$TOKIO_DIR" && CARGO_TARGET_DIR=../../../target cargo build --release --quiet --locked)
    ;;
esac

# Prefix every JSON line with the peer's name.
tag() {
  python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        print(json.dumps({"peer": sys.argv[1], **json.loads(line)}, separators=(",", ":")), flush=True)
' "$1"
}

status=0
for peer in $PEERS; do
  case $peer in
    uws) cmd="node $NODE_DIR/uws-server.js 127.0.0.1:{PORT}" ;;
    ws) cmd="node $NODE_DIR/ws-server.js 127.0.0.1:{PORT}" ;;
    tokio) cmd="target/release/switchboard-peer-tokio 127.0.0.1:{PORT}" ;;
  esac
  # The servers' "listening on" lines go to stderr; stdout is JSON only.
  if ! SERVER_CMD=$cmd scripts/bench.sh "$@" | tag "$peer"; then
    echo "peers.sh: a run against $peer failed" >&2
    status=1
  fi
done
exit "$status"
