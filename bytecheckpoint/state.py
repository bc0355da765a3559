"""Turning a nested state dict into tensor items (boxes of global tensors) and plain values.

Dicts are walked while they hold tensors (or RankLocal values); a subtree with neither is one
plain value.
Keys are strings or integers; a key path joined by dots is the entry's fully qualified name.
Paths hold at most ``MAX_DEPTH`` keys, and nothing here recurses deeper than that: a state nested
deeper (or one that contains itself) is refused with UnsupportedValueError naming the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor, Partial

from .boxes import ShardBox, flat_range_to_boxes
from .errors import UnsupportedValueError
from .limits import INT64_MAX, MAX_DEPTH
from .metadata import Path, fqn_of
from .shards import FlatShard, RankLocal, ShardedPieces, ShardedTensor

TENSOR_TYPES = (torch.Tensor, ShardedTensor, ShardedPieces, FlatShard)


@dataclass(frozen=True)
class TensorPiece:
    """A box of a global tensor and a tensor of shape ``box.lengths`` viewing this rank's data.

    Where the rank's tensor is a lazy view (a conjugate or negative view), ``data`` holds its
    values materialized (what a save writes) and ``load_into`` the view itself (what a load fills).
    """

    box: ShardBox
    data: torch.Tensor
    load_into: torch.Tensor | None = None

    @property
    def target(self) -> torch.Tensor:
        """The tensor a load writes into."""
        return self.data if self.load_into is None else self.load_into


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
            if len(path) >= MAX_DEPTH:  # stored under the path plus the rank
                raise UnsupportedValueError(f"{fqn_of(path)}: a RankLocal needs a path of at most {MAX_DEPTH - 1} keys")
            values.append(ValueItem(path, leaf.value, rank_local=True))
        else:
            values.append(ValueItem(path, leaf))
    return tensors, values


def _walk(node: dict, prefix: Path) -> Iterator[tuple[Path, Any]]:
    for key, value in node.items():
        _check_key(prefix, key)
        path = (*prefix, key)
        if isinstance(value, dict) and _needs_walk(value, path):
            if len(path) >= MAX_DEPTH:
                raise UnsupportedValueError(
                    f"{fqn_of(path)}: holds tensors more than {MAX_DEPTH} dicts deep; at most {MAX_DEPTH} keys "
                    "make a path"
                )
            yield from _walk(value, path)
        elif isinstance(value, (list, tuple)) and _needs_walk(value, path):
            raise UnsupportedValueError(
                f"{fqn_of(path)}: tensors inside a {type(value).__name__} are not supported; use a dict"
            )
        else:
            yield path, value


def _check_key(prefix: Path, key: Any) -> None:
    where = fqn_of(prefix) or "<root>"
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise UnsupportedValueError(f"{where}: key {key!r} must be a str or int")
    if isinstance(key, int) and not -INT64_MAX <= key <= INT64_MAX:
        raise UnsupportedValueError(f"{where}: integer key {key} is outside the 64-bit range")
    if isinstance(key, str) and not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsupportedValueError(f"{where}: key {key!r} is not valid Unicode (a lone surrogate?)") from None


_LEAVES = (*TENSOR_TYPES, RankLocal)
_CONTAINERS = (dict, list, tuple)
_WALK_LIMIT = 2 * MAX_DEPTH + 8  # a path of dicts plus a plain value below it, each within limits


def _needs_walk(node: Any, path: Path) -> bool:
    """Whether a container holds a tensor or a RankLocal, which must keep paths of their own.
    Iterative; a structure nested deeper than any storable one (or containing itself) is refused."""
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= _WALK_LIMIT:
            raise UnsupportedValueError(
                f"{fqn_of(path)}: nested more than {_WALK_LIMIT} levels deep (does it contain itself?); "
                f"at most {MAX_DEPTH} levels can be stored"
            )
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _LEAVES):
                return True
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth + 1))
    return False


def tensor_item(path: Path, leaf: Any) -> TensorItem:
    """The boxes this rank holds of the global tensor described by ``leaf``."""
    item = _tensor_item(path, leaf)
    for piece in item.pieces:
        _check_tensor(path, piece.data)
    if any(p.data.is_conj() or p.data.is_neg() for p in item.pieces):
        pieces = tuple(_materialized(p) for p in item.pieces)
        return TensorItem(item.path, item.global_shape, item.dtype, pieces)
    return item


def _tensor_item(path: Path, leaf: Any) -> TensorItem:
    if isinstance(leaf, DTensor):
        return _dtensor_item(path, leaf)
    if isinstance(leaf, ShardedTensor):
        return TensorItem(path, tuple(leaf.global_shape), leaf.data.dtype, (TensorPiece(leaf.box, leaf.data),))
    if isinstance(leaf, ShardedPieces):
        return TensorItem(path, leaf.global_shape, leaf.dtype, tuple(TensorPiece(p.box, p.data) for p in leaf.pieces))
    if isinstance(leaf, FlatShard):
        _check_tensor(path, leaf.data)
        flat = leaf.data.view(-1)
        pieces = tuple(
            TensorPiece(box, flat[start - leaf.flat_offset : start - leaf.flat_offset + box.numel].view(box.lengths))
            for start, box in flat_range_to_boxes(leaf.global_shape, leaf.flat_offset, flat.numel())
        )
        return TensorItem(path, tuple(leaf.global_shape), leaf.data.dtype, pieces)
    tensor: torch.Tensor = leaf
    _check_tensor(path, tensor)
    return TensorItem(path, tuple(tensor.shape), tensor.dtype, (TensorPiece(ShardBox.whole(tensor.shape), tensor),))


def _check_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Only dense tensors with data of their own can be checkpointed."""
    problem = None
    if tensor.is_nested:
        problem = "a nested tensor cannot be checkpointed; save its components"
    elif tensor.layout != torch.strided:
        problem = f"a {tensor.layout} tensor cannot be checkpointed; convert it with .to_dense()"
    elif tensor.is_meta:
        problem = "a tensor on the meta device has no data to checkpoint; materialize it first"
    elif tensor.is_quantized:
        problem = f"a quantized tensor ({tensor.dtype}) cannot be checkpointed; save .dequantize() or its int_repr()"
    if problem:
        raise UnsupportedValueError(f"{fqn_of(path)}: {problem}")


def _materialized(piece: TensorPiece) -> TensorPiece:
    """A conjugate or negative view has its values in a lazy bit: save them materialized, load into the view."""
    data = piece.data
    if not (data.is_conj() or data.is_neg()):
        return piece
    return TensorPiece(piece.box, data.resolve_conj().resolve_neg(), load_into=data)


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
