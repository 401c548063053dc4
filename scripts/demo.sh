#!/usr/bin/env bash
# The Shoal demo: builds shoal, starts two seeders on loopback, shares a generated 256 MiB file
# from both, fetches it on a third node from both at once, and shows what happened.
# Usage: scripts/demo.sh [SIZE_MIB]   (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-256}"

cargo build --release --bin shoal
shoal="$PWD/target/release/shoal"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

start_daemon() { # name -> prints "NODE_ID@ADDR"
    local dir="$work/$1"
    mkdir -p "$dir"
    "$shoal" --data-dir "$dir" daemon --listen 127.0.0.1:0 >"$dir/out.log" 2>"$dir/err.log" &
    pids+=("$!")
    until grep -q "listening on" "$dir/out.log" 2>/dev/null; do sleep 0.1; done
}

echo "== generating a ${size_mib} MiB file"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/file.bin"

echo "== starting two seeders"
start_daemon seed1
start_daemon seed2
ticket="$("$shoal" --data-dir "$work/seed1" add "$work/file.bin")"
"$shoal" --data-dir "$work/seed2" add "$work/file.bin" >/dev/null
seed2="$(awk '/listening on/ {print $4 "@" $7}' "$work/seed2/out.log" | tr -d ,)"
echo "ticket: $ticket"

echo "== fetching on a third node from both seeders"
"$shoal" --data-dir "$work/fetcher" get "$ticket" --peer "$seed2" -o "$work/copy.bin"

cmp "$work/file.bin" "$work/copy.bin" && echo "== the copy is byte-identical"
echo "== what the fetcher now holds and seeds"
"$shoal" --data-dir "$work/fetcher" ls
echo "== seeder counters"
"$shoal" --data-dir "$work/seed1" status
"$shoal" --data-dir "$work/seed2" status
