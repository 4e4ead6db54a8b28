"""`graft export` checked with ONNX Runtime: the exported graphs pass onnx.checker and give what
graft gives (the goldens for the backbones alone; `graft predict --model` for trained runs, on
all 300 validation photos of the shared flowers), for float and uint8 inputs.

Needs onnx and onnxruntime (tests/all.sh installs them), the graft binary (GRAFT_BIN) and
../shared beside the repository."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graft

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "data" / "flowers"
GRAFT_BIN = os.environ.get("GRAFT_BIN", str(REPO / "target" / "release" / "graft"))
GOLDEN_NAMES = ["bird", "cat", "hot_dog", "parrot"]


def cli(*args, cwd=None):
    out = subprocess.run(
        [GRAFT_BIN, *map(str, args)], capture_output=True, text=True, cwd=cwd
    )
    assert out.returncode == 0, out.stderr
    return out


def session(path):
    """The model checked by onnx.checker (with shape inference), in an ONNX Runtime session."""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def golden(folder, suffix):
    return np.stack([np.load(folder / f"{n}_{suffix}.npy").reshape(-1) for n in GOLDEN_NAMES])


@pytest.mark.parametrize(
    "name, weights, golden_dir, logits_suffix, check_features",
    [
        ("efficientnet-lite0", None, SHARED / "golden" / "efficientnet_lite0", "logits", True),
        # The TF-trained MobileNetV2 with its TF SAME padding (explicit Pad nodes in the graph).
        (
            "mobilenet-v2-tf",
            SHARED / "weights" / "mobilenet_v2" / "mobilenet_v2_imagenet.safetensors",
            SHARED / "weights" / "mobilenet_v2" / "golden",
            "logits_tf_same",
            False,
        ),
    ],
)
def test_backbones_alone_match_the_goldens(tmp_path, name, weights, golden_dir, logits_suffix, check_features):
    args = ["export", "--backbone", name, "--out", tmp_path / "model.onnx"]
    if weights:
        args += ["--weights", weights]
    cli(*args)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    # Both are TF-trained: TF SAME padding, asymmetric on the stride-2 convs.
    assert "Pad" in ops and "BatchNormalization" not in ops
    x = np.concatenate([np.load(golden_dir / f"{n}_input.npy") for n in GOLDEN_NAMES])
    features, logits = session(tmp_path / "model.onnx").run(["features", "logits"], {"input": x})
    assert np.abs(logits - golden(golden_dir, logits_suffix)).max() < 1e-4
    if check_features:
        assert np.abs(features - golden(golden_dir, "features")).max() < 1e-4
    labels = (tmp_path / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[1].startswith("goldfish")
    source = json.loads((tmp_path / "preprocessing.json").read_text())["source"]
    # Older names select the registry's `arch.tag` entry, which the export records.
    canonical = {"efficientnet-lite0": "efficientnet_lite0.tf_in1k", "mobilenet-v2-tf": "mobilenet_v2.tf_in1k"}
    assert source["name"] == canonical[name] and source["resolution"] == 224


def test_uint8_input_bakes_in_the_normalisation(tmp_path):
    """Lite0 normalises as (x - 127) / 128, so the golden inputs are exact uint8 pixels."""
    cli("export", "--backbone", "efficientnet-lite0", "--input", "uint8-nhwc", "--out", tmp_path / "m.onnx")
    folder = SHARED / "golden" / "efficientnet_lite0"
    x = np.concatenate([np.load(folder / f"{n}_input.npy") for n in GOLDEN_NAMES])
    pixels = np.round(x * 128 + 127).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal((pixels.astype(np.float32) - 127) / 128, x.transpose(0, 2, 3, 1))
    (logits,) = session(tmp_path / "m.onnx").run(["logits"], {"image": pixels})
    assert np.abs(logits - golden(folder, "logits")).max() < 1e-4


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


def trained_run(root, cache, recipe, *extra):
    run = root / recipe
    cli("train", FLOWERS, "--recipe", recipe, "--out", run, "--cache-dir", cache, *extra)
    return run


def check_run_export(run):
    """ONNX Runtime on the exported run, float and uint8 input, against `graft predict --model`
    on every validation photo of the run: same top-1, probabilities within 1e-4."""
    val = [entry["path"] for entry in json.loads((run / "predictions.json").read_text())]
    assert len(val) == 300
    predicted = json.loads(cli("predict", "--json", "-k", "5", "--model", run, *val).stdout)
    classes = graft.open(run).classes
    expected = np.zeros((len(val), len(classes)), dtype=np.float32)
    for row, image in zip(expected, predicted["images"]):
        for p in image["predictions"]:
            row[p["index"]] = p["probability"]
    model = graft.open(run)
    for kind, args, inputs in [
        ("float", [], {"input": model.preprocess(val)}),
        ("uint8", ["--input", "uint8-nhwc"], {"image": model.preprocess(val, uint8=True)}),
    ]:
        out = cli("export", run, *args)
        path = run / ("model.onnx" if kind == "float" else "model-uint8.onnx")
        assert path.name in out.stdout
        (probabilities,) = session(path).run(["probabilities"], inputs)
        assert probabilities.shape == expected.shape
        assert np.array_equal(probabilities.argmax(1), expected.argmax(1)), kind
        assert np.abs(probabilities - expected).max() < 1e-4, kind
    assert (run / "labels.txt").read_text().splitlines() == classes


def test_a_head_run_exports_with_the_same_predictions(tmp_path, cache):
    check_run_export(trained_run(tmp_path, cache, "head"))


def test_a_finetuned_run_exports_its_trained_backbone(tmp_path, cache):
    run = trained_run(
        tmp_path, cache, "finetune", "--stages", "2", "--epochs-per-stage", "1", "--epochs", "5"
    )
    assert (run / "backbone.safetensors").exists()
    check_run_export(run)


def test_a_knn_run_exports_its_feature_model_and_says_so(tmp_path, cache):
    run = trained_run(tmp_path, cache, "knn")
    out = cli("export", run)
    assert "kNN" in out.stderr
    photos = [str(p) for p in sorted((FLOWERS / "roses").iterdir())[:8]]
    (features,) = session(run / "model.onnx").run(
        ["features"], {"input": graft.open(run).preprocess(photos)}
    )
    expected = graft.Backbone("efficientnet-lite0").features(photos)
    assert np.abs(features - expected).max() < 1e-4


def test_export_refuses_what_is_not_a_run(tmp_path):
    out = subprocess.run(
        [GRAFT_BIN, "export", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode != 0 and str(tmp_path) in out.stderr
