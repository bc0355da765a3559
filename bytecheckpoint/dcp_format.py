"""PyTorch DCP checkpoints (``torch.distributed.checkpoint`` with its FileSystemWriter) read in place.

A DCP directory holds ``.metadata`` (a pickle of DCP's ``Metadata``) and ``__{rank}_{n}.distcp``
data files in which every tensor chunk, and every non-tensor value, is one ``torch.save`` blob at a
byte range. Reading one:

1. ``.metadata`` is unpickled by :class:`DCPUnpickler`, which builds only DCP's metadata dataclasses,
   ``torch.Size``, dtypes, layouts and paths, and refuses any other class by name (a crafted file
   cannot run code); ``allow_pickle=True`` unpickles it fully instead.
2. :func:`translate_metadata` turns it into a :class:`CheckpointMetadata`, checked like ours (files
   inside the checkpoint, boxes inside their tensor and tiling it, known dtypes, paths): tensor
   chunks point at their blobs, and values are read and re-encoded as plain values (blobs loaded
   with ``torch.load(weights_only=True)``; one that needs full unpickling is kept as a ``$pickle``
   marker, which the usual ``allow_pickle`` check refuses when it is asked for).
3. :func:`read_dcp_chunks` reads each needed blob once, loads it with ``weights_only=True``, checks
   shape and dtype, and copies the parts the load needs: the loader's plan (match, intersect) is the
   same as for our format, so any world size and layout can load it.

DCP stores no checksums: damage that still unpickles to a tensor of the right shape goes unnoticed,
and ``verify`` says so. Chunks written through DCP storage extensions (compression) or with
``serialization_format=SAFETENSORS`` are refused with an error naming the tensor.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .boxes import ShardBox, check_tiling
from .checksums import DEFAULT_BLOCK_SIZE
from .dtypes import dtype_name, itemsize
from .errors import (
    CheckpointError,
    CorruptCheckpointError,
    MetadataError,
    UnsupportedValueError,
)
from .limits import MAX_NDIM, MAX_TENSOR_BYTES
from .metadata import (
    CheckpointMetadata,
    ChunkLocation,
    SavedChunk,
    TensorEntry,
    ValueEntry,
    WriterInfo,
    _check_file,
    _check_paths,
    _parse_path,
)
from .reader import CopyItem, allocate, read_range_into, truncation_error
from .storage import Storage
from .values import encode_value

DCP_METADATA_FILE = ".metadata"
DCP_LIBRARY = "torch.distributed.checkpoint"
NO_CHECKSUMS = "none"
NO_CHECKSUMS_NOTE = (
    "no checksums in a DCP checkpoint: every chunk was read and decoded to a tensor of the recorded "
    "shape and dtype, but damaged values cannot be detected"
)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive
_DATA_FILE = re.compile(r"__(\d+)_\d+\.distcp$")

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED: dict[str, frozenset[str]] = {
    _DCP_METADATA: frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


class DCPUnpickler(pickle.Unpickler):
    """Builds DCP's metadata classes, ``torch.Size``, dtypes, layouts and paths; refuses the rest."""

    def __init__(self, file: io.BytesIO, where: str) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsupportedValueError(
            f"{self.where}: the DCP metadata refers to {module}.{name}, which is not one of DCP's metadata "
            "classes; it is refused, as unpickling it could run code (pass allow_pickle=True only if you "
            "trust the checkpoint's origin)"
        )


def unpickle_metadata(raw: bytes, where: str, allow_pickle: bool = False) -> Any:
    """DCP's ``Metadata`` object from the bytes of ``.metadata``."""
    try:
        if allow_pickle:
            return pickle.loads(raw)
        return DCPUnpickler(io.BytesIO(raw), where).load()
    except UnsupportedValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can raise nearly anything
        raise MetadataError(f"{where}: cannot read the DCP metadata ({type(exc).__name__}: {str(exc)[:200]})") from None


def is_dcp(metadata: CheckpointMetadata) -> bool:
    """Whether ``metadata`` was translated from a DCP checkpoint (its data is torch.save blobs)."""
    return metadata.writer.library == DCP_LIBRARY


def read_dcp_metadata(storage: Storage, raw: bytes, allow_pickle: bool = False) -> CheckpointMetadata:
    """The checkpoint metadata of the DCP checkpoint in ``storage`` whose ``.metadata`` holds ``raw``."""
    where = storage.describe(DCP_METADATA_FILE)
    md = unpickle_metadata(raw, where, allow_pickle)
    try:
        return translate_metadata(md, storage, where, allow_pickle)
    except CheckpointError:
        raise
    except (AttributeError, TypeError, ValueError) as exc:  # fields missing or of the wrong type
        raise MetadataError(f"{where}: malformed DCP metadata ({type(exc).__name__}: {str(exc)[:200]})") from None


def translate_metadata(md: Any, storage: Storage, where: str, allow_pickle: bool = False) -> CheckpointMetadata:
    """Check DCP's ``Metadata`` and express it as ours; values are read from their data files."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata

    if not isinstance(md, Metadata) or not isinstance(md.state_dict_metadata, dict):
        raise MetadataError(f"{where}: expected DCP Metadata, found {type(md).__name__}")
    locations = _locations(md.storage_data, where)
    mappings = md.planner_data if isinstance(md.planner_data, dict) else {}
    tensors: list[TensorEntry] = []
    values: list[ValueEntry] = []
    for fqn, entry in md.state_dict_metadata.items():
        if not isinstance(fqn, str):
            raise MetadataError(f"{where}: key {fqn!r} is not a string")
        path = _parse_path(list(mappings.get(fqn, (fqn,))), f"{where}: {fqn!r}")
        if isinstance(entry, TensorStorageMetadata):
            tensors.append(_tensor_entry(fqn, path, entry, locations, where))
        elif isinstance(entry, BytesStorageMetadata):
            loc = _location(locations, fqn, None, where)
            values.append(ValueEntry(path, _read_value(storage, loc, fqn, allow_pickle)))
        else:
            raise MetadataError(f"{where}: {fqn!r}: unknown storage metadata {type(entry).__name__}")
    _check_paths(tensors, values, where)
    ranks = [int(m.group(1)) for loc in locations.values() if (m := _DATA_FILE.search(loc.file))]
    writer = WriterInfo(DCP_LIBRARY, str(md.version or ""), None, max(ranks, default=0) + 1)
    return CheckpointMetadata(writer, DEFAULT_BLOCK_SIZE, tuple(tensors), tuple(values),
                              checksum_algorithm=NO_CHECKSUMS)


def _locations(storage_data: Any, where: str) -> dict[tuple[str, tuple[int, ...] | None], ChunkLocation]:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex

    if not isinstance(storage_data, dict):
        raise MetadataError(f"{where}: storage_data: expected a dict, found {type(storage_data).__name__}")
    out: dict[tuple[str, tuple[int, ...] | None], ChunkLocation] = {}
    for index, info in storage_data.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise MetadataError(f"{where}: storage_data: unexpected entry {type(index).__name__} -> {type(info).__name__}")
        what = f"{where}: storage of {index.fqn!r}"
        if getattr(info, "transform_descriptors", None):
            raise UnsupportedValueError(
                f"{what}: written through DCP storage extensions {list(info.transform_descriptors)} "
                "(e.g. compression), which this reader does not decode"
            )
        file = _check_file(info.relative_path, f"{what}.relative_path")
        if type(info.offset) is not int or type(info.length) is not int or info.offset < 0 or info.length < 0:
            raise MetadataError(f"{what}: byte range offset={info.offset!r} length={info.length!r} is not valid")
        offset = None if index.offset is None else tuple(int(o) for o in index.offset)
        out[(index.fqn, offset)] = ChunkLocation(file, info.offset, info.length)
    return out


def _location(locations: dict, fqn: str, offsets: tuple[int, ...] | None, where: str) -> ChunkLocation:
    try:
        return locations[(fqn, offsets)]
    except KeyError:
        at = "" if offsets is None else f" chunk at offsets {list(offsets)}"
        raise MetadataError(f"{where}: {fqn!r}{at} has no storage entry (no data file holds it)") from None


def _tensor_entry(fqn: str, path: tuple, entry: Any, locations: dict, where: str) -> TensorEntry:
    what = f"{where}: tensor {fqn!r}"
    dtype = getattr(entry.properties, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise MetadataError(f"{what}: dtype {dtype!r} is not a torch dtype")
    name = dtype_name(dtype, what)
    shape = _int_tuple(entry.size, f"{what}: size")
    if len(shape) > MAX_NDIM or itemsize(name) * _product(shape) >= MAX_TENSOR_BYTES:
        raise MetadataError(f"{what}: shape {list(shape)} is too large")
    chunks = []
    for i, chunk in enumerate(entry.chunks if isinstance(entry.chunks, list) else ()):
        offsets = _int_tuple(chunk.offsets, f"{what}: chunks[{i}].offsets")
        lengths = _int_tuple(chunk.sizes, f"{what}: chunks[{i}].sizes")
        box = ShardBox(offsets, lengths) if len(offsets) == len(lengths) else None
        if box is None or not box.fits_in(shape):
            raise MetadataError(f"{what}: chunk offsets={list(offsets)} sizes={list(lengths)} lies outside {list(shape)}")
        chunks.append(SavedChunk(box, _location(locations, fqn, offsets, where), ()))
    problem = check_tiling(shape, [c.box for c in chunks])
    if problem:
        raise MetadataError(f"{what}: the chunks do not tile the tensor of shape {list(shape)}: {problem}")
    return TensorEntry(path, name, shape, tuple(chunks))


def _int_tuple(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, (tuple, list)) or not all(type(n) is int and n >= 0 for n in raw):
        raise MetadataError(f"{where}: expected non-negative integers, found {str(raw)[:80]}")
    return tuple(raw)


def _product(shape: Sequence[int]) -> int:
    out = 1
    for n in shape:
        out *= n or 1
    return out


def _read_blob(storage: Storage, loc: ChunkLocation, what: str, fqn: str) -> bytes:
    buffer = allocate(loc.length, torch.uint8, f"the DCP blob of {what}")
    where = storage.describe(loc.file)
    got = read_range_into(storage, loc.file, loc.offset, buffer, what)
    if got < loc.length:
        raise truncation_error(storage, loc.file, loc.offset, loc.offset + loc.length, [fqn])
    blob = buffer.numpy().tobytes()
    if not blob.startswith(_ZIP_MAGIC):
        raise UnsupportedValueError(
            f"{where}: {what} at bytes {loc.offset}-{loc.offset + loc.length} is not a torch.save blob (written "
            "with serialization_format=SAFETENSORS? only DCP's default TORCH_SAVE format is read)"
        )
    return blob


def _read_value(storage: Storage, loc: ChunkLocation, fqn: str, allow_pickle: bool) -> Any:
    """A DCP value as our plain-value encoding; ``$pickle`` marks one that needs full unpickling."""
    blob = _read_blob(storage, loc, f"value {fqn!r}", fqn)
    try:
        value = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError:  # weights_only refused a class: decoding asks for allow_pickle
        return {"$pickle": ""}
    except Exception as exc:  # noqa: BLE001 - a damaged blob can raise nearly anything
        raise CorruptCheckpointError(
            f"{storage.describe(loc.file)}: value {fqn!r} at bytes {loc.offset}-{loc.offset + loc.length} cannot "
            f"be read ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    try:
        return encode_value(value, fqn, allow_pickle)
    except UnsupportedValueError:
        return {"$pickle": ""}


def load_chunk(storage: Storage, entry: TensorEntry, chunk: SavedChunk) -> torch.Tensor:
    """One saved chunk of a DCP tensor, checked against the chunk's shape and the tensor's dtype."""
    loc = chunk.location
    what = f"tensor {entry.fqn!r} (chunk offsets={list(chunk.box.offsets)})"
    blob = _read_blob(storage, loc, what, entry.fqn)
    where = f"{storage.describe(loc.file)}: {what} at bytes {loc.offset}-{loc.offset + loc.length}"
    try:
        tensor = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged blob can raise nearly anything
        raise CorruptCheckpointError(f"{where}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(tensor, torch.Tensor):
        raise CorruptCheckpointError(f"{where}: holds a {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != chunk.box.lengths or dtype_name(tensor.dtype, where) != entry.dtype:
        raise CorruptCheckpointError(
            f"{where}: holds a {dtype_name(tensor.dtype, where)} tensor of shape {list(tensor.shape)}, the metadata "
            f"says {entry.dtype} {list(chunk.box.lengths)}"
        )
    return tensor


def read_dcp_chunks(storage: Storage, items: Sequence[CopyItem], threads: int) -> int:
    """Read every saved chunk ``items`` copy from (each once, in parallel) and copy the parts into
    place; return the bytes read."""
    by_chunk: dict[ChunkLocation, list[CopyItem]] = {}
    for item in items:
        by_chunk.setdefault(item.chunk.location, []).append(item)

    def copy(group: list[CopyItem]) -> int:
        first = group[0]
        tensor = load_chunk(storage, first.entry, first.chunk)
        with torch.no_grad():
            for item in group:
                item.dest.copy_(tensor[item.overlap.relative_to(item.chunk.box)])
        return first.chunk.location.length

    groups = list(by_chunk.values())
    if len(groups) <= 1 or threads <= 1:
        return sum(copy(g) for g in groups)
    with ThreadPoolExecutor(max_workers=min(threads, len(groups)), thread_name_prefix="bcp-dcp-read") as pool:
        return sum(pool.map(copy, groups))


def check_dcp_chunks(storage: Storage, metadata: CheckpointMetadata) -> tuple[int, list[CorruptCheckpointError]]:
    """Read and decode every chunk (``verify`` of a DCP checkpoint); the bytes read and each problem."""
    nbytes, problems = 0, []
    for entry in metadata.tensors:
        for chunk in entry.chunks:
            try:
                load_chunk(storage, entry, chunk)
                nbytes += chunk.location.length
            except (CorruptCheckpointError, UnsupportedValueError) as exc:
                problems.append(exc if isinstance(exc, CorruptCheckpointError) else CorruptCheckpointError(str(exc)))
    return nbytes, problems
