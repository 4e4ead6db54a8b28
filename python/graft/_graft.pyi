from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, PathLike]
_Images = Union[_Path, npt.NDArray[np.uint8], Sequence[Union[_Path, npt.NDArray[np.uint8]]]]
_Progress = Optional[Callable[..., Any]]

__version__: str

class GraftError(Exception):
    """An error of graft: the message names the file or value at fault."""

class ImageError(GraftError):
    """Images that could not be read or decoded."""

    paths: List[str]
    results: List[Any]

class Backbone:
    def __init__(self, name: str = "efficientnet-lite0", weights: Optional[_Path] = None) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def feature_dim(self) -> int: ...
    @property
    def resolution(self) -> int: ...
    def features(self, images: _Images) -> npt.NDArray[np.float32]: ...
    def preprocess(self, images: _Images, uint8: bool = False) -> npt.NDArray[Any]: ...

class Model:
    @property
    def classes(self) -> List[str]: ...
    @property
    def run_dir(self) -> str: ...
    @property
    def recipe(self) -> str: ...
    @property
    def backbone(self) -> str: ...
    @property
    def temperature(self) -> float: ...
    def metrics(self) -> Dict[str, Any]: ...
    def predict(self, images: _Images, top: int = 5) -> List[List[Dict[str, Any]]]: ...
    def preprocess(self, images: _Images, uint8: bool = False) -> npt.NDArray[Any]: ...
    def evaluate(self, folder: _Path, progress: _Progress = None) -> Dict[str, Any]: ...

def open(run_dir: _Path, weights: Optional[_Path] = None) -> Model: ...
def extract(
    folder: _Path,
    backbone: str = "efficientnet-lite0",
    weights: Optional[_Path] = None,
    cache_dir: Optional[_Path] = None,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    progress: _Progress = None,
) -> Tuple[npt.NDArray[np.float32], List[str], List[_Path]]: ...
def train(folder: _Path, recipe: str = "head", **options: Any) -> Model: ...
