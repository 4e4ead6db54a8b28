"""Helper of bench/label_noise.sh: makes noisy-label CSVs, scores graft's and cleanlab's label
issues against the known flips, and times cleanlab + scikit-learn on the same features.

    label_noise.py make DATA OUT --seed S          # CSVs of clean and flipped labels
    label_noise.py score OUT RATE EXPORT GRAFT_DIR  # precision / recall / AUROC, graft vs cleanlab
    label_noise.py synth OUT ROWS DIM CLASSES RATE  # synthetic features with flipped labels
    label_noise.py cleanlab FEATURES LABELS         # time cleanlab + sklearn; one JSON line
    label_noise.py overlap OUT GRAFT_JSON CLEANLAB_JSON  # agreement on synthetic features
"""

import csv
import json
import os
import resource
import sys
import time
import warnings

import numpy as np

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
RATES = (0.05, 0.10)


def listing(data):
    """(absolute path, class) of every image of an ImageFolder tree, sorted."""
    rows = []
    for cls in sorted(os.listdir(data)):
        folder = os.path.join(data, cls)
        if not os.path.isdir(folder) or cls.startswith("."):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                rows.append((os.path.abspath(os.path.join(folder, name)), cls))
    return rows


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label"])
        out.writerows(rows)


def flip(rows, rate, rng):
    """Labels of round(rate * n) rows chosen at random, each moved to another class chosen
    uniformly; returns the new rows and the set of flipped paths."""
    classes = sorted({c for _, c in rows})
    chosen = rng.choice(len(rows), size=round(rate * len(rows)), replace=False)
    noisy = list(rows)
    for i in chosen:
        path, cls = rows[i]
        others = [c for c in classes if c != cls]
        noisy[i] = (path, others[rng.integers(len(others))])
    return noisy, {rows[i][0] for i in chosen}


def make(data, out, seed):
    os.makedirs(out, exist_ok=True)
    rows = listing(data)
    write_csv(os.path.join(out, "clean.csv"), rows)
    rng = np.random.default_rng(seed)
    for rate in RATES:
        noisy, flipped = flip(rows, rate, rng)
        tag = f"{round(rate * 100)}"
        write_csv(os.path.join(out, f"noisy{tag}.csv"), noisy)
        with open(os.path.join(out, f"flipped{tag}.txt"), "w") as f:
            f.write("".join(p + "\n" for p in sorted(flipped)))
    # "It pays": a held-out test set (20% of each class, clean labels) that no training sees,
    # and the other 80% with clean and with 10%-noisy labels.
    noisy10 = dict(listing_rows(os.path.join(out, "noisy10.csv")))
    test, train = [], []
    for cls in sorted({c for _, c in rows}):
        members = [r for r in rows if r[1] == cls]
        order = rng.permutation(len(members))
        cut = round(0.2 * len(members))
        test += [members[i] for i in order[:cut]]
        train += [members[i] for i in order[cut:]]
    train.sort()
    write_csv(os.path.join(out, "test.csv"), sorted(test))
    write_csv(os.path.join(out, "train_clean.csv"), train)
    write_csv(os.path.join(out, "train_noisy10.csv"), [(p, noisy10[p]) for p, _ in train])
    changed = sum(noisy10[p] != c for p, c in train)
    print(f"{len(rows)} images; test {len(test)}, train {len(train)} ({changed} flipped in train)")


def listing_rows(path):
    with open(path) as f:
        reader = csv.DictReader(f)
        return [(r["path"], r["label"] if "label" in r else r.get("given")) for r in reader]


def auroc(is_issue, badness):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_issue, badness))


def precision_at_recall(is_issue, badness, recall=0.8):
    """Precision of the shortest top of the ranking by `badness` that reaches `recall`."""
    order = np.argsort(-np.asarray(badness), kind="stable")
    hits = np.cumsum(np.asarray(is_issue)[order])
    k = int(np.searchsorted(hits, recall * hits[-1] - 1e-9)) + 1
    return float(hits[k - 1] / k)


def precision_recall(flagged, truth):
    hits = len(flagged & truth)
    return (hits / len(flagged) if flagged else float("nan")), hits / len(truth)


def cleanlab_issues(features, labels, seed=0, same_model=False):
    """cleanlab's label issues and self-confidence on out-of-fold logistic regression; seconds.
    `same_model`: standardised features and C = 1/1000, the model graft fits (alpha 1000)
    instead of scikit-learn's defaults."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    # scikit-learn's defaults, as cleanlab's examples use them: lbfgs stops at 100 iterations
    # on these unscaled features and warns each fold; the warning is expected, not shown.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    started = time.perf_counter()
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    model = LogisticRegression()
    if same_model:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(StandardScaler(), LogisticRegression(C=1e-3, max_iter=200))
    probabilities = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")
    issues = find_label_issues(labels, probabilities)
    seconds = time.perf_counter() - started
    quality = get_label_quality_scores(labels, probabilities)  # self-confidence by default
    return issues, quality, seconds


def score(out, rate, export, graft_dir):
    tag = f"{round(float(rate) * 100)}"
    flipped = set(open(os.path.join(out, f"flipped{tag}.txt")).read().split("\n")) - {""}
    scores = listing_rows_scores(os.path.join(graft_dir, "label_scores.csv"))
    flagged = {r["path"] for r in csv.DictReader(open(os.path.join(graft_dir, "label_issues.csv")))}
    paths = [p for p in scores]
    is_flip = np.array([p in flipped for p in paths])
    graft_auc = auroc(is_flip, -np.array([scores[p] for p in paths]))
    graft_p80 = precision_at_recall(is_flip, -np.array([scores[p] for p in paths]))
    gp, gr = precision_recall(flagged, flipped)

    features = np.load(os.path.join(export, "features.npy"))
    labels = np.load(os.path.join(export, "labels.npy"))
    export_paths = open(os.path.join(export, "paths.txt")).read().split("\n")[: len(labels)]
    cl_flip = np.array([p in flipped for p in export_paths])
    peers = {}
    for name, same_model in (("cleanlab", False), ("cleanlab_same_model", True)):
        issues, quality, seconds = cleanlab_issues(features, labels, same_model=same_model)
        found = {p for p, i in zip(export_paths, issues) if i}
        cp, cr = precision_recall(found, flipped)
        peers[name] = {"flagged": len(found), "precision": cp, "recall": cr,
                       "auroc": auroc(cl_flip, -quality),
                       "precision_at_recall_0.8": precision_at_recall(cl_flip, -quality),
                       "seconds": seconds}
        if not same_model:
            cl_flagged = found
    result = {
        "rate": float(rate),
        "images": len(paths),
        "flipped": len(flipped),
        "graft": {"flagged": len(flagged), "precision": gp, "recall": gr, "auroc": graft_auc,
                  "precision_at_recall_0.8": graft_p80},
        **peers,
        "both_flagged": len(flagged & cl_flagged),
    }
    print(json.dumps(result))


def listing_rows_scores(path):
    with open(path) as f:
        return {r["path"]: float(r["score"]) for r in csv.DictReader(f)}


def synth(out, rows, dim, classes, rate, seed=0):
    """Class centroids plus unit Gaussian noise, `rate` of the labels flipped."""
    rows, dim, classes, rate = int(rows), int(dim), int(classes), float(rate)
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0.0, 0.06, size=(classes, dim)).astype(np.float32)
    truth = rng.integers(classes, size=rows)
    features = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 10_000):
        end = min(rows, start + 10_000)
        features[start:end] = centroids[truth[start:end]] + rng.standard_normal(
            (end - start, dim), dtype=np.float32
        )
    labels = truth.copy()
    chosen = rng.choice(rows, size=round(rate * rows), replace=False)
    labels[chosen] = (truth[chosen] + rng.integers(1, classes, size=len(chosen))) % classes
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "features.npy"), features)
    np.save(os.path.join(out, "labels.npy"), labels.astype(np.int64))
    np.save(os.path.join(out, "flipped.npy"), np.sort(chosen))


def time_cleanlab(features, labels):
    features = np.load(features)
    labels = np.load(labels)
    issues, _, seconds = cleanlab_issues(features, labels)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(json.dumps({"rows": len(labels), "seconds": seconds, "peak_rss_mb": peak_mb,
                      "issues": [int(i) for i in np.flatnonzero(issues)]}))


def overlap(out, graft_json, cleanlab_json):
    flipped = set(np.load(os.path.join(out, "flipped.npy")).tolist())
    for name, path in (("graft", graft_json), ("cleanlab", cleanlab_json)):
        found = set(json.load(open(path))["issues"])
        p, r = precision_recall(found, flipped)
        print(f"  {name:8s} flagged {len(found):6d}  precision {p:.3f}  recall {r:.3f}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "make":
        make(args[0], args[1], int(args[3]) if len(args) > 3 else 0)
    elif command == "score":
        score(*args)
    elif command == "synth":
        synth(*args)
    elif command == "cleanlab":
        time_cleanlab(*args)
    elif command == "overlap":
        overlap(*args)
    else:
        sys.exit(__doc__)
