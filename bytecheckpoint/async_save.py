"""The handle of an async save, and the rule that one save or load runs at a time per process.

``save(..., async_save=True)`` returns an :class:`AsyncSave` once the snapshot is taken; a
background thread then writes, and the ranks commit together. The checkpoint protocol uses one
process group of its own, so a second save (or a load) started while one is in flight first
waits for it (the only policy: two protocols on one group would interleave their collectives).
``handle.done()`` lets a loop skip a save instead, if all its ranks agree to.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .saver import SaveSummary

log = logging.getLogger(__name__)

_in_flight: AsyncSave | None = None
_in_flight_lock = threading.Lock()


class AsyncSave:
    """A save running in the background. ``wait()`` returns its :class:`SaveSummary` or re-raises
    its failure (the same error on every rank)."""

    def __init__(self, path: str, work: Callable[[], SaveSummary]) -> None:
        self.path = path
        self._summary: SaveSummary | None = None
        self._error: BaseException | None = None
        self._retrieved = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(work,), name="bcp-async-save")

    def _start(self) -> None:
        global _in_flight
        with _in_flight_lock:
            _in_flight = self
        self._thread.start()

    def _run(self, work: Callable[[], SaveSummary]) -> None:
        try:
            self._summary = work()
        except BaseException as exc:  # noqa: BLE001 - handed to wait()
            self._error = exc
            log.debug("async save to %s failed: %s", self.path, exc)
        finally:
            self._done.set()

    def done(self) -> bool:
        """Whether the save has finished (committed or failed)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> SaveSummary:
        """Block until the save is committed; return its summary or raise its error.

        Raises TimeoutError if ``timeout`` seconds pass first (the save goes on).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"the async save to {self.path} is still running after {timeout}s")
        self._retrieved = True
        if self._error is not None:
            raise self._error
        assert self._summary is not None
        return self._summary

    result = wait

    def __del__(self) -> None:
        if self._done.is_set() and self._error is not None and not self._retrieved:
            log.error("an async save to %s failed and nobody called wait(): %s", self.path, self._error)


def wait_for_pending_save() -> None:
    """Wait for this process's in-flight async save, if any (its error stays with its handle)."""
    global _in_flight
    with _in_flight_lock:
        pending = _in_flight
    if pending is None:
        return
    pending._done.wait()
    with _in_flight_lock:
        if _in_flight is pending:
            _in_flight = None
    if pending._error is not None and not pending._retrieved:
        log.warning("the previous async save to %s failed (its handle's wait() raises): %s",
                    pending.path, pending._error)
