"""Bounds on what a checkpoint may contain, shared by the writer (refuse to save) and the readers
(refuse to load), and cheap iterative checks of nesting depth.

Metadata comes from files that may have been damaged or crafted; every reader relies on these
bounds holding before it reads, allocates or recurses (docs/FORMAT.md, "Trust rules for readers").
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

INT64_MAX = (1 << 63) - 1
MAX_DEPTH = 64  # dicts nested in a state (keys in a path); JSON containers nested in a plain value
MAX_DOCUMENT_DEPTH = MAX_DEPTH + 3  # a value sits at depth 3 of the metadata document
MAX_NDIM = 64
MAX_TENSOR_BYTES = 1 << 62  # exclusive bound on one tensor's bytes (as if no dimension were 0)
MIN_BLOCK_SIZE = 64
MAX_BLOCK_SIZE = 1 << 31
MAX_FILE_NAME = 4096  # characters in a data file's name

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """How deep ``[``/``{`` nest in a JSON text (strings skipped); exact for valid JSON and for the
    valid prefix of invalid JSON, linear time, no recursion."""
    if b'\\"' in raw:  # an escaped quote may hide inside a string: strip the strings first
        raw = _JSON_STRING.sub(b"", raw)
    codes = np.frombuffer(raw, dtype=np.uint8)
    quotes = np.flatnonzero(codes == ord('"'))
    folded = codes | 0x20  # '[' -> '{' and ']' -> '}'; no other byte becomes either
    brackets = np.flatnonzero((folded == ord("{")) | (folded == ord("}")))
    if not len(brackets):
        return 0
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of quotes before it
    kinds = codes[brackets[outside]]
    steps = np.where((kinds | 0x20) == ord("{"), 1, -1)
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def nesting_depth(value: Any, limit: int) -> int:
    """The nesting depth of lists, tuples and dicts in ``value`` (a scalar is 0), counted without
    recursion; stops and returns ``limit + 1`` as soon as it exceeds ``limit`` (so cycles end)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        depth += 1
        if depth > limit:
            return limit + 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children if isinstance(child, (dict, list, tuple)))
    return deepest
