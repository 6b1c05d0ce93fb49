"""Serving in-memory data by batch indexing vs a DataLoader collating samples one by one.

Both iterate the same order of the same normalized tensors (one epoch, batch 64, no
workers); prints samples per second and the ratio. The batches are checked to be equal.
"""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from ptool.core.config import TrainConfig
from ptool.core.data import build_data, make_loader


def _epoch_seconds(batches) -> tuple[float, list]:
    start = time.perf_counter()
    out = list(batches)
    return time.perf_counter() - start, out


def main() -> None:
    for spec in (TrainConfig(), TrainConfig(data="synthetic", shape="3x32x32", samples=20000)):
        bundle = build_data(spec)
        order = torch.randperm(len(bundle.train), generator=torch.Generator().manual_seed(0))
        indexed_s, indexed = _epoch_seconds(make_loader(bundle.train, spec, order, train=True))
        collated = DataLoader(bundle.train, batch_size=spec.batch_size, sampler=order.tolist())
        collated_s, reference = _epoch_seconds(collated)
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(indexed, reference, strict=True)
        )
        n = len(order)
        print(
            f"{spec.data} {bundle.info.input_shape} x {n}: batch indexing "
            f"{n / indexed_s:,.0f} samples/s, DataLoader collation {n / collated_s:,.0f} "
            f"samples/s -> {collated_s / indexed_s:.1f}x faster"
        )


if __name__ == "__main__":
    main()
