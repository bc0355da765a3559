"""One ``torch.save`` file holding a nested dict of tensors and plain values.

Written so that ``torch.load(path, weights_only=True)`` reads it; read with ``weights_only=True``
only, so a file that needs to unpickle code is refused, never run.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from ..storage import Storage
from .errors import ConversionError


def write_torch_file(storage: Storage, name: str, state: dict) -> int:
    """Save ``state`` as ``name`` (published atomically); return the file's size."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    storage.commit(name, data)
    return len(data)


def read_torch_file(storage: Storage, name: str) -> dict[str, Any]:
    """The dict saved in ``name``, loaded with ``weights_only=True``."""
    where = storage.describe(name)
    try:
        data = storage.read(name)
    except FileNotFoundError:
        raise ConversionError(f"{where}: no such file") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad or unsafe file
        raise ConversionError(
            f"{where}: cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}); files that need full unpickling are refused"
        ) from None
    if not isinstance(state, dict):
        raise ConversionError(f"{where}: holds a {type(state).__name__}, expected a dict of tensors")
    return state
