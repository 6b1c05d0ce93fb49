"""Epoch metrics with torchmetrics: exact over the whole epoch and across DDP ranks.

torchmetrics accumulates sufficient statistics (counts, sums) per batch and, under DDP,
all-reduces them in `compute()`, so an epoch's accuracy or R2 is the one over every sample,
not a mean of per-batch values. `ptool eval` builds the same collection.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr


def build_metrics(info: Any) -> torchmetrics.MetricCollection:
    """Classification: accuracy, macro precision/recall/F1, confusion matrix; regression:
    MAE, RMSE, R2."""
    if info.task == "classification":
        n = info.num_classes
        return torchmetrics.MetricCollection(
            {
                "accuracy": tmc.MulticlassAccuracy(num_classes=n, average="micro"),
                "precision": tmc.MulticlassPrecision(num_classes=n, average="macro"),
                "recall": tmc.MulticlassRecall(num_classes=n, average="macro"),
                "f1": tmc.MulticlassF1Score(num_classes=n, average="macro"),
                "confusion_matrix": tmc.MulticlassConfusionMatrix(num_classes=n),
            }
        )
    return torchmetrics.MetricCollection(
        {
            "mae": tmr.MeanAbsoluteError(),
            "rmse": tmr.MeanSquaredError(squared=False),
            "r2": tmr.R2Score(),
        }
    )


def metric_names(info: Any, prefix: str) -> list[str]:
    """The scalar names `EpochMetrics(prefix=...)` reports, e.g. val/loss, val/accuracy."""
    scalars = [name for name in build_metrics(info) if name != "confusion_matrix"]
    return [f"{prefix}/loss", *(f"{prefix}/{name}" for name in scalars)]


class EpochMetrics:
    """The loss over the epoch (batch sums over their weights: `optim.loss_sum`) plus the
    task's metrics, under one prefix ("val", ...)."""

    def __init__(self, info: Any, device: torch.device, prefix: str):
        self.prefix = prefix
        self.task = info.task
        # the summed loss and the weight it is a mean over (`optim.loss_sum`); a NaN batch loss
        # keeps the epoch's NaN: torchmetrics' default warns and drops it
        self.loss_sum = torchmetrics.SumMetric(nan_strategy=math.nan).to(device)
        self.loss_weight = torchmetrics.SumMetric(nan_strategy=math.nan).to(device)
        self.collection = build_metrics(info).to(device)

    def update(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        loss_sum: torch.Tensor,
        weight: torch.Tensor | int,
    ) -> None:
        """`loss_sum` over `weight`: the batch's share of the epoch's loss (`optim.loss_sum`)."""
        outputs = outputs.detach().float()
        self.loss_sum.update(loss_sum.detach().float())
        self.loss_weight.update(torch.as_tensor(weight, dtype=torch.float32))
        if self.task == "regression":  # R2 averages over outputs; one output is a flat vector
            targets = targets.float().reshape(outputs.shape)
            if outputs.shape[-1] == 1:
                outputs, targets = outputs.flatten(), targets.flatten()
        self.collection.update(outputs, targets)

    def compute(self) -> tuple[dict[str, float], list[list[int]] | None]:
        """(scalars keyed "prefix/name", confusion matrix or None); then resets for next epoch."""
        weight = float(self.loss_weight.compute())
        total = float(self.loss_sum.compute())
        values = {f"{self.prefix}/loss": total / weight if weight else math.nan}
        confusion = None
        for name, value in self.collection.compute().items():
            if name == "confusion_matrix":
                confusion = value.long().tolist()
            else:
                values[f"{self.prefix}/{name}"] = float(value)
        self.loss_sum.reset()
        self.loss_weight.reset()
        self.collection.reset()
        return values, confusion
