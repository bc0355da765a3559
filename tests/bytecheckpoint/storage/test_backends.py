"""One test suite that every storage backend must pass: memory, local disk, fsspec (memory://,
file:// and s3fs) and S3 against real server processes on loopback: moto (in memory) and s3rver
(on disk)."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import pytest
import torch

import bytecheckpoint as bcp
from bytecheckpoint.storage import LocalStorage, MemoryStorage, Storage, resolve_storage
from bytecheckpoint.storage.fsspec import FsspecStorage
from tests.bytecheckpoint.storage.s3server import BUCKET, TEST_PART_SIZE

BACKENDS = ["memory", "local", "fsspec-memory", "fsspec-local", "fsspec-s3", "s3", "s3rver"]
LARGE = 3 * (1 << 20) + 123  # several S3 parts, not a multiple of anything
# what s3rver 3.7.1 itself gets wrong (seen in its lib/): xfails on s3rver alone, strict where it
# always fails; the in-place PUT is a race that this test loses in about half of the runs
S3RVER_GAPS = {
    "test_list_is_recursive_sorted_and_prefix_scoped": pytest.mark.xfail(strict=True, reason=(
        "s3rver drops a CommonPrefix whose objects all lie more than one level down (its directory walk "
        "prunes them before it finds an object)")),
    "test_create_exclusive_has_one_winner": pytest.mark.xfail(strict=True, reason=(
        "s3rver ignores If-None-Match on PUT: a conditional create overwrites")),
    "test_commit_is_all_or_nothing_for_concurrent_readers": pytest.mark.xfail(strict=False, reason=(
        "s3rver writes a PUT's body in place (truncate, then write): a concurrent GET may see a partial "
        "object (a race: not strict)")),
}


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path, monkeypatch) -> Iterator[Storage]:
    kind = request.param
    unique = uuid.uuid4().hex[:12]
    if kind == "memory":
        st = MemoryStorage(f"mem://bcp-{unique}")  # the process-wide store, reachable by URL
        yield st
        st.delete_prefix("")
    elif kind == "local":
        yield LocalStorage(tmp_path / "ck")
    elif kind == "fsspec-memory":
        st = FsspecStorage(f"memory://bcp-{unique}")
        yield st
        st.fs.rm(st.root, recursive=True) if st.fs.exists(st.root) else None
    elif kind == "fsspec-local":
        yield FsspecStorage(f"file://{tmp_path / 'ck'}")
    elif kind == "s3rver":  # S3Storage against s3rver; URL-only calls find it through the environment
        if request.function.__name__ in S3RVER_GAPS:
            request.applymarker(S3RVER_GAPS[request.function.__name__])
        server = request.getfixturevalue("s3rver_server")
        for key, value in server.environ.items():
            monkeypatch.setenv(key, value)
        st = resolve_storage(f"s3://{BUCKET}/{unique}", part_size=TEST_PART_SIZE, concurrency=4)
        yield st
        st.delete_prefix("")
    else:
        request.getfixturevalue("moto_server")
        if kind == "s3":
            st = resolve_storage(f"s3://{BUCKET}/{unique}", part_size=TEST_PART_SIZE, concurrency=4)
        else:
            st = FsspecStorage(f"s3://{BUCKET}/{unique}", skip_instance_cache=True)
        yield st
        st.delete_prefix("")


def _payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _write(st: Storage, name: str, data: bytes, piece: int = 100_003) -> None:
    w = st.open_writer(name)
    for i in range(0, len(data), piece):
        w.write(memoryview(data)[i : i + piece])
    w.close()


def test_write_then_read_whole_and_ranges(storage: Storage) -> None:
    data = _payload(1000_000)
    _write(storage, "data/x/rank00000.bin", data, piece=4097)
    assert storage.exists("data/x/rank00000.bin")
    assert storage.size("data/x/rank00000.bin") == len(data)
    assert storage.read("data/x/rank00000.bin") == data
    for start, length in [(0, 10), (4096, 70_000), (999_990, 10), (123_457, 500_001)]:
        buf = bytearray(length)
        assert storage.read_into("data/x/rank00000.bin", start, memoryview(buf)) == length
        assert bytes(buf) == data[start : start + length]


def test_ranged_read_at_end_returns_fewer_bytes(storage: Storage) -> None:
    data = _payload(5000, seed=1)
    _write(storage, "f.bin", data)
    buf = bytearray(1000)
    assert storage.read_into("f.bin", 4500, memoryview(buf)) == 500
    assert bytes(buf[:500]) == data[4500:]
    assert storage.read_into("f.bin", 5000, memoryview(buf)) == 0
    assert storage.read_into("f.bin", 9000, memoryview(buf)) == 0
    assert storage.read_into("f.bin", 0, memoryview(bytearray(0))) == 0


def test_large_object_in_many_parts(storage: Storage) -> None:
    data = _payload(LARGE, seed=2)
    _write(storage, "big.bin", data, piece=1 << 20)
    assert storage.size("big.bin") == LARGE
    buf = bytearray(LARGE)
    assert storage.read_into("big.bin", 0, memoryview(buf)) == LARGE
    assert bytes(buf) == data
    tail = bytearray(2 * TEST_PART_SIZE + 7)
    got = storage.read_into("big.bin", LARGE - TEST_PART_SIZE, memoryview(tail))
    assert got == TEST_PART_SIZE and bytes(tail[:got]) == data[-TEST_PART_SIZE:]


def test_empty_object(storage: Storage) -> None:
    _write(storage, "empty.bin", b"")
    assert storage.exists("empty.bin") and storage.size("empty.bin") == 0 and storage.read("empty.bin") == b""


def test_missing_objects_raise_file_not_found(storage: Storage) -> None:
    assert not storage.exists("nope.bin")
    with pytest.raises(FileNotFoundError):
        storage.read("nope.bin")
    with pytest.raises(FileNotFoundError):
        storage.size("nope.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_into("nope.bin", 0, memoryview(bytearray(10)))


def test_aborted_writer_publishes_nothing(storage: Storage) -> None:
    w = storage.open_writer("data/s/rank00000.bin")
    w.write(memoryview(_payload(LARGE, seed=3)))  # several parts already uploaded on S3
    w.abort()
    assert not storage.exists("data/s/rank00000.bin")
    assert storage.list() == []


def test_list_is_recursive_sorted_and_prefix_scoped(storage: Storage) -> None:
    names = ["metadata.json", "data/b/rank00001.bin", "data/a/rank00000.bin", "data/b/rank00000.bin", "step_2/x"]
    for i, name in enumerate(names):
        _write(storage, name, bytes([i]) * (i + 1))
    assert storage.list() == sorted(names)
    assert storage.list("data") == ["data/a/rank00000.bin", "data/b/rank00000.bin", "data/b/rank00001.bin"]
    assert storage.list("data/b") == ["data/b/rank00000.bin", "data/b/rank00001.bin"]
    assert storage.list("dat") == []  # a prefix is a path component, not a string prefix
    assert storage.list("missing") == []
    assert storage.list_dirs() == ["data", "step_2"]
    assert storage.list_dirs("data") == ["a", "b"]


def test_delete_is_idempotent_and_delete_prefix_removes_a_subtree(storage: Storage) -> None:
    for name in ["a/1", "a/2", "a/b/3", "ab/4", "c"]:
        _write(storage, name, b"x")
    storage.delete("c")
    storage.delete("c")
    assert not storage.exists("c")
    assert storage.delete_prefix("a") == 3
    assert storage.list() == ["ab/4"]


def test_commit_publishes_and_replaces(storage: Storage) -> None:
    storage.commit("metadata.json", b'{"v": 1}')
    assert storage.read("metadata.json") == b'{"v": 1}'
    storage.commit("metadata.json", b'{"v": 2}')
    assert storage.read("metadata.json") == b'{"v": 2}'
    assert storage.list() == ["metadata.json"]  # no temporary files left behind


def test_commit_is_all_or_nothing_for_concurrent_readers(storage: Storage) -> None:
    versions = [bytes([v]) * (300_000 + v) for v in range(4)]
    storage.commit("metadata.json", versions[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(storage.read("metadata.json"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            storage.commit("metadata.json", versions[i % 4])
    finally:
        stop.set()
        thread.join()
    assert seen and all(s in versions for s in seen)


def test_create_exclusive_has_one_winner(storage: Storage) -> None:
    assert storage.create_exclusive("locks/step_1", b"first")
    assert not storage.create_exclusive("locks/step_1", b"second")
    assert storage.read("locks/step_1") == b"first"
    if not storage.exclusive_create:
        return  # the generic check-then-write version makes no promise under races
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def contender(i: int) -> None:
        barrier.wait()
        if storage.create_exclusive("locks/step_2", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and storage.read("locks/step_2") == str(wins[0]).encode()


def test_child_storage_names_are_relative(storage: Storage) -> None:
    child = storage.child("step_00000007")
    _write(child, "data/x/rank00000.bin", b"abc")
    child.commit("metadata.json", b"{}")
    assert child.list() == ["data/x/rank00000.bin", "metadata.json"]
    assert storage.list() == ["step_00000007/data/x/rank00000.bin", "step_00000007/metadata.json"]
    assert storage.list_dirs() == ["step_00000007"]
    assert child.describe("metadata.json").endswith("step_00000007/metadata.json")


def test_checkpoint_round_trip(storage: Storage) -> None:
    state = {
        "model": {"w": torch.randn(300, 257), "b": torch.arange(1000, dtype=torch.int64)},
        "big": torch.randn(LARGE // 4),
        "extra": {"step": 7, "name": "run"},
    }
    bcp.save(storage, state, block_size=1 << 16)
    assert storage.exists("metadata.json")
    report = bcp.verify(storage)
    assert report.tensors == 3
    target = {"model": {"w": torch.zeros(300, 257), "b": torch.zeros(1000, dtype=torch.int64)},
              "big": torch.zeros(LARGE // 4), "extra": None}
    bcp.load(storage, target)
    assert torch.equal(target["model"]["w"], state["model"]["w"])
    assert torch.equal(target["big"], state["big"])
    assert target["extra"] == {"step": 7, "name": "run"}
    full = bcp.load_full(storage)
    assert torch.equal(full["model"]["b"], state["model"]["b"])
    # saving again to the same location replaces the checkpoint and removes the old data files
    old = set(storage.list("data"))
    state["model"]["w"] += 1
    bcp.save(storage, state)
    assert not old & set(storage.list("data"))
    assert torch.equal(bcp.load_full(storage)["model"]["w"], state["model"]["w"])


def test_describe_names_the_location(storage: Storage) -> None:
    where = storage.describe("data/x/rank00000.bin")
    assert where.endswith("/data/x/rank00000.bin")
    assert storage.url.rstrip("/") in where


def test_url_paths_resolve_to_the_same_objects(storage: Storage) -> None:
    bcp.save(storage, {"t": torch.arange(10.0)})
    assert torch.equal(bcp.load_full(storage.url)["t"], torch.arange(10.0))


def test_private_memory_stores_are_isolated() -> None:
    a, b = MemoryStorage(), MemoryStorage()
    a.commit("metadata.json", b"{}")
    assert a.exists("metadata.json") and not b.exists("metadata.json")
    assert not MemoryStorage("mem://").exists("metadata.json")
