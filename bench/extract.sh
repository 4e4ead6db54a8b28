#!/usr/bin/env bash
# End-to-end extraction benchmark: a folder of JPEGs -> pooled EfficientNet-Lite0 features,
# graft vs PyTorch (torchvision ImageFolder + DataLoader with PIL) and vs the careful CPU
# pipeline (PIL with Image.draft in a 2-process pool feeding ONNX Runtime on the Lite0 feature
# model that `graft export` writes, extract_ort.py), same machine, same run, 2 threads each,
# batch 32; on the shared flowers and on a camera-sized copy of 100 of them (4032x3024, JPEG
# quality 92, made by make_camera_set.py). graft starts from an empty feature cache, so it hashes, decodes,
# resizes, runs the network and writes the cache; PyTorch decodes, resizes, runs the network
# and saves a .npy. PyTorch runs with each DataLoader worker count in WORKERS and the best is
# compared. Also measures graft's peak RSS on 300 vs all images (memory must not grow).
# Prints a markdown table and writes it to bench/out/extract.md.
#
# Environment:
#   DATA=../shared/data/flowers   an ImageFolder tree (one sub-folder per class)
#   WORKERS="0 1 2"               DataLoader num_workers values to try
#   PEERS="torch ort"             which peers to run (torch needs bench/setup.sh's PyTorch)
#   PYTHON                        the peers' Python (default bench/.venv/bin/python)
#   NO_BUILD=1                    do not run `cargo build --release`
#   GRAFT_HOME                    graft's weight store (default bench/out/graft-home)
#   MODEL=efficientnet-lite0      or vit_small_patch14_dinov2: DINOv2 ViT-S/14 at 224 px with
#                                 random weights (made here, as peers.py does), graft against the
#                                 PyTorch DataLoader only (no ONNX Runtime peer, no camera set)
#   PRECISION=f32                 graft's --precision; with bf16 the PyTorch DataLoader script
#                                 also runs under bfloat16 autocast (same WORKERS), next to its
#                                 float32 runs, and the table compares graft with both
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
DATA="$(cd "${DATA:-$REPO_DIR/../shared/data/flowers}" && pwd)"
WORKERS="${WORKERS:-0 1 2}"
PEERS="${PEERS:-torch ort}"
THREADS=2
GRAFT="$REPO_DIR/target/release/graft"
PYTHON="${PYTHON:-$BENCH_DIR/.venv/bin/python}"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

log() { echo "extract.sh: $*" >&2; }

mkdir -p "$OUT_DIR"
# bench/setup.sh's venv has every peer; PEERS=ort runs with any PYTHON that has onnxruntime,
# Pillow and numpy.
if [[ " $PEERS " == *" torch "* ]]; then
    bash "$BENCH_DIR/setup.sh"
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release)
fi
MODEL="${MODEL:-efficientnet-lite0}"
export PRECISION="${PRECISION:-f32}"
GRAFT_MODEL=(-b "$MODEL")
if [ "$MODEL" = efficientnet-lite0 ]; then
    if ! "$GRAFT" weights list | grep -E "[ (]efficientnet-lite0[,)]" | grep -qv "not installed"; then
        "$GRAFT" weights fetch efficientnet-lite0 >&2
    fi
else
    WEIGHTS="$OUT_DIR/$MODEL.safetensors"
    [ -f "$WEIGHTS" ] || "$PYTHON" -c "import sys, torch; sys.path.insert(0, '$BENCH_DIR'); import peers; peers.save_graft_weights('$MODEL', None, peers.Path('$OUT_DIR'))"
    GRAFT_MODEL+=(--weights "$WEIGHTS" --input-size 224)
    PEERS="${PEERS/ort/}"
fi

# First 60 images of each class, for the memory comparison (sed, not head: head exiting early
# would kill sort with SIGPIPE, which pipefail turns into a silent exit).
SUBSET="$OUT_DIR/extract-subset.csv"
echo "path,label" > "$SUBSET"
for class_dir in "$DATA"/*/; do
    class="$(basename "$class_dir")"
    find "$class_dir" -maxdepth 1 -type f | sort | sed -n 1,60p | sed "s|\$|,$class|" >> "$SUBSET"
done

RESULTS="$OUT_DIR/extract.jsonl"
: > "$RESULTS"

# graft: /usr/bin/time gives wall seconds, peak RSS (KiB), user and system CPU seconds.
graft_extract() { # name data
    local cache="$OUT_DIR/extract-cache-$1"
    rm -rf "$cache"
    log "graft extract ($1)"
    /usr/bin/time -f "%e %M %U %S" -o "$OUT_DIR/time-$1.txt" \
        "$GRAFT" --threads "$THREADS" --precision "$PRECISION" extract "${GRAFT_MODEL[@]}" --batch-size 32 --cache-dir "$cache" "$2" > "$OUT_DIR/graft-$1.txt"
    rm -rf "$cache"
    local images
    images="$(grep -oE '^[0-9]+ images' "$OUT_DIR/graft-$1.txt" | cut -d' ' -f1)"
    read -r wall rss user sys < "$OUT_DIR/time-$1.txt"
    "$PYTHON" - "$1" "$images" "$wall" "$rss" "$user" "$sys" "$("$GRAFT" --version)" >> "$RESULTS" <<'PY'
import json, os, sys
name, images, wall, rss, user, sys_s, version = sys.argv[1:]
images, wall = int(images), float(wall)
print(json.dumps({"tool": "graft", "version": version, "what": "extract", "run": name,
                  "precision": os.environ["PRECISION"],
                  "images": images, "wall_s": wall, "images_per_sec": images / wall,
                  "cpu_over_wall": (float(user) + float(sys_s)) / wall,
                  "peak_rss_mb": int(rss) * 1024 / 1e6}))
PY
}

graft_extract subset "$SUBSET"
graft_extract all "$DATA"
if [ "$MODEL" = efficientnet-lite0 ]; then
    CAMERA="$OUT_DIR/camera"
    "$PYTHON" "$BENCH_DIR/make_camera_set.py" "$DATA" "$CAMERA" --per-class 20
    ONNX="$OUT_DIR/onnx/lite0-features.onnx"
    "$GRAFT" export --backbone efficientnet-lite0 --no-top --out "$ONNX" >&2
    graft_extract camera "$CAMERA"
fi
if [[ " $PEERS " == *" torch "* ]]; then
    torch_precisions=(f32)
    [ "$PRECISION" = bf16 ] && torch_precisions+=(bf16)
    for precision in "${torch_precisions[@]}"; do
        flag=(); [ "$precision" = bf16 ] && flag=(--bf16)
        for workers in $WORKERS; do
            log "PyTorch DataLoader, num_workers=$workers, $precision"
            (cd "$BENCH_DIR" && "$PYTHON" extract_torch.py "$DATA" --out "$OUT_DIR/torch-features.npy" \
                --model "$MODEL" --workers "$workers" --threads "$THREADS" "${flag[@]}") >> "$RESULTS"
        done
    done
fi
if [[ " $PEERS " == *" ort "* ]]; then
    for set in all camera; do
        data="$DATA"; [ "$set" = camera ] && data="$CAMERA"
        log "ONNX Runtime + PIL draft, 2 processes ($set)"
        "$PYTHON" "$BENCH_DIR/extract_ort.py" "$data" --model "$ONNX" --out "$OUT_DIR/ort-features.npy" \
            --processes 2 --threads "$THREADS" | "$PYTHON" -c "import json,sys; r=json.loads(sys.stdin.read()); r['run']='$set'; print(json.dumps(r))" >> "$RESULTS"
    done
fi

"$PYTHON" - "$RESULTS" > "$OUT_DIR/extract.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
graft = {r["run"]: r for r in rows if r["tool"] == "graft"}
torch = [r for r in rows if r["tool"] == "pytorch"]
ort = {r["run"]: r for r in rows if r["tool"] == "onnxruntime+pil"}
print("| tool | data | images | img/s | CPU/wall | peak RSS MB |")
print("|---|---|---:|---:|---:|---:|")
def line(name, data, r):
    print(f"| {name} | {data} | {r['images']} | {r['images_per_sec']:.1f} | {r['cpu_over_wall']:.2f} | {r['peak_rss_mb']:.0f} |")
for run, data in [("all", "flowers"), ("camera", "camera-sized (12 MP)")]:
    if run not in graft:
        continue
    line("graft extract", data, graft[run])
    if run in ort:
        line("ONNX Runtime + PIL draft, 2 processes", data, ort[run])
for r in torch:
    autocast = ", bfloat16 autocast" if r.get("precision") == "bf16" else ""
    line(f"PyTorch DataLoader, num_workers={r['workers']}{autocast}", "flowers", r)
print()
precision = graft["all"].get("precision", "f32")
for p in ["f32", "bf16"]:
    runs = [r for r in torch if r.get("precision", "f32") == p]
    if runs:
        best = max(runs, key=lambda r: r["images_per_sec"])
        print(f"graft ({precision}) / best PyTorch {p} (num_workers={best['workers']}): "
              f"{graft['all']['images_per_sec'] / best['images_per_sec']:.2f}x images/s")
for run, data in [("all", "flowers"), ("camera", "camera-sized set")]:
    if run in ort:
        print(f"graft / ONNX Runtime + PIL on the {data}: "
              f"{graft[run]['images_per_sec'] / ort[run]['images_per_sec']:.2f}x images/s")
camera = f"; camera-sized set {graft['camera']['peak_rss_mb']:.0f} MB" if "camera" in graft else ""
print(f"graft peak RSS: {graft['subset']['images']} images {graft['subset']['peak_rss_mb']:.0f} MB, "
      f"{graft['all']['images']} images {graft['all']['peak_rss_mb']:.0f} MB "
      f"(ratio {graft['all']['peak_rss_mb'] / graft['subset']['peak_rss_mb']:.2f}){camera}")
PY
cat "$OUT_DIR/extract.md"
log "table written to $OUT_DIR/extract.md (raw results: $RESULTS)"
