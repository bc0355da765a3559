"""In-process storage: objects in a dict, for tests and for staging checkpoints in RAM.

``mem://<name>`` paths share one process-wide store, so a save and a later load in the same
process see the same objects. Every primitive holds one lock: a commit or an exclusive create is
atomic with respect to every other thread.
"""

from __future__ import annotations

import threading

from .base import DataWriter, Storage, join_name

_GLOBAL: dict[str, bytes] = {}
_GLOBAL_LOCK = threading.Lock()


class MemoryStorage(Storage):
    """Objects in a dict; ``MemoryStorage()`` is private, ``MemoryStorage("mem://x")`` process-wide."""

    exclusive_create = True

    def __init__(self, url: str | None = None, *, _store: dict[str, bytes] | None = None,
                 _lock: threading.Lock | None = None) -> None:
        if _store is not None:
            self.objects, self.lock = _store, _lock or threading.Lock()
        elif url is None:
            self.objects, self.lock = {}, threading.Lock()
        else:
            self.objects, self.lock = _GLOBAL, _GLOBAL_LOCK
        text = url or "mem://"
        self.prefix = text[len("mem://"):].strip("/") if text.startswith("mem://") else text.strip("/")
        self.url = f"mem://{self.prefix}"

    def _key(self, name: str) -> str:
        return join_name(self.prefix, name)

    def child(self, name: str) -> MemoryStorage:
        return MemoryStorage(f"mem://{self._key(name)}", _store=self.objects, _lock=self.lock)

    def open_writer(self, name: str) -> DataWriter:
        return _MemoryWriter(self, self._key(name))

    def _get(self, name: str) -> bytes:
        with self.lock:
            data = self.objects.get(self._key(name))
        if data is None:
            raise FileNotFoundError(f"{self.describe(name)}: no such object")
        return data

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        data = self._get(name)
        piece = data[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        return len(piece)

    def read(self, name: str) -> bytes:
        return self._get(name)

    def size(self, name: str) -> int:
        return len(self._get(name))

    def exists(self, name: str) -> bool:
        with self.lock:
            return self._key(name) in self.objects

    def list(self, prefix: str = "") -> list[str]:
        base = self._key(prefix)
        cut = len(self.prefix) + 1 if self.prefix else 0
        with self.lock:
            keys = list(self.objects)
        return sorted(k[cut:] for k in keys if not base or k == base or k.startswith(base + "/"))

    def delete(self, name: str) -> None:
        with self.lock:
            self.objects.pop(self._key(name), None)

    def commit(self, name: str, data: bytes) -> None:
        with self.lock:
            self.objects[self._key(name)] = bytes(data)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        with self.lock:
            if self._key(name) in self.objects:
                return False
            self.objects[self._key(name)] = bytes(data)
            return True


class _MemoryWriter:
    def __init__(self, storage: MemoryStorage, key: str) -> None:
        self.storage, self.key = storage, key
        self.buffer = bytearray()

    def write(self, data: memoryview) -> None:
        self.buffer += memoryview(data).cast("B")

    def close(self) -> None:
        with self.storage.lock:
            self.storage.objects[self.key] = bytes(self.buffer)
        self.buffer = bytearray()

    def abort(self) -> None:
        self.buffer = bytearray()
