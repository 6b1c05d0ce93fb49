"""Loss and optimizer from the run config, with PyTorch's own classes and parameter names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ptool.core.config import default_weight_decay
from ptool.core.errors import UsageError, unknown_name

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


class TaskLoss(nn.Module):
    """A torch criterion plus the target conversion it needs (one-hot for BCE on classes)."""

    def __init__(self, name: str, criterion: nn.Module, num_classes: int | None = None):
        super().__init__()
        self.name = name
        self.criterion = criterion
        self.one_hot_classes = num_classes

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.one_hot_classes is not None:
            targets = nn.functional.one_hot(targets, self.one_hot_classes).to(outputs.dtype)
        elif targets.dtype.is_floating_point and targets.dtype != outputs.dtype:
            # the wider of the two: bf16/fp16 outputs (autocast) meet float32 targets in
            # float32, not targets rounded to 8 bits of mantissa
            common = torch.promote_types(outputs.dtype, targets.dtype)
            outputs, targets = outputs.to(common), targets.to(common)
        loss = self.criterion(outputs, targets)
        if getattr(self.criterion, "reduction", "mean") == "sum":  # class-weighted cross-entropy
            return _weighted_mean(loss, self.criterion.weight[targets].sum())
        return loss

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the metrics read: the outputs, but a bce-with-logits regression's values are
        the sigmoid of its logits. Classification metrics take the argmax of the raw scores:
        a sigmoid rounds logits above ~17 (~6 in bf16) to ties at 1.0, and argmax would
        pick the first of them."""
        regression_logits = self.name == "bce-with-logits" and self.one_hot_classes is None
        return outputs.sigmoid() if regression_logits else outputs


def _weighted_mean(total: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """torch's class-weighted mean (the summed loss over the batch's target weights), except
    that a batch holding only classes of weight 0 gives 0, not 0/0 = NaN (which stopped the
    run as diverged). No host sync: both branches are computed, the NaN-free one kept."""
    safe = total / weight.clamp_min(torch.finfo(total.dtype).tiny)
    return torch.where(weight > 0, safe, total * 0)


def loss_sum(
    loss_fn: nn.Module, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | int]:
    """One batch's summed loss and the weight its mean is over, so that an epoch's loss (the
    sums over the weights) is the whole set's at any batch size. torch divides a class-weighted
    cross-entropy by the summed weights of the batch's targets, any other loss by its sample
    count. With label smoothing, samples of a weight-0 class still add smoothing terms, which a
    batch of only such samples (mean 0) would lose: that sum is taken afresh."""
    criterion = getattr(loss_fn, "criterion", loss_fn)  # a TaskLoss or a torch criterion
    if isinstance(criterion, nn.CrossEntropyLoss) and criterion.weight is not None:
        weight = criterion.weight[targets].sum()
        if not criterion.label_smoothing:
            return loss.detach() * weight, weight
        with torch.no_grad():
            total = nn.functional.cross_entropy(
                outputs.detach().float(),  # as autocast computes it
                targets,
                weight=criterion.weight,
                label_smoothing=criterion.label_smoothing,
                reduction="sum",
            )
        return total, weight
    return loss.detach() * targets.shape[0], targets.shape[0]


def resolve_loss_name(config: Any, info: Any) -> str:
    if config.loss != "auto":
        return config.loss
    return "cross-entropy" if info.task == "classification" else "mse"


def build_loss(config: Any, info: Any) -> TaskLoss:
    """cross-entropy (class weights, label smoothing), mse, or bce-with-logits (pos_weight)."""
    name = resolve_loss_name(config, info)
    classification = info.task == "classification"
    if name == "cross-entropy":
        if not classification:
            raise UsageError(
                "--loss cross-entropy needs class targets; this data is regression",
                hint="use --loss mse",
            )
        weight = None
        if config.class_weights is not None:
            if len(config.class_weights) != info.num_classes:
                raise UsageError(
                    f"--class-weights has {len(config.class_weights)} values; "
                    f"the data has {info.num_classes} classes"
                )
            weight = torch.tensor(config.class_weights, dtype=torch.float32)
        criterion = nn.CrossEntropyLoss(
            weight=weight,
            label_smoothing=config.label_smoothing,
            reduction="mean" if weight is None else "sum",  # TaskLoss divides by the weights
        )
        return TaskLoss(name, criterion)
    if name == "mse":
        if classification:
            raise UsageError(
                "--loss mse needs regression targets; this data has classes",
                hint="use --loss cross-entropy or --task regression",
            )
        return TaskLoss(name, nn.MSELoss())
    if name == "bce-with-logits":
        pos_weight = None
        if config.pos_weight is not None:
            if len(config.pos_weight) not in (1, info.num_outputs):
                raise UsageError(
                    f"--pos-weight has {len(config.pos_weight)} values; "
                    f"give 1 or {info.num_outputs} (one per output)"
                )
            pos_weight = torch.tensor(config.pos_weight, dtype=torch.float32)
        criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        return TaskLoss(name, criterion, info.num_classes if classification else None)
    raise unknown_name("loss", name, ("auto", "cross-entropy", "mse", "bce-with-logits"))


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, or two: decayed weights, then norm weights and biases without weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    exempt: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, NORM_TYPES) or name == "bias":
                exempt.add(id(param))
    return [
        {"params": [p for p in params if id(p) not in exempt], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0},
    ]


OPTIMIZERS: dict[str, Callable[[list[dict], Any], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(
        groups, lr=c.lr, momentum=c.momentum, dampening=c.dampening, nesterov=c.nesterov
    ),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, betas=tuple(c.betas), eps=c.eps),
    "rmsprop": lambda groups, c: torch.optim.RMSprop(
        groups, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum
    ),
}


def build_optimizer(model: nn.Module, config: Any) -> torch.optim.Optimizer:
    """The optimizer named by `config.optimizer`; torch's own value checks become usage errors."""
    if config.optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", config.optimizer, tuple(OPTIMIZERS))
    groups = param_groups(model, default_weight_decay(config), config.no_decay_norm_bias)
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UsageError("the model has no trainable parameters")
    try:
        return OPTIMIZERS[config.optimizer](groups, config)
    except ValueError as exc:
        raise UsageError(f"--optimizer {config.optimizer}: {exc}") from None
