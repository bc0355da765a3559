"""Byte views of message buffers: numpy arrays, CPU torch tensors, bytes-like objects (no copies)."""

from __future__ import annotations

from typing import Any

import numpy as np

from netsim.transport.errors import TransportError


def as_array(buf: Any) -> np.ndarray:
    """``buf`` as a numpy array sharing its memory (a CPU torch tensor through ``.numpy()``)."""
    if isinstance(buf, np.ndarray):
        return buf
    if type(buf).__module__.startswith("torch"):
        if buf.device.type != "cpu":
            raise TransportError(f"split-tcp sends CPU tensors; found a tensor on {buf.device}")
        return buf.detach().numpy()
    if isinstance(buf, (bytes, bytearray, memoryview)):
        return np.frombuffer(buf, dtype=np.uint8)
    raise TransportError(
        f"expected a numpy array, CPU torch tensor or bytes-like buffer, found {type(buf).__name__}"
    )


def byte_view(buf: Any, writable: bool) -> memoryview:
    """A flat byte memoryview of ``buf``; it must be C-contiguous (and writable when receiving into it)."""
    arr = as_array(buf)
    if not arr.flags.c_contiguous:
        raise TransportError(f"buffer of shape {arr.shape} is not C-contiguous; pass a contiguous copy")
    if writable and not arr.flags.writeable:
        raise TransportError(f"cannot receive into a read-only buffer of shape {arr.shape}")
    return memoryview(arr.reshape(-1).view(np.uint8))
