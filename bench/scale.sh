#!/usr/bin/env bash
# Scaling of the two steps that grow with the data: `graft extract` on 1k, 10k and 50k images
# (distinct images made by augment_copies.py from the shared flowers, in a temporary folder:
# wall time per image should stay flat and peak RSS should not grow), and the dense head
# trained from a disk-backed source on 1M synthetic cached rows of 1280 floats (examples/
# scale_head.rs: peak RSS must stay far below the 5.1 GB the rows take). Prints a markdown
# table and writes it to bench/out/scale.md.
#
# Environment:
#   SIZES="1000 10000 50000"   image counts for extraction
#   HEAD_ROWS=1000000          synthetic rows for the head
#   PYTHON=python3             a Python with Pillow (for augment_copies.py)
#   WORK=bench/out/scale       where the images and caches go (several GB for 50k)
#   REPEAT=3                   runs of each size up to 10k (the table keeps the fastest)
#   NO_BUILD=1                 do not run cargo build
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
SIZES="${SIZES:-1000 10000 50000}"
HEAD_ROWS="${HEAD_ROWS:-1000000}"
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-$BENCH_DIR/out/scale}"
DATA="$REPO_DIR/../shared/data/flowers"
GRAFT="$REPO_DIR/target/release/graft"
mkdir -p "$WORK"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release && cargo build --release --example scale_head)
fi
RESULTS="$WORK/scale.jsonl"
: > "$RESULTS"
for n in $SIZES; do
    echo "scale.sh: making $n images" >&2
    "$PYTHON" "$BENCH_DIR/augment_copies.py" "$DATA" "$WORK/images-$n" "$n"
    # Small runs are repeated (a fresh cache each time): the machine's noise is larger than
    # their length. The table takes the fastest wall time and the largest peak RSS.
    runs=1
    [ "$n" -le 10000 ] && runs="${REPEAT:-3}"
    for run in $(seq "$runs"); do
        rm -rf "$WORK/cache-$n"
        echo "scale.sh: graft extract, $n images (run $run of $runs)" >&2
        /usr/bin/time -f "%e %M" -o "$WORK/time-$n.txt" \
            "$GRAFT" --threads 2 extract --cache-dir "$WORK/cache-$n" "$WORK/images-$n" >&2
        read -r wall rss < "$WORK/time-$n.txt"
        echo "{\"what\": \"extract\", \"images\": $n, \"wall_s\": $wall, \"peak_rss_mb\": $((rss * 1024 / 1000000))}" >> "$RESULTS"
    done
    rm -rf "$WORK/cache-$n"
done
echo "scale.sh: head on $HEAD_ROWS synthetic cached rows" >&2
"$REPO_DIR/target/release/examples/scale_head" --rows "$HEAD_ROWS" --dir "$WORK/head-cache" >> "$RESULTS"
rm -rf "$WORK/head-cache"
"$PYTHON" - "$RESULTS" > "$BENCH_DIR/out/scale.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = {}
for r in rows:
    if r["what"] == "extract":
        runs.setdefault(r["images"], []).append(r)
extract = [
    {"images": n, "runs": len(rs), "wall_s": min(r["wall_s"] for r in rs),
     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
     "all_rss": ", ".join(str(r["peak_rss_mb"]) for r in rs)}
    for n, rs in runs.items()
]
print("| graft extract | runs | wall s (fastest) | ms / image | peak RSS MB (largest) | peak RSS MB, each run |")
print("|---:|---:|---:|---:|---:|---:|")
for r in extract:
    print(f"| {r['images']} images | {r['runs']} | {r['wall_s']:.1f} | {1000 * r['wall_s'] / r['images']:.1f} | {r['peak_rss_mb']} | {r['all_rss']} |")
per = [r["wall_s"] / r["images"] for r in extract]
print()
print(f"time per image, largest / smallest run: {per[-1] / per[0]:.2f}; "
      f"peak RSS largest / smallest: {extract[-1]['peak_rss_mb'] / extract[0]['peak_rss_mb']:.2f}")
for r in rows:
    if r["what"].startswith("head"):
        print(f"head on {r['rows']:,} cached rows of {r['dim']} floats ({r['shard_bytes'] / 1e9:.1f} GB): "
              f"{r['epochs']} epoch in {r['train_s']:.0f} s, val accuracy {r['val_accuracy']:.3f}, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
PY
cat "$BENCH_DIR/out/scale.md"
