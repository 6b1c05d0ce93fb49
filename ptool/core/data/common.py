"""What every source shares: seeded splits, per-sample transforms, in-memory bundles.

Seeding: every seeded choice (the synthetic data itself, validation splits) uses
`config.data_seed`, else `config.seed` (the engine draws and records one for an unseeded run,
so a rerun with that seed sees the same split), else 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from ptool.core.data.info import DataBundle, DataInfo
from ptool.core.data.transforms import (
    augmentations,
    check_augment,
    image_pipeline,
    normalize_tensor,
    tensor_stats,
)
from ptool.core.errors import UsageError, count

DEFAULT_VAL_FRACTION = 0.2


def data_seed(config: Any) -> int:
    for seed in (config.data_seed, config.seed):
        if seed is not None:
            return seed
    return 0


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random (train, val) partition of range(n), val holding round(n * fraction).
    Fraction 0 (eval --split all of a held-out file; users' --val-split is in (0, 1)) keeps
    every sample, however few, in train."""
    if fraction == 0:
        return torch.arange(n), torch.arange(0)
    if not 0 < fraction < 1:
        raise UsageError(f"--val-split must be between 0 and 1, got {fraction}")
    n_val = round(n * fraction)
    if n_val < 1 or n_val >= n:
        raise UsageError(
            f"a validation split of {fraction} of {n} samples leaves one side empty",
            hint="use more samples or another --val-split; eval --split all reads a held-out "
            "source whole",
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class TransformedSubset(Dataset):
    """`dataset[indices[i]]` with `transform` applied to the input (per-sample pipelines)."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor | None, transform: Callable):
        self.dataset = dataset
        self.indices = indices.tolist() if indices is not None else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.dataset[self.indices[i] if self.indices is not None else i]
        return self.transform(x), y


def check_task(config: Any, source: str, supported: tuple[str, ...]) -> str:
    if config.task != "auto" and config.task not in supported:
        raise UsageError(
            f"--task {config.task} is not available for {source}; valid: {', '.join(supported)}"
        )
    return config.task if config.task != "auto" else supported[0]


def missing_path_hint(path: Path) -> str | None:
    """For a relative data path that is not there: where it was looked for. (A run records
    --data as typed, so `eval`, `resume` or `prune` of it read the path from where they run.)"""
    if path.is_absolute():
        return None
    return (
        f"{path} is relative to {Path.cwd()}: run from the folder it was given in, or give its "
        "path from here"
    )


def check_num_classes(config: Any, source: str, found: int) -> None:
    if config.num_classes is not None and config.num_classes != found:
        raise UsageError(
            f"{source} has {count(found, 'class', 'classes')}, "
            f"not --num-classes {config.num_classes}",
            hint="drop --num-classes (it is read from the data)",
        )


# --- in-memory sources ---------------------------------------------------------------------


def _check_jitter_range(source: str, x: torch.Tensor) -> None:
    """torchvision's ColorJitter clamps float images to [0, 1]: other values (standardized
    tensors, 0-255 floats) would be flattened, silently, in training only."""
    low, high = (float(v) for v in torch.aminmax(x))
    if low < 0 or high > 1:
        raise UsageError(
            f"{source}: --augment color-jitter needs images in [0, 1], which torchvision clamps "
            f"them to; the training images hold values in [{low:g}, {high:g}]",
            hint="save uint8 pixels (0-255, scaled on load) or floats in [0, 1]",
        )


def _check_finite(
    source: str, x: torch.Tensor, y: torch.Tensor, row_name: Callable[[int], str]
) -> None:
    """NaN or infinite values would make the normalization statistics NaN and every loss NaN:
    refuse them at load, naming the first row that holds one."""
    for name, values in (("input", x), ("target", y)):
        if values.is_floating_point():
            bad = ~torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0])
                raise UsageError(
                    f"{source}: rows with NaN or infinite {name} values: {int(bad.sum())} "
                    f"(the first: {row_name(first)})",
                    hint="drop or fill those rows first",
                )


def in_memory_bundle(
    config: Any,
    *,
    source: str,
    data: tuple[torch.Tensor, torch.Tensor],
    task: str,
    num_classes: int | None,
    class_names: list[str] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    row_name: Callable[[int], str] = "row {}".format,
) -> DataBundle:
    """Split, normalize with the train split's statistics, keep (x, y) tensors in memory.

    `data` is split (seeded, --val-split or 0.2) unless the source has its own `val` and
    --val-split is not given. --image-size resizes the images once, here. With --augment the
    training split gets a per-sample transform (augment, then normalize) and is served by a
    DataLoader; validation stays in memory, normalized once. `row_name` numbers a row in
    errors (a CSV's line).
    """
    for x, y in (data, val) if val is not None else (data,):
        _check_finite(source, x, y, row_name)
    if val is None or config.val_split:  # 0: eval --split all, which keeps the file's own val
        data, val = _split_tensors(config, *data)
    (x_train, y_train), (x_val, y_val) = data, val
    is_image = x_train.dim() == 4
    check_augment(config.augment, is_image=is_image)
    if "color-jitter" in config.augment:
        _check_jitter_range(source, x_train)
    if config.image_size is not None:
        x_train, x_val = (resize_images(x, config.image_size) for x in (x_train, x_val))
    mean = std = None
    if config.normalize:
        mean, std = tensor_stats(x_train)
        x_val = normalize_tensor(x_val, mean, std)
    if config.augment:
        pipeline = image_pipeline(
            from_pil=False,
            size=None,
            augment=augmentations(config, x_train.shape[-2:]),
            mean=mean,
            std=std,
        )
        train_set: Dataset = TransformedSubset(TensorDataset(x_train, y_train), None, pipeline)
    else:
        x_norm = normalize_tensor(x_train, mean, std) if mean is not None else x_train
        train_set = TensorDataset(x_norm, y_train)
    info = DataInfo(
        task=task,
        input_shape=list(x_train.shape[1:]),
        num_outputs=num_classes if task == "classification" else int(y_train.shape[1]),
        num_classes=num_classes if task == "classification" else None,
        class_names=class_names,
        mean=mean,
        std=std,
        image_size=config.image_size,
        train_size=len(x_train),
        val_size=len(x_val),
        source=source,
    )
    return DataBundle(train=train_set, val=TensorDataset(x_val, y_val), info=info)


class TabularImageSize(UsageError):
    """--image-size asked of tabular data (eval names the model's shape instead)."""


class LabelsBeyondClasses(UsageError):
    """Labels past --num-classes (eval of held-out data names the model's classes instead)."""

    def __init__(self, source: str, needed: int, wanted: int):
        super().__init__(f"{source}: labels need {needed} classes, not --num-classes {wanted}")
        self.source, self.needed, self.wanted = source, needed, wanted


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a whole (N, C, H, W) tensor once (bilinear, antialiased) to size x size."""
    if x.dim() != 4:
        raise TabularImageSize("--image-size needs image data; this source is tabular")
    if size < 1:
        raise UsageError(f"--image-size must be positive, got {size}")
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def _split_tensors(config: Any, x: torch.Tensor, y: torch.Tensor):
    fraction = config.val_split if config.val_split is not None else DEFAULT_VAL_FRACTION
    train_idx, val_idx = split_indices(len(x), fraction, data_seed(config))
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
