"""Pruning (sparsity per layer and overall) and quantization (per-layer dtype, scale and
zero point, or per-channel ranges) of a state dict, from metadata plus a few small reads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ptool.core.inspect.rawdata import RawReader
from ptool.core.inspect.unpickler import DType, TensorMeta


def pruning(
    tensors: list[tuple[str, TensorMeta]], recipe: Any, reader: RawReader
) -> dict[str, Any] | None:
    """Sparsity from `*_mask` buffers (torch.nn.utils.prune) and from zeros in the weights of
    the layers a recipe says were pruned for good; None for an unpruned checkpoint."""
    masked = any(name.endswith("_mask") for name, _ in tensors)
    if not masked and recipe is None:
        return None
    zeroed = _zeroed_layers(recipe, masked)
    pruned, sources = [], set()
    for name, t in tensors:
        found = _weight_of(name) if len(t.shape) >= 2 else None
        if name.endswith("_mask"):
            pruned.append((name.removesuffix("_mask"), t))
            sources.add("mask")
        elif found is not None and (zeroed is None or found[1] in zeroed):
            pruned.append((found[0], t))
            sources.add("weights")
    layers = []
    for name, t in pruned:
        zeros = reader.zeros(t)
        layers.append(
            {
                "name": name,
                "numel": t.numel,
                "zeros": zeros,
                "sparsity": None if zeros is None else zeros / max(t.numel, 1),
            }
        )
    counted = [layer for layer in layers if layer["zeros"] is not None]
    numel = sum(layer["numel"] for layer in counted)
    return {
        "recipe": dict(recipe) if isinstance(recipe, Mapping) else None,
        "source": " and ".join(sorted(sources)) or "weights",
        "layers": layers,
        "sparsity": sum(layer["zeros"] for layer in counted) / numel if numel else None,
    }


def _zeroed_layers(recipe: Any, masked: bool) -> set[str] | None:
    """The layers whose weights hold their pruning as zeros (a `ptool prune` that made its
    masks permanent): those its recipe names, and those of each earlier prune it keeps under
    `previous`. None (every layer) where a recipe names none, unless masks say which."""
    layers: set[str] = set()
    while recipe is not None:
        named = recipe.get("layers") if isinstance(recipe, Mapping) else None
        if not isinstance(named, list) or not named:
            return layers if masked else None
        layers.update(name for name in named if isinstance(name, str))
        recipe = recipe.get("previous")
    return layers


def _weight_of(name: str) -> tuple[str, str] | None:
    """(weight name, layer) for a layer's weight tensor: `x.weight`, or an int8 Linear's packed
    one (`x._packed_params._packed_params[0]`, shown as `x.weight`); None for another tensor."""
    if name.endswith("._packed_params._packed_params[0]"):
        layer = _layer_of(name)
        return f"{layer}.weight", layer
    if name == "weight" or name.endswith(".weight"):
        return name, name.removesuffix("weight").removesuffix(".")
    return None


def _layer_of(name: str) -> str:
    if "._packed_params" in name:
        return name.split("._packed_params", 1)[0]
    return name.rsplit(".", 1)[0] if "." in name else ""


def _range(reader: RawReader, t: TensorMeta) -> list[float] | None:
    """[min, max] of per-channel scales or zero points; None if unread or empty (0 channels)."""
    values = reader.values(t)
    if values is None or not values.size:
        return None
    return [values.min().item(), values.max().item()]


def _is_dynamic(row: dict[str, Any], mode: str | None) -> bool:
    """A dynamically quantized layer: it quantizes its input on the fly and outputs floats, so
    its saved output scale and zero point are torch's unused defaults (1.0 and 0). A ptool
    recipe says which mode it ran; other files are judged by those defaults."""
    if "output_scale" not in row or "weight_dtype" not in row:
        return False
    if mode is not None:
        return mode == "dynamic"
    return row["output_scale"] == 1.0 and row.get("output_zero_point") == 0


def quantization(
    state: Mapping, tensors: list[tuple[str, TensorMeta]], recipe: Any, reader: RawReader
) -> dict[str, Any] | None:
    """Per-layer weight dtype and quantization parameters; None for a float checkpoint."""
    layers: dict[str, dict[str, Any]] = {}

    def layer(name: str) -> dict[str, Any]:
        return layers.setdefault(name, {"name": name})

    for name, t in tensors:
        if t.quant:
            row = layer(_layer_of(name))
            row.update(weight_dtype=t.dtype, qscheme=t.quant["qscheme"])
            if "scale" in t.quant:
                row.update(scale=t.quant["scale"], zero_point=t.quant["zero_point"])
            else:
                row.update(
                    axis=t.quant["axis"],
                    channels=t.quant["scales"].numel,
                    scale_range=_range(reader, t.quant["scales"]),
                    zero_point_range=_range(reader, t.quant["zero_points"]),
                )
        elif name.endswith((".scale", ".zero_point")) and t.numel == 1:
            # a quantized module's output (activation) quantization parameters
            key = "output_scale" if name.endswith(".scale") else "output_zero_point"
            layer(_layer_of(name))[key] = reader.scalar(t)
    for name, value in state.items():
        if isinstance(value, DType) and name.endswith("_packed_params.dtype"):
            layer(_layer_of(name)).setdefault("weight_dtype", value.name)
    mode = recipe.get("mode") if isinstance(recipe, Mapping) else None
    for row in layers.values():
        if _is_dynamic(row, mode):
            row.pop("output_scale", None)
            row.pop("output_zero_point", None)
            row["activations"] = "dynamic"
    if not layers and recipe is None:
        return None
    return {
        "recipe": dict(recipe) if isinstance(recipe, Mapping) else None,
        "layers": list(layers.values()),
    }
