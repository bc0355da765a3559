"""Many writers and readers on one checkpoint path (and under one CheckpointManager root), on local
disk and on a real S3 server (moto), with writers SIGKILLed at random moments.

The invariants: every save that returns success committed a whole checkpoint; every load returns a
state that some save wrote, whole (or says the checkpoint changed under it, never "corrupt"); a
save never deletes files of a save that is still writing; the newest commit wins; and once the
writers are gone, the next commit removes everything the dead ones left behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import socket
import time
import uuid
from multiprocessing.connection import Connection, wait
from pathlib import Path

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint import loader
from bytecheckpoint.commit import COMMIT_LOCK
from bytecheckpoint.leases import Lease
from bytecheckpoint.loader import read_metadata
from bytecheckpoint.storage import resolve_storage
from integrations.local_ranks import forkserver_context
from tests.bytecheckpoint.storage.s3server import BUCKET, moto_server  # noqa: F401 - fixture

N = 1 << 14
MAX_SAVES = 1000  # per writer; writer w saves ids 1000 * (w + 1) + i
_ctx = forkserver_context()


def state_for(ident: int) -> dict:
    g = torch.Generator().manual_seed(ident)
    return {"model": {"w": torch.randn(N, generator=g), "emb": torch.randn(32, 33, generator=g)},
            "extra": {"id": ident}}


def blank() -> dict:
    return {"model": {"w": torch.zeros(N), "emb": torch.zeros(32, 33)}, "extra": None}


def whole(state: dict) -> int:
    """The id of a loaded state, after checking that every tensor is that save's."""
    ident = state["extra"]["id"]
    want = state_for(ident)
    for name in ("w", "emb"):
        assert torch.equal(state["model"][name], want["model"][name]), f"tensor {name} of save {ident} differs"
    return ident


def _env() -> dict[str, str]:
    """The S3 settings the fixture put in the environment (the forkserver started before it)."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


class _Report:
    """A child's one-way channel to the test: its own pipe, no lock, one small write per event.

    An mp.Queue is shared through a lock that a writer SIGKILLed inside ``put`` never releases,
    after which every other process hangs at exit flushing its queue; a pipe write of less than
    PIPE_BUF bytes is atomic, so a killed child leaves whole events or none.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def put(self, kind: str, ident: int, text: str = "") -> None:
        self.conn.send((kind, ident, text[:500]))


def _writer(path: str, first_id: int, seconds: float, report: _Report, env: dict[str, str],
            manager: bool = False) -> None:
    """Save ids ``first_id``, ``first_id + 1``, ... for ``seconds``: to ``path``, or as steps of a
    CheckpointManager rooted there (keeping the last 3)."""
    stop_at = time.monotonic() + seconds
    os.environ.update(env)
    torch.set_num_threads(1)
    mgr = bcp.CheckpointManager(path, keep_last=3) if manager else None
    for i in range(MAX_SAVES):
        if time.monotonic() > stop_at:
            return
        ident = first_id + i
        try:
            if mgr is not None:
                mgr.save(ident, state_for(ident), timeout=60)
            else:
                bcp.save(path, state_for(ident), timeout=60)
            report.put("saved", ident)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            report.put("save-error", ident, f"{type(exc).__name__}: {exc}")


def _reader(path: str, seconds: float, report: _Report, env: dict[str, str], manager: bool = False) -> None:
    """Load ``path`` (or restore the latest step of a manager rooted there) for ``seconds``."""
    stop_at = time.monotonic() + seconds
    os.environ.update(env)
    torch.set_num_threads(1)
    mgr = bcp.CheckpointManager(path) if manager else None
    while time.monotonic() < stop_at:
        target = blank()
        try:
            if mgr is not None:
                step = mgr.restore(target, timeout=60)
                assert whole(target) == step, (whole(target), step)
            else:
                bcp.load(path, target, timeout=60)
            report.put("loaded", whole(target))
        except bcp.IncompleteCheckpointError:
            report.put("not-yet", -1)
        except bcp.CheckpointChangedError as exc:
            report.put("changed", -1, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            report.put("load-error", -1, f"{type(exc).__name__}: {exc}")


def _drain(channels: list[Connection]) -> list[tuple[str, int, str]]:
    """The events waiting on ``channels`` now (waits briefly for the first); a channel whose
    process is gone is dropped from the list."""
    out = []
    for conn in wait(channels, timeout=0.05):
        try:
            while True:
                out.append(conn.recv())
                if not conn.poll():
                    break
        except EOFError:
            channels.remove(conn)
    return out


def _run_writers_and_readers(path: str, writers: int, readers: int, seconds: float,
                             kills: int, seed: int, manager: bool = False) -> list[tuple[str, int, str]]:
    rng = random.Random(seed)
    procs, channels = [], []
    for role in ["writer"] * writers + ["reader"] * readers:
        receive, send = _ctx.Pipe(duplex=False)
        w = len(procs)
        args = ((path, 1000 * (w + 1), seconds, _Report(send), _env(), manager) if role == "writer"
                else (path, seconds, _Report(send), _env(), manager))
        procs.append(_ctx.Process(target=_writer if role == "writer" else _reader, args=args))
        procs[-1].start()
        send.close()  # the child holds the only write end: its death reads as EOF here
        channels.append(receive)
    events: list[tuple[str, int, str]] = []
    try:
        killed = 0
        for victim in rng.sample(range(writers), kills):  # SIGKILL writers mid-write, mid-commit, holding the lock
            first = 1000 * (victim + 1)
            while procs[victim].is_alive() and not any(e[1] == first for e in events):
                events += _drain(channels)  # wait until the victim is saving
            time.sleep(rng.uniform(0.0, seconds / (kills + 1)))
            if procs[victim].is_alive():
                os.kill(procs[victim].pid, signal.SIGKILL)
                killed += 1
        assert killed == kills
        deadline = time.monotonic() + seconds + 120
        for p in procs:
            while p.is_alive() and time.monotonic() < deadline:
                events += _drain(channels)
                p.join(timeout=0.2)
            assert not p.is_alive(), f"process {p.pid} hung"
        while channels:
            events += _drain(channels)
        return events
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for conn in channels:
            conn.close()


def _check(events: list[tuple[str, int, str]], path: str, writers: int) -> None:
    errors = [e for e in events if e[0] in ("load-error", "save-error")]
    assert not errors, errors[:5]
    saved = {ident for kind, ident, _ in events if kind == "saved"}
    loaded = [ident for kind, ident, _ in events if kind == "loaded"]
    assert saved, "no save succeeded"
    assert loaded, "no load succeeded"
    # a load may also see a save committed by a writer killed before it could report it
    attempted = {1000 * (w + 1) + i for w in range(writers) for i in range(MAX_SAVES)}
    assert set(loaded) <= attempted | {0}, set(loaded) - attempted
    changed = sum(1 for e in events if e[0] == "changed")
    assert changed <= max(2, len(loaded) // 10), f"{changed} loads out of {len(loaded)} gave up on a changing checkpoint"

    # quiet now: the next commit wins, and it removes what the dead writers left
    final = 999_999
    bcp.save(path, state_for(final), timeout=60)
    target = blank()
    bcp.load(path, target)
    assert whole(target) == final
    bcp.verify(path)
    storage = resolve_storage(path)
    referenced = {name.split("/")[1] for name in read_metadata(storage).data_files}
    left = {name.split("/")[1] for name in storage.list("data")}  # folders that hold any file
    assert left == referenced, "dead saves' data was left behind"
    assert not storage.exists(COMMIT_LOCK)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_many_writers_and_readers_on_one_local_path_with_kills(tmp_path, seed) -> None:
    path = str(tmp_path / "ckpt")
    events = _run_writers_and_readers(path, writers=4, readers=2, seconds=8, kills=2, seed=seed)
    _check(events, path, 4)


@pytest.mark.slow
def test_many_writers_and_readers_on_one_s3_path_with_kills(moto_server) -> None:  # noqa: F811 - fixture
    path = f"s3://{BUCKET}/concurrency-{uuid.uuid4().hex[:8]}"
    events = _run_writers_and_readers(path, writers=3, readers=2, seconds=10, kills=1, seed=7)
    _check(events, path, 3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_many_writers_and_restorers_under_one_manager_root_with_kills(tmp_path, backend, request) -> None:
    if backend == "s3":
        request.getfixturevalue("moto_server")
        root = f"s3://{BUCKET}/manager-{uuid.uuid4().hex[:8]}"
    else:
        root = str(tmp_path / "run")
    events = _run_writers_and_readers(root, writers=3, readers=2, seconds=8, kills=1, seed=3,
                                      manager=True)
    errors = [e for e in events if e[0] in ("load-error", "save-error")]
    assert not errors, errors[:5]
    assert any(e[0] == "saved" for e in events) and any(e[0] == "loaded" for e in events)
    mgr = bcp.CheckpointManager(root, keep_last=3)
    mgr.save(999_999, state_for(999_999))  # quiet now: the newest step wins
    target = blank()
    assert mgr.restore(target) == 999_999 and whole(target) == 999_999
    assert len(mgr.steps()) <= 3  # retention held
    assert mgr.incomplete_steps() == []  # the killed writer's claimed step was collected
    for step in mgr.steps():
        bcp.verify(mgr.checkpoint(step))


# -- the user's finding: two saves to one path at the same time ------------------------------------


def _paired_saver(path: str, ident: int, rounds: int, barrier, results: mp.Queue) -> None:
    torch.set_num_threads(1)
    for r in range(rounds):
        barrier.wait()
        try:
            bcp.save(path, state_for(ident + r))
            results.put(("saved", ident + r, ""))
        except bcp.CheckpointError as exc:
            results.put(("save-error", ident + r, f"{type(exc).__name__}: {exc}"))
        barrier.wait()  # the test checks the checkpoint between rounds
        barrier.wait()


def test_two_saves_to_one_path_at_once_leave_a_loadable_checkpoint(tmp_path) -> None:
    """Both saves commit whole, one after the other; the checkpoint at the path is one of them,
    and it loads (it used to lose both, and the good checkpoint from before)."""
    path = str(tmp_path / "ckpt")
    bcp.save(path, state_for(1))
    rounds = 20
    barrier = _ctx.Barrier(3)
    results: mp.Queue = _ctx.Queue()
    procs = [_ctx.Process(target=_paired_saver, args=(path, base, rounds, barrier, results)) for base in (100, 200)]
    for p in procs:
        p.start()
    try:
        for r in range(rounds):
            barrier.wait(timeout=60)
            barrier.wait(timeout=60)
            events = [results.get(timeout=10), results.get(timeout=10)]
            assert all(kind == "saved" for kind, _, _ in events), events
            target = blank()
            bcp.load(path, target)
            assert whole(target) in {100 + r, 200 + r}
            barrier.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    storage = resolve_storage(path)
    assert len(storage.list_dirs("data")) == 1


# -- loads and restores racing a re-save or a prune -------------------------------------------------


def _resaver(path: str, first_id: int, saves: int) -> None:
    torch.set_num_threads(1)
    for i in range(saves):
        bcp.save(path, state_for(first_id + i))


def test_loads_racing_resaves_never_report_corruption(tmp_path) -> None:
    """A load whose files are deleted under it by a newer commit reloads the new checkpoint."""
    path = str(tmp_path / "ckpt")
    bcp.save(path, state_for(0))
    writer = _ctx.Process(target=_resaver, args=(path, 1, 40))
    writer.start()
    outcomes: dict[str, int] = {}
    try:
        while writer.is_alive():
            target = blank()
            try:
                bcp.load(path, target)
                whole(target)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except bcp.CheckpointChangedError:
                outcomes["changed"] = outcomes.get("changed", 0) + 1
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert outcomes.get("ok", 0) > 5, outcomes


def test_a_load_that_loses_its_files_to_a_replace_reloads_the_new_checkpoint(tmp_path, monkeypatch) -> None:
    """Deterministic version of the race: the checkpoint is replaced between the metadata read and
    the data reads; the load retries against the new metadata and gets the new state."""
    path = str(tmp_path / "ckpt")
    bcp.save(path, state_for(1))
    real = loader.execute_copies
    calls = {"n": 0}

    def replaced_first(storage, items, block_size, threads=4):
        calls["n"] += 1
        if calls["n"] == 1:
            bcp.save(path, state_for(2))  # another job replaces it now
        return real(storage, items, block_size, threads)

    monkeypatch.setattr("bytecheckpoint.loader.execute_copies", replaced_first)
    target = blank()
    bcp.load(path, target)
    assert whole(target) == 2 and calls["n"] == 2


def test_a_load_of_a_deleted_checkpoint_says_so(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "ckpt")
    bcp.save(path, state_for(1))
    real = loader.execute_copies

    def deleted_first(storage, items, block_size, threads=4):
        resolve_storage(path).delete_prefix("")
        return real(storage, items, block_size, threads)

    monkeypatch.setattr("bytecheckpoint.loader.execute_copies", deleted_first)
    with pytest.raises(bcp.CheckpointChangedError, match="deleted while it was being loaded"):
        bcp.load(path, blank())


def test_a_missing_file_of_an_unchanged_checkpoint_is_still_corruption(tmp_path) -> None:
    path = tmp_path / "ckpt"
    bcp.save(path, state_for(1))
    next((path / "data").rglob("rank*.bin")).unlink()
    with pytest.raises(bcp.MissingDataFileError, match="data file is missing"):
        bcp.load(path, blank())


def _pruning_saver(root: str, first: int, count: int) -> None:
    torch.set_num_threads(1)
    mgr = bcp.CheckpointManager(root, keep_last=1)
    for step in range(first, first + count):
        mgr.save(step, state_for(step))


def test_restores_racing_saves_with_retention_never_report_corruption(tmp_path) -> None:
    root = str(tmp_path / "run")
    bcp.CheckpointManager(root, keep_last=1).save(0, state_for(0))
    writer = _ctx.Process(target=_pruning_saver, args=(root, 1, 30))
    writer.start()
    restored = []
    try:
        while writer.is_alive():
            target = blank()
            mgr = bcp.CheckpointManager(root)
            try:
                step = mgr.restore(target)
            except bcp.CheckpointChangedError:
                continue
            assert whole(target) == step
            restored.append(step)
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert len(restored) > 3 and restored == sorted(restored)


def test_a_stale_commit_lock_of_a_dead_process_is_broken(tmp_path) -> None:
    path = tmp_path / "ckpt"
    bcp.save(path, state_for(1))
    probe = _ctx.Process(target=time.sleep, args=(0,))
    probe.start()
    probe.join()
    dead = Lease(socket.gethostname(), probe.pid, "1", time.time())
    (path / COMMIT_LOCK).write_bytes(dead.encode())
    bcp.save(path, state_for(2), timeout=10)
    target = blank()
    bcp.load(path, target)
    assert whole(target) == 2
    assert not (path / COMMIT_LOCK).exists()


def test_a_live_commit_lock_makes_the_save_wait_then_fail_clearly(tmp_path) -> None:
    path = tmp_path / "ckpt"
    bcp.save(path, state_for(1))
    (path / COMMIT_LOCK).write_bytes(Lease.mine().encode())  # this (live) process holds it
    with pytest.raises(bcp.CommitConflictError, match="held by another save"):
        bcp.save(path, state_for(2), timeout=1)
    (path / COMMIT_LOCK).unlink()
    target = blank()
    bcp.load(path, target)
    assert whole(target) == 1  # the old checkpoint is intact
    assert [p.name for p in (path / "data").iterdir()] == [read_metadata(
        resolve_storage(path)).data_files[0].split("/")[1]]  # the failed save removed its files


def test_a_running_saves_files_are_never_deleted_by_another_commit(tmp_path) -> None:
    """Files under a folder with a live lease survive another save's commit; once the lease is
    stale (its process died), the next commit removes them."""
    from bytecheckpoint.commit import begin_save, save_lease_name
    path = tmp_path / "ckpt"
    storage = resolve_storage(path)
    begin_save(storage, "inflight")
    (path / "data" / "inflight" / "rank00000.bin").write_bytes(b"x" * 100)
    bcp.save(path, state_for(1))
    assert (path / "data" / "inflight" / "rank00000.bin").exists()
    probe = _ctx.Process(target=time.sleep, args=(0,))
    probe.start()
    probe.join()
    storage.commit(save_lease_name("inflight"), Lease(socket.gethostname(), probe.pid, "1",
                                                      time.time()).encode())
    bcp.save(path, state_for(2))
    assert not (path / "data" / "inflight").exists()
    assert Path(path / "metadata.json").exists()


_DIE_AFTER_PUBLISHING = """
import os, sys
import bytecheckpoint as bcp
from bytecheckpoint import commit
from tests.bytecheckpoint.test_concurrency import state_for
commit._cleanup_after_commit = lambda *args, **kwargs: os._exit(0)  # killed right after the metadata went out
bcp.save(sys.argv[1], state_for(2))
"""


def test_data_replaced_by_a_writer_that_died_before_deleting_it_is_collected(tmp_path) -> None:
    """A committed checkpoint's folder has no lease; a writer that replaces it and dies before deleting
    it must leave it marked, so that the next commit collects it (found by the many-writer test)."""
    import subprocess
    import sys

    path = str(tmp_path / "ckpt")
    bcp.save(path, state_for(1))
    storage = resolve_storage(path)
    first = {name.split("/")[1] for name in read_metadata(storage).data_files}
    subprocess.run([sys.executable, "-c", _DIE_AFTER_PUBLISHING, path], check=True, timeout=300,
                   cwd=Path(__file__).resolve().parents[2])
    target = blank()
    bcp.load(path, target)
    assert whole(target) == 2  # the dead writer's checkpoint is committed, whole
    assert {name.split("/")[1] for name in storage.list("data")} >= first  # the replaced data is still there
    for folder in first:
        lease = Lease.read(storage, f"data/{folder}/.lease")
        assert lease is not None and lease.is_stale(24 * 3600.0), "the replaced folder is not marked by the dead writer"

    bcp.save(path, state_for(3))
    referenced = {name.split("/")[1] for name in read_metadata(storage).data_files}
    assert {name.split("/")[1] for name in storage.list("data")} == referenced
    assert not storage.exists(COMMIT_LOCK)
