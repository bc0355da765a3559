"""The checkpoint's metadata: frozen dataclasses, versioned, parsed and validated on read.

The JSON layout is specified in docs/FORMAT.md. Nothing here executes code from the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .boxes import ShardBox
from .dtypes import itemsize, torch_dtype
from .errors import ChecksumMismatchError, MetadataError, UnsupportedVersionError

FORMAT_NAME = "bytecheckpoint"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
CHECKSUM_ALGORITHM = "xxh3_64"
METADATA_CHECKSUM_KEY = "metadata_checksum"

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
        doc = self.to_dict()
        doc[METADATA_CHECKSUM_KEY] = metadata_checksum(doc)
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> CheckpointMetadata:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MetadataError(f"{where}: metadata is not valid JSON ({exc})") from None
        _check_format_and_version(doc, where)  # first: another version may checksum differently
        if METADATA_CHECKSUM_KEY in doc:
            recorded = doc.pop(METADATA_CHECKSUM_KEY)
            actual = metadata_checksum(doc)
            if recorded != actual:
                raise ChecksumMismatchError(
                    f"{where}: metadata checksum mismatch (xxh3 {actual}, recorded {recorded!r}): the metadata "
                    "file was altered or damaged after it was written"
                )
        return cls.from_dict(doc, where)

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> CheckpointMetadata:
        """Parse and validate a metadata document; every problem names ``where`` and the field."""
        d = _check_format_and_version(doc, where)
        version = d["version"]
        w = _expect(d.get("writer"), dict, f"{where}: writer")
        writer = WriterInfo(
            library=str(w.get("library", "")),
            library_version=str(w.get("library_version", "")),
            framework=w.get("framework"),
            world_size=_int(w.get("world_size"), f"{where}: writer.world_size", minimum=1),
            layout=_expect(w.get("layout", {}), dict, f"{where}: writer.layout"),
        )
        c = _expect(d.get("checksum"), dict, f"{where}: checksum")
        if c.get("algorithm") != CHECKSUM_ALGORITHM:
            raise MetadataError(f"{where}: unknown checksum algorithm {c.get('algorithm')!r}")
        block_size = _int(c.get("block_size"), f"{where}: checksum.block_size", minimum=1)
        tensors = tuple(
            _parse_tensor(t, f"{where}: tensors[{i}]", block_size)
            for i, t in enumerate(_expect(d.get("tensors"), list, f"{where}: tensors"))
        )
        values = tuple(
            ValueEntry(_parse_path(_expect(v, dict, f"{where}: values[{i}]").get("path"), f"{where}: values[{i}]"),
                       v.get("value"))
            for i, v in enumerate(_expect(d.get("values"), list, f"{where}: values"))
        )
        seen: set[Path] = set()
        for entry in (*tensors, *values):
            if entry.path in seen:
                raise MetadataError(f"{where}: key {entry.fqn!r} appears twice")
            seen.add(entry.path)
        return cls(writer=writer, block_size=block_size, tensors=tensors, values=values, version=version)


def _check_format_and_version(doc: Any, where: str) -> dict[str, Any]:
    d = _expect(doc, dict, where)
    if d.get("format") != FORMAT_NAME:
        raise MetadataError(f"{where}: not a bytecheckpoint metadata file (format={d.get('format')!r})")
    if d.get("version") != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"{where}: format version {d.get('version')!r} is not supported (this library reads version "
            f"{FORMAT_VERSION}); upgrade bytecheckpoint to read it"
        )
    return d


def metadata_checksum(doc: dict[str, Any]) -> str:
    """xxh3-64 (hex) of ``doc`` as canonical JSON: keys sorted, no spaces, ASCII only."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return xxhash.xxh3_64_hexdigest(canonical.encode())


def block_count(byte_length: int, block_size: int) -> int:
    return math.ceil(byte_length / block_size)


def _parse_tensor(doc: Any, where: str, block_size: int) -> TensorEntry:
    t = _expect(doc, dict, where)
    path = _parse_path(t.get("path"), where)
    where = f"{where} ({fqn_of(path)!r})"
    dtype = t.get("dtype")
    torch_dtype(dtype if isinstance(dtype, str) else repr(dtype), where)
    shape = tuple(_int(n, f"{where}: shape", minimum=0) for n in _expect(t.get("shape"), list, f"{where}: shape"))
    size = itemsize(dtype)
    chunks = []
    for j, cd in enumerate(_expect(t.get("chunks"), list, f"{where}: chunks")):
        cw = f"{where}: chunks[{j}]"
        cd = _expect(cd, dict, cw)
        offsets = tuple(_int(n, f"{cw}.offsets", 0) for n in _expect(cd.get("offsets"), list, f"{cw}.offsets"))
        lengths = tuple(_int(n, f"{cw}.lengths", 0) for n in _expect(cd.get("lengths"), list, f"{cw}.lengths"))
        if len(offsets) != len(shape) or len(lengths) != len(shape):
            raise MetadataError(f"{cw}: box has rank {len(offsets)}/{len(lengths)}, tensor has rank {len(shape)}")
        box = ShardBox(offsets, lengths)
        if not box.fits_in(shape):
            raise MetadataError(f"{cw}: box offsets={offsets} lengths={lengths} lies outside shape {shape}")
        file = cd.get("file")
        if not isinstance(file, str) or not file or file.startswith("/") or ".." in file.split("/"):
            raise MetadataError(f"{cw}: file {file!r} must be a relative path inside the checkpoint")
        loc = ChunkLocation(file, _int(cd.get("byte_offset"), f"{cw}.byte_offset", 0),
                            _int(cd.get("byte_length"), f"{cw}.byte_length", 0))
        if loc.length != box.numel * size:
            raise MetadataError(f"{cw}: byte_length {loc.length} != {box.numel} elements x {size} bytes")
        hashes = tuple(_expect(cd.get("hashes"), list, f"{cw}.hashes"))
        if len(hashes) != block_count(loc.length, block_size) or not all(isinstance(h, str) for h in hashes):
            raise MetadataError(
                f"{cw}: expected {block_count(loc.length, block_size)} block hashes, found {len(hashes)}"
            )
        chunks.append(SavedChunk(box, loc, hashes))
    return TensorEntry(path, dtype, shape, tuple(chunks))


def _parse_path(raw: Any, where: str) -> Path:
    path = _expect(raw, list, f"{where}: path")
    if not path or not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in path):
        raise MetadataError(f"{where}: path must be a non-empty list of strings and integers, found {raw!r}")
    return tuple(path)


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise MetadataError(f"{where}: expected {kind.__name__}, found {type(value).__name__}")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MetadataError(f"{where}: expected an integer >= {minimum}, found {value!r}")
    return value
