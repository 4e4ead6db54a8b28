#!/usr/bin/env bash
# Scale of `graft doctor`'s neighbour checks (exact cosine kNN, outlier fence, near-duplicate
# sets by feature cosine and perceptual hash): examples/neighbours_scale.rs on synthetic rows of
# width 1280 (clustered, with 10 planted far points and planted copies), one JSON line per size
# with the wall time, the time per 10k rows and the peak RSS (getrusage's maxrss). The first line compares the
# blocked search with the row-by-row dot products it replaced, on NAIVE rows.
#
# Environment:
#   SIZES="10000 100000"   rows per run
#   NAIVE=3000             rows of the naive-vs-blocked comparison (0: skip it)
#   BLOCK=512              rows per block of the search
#   NO_BUILD=1             do not run cargo build
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
SIZES="${SIZES:-10000 100000}"
NAIVE="${NAIVE:-3000}"
BLOCK="${BLOCK:-512}"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && CARGO_PROFILE_RELEASE_INCREMENTAL=true cargo build --release --example neighbours_scale)
fi
BIN="$REPO_DIR/target/release/examples/neighbours_scale"
echo "doctor_scale.sh: $(lscpu | grep 'Model name' | sed 's/ \+/ /g'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
first=1
for n in $SIZES; do
    naive=0
    [ "$first" = 1 ] && naive="$NAIVE"
    first=0
    "$BIN" --rows "$n" --block "$BLOCK" --naive "$naive"
done
