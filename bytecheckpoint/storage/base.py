"""The storage protocol: the few primitives the engine needs from a backend.

Names are '/'-separated paths relative to the checkpoint root. The call order of a save is:
``open_writer`` for each data file (written and closed), then ``commit`` of the metadata last;
a checkpoint is complete exactly when its committed metadata exists.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class DataWriter(Protocol):
    """A sequential writer of one data file."""

    def write(self, data: memoryview) -> None: ...

    def close(self) -> None:
        """Make the file durable (fsync or upload) and close it."""

    def abort(self) -> None:
        """Close without publishing; remove what was written if possible."""


class Storage(ABC):
    """A checkpoint location: a directory or an object-store prefix."""

    url: str

    @abstractmethod
    def open_writer(self, name: str) -> DataWriter: ...

    @abstractmethod
    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from ``offset`` of ``name``; return the bytes read (fewer at end of file)."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The whole object ``name``; raises FileNotFoundError if absent."""

    @abstractmethod
    def size(self, name: str) -> int: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Names under ``prefix`` (recursively), sorted."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; no error if it is already gone."""

    @abstractmethod
    def commit(self, name: str, data: bytes) -> None:
        """Publish ``data`` as ``name`` atomically and durably: readers see all of it or nothing."""

    def describe(self, name: str) -> str:
        """A human-readable location of ``name`` for error messages."""
        return f"{self.url.rstrip('/')}/{name}"
