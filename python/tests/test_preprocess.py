"""graft's crop and resize give Pillow's pixels, as torchvision's and timm's eval transforms do.

The photos are decoded by Pillow and handed to graft as arrays, so only the crop and the
resize are compared (JPEG decoders differ by rounding; that is another question). Each
reference is Pillow itself (`Image.resize`, `Image.crop`) with the geometry torchvision and
timm compute, written out here from their sources."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def photos():
    """Flower photos of every class and ImageNet photos (the one grayscale among them too)."""
    flowers = sorted((SHARED / "flowers").rglob("*.jpg"))[::60]
    imagenet = sorted((SHARED / "imagenet-sample" / "images").glob("*.JPEG"))[::4]
    return flowers + imagenet


def tf_lite_crop(image, res=224, fraction=0.875, resample=Image.BICUBIC):
    """EfficientNet-Lite's eval crop: the centred square of floor(0.875 x the short side),
    offsets rounded up, then resized."""
    w, h = image.size
    side = int(fraction * min(w, h))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    return image.crop((left, top, left + side, top + side)).resize((res, res), resample)


def torchvision_eval(image, resize, res=224, resample=Image.BILINEAR):
    """torchvision's Resize(resize) then CenterCrop(res) (transforms/functional.py:
    _compute_resized_output_size and center_crop)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = image.resize(size, resample)
    top = int(round((size[1] - res) / 2.0))
    left = int(round((size[0] - res) / 2.0))
    return resized.crop((left, top, left + res, top + res))


CASES = [
    # registry name, reference transform
    ("efficientnet-lite0", lambda im: tf_lite_crop(im)),
    # torchvision weights: Resize(256), bilinear
    ("resnet50.tv_in1k", lambda im: torchvision_eval(im, 256)),
    # torchvision's V2 weights: Resize(232), bilinear
    ("resnet50.tv2_in1k", lambda im: torchvision_eval(im, 232)),
    # timm: Resize(floor(224 / crop_pct)), bicubic; crop_pct 0.95 and 0.9
    ("resnet50.a1_in1k", lambda im: torchvision_eval(im, math.floor(224 / 0.95), resample=Image.BICUBIC)),
    ("vit_small_patch16_224", lambda im: torchvision_eval(im, math.floor(224 / 0.9), resample=Image.BICUBIC)),
]


@pytest.mark.parametrize("backbone, reference", CASES, ids=[c[0] for c in CASES])
def test_crop_and_resize_equal_pillows_pixels(backbone, reference):
    images = [Image.open(p).convert("RGB") for p in photos()]
    assert len(images) >= 45
    ours = graft.preprocess([np.asarray(im) for im in images], backbone, uint8=True)
    assert ours.shape == (len(images), 224, 224, 3)
    for path, image, pixels in zip(photos(), images, ours):
        expected = np.asarray(reference(image))
        worst = np.abs(pixels.astype(int) - expected.astype(int)).max()
        assert worst == 0, f"{path.name} ({image.size}): differs from Pillow by {worst} grey levels"


def test_odd_shapes_and_upsampling_equal_pillow():
    """Tiny, very wide and very tall images: upsampled, or resized far along one side only."""
    rng = np.random.default_rng(0)
    for w, h in [(2, 2), (7, 3), (300, 20), (20, 300), (2000, 90), (225, 224)]:
        image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for backbone, reference in CASES[:2]:
            ours = graft.preprocess(np.asarray(image), backbone, uint8=True)[0]
            worst = np.abs(ours.astype(int) - np.asarray(reference(image)).astype(int)).max()
            assert worst == 0, f"{w}x{h} {backbone}: differs from Pillow by {worst} grey levels"


def test_an_unknown_backbone_is_a_clear_error():
    with pytest.raises(graft.GraftError, match="unknown backbone `resnet9000`"):
        graft.preprocess(np.zeros((8, 8, 3), dtype=np.uint8), "resnet9000")
