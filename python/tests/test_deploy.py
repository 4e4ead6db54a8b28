"""The cluster deployments of sharded extraction (deploy/), run for real on this machine: Ray
(a local cluster of 2 workers, one worker SIGKILLed mid-run), and the Slurm and Kubernetes
files parsed and their command lines run with each engine's environment. Every result is
compared with a single-process `graft extract` of the same images.

Needs ray and pyyaml (tests/all.sh installs them) and the graft binary (GRAFT_BIN)."""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FLOWERS = REPO.parent / "shared" / "data" / "flowers"
GRAFT_BIN = os.environ.get("GRAFT_BIN", str(REPO / "target" / "release" / "graft"))
DEPLOY = REPO / "deploy"


def cli(*args):
    out = subprocess.run([GRAFT_BIN, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def rows(cache):
    """key -> (copies, feature row), read from the shard files."""
    found = {}
    for shard in Path(cache).rglob("shard-*.safetensors"):
        raw = shard.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        start, end = header["features"]["data_offsets"]
        matrix = np.frombuffer(raw[8 + size + start : 8 + size + end], dtype="<f4").reshape(
            header["features"]["shape"]
        )
        for key, row in zip(json.loads(header["__metadata__"]["keys"]), matrix):
            copies, _ = found.get(key, (0, row))
            found[key] = (copies + 1, row)
    return found


def assert_same_rows(cache, reference, one_each=True):
    got, expected = rows(cache), rows(reference)
    assert got.keys() == expected.keys()
    for key, (copies, row) in got.items():
        assert np.array_equal(row, expected[key][1]), key
        if one_each:
            assert copies == 1, f"{key} has {copies} rows"


def small_flowers(root, per_class):
    for cls in sorted(p.name for p in FLOWERS.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for photo in sorted((FLOWERS / cls).iterdir())[:per_class]:
            shutil.copy(photo, root / cls / photo.name)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """All the shared flowers extracted by one process."""
    cache = tmp_path_factory.mktemp("reference-cache")
    cli("extract", FLOWERS, "--cache-dir", cache)
    return cache


def graft_children(cache):
    """pid -> parent pid of the running `graft ... extract --shard` processes writing `cache`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if b"--shard" in argv and str(cache).encode() in argv and argv[0].endswith(b"graft"):
            found[int(proc.name)] = int(re.search(r"PPid:\s+(\d+)", status).group(1))
    return found


def test_ray_extracts_4_shards_and_survives_a_killed_worker(tmp_path, reference):
    cache = tmp_path / "cache"
    env = dict(os.environ, RAY_ADDRESS="", PYTHONUNBUFFERED="1")
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = Path("/tmp") / f"ray-graft-{os.getpid()}"  # Ray's socket paths must stay short
    subprocess.run(
        [ray_bin, "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        check=True, capture_output=True, env=env, timeout=120,
    )
    killed = {}
    try:
        run = subprocess.Popen(
            [sys.executable, str(DEPLOY / "ray" / "extract.py"), str(FLOWERS),
             "--cache-dir", str(cache), "--shards", "4", "--address", "auto",
             "--graft", GRAFT_BIN, "--cpus-per-task", "1", "--summary", str(tmp_path / "summary.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )

        def kill_one_worker():
            # Once a shard has committed rows, SIGKILL the Ray worker of a running graft.
            deadline = time.time() + 240
            while time.time() < deadline and run.poll() is None:
                children = graft_children(cache)
                if children and any(cache.rglob("shard-*.safetensors")):
                    pid, worker = sorted(children.items())[0]
                    os.kill(worker, signal.SIGKILL)
                    killed["worker"], killed["graft"] = worker, pid
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=kill_one_worker)
        killer.start()
        stdout, stderr = run.communicate(timeout=600)
        killer.join()
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, stderr
    assert killed, "no Ray worker was running graft to kill"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["shard"] for r in summary["done"]] == ["0/4", "1/4", "2/4", "3/4"]
    assert not summary["failed"]
    # The killed worker's graft died with it (no orphan writing on).
    assert not Path(f"/proc/{killed['graft']}").exists()
    assert "0 corrupt" in cli("cache", "verify", "--cache-dir", cache)
    cli("cache", "compact", "--cache-dir", cache)
    assert_same_rows(cache, reference)
    # Training on the merged cache gives the same head as on the single-process one.
    heads = []
    for name, features in [("ray", cache), ("single", reference)]:
        cli("train", FLOWERS, "--recipe", "head", "--cache-dir", features, "--out", tmp_path / name)
        heads.append(hashlib.sha256((tmp_path / name / "head.safetensors").read_bytes()).hexdigest())
    assert heads[0] == heads[1]


def test_slurm_job_array_script_runs_each_task(tmp_path):
    script = (DEPLOY / "slurm" / "extract.sbatch").read_text()
    first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script, re.M).groups())
    assert "--shard auto" in script
    data = small_flowers(tmp_path / "flowers", 8)
    cache, single = tmp_path / "cache", tmp_path / "single"
    count = last - first + 1
    for task in range(first, last + 1):
        env = dict(
            os.environ, DATA=str(data), CACHE=str(cache), GRAFT=GRAFT_BIN,
            SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_MIN=str(first),
            SLURM_ARRAY_TASK_COUNT=str(count), SLURM_CPUS_PER_TASK="1",
        )
        out = subprocess.run(["bash", str(DEPLOY / "slurm" / "extract.sbatch")],
                             capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert f"shard {task - first}/{count}:" in out.stderr
    cli("extract", data, "--cache-dir", single)
    # Disjoint shards: one row per image without compaction.
    assert_same_rows(cache, single)


def test_kubernetes_indexed_job_runs_each_index(tmp_path):
    job = yaml.safe_load((DEPLOY / "k8s" / "extract-job.yaml").read_text())
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    command = container["command"] + container.get("args", [])
    assert command[0] == "graft"
    assert command[command.index("--shards") + 1] == str(spec["completions"])
    data = small_flowers(tmp_path / "flowers", 8)
    cache, single = tmp_path / "cache", tmp_path / "single"
    # The pod's volumes, mounted here as the test's folders.
    mounts = {m["mountPath"]: {"data": data, "cache": cache}[m["name"]]
              for m in container["volumeMounts"]}
    local = [GRAFT_BIN] + [str(mounts.get(arg, arg)) for arg in command[1:]]
    for index in range(spec["completions"]):
        out = subprocess.run(local, capture_output=True, text=True,
                             env=dict(os.environ, JOB_COMPLETION_INDEX=str(index)))
        assert out.returncode == 0, f"{shlex.join(local)}: {out.stderr}"
        assert f"shard {index}/{spec['completions']}:" in out.stderr
    cli("extract", data, "--cache-dir", single)
    assert_same_rows(cache, single)
