"""Unit tests for diff's element comparison and the offline reshard's dim-0 layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.compare import compare_checkpoints
from bytecheckpoint.reshard_offline import dim0_boxes
from bytecheckpoint.storage import resolve_storage


@pytest.mark.parametrize("rows", [0, 1, 5, 7, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_dim0_boxes_split_as_torch_chunk(rows: int, world: int) -> None:
    boxes = dim0_boxes((rows, 3), world)
    assert len(boxes) == world
    if rows == 0:
        assert boxes[0].lengths == (0, 3) and boxes[1:] == [None] * (world - 1)
        return
    chunks = torch.arange(rows).chunk(world)  # what FSDP2's Shard(0) gives each rank
    for rank, box in enumerate(boxes):
        expected = chunks[rank].tolist() if rank < len(chunks) else []
        got = list(range(box.offsets[0], box.offsets[0] + box.lengths[0])) if box else []
        assert got == expected and (box is None or box.lengths[1:] == (3,))


def test_scalars_go_whole_to_rank_0() -> None:
    assert [b.lengths if b else None for b in dim0_boxes((), 3)] == [(), None, None]


def _diff(tmp_path: Path, a: torch.Tensor, b: torch.Tensor, **tol: float):
    bcp.save(tmp_path / "a", {"t": a})
    bcp.save(tmp_path / "b", {"t": b})
    (result,) = compare_checkpoints(resolve_storage(tmp_path / "a"), resolve_storage(tmp_path / "b"), **tol).tensors
    return result


def test_nans_in_the_same_place_and_equal_infinities_match(tmp_path: Path) -> None:
    x = torch.tensor([1.0, math.nan, math.inf, -math.inf])
    assert _diff(tmp_path, x, x.clone()).status == "equal"


def test_a_nan_against_a_number_is_an_infinite_difference(tmp_path: Path) -> None:
    d = _diff(tmp_path, torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0]), atol=1e9)
    assert d.status == "different" and d.mismatched == 1 and d.max_abs is None


def test_relative_difference_uses_b_as_reference_and_skips_zeros(tmp_path: Path) -> None:
    d = _diff(tmp_path, torch.tensor([1.1, 0.5, 3.0]), torch.tensor([1.0, 0.0, 3.0]), rtol=0.2)
    assert d.max_abs == pytest.approx(0.5) and d.max_rel == pytest.approx(0.1, rel=1e-5)
    assert d.status == "different" and d.mismatched == 1  # 0.5 vs 0.0 is outside rtol alone


def test_integer_bool_and_complex_tensors(tmp_path: Path) -> None:
    assert _diff(tmp_path, torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5])).max_abs == 2
    (tmp_path / "x").mkdir()
    assert _diff(tmp_path / "x", torch.tensor([True, False]), torch.tensor([True, True])).mismatched == 1
    (tmp_path / "y").mkdir()
    c = _diff(tmp_path / "y", torch.tensor([1 + 1j]), torch.tensor([1 + 2j]), atol=0.5)
    assert c.max_abs == pytest.approx(1.0) and c.status == "different"
