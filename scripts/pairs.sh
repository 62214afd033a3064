#!/usr/bin/env bash
# Side by side against one peer, in interleaved pairs: this machine's speed
# drifts by 20 % over minutes, so a single run of each says little. Each pair
# is a switchboard run (scripts/bench.sh) right before the same run against
# the peer (scripts/peers.sh); the summary is the median and mean of the
# pairs' ratios.
#
#   scripts/pairs.sh N PEER MODE [ARGS...]
#   e.g. MESSAGES=30000 scripts/pairs.sh 10 uws fanout 1000 16
#
# PEER is one of scripts/peers.sh's (uws, ws, tokio). MODE is a fan-out
# mode (fanout, ahead: deliveries/s compared) or chat (server CPU per
# delivery compared). Prints one JSON line per run, tagged with "peer", then
# a summary line: ratios > 1 favour switchboard. MESSAGES, DURATION,
# LOAD_FLAGS and SERVER_BIN work as in scripts/bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  sed -n '2,15p' "$0"
  exit 2
fi
n=$1 peer=$2
shift 2
case $1 in
  fanout | ahead | chat) ;;
  *) echo "pairs.sh: MODE must be fanout, ahead or chat" >&2; exit 2 ;;
esac
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$n"); do
  scripts/bench.sh "$@" | tail -n 1 | python3 -c '
import json, sys
print(json.dumps({"peer": "switchboard", **json.loads(sys.stdin.read())}, separators=(",", ":")))' | tee -a "$out"
  PEERS=$peer scripts/peers.sh "$@" | tail -n 1 | tee -a "$out"
done
python3 - "$out" "$1" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
mode = sys.argv[2]
def cpu(r):
    return r["server_cpu_s"] / max(r["deliveries"], 1)
ratios, cpu_ratios = [], []
for ours, theirs in zip(runs[0::2], runs[1::2]):
    if mode != "chat":
        ratios.append(ours["deliveries_per_sec"] / max(theirs["deliveries_per_sec"], 1e-9))
    cpu_ratios.append(cpu(theirs) / max(cpu(ours), 1e-12))
summary = {"pairs": len(cpu_ratios), "peer": runs[1]["peer"], "mode": mode}
if ratios:
    summary.update(
        deliveries_ratio_median=round(statistics.median(ratios), 3),
        deliveries_ratio_mean=round(statistics.mean(ratios), 3),
        deliveries_ratio_min=round(min(ratios), 3),
        deliveries_ratio_max=round(max(ratios), 3),
        switchboard_ahead=sum(r > 1 for r in ratios),
    )
summary.update(
    cpu_per_delivery_ratio_median=round(statistics.median(cpu_ratios), 3),
    switchboard_less_cpu=sum(r > 1 for r in cpu_ratios),
)
print(json.dumps(summary))
PY
