#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs Debian's `redis-server`
# (the cluster tests start their own) and `chromium` (the JS client's
# browser tests) when missing, the interop clients (Python `websockets` into
# .tools/venv, Node `ws` into tests/interop) and `playwright-core` (into
# scripts/browser-tools), then runs `cargo test`. Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x .tools/venv/bin/python ] || ! .tools/venv/bin/python -c 'import websockets, prometheus_client' 2>/dev/null; then
  python3 -m venv .tools/venv
  .tools/venv/bin/pip install --quiet --disable-pip-version-check 'websockets>=12,<16' 'prometheus-client>=0.20,<1'
fi
if [ ! -d tests/interop/node_modules/ws ]; then
  (cd tests/interop && npm ci --silent --no-audit --no-fund)
fi
if [ ! -d scripts/browser-tools/node_modules/playwright-core ]; then
  (cd scripts/browser-tools && npm ci --silent --no-audit --no-fund)
fi
# README's run command (`cargo run --release`) must find the daemon among
# the crate's binaries (Cargo.toml's default-run); checked here in debug.
cargo run --quiet -- --version
# cargo test ends with the doc tests' "0 passed": close with the sum.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test "$@" 2>&1 | tee "$log"
awk '/^test result:/ { p += $4; f += $6 } END { printf "total: %d passed, %d failed\n", p, f }' "$log"
