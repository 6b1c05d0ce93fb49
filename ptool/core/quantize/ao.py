"""The one place that touches `torch.ao.quantization`: qconfigs, prepare, convert, reload.

torch 2.14 marks torch.ao.quantization deprecated (removal planned) but it still holds the
fast fbgemm/x86/qnnpack int8 CPU kernels. Static and QAT use FX graph mode (it fuses
conv+bn(+relu) / linear(+relu) and places quant/dequant stubs itself on traceable models);
dynamic uses `quantize_dynamic`. Upstream's deprecation and observer warnings are silenced
here; the report names the backend in one line instead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import platform
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ptool.core.errors import PtoolError, UsageError, first_line, unknown_name
from ptool.core.notices import ignore_upstream_notices
from ptool.core.quantize.options import DYNAMIC_MODULE_NAMES

LIBRARY = "torch.ao.quantization"
BACKENDS = ("x86", "fbgemm", "qnnpack")
DYNAMIC_MODULES: dict[str, type[nn.Module]] = dict(
    zip(DYNAMIC_MODULE_NAMES, (nn.Linear, nn.LSTM, nn.GRU), strict=True)
)
STATIC_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
REDUCE_RANGE = {"x86": True, "fbgemm": True, "qnnpack": False}
# Layers static/qat keep in float: their int8 versions hold the learned slope and output
# qparams as plain attributes, not in the state dict, so a saved int8 model reloads them
# random (and the freshly converted int8 PReLU already loses most of the accuracy).
FLOAT_ONLY_LAYERS: tuple[type[nn.Module], ...] = (nn.PReLU, nn.ELU, nn.Softmax)

# a quantized model keeps warning after it is built (running it, loading its state dict)
ignore_upstream_notices()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.ao's DeprecationWarning / observer UserWarning walls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@functools.cache
def _ao() -> tuple[Any, Any]:
    """(torch.ao.quantization, its quantize_fx), or a one-line error if this torch lacks them."""
    try:
        with quiet():
            import torch.ao.quantization as tq
            from torch.ao.quantization import quantize_fx
    except ImportError as exc:
        raise PtoolError(
            f"this torch ({torch.__version__}) has no {LIBRARY}, which ptool's int8 "
            "quantization runs on",
            hint="use torch <= 2.14 for `ptool quantize`",
        ) from exc
    return tq, quantize_fx


# --- backends --------------------------------------------------------------------------


def default_backend() -> str:
    """x86 on Intel/AMD CPUs, qnnpack on ARM (torch's own defaults per architecture)."""
    machine = platform.machine().lower()
    return "qnnpack" if machine.startswith(("arm", "aarch")) else "x86"


def supported_backends() -> list[str]:
    return [name for name in torch.backends.quantized.supported_engines if name in BACKENDS]


def resolve_backend(name: str) -> str:
    """`auto` -> this CPU's backend; refuses names this CPU's torch build cannot run."""
    chosen = default_backend() if name == "auto" else name
    if chosen not in BACKENDS:
        raise unknown_name("--backend", chosen, ("auto", *BACKENDS))
    here = supported_backends()
    if chosen not in here:
        raise UsageError(
            f"--backend {chosen} is not supported on this CPU ({platform.machine()}); "
            f"supported here: {', '.join(here) or 'none'}"
        )
    return chosen


def activate(backend: str) -> None:
    """Select the int8 kernels; packed weights are laid out per backend, so this is global."""
    torch.backends.quantized.engine = backend


# --- qconfigs --------------------------------------------------------------------------


def _activation_observer(name: str) -> Any:
    from torch.ao.quantization import observer

    return {
        "minmax": observer.MinMaxObserver,
        "histogram": observer.HistogramObserver,
        "moving-average": observer.MovingAverageMinMaxObserver,
    }[name]


def qconfig_mapping(recipe: dict[str, Any]) -> Any:
    """torch's default mapping for the backend (fixed-qparams ops and all) with the global
    qconfig built from the recipe's observer and per-channel choice."""
    tq, _ = _ao()
    from torch.ao.quantization import fake_quantize, observer

    backend, per_channel = recipe["backend"], recipe["per_channel"]
    reduce_range = REDUCE_RANGE[backend]
    activation_observer = _activation_observer(recipe["observer"])
    weight_scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    with quiet():
        if recipe["mode"] == "qat":
            mapping = tq.get_default_qat_qconfig_mapping(backend)
            moving = recipe["observer"] == "moving-average"
            fake = fake_quantize.FusedMovingAvgObsFakeQuantize if moving else tq.FakeQuantize
            weight_observer = (
                observer.MovingAveragePerChannelMinMaxObserver
                if per_channel
                else observer.MovingAverageMinMaxObserver
            )
            qconfig = tq.QConfig(
                activation=fake.with_args(
                    observer=activation_observer,
                    quant_min=0,
                    quant_max=255,
                    reduce_range=reduce_range,
                ),
                weight=fake_quantize.FusedMovingAvgObsFakeQuantize.with_args(
                    observer=weight_observer,
                    quant_min=-128,
                    quant_max=127,
                    dtype=torch.qint8,
                    qscheme=weight_scheme,
                ),
            )
        else:
            mapping = tq.get_default_qconfig_mapping(backend)
            weight_observer = (
                observer.PerChannelMinMaxObserver if per_channel else observer.MinMaxObserver
            )
            qconfig = tq.QConfig(
                activation=activation_observer.with_args(reduce_range=reduce_range),
                weight=weight_observer.with_args(dtype=torch.qint8, qscheme=weight_scheme),
            )
    mapping.set_global(qconfig)
    for layer in FLOAT_ONLY_LAYERS:
        mapping.set_object_type(_kept_float(layer), None)
    return mapping


@functools.cache
def _kept_float(layer: type[nn.Module]) -> type[nn.Module]:
    """A subclass torch's FX patterns do not know (they match exact types), so the layer
    stays float even where convert's lowering would swap `dequant -> layer -> quant` for
    the int8 module regardless of its qconfig; traced as a leaf, it stays one module.
    Same forward, same state-dict keys."""
    return type(f"Float{layer.__name__}", (layer,), {"__module__": __name__})


def _keep_float_layers(model: nn.Module) -> None:
    for module in model.modules():
        if type(module) in FLOAT_ONLY_LAYERS:
            module.__class__ = _kept_float(type(module))


def qconfig_repr(recipe: dict[str, Any]) -> str:
    """The global qconfig as text, for the recipe (the mapping itself is rebuilt from it)."""
    if recipe["mode"] == "dynamic":
        kind = "float16" if recipe["dtype"] == "float16" else "default"
        return f"torch.ao.quantization.{kind}_dynamic_qconfig"
    return repr(qconfig_mapping(recipe).global_qconfig)


# --- checks ----------------------------------------------------------------------------


def _example(recipe: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(2, *recipe["input_shape"]),)


def check_traceable(model: nn.Module) -> None:
    """Trace with torch.fx first, so a failure names the layer whose forward stops it."""
    failed: list[str] = []  # the innermost module whose forward raised

    class _RecordingTracer(torch.fx.Tracer):
        def call_module(self, module, forward, args, kwargs):  # noqa: ANN001 - torch.fx API
            try:
                return super().call_module(module, forward, args, kwargs)
            except Exception:
                if not failed:
                    failed.append(self.path_of_module(module))
                raise

    try:
        _RecordingTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing fails in model-specific ways
        where = (
            f"layer {failed[0]} ({type(model.get_submodule(failed[0])).__name__})"
            if failed and failed[0]
            else f"the forward of {type(model).__name__}"
        )
        raise UsageError(
            f"cannot quantize: {where} cannot be traced by torch.fx ({first_line(exc)})",
            hint="static and qat need a traceable forward (no data-dependent control flow); "
            "`ptool quantize dynamic` needs no tracing",
        ) from exc


def check_quantizable(model: nn.Module, recipe: dict[str, Any]) -> None:
    """Refuse a model with nothing the mode can quantize, naming what it looked for."""
    if recipe["mode"] == "dynamic":
        wanted = tuple(DYNAMIC_MODULES[name] for name in recipe["modules"])
        names = ", ".join(f"nn.{t.__name__}" for t in wanted)
        hint = "static quantization also covers Conv layers: `ptool quantize static`"
    else:
        wanted = STATIC_LAYERS
        names = "nn.Linear, nn.Conv1d/2d/3d"
        hint = "only layers with int8 kernels can be quantized"
    if not any(isinstance(module, wanted) for module in model.modules()):
        raise UsageError(
            f"the model has no quantizable layers for {recipe['mode']} quantization "
            f"(looked for {names})",
            hint=hint,
        )


# --- prepare / convert -----------------------------------------------------------------


def quantize_dynamic(model: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """Weights int8 (or float16), activations quantized on the fly, per `recipe["modules"]`."""
    tq, _ = _ao()
    activate(recipe["backend"])
    dtype = torch.float16 if recipe["dtype"] == "float16" else torch.qint8
    types = {DYNAMIC_MODULES[name] for name in recipe["modules"]}
    with quiet():
        return tq.quantize_dynamic(model.eval(), types, dtype=dtype)


def prepare(model: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """Fuse and insert observers (static, eval mode) or fake-quant modules (qat, train mode)."""
    _, quantize_fx = _ao()
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    activate(recipe["backend"])
    mapping = qconfig_mapping(recipe)
    _keep_float_layers(model)
    custom = PrepareCustomConfig().set_non_traceable_module_classes(
        [_kept_float(layer) for layer in FLOAT_ONLY_LAYERS]
    )
    try:
        with quiet():
            if recipe["mode"] == "qat":
                return quantize_fx.prepare_qat_fx(
                    model.train(), mapping, _example(recipe), prepare_custom_config=custom
                )
            return quantize_fx.prepare_fx(
                model.eval(), mapping, _example(recipe), prepare_custom_config=custom
            )
    except Exception as exc:  # noqa: BLE001 - FX fails in model-specific ways
        raise UsageError(f"cannot quantize this model with torch.fx: {first_line(exc)}") from exc


def convert(prepared: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """Observed/fake-quantized model -> int8 model with the backend's kernels, checked to run."""
    _, quantize_fx = _ao()
    with quiet():
        quantized = quantize_fx.convert_fx(prepared.eval())
    _keepdim_means(quantized)
    _run(quantized, [_example(recipe)[0]], "the int8 model")
    return quantized


def _keepdim_means(model: torch.fx.GraphModule) -> None:
    """`x.mean(dims)` -> `x.mean(dims, keepdim=True).squeeze(dims)`, the same values.

    torch's int8 `mean` without keepdim fails on a 1x1 map whose strides also read as
    channels_last ("required rank 4 tensor to use channels_last format"): shufflenet's final
    pooling on inputs of 32 px or less. The keepdim form has no such bug.
    """
    graph = model.graph
    for node in list(graph.nodes):
        is_mean = (node.op == "call_method" and node.target == "mean") or (
            node.op == "call_function" and node.target is torch.mean
        )
        if not is_mean or len(node.args) != 2 or "keepdim" in node.kwargs:
            continue
        with graph.inserting_after(node):
            squeezed = graph.call_function(torch.squeeze, (node, node.args[1]))
        node.replace_all_uses_with(
            squeezed, delete_user_cb=lambda user, new=squeezed: user is not new
        )
        node.kwargs = {**node.kwargs, "keepdim": True}
    model.recompile()


def calibrate(prepared: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run batches through the observers; returns how many were seen."""
    return _run(prepared.eval(), batches, "the FX-prepared model")


@torch.no_grad()
def _run(model: nn.Module, batches: Iterable[torch.Tensor], what: str) -> int:
    """Forward every batch; an op without int8 support becomes a one-line error."""
    seen = 0
    # FX prints the failing generated code to stderr itself; the one-line error says enough
    with quiet(), contextlib.redirect_stderr(io.StringIO()):
        try:
            for x in batches:
                model(x)
                seen += 1
        except Exception as exc:  # noqa: BLE001 - ops without int8 support fail variously
            raise UsageError(
                f"cannot quantize: {what} fails to run ({first_line(exc)})",
                hint="`ptool quantize dynamic` quantizes the Linear layers only",
            ) from exc
    return seen


def freeze_observers(model: nn.Module) -> None:
    tq, _ = _ao()
    model.apply(tq.disable_observer)


def pause_observers(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor]]:
    """Stop every observer and return what `restore_observers` needs: FakeQuantize observes
    in eval mode too, so evaluating a QAT model would move its int8 ranges toward the data."""
    saved = [
        (module, module.observer_enabled.clone())
        for module in model.modules()
        if isinstance(getattr(module, "observer_enabled", None), torch.Tensor)
    ]
    freeze_observers(model)
    return saved


def restore_observers(saved: list[tuple[nn.Module, torch.Tensor]]) -> None:
    for module, enabled in saved:
        module.observer_enabled.copy_(enabled)


def freeze_bn_stats(model: nn.Module) -> None:
    import torch.ao.nn.intrinsic.qat as nniqat

    model.apply(nniqat.freeze_bn_stats)


def prepare_for_load(model: nn.Module, recipe: dict[str, Any]) -> nn.Module:
    """A freshly built float model -> an empty quantized model of the saved structure.

    The same fuse/prepare/convert as when the file was written, without calibration, so
    `load_state_dict(ckpt["model_state_dict"])` fits; a QAT run's own checkpoints
    (`converted: False`) come back as the fake-quantized training model.
    """
    here = supported_backends()
    if recipe.get("backend") not in here:
        raise PtoolError(
            f"the checkpoint's int8 weights are laid out for the {recipe.get('backend')!r} "
            f"backend, which this CPU's torch cannot run (here: {', '.join(here) or 'none'})",
            hint="quantize the float checkpoint again on this machine",
        )
    activate(recipe["backend"])
    if recipe["mode"] == "dynamic":
        return quantize_dynamic(model, recipe)
    prepared = prepare(model, recipe)
    if recipe.get("converted", True) is False:
        return prepared
    return convert(prepared, recipe)


# --- describing the result -------------------------------------------------------------


def is_quantized_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith(
        ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")
    )


# Layers that only move or pass values: no compute to run in int8 or in float.
_NO_COMPUTE = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


def quantized_layer_names(model: nn.Module) -> list[str]:
    """Names of the int8 layers (packed-weight holders inside them are not layers, and a
    converted Dropout is still a no-op)."""
    return [
        name
        for name, module in model.named_modules()
        if is_quantized_module(module)
        and not name.endswith("_packed_params")
        and type(module).__name__ != "Dropout"
    ]


def kept_float_layer_names(model: nn.Module) -> list[str]:
    """The layers static/qat left in float between int8 ones: those the converted graph feeds
    dequantized values (GroupNorm, GELU, ... that torch has no int8 kernel for here, and the
    FLOAT_ONLY_LAYERS on purpose). Dynamic models are float but for their Linear/LSTM layers."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return []
    modules = dict(model.named_modules())
    float_values: set[torch.fx.Node] = set()
    kept = []
    for node in graph.nodes:
        inputs = [arg for arg in node.args if isinstance(arg, torch.fx.Node)]
        if node.op == "placeholder" or node.target == "dequantize":
            float_values.add(node)
        elif node.target is torch.quantize_per_tensor or not inputs:
            continue
        elif node.op != "call_module":  # a function or method: the domain of its input
            if inputs[0] in float_values:
                float_values.add(node)
        elif not is_quantized_module(modules[node.target]) and inputs[0] in float_values:
            float_values.add(node)
            if not isinstance(modules[node.target], _NO_COMPUTE):
                kept.append(node.target)
    return kept


def fused_modules(float_model: nn.Module, quantized: nn.Module) -> list[list[str]]:
    """Groups of float layers that became one quantized layer (conv+bn+relu, linear+relu).

    A float leaf that is gone from the converted model was folded into the layer before it.
    """
    kept = {name for name, _ in quantized.named_modules()}
    groups: list[list[str]] = []
    for name, module in float_model.named_modules():
        if not name or list(module.children()) or isinstance(module, CONTAINERS):
            continue  # an empty container (shufflenet's identity branch1) is not a layer
        if name in kept or not groups:
            groups.append([name])
        else:
            groups[-1].append(name)
    return [group for group in groups if len(group) > 1]
