"""Framework-agnostic round recorder: timestamped events appended to a JSON-lines log.

Every process of a federated run (server, each node's transport, each client app) records *events*:
``RoundRecorder.mark(name, **keys)`` stores ``{"ev": name, "t": <wall clock>, "src": ..., **keys}``.
Events carry the keys that join them across processes (``round``, ``stage``, ``node``, ``msg``);
:func:`flsim.phases.assemble` turns them into contiguous phases per round and client.

Nothing here knows about Flower; ``integrations/flower`` emits the event names listed in
:data:`flsim.phases.EVENTS`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from typing_extensions import Self

from flsim.errors import RecordError

logger = logging.getLogger(__name__)

Event = dict[str, Any]

HOST_ENV, SKEW_ENV = "FLSIM_HOST", "FLSIM_CLOCK_SKEW_S"


def process_host() -> tuple[str, Callable[[], float]]:
    """This process's host label and event clock.

    The hostname and ``time.time``, unless ``FLSIM_HOST`` / ``FLSIM_CLOCK_SKEW_S`` (seconds added to the
    wall clock) say otherwise: they make a node and its client apps look like a separate host whose
    clock is off, so that clock-offset estimation runs end to end on one machine.
    """
    host = os.environ.get(HOST_ENV) or socket.gethostname()
    raw = os.environ.get(SKEW_ENV, "")
    try:
        skew = float(raw) if raw else 0.0
    except ValueError:
        raise RecordError(f"{SKEW_ENV} must be a number of seconds, found {raw!r}") from None
    return host, (time.time if skew == 0.0 else lambda: time.time() + skew)


class RoundRecorder:
    """Collects events in memory and, when ``path`` is given, appends each one to a JSON-lines file.

    Parameters
    ----------
    src:
        Which process records (``"server"``, ``"node"``, ``"client"``); stored in every event.
    path:
        Optional JSON-lines file; opened in append mode, flushed after each event, so that several
        processes may write one file each and a crash loses at most the event in flight.
    clock:
        Wall-clock source (seconds since the epoch). Events from different hosts are aligned with
        :func:`flsim.clock.estimate_offset` later, never here.
    """

    def __init__(self, src: str, path: str | os.PathLike[str] | None = None,
                 clock: Any = time.time, **static: Any) -> None:
        self.src = src
        self.static = static
        self.clock = clock
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def mark(self, ev: str, t: float | None = None, **keys: Any) -> Event:
        """Record that ``ev`` happened now (or at ``t``); returns the stored event."""
        event: Event = {"ev": ev, "t": self.clock() if t is None else float(t), "src": self.src,
                        **self.static, **keys}
        with self._lock:
            self.events.append(event)
            if self._file is not None:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._file.flush()
        logger.debug("event %s", event)
        return event

    @contextlib.contextmanager
    def span(self, name: str, **keys: Any) -> Iterator[None]:
        """Mark ``<name>_start`` and ``<name>_end`` around a block (the end is marked even on error)."""
        self.mark(f"{name}_start", **keys)
        try:
            yield
        finally:
            self.mark(f"{name}_end", **keys)

    def close(self) -> None:
        """Close the JSON-lines file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(*paths: str | os.PathLike[str]) -> list[Event]:
    """Read and merge JSON-lines event files (a directory means every ``*.jsonl`` in it)."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    events: list[Event] = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise RecordError(f"{f}:{lineno}: expected one JSON object per line, found {line[:60]!r}") \
                    from err
            if not isinstance(event, dict) or "ev" not in event or "t" not in event:
                raise RecordError(f"{f}:{lineno}: an event needs keys 'ev' and 't', found {event!r}")
            events.append(event)
    return events


_CURRENT: contextvars.ContextVar[RoundRecorder | None] = contextvars.ContextVar("flsim_client_recorder",
                                                                              default=None)


@contextlib.contextmanager
def client_recording(recorder: RoundRecorder) -> Iterator[RoundRecorder]:
    """Make ``recorder`` the target of :func:`mark_client` for the duration of a client handler call."""
    token = _CURRENT.set(recorder)
    try:
        yield recorder
    finally:
        _CURRENT.reset(token)


def mark_client(ev: str, **keys: Any) -> None:
    """Mark a client-side boundary (``deserialized``, ``computed``) from application code.

    A no-op outside :func:`client_recording`, so an application instrumented this way runs unchanged
    without flsim's middleware.
    """
    recorder = _CURRENT.get()
    if recorder is not None:
        recorder.mark(ev, **keys)
