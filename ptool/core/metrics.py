"""Epoch metrics: exact over the whole epoch and across DDP ranks.

Each batch adds to sufficient statistics (a confusion matrix; sums of errors and targets; the
loss's sum and weight) and `compute()` all-reduces them once under DDP, so an epoch's accuracy
or R2 is the one over every sample, not a mean of per-batch values.

The definitions are torchmetrics' (`MulticlassAccuracy`, macro `MulticlassPrecision`/`Recall`/
`F1Score`, `MeanAbsoluteError`, `MeanSquaredError(squared=False)`, `R2Score`), tested against
it and scikit-learn. torchmetrics is not imported: its import pulls in torchvision,
torch._dynamo and scipy.signal, which cost more than torch itself on every command that
trains or evaluates, for statistics this small.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ptool.core.runtime import sum_dtype

# in the order torchmetrics' MetricCollection listed them (the keys of summary.json, ...)
CLASSIFICATION = ("accuracy", "f1", "precision", "recall")
REGRESSION = ("mae", "r2", "rmse")


def metric_names(info: Any, prefix: str) -> list[str]:
    """The scalar names `EpochMetrics(prefix=...)` reports, e.g. val/loss, val/accuracy."""
    scalars = CLASSIFICATION if info.task == "classification" else REGRESSION
    return [f"{prefix}/loss", *(f"{prefix}/{name}" for name in scalars)]


def _divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0 (torchmetrics' and scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


def per_class_scores(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 of each class from a confusion matrix (rows: true class,
    columns: predicted class), 0 where a class was never predicted or never present."""
    confusion = confusion.double()
    hits = confusion.diagonal()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    return {
        "precision": _divide(hits, predicted),
        "recall": _divide(hits, actual),
        "f1": _divide(2 * hits, predicted + actual),
    }


def classification_scores(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy over every sample, and the macro average of each per-class score over the
    classes that were predicted or present (torchmetrics' macro average skips the rest)."""
    seen = (confusion.sum(0) + confusion.sum(1)) > 0
    total = int(confusion.sum())
    scores = {"accuracy": int(confusion.diagonal().sum()) / total if total else 0.0}
    for name, values in per_class_scores(confusion).items():
        scores[name] = float(values[seen].mean()) if seen.any() else 0.0
    return scores


def regression_scores(sums: torch.Tensor, count: float) -> dict[str, float]:
    """MAE and RMSE over every output value, and R2 averaged over the outputs; `sums` rows:
    |error|, error², target, target² per output. R2 follows torchmetrics for near-constant
    targets (1 for a perfect fit, else 0) and is NaN below two samples, where it has none."""
    abs_error, squared_error, target, target_squared = sums
    values = count * sums.shape[1]
    scores = {
        "mae": float(abs_error.sum() / values) if values else math.nan,
        "rmse": float((squared_error.sum() / values).sqrt()) if values else math.nan,
        "r2": math.nan,
    }
    if count >= 2:
        total = target_squared - target * (target / count)
        fits = ~torch.isclose(squared_error, torch.zeros_like(squared_error), atol=1e-4)
        varies = ~torch.isclose(total, torch.zeros_like(total), atol=1e-4)
        r2 = torch.where(fits & varies, 1 - squared_error / total.where(varies, 1), 1.0)
        scores["r2"] = float(torch.where(fits & ~varies, 0.0, r2).mean())
    return scores


class EpochMetrics:
    """The loss over the epoch (batch sums over their weights: `optim.loss_sum`) plus the
    task's metrics, under one prefix ("val", ...)."""

    def __init__(self, info: Any, device: torch.device | str, prefix: str):
        self.prefix = prefix
        self.task = info.task
        self.num_classes = info.num_classes
        device = torch.device(device)
        dtype = sum_dtype(device)
        self.loss = torch.zeros(2, device=device, dtype=dtype)  # summed loss, its weight
        self.count = torch.zeros((), device=device, dtype=dtype)  # samples
        if self.task == "classification":  # flat confusion matrix: true * n + predicted
            # int32 on MPS, whose index_put_ accumulates no int64 before torch 2.9
            counts = torch.int32 if device.type == "mps" else torch.long
            self.stats = torch.zeros(self.num_classes**2, device=device, dtype=counts)
        else:  # |error|, error², target, target² summed per output
            self.stats = torch.zeros(4, info.num_outputs, device=device, dtype=dtype)

    def update(
        self,
        outputs: torch.Tensor,
        targets: torch.Tensor,
        loss_sum: torch.Tensor,
        weight: torch.Tensor | int,
    ) -> None:
        """`loss_sum` over `weight`: the batch's share of the epoch's loss (`optim.loss_sum`);
        `outputs`: class scores (their argmax is the prediction) or regression values."""
        self.loss[0] += loss_sum.detach()
        self.loss[1] += weight
        self.count += len(outputs)
        outputs = outputs.detach()
        if self.task == "classification":
            cells = targets.long() * self.num_classes + outputs.argmax(dim=1)
            # accumulates deterministically: CUDA's bincount refuses --deterministic
            ones = torch.ones_like(cells, dtype=self.stats.dtype)
            self.stats.index_put_((cells,), ones, accumulate=True)
            return
        outputs = outputs.to(self.stats.dtype).reshape(len(outputs), -1)
        targets = targets.to(outputs.dtype).reshape(outputs.shape)
        error = outputs - targets
        self.stats += torch.stack([error.abs(), error.square(), targets, targets.square()]).sum(1)

    def compute(self) -> tuple[dict[str, float], list[list[int]] | None]:
        """(scalars keyed "prefix/name", confusion matrix or None); then resets for next
        epoch. Under DDP the sums of every rank, as torchmetrics' `compute()` syncs."""
        import torch.distributed as dist

        sums = [self.loss.clone(), self.count.clone(), self.stats.clone()]
        if dist.is_available() and dist.is_initialized():
            for tensor in sums:
                dist.all_reduce(tensor)
        (loss, weight), count, stats = (tensor.cpu() for tensor in sums)
        values = {"loss": float(loss / weight) if weight else math.nan}
        confusion = None
        if self.task == "classification":
            matrix = stats.long().reshape(self.num_classes, self.num_classes)
            values.update(classification_scores(matrix))
            confusion = matrix.tolist()
        else:
            values.update(regression_scores(stats, float(count)))
        for tensor in (self.loss, self.count, self.stats):
            tensor.zero_()
        names = CLASSIFICATION if self.task == "classification" else REGRESSION
        return {f"{self.prefix}/{name}": values[name] for name in ("loss", *names)}, confusion
