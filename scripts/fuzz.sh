#!/usr/bin/env bash
# Fuzz switchboard with cargo fuzz (libFuzzer).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]
#
# TARGET: cluster_in, decode, frames, hub_ops, requests, resp, or all (the default); SECONDS per target
# (default 600). Installs cargo-fuzz if missing, seeds fuzz/corpus/<target>
# from the committed fuzz/seeds/<target>, runs the targets one after another
# (one core each) and prints a summary. Exits non-zero if any target crashed;
# crash inputs land in fuzz/artifacts/<target>/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…`,
# shrink with `cargo fuzz tmin`).
#
# cargo fuzz passes nightly-only flags (-Z sanitizer=address, sancov passes).
# The machine has a stable toolchain only, so RUSTC_BOOTSTRAP=1 lets stable
# rustc accept them. FUZZ_SANITIZER=none runs without AddressSanitizer
# (faster; the targets are safe Rust, ASan mainly guards the C++ runtime).
# Logs: fuzz/target/fuzz-logs/<target>.log.
set -euo pipefail

cd "$(dirname "$0")/.."
ALL=(cluster_in decode frames hub_ops requests resp)
target=${1:-all}
seconds=${2:-600}
sanitizer=${FUZZ_SANITIZER:-address}

case "$target" in
all) targets=("${ALL[@]}") ;;
cluster_in | decode | frames | hub_ops | requests | resp) targets=("$target") ;;
*)
    echo "usage: $0 [decode|frames|hub_ops|requests|resp|all] [SECONDS]" >&2
    exit 2
    ;;
esac
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "SECONDS must be a positive integer, not '$seconds'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
echo "== building fuzz targets (sanitizer: $sanitizer)"
(cd fuzz && cargo fuzz build --sanitizer "$sanitizer")

summary=()
failed=0
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    fi
    before=$(find "$artifacts" -type f | wc -l)
    log=$logs/$t.log
    echo "== $t: ${seconds}s (corpus $(find "$corpus" -type f | wc -l) files), log $log"
    set +e
    (cd fuzz && cargo fuzz run --sanitizer "$sanitizer" "$t" -- \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1) >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "$artifacts" -type f | wc -l)
    # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/S ..."
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        failed=1
        status="CRASH (exit $rc; new artifacts: $((after - before)))"
        grep -E 'panicked at|ERROR: |SUMMARY: |Test unit written to' "$log" | head -n 8 | sed 's/^/    /'
    else
        status=ok
    fi
    summary+=("$(printf '%-8s %-6s %8ss  execs %-10s cov %-6s ft %-7s corpus %s' \
        "$t" "$status" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done

echo
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
