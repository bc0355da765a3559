"""Host staging of tensor bytes for writing.

CPU tensors are written from their own memory. Tensors on an accelerator are copied slice by slice
into a small pool of pinned host buffers by a background thread, so device-to-host copies overlap
the hashing and writing of the previous slice, and host memory stays bounded (``buffers`` x
``slice_bytes``) whatever the size of the state.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .planner import BoxKey

STAGING_SLICE_BYTES = 256 << 20
STAGING_BUFFERS = 2
_pinned_pool: list[torch.Tensor] = []
_pool_lock = threading.Lock()


@dataclass(frozen=True)
class StagedSlice:
    key: BoxKey
    chunk_bytes: int  # the whole chunk's length; a chunk arrives as one or more consecutive slices
    data: torch.Tensor  # uint8 host bytes of this slice
    release: Callable[[], None]


def _pinned_buffers(slice_bytes: int, count: int) -> list[torch.Tensor]:
    """Host buffers (pinned where CUDA is present), allocated once per process and reused."""
    with _pool_lock:
        if len(_pinned_pool) < count or _pinned_pool[0].numel() < slice_bytes:
            pin = torch.cuda.is_available()
            _pinned_pool[:] = [torch.empty(slice_bytes, dtype=torch.uint8, pin_memory=pin) for _ in range(count)]
        return [buf[:slice_bytes] for buf in _pinned_pool[:count]]


def _byte_view(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def staged_slices(
    items: list[tuple[BoxKey, torch.Tensor]],
    slice_bytes: int = STAGING_SLICE_BYTES,
    buffers: int = STAGING_BUFFERS,
    copy: bool = False,
) -> Iterator[StagedSlice]:
    """The bytes of each tensor in order, as host slices; call ``release`` when done with one.
    CPU tensors are passed through in place unless ``copy``."""
    if not copy and all(t.device.type == "cpu" for _, t in items):
        for key, tensor in items:
            raw = _byte_view(tensor)
            yield StagedSlice(key, raw.numel(), raw, lambda: None)
        return
    free: queue.Queue[torch.Tensor] = queue.Queue()
    for buf in _pinned_buffers(slice_bytes, buffers):
        free.put(buf)
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()
    done = object()

    def take_buffer() -> torch.Tensor | None:
        while not stop.is_set():
            try:
                return free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def produce() -> None:
        try:
            for key, tensor in items:
                raw = _byte_view(tensor)
                total = raw.numel()
                if raw.device.type == "cpu" and not copy:
                    ready.put(StagedSlice(key, total, raw, lambda: None))
                    continue
                for start in range(0, max(total, 1), slice_bytes):
                    buf = take_buffer()
                    if buf is None:
                        return
                    n = min(slice_bytes, total - start)
                    buf[:n].copy_(raw[start : start + n])
                    ready.put(StagedSlice(key, total, buf[:n], lambda b=buf: free.put(b)))
            ready.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            ready.put(exc)

    thread = threading.Thread(target=produce, name="bcp-stage", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)
