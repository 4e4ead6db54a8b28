#!/usr/bin/env python3
"""N distinct images made from a labelled folder, for scaling runs: each a random crop (70-100 %
of each side), maybe mirrored, re-encoded as JPEG quality 85-95, in the same class folders.
Deterministic (seeded); files already there are kept, so a larger N extends a smaller one.

    augment_copies.py SRC DST N
"""

import random
import sys
from pathlib import Path

from PIL import Image, ImageOps


def main() -> None:
    src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    photos = sorted(p for p in src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    for i in range(n):
        photo = photos[i % len(photos)]
        out = dst / photo.parent.name / f"{photo.stem}-{i:06d}.jpg"
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(i)
        with Image.open(photo) as image:
            image = image.convert("RGB")
            w, h = image.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
            image.save(out, quality=rng.randint(85, 95))


if __name__ == "__main__":
    main()
