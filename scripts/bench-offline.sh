#!/usr/bin/env bash
# Offline download against curl, from one nginx on loopback, in one run.
#
#   scripts/bench-offline.sh [SIZE_MIB] [RATE_PER_CONNECTION] [STORAGE_NODES]
#
# Serves a SIZE_MIB file (default 256) with nginx, each connection limited to
# RATE_PER_CONNECTION (nginx's limit_rate, like a CDN's per-connection cap; default 0 = none),
# and prints, for each of STORAGE_NODES (default "1 2") storage nodes:
#   curl          seconds for `curl -o FILE` (one connection, sendfile at the origin)
#   offline       first_segment_s, origin_done_s, done_s of `shoal offline add --follow`
# Needs the release binaries (cargo build --release --bins), nginx and curl. Every process it
# starts is stopped at the end; nothing leaves loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB="${1:-256}"
RATE="${2:-0}"
NODES="${3:-1 2}"
BIN="${SHOAL_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[ -x "$BIN/shoal" ] && [ -x "$BIN/shoal-tracker" ] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
[ -x "$NGINX" ] || { echo "needs nginx (apt-get install nginx-light)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$WORK/www" "$WORK/ng"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/www/f.bin"
PORT="$(free_port)"
cat > "$WORK/ng/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $WORK/ng/nginx.pid; error_log $WORK/ng/error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; client_body_temp_path $WORK/ng; proxy_temp_path $WORK/ng;
  fastcgi_temp_path $WORK/ng; uwsgi_temp_path $WORK/ng; scgi_temp_path $WORK/ng;
  server { listen 127.0.0.1:$PORT; root $WORK/www; limit_rate $RATE; } }
EOF
"$NGINX" -c "$WORK/ng/nginx.conf" -p "$WORK/ng" & PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.05; done
URL="http://127.0.0.1:$PORT/f.bin"

echo "file ${SIZE_MIB} MiB, limit_rate ${RATE} per connection, $(nproc) cores"
start=$(date +%s.%N)
curl -s -o "$WORK/curl.bin" "$URL"
end=$(date +%s.%N)
echo "curl: $(echo "$end - $start" | bc) s"
rm -f "$WORK/curl.bin"

for n in $NODES; do
    run="$WORK/run$n"
    mkdir -p "$run"
    ids=()
    for i in $(seq "$n"); do
        ids+=("$("$BIN/shoal" --data-dir "$run/st$i" user --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["node_id"])')")
    done
    me="$("$BIN/shoal" --data-dir "$run/me" user)"
    tport="$(free_port)"
    admit=()
    for id in "${ids[@]}"; do admit+=(--admit-storage "$id"); done
    SHOAL_LOG=warn "$BIN/shoal-tracker" serve --listen "127.0.0.1:$tport" --data-dir "$run/tr" "${admit[@]}" >/dev/null & PIDS+=($!)
    for i in $(seq "$n"); do
        SHOAL_LOG=warn "$BIN/shoal" --data-dir "$run/st$i" daemon --listen 127.0.0.1:0 --role storage \
            --tracker "127.0.0.1:$tport" --grant "$me" --offline-allow-private >/dev/null & PIDS+=($!)
    done
    SHOAL_LOG=warn "$BIN/shoal" --data-dir "$run/me" daemon --listen 127.0.0.1:0 --tracker "127.0.0.1:$tport" >/dev/null & PIDS+=($!)
    # Until every daemon answers and registered (bounded: 10 s).
    for _ in $(seq 200); do
        ok=1
        for i in $(seq "$n"); do "$BIN/shoal" --data-dir "$run/st$i" status >/dev/null 2>&1 || ok=0; done
        "$BIN/shoal" --data-dir "$run/me" status >/dev/null 2>&1 || ok=0
        [ "$ok" = 1 ] && break
        sleep 0.05
    done
    sleep 3 # two heartbeats: the tracker lists every storage node
    out="$("$BIN/shoal" --data-dir "$run/me" offline add "$URL" --follow --json -o "$run/out.bin")"
    cmp -s "$run/out.bin" "$WORK/www/f.bin" || { echo "offline ($n storage): file differs!" >&2; exit 1; }
    echo "offline, $n storage node(s): $out"
done
