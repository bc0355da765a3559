"""Any fsspec filesystem as checkpoint storage (``memory://``, ``file://``, ``gcs://``, ...).

Reads on a local filesystem go through LocalStorage, which opens only regular files inside the
checkpoint (no links followed, no FIFOs or devices). Commit: on a local filesystem, a temporary file
renamed over the metadata (as LocalStorage); on
every other filesystem one whole-object write of the metadata, issued after every data file was
closed. A filesystem whose single-file write is not atomic for readers (some network mounts)
should be used through LocalStorage on a POSIX mount instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from ..errors import ObjectNotFoundError, StorageError
from .base import DataWriter, Storage
from .local import LocalStorage

log = logging.getLogger(__name__)
T = TypeVar("T")


class FsspecStorage(Storage):
    """A checkpoint under ``url`` on the fsspec filesystem its protocol names."""

    def __init__(self, url: str, *, fsync: bool = True, fs: fsspec.AbstractFileSystem | None = None,
                 **storage_options: Any) -> None:
        if fs is None:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        else:
            root = fs._strip_protocol(url)
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        self.fsync = fsync
        self.is_local = isinstance(fs, LocalFileSystem)
        self.atomic_rename = self.is_local
        self.exclusive_create = self.is_local
        # on a local filesystem, commit and exclusive create go through the POSIX path (rename, link)
        self._posix = LocalStorage(self.root, fsync=fsync) if self.is_local else None

    def _path(self, name: str) -> str:
        return f"{self.root}/{name.strip('/')}" if name.strip("/") else self.root

    def child(self, name: str) -> FsspecStorage:
        return FsspecStorage(f"{self.url}/{name.strip('/')}", fsync=self.fsync, fs=self.fs)

    def _fail(self, op: str, name: str, exc: BaseException) -> StorageError:
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError(f"{self.describe(name)}: not found ({op})")
        return StorageError(f"{op} {self.describe(name)} failed: {type(exc).__name__}: {exc}")

    def _local(self, op: str, name: str, call: Callable[[LocalStorage], T]) -> T:
        """A read through the POSIX path; a missing file is ObjectNotFoundError, as on other stores."""
        assert self._posix is not None
        try:
            return call(self._posix)
        except FileNotFoundError as exc:
            raise self._fail(op, name, exc) from exc

    def open_writer(self, name: str) -> DataWriter:
        path = self._path(name)
        try:
            if self.is_local:
                self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            return _FsspecWriter(self, name, self.fs.open(path, "wb"))
        except Exception as exc:
            raise self._fail("open for writing", name, exc) from exc

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        if not len(buffer):
            return 0
        if self._posix is not None:  # straight into the buffer, regular files inside the root only
            return self._local("read", name, lambda p: p.read_into(name, offset, buffer))
        try:
            data = self.fs.cat_file(self._path(name), start=offset, end=offset + len(buffer))
        except Exception as exc:
            # some filesystems refuse a range that starts at or past the end (HTTP 416)
            if not isinstance(exc, FileNotFoundError) and offset >= self.size(name):
                return 0
            raise self._fail("read", name, exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def read(self, name: str) -> bytes:
        if self._posix is not None:
            return self._local("read", name, lambda p: p.read(name))
        try:
            return self.fs.cat_file(self._path(name))
        except Exception as exc:
            raise self._fail("read", name, exc) from exc

    def size(self, name: str) -> int:
        if self._posix is not None:
            return self._local("size of", name, lambda p: p.size(name))
        try:
            return int(self.fs.size(self._path(name)))
        except Exception as exc:
            raise self._fail("size of", name, exc) from exc

    def exists(self, name: str) -> bool:
        if self._posix is not None:
            return self._local("exists", name, lambda p: p.exists(name))
        try:
            return bool(self.fs.isfile(self._path(name)))
        except Exception as exc:
            raise self._fail("exists", name, exc) from exc

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        root = self.fs._strip_protocol(self.root).rstrip("/")
        return sorted(p[len(root) + 1:] for p in (self.fs._strip_protocol(f) for f in found)
                      if p.startswith(root + "/"))

    def delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("delete", name, exc) from exc

    def commit(self, name: str, data: bytes) -> None:
        if self._posix is not None:
            self._posix.commit(name, data)
            return
        try:
            self.fs.pipe_file(self._path(name), bytes(data))
        except Exception as exc:
            raise self._fail("commit", name, exc) from exc

    def create_exclusive(self, name: str, data: bytes) -> bool:
        if self._posix is not None:
            return self._posix.create_exclusive(name, data)
        return super().create_exclusive(name, data)

    def describe(self, name: str) -> str:
        return f"{self.url}/{name.strip('/')}" if name.strip("/") else self.url


class _FsspecWriter:
    def __init__(self, storage: FsspecStorage, name: str, file: Any) -> None:
        self.storage, self.name, self.file = storage, name, file

    def write(self, data: memoryview) -> None:
        try:
            self.file.write(memoryview(data).cast("B"))
        except Exception as exc:
            raise self.storage._fail("write", self.name, exc) from exc

    def close(self) -> None:
        try:
            if self.storage.is_local and self.storage.fsync:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
        except Exception as exc:
            self.abort()
            raise self.storage._fail("finish", self.name, exc) from exc

    def abort(self) -> None:
        try:
            discard = None if self.storage.is_local else getattr(self.file, "discard", None)
            if discard is not None:
                discard()  # e.g. aborts a multipart upload instead of publishing a partial object
                if isinstance(self.file, AbstractBufferedFile):
                    self.file.closed = True  # or its __del__ would try to publish the buffer
            else:
                self.file.close()
        except Exception as exc:  # noqa: BLE001 - best effort: the write already failed
            log.debug("closing the failed writer of %s: %s", self.storage.describe(self.name), exc)
        try:
            self.storage.delete(self.name)
        except StorageError as exc:
            log.warning("could not remove the partial %s: %s", self.storage.describe(self.name), exc)

