"""Framework adapters, resolved lazily by name (as fsspec maps "s3" to s3fs), so the core needs no
framework installed.

An adapter turns a framework's objects (modules, optimizers, dataloaders) into a plain checkpoint
state of tensors, DTensors, ShardedTensor/FlatShard and plain values, and back. Load calls, on every
rank: ``load_targets(state, saved)`` -> the core fills the returned targets in place ->
``finish_load(state, targets)``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from .errors import CheckpointError
from .metadata import CheckpointMetadata, Path, TensorEntry
from .stateful import StatefulAdapter
from .values import decode_value

# name -> (module, class, what to install if the import fails)
ADAPTERS: dict[str, tuple[str, str, str]] = {
    "ddp": ("integrations.torch_frameworks", "DDPAdapter", "torch"),
    "fsdp": ("integrations.torch_frameworks", "FSDP1Adapter", "torch"),
    "fsdp2": ("integrations.torch_frameworks", "FSDP2Adapter", "torch"),
    "megatron": ("integrations.megatron.adapter", "MegatronAdapter", "megatron-core==0.16.1 (the [megatron] extra)"),
}


class SavedCheckpoint:
    """A read-only view of a checkpoint's metadata that adapters consult while planning a load."""

    def __init__(self, metadata: CheckpointMetadata, allow_pickle: bool = False) -> None:
        self.metadata = metadata
        self._values = {v.path: v for v in metadata.values}
        self._tensors = {t.path: t for t in metadata.tensors}
        self._allow_pickle = allow_pickle

    @property
    def world_size(self) -> int:
        return self.metadata.writer.world_size

    @property
    def framework(self) -> str | None:
        return self.metadata.writer.framework

    def has(self, path: Path) -> bool:
        return path in self._values or path in self._tensors

    def value(self, path: Path, default: Any = None) -> Any:
        entry = self._values.get(path)
        if entry is None:
            return default
        return decode_value(entry.encoded, entry.fqn, self._allow_pickle)

    def tensor(self, path: Path) -> TensorEntry | None:
        return self._tensors.get(path)

    def paths_under(self, prefix: Path) -> list[Path]:
        n = len(prefix)
        return [p for p in (*self._values, *self._tensors) if p[:n] == prefix]


class FrameworkAdapter(Protocol):
    def save_state(self, checkpoint_state: dict) -> dict:
        """The checkpoint state to save for ``checkpoint_state``."""

    def load_targets(self, checkpoint_state: dict, saved: SavedCheckpoint) -> dict:
        """The state to fill in place (views into the framework's objects)."""

    def finish_load(self, checkpoint_state: dict, targets: dict) -> None:
        """Apply what the core loaded into ``targets`` to the framework's objects."""


def resolve_framework(name: str | None) -> FrameworkAdapter:
    """The adapter for ``name``; None saves the state as it is, with Stateful objects as their state dict."""
    if name is None:
        return StatefulAdapter()
    if name not in ADAPTERS:
        raise ValueError(f"framework={name!r} is not known; known frameworks: {sorted(ADAPTERS)} or None")
    module_name, class_name, install = ADAPTERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(f"framework={name!r} needs {install} ({exc})") from exc
    return getattr(module, class_name)()
