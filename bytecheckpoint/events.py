"""Structured events of saves and loads, for logs and metrics alike.

Each phase of a save (``plan``, ``snapshot``, ``write``, ``commit``) or load (``metadata``,
``read``) emits a :class:`PhaseEvent` when it ends, ok or failed; the caller's blocked time of a
save is the pseudo-phase ``stall`` (it overlaps ``plan`` and ``snapshot``); the end of the whole
operation emits an :class:`OperationEvent`. Listeners (the Prometheus metrics of telemetry.py, the
JSON-lines :class:`EventLog`) subscribe with :func:`subscribe`; with no listener an event costs a
list check. A listener that raises is logged and never fails the checkpoint.

Listeners run in the thread that ends the phase: the background thread of an async save too.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import IO

log = logging.getLogger(__name__)

#: the pseudo-phase of a save: how long the ``save`` call blocked its caller
STALL = "stall"
#: phases whose bytes are written to / read from storage (an operation's bytes are theirs); an
#: offline reshard's one phase counts the bytes it writes
WRITE_PHASES = frozenset({"write", "reshard"})
READ_PHASES = frozenset({"read"})


@dataclass(frozen=True)
class PhaseEvent:
    """One phase of an operation on one rank ended; ``error`` is the failure's class name, or None."""

    operation: str
    phase: str
    rank: int
    path: str
    seconds: float
    bytes: int = 0
    step: int | None = None
    error: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class OperationEvent:
    """A whole operation (``save``, ``load``, ...) on one rank ended, committed or failed.

    ``seconds`` runs from the call to the end (the commit of an async save); ``bytes`` is what this
    rank wrote or read (its ``write``, ``read`` or ``reshard`` phases).
    """

    operation: str
    rank: int
    path: str
    seconds: float
    bytes: int = 0
    step: int | None = None
    error: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None


Event = PhaseEvent | OperationEvent
Listener = Callable[[Event], None]

_listeners: list[Listener] = []
_listeners_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event)`` for every event of this process; returns the function that unsubscribes."""
    with _listeners_lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _listeners_lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(event: Event) -> None:
    """Hand ``event`` to every listener; a listener's error is logged, not raised."""
    if not _listeners:
        return
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # observing a checkpoint must never fail it
            log.warning("checkpoint event listener %r failed on %s", listener, event, exc_info=True)


class OperationEvents:
    """The events of one operation on one rank: ``phase(...)`` per phase, ``finish(...)`` once at the end.

    As a context manager it finishes on leaving: failed with the exception that escapes, else with
    ``failure`` when one was set (an operation that reports a problem without raising), else ok.
    """

    def __init__(self, operation: str, path: str, rank: int, step: int | None = None) -> None:
        configure_from_environment()
        self.operation, self.path, self.rank, self.step = operation, path, rank, step
        self.started = time.perf_counter()
        self.bytes = 0
        self.failure: BaseException | None = None

    def __enter__(self) -> OperationEvents:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.finish(exc if exc is not None else self.failure)

    def phase(self, name: str, seconds: float, nbytes: int = 0, error: BaseException | None = None) -> None:
        """Emit the end of phase ``name``, which took ``seconds`` and moved ``nbytes`` on this rank."""
        if error is None and (name in WRITE_PHASES or name in READ_PHASES):
            self.bytes += nbytes
        emit(PhaseEvent(self.operation, name, self.rank, self.path, seconds, nbytes, self.step,
                        None if error is None else type(error).__name__))

    @contextmanager
    def timed(self, name: str, timings: dict[str, float] | None = None) -> Iterator[PhaseTimer]:
        """Time the block as phase ``name`` (into ``timings`` too, when it succeeds); set ``.bytes``
        inside."""
        timer = PhaseTimer()
        start = time.perf_counter()
        try:
            yield timer
        except BaseException as exc:
            self.phase(name, time.perf_counter() - start, timer.bytes, exc)
            raise
        seconds = time.perf_counter() - start
        if timings is not None:
            timings[name] = seconds
        self.phase(name, seconds, timer.bytes)

    def finish(self, error: BaseException | None = None) -> None:
        """Emit the end of the operation (``error`` None: it succeeded)."""
        seconds = time.perf_counter() - self.started
        emit(OperationEvent(self.operation, self.rank, self.path, seconds, self.bytes, self.step,
                            None if error is None else type(error).__name__))


@dataclass
class PhaseTimer:
    """What a timed phase reports besides its duration."""

    bytes: int = 0


class EventLog:
    """A listener writing each event as one JSON line (``"event": "phase"`` or ``"operation"``).

    To a path it appends with one ``write`` per line (O_APPEND), so several processes may share a
    local file; to a stream it writes and flushes.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[str]) -> None:
        self._lock = threading.Lock()
        if isinstance(target, (str, os.PathLike)):
            self._fd: int | None = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._stream: IO[str] | None = None
        else:
            self._fd, self._stream = None, target
        self._unsubscribe = subscribe(self)

    def __call__(self, event: Event) -> None:
        kind = "phase" if isinstance(event, PhaseEvent) else "operation"
        line = json.dumps({"event": kind, **asdict(event)}, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line.encode())
            elif self._stream is not None:
                self._stream.write(line)
                self._stream.flush()

    def close(self) -> None:
        """Stop logging (and close the file this log opened)."""
        self._unsubscribe()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._stream = None


def enable_event_log(target: str | os.PathLike[str] | IO[str]) -> EventLog:
    """Write every checkpoint event of this process to ``target`` (a path, appended to, or a text
    stream) as JSON lines; ``close()`` the returned log to stop."""
    return EventLog(target)


#: environment variables read at the first save or load of a process (see docs/metrics.md)
ENV_EVENT_LOG = "BYTECHECKPOINT_EVENT_LOG"
ENV_METRICS_PORT = "BYTECHECKPOINT_METRICS_PORT"
ENV_METRICS_TEXTFILE = "BYTECHECKPOINT_METRICS_TEXTFILE"
ENV_PUSHGATEWAY = "BYTECHECKPOINT_PUSHGATEWAY"

_configured = False
_configure_lock = threading.Lock()


def configure_from_environment() -> None:
    """Once per process: enable the event log and metrics that the environment asks for."""
    global _configured
    if _configured:
        return
    with _configure_lock:
        if _configured:
            return
        if any(os.environ.get(v) for v in (ENV_METRICS_PORT, ENV_METRICS_TEXTFILE, ENV_PUSHGATEWAY)):
            from .telemetry import metrics_from_environment

            metrics_from_environment()
        if os.environ.get(ENV_EVENT_LOG):
            enable_event_log(os.environ[ENV_EVENT_LOG])
        _configured = True
