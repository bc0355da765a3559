"""Turning a nested state dict into tensor items (boxes of global tensors) and plain values.

Dicts are walked while they hold tensors (or RankLocal values); a subtree with neither is one
plain value.
Keys are strings or integers; a key path joined by dots is the entry's fully qualified name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor, Partial

from .boxes import ShardBox, flat_range_to_boxes
from .errors import UnsupportedValueError
from .metadata import Path, fqn_of
from .shards import FlatShard, RankLocal, ShardedTensor

TENSOR_TYPES = (torch.Tensor, ShardedTensor, FlatShard)


@dataclass(frozen=True)
class TensorPiece:
    """A box of a global tensor and a tensor of shape ``box.lengths`` viewing this rank's data."""

    box: ShardBox
    data: torch.Tensor


@dataclass(frozen=True)
class TensorItem:
    path: Path
    global_shape: tuple[int, ...]
    dtype: torch.dtype
    pieces: tuple[TensorPiece, ...]

    @property
    def fqn(self) -> str:
        return fqn_of(self.path)


@dataclass(frozen=True)
class ValueItem:
    path: Path
    value: Any
    rank_local: bool = False

    @property
    def fqn(self) -> str:
        return fqn_of(self.path)


def flatten_state(state: dict) -> tuple[list[TensorItem], list[ValueItem]]:
    """Split ``state`` into tensor items and plain values, in traversal order."""
    if not isinstance(state, dict):
        raise UnsupportedValueError(f"checkpoint state must be a dict, got {type(state).__name__}")
    tensors: list[TensorItem] = []
    values: list[ValueItem] = []
    for path, leaf in _walk(state, ()):
        if isinstance(leaf, TENSOR_TYPES):
            tensors.append(tensor_item(path, leaf))
        elif isinstance(leaf, RankLocal):
            values.append(ValueItem(path, leaf.value, rank_local=True))
        else:
            values.append(ValueItem(path, leaf))
    return tensors, values


def _walk(node: dict, prefix: Path) -> Iterator[tuple[Path, Any]]:
    for key, value in node.items():
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise UnsupportedValueError(f"{fqn_of(prefix) or '<root>'}: key {key!r} must be a str or int")
        path = (*prefix, key)
        if isinstance(value, dict) and _needs_walk(value):
            yield from _walk(value, path)
        elif isinstance(value, (list, tuple)) and _needs_walk(value):
            raise UnsupportedValueError(
                f"{fqn_of(path)}: tensors inside a {type(value).__name__} are not supported; use a dict"
            )
        else:
            yield path, value


def _needs_walk(node: Any) -> bool:
    """Whether a container holds a tensor or a RankLocal, which must keep paths of their own."""
    if isinstance(node, (*TENSOR_TYPES, RankLocal)):
        return True
    if isinstance(node, dict):
        return any(_needs_walk(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_needs_walk(v) for v in node)
    return False


def tensor_item(path: Path, leaf: Any) -> TensorItem:
    """The boxes this rank holds of the global tensor described by ``leaf``."""
    if isinstance(leaf, DTensor):
        return _dtensor_item(path, leaf)
    if isinstance(leaf, ShardedTensor):
        return TensorItem(path, tuple(leaf.global_shape), leaf.data.dtype, (TensorPiece(leaf.box, leaf.data),))
    if isinstance(leaf, FlatShard):
        flat = leaf.data.view(-1)
        pieces = tuple(
            TensorPiece(box, flat[start - leaf.flat_offset : start - leaf.flat_offset + box.numel].view(box.lengths))
            for start, box in flat_range_to_boxes(leaf.global_shape, leaf.flat_offset, flat.numel())
        )
        return TensorItem(path, tuple(leaf.global_shape), leaf.data.dtype, pieces)
    tensor: torch.Tensor = leaf
    return TensorItem(path, tuple(tensor.shape), tensor.dtype, (TensorPiece(ShardBox.whole(tensor.shape), tensor),))


def _dtensor_item(path: Path, dt: DTensor) -> TensorItem:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(isinstance(p, Partial) for p in dt.placements):
        raise UnsupportedValueError(
            f"{fqn_of(path)}: DTensor with Partial placement {dt.placements} holds unreduced values; "
            "reduce it (redistribute to Replicate/Shard) before saving"
        )
    global_shape = tuple(dt.shape)
    if dt.device_mesh.get_coordinate() is None:  # this rank is outside the mesh
        return TensorItem(path, global_shape, dt.dtype, ())
    local_shape, offsets = compute_local_shape_and_global_offset(dt.shape, dt.device_mesh, dt.placements)
    local = dt.to_local()
    if tuple(local.shape) != tuple(local_shape):
        raise UnsupportedValueError(
            f"{fqn_of(path)}: DTensor local shape {tuple(local.shape)} differs from the layout's "
            f"{tuple(local_shape)} (placements {dt.placements})"
        )
    return TensorItem(path, global_shape, dt.dtype, (TensorPiece(ShardBox(tuple(offsets), tuple(local_shape)), local),))
