from os import PathLike
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._graft import Backbone as Backbone
from ._graft import GraftError as GraftError
from ._graft import ImageError as ImageError
from ._graft import Model as Model
from ._graft import ZeroShot as ZeroShot
from ._graft import __version__ as __version__
from ._graft import preprocess as preprocess

_Path = Union[str, PathLike]

def extract(
    folder: _Path,
    backbone: str = "efficientnet-lite0",
    *,
    weights: Optional[_Path] = None,
    cache_dir: Optional[_Path] = None,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 32,
    progress: Any = True,
) -> Tuple[npt.NDArray[np.float32], List[str], List[str]]: ...
def train(folder: _Path, recipe: str = "head", *, progress: Any = True, **options: Any) -> Model: ...
def open(run_dir: _Path, weights: Optional[_Path] = None) -> Model: ...
