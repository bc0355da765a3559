"""Local-disk storage: data files with fsync, metadata committed by temp file + fsync + rename.

Reads open only regular files inside the checkpoint: every name is resolved component by component
below the root without following symbolic links (``O_NOFOLLOW``), and what is opened must be a
regular file (no FIFO, device or directory), so a planted link or special file cannot make a reader
read outside the checkpoint or block. A missing file is a FileNotFoundError, as everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StorageError, UnsafeFileError
from .base import DataWriter, Storage, read_fully, temp_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


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
        fd, size = self._open_regular(name)
        with open(fd, "rb", buffering=0) as f:
            if offset >= size or not len(buffer):  # nothing there (and no seek past the filesystem's limit)
                return 0
            return self._reading(name, lambda: read_fully(f, offset, buffer))

    def read(self, name: str) -> bytes:
        fd, _ = self._open_regular(name)
        with open(fd, "rb", buffering=0) as f:
            return self._reading(name, f.readall)

    def size(self, name: str) -> int:
        fd, size = self._open_regular(name)
        os.close(fd)
        return size

    def exists(self, name: str) -> bool:
        """Whether ``name`` is a regular file; UnsafeFileError if something else (a link, FIFO,
        device, directory) stands at that name."""
        try:
            self.size(name)
        except FileNotFoundError:
            return False
        return True

    def _open_regular(self, name: str) -> tuple[int, int]:
        """An fd of the regular file ``name`` below the root, opened without following links, and its size."""
        parts = name.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts) or "\0" in name:
            raise UnsafeFileError(f"{self.describe(name)}: not a plain relative name inside the checkpoint")
        try:
            dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "no such checkpoint directory", str(self.root)) from None
        except OSError as exc:
            raise StorageError(f"cannot open {self.root}: {exc.strerror or exc}") from exc
        try:
            for part in parts[:-1]:
                next_fd = self._open_at(name, part, dir_fd, _DIR_FLAGS, "a directory")
                os.close(dir_fd)
                dir_fd = next_fd
            st = self._lstat_at(name, parts[-1], dir_fd)
            if not stat.S_ISREG(st.st_mode):  # never open a FIFO or a device: that can block or act
                raise UnsafeFileError(f"{self.describe(name)}: is {_kind(st.st_mode)}, not a regular file")
            fd = self._open_at(name, parts[-1], dir_fd, _FILE_FLAGS, "a regular file")
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the lstat and the open
            os.close(fd)
            raise UnsafeFileError(f"{self.describe(name)}: is {_kind(st.st_mode)}, not a regular file")
        return fd, st.st_size

    def _open_at(self, name: str, part: str, dir_fd: int, flags: int, expected: str) -> int:
        try:
            return os.open(part, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise self._open_error(name, part, dir_fd, exc, expected) from None

    def _lstat_at(self, name: str, part: str, dir_fd: int) -> os.stat_result:
        try:
            return os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise self._open_error(name, part, dir_fd, exc, "a regular file") from None

    def _open_error(self, name: str, part: str, dir_fd: int, exc: OSError, expected: str) -> Exception:
        missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.describe(name))
        if isinstance(exc, FileNotFoundError):
            return missing
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
            return StorageError(f"cannot open {self.describe(name)}: {exc.strerror or exc}")
        try:
            mode = os.stat(part, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            return missing
        if stat.S_ISREG(mode) and expected == "a directory":  # a file where a parent should be: absent
            return missing
        return UnsafeFileError(
            f"{self.describe(name)}: {part!r} is {_kind(mode)}, not {expected}; readers do not follow links "
            "or open special files"
        )

    def _reading(self, name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except OSError as exc:
            raise StorageError(f"cannot read {self.describe(name)}: {exc.strerror or exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        names = []
        for dirpath, _, files in os.walk(base):  # a folder removed while walking is skipped, not an error
            rel = Path(dirpath).relative_to(self.root)
            names += [(rel / f).as_posix() for f in files if (Path(dirpath) / f).is_file()]
        return sorted(names)

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
        for attempt in range(3):
            tmp = None
            try:
                tmp = self._durable_temp(path, data)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                if self.fsync:
                    _fsync_dir(path.parent)
                return True
            except FileNotFoundError as exc:
                # garbage collection removed the (then empty) folder under us: start again
                if attempt == 2:
                    raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
            except OSError as exc:
                raise StorageError(f"cannot create {path}: {exc.strerror or exc}") from exc
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _durable_temp(self, path: Path, data: bytes) -> Path:
        """``data`` in a fresh temporary file beside ``path`` (fsync'd if configured)."""
        tmp = path.with_name(temp_name(path.name))
        for attempt in range(3):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    if self.fsync:
                        os.fsync(f.fileno())
                return tmp
            except FileNotFoundError:
                # the folder was removed between mkdir and open: garbage collection removes
                # folders that hold no file (docs/FORMAT.md); make it again
                if attempt == 2:
                    raise
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        raise AssertionError("unreachable")


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


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "not a regular file"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
