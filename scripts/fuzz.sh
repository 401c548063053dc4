#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a short time (FUZZ_SECONDS, default 20),
# starting from its regression corpus in fuzz/regressions/TARGET (inputs that once crashed a
# target, kept so that they are replayed on every run). A crash fails the run and leaves the
# input under fuzz/artifacts/TARGET: copy it into fuzz/regressions/TARGET with the fix.
# Needs a nightly toolchain (cargo-fuzz builds with sanitizers); without one, says so and skips.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain on this machine; skipping the fuzz runs (the decoders' property tests still ran)"
    exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/shoal-fuzz-target}"
cd fuzz
cargo +nightly fuzz build -O
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in $(cargo +nightly fuzz list); do
    mkdir -p "regressions/$t" "$work/$t"
    echo "fuzz: $t for ${SECONDS_EACH}s"
    status=0
    cargo +nightly fuzz run -O "$t" "$work/$t" "regressions/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$t.log" 2>&1 || status=$?
    grep -E "^stat::number_of_executed_units|^SUMMARY|panicked|ERROR" "$work/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$work/$t.log"
        echo "fuzz: target $t failed; the crashing input is under fuzz/artifacts/$t"
        exit 1
    fi
done
echo "fuzz: every target ran ${SECONDS_EACH}s without a finding"
