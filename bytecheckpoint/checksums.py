"""Block checksums: a chunk's bytes are hashed in fixed-size blocks (xxh3-64), so a reader that
needs part of a chunk verifies only the blocks it reads."""

from __future__ import annotations

import xxhash

DEFAULT_BLOCK_SIZE = 4 << 20


def hash_block(data: memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


def block_hashes(data: memoryview, block_size: int) -> tuple[str, ...]:
    """Hashes of ``data`` cut into blocks of ``block_size`` bytes (the last one shorter)."""
    return tuple(hash_block(data[i : i + block_size]) for i in range(0, len(data), block_size))
