"""Names of tensor element types in the format, and their torch and numpy counterparts.

Every dtype is stored little-endian. The names are torch's without the ``torch.`` prefix.
"""

from __future__ import annotations

from functools import cache

import torch

from .errors import MetadataError

_TORCH_BY_NAME: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
    "bool": torch.bool,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
}
_NAME_BY_TORCH = {dtype: name for name, dtype in _TORCH_BY_NAME.items()}

# numpy type strings for readers without torch; ml_dtypes provides the types numpy lacks.
NUMPY_TYPESTR: dict[str, str] = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "complex64": "<c8",
    "complex128": "<c16",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "|i1",
    "uint8": "|u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "bool": "|b1",
    "bfloat16": "ml_dtypes.bfloat16 (or <u2 raw bits: upper half of a float32)",
    "float8_e4m3fn": "ml_dtypes.float8_e4m3fn (or |u1 raw bits)",
    "float8_e4m3fnuz": "ml_dtypes.float8_e4m3fnuz (or |u1 raw bits)",
    "float8_e5m2": "ml_dtypes.float8_e5m2 (or |u1 raw bits)",
    "float8_e5m2fnuz": "ml_dtypes.float8_e5m2fnuz (or |u1 raw bits)",
}


def dtype_name(dtype: torch.dtype, where: str = "") -> str:
    """The format name of a torch dtype; raises for dtypes the format does not store."""
    try:
        return _NAME_BY_TORCH[dtype]
    except KeyError:
        from .errors import UnsupportedValueError

        raise UnsupportedValueError(f"{where or 'tensor'}: dtype {dtype} cannot be checkpointed") from None


def torch_dtype(name: str, where: str = "") -> torch.dtype:
    """The torch dtype of a format name; raises MetadataError for unknown names."""
    try:
        return _TORCH_BY_NAME[name]
    except KeyError:
        raise MetadataError(f"{where or 'metadata'}: unknown dtype {name!r}") from None


@cache
def itemsize(name: str) -> int:
    return torch.empty((), dtype=torch_dtype(name)).element_size()
