"""Real gloo ranks: save at world size W1 in one layout, load at W2 in another; failures."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

import bytecheckpoint as bcp
from integrations.local_ranks import RankFailure, run_ranks
from tests.bytecheckpoint.layouts import SPECS, check_state, make_state, reference

pytestmark = pytest.mark.distributed


def _save(rank: int, world: int, path: str, variant: str) -> int:
    return bcp.save(path, make_state(rank, world, variant, fill=True), timeout=60).bytes_written


def _load(rank: int, world: int, path: str, variant: str) -> int:
    state = make_state(rank, world, variant, fill=False)
    bcp.load(path, state, timeout=60)
    return check_state(state)


@pytest.mark.parametrize(
    ("w1", "v1", "w2", "v2"),
    [(4, "rows", 2, "cols"), (2, "cols", 4, "rows"), (3, "rows", 1, "cols"), (1, "cols", 3, "rows"), (4, "rows", 4, "cols")],
)
def test_reshard_between_world_sizes_and_layouts(tmp_path, w1, v1, w2, v2) -> None:
    path = str(tmp_path / "ck")
    written = run_ranks(w1, _save, path, v1)
    report = bcp.verify(path)
    assert sum(written) == report.bytes_verified
    # every tensor is stored once: the bytes written equal the global tensors' bytes
    assert sum(written) == sum(reference(n).numel() * reference(n).element_size() for n in SPECS)
    checked = run_ranks(w2, _load, path, v2)
    assert all(c > 0 for c in checked)
    full = bcp.load_full(path)
    for name in SPECS:
        group = "misc" if name in ("scalar", "empty") else "model"
        assert torch.equal(full[group][name], reference(name)), name


def _save_replicated(rank: int, world: int, path: str) -> int:
    state = {f"t{i}": torch.full((256 * (i + 1),), float(i)) for i in range(8)}
    return bcp.save(path, state, timeout=60).bytes_written


def test_replicated_tensors_are_written_once_balanced_across_ranks(tmp_path) -> None:
    written = run_ranks(4, _save_replicated, str(tmp_path / "ck"))
    total = sum(256 * (i + 1) * 4 for i in range(8))
    assert sum(written) == total
    assert max(written) - min(written) <= 256 * 8 * 4  # within one largest tensor (greedy LPT)
    assert all(w > 0 for w in written)


def _save_with_one_bad_rank(rank: int, world: int, path: str) -> str:
    state = {"w": torch.ones(4), "cfg": object() if rank == 2 else 1}
    try:
        bcp.save(path, state, timeout=60)
    except bcp.DistributedCheckpointError as exc:
        assert isinstance(exc, bcp.UnsupportedValueError)
        return str(exc)
    raise AssertionError("save succeeded despite a failing rank")


def test_one_rank_failure_is_one_error_on_every_rank(tmp_path) -> None:
    messages = run_ranks(4, _save_with_one_bad_rank, str(tmp_path / "ck"))
    for msg in messages:
        assert "failed on rank(s) 2" in msg and "cfg" in msg
    assert not os.path.exists(tmp_path / "ck" / "metadata.json")


def _save_inconsistent(rank: int, world: int, path: str) -> str:
    with pytest.raises(bcp.PlanError, match="tensor 'w': rank 0 has dtype float32 shape \\[4\\], rank 1 has dtype float32 shape \\[5\\]"):
        bcp.save(path, {"w": torch.ones(4 + rank)}, timeout=60)
    return "ok"


def test_ranks_disagreeing_on_a_shape_get_a_plan_error(tmp_path) -> None:
    assert run_ranks(2, _save_inconsistent, str(tmp_path / "ck")) == ["ok", "ok"]


def _save_with_crash(rank: int, world: int, path: str, when: str) -> float:
    state = {"w": torch.full((6, 4), 2.0), "step": 2}
    if when == "before":
        bcp.save(path, {"w": torch.full((6, 4), 1.0), "step": 1}, timeout=15)  # a committed checkpoint
        if rank == 1:
            os._exit(17)  # a rank dies before the next save
    elif rank == 1:
        import bytecheckpoint.saver as save_module

        def die(*args, **kwargs):
            os._exit(17)  # a rank dies in the middle of writing

        save_module.write_rank_data = die
    start = time.monotonic()
    with pytest.raises(bcp.DistributedCheckpointError):
        bcp.save(path, state, timeout=15)
    return time.monotonic() - start


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_crashed_rank_yields_an_error_not_a_hang(tmp_path, when) -> None:
    path = tmp_path / "ck"
    if when == "during":
        bcp.save(path, {"w": torch.full((6, 4), 1.0), "step": 1})
    with pytest.raises(RankFailure) as info:
        run_ranks(3, _save_with_crash, str(path), when, timeout=120)
    assert set(info.value.failures) == {1}  # the survivors raised DistributedCheckpointError in time
    survivors = [r for r in (0, 2)]
    assert survivors
    full = bcp.load_full(path)  # the previous checkpoint is untouched
    assert torch.equal(full["w"], torch.full((6, 4), 1.0)) and full["step"] == 1
    bcp.verify(path)


def _load_corrupt(rank: int, world: int, path: str, share_reads: bool) -> str:
    target = {"w": bcp.ShardedTensor(torch.zeros(32, 64), (64, 64), (32 * rank, 0))}
    with pytest.raises(bcp.ChecksumMismatchError) as info:
        bcp.load(path, target, timeout=60, share_reads=share_reads)
    assert dist.get_world_size() == 2
    return str(info.value)


@pytest.mark.parametrize("share_reads", [False, True])
def test_corruption_seen_by_one_rank_fails_the_load_on_all(tmp_path, share_reads) -> None:
    """Each rank reads its rows (rank 1 meets the damage), or, sharing reads, rank 0 reads the one
    saved chunk that both need and broadcasts it: either way one error, on both ranks."""
    path = tmp_path / "ck"
    bcp.save(path, {"w": torch.arange(4096.0).reshape(64, 64)}, block_size=1024)
    data = path / bcp.verify(path).data_files[0]
    raw = bytearray(data.read_bytes())
    raw[-10] ^= 0xFF  # in the last rows, which only rank 1 reads
    data.write_bytes(bytes(raw))
    messages = run_ranks(2, _load_corrupt, str(path), share_reads)
    reader = 0 if share_reads else 1
    assert all(f"failed on rank(s) {reader}:" in m and "'w'" in m for m in messages), messages


def _dtensor_2d_state(rank: int, world: int, fill: bool) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(9, 7, generator=g), torch.randn(5, 11, generator=g)
    if not fill:
        a, b = torch.zeros_like(a), torch.zeros_like(b)
    if world == 4:
        mesh = init_device_mesh("cpu", (2, 2))
        return {"a": distribute_tensor(a, mesh, [Replicate(), Shard(0)]), "b": distribute_tensor(b, mesh, [Shard(1), Shard(0)])}
    mesh = init_device_mesh("cpu", (world,))
    return {"a": distribute_tensor(a, mesh, [Shard(1)]), "b": distribute_tensor(b, mesh, [Replicate()])}


def _save_2d(rank: int, world: int, path: str) -> int:
    return bcp.save(path, _dtensor_2d_state(rank, world, True), timeout=60).bytes_written


def _load_2d(rank: int, world: int, path: str) -> bool:
    state = _dtensor_2d_state(rank, world, False)
    bcp.load(path, state, timeout=60)
    expected = _dtensor_2d_state(rank, world, True)
    return all(torch.equal(state[k].full_tensor(), expected[k].full_tensor()) for k in state)


def test_dtensors_on_a_2d_mesh_with_replicas_reshard_to_a_1d_mesh(tmp_path) -> None:
    path = str(tmp_path / "ck")
    written = run_ranks(4, _save_2d, path)
    assert sum(written) == (9 * 7 + 5 * 11) * 4  # replicas along the first mesh dim written once
    assert run_ranks(2, _load_2d, path) == [True, True]
