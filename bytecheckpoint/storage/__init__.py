"""Storage backends, chosen from the checkpoint path."""

from __future__ import annotations

import os

from .base import DataWriter, Storage
from .local import LocalStorage

__all__ = ["DataWriter", "LocalStorage", "Storage", "resolve_storage"]


def resolve_storage(path: str | os.PathLike[str] | Storage, fsync: bool = True) -> Storage:
    """The backend for ``path``: a Storage passes through; a plain or ``file://`` path is local disk."""
    if isinstance(path, Storage):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"{text}: storage scheme {scheme!r} is not supported yet (local paths only)")
    return LocalStorage(text, fsync=fsync)
