"""Keyword options of save and load, validated by name so a typo is an error, not a no-op."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .checksums import DEFAULT_BLOCK_SIZE
from .collectives import DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class _Options:
    """``storage_options``: keyword arguments for the storage backend (e.g. an S3 ``part_size``)."""

    timeout: float = DEFAULT_TIMEOUT_S
    process_group: Any = None
    allow_pickle: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, call: str, kwargs: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"{call}() got unknown option(s) {unknown}; known options: {sorted(known)}")
        opts = cls(**kwargs)
        if opts.timeout <= 0:
            raise ValueError(f"{call}(): timeout must be > 0 seconds, got {opts.timeout}")
        return opts


@dataclass(frozen=True)
class SaveOptions(_Options):
    """``fsync``: make data and metadata durable before returning. ``block_size``: bytes per
    checksum block. ``layout``: a JSON-able description of the parallel layout, kept in the metadata."""

    fsync: bool = True
    block_size: int = DEFAULT_BLOCK_SIZE
    layout: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.block_size < 64 or self.block_size % 64:
            raise ValueError(f"save(): block_size must be a positive multiple of 64 bytes, got {self.block_size}")


@dataclass(frozen=True)
class LoadOptions(_Options):
    """``read_threads``: parallel byte-range reads per rank."""

    read_threads: int = 4
