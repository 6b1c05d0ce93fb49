"""Serving batches in the order the engine chose (so a resume can start mid-epoch).

In-memory sources (a `TensorDataset` of x, y with no per-sample transform) are served by
indexing whole batches, `x[idx]`, which is many times faster than collating samples one by
one; everything else goes through a torch `DataLoader` with PyTorch's options.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from ptool.core.config import batch_count


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
        return batch_count(len(self.order), self.batch_size, drop_last=self.drop_last)

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


class OrderSampler(Sampler):
    """Yields the engine's order (with the epoch's seed, for `SeededSamples`); swappable so a
    persistent DataLoader can be reused."""

    def __init__(self, order: torch.Tensor, seed: int | None = None):
        self.order = order
        self.seed = seed

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices = self.order.tolist()
        return iter(indices if self.seed is None else [(i, self.seed) for i in indices])

    def __len__(self) -> int:
        return len(self.order)


class SeededSamples(Dataset):
    """`dataset[i]` with torch's CPU generator seeded from (epoch seed, i) for the call, so a
    sample's random transforms draw the same values whichever worker serves it, and after a
    resume mid-epoch (where the workers restart and a DataLoader draws new worker seeds)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        generator = torch.default_generator  # the CPU one only: manual_seed would seed CUDA
        state = generator.get_state()
        generator.manual_seed((seed * 6364136223846793005 + index) % 2**63)
        try:
            return self.dataset[index]
        finally:
            generator.set_state(state)


# Loaders with persistent workers are kept per dataset and reused with the next order, until
# the run ends (`release_loaders`): each loader holds its dataset, so no weak key would go.
_PERSISTENT: dict[Dataset, tuple[tuple, DataLoader]] = {}


def release_loaders() -> None:
    """Drop the kept loaders, so their worker processes exit: at the end of a run (prune's
    and quantize's fine-tunes run several in one process)."""
    _PERSISTENT.clear()


def _leave_signals_to_the_main_process(_worker_id: int) -> None:
    """A worker in a process group of its own: a terminal's Ctrl-C and a SIGTERM sent to the
    job's group (`kill -- -PGID`) reach the main process alone, which finishes its step, saves,
    and stops the workers. In the group, Ctrl-C made each worker print the training's notice,
    and SIGTERM killed them (torch's worker handler), failing the step being finished. The
    main process's own SIGTERM to a worker still ends it."""
    import os

    os.setpgid(0, 0)


def make_loader(
    dataset: Dataset,
    config: Any,
    order: torch.Tensor,
    *,
    train: bool,
    device: Any = "cpu",
    seed: int | None = None,
):
    """Batches of `dataset[order[i:i + batch_size]]`, in that order (see module docstring).

    `seed` (the engine's, per epoch) makes a DataLoader's randomness a function of it alone:
    each sample's transforms (`SeededSamples`) and the workers' seeds, none drawn from the
    global RNG, which the model's own randomness (dropout) keeps to itself."""
    device = torch.device(device)
    order = torch.as_tensor(order, dtype=torch.long)
    drop_last = bool(train and config.drop_last)
    if is_in_memory(dataset):
        return TensorBatches(dataset, order, config.batch_size, drop_last, device)
    workers = config.num_workers if config.num_workers is not None else default_num_workers(dataset)
    pin = config.pin_memory if config.pin_memory is not None else device.type == "cuda"
    persistent = bool(config.persistent_workers and workers > 0)
    key = (config.batch_size, drop_last, workers, pin, seed is None)
    if persistent and dataset in _PERSISTENT and _PERSISTENT[dataset][0] == key:
        loader = _PERSISTENT[dataset][1]
        loader.sampler.order, loader.sampler.seed = order, seed
        return loader
    loader = DataLoader(
        dataset if seed is None else SeededSamples(dataset),
        batch_size=config.batch_size,
        sampler=OrderSampler(order, seed),
        generator=None if seed is None else torch.Generator().manual_seed(seed),
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=persistent,
        worker_init_fn=_leave_signals_to_the_main_process,
    )
    if persistent:
        _PERSISTENT[dataset] = (key, loader)
    return loader
