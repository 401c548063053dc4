#!/usr/bin/env bash
# The Shoal demo: builds shoal and shoal-tracker, starts a tracker and a seed on loopback,
# shares a generated file (256 MiB by default), and lets four downloaders fetch it at once.
# The seed's upload is capped at 32 MiB/s, so the downloaders must complete each other;
# the end shows who sent what.
# Usage: scripts/demo.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-256}"

cargo build --release --bin shoal --bin shoal-tracker
bin="$PWD/target/release"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # file pattern
    for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for $2 in $1" >&2; return 1
}

echo "== starting a tracker and a seed (upload capped at 32 MiB/s)"
"$bin/shoal-tracker" serve --listen 127.0.0.1:0 --data-dir "$work/tracker" >"$work/tracker.out" 2>"$work/tracker.err" &
pids+=("$!")
wait_for "$work/tracker.out" "listening on"
tracker="$(awk '/listening on/ {print $6}' "$work/tracker.out" | tr -d ,)"
"$bin/shoal" --data-dir "$work/seed" daemon --listen 127.0.0.1:0 --tracker "$tracker" \
    --upload-limit 32MiB/s >"$work/seed.out" 2>"$work/seed.err" &
pids+=("$!")
wait_for "$work/seed.out" "listening on"

echo "== generating and sharing a ${size_mib} MiB file"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/file.bin"
ticket="$("$bin/shoal" --data-dir "$work/seed" add "$work/file.bin")"
echo "ticket: $ticket"

echo "== four downloaders fetch it at once"
start=$(date +%s.%N)
fetchers=()
for i in 1 2 3 4; do
    "$bin/shoal" --data-dir "$work/d$i" get "$ticket" -o "$work/copy$i.bin" --json \
        >"$work/report$i.json" 2>"$work/get$i.err" &
    fetchers+=("$!")
done
for p in "${fetchers[@]}"; do wait "$p"; done
end=$(date +%s.%N)

for i in 1 2 3 4; do cmp "$work/file.bin" "$work/copy$i.bin"; done
echo "== all four copies are byte-identical ($(echo "$end - $start" | bc) s)"
seed_id="$(awk '/listening on/ {print $4}' "$work/seed.out")"
for i in 1 2 3 4; do
    python3 - "$work/report$i.json" "$seed_id" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
seed = sum(p["pieces"] for p in r["peers"] if p["node_id"] == sys.argv[2])
others = sum(p["pieces"] for p in r["peers"] if p["node_id"] != sys.argv[2])
print(f"downloader {sys.argv[3]}: {r['seconds']:.1f} s, {seed} pieces from the seed, {others} from other downloaders")
PY
done
echo "== the seed's counters"
"$bin/shoal" --data-dir "$work/seed" status
