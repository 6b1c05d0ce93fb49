"""Values of the few small tensors the metadata view needs, read straight from the file.

Pruning masks, per-channel quantization scales and scalar metrics are read from their zip entry
(or safetensors byte span) with NumPy, at the offsets the restricted reader found: no torch
import (2 s and 650 MB), no unpickling, one tensor in memory at a time. Everything bigger goes
through `torch.load(weights_only=True, mmap=True)` in --stats / --diff.
"""

from __future__ import annotations

import zipfile
from typing import TYPE_CHECKING, Any

from ptool.core.errors import PtoolError
from ptool.core.inspect.reader import ZIP_ERRORS, RawCheckpoint
from ptool.core.inspect.unpickler import BadTensor, TensorMeta, view_bytes

if TYPE_CHECKING:
    import numpy as np

_NUMPY_DTYPE = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "bool": "?",
    "qint8": "i1",  # the integer representation; scale/zero point live in TensorMeta.quant
    "quint8": "u1",
    "qint32": "<i4",
}


class RawReader:
    """Reads tensor values of one checkpoint; use as a context manager."""

    def __init__(self, raw: RawCheckpoint):
        self.raw = raw
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *_exc: Any) -> None:
        if self._zip is not None:
            self._zip.close()

    def _storage_bytes(self, t: TensorMeta, nbytes: int) -> bytes | None:
        """The first `nbytes` of the tensor's storage; a file that holds fewer is corrupt."""
        storage = t.storage
        if storage is None:
            return None
        if storage.span is not None:
            with open(self.raw.path, "rb") as f:
                f.seek(storage.span[0])
                data = f.read(nbytes)
        elif self.raw.container == "torch-zip":
            data = self._zip_entry(storage.key, nbytes)
        else:
            return None  # legacy files interleave storages with pickles; --stats reads those
        if len(data) < nbytes:
            raise PtoolError(
                f"{self.raw.path} is corrupt (storage {storage.key} is missing or short)"
            )
        return data

    def _zip_entry(self, key: str, nbytes: int) -> bytes:
        """The first `nbytes` of a storage's entry (not the whole of a big one), or one line
        saying why the zip cannot give them."""
        try:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.raw.path)
            with self._zip.open(f"{self.raw.archive_prefix}/data/{key}") as entry:
                return entry.read(nbytes)
        except (KeyError, *ZIP_ERRORS) as exc:
            raise PtoolError(f"{self.raw.path} is corrupt (storage {key}: {exc})") from None

    def values(self, t: TensorMeta) -> np.ndarray | None:
        """The tensor's values in logical order (int representation for quantized tensors),
        or None when its dtype or container cannot be read without torch. Only the bytes its
        view spans are read, and only once the view is known to lie within them."""
        import numpy as np

        if "tensor" in t.extra:  # loaded with --unsafe-load: torch already has it
            tensor = t.extra["tensor"].detach().cpu()
            return (tensor.int_repr() if tensor.is_quantized else tensor.float()).numpy()
        if t.dtype not in _NUMPY_DTYPE and t.dtype != "bfloat16":
            return None
        try:
            nbytes = view_bytes(t)  # the reader checked it: this is the last guard before NumPy
        except BadTensor as exc:
            raise PtoolError(f"{self.raw.path} is corrupt ({exc})") from None
        data = self._storage_bytes(t, nbytes)
        if data is None:
            return None
        if t.dtype == "bfloat16":  # the upper half of a float32
            flat = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            flat = np.frombuffer(data, _NUMPY_DTYPE[t.dtype])
        if t.stride is None:
            return flat.reshape(t.shape)
        strides = tuple(s * flat.itemsize for s in t.stride)
        return np.lib.stride_tricks.as_strided(flat[t.offset :], t.shape, strides, writeable=False)

    def scalar(self, value: Any) -> Any:
        """A one-element tensor as a Python number (e.g. Lightning's best_model_score)."""
        if isinstance(value, TensorMeta) and value.numel == 1:
            array = self.values(value)
            if array is not None:
                return array.reshape(-1)[0].item()
        return value

    def zeros(self, t: TensorMeta) -> int | None:
        import numpy as np

        array = self.values(t)
        return None if array is None else int(t.numel - np.count_nonzero(array))
