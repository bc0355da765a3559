"""Storage backends, chosen from the checkpoint path.

| path                          | backend                                   | needs            |
|-------------------------------|-------------------------------------------|------------------|
| ``/dir``, ``file:///dir``     | :class:`LocalStorage` (fsync, rename)      | -                |
| ``mem://name``                | :class:`MemoryStorage` (process-wide dict) | -                |
| ``s3://bucket/prefix``        | :class:`S3Storage` (multipart, retries)    | ``s3fs``         |
| any other fsspec protocol     | :class:`FsspecStorage` (``memory://``, ``gcs://``, ...) | that protocol's package |

Backends with optional dependencies are imported only when a path asks for them; a missing
package raises MissingDependencyError saying what to install.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import MissingDependencyError
from .base import DataWriter, Storage
from .local import LocalStorage
from .memory import MemoryStorage

__all__ = ["DataWriter", "LocalStorage", "MemoryStorage", "Storage", "register_backend", "resolve_storage"]

# scheme -> ("module:Class", install hint); imported on first use
_BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("bytecheckpoint.storage.s3:S3Storage", "pip install 'trainfra-toolkit[s3]'  (or: pip install s3fs)"),
    "s3a": ("bytecheckpoint.storage.s3:S3Storage", "pip install 'trainfra-toolkit[s3]'  (or: pip install s3fs)"),
}
_FSSPEC = ("bytecheckpoint.storage.fsspec:FsspecStorage", "pip install fsspec")


def register_backend(scheme: str, target: str, install_hint: str = "") -> None:
    """Route ``scheme://`` paths to ``target`` ("module:Class", constructed as ``Class(url, **options)``)."""
    _BACKENDS[scheme] = (target, install_hint)


def _load(target: str, hint: str, url: str) -> type[Storage]:
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise MissingDependencyError(
            f"{url}: this storage backend needs the package {missing!r}, which is not installed; {hint}"
        ) from exc
    return getattr(module, cls_name)


def _fsspec_hint(scheme: str) -> str:
    from fsspec.registry import known_implementations

    known = known_implementations.get(scheme)
    return known.get("err", "") if known else f"install the fsspec implementation of {scheme!r}"


def resolve_storage(path: str | os.PathLike[str] | Storage, fsync: bool = True, **storage_options: Any) -> Storage:
    """The backend for ``path``: a Storage passes through; a plain or ``file://`` path is local disk;
    other URLs go to the backend registered for their scheme, else to fsspec."""
    if isinstance(path, Storage):
        return path
    text = os.fspath(path)
    if text.startswith("file://"):
        return LocalStorage(text[len("file://"):], fsync=fsync)
    if "://" not in text:
        return LocalStorage(text, fsync=fsync)
    scheme = text.split("://", 1)[0].lower()
    if scheme == "mem":
        return MemoryStorage(text)
    if scheme in _BACKENDS:
        target, hint = _BACKENDS[scheme]
        return _load(target, hint, text)(text, **storage_options)
    try:
        import fsspec
    except ImportError as exc:
        raise MissingDependencyError(f"{text}: scheme {scheme!r} needs fsspec; pip install fsspec") from exc
    if scheme not in fsspec.available_protocols():
        raise ValueError(
            f"{text}: unknown storage scheme {scheme!r}; known: file, mem, {', '.join(sorted(_BACKENDS))} "
            "and fsspec's protocols"
        )
    cls = _load(*_FSSPEC, text)
    try:
        return cls(text, fsync=fsync, **storage_options)
    except ImportError as exc:  # fsspec knows the protocol but its package is missing
        raise MissingDependencyError(f"{text}: {exc or _fsspec_hint(scheme)}") from exc
