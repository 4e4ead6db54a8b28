#!/usr/bin/env bash
# Throughput of `graft serve` on loopback at 1, 8 and 32 concurrent clients (graft-load,
# bench/load), each request one flowers photo (JPEG, ~320x240) posted as the body, against
# `graft bench forward` of the same backbone at batch 32 (20 batches: about as many images and
# seconds as the 32-client run) in the same run, and the ratio at 32 clients. The server
# decodes and preprocesses each photo too; `bench forward` times the network alone on a ready
# batch.
#
# Environment:
#   BACKBONE=efficientnet-lite0   the ImageNet classifier served (no run directory needed)
#   THREADS=2                     graft's worker threads (server and bench forward alike)
#   REQUESTS=600                  requests at 8 and 32 clients (1 client: a third of it)
#   PHOTOS=../shared/data/flowers the photos sent (the first 200 JPEGs, in turn)
#   SERVE_FLAGS=                  more flags for graft serve (e.g. --max-wait-ms 20)
#   NO_BUILD=1                    use target/release as it is
#   GRAFTS="OLD/graft NEW/graft"  serve with each of these binaries in turn, in this one run
#                                 (e.g. before and after a change; default: target/release's),
#                                 each with the same clients, photos and `bench forward`
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
BACKBONE="${BACKBONE:-efficientnet-lite0}"
THREADS="${THREADS:-2}"
REQUESTS="${REQUESTS:-600}"
PHOTOS="${PHOTOS:-$REPO_DIR/../shared/data/flowers}"
GRAFT="$REPO_DIR/target/release/graft"
LOAD="$REPO_DIR/target/release/graft-load"

if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$REPO_DIR" && cargo build --release --quiet --bin graft --bin graft-load)
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT

find -L "$PHOTOS" -name '*.jpg' | sort > "$work/all.txt"
head -200 "$work/all.txt" > "$work/photos.txt"

# One server binary: start it, warm up, 1/8/32 clients, stop. Sets serve_32.
serve_with() {
    local graft="$1"
    # shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
    "$graft" --threads "$THREADS" serve -b "$BACKBONE" --addr 127.0.0.1:0 --max-batch 32 \
        ${SERVE_FLAGS:-} 2> "$work/server.log" &
    server_pid=$!
    local addr=""
    for _ in $(seq 600); do
        addr="$(sed -n 's/^listening on //p' "$work/server.log")"
        if [[ -n "$addr" ]] && grep -q '^ready' "$work/server.log"; then break; fi
        sleep 0.1
    done
    if [[ -z "$addr" ]]; then cat "$work/server.log" >&2; exit 1; fi
    local url="http://$addr/v1/predict"

    # Warm-up (allocator, page cache, thread pools), not reported.
    "$LOAD" --url "$url" --clients 8 --requests 64 "@$work/photos.txt" > /dev/null

    echo "$graft --threads $THREADS serve -b $BACKBONE --max-batch 32 ${SERVE_FLAGS:-}(loopback, one photo per request)"
    printf '%8s %9s %8s %8s %8s  %s\n' clients requests img/s p50_ms p99_ms statuses
    serve_32=""
    for clients in 1 8 32; do
        n="$REQUESTS"
        if [[ "$clients" == 1 ]]; then n=$((REQUESTS / 3)); fi
        json="$("$LOAD" --url "$url" --clients "$clients" --requests "$n" "@$work/photos.txt")"
        read -r ips p50 p99 statuses < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(r["images_per_s"], r["p50_ms"], r["p99_ms"], json.dumps(r["statuses"], separators=(",", ":")))
' "$json")
        printf '%8s %9s %8s %8s %8s  %s\n' "$clients" "$n" "$ips" "$p50" "$p99" "$statuses"
        if [[ "$clients" == 32 ]]; then serve_32="$ips"; fi
    done
    kill -TERM "$server_pid"
    wait "$server_pid"
    server_pid=""
    grep '^stopped' "$work/server.log"
}

read -r -a grafts <<< "${GRAFTS:-$GRAFT}"
serve_32s=()
for graft in "${grafts[@]}"; do
    serve_with "$graft"
    serve_32s+=("$serve_32")
done

forward="$("$GRAFT" --threads "$THREADS" bench forward -b "$BACKBONE" --batch-size 32 --iters 20 --json)"
forward_ips="$(python3 -c 'import json, sys; print(round(json.loads(sys.argv[1])["images_per_sec"], 2))' "$forward")"
echo "graft --threads $THREADS bench forward -b $BACKBONE --batch-size 32 --iters 20: $forward_ips img/s"
for i in "${!grafts[@]}"; do
    python3 -c 'import sys; print(f"{sys.argv[3]}: serve at 32 clients / bench forward: {float(sys.argv[1]) / float(sys.argv[2]):.2f}")' \
        "${serve_32s[$i]}" "$forward_ips" "${grafts[$i]}"
done
