"""Parity fixtures for the backbone families beyond MBConv (ResNet, ConvNeXt, ViT, DINOv2), from
torchvision and timm.

For each code path, the smallest member that exercises it, with random weights (BatchNorm
statistics and layer scales randomised too, so that loading them matters):

  resnet_basic        torchvision ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
  resnet_bottleneck   torchvision ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=16, num_classes=10)
  convnext_tv         torchvision ConvNeXt, dims (16, 32, 64, 128), depths (1, 1, 2, 1), 10 classes
  convnext_timm       timm ConvNeXt, the same shape
  vit_tv              torchvision VisionTransformer at 224: patch 16, width 96, 2 layers, 3 heads
  vit_timm            timm VisionTransformer, the same shape (timm's ViT-S/16 code path)
  dinov2              timm DINOv2 code path (patch 14, layer scale, 518 px, no head), width 96
  dinov2_reg4         the same with 4 register tokens (position embedding without prefix)

The ViT fixtures share their inputs (vit_inputs.golden.safetensors: `input_224` [2, 3, 224, 224] and
`input_518`, both F16); their goldens hold `features` / `logits` at 224 and, for DINOv2, also
`features_518` (native size) and `features_avg` (class token + mean patch token at 224), with
`group.K` at 224 for the first image. At 224 DINOv2's position embedding is resampled by timm's
own checkpoint_filter_fn (bicubic, antialiased), as when loading the 518 px checkpoint.

Each writes tests/fixtures/backbones/<name>.weights.safetensors (the state dict in F16, keys as
the library names them) and <name>.golden.safetensors (F32: `input` [2, 3, 128, 128] from two
real images, `features` and `logits` for both, `group.K` = the output of layer group K for the
first image). Goldens are computed from the F16-rounded weights, in float64 on the CPU, then
stored as F32.

keys.json lists (key, shape) of the full-size torchvision / timm models, so that the Rust side
checks its layouts against real checkpoints' key sets without storing them.

Needs torch, torchvision, timm, safetensors, Pillow (not installed by CI: the outputs are
committed). Run from the repository root:

    python tests/support/make_backbone_fixtures.py ../shared/golden/efficientnet_lite0
"""

import json
import os
import sys

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.resnet import BasicBlock, Bottleneck

OUT = "tests/fixtures/backbones"
SIZE = 128
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)


def images(golden_dir):
    batch = []
    for name in ["bird", "cat"]:
        img = Image.open(os.path.join(golden_dir, f"{name}_224.png")).convert("RGB")
        img = img.resize((SIZE, SIZE), Image.BILINEAR)
        x = (np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD
        batch.append(x.transpose(2, 0, 1))
    return torch.tensor(np.stack(batch), dtype=torch.float32)


def randomise(model, gen):
    """Random BatchNorm statistics and affine terms, random layer scales: every tensor matters."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif name.endswith("layer_scale") or name.endswith("gamma"):
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + 0.25)
            elif t.dim() == 1:
                # BatchNorm / LayerNorm affine terms and biases.
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + torch.randn(t.shape, generator=gen) * 0.1)


def round_to_f16(model):
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def random_vit(model, gen):
    """Matrices with unit-variance outputs and random tokens / position embeddings: without
    this, timm's small init leaves every block close to the identity."""
    randomise(model, gen)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if any(k in name for k in ["cls_token", "class_token", "reg_token", "pos_emb"]):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
            elif t.dim() >= 2:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in**0.5)


def vit_block_runs(blocks):
    """The layer groups of graft's ViT: the blocks in up to four equal runs."""
    blocks = list(blocks)
    groups = min(max(len(blocks), 1), 4)
    per = -(-len(blocks) // groups)
    return [blocks[i : i + per] for i in range(0, len(blocks), per)]


def vit_tv_groups(m, x):
    n = x.shape[0]
    x = m._process_input(x)
    x = torch.cat([m.class_token.expand(n, -1, -1), x], dim=1) + m.encoder.pos_embedding
    out = [x]
    for run in vit_block_runs(m.encoder.layers):
        for layer in run:
            x = layer(x)
        out.append(x)
    x = m.encoder.ln(x)
    out.append(x)
    return out, x[:, 0], m.heads


def vit_timm_groups(m, x):
    x = m.norm_pre(m._pos_embed(m.patch_embed(x)))
    out = [x]
    for run in vit_block_runs(m.blocks):
        for block in run:
            x = block(x)
        out.append(x)
    x = m.norm(x)
    out.append(x)
    return out, m.forward_head(x, pre_logits=True), m.head


def write_vit(name, model, groups_fn, inputs, native=None):
    """Weights of `model` (at `native` px when given: DINOv2's 518) and goldens at 224."""
    model.eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(
        {k: v.half() for k, v in state.items()},
        os.path.join(OUT, f"{name}.weights.safetensors"),
    )
    golden = {}
    if native is not None:
        with torch.no_grad():
            golden["features_518"] = model.double().forward_features(inputs["input_518"].double())[:, 0].float()
        # The same weights at 224: timm resamples the position embedding while loading.
        small = timm.models.vision_transformer.VisionTransformer(**dict(native, img_size=224))
        small.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(state, small))
        model = small.eval()
    model = model.double()
    x = inputs["input_224"].double()
    with torch.no_grad():
        groups, features, head = groups_fn(model, x)
        golden["features"] = features.float()
        if not isinstance(head, torch.nn.Identity):
            golden["logits"] = head(features).float()
            assert torch.allclose(head(features), model(x), atol=1e-9), name
        tokens = groups[-1]
        prefix = getattr(model, "num_prefix_tokens", 1)
        golden["features_avg"] = torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], 1).float()
    for k, g in enumerate(groups):
        golden[f"group.{k}"] = g[:1].float()
    golden = {k: v.contiguous() for k, v in golden.items()}
    save_file(golden, os.path.join(OUT, f"{name}.golden.safetensors"))
    sizes = {k: tuple(v.shape) for k, v in golden.items()}
    print(f"{name}: {sum(t.numel() for t in state.values())} weights, {sizes}")


def vit_inputs(golden_dir):
    """Two real images at 224 and 518, rounded to F16 (the goldens use the rounded values)."""
    out = {}
    for size in [224, 518]:
        batch = []
        for name in ["bird", "cat"]:
            img = Image.open(os.path.join(golden_dir, f"{name}_224.png")).convert("RGB")
            img = img.resize((size, size), Image.BICUBIC)
            x = (np.asarray(img, dtype=np.float64) / 255.0 - MEAN) / STD
            batch.append(x.transpose(2, 0, 1))
        out[f"input_{size}"] = torch.tensor(np.stack(batch), dtype=torch.float32).half().contiguous()
    save_file(out, os.path.join(OUT, "vit_inputs.golden.safetensors"))
    return {k: v.float() for k, v in out.items()}


def resnet_groups(m, x):
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    out = [x]
    for layer in [m.layer1, m.layer2, m.layer3, m.layer4]:
        x = layer(x)
        out.append(x)
    return out, torch.flatten(m.avgpool(x), 1), m.fc


def convnext_tv_groups(m, x):
    out = []
    for i, f in enumerate(m.features):
        x = f(x)
        if i % 2 == 0 and i > 0:
            continue  # a downsample: its stage's blocks follow
        out.append(x)
    pooled = m.classifier[0](m.avgpool(x))
    return out, torch.flatten(pooled, 1), m.classifier[2]


def convnext_timm_groups(m, x):
    x = m.stem(x)
    out = [x]
    for stage in m.stages:
        x = stage(x)
        out.append(x)
    features = m.forward_head(x, pre_logits=True)
    return out, features, m.head.fc


def write(name, model, groups_fn, x):
    model.eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_file(weights, os.path.join(OUT, f"{name}.weights.safetensors"))
    model = model.double()
    with torch.no_grad():
        groups, features, fc = groups_fn(model, x.double())
        logits = fc(features)
        assert torch.allclose(logits, model(x.double()), atol=1e-9), name
    golden = {
        "input": x.float().contiguous(),
        "features": features.float().contiguous(),
        "logits": logits.float().contiguous(),
    }
    for k, g in enumerate(groups):
        golden[f"group.{k}"] = g[:1].float().contiguous()
    save_file(golden, os.path.join(OUT, f"{name}.golden.safetensors"))
    sizes = {k: tuple(v.shape) for k, v in golden.items()}
    peak = max(float(v.abs().max()) for v in golden.values())
    print(f"{name}: {sum(t.numel() for t in state.values())} weights, largest |value| {peak:.1f}, {sizes}")


def key_shapes(model):
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def main():
    golden_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/golden/efficientnet_lite0"
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = images(golden_dir)

    tv = torchvision.models
    small_cnblocks = [
        CNBlockConfig(16, 32, 1),
        CNBlockConfig(32, 64, 1),
        CNBlockConfig(64, 128, 2),
        CNBlockConfig(128, None, 1),
    ]
    models = {
        "resnet_basic": (tv.resnet.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), resnet_groups),
        "resnet_bottleneck": (
            tv.resnet.ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10, width_per_group=16),
            resnet_groups,
        ),
        "convnext_tv": (tv.convnext.ConvNeXt(small_cnblocks, num_classes=10), convnext_tv_groups),
        "convnext_timm": (
            timm.models.convnext.ConvNeXt(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128), num_classes=10),
            convnext_timm_groups,
        ),
    }
    for name, (model, groups_fn) in models.items():
        randomise(model, gen)
        round_to_f16(model)
        write(name, model, groups_fn, x)

    vit = timm.models.vision_transformer.VisionTransformer
    inputs = vit_inputs(golden_dir)
    small_vit = dict(patch_size=16, embed_dim=96, depth=2, num_heads=3, num_classes=10, img_size=224)
    vit_tv = tv.vision_transformer.VisionTransformer(
        image_size=224, patch_size=16, num_layers=2, num_heads=3, hidden_dim=96, mlp_dim=384, num_classes=10
    )
    dinov2 = dict(patch_size=14, embed_dim=96, depth=2, num_heads=3, init_values=1e-5, num_classes=0, img_size=518)
    dinov2_reg4 = dict(dinov2, reg_tokens=4, no_embed_class=True)
    for name, model, groups_fn, native in [
        ("vit_tv", vit_tv, vit_tv_groups, None),
        ("vit_timm", vit(**small_vit), vit_timm_groups, None),
        ("dinov2", vit(**dinov2), vit_timm_groups, dinov2),
        ("dinov2_reg4", vit(**dinov2_reg4), vit_timm_groups, dinov2_reg4),
    ]:
        random_vit(model, gen)
        round_to_f16(model)
        write_vit(name, model, groups_fn, inputs, native)

    keys = {
        "resnet18": key_shapes(tv.resnet18()),
        "resnet50": key_shapes(tv.resnet50()),
        "convnext_tiny.tv": key_shapes(tv.convnext_tiny()),
        "convnext_tiny.timm": key_shapes(timm.create_model("convnext_tiny")),
        "vit_b_16.tv": key_shapes(tv.vit_b_16()),
        "vit_small_patch16_224.timm": key_shapes(timm.create_model("vit_small_patch16_224")),
        "vit_small_patch14_dinov2.timm": key_shapes(
            timm.create_model("vit_small_patch14_dinov2", img_size=518, num_classes=0)
        ),
        "vit_small_patch14_reg4_dinov2.timm": key_shapes(
            timm.create_model("vit_small_patch14_reg4_dinov2", img_size=518, num_classes=0)
        ),
    }
    with open(os.path.join(OUT, "keys.json"), "w") as f:
        json.dump(keys, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
