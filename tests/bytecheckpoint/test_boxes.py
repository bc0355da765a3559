"""Property tests of the resharding index math: every target element is covered exactly once."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bytecheckpoint.boxes import ShardBox, check_tiling, flat_range_to_boxes, intersect


@st.composite
def shapes(draw, max_dims: int = 4, min_len: int = 0) -> tuple[int, ...]:
    return tuple(draw(st.lists(st.integers(min_len, 6), min_size=0, max_size=max_dims)))


@st.composite
def grid_layout(draw, shape: tuple[int, ...]) -> list[ShardBox]:
    """A random grid partition: independent random cut points along each dimension."""
    cuts = []
    for n in shape:
        inner = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=3))) if n > 1 else []
        cuts.append([0, *[c for c in inner if c < n], n])
    boxes = [ShardBox((), ())]
    for d, bounds in enumerate(cuts):
        boxes = [
            ShardBox((*b.offsets, lo), (*b.lengths, hi - lo))
            for b in boxes for lo, hi in itertools.pairwise(bounds)
        ]
    return boxes


@st.composite
def flat_layout(draw, shape: tuple[int, ...]) -> list[ShardBox]:
    """Random contiguous flat ranges (FSDP1-like), each turned into regular boxes."""
    total = math.prod(shape)
    cuts = sorted(draw(st.sets(st.integers(0, total), max_size=5)) | {0, total})
    return [box for lo, hi in itertools.pairwise(cuts) for _, box in flat_range_to_boxes(shape, lo, hi - lo)]


def layouts(shape):
    return st.one_of(grid_layout(shape), flat_layout(shape))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_intersections_cover_every_target_element_once(data) -> None:
    shape = data.draw(shapes())
    saved = data.draw(layouts(shape))
    targets = data.draw(layouts(shape))
    assert check_tiling(shape, saved) is None
    for target in targets:
        count = np.zeros(target.lengths, dtype=np.int64)
        for chunk in saved:
            overlap = intersect(target, chunk)
            if overlap is None:
                continue
            assert overlap.numel > 0
            # the overlap lies inside both boxes
            assert all(t <= o and o + n <= t + tn for o, n, t, tn in zip(overlap.offsets, overlap.lengths, target.offsets, target.lengths))
            assert all(c <= o and o + n <= c + cn for o, n, c, cn in zip(overlap.offsets, overlap.lengths, chunk.offsets, chunk.lengths))
            count[overlap.relative_to(target)] += 1
        assert (count == 1).all(), f"target {target} coverage {count}"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_flat_range_boxes_are_consecutive_pieces_of_the_range(data) -> None:
    shape = data.draw(shapes(min_len=1))
    total = math.prod(shape)
    start = data.draw(st.integers(0, total))
    length = data.draw(st.integers(0, total - start))
    reference = np.arange(total).reshape(shape)
    pieces = flat_range_to_boxes(shape, start, length)
    assert len(pieces) <= max(1, 2 * len(shape) - 1)
    position = start
    for flat_start, box in pieces:
        assert flat_start == position
        values = reference[tuple(slice(o, o + n) for o, n in zip(box.offsets, box.lengths))].reshape(-1)
        np.testing.assert_array_equal(values, np.arange(flat_start, flat_start + box.numel))
        position += box.numel
    assert position == start + length


def test_flat_range_example_splits_into_partial_row_block_and_tail() -> None:
    pieces = flat_range_to_boxes((4, 6), 3, 17)
    assert [b for _, b in pieces] == [
        ShardBox((0, 3), (1, 3)),
        ShardBox((1, 0), (2, 6)),
        ShardBox((3, 0), (1, 2)),
    ]


def test_check_tiling_reports_overlap_gap_and_outside() -> None:
    assert "overlap" in check_tiling((4,), [ShardBox((0,), (3,)), ShardBox((2,), (2,))])
    assert "cover 3 of 4" in check_tiling((4,), [ShardBox((0,), (3,))])
    assert "outside" in check_tiling((4,), [ShardBox((2,), (3,))])
    assert check_tiling((), [ShardBox((), ())]) is None
    assert check_tiling((0, 3), []) is None


def test_disjoint_boxes_do_not_intersect() -> None:
    assert intersect(ShardBox((0, 0), (2, 2)), ShardBox((2, 0), (2, 2))) is None
    assert intersect(ShardBox((0, 0), (3, 3)), ShardBox((1, 1), (5, 1))) == ShardBox((1, 1), (2, 1))
