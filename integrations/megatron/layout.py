"""Where each of a Megatron module's local tensors lies in the checkpoint, read from Megatron's own
``sharded_state_dict()`` (global shape, global offset, layers stacked by global layer index).

A local tensor is one or more *segments* in its flat (row-major) order: a plain ShardedTensor is one
segment; a fused GLU ``linear_fc1`` is two (its gate and up halves, each a box of the global tensor,
as Megatron's ShardedTensorFactory cuts it). Any flat range of the local tensor (a distributed
optimizer's share of a parameter) maps to regular boxes of the global tensor through the segments.
Stacked layers add leading axes of length 1 (``prepend_axis_num``); their boxes are offset by the
global layer index. A tensor Megatron marks ``allow_shape_mismatch`` (the padded vocabulary) loads
the overlap of its saved and current global shapes; rows beyond the saved ones are zeroed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bytecheckpoint import ShardedPieces, ShardedTensor, UnsupportedValueError
from bytecheckpoint.boxes import ShardBox, flat_range_to_boxes, intersect


@dataclass(frozen=True)
class Segment:
    """``numel`` consecutive elements of the local tensor, from ``flat_start``, filling ``box``."""

    flat_start: int
    box: ShardBox

    @property
    def numel(self) -> int:
        return self.box.numel


@dataclass(frozen=True)
class TensorLayout:
    key: str  # Megatron's global key (the checkpoint's name for the tensor)
    global_shape: tuple[int, ...]
    segments: tuple[Segment, ...]
    resizable: bool  # allow_shape_mismatch: the padded vocabulary dimension may change

    def vocab_padding_differs(self, saved_shape: tuple[int, ...]) -> bool:
        """Whether ``saved_shape`` differs from this tensor's only in its padded (first) dimension."""
        return self.resizable and saved_shape != self.global_shape and saved_shape[1:] == self.global_shape[1:]

    def pieces(self, flat: torch.Tensor, start: int = 0, stop: int | None = None) -> list[ShardedTensor]:
        """Boxes of the global tensor for ``flat`` = the local tensor's flat range ``[start, stop)``."""
        stop = sum(s.numel for s in self.segments) if stop is None else stop
        out: list[ShardedTensor] = []
        for seg in self.segments:
            lo, hi = max(start, seg.flat_start), min(stop, seg.flat_start + seg.numel)
            if lo >= hi:
                continue
            for sub_start, sub in flat_range_to_boxes(seg.box.lengths, lo - seg.flat_start, hi - lo):
                offsets = tuple(o + s for o, s in zip(seg.box.offsets, sub.offsets))
                at = seg.flat_start + sub_start - start
                out.append(ShardedTensor(flat[at : at + sub.numel].view(sub.lengths), self.global_shape, offsets))
        return out


def clip_to(pieces: list[ShardedTensor], saved_shape: tuple[int, ...]) -> list[ShardedTensor]:
    """The parts of ``pieces`` inside a saved tensor of another (padded) global shape; the rest of
    each piece is zeroed, as Megatron pads a vocabulary that grew."""
    out = []
    saved = ShardBox.whole(saved_shape)
    for piece in pieces:
        common = intersect(piece.box, saved)
        if common is None or common.numel != piece.box.numel:
            piece.data.zero_()
        if common is not None:
            out.append(ShardedTensor(piece.data[common.relative_to(piece.box)], saved_shape, common.offsets))
    return out


def module_layouts(module: nn.Module) -> dict[str, TensorLayout]:
    """The layout of every tensor in ``module.state_dict()`` (by local name) that Megatron shards."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensorFactory
    from megatron.core.dist_checkpointing.mapping import ShardedTensor as MegatronShardedTensor

    layouts: dict[str, TensorLayout] = {}
    for name, entry in module.sharded_state_dict().items():
        if isinstance(entry, ShardedTensorFactory):
            built = entry.build()
            parts = list(built.values()) if isinstance(built, dict) else list(built)
        elif isinstance(entry, MegatronShardedTensor):
            parts = [entry]
        elif isinstance(entry, ShardedObject):
            if entry.data is not None and not _empty_extra_state(entry.data):
                raise UnsupportedValueError(
                    f"{name}: Megatron ShardedObject {entry.key!r} holds {type(entry.data).__name__} extra state; "
                    "only modules without extra state (Megatron's local layer spec) are supported"
                )
            continue
        else:
            raise UnsupportedValueError(f"{name}: unexpected {type(entry).__name__} in Megatron's sharded_state_dict()")
        layouts[name] = _layout(name, parts)
    return layouts


def _empty_extra_state(data: object) -> bool:
    return isinstance(data, torch.Tensor) and data.numel() == 0 or isinstance(data, bytes) and not data


def _layout(name: str, parts: list) -> TensorLayout:
    keys = {p.key for p in parts}
    if len(keys) != 1:
        raise UnsupportedValueError(f"{name}: Megatron splits it into several tensors {sorted(keys)}; not supported")
    segments, start = [], 0
    for p in parts:
        if p.flattened_range is not None:
            raise UnsupportedValueError(f"{name}: flattened Megatron ShardedTensors ({p.key}) are not supported")
        lengths = (1,) * p.prepend_axis_num + tuple(p.local_shape)
        segments.append(Segment(start, ShardBox(tuple(p.global_offset), lengths)))
        start += math.prod(lengths)
    first = parts[0]
    return TensorLayout(first.key, tuple(first.global_shape), tuple(segments), bool(first.allow_shape_mismatch))


def group_pieces(entries: list[tuple[TensorLayout, list[ShardedTensor]]], dtype_of: dict[str, torch.dtype]) -> dict:
    """``{key: ShardedPieces}``: the pieces of every local tensor that share a global key (stacked layers)."""
    by_key: dict[str, list[ShardedTensor]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for layout, pieces in entries:
        by_key.setdefault(layout.key, []).extend(pieces)
        shapes[layout.key] = pieces[0].global_shape if pieces else layout.global_shape
    return {k: ShardedPieces(v, shapes[k], dtype_of[k]) for k, v in by_key.items()}
