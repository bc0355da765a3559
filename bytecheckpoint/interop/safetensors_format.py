"""safetensors in the Hugging Face layout: ``model.safetensors``, or ``model-0000i-of-0000N.safetensors``
shards plus ``model.safetensors.index.json`` (``{"metadata": {"total_size": ...}, "weight_map":
{key: file}}``) when the tensors exceed one shard.

Keys are flat strings (a tensor's name after renaming). What a flat file cannot say is kept in each
file's ``__metadata__`` (string values only) under ``"bytecheckpoint"``, as JSON: ``{"paths": {key:
[path...]}}`` for keys whose nesting differs from one element, and in the first file ``"values":
[{"path": [...], "value": <tagged JSON, see values.py>}]`` for the plain values. An import reads
them back, so an export imports with the same keys; files without it import as flat keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..metadata import Path, fqn_of
from ..storage import Storage
from ..values import decode_value, encode_value
from .errors import ConversionError
from .json_files import read_json_object

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
META_KEY = "bytecheckpoint"
_MAX_HEADER = 100 << 20  # safetensors' own bound on the JSON header


@dataclass(frozen=True)
class FlatTensor:
    key: str
    path: Path
    tensor: torch.Tensor


def shard_name(index: int, count: int) -> str:
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(tensors: Sequence[FlatTensor], max_shard_bytes: int) -> list[list[FlatTensor]]:
    """Tensors in order, a new shard whenever the next one would pass ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own)."""
    shards: list[list[FlatTensor]] = [[]]
    size = 0
    for t in tensors:
        nbytes = t.tensor.numel() * t.tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def write_safetensors(
    storage: Storage, tensors: Sequence[FlatTensor], values: Sequence[tuple[Path, Any]], max_shard_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Write the shards, then the index (last, so a reader never sees an index without its files)."""
    from safetensors.torch import save

    shards = plan_shards(tensors, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else [shard_name(i, len(shards)) for i in range(len(shards))]
    encoded = [{"path": list(p), "value": encode_value(v, fqn_of(p))} for p, v in values]
    for i, (name, shard) in enumerate(zip(names, shards)):
        extra: dict[str, Any] = {"paths": {t.key: list(t.path) for t in shard if t.path != (t.key,)}}
        if i == 0:
            extra["values"] = encoded
        flat = {t.key: t.tensor.contiguous() for t in shard}
        try:
            data = save(flat, metadata={"format": "pt", META_KEY: json.dumps(extra)})
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ConversionError(f"{storage.describe(name)}: {_culprit(flat)} ({type(exc).__name__}: {exc})") from None
        storage.commit(name, data)
        if progress:
            progress(len(data))
    if len(shards) > 1:
        weight_map = {t.key: name for name, shard in zip(names, shards) for t in shard}
        total = sum(t.tensor.numel() * t.tensor.element_size() for t in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        storage.commit(INDEX_FILE, json.dumps(index, indent=2).encode())
        names.append(INDEX_FILE)
    return names


def _culprit(flat: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save

    for key, tensor in flat.items():
        try:
            save({key: tensor})
        except Exception:  # noqa: BLE001 - the first tensor safetensors refuses is the one to name
            return f"tensor {key!r} ({tensor.dtype}, shape {list(tensor.shape)}) cannot be stored in safetensors"
    return "the tensors cannot be stored in safetensors"


def read_safetensors_file(storage: Storage, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of one safetensors file and its ``__metadata__``."""
    from safetensors.torch import load

    where = storage.describe(name)
    try:
        data = storage.read(name)
    except FileNotFoundError:
        raise ConversionError(f"{where}: no such file") from None
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header_len <= min(_MAX_HEADER, len(data) - 8):
        raise ConversionError(f"{where}: not a safetensors file (header length {header_len}, file of {len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail in the JSON or in safetensors
        raise ConversionError(f"{where}: not a valid safetensors file ({type(exc).__name__}: {str(exc)[:200]})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, meta if isinstance(meta, dict) else {}


def read_index(storage: Storage, name: str) -> dict[str, str]:
    """``weight_map`` of a safetensors index: key -> shard file name (in the index's folder)."""
    where = storage.describe(name)
    weight_map = read_json_object(storage, name).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise ConversionError(f"{where}: expected a 'weight_map' object of key -> file name")
    for file in set(weight_map.values()):
        if "/" in file or file in ("", ".", ".."):
            raise ConversionError(f"{where}: weight_map names {file!r}, not a file beside the index")
    return weight_map


def read_sharded(storage: Storage, weight_map: dict[str, str], where: str,
                 progress: Callable[[int], None] | None = None) -> tuple[dict[str, torch.Tensor], list[dict[str, str]]]:
    """Every tensor the index names, each from its shard (which must hold it); and each shard's metadata."""
    tensors: dict[str, torch.Tensor] = {}
    metas = []
    for file in sorted(set(weight_map.values())):
        shard, meta = read_safetensors_file(storage, file)
        wanted = [k for k, f in weight_map.items() if f == file]
        missing = [k for k in wanted if k not in shard]
        if missing:
            raise ConversionError(f"{storage.describe(file)}: {where} maps key {missing[0]!r} to this file, which lacks it")
        tensors.update((k, shard[k]) for k in wanted)
        metas.append(meta)
        if progress:
            progress(sum(t.numel() * t.element_size() for t in shard.values()))
    return tensors, metas


def restore_layout(tensors: dict[str, torch.Tensor], metas: Sequence[dict[str, str]],
                   where: str) -> tuple[list[tuple[Path, torch.Tensor]], list[tuple[Path, Any]]]:
    """Paths and plain values from the ``bytecheckpoint`` metadata that an export wrote (if any)."""
    paths: dict[str, Path] = {}
    values: list[tuple[Path, Any]] = []
    for meta in metas:
        if META_KEY not in meta:
            continue
        try:
            doc = json.loads(meta[META_KEY])
            paths.update((k, _path(p, where)) for k, p in doc.get("paths", {}).items())
            values += [(_path(v["path"], where), decode_value(v["value"], f"{where}: value")) for v in doc.get("values", [])]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConversionError(f"{where}: malformed {META_KEY!r} metadata ({type(exc).__name__}: {exc})") from None
    return [(paths.get(k, (k,)), t) for k, t in tensors.items()], values


def _path(raw: Any, where: str) -> Path:
    if not isinstance(raw, list) or not raw or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in raw):
        raise ConversionError(f"{where}: {META_KEY!r} metadata holds a bad key path {str(raw)[:80]}")
    return tuple(raw)
