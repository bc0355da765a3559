"""The index math under the Megatron adapter, without Megatron: a local tensor's segments (a fused GLU
weight's gate and up halves, a stacked layer's leading axis) and any flat range of it (a distributed
optimizer's share) become boxes that cover exactly that range; ShardedPieces round-trips through
save and a differently split load."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bytecheckpoint as bcp
from bytecheckpoint.boxes import ShardBox
from integrations.megatron.layout import Segment, TensorLayout, clip_to

FFN, HIDDEN, LAYERS = 6, 4, 3


def _glu_layout(tp_rank: int, tp: int, layer: int) -> TensorLayout:
    """fc1 of one layer on one TP rank: [gate rows; up rows] of a stacked [LAYERS, 2*FFN, HIDDEN] tensor."""
    rows = FFN // tp
    gate = ShardBox((layer, tp_rank * rows, 0), (1, rows, HIDDEN))
    up = ShardBox((layer, FFN + tp_rank * rows, 0), (1, rows, HIDDEN))
    return TensorLayout("fc1", (LAYERS, 2 * FFN, HIDDEN), (Segment(0, gate), Segment(rows * HIDDEN, up)), False)


def _global() -> torch.Tensor:
    return torch.arange(LAYERS * 2 * FFN * HIDDEN, dtype=torch.float32).view(LAYERS, 2 * FFN, HIDDEN)


def _local(tp_rank: int, tp: int, layer: int) -> torch.Tensor:
    rows = FFN // tp
    g = _global()[layer]
    return torch.cat([g[tp_rank * rows : (tp_rank + 1) * rows], g[FFN + tp_rank * rows : FFN + (tp_rank + 1) * rows]])


@settings(max_examples=60, deadline=None)
@given(tp=st.sampled_from([1, 2, 3]), data=st.data())
def test_any_flat_range_of_a_glu_weight_maps_to_exactly_its_elements(tp: int, data) -> None:
    tp_rank = data.draw(st.integers(0, tp - 1))
    layer = data.draw(st.integers(0, LAYERS - 1))
    local = _local(tp_rank, tp, layer).reshape(-1)
    start = data.draw(st.integers(0, local.numel()))
    stop = data.draw(st.integers(start, local.numel()))
    pieces = _glu_layout(tp_rank, tp, layer).pieces(local[start:stop].clone(), start, stop)
    assert sum(p.data.numel() for p in pieces) == stop - start
    whole = _global()
    for p in pieces:  # each box holds exactly the global tensor's elements there
        assert torch.equal(p.data, whole[tuple(slice(o, o + n) for o, n in zip(p.offsets, p.data.shape))])


def test_clip_to_a_smaller_saved_vocabulary_loads_the_common_rows_and_zeroes_the_rest() -> None:
    data = torch.ones(8, 2)  # rows 8..15 of a padded vocabulary of 16; the checkpoint has 12 rows
    layout = TensorLayout("emb", (16, 2), (Segment(0, ShardBox((8, 0), (8, 2))),), True)
    (piece,) = clip_to(layout.pieces(data.view(-1)), (12, 2))
    assert piece.global_shape == (12, 2) and piece.offsets == (8, 0) and piece.data.shape == (4, 2)
    assert piece.data.data_ptr() == data.data_ptr()  # the load fills rows 8..11 in place
    assert not data[4:].any()  # rows 12..15 are not in the checkpoint: zero, as Megatron pads
    assert clip_to(layout.pieces(data.view(-1)), (8, 2)) == []  # none of this rank's rows were saved
    assert layout.vocab_padding_differs((12, 2)) and not layout.vocab_padding_differs((12, 3))


def test_sharded_pieces_save_and_load_at_another_split(tmp_path) -> None:
    whole = _global()
    saved = {"fc1": bcp.ShardedPieces(
        [p for r in range(2) for layer in range(LAYERS) for p in _glu_layout(r, 2, layer).pieces(_local(r, 2, layer).reshape(-1))],
        whole.shape, torch.float32)}
    bcp.save(tmp_path / "ck", saved)
    targets = [torch.zeros(2 * FFN // 3, HIDDEN) for _ in range(3)]
    state = {"fc1": bcp.ShardedPieces(
        [p for r, t in enumerate(targets) for p in _glu_layout(r, 3, 1).pieces(t.view(-1))], whole.shape, torch.float32)}
    bcp.load(tmp_path / "ck", state)
    for r, t in enumerate(targets):
        assert torch.equal(t, _local(r, 3, 1))
    assert torch.equal(bcp.load_full(tmp_path / "ck")["fc1"], whole)
