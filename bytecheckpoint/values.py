"""Safe encoding of plain (non-tensor) Python values as tagged JSON.

JSON null/bool/int/str/finite floats/lists stand for themselves; a JSON object whose keys are
all strings not starting with ``$`` is a dict. Everything else is a one-key object:
``{"$float": "nan"|"inf"|"-inf"}``, ``{"$tuple": [...]}``, ``{"$bytes": base64}``,
``{"$dict": [[key, value], ...]}`` (non-string keys), ``{"$pickle": base64}`` (only with opt-in).

Both directions count nesting as stored (a tuple is two levels, a ``$dict`` pair three) and refuse
more than ``MAX_DEPTH`` levels, so neither recursion nor a reader ever goes deeper than that.
"""

from __future__ import annotations

import base64
import math
import pickle
from typing import Any

import numpy as np

from .errors import MetadataError, UnsupportedValueError
from .limits import MAX_DEPTH

_INT_BITS = 13_000  # about 3900 decimal digits: within Python's int/str conversion limit


def encode_value(value: Any, where: str, allow_pickle: bool = False) -> Any:
    """Encode a plain value; raises UnsupportedValueError naming ``where`` for unsafe types."""
    return _encode(value, where, allow_pickle, MAX_DEPTH)


def _encode(value: Any, where: str, allow_pickle: bool, room: int) -> Any:
    """``room``: container levels still allowed below this point."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _INT_BITS:
            raise UnsupportedValueError(f"{where}: an integer of {value.bit_length()} bits is too large to store")
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else _wrap(where, room, 1, {"$float": repr(value)})
    if isinstance(value, np.generic):
        return _encode(value.item(), where, allow_pickle, room)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _wrap(where, room, 1, {"$bytes": base64.b64encode(bytes(value)).decode()})
    if isinstance(value, list):
        _need(where, room, 1)
        return [_encode(v, f"{where}[{i}]", allow_pickle, room - 1) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        _need(where, room, 2)
        return {"$tuple": [_encode(v, f"{where}[{i}]", allow_pickle, room - 2) for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            _need(where, room, 1)
            return {k: _encode(v, f"{where}.{k}", allow_pickle, room - 1) for k, v in value.items()}
        _need(where, room, 3)
        return {
            "$dict": [
                [_encode(k, f"{where} key", allow_pickle, room - 3), _encode(v, f"{where}.{k}", allow_pickle, room - 3)]
                for k, v in value.items()
            ]
        }
    if allow_pickle:
        try:
            data = pickle.dumps(value)
        except Exception as exc:  # whatever the object's reducer raises
            raise UnsupportedValueError(f"{where}: cannot pickle it ({type(exc).__name__}: {exc})") from exc
        return _wrap(where, room, 1, {"$pickle": base64.b64encode(data).decode()})
    raise UnsupportedValueError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} is not a tensor or plain value "
        "(None, bool, int, float, str, bytes, list, tuple, dict); pass allow_pickle=True to store it "
        "with pickle, which loading must opt in to as well"
    )


def _need(where: str, room: int, levels: int) -> None:
    if room < levels:
        raise UnsupportedValueError(
            f"{where}: nested too deeply: at most {MAX_DEPTH} levels of lists/dicts are stored (a tuple counts "
            "2, a dict with non-string keys 3); is it a structure that contains itself?"
        )


def _wrap(where: str, room: int, levels: int, encoded: Any) -> Any:
    _need(where, room, levels)
    return encoded


def decode_value(doc: Any, where: str, allow_pickle: bool = False) -> Any:
    """Decode what encode_value produced; never executes code unless ``allow_pickle``."""
    return _decode(doc, where, allow_pickle, MAX_DEPTH)


_SCALARS = (bool, int, float, str)


def _decode(doc: Any, where: str, allow_pickle: bool, room: int) -> Any:
    if doc is None or isinstance(doc, _SCALARS):
        return doc
    if room < 1:
        raise MetadataError(f"{where}: stored value nested deeper than {MAX_DEPTH} levels")
    if isinstance(doc, list):
        return [
            v if v is None or isinstance(v, _SCALARS) else _decode(v, f"{where}[{i}]", allow_pickle, room - 1)
            for i, v in enumerate(doc)
        ]
    if not isinstance(doc, dict):
        raise MetadataError(f"{where}: cannot decode a stored value of type {type(doc).__name__}")
    tagged = [k for k in doc if not isinstance(k, str) or k.startswith("$")]
    if not tagged:
        return {k: _decode(v, f"{where}.{k}", allow_pickle, room - 1) for k, v in doc.items()}
    if len(doc) != 1 or not isinstance(tagged[0], str):
        raise MetadataError(f"{where}: a tagged value must have exactly one key, found {len(doc)}")
    tag, body = next(iter(doc.items()))
    try:
        return _decode_tagged(tag, body, where, allow_pickle, room)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, (UnsupportedValueError, MetadataError)):
            raise
        raise MetadataError(f"{where}: malformed {tag[:40]} value ({str(exc)[:200]})") from None


def _decode_tagged(tag: str, body: Any, where: str, allow_pickle: bool, room: int) -> Any:
    if tag == "$float":
        if not isinstance(body, str) or body not in ("nan", "inf", "-inf"):
            raise ValueError("expected 'nan', 'inf' or '-inf'")
        return float(body)
    if tag == "$tuple":
        if not isinstance(body, list) or room < 2:
            raise MetadataError(f"{where}: malformed $tuple value (a list nested at most {MAX_DEPTH} deep)")
        return tuple(_decode(v, f"{where}[{i}]", allow_pickle, room - 2) for i, v in enumerate(body))
    if tag == "$bytes":
        if not isinstance(body, str):
            raise TypeError("expected a base64 string")
        return base64.b64decode(body, validate=True)
    if tag == "$dict":
        if not isinstance(body, list) or room < 3 or not all(isinstance(p, list) and len(p) == 2 for p in body):
            raise MetadataError(
                f"{where}: malformed $dict value (a list of [key, value] pairs nested at most {MAX_DEPTH} deep)"
            )
        out = {}
        for i, (k, v) in enumerate(body):
            key = _hashable(_decode(k, f"{where} key {i}", allow_pickle, room - 3))
            out[key] = _decode(v, f"{where}[{i}]", allow_pickle, room - 3)
        return out
    if tag == "$pickle":
        if not allow_pickle:
            raise UnsupportedValueError(
                f"{where}: this value was stored with pickle; loading it can execute code, so pass "
                "allow_pickle=True only if you trust the checkpoint's origin"
            )
        if not isinstance(body, str):
            raise TypeError("expected a base64 string")
        data = base64.b64decode(body, validate=True)
        try:
            return pickle.loads(data)
        except Exception as exc:  # unpickling can raise anything
            raise MetadataError(f"{where}: cannot unpickle the stored value ({type(exc).__name__}: {exc})") from exc
    raise MetadataError(f"{where}: unknown value tag {tag[:40]!r}")


def _hashable(key: Any) -> Any:
    """A decoded dict key; lists (JSON has no tuples) become tuples, recursively."""
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    hash(key)  # TypeError (a dict) -> malformed
    return key
