"""The public entry points: save, load, load_full, verify."""

from __future__ import annotations

import os
from typing import Any

from .frameworks import resolve_framework
from .loader import LoadSummary, VerifyReport, load_full_state, run_load, verify_checkpoint
from .options import LoadOptions, SaveOptions
from .saver import SaveSummary, run_save
from .storage import Storage, resolve_storage

CheckpointPath = str | os.PathLike[str] | Storage


def save(ckpt_path: CheckpointPath, checkpoint_state: dict, framework: str | None = None, **options: Any) -> SaveSummary:
    """Save ``checkpoint_state`` (a nested dict) to ``ckpt_path``; call it on every rank.

    ``framework`` ("ddp", "fsdp", "fsdp2") takes ``{"model": module, "optimizer": optim,
    "extra_state": {...}, "dataloader": loader}`` instead; with None the state is saved as it is.

    Values may be ``torch.Tensor`` (replicated on all ranks: written once), ``DTensor``,
    :class:`ShardedTensor`, :class:`FlatShard`, or plain Python data (taken from the lowest rank
    that has it). Options: ``fsync``, ``block_size``, ``layout``, ``timeout`` (seconds for the
    ranks' collectives), ``process_group``, ``allow_pickle``, ``storage_options`` (keyword
    arguments for the storage backend). The checkpoint becomes visible only
    when its metadata is committed, after every rank has written its data.
    """
    adapter = resolve_framework(framework)
    opts = SaveOptions.from_kwargs("save", options)
    storage = resolve_storage(ckpt_path, fsync=opts.fsync, **opts.storage_options)
    return run_save(storage, checkpoint_state, framework, opts, adapter)


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
    ``allow_pickle``, ``read_threads``, ``storage_options``. Call it on every rank.
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
