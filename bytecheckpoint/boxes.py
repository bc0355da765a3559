"""Pure index math for resharding: n-D boxes, their intersections, and flat ranges as boxes.

A box is a hyper-rectangle of a global tensor, given by per-dimension offsets and lengths.
A 0-d tensor is the box with no dimensions (one element).
"""

from __future__ import annotations

import itertools
import math
import operator
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


_PAIRWISE_MAX = 16  # up to this many boxes, compare pairs (and name the overlapping pair)
_XOR_BUDGET = 1 << 22  # box visits the parity check may make before it gives up


def check_tiling(global_shape: Sequence[int], boxes: Sequence[ShardBox]) -> str | None:
    """Return None if the boxes tile the tensor exactly (no gap, no overlap), else why not.

    Boxes that vary along one dimension only are sorted; a few boxes are compared pairwise; many
    boxes in several dimensions go through a parity test (``_xor_is_whole``) that, with the element
    count, is exact. Time is about linear in the number of boxes for the layouts writers produce.
    """
    shape = tuple(global_shape)
    if any(len(b.offsets) != len(shape) for b in boxes) or any(
        max(map(operator.add, offs, lens)) > n
        for offs, lens, n in zip(zip(*(b.offsets for b in boxes)), zip(*(b.lengths for b in boxes)), shape)
    ):
        box = next(b for b in boxes if not b.fits_in(shape))
        return f"box offsets={box.offsets} lengths={box.lengths} lies outside shape {shape}"
    sizes = [math.prod(b.lengths) for b in boxes]
    nonempty = [b for b, size in zip(boxes, sizes) if size]
    if not shape:
        if len(nonempty) > 1:
            return f"{len(nonempty)} different chunks claim the single element of a 0-d tensor"
        return None if nonempty else "shards cover 0 of 1 elements"
    covered = sum(sizes)
    expected = math.prod(shape)
    columns = zip(zip(*(b.offsets for b in nonempty)), zip(*(b.lengths for b in nonempty)), shape)
    partial = [d for d, (offs, lens, n) in enumerate(columns) if any(offs) or lens.count(n) != len(lens)]
    problem = None
    if len(partial) == 1:
        problem = _overlap_along(nonempty, partial[0])
    elif len(nonempty) <= _PAIRWISE_MAX:
        problem = _overlap_pairwise(nonempty)
    elif covered == expected:
        problem = _xor_problem(shape, nonempty, partial)
    if problem:
        return problem
    if covered != expected:
        return f"shards cover {covered} of {expected} elements"
    return None


def _overlap_message(a: ShardBox, b: ShardBox) -> str:
    return f"boxes offsets={a.offsets} lengths={a.lengths} and offsets={b.offsets} lengths={b.lengths} overlap"


def _overlap_along(boxes: list[ShardBox], dim: int) -> str | None:
    """Boxes that differ only along ``dim``: sorted there, neighbours must not overlap."""
    ordered = sorted(boxes, key=lambda b: b.offsets[dim])
    for before, after in itertools.pairwise(ordered):
        if before.offsets[dim] + before.lengths[dim] > after.offsets[dim]:
            return _overlap_message(before, after)
    return None


def _overlap_pairwise(boxes: list[ShardBox]) -> str | None:
    """Sweep along dim 0: only boxes whose dim-0 ranges overlap can overlap."""
    active: list[ShardBox] = []
    for box in sorted(boxes, key=lambda b: b.offsets):
        active = [a for a in active if a.offsets[0] + a.lengths[0] > box.offsets[0]]
        for other in active:
            if intersect(other, box) is not None:
                return _overlap_message(other, box)
        active.append(box)
    return None


def _xor_problem(shape: tuple[int, ...], boxes: list[ShardBox], dims: list[int]) -> str | None:
    """With as many elements in the boxes as in the tensor, the boxes tile it iff every element lies
    in an odd number of them (then each lies in exactly one): their symmetric difference is the
    whole tensor. Checked over the dimensions where some box is not full-length."""
    rows = [tuple(x for d in dims for x in (b.offsets[d], b.offsets[d] + b.lengths[d])) for b in boxes]
    budget = [_XOR_BUDGET]
    try:
        whole = _xor_is_whole(rows, tuple(shape[d] for d in dims), True, budget)
    except _OverBudget:
        return (
            f"{len(boxes)} boxes varying in {len(dims)} dimensions are too many to check that they tile "
            "the tensor"
        )
    if whole:
        return None
    return (
        f"{len(boxes)} boxes overlap: they hold as many elements as the tensor, so some element lies in two "
        "of them and another in none"
    )


class _OverBudget(Exception):
    pass


def _xor_is_whole(rows: list[tuple[int, ...]], shape: tuple[int, ...], whole: bool, budget: list[int]) -> bool:
    """Whether the symmetric difference of the boxes ``rows`` (lo, hi per dimension) is the box
    ``[0, shape)`` (``whole``) or empty. Boxes listed twice cancel; along the first dimension the
    difference changes only at box edges, where the boxes starting or ending there must, one
    dimension down, make up the change: the whole cross-section at 0 and at ``shape[0]``, nothing
    elsewhere."""
    budget[0] -= len(rows)
    if budget[0] < 0:
        raise _OverBudget
    if not shape:
        return (len(rows) % 2 == 1) == whole
    counts: dict[tuple[int, ...], int] = {}
    for row in rows:
        counts[row] = counts.get(row, 0) ^ 1
    edges: dict[int, list[tuple[int, ...]]] = {}
    for row, odd in counts.items():
        if odd:
            edges.setdefault(row[0], []).append(row[2:])
            edges.setdefault(row[1], []).append(row[2:])
    if whole:
        edges.setdefault(0, [])
        edges.setdefault(shape[0], [])
    inner = shape[1:]
    return all(
        _xor_is_whole(group, inner, whole and x in (0, shape[0]), budget) for x, group in edges.items()
    )
