"""Loss and metrics of a model over a dataset: the one evaluation every report uses.

Same metrics as the training engine's validation (`EpochMetrics`, torchmetrics), so a
figure printed by `quantize`/`prune`/`eval` compares with the run's own `val/...` values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptool.core.metrics import EpochMetrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    info: Any,
    loss_fn: nn.Module,
    device: torch.device | str = "cpu",
    *,
    prefix: str = "val",
) -> tuple[dict[str, float], list[list[int]] | None]:
    """({"val/loss": ..., "val/accuracy": ...}, confusion matrix or None) over every batch."""
    device = torch.device(device)
    metrics = EpochMetrics(info, device, prefix)
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            outputs = model(x)
            metrics.update(outputs, y, loss_fn(outputs, y))
    finally:
        model.train(was_training)
    return metrics.compute()
