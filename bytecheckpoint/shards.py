"""User-facing descriptions of a rank's part of a global tensor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .boxes import ShardBox


@dataclass(frozen=True)
class ShardedTensor:
    """An n-D box of a global tensor held by this rank.

    ``data`` holds the box's elements (any strides); ``offsets`` is where the box starts in the
    global tensor of shape ``global_shape``. Several ranks may hold the same box (replicas): it is
    written once.
    """

    data: torch.Tensor
    global_shape: Sequence[int]
    offsets: Sequence[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_shape", tuple(int(n) for n in self.global_shape))
        object.__setattr__(self, "offsets", tuple(int(n) for n in self.offsets))
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"ShardedTensor.data must be a torch.Tensor, got {type(self.data).__name__}")
        box = ShardBox(self.offsets, tuple(self.data.shape)) if len(self.offsets) == self.data.dim() else None
        if box is None or not box.fits_in(self.global_shape):
            raise ValueError(
                f"ShardedTensor of local shape {tuple(self.data.shape)} at offsets {self.offsets} does not "
                f"fit in global shape {self.global_shape}"
            )

    @property
    def box(self) -> ShardBox:
        return ShardBox(tuple(self.offsets), tuple(self.data.shape))


@dataclass(frozen=True)
class ShardedPieces:
    """Several boxes (ShardedTensors) of one global tensor held by this rank, or none.

    For layouts that hold more than one box of a tensor (a pipeline stage's slices of a layer-stacked
    weight, the irregular range a distributed optimizer owns cut into regular boxes). ``pieces`` may
    be empty: the rank holds nothing of the tensor but still names it (so a strict load does not
    call it unexpected).
    """

    pieces: Sequence[ShardedTensor]
    global_shape: Sequence[int]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_shape", tuple(int(n) for n in self.global_shape))
        object.__setattr__(self, "pieces", tuple(self.pieces))
        for piece in self.pieces:
            if not isinstance(piece, ShardedTensor):
                raise TypeError(f"ShardedPieces.pieces must be ShardedTensors, got {type(piece).__name__}")
            if piece.global_shape != self.global_shape or piece.data.dtype != self.dtype:
                raise ValueError(
                    f"a piece of global shape {piece.global_shape} and dtype {piece.data.dtype} is not part of "
                    f"a tensor of global shape {self.global_shape} and dtype {self.dtype}"
                )


@dataclass(frozen=True)
class FlatShard:
    """A 1-D range of the row-major flattened global tensor, as FSDP1 flat parameters hold.

    ``data`` (contiguous; its elements in flat order) covers flat indices
    ``[flat_offset, flat_offset + data.numel())`` of a tensor of shape ``global_shape``.
    """

    data: torch.Tensor
    global_shape: Sequence[int]
    flat_offset: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_shape", tuple(int(n) for n in self.global_shape))
        if not isinstance(self.data, torch.Tensor):
            raise TypeError(f"FlatShard.data must be a torch.Tensor, got {type(self.data).__name__}")
        if not self.data.is_contiguous():
            raise ValueError("FlatShard.data must be contiguous (it is filled in place on load)")
        total = math.prod(self.global_shape)
        if self.flat_offset < 0 or self.flat_offset + self.data.numel() > total:
            raise ValueError(
                f"FlatShard range [{self.flat_offset}, {self.flat_offset + self.data.numel()}) is outside a "
                f"global tensor of shape {self.global_shape} ({total} elements)"
            )


@dataclass(frozen=True)
class RankLocal:
    """A plain value that differs from rank to rank (a dataloader's read position, an RNG state).

    Plain values are otherwise taken as replicated (the lowest rank's copy is saved). Saving stores
    every rank's ``value``, under this key plus the rank number. Loading puts ``{rank: value}`` of
    every rank that saved at this key (use ``RankLocal()`` as the placeholder), so the caller can
    redistribute the parts when the world size changed.
    """

    value: Any = None
