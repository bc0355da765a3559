"""Local-disk storage: data files with fsync, metadata committed by temp file + fsync + rename."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ..errors import StorageError
from .base import DataWriter, Storage, read_fully


class LocalStorage(Storage):
    """A checkpoint directory on a POSIX filesystem."""

    atomic_rename = True
    exclusive_create = True

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.fsync = fsync

    def _path(self, name: str) -> Path:
        return self.root / name

    def child(self, name: str) -> LocalStorage:
        return LocalStorage(self._path(name.strip("/")), fsync=self.fsync)

    def open_writer(self, name: str) -> DataWriter:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _LocalWriter(path, self.fsync)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        with open(self._path(name), "rb", buffering=0) as f:
            return read_fully(f, offset, buffer)

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, name: str) -> None:
        """Remove ``name``, and its directory if that is now empty (objects, not directories, are
        what a checkpoint holds; an empty ``data/<save_id>/`` is garbage)."""
        path = self._path(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc
        if path.parent != self.root:
            try:
                path.parent.rmdir()
            except OSError:
                pass

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix.strip("/"))
        if base.is_file():
            self.delete(prefix)
            return 1
        count = len(self.list(prefix.strip("/")))
        shutil.rmtree(base, ignore_errors=True)
        return count

    def commit(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = None
        try:
            tmp = self._durable_temp(path, data)
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot commit {path}: {exc.strerror or exc}") from exc

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Write a temporary file, then hard-link it to ``name``: link(2) fails if ``name`` exists,
        and a reader never sees the file without its content (as with O_EXCL then write)."""
        path = self._path(name)
        tmp = None
        try:
            tmp = self._durable_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        return True

    def _durable_temp(self, path: Path, data: bytes) -> Path:
        """``data`` in a fresh temporary file beside ``path`` (fsync'd if configured)."""
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return tmp


class _LocalWriter:
    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()/abort()

    def write(self, data: memoryview) -> None:
        try:
            view = memoryview(data).cast("B")
            while view:
                n = self.file.write(view)
                view = view[n:]
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        try:
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish {self.path}: {exc.strerror or exc}") from exc

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        self.path.unlink(missing_ok=True)
        try:  # the save's own data/<save_id>/ directory, if nothing else is in it
            self.path.parent.rmdir()
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
