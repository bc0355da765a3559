"""Keyword options of save and load, validated by name so a typo is an error, not a no-op."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .checksums import DEFAULT_BLOCK_SIZE
from .collectives import DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class _Options:
    """``storage_options``: keyword arguments for the storage backend (e.g. an S3 ``part_size``).
    ``step``: the training step, reported in events and metrics (not stored in the checkpoint)."""

    timeout: float = DEFAULT_TIMEOUT_S
    process_group: Any = None
    allow_pickle: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    step: int | None = None

    @classmethod
    def from_kwargs(cls, call: str, kwargs: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"{call}() got unknown option(s) {unknown}; known options: {sorted(known)}")
        opts = cls(**kwargs)
        if opts.timeout <= 0:
            raise ValueError(f"{call}(): timeout must be > 0 seconds, got {opts.timeout}")
        step = opts.step
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"{call}(): step must be a non-negative integer or None, got {opts.step!r}")
        return opts


@dataclass(frozen=True)
class SaveOptions(_Options):
    """``fsync``: make data and metadata durable before returning. ``block_size``: bytes per
    checksum block. ``layout``: a JSON-able description of the parallel layout, kept in the metadata.
    ``async_save``: return after the snapshot (see async_save.py). ``host_buffer_bytes``: the most
    host memory the snapshot may use per rank (None: as much as the rank writes; boxes beyond it
    are written from the live tensors before the call returns)."""

    fsync: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    layout: dict[str, Any] = field(default_factory=dict)
    async_save: bool = False
    host_buffer_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.block_size < 64 or self.block_size % 64:
            raise ValueError(f"save(): block_size must be a positive multiple of 64 bytes, got {self.block_size}")
        if self.host_buffer_bytes is not None and self.host_buffer_bytes < 0:
            raise ValueError(f"save(): host_buffer_bytes must be >= 0 or None, got {self.host_buffer_bytes}")


@dataclass(frozen=True)
class LoadOptions(_Options):
    """``read_threads``: parallel byte-range reads per rank. ``share_reads``: a saved chunk that
    several ranks need is read by one of them and broadcast to the others (shared_reads.py)."""

    read_threads: int = 4
    share_reads: bool = True
