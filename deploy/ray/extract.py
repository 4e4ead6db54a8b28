#!/usr/bin/env python3
"""Sharded `graft extract` on a Ray cluster: one Ray task per shard, each running the graft
binary on its part of the data (`--shard I/N`) into one shared feature cache.

    python deploy/ray/extract.py DATA --cache-dir CACHE --shards 16 [--address auto]
        [--cpus-per-task 2] [--graft /path/to/graft] [--max-retries 3] [--summary FILE]

DATA and CACHE must be the same paths on every node (a shared filesystem: NFS, Lustre, a
mounted bucket), and the graft binary must be installed on every node (or given by --graft).
A task whose worker dies (preempted node, OOM kill) is retried by Ray; the retry redoes only
the images its shard has not committed yet. When every shard is done, run
`graft cache compact --cache-dir CACHE` to merge the shards (rows that two attempts both
wrote are kept once), then `graft train DATA --cache-dir CACHE` as usual.

Prints one progress line per finished shard on stderr and a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import subprocess
import sys
import time

import ray


def _die_with_parent() -> None:
    """Linux: the graft process gets SIGKILL when the Ray worker that started it dies, so a
    killed worker leaves no orphan writing beside its retry."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@ray.remote
def extract_shard(graft: str, data: str, cache_dir: str, index: int, count: int, threads: int,
                  extra: list[str]) -> dict:
    """Run `graft extract --shard index/count`; its summary. Exit 1 means some images could
    not be decoded (named on stderr): the shard is done, those images have no row."""
    command = [graft, "--threads", str(threads), "extract", data, "--cache-dir", cache_dir,
               "--shard", f"{index}/{count}", *extra]
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, preexec_fn=_die_with_parent)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if out.returncode not in (0, 1) or " images: extracted " not in summary:
        # Raised, so that Ray retries the shard (retry_exceptions below).
        raise RuntimeError(
            f"shard {index}/{count}: {' '.join(command)} exited with {out.returncode}: "
            f"{out.stderr.strip()[-2000:]}"
        )
    return {
        "shard": f"{index}/{count}",
        "seconds": round(time.perf_counter() - start, 2),
        "summary": summary,
        "bad_images": [line for line in out.stderr.splitlines() if line.startswith("error: ")],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the labelled folder (same path on every node)")
    parser.add_argument("--cache-dir", required=True, help="the shared feature cache root")
    parser.add_argument("--shards", type=int, required=True, help="number of parts (tasks)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address ('auto' for a running cluster; default: "
                             "the cluster of RAY_ADDRESS, or a local one)")
    parser.add_argument("--cpus-per-task", type=int, default=1,
                        help="Ray num_cpus of each task, also graft's --threads")
    parser.add_argument("--graft", default="graft", help="the graft binary on the nodes")
    parser.add_argument("--max-retries", type=int, default=3,
                        help="times Ray retries a shard whose worker died or that failed")
    parser.add_argument("--summary", default=None,
                        help="also write the JSON summary to this file (Ray may print its own "
                             "messages on stdout)")
    parser.add_argument("extra", nargs="*", help="more graft extract options, after --")
    args = parser.parse_args()
    if args.shards < 1:
        parser.error("--shards must be at least 1")

    ray.init(address=args.address, log_to_driver=False)
    task = extract_shard.options(num_cpus=args.cpus_per_task, max_retries=args.max_retries,
                                 retry_exceptions=True)
    pending = {
        task.remote(args.graft, args.data, args.cache_dir, i, args.shards, args.cpus_per_task,
                    args.extra): i
        for i in range(args.shards)
    }
    start = time.perf_counter()
    done, failed = [], []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
            done.append(result)
            print(f"[{len(done) + len(failed)}/{args.shards}] shard {result['shard']}: "
                  f"{result['summary']} ({result['seconds']} s)", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 (a shard's last failure, after its retries)
            failed.append({"shard": f"{index}/{args.shards}", "error": str(e)})
            print(f"shard {index}/{args.shards} failed after {args.max_retries} retries: {e}",
                  file=sys.stderr)
    summary = {
        "shards": args.shards,
        "done": sorted(done, key=lambda r: int(r["shard"].split("/")[0])),
        "failed": failed,
        "seconds": round(time.perf_counter() - start, 2),
        "next": f"graft cache compact --cache-dir {args.cache_dir}",
    }
    print(json.dumps(summary, indent=2))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
