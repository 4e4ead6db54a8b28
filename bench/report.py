#!/usr/bin/env python3
"""Benchmark results as data: one run's table, the committed records, and the pages made from them.

    report.py forward.jsonl [--load-before "0.10 0.20 0.30"] [--graft-version "graft 0.1.0"] > forward.md
        One bench/run.sh run as a markdown table. Each input line is one measurement from
        `graft bench forward --json` or peers.py; with several rounds per (tool, model), the
        table uses the median images/s. Lines with "what": "text" (`graft bench text`,
        `peers.py transformers-text`: prompts/s of CLIP's text tower) go to a second table.

    report.py --record forward|train_step RUN.jsonl --command "NO_BUILD=1 bash bench/run.sh" [--load-before ...]
        Appends the run's rows to bench/results/<date>-<cpu>.jsonl as self-describing records
        (suite, date, git commit, machine: CPU model, ISA flags, logical CPUs, threads; command).
        A forward run's text rows are recorded as suite "text".

    report.py --all bench/results [--write | --check]
        Renders docs/benchmarks.md from every record (stdout, or --write it and the README's
        headline table between its <!-- bench:headline --> markers; --check exits 1 when either
        file differs from what the records give, so the pages cannot drift from the data).
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

TOOLS = ("graft", "graft-baseline", "pytorch", "onnxruntime", "transformers")
TOOL_NAMES = {"graft": "graft", "graft-baseline": "graft (baseline)", "pytorch": "PyTorch",
              "onnxruntime": "ONNX Runtime", "transformers": "transformers"}
# Column-key prefix of each tool in the recorded rows.
PREFIXES = {"graft": "graft", "graft-baseline": "baseline", "pytorch": "pytorch", "onnxruntime": "ort",
            "transformers": "transformers"}


def is_text(record: dict[str, Any]) -> bool:
    """A text-embedding measurement (prompts/s), not a forward pass (images/s)."""
    return record.get("what") == "text"


def model_name(backbone: str) -> str:
    """graft names a repository-folder backbone by its path (bench/out/clip_vit_b32); the peers
    by the folder's name. The table uses the name."""
    return Path(backbone).name if "/" in backbone else backbone


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
    forward = [r for r in records if not is_text(r)]
    text = [r for r in records if is_text(r)]
    parts = []
    if forward:
        parts.append(render_forward(forward, load_before, graft_version))
    if text:
        parts.append(render_text(text, load_before, graft_version, with_machine=not forward))
    return "\n".join(parts)


def machine_line() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, {os.cpu_count()} logical CPUs."


def load_line(load_before: str) -> str:
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Load average (1/5/15 min) before: {load_before or 'n/a'}, after: {load_after}."
            + (" **Other work was running: the numbers are noisy.**" if busy(load_before) else ""))


def versions_of(records: list[dict[str, Any]], graft_version: str, tools: tuple[str, ...]) -> list[str]:
    versions = [graft_version] if graft_version else []
    for tool in tools:
        version = next((r["version"] for r in records if r["tool"] == tool), None)
        if version:
            versions.append(f"{TOOL_NAMES[tool]} {version}")
    return versions


def render_forward(records: list[dict[str, Any]], load_before: str, graft_version: str) -> str:
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
    has_baseline = any(r["tool"] == "graft-baseline" for r in records)
    iters = next((r["iters"] for r in records if "iters" in r), "?")  # graft's JSON has no "iters"
    rounds = max(len(rs) for rs in by_key.values())
    versions = versions_of(records, graft_version, ("pytorch", "onnxruntime"))
    lines = [
        "# Forward pass (inference), images/s (higher is better)",
        "",
        f"{machine_line()} "
        f"Batch {first['batch_size']}, {first['threads']} threads for every tool, "
        f"1 warm-up + {iters} timed iterations, {rounds} round(s) (median). {', '.join(versions)}.",
        load_line(load_before),
        "",
        "| model | graft img/s | PyTorch img/s | ONNX Runtime img/s | graft/PyTorch | graft/ORT | graft CPU/wall |"
        + (" baseline img/s | graft/baseline |" if has_baseline else ""),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if has_baseline else ""),
    ]
    for model in models:
        graft = images_per_sec(model, "graft")
        torch = images_per_sec(model, "pytorch")
        ort = images_per_sec(model, "onnxruntime")
        graft_records = by_key.get((model, "graft"))
        graft_cpu = median(graft_records, "cpu_over_wall") if graft_records else None
        resolution = next(r["resolution"] for r in records if r["backbone"] == model)
        baseline = images_per_sec(model, "graft-baseline")
        lines.append(
            f"| {model} ({resolution} px) | {number(graft)} | {number(torch)} | {number(ort)} "
            f"| {ratio(graft, torch)} | {ratio(graft, ort)} | {number(graft_cpu, 2)} |"
            + (f" {number(baseline)} | {ratio(graft, baseline)} |" if has_baseline else "")
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


def render_text(records: list[dict[str, Any]], load_before: str, graft_version: str, with_machine: bool) -> str:
    """The text-tower rows: prompts/s of graft and of transformers, and their ratio."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    models: list[str] = []
    for r in records:
        by_key[(r["backbone"], r["tool"])].append(r)
        if r["backbone"] not in models:
            models.append(r["backbone"])

    def stat(model: str, tool: str, key: str) -> float | None:
        rs = by_key.get((model, tool))
        return median(rs, key) if rs else None

    first = records[0]
    iters = next((r["iters"] for r in records if "iters" in r), "?")
    rounds = max(len(rs) for rs in by_key.values())
    versions = versions_of(records, graft_version, ("transformers",))
    lines = [
        "# Text embeddings (CLIP text tower + projection), prompts/s (higher is better)",
        "",
        (f"{machine_line()} " if with_machine else "")
        + f"{first['batch_size']} new prompts per iteration (CLIP's ImageNet templates, the same strings "
        f"for both), tokenizing included, {first['threads']} threads, 1 warm-up + {iters} timed iterations, "
        f"{rounds} round(s) (median). {', '.join(versions)}."
        + (f" transformers pads each batch to its longest prompt ({padded} tokens); graft pads per chunk of 64."
           if (padded := next((r["padded_length"] for r in records if "padded_length" in r), None)) else ""),
    ]
    if with_machine:
        lines.append(load_line(load_before))
    lines += [
        "",
        "| model | graft prompts/s | transformers prompts/s | graft/transformers | graft CPU/wall "
        "| transformers CPU/wall | graft peak RSS MB | transformers peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        graft, peer = stat(model, "graft", "images_per_sec"), stat(model, "transformers", "images_per_sec")
        graft_rss, peer_rss = stat(model, "graft", "peak_rss_mb"), stat(model, "transformers", "peak_rss_mb")
        lines.append(
            f"| {model} | {number(graft)} | {number(peer)} | {ratio(graft, peer)} "
            f"| {number(stat(model, 'graft', 'cpu_over_wall'), 2)} | {number(stat(model, 'transformers', 'cpu_over_wall'), 2)} "
            f"| {number(graft_rss, 0)} | {number(peer_rss, 0)} |"
        )
    return "\n".join(lines) + "\n"


# ---- Results as data: records in bench/results, rendered into docs/benchmarks.md. ----

REPO_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_DIR / "bench" / "results"
BENCHMARKS_PAGE = REPO_DIR / "docs" / "benchmarks.md"
README = REPO_DIR / "README.md"
HEADLINE_START = "<!-- bench:headline -->"
HEADLINE_END = "<!-- /bench:headline -->"
# The ISA flags that decide which kernels run (and so what a number means).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
RECORDED_SUITES = {"forward", "train_step"}

# suite -> (section title, anchor, what the rows are, columns as (header, key, digits)).
# A key missing from a row shows as "n/a"; ratios are computed from the rates when absent.
SUITES: dict[str, tuple[str, str, str, list[tuple[str, str, int | None]]]] = {
    "forward": ("Forward pass (inference)", "forward",
                "images/s, batch 32 unless noted, 2 threads for every tool (`bench/run.sh`, `graft bench forward`)",
                [("model", "model", None), ("graft img/s", "graft_ips", 1), ("PyTorch img/s", "pytorch_ips", 1),
                 ("ONNX Runtime img/s", "ort_ips", 1), ("graft/PyTorch", "graft_over_pytorch", 2),
                 ("graft/ORT", "graft_over_ort", 2), ("graft CPU/wall", "graft_cpu_wall", 2),
                 ("graft peak RSS MB", "graft_rss_mb", 0)]),
    "text": ("Text embeddings (CLIP text tower)", "text-embeddings",
             "prompts/s, 1,000 new prompts per iteration (CLIP's ImageNet templates), tokenizing included, "
             "2 threads (`bench/run.sh`, `graft bench text` vs Hugging Face transformers)",
             [("model", "model", None), ("graft prompts/s", "graft_ips", 1),
              ("transformers prompts/s", "transformers_ips", 1), ("graft/transformers", "graft_over_transformers", 2),
              ("graft CPU/wall", "graft_cpu_wall", 2), ("transformers CPU/wall", "transformers_cpu_wall", 2),
              ("graft peak RSS MB", "graft_rss_mb", 0), ("transformers peak RSS MB", "transformers_rss_mb", 0)]),
    "train_step": ("Fine-tuning train step", "train-step",
                   "forward + backward + AdamW of every layer, batch 16, 224 px, BatchNorm frozen, 2 threads (`bench/train_step.sh`)",
                   [("model", "model", None), ("graft img/s", "graft_ips", 2), ("PyTorch img/s", "pytorch_ips", 2),
                    ("graft/PyTorch", "graft_over_pytorch", 2), ("graft CPU/wall", "graft_cpu_wall", 2),
                    ("PyTorch CPU/wall", "pytorch_cpu_wall", 2), ("graft peak RSS MB", "graft_rss_mb", 0),
                    ("PyTorch peak RSS MB", "pytorch_rss_mb", 0)]),
    "extract": ("Extraction, folder of JPEGs to cached features", "extract",
                "end to end: hashing, decoding, resizing, the network, writing the cache (`bench/extract.sh`)",
                [("tool", "tool", None), ("data", "data", None), ("images", "images", None), ("img/s", "ips", 1),
                 ("CPU/wall", "cpu_wall", 2), ("peak RSS MB", "rss_mb", 0)]),
    "scale": ("Extraction at scale", "scale", "`graft --threads 2 extract` into a fresh cache (`bench/scale.sh`)",
              [("images", "images", None), ("runs", "runs", None), ("wall s (fastest)", "wall_s", 1),
               ("ms / image", "ms_per_image", 1), ("peak RSS MB (largest)", "rss_mb", 0)]),
    "serve": ("Serving", "serving", "`graft serve` under `graft-load` clients on loopback (`bench/serve.sh`)",
              [("clients", "clients", None), ("img/s", "ips", 2), ("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2),
               ("ratio", "ratio", 2)]),
    "recipes": ("Recipes on the flowers", "recipes", "`../shared/data/flowers`, validation split of 300 photos",
                [("recipe", "recipe", None), ("validation accuracy", "val_accuracy", 4), ("macro F1", "macro_f1", 4),
                 ("fit time (features cached)", "fit", None)]),
    "finetune": ("Fine-tuning on the flowers", "fine-tuning", "validation accuracy and wall time of the whole command",
                 [("plan", "plan", None), ("head round alone", "head_round", 4), ("fine-tuned", "finetuned", 4),
                  ("wall time", "wall", None)]),
    "simclr": ("SimCLR adaptation on the flowers", "simclr", "linear probes before and after `graft pretrain --method simclr`",
               [("probe", "probe", None), ("before", "before", 4), ("after", "after", 4), ("wall time", "wall", None)]),
    "camera_accuracy": ("Camera-sized photos", "camera-sized-photos",
                        "the head recipe on the flowers and on 12 MP copies of them (`bench/camera_accuracy.sh`)",
                        [("photos", "photos", None), ("validation images", "val_images", None),
                         ("accuracy original", "acc_original", None), ("accuracy camera-sized", "acc_camera", None),
                         ("difference (points)", "difference", 2)]),
}


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in present]
    except OSError:
        pass
    return []


def git_commit() -> str | None:
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def this_machine(threads: Any) -> dict[str, Any]:
    return {"cpu": cpu_model(), "isa": cpu_flags(), "logical_cpus": os.cpu_count(), "threads": threads,
            "kernel": platform.release()}


def run_rows(records: list[dict[str, Any]]) -> list[tuple[str | None, dict[str, Any]]]:
    """One row per (kind, model) from one run's raw measurements (medians over rounds), each with
    the suite it belongs to when not the run's own ("text" for text-embedding rows)."""
    by_key: dict[tuple[bool, str, str], list[dict[str, Any]]] = defaultdict(list)
    keys: list[tuple[bool, str]] = []
    for r in records:
        by_key[(is_text(r), r["backbone"], r["tool"])].append(r)
        if (is_text(r), r["backbone"]) not in keys:
            keys.append((is_text(r), r["backbone"]))
    rows = []
    for text, model in keys:
        first = next(r for r in records if is_text(r) == text and r["backbone"] == model)
        label = f"{model} ({first['batch_size']} prompts)" if text else f"{model} ({first['resolution']} px)"
        row: dict[str, Any] = {"model": label}
        for tool, prefix in PREFIXES.items():
            rs = by_key.get((text, model, tool))
            if rs:
                row[f"{prefix}_ips"] = round(median(rs, "images_per_sec"), 2)
                row[f"{prefix}_cpu_wall"] = round(median(rs, "cpu_over_wall"), 2)
                row[f"{prefix}_rss_mb"] = round(median(rs, "peak_rss_mb"))
        row["rounds"] = max(len(by_key.get((text, model, t), [])) for t in PREFIXES)
        rows.append(("text" if text else None, row))
    return rows


def append_records(suite: str, records: list[dict[str, Any]], command: str, load_before: str,
                   graft_version: str, note: str) -> Path:
    now = datetime.now(timezone.utc)
    machine = this_machine(records[0].get("threads"))
    versions = {r["tool"]: r["version"] for r in records if r.get("version")}
    if graft_version:
        versions["graft"] = graft_version
    slug = "".join(c if c.isalnum() else "-" for c in machine["cpu"].lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    path = RESULTS_DIR / f"{now:%Y-%m-%d}-{slug}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        for row_suite, row in run_rows(records):
            record = {"suite": row_suite or suite, "date": f"{now:%Y-%m-%d %H:%M} UTC", "machine": machine,
                      "command": command, "git_commit": git_commit(), "versions": versions,
                      "load_before": load_before or None}
            if note:
                record["note"] = note
            record["row"] = row
            out.write(json.dumps(record) + "\n")
    return path


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(results_dir.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"report.py: {path}:{number}: not JSON: {e}")
            if record.get("suite") not in SUITES:
                raise SystemExit(f"report.py: {path}:{number}: unknown suite {record.get('suite')!r} (known: {', '.join(SUITES)})")
            records.append(record)
    return records


def tables(records: list[dict[str, Any]], suite: str) -> list[list[dict[str, Any]]]:
    """The suite's records grouped into tables (one run on one machine), newest first."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        if r["suite"] != suite:
            continue
        key = (r["date"], r["machine"]["cpu"], r["command"], r.get("table"), r.get("git_commit"))
        groups.setdefault(key, []).append(r)
    # "unknown" dates sort last; otherwise ISO dates sort newest first.
    return sorted(groups.values(), key=lambda g: (g[0]["date"] != "unknown", g[0]["date"]), reverse=True)


def cell(row: dict[str, Any], key: str, digits: int | None) -> str:
    value = row.get(key)
    if value is None and key.startswith("graft_over_"):
        peer = key.removeprefix("graft_over_")
        a, b = row.get("graft_ips"), row.get(f"{peer}_ips")
        value = a / b if a is not None and b else None
    if value is None:
        return "n/a"
    if digits is None or isinstance(value, str):
        return str(value)
    return f"{value:.{digits}f}" if digits else f"{value:.0f}"


def caption(group: list[dict[str, Any]]) -> str:
    first = group[0]
    machine = first["machine"]
    flags = ", ".join(machine.get("isa") or []) or "flags not recorded"
    where = f"**{machine['cpu']}** ({flags}; {machine.get('threads') or '?'} threads of {machine.get('logical_cpus') or '?'} logical CPUs)"
    parts = [f"{first['date']}, {where}", f"`{first['command']}`"]
    if first.get("table"):
        parts.append(first["table"])
    if first.get("git_commit"):
        parts.append(f"commit {first['git_commit'][:12]}")
    if first.get("source"):
        parts.append(first["source"][0].upper() + first["source"][1:])
    if first.get("load_before"):
        parts.append(f"Load average before: {first['load_before']}")
    text = ". ".join(parts) + "."
    if first.get("note"):
        text += f" {first['note'][0].upper()}{first['note'][1:]}."
    return text


def markdown_table(group: list[dict[str, Any]], columns: list[tuple[str, str, int | None]]) -> list[str]:
    rows = [r["row"] for r in group]
    used = [c for c in columns if any(cell(row, c[1], c[2]) != "n/a" for row in rows)]
    lines = ["| " + " | ".join(h for h, _, _ in used) + " |",
             "|" + "|".join("---" if d is None else "---:" for _, _, d in used) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, k, d) for _, k, d in used) + " |")
    return lines


def benchmarks_page(records: list[dict[str, Any]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python3 bench/report.py --all bench/results --write` from bench/results/*.jsonl;",
        "     edit the records or the script, not this page (tests/all.sh checks that they agree). -->",
        "",
        "Every table comes from one run on one machine and says which: the CPU and its ISA flags, the",
        "date, the command, and the commit where it was recorded. Numbers from different machines or",
        "runs are not comparable: on 2 cores the machine's speed moves from run to run, so only ratios",
        "within one run mean much. Tables marked as transcribed were measured by earlier sessions and",
        "copied from the README of that commit, with the machine as it was named there. How to run a",
        "suite and add its results: `bench/README.md`. Why the numbers are what they are:",
        "[performance notes](internals/performance-notes.md).",
    ]
    for suite, (title, anchor, what, columns) in SUITES.items():
        groups = tables(records, suite)
        if not groups:
            continue
        lines += ["", f'<a id="{anchor}"></a>', "", f"## {title}", "", f"{what[0].upper()}{what[1:]}, newest first."]
        for group in groups:
            lines += ["", caption(group), ""] + markdown_table(group, columns)
    return "\n".join(lines) + "\n"


def headline(records: list[dict[str, Any]]) -> str:
    """The README's table: the newest forward-pass run that has a ratio against a peer."""
    groups = [g for g in tables(records, "forward") if any(cell(r["row"], "graft_over_ort", 2) != "n/a" for r in g)]
    if not groups:
        return "(no forward-pass results in bench/results yet)\n"
    group = groups[0]
    columns = [("model", "model", None), ("graft img/s", "graft_ips", 1), ("graft/PyTorch", "graft_over_pytorch", 2),
               ("graft/ONNX Runtime", "graft_over_ort", 2)]
    machine = group[0]["machine"]
    flags = ", ".join(machine.get("isa") or []) or "flags not recorded"
    lines = [f"Forward pass, batch 32, 2 threads for every tool; {machine['cpu']} ({flags}), "
             f"{group[0]['date']} (`{group[0]['command']}`):", ""]
    lines += markdown_table(group, columns)
    return "\n".join(lines) + "\n"


def with_headline(readme: str, table: str) -> str:
    start, end = readme.find(HEADLINE_START), readme.find(HEADLINE_END)
    if start < 0 or end < start:
        raise SystemExit(f"report.py: README.md has no {HEADLINE_START} ... {HEADLINE_END} markers")
    return readme[: start + len(HEADLINE_START)] + "\n" + table + readme[end:]


def results_pages(results_dir: Path, write: bool, check: bool) -> int:
    records = load_results(results_dir)
    page = benchmarks_page(records)
    if not (write or check):
        sys.stdout.write(page)
        return 0
    readme_now = README.read_text()
    readme = with_headline(readme_now, headline(records))
    page_now = BENCHMARKS_PAGE.read_text() if BENCHMARKS_PAGE.exists() else ""
    if check:
        stale = [p.name for p, now, want in ((BENCHMARKS_PAGE, page_now, page), (README, readme_now, readme)) if now != want]
        if stale:
            print(f"report.py: {' and '.join(stale)} differ from {results_dir}: run "
                  f"`python3 bench/report.py --all bench/results --write`", file=sys.stderr)
            return 1
        return 0
    BENCHMARKS_PAGE.write_text(page)
    README.write_text(readme)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", type=Path, nargs="?", help="one run's raw JSON lines")
    parser.add_argument("--load-before", default="", help="load average when the run started")
    parser.add_argument("--graft-version", default="", help="output of `graft --version`")
    parser.add_argument("--record", choices=sorted(RECORDED_SUITES), help="append the run to bench/results as this suite")
    parser.add_argument("--command", default="", help="the command the run came from (with --record)")
    parser.add_argument("--note", default="", help="anything a reader of the table should know (with --record)")
    parser.add_argument("--all", type=Path, metavar="RESULTS_DIR", help="render docs/benchmarks.md from these records")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="with --all: write docs/benchmarks.md and the README headline")
    mode.add_argument("--check", action="store_true", help="with --all: exit 1 if either differs from the records")
    args = parser.parse_args()
    if args.all:
        sys.exit(results_pages(args.all, write=args.write, check=args.check))
    if args.jsonl is None:
        parser.error("give a run's JSON lines, or --all RESULTS_DIR")
    records = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    if not records:
        sys.exit(f"report.py: no measurements in {args.jsonl}")
    for r in records:
        r["backbone"] = model_name(r["backbone"])
    if args.record:
        path = append_records(args.record, records, args.command, args.load_before, args.graft_version, args.note)
        print(f"report.py: {args.record} rows appended to {path}", file=sys.stderr)
        return
    sys.stdout.write(render(records, args.load_before, args.graft_version))


if __name__ == "__main__":
    main()
