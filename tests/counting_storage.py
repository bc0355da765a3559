"""Local storage that records which data files a load reads, for tests that assert on reads."""

from __future__ import annotations

from collections import Counter

from bytecheckpoint.storage import LocalStorage


class CountingStorage(LocalStorage):
    """Local storage that records which files a load reads data from, how many reads and bytes."""

    def __init__(self, root: str) -> None:
        super().__init__(root, fsync=False)
        self.files_read: set[str] = set()
        self.reads = 0
        self.bytes_read: Counter[str] = Counter()

    def read_into(self, name: str, offset: int, buffer: memoryview) -> int:
        self.files_read.add(name)
        self.reads += 1
        got = super().read_into(name, offset, buffer)
        self.bytes_read[name] += got
        return got
