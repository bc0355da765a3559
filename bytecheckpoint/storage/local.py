"""Local-disk storage: data files with fsync, metadata committed by temp file + fsync + rename."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StorageError
from .base import DataWriter, Storage


class LocalStorage(Storage):
    """A checkpoint directory on a POSIX filesystem."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.fsync = fsync

    def _path(self, name: str) -> Path:
        return self.root / name

    def open_writer(self, name: str) -> DataWriter:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _LocalWriter(path, self.fsync)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        with open(self._path(name), "rb", buffering=0) as f:
            f.seek(offset)
            total = 0
            while total < len(buffer):
                n = f.readinto(buffer[total:])
                if not n:
                    break
                total += n
            return total

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def commit(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot commit {path}: {exc.strerror or exc}") from exc


class _LocalWriter:
    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        self.file = open(path, "wb", buffering=0)

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
        self.file.close()
        self.path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
