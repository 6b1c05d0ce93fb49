"""Views that need tensor values (--stats, --diff, --unsafe-load): torch, tensor by tensor.

Files are opened with ptool.core.checkpoint.load (weights_only=True, mmap=True) or, for
safetensors, with safetensors' own memory-mapped reader; statistics run over fixed-size chunks
so the peak stays near one tensor (plus torch), whatever the file size.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ptool.core.checkpoint import load
from ptool.core.errors import PtoolError
from ptool.core.inspect.reader import RawCheckpoint, read
from ptool.core.inspect.tree import model_tensors
from ptool.core.inspect.unpickler import DType, TensorMeta

CHUNK = 1 << 24  # elements per step: bounded temporaries (bool masks, a float64 copy)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


@contextlib.contextmanager
def tensor_source(
    raw: RawCheckpoint, key: str | None = None, *, unsafe: bool = False
) -> Iterator[tuple[list[str], Callable[[str], torch.Tensor], Callable[[torch.Tensor], None]]]:
    """(names, get, release) over the same tensors, with the same names, as the metadata view;
    `release(t)` drops a read tensor's pages from memory where the file is memory-mapped."""
    if raw.container == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(raw.path), framework="pt") as f:
                yield list(f.keys()), f.get_tensor, _keep
        except SafetensorError as exc:  # the header was checked: a file changed since, or a bug
            reason = " ".join(str(exc).split())
            raise PtoolError(f"{raw.path} is corrupt (safetensors: {reason})") from None
        return
    with warnings.catch_warnings():  # torch's deprecation notes on quantized tensors
        warnings.simplefilter("ignore")
        obj = load(raw.path, unsafe=unsafe)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    _, _, named = model_tensors(obj, _is_tensor, key, raw.path)
    found = dict(named)
    mapped = raw.container == "torch-zip" and not unsafe  # load() maps zip files (mmap=True)
    yield list(found), found.__getitem__, _release if mapped else _keep


def _keep(_t: torch.Tensor) -> None:
    """Nothing to release: the tensor's memory is freed with it."""


@functools.cache
def _libc() -> Any:  # ctypes.CDLL(None) is 23 us a call: 0.25 s for 10,000 tensors
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _release(t: torch.Tensor) -> None:
    """MADV_DONTNEED on a tensor's pages of the read-only file mapping, so resident memory stays
    near one tensor: unmodified file-backed pages are simply read again if touched again."""
    import ctypes
    import mmap

    if (
        t.is_quantized
        or t.is_meta
        or t.layout != torch.strided
        or not hasattr(mmap, "MADV_DONTNEED")
    ):
        return
    storage = t.untyped_storage()
    page = mmap.PAGESIZE
    begin = storage.data_ptr() // page * page
    end = storage.data_ptr() + storage.nbytes()
    with contextlib.suppress(OSError, AttributeError):
        _libc().madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), mmap.MADV_DONTNEED)


# Dtypes the statistics run in; the others are converted chunk by chunk (float16 / bfloat16
# too: var_mean in their own precision is off in the third digit).
NATIVE = frozenset({torch.float32, torch.float64})
INTEGER = frozenset(
    {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
    | {torch.uint16, torch.uint32, torch.uint64}
)
FLOAT4 = getattr(torch, "float4_e2m1fn_x2", None)
FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]).repeat(2)  # e2m1 by nibble
FP4_VALUES[8:] *= -1  # bit 3 is the sign
STAT_KEYS = ("min", "max", "mean", "std", "zeros", "zero_fraction", "nan", "inf")

Convert = Callable[[torch.Tensor], torch.Tensor]


def _same(chunk: torch.Tensor) -> torch.Tensor:
    return chunk


def _to_float32(chunk: torch.Tensor) -> torch.Tensor:
    """float8 has no isfinite / var_mean / aminmax kernels, 16-bit floats lose precision in
    them; float32 holds all their values exactly."""
    return chunk.to(torch.float32)


def _to_float64(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.to(torch.float64)


def _magnitude(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.abs()


def _decode_fp4(chunk: torch.Tensor) -> torch.Tensor:
    """float4_e2m1fn_x2 bytes (torch has no kernels for them) as both halves' float32 values,
    low nibbles then high ones: the order does not matter to statistics, and diff decodes both
    files alike."""
    return FP4_VALUES[torch.cat((chunk & 15, chunk >> 4)).long()]


def _converter(dtype: torch.dtype) -> Convert | None:
    """How to turn a chunk of `dtype` into one torch can compute on; None: it cannot."""
    if dtype in NATIVE:
        return _same
    if dtype.is_floating_point:
        return _to_float32
    if dtype in INTEGER:
        return _to_float64
    return None  # bits8, bits16, ...: opaque bytes


def _flat(t: torch.Tensor, *, complex_parts: bool = False) -> tuple[torch.Tensor, Convert | None]:
    """The tensor as a flat view and the conversion each chunk of it needs. Converting chunk by
    chunk keeps the upcast copy of a low-precision or integer tensor at CHUNK elements.
    Quantized tensors are dequantized; complex ones give magnitudes, or with `complex_parts`
    their real and imaginary parts."""
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    if t.is_complex():
        if not complex_parts:
            return t.reshape(-1), _magnitude
        t = torch.view_as_real(t)
    if FLOAT4 is not None and t.dtype == FLOAT4:
        return t.view(torch.uint8).reshape(-1), _decode_fp4
    return t.reshape(-1), _converter(t.dtype)


def _stored(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """An expanded tensor (a dimension of stride 0) as the values it stores, and how many
    times each one repeats: `torch.zeros(1).expand(10**5, 10**5)` is one value, not 10**10."""
    repeat = 1
    for dim in range(t.dim()):
        if t.stride(dim) == 0 and t.size(dim) > 1:
            repeat *= t.size(dim)
            t = t.narrow(dim, 0, 1)
    return t, repeat


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """min / max / mean / std (unbiased) over the finite values; zeros, NaN and Inf counts;
    all None for a dtype torch cannot compute on (bits8, ...).

    Chunked (Chan's parallel variance over torch.var_mean of each chunk, in float32 for
    floats of 32 bits or fewer, in float64 for integers) so temporaries stay at CHUNK elements.
    """
    if t.is_meta:  # shape and dtype only: there are no values
        return dict.fromkeys(STAT_KEYS)
    if t.layout != torch.strided:
        return _sparse_stats(t)
    t, repeat = _stored(t)
    flat, convert = _flat(t)
    if convert is None:
        return dict.fromkeys(STAT_KEYS)
    n, mean, m2 = 0, 0.0, 0.0
    low, high = math.inf, -math.inf
    numel = zeros = nans = infs = 0
    for start in range(0, flat.numel(), CHUNK):
        chunk = convert(flat[start : start + CHUNK])
        numel += chunk.numel()
        zeros += int((chunk == 0).sum())
        if not bool(torch.isfinite(chunk).all()):
            nans += int(torch.isnan(chunk).sum())
            infs += int(torch.isinf(chunk).sum())
            chunk = chunk[torch.isfinite(chunk)]
        k = chunk.numel()
        if k == 0:
            continue
        var, chunk_mean = torch.var_mean(chunk, correction=0)
        chunk_min, chunk_max = torch.aminmax(chunk)
        delta = float(chunk_mean) - mean
        total = n + k
        mean += delta * k / total
        m2 += float(var) * k + delta * delta * n * k / total
        n = total
        low, high = min(low, float(chunk_min)), max(high, float(chunk_max))
    # each stored value stands for `repeat` equal ones: the same mean, min and max
    n, m2, numel, zeros, nans, infs = (v * repeat for v in (n, m2, numel, zeros, nans, infs))
    return {
        "min": low if n else None,
        "max": high if n else None,
        "mean": mean if n else None,
        "std": math.sqrt(m2 / (n - 1)) if n > 1 else None,
        "zeros": zeros,
        "zero_fraction": zeros / numel if numel else None,
        "nan": nans,
        "inf": infs,
    }


def _sparse_stats(t: torch.Tensor) -> dict[str, Any]:
    """A sparse tensor's statistics as its dense form's, without densifying it: those of its
    stored values merged with the zeros it does not store (duplicate COO entries summed)."""
    values = (t.coalesce() if t.layout == torch.sparse_coo else t).values()
    out = tensor_stats(values)
    implicit = t.numel() - values.numel()
    if implicit == 0 or out["zeros"] is None:
        return out
    n = values.numel() - out["nan"] - out["inf"]  # finite stored values
    mean = out["mean"] or 0.0
    m2 = out["std"] ** 2 * (n - 1) if out["std"] is not None else 0.0
    total = n + implicit
    m2 += mean * mean * n * implicit / total
    zeros = out["zeros"] + implicit
    out.update(
        min=min(out["min"] if n else 0.0, 0.0),
        max=max(out["max"] if n else 0.0, 0.0),
        mean=mean * n / total,
        std=math.sqrt(m2 / (total - 1)) if total > 1 else None,
        zeros=zeros,
        zero_fraction=zeros / t.numel(),
    )
    return out


def stats(
    raw: RawCheckpoint, names: list[str], key: str | None = None, *, unsafe: bool = False
) -> list[dict[str, Any]]:
    """Statistics of the named tensors (of the entry `key`), one tensor at a time."""
    out = []
    with tensor_source(raw, key, unsafe=unsafe) as (_, get, release):
        for name in names:
            tensor = get(name)
            out.append({"name": name, **tensor_stats(tensor)})
            release(tensor)
    return out


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Largest |a - b| (complex: of the real and imaginary parts), chunked. NaN in both at the
    same place counts as equal; a NaN facing anything else makes the result NaN (JSON null).
    None for dtypes torch cannot compute on whose bytes differ."""
    fa, convert = _flat(a, complex_parts=True)
    fb, _ = _flat(b, complex_parts=True)
    if convert is None:
        return 0.0 if torch.equal(fa.view(torch.uint8), fb.view(torch.uint8)) else None
    worst = 0.0
    integer = a.dtype in INTEGER  # compared exactly (fp4's uint8 view decodes to floats)
    for start in range(0, fa.numel(), CHUNK):
        na, nb = fa[start : start + CHUNK], fb[start : start + CHUNK]
        ca, cb = convert(na).to(torch.float64), convert(nb).to(torch.float64)
        nan_a, nan_b = torch.isnan(ca), torch.isnan(cb)
        if bool((nan_a != nan_b).any()):
            return math.nan
        equal = nan_a | (ca == cb)  # NaN in both, or the same value (the same infinity too)
        if integer:  # float64 holds integers exactly only up to 2**53: 2**60 + 1 != 2**60
            equal = na == nb
        d = (ca - cb).abs().masked_fill(equal, 0)
        if integer:  # a difference that float64 rounded away is still at least 1
            d = torch.where(equal, d, d.clamp_min(1.0))
        if d.numel():
            worst = max(worst, float(d.max()))
    return worst


def diff(
    raw: RawCheckpoint,
    other: str | Path,
    pattern: re.Pattern[str] | None,
    key: str | None = None,
    *,
    unsafe: bool,
) -> dict[str, Any]:
    """Tensors added (only in OTHER), removed (only in FILE), reshaped (shape or dtype
    differs) and changed (max |a - b| > 0) from FILE to OTHER (both: in the entry `key`)."""
    other_raw = read(other)  # refuses unsafe pickles before torch sees them
    with (
        tensor_source(raw, key, unsafe=unsafe) as (names_a, get_a, release_a),
        tensor_source(other_raw, key) as (names_b, get_b, release_b),
    ):
        keep = [n for n in names_a if pattern is None or pattern.search(n)]
        set_a, set_b = set(names_a), set(names_b)
        result: dict[str, Any] = {
            "other": str(other),
            "added": [n for n in names_b if n not in set_a and (not pattern or pattern.search(n))],
            "removed": [n for n in keep if n not in set_b],
            "reshaped": [],
            "changed": [],
            "unchanged": 0,
        }
        for name in (n for n in keep if n in set_b):
            a, b = get_a(name), get_b(name)
            _compare(result, name, a, b)
            release_a(a)
            release_b(b)
    return result


def _compare(result: dict[str, Any], name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Count one tensor present in both files as reshaped, changed or unchanged (sparse
    tensors by their dense values)."""
    a, b = (t.to_dense() if t.layout != torch.strided and not t.is_meta else t for t in (a, b))
    if a.shape != b.shape or a.dtype != b.dtype:
        result["reshaped"].append(
            {
                "name": name,
                "shape": list(a.shape),
                "other_shape": list(b.shape),
                "dtype": str(a.dtype).removeprefix("torch."),
                "other_dtype": str(b.dtype).removeprefix("torch."),
            }
        )
        return
    if a.is_meta or b.is_meta:  # no values: equal only if neither has any
        worst = 0.0 if a.is_meta and b.is_meta else None
    else:
        worst = max_abs_diff(a, b)
    if worst == 0:
        result["unchanged"] += 1
    else:  # NaN (a NaN moved or appeared) and None (opaque bytes differ) are changes too
        non_finite = None if worst is None or math.isfinite(worst) else str(worst)  # JSON: null
        result["changed"].append({"name": name, "max_abs_diff": worst, "non_finite": non_finite})


def _sparse_parts(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What torch.save stores of a sparse tensor: its indices and values."""
    if t.layout == torch.sparse_coo:
        return t._indices(), t._values()
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices(), t.values()
    return t.ccol_indices(), t.row_indices(), t.values()


def _to_meta(value: Any) -> Any:
    """A torch.load'ed tree with tensors as TensorMeta (the values kept for small reads)."""
    if isinstance(value, torch.Tensor) and value.layout != torch.strided:
        sparse = {
            "layout": str(value.layout).removeprefix("torch."),
            "nnz": value._nnz(),
            "parts": tuple(_to_meta(part) for part in _sparse_parts(value)),
        }
        dtype = str(value.dtype).removeprefix("torch.")
        return TensorMeta(dtype, tuple(value.shape), sparse=sparse)
    if isinstance(value, torch.Tensor):
        quant = None
        if value.is_quantized:
            scheme = str(value.qscheme()).removeprefix("torch.")
            if scheme.startswith("per_tensor"):
                quant = {
                    "qscheme": scheme,
                    "scale": value.q_scale(),
                    "zero_point": value.q_zero_point(),
                }
            else:
                quant = {
                    "qscheme": scheme,
                    "scales": _to_meta(value.q_per_channel_scales()),
                    "zero_points": _to_meta(value.q_per_channel_zero_points()),
                    "axis": value.q_per_channel_axis(),
                }
        return TensorMeta(
            str(value.dtype).removeprefix("torch."),
            tuple(value.shape),
            is_parameter=isinstance(value, torch.nn.Parameter),
            quant=quant,
            extra={"tensor": value},
        )
    if isinstance(value, torch.dtype):
        return DType(str(value).removeprefix("torch."))
    if isinstance(value, dict):
        return type(value)((k, _to_meta(v)) for k, v in value.items()) if value else value
    if isinstance(value, list):
        return [_to_meta(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_meta(v) for v in value)
    return value


def unsafe_metadata(path: Path) -> RawCheckpoint:
    """--unsafe-load: torch.load(weights_only=False), then the same metadata as a safe read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = load(path, unsafe=True)
    module_class = None
    if isinstance(obj, torch.nn.Module):
        module_class = f"{type(obj).__module__}.{type(obj).__qualname__}"
        obj = obj.state_dict()
    container = "pickled-module" if module_class else "unsafe-pickle"
    return RawCheckpoint(
        path, container, _to_meta(obj), path.stat().st_size, module_class=module_class
    )
