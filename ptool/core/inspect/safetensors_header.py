"""The safetensors JSON header, checked as the safetensors library checks it.

A header the library would reject (unknown dtype, negative shape, offsets that disagree with
the shape or leave holes) is refused here, with the tensor and the problem in one line, so the
metadata view never shows nonsense and --stats / --diff never meet the library's own error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ptool.core.errors import PtoolError
from ptool.core.inspect.dtypes import SAFETENSORS_BITS, SAFETENSORS_DTYPE
from ptool.core.inspect.unpickler import Storage, TensorMeta


class BadEntry(ValueError):
    """One tensor's header entry is invalid; the message says how."""


def _count(value: Any) -> bool:
    """A non-negative JSON integer (JSON true/false are not counts)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _dtype(entry: dict) -> str:
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_BITS:
        raise BadEntry(f"has unknown dtype {json.dumps(dtype)}")
    if dtype not in SAFETENSORS_DTYPE:
        raise BadEntry(f"has dtype {dtype}, which torch has no dtype for")
    return dtype


def _shape(entry: dict) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_count(s) for s in shape):
        raise BadEntry(f"has shape {json.dumps(shape)}, not a list of non-negative integers")
    return shape


def _offsets(entry: dict) -> tuple[int, int]:
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise BadEntry(
            f"has data_offsets {json.dumps(offsets)}, not [begin, end] with 0 <= begin <= end"
        )
    return offsets[0], offsets[1]


def _entry(entry: Any) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(torch dtype, torch shape, byte span in the data) of one valid entry."""
    if not isinstance(entry, dict):
        raise BadEntry("is not a JSON object")
    dtype, shape, (begin, end) = _dtype(entry), _shape(entry), _offsets(entry)
    numel = 1
    for size in shape:
        numel *= size
    bits = numel * SAFETENSORS_BITS[dtype]
    if bits % 8:
        raise BadEntry(f"has {numel} {dtype} elements, which do not fill whole bytes")
    if end - begin != bits // 8:
        raise BadEntry(
            f"has data_offsets [{begin}, {end}] ({end - begin} bytes) but shape "
            f"{json.dumps(shape)} of {dtype} needs {bits // 8} bytes"
        )
    if dtype == "F4":  # torch holds pairs: the last dimension halves
        if not shape or shape[-1] % 2:
            raise BadEntry(f"has F4 shape {json.dumps(shape)}: torch needs an even last dimension")
        shape = [*shape[:-1], shape[-1] // 2]
    return SAFETENSORS_DTYPE[dtype], tuple(shape), (begin, end)


def _check_layout(path: Path, spans: list[tuple[int, int, str]], data_bytes: int) -> None:
    """The tensors' bytes follow each other without overlap or gap and end with the file."""
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise PtoolError(
                f"{path} is corrupt (bad safetensors header: tensor {name!r} has data_offsets "
                f"[{begin}, {stop}], overlapping or leaving a gap after byte {end})"
            )
        end = stop
    if end > data_bytes:
        raise PtoolError(
            f"{path} is truncated (tensor data ends at {end} bytes, the file holds {data_bytes})"
        )
    if end < data_bytes:
        raise PtoolError(f"{path} is corrupt ({data_bytes - end} bytes after the last tensor)")


def _metadata(path: Path, header: dict) -> dict[str, str]:
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise PtoolError(
            f"{path} is corrupt (bad safetensors header: __metadata__ is not a map of strings)"
        )
    return metadata


def parse(
    path: Path, header: Any, data_start: int, data_bytes: int
) -> tuple[dict[str, TensorMeta], dict[str, str]]:
    """Tensors (with their byte span in the file) and __metadata__ of a decoded header; the
    tensor data starts at byte `data_start` of the file and holds `data_bytes` bytes."""
    if not isinstance(header, dict):
        raise PtoolError(f"{path} is corrupt (bad safetensors header: not a JSON object)")
    metadata = _metadata(path, header)
    tensors, spans = {}, []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = _entry(entry)
        except BadEntry as bad:
            raise PtoolError(
                f"{path} is corrupt (bad safetensors header: tensor {name!r} {bad})"
            ) from None
        storage = Storage(name, dtype, 0, span=(data_start + begin, data_start + end))
        tensors[name] = TensorMeta(dtype, shape, storage=storage)
        spans.append((begin, end, name))
    _check_layout(path, spans, data_bytes)
    return tensors, metadata
