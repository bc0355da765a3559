"""Pure index math for resharding: n-D boxes, their intersections, and flat ranges as boxes.

A box is a hyper-rectangle of a global tensor, given by per-dimension offsets and lengths.
A 0-d tensor is the box with no dimensions (one element).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ShardBox:
    """An n-D box of a global tensor: ``offsets[d] <= i[d] < offsets[d] + lengths[d]``."""

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.lengths):
            raise ValueError(f"box offsets {self.offsets} and lengths {self.lengths} differ in rank")
        if any(o < 0 for o in self.offsets) or any(n < 0 for n in self.lengths):
            raise ValueError(f"box offsets {self.offsets} and lengths {self.lengths} must be >= 0")

    @classmethod
    def whole(cls, shape: Sequence[int]) -> ShardBox:
        return cls(tuple(0 for _ in shape), tuple(int(n) for n in shape))

    @property
    def ndim(self) -> int:
        return len(self.lengths)

    @property
    def numel(self) -> int:
        return math.prod(self.lengths)

    @property
    def ends(self) -> tuple[int, ...]:
        return tuple(o + n for o, n in zip(self.offsets, self.lengths))

    def fits_in(self, shape: Sequence[int]) -> bool:
        return len(shape) == self.ndim and all(e <= s for e, s in zip(self.ends, shape))

    def relative_to(self, outer: ShardBox) -> tuple[slice, ...]:
        """Slices that select this box inside the local data of ``outer`` (which must contain it)."""
        return tuple(slice(o - oo, o - oo + n) for o, oo, n in zip(self.offsets, outer.offsets, self.lengths))


def intersect(a: ShardBox, b: ShardBox) -> ShardBox | None:
    """The common part of two boxes of the same tensor, or None if they share no element."""
    if a.ndim != b.ndim:
        raise ValueError(f"cannot intersect boxes of rank {a.ndim} and {b.ndim}")
    offsets = []
    lengths = []
    for ao, an, bo, bn in zip(a.offsets, a.lengths, b.offsets, b.lengths):
        lo = max(ao, bo)
        hi = min(ao + an, bo + bn)
        if hi <= lo:
            return None
        offsets.append(lo)
        lengths.append(hi - lo)
    return ShardBox(tuple(offsets), tuple(lengths))


def row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return tuple(strides)


def flat_range_to_boxes(global_shape: Sequence[int], start: int, length: int) -> list[tuple[int, ShardBox]]:
    """Split the flat range ``[start, start + length)`` of a row-major tensor into regular boxes.

    Returns ``(flat_start, box)`` pairs in flat order; each box's elements are consecutive in the
    flat order, so its data is ``flat[flat_start - start : flat_start - start + box.numel]``.
    At most ``2 * ndim - 1`` boxes come out.
    """
    shape = tuple(int(n) for n in global_shape)
    total = math.prod(shape)
    if start < 0 or length < 0 or start + length > total:
        raise ValueError(f"flat range [{start}, {start + length}) is outside a tensor of {total} elements")
    if length == 0:
        return []
    if not shape:
        return [(0, ShardBox((), ()))]
    strides = row_major_strides(shape)
    out: list[tuple[int, ShardBox]] = []
    pos, end = start, start + length
    while pos < end:
        # Find the largest block aligned at pos that fits in [pos, end): the outermost dim d such
        # that pos is a multiple of strides[d] (all inner dims start at 0), then take as many
        # whole slices of dim d as fit.
        for d in range(len(shape)):
            if pos % strides[d] == 0:
                index_d = (pos // strides[d]) % shape[d]
                count = min((end - pos) // strides[d], shape[d] - index_d)
                if count >= 1:
                    break
        else:  # pragma: no cover - the innermost dim always fits one element
            raise AssertionError("unreachable")
        offsets = [(pos // strides[k]) % shape[k] for k in range(len(shape))]
        lengths = [1] * len(shape)
        lengths[d] = count
        for k in range(d + 1, len(shape)):
            offsets[k] = 0
            lengths[k] = shape[k]
        box = ShardBox(tuple(offsets), tuple(lengths))
        out.append((pos, box))
        pos += box.numel
    return out


def check_tiling(global_shape: Sequence[int], boxes: Sequence[ShardBox]) -> str | None:
    """Return None if the boxes tile the tensor exactly (no gap, no overlap), else why not."""
    shape = tuple(global_shape)
    for box in boxes:
        if not box.fits_in(shape):
            return f"box offsets={box.offsets} lengths={box.lengths} lies outside shape {shape}"
    nonempty = sorted((b for b in boxes if b.numel > 0), key=lambda b: b.offsets)
    covered = sum(b.numel for b in nonempty)
    # Sweep along dim 0: only boxes whose dim-0 ranges overlap can overlap.
    if shape:
        active: list[ShardBox] = []
        for box in nonempty:
            active = [a for a in active if a.offsets[0] + a.lengths[0] > box.offsets[0]]
            for other in active:
                if intersect(other, box) is not None:
                    return (
                        f"boxes offsets={other.offsets} lengths={other.lengths} and "
                        f"offsets={box.offsets} lengths={box.lengths} overlap"
                    )
            active.append(box)
    elif len(nonempty) > 1:
        return f"{len(nonempty)} different chunks claim the single element of a 0-d tensor"
    expected = math.prod(shape)
    if covered != expected:
        return f"shards cover {covered} of {expected} elements"
    return None
