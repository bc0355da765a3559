"""Where converted files live: a file path or URL split into its folder's storage and its name."""

from __future__ import annotations

from ..storage import Storage, resolve_storage
from .errors import ConversionError


def file_location(path: str) -> tuple[Storage, str]:
    """The storage of ``path``'s folder (local or any URL resolve_storage knows) and the file's name."""
    text = path.rstrip("/")
    scheme, sep, rest = text.rpartition("://")
    folder, _, name = (rest if sep else text).rpartition("/")
    if not name:
        raise ConversionError(f"{path}: expected a file path, found a folder or an empty name")
    if sep:
        return resolve_storage(f"{scheme}://{folder}"), name
    return resolve_storage(folder or "."), name


def require_empty(storage: Storage, what: str) -> None:
    """Refuse to write into a destination that already holds files (nothing is overwritten)."""
    if storage.list():
        raise ConversionError(f"{storage.url}: the {what} destination is not empty; choose a new path")
