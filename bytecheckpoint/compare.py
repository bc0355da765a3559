"""Comparing two checkpoints tensor by tensor (shapes, dtypes, max abs/rel difference) and value by value.

Tensors are read one at a time, whole, each chunk verified against its checksum; differences are
computed in slices of ``SLICE_ELEMENTS`` elements, so extra memory is one tensor per side plus a
slice in float64. Two elements match when ``|a - b| <= atol + rtol * |b|`` (``torch.isclose``;
NaNs in the same place match). Plain values match when their stored encodings are equal (nothing
is decoded, so pickled values are compared without unpickling).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .loader import read_box, read_metadata
from .metadata import CheckpointMetadata, TensorEntry
from .reader import check_chunk_bytes
from .storage import Storage

SLICE_ELEMENTS = 1 << 22

#: called with the number of bytes just read
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of either checkpoint. ``status``: ``equal`` (bit for bit), ``close`` (within
    tolerance), ``different``, ``shape``/``dtype`` (not comparable), ``only_a``, ``only_b``."""

    name: str
    status: str
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs: float | None = None
    max_rel: float | None = None
    mismatched: int | None = None  # elements outside the tolerance

    @property
    def same(self) -> bool:
        return self.status in ("equal", "close")


@dataclass(frozen=True)
class ValueDiff:
    """One plain value: ``equal``, ``different``, ``only_a`` or ``only_b``, with the stored encodings."""

    name: str
    status: str
    a: Any = None
    b: Any = None


@dataclass(frozen=True)
class CheckpointDiff:
    a: str
    b: str
    rtol: float
    atol: float
    tensors: list[TensorDiff] = field(default_factory=list)
    values: list[ValueDiff] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return all(t.same for t in self.tensors) and all(v.status == "equal" for v in self.values)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "same": self.same}


def compare_checkpoints(a: Storage, b: Storage, rtol: float = 0.0, atol: float = 0.0,
                        progress: Progress | None = None) -> CheckpointDiff:
    """Compare every tensor and plain value of ``a`` and ``b`` (``b`` is the reference for ``rtol``)."""
    if rtol < 0 or atol < 0:
        raise ValueError(f"tolerances must be >= 0, got rtol={rtol} atol={atol}")
    meta_a, meta_b = read_metadata(a), read_metadata(b)
    check_chunk_bytes(a, meta_a.tensors)
    check_chunk_bytes(b, meta_b.tensors)
    ta, tb = meta_a.tensor_by_fqn(), meta_b.tensor_by_fqn()
    tensors: list[TensorDiff] = []
    for name in sorted(ta.keys() | tb.keys()):
        ea, eb = ta.get(name), tb.get(name)
        if eb is None:
            tensors.append(TensorDiff(name, "only_a", shape_a=list(ea.shape), dtype_a=ea.dtype))
            continue
        if ea is None:
            tensors.append(TensorDiff(name, "only_b", shape_b=list(eb.shape), dtype_b=eb.dtype))
            continue
        kinds = {"shape_a": list(ea.shape), "shape_b": list(eb.shape), "dtype_a": ea.dtype, "dtype_b": eb.dtype}
        if ea.shape != eb.shape:
            tensors.append(TensorDiff(name, "shape", **kinds))
        elif ea.dtype != eb.dtype:
            tensors.append(TensorDiff(name, "dtype", **kinds))
        else:
            x, y = _read(a, meta_a, ea, progress), _read(b, meta_b, eb, progress)
            tensors.append(TensorDiff(name, **kinds, **_difference(x, y, rtol, atol)))
    va = {v.fqn: v.encoded for v in meta_a.values}
    vb = {v.fqn: v.encoded for v in meta_b.values}
    values = []
    for name in sorted(va.keys() | vb.keys()):
        if name not in vb:
            values.append(ValueDiff(name, "only_a", a=va[name]))
        elif name not in va:
            values.append(ValueDiff(name, "only_b", b=vb[name]))
        else:
            values.append(ValueDiff(name, "equal" if va[name] == vb[name] else "different", va[name], vb[name]))
    return CheckpointDiff(a.url, b.url, rtol, atol, tensors, values)


def _read(storage: Storage, metadata: CheckpointMetadata, entry: TensorEntry, progress: Progress | None
          ) -> torch.Tensor:
    tensor, nbytes = read_box(storage, metadata, entry)
    if progress is not None:
        progress(nbytes)
    return tensor


def _difference(x: torch.Tensor, y: torch.Tensor, rtol: float, atol: float) -> dict[str, Any]:
    """Status, max abs/rel difference and the count of elements outside the tolerance."""
    wide = torch.complex128 if x.is_complex() else torch.float64
    fx, fy = x.reshape(-1), y.reshape(-1)
    max_abs = max_rel = 0.0
    mismatched = 0
    for start in range(0, fx.numel(), SLICE_ELEMENTS):
        a = fx[start:start + SLICE_ELEMENTS].to(wide)
        b = fy[start:start + SLICE_ELEMENTS].to(wide)
        same = (a == b) | (a.isnan() & b.isnan())  # equal infinities and NaNs in the same place match
        diff = (a - b).abs().masked_fill(same, 0.0).nan_to_num(nan=float("inf"))  # one NaN: infinitely far
        ref = b.abs()
        mismatched += int((diff > atol + rtol * ref).sum())
        if diff.numel():
            max_abs = max(max_abs, float(diff.max()))
            nonzero = ref > 0
            if bool(nonzero.any()):
                max_rel = max(max_rel, float((diff[nonzero] / ref[nonzero]).max()))
    status = "different" if mismatched else ("equal" if max_abs == 0 else "close")
    return {"status": status, "max_abs": _finite(max_abs), "max_rel": _finite(max_rel), "mismatched": mismatched}


def _finite(x: float) -> float | None:
    """JSON has no infinity: an infinite difference (a NaN against a number) is reported as None."""
    return x if x != float("inf") else None
