"""Read once, share: chunks several ranks need are read by one rank and broadcast to the others."""

from __future__ import annotations

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.metadata import ChunkLocation
from bytecheckpoint.shared_reads import plan_sharing
from integrations.local_ranks import run_ranks


def test_each_shared_chunk_goes_to_one_needing_rank_balancing_bytes() -> None:
    a, b, c = ChunkLocation("f0", 0, 100), ChunkLocation("f0", 128, 60), ChunkLocation("f1", 0, 50)
    own = ChunkLocation("f1", 64, 500)
    plan = plan_sharing([(a, b), (a, b, c), (c, own)])
    assert set(plan.readers) == {a, b, c}  # `own` is needed by rank 2 only: it reads it itself
    assert plan.readers[a] in (0, 1) and plan.readers[b] in (0, 1) and plan.readers[c] in (1, 2)
    assert plan.readers[a] != plan.readers[b]  # the two chunks ranks 0 and 1 share are split between them
    assert plan.readers[c] == 1  # rank 2 already reads 500 bytes of its own
    assert plan == plan_sharing([(a, b), (a, b, c), (c, own)])  # a pure function: every rank agrees


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {f"l{i}": torch.randn(128, 64, generator=g) for i in range(6)}, "step": step}


def _load_replicated(rank: int, world: int, path: str, share: bool) -> tuple[int, bool]:
    target = {"model": {f"l{i}": torch.zeros(128, 64) for i in range(6)}, "step": None}
    summary = bcp.load(path, target, timeout=60, share_reads=share)
    want = _state(3)
    same = all(torch.equal(target["model"][k], want["model"][k]) for k in want["model"]) and target["step"] == 3
    return summary.bytes_read, same


@pytest.mark.distributed
@pytest.mark.parametrize("share", [True, False])
def test_replicated_tensors_are_read_once_across_ranks(tmp_path, share) -> None:
    path = str(tmp_path / "ck")
    bcp.save(path, _state(3))
    total = 6 * 128 * 64 * 4
    results = run_ranks(3, _load_replicated, path, share)
    assert all(same for _, same in results)
    read = [n for n, _ in results]
    if share:
        assert sum(read) == total  # every saved byte read once, by one of the ranks
        assert max(read) - min(read) <= 128 * 64 * 4  # balanced to within one chunk
    else:
        assert read == [total] * 3


def _load_rows(rank: int, world: int, path: str) -> bool:
    rows = 40 // world
    target = {"w": bcp.ShardedTensor(torch.zeros(rows, 8), (40, 8), (rank * rows, 0)), "rep": torch.zeros(5)}
    bcp.load(path, target, timeout=60)
    full = torch.arange(320.0).reshape(40, 8)
    return bool(torch.equal(target["w"].data, full[rank * rows:(rank + 1) * rows])
                and torch.equal(target["rep"], torch.arange(5.0)))


@pytest.mark.distributed
def test_sharded_targets_straddling_saved_chunks_mix_own_and_shared_reads(tmp_path) -> None:
    """Saved as 2 row blocks, loaded as 4 (each saved block feeds 2 ranks) plus a replica."""
    path = str(tmp_path / "ck")
    full = torch.arange(320.0).reshape(40, 8)
    run_ranks(2, _save_rows, path, full)
    assert all(run_ranks(4, _load_rows, path))


def _save_rows(rank: int, world: int, path: str, full: torch.Tensor) -> None:
    rows = 40 // world
    bcp.save(path, {"w": bcp.ShardedTensor(full[rank * rows:(rank + 1) * rows].clone(), (40, 8), (rank * rows, 0)),
                    "rep": torch.arange(5.0)}, timeout=60)
