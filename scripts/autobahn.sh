#!/usr/bin/env bash
# Autobahn|Testsuite fuzzing client against switchboard's /echo route.
#
#   scripts/autobahn.sh
#
# 1. Installs wstest (PyPI autobahntestsuite, Python 2 code) into a CPython 2.7
#    virtualenv at .tools/autobahn/venv27, every package pinned in
#    scripts/autobahn-requirements.txt. CPython 2.7 comes from, in order:
#    $AUTOBAHN_PYTHON2; pyenv's 2.7.18 (the machine image ships it: `pyenv
#    install` itself cannot work here, it downloads from python.org); a
#    python2.7 on PATH; else Debian bullseye's python2.7 packages, fetched with
#    apt-get into a private apt state under .tools/autobahn/py27-debian (no
#    change to the system's apt sources) and unpacked there with dpkg-deb
#    (bookworm has no python2.7). AUTOBAHN_PY27=debian forces the last one.
#    The virtualenv is made by virtualenv 20.21.1 (the last that can create 2.7
#    environments) from a Python 3 venv at .tools/autobahn/bootstrap.
# 2. Builds the release daemon and starts it on a free 127.0.0.1 port.
# 3. Runs `wstest -m fuzzingclient` on every case but 12.* and 13.*
#    (permessage-deflate, which switchboard does not offer); reports go to
#    .tools/autobahn/reports/ (index.html, index.json, one JSON+HTML per case).
# 4. Prints a markdown table of the behaviors per section, writes it to
#    .tools/autobahn/reports/summary.md, and exits 1 if any case's behavior,
#    or its closing behavior, is FAILED (or UNCLEAN), listing those cases;
#    2 if the run did not complete (daemon died, wstest failed or timed out).
#
# AUTOBAHN_TLS=1 runs the same over wss://: the daemon gets a certificate
# made for the run with openssl (--tls-cert/--tls-key) and wstest connects
# to wss://127.0.0.1:PORT/echo (reports in .tools/autobahn/reports-tls/).
#
# Environment: AUTOBAHN_CASES (comma-separated case patterns, default "*"),
# AUTOBAHN_TIMEOUT (seconds for the wstest run, default 1200),
# AUTOBAHN_PYTHON2, AUTOBAHN_PY27=debian (see above), AUTOBAHN_DAEMON_ARGS
# (extra daemon options, after the script's own: the later one wins).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T=$ROOT/.tools/autobahn
REQ=$ROOT/scripts/autobahn-requirements.txt
REPORTS=$T/reports
SCHEME=ws
if [ "${AUTOBAHN_TLS:-0}" = 1 ]; then
  REPORTS=$T/reports-tls
  SCHEME=wss
fi
WSTEST_TIMEOUT=${AUTOBAHN_TIMEOUT:-1200}
CASES=${AUTOBAHN_CASES:-*}
VIRTUALENV_PINS=(virtualenv==20.21.1 distlib==0.4.4 filelock==3.32.7 platformdirs==3.11.0)

# Everything pip and virtualenv cache stays under .tools/autobahn.
export PIP_CACHE_DIR=$T/cache/pip
export VIRTUALENV_OVERRIDE_APP_DATA=$T/cache/virtualenv
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1
export PYTHONWARNINGS=ignore

T0=$(date +%s)
log() { printf '[autobahn %4ds] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() { log "error: $*"; exit 2; }
mkdir -p "$T"

# ---------------------------------------------------------------- Python 2.7
PY27=
PY27_LIBDIR=
is_py27() { [ -n "$1" ] && "$1" -c 'import sys, ssl, zlib, ctypes; assert sys.version_info[:2] == (2, 7)' >/dev/null 2>&1; }

py27_from_debian() {
  local d=$T/py27-debian arch keyring
  if ! is_py27_debian "$d"; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "no apt-get/dpkg-deb to fetch python2.7"
    log "fetching CPython 2.7 from Debian bullseye into ${d#"$ROOT"/}"
    rm -rf "$d"
    mkdir -p "$d"/lists/partial "$d"/cache/archives/partial "$d"/debs "$d"/root
    arch=$(dpkg --print-architecture)
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ -r "$keyring" ]; then keyring="signed-by=$keyring "; else keyring=; fi
    # The machine's own Debian mirror (from its apt sources), older suite.
    local mirror
    mirror=$(grep -hoE '^(URIs:|deb) *(\[[^]]*\] *)?https?://[^ ]+/debian( |$)' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -oE 'https?://[^ ]+/debian' | head -n 1)
    [ -n "$mirror" ] || die "no Debian mirror found in the apt sources"
    echo "deb [${keyring}arch=$arch] $mirror bullseye main" >"$d/sources.list"
    local o=(-q -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/nonexistent
             -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o APT::Sandbox::User=root)
    apt-get "${o[@]}" update >"$d/apt.log" 2>&1 || { cat "$d/apt.log" >&2; die "apt-get update (bullseye) failed"; }
    (cd "$d/debs" && apt-get "${o[@]}" download \
        python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib \
        python2.7-dev libpython2.7-dev libpython2.7 libssl1.1 libffi7 >>"$d/apt.log" 2>&1) \
      || { cat "$d/apt.log" >&2; die "apt-get download (bullseye python2.7) failed"; }
    local deb
    for deb in "$d"/debs/*.deb; do dpkg-deb -x "$deb" "$d/root"; done
    (cd "$d/debs" && ls) | sed 's/^/  /' >&2
  fi
  is_py27_debian "$d" || die "Debian python2.7 unpacked in $d does not run"
}
is_py27_debian() {
  local d=$1 multiarch
  multiarch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
  PY27=$d/root/usr/bin/python2.7
  PY27_LIBDIR=$d/root/usr/lib/$multiarch
  LD_LIBRARY_PATH=$PY27_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} is_py27 "$PY27"
}

find_py27() {
  if [ "${AUTOBAHN_PY27:-}" = debian ]; then py27_from_debian; return; fi
  local c
  for c in "${AUTOBAHN_PYTHON2:-}" "${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python2.7" \
           "$(command -v pyenv >/dev/null && pyenv prefix 2.7.18 2>/dev/null)/bin/python2.7" \
           "$(command -v python2.7 || true)"; do
    if is_py27 "$c"; then PY27=$c; return; fi
  done
  py27_from_debian
}

find_py27
if [ -n "$PY27_LIBDIR" ]; then
  export LD_LIBRARY_PATH=$PY27_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # Debian's headers: Python.h includes <x86_64-linux-gnu/python2.7/pyconfig.h>.
  inc=$(dirname "$(dirname "$PY27")")/include
  export CFLAGS="-I$inc -I$inc/python2.7 ${CFLAGS:-}"
fi
log "python 2.7: $PY27 ($("$PY27" -c 'import sys, ssl; print("%s, %s" % (sys.version.split()[0], ssl.OPENSSL_VERSION))'))"

# ---------------------------------------------------------------- wstest venv
VENV=$T/venv27
STAMP="$(sha256sum "$REQ" | cut -d' ' -f1) $PY27 ${VIRTUALENV_PINS[*]}"
if [ "$(cat "$VENV/.autobahn-stamp" 2>/dev/null)" != "$STAMP" ] || [ ! -x "$VENV/bin/wstest" ]; then
  log "installing wstest into ${VENV#"$ROOT"/}"
  if [ ! -x "$T/bootstrap/bin/virtualenv" ]; then
    rm -rf "$T/bootstrap"
    python3 -m venv "$T/bootstrap" || die "python3 -m venv failed"
    "$T/bootstrap/bin/pip" install -q "${VIRTUALENV_PINS[@]}" || die "pip install virtualenv failed"
  fi
  rm -rf "$VENV"
  "$T/bootstrap/bin/virtualenv" -q --no-periodic-update -p "$PY27" "$VENV" || die "virtualenv failed"
  "$VENV/bin/pip" install -q --no-deps -r "$REQ" || die "pip install -r ${REQ#"$ROOT"/} failed"
  "$VENV/bin/pip" check >/dev/null || { "$VENV/bin/pip" check; die "pip check failed"; }
  echo "$STAMP" >"$VENV/.autobahn-stamp"
fi
log "$("$VENV/bin/wstest" -a | tr '\n' ' ')"

# ---------------------------------------------------------------- daemon
log "cargo build --release --bin switchboard"
cargo build --release --bin switchboard || die "cargo build failed"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchboard
[ -x "$BIN" ] || die "no binary at $BIN"

DAEMON_PID=
WSTEST_PID=
stop_daemon() {
  [ -n "$DAEMON_PID" ] || return 0
  if kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
  fi
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
}
cleanup() {
  if [ -n "$WSTEST_PID" ]; then kill -TERM "$WSTEST_PID" 2>/dev/null || true; wait "$WSTEST_PID" 2>/dev/null || true; fi
  stop_daemon
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
healthy() {
  python3 - "$1" "$SCHEME" <<'EOF' >/dev/null 2>&1
import ssl, sys, urllib.request
scheme = "https" if sys.argv[2] == "wss" else "http"
context = ssl._create_unverified_context() if scheme == "https" else None
urllib.request.urlopen("%s://127.0.0.1:%s/healthz" % (scheme, sys.argv[1]), timeout=1, context=context).read()
EOF
}

TLS_FLAGS=()
if [ "$SCHEME" = wss ]; then
  command -v openssl >/dev/null || die "AUTOBAHN_TLS=1 needs openssl (apt-get install openssl)"
  mkdir -p "$T/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$T/tls/key.pem" -out "$T/tls/cert.pem" -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null || die "openssl could not make a certificate"
  TLS_FLAGS=(--tls-cert "$T/tls/cert.pem" --tls-key "$T/tls/key.pem")
fi

PORT=
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  "$BIN" --listen "127.0.0.1:$port" \
    --echo-max-message-size 16777216 --max-output-queue 67108864 "${TLS_FLAGS[@]}" \
    --log-level warn ${AUTOBAHN_DAEMON_ARGS:-} >"$T/switchboard.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 50); do
    if healthy "$port"; then PORT=$port; break; fi
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$PORT" ] && break
  log "daemon did not come up on port $port (attempt $attempt):"
  tail -5 "$T/switchboard.log" >&2 || true
  stop_daemon
done
[ -n "$PORT" ] || die "could not start switchboard"
log "switchboard pid $DAEMON_PID on 127.0.0.1:$PORT (log: ${T#"$ROOT"/}/switchboard.log)"

# ---------------------------------------------------------------- wstest
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
python3 - "$T/spec.json" "$PORT" "$REPORTS" "$CASES" "$SCHEME" <<'EOF'
import json, sys
path, port, outdir, cases, scheme = sys.argv[1:]
spec = {
    "outdir": outdir,
    "servers": [{"agent": "switchboard", "url": "%s://127.0.0.1:%s/echo" % (scheme, port)}],
    "cases": [c.strip() for c in cases.split(",") if c.strip()],
    # 12.* and 13.* are permessage-deflate: switchboard does not negotiate it.
    "exclude-cases": ["12.*", "13.*"],
    "exclude-agent-cases": {},
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF
log "wstest -m fuzzingclient -s ${T#"$ROOT"/}/spec.json (cases: $CASES minus 12.*, 13.*; timeout ${WSTEST_TIMEOUT}s; log: ${T#"$ROOT"/}/wstest.log)"
T_RUN=$(date +%s)
rc=0
# In the background and waited for, so that a signal to this script is acted on at once.
(cd "$T" && exec timeout --kill-after=10 "$WSTEST_TIMEOUT" "$VENV/bin/wstest" -m fuzzingclient -s "$T/spec.json") \
  >"$T/wstest.log" 2>&1 &
WSTEST_PID=$!
wait "$WSTEST_PID" || rc=$?
WSTEST_PID=
log "wstest exited $rc after $(($(date +%s) - T_RUN))s"
daemon_alive=1
kill -0 "$DAEMON_PID" 2>/dev/null || daemon_alive=0
stop_daemon
if [ "$daemon_alive" = 0 ]; then
  log "switchboard died during the run; its log:"
  tail -20 "$T/switchboard.log" >&2 || true
fi
if [ -s "$T/switchboard.log" ]; then
  log "switchboard logged $(wc -l <"$T/switchboard.log") lines at warn or above (${T#"$ROOT"/}/switchboard.log)"
fi

# ---------------------------------------------------------------- summary
set +e
python3 - "$REPORTS" "$T/wstest.log" "$rc" "$daemon_alive" <<'EOF'
import json, os, re, sys

reports, wslog, rc, alive = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
problems = []

planned = None
with open(wslog, errors="replace") as f:
    m = re.search(r"will run (\d+) test cases", f.read())
    if m:
        planned = int(m.group(1))

index_path = os.path.join(reports, "index.json")
cases = {}
if os.path.exists(index_path):
    with open(index_path) as f:
        index = json.load(f)
    for agent in index.values():
        cases.update(agent)
else:
    problems.append("no %s" % index_path)
if rc != 0:
    problems.append("wstest exited %d%s" % (rc, " (timed out)" if rc in (124, 137) else ""))
if not alive:
    problems.append("switchboard died during the run")
if planned is None:
    problems.append("wstest never said how many cases it would run")
elif len(cases) != planned:
    problems.append("%d cases planned, %d reported" % (planned, len(cases)))

def key(cid):
    return tuple(int(p) for p in cid.split("."))

def section(cid):
    return cid.split(".")[0] + ".*"

rows = {}
close_counts = {}
for cid, c in cases.items():
    b = c["behavior"]
    row = rows.setdefault(section(cid), {})
    row[b] = row.get(b, 0) + 1
    close_counts[c["behaviorClose"]] = close_counts.get(c["behaviorClose"], 0) + 1

extra = sorted({b for r in rows.values() for b in r} - set(BEHAVIORS))
cols = BEHAVIORS + extra
out = []
out.append("| section | " + " | ".join(cols) + " | total |")
out.append("|---|" + "---:|" * (len(cols) + 1))
total = {}
for sec in sorted(rows, key=lambda s: int(s.split(".")[0])):
    r = rows[sec]
    for b, n in r.items():
        total[b] = total.get(b, 0) + n
    out.append("| %s | %s | %d |" % (sec, " | ".join(str(r.get(b, 0)) for b in cols), sum(r.values())))
out.append("| **all** | %s | **%d** |" % (" | ".join("**%d**" % total.get(b, 0) for b in cols), sum(total.values())))
out.append("")
out.append("Closing behavior: " + ", ".join("%s %d" % (b, n) for b, n in sorted(close_counts.items())))
table = "\n".join(out)
print(table)
with open(os.path.join(reports, "summary.md"), "w") as f:
    f.write(table + "\n")

def short(v, n=400):
    s = json.dumps(v)
    return s if len(s) <= n else s[:n] + " ...(%d chars)" % len(s)

failed = [cid for cid, c in cases.items()
          if c["behavior"] == "FAILED" or c["behaviorClose"] in ("FAILED", "UNCLEAN")]
if failed:
    print("\n%d FAILED case(s):" % len(failed))
for cid in sorted(failed, key=key):
    c = cases[cid]
    with open(os.path.join(reports, c["reportfile"])) as f:
        d = json.load(f)
    print("\n## %s  behavior=%s close=%s remoteCloseCode=%s  (%s)" % (
        cid, c["behavior"], c["behaviorClose"], c["remoteCloseCode"], c["reportfile"].replace(".json", ".html")))
    print("  description: %s" % d.get("description"))
    print("  expectation: %s" % d.get("expectation"))
    print("  result:      %s" % d.get("result"))
    print("  resultClose: %s" % d.get("resultClose"))
    print("  expected:    %s" % short(d.get("expected")))
    print("  expectedClose: %s" % short(d.get("expectedClose")))
    print("  received:    %s" % short(d.get("received")))
    print("  close: localCode=%s remoteCode=%s remoteReason=%s wasClean=%s droppedByMe=%s wasNotCleanReason=%s" % (
        d.get("localCloseCode"), d.get("remoteCloseCode"), d.get("remoteCloseReason"),
        d.get("wasClean"), d.get("droppedByMe"), d.get("wasNotCleanReason")))

for p in problems:
    print("\nINCOMPLETE RUN: %s" % p)
if problems:
    sys.exit(2)
sys.exit(1 if failed else 0)
EOF
status=$?
set -e
if [ "$status" = 2 ]; then
  log "wstest log tail:"; tail -20 "$T/wstest.log" >&2 || true
fi
log "done in $(($(date +%s) - T0))s; report: ${REPORTS#"$ROOT"/}/index.html"
exit "$status"
