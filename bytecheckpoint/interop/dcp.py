"""Export to PyTorch DCP: a directory written by ``torch.distributed.checkpoint.save`` in this process.

(Reading DCP checkpoints needs no conversion: ``bcp.load``/``load_full`` read them in place, see
bytecheckpoint/dcp_format.py.) Non-local destinations are written to a temporary folder first and
uploaded, data files before ``.metadata``, so the checkpoint appears complete or not at all.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from ..dcp_format import DCP_METADATA_FILE
from ..storage import LocalStorage, Storage


def write_dcp(storage: Storage, state: dict, progress: Callable[[int], None] | None = None) -> list[str]:
    """Save ``state`` (nested dicts of tensors and plain values) as a DCP checkpoint; the files written."""
    if isinstance(storage, LocalStorage):
        _save(state, storage.root)
        files = sorted(os.listdir(storage.root))
        if progress:
            progress(sum(os.path.getsize(storage.root / f) for f in files))
        return files
    with tempfile.TemporaryDirectory(prefix="bcp-dcp-export-") as tmp:
        _save(state, Path(tmp))
        files = sorted(os.listdir(tmp), key=lambda f: (f == DCP_METADATA_FILE, f))
        for name in files:
            with open(os.path.join(tmp, name), "rb") as f:
                data = f.read()
            storage.commit(name, data)
            if progress:
                progress(len(data))
    return files


def _save(state: dict, folder: Path) -> None:
    from torch.distributed.checkpoint import FileSystemWriter, save

    with warnings.catch_warnings():  # DCP warns that no process group means one process: intended here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        save(state, storage_writer=FileSystemWriter(folder), no_dist=True)
