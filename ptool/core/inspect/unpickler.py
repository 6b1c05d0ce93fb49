"""A restricted unpickler that builds tensor metadata and never runs code from the file.

`find_class` hands out harmless stand-ins for an allowlist (the globals torch.save writes for
tensors, storages, dtypes and plain containers) and refuses every other global by name, so
`__reduce__` payloads (os.system, exec, ...) are never reached. Tensors become `TensorMeta`:
shape, dtype, stride and where their bytes live, without reading those bytes.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import pickle
import pickletools
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ptool.core.inspect.dtypes import ITEMSIZE, STORAGE_DTYPE, byte_count


class BadTensor(ValueError):
    """A tensor torch would refuse to rebuild (negative sizes, elements past the end of its
    storage): reading its values would read past the storage's bytes."""


class RefusedGlobal(Exception):
    """The pickle asked for a global outside the allowlist (`name` is "module.qualname")."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class DType:
    """Stand-in for a torch dtype global (GLOBAL torch.float32)."""

    name: str


@dataclass(frozen=True)
class StorageType:
    """Stand-in for a storage class global (GLOBAL torch.FloatStorage)."""

    name: str

    @property
    def dtype(self) -> str:
        return STORAGE_DTYPE[self.name]


@dataclass(frozen=True)
class Storage:
    """Where a storage's bytes live: zip entry `data/<key>`, or a byte span (safetensors)."""

    key: str
    dtype: str
    numel: int
    span: tuple[int, int] | None = None  # absolute [begin, end) in the file (safetensors)

    @property
    def nbytes(self) -> int:
        """What its zip entry holds (numel of its dtype), or its byte span."""
        if self.span is not None:
            return self.span[1] - self.span[0]
        return self.numel * ITEMSIZE.get(self.dtype, 1)


@dataclass
class TensorMeta:
    """Everything about a tensor but its values."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...] | None = None
    offset: int = 0
    storage: Storage | None = None
    is_parameter: bool = False
    quant: dict[str, Any] | None = None  # qscheme, scale/zero_point or per-channel tensors
    sparse: dict[str, Any] | None = None  # layout, nnz, parts (its index and value tensors)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def itemsize(self) -> int:
        return ITEMSIZE.get(self.dtype, 1)

    @property
    def nbytes(self) -> int:
        """Bytes stored: a sparse tensor's are those of its indices and values."""
        if self.sparse:
            return sum(part.nbytes for part in self.sparse["parts"])
        return byte_count(self.dtype, self.shape)


@dataclass(frozen=True)
class Marker:
    """Stand-in for a class used only as a tag (torch.Tensor, torch.nn.Parameter)."""

    name: str


PARAMETER = Marker("torch.nn.parameter.Parameter")
INT64 = 1 << 63  # torch's sizes, strides and offsets are int64


def _integers(values: Any, what: str) -> tuple[int, ...]:
    """A size or stride as torch takes it: int64s (a bool or a float is no size)."""
    out = tuple(values)
    if not all(type(v) is int and -INT64 <= v < INT64 for v in out):
        raise BadTensor(f"a tensor's {what} {out!r:.80} is not a list of integers")
    return out


def view_bytes(t: TensorMeta) -> int:
    """The bytes of its storage a tensor reads, from the storage's start, as torch counts them
    (computeStorageNbytes); BadTensor where torch refuses the view: a negative size or offset,
    a negative stride of a non-empty tensor, more elements than int64 counts, or (with a
    storage) bytes past the storage's end, which NumPy's `as_strided` would read from memory
    that is not the file's."""
    if type(t.offset) is not int or not 0 <= t.offset < INT64:
        raise BadTensor(f"a tensor has the storage offset {t.offset!r:.80}")
    if any(n < 0 for n in t.shape):
        raise BadTensor(f"a tensor has the negative size {t.shape}")
    if t.numel >= INT64:
        raise BadTensor(f"a tensor of size {t.shape} has more elements than int64 counts")
    if t.stride is None:  # contiguous: a safetensors tensor, a sparse tensor's dense size
        last = t.offset + t.numel - 1
    else:
        if len(t.stride) != len(t.shape):
            raise BadTensor(f"a tensor of size {t.shape} has the stride {t.stride}")
        if t.numel and any(s < 0 for s in t.stride):
            raise BadTensor(f"a tensor of size {t.shape} has the negative stride {t.stride}")
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride, strict=True))
    needed = byte_count(t.dtype, (last + 1,)) if t.numel else 0
    if t.storage is not None and needed > t.storage.nbytes:
        raise BadTensor(
            f"a {t.dtype} tensor of size {t.shape}, stride {t.stride} and offset {t.offset} "
            f"needs {needed:,} bytes of storage {t.storage.key}, which holds "
            f"{t.storage.nbytes:,}"
        )
    return needed


def _checked(t: TensorMeta) -> TensorMeta:
    """`t`, or BadTensor where torch would refuse to rebuild it."""
    view_bytes(t)
    return t


def _view(dtype: str, storage: Any, offset, size, stride, **fields: Any) -> TensorMeta:
    """A tensor over `storage`, checked as torch checks it when it rebuilds one."""
    if not isinstance(storage, Storage):
        raise pickle.UnpicklingError(f"a tensor's storage is {type(storage).__name__}")
    size, stride = _integers(size, "size"), _integers(stride, "stride")
    return _checked(TensorMeta(dtype, size, stride, offset, storage, **fields))


def _rebuild_tensor(storage, offset, size, stride, *_rest) -> TensorMeta:
    return _view(storage.dtype, storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, _grad, _hooks, dtype, *_rest) -> TensorMeta:
    return _view(dtype.name, storage, offset, size, stride)


def _rebuild_qtensor(storage, offset, size, stride, qparams, *_rest) -> TensorMeta:
    scheme = qparams[0]
    if scheme.startswith("per_tensor"):
        quant = {"qscheme": scheme, "scale": float(qparams[1]), "zero_point": int(qparams[2])}
    else:  # per-channel: scale and zero-point tensors along `axis`
        if not all(isinstance(q, TensorMeta) for q in qparams[1:3]):
            raise pickle.UnpicklingError("per-channel scales or zero points are not tensors")
        quant = {"qscheme": scheme, "scales": qparams[1], "zero_points": qparams[2]}
        quant["axis"] = int(qparams[3])
    return _view(storage.dtype, storage, offset, size, stride, quant=quant)


def _rebuild_parameter(data: TensorMeta, *_rest) -> TensorMeta:
    data.is_parameter = True
    return data


def _rebuild_meta_tensor(dtype: DType, size, stride, *_rest) -> TensorMeta:
    size, stride = _integers(size, "size"), _integers(stride, "stride")
    return _checked(TensorMeta(dtype.name, size, stride, extra={"device": "meta"}))


def _rebuild_sparse_tensor(layout: str, data: tuple) -> TensorMeta:
    """COO: (indices [ndim, nnz], values [nnz, ...], size[, coalesced]); csr/csc/bsr/bsc:
    (compressed indices, plain indices [..., nnz], values, size). Only their metadata."""
    layout = str(layout).removeprefix("torch.")
    if layout == "sparse_coo":
        indices, values, size = data[:3]
        parts = (indices, values)
    else:
        compressed, indices, values, size = data
        parts = (compressed, indices, values)
    if not all(isinstance(part, TensorMeta) for part in parts):
        raise pickle.UnpicklingError(f"malformed {layout} tensor")
    nnz = indices.shape[-1] if indices.shape else 0
    sparse = {"layout": layout, "nnz": nnz, "parts": parts}
    return _checked(TensorMeta(values.dtype, _integers(size, "size"), sparse=sparse))


def _rebuild_from_type(func: Callable, new_type: Any, args: tuple, _state: Any) -> Any:
    result = func(*args)
    if new_type == PARAMETER and isinstance(result, TensorMeta):
        result.is_parameter = True
    return result


def _rebuild_device_tensor(data: TensorMeta, dtype: DType, device: str, *_rest) -> TensorMeta:
    if dtype.name != data.dtype:  # torch converts the values: the bytes are not of `dtype`
        data.storage = None
    data.dtype = dtype.name
    data.extra["device"] = device
    return data


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode`, which protocol 2 uses for bytes; text codecs only (no zlib bombs)."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise RefusedGlobal(f"_codecs.encode with codec {encoding!r}")
    return text.encode(encoding)


def _device(kind: str, index: int | None = None) -> str:
    return kind if index is None else f"{kind}:{index}"


QSCHEMES = (
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)

_REBUILDERS: dict[str, Callable] = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_tensor_v3": _rebuild_tensor_v3,
    "_rebuild_qtensor": _rebuild_qtensor,
    "_rebuild_sparse_tensor": _rebuild_sparse_tensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
    "_rebuild_meta_tensor_no_storage": _rebuild_meta_tensor,
    "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor,
}

ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "Counter"): Counter,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _encode,
    ("torch", "Size"): tuple,
    ("torch.torch_version", "TorchVersion"): str,  # `torch.__version__` saved as a value
    ("torch", "device"): _device,
    ("torch", "Tensor"): Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): PARAMETER,
    ("torch.serialization", "_get_layout"): str,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    **{("torch._utils", name): fn for name, fn in _REBUILDERS.items()},
    **{("torch", name): DType(name) for name in ITEMSIZE},
    **{("torch", name): StorageType(name) for name in STORAGE_DTYPE},
    **{("torch.storage", name): StorageType(name) for name in ("UntypedStorage", "TypedStorage")},
    **{("torch", name): name for name in QSCHEMES},
}


class MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals are the stand-ins above, and nothing else."""

    def __init__(self, file: io.BufferedIOBase, persistent_load: Callable[[tuple], Any] | None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol 2: __builtin__.set), mapped as pickle's own find_class does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError("persistent id in a plain pickle")
        return self._persistent(pid)


def zip_storage(pid: tuple) -> Storage:
    """torch's zip format: ('storage', storage_type, key, location, numel)."""
    kind, storage_type, key, _location, numel = pid
    if kind != "storage" or not isinstance(storage_type, StorageType):
        raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
    return Storage(str(key), storage_type.dtype, int(numel))


def legacy_storage(pid: tuple) -> Storage:
    """torch's pre-1.6 format: ('storage', storage_type, key, location, numel, view_metadata)."""
    return zip_storage(tuple(pid[:5]))


def unpickle(file: io.BufferedIOBase, persistent_load: Callable[[tuple], Any] | None = None) -> Any:
    """One pickle from `file`, built from stand-ins only; RefusedGlobal for anything else."""
    return MetadataUnpickler(file, persistent_load).load()


_MODULE_MARKERS = {"_modules", "_parameters", "_buffers"}


def looks_like_module(data: bytes | BinaryIO) -> bool:
    """Whether a pickle holds an nn.Module, decided from its opcodes alone (nothing runs):
    a pickled module's state carries the `_modules` / `_parameters` attribute names."""
    strings: set[str] = set()
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            if isinstance(arg, str) and opcode.name.endswith("UNICODE"):
                strings.add(arg)
    except Exception:  # noqa: BLE001 - a broken tail: judge by what was read
        pass
    return strings >= _MODULE_MARKERS
