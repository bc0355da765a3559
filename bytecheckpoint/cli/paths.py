"""From a path on the command line to a checkpoint, with errors that say what the path is instead.

Local paths (relative ones included) and ``file://`` URLs are checked before anything else runs;
``s3://`` and other URLs go to their storage backend (bytecheckpoint.storage.resolve_storage).
"""

from __future__ import annotations

from pathlib import Path

from integrations.cli_style import BadInput

from ..errors import IncompleteCheckpointError
from ..loader import read_metadata
from ..manager import CheckpointManager
from ..metadata import CheckpointMetadata
from ..storage import Storage, resolve_storage

_FILE_HINTS = {
    ".safetensors": "a safetensors file: import it with 'bytecheckpoint import {path} DST --from safetensors'",
    ".pt": "a torch.save file? import it with 'bytecheckpoint import {path} DST --from torch'",
    ".pth": "a torch.save file? import it with 'bytecheckpoint import {path} DST --from torch'",
}


_HF_FILES = ("model.safetensors.index.json", "model.safetensors")


def local_path(path: str) -> Path | None:
    """The local filesystem path of ``path``, or None for a URL of another scheme."""
    if path.startswith("file://"):
        return Path(path[len("file://"):])
    return None if "://" in path else Path(path)


def open_storage(path: str) -> Storage:
    """The storage of an existing checkpoint location; BadInput for a missing local path or a file."""
    local = local_path(path)
    if local is not None:
        if not local.exists():
            raise BadInput(f"{path}: no such file or directory")
        if not local.is_dir():
            hint = _FILE_HINTS.get(local.suffix)
            raise BadInput(f"{path}: is a file, not a checkpoint directory"
                           + (f" ({hint.format(path=path)})" if hint else ""))
    return resolve_storage(path)


def new_storage(path: str) -> Storage:
    """The storage of a destination that a command will create; BadInput if a local file is in the way."""
    local = local_path(path)
    if local is not None and local.exists() and not local.is_dir():
        raise BadInput(f"{path}: is a file; the destination must be a new (or empty) directory")
    return resolve_storage(path)


def manager_steps(storage: Storage) -> tuple[list[int], list[int]]:
    """The complete and incomplete steps if ``storage`` is a CheckpointManager root (else two empty lists)."""
    manager = CheckpointManager(storage)
    return manager.steps(), manager.incomplete_steps()


def open_checkpoint(path: str) -> tuple[Storage, CheckpointMetadata]:
    """The storage and committed metadata of the checkpoint at ``path`` (ours or a PyTorch DCP one).

    Where there is none, the error says what the path holds instead: a CheckpointManager root or
    safetensors files."""
    storage = open_storage(path)
    try:
        return storage, read_metadata(storage)
    except IncompleteCheckpointError:
        complete, incomplete = manager_steps(storage)
        if complete or incomplete:
            raise BadInput(f"{path}: is a CheckpointManager root ({len(complete)} complete step(s)), not one "
                           f"checkpoint; list it with 'bytecheckpoint ls {path}' and pass a step folder") from None
        if any(storage.exists(name) for name in _HF_FILES):
            raise BadInput(f"{path}: holds safetensors files, not a bytecheckpoint checkpoint; import it with "
                           f"'bytecheckpoint import {path} DST --from hf-dir'") from None
        raise
