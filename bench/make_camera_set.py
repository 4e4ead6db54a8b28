#!/usr/bin/env python3
"""A camera-sized copy of photos: each upscaled (bicubic) to 4032x3024 (landscape) or 3024x4032
and saved as JPEG quality 92, like a 12 MP phone photo, keeping the class folders.

    make_camera_set.py SRC DST [--per-class 20]
"""

import argparse
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    for class_dir in sorted(p for p in args.src.iterdir() if p.is_dir()):
        out = args.dst / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.iterdir())[: args.per_class]:
            target = out / (photo.stem + ".jpg")
            if target.exists():
                continue
            with Image.open(photo) as image:
                image = image.convert("RGB")
                size = (4032, 3024) if image.width >= image.height else (3024, 4032)
                image.resize(size, Image.BICUBIC).save(target, quality=92)


if __name__ == "__main__":
    main()
