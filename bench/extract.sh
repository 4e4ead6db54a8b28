#!/usr/bin/env bash
# End-to-end extraction benchmark: a folder of JPEGs -> pooled EfficientNet-Lite0 features,
# graft vs PyTorch (torchvision ImageFolder + DataLoader with PIL), same machine, same run,
# 2 threads each, batch 32. graft starts from an empty feature cache, so it hashes, decodes,
# resizes, runs the network and writes the cache; PyTorch decodes, resizes, runs the network
# and saves a .npy. PyTorch runs with each DataLoader worker count in WORKERS and the best is
# compared. Also measures graft's peak RSS on 300 vs all images (memory must not grow).
# Prints a markdown table and writes it to bench/out/extract.md.
#
# Environment:
#   DATA=../shared/data/flowers   an ImageFolder tree (one sub-folder per class)
#   WORKERS="0 1 2"               DataLoader num_workers values to try
#   NO_BUILD=1                    do not run `cargo build --release`
#   GRAFT_HOME                    graft's weight store (default bench/out/graft-home)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
DATA="$(cd "${DATA:-$REPO_DIR/../shared/data/flowers}" && pwd)"
WORKERS="${WORKERS:-0 1 2}"
THREADS=2
GRAFT="$REPO_DIR/target/release/graft"
PYTHON="$BENCH_DIR/.venv/bin/python"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

log() { echo "extract.sh: $*" >&2; }

mkdir -p "$OUT_DIR"
bash "$BENCH_DIR/setup.sh"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release)
fi
if ! "$GRAFT" weights list | grep -Eq "^[[:space:]]*efficientnet-lite0[[:space:]]+installed"; then
    "$GRAFT" weights fetch efficientnet-lite0 >&2
fi

# First 60 images of each class, for the memory comparison.
SUBSET="$OUT_DIR/extract-subset.csv"
echo "path,label" > "$SUBSET"
for class_dir in "$DATA"/*/; do
    class="$(basename "$class_dir")"
    find "$class_dir" -maxdepth 1 -type f | sort | head -n 60 | sed "s|\$|,$class|" >> "$SUBSET"
done

RESULTS="$OUT_DIR/extract.jsonl"
: > "$RESULTS"

# graft: /usr/bin/time gives wall seconds, peak RSS (KiB), user and system CPU seconds.
graft_extract() { # name data
    local cache="$OUT_DIR/extract-cache-$1"
    rm -rf "$cache"
    log "graft extract ($1)"
    /usr/bin/time -f "%e %M %U %S" -o "$OUT_DIR/time-$1.txt" \
        "$GRAFT" --threads "$THREADS" extract --batch-size 32 --cache-dir "$cache" "$2" > "$OUT_DIR/graft-$1.txt"
    rm -rf "$cache"
    local images
    images="$(grep -oE '^[0-9]+ images' "$OUT_DIR/graft-$1.txt" | cut -d' ' -f1)"
    read -r wall rss user sys < "$OUT_DIR/time-$1.txt"
    "$PYTHON" - "$1" "$images" "$wall" "$rss" "$user" "$sys" "$("$GRAFT" --version)" >> "$RESULTS" <<'PY'
import json, sys
name, images, wall, rss, user, sys_s, version = sys.argv[1:]
images, wall = int(images), float(wall)
print(json.dumps({"tool": "graft", "version": version, "what": "extract", "run": name,
                  "images": images, "wall_s": wall, "images_per_sec": images / wall,
                  "cpu_over_wall": (float(user) + float(sys_s)) / wall,
                  "peak_rss_mb": int(rss) * 1024 / 1e6}))
PY
}

graft_extract subset "$SUBSET"
graft_extract all "$DATA"
for workers in $WORKERS; do
    log "PyTorch DataLoader, num_workers=$workers"
    (cd "$BENCH_DIR" && "$PYTHON" extract_torch.py "$DATA" --out "$OUT_DIR/torch-features.npy" \
        --workers "$workers" --threads "$THREADS") >> "$RESULTS"
done

"$PYTHON" - "$RESULTS" > "$OUT_DIR/extract.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
graft = {r["run"]: r for r in rows if r["tool"] == "graft"}
torch = [r for r in rows if r["tool"] == "pytorch"]
best = max(torch, key=lambda r: r["images_per_sec"])
print("| tool | images | img/s | CPU/wall | peak RSS MB |")
print("|---|---:|---:|---:|---:|")
for r in [graft["all"]] + torch:
    name = "graft extract" if r["tool"] == "graft" else f"PyTorch DataLoader, num_workers={r['workers']}"
    print(f"| {name} | {r['images']} | {r['images_per_sec']:.1f} | {r['cpu_over_wall']:.2f} | {r['peak_rss_mb']:.0f} |")
print()
print(f"graft / best PyTorch (num_workers={best['workers']}): "
      f"{graft['all']['images_per_sec'] / best['images_per_sec']:.2f}x images/s")
print(f"graft peak RSS: {graft['subset']['images']} images {graft['subset']['peak_rss_mb']:.0f} MB, "
      f"{graft['all']['images']} images {graft['all']['peak_rss_mb']:.0f} MB "
      f"(ratio {graft['all']['peak_rss_mb'] / graft['subset']['peak_rss_mb']:.2f})")
PY
cat "$OUT_DIR/extract.md"
log "table written to $OUT_DIR/extract.md (raw results: $RESULTS)"
