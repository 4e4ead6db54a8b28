#!/usr/bin/env python3
"""PyTorch's side of the fine-tuning train-step benchmark.

    train_step_torch.py --model efficientnet-lite0 [--batch-size 16] [--iters 3] [--threads 2]
                        [--device cuda]

The same step as `graft bench train-step`: the pretrained model (ResNet-50, ConvNeXt, ViT:
random weights) with a new 10-class top,
every layer trainable, BatchNorm frozen (eval mode: running statistics kept, affine parameters
train), cross-entropy, backward, AdamW (lr 1e-4). Random input at the model's resolution. One
untimed warm-up step, then `iters` timed steps. Prints one JSON line shaped like graft's.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from peers import DEFAULT_MNV2_WEIGHTS, DEFAULT_OUT_DIR, MODELS, build_torch_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mnv2-weights", type=Path, default=DEFAULT_MNV2_WEIGHTS)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu.sh)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, resolution = build_torch_model(args.model, args.mnv2_weights, DEFAULT_OUT_DIR)
    # A new 10-class top on the pooled features.
    if hasattr(model, "reset_classifier"):  # timm's ViT and DINOv2
        model.reset_classifier(10)
    elif hasattr(model, "_fc"):
        model._fc = torch.nn.Linear(model._fc.in_features, 10)
    elif isinstance(getattr(model, "fc", None), torch.nn.Linear):  # torchvision's ResNet
        model.fc = torch.nn.Linear(model.fc.in_features, 10)
    else:
        model.classifier[-1] = torch.nn.Linear(model.classifier[-1].in_features, 10)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()  # frozen statistics; weight and bias still train
    model = model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = (torch.rand(args.batch_size, 3, resolution, resolution) * 2 - 1).to(args.device)
    y = (torch.arange(args.batch_size) % 10).to(args.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if args.device != "cpu":
            torch.cuda.synchronize()  # CUDA runs asynchronously: time the finished step

    step()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(args.iters):
        step()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    print(json.dumps({
        "tool": "pytorch",
        "version": torch.__version__,
        "what": "train-step",
        "backbone": args.model,
        "batch_size": args.batch_size,
        "resolution": resolution,
        "threads": args.threads,
        "images_per_sec": args.iters * args.batch_size / wall,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_over_wall": cpu / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        **({"device": torch.cuda.get_device_name()} if args.device != "cpu" else {}),
    }), flush=True)


if __name__ == "__main__":
    main()
