"""Models by name: built-in `mlp` and `cnn`, torchvision classifiers, and user factories.

Built-ins are plain `nn.Sequential` stacks of `nn.Conv2d`/`nn.BatchNorm2d`/`nn.ReLU`/`nn.Linear`
with stable names (cnn: `body.0.conv`, `body.0.norm`, `body.0.act`, ...; mlp: `body.1.linear`,
...; both: `head`), so
torch.ao.quantization can fuse them and Torch-Pruning can trace them; `head` is always the
final classifier `nn.Linear`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import sys
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ptool.core.errors import PtoolError, UsageError, first_line, unknown_name
from ptool.core.trust import is_factory

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "prelu": nn.PReLU,
}


class SequentialNet(nn.Module):
    """`head(body(x))` where `body` is a sequence of blocks; optional gradient checkpointing.

    With `grad_checkpoint = k > 0`, training forwards run the body in k segments through
    `torch.utils.checkpoint` (non-reentrant): activations inside a segment are recomputed in
    the backward pass instead of stored. Outputs and gradients are the same; BatchNorm running
    statistics are restored after each recomputation so they are updated once, as without it.
    """

    def __init__(self, body: nn.Sequential, head: nn.Module, grad_checkpoint: int = 0):
        super().__init__()
        self.body = body
        self.head = head
        self.grad_checkpoint = grad_checkpoint
        if grad_checkpoint:
            _checkpointed_body_runs_eagerly()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            x = self._checkpointed(x)
        else:
            x = self.body(x)
        return self.head(x)

    def _checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self.body)
        segments = min(self.grad_checkpoint, len(blocks))  # more: a checkpoint of an older ptool
        size = len(blocks) // segments  # as checkpoint_sequential splits: the last takes the rest
        starts = [i * size for i in range(segments)]
        ends = [*starts[1:], len(blocks)]
        chunks = [nn.Sequential(*blocks[a:b]) for a, b in zip(starts, ends, strict=True)]
        for chunk in chunks[:-1]:  # the last segment's activations are needed right away
            x = checkpoint(
                chunk, x, use_reentrant=False, context_fn=lambda c=chunk: _recompute_guard(c)
            )
        return chunks[-1](x)


@functools.cache
def _checkpointed_body_runs_eagerly() -> None:
    """torch.compile cannot trace checkpoint's context_fn: the checkpointed body runs eagerly
    (a graph break), the head compiled. Applied when a model checkpoints, not at import:
    torch.compiler.disable imports torch._dynamo, about 2 s of every command's start."""
    SequentialNet._checkpointed = torch.compiler.disable(SequentialNet._checkpointed)


def _recompute_guard(module: nn.Module):
    """Checkpoint contexts: nothing on forward; keep norm buffers unchanged on recompute."""
    return contextlib.nullcontext(), _buffers_restored(module)


@contextmanager
def _buffers_restored(module: nn.Module):
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _activation(config: Any) -> nn.Module:
    return ACTIVATIONS[config.activation]()


def build_mlp(config: Any, info: Any) -> nn.Module:
    """Flatten, then Linear -> norm -> activation -> dropout per `--hidden` width, then head."""
    norms = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm, "none": None}
    if config.norm not in norms:
        valid = ", ".join(norms)
        raise UsageError(f"--norm {config.norm} is not available for mlp; valid: {valid}")
    width = math.prod(info.input_shape)
    blocks: list[nn.Module] = [nn.Flatten()]
    for hidden in config.hidden:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            linear=nn.Linear(width, hidden, bias=norms[config.norm] is None)
        )
        if norms[config.norm] is not None:
            layers["norm"] = norms[config.norm](hidden)
        layers["act"] = _activation(config)
        if config.dropout:
            layers["drop"] = nn.Dropout(config.dropout)
        blocks.append(nn.Sequential(layers))
        width = hidden
    return SequentialNet(
        nn.Sequential(*blocks), nn.Linear(width, info.num_outputs), config.grad_checkpoint
    )


def _conv_norm(kind: str, channels: int) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W)
    return None


def build_cnn(config: Any, info: Any) -> nn.Module:
    """conv3x3 -> norm -> act (-> 2x2 max-pool while the map is >= 4 px) per `--channels`.

    Then adaptive average pooling to 2x2 (any input size works), flatten, dropout, head.
    """
    if len(info.input_shape) != 3:
        raise UsageError(
            f"cnn needs image inputs (CxHxW); the data gives {info.input_shape}",
            hint="use --model mlp for tabular data",
        )
    in_channels, height, width = info.input_shape
    blocks: list[nn.Module] = []
    for out_channels in config.channels:
        norm = _conv_norm(config.norm, out_channels)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm is None)
        )
        if norm is not None:
            layers["norm"] = norm
        layers["act"] = _activation(config)
        if min(height, width) >= 4:
            layers["pool"] = nn.MaxPool2d(2)
            height, width = height // 2, width // 2
        blocks.append(nn.Sequential(layers))
        in_channels = out_channels
    blocks += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
    if config.dropout:
        blocks.append(nn.Dropout(config.dropout))
    head = nn.Linear(in_channels * 4, info.num_outputs)
    return SequentialNet(nn.Sequential(*blocks), head, config.grad_checkpoint)


MODELS: dict[str, Callable[[Any, Any], nn.Module]] = {"mlp": build_mlp, "cnn": build_cnn}
VALID_MODELS = (*MODELS, "torchvision:NAME", "module.path:function")


AUX_HEADS = ("googlenet", "inception_v3")


def check_torchvision_name(name: str) -> None:
    import torchvision.models

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        raise unknown_name("torchvision classification model", name, valid)


def build_torchvision(name: str, info: Any) -> nn.Module:
    """torchvision.models.get_model(NAME, weights=None, num_classes=...).

    For inputs whose channel count differs from 3, the first Conv2d is replaced by one with
    the same geometry and the data's channel count (freshly initialized).
    """
    import torchvision.models

    check_torchvision_name(name)
    if len(info.input_shape) != 3:
        shape = info.input_shape
        raise UsageError(f"torchvision:{name} needs image inputs; the data gives {shape}")
    # their train-mode outputs carry auxiliary heads (a namedtuple): one plain logits tensor
    extra = {"aux_logits": False, "init_weights": True} if name in AUX_HEADS else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=info.num_outputs, **extra)
    channels = info.input_shape[0]
    first = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None)
    )
    if first[1] is not None and first[1].in_channels != channels:
        path, conv = first
        parent = model.get_submodule(path.rpartition(".")[0])
        replacement = nn.Conv2d(
            channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
        )
        setattr(parent, path.rpartition(".")[2], replacement)
    return model


def _user_code_error(what: str, exc: Exception) -> PtoolError:
    return PtoolError(
        f"{what} raised {type(exc).__name__}"
        + (f": {first_line(exc)}" if str(exc).strip() else ""),
        hint="the error is in that code, not in ptool; ptool --debug shows its traceback",
    )


def build_factory(spec: str, info: Any) -> nn.Module:
    """`module.path:function`, called as function(input_shape=[...], num_outputs=N).

    The module is imported from the current directory or the installed packages.
    """
    module_name, _, function_name = spec.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"cannot import model module {module_name!r}: {exc}",
            hint=f"valid models: {', '.join(VALID_MODELS)}",
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the user's module failed, not ptool
        raise _user_code_error(f"importing {module_name}", exc) from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise UsageError(f"{module_name} has no function {function_name!r}")
    arguments = {"input_shape": list(info.input_shape), "num_outputs": info.num_outputs}
    try:  # a TypeError inside the factory is its own bug, not a signature to fix
        inspect.signature(factory).bind(**arguments)
    except TypeError as exc:
        raise UsageError(
            f"{spec} cannot be called so: {exc}",
            hint="a model factory takes keyword arguments input_shape=[...] and num_outputs=N",
        ) from exc
    except ValueError:  # no signature to read (a builtin): the call tells
        pass
    try:
        model = factory(**arguments)
    except Exception as exc:  # noqa: BLE001
        raise _user_code_error(spec, exc) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _gain_name(activation: str) -> str:
    return activation if activation in ("tanh", "sigmoid") else "relu"


def apply_init(model: nn.Module, scheme: str, activation: str) -> None:
    """Re-initialize Conv/Linear weights with `scheme` (biases zero); "default" keeps torch's."""
    if scheme == "default":
        return
    nonlinearity = _gain_name(activation)
    gain = nn.init.calculate_gain(nonlinearity)
    schemes: dict[str, Callable[[torch.Tensor], Any]] = {
        "xavier-uniform": lambda w: nn.init.xavier_uniform_(w, gain=gain),
        "xavier-normal": lambda w: nn.init.xavier_normal_(w, gain=gain),
        "kaiming-uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity=nonlinearity),
        "kaiming-normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity=nonlinearity),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=gain),
    }
    if scheme not in schemes:
        raise unknown_name("init", scheme, ("default", *schemes))
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            schemes[scheme](module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def check_io(model: nn.Module, info: Any, spec: str) -> None:
    """One forward of two zero samples, so a shape mismatch fails before training starts."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *info.input_shape))
    except (RuntimeError, AssertionError, ValueError) as exc:  # ViT asserts its image size
        raise UsageError(
            f"model {spec} cannot take inputs of shape {info.input_shape}: {first_line(exc)}",
            hint="use --image-size or another --model",
        ) from exc
    except Exception as exc:
        if is_factory(spec):  # a KeyError in the user's own forward is theirs
            raise _user_code_error(f"{spec} forward", exc) from exc
        raise
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, info.num_outputs):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"model {spec} outputs {shape} per batch of 2; the data needs [2, {info.num_outputs}]"
        )


def check_grad_checkpoint(model: nn.Module, config: Any) -> None:
    """--grad-checkpoint K cuts the body into K segments of whole blocks, so K may not exceed
    the blocks (torch's checkpoint_sequential refuses more too). For new runs."""
    blocks = len(model.body) if isinstance(model, SequentialNet) else 0
    if config.grad_checkpoint > blocks:
        raise UsageError(
            f"--grad-checkpoint {config.grad_checkpoint}: the {config.model} body has "
            f"{blocks} blocks to cut into segments",
            hint=f"give 2 to {blocks} segments (0 turns it off)"
            if blocks >= 2
            else "give 0 (off): a body of one block has nothing to checkpoint",
        )


def build_model(config: Any, info: Any) -> nn.Module:
    """The model named by `config.model`, shaped by the data, initialized per `config.init`."""
    spec = config.model
    if spec.startswith("torchvision:"):
        model = build_torchvision(spec.partition(":")[2], info)
    elif spec in MODELS:
        model = MODELS[spec](config, info)
    elif is_factory(spec):
        model = build_factory(spec, info)
    else:
        raise unknown_name("model", spec, VALID_MODELS)
    if config.grad_checkpoint and not isinstance(model, SequentialNet):
        raise UsageError(
            f"--grad-checkpoint works with the sequential built-ins (mlp, cnn), not {spec}"
        )
    apply_init(model, config.init, config.activation)
    check_io(model, info, spec)
    return model
