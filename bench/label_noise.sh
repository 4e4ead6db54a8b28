#!/usr/bin/env bash
# Label issues of `graft doctor` against known label noise, next to cleanlab.
#
# 1. Detection: the labels of ../shared/data/flowers flipped at 5% and 10% (seeded; each flipped
#    image gets another class chosen uniformly) in `path,label` CSVs (no photo is copied).
#    `graft doctor --json --out DIR` on each with efficientnet-lite0 features; precision and
#    recall of its flagged set and AUROC of its score against the known flips, and the same for
#    cleanlab (`cleanlab.filter.find_label_issues` on `cross_val_predict(LogisticRegression(),
#    method="predict_proba")`, 5 stratified folds) on the same cached features (exported by
#    examples/label_issues.rs); and cleanlab on the model graft fits (standardised features,
#    C = 1/1000), to tell the method from the model.
# 2. Time "from cached features to the list": graft (examples/label_issues.rs `time`) and
#    cleanlab + scikit-learn on the flowers features and on synthetic features of the same width
#    (1280), ROWS_SCALE rows (default 1500 and 50000); graft alone at GRAFT_ONLY_ROWS (default
#    100000) with its peak RSS and seconds per 10k rows.
# 3. It pays: a test set of 20% of each class with clean labels that no training sees; each of
#    RECIPES trained on the other 80% with clean labels, with the 10%-noisy labels, and with the
#    noisy labels and `--exclude` of doctor's label_issues.csv (doctor run on the noisy 80%);
#    `graft evaluate` of each on the clean test set.
#
# Environment:
#   VENV=target/labels-venv   Python venv with numpy, scikit-learn and cleanlab (made if missing)
#   WORK=target/label-noise   where the CSVs, exports, runs and synthetic features go
#   SEED=0                    seed of the flips and the test split
#   ROWS_SCALE="1500 50000"   synthetic sizes timed for graft and cleanlab
#   GRAFT_ONLY_ROWS=100000    synthetic size timed for graft alone ("" to skip)
#   SEEDS="0 1 2"             seeds of the three trainings of "it pays" (averaged)
#   RECIPES="head logreg"     recipes of "it pays"
#   NO_BUILD=1                do not run cargo build
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
VENV="${VENV:-$REPO_DIR/target/labels-venv}"
WORK="${WORK:-$REPO_DIR/target/label-noise}"
SEED="${SEED:-0}"
ROWS_SCALE="${ROWS_SCALE:-1500 50000}"
GRAFT_ONLY_ROWS="${GRAFT_ONLY_ROWS-100000}"
SEEDS="${SEEDS:-0 1 2}"
RECIPES="${RECIPES:-head logreg}"
DATA="$REPO_DIR/../shared/data/flowers"
GRAFT="$REPO_DIR/target/release/graft"
EXAMPLE="$REPO_DIR/target/release/examples/label_issues"
BACKBONE=(--backbone efficientnet-lite0)

if ! "$VENV/bin/python" -c "import numpy, sklearn, cleanlab" 2>/dev/null; then
    echo "label_noise.sh: creating $VENV with numpy, scikit-learn and cleanlab" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet numpy scikit-learn cleanlab
fi
PY=("$VENV/bin/python" "$BENCH_DIR/label_noise.py")
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO_DIR" && cargo build --release && cargo build --release --example label_issues)
fi
mkdir -p "$WORK"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
"$GRAFT" weights fetch efficientnet-lite0 >/dev/null

"${PY[@]}" make "$DATA" "$WORK" --seed "$SEED"

echo
echo "== detection on flowers (1500 images, efficientnet-lite0 features)"
for tag in 5 10; do
    rate="0.$(printf %02d "$tag")"
    "$GRAFT" doctor "$WORK/noisy$tag.csv" "${BACKBONE[@]}" --json --out "$WORK/doctor$tag" \
        > "$WORK/doctor$tag.json" || true
    "$EXAMPLE" export "$WORK/noisy$tag.csv" "$WORK/export$tag" "${BACKBONE[@]}" >/dev/null
    "${PY[@]}" score "$WORK" "$rate" "$WORK/export$tag" "$WORK/doctor$tag" > "$WORK/score$tag.json"
    "$VENV/bin/python" - "$WORK/score$tag.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['rate']:.0%} noise: {r['flipped']} of {r['images']} labels flipped")
for name in ("graft", "cleanlab", "cleanlab_same_model"):
    s = r[name]
    print(f"  {name:19s} flagged {s['flagged']:4d}  precision {s['precision']:.3f}  "
          f"recall {s['recall']:.3f}  AUROC {s['auroc']:.4f}  "
          f"ranking by score: precision {s['precision_at_recall_0.8']:.3f} at recall 0.8")
print(f"  flagged by graft and cleanlab: {r['both_flagged']}")
PY
done

echo
echo "== time from cached features to the list (5 folds)"
time_both() {  # FEATURES LABELS NAME
    "$EXAMPLE" time "$1" "$2" > "$WORK/graft-time.json"
    "${PY[@]}" cleanlab "$1" "$2" > "$WORK/cleanlab-time.json"
    "$VENV/bin/python" - "$WORK/graft-time.json" "$WORK/cleanlab-time.json" "$3" <<'PY'
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{sys.argv[3]}: {g['rows']} rows: graft {g['seconds']:.2f} s (peak RSS {g['peak_rss_mb']:.0f} MB), "
      f"cleanlab + scikit-learn {c['seconds']:.2f} s (peak RSS {c['peak_rss_mb']:.0f} MB): "
      f"graft {c['seconds'] / g['seconds']:.2f}x faster")
PY
}
time_both "$WORK/export5/features.npy" "$WORK/export5/labels.npy" "flowers 5%"
for rows in $ROWS_SCALE; do
    "${PY[@]}" synth "$WORK/synth" "$rows" 1280 5 0.05
    time_both "$WORK/synth/features.npy" "$WORK/synth/labels.npy" "synthetic"
    "${PY[@]}" overlap "$WORK/synth" "$WORK/graft-time.json" "$WORK/cleanlab-time.json"
done
if [ -n "$GRAFT_ONLY_ROWS" ]; then
    "${PY[@]}" synth "$WORK/synth" "$GRAFT_ONLY_ROWS" 1280 5 0.05
    "$EXAMPLE" time "$WORK/synth/features.npy" "$WORK/synth/labels.npy" > "$WORK/graft-time.json"
    "$VENV/bin/python" - "$WORK/graft-time.json" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
print(f"synthetic: {g['rows']} rows: graft {g['seconds']:.1f} s, "
      f"{g['seconds_per_10k_rows']:.2f} s per 10k rows, peak RSS {g['peak_rss_mb']:.0f} MB")
PY
fi
rm -rf "$WORK/synth"

echo
echo "== it pays: evaluated on a clean held-out test set (20% of each class)"
"$GRAFT" doctor "$WORK/train_noisy10.csv" "${BACKBONE[@]}" --json --out "$WORK/doctor-train10" \
    > "$WORK/doctor-train10.json" || true
train_eval() {  # RECIPE NAME SEED DATA [EXTRA...]
    local recipe="$1" name="$1-$2-$3" seed="$3" data="$4"
    shift 4
    rm -rf "$WORK/run-$name"
    "$GRAFT" train "$data" "${BACKBONE[@]}" --recipe "$recipe" --seed "$seed" -o "$WORK/run-$name" \
        "$@" > "$WORK/train-$name.log" 2>&1
    "$GRAFT" evaluate "$WORK/test.csv" --model "$WORK/run-$name" \
        --output "$WORK/eval-$name.json" > /dev/null 2>&1
}
# Each seed is another split of the 80% into train / early-stopping validation and another
# training; the test set stays the same.
for recipe in $RECIPES; do
    for seed in $SEEDS; do
        train_eval "$recipe" clean "$seed" "$WORK/train_clean.csv"
        train_eval "$recipe" noisy "$seed" "$WORK/train_noisy10.csv"
        train_eval "$recipe" excluded "$seed" "$WORK/train_noisy10.csv" \
            --exclude "$WORK/doctor-train10/label_issues.csv"
    done
done
first="${RECIPES%% *}-excluded-${SEEDS%% *}"
grep -h "excluded\|listed" "$WORK/train-$first.log" | sed 's/^/  /' || true
"$VENV/bin/python" - "$WORK" "$RECIPES" $SEEDS <<'PY'
import json, os, sys
work, recipes, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
for recipe in recipes:
    acc = {n: [json.load(open(os.path.join(work, f"eval-{recipe}-{n}-{s}.json")))["metrics"]["accuracy"]
               for s in seeds] for n in ("clean", "noisy", "excluded")}
    mean = {n: sum(a) / len(a) for n, a in acc.items()}
    print(f"  recipe {recipe}:")
    for n, a in acc.items():
        print(f"    {n:9s} test accuracy {mean[n]:.4f} (seeds {', '.join(f'{x:.4f}' for x in a)})")
    lost = mean["clean"] - mean["noisy"]
    back = mean["excluded"] - mean["noisy"]
    share = f"{back / lost:.0%} of it" if lost > 0 else "noise cost nothing to recover"
    print(f"    noise cost {lost:+.4f}; --exclude recovered {back:+.4f} ({share})")
PY
