"""graft: transfer learning for image classification, from Python.

The same library as the ``graft`` command line, and the same run directories and feature
cache::

    import graft

    backbone = graft.Backbone("efficientnet-lite0")
    rows = backbone.features(["photo.jpg"])            # numpy float32 [1, 1280]

    features, labels, paths = graft.extract("flowers")  # cached: a rerun reuses every row

    model = graft.train("flowers", recipe="head")       # or "logreg", "svm", "knn"
    model.predict(["rose.jpg"], top=3)
    model.evaluate("flowers-test")                       # dict of metrics
    graft.open("runs/flowers-head-1")                    # a run of `graft train`
    graft.preprocess(["photo.jpg"], "resnet50", uint8=True)  # the pixels the network sees

Computation runs with the GIL released. Progress bars are shown with tqdm when it is
installed (``progress=False`` hides them). Ctrl-C stops an extraction or a training after the
batch in flight (KeyboardInterrupt); every finished batch of features stays in the cache, so
calling again resumes.
"""

from os import PathLike
from typing import List, Optional, Tuple, Union

from . import _graft
from ._graft import Backbone, GraftError, ImageError, Model, ZeroShot, __version__, preprocess

__all__ = [
    "Backbone",
    "Model",
    "ZeroShot",
    "GraftError",
    "ImageError",
    "extract",
    "train",
    "open",
    "preprocess",
    "__version__",
]


class _Bars:
    """graft's progress events drawn as tqdm bars (notes printed above them)."""

    def __init__(self):
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bar = None

    def __call__(self, event, *args):
        if event == "start":
            phase, total, unit = args
            self._close()
            self._bar = self._tqdm(total=total, desc=phase, unit=unit.rstrip("s"))
        elif event == "advance" and self._bar is not None:
            self._bar.update(args[0])
        elif event == "status" and self._bar is not None:
            self._bar.set_postfix_str(args[0])
        elif event == "finish":
            self._close()
        elif event == "note":
            self._tqdm.write(args[0])

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _progress(progress):
    if progress is False:
        return None
    if callable(progress):
        return progress
    try:
        return _Bars()
    except ImportError:
        return None


Path = Union[str, PathLike]


def extract(
    folder: Path,
    backbone: str = "efficientnet-lite0",
    *,
    weights: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    progress=True,
) -> Tuple["numpy.ndarray", List[str], List[str]]:
    """Pooled features of the labelled images under ``folder`` (one sub-folder per class, or a
    CSV of ``path,label``), through graft's feature cache: ``(features, labels, paths)``.

    ``split`` picks ``"train"``, ``"val"`` (the split ``graft train`` makes with the same
    ``val_fraction`` and ``seed``) or ``"all"`` (train, then val). Unreadable images are left
    out and reported."""
    features, labels, paths = _graft.extract(
        folder,
        backbone=backbone,
        weights=weights,
        cache_dir=cache_dir,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        batch_size=batch_size,
        progress=_progress(progress),
    )
    return features, labels, [str(p) for p in paths]


def train(folder: Path, recipe: str = "head", *, progress=True, **options) -> Model:
    """Train a recipe on the labelled images under ``folder`` and return the model: recipe 2
    (``"head"``, ``"logreg"``, ``"svm"`` or ``"knn"`` on the frozen backbone's cached
    features) or recipe 3 (``"finetune"``: a head round, then gradual unfreezing). Options are
    those of ``graft train`` (``out``, ``backbone``, ``weights``, ``cache_dir``,
    ``val_fraction``, ``seed``, ``lr``, ``epochs``, ``batch_size``, ``dropout``,
    ``weight_decay``, ``label_smoothing``, ``patience``, ``balanced_class_weights``, ``alpha``,
    ``c``, ``k``, ``extract_batch_size``; for fine-tuning also ``backbone_lr``, ``lr_decay``,
    ``unfreeze``, ``stages``, ``epochs_per_stage``, ``schedule``, ``finetune_batch_size``,
    ``bn``, ``augment``, ``resume``); the run directory is the command line's."""
    return _graft.train(folder, recipe=recipe, progress=_progress(progress), **options)


def open(run_dir: Path, weights: Optional[Path] = None) -> Model:  # noqa: A001 (graft.open)
    """The model in a run directory written by ``graft train`` or :func:`train`."""
    return _graft.open(run_dir, weights=weights)
