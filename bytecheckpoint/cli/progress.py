"""Progress bars with throughput for long commands, on stderr (shown only when stderr is a terminal)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from integrations.cli_style import stderr_console

from ..storage import DataWriter, Storage

#: called with a number of bytes just moved
Advance = Callable[[int], None]


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Advance]:
    """A bar counting bytes towards ``total`` (None: unknown); yields ``advance(nbytes)``."""
    console = stderr_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda nbytes: bar.advance(task, nbytes)


class ObservedStorage(Storage):
    """``inner`` with every byte read (``read_into``, ``read``) and written reported to ``on_bytes``."""

    def __init__(self, inner: Storage, on_bytes: Advance) -> None:
        self.inner, self.on_bytes = inner, on_bytes
        self.url = inner.url
        self.atomic_rename, self.exclusive_create = inner.atomic_rename, inner.exclusive_create

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        got = self.inner.read_into(name, offset, buffer)
        self.on_bytes(got)
        return got

    def read(self, name: str) -> bytes:
        data = self.inner.read(name)
        self.on_bytes(len(data))
        return data

    def open_writer(self, name: str) -> DataWriter:
        return _ObservedWriter(self.inner.open_writer(name), self.on_bytes)

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def commit(self, name: str, data: bytes) -> None:
        self.inner.commit(name, data)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        return self.inner.create_exclusive(name, data)

    def child(self, name: str) -> Storage:
        return ObservedStorage(self.inner.child(name), self.on_bytes)

    def list_dirs(self, prefix: str = "") -> list[str]:
        return self.inner.list_dirs(prefix)

    def delete_prefix(self, prefix: str) -> int:
        return self.inner.delete_prefix(prefix)

    def describe(self, name: str) -> str:
        return self.inner.describe(name)


class _ObservedWriter:
    def __init__(self, inner: DataWriter, on_bytes: Advance) -> None:
        self.inner, self.on_bytes = inner, on_bytes

    def write(self, data: memoryview) -> None:
        self.inner.write(data)
        self.on_bytes(len(data))

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()
