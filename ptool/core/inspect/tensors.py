"""Tensor rows, totals by dtype, parameters vs buffers, and grouping by module prefix."""

from __future__ import annotations

import re
from typing import Any

from ptool.core.inspect.unpickler import TensorMeta

# A state dict does not say which tensors were nn.Parameters; these names are buffers in
# torch's own modules (BatchNorm statistics, pruning masks, quantization parameters).
BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked", "n_averaged"})
QPARAM_NAMES = frozenset({"scale", "zero_point"})
# torch.fx's quantized graphs keep their activations' parameters as attributes of the root
# module, named after the node: `body_0_conv_input_scale_0`, `..._input_zero_point_0`.
FX_QPARAM = re.compile(r"_(scale|zero_point)_\d+$")
# QAT's fake-quantize modules and their observers hold buffers only (ranges, qparams, switches).
FAKE_QUANT = re.compile(r"(^|\.)(activation_post_process(_\d+)?|\w+_fake_quant)\.")


def kind(name: str, t: TensorMeta) -> str:
    """'parameter' or 'buffer' (tensors saved as nn.Parameter are always parameters)."""
    if t.is_parameter:
        return "parameter"
    last = name.rsplit(".", 1)[-1]
    if last in BUFFER_NAMES or last.endswith("_mask") or FAKE_QUANT.search(name):
        return "buffer"
    qparam = last in QPARAM_NAMES or ("." not in name and FX_QPARAM.search(name))
    if qparam and t.numel <= 1 and not t.quant:
        return "buffer"
    return "parameter"


def row(name: str, t: TensorMeta) -> dict[str, Any]:
    """A tensor's row; a sparse one's also names its layout and stored elements (nnz)."""
    out = {
        "name": name,
        "shape": list(t.shape),
        "dtype": t.dtype,
        "numel": t.numel,
        "bytes": t.nbytes,
        "kind": kind(name, t),
        "shares": None,
    }
    if t.sparse:
        out.update(layout=t.sparse["layout"], nnz=t.sparse["nnz"])
    return out


def rows(tensors: list[tuple[str, TensorMeta]]) -> list[dict[str, Any]]:
    """One row per name; a name for a tensor already listed (tied weights: a state dict
    saves an embedding shared with the head under both names) gives that name as `shares`."""
    first: dict[tuple[Any, ...], str] = {}
    out = []
    for name, t in tensors:
        out.append(row(name, t))
        identity = _identity(t)
        if identity is not None:
            earlier = first.setdefault(identity, name)
            out[-1]["shares"] = earlier if earlier != name else None
    return out


def _identity(t: TensorMeta) -> tuple[Any, ...] | None:
    """The same bytes seen the same way: equal for two names of one tensor, None when that
    is unknown or meaningless (empty tensors)."""
    if not t.numel:
        return None
    if t.storage is not None:
        return (t.storage.key, t.offset, t.shape, t.stride, t.dtype)
    tensor = t.extra.get("tensor")  # --unsafe-load keeps the loaded torch tensor
    if tensor is None:
        return None
    storage = tensor.untyped_storage().data_ptr()
    return (storage, tensor.storage_offset(), t.shape, tensor.stride(), t.dtype)


def totals(table: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the tensors the file stores: a name that `shares` another's is counted once."""
    by_dtype: dict[str, dict[str, int]] = {}
    shared = sum(1 for row in table if row["shares"])
    table = [row for row in table if not row["shares"]]
    for row in table:
        entry = by_dtype.setdefault(row["dtype"], {"tensors": 0, "numel": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["numel"] += row["numel"]
        entry["bytes"] += row["bytes"]
    return {
        "tensors": len(table) + shared,
        "shared": shared,
        "numel": sum(r["numel"] for r in table),
        "bytes": sum(r["bytes"] for r in table),
        "parameters": sum(r["numel"] for r in table if r["kind"] == "parameter"),
        "buffers": sum(r["numel"] for r in table if r["kind"] == "buffer"),
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["bytes"])),
    }


def name_filter(pattern: str | None) -> re.Pattern[str] | None:
    """The compiled --filter regex (searched anywhere in the name), or None."""
    return re.compile(pattern) if pattern else None


def prefix(name: str, depth: int) -> str:
    """The first `depth` dotted components of a tensor name (the module it belongs to)."""
    return ".".join(name.split(".")[:depth])


def groups(table: list[dict[str, Any]], depth: int) -> list[dict[str, Any]]:
    """Subtotals per module prefix of `depth` components, in first-seen order."""
    out: dict[str, dict[str, Any]] = {}
    for row in table:
        key = prefix(row["name"], depth)
        group = out.setdefault(
            key, {"name": key, "tensors": 0, "numel": 0, "bytes": 0, "dtypes": []}
        )
        group["tensors"] += 1
        if not (row["shares"] and prefix(row["shares"], depth) == key):  # tied: counted once
            group["numel"] += row["numel"]
            group["bytes"] += row["bytes"]
        if row["dtype"] not in group["dtypes"]:
            group["dtypes"].append(row["dtype"])
    return list(out.values())


def _node(name: str) -> dict[str, Any]:
    return {"name": name, "tensors": 0, "numel": 0, "bytes": 0, "children": []}


def _count(node: dict[str, Any], row: dict[str, Any]) -> None:
    node["tensors"] += 1
    node["numel"] += row["numel"]
    node["bytes"] += row["bytes"]


def tree(table: list[dict[str, Any]], depth: int | None) -> dict[str, Any]:
    """Nested {name, tensors, numel, bytes, children} by dotted name, cut at `depth` levels;
    a leaf that is one tensor also carries its shape and dtype. A module holding both names
    of a tied tensor counts its elements once, as `module.parameters()` does."""
    root = _node("")
    for row in table:
        full = row["name"].split(".")
        parts = full[:depth] if depth else full
        other = row["shares"].split(".") if row["shares"] else None
        node = root
        for level in range(len(parts) + 1):
            if level:
                part = parts[level - 1]
                child = next((c for c in node["children"] if c["name"] == part), None)
                if child is None:
                    child = _node(part)
                    node["children"].append(child)
                node = child
            if other is not None and other[:level] == full[:level]:
                node["tensors"] += 1  # a name of its own, elements counted under the other
            else:
                _count(node, row)
        if len(parts) == len(full):
            node.update(shape=row["shape"], dtype=row["dtype"])
    return root
