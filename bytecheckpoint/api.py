"""The public entry points: save, load, load_full, verify."""

from __future__ import annotations

import os
from typing import Any

from .async_save import AsyncSave
from .frameworks import resolve_framework
from .loader import LoadSummary, VerifyReport, load_full_state, run_load, verify_checkpoint
from .options import LoadOptions, SaveOptions
from .saver import OnFinish, SaveSummary, run_save
from .storage import Storage, resolve_storage

CheckpointPath = str | os.PathLike[str] | Storage


def save(
    ckpt_path: CheckpointPath, checkpoint_state: dict, framework: str | None = None, **options: Any
) -> SaveSummary | AsyncSave:
    """Save ``checkpoint_state`` (a nested dict) to ``ckpt_path``; call it on every rank.

    ``framework`` ("ddp", "fsdp", "fsdp2") takes ``{"model": module, "optimizer": optim,
    "extra_state": {...}, "dataloader": loader}`` instead; with None the state is saved as it is.

    Values may be ``torch.Tensor`` (replicated on all ranks: written once), ``DTensor``,
    :class:`ShardedTensor`, :class:`FlatShard`, or plain Python data (taken from the lowest rank
    that has it). Options: ``fsync``, ``block_size``, ``layout``, ``timeout`` (seconds for the
    ranks' collectives), ``process_group``, ``allow_pickle``, ``storage_options`` (keyword
    arguments for the storage backend), ``step`` (the training step, for events and metrics:
    docs/metrics.md). The checkpoint becomes visible only
    when its metadata is committed, after every rank has written its data.

    ``async_save=True`` returns an :class:`AsyncSave` as soon as this rank's share is copied to
    host memory (the copies are done: tensors may be modified at once); writing and the commit
    go on in the background, and ``handle.wait()`` returns the SaveSummary or raises the save's
    error (the same on every rank). ``host_buffer_bytes`` caps the host memory of that copy. A
    save or load started while an async save is in flight waits for it first.
    """
    return start_save(ckpt_path, checkpoint_state, framework, options)


def start_save(
    ckpt_path: CheckpointPath, checkpoint_state: dict, framework: str | None, options: dict[str, Any],
    on_finish: OnFinish | None = None,
) -> SaveSummary | AsyncSave:
    """``save`` with a hook that runs on every rank when the save is over (for CheckpointManager)."""
    adapter = resolve_framework(framework)
    opts = SaveOptions.from_kwargs("save", options)
    storage = resolve_storage(ckpt_path, fsync=opts.fsync, **opts.storage_options)
    return run_save(storage, checkpoint_state, framework, opts, adapter, on_finish)


def load(
    ckpt_path: CheckpointPath,
    checkpoint_state: dict,
    framework: str | None = None,
    strict: bool = True,
    **options: Any,
) -> LoadSummary:
    """Fill ``checkpoint_state`` from ``ckpt_path`` in place, whatever layout either side has.

    Tensors are filled in place; plain values (and tensors asked for with a non-tensor
    placeholder such as None) are put into the dict. ``strict`` makes missing and unexpected keys
    errors; shape and dtype mismatches always are. Options: ``timeout``, ``process_group``,
    ``allow_pickle``, ``read_threads``, ``storage_options``, ``step``. Call it on every rank.
    """
    adapter = resolve_framework(framework)
    opts = LoadOptions.from_kwargs("load", options)
    return run_load(resolve_storage(ckpt_path, **opts.storage_options), checkpoint_state, strict, opts, adapter)


def load_full(ckpt_path: CheckpointPath, allow_pickle: bool = False) -> dict:
    """Every tensor whole and every plain value, nested as saved; one process, no process group."""
    return load_full_state(resolve_storage(ckpt_path), allow_pickle)


def verify(ckpt_path: CheckpointPath) -> VerifyReport:
    """Check every stored byte against its checksum; raises CorruptCheckpointError naming file and tensor."""
    return verify_checkpoint(resolve_storage(ckpt_path))
