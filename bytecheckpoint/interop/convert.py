"""``export_checkpoint`` and ``import_checkpoint``: a checkpoint to and from other formats.

Export reads the source whole (``load_full``: ours or a DCP checkpoint) in one process and writes
torch, safetensors (Hugging Face layout) or DCP. Import reads torch (``weights_only=True``),
safetensors, a Hugging Face directory or DCP, and writes through ``bcp.save`` (checksums, commit).
Call either from one process; memory holds the whole checkpoint once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

from ..api import load_full, save
from ..events import OperationEvents
from ..metadata import Path, fqn_of
from ..storage import resolve_storage
from .dcp import write_dcp
from .errors import ConversionError
from .hf_dir import read_hf_dir
from .keys import Renamer, leaves, nest
from .locations import file_location, require_empty
from .safetensors_format import (
    FlatTensor,
    read_index,
    read_safetensors_file,
    read_sharded,
    restore_layout,
    write_safetensors,
)
from .torch_file import read_torch_file, write_torch_file

Progress = Callable[[int], None]
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30


class ExportFormat(str, Enum):
    TORCH = "torch"
    SAFETENSORS = "safetensors"
    DCP = "dcp"


class ImportFormat(str, Enum):
    TORCH = "torch"
    SAFETENSORS = "safetensors"
    HF_DIR = "hf-dir"
    DCP = "dcp"


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did: entries converted, tensor bytes, the files written, and its duration."""

    src: str
    dst: str
    format: str
    tensors: int
    values: int
    bytes: int
    files: tuple[str, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": list(self.files)}


@dataclass(frozen=True)
class ExportReport(ConversionReport):
    """``format``: the format written."""


@dataclass(frozen=True)
class ImportReport(ConversionReport):
    """``format``: the format read."""


def export_checkpoint(
    src: str, dst: str, to: str, rename: Mapping[str, str] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: Progress | None = None,
) -> ExportReport:
    """Write the checkpoint at ``src`` (ours or DCP, any storage URL) to ``dst`` in format ``to``.

    - ``"torch"``: ``dst`` is one file, a nested dict of tensors and plain values that
      ``torch.load(dst, weights_only=True)`` reads.
    - ``"safetensors"``: ``dst`` is a new folder in the Hugging Face layout (``model.safetensors``, or
      shards of at most ``max_shard_bytes`` plus ``model.safetensors.index.json``); plain values and
      key nesting go into the first file's ``__metadata__`` as JSON (see safetensors_format.py).
    - ``"dcp"``: ``dst`` is a new folder that ``torch.distributed.checkpoint.load`` reads.

    ``rename`` maps key names (see keys.py); ``progress`` is called with bytes as they are written.
    """
    fmt = _choice(ExportFormat, to, "to")
    start = time.perf_counter()
    if max_shard_bytes <= 0:
        raise ConversionError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
    with OperationEvents("export", dst, 0) as events:
        with events.timed("load"):  # its own load_full operation counts the bytes read
            tensors, values = leaves(load_full(src), src)
        renamer = Renamer(rename)
        tensors = [(renamer.path(p), t) for p, t in tensors]
        values = [(renamer.path(p), v) for p, v in values]
        state = nest([*tensors, *values], f"{src} (renamed)")
        with events.timed("write") as write:
            files = _write_export(fmt, dst, state, tensors, values, max_shard_bytes, progress)
            write.bytes = _nbytes(tensors)
    return ExportReport(src, dst, fmt.value, len(tensors), len(values), _nbytes(tensors), tuple(files),
                        time.perf_counter() - start)


def _write_export(fmt: ExportFormat, dst: str, state: dict, tensors: list[tuple[Path, torch.Tensor]],
                  values: list[tuple[Path, Any]], max_shard_bytes: int, progress: Progress | None) -> list[str]:
    if fmt is ExportFormat.TORCH:
        storage, name = file_location(dst)
        if storage.exists(name):
            raise ConversionError(f"{storage.describe(name)}: already exists; choose a new path")
        size = write_torch_file(storage, name, state)
        if progress:
            progress(size)
        return [name]
    storage = resolve_storage(dst)
    if fmt is ExportFormat.SAFETENSORS:
        require_empty(storage, "safetensors")
        flat = [FlatTensor(fqn_of(p), p, t) for p, t in tensors]
        return write_safetensors(storage, flat, values, max_shard_bytes, progress)
    require_empty(storage, "DCP")
    return write_dcp(storage, state, progress)


def import_checkpoint(
    src: str, dst: str, from_: str, rename: Mapping[str, str] | None = None, progress: Progress | None = None,
) -> ImportReport:
    """Read ``src`` in format ``from_`` and save it as a checkpoint at ``dst`` (through ``bcp.save``).

    - ``"torch"``: one file holding a dict, read with ``torch.load(weights_only=True)`` only.
    - ``"safetensors"``: one ``.safetensors`` file, or an index ``.json`` with its shards; keys
      nest as an export from here recorded them, else they stay flat.
    - ``"hf-dir"``: a Hugging Face model folder; weights go under ``"model"`` and ``config.json``
      under ``"config"``, so ``bcp.load(dst, {"model": module, "config": None})`` fills the model.
    - ``"dcp"``: a PyTorch DCP checkpoint folder.

    ``rename`` maps key names as read (for hf-dir: ``model.<name>``) before they are saved.
    """
    fmt = _choice(ImportFormat, from_, "from_")
    start = time.perf_counter()
    with OperationEvents("import", dst, 0) as events:
        with events.timed("read") as read:
            tensors, values = _read_import(fmt, src, progress)
            read.bytes = _nbytes(tensors)
        renamer = Renamer(rename)
        tensors = [(renamer.path(p), t) for p, t in tensors]
        values = [(renamer.path(p), v) for p, v in values]
        with events.timed("save"):  # its own save operation counts the bytes written
            save(dst, nest([*tensors, *values], f"{src} (renamed)"))
    files = resolve_storage(dst).list()
    return ImportReport(src, dst, fmt.value, len(tensors), len(values), _nbytes(tensors), tuple(files),
                        time.perf_counter() - start)


def _read_import(fmt: ImportFormat, src: str, progress: Progress | None
                 ) -> tuple[list[tuple[Path, torch.Tensor]], list[tuple[Path, Any]]]:
    """The tensors and plain values of ``src`` in format ``fmt``, by key path."""
    if fmt is ImportFormat.TORCH:
        storage, name = file_location(src)
        tensors, values = leaves(read_torch_file(storage, name), storage.describe(name))
        if progress:
            progress(_nbytes(tensors))
        return tensors, values
    if fmt is ImportFormat.SAFETENSORS:
        storage, name = file_location(src)
        if name.endswith(".json"):
            flat, metas = read_sharded(storage, read_index(storage, name), storage.describe(name), progress)
        else:
            flat, meta = read_safetensors_file(storage, name)
            metas = [meta]
            if progress:
                progress(sum(t.numel() * t.element_size() for t in flat.values()))
        return restore_layout(flat, metas, storage.describe(name))
    if fmt is ImportFormat.HF_DIR:
        flat, config = read_hf_dir(resolve_storage(src), progress)
        return [(("model", key), t) for key, t in flat.items()], [(("config",), config)]
    tensors, values = leaves(load_full(src), src)
    if progress:
        progress(_nbytes(tensors))
    return tensors, values


def _choice(enum: type[Enum], value: str | Enum, arg: str) -> Any:
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(repr(e.value) for e in enum)
        raise ConversionError(f"{arg}={value!r} is not a known format; choose one of {choices}") from None


def _nbytes(tensors: list[tuple[Path, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for _, t in tensors)
