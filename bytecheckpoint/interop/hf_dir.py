"""A Hugging Face model directory: ``config.json`` plus ``model.safetensors``, or shards with
``model.safetensors.index.json``. Imported as ``{"model": {key: tensor}, "config": {...}}``, so
``bcp.load(path, {"model": module, "config": None})`` fills the matching model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..storage import Storage
from .errors import ConversionError
from .json_files import read_json_object
from .safetensors_format import INDEX_FILE, SINGLE_FILE, read_index, read_safetensors_file, read_sharded

CONFIG_FILE = "config.json"


def read_hf_dir(
    storage: Storage, progress: Callable[[int], None] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights (by their Hugging Face names) and the parsed config of a model directory."""
    config = read_json_object(storage, CONFIG_FILE, "not found; a Hugging Face model directory has one")
    if storage.exists(INDEX_FILE):
        tensors, _ = read_sharded(storage, read_index(storage, INDEX_FILE), storage.describe(INDEX_FILE), progress)
    elif storage.exists(SINGLE_FILE):
        tensors, _ = read_safetensors_file(storage, SINGLE_FILE)
        if progress:
            progress(sum(t.numel() * t.element_size() for t in tensors.values()))
    else:
        found = [n for n in storage.list() if "/" not in n][:10]
        raise ConversionError(
            f"{storage.url}: neither {INDEX_FILE} nor {SINGLE_FILE} is there (found {found}); only safetensors "
            "weights are read"
        )
    return tensors, config
