"""The data sources behind `--data SPEC`: a registry of names and `prefix:PATH` specs
(their seeding: `common`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ptool.core.data.builtin import digits, synthetic
from ptool.core.data.files import csv_source, tensors_source
from ptool.core.data.info import DataBundle
from ptool.core.data.vision import TORCHVISION, imagefolder, torchvision_dataset
from ptool.core.errors import UsageError, unknown_name

SOURCES: dict[str, Callable[[Any], DataBundle]] = {"digits": digits, "synthetic": synthetic}
PREFIXED: dict[str, tuple[Callable[[Any, str], DataBundle], str]] = {
    "imagefolder": (imagefolder, "PATH"),
    "csv": (csv_source, "PATH.csv"),
    "tensors": (tensors_source, "PATH.pt"),
}
VALID_SPECS = (*SOURCES, *TORCHVISION, *(f"{p}:{example}" for p, (_, example) in PREFIXED.items()))


def build_data(config: Any, *, image_channels: int = 3) -> DataBundle:
    """The train/val datasets and DataInfo for `config.data`; an image folder is read with
    `image_channels` (3: RGB, 1: grayscale, for eval of a one-channel model)."""
    spec = config.data
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in PREFIXED:
        if not arg:
            raise UsageError(f"--data {prefix}: needs a path, e.g. {prefix}:{PREFIXED[prefix][1]}")
        path = str(Path(arg).expanduser())  # `imagefolder:~/x`
        if prefix == "imagefolder":
            return imagefolder(config, path, channels=image_channels)
        return PREFIXED[prefix][0](config, path)
    if spec in TORCHVISION:
        return torchvision_dataset(config, spec)
    if spec in SOURCES:
        return SOURCES[spec](config)
    raise unknown_name("data source", spec, VALID_SPECS)
