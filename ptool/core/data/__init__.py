"""Data sources: a config in, train/val datasets and the facts a checkpoint keeps out.

`build_data(config)` reads `config.data` (a registered name or a `prefix:PATH` spec),
`make_loader` serves batches in the order the engine chose, and `DataInfo` is everything a
later command (eval, predict, quantize, prune) needs to rebuild the model and the
preprocessing without loading the dataset again.
"""

from __future__ import annotations

from ptool.core.data.info import DataBundle, DataInfo
from ptool.core.data.loader import is_in_memory, make_loader
from ptool.core.data.sources import SOURCES, build_data
from ptool.core.data.transforms import AUGMENTATIONS, val_transform

__all__ = [
    "AUGMENTATIONS",
    "SOURCES",
    "DataBundle",
    "DataInfo",
    "build_data",
    "is_in_memory",
    "make_loader",
    "val_transform",
]
