#!/usr/bin/env bash
# Peer benchmark of the forward pass (inference): graft vs PyTorch vs ONNX Runtime, on this
# machine, in one run, batch 32, each model at its own resolution, 2 threads for every tool.
# Prints a markdown table and writes it to bench/out/forward.md (raw JSON lines:
# bench/out/forward.jsonl).
#
# Environment:
#   ITERS=5          timed iterations per measurement (after one untimed warm-up)
#   ROUNDS=1         repeat graft / PyTorch / ONNX Runtime this many times (table: median)
#   NO_BUILD=1       do not run `cargo build --release` (use target/release/graft as it is)
#   GRAFT_HOME       graft's weight store (default bench/out/graft-home)
#   MNV2_WEIGHTS     MobileNetV2 safetensors (default ../shared/weights/mobilenet_v2/...)
#   MODELS           the models to run (default: all seven, see below)
#   TEXT=0|1         also time CLIP's text tower, `graft bench text` vs Hugging Face transformers,
#                    1,000 prompts per iteration, tokenizing included (default: 1 when MODELS
#                    has clip_vit_b32, whose repository folder it uses)
#   TEXT_BATCH=1000  prompts per iteration of the text comparison
#   BASELINE=PATH    also time this other graft binary right after graft, model by model (an
#                    A/B of two builds in one run: the table gains a graft/baseline column)
#   RECORD=0         do not append the run to bench/results/ (default: append it, then render
#                    docs/benchmarks.md and the README's headline table from bench/results/)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
ITERS="${ITERS:-5}"
ROUNDS="${ROUNDS:-1}"
BATCH=32
THREADS=2
# The pretrained MBConv models, then the other families with random weights (made by peers.py;
# speed does not depend on the values). MODELS="resnet50 ..." runs a subset. clip_vit_b32 is
# CLIP ViT-B/32's image tower (vision transformer + projection), from the transformers
# repository folder peers.py writes to bench/out/clip_vit_b32/.
read -r -a MODELS <<< "${MODELS:-efficientnet-lite0 mobilenet-v2-tf resnet50 convnext_tiny vit_small_patch16_224 vit_small_patch14_dinov2 clip_vit_b32}"
TEXT_BATCH="${TEXT_BATCH:-1000}"
if [ -z "${TEXT:-}" ]; then
    TEXT=0
    for model in "${MODELS[@]}"; do
        if [ "$model" = clip_vit_b32 ]; then TEXT=1; fi
    done
fi
GRAFT="$REPO_DIR/target/release/graft"
PYTHON="$BENCH_DIR/.venv/bin/python"
MNV2_WEIGHTS="${MNV2_WEIGHTS:-$REPO_DIR/../shared/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors}"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

log() { echo "run.sh: $*" >&2; }

mkdir -p "$OUT_DIR"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

# 1. Python peers.
bash "$BENCH_DIR/setup.sh"

# 2. graft itself (cargo does nothing when the binary is up to date).
if [ "${NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$REPO_DIR" && cargo build --release)
fi
if [ ! -x "$GRAFT" ]; then
    log "$GRAFT not found; build it with 'cargo build --release' (or unset NO_BUILD)"
    exit 1
fi

# 3. graft's weights.
weights_installed() {
    "$GRAFT" weights list | grep -E "[ (]$1[,)]" | grep -qv "not installed"
}
if ! weights_installed efficientnet-lite0; then
    log "fetching efficientnet-lite0 weights into $GRAFT_HOME"
    "$GRAFT" weights fetch efficientnet-lite0 >&2
fi
if ! weights_installed mobilenet-v2-tf; then
    log "importing mobilenet-v2-tf weights from $MNV2_WEIGHTS into $GRAFT_HOME"
    "$GRAFT" weights import mobilenet-v2-tf "$MNV2_WEIGHTS" >&2
fi

# 4. Measure, alternating the tools model by model.
RESULTS="$OUT_DIR/forward.jsonl"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for model in "${MODELS[@]}"; do
        peer() {
            log "round $round/$ROUNDS, $model: $1"
            "$PYTHON" "$BENCH_DIR/peers.py" "$1" --model "$model" \
                --batch-size "$BATCH" --iters "$ITERS" --threads "$THREADS" \
                --out-dir "$OUT_DIR" --mnv2-weights "$MNV2_WEIGHTS" >> "$RESULTS"
        }
        # The random-weight models: PyTorch first, it writes the weights graft loads.
        backbone="$model"
        extra=()
        case "$model" in
            efficientnet-lite0|mobilenet-v2-tf) ;;
            vit_small_patch14_dinov2) peer pytorch; extra=(--weights "$OUT_DIR/$model.safetensors" --input-size 224) ;;
            clip_vit_b32) peer pytorch; backbone="$OUT_DIR/clip_vit_b32" ;;  # a repository folder
            *) peer pytorch; extra=(--weights "$OUT_DIR/$model.safetensors") ;;
        esac
        log "round $round/$ROUNDS, $model: graft"
        "$GRAFT" --threads "$THREADS" bench forward -b "$backbone" "${extra[@]}" \
            --batch-size "$BATCH" --iters "$ITERS" --json | grep '^{' >> "$RESULTS"
        if [ -n "${BASELINE:-}" ]; then
            log "round $round/$ROUNDS, $model: graft baseline ($BASELINE)"
            "$BASELINE" --threads "$THREADS" bench forward -b "$backbone" "${extra[@]}" \
                --batch-size "$BATCH" --iters "$ITERS" --json | grep '^{' \
                | sed 's/"tool":"graft"/"tool":"graft-baseline"/' >> "$RESULTS"
        fi
        case "$model" in
            efficientnet-lite0|mobilenet-v2-tf) peer pytorch ;;
        esac
        peer onnxruntime
    done
    # CLIP's text tower: TEXT_BATCH new prompts per iteration (the same strings in both),
    # tokenizing included; the rows have "what": "text" and report.py tables them apart.
    # transformers first: it writes the repository folder if the image run did not.
    if [ "$TEXT" = 1 ]; then
        log "round $round/$ROUNDS, clip_vit_b32 text: transformers"
        "$PYTHON" "$BENCH_DIR/peers.py" transformers-text --model clip_vit_b32 \
            --batch-size "$TEXT_BATCH" --iters "$ITERS" --threads "$THREADS" \
            --out-dir "$OUT_DIR" >> "$RESULTS"
        log "round $round/$ROUNDS, clip_vit_b32 text: graft"
        "$GRAFT" --threads "$THREADS" bench text -b "$OUT_DIR/clip_vit_b32" \
            --batch-size "$TEXT_BATCH" --iters "$ITERS" --json | grep '^{' >> "$RESULTS"
    fi
done

# 5. Report.
"$PYTHON" "$BENCH_DIR/report.py" "$RESULTS" \
    --load-before "$LOAD_BEFORE" --graft-version "$("$GRAFT" --version)" > "$OUT_DIR/forward.md"
cat "$OUT_DIR/forward.md"
log "table written to $OUT_DIR/forward.md (raw results: $RESULTS)"

# 6. Results as data: this run's rows, with the machine, date, commit and command, appended to
#    bench/results/<date>-<cpu>.jsonl, and the pages rendered from every record.
if [ "${RECORD:-1}" = 1 ]; then
    "$PYTHON" "$BENCH_DIR/report.py" --record forward "$RESULTS" \
        --command "ITERS=$ITERS ROUNDS=$ROUNDS MODELS=\"${MODELS[*]}\" bash bench/run.sh" \
        --load-before "$LOAD_BEFORE" --graft-version "$("$GRAFT" --version)"
    "$PYTHON" "$BENCH_DIR/report.py" --all "$BENCH_DIR/results" --write
    log "results appended to $BENCH_DIR/results; docs/benchmarks.md and README.md rendered from them"
fi
