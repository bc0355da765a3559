"""Save and load in one process (no process group): dtypes, layouts, values, strictness, commit."""

from __future__ import annotations

import json

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.metadata import METADATA_FILE

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.float8_e4m3fn, torch.complex64]


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if not dtype.is_floating_point and not dtype.is_complex:
        return torch.randint(-1000, 1000, shape, generator=g).to(dtype)
    return torch.randn(shape, generator=g).to(dtype)


def test_round_trip_of_every_dtype_and_odd_shapes(tmp_path) -> None:
    state = {
        "dtypes": {str(dt).split(".")[1]: sample(dt, (5, 3), i) for i, dt in enumerate(DTYPES)},
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 4),
        "noncontig": sample(torch.float32, (6, 4), 9).t(),
        "extra": {"step": 7, "name": "run", "history": [1, 2.5, None], "nested": {"a": (1, 2)}},
    }
    bcp.save(tmp_path / "ck", state)
    target = {
        "dtypes": {k: torch.zeros_like(v) for k, v in state["dtypes"].items()},
        "scalar": torch.tensor(0.0),
        "empty": torch.empty(0, 4),
        "noncontig": torch.zeros(6, 4).t(),  # a non-contiguous target is filled in place
        "extra": None,
    }
    noncontig_before = target["noncontig"]
    bcp.load(tmp_path / "ck", target)
    for k, v in state["dtypes"].items():
        assert torch.equal(target["dtypes"][k].view(torch.uint8), v.view(torch.uint8)), k
    assert target["scalar"].item() == 2.5
    assert target["empty"].shape == (0, 4)
    assert target["noncontig"] is noncontig_before and torch.equal(target["noncontig"], state["noncontig"])
    assert target["extra"] == state["extra"]


def test_load_full_returns_nested_whole_tensors(tmp_path) -> None:
    w = sample(torch.float32, (4, 6), 1)
    state = {"model": {"a": bcp.ShardedTensor(w, (4, 6), (0, 0)), "b": bcp.FlatShard(w.reshape(-1), (4, 6), 0)}, "k": {1: "x"}}
    bcp.save(tmp_path / "ck", state)
    full = bcp.load_full(tmp_path / "ck")
    assert torch.equal(full["model"]["a"], w) and torch.equal(full["model"]["b"], w)
    assert full["k"] == {1: "x"}


def test_flat_shard_and_box_targets_reshard_within_one_process(tmp_path) -> None:
    w = sample(torch.float32, (5, 7), 3)
    bcp.save(tmp_path / "ck", {"w": w})
    flat = bcp.FlatShard(torch.zeros(11), (5, 7), 9)
    box = bcp.ShardedTensor(torch.zeros(2, 3), (5, 7), (3, 4))
    bcp.load(tmp_path / "ck", {"w": flat})
    assert torch.equal(flat.data, w.reshape(-1)[9:20])
    bcp.load(tmp_path / "ck", {"w": box})
    assert torch.equal(box.data, w[3:5, 4:7])


def test_partial_chunk_reads_use_small_checksum_blocks(tmp_path) -> None:
    w = sample(torch.float32, (64, 64), 4)
    bcp.save(tmp_path / "ck", {"w": w}, block_size=1024)
    target = bcp.ShardedTensor(torch.zeros(4, 64), (64, 64), (30, 0))
    summary = bcp.load(tmp_path / "ck", {"w": target})
    assert torch.equal(target.data, w[30:34])
    assert summary.bytes_read <= 2 * 1024 + 4 * 64 * 4  # the 1 KiB row block(s), not the 16 KiB chunk


def test_strict_and_non_strict_key_matching(tmp_path) -> None:
    bcp.save(tmp_path / "ck", {"a": torch.ones(2), "b": torch.ones(3), "step": 4})
    with pytest.raises(bcp.MissingKeyError, match="'c'"):
        bcp.load(tmp_path / "ck", {"a": torch.zeros(2), "b": torch.zeros(3), "step": 0, "c": torch.zeros(1)})
    with pytest.raises(bcp.UnexpectedKeyError, match="'b', 'step'"):
        bcp.load(tmp_path / "ck", {"a": torch.zeros(2)})
    partial = {"a": torch.zeros(2), "c": torch.zeros(1)}
    bcp.load(tmp_path / "ck", partial, strict=False)
    assert torch.equal(partial["a"], torch.ones(2)) and torch.equal(partial["c"], torch.zeros(1))


def test_placeholder_gets_the_whole_saved_tensor(tmp_path) -> None:
    w = sample(torch.bfloat16, (3, 3), 5)
    bcp.save(tmp_path / "ck", {"w": w})
    target = {"w": None}
    bcp.load(tmp_path / "ck", target)
    assert torch.equal(target["w"], w)


def test_resave_keeps_the_old_checkpoint_until_commit_and_removes_its_files(tmp_path) -> None:
    path = tmp_path / "ck"
    bcp.save(path, {"w": torch.ones(4)})
    old_files = set(bcp.verify(path).data_files)
    with pytest.raises(bcp.UnsupportedValueError):
        bcp.save(path, {"w": torch.zeros(4), "bad": object()})
    assert torch.equal(bcp.load_full(path)["w"], torch.ones(4))  # failed re-save lost nothing
    bcp.save(path, {"w": torch.zeros(4)})
    assert torch.equal(bcp.load_full(path)["w"], torch.zeros(4))
    new_files = set(bcp.verify(path).data_files)
    assert not (old_files & new_files)
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*.bin")) == sorted(new_files)


def test_metadata_is_json_with_documented_fields(tmp_path) -> None:
    bcp.save(tmp_path / "ck", {"w": torch.ones(2, 2, dtype=torch.bfloat16)}, layout={"dp": 1})
    doc = json.loads((tmp_path / "ck" / METADATA_FILE).read_text())
    assert doc["format"] == "bytecheckpoint" and doc["version"] == 1
    assert doc["writer"]["world_size"] == 1 and doc["writer"]["layout"]["dp"] == 1
    chunk = doc["tensors"][0]["chunks"][0]
    assert doc["tensors"][0]["dtype"] == "bfloat16" and chunk["byte_length"] == 8 and chunk["byte_offset"] % 64 == 0


def test_unknown_options_and_frameworks_are_errors(tmp_path) -> None:
    with pytest.raises(TypeError, match="unknown option.*fsyncc"):
        bcp.save(tmp_path / "ck", {"w": torch.ones(1)}, fsyncc=False)
    with pytest.raises(ValueError, match="framework=.deepspeed. is not known"):
        bcp.save(tmp_path / "ck", {"w": torch.ones(1)}, framework="deepspeed")


def test_tensors_inside_lists_are_rejected_with_the_key(tmp_path) -> None:
    with pytest.raises(bcp.UnsupportedValueError, match="opt.params: tensors inside a list"):
        bcp.save(tmp_path / "ck", {"opt": {"params": [torch.ones(1)]}})


def test_shards_that_do_not_tile_the_tensor_are_refused(tmp_path) -> None:
    with pytest.raises(bcp.PlanError, match="'w' of shape \\[4, 4\\]: shards cover 8 of 16"):
        bcp.save(tmp_path / "ck", {"w": bcp.ShardedTensor(torch.ones(2, 4), (4, 4), (0, 0))})
    assert not (tmp_path / "ck" / METADATA_FILE).exists()
