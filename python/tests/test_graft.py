"""The Python package against the command line, on the shared flower photos.

Needs the `graft` binary (GRAFT_BIN, default target/release/graft), the EfficientNet-Lite0
weights in the store, and ../shared beside the repository, as the Rust tests do."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graft

REPO = Path(__file__).resolve().parents[2]
FLOWERS = REPO.parent / "shared" / "data" / "flowers"
GRAFT_BIN = os.environ.get("GRAFT_BIN", str(REPO / "target" / "release" / "graft"))


def cli(*args):
    """Run the graft binary; its stdout."""
    out = subprocess.run([GRAFT_BIN, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def read_cache(cache_dir):
    """sha256 of the image file -> feature row, from the cache's safetensors shards (the
    documented format, read without graft)."""
    rows = {}
    for shard in Path(cache_dir).rglob("shard-*.safetensors"):
        raw = shard.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        meta = header["features"]
        start, end = meta["data_offsets"]
        data = np.frombuffer(raw[8 + size + start : 8 + size + end], dtype="<f4")
        matrix = data.reshape(meta["shape"])
        for key, row in zip(json.loads(header["__metadata__"]["keys"]), matrix):
            rows[key] = row
    return rows


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def photos(count_per_class):
    return [
        path
        for cls in sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
        for path in sorted((FLOWERS / cls).iterdir())[:count_per_class]
    ]


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory):
    """The shared flowers extracted by `graft extract` into a fresh cache."""
    cache = tmp_path_factory.mktemp("cli-cache")
    cli("extract", FLOWERS, "--cache-dir", cache)
    return cache


def test_features_equal_the_cli_cache_bit_for_bit(cli_cache, tmp_path):
    cached = read_cache(cli_cache)
    assert len(cached) >= 1400
    # Backbone.features on every photo, computed afresh.
    all_photos = photos(10_000)
    rows = graft.Backbone("efficientnet-lite0").features([str(p) for p in all_photos])
    assert rows.dtype == np.float32 and rows.shape == (len(all_photos), 1280)
    for path, row in zip(all_photos, rows):
        assert np.array_equal(row, cached[sha256(path)]), path
    # graft.extract through a cache of its own.
    features, labels, paths = graft.extract(FLOWERS, cache_dir=tmp_path, progress=False)
    assert features.shape == (len(all_photos), 1280)
    for path, label, row in zip(paths, labels, features):
        assert Path(path).parent.name == label
        assert np.array_equal(row, cached[sha256(path)]), path


def test_arrays_are_images_too():
    backbone = graft.Backbone()
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 150, 200, 3), dtype=np.uint8)
    together = backbone.features(pixels)
    assert together.shape == (3, 1280)
    for i in range(3):
        assert np.array_equal(backbone.features(pixels[i]), together[i : i + 1])
    assert not np.array_equal(together[0], together[1])
    with pytest.raises(ValueError, match="HxWx3"):
        backbone.features(np.zeros((10, 10), dtype=np.uint8))


def test_sklearn_on_extracted_features_matches_the_logreg_recipe(cli_cache, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    run = tmp_path / "logreg"
    cli("train", FLOWERS, "--recipe", "logreg", "--cache-dir", cli_cache, "--out", run)
    recipe_accuracy = json.loads((run / "metrics.json").read_text())["val"]["accuracy"]

    x_train, y_train, _ = graft.extract(FLOWERS, split="train", cache_dir=cli_cache, progress=False)
    x_val, y_val, _ = graft.extract(FLOWERS, split="val", cache_dir=cli_cache, progress=False)
    scaler = StandardScaler().fit(x_train)
    # linfa's objective is sum(log-loss) + alpha/2 |W|^2 (intercept free) with alpha 1:
    # scikit-learn's C = 1, solved to convergence (its default tol stops 16 iterations in).
    classifier = LogisticRegression(C=1.0, tol=1e-6, max_iter=2000)
    classifier.fit(scaler.transform(x_train), y_train)
    accuracy = classifier.score(scaler.transform(x_val), y_val)
    assert abs(accuracy - recipe_accuracy) <= 0.005, (accuracy, recipe_accuracy)


def test_model_predict_equals_graft_predict(cli_cache, tmp_path):
    run = tmp_path / "head"
    model = graft.train(FLOWERS, recipe="head", out=run, cache_dir=cli_cache, progress=False)
    assert model.classes == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (run / "model.json").is_file() and model.recipe == "head"
    fifty = photos(10)
    ours = model.predict([str(p) for p in fifty], top=3)
    theirs = json.loads(cli("predict", "--model", run, "--json", "--top", "3", *fifty))
    assert len(ours) == len(theirs["images"]) == 50
    for mine, image in zip(ours, theirs["images"]):
        assert [p["label"] for p in mine] == [p["label"] for p in image["predictions"]]
        for p, q in zip(mine, image["predictions"]):
            assert np.float32(p["probability"]) == np.float32(q["probability"])
    # The probabilities are the calibrated ones, with the run's temperature.
    card = json.loads((run / "model.json").read_text())
    assert model.temperature == card["temperature"] > 0
    assert model.metrics()["calibration"]["temperature"] == card["temperature"]
    # graft.open reads the same run directory.
    reopened = graft.open(run)
    assert reopened.predict(str(fifty[0]), top=3) == ours[:1]
    metrics = reopened.evaluate(FLOWERS)
    assert 0.8 < metrics["accuracy"] <= 1.0


def test_model_explain_writes_what_predict_explain_writes(cli_cache, tmp_path):
    run = tmp_path / "logreg"
    model = graft.train(FLOWERS, recipe="logreg", out=run, cache_dir=cli_cache, progress=False)
    three = photos(1)[:3]
    written = model.explain([str(p) for p in three], tmp_path / "python")
    cli("predict", "--model", run, "--explain", tmp_path / "cli", *three)
    assert [Path(p).name for p in written] == [p.with_suffix(".png").name for p in three]
    # The same pictures to rounding (the wheel and the binary are separate builds: a few
    # pixels of the 224 x 224 differed by one level): compared through graft's own decoder.
    theirs = [str(tmp_path / "cli" / Path(p).name) for p in written]
    decoded = graft.Backbone().preprocess(written + theirs, uint8=True).astype(int)
    assert np.abs(decoded[:3] - decoded[3:]).max() <= 1
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 150, 200, 3), dtype=np.uint8)
    arrays = model.explain(pixels, tmp_path / "arrays")
    assert [Path(p).name for p in arrays] == ["array-0.png", "array-1.png"]
    knn = graft.train(FLOWERS, recipe="knn", out=tmp_path / "knn", cache_dir=cli_cache, progress=False)
    with pytest.raises(graft.GraftError, match="kNN"):
        knn.explain(str(three[0]), tmp_path / "knn-heatmaps")


def test_a_bad_image_raises_an_error_that_names_it(cli_cache, tmp_path):
    run = tmp_path / "knn"
    model = graft.train(FLOWERS, recipe="knn", out=run, cache_dir=cli_cache, progress=False)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = [str(p) for p in photos(1)[:2]]
    with pytest.raises(graft.ImageError) as caught:
        model.predict([good[0], str(bad), good[1]])
    error = caught.value
    assert "truncated.jpg" in str(error)
    assert error.paths == [str(bad)]
    assert error.results[1] is None
    assert error.results[0] == model.predict(good[0])[0]
    assert error.results[2] == model.predict(good[1])[0]
    assert isinstance(error, graft.GraftError)


def test_ctrl_c_stops_extract_and_a_rerun_resumes(tmp_path):
    data = tmp_path / "flowers"
    for path in photos(16):
        (data / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, data / path.parent.name / path.name)
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import os, signal, graft
        notes, batches = [], []
        def progress(event, *args):
            if event == "advance":
                batches.append(args[0])
                if len(batches) == 3:
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after two batches
            if event == "note":
                notes.append(args[0])
        try:
            graft.extract({str(data)!r}, cache_dir={str(cache)!r}, batch_size=8, progress=progress)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted")
        notes.clear()
        features, labels, paths = graft.extract({str(data)!r}, cache_dir={str(cache)!r}, batch_size=8, progress=progress)
        print(len(paths))
        print(notes[-1])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "interrupted", out.stdout
    assert lines[1] == "80"
    summary = lines[2]
    assert summary.startswith("features: 80 images (extracted "), summary
    extracted = int(summary.split("extracted ")[1].split(",")[0])
    reused = int(summary.split("reused ")[1].split(",")[0])
    assert extracted + reused == 80 and 0 < reused < 80, summary


def test_finetune_in_python_equals_the_cli_run(tmp_path):
    """Recipe 3 from Python and from the command line, same options: the same fine-tuned
    backbone and top, bit for bit, and either run directory opens in the other."""
    data = tmp_path / "flowers"
    for cls in ["daisy", "roses"]:
        (data / cls).mkdir(parents=True)
        for photo in sorted((FLOWERS / cls).iterdir())[:10]:
            shutil.copy(photo, data / cls / photo.name)
    options = dict(stages=1, epochs_per_stage=1, epochs=20, finetune_batch_size=8)
    model = graft.train(
        data, "finetune", out=tmp_path / "py", cache_dir=tmp_path / "cache", progress=False, **options
    )
    assert model.recipe == "finetune"
    cli(
        "train", data, "--recipe", "finetune", "--out", tmp_path / "cli",
        "--cache-dir", tmp_path / "cache", "--stages", "1", "--epochs-per-stage", "1",
        "--epochs", "20", "--finetune-batch-size", "8",
    )
    for name in ["backbone.safetensors", "head.safetensors"]:
        assert sha256(tmp_path / "py" / name) == sha256(tmp_path / "cli" / name), name
    plan = json.loads((tmp_path / "py" / "plan.json").read_text())
    assert [s["trainable_groups"] for s in plan["stages"]] == [["head"]]
    from_cli = graft.open(tmp_path / "cli")
    probe = [str(p) for p in sorted((data / "roses").iterdir())[:3]]
    assert from_cli.predict(probe, top=1) == model.predict(probe, top=1)
    with pytest.raises(ValueError, match="unknown schedule"):
        graft.train(data, "finetune", schedule="linear", progress=False)


def test_zero_shot_predicts_as_the_command_line():
    """graft.ZeroShot gives the probabilities `graft predict --labels` prints (a tiny
    random-weight CLIP from the tests' fixtures), and refuses a model that is not CLIP."""
    model = REPO / "tests" / "fixtures" / "clip" / "clip_hf"
    photos = sorted((FLOWERS / "daisy").iterdir())[:2]
    labels = ["daisy", "rose", "tulip"]
    zs = graft.ZeroShot(str(model), labels, prompts=["a photo of a {}."])
    assert zs.labels == labels
    ours = zs.predict([str(p) for p in photos], top=3)
    doc = json.loads(
        cli("predict", "--backbone", model, "--labels", ",".join(labels),
            "--prompt", "a photo of a {}.", "-k", "3", "--json", *photos)
    )
    for mine, theirs in zip(ours, doc["images"]):
        assert [p["label"] for p in mine] == [p["label"] for p in theirs["predictions"]]
        for a, b in zip(mine, theirs["predictions"]):
            assert abs(a["probability"] - b["probability"]) < 1e-6
        assert abs(sum(p["probability"] for p in mine) - 1.0) < 1e-5
    with pytest.raises(graft.GraftError, match="not a CLIP or SigLIP model"):
        graft.ZeroShot("efficientnet-lite0", labels)
