"""Built-in sources that need no files: scikit-learn's digits and a synthetic generator."""

from __future__ import annotations

from typing import Any

import torch

from ptool.core.data.common import (
    check_num_classes,
    check_task,
    data_seed,
    in_memory_bundle,
)
from ptool.core.data.info import DataBundle
from ptool.core.errors import UsageError


def digits(config: Any) -> DataBundle:
    """scikit-learn's handwritten digits: 1797 8x8 images (0-16, scaled to [0,1]), 10 classes."""
    from sklearn.datasets import load_digits

    check_task(config, "digits", ("classification",))
    check_num_classes(config, "digits", 10)
    pixels, labels = load_digits(return_X_y=True)
    x = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels, dtype=torch.long)
    return in_memory_bundle(
        config,
        source="digits",
        data=(x, y),
        task="classification",
        num_classes=10,
        class_names=[str(i) for i in range(10)],
    )


def parse_shape(text: str) -> list[int]:
    try:
        shape = [int(part) for part in text.lower().split("x")]
    except ValueError:
        shape = []
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise UsageError(
            f"invalid --shape {text!r}", hint="use CxHxW for images (3x32x32) or N for N features"
        )
    return shape


def synthetic(config: Any) -> DataBundle:
    """Learnable seeded data of any size: class prototypes plus noise, or a random teacher."""
    task = check_task(config, "synthetic", ("classification", "regression"))
    shape = parse_shape(config.shape)
    num_classes = config.num_classes if config.num_classes is not None else 10
    if task == "classification" and num_classes < 2:
        raise UsageError(f"--num-classes must be at least 2, got {num_classes}")
    n = config.samples
    if n < 2:
        raise UsageError(f"--samples must be at least 2, got {n}")
    gen = torch.Generator().manual_seed(data_seed(config))
    y = torch.randint(num_classes, (n,), generator=gen)
    if len(shape) == 3:
        c, h, w = shape
        coarse = torch.rand(num_classes, c, max(1, h // 4), max(1, w // 4), generator=gen)
        protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")
        x = (protos[y] + 0.3 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)
    else:
        x = torch.randn(n, shape[0], generator=gen)
    if task == "regression" or len(shape) == 1:
        hidden = torch.randn(x[0].numel(), 32, generator=gen) / x[0].numel() ** 0.5
        outputs = 1 if task == "regression" else num_classes
        head = torch.randn(32, outputs, generator=gen) / 32**0.5
        teacher = torch.tanh(x.flatten(1) @ hidden) @ head
        y = teacher.float() if task == "regression" else teacher.argmax(dim=1)
    return in_memory_bundle(
        config,
        source="synthetic",
        data=(x, y),
        task=task,
        num_classes=num_classes if task == "classification" else None,
        class_names=[str(i) for i in range(num_classes)] if task == "classification" else None,
    )
