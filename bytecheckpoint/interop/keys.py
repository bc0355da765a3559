"""Keys of converted checkpoints: leaves of a nested state, renaming by key prefix, and nesting back.

A rename map ``{old: new}`` applies to a key's fully qualified name (its path joined by dots): an
exact match wins, else the longest ``old`` that ends with ``.`` and starts the name (``""`` starts
every name) has that prefix replaced by ``new``. The renamed name keeps the path's nesting where it
can: leading and trailing path elements that still spell the start and end of the new name stay
elements; what lies between becomes one element.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..errors import UnsupportedValueError
from ..metadata import Path, fqn_of
from ..state import flatten_state
from .errors import ConversionError


def leaves(state: dict, where: str) -> tuple[list[tuple[Path, torch.Tensor]], list[tuple[Path, Any]]]:
    """The whole tensors and plain values of a nested state, by path (as a save would split it)."""
    try:
        tensors, values = flatten_state(state)
    except UnsupportedValueError as exc:
        raise ConversionError(f"{where}: {exc}") from None
    return [(t.path, t.pieces[0].data) for t in tensors], [(v.path, v.value) for v in values]


def nest(entries: Iterable[tuple[Path, Any]], where: str) -> dict:
    """A nested dict holding each value at its path; ConversionError if one path lies inside another."""
    root: dict = {}
    for path, value in entries:
        node = root
        for i, key in enumerate(path[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConversionError(f"{where}: key {fqn_of(path)!r} lies inside {fqn_of(path[: i + 1])!r}, a leaf")
        if path[-1] in node:
            raise ConversionError(f"{where}: key {fqn_of(path)!r} appears twice (after renaming?)")
        node[path[-1]] = value
    return root


class Renamer:
    """Applies a rename map to paths (see the module docstring); ``None`` or ``{}`` renames nothing."""

    def __init__(self, rename: Mapping[str, str] | None) -> None:
        rules = dict(rename or {})
        for old, new in rules.items():
            if not isinstance(old, str) or not isinstance(new, str):
                raise ConversionError(f"rename: keys and values must be strings, found {old!r}: {new!r}")
        self.exact = {k: v for k, v in rules.items() if k and not k.endswith(".")}
        self.prefixes = sorted(((k, v) for k, v in rules.items() if not k or k.endswith(".")), key=lambda kv: -len(kv[0]))

    def name(self, fqn: str) -> str:
        if fqn in self.exact:
            return self.exact[fqn]
        for old, new in self.prefixes:
            if fqn.startswith(old):
                return new + fqn[len(old):]
        return fqn

    def path(self, path: Path) -> Path:
        old = fqn_of(path)
        new = self.name(old)
        if new == old:
            return path
        if not new:
            raise ConversionError(f"rename: key {old!r} would be renamed to an empty name")
        head = 0  # leading elements that still start the new name
        while head < len(path) - 1 and new.startswith(fqn_of(path[: head + 1]) + "."):
            head += 1
        tail = 0  # trailing elements that still end it, without overlapping the head
        while tail < len(path) - head and new.endswith("." + fqn_of(path[len(path) - tail - 1:])) and (
            len(fqn_of(path[:head])) + len(fqn_of(path[len(path) - tail - 1:])) + 2 <= len(new)
        ):
            tail += 1
        start = len(fqn_of(path[:head])) + 1 if head else 0
        end = len(new) - len(fqn_of(path[len(path) - tail:])) - 1 if tail else len(new)
        middle = (new[start:end],) if end > start else ()
        return (*path[:head], *middle, *path[len(path) - tail:])
