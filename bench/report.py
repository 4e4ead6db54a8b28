#!/usr/bin/env python3
"""Turn the JSON lines of one bench/run.sh run into a markdown table.

    report.py forward.jsonl [--load-before "0.10 0.20 0.30"] [--graft-version "graft 0.1.0"] > forward.md

Each input line is one measurement from `graft bench forward --json` or peers.py. With
several rounds per (tool, model), the table uses the median images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TOOLS = ("graft", "pytorch", "onnxruntime")
TOOL_NAMES = {"graft": "graft", "pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def busy(load_before: str) -> bool:
    """True when the 1-minute load average at the start was high enough to skew a 2-thread run."""
    try:
        return float(load_before.split()[0]) > 1.0
    except (IndexError, ValueError):
        return False


def median(records: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in records)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(records: list[dict[str, Any]], load_before: str, graft_version: str) -> str:
    # (model, tool) -> measurements, models in the order they were run.
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    models: list[str] = []
    for r in records:
        by_key[(r["backbone"], r["tool"])].append(r)
        if r["backbone"] not in models:
            models.append(r["backbone"])

    def images_per_sec(model: str, tool: str) -> float | None:
        rs = by_key.get((model, tool))
        return median(rs, "images_per_sec") if rs else None

    first = records[0]
    iters = next((r["iters"] for r in records if "iters" in r), "?")  # graft's JSON has no "iters"
    rounds = max(len(rs) for rs in by_key.values())
    versions = [graft_version] if graft_version else []
    for tool in ("pytorch", "onnxruntime"):
        version = next((r["version"] for r in records if r["tool"] == tool), None)
        if version:
            versions.append(f"{TOOL_NAMES[tool]} {version}")
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Forward pass (inference), images/s (higher is better)",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} logical CPUs. "
        f"Batch {first['batch_size']}, {first['threads']} threads for every tool, "
        f"1 warm-up + {iters} timed iterations, {rounds} round(s) (median). {', '.join(versions)}.",
        f"Load average (1/5/15 min) before: {load_before or 'n/a'}, after: {load_after}."
        + (" **Other work was running: the numbers are noisy.**" if busy(load_before) else ""),
        "",
        "| model | graft img/s | PyTorch img/s | ONNX Runtime img/s | graft/PyTorch | graft/ORT | graft CPU/wall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        graft = images_per_sec(model, "graft")
        torch = images_per_sec(model, "pytorch")
        ort = images_per_sec(model, "onnxruntime")
        graft_records = by_key.get((model, "graft"))
        graft_cpu = median(graft_records, "cpu_over_wall") if graft_records else None
        resolution = next(r["resolution"] for r in records if r["backbone"] == model)
        lines.append(
            f"| {model} ({resolution} px) | {number(graft)} | {number(torch)} | {number(ort)} "
            f"| {ratio(graft, torch)} | {ratio(graft, ort)} | {number(graft_cpu, 2)} |"
        )

    lines += [
        "",
        "Details (medians): CPU/wall = process CPU time / wall time (2.0 = both threads busy); "
        "peak RSS of the whole process, MB.",
        "",
        "| model | tool | img/s | CPU/wall | peak RSS MB |",
        "|---|---|---:|---:|---:|",
    ]
    for model in models:
        for tool in TOOLS:
            rs = by_key.get((model, tool))
            if not rs:
                continue
            lines.append(
                f"| {model} | {TOOL_NAMES[tool]} | {median(rs, 'images_per_sec'):.1f} "
                f"| {median(rs, 'cpu_over_wall'):.2f} | {median(rs, 'peak_rss_mb'):.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--load-before", default="", help="load average when the run started")
    parser.add_argument("--graft-version", default="", help="output of `graft --version`")
    args = parser.parse_args()
    records = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    if not records:
        sys.exit(f"report.py: no measurements in {args.jsonl}")
    sys.stdout.write(render(records, args.load_before, args.graft_version))


if __name__ == "__main__":
    main()
