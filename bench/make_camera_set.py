#!/usr/bin/env python3
"""A camera-sized copy of photos: each upscaled (bicubic) to 4032x3024 (landscape) or 3024x4032
and saved as JPEG quality 92, like a 12 MP phone photo, keeping the class folders and each
photo's stem (DST/<class>/<stem>.jpg). The first --per-class photos of each class (sorted by
name) are copied; files already in DST are kept. Each file is written under a temporary name and
renamed when complete, so an interrupted run leaves no truncated JPEG behind.

    make_camera_set.py SRC DST [--per-class 20] [--processes 1]
"""

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image


def convert(photo: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    with Image.open(photo) as image:
        image = image.convert("RGB")
        size = (4032, 3024) if image.width >= image.height else (3024, 4032)
        image.resize(size, Image.BICUBIC).save(partial, format="JPEG", quality=92)
    os.replace(partial, target)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--processes", type=int, default=1,
                        help="photos converted in this many processes at once")
    args = parser.parse_args()
    todo = []
    for class_dir in sorted(p for p in args.src.iterdir() if p.is_dir()):
        out = args.dst / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.iterdir())[: args.per_class]:
            target = out / (photo.stem + ".jpg")
            if not target.exists():
                todo.append((photo, target))
    if args.processes <= 1:
        for photo, target in todo:
            convert(photo, target)
    else:
        with ProcessPoolExecutor(args.processes) as pool:
            for future in [pool.submit(convert, p, t) for p, t in todo]:
                future.result()


if __name__ == "__main__":
    main()
