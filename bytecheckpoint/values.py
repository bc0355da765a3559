"""Safe encoding of plain (non-tensor) Python values as tagged JSON.

JSON null/bool/int/str/finite floats/lists stand for themselves; a JSON object whose keys are
all strings not starting with ``$`` is a dict. Everything else is a one-key object:
``{"$float": "nan"|"inf"|"-inf"}``, ``{"$tuple": [...]}``, ``{"$bytes": base64}``,
``{"$dict": [[key, value], ...]}`` (non-string keys), ``{"$pickle": base64}`` (only with opt-in).
"""

from __future__ import annotations

import base64
import math
import pickle
from typing import Any

import numpy as np

from .errors import MetadataError, UnsupportedValueError


def encode_value(value: Any, where: str, allow_pickle: bool = False) -> Any:
    """Encode a plain value; raises UnsupportedValueError naming ``where`` for unsafe types."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, np.generic):
        return encode_value(value.item(), where, allow_pickle)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, list):
        return [encode_value(v, f"{where}[{i}]", allow_pickle) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode_value(v, f"{where}[{i}]", allow_pickle) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode_value(v, f"{where}.{k}", allow_pickle) for k, v in value.items()}
        return {
            "$dict": [
                [encode_value(k, f"{where} key", allow_pickle), encode_value(v, f"{where}.{k}", allow_pickle)]
                for k, v in value.items()
            ]
        }
    if allow_pickle:
        return {"$pickle": base64.b64encode(pickle.dumps(value)).decode()}
    raise UnsupportedValueError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} is not a tensor or plain value "
        "(None, bool, int, float, str, bytes, list, tuple, dict); pass allow_pickle=True to store it "
        "with pickle, which loading must opt in to as well"
    )


def decode_value(doc: Any, where: str, allow_pickle: bool = False) -> Any:
    """Decode what encode_value produced; never executes code unless ``allow_pickle``."""
    if doc is None or isinstance(doc, (bool, int, float, str)):
        return doc
    if isinstance(doc, list):
        return [decode_value(v, f"{where}[{i}]", allow_pickle) for i, v in enumerate(doc)]
    if not isinstance(doc, dict):
        raise MetadataError(f"{where}: cannot decode a stored value of type {type(doc).__name__}")
    tagged = [k for k in doc if k.startswith("$")]
    if not tagged:
        return {k: decode_value(v, f"{where}.{k}", allow_pickle) for k, v in doc.items()}
    if len(doc) != 1:
        raise MetadataError(f"{where}: a tagged value must have exactly one key, found {sorted(doc)}")
    tag, body = next(iter(doc.items()))
    try:
        if tag == "$float":
            if body not in ("nan", "inf", "-inf"):
                raise ValueError(body)
            return float(body)
        if tag == "$tuple":
            return tuple(decode_value(v, f"{where}[{i}]", allow_pickle) for i, v in enumerate(body))
        if tag == "$bytes":
            return base64.b64decode(body, validate=True)
        if tag == "$dict":
            return {
                _hashable(decode_value(k, f"{where} key", allow_pickle)): decode_value(v, f"{where}.{k}", allow_pickle)
                for k, v in body
            }
        if tag == "$pickle":
            if not allow_pickle:
                raise UnsupportedValueError(
                    f"{where}: this value was stored with pickle; loading it can execute code, so pass "
                    "allow_pickle=True only if you trust the checkpoint's origin"
                )
            return pickle.loads(base64.b64decode(body, validate=True))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UnsupportedValueError):
            raise
        raise MetadataError(f"{where}: malformed {tag} value ({exc})") from None
    raise MetadataError(f"{where}: unknown value tag {tag!r}")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
