"""Offline Megatron reshard (``bytecheckpoint reshard --tp --pp --dp``): the target layout's boxes
(from the parallel description a Megatron save records), and real Megatron loads of the rewritten
checkpoint that resume like an uninterrupted run while each rank reads its own files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bytecheckpoint as bcp
from bytecheckpoint.boxes import ShardBox, check_tiling
from bytecheckpoint.loader import read_metadata
from bytecheckpoint.reshard_offline import LayoutError
from bytecheckpoint.storage import LocalStorage
from integrations.local_ranks import run_ranks
from integrations.megatron.offline_layout import DESCRIPTION_KEY, MegatronTarget, TensorSplit, megatron_layout
from tests.bytecheckpoint.cli_runner import one_error_line, run
from tests.counting_storage import CountingStorage

LAYERS, HIDDEN, FFN, VOCAB = 3, 16, 24, 304
SPLITS = {  # Megatron key: (global shape, how Megatron splits it) as the adapter records it for a GPT
    "embedding.word_embeddings.weight": ((VOCAB, HIDDEN), TensorSplit(0, 1, 0, "first", True)),
    "decoder.layers.mlp.linear_fc1.weight": ((LAYERS, 2 * FFN, HIDDEN), TensorSplit(1, 2, 1, "layers", False)),
    "decoder.layers.mlp.linear_fc2.weight": ((LAYERS, HIDDEN, FFN), TensorSplit(2, 1, 1, "layers", False)),
    "decoder.layers.mlp.linear_fc1.layer_norm_weight": ((LAYERS, HIDDEN), TensorSplit(None, 1, 1, "layers", False)),
    "decoder.final_layernorm.weight": ((HIDDEN,), TensorSplit(None, 1, 0, "last", False)),
    "output_layer.weight": ((VOCAB, HIDDEN), TensorSplit(0, 1, 0, "last", True)),
}


def _synthetic(path: Path, description: bool = True) -> LocalStorage:
    """A checkpoint shaped like a Megatron GPT's (model, optimizer moments, an RNG tensor), one process."""
    torch.manual_seed(0)
    model = {key: torch.randn(shape) for key, (shape, _) in SPLITS.items()}
    if description:
        model[DESCRIPTION_KEY] = {"version": 1, "saved": {"tp": 1, "pp": 1, "dp": 1},
                                  "tensors": {k: s.to_plain() for k, (_, s) in SPLITS.items()}}
    state = {"model": model, "optimizer": {"state": {k: {"exp_avg": torch.randn(v.shape)} for k, v in model.items()
                                                     if isinstance(v, torch.Tensor)}, "step": 3},
             "rng": torch.arange(10, dtype=torch.uint8)}
    bcp.save(str(path), state)
    return LocalStorage(str(path))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> LocalStorage:
    return _synthetic(tmp_path_factory.mktemp("megatron") / "ck")


def _expected_region(key: str, target: MegatronTarget, tp: int, pp: int) -> ShardBox | None:
    """The region of a tensor rank (tp, pp) may hold in its own file at DP = 1 (the bounding box of
    its TP slices within its stage's layers), computed independently of the layout code."""
    shape, split = SPLITS[key]
    counts = target.pp_layers or [len(c) for c in torch.arange(LAYERS).chunk(target.pp)] + [0] * target.pp
    offsets, lengths = [0] * len(shape), list(shape)
    if split.stage == "layers":
        if pp >= len(counts) or counts[pp] == 0:
            return None
        offsets[0], lengths[0] = sum(counts[:pp]), counts[pp]
    elif pp != (0 if split.stage == "first" else target.pp - 1):
        return None
    if split.tp_axis is not None and split.tp_parts == 1:
        rows = torch.arange(shape[split.tp_axis]).chunk(target.tp)
        if tp >= len(rows):
            return None
        offsets[split.tp_axis], lengths[split.tp_axis] = int(rows[tp][0]), len(rows[tp])
    return ShardBox(tuple(offsets), tuple(lengths))


@settings(max_examples=40, deadline=None)
@given(tp=st.sampled_from([1, 2, 3, 4, 6]), pp=st.integers(1, 4), dp=st.integers(1, 3))
def test_megatron_layout_tiles_every_tensor_and_keeps_each_rank_in_its_slice(synthetic, tp, pp, dp) -> None:
    meta = read_metadata(synthetic)
    target = MegatronTarget(tp, pp, dp)
    layout = megatron_layout(meta, target)
    assert layout.world_size == tp * pp * dp
    for entry in meta.tensors:
        boxes = [b for rank in layout.ranks for b in rank.get(entry.fqn, ())]
        assert check_tiling(entry.shape, boxes) is None, entry.fqn
    if tp * pp == 1:
        return
    for rank, held in enumerate(layout.ranks):
        t, p = rank % tp, rank // (tp * dp)
        for fqn, boxes in held.items():
            key = fqn.partition(".")[2].removeprefix("state.").removesuffix(".exp_avg")
            if key not in SPLITS or SPLITS[key][1].tp_parts != 1:
                continue
            region = _expected_region(key, target, t, p)
            replicated = SPLITS[key][1].tp_axis is None
            for box in boxes:
                assert region is not None or replicated, f"rank {rank} (tp {t}, pp {p}) holds {fqn}"
                if replicated:  # stored by one TP rank of the stage: only the stage's layers are checked
                    region = _expected_region(key, target, 0, p)
                assert region is not None
                assert all(o >= ro and o + n <= ro + rn for o, n, ro, rn in
                           zip(box.offsets, box.lengths, region.offsets, region.lengths)), (rank, fqn, box, region)


def test_glu_halves_are_split_separately_over_tp(synthetic) -> None:
    layout = megatron_layout(read_metadata(synthetic), MegatronTarget(2, 1, 1))
    boxes = layout.ranks[1]["model.decoder.layers.mlp.linear_fc1.weight"]
    # rank 1 holds the second half of the gate rows and the second half of the up rows
    assert sorted((b.offsets, b.lengths) for b in boxes) == [
        ((0, FFN // 2, 0), (LAYERS, FFN // 2, HIDDEN)), ((0, FFN + FFN // 2, 0), (LAYERS, FFN // 2, HIDDEN))]


def test_uneven_layer_split_follows_pp_layers(synthetic) -> None:
    meta = read_metadata(synthetic)
    fqn = "model.decoder.layers.mlp.linear_fc2.weight"
    even = megatron_layout(meta, MegatronTarget(1, 2, 1))
    assert [b.lengths[0] for b in even.ranks[0][fqn]] == [2] and [b.lengths[0] for b in even.ranks[1][fqn]] == [1]
    given_split = megatron_layout(meta, MegatronTarget(1, 2, 1, (1, 2)))
    assert given_split.ranks[1][fqn][0].offsets[0] == 1 and given_split.ranks[1][fqn][0].lengths[0] == 2
    with pytest.raises(LayoutError, match=r"layer split \[2, 2\].*3 layer"):
        megatron_layout(meta, MegatronTarget(1, 2, 1, (2, 2)))


def test_bad_megatron_targets_fail_with_one_line(tmp_path, synthetic, capsys) -> None:
    plain = _synthetic(tmp_path / "plain", description=False)
    cases = [
        ((plain.url, str(tmp_path / "a"), "--tp", "2"), "no Megatron parallel description"),
        ((synthetic.url, str(tmp_path / "b"), "--tp", "5"), "does not split"),
        ((synthetic.url, str(tmp_path / "c"), "--pp", "2", "--pp-layers", "2,2"), "layer split"),
        ((synthetic.url, str(tmp_path / "d"), "--pp", "2", "--pp-layers", "two"), "--pp-layers"),
        ((synthetic.url, str(tmp_path / "e"), "--tp", "2", "--world-size", "2"), "exactly one of"),
        ((synthetic.url, str(tmp_path / "f"), "--tp", "0"), "--tp"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, "reshard", *args)
        assert code == 2 and message in one_error_line(err), (args, err)
        assert not Path(args[1]).exists(), f"{args}: wrote a destination"


# -- real Megatron ranks ---------------------------------------------------------------------------

if importlib.util.find_spec("megatron") is not None:
    from integrations.megatron.tiny_gpt import Layout
    from tests.integrations.test_megatron import AFTER, BEFORE, _check, _state

SOURCE = "TP2PP1DP2-distopt"


def _save(rank: int, world: int, path: str) -> dict:
    from integrations.megatron.tiny_gpt import build, full_model, train

    ddp, opt, sched = build(Layout(2, 1, 2, True))
    train(ddp, opt, sched, BEFORE)
    bcp.save(path, _state(ddp, opt, sched, extra_state={"step": 3}), framework="megatron", timeout=60)
    saved = full_model(ddp)
    return {"saved": saved, "reference": (train(ddp, opt, sched, AFTER), full_model(ddp))}


def _load_resharded(rank: int, world: int, cases: list[tuple[str, Layout]], source: dict) -> list[dict]:
    from integrations.megatron.tiny_gpt import build, full_model, train

    out = []
    for path, layout in cases:
        ddp, opt, sched = build(layout, seed=7, lr=0.05)
        storage = CountingStorage(path)
        state = _state(ddp, opt, sched, extra_state=None)
        bcp.load(storage, state, framework="megatron", timeout=60)
        loaded = full_model(ddp)
        resumed = train(ddp, opt, sched, AFTER), full_model(ddp)
        out.append({"case": f"{SOURCE} -> resharded {layout}", "extra": state["extra_state"], "loaded": loaded,
                    "resumed": resumed, "bytes_read": dict(storage.bytes_read), **source})
    return out


def _rank_of_file(name: str) -> int:
    match = re.search(r"rank(\d+)\.bin$", name)
    assert match, name
    return int(match.group(1))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(importlib.util.find_spec("megatron") is None, reason="needs megatron-core (the dev extra)")
def test_cli_reshard_to_tp_pp_dp_loads_in_megatron_with_each_rank_reading_its_own_files(tmp_path, capsys) -> None:
    src = str(tmp_path / "src")
    source = run_ranks(4, _save, src, timeout=240)
    targets = {"tp2pp2": (Layout(2, 2, 1), ("--tp", "2", "--pp", "2")),
               "tp1pp2dp2": (Layout(1, 2, 2, True), ("--pp", "2", "--dp", "2"))}
    for name, (layout, flags) in targets.items():
        code, out, err = run(capsys, "reshard", src, str(tmp_path / name), *flags, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["world_size"] == 4 and len(report["data_files"]) == 4 and all(report["bytes_per_rank"])
    cases = [(str(tmp_path / name), layout) for name, (layout, _) in targets.items()]
    results = run_ranks(4, _load_resharded, cases, source[0], timeout=240)
    for rank, rank_results in enumerate(results):
        for r in rank_results:
            _check(r)
        stage = {r for r in range(4) if r // 2 == rank // 2}  # both layouts: ranks 0-1 stage 0, ranks 2-3 stage 1
        for r in rank_results:
            by_rank = {_rank_of_file(f): n for f, n in r["bytes_read"].items()}
            # a rank reads its own file, and otherwise only files of its pipeline stage: at DP 1 its TP
            # peer's, for the tensors TP replicates (layer norms, row-parallel biases: one copy is stored)
            assert rank in by_rank and set(by_rank) <= stage, (r["case"], rank, by_rank)
        own = {_rank_of_file(f): n for f, n in rank_results[0]["bytes_read"].items()}
        assert own[rank] > 0.9 * sum(own.values()), f"TP2PP2DP1 rank {rank} read {own}"
