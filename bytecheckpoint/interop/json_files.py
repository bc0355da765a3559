"""Reading the small JSON documents of other formats (a Hugging Face config, a safetensors index)."""

from __future__ import annotations

import json
from typing import Any

from ..storage import Storage
from .errors import ConversionError


def read_json_object(storage: Storage, name: str, missing: str = "no such file") -> dict[str, Any]:
    """The JSON object in ``name``; ConversionError naming the file if it is missing (``missing`` says
    what that means), not JSON, or not an object."""
    where = storage.describe(name)
    try:
        doc = json.loads(storage.read(name))
    except FileNotFoundError:
        raise ConversionError(f"{where}: {missing}") from None
    except ValueError as exc:
        raise ConversionError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConversionError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    return doc
