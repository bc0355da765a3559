"""The storage protocol: the few primitives the engine needs from a backend.

Names are '/'-separated paths relative to the checkpoint root. The call order of a save is:
``open_writer`` for each data file (written and closed), then ``commit`` of the metadata last;
a checkpoint is complete exactly when its committed metadata exists. Readers never infer
completeness from ``list``.

A backend implements the abstract primitives; ``child``, ``list_dirs``, ``delete_prefix`` and
``create_exclusive`` have generic versions built on them that backends may replace with faster or
stronger ones. Capability flags say what a backend guarantees (see docs/FORMAT.md, "Commit per backend").
"""

from __future__ import annotations

import os
import re
import uuid
from abc import ABC, abstractmethod
from typing import BinaryIO, Protocol


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
    #: ``commit`` is a rename of a fully written temporary file (POSIX) rather than one whole-object put.
    atomic_rename: bool = False
    #: ``create_exclusive`` is atomic across processes (link(2) on POSIX, If-None-Match on S3, a locked dict).
    exclusive_create: bool = False

    @abstractmethod
    def open_writer(self, name: str) -> DataWriter: ...

    @abstractmethod
    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        """Fill ``buffer`` from ``offset`` of ``name``; return the bytes read (fewer at end of file)."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The whole object ``name``; raises FileNotFoundError if absent."""

    @abstractmethod
    def size(self, name: str) -> int:
        """Bytes in ``name``; raises FileNotFoundError if absent."""

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

    @abstractmethod
    def child(self, name: str) -> Storage:
        """The storage rooted at ``name`` below this one (same backend and settings)."""

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` unless it exists; True if this call created it.

        The generic version checks then writes, which two processes can race; backends with
        ``exclusive_create`` replace it with an atomic one.
        """
        if self.exists(name):
            return False
        self.commit(name, data)
        return True

    def list_dirs(self, prefix: str = "") -> list[str]:
        """The distinct first path components below ``prefix`` that hold at least one object, sorted."""
        base = prefix.strip("/")
        cut = len(base) + 1 if base else 0
        return sorted({name[cut:].split("/", 1)[0] for name in self.list(base) if "/" in name[cut:]})

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many were deleted."""
        names = self.list(prefix.strip("/"))
        for name in names:
            self.delete(name)
        return len(names)

    def describe(self, name: str) -> str:
        """A human-readable location of ``name`` for error messages."""
        return f"{self.url.rstrip('/')}/{name}"


_TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_name(final: str) -> str:
    """The name of a temporary file that becomes ``final`` (a rename or link), owned by this process."""
    return f".{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def temp_file_owner(name: str) -> int | None:
    """The process id that made the temporary file ``name`` (its last path component), or None if
    ``name`` is not one of our temporary files."""
    match = _TEMP_NAME.match(name.rsplit("/", 1)[-1])
    return int(match.group("pid")) if match else None


def join_name(prefix: str, name: str) -> str:
    """``prefix/name`` without doubled or leading slashes."""
    parts = [p for p in (prefix.strip("/"), name.strip("/")) if p]
    return "/".join(parts)


def read_fully(f: BinaryIO, offset: int, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``offset`` of an open file; return the bytes read (fewer at its end)."""
    f.seek(offset)
    total = 0
    while total < len(buffer):
        n = f.readinto(buffer[total:])
        if not n:
            break
        total += n
    return total
