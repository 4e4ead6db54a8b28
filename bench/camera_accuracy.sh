#!/usr/bin/env bash
# Accuracy on camera-sized photos: the head recipe (`graft train --recipe head`, EfficientNet-Lite0,
# default decoding, i.e. JPEGs at least twice the size the resize needs are decoded DCT-scaled)
# on the shared flowers at their original size and on a camera-sized copy of the same photos
# (each upscaled bicubic to 4032x3024 or 3024x4032 and saved as JPEG quality 92 by
# make_camera_set.py, in 2 processes; made once into bench/out/camera-flowers, existing files
# kept), same photos, same split, same seed, same settings, 2 threads. Checks that validation
# accuracy on the camera-sized copy is within 1 point of the original's: prints a markdown table,
# writes it to bench/out/camera_accuracy.md (camera_accuracy-per-class-N.md when PER_CLASS limits
# the photos) and exits 1 when the two differ by more than 1.0 point (2 when a step fails or the
# two runs' validation sets differ).
#
# The same split: graft's split (no train/ + val/ folders) is by name, not content: each class's
# image paths are sorted, shuffled with a ChaCha8 generator seeded by --seed and the first
# round(n * 0.2) go to validation (src/data/dataset.rs, `list_class_folders` and `stratified`).
# Both runs train on a folder of symlinks made here, bench/out/camera-accuracy-<tag>/data/
# {original,camera}/<class>/<name>, with the same names (every flowers photo is <stem>.jpg, and the
# camera copy of it is <stem>.jpg), the same classes and the same counts, so the two splits hold the
# same photos. The script checks it afterwards: the validation paths in the two runs'
# predictions.json, relative to their data folder, must be the same set (exit 2 otherwise).
# Each run extracts into a fresh feature cache of its own (--cache-dir under the work folder,
# removed first), so no row is shared or reused.
#
# Environment:
#   PER_CLASS=all                 the first N photos of each class (sorted by name), or all;
#                                 a limited run works in bench/out/camera-accuracy-per-class-N
#                                 (the full one in bench/out/camera-accuracy-all)
#   DATA=../shared/data/flowers   an ImageFolder tree (one sub-folder per class) of .jpg photos
#   CAMERA=bench/out/camera-flowers  where the camera-sized copy is made (shared by every
#                                 PER_CLASS: a photo is converted once)
#   SEED=0                        graft train --seed (split and training)
#   TRAIN_ARGS                    more `graft train` options for both runs (e.g. --exact-decode)
#   PROCESSES=2                   make_camera_set.py --processes
#   PYTHON                        a Python with Pillow (default bench/.venv/bin/python)
#   NO_BUILD=1                    do not run `cargo build --release`
#   GRAFT_HOME                    graft's weight store (default bench/out/graft-home)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
DATA="$(cd "${DATA:-$REPO_DIR/../shared/data/flowers}" && pwd)"
CAMERA="${CAMERA:-$OUT_DIR/camera-flowers}"
PER_CLASS="${PER_CLASS:-all}"
SEED="${SEED:-0}"
PROCESSES="${PROCESSES:-2}"
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
THREADS=2
GRAFT="$REPO_DIR/target/release/graft"
PYTHON="${PYTHON:-$BENCH_DIR/.venv/bin/python}"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

log() { echo "camera_accuracy.sh: $*" >&2; }

if [ "$PER_CLASS" = all ]; then
    TAG=all
    PER_CLASS_N=1000000000
    TABLE="$OUT_DIR/camera_accuracy.md"
else
    [[ "$PER_CLASS" =~ ^[1-9][0-9]*$ ]] || { log "PER_CLASS must be a positive number or all, got '$PER_CLASS'"; exit 2; }
    TAG="per-class-$PER_CLASS"
    PER_CLASS_N="$PER_CLASS"
    TABLE="$OUT_DIR/camera_accuracy-$TAG.md"
fi
WORK="$OUT_DIR/camera-accuracy-$TAG"
STARTED=$SECONDS

mkdir -p "$OUT_DIR"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release)
fi
if ! "$GRAFT" weights list | grep -E "[ (]efficientnet-lite0[,)]" | grep -qv "not installed"; then
    "$GRAFT" weights fetch efficientnet-lite0 >&2
fi

log "camera-sized copy of $DATA (PER_CLASS=$PER_CLASS) in $CAMERA, $PROCESSES processes"
t0=$SECONDS
"$PYTHON" "$BENCH_DIR/make_camera_set.py" "$DATA" "$CAMERA" --per-class "$PER_CLASS_N" --processes "$PROCESSES" || exit 2
log "camera-sized copy ready in $((SECONDS - t0)) s"

# The two training folders: symlinks with the same names to the same photos, original and
# camera-sized.
rm -rf "$WORK"
mkdir -p "$WORK"
"$PYTHON" - "$DATA" "$CAMERA" "$WORK/data" "$PER_CLASS_N" <<'PY' || exit 2
import sys
from pathlib import Path

src, camera, data, per_class = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
for class_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
    # the same photos make_camera_set.py converts
    for photo in sorted(class_dir.iterdir())[:per_class]:
        if photo.name != photo.stem + ".jpg":
            sys.exit(f"{photo}: not named <stem>.jpg; its camera copy would sort differently")
        copy = camera / class_dir.name / photo.name
        if not copy.is_file():
            sys.exit(f"{copy}: missing")
        for kind, target in [("original", photo), ("camera", copy)]:
            link = data / kind / class_dir.name / photo.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve())
PY

train() { # kind
    local cache="$WORK/cache-$1"
    rm -rf "$cache" "$WORK/run-$1"
    log "graft train $WORK/data/$1 --recipe head --seed $SEED ${TRAIN_ARGS[*]}"
    local t0
    t0=$(date +%s.%N)
    if ! "$GRAFT" --threads "$THREADS" train "$WORK/data/$1" --recipe head --seed "$SEED" \
        --cache-dir "$cache" --out "$WORK/run-$1" "${TRAIN_ARGS[@]}" > "$WORK/train-$1.log" 2>&1; then
        cat "$WORK/train-$1.log" >&2
        exit 2
    fi
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' > "$WORK/seconds-$1"
    log "  $(grep -E '^features:' "$WORK/train-$1.log" || true); $(cat "$WORK/seconds-$1") s"
}
train original
train camera

status=0
"$PYTHON" - "$WORK" "$TABLE" "$SEED" "${TRAIN_ARGS[*]}" <<'PY' || status=$?
import json, sys
from pathlib import Path

work, table, seed, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {}
for kind in ("original", "camera"):
    run = work / f"run-{kind}"
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = json.loads((run / "predictions.json").read_text())
    root = work / "data" / kind
    val = {str(Path(p["path"]).relative_to(root)) for p in predictions}
    photos = sum(1 for p in root.rglob("*.jpg"))
    runs[kind] = dict(metrics=metrics, val=val, photos=photos,
                      card=json.loads((run / "model.json").read_text()),
                      seconds=float((work / f"seconds-{kind}").read_text()))
o, c = runs["original"], runs["camera"]
if o["val"] != c["val"] or o["photos"] != c["photos"]:
    only_o, only_c = sorted(o["val"] - c["val"]), sorted(c["val"] - o["val"])
    print(f"the runs' validation sets differ: only original {only_o[:5]}, only camera {only_c[:5]}", file=sys.stderr)
    sys.exit(2)
for key in ("train_size", "val_size"):
    if o["metrics"][key] != c["metrics"][key]:
        print(f"{key} differs: original {o['metrics'][key]}, camera {c['metrics'][key]}", file=sys.stderr)
        sys.exit(2)
for key in ("recipe", "backbone", "weights_id", "source", "preprocessing", "hyperparameters"):
    if o["card"][key] != c["card"][key]:
        print(f"model.json {key} differs: original {o['card'][key]}, camera {c['card'][key]}", file=sys.stderr)
        sys.exit(2)
m_o, m_c = o["metrics"], c["metrics"]
acc_o, acc_c = 100 * m_o["val"]["accuracy"], 100 * m_c["val"]["accuracy"]
n_val = m_o["val_size"]
diff = acc_c - acc_o
def acc(m):
    correct = sum(m["val"]["confusion"][i][i] for i in range(len(m["val"]["confusion"])))
    return f"{100 * m['val']['accuracy']:.2f} ({correct}/{m['val']['count']})"
lines = [
    "| photos | validation images | accuracy original | accuracy camera-sized | difference (points) |",
    "|---:|---:|---:|---:|---:|",
    f"| {o['photos']} | {n_val} | {acc(m_o)} | {acc(m_c)} | {diff:+.2f} |",
    "",
    f"`graft --threads 2 train DATA --recipe head --seed {seed}{' ' + extra if extra else ''}`, "
    f"EfficientNet-Lite0, same {n_val} validation photos in both runs (checked), "
    f"{m_o['train_size']} training; camera-sized: 4032x3024 JPEG q92 (make_camera_set.py). "
    f"Decoding {o['card']['source']['decode']}; best epoch {m_o['best_epoch']} (original) / "
    f"{m_c['best_epoch']} (camera-sized); graft train (extraction into a fresh cache + fit) "
    f"{o['seconds']:.1f} s / {c['seconds']:.1f} s.",
    "",
    f"Within 1 point: {'yes' if abs(diff) <= 1.0 else 'NO'} ({abs(diff):.2f} points apart).",
]
text = "\n".join(lines) + "\n"
table.write_text(text)
print(text, end="")
sys.exit(0 if abs(diff) <= 1.0 else 1)
PY
log "table written to $TABLE (runs in $WORK); $((SECONDS - STARTED)) s in all"
exit "$status"
