"""The checkpoint's metadata: frozen dataclasses, versioned, parsed and validated on read.

The JSON layout is specified in docs/FORMAT.md. Nothing here executes code from the file, and
``from_json`` checks every bound a reader relies on (limits.py) before anything is read or
allocated: a damaged or crafted file raises a MetadataError naming the file, field and tensor.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .boxes import ShardBox, check_tiling
from .dtypes import itemsize, torch_dtype
from .errors import ChecksumMismatchError, MetadataError, UnsupportedValueError, UnsupportedVersionError
from .limits import (
    INT64_MAX,
    MAX_BLOCK_SIZE,
    MAX_DEPTH,
    MAX_DOCUMENT_DEPTH,
    MAX_FILE_NAME,
    MAX_NDIM,
    MAX_TENSOR_BYTES,
    MIN_BLOCK_SIZE,
    json_depth,
    nesting_depth,
)

FORMAT_NAME = "bytecheckpoint"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
CHECKSUM_ALGORITHM = "xxh3_64"
METADATA_CHECKSUM_KEY = "metadata_checksum"
#: set to 1 to read metadata files written without ``metadata_checksum`` (refused otherwise)
ALLOW_UNCHECKSUMMED_ENV = "BYTECHECKPOINT_ALLOW_UNCHECKSUMMED_METADATA"

Path = tuple[str | int, ...]


def fqn_of(path: Sequence[str | int]) -> str:
    """The fully qualified name of a state path: its keys joined by dots."""
    return ".".join(str(p) for p in path)


@dataclass(frozen=True, slots=True)
class ChunkLocation:
    """Where a chunk's bytes live: a data file relative to the checkpoint root and a byte range."""

    file: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class SavedChunk:
    """One saved box of a tensor, its bytes (row-major over the box) and their block hashes."""

    box: ShardBox
    location: ChunkLocation
    block_hashes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TensorEntry:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[SavedChunk, ...]

    @property
    def fqn(self) -> str:
        return fqn_of(self.path)


@dataclass(frozen=True, slots=True)
class ValueEntry:
    """A plain (non-tensor) value, held in its tagged-JSON encoding (see values.py)."""

    path: Path
    encoded: Any

    @property
    def fqn(self) -> str:
        return fqn_of(self.path)


@dataclass(frozen=True, slots=True)
class WriterInfo:
    library: str
    library_version: str
    framework: str | None
    world_size: int
    layout: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointMetadata:
    writer: WriterInfo
    block_size: int
    tensors: tuple[TensorEntry, ...]
    values: tuple[ValueEntry, ...]
    version: int = FORMAT_VERSION
    checksum_algorithm: str = CHECKSUM_ALGORITHM

    def tensor_by_fqn(self) -> dict[str, TensorEntry]:
        return {t.fqn: t for t in self.tensors}

    @property
    def data_files(self) -> list[str]:
        return sorted({c.location.file for t in self.tensors for c in t.chunks})

    @property
    def total_bytes(self) -> int:
        return sum(c.location.length for t in self.tensors for c in t.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "writer": {
                "library": self.writer.library,
                "library_version": self.writer.library_version,
                "framework": self.writer.framework,
                "world_size": self.writer.world_size,
                "layout": self.writer.layout,
            },
            "checksum": {"algorithm": self.checksum_algorithm, "block_size": self.block_size},
            "tensors": [
                {
                    "path": list(t.path),
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "chunks": [
                        {
                            "offsets": list(c.box.offsets),
                            "lengths": list(c.box.lengths),
                            "file": c.location.file,
                            "byte_offset": c.location.offset,
                            "byte_length": c.location.length,
                            "hashes": list(c.block_hashes),
                        }
                        for c in t.chunks
                    ],
                }
                for t in self.tensors
            ],
            "values": [{"path": list(v.path), "value": v.encoded} for v in self.values],
        }

    def to_json(self) -> bytes:
        """The metadata file: the document plus ``metadata_checksum``, the xxh3-64 of its canonical form."""
        layout = self.writer.layout
        if nesting_depth(layout, MAX_DEPTH) > MAX_DEPTH:
            raise UnsupportedValueError(f"layout: nested deeper than {MAX_DEPTH} levels; readers refuse that")
        doc = self.to_dict()
        try:
            doc[METADATA_CHECKSUM_KEY] = metadata_checksum(doc)
            return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:  # only the free-form layout can hold such things
            raise UnsupportedValueError(f"layout {layout!r} is not plain JSON ({exc})") from None

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> CheckpointMetadata:
        """Parse and validate a metadata file; checks format, version and checksum, then every field."""
        doc = _load_json(raw, where)
        _check_format_and_version(doc, where)  # first: another version may checksum differently
        if METADATA_CHECKSUM_KEY in doc:
            recorded = doc.pop(METADATA_CHECKSUM_KEY)
            if not isinstance(recorded, str) or not _HEX16.fullmatch(recorded):
                raise MetadataError(
                    f"{where}: {METADATA_CHECKSUM_KEY}: expected 16 lowercase hex digits, found "
                    f"{_short(recorded)}"
                )
            try:
                actual = metadata_checksum(doc)
            except (TypeError, ValueError, RecursionError) as exc:
                raise MetadataError(f"{where}: metadata is not plain JSON ({_cut(str(exc))})") from None
            if recorded != actual:
                raise ChecksumMismatchError(
                    f"{where}: metadata checksum mismatch (recorded {recorded}): the metadata file was "
                    "altered or damaged after it was written"
                )
        elif os.environ.get(ALLOW_UNCHECKSUMMED_ENV) != "1":
            raise MetadataError(
                f"{where}: the field {METADATA_CHECKSUM_KEY!r} is missing, so damage to the metadata could go "
                f"unnoticed; set {ALLOW_UNCHECKSUMMED_ENV}=1 to read a file written without it"
            )
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> CheckpointMetadata:
        """Parse and validate a metadata document; every problem names ``where`` and the field."""
        d = _check_format_and_version(doc, where)
        version = d["version"]
        writer = _parse_writer(d.get("writer"), f"{where}: writer")
        c = _expect(d.get("checksum"), dict, f"{where}: checksum")
        if c.get("algorithm") != CHECKSUM_ALGORITHM:
            raise MetadataError(f"{where}: unknown checksum algorithm {_short(c.get('algorithm'))}")
        block_size = c.get("block_size")
        if (
            type(block_size) is not int
            or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE
            or block_size % MIN_BLOCK_SIZE
        ):
            raise MetadataError(
                f"{where}: checksum.block_size: expected a multiple of {MIN_BLOCK_SIZE} from {MIN_BLOCK_SIZE} "
                f"to {MAX_BLOCK_SIZE}, found {_short(block_size)}"
            )
        files: dict[str, str] = {}
        tensors = tuple(
            _parse_tensor(t, f"{where}: tensors[{i}]", block_size, files)
            for i, t in enumerate(_expect(d.get("tensors"), list, f"{where}: tensors"))
        )
        values = tuple(
            _parse_value(v, f"{where}: values[{i}]")
            for i, v in enumerate(_expect(d.get("values"), list, f"{where}: values"))
        )
        _check_paths(tensors, values, where)
        return cls(writer=writer, block_size=block_size, tensors=tensors, values=values, version=version)


_HEX16 = re.compile(r"[0-9a-f]{16}")
_BAD_FILE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def _load_json(raw: bytes, where: str) -> Any:
    """``raw`` as strict UTF-8 JSON, refusing deep nesting before the recursive parser sees it."""
    raw = bytes(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{where}: metadata is not valid JSON (not UTF-8: {exc})") from None
    depth = json_depth(raw)
    if depth > MAX_DOCUMENT_DEPTH:
        raise MetadataError(
            f"{where}: metadata nests arrays/objects {depth} deep; at most {MAX_DOCUMENT_DEPTH} are allowed"
        )
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError; integers beyond Python's digit limit
        raise MetadataError(f"{where}: metadata is not valid JSON ({_cut(str(exc))})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_format_and_version(doc: Any, where: str) -> dict[str, Any]:
    d = _expect(doc, dict, where)
    if d.get("format") != FORMAT_NAME:
        raise MetadataError(f"{where}: not a bytecheckpoint metadata file (format={_short(d.get('format'))})")
    if type(d.get("version")) is not int or d.get("version") != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{where}: format version {_short(d.get('version'))} is not supported (this library reads version "
            f"{FORMAT_VERSION}); upgrade bytecheckpoint to read it"
        )
    return d


def metadata_checksum(doc: dict[str, Any]) -> str:
    """xxh3-64 (hex) of ``doc`` as canonical JSON: keys sorted, no spaces, ASCII only."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return xxhash.xxh3_64_hexdigest(canonical.encode())


def block_count(byte_length: int, block_size: int) -> int:
    return -(-byte_length // block_size)


def _parse_writer(raw: Any, where: str) -> WriterInfo:
    w = _expect(raw, dict, where)
    for key in ("library", "library_version"):
        if not isinstance(w.get(key, ""), str):
            raise MetadataError(f"{where}.{key}: expected a string, found {type(w.get(key)).__name__}")
    framework = w.get("framework")
    if framework is not None and not isinstance(framework, str):
        raise MetadataError(f"{where}.framework: expected a string or null, found {type(framework).__name__}")
    layout = _expect(w.get("layout", {}), dict, f"{where}.layout")
    if nesting_depth(layout, MAX_DEPTH) > MAX_DEPTH:
        raise MetadataError(f"{where}.layout: nested deeper than {MAX_DEPTH} levels")
    return WriterInfo(
        library=w.get("library", ""),
        library_version=w.get("library_version", ""),
        framework=framework,
        world_size=_int(w.get("world_size"), f"{where}.world_size", 1, 1 << 31),
        layout=layout,
    )


def _parse_tensor(doc: Any, where: str, block_size: int, files: dict[str, str]) -> TensorEntry:
    t = _expect(doc, dict, where)
    path = _parse_path(t.get("path"), where)
    where = f"{where} ({_short(fqn_of(path), 200)})"
    dtype = t.get("dtype")
    if not isinstance(dtype, str):
        raise MetadataError(f"{where}: dtype: expected a string, found {type(dtype).__name__}")
    torch_dtype(dtype, where)
    size = itemsize(dtype)
    shape = _parse_shape(t.get("shape"), size, where)
    raw_chunks = _expect(t.get("chunks"), list, f"{where}: chunks")
    chunks = [_parse_chunk(cd, shape, size, block_size, files, f"{where}: chunks[{j}]")
              for j, cd in enumerate(raw_chunks)]
    if not (len(chunks) == 1 and chunks[0].box.lengths == shape):  # one whole chunk tiles trivially
        problem = check_tiling(shape, [c.box for c in chunks])
        if problem:
            raise MetadataError(f"{where}: the chunks do not tile the tensor of shape {list(shape)}: {problem}")
    return TensorEntry(path, dtype, shape, tuple(chunks))


def _parse_shape(raw: Any, size: int, where: str) -> tuple[int, ...]:
    if type(raw) is not list or len(raw) > MAX_NDIM:
        if type(raw) is list:
            raise MetadataError(f"{where}: shape has {len(raw)} dimensions; at most {MAX_NDIM} are allowed")
        _expect(raw, list, f"{where}: shape")
    footprint = size
    for n in raw:
        if type(n) is not int or not 0 <= n <= INT64_MAX:
            raise MetadataError(f"{where}: shape: expected integers from 0 to 2**63-1, found {_short(raw)}")
        footprint *= n or 1
    if footprint >= MAX_TENSOR_BYTES:
        raise MetadataError(
            f"{where}: shape {_short(raw)} is too large ({footprint} bytes, counting dimensions of 0 as 1); "
            f"at most {MAX_TENSOR_BYTES - 1} bytes are allowed"
        )
    return tuple(raw)


def _parse_chunk(
    raw: Any, shape: tuple[int, ...], size: int, block_size: int, files: dict[str, str], where: str
) -> SavedChunk:
    cd = _expect(raw, dict, where)
    offsets, lengths = cd.get("offsets"), cd.get("lengths")
    if type(offsets) is not list or type(lengths) is not list or len(offsets) != len(shape) or len(lengths) != len(shape):
        _expect(offsets, list, f"{where}.offsets")
        _expect(lengths, list, f"{where}.lengths")
        raise MetadataError(f"{where}: box has rank {len(offsets)}/{len(lengths)}, tensor has rank {len(shape)}")
    numel = 1
    for o, n, s in zip(offsets, lengths, shape):
        if type(o) is not int or type(n) is not int or o < 0 or n < 0 or o + n > s:
            _int_list(offsets, f"{where}.offsets")
            _int_list(lengths, f"{where}.lengths")
            raise MetadataError(
                f"{where}: box offsets={tuple(offsets)} lengths={tuple(lengths)} lies outside shape {shape}"
            )
        numel *= n
    file = cd.get("file")
    name = files.get(file) if isinstance(file, str) else None
    if name is None:
        name = files[file] = _check_file(file, f"{where}.file")
    offset, length = cd.get("byte_offset"), cd.get("byte_length")
    if type(offset) is not int or type(length) is not int or offset < 0 or length < 0 or offset + length > INT64_MAX:
        _int(offset, f"{where}.byte_offset", 0, INT64_MAX)
        _int(length, f"{where}.byte_length", 0, INT64_MAX)
        raise MetadataError(f"{where}: byte_offset + byte_length = {offset + length} is beyond 2**63-1")
    if length != numel * size:
        raise MetadataError(f"{where}: byte_length {length} != {numel} elements x {size} bytes")
    hashes = cd.get("hashes")
    if type(hashes) is not list or len(hashes) != block_count(length, block_size) or not all(
        type(h) is str for h in hashes
    ):
        _expect(hashes, list, f"{where}.hashes")
        raise MetadataError(
            f"{where}: expected {block_count(length, block_size)} block hashes, found {len(hashes)}"
            + ("" if all(type(h) is str for h in hashes) else " (not all strings)")
        )
    return SavedChunk(ShardBox(tuple(offsets), tuple(lengths)), ChunkLocation(name, offset, length), tuple(hashes))


def _check_file(file: Any, where: str) -> str:
    """A data file name: relative, '/'-separated, no empty, '.' or '..' parts, no NUL, backslash or control characters."""
    if not isinstance(file, str) or not file:
        raise MetadataError(f"{where}: expected a non-empty string, found {_short(file)}")
    problem = None
    if len(file) > MAX_FILE_NAME:
        problem = f"is longer than {MAX_FILE_NAME} characters"
    elif _BAD_FILE_CHARS.search(file):
        problem = "holds a NUL, control character or backslash"
    elif file.startswith("/") or any(part in ("", ".", "..") for part in file.split("/")):
        problem = "must be a relative path inside the checkpoint (no '..', '.' or empty parts)"
    elif not _encodable(file):
        problem = "is not valid Unicode"
    if problem:
        raise MetadataError(f"{where}: file {_short(file)} {problem}")
    return file


def _parse_path(raw: Any, where: str) -> Path:
    path = raw if type(raw) is list else _expect(raw, list, f"{where}: path")
    if not path or len(path) > MAX_DEPTH:
        raise MetadataError(f"{where}: path must hold 1 to {MAX_DEPTH} keys, found {len(path)}")
    for key in path:
        if type(key) is str:
            if not key.isascii() and not _encodable(key):
                raise MetadataError(f"{where}: path key {_short(key)} is not valid Unicode")
        elif type(key) is not int or not -INT64_MAX <= key <= INT64_MAX:
            raise MetadataError(
                f"{where}: path must be a list of strings and 64-bit integers, found {_short(raw)}"
            )
    return tuple(path)


def _parse_value(raw: Any, where: str) -> ValueEntry:
    v = _expect(raw, dict, where)
    path = _parse_path(v.get("path"), where)
    value = v.get("value")
    if isinstance(value, (dict, list)) and nesting_depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise MetadataError(f"{where} ({_short(fqn_of(path), 200)}): value nested deeper than {MAX_DEPTH} levels")
    return ValueEntry(path, value)


def _check_paths(tensors: Sequence[TensorEntry], values: Sequence[ValueEntry], where: str) -> None:
    """Paths are unique, and no entry lies inside another (a leaf cannot also be a parent)."""
    kinds: dict[Path, str] = {}
    for kind, entries in (("tensor", tensors), ("value", values)):
        for entry in entries:
            if entry.path in kinds:
                raise MetadataError(f"{where}: key {_short(entry.fqn, 200)} appears twice")
            kinds[entry.path] = kind
    for path, kind in kinds.items():
        for i in range(1, len(path)):
            outer = kinds.get(path[:i])
            if outer is not None:
                raise MetadataError(
                    f"{where}: {kind} {_short(fqn_of(path), 200)} lies inside {outer} {_short(fqn_of(path[:i]), 200)}; an entry "
                    "cannot be both a leaf and a parent"
                )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (error messages quote untrusted input)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # too deep, or an integer beyond the digit limit
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def _cut(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise MetadataError(f"{where}: expected {kind.__name__}, found {type(value).__name__}")
    return value


def _int(value: Any, where: str, minimum: int, maximum: int = INT64_MAX) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise MetadataError(f"{where}: expected an integer from {minimum} to {maximum}, found {_short(value)}")
    return value


def _int_list(values: list, where: str) -> None:
    for value in values:
        _int(value, where, 0)
