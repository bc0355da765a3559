"""Async save: the call returns after the snapshot, the background writes and commits, the
buffer is reused, a second save waits for the first, failures reach wait() on every rank, and the
training loop's own collectives keep running meanwhile."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import bytecheckpoint as bcp
from bytecheckpoint.snapshot import POOL
from bytecheckpoint.storage import LocalStorage
from integrations.local_ranks import RankFailure, run_ranks


def make_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(256, 64, generator=g), "b": torch.randn(64, generator=g),
                      "h": torch.randn(8, 8, generator=g).to(torch.bfloat16)},
            "extra": {"step": seed}}


def blank() -> dict:
    return {"model": {"w": torch.zeros(256, 64), "b": torch.zeros(64), "h": torch.zeros(8, 8, dtype=torch.bfloat16)},
            "extra": None}


def assert_equal_state(got: dict, want: dict) -> None:
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k
    assert got["extra"] == want["extra"]


class SlowStorage(LocalStorage):
    """Local disk whose data writes take ``delay`` seconds each (to keep a save in flight)."""

    def __init__(self, root, delay: float) -> None:
        super().__init__(root)
        self.delay = delay

    def open_writer(self, name: str):
        writer = super().open_writer(name)
        real = writer.write

        def slow(data):
            time.sleep(self.delay)
            real(data)

        writer.write = slow
        return writer


def test_returns_after_the_snapshot_and_tensors_may_change_at_once(tmp_path) -> None:
    state = make_state(1)
    want = {"model": {k: v.clone() for k, v in state["model"].items()}, "extra": {"step": 1}}
    handle = bcp.save(SlowStorage(tmp_path / "ck", delay=0.3), state, async_save=True)
    assert isinstance(handle, bcp.AsyncSave)
    assert not handle.done()  # the write takes >= 0.3 s; the call returned before
    for t in state["model"].values():
        t.add_(100)  # the training step goes on
    summary = handle.wait()
    assert handle.done()
    assert summary.stall_seconds < summary.seconds
    assert {"plan", "snapshot", "write", "commit"} <= set(summary.phase_seconds)
    got = blank()
    bcp.load(tmp_path / "ck", got)
    assert_equal_state(got, want)


def test_the_host_buffer_is_reused_across_saves(tmp_path) -> None:
    bcp.save(tmp_path / "a", make_state(1), async_save=True).wait()
    ptr, capacity = POOL._buffer.data_ptr(), POOL.capacity
    second = bcp.save(tmp_path / "b", make_state(2), async_save=True).wait()
    assert (POOL._buffer.data_ptr(), POOL.capacity) == (ptr, capacity)
    assert second.plan_cached  # same layout: the plan was not rebuilt
    got = blank()
    bcp.load(tmp_path / "b", got)
    assert_equal_state(got, make_state(2))


def test_a_layout_change_rebuilds_the_plan(tmp_path) -> None:
    bcp.save(tmp_path / "a", make_state(1), async_save=True).wait()
    other = {"model": {"w": torch.ones(3, 3)}}
    summary = bcp.save(tmp_path / "b", other, async_save=True).wait()
    assert not summary.plan_cached
    assert torch.equal(bcp.load_full(tmp_path / "b")["model"]["w"], torch.ones(3, 3))


def test_a_host_buffer_cap_writes_the_rest_before_returning(tmp_path) -> None:
    state = make_state(3)
    want = {"model": {k: v.clone() for k, v in state["model"].items()}, "extra": {"step": 3}}
    cap = 64 * 4 + 64  # room for "b" only (64 float32, aligned); "w" and "h" stay live
    handle = bcp.save(tmp_path / "ck", state, async_save=True, host_buffer_bytes=cap)
    for t in state["model"].values():
        t.add_(1)
    handle.wait()
    got = blank()
    bcp.load(tmp_path / "ck", got)
    assert_equal_state(got, want)


def test_a_second_save_waits_for_the_one_in_flight(tmp_path) -> None:
    first = bcp.save(SlowStorage(tmp_path / "ck", delay=0.5), make_state(1), async_save=True)
    start = time.perf_counter()
    second = bcp.save(tmp_path / "ck", make_state(2), async_save=True)
    assert first.done() and time.perf_counter() - start > 0.2  # it waited
    first.wait()
    second.wait()
    got = blank()
    bcp.load(tmp_path / "ck", got)
    assert_equal_state(got, make_state(2))


def test_a_load_waits_for_the_save_in_flight(tmp_path) -> None:
    handle = bcp.save(SlowStorage(tmp_path / "ck", delay=0.3), make_state(4), async_save=True)
    got = blank()
    bcp.load(tmp_path / "ck", got)  # would be "not committed" without the wait
    assert handle.done()
    assert_equal_state(got, make_state(4))


class FailingStorage(LocalStorage):
    def open_writer(self, name: str):
        raise bcp.StorageError(f"cannot create {self.describe(name)}: No space left on device")


def test_a_background_failure_is_raised_by_wait_and_keeps_the_old_checkpoint(tmp_path) -> None:
    bcp.save(tmp_path / "ck", make_state(1))
    handle = bcp.save(FailingStorage(tmp_path / "ck"), make_state(2), async_save=True)
    with pytest.raises(bcp.StorageError, match="No space left"):
        handle.wait()
    with pytest.raises(bcp.StorageError):  # the same error again
        handle.result()
    got = blank()
    bcp.load(tmp_path / "ck", got)
    assert_equal_state(got, make_state(1))
    assert len(list((tmp_path / "ck" / "data").iterdir())) == 1  # the failed save left nothing


def test_unsupported_tensors_fail_in_the_call_naming_the_key(tmp_path) -> None:
    state = {"w": torch.ones(4), "s": torch.eye(3).to_sparse()}
    with pytest.raises(bcp.UnsupportedValueError, match="s"):
        bcp.save(tmp_path / "ck", state, async_save=True).wait()


def test_manager_async_save_applies_retention_after_the_commit(tmp_path) -> None:
    mgr = bcp.CheckpointManager(tmp_path / "run", keep_last=2)
    handles = [mgr.save(step, make_state(step), async_save=True) for step in range(4)]
    for h in handles:
        h.wait()
    assert mgr.steps() == [2, 3]
    got = blank()
    assert mgr.restore(got) == 3
    assert_equal_state(got, make_state(3))


# -- several ranks ----------------------------------------------------------------------------------


def _rank_state(rank: int, world: int, step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    full = torch.randn(world * 64, 32, generator=g)
    rows = full.shape[0] // world
    return {"w": bcp.ShardedTensor(full[rank * rows:(rank + 1) * rows].clone(), tuple(full.shape), (rank * rows, 0)),
            "rep": torch.arange(16.0) + step, "extra": {"step": step}}


def _async_with_collectives(rank: int, world: int, path: str) -> tuple[int, float]:
    """Save asynchronously, then keep running the loop's own all_reduce on the default group while
    the background writes; no collective may hang or be disturbed."""
    state = _rank_state(rank, world, 7)
    handle = bcp.save(SlowStorage(path, delay=0.5), state, async_save=True, timeout=60)
    overlapped = 0
    for _ in range(40):  # the same number of collectives on every rank
        if not handle.done():
            overlapped += 1
        t = torch.ones(1000) * (rank + 1)
        dist.all_reduce(t)  # the training loop's gradients, on the default group
        assert torch.all(t == sum(range(1, world + 1)))
        time.sleep(0.01)
    summary = handle.wait()
    return overlapped, summary.stall_seconds


def _load_half(rank: int, world: int, path: str) -> bool:
    full = _rank_state(0, 2 * world, 7)["w"].global_shape
    rows = full[0] // world
    target = {"w": bcp.ShardedTensor(torch.zeros(rows, full[1]), full, (rank * rows, 0)), "rep": torch.zeros(16),
              "extra": None}
    bcp.load(path, target, timeout=60)
    g = torch.Generator().manual_seed(7)
    want = torch.randn(full[0], full[1], generator=g)
    return bool(torch.equal(target["w"].data, want[rank * rows:(rank + 1) * rows])
                and torch.equal(target["rep"], torch.arange(16.0) + 7) and target["extra"] == {"step": 7})


@pytest.mark.distributed
def test_async_save_on_ranks_while_the_loop_runs_collectives_then_reshard(tmp_path) -> None:
    path = str(tmp_path / "ck")
    results = run_ranks(4, _async_with_collectives, path, timeout=120)
    assert all(overlapped >= 10 for overlapped, _ in results), results  # they ran during the background save
    assert all(ok for ok in run_ranks(2, _load_half, path, timeout=120))


class DieWhileWriting(LocalStorage):
    """Rank 1 dies (SIGKILL-like exit) in the middle of its background write."""

    def open_writer(self, name: str):
        writer = super().open_writer(name)
        if dist.get_rank() == 1:
            real = writer.write

            def die(data):
                real(data)
                os._exit(9)

            writer.write = die
        return writer


def _rank_dies_in_background(rank: int, world: int, path: str) -> str:
    bcp.save(path, _rank_state(rank, world, 1), timeout=20)  # the last good checkpoint
    handle = bcp.save(DieWhileWriting(path), _rank_state(rank, world, 2), async_save=True, timeout=20)
    try:
        handle.wait(timeout=60)
        outcome = "no error"
    except bcp.DistributedCheckpointError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    with open(f"{path}.rank{rank}", "w") as f:
        f.write(outcome)
    return outcome


@pytest.mark.distributed
def test_a_rank_killed_during_the_background_write_is_one_error_and_the_old_checkpoint_loads(tmp_path) -> None:
    path = str(tmp_path / "ck")
    with pytest.raises(RankFailure) as info:
        run_ranks(3, _rank_dies_in_background, path, timeout=120)
    assert set(info.value.failures) == {1}
    for rank in (0, 2):
        with open(f"{path}.rank{rank}") as f:
            text = f.read()
        # a dead peer cannot be told apart from a slow one inside gloo: every silent rank is named
        assert text.startswith("DistributedCheckpointError: save write failed on rank(s)") and "1" in text.split(":")[1]
    got = bcp.load_full(path)
    assert got["extra"] == {"step": 1}
    assert torch.equal(got["rep"], torch.arange(16.0) + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run by tools/gpu_run.sh)")
def test_cuda_tensors_are_snapshotted_to_pinned_memory_and_may_change_at_once(tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    state = {"w": torch.randn(1024, 1024, generator=g).cuda(), "t": torch.randn(64, 32, generator=g).cuda().t(),
             "b": torch.randn(77, generator=g).to(torch.bfloat16).cuda()}
    want = {k: v.clone() for k, v in state.items()}
    handle = bcp.save(SlowStorage(tmp_path / "ck", delay=0.2), state, async_save=True)
    assert POOL._buffer.is_pinned()
    for t in state.values():
        t.mul_(-3).add_(1)  # kernels queued right after the call
    handle.wait()
    got = bcp.load_full(tmp_path / "ck")
    for k, v in want.items():
        assert torch.equal(got[k], v.cpu()), k


def _nccl_rank(rank: int, world: int, store_path: str, path: str, out: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        shard = torch.randn(4096, 1024, generator=g).cuda()
        state = {"w": bcp.ShardedTensor(shard, (4096 * world, 1024), (4096 * rank, 0))}
        want = shard.clone()
        handle = bcp.save(path, state, async_save=True, timeout=120)
        steps = 0
        while not handle.done() or steps < 50:  # the loop's NCCL collectives run during the background write
            grad = torch.full((1 << 20,), float(rank + 1), device="cuda")
            dist.all_reduce(grad)
            assert float(grad[0]) == sum(range(1, world + 1))
            shard.add_(1.0)  # and the optimizer keeps changing the saved tensor
            steps += 1
        handle.wait()
        torch.cuda.synchronize()
        got = bcp.load_full(path)["w"][4096 * rank:4096 * (rank + 1)]
        with open(f"{out}.{rank}", "w") as f:
            f.write(f"{steps} {torch.equal(got, want.cpu())}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (run by tools/gpu_run.sh)")
def test_async_save_while_the_loop_runs_nccl_collectives(tmp_path) -> None:
    import torch.multiprocessing as tmp

    out = str(tmp_path / "out")
    tmp.spawn(_nccl_rank, args=(2, str(tmp_path / "store"), str(tmp_path / "ck"), out), nprocs=2, join=True)
    for rank in range(2):
        steps, equal = Path(f"{out}.{rank}").read_text().split()
        assert int(steps) >= 50 and equal == "True"
