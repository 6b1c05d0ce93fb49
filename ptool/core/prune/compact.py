"""Structured compaction with Torch-Pruning, and the rebuild of pruned models from a checkpoint.

Compaction removes the channels a structured mask emptied: Torch-Pruning's DependencyGraph
traces the model once and shrinks every dependent tensor (batch-norm statistics, the next
layer's inputs, the head's inputs after a flatten) together. The compacted shapes are saved
as the recipe's `architecture`; `apply_architecture` resizes a freshly built model to them,
so `model_from_checkpoint` rebuilds it without user code.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ptool.core.errors import PtoolError, UsageError, first_line
from ptool.core.prune.masks import prunable_layers, refresh_weights

REBUILT = "Conv1d/2d/3d, Linear, BatchNorm, GroupNorm, LayerNorm and PReLU"


class Compactor:
    """The traced dependency graph of one model, reused for every layer it scores or shrinks.

    `flag` names the option that needs the trace (`--compact`, `--method bn-scale`), so a
    model Torch-Pruning cannot trace is refused with a hint about that option.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, flag: str = "--compact"):
        import torch_pruning as tp

        self.model = model
        self.example = example
        self.flag = flag
        was_training = model.training
        model.eval()
        try:
            with _one_slope_prelus_as_functions(model):
                self.graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example, verbose=False
                )
            with torch.no_grad():
                self.output_shape = tuple(model(example).shape)
        except Exception as exc:  # noqa: BLE001 - any tracing failure becomes one line
            raise self._untraceable(f"({type(exc).__name__}: {first_line(exc)})") from exc
        finally:
            model.train(was_training)

    def _untraceable(self, detail: str) -> PtoolError:
        hint = (
            "use --method ln-structured: it ranks channels by their weights and needs no tracing"
            if self.flag == "--method bn-scale"
            else "drop --compact: structured masks keep the shapes and need no tracing"
        )
        return PtoolError(
            f"Torch-Pruning cannot trace this model for {self.flag} {detail}", hint=hint
        )

    def _check_traced(self, layers: Mapping[str, nn.Module]) -> None:
        for name, module in layers.items():
            if module not in self.graph.module2node:
                raise self._untraceable(
                    f"({name} is not on the autograd path from the input to the output)"
                )

    def _group(self, module: nn.Module, idxs: list[int]):
        pruner = self.graph.get_pruner_of_module(module)
        return self.graph.get_pruning_group(module, pruner.prune_out_channels, idxs=idxs)

    def tied_outputs(self, layers: Mapping[str, nn.Module]) -> list[list[str]]:
        """The conv/linear layers whose output channels one removal shrinks together (e.g. the
        two sides of a residual add), in model order: one list for each group that holds any
        of `layers`, layers of the model outside `layers` included."""
        self._check_traced(layers)
        everything = prunable_layers(self.model)
        names = {id(m): name for name, m in everything.items()}
        groups: list[list[str]] = []
        for name, module in layers.items():
            if any(name in group for group in groups):
                continue
            members = {
                names.get(id(item.dep.target.module))
                for item in self._group(module, [0])
                if self.graph.is_out_channel_pruning_fn(item.dep.handler)
            }
            groups.append([n for n in everything if n in members])
        return groups

    def bn_scales(self, layers: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        """Each layer's output-channel importance for --method bn-scale: the |scale| of the
        batch norm that normalizes the channel (Network Slimming, Liu et al. 2017), averaged
        over every batch norm tied to it, by Torch-Pruning's BNScaleImportance."""
        import torch_pruning as tp

        self._check_traced(layers)
        scorer = tp.importance.BNScaleImportance(normalizer=None)
        scores = {}
        for name, module in layers.items():
            score = scorer(self._group(module, list(range(module.weight.shape[0]))))
            if score is None:
                raise UsageError(
                    f"--method bn-scale ranks channels by the batch norm after each layer; "
                    f"{name} has none",
                    hint="--exclude the layers without one, or use --method ln-structured",
                )
            scores[name] = score.detach()
        return scores

    def remove(self, module: nn.Module, name: str, idxs: list[int]) -> None:
        """Physically drop output channels `idxs` of `module` and everything tied to them."""
        if idxs:
            self._group(module, idxs).prune()
        self.check(name)

    def check(self, name: str) -> None:
        """The compacted model still runs and still gives outputs of the same shape."""
        for module_name, module in self.model.named_modules():
            if isinstance(module, nn.GroupNorm) and module.num_channels % module.num_groups:
                raise UsageError(  # the --amount's count, so a usage error
                    f"compacting {name} left {module_name} with {module.num_channels} channels "
                    f"in {module.num_groups} groups",
                    hint=f"choose an amount that keeps a multiple of {module.num_groups} "
                    f"channels, or leave the layer out: --exclude '^{re.escape(name)}$'",
                )
        self.model.eval()
        try:
            with torch.no_grad():
                shape = tuple(self.model(self.example).shape)
        except RuntimeError as exc:  # shapes Torch-Pruning got wrong in this architecture
            raise PtoolError(
                f"compacting {name} left a model that does not run ({first_line(exc)})",
                hint="drop --compact: structured masks keep the shapes",
            ) from exc
        if shape != self.output_shape:
            raise PtoolError(f"compacting {name} changed the model's output shape to {shape}")


class _OneSlope(nn.Module):
    """A one-parameter nn.PReLU's function, its slope kept out of the module tree."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.prelu = [prelu]  # a list: not a submodule, so the trace sees no parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, x * self.prelu[0].weight.detach())


@contextlib.contextmanager
def _one_slope_prelus_as_functions(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning traces a one-slope nn.PReLU (the cnn's `--activation prelu`) as a
    one-channel layer plus a reshape, and loses a flatten's channel-to-feature expansion
    behind it (the head lost one input per removed channel instead of H x W). Traced as the
    element-wise function it is, the groups come out right; the graph keeps no reference to
    it, so the real module goes back in place at once."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.PReLU) and child.num_parameters == 1
    ]
    for parent, name, child in found:
        setattr(parent, name, _OneSlope(child))
    try:
        yield
    finally:
        for parent, name, child in found:
            setattr(parent, name, child)


def architecture(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter and buffer shape (masked tensors under their plain name)."""
    shapes = {}
    for name, value in model.state_dict().items():
        if name.endswith("_mask"):
            continue
        shapes[name.removesuffix("_orig")] = list(value.shape)
    return shapes


def _resized(module: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """A fresh module of the same kind and hyperparameters with the saved tensor shapes."""
    sample = next(t for t in module.state_dict().values() if t.is_floating_point())
    kw: dict[str, Any] = {"device": sample.device, "dtype": sample.dtype}
    weight = shapes.get("weight")
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        groups = weight[0] if depthwise else module.groups
        return type(module)(
            weight[1] * groups,
            weight[0],
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            module.bias is not None,
            module.padding_mode,
            **kw,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(weight[1], weight[0], module.bias is not None, **kw)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        size = (weight or shapes.get("running_mean"))[0]
        return type(module)(
            size, module.eps, module.momentum, module.affine, module.track_running_stats, **kw
        )
    if isinstance(module, nn.GroupNorm):
        return nn.GroupNorm(module.num_groups, weight[0], module.eps, module.affine, **kw)
    if isinstance(module, nn.LayerNorm):
        return nn.LayerNorm(
            weight, module.eps, module.elementwise_affine, module.bias is not None, **kw
        )
    if isinstance(module, nn.PReLU):
        return nn.PReLU(weight[0], **kw)
    return None


def apply_architecture(model: nn.Module, architecture: Mapping[str, list[int]]) -> nn.Module:
    """Resize a freshly built model's layers to a compacted checkpoint's saved shapes, each
    checked first: compaction only removes channels, so a shape beyond the built layer's is a
    corrupt file (or one asking for gigabytes), refused before anything is allocated."""
    if not isinstance(architecture, Mapping):
        raise PtoolError(
            f"the saved architecture is a {type(architecture).__name__}, not tensor names and "
            "their shapes"
        )
    state = {k.removesuffix("_orig"): v for k, v in model.state_dict().items()}
    unknown = sorted(set(architecture) - set(state))
    if unknown:
        raise PtoolError(
            f"the saved architecture names {unknown[0]}, which the rebuilt model does not have"
        )
    changed: dict[str, dict[str, list[int]]] = {}
    for name, shape in architecture.items():
        built = list(state[name].shape)
        if not _within(shape, built):
            raise PtoolError(
                f"the saved architecture gives {name} the shape {shape!r}: a compacted tensor "
                f"keeps its dimensions, each at most the model's {built}",
                hint="the file is corrupt; prune the float checkpoint again",
            )
        if built != list(shape):
            owner, _, tensor = name.rpartition(".")
            changed.setdefault(owner, {})[tensor] = list(shape)
    for owner in changed:
        module = model.get_submodule(owner)
        shapes = {
            n: list(architecture.get(f"{owner}.{n}", list(t.shape)))
            for n, t in [
                *module.named_parameters(recurse=False),
                *module.named_buffers(recurse=False),
            ]
        }
        replacement = _resized(module, shapes)
        if replacement is None:
            raise PtoolError(
                f"cannot resize {owner} ({type(module).__name__}) to the saved shapes",
                hint=f"ptool rebuilds compacted {REBUILT} layers",
            )
        replacement.train(module.training)
        parent, _, attr = owner.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, replacement)
    return model


def _within(shape: Any, built: list[int]) -> bool:
    """A list of as many sizes as `built`, none negative or larger."""
    return (
        isinstance(shape, list)
        and len(shape) == len(built)
        and all(type(n) is int and 0 <= n <= limit for n, limit in zip(shape, built, strict=True))
    )


def apply_masks(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Re-create the pruning masks a --keep-masks state dict holds (`prune.custom_from_mask`),
    so its weight_orig/weight_mask keys load and the masks keep applying."""
    for key, mask in state_dict.items():
        if not key.endswith("_mask"):
            continue
        owner, _, tensor = key.removesuffix("_mask").rpartition(".")
        try:
            module = model.get_submodule(owner)
            present = isinstance(getattr(module, tensor, None), torch.Tensor)
        except AttributeError:
            present = False
        if not present:
            raise PtoolError(f"the checkpoint masks {key}, which the rebuilt model does not have")
        if not hasattr(module, f"{tensor}_mask"):
            prune.custom_from_mask(module, tensor, mask=mask)
    return refresh_weights(model)
