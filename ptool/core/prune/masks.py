"""Which layers to prune, how much per step, and the masks (torch.nn.utils.prune).

Amounts follow PyTorch: a float is a fraction, an int a count, both of the weights (or
channels, for structured methods) still unpruned, rounded with Python's `round` as
`prune._compute_nparams_toprune` does. Every step hands torch an exact count, so the
cumulative pruned count after the last step is exactly what one-shot pruning would remove.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import prune

from ptool.core.errors import UsageError
from ptool.core.prune.options import STRUCTURED

KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}
PARAM = "weight"  # the tensor every method prunes


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv and linear layer, in model order."""
    kinds = tuple(t for types in KINDS.values() for t in types)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def head_name(model: nn.Module) -> str | None:
    """The final classifier: ptool's built-ins call it `head`; otherwise the last layer."""
    layers = prunable_layers(model)
    if "head" in layers:
        return "head"
    return next(reversed(layers), None)


def left_out(
    model: nn.Module,
    kinds: list[str],
    *,
    only: str | None = None,
    exclude: str | None = None,
    include_head: bool = False,
) -> dict[str, str | None]:
    """Per conv/linear layer, why `--modules/--only/--exclude/--include-head` leave it out (a
    clause for messages), or None for a selected layer."""
    patterns = {}
    for flag, pattern in (("--only", only), ("--exclude", exclude)):
        if pattern is not None:
            try:
                patterns[flag] = re.compile(pattern)
            except re.error as exc:
                raise UsageError(f"{flag} {pattern!r} is not a regular expression: {exc}") from None
    wanted = tuple(t for k in kinds for t in KINDS[k])
    head = head_name(model)
    reasons: dict[str, str | None] = {}
    for name, module in prunable_layers(model).items():
        reasons[name] = None
        if not isinstance(module, wanted):
            reasons[name] = f"--modules {','.join(kinds)} leaves out"
        elif name == head and not include_head:
            reasons[name] = "is the final classifier (its classes stay)"
        elif "--only" in patterns and not patterns["--only"].search(name):
            reasons[name] = "--only leaves out"
        elif "--exclude" in patterns and patterns["--exclude"].search(name):
            reasons[name] = "--exclude leaves out"
    return reasons


def select_layers(
    model: nn.Module,
    kinds: list[str],
    *,
    only: str | None = None,
    exclude: str | None = None,
    include_head: bool = False,
) -> dict[str, nn.Module]:
    """The layers `--modules/--only/--exclude/--include-head` pick (kinds already checked by
    `options.check_options`), or a one-line refusal."""
    reasons = left_out(model, kinds, only=only, exclude=exclude, include_head=include_head)
    layers = prunable_layers(model)
    chosen = {name: layers[name] for name, reason in reasons.items() if reason is None}
    if not chosen:
        names = ", ".join(layers) or "none"
        raise UsageError(
            "the layer filter selects no layer "
            f"(--modules {','.join(kinds)}, head {'included' if include_head else 'excluded'}"
            + (f", --only {only}" if only else "")
            + (f", --exclude {exclude}" if exclude else "")
            + f"); the model's conv/linear layers: {names}",
            hint="loosen --only/--exclude"
            + ("" if include_head else ", or add --include-head to prune the final layer"),
        )
    return chosen


def mask_of(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, f"{PARAM}_mask", None)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: weight_orig * weight_mask while masks are on."""
    mask = mask_of(module)
    if mask is None:
        return module.weight.detach()
    return (getattr(module, f"{PARAM}_orig") * mask).detach()


def kept_slices(module: nn.Module, dim: int) -> torch.Tensor:
    """Per slice along `dim`, whether any of its weights is unpruned."""
    mask = mask_of(module)
    if mask is None:
        return torch.ones(module.weight.shape[dim], dtype=torch.bool)
    others = [d for d in range(mask.dim()) if d != dim % mask.dim()]
    return mask.sum(dim=others) != 0


def remaining(group: list[nn.Module], dim: int | None) -> int:
    """Unpruned weights of a layer (dim None) or its unpruned slices along `dim` (structured
    methods); of a layer and those whose output channels are tied to it (--compact), the
    channels that none of them has emptied."""
    if dim is None:
        mask = mask_of(group[0])
        return group[0].weight.numel() if mask is None else int(mask.count_nonzero())
    return int(torch.stack([kept_slices(m, dim) for m in group]).all(0).sum())


def tied_groups(
    layers: Mapping[str, nn.Module], tied: Mapping[str, str]
) -> dict[str, list[nn.Module]]:
    """Each layer that leads its output channels, then the layers tied to it (`tied`: follower
    -> leader, --compact): those lose its channels and are not pruned on their own."""
    groups = {name: [module] for name, module in layers.items() if name not in tied}
    for follower, leader in tied.items():
        groups[leader].append(layers[follower])
    return groups


def mask_tied_channels(group: list[nn.Module]) -> None:
    """Mask the leader's (`group[0]`) output channels that a layer tied to it has emptied: a
    group's pruned channels are the union of its layers', so the leader's ranking skips them
    and --compact removes them from every layer of the group."""
    leader, *followers = group
    lost = torch.zeros_like(kept_slices(leader, 0))
    for module in followers:
        lost |= ~kept_slices(module, 0)
    lost &= kept_slices(leader, 0)
    if bool(lost.any()):
        shape = [-1] + [1] * (leader.weight.dim() - 1)
        prune.custom_from_mask(leader, PARAM, (~lost).view(shape).expand_as(leader.weight))


def pruned_slices(mask: torch.Tensor, dim: int) -> list[int]:
    """Indices along `dim` whose slice is entirely masked (the channels to remove)."""
    others = [d for d in range(mask.dim()) if d != dim]
    return torch.nonzero(mask.sum(dim=others) == 0).flatten().tolist()


def mask_zeros(module: nn.Module, dim: int | None) -> None:
    """Mask what a plain weight holds as zeros, the input's own pruning made permanent: its
    empty slices along `dim` (structured methods) or its zero weights (`dim` None). The amount
    then applies to what is left, as in torch's iterative pruning and as with --keep-masks
    inputs, and --compact removes those channels too. A masked weight is left as it is."""
    if mask_of(module) is not None:
        return
    keep = module.weight.detach().ne(0)
    if dim is not None:
        axis = dim % keep.dim()
        others = [d for d in range(keep.dim()) if d != axis]
        shape = [-1 if d == axis else 1 for d in range(keep.dim())]
        keep = keep.sum(dim=others).ne(0).view(shape).expand_as(keep)
    if not bool(keep.all()):
        prune.custom_from_mask(module, PARAM, keep)


def target_count(amount: int | float, size: int) -> int:
    """Units pruned in all, as PyTorch counts an `amount` of `size` remaining units."""
    return amount if isinstance(amount, int) else round(amount * size)


def schedule(amount: int | float, size: int, steps: int) -> list[int]:
    """Cumulative pruned counts after steps 1..K: the same fraction of what remains each step.

    Step k reaches 1 - (1 - a) ** (k / K) of the units (a = the final fraction), which is
    PyTorch's own iterative semantics (each amount applies to the remaining units) with a
    constant per-step fraction p = 1 - (1 - a) ** (1 / K); the last step lands exactly on
    the one-shot count.
    """
    total = target_count(amount, size)
    fraction = total / size if size else 0.0
    counts, previous = [], 0
    for k in range(1, steps + 1):
        count = total if k == steps else round(size * (1 - (1 - fraction) ** (k / steps)))
        previous = min(total, max(previous, count))
        counts.append(previous)
    return counts


def check_sizes(
    amount: int | float, groups: Mapping[str, list[nn.Module]], method: str, dim: int
) -> dict[str, int]:
    """Units each layer (or, for global-l1, all of them together) can lose; refuse counts
    larger than that. `groups`: each layer with those tied to it (`tied_groups`). Returns the
    sizes the schedule counts from."""
    axis = dim if method in STRUCTURED else None
    if axis is not None:
        for name, (module, *_) in groups.items():
            rank = module.weight.dim()
            if not -rank <= dim < rank:
                raise UsageError(
                    f"--dim {dim} does not exist in {name}.weight (shape "
                    f"{list(module.weight.shape)})",
                    hint="--dim 0 prunes output channels/neurons, --dim 1 input channels",
                )
    sizes = {name: remaining(group, axis) for name, group in groups.items()}
    if method == "global-l1":
        sizes = {"global": sum(sizes.values())}
    if isinstance(amount, int):
        for name, size in sizes.items():
            if amount > size:
                unit = f"channels along dim {dim}" if axis is not None else "unpruned weights"
                where = "the selected layers together" if name == "global" else f"layer {name}"
                raise UsageError(
                    f"--amount {amount} is larger than {where} ({size} {unit})",
                    hint=f"give at most {size}, or a fraction such as 0.3",
                )
    return sizes


def lowest_channels_mask(module: nn.Module, scores: torch.Tensor, count: int) -> torch.Tensor:
    """A weight mask that empties the `count` output channels still unpruned with the lowest
    `scores` (ties: the first channel), for `prune.custom_from_mask`."""
    ranked = torch.where(kept_slices(module, 0), scores.float(), torch.inf).argsort(stable=True)
    keep = torch.ones_like(module.weight)
    keep[ranked[:count]] = 0
    return keep


def prune_layers(
    layers: Mapping[str, nn.Module],
    method: str,
    counts: Mapping[str, int],
    *,
    n: float = 2.0,
    dim: int = 0,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """One pruning step through torch.nn.utils.prune; masks stack on earlier ones.

    `scores` are bn-scale's per-output-channel importances (`Compactor.bn_scales`).
    """
    if method == "global-l1":
        params = [(m, PARAM) for m in layers.values()]
        prune.global_unstructured(
            params, pruning_method=prune.L1Unstructured, amount=counts["global"]
        )
        return
    for name, module in layers.items():
        amount = counts[name]
        if method == "l1-unstructured":
            prune.l1_unstructured(module, PARAM, amount=amount)
        elif method == "random-unstructured":
            prune.random_unstructured(module, PARAM, amount=amount)
        elif method == "ln-structured":
            prune.ln_structured(module, PARAM, amount=amount, n=n, dim=dim)
        elif method == "bn-scale":
            mask = lowest_channels_mask(module, scores[name], amount)
            prune.custom_from_mask(module, PARAM, mask=mask)
        else:
            prune.random_structured(module, PARAM, amount=amount, dim=dim)


def _pruning_hooks(model: nn.Module):
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                yield module, hook


@torch.no_grad()
def refresh_weights(model: nn.Module) -> nn.Module:
    """Recompute each masked weight outside autograd: the attribute torch.nn.utils.prune sets
    carries a grad_fn until the next no-grad forward, and such a module cannot be deep-copied."""
    for module, hook in _pruning_hooks(model):
        setattr(module, hook._tensor_name, hook.apply_mask(module))
    return model


def make_permanent(model: nn.Module) -> list[str]:
    """prune.remove on every masked tensor: plain weights with the zeros baked in."""
    names = {id(m): name for name, m in model.named_modules()}
    done = []
    for module, hook in _pruning_hooks(model):
        prune.remove(module, hook._tensor_name)
        done.append(f"{names[id(module)]}.{hook._tensor_name}")
    return done


def has_masks(model: nn.Module) -> bool:
    return any(name.endswith("_mask") for name, _ in model.named_buffers())
