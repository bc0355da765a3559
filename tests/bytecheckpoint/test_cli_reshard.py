"""``bytecheckpoint reshard``: the output loads at the target layout, each rank reading one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.reshard_offline import dim0_boxes
from integrations.local_ranks import run_ranks
from tests.bytecheckpoint.cli_runner import one_error_line, run
from tests.counting_storage import CountingStorage

W_SHAPE, B_SHAPE = (10, 6), (7,)


def full_state() -> dict:
    torch.manual_seed(1)
    return {"model": {"w": torch.randn(W_SHAPE), "b": torch.randn(B_SHAPE)}, "scale": torch.tensor(0.5), "step": 7}


def rank_state(boxes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> dict:
    """A target state holding, for each tensor, the box (offsets, lengths) this rank reads."""
    shapes = {"model.w": W_SHAPE, "model.b": B_SHAPE}
    model = {name.split(".")[1]: bcp.ShardedTensor(torch.zeros(lengths), shapes[name], offsets)
             for name, (offsets, lengths) in boxes.items()}
    return {"model": model}


def _dim0_rank_boxes(rank: int, world: int) -> dict:
    out = {}
    for name, shape in (("model.w", W_SHAPE), ("model.b", B_SHAPE)):
        box = dim0_boxes(shape, world)[rank]
        out[name] = (box.offsets, box.lengths)
    return out


def _load_on_rank(rank: int, world: int, path: str) -> tuple[list[str], int, dict]:
    storage = CountingStorage(path)
    state = rank_state(_dim0_rank_boxes(rank, world))
    state["step"] = None
    # the 0-d "scale" is left out: a tensor that every rank reads is stored once (in rank 0's file)
    bcp.load(storage, state, strict=False)
    got = {k: v.data.clone() for k, v in state["model"].items()}
    return sorted(storage.files_read), storage.reads, {**got, "step": state["step"]}


@pytest.mark.distributed
def test_resharded_checkpoint_loads_at_the_target_layout_with_one_file_per_rank(tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = full_state()
    bcp.save(src, state)
    code, out, _ = run(capsys, "reshard", str(src), str(dst), "--world-size", "2", "--json")
    report = json.loads(out)
    assert code == 0 and report["world_size"] == 2 and len(report["data_files"]) == 2
    results = run_ranks(2, _load_on_rank, str(dst))
    for rank, (files, reads, got) in enumerate(results):
        assert files == [report["data_files"][rank]], (rank, files)
        assert reads == 2  # one read per box: w's and b's
        rows = _dim0_rank_boxes(rank, 2)
        for name in ("w", "b"):
            (r0, *_), (n, *_) = rows[f"model.{name}"]
            assert torch.equal(got[name], state["model"][name][r0:r0 + n])
        assert got["step"] == 7
    assert bcp.verify(dst).chunks == 5  # w and b in two boxes each, the scalar whole


def test_layout_file_places_each_box_in_its_rank_file(tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    state = full_state()
    bcp.save(src, state)
    layout = {"format": "bytecheckpoint-layout", "version": 1, "ranks": [
        {"model.w": [{"offsets": [0, 0], "lengths": [10, 2]}]},
        {"model.w": [{"offsets": [0, 2], "lengths": [10, 4]}]},
    ]}  # model.b and scale are not named: split along dim 0
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    code, out, _ = run(capsys, "reshard", str(src), str(dst), "--layout", str(tmp_path / "layout.json"), "--json")
    files = json.loads(out)["data_files"]
    assert code == 0 and len(files) == 2
    for rank, (offsets, lengths) in enumerate((((0, 0), (10, 2)), ((0, 2), (10, 4)))):
        storage = CountingStorage(str(dst))
        target = rank_state({"model.w": (offsets, lengths)})
        bcp.load(storage, target, strict=False)
        assert storage.files_read == {files[rank]} and storage.reads == 1
        assert torch.equal(target["model"]["w"].data, state["model"]["w"][:, offsets[1]:offsets[1] + lengths[1]])
    assert torch.equal(bcp.load_full(dst)["model"]["b"], state["model"]["b"])


def test_bad_layouts_write_nothing(tmp_path: Path, capsys) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    bcp.save(src, full_state())
    overlapping = {"format": "bytecheckpoint-layout", "version": 1, "ranks": [
        {"model.w": [{"offsets": [0, 0], "lengths": [6, 6]}]}, {"model.w": [{"offsets": [5, 0], "lengths": [5, 6]}]}]}
    unknown = {"format": "bytecheckpoint-layout", "version": 1, "ranks": [{"model.nope": []}]}
    outside = {"format": "bytecheckpoint-layout", "version": 1, "ranks": [
        {"model.w": [{"offsets": [0, 0], "lengths": [11, 6]}]}]}
    for doc, message in ((overlapping, "do not tile"), (unknown, "no tensor 'model.nope'"),
                         (outside, "outside shape"), ({"ranks": []}, "format"), ("[", "not valid JSON")):
        (tmp_path / "layout.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        code, out, err = run(capsys, "reshard", str(src), str(dst), "--layout", str(tmp_path / "layout.json"))
        assert code == 2 and out == "" and message in one_error_line(err), (message, err)
        assert not dst.exists()


def test_consolidate_writes_one_file_of_whole_tensors(tmp_path: Path, capsys) -> None:
    src, mid, one = tmp_path / "src", tmp_path / "mid", tmp_path / "one"
    state = full_state()
    bcp.save(src, state)
    assert run(capsys, "reshard", str(src), str(mid), "--world-size", "3")[0] == 0
    assert run(capsys, "reshard", str(mid), str(one), "--consolidate")[0] == 0
    doc = json.loads(run(capsys, "inspect", str(one), "--json")[1])
    assert len(doc["data_files"]) == 1 and {t["chunking"] for t in doc["tensors"]} == {"whole"}
    assert doc["world_size"] == 1 and doc["layout"]["resharded"]["from_world_size"] == 3
    assert run(capsys, "diff", str(src), str(one))[0] == 0
    # an existing checkpoint is never overwritten
    code, _, err = run(capsys, "reshard", str(src), str(one), "--consolidate")
    assert code == 2 and "already holds a checkpoint" in one_error_line(err)


def test_reshard_reads_a_dcp_checkpoint(tmp_path: Path, capsys) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.randn(9, 2), "b": torch.arange(4.0)}
    with pytest.warns(UserWarning):  # DCP warns when it runs without torch.distributed
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"))
    assert run(capsys, "reshard", str(tmp_path / "dcp"), str(tmp_path / "ours"), "--world-size", "2")[0] == 0
    full = bcp.load_full(tmp_path / "ours")
    assert torch.equal(full["w"], state["w"]) and torch.equal(full["b"], state["b"])
    assert run(capsys, "diff", str(tmp_path / "dcp"), str(tmp_path / "ours"))[0] == 0


def test_reshard_emits_its_operation_and_phase_events(tmp_path: Path) -> None:
    from bytecheckpoint.events import OperationEvent, PhaseEvent, subscribe
    from bytecheckpoint.reshard_offline import dim0_layout, reshard_checkpoint
    from bytecheckpoint.storage import resolve_storage

    src, dst = tmp_path / "src", tmp_path / "dst"
    bcp.save(src, full_state())
    seen: list = []
    unsubscribe = subscribe(seen.append)
    try:
        source = resolve_storage(str(src))
        summary = reshard_checkpoint(source, resolve_storage(str(dst)), lambda md: dim0_layout(md, 2))
        with pytest.raises(bcp.CheckpointError, match="already holds a checkpoint"):
            reshard_checkpoint(source, resolve_storage(str(dst)), lambda md: dim0_layout(md, 2))
    finally:
        unsubscribe()
    ops = [e for e in seen if isinstance(e, OperationEvent) and e.operation == "reshard"]
    phases = [(e.phase, e.bytes, e.error) for e in seen if isinstance(e, PhaseEvent) and e.operation == "reshard"]
    assert [(o.error, o.bytes) for o in ops] == [(None, sum(summary.bytes_per_rank)), ("CheckpointExistsError", 0)]
    assert phases == [("reshard", sum(summary.bytes_per_rank), None), ("commit", 0, None)]
