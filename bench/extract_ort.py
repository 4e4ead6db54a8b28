#!/usr/bin/env python3
"""The careful CPU pipeline a Python user writes for bottleneck extraction, as the peer of
`graft extract`: PIL decoding with `Image.draft()` (JPEG decoded scaled in the DCT domain,
1/2 to 1/8, to the smallest size that still covers the resize), centre crop and bicubic resize
as EfficientNet-Lite's source, in a process pool; ONNX Runtime on the same Lite0 feature
model, exported by `graft export --backbone efficientnet-lite0 --no-top`.

    extract_ort.py DATA --model lite0-features.onnx --out FEATURES.npy [--processes 2]
        [--threads 2] [--batch-size 32]

Prints one JSON line: images, wall seconds, images/s, CPU/wall and peak RSS (this process
plus the largest worker), shaped like the other rows of bench/extract.sh.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

RESOLUTION = 224
CROP_FRACTION = 0.875  # Lite0's centre square: floor(0.875 * short side), then resize
EXTENSIONS = {".jpg", ".jpeg", ".png"}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)


def prepare(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        need = int(RESOLUTION / CROP_FRACTION)
        image.draft("RGB", (need, need))  # DCT-domain scaling; no-op for non-JPEG
        image = image.convert("RGB")
        w, h = image.size
        side = int(CROP_FRACTION * min(w, h))
        left, top = (w - side + 1) // 2, (h - side + 1) // 2
        image = image.resize((RESOLUTION, RESOLUTION), Image.BICUBIC,
                             box=(left, top, left + side, top + side))
        x = (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
    return x.transpose(2, 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    paths = list_images(args.data)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    rows = []
    with mp.get_context("fork").Pool(args.processes) as pool:
        batch = []
        for x in pool.imap(prepare, paths, chunksize=4):
            batch.append(x)
            if len(batch) == args.batch_size:
                rows.append(session.run(["features"], {"input": np.stack(batch)})[0])
                batch = []
        if batch:
            rows.append(session.run(["features"], {"input": np.stack(batch)})[0])
    wall = time.perf_counter() - start_wall
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - start_cpu + children.ru_utime + children.ru_stime
    np.save(args.out, np.concatenate(rows))
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "tool": "onnxruntime+pil", "version": f"onnxruntime {ort.__version__}",
        "what": "extract", "images": len(paths), "wall_s": wall,
        "images_per_sec": len(paths) / wall, "cpu_over_wall": cpu / wall,
        "peak_rss_mb": (rss_self + children.ru_maxrss) * 1024 / 1e6,
        "processes": args.processes,
    }))


if __name__ == "__main__":
    main()
