#!/usr/bin/env bash
# Every test of graft: the weights the tests need, the Rust suites (unit, integration, doc
# examples, examples/), then the Python package built as a wheel, installed into a fresh
# virtual environment and tested with pytest against the command line.
set -euo pipefail
cd "$(dirname "$0")/.."

# docs/benchmarks.md and the README's headline table are rendered from bench/results/*.jsonl;
# they must not drift from the records (this renders, it never reruns a benchmark).
python3 bench/report.py --all bench/results --check

# One build for everything: the tests' feature set is the Python package's too (see the
# dev-dependencies in Cargo.toml), and target/release/graft is the binary the tests run.
cargo test --release --no-run
target/release/graft weights fetch efficientnet-lite0 efficientnet-lite1 efficientnet-lite2
cargo test --release

venv=target/python-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# pillow is the reference of the resize (python/tests/test_preprocess.py); onnx and onnxruntime
# check the graphs of `graft export` (python/tests/test_export.py); ray and
# pyyaml run the cluster deployments of deploy/ (python/tests/test_deploy.py).
"$venv/bin/pip" install -q "maturin>=1.5,<2" numpy pillow pytest scikit-learn tqdm onnx onnxruntime ray pyyaml
rm -rf target/wheels
"$venv/bin/maturin" build --release -q -m python/Cargo.toml -o target/wheels
"$venv/bin/pip" install -q target/wheels/graft-*.whl
GRAFT_BIN="$PWD/target/release/graft" "$venv/bin/pytest" -q python/tests
