"""A structure-aware fuzzer of the checkpoint readers: ``load``, ``load_full``, ``verify`` and the CLI.

Each case copies a valid seed checkpoint (several dtypes, 0-d and empty tensors, chunks in rows,
columns, grids and flat pieces over two files, plain values), then mutates its metadata (any field:
types, numbers at the edges, nesting, deleted keys, duplicated, dropped or moved chunks, swapped
files, odd names; the metadata checksum recomputed so the mutation gets past it, mostly) and/or its
files (truncated, extended, flipped, deleted, replaced by a directory, a FIFO, or a link out of the
checkpoint). Then every reader runs, and the invariants are checked:

- a call returns correct data (equal to what an independent numpy reader makes of the same files)
  or raises a ``CheckpointError``; the CLI exits 0 or 1 with one ``error:`` line, no traceback;
- each call ends within ``CALL_SECONDS`` (SIGALRM); memory: peak RSS grows less than
  ``RSS_GROWTH`` per case (and the standalone run sets RLIMIT_AS);
- nothing outside the checkpoint is opened (inotify on the outside directory, which holds a canary
  and valid copies of the data files) or appears in results or messages (the canary's bytes; no
  16-hex-digit hash that the metadata does not hold).

A failing case is saved as JSON (``--save DIR``); ``replay`` runs one again. Cases found so far
are kept in ``tests/bytecheckpoint/fuzz_corpus/`` and replayed by the test suite. Long run::

    python -m tests.bytecheckpoint.fuzzing --seconds 600 --seed 1 --save /tmp/crashers
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import ctypes
import itertools
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import stat
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

import bytecheckpoint as bcp
from bytecheckpoint.boxes import flat_range_to_boxes

CALL_SECONDS = 5.0
RSS_GROWTH = 1 << 30
CANARY = b"CANARY-" + b"7f3c9a1e5d" * 3  # outside the checkpoint; must never be read
METADATA = "metadata.json"
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex64": 8, "complex128": 16,
            "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
            "bool": 1, "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1}
HEX16 = re.compile(r"(?<![0-9a-f])(?=[0-9]*[a-f])[0-9a-f]{16}(?![0-9a-f])")  # a hash, not a 16-digit number


def canonical_checksum(doc: dict) -> str:
    """The metadata checksum as docs/FORMAT.md defines it (independent of the library)."""
    body = {k: v for k, v in doc.items() if k != "metadata_checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return xxhash.xxh3_64_hexdigest(text.encode())


# -- seeds ------------------------------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    root: Path
    doc: dict
    tensors: dict[tuple, torch.Tensor]
    blobs: dict[str, bytes] = field(default_factory=dict)  # data file -> bytes

    def __post_init__(self) -> None:
        for t in self.doc["tensors"]:
            for c in t["chunks"]:
                self.blobs.setdefault(c["file"], (self.root / c["file"]).read_bytes())


def _sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if not dtype.is_floating_point and not dtype.is_complex:
        return torch.randint(-100, 100, shape, generator=g).to(dtype)
    return torch.randn(shape, generator=g).to(dtype)


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_layout(root: Path, tensors: dict[tuple, tuple[torch.Tensor, list[tuple]]], values: dict[tuple, Any],
                 block_size: int = 64) -> dict:
    """A valid checkpoint with the given chunk boxes (offsets, lengths), written without the library's
    writer: chunks alternate between two data files, 64-byte aligned, with gaps."""
    files: dict[str, bytearray] = {"data/s-0001/rank00000.bin": bytearray(), "data/s-0001/rank00001.bin": bytearray()}
    names = sorted(files)
    entries = []
    count = 0
    for path, (t, boxes) in tensors.items():
        chunks = []
        for offsets, lengths in boxes:
            name = names[count % 2]
            count += 1
            buf = files[name]
            buf += bytes(-len(buf) % 64 + 64 * (count % 3))
            data = _raw(t[tuple(slice(o, o + n) for o, n in zip(offsets, lengths))])
            chunks.append({"offsets": list(offsets), "lengths": list(lengths), "file": name, "byte_offset": len(buf),
                           "byte_length": len(data), "hashes": [xxhash.xxh3_64_hexdigest(data[i:i + block_size])
                                                                for i in range(0, len(data), block_size)]})
            buf += data
        entries.append({"path": list(path), "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "chunks": chunks})
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(bytes(data))
    doc = {"format": "bytecheckpoint", "version": 1,
           "writer": {"library": "fuzz", "library_version": "0", "framework": None, "world_size": 2,
                      "layout": {"bytes_per_rank": [len(files[n]) for n in names]}},
           "checksum": {"algorithm": "xxh3_64", "block_size": block_size}, "tensors": entries,
           "values": [{"path": list(p), "value": v} for p, v in values.items()]}
    doc["metadata_checksum"] = canonical_checksum(doc)
    (root / METADATA).write_text(json.dumps(doc))
    return doc


def _fixed_save_id(root: Path) -> dict:
    """Rename the save's data folder to ``data/saved`` (stable names, so saved cases replay)."""
    doc = json.loads((root / METADATA).read_text())
    folders = {c["file"].rsplit("/", 1)[0] for t in doc["tensors"] for c in t["chunks"]}
    (old,) = folders
    (root / old).rename(root / "data" / "saved")
    for t in doc["tensors"]:
        for c in t["chunks"]:
            c["file"] = c["file"].replace(old, "data/saved")
    doc["metadata_checksum"] = canonical_checksum(doc)
    (root / METADATA).write_text(json.dumps(doc))
    return doc


def _flat_boxes(shape: tuple[int, ...], cuts: list[int]) -> list[tuple]:
    total = math.prod(shape)
    bounds = sorted({0, total, *cuts})
    return [(b.offsets, b.lengths) for lo, hi in itertools.pairwise(bounds)
            for _, b in flat_range_to_boxes(shape, lo, hi - lo)]


def _grid(shape: tuple[int, ...], cuts: list[list[int]]) -> list[tuple]:
    boxes: list[tuple] = [((), ())]
    for n, inner in zip(shape, cuts):
        bounds = sorted({0, n, *inner})
        boxes = [((*o, lo), (*ln, hi - lo)) for o, ln in boxes for lo, hi in itertools.pairwise(bounds)]
    return boxes


def build_seeds(base: Path) -> dict[str, Seed]:
    """The valid checkpoints every case starts from."""
    seeds: dict[str, Seed] = {}
    saved = {
        "model": {"w": _sample(torch.float32, (6, 5), 1), "b": _sample(torch.bfloat16, (7,), 2),
                  "i": _sample(torch.int64, (3, 4), 3), "mask": _sample(torch.bool, (9,), 4),
                  "c": _sample(torch.complex64, (2, 3), 5), "f8": _sample(torch.float8_e4m3fn, (4,), 6)},
        "misc": {"scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.empty(0, 4)},
        "extra": {"step": 3, "name": "run-ä", "t": (1, 2.5), "blob": b"\x00\x01", "nan": float("nan"),
                  "cfg": {"lr": 0.1, "layers": [1, 2, [3, None]]}, "keys": {1: "x", (2, 3): "y"}},
    }
    root = base / "saved"
    bcp.save(root, saved, block_size=64)
    tensors = {("model", k): v for k, v in saved["model"].items()} | {("misc", k): v for k, v in saved["misc"].items()}
    seeds["saved"] = Seed("saved", root, _fixed_save_id(root), tensors)

    layout = {
        ("rows",): (_sample(torch.float32, (8, 6), 11), _grid((8, 6), [[3, 5], []])),
        ("cols",): (_sample(torch.int16, (4, 9), 12), _grid((4, 9), [[], [2, 7]])),
        ("grid",): (_sample(torch.float16, (6, 6), 13), _grid((6, 6), [[2], [1, 4]])),
        ("flat",): (_sample(torch.float32, (5, 7), 14), _flat_boxes((5, 7), [3, 17, 30])),
        ("cube",): (_sample(torch.float64, (2, 3, 4), 15), _flat_boxes((2, 3, 4), [5, 13])),
        ("sub", "u8"): (_sample(torch.uint8, (70,), 16), _grid((70,), [[64]])),
        ("sub", "zero"): (torch.empty(0, 3, dtype=torch.int32), []),
        ("sub", "one"): (torch.tensor(True), [((), ())]),
    }
    root = base / "tiled"
    doc = write_layout(root, layout, {("extra", "step"): 9, ("extra", "t"): {"$tuple": [1, {"$bytes": "AAE="}]}})
    seeds["tiled"] = Seed("tiled", root, doc, {p: t for p, (t, _) in layout.items()})
    return seeds


# -- cases: mutations of a seed --------------------------------------------------------------------

EDGE_INTS = [0, -1, 1, 63, 64, 65, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63),
             10**30]
EDGE_OTHERS: list[Any] = [0.5, -0.0, 1e308, float("nan"), float("inf"), "", "a", "0" * 16, "x" * 3000, "\x00",
                          "..", "/", "/etc/passwd", "data/../metadata.json", "data\\x", "é", "\ud800", "[/]",
                          None, True, False, [], {}, [0], [[]], {"$tuple": []}, {"$pickle": "gASVAAAA"},
                          {"$bytes": "!!"}, {"$float": "x"}, {"$dict": [[1]]}]


def _deep(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON document, iteratively."""
    stack = [node]
    while stack:
        item = stack.pop()
        keys = list(item) if isinstance(item, dict) else range(len(item)) if isinstance(item, list) else []
        for key in keys:
            out.append((item, key))
            stack.append(item[key])
    return out


def _entries(doc: dict, key: str) -> list[dict]:
    """The dict entries of ``doc[key]`` (tensors or values), whatever earlier mutations left there."""
    entries = doc.get(key)
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def _chunks(doc: dict) -> list[tuple[dict, dict]]:
    return [(t, c) for t in _entries(doc, "tensors") if isinstance(t.get("chunks"), list)
            for c in t["chunks"] if isinstance(c, dict)]


def rehash(doc: dict, blobs: dict[str, bytes]) -> None:
    """Give every chunk the right hashes of the bytes it points at, so only the other checks can
    refuse it (what an attacker who writes the metadata can do)."""
    block = doc.get("checksum", {}).get("block_size") if isinstance(doc.get("checksum"), dict) else None
    if not isinstance(block, int) or not 0 < block <= 1 << 20:
        return
    for _, c in _chunks(doc):
        file, start, length = c.get("file"), c.get("byte_offset"), c.get("byte_length")
        blob = blobs.get(file) if isinstance(file, str) else None
        if isinstance(blob, bytes) and isinstance(start, int) and isinstance(length, int) and 0 <= start and 0 <= length <= 1 << 20:
            piece = blob[start : start + length]
            c["hashes"] = [xxhash.xxh3_64_hexdigest(piece[i : i + block]) for i in range(0, length, block)]


def _split(t: dict, c: dict, rng: random.Random) -> None:
    """Cut a chunk in two along its first dimension (both parts point at their own bytes)."""
    lengths, offsets = c.get("lengths"), c.get("offsets")
    if not (isinstance(lengths, list) and isinstance(offsets, list) and lengths and offsets
            and all(isinstance(x, int) for x in [*lengths, *offsets, c.get("byte_offset"), c.get("byte_length")])
            and lengths[0] >= 2):
        return
    k = rng.randint(1, lengths[0] - 1)
    row = c["byte_length"] // lengths[0]
    second = copy.deepcopy(c)
    c["lengths"] = [k, *lengths[1:]]
    c["byte_length"] = k * row
    second["offsets"] = [offsets[0] + k, *offsets[1:]]
    second["lengths"] = [lengths[0] - k, *lengths[1:]]
    second["byte_offset"] += k * row
    second["byte_length"] -= k * row
    t["chunks"].append(second)


def mutate_metadata(doc: dict, rng: random.Random, notes: list[str]) -> None:
    """One mutation of the document, in place."""
    kind = rng.choice(["edge", "edge", "delete", "duplicate", "swap", "nudge", "string", "chunk_dup", "chunk_drop",
                       "chunk_move", "file_swap", "dtype", "shape", "block", "conflict", "deep_value", "path",
                       "split", "split", "split"])
    chunks = _chunks(doc)
    tensors, values = _entries(doc, "tensors"), _entries(doc, "values")
    if kind == "split" and chunks:
        _split(*rng.choice(chunks), rng)
    elif kind == "chunk_dup" and chunks:
        t, c = rng.choice(chunks)
        t["chunks"].append(copy.deepcopy(c))
    elif kind == "chunk_drop" and chunks:
        t, c = rng.choice(chunks)
        t["chunks"].remove(c)
    elif kind == "chunk_move" and chunks:
        t, c = rng.choice(chunks)
        if isinstance(c.get("offsets"), list) and c["offsets"]:
            d = rng.randrange(len(c["offsets"]))
            c["offsets"][d] = rng.choice([0, 1, c["offsets"][d] - 1 if isinstance(c["offsets"][d], int) else 0])
    elif kind == "file_swap" and len(chunks) > 1:
        (_, a), (_, b) = rng.sample(chunks, 2)
        a["file"], b["file"] = b.get("file"), a.get("file")
    elif kind == "dtype" and tensors:
        rng.choice(tensors)["dtype"] = rng.choice([*ITEMSIZE, "float7", 3])
    elif kind == "shape" and tensors:
        t = rng.choice(tensors)
        shape = t.get("shape")
        if isinstance(shape, list):
            choice = rng.random()
            if shape and choice < 0.5:
                d = rng.randrange(len(shape))
                shape[d] = max(0, shape[d] + rng.choice([-1, 1])) if isinstance(shape[d], int) else 1
            elif choice < 0.75:
                shape.append(rng.choice([0, 1, 2]))
            elif shape:
                shape.pop()
    elif kind == "block" and isinstance(doc.get("checksum"), dict):
        doc["checksum"]["block_size"] = rng.choice([32, 63, 64, 128, 4096, 2**31, 2**31 + 64, 1, 0, 2**50])
    elif kind == "conflict" and tensors and isinstance(doc.get("values"), list):
        path = rng.choice(tensors).get("path")
        if isinstance(path, list) and path:
            cut = rng.randint(1, len(path))
            doc["values"].append({"path": path[:cut], "value": rng.choice([1, None, {"a": 1}])})
    elif kind == "deep_value" and values:
        rng.choice(values)["value"] = _deep(rng.choice([60, 62, 63, 64, 65, 70, 200]))
    elif kind == "path" and tensors:
        rng.choice(tensors)["path"] = rng.choice([["k"] * 65, ["k"] * 64, [2**64], [True], [], ["a", 1.5],
                                                        ["\ud800"], [""]])
    else:
        slots = [s for s in _slots(doc, []) if s[1] != "metadata_checksum"]
        if not slots:
            return
        parent, key = rng.choice(slots)
        value = parent[key]
        if kind == "delete":
            del parent[key]
        elif kind == "duplicate" and isinstance(value, list) and value:
            value.insert(rng.randrange(len(value) + 1), copy.deepcopy(rng.choice(value)))
        elif kind == "swap" and isinstance(value, list) and len(value) > 1:
            rng.shuffle(value)
        elif kind == "nudge" and isinstance(value, int) and not isinstance(value, bool):
            parent[key] = rng.choice([value + 1, value - 1, value * 2, value // 2, -value, value + 64])
        elif kind == "string" and isinstance(value, str):
            parent[key] = rng.choice([value + "/x", value + "\x00", "./" + value, value.replace("/", "//"),
                                      value.upper(), value + "é", value[: len(value) // 2]])
        else:
            parent[key] = copy.deepcopy(rng.choice(EDGE_INTS + EDGE_OTHERS))
        kind = f"{kind}@{key!r}"
    notes.append(kind)


def mutate_text(raw: bytes, rng: random.Random, notes: list[str]) -> bytes:
    kind = rng.choice(["truncate", "flip", "deep", "bigint", "nan", "bom", "utf16", "garbage", "dupkey"])
    notes.append(f"text:{kind}")
    if kind == "truncate":
        return raw[: rng.randrange(len(raw))]
    if kind == "flip":
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1:]
    if kind == "deep":
        depth = rng.choice([66, 68, 1000, 100_000])
        return raw.replace(b'"values":[', b'"values":[' + b"[" * depth + b"]" * depth + b",", 1)
    if kind == "bigint":
        return re.sub(rb'"byte_offset":\d+', b'"byte_offset":' + b"7" * rng.choice([4000, 5000]), raw, count=1)
    if kind == "nan":
        return re.sub(rb'"value":\d+', b'"value":NaN', raw, count=1)
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    if kind == "utf16":
        return raw.decode("utf-8").encode("utf-16")
    if kind == "dupkey":
        return raw.replace(b'"version":1', b'"version":1,"version":2', 1)
    return raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))


FILE_OPS = ["truncate", "truncate", "extend", "flip", "flip", "delete", "dir", "fifo", "empty", "link_canary",
            "link_copy", "link_inside", "link_dev", "parent_link"]


def make_case(seed: Seed, rng: random.Random) -> dict:
    """A random case: metadata mutations and/or file operations, as replayable JSON."""
    notes: list[str] = []
    case: dict[str, Any] = {"seed": seed.name, "files": {}, "notes": notes, "target_seed": rng.randrange(2**31)}
    roll = rng.random()
    if roll < 0.75:
        doc = copy.deepcopy(seed.doc)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            mutate_metadata(doc, rng, notes)
        if rng.random() < 0.5:
            rehash(doc, seed.blobs)
            notes.append("rehash")
        mode = rng.choices(["recompute", "stale", "drop"], [0.9, 0.05, 0.05])[0]
        if mode == "recompute":
            doc["metadata_checksum"] = canonical_checksum(doc)
        elif mode == "drop":
            doc.pop("metadata_checksum", None)
        notes.append(f"checksum:{mode}")
        raw = json.dumps(doc).encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            raw = mutate_text(raw, rng, notes)
        case["metadata_z"] = base64.b64encode(zlib.compress(raw)).decode()
    if roll > 0.6:
        files = sorted({c["file"] for _, c in _chunks(seed.doc)})
        for _ in range(rng.choice([1, 1, 2])):
            name = METADATA if rng.random() < 0.1 else rng.choice(files)
            op = rng.choice([o for o in FILE_OPS if o != "parent_link" or "/" in name])
            spec: dict[str, Any] = {"op": op}
            if op in ("truncate", "flip", "extend"):
                spec["at"] = rng.randrange(1 << 16)
                spec["bit"] = rng.randrange(8)
            case["files"][name] = spec
            notes.append(f"{op}:{name}")
    return case


def case_metadata(case: dict) -> bytes | None:
    return zlib.decompress(base64.b64decode(case["metadata_z"])) if case.get("metadata_z") else None


def apply_case(case: dict, seeds: dict[str, Seed], where: Path) -> tuple[Path, Path]:
    """Materialize ``case`` under ``where``: the checkpoint ``ck/`` and ``outside/`` (canary, copies)."""
    seed = seeds[case["seed"]]
    ck, outside = where / "ck", where / "outside"
    shutil.copytree(seed.root, ck, symlinks=True)
    shutil.copytree(seed.root, outside / "copy", symlinks=True)  # valid bytes, but not the checkpoint's
    (outside / "canary.bin").write_bytes(CANARY * 64)
    raw = case_metadata(case)
    if raw is not None:
        (ck / METADATA).write_bytes(raw)
    for name, spec in sorted(case["files"].items(), key=lambda kv: kv[1]["op"] == "parent_link"):
        path = ck / name
        op = spec["op"]
        if path.parent.is_symlink() or (op in ("truncate", "flip", "extend", "empty") and not path.is_file()):
            continue
        data = path.read_bytes() if path.is_file() else b""
        if op == "truncate":
            path.write_bytes(data[: spec["at"] % (len(data) + 1)])
        elif op == "flip" and data:
            i = spec["at"] % len(data)
            path.write_bytes(data[:i] + bytes([data[i] ^ (1 << spec["bit"])]) + data[i + 1:])
        elif op == "extend":
            path.write_bytes(data + bytes(spec["at"] % 4096))
        elif op == "empty":
            path.write_bytes(b"")
        else:
            _remove(path)
            if op == "dir":
                path.mkdir()
            elif op == "fifo":
                os.mkfifo(path)
            elif op == "link_canary":
                path.symlink_to(outside / "canary.bin")
            elif op == "link_copy":
                path.symlink_to(outside / "copy" / name)
            elif op == "link_inside":
                others = [c["file"] for _, c in _chunks(seed.doc) if c["file"] != name]
                path.symlink_to(os.path.relpath(ck / (others[0] if others else METADATA), path.parent))
            elif op == "link_dev":
                path.symlink_to("/dev/zero")
            elif op == "parent_link" and "/" in name:
                shutil.rmtree(path.parent, ignore_errors=True)
                path.parent.symlink_to(outside / "copy" / Path(name).parent, target_is_directory=True)
    return ck, outside


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


# -- running the readers ----------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by SIGALRM in a call that ran too long (a BaseException, so no ``except Exception`` eats it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)  # and again each second, should cleanup block too
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class OpenWatch:
    """inotify: which files under the watched directories were opened or read (Linux; else a no-op)."""

    MASK = 0x20 | 0x01  # IN_OPEN | IN_ACCESS

    def __init__(self) -> None:
        try:
            self.libc = ctypes.CDLL(None, use_errno=True)
            self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):
            self.fd = -1
        self.watches: dict[int, str] = {}

    def watch(self, directory: Path) -> None:
        if self.fd >= 0:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(directory), self.MASK)
            if wd >= 0:
                self.watches[wd] = str(directory)

    def drain(self) -> list[str]:
        """Paths opened or read since the last drain; clears the watches."""
        seen: list[str] = []
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):
                wd, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode(errors="replace")
                offset += 16 + length
                if mask & self.MASK and wd in self.watches:
                    seen.append(os.path.join(self.watches[wd], name))
        for wd in list(self.watches):
            self.libc.inotify_rm_watch(self.fd, wd)
        self.watches.clear()
        return seen


@dataclass
class Outcome:
    op: str
    result: Any = None
    error: BaseException | None = None
    text: str = ""  # messages and CLI output, for the leak checks


@dataclass
class Stats:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    problems: list[tuple[dict, list[str]]] = field(default_factory=list)


def _targets(seed: Seed, rng: random.Random) -> tuple[dict, list[tuple[tuple, Any, Any]]]:
    """A load target for every seed tensor, in a random layout, filled with a sentinel."""
    state: dict = {}
    pieces = []
    for path, ref in seed.tensors.items():
        node = state
        for key in path[:-1]:
            node = node.setdefault(key, {})
        kind = rng.choice(["whole", "box", "flat", "none"]) if ref.dim() else "whole"
        if kind == "box" and ref.numel():
            offsets = [rng.randrange(n) for n in ref.shape]
            lengths = [rng.randint(1, n - o) for n, o in zip(ref.shape, offsets)]
            node[path[-1]] = bcp.ShardedTensor(_sentinel(lengths, ref.dtype), tuple(ref.shape), offsets)
            pieces.append((path, node[path[-1]], tuple(slice(o, o + n) for o, n in zip(offsets, lengths))))
        elif kind == "flat" and ref.numel():
            start = rng.randrange(ref.numel())
            count = rng.randint(1, ref.numel() - start)
            node[path[-1]] = bcp.FlatShard(_sentinel([count], ref.dtype), tuple(ref.shape), start)
            pieces.append((path, node[path[-1]], (start, count)))
        elif kind == "none":
            node[path[-1]] = None
            pieces.append((path, node, None))
        else:
            node[path[-1]] = _sentinel(list(ref.shape), ref.dtype)
            pieces.append((path, node[path[-1]], ()))
    return state, pieces


def _sentinel(shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor whose bytes are all 0x5A (1 for bool), so anything a load leaves unfilled shows."""
    size = torch.empty((), dtype=dtype).element_size()
    fill = 1 if dtype == torch.bool else 0x5A
    return torch.full((*shape, size), fill, dtype=torch.uint8).view(dtype).reshape(shape)


class Runner:
    """Runs cases against the library and checks the invariants."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.seeds = build_seeds(base / "seeds")
        self.watch = OpenWatch()
        self.count = 0
        self.last: list[tuple[str, str]] = []
        self.raised: dict[str, type] = {}

    def run(self, case: dict) -> list[str]:
        """The invariants ``case`` breaks (empty if none); ``self.last`` holds each call's outcome."""
        rng = random.Random(case.get("target_seed", 0))
        self.count += 1
        where = self.base / f"case{self.count}"
        where.mkdir()
        try:
            return self._run(case, where, rng)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def _run(self, case: dict, where: Path, rng: random.Random) -> list[str]:
        seed = self.seeds[case["seed"]]
        ck, outside = apply_case(case, self.seeds, where)
        for directory in (outside, *(p for p in outside.rglob("*") if p.is_dir() and not p.is_symlink())):
            self.watch.watch(directory)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        state, pieces = _targets(seed, rng)
        outcomes = [
            self._call("verify", lambda: bcp.verify(ck)),
            self._call("load_full", lambda: bcp.load_full(ck)),
            self._call("load", lambda: bcp.load(ck, state, strict=rng.random() < 0.5)),
            self._cli("cli verify", ["verify", str(ck)]),
            self._cli("cli inspect", ["inspect", "--json", str(ck)] if rng.random() < 0.5 else ["inspect", str(ck)]),
        ]
        problems = [f"{o.op}: timed out after {CALL_SECONDS}s" for o in outcomes if isinstance(o.error, _Timeout)]
        problems += [f"{o.op}: {o.text}" for o in outcomes
                     if o.error is not None and not isinstance(o.error, (bcp.CheckpointError, _Timeout))]
        problems += [f"{o.op}: {o.text}" for o in outcomes if o.op.startswith("cli") and o.error is not None]
        opened = self.watch.drain()
        if opened:
            problems.append(f"opened outside the checkpoint: {sorted(set(opened))}")
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
        if grown > RSS_GROWTH:
            problems.append(f"peak memory grew by {grown >> 20} MiB")
        problems += self._check_results(ck, outcomes, pieces)
        self.last = [(o.op, type(o.error).__name__ if o.error is not None else f"exit {o.result}"
                      if o.op.startswith("cli") else "ok") for o in outcomes]
        self.raised = {o.op: type(o.error) for o in outcomes if o.error is not None}
        return problems + self._unexpected(case.get("expect", {}))

    def _unexpected(self, expect: dict[str, str]) -> list[str]:
        """Outcomes that differ from a corpus case's ``expect`` ({op: "ok" | "exit N" | error class},
        an error matching any subclass)."""
        got = dict(self.last)
        problems = []
        for op, want in expect.items():
            raised = self.raised.get(op)
            if want == "ok" or want.startswith("exit"):
                ok = got.get(op) == want
            else:
                ok = raised is not None and issubclass(raised, getattr(bcp, want, ()))
            if not ok:
                problems.append(f"{op}: expected {want}, got {got.get(op)}")
        return problems

    def _call(self, op: str, fn: Callable[[], Any]) -> Outcome:
        try:
            with time_limit(CALL_SECONDS):
                return Outcome(op, fn())
        except _Timeout as exc:
            return Outcome(op, error=exc, text="timeout")
        except Exception as exc:  # noqa: BLE001 - classifying every failure is the point
            return Outcome(op, error=exc, text=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}")

    def _cli(self, op: str, args: list[str]) -> Outcome:
        """The console script in this process: exit 0, 1 (damage found) or 2 (not a readable
        checkpoint) with one error line; exit 3 (internal error), an exception or a traceback is a crash."""
        from tests.bytecheckpoint.cli_runner import invoke

        try:
            with time_limit(CALL_SECONDS):
                res = invoke(args)
        except _Timeout as exc:
            return Outcome(op, error=exc, text="timeout")
        except Exception as exc:  # noqa: BLE001 - an exception escaping the script is the finding
            return Outcome(op, error=RuntimeError("crash"), text=f"{type(exc).__name__}: {exc}\n"
                                                                 f"{traceback.format_exc(limit=-4)}")
        text = res.stdout + res.stderr
        if res.exit_code not in (0, 1, 2) or "Traceback" in text:
            return Outcome(op, error=RuntimeError("crash"), text=f"exit {res.exit_code}: {text[-400:]}")
        if res.exit_code and not (res.stderr.startswith("error: ") and res.stderr.count("error: ") == 1):
            return Outcome(op, error=RuntimeError("bad error"), text=f"stderr not one error line: {res.stderr[:300]!r}")
        return Outcome(op, result=res.exit_code, text=text)

    def _check_results(self, ck: Path, outcomes: list[Outcome], pieces: list) -> list[str]:
        problems = []
        by_op = {o.op: o for o in outcomes}
        meta = _read_plain(ck / METADATA)
        meta_text = meta.decode("latin-1") if meta is not None else ""
        for o in outcomes:
            text = o.text if o.error is None and o.op.startswith("cli") else str(o.error or "")
            if CANARY[:16].decode() in text:
                problems.append(f"{o.op}: the canary appears in the output")
            foreign = [h for h in HEX16.findall(text) if h not in meta_text]
            if foreign:
                problems.append(f"{o.op}: prints hash(es) {foreign[:3]} that the metadata does not hold")
        api_ok = by_op["verify"].error is None
        cli_ok = by_op["cli verify"].error is None and by_op["cli verify"].result == 0
        if api_ok != cli_ok and by_op["cli verify"].error is None:
            problems.append(f"verify and the CLI disagree: api ok={api_ok}, cli exit={by_op['cli verify'].result}")
        full, load = by_op["load_full"], by_op["load"]
        if full.error is None:
            if not api_ok:
                problems.append(f"load_full succeeded, verify failed: {by_op['verify'].error}")
            reference, why = reference_read(ck, strict=True)
            if reference is None:
                problems.append(f"load_full succeeded where the reference reader refuses: {why}")
            else:
                problems += _compare_full(full.result, reference)
        if load.error is None:  # a partial load reads only some blocks: compare with the file bytes as they are
            reference, why = reference_read(ck, strict=False)
            if reference is None:
                problems.append(f"load succeeded where the reference reader refuses: {why}")
            else:
                problems += _compare_load(pieces, reference)
        return problems


def _read_plain(path: Path) -> bytes | None:
    """A regular file's bytes, never through a link or from a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def reference_read(ck: Path, strict: bool) -> tuple[dict[tuple, Reference] | None, str]:
    """Every tensor per docs/FORMAT.md, read with numpy, or None and why the checkpoint is not valid.
    ``strict``: every chunk readable, checksums right, chunks tiling. Else each element records how
    many readable chunks hold it (``count``), and checksums are not checked."""
    try:
        return _reference_read(ck, strict)
    except Exception as exc:  # noqa: BLE001 - a document the library accepted but this reader cannot follow
        return None, f"the reference reader failed: {type(exc).__name__}: {exc}"


@dataclass
class Reference:
    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # uint8, shape + (itemsize,)
    count: np.ndarray  # readable chunks holding each element


def _reference_read(ck: Path, strict: bool) -> tuple[dict[tuple, Reference] | None, str]:
    raw = _read_plain(ck / METADATA)
    if raw is None:
        return None, "metadata.json is not a regular file"
    doc = json.loads(raw)
    block = doc["checksum"]["block_size"]
    out = {}
    for t in doc["tensors"]:
        shape, size = tuple(t["shape"]), ITEMSIZE[t["dtype"]]
        if math.prod(shape) > 1 << 24:
            return None, f"{t['path']}: too large for the reference reader"
        ref = Reference(t["dtype"], shape, np.zeros((*shape, size), dtype=np.uint8), np.zeros(shape, dtype=np.int64))
        for c in t["chunks"]:
            if not c["byte_length"]:  # no bytes: nothing to read (the library opens no file for it)
                continue
            blob = _read_plain(ck / c["file"])
            if blob is None or c["byte_offset"] + c["byte_length"] > len(blob):
                if strict:
                    return None, f"{c['file']}: missing, not a regular file, or short"
                continue
            piece = blob[c["byte_offset"] : c["byte_offset"] + c["byte_length"]]
            hashes = [xxhash.xxh3_64_hexdigest(piece[i : i + block]) for i in range(0, len(piece), block)]
            if strict and hashes != c["hashes"]:
                return None, f"{t['path']}: checksum mismatch"
            box = tuple(slice(o, o + n) for o, n in zip(c["offsets"], c["lengths"]))
            ref.data[box] = np.frombuffer(piece, dtype=np.uint8).reshape((*c["lengths"], size))
            ref.count[box] += 1
        if strict and not (ref.count == 1).all():
            return None, f"{t['path']}: the chunks do not tile the tensor"
        out[tuple(t["path"])] = ref
    return out, ""


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().reshape((*t.shape, t.element_size()))


def _walk_tensors(node: Any, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_tensors(v, (*prefix, k))
    else:
        yield prefix, node


def _compare_full(full: dict, reference: dict) -> list[str]:
    problems = []
    found = {p: v for p, v in _walk_tensors(full) if isinstance(v, torch.Tensor)}
    for path, ref in reference.items():
        got = found.get(path)
        if got is None or tuple(got.shape) != ref.shape or not np.array_equal(_bytes_of(got), ref.data):
            problems.append(f"load_full: tensor {path} differs from the reference reader's")
        elif CANARY[:16] in ref.data.tobytes():
            problems.append(f"load_full: tensor {path} holds canary bytes")
    for path, value in _walk_tensors(full):
        if isinstance(value, (bytes, str)) and CANARY[:16].decode() in str(value):
            problems.append(f"load_full: value {path} holds canary bytes")
    return problems


def _compare_load(pieces: list, reference: dict[tuple, Reference]) -> list[str]:
    """Each target of a saved tensor of its shape and dtype holds the file bytes, from exactly one chunk."""
    problems = []
    for path, target, where in pieces:
        ref = reference.get(path)
        if ref is None:
            continue
        if where is None:  # a placeholder: gets the whole tensor
            got, index, shape = target.get(path[-1]), (), None
        elif isinstance(target, bcp.ShardedTensor):
            got, index, shape = target.data, where, tuple(target.global_shape)
        elif isinstance(target, bcp.FlatShard):
            got, shape = target.data, tuple(target.global_shape)
            index = np.unravel_index(np.arange(where[0], where[0] + where[1]), ref.shape) if ref.shape else ()
        else:
            got, index, shape = target, (), tuple(target.shape)
        if not isinstance(got, torch.Tensor) or str(got.dtype).removeprefix("torch.") != ref.dtype:
            continue  # another dtype: load refused it
        if (shape or tuple(got.shape)) != ref.shape:
            continue  # another shape: load refused it
        if not (ref.count[index] == 1).all():
            problems.append(f"load: filled {path} where the chunks do not hold each element exactly once")
        elif not np.array_equal(_bytes_of(got).reshape(-1), ref.data[index].reshape(-1)):
            problems.append(f"load: tensor {path} differs from the file bytes")
    return problems


# -- driving ----------------------------------------------------------------------------------------


def fuzz(seconds: float, seed: int, save: Path | None = None, log: Callable[[str], None] = print,
         max_cases: int | None = None) -> Stats:
    """Run random cases for ``seconds``; failing ones are saved under ``save`` (one per kind of problem)."""
    stats = Stats()
    saved: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bcp-fuzz-", dir=_scratch()) as tmp:
        runner = Runner(Path(tmp))
        names = sorted(runner.seeds)
        start = time.monotonic()
        while time.monotonic() - start < seconds and (max_cases is None or stats.cases < max_cases):
            rng = random.Random(seed * 1_000_003 + stats.cases)
            case = make_case(runner.seeds[rng.choice(names)], rng)
            problems = runner.run(case)
            stats.outcomes.update(runner.last)
            stats.cases += 1
            if problems:
                stats.problems.append((case, problems))
                signature = re.sub(r"[\d/'\"\[\]]+", "", problems[0])[:80]
                if save is not None and signature not in saved:
                    saved.add(signature)
                    save.mkdir(parents=True, exist_ok=True)
                    out = save / f"crasher-{seed}-{stats.cases}.json"
                    out.write_text(json.dumps({**case, "problems": problems, "description": problems[0][:200]},
                                              indent=1))
                    log(f"case {stats.cases}: {problems[0][:300]} -> {out}")
    return stats


def _scratch() -> str | None:
    """A RAM-backed directory where there is one (the cases make and remove many small files)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def replay(path: Path) -> list[str]:
    """Run a saved case (a corpus entry) again; the problems it still shows."""
    case = json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="bcp-replay-", dir=_scratch()) as tmp:
        return Runner(Path(tmp)).run(case)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    parser.add_argument("--save", type=Path, default=None, help="write failing cases (replayable JSON) here")
    parser.add_argument("--max-memory-gib", type=float, default=4.0,
                        help="address space this process may add (RLIMIT_AS), after the imports")
    parser.add_argument("--replay", type=Path, nargs="*", default=[], help="run these saved cases instead")
    args = parser.parse_args(argv)
    if args.max_memory_gib > 0:
        vm = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
        limit = vm + int(args.max_memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.replay:
        failed = 0
        for path in args.replay:
            problems = replay(path)
            failed += bool(problems)
            print(f"{path}: {'; '.join(problems) if problems else 'ok'}")
        return 1 if failed else 0
    start = time.monotonic()
    stats = fuzz(args.seconds, args.seed, args.save, max_cases=args.cases)
    elapsed = time.monotonic() - start
    print(f"{stats.cases} cases in {elapsed:.1f}s ({stats.cases / elapsed:.1f}/s), seed {args.seed}, "
          f"{len(stats.problems)} failing")
    for case, problems in stats.problems[:20]:
        print(f"  {case['seed']} {case['notes']}: {problems[0][:300]}")
    outcomes = Counter()
    for (op, kind), n in stats.outcomes.items():
        outcomes[f"{op}={kind}"] += n
    print("outcomes:", ", ".join(f"{k} {n}" for k, n in sorted(outcomes.items())))
    return 1 if stats.problems else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # a reader stuck in a thread (a timed-out case) must not keep the process alive
