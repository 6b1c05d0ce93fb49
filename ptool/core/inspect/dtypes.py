"""Dtype names and element sizes, torch-free: the metadata reader must not import torch."""

from __future__ import annotations

import math

ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "bits8": 1,
    "bits16": 2,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    **{f"int{n}": 1 for n in range(1, 8)},
    **{f"uint{n}": 1 for n in range(1, 8)},
}

# torch's sub-byte quantized dtypes: values packed per byte (each row rounded up to whole bytes)
PACKED: dict[str, int] = {"quint4x2": 2, "quint2x4": 4}


def byte_count(dtype: str, shape: tuple[int, ...]) -> int:
    """The bytes torch stores for a contiguous tensor: packed dtypes round each row (the last
    dimension) up to whole bytes, as torch's get_sub_byte_tensor_size does."""
    numel = math.prod(shape)
    per_byte = PACKED.get(dtype)
    if per_byte is None:
        return numel * ITEMSIZE.get(dtype, 1)
    row = shape[-1] if shape else 1
    return numel // row * -(-row // per_byte) if row else 0


# torch.save names a tensor's storage by its legacy class (GLOBAL torch.FloatStorage).
STORAGE_DTYPE: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "QInt8Storage": "qint8",
    "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",  # bytes; _rebuild_tensor_v3 names the dtype itself
    "TypedStorage": "uint8",
}

# The safetensors spec's dtypes (as safetensors 0.8 accepts them) by torch name. F4 elements
# come in pairs, torch's float4_e2m1fn_x2, the last dimension halved (as safetensors loads them).
SAFETENSORS_DTYPE: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
    "C64": "complex64",
}
# Bits per element of every dtype in the spec; the 6-bit floats have no torch dtype.
SAFETENSORS_BITS: dict[str, int] = {
    **{name: 8 * ITEMSIZE[dtype] for name, dtype in SAFETENSORS_DTYPE.items()},
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
