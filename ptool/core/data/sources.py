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


def parse_spec(spec: str) -> tuple[str, str | None]:
    """(prefix, path) of `prefix:PATH`, (name, None) of a named source; an unknown source or a
    prefix without its path is refused."""
    prefix, sep, arg = spec.partition(":")
    if sep and prefix in PREFIXED:
        if not arg:
            raise UsageError(f"--data {prefix}: needs a path, e.g. {prefix}:{PREFIXED[prefix][1]}")
        return prefix, str(Path(arg).expanduser())  # `imagefolder:~/x`
    if spec in TORCHVISION or spec in SOURCES:
        return spec, None
    raise unknown_name("data source", spec, VALID_SPECS)


def build_data(
    config: Any, *, image_channels: int = 3, csv_columns: list[str] | None = None
) -> DataBundle:
    """The train/val datasets and DataInfo for `config.data`; an image folder is read with
    `image_channels` (3: RGB, 1: grayscale, for eval of a one-channel model), a CSV's feature
    columns limited to `csv_columns` (a model's, for eval of a held-out file)."""
    name, path = parse_spec(config.data)
    if name == "imagefolder":
        return imagefolder(config, path, channels=image_channels)
    if name == "csv":
        return csv_source(config, path, csv_columns)
    if path is not None:
        return PREFIXED[name][0](config, path)
    if name in TORCHVISION:
        return torchvision_dataset(config, name)
    return SOURCES[name](config)
