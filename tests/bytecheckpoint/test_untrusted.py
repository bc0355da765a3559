"""Checkpoints from untrusted sources: one regression test per reported finding.

2. chunks that do not tile a tensor; 3. data files that are links out of the checkpoint, FIFOs,
and checksum errors that print the hash of what was read; 4. malformed metadata that raised raw
Python exceptions or allocated what it asked for; 5. tensors that cannot be saved as they are.
Every failure must be a CheckpointError subclass that names where the problem is.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash

import bytecheckpoint as bcp
from bytecheckpoint.boxes import ShardBox, check_tiling, flat_range_to_boxes
from bytecheckpoint.metadata import METADATA_FILE, CheckpointMetadata, metadata_checksum
from bytecheckpoint.storage.fsspec import FsspecStorage
from tests.bytecheckpoint.cli_runner import CliResult, invoke

W = torch.arange(16, dtype=torch.float32).reshape(4, 4)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ck"
    bcp.save(path, {"model": {"w": W.clone(), "b": torch.ones(8)}, "step": 3}, block_size=64)
    return path


def rewrite(path: Path, mutate, checksum: bool = True) -> None:
    """Apply ``mutate`` to the metadata document and store it with a valid checksum (so the
    mutation reaches the parser, as a crafted file would)."""
    doc = json.loads((path / METADATA_FILE).read_text())
    doc.pop("metadata_checksum")
    mutate(doc)
    if checksum:
        doc["metadata_checksum"] = metadata_checksum(doc)
    (path / METADATA_FILE).write_text(json.dumps(doc))


def tensor(doc: dict, name: str) -> dict:
    return next(t for t in doc["tensors"] if t["path"][-1] == name)


def data_file(path: Path) -> Path:
    doc = json.loads((path / METADATA_FILE).read_text())
    return path / doc["tensors"][0]["chunks"][0]["file"]


def target() -> dict:
    return {"model": {"w": torch.full((4, 4), -1.0), "b": torch.zeros(8)}, "step": None}


def cli(*args: str) -> CliResult:
    return invoke(list(args))


def assert_cli_error(path: Path, kind: type[Exception], commands: tuple[str, ...] = ("verify", "inspect")) -> None:
    """Each command fails with one ``error: <Type>: <message>`` line (Type a ``kind``), no traceback:
    ``verify`` with exit 1 where it found damaged data, else (unreadable metadata) exit 2."""
    for command in commands:
        result = cli(command, str(path))
        damaged_data = command == "verify" and issubclass(kind, bcp.CorruptCheckpointError) and \
            (path / METADATA_FILE).is_file() and not (path / METADATA_FILE).is_symlink()
        assert result.exit_code == (1 if damaged_data else 2), (command, result)
        (first,) = result.stderr.splitlines()
        assert first.startswith("error: "), result.stderr
        assert issubclass(getattr(bcp, first.split(":")[1].strip()), kind), first
        assert "Traceback" not in result.stdout + result.stderr and "[red]" not in result.stderr


def assert_refused(path: Path, kind: type[Exception], match: str | None = None, data: bool = False) -> None:
    """load, load_full, verify and the CLI (verify, and inspect unless the problem is in the ``data``) raise ``kind``."""
    for call in (lambda: bcp.load(path, target()), lambda: bcp.load_full(path), lambda: bcp.verify(path)):
        with pytest.raises(kind, match=match):
            call()
    assert_cli_error(path, kind, ("verify",) if data else ("verify", "inspect"))


# -- 2. chunks that do not tile ----------------------------------------------------------------------


def _two_chunks(path: Path, rows: list[tuple[int, int]]) -> None:
    """Replace w's one chunk by row chunks, each with the valid hash of its own bytes."""
    raw = data_file(path).read_bytes()

    def mutate(doc: dict) -> None:
        entry = tensor(doc, "w")
        whole = entry["chunks"][0]
        entry["chunks"] = []
        for first, count in rows:
            start = whole["byte_offset"] + first * 16
            entry["chunks"].append(dict(
                whole, offsets=[first, 0], lengths=[count, 4], byte_offset=start, byte_length=count * 16,
                hashes=[xxhash.xxh3_64_hexdigest(raw[start : start + count * 16])],
            ))

    rewrite(path, mutate)


def test_chunks_covering_rows_twice_and_others_never_are_refused(ckpt: Path) -> None:
    _two_chunks(ckpt, [(0, 2), (0, 2)])  # rows 0-1 twice, rows 2-3 nowhere
    before = target()
    with pytest.raises(bcp.MetadataError, match=r"tensors\[\d\] \('model.w'\): the chunks do not tile.*overlap"):
        bcp.load(ckpt, before)
    assert torch.equal(before["model"]["w"], torch.full((4, 4), -1.0))
    assert_refused(ckpt, bcp.MetadataError, "do not tile")


def test_chunks_leaving_a_gap_are_refused(ckpt: Path) -> None:
    _two_chunks(ckpt, [(0, 2), (3, 1)])
    assert_refused(ckpt, bcp.MetadataError, r"'model.w'.*do not tile.*cover 12 of 16")


def test_tiling_check_is_exact(tmp_path: Path) -> None:
    """Against a brute-force element count, for few boxes and for many (the parity path)."""
    rng = random.Random(7)
    for trial in range(1500):
        shape = tuple(rng.randint(1, 5) for _ in range(rng.randint(1, 4)))
        total = math.prod(shape)
        cuts = sorted({0, total, *(rng.randint(0, total) for _ in range(rng.choice([3, 40])))})
        boxes = [box for lo, hi in itertools.pairwise(cuts) for _, box in flat_range_to_boxes(shape, lo, hi - lo)]
        if trial % 2 and boxes:
            i, d = rng.randrange(len(boxes)), rng.randrange(len(shape))
            offsets = list(boxes[i].offsets)
            offsets[d] = rng.randint(0, shape[d] - boxes[i].lengths[d])
            boxes[i] = ShardBox(tuple(offsets), boxes[i].lengths)
        count = np.zeros(shape, dtype=np.int64)
        for b in boxes:
            count[tuple(slice(o, o + n) for o, n in zip(b.offsets, b.lengths))] += 1
        assert (check_tiling(shape, boxes) is None) == bool((count == 1).all()), (shape, boxes)


def test_tiling_check_is_fast_for_100k_chunks() -> None:
    layouts = {
        (100_000,): [ShardBox((i,), (1,)) for i in range(100_000)],  # sorted along one dimension
        (316, 316): [ShardBox((i, j), (1, 1)) for i in range(316) for j in range(316)],  # the parity check
        (20, 20, 20): [ShardBox((i, j, k), (1, 1, 1)) for i in range(20) for j in range(20) for k in range(20)],
    }
    for shape, boxes in layouts.items():
        start = time.process_time()
        assert check_tiling(shape, boxes) is None
        moved = [*boxes[:-1], ShardBox(boxes[0].offsets, boxes[-1].lengths)]  # the last box on top of the first
        assert "overlap" in check_tiling(shape, moved)
        assert time.process_time() - start < 10, shape  # about a second on a slow machine; quadratic: hours


# -- 3. links, FIFOs, and hashes of what was read ----------------------------------------------------


def test_data_file_linked_outside_is_refused_and_its_hash_never_printed(ckpt: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret " * 20)
    data = data_file(ckpt)
    data.unlink()
    data.symlink_to(secret)
    leaked = {xxhash.xxh3_64_hexdigest(secret.read_bytes()[a:b]) for a in range(0, 200, 4) for b in range(a + 1, 221)}
    for call in (lambda: bcp.load(ckpt, target()), lambda: bcp.load_full(ckpt), lambda: bcp.verify(ckpt)):
        with pytest.raises(bcp.UnsafeFileError, match="rank00000.bin.*symbolic link") as info:
            call()
        assert not any(h in str(info.value) for h in leaked)
    assert_cli_error(ckpt, bcp.UnsafeFileError, ("verify",))
    with pytest.raises(bcp.UnsafeFileError):
        bcp.load_full(FsspecStorage(f"file://{ckpt}"))


def test_data_directory_linked_outside_is_refused(ckpt: Path, tmp_path: Path) -> None:
    save_dir = data_file(ckpt).parent
    outside = tmp_path / "elsewhere"
    save_dir.rename(outside)  # the same, valid bytes, now reached through a link
    save_dir.symlink_to(outside, target_is_directory=True)
    assert_refused(ckpt, bcp.UnsafeFileError, "symbolic link", data=True)


def test_checksum_errors_do_not_print_the_hash_of_the_bytes_read(ckpt: Path) -> None:
    data = data_file(ckpt)
    raw = bytearray(data.read_bytes())
    w = tensor(json.loads((ckpt / METADATA_FILE).read_text()), "w")["chunks"][0]
    raw[w["byte_offset"] + 3] ^= 0xFF
    data.write_bytes(bytes(raw))
    block = bytes(raw[w["byte_offset"] : w["byte_offset"] + 64])
    for call in (lambda: bcp.load(ckpt, target()), lambda: bcp.load_full(ckpt), lambda: bcp.verify(ckpt)):
        with pytest.raises(bcp.ChecksumMismatchError, match=r"rank00000.bin.*'model.w'.*bytes \d+-\d+") as info:
            call()
        assert xxhash.xxh3_64_hexdigest(block) not in str(info.value)


@pytest.mark.timeout(60)
def test_fifo_as_data_file_or_metadata_does_not_hang(ckpt: Path) -> None:
    data = data_file(ckpt)
    data.unlink()
    os.mkfifo(data)
    assert_refused(ckpt, bcp.UnsafeFileError, "FIFO", data=True)
    (ckpt / METADATA_FILE).unlink()
    os.mkfifo(ckpt / METADATA_FILE)
    assert_refused(ckpt, bcp.UnsafeFileError, "metadata.json: is a FIFO")


# -- 4. malformed metadata ---------------------------------------------------------------------------


def test_directories_where_files_should_be(ckpt: Path) -> None:
    data = data_file(ckpt)
    data.unlink()
    data.mkdir()
    assert_refused(ckpt, bcp.UnsafeFileError, "is a directory", data=True)
    (ckpt / METADATA_FILE).unlink()
    (ckpt / METADATA_FILE).mkdir()
    assert_refused(ckpt, bcp.UnsafeFileError, "metadata.json: is a directory")


def _chunk(doc: dict) -> dict:
    return tensor(doc, "w")["chunks"][0]


BAD_FIELDS = [
    ("nul in file name", lambda d: _chunk(d).update(file="data/x\x00y.bin"), r"file .* holds a NUL"),
    ("backslash in file name", lambda d: _chunk(d).update(file="data\\..\\x.bin"), "backslash"),
    ("empty file name part", lambda d: _chunk(d).update(file="data//x.bin"), "relative path"),
    ("absolute file name", lambda d: _chunk(d).update(file="/etc/passwd"), "relative path"),
    ("offset beyond int64", lambda d: _chunk(d).update(byte_offset=2**63), r"byte_offset: expected an integer"),
    ("offset 2**64", lambda d: _chunk(d).update(byte_offset=2**64), r"byte_offset"),
    ("offset 2**70", lambda d: _chunk(d).update(byte_offset=2**70), r"byte_offset"),
    ("offset+length beyond int64", lambda d: _chunk(d).update(byte_offset=2**63 - 10), "beyond 2\\*\\*63-1"),
    ("huge shape", lambda d: tensor(d, "w").update(shape=[2**40, 2**40]), "too large"),
    ("too many dimensions", lambda d: tensor(d, "w").update(shape=[1] * 65), "at most 64"),
    ("shape without chunks", lambda d: tensor(d, "w").update(shape=[2**20, 2**20], chunks=[]), "cover 0 of"),
    ("block size 1", lambda d: d["checksum"].update(block_size=1), "block_size: expected a multiple of 64"),
    ("block size 2**50", lambda d: d["checksum"].update(block_size=2**50), "block_size"),
    ("value nested 900 deep", lambda d: d["values"][0].update(value=json.loads("[" * 900 + "]" * 900)), "nest"),
    ("value at a tensor's parent", lambda d: d["values"].append({"path": ["model"], "value": 1}),
     "tensor 'model.w' lies inside value 'model'"),
    ("path too long", lambda d: tensor(d, "w").update(path=["k"] * 65), "1 to 64 keys"),
    ("version true", lambda d: d.update(version=True), "version True is not supported"),
]


@pytest.mark.parametrize(("mutate", "match"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS])
def test_malformed_fields_are_metadata_errors(ckpt: Path, mutate, match: str) -> None:
    rewrite(ckpt, mutate)
    for call in (lambda: bcp.load(ckpt, target()), lambda: bcp.load_full(ckpt), lambda: bcp.verify(ckpt)):
        with pytest.raises(bcp.MetadataError, match=match):
            call()
    assert_cli_error(ckpt, bcp.MetadataError)


def test_offset_inside_int64_but_past_the_end_is_truncation(ckpt: Path) -> None:
    rewrite(ckpt, lambda d: _chunk(d).update(byte_offset=2**62))
    assert_refused(ckpt, bcp.TruncatedDataError, "rank00000.bin", data=True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"format":"bytecheckpoint","version":1,"x":' + "[" * 100_000 + "]" * 100_000 + "}", "nests .* 100001 deep"),
        ('{"format":"bytecheckpoint","version":1,"x":' + "9" * 5000 + "}", "not valid JSON.*digits"),
        ('{"format":"bytecheckpoint","version":1,"x":NaN}', "not valid JSON"),
        ('{"format":"bytecheckpoint","version":1,"x":1e999,"metadata_checksum":"0123456789abcdef"}', "not plain JSON"),
        ('{"format":"bytecheckpoint","version":1,"metadata_checksum":"' + "9" * 5000 + '"}', "16 lowercase hex"),
    ],
    ids=["deep", "5000-digit int", "NaN", "inf", "long checksum"],
)
def test_malformed_json_is_a_metadata_error(ckpt: Path, text: str, match: str) -> None:
    (ckpt / METADATA_FILE).write_text(text)
    assert_refused(ckpt, bcp.MetadataError, match)


def test_metadata_without_checksum_needs_an_explicit_opt_in(ckpt: Path, monkeypatch) -> None:
    rewrite(ckpt, lambda d: None, checksum=False)
    assert_refused(ckpt, bcp.MetadataError, "'metadata_checksum' is missing.*BYTECHECKPOINT_ALLOW_UNCHECKSUMMED")
    monkeypatch.setenv("BYTECHECKPOINT_ALLOW_UNCHECKSUMMED_METADATA", "1")
    assert torch.equal(bcp.load_full(ckpt)["model"]["w"], W)


def _torch_empty_spy(monkeypatch) -> list[int]:
    """Record the bytes of every torch.empty while a test runs."""
    sizes: list[int] = []
    real = torch.empty

    def spy(*shape, dtype=None, **kw):
        dims = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        sizes.append(math.prod(dims) * torch.tensor([], dtype=dtype).element_size())
        return real(*shape, dtype=dtype, **kw)

    monkeypatch.setattr(torch, "empty", spy)
    return sizes


def test_verify_allocates_at_most_the_largest_chunk(ckpt: Path, monkeypatch) -> None:
    rewrite(ckpt, lambda d: (d["checksum"].update(block_size=2**31),
                             [c.update(hashes=c["hashes"][:1]) for t in d["tensors"] for c in t["chunks"]]))
    sizes = _torch_empty_spy(monkeypatch)
    assert bcp.verify(ckpt).chunks == 2  # each chunk is one block of at most 64 bytes: same hashes
    assert sizes and max(sizes) <= 64


def test_load_full_checks_the_data_before_allocating(ckpt: Path, monkeypatch) -> None:
    # 4 GiB claimed, with well-formed metadata, and a data file of a few hundred bytes
    rewrite(ckpt, lambda d: (d["checksum"].update(block_size=2**31), tensor(d, "w").update(
        shape=[2**15, 2**15], chunks=[dict(_chunk(d), lengths=[2**15, 2**15], byte_length=2**32, hashes=["0"] * 2)])))
    sizes = _torch_empty_spy(monkeypatch)
    with pytest.raises(bcp.TruncatedDataError, match=r"\['model.w'\] need bytes 0-"):
        bcp.load_full(ckpt)
    assert all(size < 2**20 for size in sizes)


def test_load_full_refuses_chunks_that_share_bytes(ckpt: Path, monkeypatch) -> None:
    """Two tensors over the same bytes would let a small file fill many large tensors."""
    rewrite(ckpt, lambda d: tensor(d, "b")["chunks"][0].update(
        file=_chunk(d)["file"], byte_offset=_chunk(d)["byte_offset"],
        hashes=[xxhash.xxh3_64_hexdigest(data_file(ckpt).read_bytes()[_chunk(d)["byte_offset"]:][:32])]))
    sizes = _torch_empty_spy(monkeypatch)
    with pytest.raises(bcp.MetadataError, match="'model.[wb]' and 'model.[wb]' point at the same bytes"):
        bcp.load_full(ckpt)
    assert not sizes


def test_state_nested_400_deep_is_refused_at_save(tmp_path: Path) -> None:
    deep: dict = {"w": torch.ones(1)}
    for i in range(400):
        deep = {f"k{i}": deep}
    with pytest.raises(bcp.UnsupportedValueError, match="k399.*nested more than"):
        bcp.save(tmp_path / "a", deep)
    chain: dict = {"w": torch.ones(1)}
    for i in range(64):
        chain = {f"k{i}": chain}
    with pytest.raises(bcp.UnsupportedValueError, match="holds tensors more than 64 dicts deep"):
        bcp.save(tmp_path / "b", chain)


def test_plain_values_nested_too_deep_or_cyclic_are_refused_at_save(tmp_path: Path) -> None:
    value: list = []
    for _ in range(900):
        value = [value]
    cyclic: list = [1]
    cyclic.append(cyclic)
    for bad in (value, cyclic, tuple_chain(40)):  # a tuple is stored as two levels
        with pytest.raises(bcp.UnsupportedValueError, match=r"extra.*nested"):
            bcp.save(tmp_path / "ck", {"w": torch.ones(1), "extra": {"v": bad}})
    ok = [[[1]]]
    bcp.save(tmp_path / "ok", {"w": torch.ones(1), "extra": {"v": ok}})
    assert bcp.load_full(tmp_path / "ok")["extra"]["v"] == ok


def tuple_chain(depth: int) -> tuple:
    value: tuple = ()
    for _ in range(depth):
        value = (value,)
    return value


def test_deepest_savable_value_loads(tmp_path: Path) -> None:
    value: list = [1]
    for _ in range(63):
        value = [value]
    bcp.save(tmp_path / "ck", {"w": torch.ones(1), "v": value})
    assert bcp.load_full(tmp_path / "ck")["v"] == value


def test_inspect_prints_names_as_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    bcp.save(path, {"[/]": torch.ones(1), "[bold]x\x1b[31m": torch.ones(1)})
    result = cli("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "[/]" in result.stdout and "[bold]x" in result.stdout and "\x1b" not in result.stdout


# -- 5. tensors that are views or have no plain data ------------------------------------------------


def test_conjugate_and_negative_views_are_saved_by_value(tmp_path: Path) -> None:
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    y = torch.tensor([1.0, -2.0])
    bcp.save(tmp_path / "ck", {"z": z.conj(), "y": torch._neg_view(y), "flat": bcp.FlatShard(z.conj(), (2,), 0)})
    full = bcp.load_full(tmp_path / "ck")
    assert torch.equal(full["z"], z.conj().resolve_conj()) and torch.equal(full["flat"], z.conj().resolve_conj())
    assert torch.equal(full["y"], -y)
    into = torch.zeros(2, dtype=torch.complex64)
    view = into.conj()  # loading into a conjugate view fills the tensor it views
    bcp.load(tmp_path / "ck", {"z": view}, strict=False)
    assert torch.equal(view.resolve_conj(), z.conj().resolve_conj()) and torch.equal(into, z)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.eye(3).to_sparse(), "a torch.sparse_coo tensor"),
        (lambda: torch.eye(3).to_sparse_csr(), "a torch.sparse_csr tensor"),
        (lambda: torch.empty(3, device="meta"), "a tensor on the meta device"),
        (lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8), "a quantized tensor"),
    ],
    ids=["sparse", "csr", "meta", "quantized"],
)
def test_tensors_without_plain_data_are_refused_naming_the_key(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(bcp.UnsupportedValueError, match=rf"model\.odd: {match}"):
        bcp.save(tmp_path / "ck", {"model": {"odd": make(), "w": torch.ones(2)}})
    assert not (tmp_path / "ck" / METADATA_FILE).exists()


def test_metadata_parse_stays_fast_with_many_chunks() -> None:
    """20k chunks tiling one tensor parse in about a second (quadratic checks would take minutes)."""
    n = 20_000
    doc = {
        "format": "bytecheckpoint", "version": 1,
        "writer": {"library": "bytecheckpoint", "library_version": "0", "framework": None, "world_size": 1},
        "checksum": {"algorithm": "xxh3_64", "block_size": 64},
        "tensors": [{"path": ["w"], "dtype": "float32", "shape": [2, n], "chunks": [
            {"offsets": [0, i], "lengths": [2, 1], "file": "data/x/rank00000.bin", "byte_offset": 64 * i,
             "byte_length": 8, "hashes": ["0" * 16]} for i in range(n)]}],
        "values": [],
    }
    doc["metadata_checksum"] = metadata_checksum(doc)
    start = time.process_time()
    meta = CheckpointMetadata.from_json(json.dumps(doc).encode(), "m")
    assert len(meta.tensors[0].chunks) == n and time.process_time() - start < 20
