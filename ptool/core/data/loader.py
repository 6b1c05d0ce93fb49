"""Serving batches in the order the engine chose (so a resume can start mid-epoch).

In-memory sources (a `TensorDataset` of x, y with no per-sample transform) are served by
indexing whole batches, `x[idx]`, which is many times faster than collating samples one by
one; everything else goes through a torch `DataLoader` with PyTorch's options.
"""

from __future__ import annotations

import math
import os
import random
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset


def is_in_memory(dataset: Dataset) -> bool:
    """True when the dataset is served by batch indexing: it exposes `.tensors` (x, y)."""
    return isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2


def default_num_workers(dataset: Dataset) -> int:
    """0 for in-memory data; else one worker per spare core, at most 4."""
    if is_in_memory(dataset):
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class TensorBatches:
    """Batches of (x[idx], y[idx]) over `order`; len() is the number of batches.

    On CUDA the tensors are copied to the device once per dataset and device (not per
    batch): the host-to-device traffic of an epoch becomes zero.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        order: torch.Tensor,
        batch_size: int,
        drop_last: bool,
        device: torch.device,
    ):
        self.x, self.y = _staged(dataset, device)
        self.order = order.to(self.x.device)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.order) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


_STAGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _staged(dataset: TensorDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.tensors
    if device.type != "cuda":
        return x, y
    cache = _STAGED.setdefault(dataset, {})
    if str(device) not in cache:
        cache[str(device)] = (x.to(device), y.to(device))
    return cache[str(device)]


class OrderSampler(Sampler[int]):
    """Yields the engine's order; swappable so a persistent DataLoader can be reused."""

    def __init__(self, order: torch.Tensor):
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and `random` in each worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# Loaders with persistent workers are kept per dataset and reused with the next order.
_PERSISTENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def make_loader(
    dataset: Dataset, config: Any, order: torch.Tensor, *, train: bool, device: Any = "cpu"
):
    """Batches of `dataset[order[i:i + batch_size]]`, in that order (see module docstring)."""
    device = torch.device(device)
    order = torch.as_tensor(order, dtype=torch.long)
    drop_last = bool(train and config.drop_last)
    if is_in_memory(dataset):
        return TensorBatches(dataset, order, config.batch_size, drop_last, device)
    workers = config.num_workers if config.num_workers is not None else default_num_workers(dataset)
    pin = config.pin_memory if config.pin_memory is not None else device.type == "cuda"
    persistent = bool(config.persistent_workers and workers > 0)
    key = (config.batch_size, drop_last, workers, pin)
    if persistent and dataset in _PERSISTENT and _PERSISTENT[dataset][0] == key:
        loader = _PERSISTENT[dataset][1]
        loader.sampler.order = order
        return loader
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=OrderSampler(order),
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent,
        worker_init_fn=seed_worker if workers > 0 else None,
    )
    if persistent:
        _PERSISTENT[dataset] = (key, loader)
    return loader
