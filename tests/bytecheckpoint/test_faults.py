"""Fault injection: processes killed mid-save, an S3 server that dies mid-upload, a full disk,
bit flips and truncation. The invariant everywhere: the last committed checkpoint still loads and
verifies, a checkpoint that was cut short is never reported complete, and errors say what and where."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.metadata import METADATA_FILE
from bytecheckpoint.storage import LocalStorage, Storage
from bytecheckpoint.storage.s3 import S3Storage
from integrations.local_ranks import RankFailure, forkserver_context, run_ranks
from tests.bytecheckpoint.storage.s3server import (
    BUCKET,
    MOTO_CREDENTIALS,
    MotoServer,
    S3rverServer,
    TcpProxy,
    moto_server,  # noqa: F401 - fixture
)


def state_for(step: int, n: int = 1 << 16) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "model": {"w": torch.randn(n, generator=g), "emb": torch.randn(64, 257, generator=g)},
        "optim": {"m": torch.full((n // 2,), float(step))},
        "extra": {"step": step},
    }


def blank(n: int = 1 << 16) -> dict:
    return {"model": {"w": torch.zeros(n), "emb": torch.zeros(64, 257)}, "optim": {"m": torch.zeros(n // 2)},
            "extra": None}


def assert_restores_committed(root, n: int = 1 << 16) -> int:
    """The latest complete step loads to exactly the state saved at that step and verifies; every
    listed step verifies. Returns the latest step."""
    mgr = bcp.CheckpointManager(root)
    for step in mgr.steps():
        bcp.verify(mgr.checkpoint(step))
    target = blank(n)
    step = mgr.restore(target)
    want = state_for(step, n)
    for group, name in [("model", "w"), ("model", "emb"), ("optim", "m")]:
        assert torch.equal(target[group][name], want[group][name]), (step, name)
    assert target["extra"] == {"step": step}
    return step


# -- SIGKILL at every kind of moment ----------------------------------------------------------------


class KillAtOp(Storage):
    """Delegates to ``inner``; SIGKILLs this process at its ``kill_at``-th mutating operation
    (a data write, a file close, a commit, a claim, a delete). Shares its counter with children."""

    def __init__(self, inner: Storage, kill_at: int | None, counter: list[int] | None = None) -> None:
        self.inner, self.kill_at = inner, kill_at
        self.counter = counter if counter is not None else [0]
        self.url = inner.url
        self.exclusive_create = inner.exclusive_create

    def tick(self) -> None:
        self.counter[0] += 1
        if self.kill_at is not None and self.counter[0] >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def child(self, name: str) -> KillAtOp:
        return KillAtOp(self.inner.child(name), self.kill_at, self.counter)

    def open_writer(self, name: str):
        self.tick()
        writer, outer = self.inner.open_writer(name), self

        class Writer:
            def write(self, data: memoryview) -> None:
                outer.tick()
                writer.write(data)

            def close(self) -> None:
                outer.tick()
                writer.close()

            def abort(self) -> None:
                writer.abort()

        return Writer()

    def commit(self, name: str, data: bytes) -> None:
        self.tick()
        self.inner.commit(name, data)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        self.tick()
        return self.inner.create_exclusive(name, data)

    def delete(self, name: str) -> None:
        self.tick()
        self.inner.delete(name)

    def delete_prefix(self, prefix: str) -> int:
        self.tick()
        return self.inner.delete_prefix(prefix)

    def read_into(self, name, offset, buffer):
        return self.inner.read_into(name, offset, buffer)

    def read(self, name):
        return self.inner.read(name)

    def size(self, name):
        return self.inner.size(name)

    def exists(self, name):
        return self.inner.exists(name)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def list_dirs(self, prefix=""):
        return self.inner.list_dirs(prefix)


def _save_steps(root: str, steps: list[int], kill_at: int | None) -> int:
    storage = KillAtOp(LocalStorage(root), kill_at)
    mgr = bcp.CheckpointManager(storage, keep_last=2)
    for step in steps:
        mgr.save(step, state_for(step), block_size=1 << 14)
    return storage.counter[0]


def _run_killed(target, *args, timeout: float = 60) -> int:
    proc = forkserver_context().Process(target=target, args=args)
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise AssertionError(f"{target.__name__} hung")
    return proc.exitcode


@pytest.fixture(scope="module")
def ops_per_run(tmp_path_factory) -> int:
    """Mutating storage operations of saving steps 2..4 after step 1 (counted on a clean run)."""
    root = str(tmp_path_factory.mktemp("calib") / "run")
    _save_steps(root, [1], None)
    return _save_steps(root, [2, 3, 4], None)


@pytest.mark.parametrize("seed", range(16))
def test_sigkill_at_a_random_storage_operation(tmp_path, ops_per_run, seed) -> None:
    root = str(tmp_path / "run")
    _save_steps(root, [1], None)
    kill_at = random.Random(seed).randint(1, ops_per_run)
    assert _run_killed(_save_steps, root, [2, 3, 4], kill_at) == -signal.SIGKILL
    mgr = bcp.CheckpointManager(root, keep_last=2)
    latest = assert_restores_committed(root)
    assert latest in (1, 2, 3, 4)
    # the run resumes: saving the next steps breaks the dead save's claim and collects its leftovers
    for step in range(latest + 1, 6):
        mgr.save(step, state_for(step), block_size=1 << 14)
    assert mgr.steps() == [4, 5] and mgr.incomplete_steps() == []
    assert_restores_committed(root)
    for step in mgr.steps():  # no unreferenced data left inside complete checkpoints
        ck = mgr.checkpoint(step)
        assert sorted(f for f in ck.list() if f.startswith("data/")) == bcp.verify(ck).data_files


def _save_forever(root: str) -> None:
    mgr = bcp.CheckpointManager(root, keep_last=3)
    step = bcp.CheckpointManager(root).latest_step() or 0
    while True:
        step += 1
        mgr.save(step, state_for(step, 1 << 20))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_sigkill_at_a_random_time_from_outside(tmp_path, seed) -> None:
    root = str(tmp_path / "run")
    bcp.CheckpointManager(root).save(0, state_for(0, 1 << 20))
    proc = forkserver_context().Process(target=_save_forever, args=(root,))
    proc.start()
    time.sleep(random.Random(seed).uniform(0.2, 2.0))
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    latest = assert_restores_committed(root, 1 << 20)
    mgr = bcp.CheckpointManager(root, keep_last=3)
    mgr.save(latest + 1, state_for(latest + 1, 1 << 20))
    assert mgr.incomplete_steps() == [] and mgr.latest_step() == latest + 1


def _rank_saves_then_dies(rank: int, world: int, root: str, kill_at: int, outcome_file: str) -> str:
    rows = 128 // world
    full = state_for(2, 128 * 64)["model"]["w"].reshape(128, 64)
    storage = KillAtOp(LocalStorage(root), kill_at if rank == 1 else None)
    mgr = bcp.CheckpointManager(storage, timeout=30)
    state = {"w": bcp.ShardedTensor(full[rank * rows : (rank + 1) * rows].clone(), (128, 64), (rank * rows, 0))}
    try:
        mgr.save(2, state, block_size=1 << 12)
        result = "saved"
    except bcp.DistributedCheckpointError as exc:
        result = f"{type(exc).__name__}: {exc}"
    Path(outcome_file).write_text(result)
    return result


@pytest.mark.distributed
@pytest.mark.parametrize("kill_at", [1, 3])  # rank 1: open, write, close
def test_sigkill_of_one_rank_fails_the_save_on_the_others(tmp_path, kill_at) -> None:
    root = str(tmp_path / "run")
    mgr = bcp.CheckpointManager(root)
    mgr.save(1, {"w": state_for(1, 128 * 64)["model"]["w"].reshape(128, 64)})
    outcome = tmp_path / "rank0.txt"
    with pytest.raises(RankFailure) as info:
        run_ranks(2, _rank_saves_then_dies, root, kill_at, str(outcome), timeout=90)
    assert set(info.value.failures) == {1}  # rank 1 was killed; rank 0 got an error, not a hang
    assert "DistributedCheckpointError" in outcome.read_text()
    assert mgr.steps() == [1]
    assert torch.equal(bcp.load_full(mgr.checkpoint(1))["w"], state_for(1, 128 * 64)["model"]["w"].reshape(128, 64))
    assert mgr.collect_garbage() in ([], [2])  # the coordinator already removed the failed save
    assert mgr.incomplete_steps() == []


# -- S3 server dies mid-upload ---------------------------------------------------------------------


@pytest.fixture
def proxied_s3(moto_server) -> Iterator[TcpProxy]:  # noqa: F811 - the fixture
    proxy = TcpProxy(moto_server.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def _s3_manager(endpoint: str, **kw) -> bcp.CheckpointManager:
    storage = S3Storage(f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}", endpoint_url=endpoint,
                        part_size=256 << 10, concurrency=2, connect_timeout_s=1, read_timeout_s=5, **kw)
    return bcp.CheckpointManager(storage, keep_last=2)


def _cut_when(proxy: TcpProxy, threshold: int, action, timeout: float = 30) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + timeout
        while proxy.bytes_up < threshold and time.monotonic() < deadline:
            time.sleep(0.005)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("seed", range(3))
def test_s3_outage_mid_upload_is_retried_and_the_save_completes(proxied_s3, seed) -> None:
    mgr = _s3_manager(proxied_s3.endpoint, attempts=8, backoff_s=0.1)
    mgr.save(1, state_for(1))
    start = proxied_s3.bytes_up
    cut = random.Random(seed).randint(64 << 10, 600 << 10)

    def outage() -> None:
        proxied_s3.stop()
        time.sleep(0.5 + seed * 0.3)
        proxied_s3.start()

    thread = _cut_when(proxied_s3, start + cut, outage)
    mgr.save(2, state_for(2))
    thread.join()
    assert mgr.steps() == [1, 2]
    assert assert_restores_committed(mgr.storage) == 2
    bcp.verify(mgr.checkpoint(1))


def test_s3_server_killed_and_restarted_mid_upload_gives_a_clear_error(tmp_path) -> None:
    os.environ.update(MOTO_CREDENTIALS)
    server = MotoServer(min_part_size=64 << 10)
    server.start()
    proxy = TcpProxy(server.port)
    proxy.start()
    try:
        server.create_bucket(BUCKET)
        mgr = _s3_manager(proxy.endpoint, attempts=6, backoff_s=0.2)
        mgr.save(1, state_for(1))

        def kill_and_restart() -> None:
            server.kill()  # moto keeps objects in memory: the restarted server is empty
            time.sleep(0.3)
            server.start()

        thread = _cut_when(proxy, proxy.bytes_up + (300 << 10), kill_and_restart)
        with pytest.raises(bcp.StorageError, match=rf"s3://{BUCKET}/faults-\w+/step_00000002/"):
            mgr.save(2, state_for(2))
        thread.join()
        server.create_bucket(BUCKET)  # the restarted server lost everything, step 1 included
        assert bcp.CheckpointManager(mgr.storage).steps() == []
        # with the server gone for good, the retry budget runs out with an error naming the object
        server.kill()
        mgr = bcp.CheckpointManager(S3Storage(mgr.storage.url, endpoint_url=proxy.endpoint, attempts=3,
                                              backoff_s=0.1, connect_timeout_s=1))
        begin = time.monotonic()
        with pytest.raises(bcp.StorageError, match=r"step_00000003/.*after 3 attempt"):
            mgr.save(3, state_for(3))
        assert time.monotonic() - begin < 15
    finally:
        proxy.stop()
        server.kill()


class _PauseAfterBytes(S3Storage):
    """S3Storage whose data writers, once ``threshold`` bytes were handed to them in all, signal
    ``reached`` and wait (bounded) for ``resume`` before writing on: a hook to act mid-upload."""

    def __init__(self, url: str, threshold: int, reached: threading.Event, resume: threading.Event,
                 written: list[int] | None = None, **kw) -> None:
        super().__init__(url, **kw)
        self.hook = (threshold, reached, resume, written if written is not None else [0])
        self.kw = kw

    def child(self, name: str) -> _PauseAfterBytes:
        return _PauseAfterBytes(f"s3://{self.bucket}/{self._key(name)}", *self.hook, **{**self.kw, "fs": self.fs})

    def open_writer(self, name: str):
        writer = super().open_writer(name)
        threshold, reached, resume, written = self.hook
        inner_write = writer.write

        def write(data: memoryview) -> None:
            inner_write(data)
            written[0] += len(memoryview(data).cast("B"))
            if written[0] >= threshold and not reached.is_set():
                reached.set()
                resume.wait(10)

        writer.write = write
        return writer


def test_s3rver_killed_and_restarted_mid_upload_keeps_the_committed_checkpoint(tmp_path, monkeypatch) -> None:
    """s3rver keeps its objects on disk: SIGKILLed mid-upload and restarted on the same port and
    directory, it still has the committed step. The interrupted save either rides out the outage on
    its retries (and verifies) or fails with an error naming its object and is not reported complete."""
    n = 1 << 18  # ~1.6 MB of data: 7 parts of 256 KiB
    server = S3rverServer(tmp_path / "s3rver-data")
    server.start()
    for key, value in server.environ.items():
        monkeypatch.setenv(key, value)
    reached, resume = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}
    try:
        url = f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}"
        options = {"endpoint_url": server.endpoint, "part_size": 256 << 10, "concurrency": 2, "attempts": 6,
                   "backoff_s": 0.2, "connect_timeout_s": 1, "read_timeout_s": 5}
        bcp.CheckpointManager(S3Storage(url, **options)).save(1, state_for(1, n))
        # the second save, in the background, pauses after 600 KB (its multipart upload open, two parts
        # sent) until the server is dead; its next parts meet a dead server, then a restarted one
        mgr = bcp.CheckpointManager(_PauseAfterBytes(url, 600 << 10, reached, resume, **options))

        def second_save() -> None:
            try:
                outcome["summary"] = mgr.save(2, state_for(2, n))
            except Exception as exc:  # noqa: BLE001 - judged below
                outcome["error"] = exc

        thread = threading.Thread(target=second_save, daemon=True)
        thread.start()
        assert reached.wait(10), "the second save never got mid-upload"
        assert thread.is_alive()
        server.kill()  # SIGKILL, mid-upload
        resume.set()
        time.sleep(0.3)
        server.start()  # same port, same directory
        thread.join(20)
        assert not thread.is_alive(), "the second save hung after the server came back"

        fresh = bcp.CheckpointManager(S3Storage(url, **options))
        bcp.verify(fresh.checkpoint(1))
        target = blank(n)
        assert fresh.restore(target, step=1) == 1
        want = state_for(1, n)
        assert torch.equal(target["model"]["w"], want["model"]["w"]) and torch.equal(target["optim"]["m"], want["optim"]["m"])
        if "error" in outcome:
            error = outcome["error"]
            assert isinstance(error, bcp.StorageError), repr(error)
            assert f"s3://{BUCKET}/{url.rsplit('/', 1)[1]}/step_00000002/" in str(error)
            assert not fresh.checkpoint(2).exists(METADATA_FILE)
            assert fresh.steps() == [1]
        else:
            assert fresh.steps() == [1, 2]
            assert assert_restores_committed(fresh.storage, n) == 2
    finally:
        resume.set()
        server.kill()


# -- disk full -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (needs root), unmounted at teardown."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_disk_full_during_data_write(small_disk) -> None:
    root = small_disk / "run"
    mgr = bcp.CheckpointManager(root)
    mgr.save(1, state_for(1))  # ~0.45 MiB
    before = _files(root)
    with pytest.raises(bcp.StorageError, match=r"No space left on device") as info:
        mgr.save(2, state_for(2, 1 << 21))  # ~12 MiB
    assert str(root / "step_00000002") in str(info.value)
    assert mgr.steps() == [1] and _files(root) == before  # nothing of the failed save remains
    assert_restores_committed(root)
    # the same without the manager: a second save to the same path fails, the first stays loadable
    plain = small_disk / "plain"
    bcp.save(plain, state_for(1))
    before = _files(plain)
    with pytest.raises(bcp.StorageError, match="No space left"):
        bcp.save(plain, state_for(2, 1 << 21))
    assert _files(plain) == before
    assert bcp.load_full(plain)["extra"] == {"step": 1}


def test_disk_full_at_the_metadata_commit(small_disk) -> None:
    plain = small_disk / "ck"
    bcp.save(plain, {"t": torch.ones(4)})
    before = _files(plain)
    many = {f"t{i:05d}": torch.full((1,), float(i)) for i in range(3000)}  # ~190 KiB data, ~600 KiB metadata
    # leave room for the data files but not for the metadata
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - (320 << 10)))
    with pytest.raises(bcp.StorageError, match=r"cannot commit .*metadata.json: No space left"):
        bcp.save(plain, many)
    assert _files(plain) == before  # the save's data files were removed again
    assert torch.equal(bcp.load_full(plain)["t"], torch.ones(4))


# -- bit flips and truncation ----------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def saved(request, tmp_path) -> Storage:
    if request.param == "local":
        storage: Storage = LocalStorage(tmp_path / "ck")
    else:
        request.getfixturevalue("moto_server")
        storage = S3Storage(f"s3://{BUCKET}/bits-{uuid.uuid4().hex[:8]}", part_size=64 << 10)
    bcp.save(storage, state_for(3), block_size=1 << 12)
    return storage


def _rewrite(storage: Storage, name: str, data: bytes) -> None:
    if isinstance(storage, LocalStorage):
        (storage.root / name).write_bytes(data)  # in place, as a disk would corrupt it
    else:
        storage.commit(name, data)


@pytest.mark.parametrize("seed", range(6))
def test_a_bit_flip_in_data_is_named_by_verify_and_load(saved, seed) -> None:
    meta = json.loads(saved.read(METADATA_FILE))
    rng = random.Random(seed)
    tensor = rng.choice(meta["tensors"])
    chunk = rng.choice(tensor["chunks"])
    at = chunk["byte_offset"] + rng.randrange(chunk["byte_length"])
    raw = bytearray(saved.read(chunk["file"]))
    raw[at] ^= 1 << rng.randrange(8)
    _rewrite(saved, chunk["file"], bytes(raw))
    fqn = ".".join(map(str, tensor["path"]))
    where = saved.describe(chunk["file"])
    with pytest.raises(bcp.ChecksumMismatchError) as info:
        bcp.verify(saved.url if isinstance(saved, S3Storage) else saved)
    assert where in str(info.value) and repr(fqn) in str(info.value)
    assert "1 damaged chunk" in str(info.value)
    with pytest.raises(bcp.ChecksumMismatchError) as info:
        bcp.load(saved, blank())
    assert where in str(info.value) and repr(fqn) in str(info.value)


def test_truncated_data_is_named_by_verify_and_load(saved) -> None:
    meta = json.loads(saved.read(METADATA_FILE))
    last = max(((t, c) for t in meta["tensors"] for c in t["chunks"]), key=lambda tc: tc[1]["byte_offset"])
    tensor, chunk = last
    raw = saved.read(chunk["file"])
    _rewrite(saved, chunk["file"], raw[: chunk["byte_offset"] + chunk["byte_length"] // 2])
    fqn = ".".join(map(str, tensor["path"]))
    for call in (lambda: bcp.verify(saved), lambda: bcp.load(saved, blank())):
        with pytest.raises(bcp.TruncatedDataError) as info:
            call()
        assert saved.describe(chunk["file"]) in str(info.value) and fqn in str(info.value)


def test_damaged_metadata_is_named(saved) -> None:
    raw = saved.read(METADATA_FILE)
    _rewrite(saved, METADATA_FILE, raw[: len(raw) // 2])  # truncated
    for call in (lambda: bcp.verify(saved), lambda: bcp.load(saved, blank())):
        with pytest.raises(bcp.MetadataError, match=rf"{saved.describe(METADATA_FILE)}: metadata is not valid JSON"):
            call()
    # a flipped bit inside a recorded digest: the metadata's own checksum no longer matches
    meta = json.loads(raw)
    digest = meta["tensors"][0]["chunks"][0]["hashes"][0]
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    _rewrite(saved, METADATA_FILE, raw.replace(digest.encode(), flipped.encode(), 1))
    for call in (lambda: bcp.verify(saved), lambda: bcp.load(saved, blank())):
        with pytest.raises(bcp.ChecksumMismatchError, match=rf"{saved.describe(METADATA_FILE)}: metadata checksum mismatch"):
            call()
    # a flipped bit in the structure
    _rewrite(saved, METADATA_FILE, raw.replace(b'"format":"bytecheckpoint"', b'"format":"bytecheckpoinu"'))
    with pytest.raises(bcp.MetadataError, match=saved.describe(METADATA_FILE)):
        bcp.load(saved, blank())
