#!/usr/bin/env bash
# Fine-tuning train-step benchmark: forward + backward + AdamW update of every layer, batch 16,
# each model at its resolution (224), BatchNorm frozen, 2 threads, graft vs PyTorch on this
# machine in one run. Prints a markdown table with the ratio and writes bench/out/train_step.md.
#
# Environment: ITERS=3 (timed steps after one warm-up), NO_BUILD=1, GRAFT_HOME, MNV2_WEIGHTS
# as in run.sh; MODELS (default "efficientnet-lite0 mobilenet-v2-tf resnet50"; ResNet-50 with
# the random weights bench/run.sh's PyTorch peer writes, made here when missing). RECORD=0: do not
# append the run to bench/results/ (by default it is, and docs/benchmarks.md is rendered again).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
ITERS="${ITERS:-3}"
BATCH=16
THREADS=2
GRAFT="$REPO_DIR/target/release/graft"
PYTHON="$BENCH_DIR/.venv/bin/python"
MNV2_WEIGHTS="${MNV2_WEIGHTS:-$REPO_DIR/../shared/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors}"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

mkdir -p "$OUT_DIR"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"
bash "$BENCH_DIR/setup.sh"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release)
fi
installed() { "$GRAFT" weights list | grep -E "[ (]$1[,)]" | grep -qv "not installed"; }
installed efficientnet-lite0 || "$GRAFT" weights fetch efficientnet-lite0 >&2
installed mobilenet-v2-tf || "$GRAFT" weights import mobilenet-v2-tf "$MNV2_WEIGHTS" >&2

RESULTS="$OUT_DIR/train_step.jsonl"
: > "$RESULTS"
read -r -a MODELS <<< "${MODELS:-efficientnet-lite0 mobilenet-v2-tf resnet50}"
for model in "${MODELS[@]}"; do
    weights=()
    case "$model" in
        efficientnet-lite0|mobilenet-v2-tf) ;;
        *)
            if [ ! -f "$OUT_DIR/$model.safetensors" ]; then
                echo "train_step.sh: $model: writing random weights" >&2
                "$PYTHON" "$BENCH_DIR/peers.py" pytorch --model "$model" --batch-size 1 --iters 1 \
                    --threads "$THREADS" --out-dir "$OUT_DIR" --mnv2-weights "$MNV2_WEIGHTS" > /dev/null
            fi
            weights=(--weights "$OUT_DIR/$model.safetensors") ;;
    esac
    echo "train_step.sh: $model: graft" >&2
    "$GRAFT" --threads "$THREADS" bench train-step -b "$model" "${weights[@]}" --batch-size "$BATCH" \
        --iters "$ITERS" --json | grep '^{' >> "$RESULTS"
    echo "train_step.sh: $model: PyTorch" >&2
    (cd "$BENCH_DIR" && "$PYTHON" train_step_torch.py --model "$model" --batch-size "$BATCH" \
        --iters "$ITERS" --threads "$THREADS" --mnv2-weights "$MNV2_WEIGHTS") >> "$RESULTS"
done

"$PYTHON" - "$RESULTS" > "$OUT_DIR/train_step.md" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| model | graft img/s | PyTorch img/s | graft/PyTorch | graft CPU/wall | PyTorch CPU/wall "
      "| graft peak RSS MB | PyTorch peak RSS MB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for model in dict.fromkeys(r["backbone"] for r in rows):
    g = next(r for r in rows if r["backbone"] == model and r["tool"] == "graft")
    t = next(r for r in rows if r["backbone"] == model and r["tool"] == "pytorch")
    print(f"| {model} | {g['images_per_sec']:.2f} | {t['images_per_sec']:.2f} | "
          f"{g['images_per_sec'] / t['images_per_sec']:.2f} | {g['cpu_over_wall']:.2f} | {t['cpu_over_wall']:.2f} | "
          f"{g['peak_rss_mb']:.0f} | {t['peak_rss_mb']:.0f} |")
PY
cat "$OUT_DIR/train_step.md"

if [ "${RECORD:-1}" = 1 ]; then
    "$PYTHON" "$BENCH_DIR/report.py" --record train_step "$RESULTS" \
        --command "ITERS=$ITERS MODELS=\"${MODELS[*]}\" bash bench/train_step.sh" \
        --load-before "$LOAD_BEFORE" --graft-version "$("$GRAFT" --version)"
    "$PYTHON" "$BENCH_DIR/report.py" --all "$BENCH_DIR/results" --write
fi
