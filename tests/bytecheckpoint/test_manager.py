"""CheckpointManager: steps, latest complete, retention, claims, garbage, multi-rank saves."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
import uuid

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.manager import LOCK_FILE, step_dir
from integrations.local_ranks import forkserver_context, run_ranks
from tests.bytecheckpoint.storage.s3server import BUCKET, MOTO_CREDENTIALS, moto_server  # noqa: F401 - fixture


def state_for(step: int, n: int = 4096) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(n, generator=g), "b": torch.full((17,), float(step))},
            "extra": {"step": step}}


def blank(n: int = 4096) -> dict:
    return {"model": {"w": torch.zeros(n), "b": torch.zeros(17)}, "extra": None}


def assert_is_step(state: dict, step: int) -> None:
    want = state_for(step, state["model"]["w"].numel())
    assert torch.equal(state["model"]["w"], want["model"]["w"])
    assert torch.equal(state["model"]["b"], want["model"]["b"])
    assert state["extra"] == {"step": step}


@pytest.fixture(params=["local", "fsspec-memory", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "run")
    if request.param == "fsspec-memory":
        return f"memory://run-{uuid.uuid4().hex[:8]}"
    request.getfixturevalue("moto_server")
    return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:8]}"


def test_save_restore_latest_and_retention(root) -> None:
    mgr = bcp.CheckpointManager(root, keep_last=2)
    assert mgr.latest_step() is None and mgr.steps() == []
    with pytest.raises(bcp.IncompleteCheckpointError, match="no complete checkpoint"):
        mgr.restore(blank())
    for step in (10, 20, 30, 40):
        mgr.save(step, state_for(step))
    assert mgr.steps() == [30, 40] and mgr.latest_step() == 40
    target = blank()
    assert mgr.restore(target) == 40
    assert_is_step(target, 40)
    assert mgr.restore(target, step=30) == 30
    assert_is_step(target, 30)
    with pytest.raises(bcp.IncompleteCheckpointError):
        mgr.restore(target, step=10)  # deleted by retention
    # every step directory is an ordinary checkpoint
    assert bcp.verify(mgr.checkpoint(40)).tensors == 2
    assert mgr.storage.list_dirs() == [step_dir(30), step_dir(40)]
    # a new manager on the same root sees the same steps
    assert bcp.CheckpointManager(root).steps() == [30, 40]


def test_saving_a_complete_step_again_fails_and_keeps_it(root) -> None:
    mgr = bcp.CheckpointManager(root)
    mgr.save(5, state_for(5))
    with pytest.raises(bcp.CheckpointExistsError, match="step 5 is already saved"):
        mgr.save(5, state_for(6))
    target = blank()
    mgr.restore(target)
    assert_is_step(target, 5)


def test_incomplete_steps_are_never_chosen_and_are_collected(root) -> None:
    mgr = bcp.CheckpointManager(root, keep_last=3)
    mgr.save(1, state_for(1))
    # a save that died after writing data: a claim by a process that no longer exists, no metadata
    dead = mgr.checkpoint(2)
    dead.commit(LOCK_FILE, json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": "1",
                                       "created": time.time(), "token": "dead"}).encode())
    w = dead.open_writer("data/x/rank00000.bin")
    w.write(memoryview(b"\x00" * 1000))
    w.close()
    # a save in progress right now (this live process holds the claim)
    live = mgr.checkpoint(3)
    live.create_exclusive(LOCK_FILE, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "start": "",
                                                 "created": time.time(), "token": "live"}).encode())
    assert mgr.latest_step() == 1 and mgr.incomplete_steps() == [2, 3]
    target = blank()
    assert mgr.restore(target) == 1
    mgr.save(4, state_for(4))  # collects the dead save's leftovers, leaves the live one alone
    assert mgr.incomplete_steps() == [3]
    assert not dead.list()
    with pytest.raises(bcp.CheckpointExistsError, match="being saved by another process"):
        mgr.save(3, state_for(3))
    assert mgr.steps() == [1, 4]


def test_a_dead_saves_claim_is_broken_when_the_step_is_saved_again(root) -> None:
    mgr = bcp.CheckpointManager(root)
    mgr.checkpoint(8).commit(LOCK_FILE, json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "start": "1",
                                                    "created": time.time(), "token": "t"}).encode())
    mgr.save(8, state_for(8))
    target = blank()
    assert mgr.restore(target) == 8
    assert_is_step(target, 8)


def test_a_claim_from_another_host_is_broken_only_when_old(tmp_path) -> None:
    mgr = bcp.CheckpointManager(tmp_path / "run", stale_lock_s=60)
    claim = {"host": "elsewhere", "pid": 1, "start": "", "created": time.time(), "token": "x"}
    mgr.checkpoint(1).commit(LOCK_FILE, json.dumps(claim).encode())
    with pytest.raises(bcp.CheckpointExistsError, match="host elsewhere"):
        mgr.save(1, state_for(1))
    claim["created"] = time.time() - 120
    mgr.checkpoint(1).commit(LOCK_FILE, json.dumps(claim).encode())
    mgr.save(1, state_for(1))
    assert mgr.steps() == [1]


def test_a_failed_save_leaves_nothing_and_the_step_can_be_saved_later(root) -> None:
    mgr = bcp.CheckpointManager(root)
    bad = state_for(3)
    bad["extra"] = {"handle": object()}  # not checkpointable without pickle
    with pytest.raises(bcp.UnsupportedValueError):
        mgr.save(3, bad)
    assert mgr.incomplete_steps() == [] and mgr.storage.list() == []
    mgr.save(3, state_for(3))
    assert mgr.steps() == [3]


def _dead_pid() -> int:
    proc = mp.get_context("fork").Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def _contend(root: str, value: float, barrier, results) -> None:
    mgr = bcp.CheckpointManager(root)
    state = {"w": torch.full((1 << 18,), value), "who": value}
    barrier.wait()
    try:
        mgr.save(1, state)
        results.put((value, "saved"))
    except bcp.CheckpointExistsError as exc:
        results.put((value, f"refused: {exc}"))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put((value, f"error: {type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("seed", range(4))
def test_concurrent_saves_of_one_step_one_wins_nothing_mixed(tmp_path, seed) -> None:
    root = str(tmp_path / "run")
    ctx = forkserver_context()  # fork after torch ran threads may deadlock
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(root, float(v), barrier, results)) for v in (1, 2)]
    for p in procs:
        p.start()
    try:
        outcome = dict(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert sorted(o.split(":")[0] for o in outcome.values()) == ["refused", "saved"], outcome
    winner = next(v for v, o in outcome.items() if o == "saved")
    full = bcp.load_full(bcp.CheckpointManager(root).checkpoint(1))
    assert full["who"] == winner and torch.all(full["w"] == winner)
    assert len(bcp.verify(bcp.CheckpointManager(root).checkpoint(1)).data_files) == 1
    assert bcp.CheckpointManager(root).steps() == [1]


def _ranks_save_and_restore(rank: int, world: int, root: str) -> list[int]:
    mgr = bcp.CheckpointManager(root, keep_last=2, timeout=60)
    rows = 64 // world
    for step in (1, 2, 3):
        full = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) + step
        local = full[rank * rows : (rank + 1) * rows].clone()
        mgr.save(step, {"w": bcp.ShardedTensor(local, (64, 8), (rank * rows, 0)), "step": step})
    target = {"w": bcp.ShardedTensor(torch.zeros(rows, 8), (64, 8), (rank * rows, 0)), "step": None}
    step = mgr.restore(target)
    want = (torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) + step)[rank * rows : (rank + 1) * rows]
    assert torch.equal(target["w"].data, want) and target["step"] == step
    try:
        mgr.save(3, {"w": bcp.ShardedTensor(local, (64, 8), (rank * rows, 0)), "step": 3})
    except bcp.CheckpointExistsError:
        pass
    else:
        raise AssertionError("saving step 3 again succeeded")
    return mgr.steps()


@pytest.mark.distributed
def test_multi_rank_saves_with_retention_by_the_coordinator(tmp_path) -> None:
    root = str(tmp_path / "run")
    steps = run_ranks(2, _ranks_save_and_restore, root)
    assert all(s == [2, 3] for s in steps)
    full = bcp.load_full(bcp.CheckpointManager(root).checkpoint(3))
    assert torch.equal(full["w"], torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) + 3)


def test_forced_garbage_collection_removes_claims_of_other_hosts(tmp_path) -> None:
    mgr = bcp.CheckpointManager(tmp_path / "run")
    mgr.save(1, state_for(1))
    claim = {"host": "elsewhere", "pid": 1, "start": "", "created": time.time(), "token": "x"}
    mgr.checkpoint(2).commit(LOCK_FILE, json.dumps(claim).encode())
    assert mgr.collect_garbage() == [] and mgr.incomplete_steps() == [2]
    assert mgr.collect_garbage(force=True) == [2]
    assert mgr.incomplete_steps() == [] and mgr.steps() == [1]


def _ranks_on_s3(rank: int, world: int, url: str, endpoint: str) -> list[int]:
    os.environ.update(MOTO_CREDENTIALS)  # ranks come from a fork server started before the fixture
    mgr = bcp.CheckpointManager(url, keep_last=1, timeout=60,
                                storage_options={"endpoint_url": endpoint, "part_size": 64 << 10})
    rows = 64 // world
    for step in (1, 2):
        full = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) * step
        mgr.save(step, {"w": bcp.ShardedTensor(full[rank * rows : (rank + 1) * rows].clone(), (64, 8), (rank * rows, 0))})
    target = {"w": bcp.ShardedTensor(torch.zeros(rows, 8), (64, 8), (rank * rows, 0))}
    assert mgr.restore(target) == 2
    assert torch.equal(target["w"].data, (torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) * 2)[rank * rows : (rank + 1) * rows])
    return mgr.steps()


@pytest.mark.distributed
def test_multi_rank_saves_on_s3(moto_server) -> None:  # noqa: F811 - the fixture
    url = f"s3://{BUCKET}/ranks-{uuid.uuid4().hex[:8]}"
    assert run_ranks(2, _ranks_on_s3, url, moto_server.endpoint) == [[2], [2]]
    mgr = bcp.CheckpointManager(url)
    assert bcp.verify(mgr.checkpoint(2)).data_files and len(mgr.checkpoint(2).list("data")) == 2
