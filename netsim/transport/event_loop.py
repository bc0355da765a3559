"""Socket tasks on one thread: generators that yield when a non-blocking socket would block.

A task is a generator. It yields ``Wait(sock, READ)`` or ``Wait(sock, WRITE)`` to sleep until the
socket is ready, or ``All([task, ...])`` to run sub-tasks concurrently and resume with their return
values in order. :func:`run_tasks` drives a list of tasks with one ``selectors`` loop: no threads, so
no thread hand-offs or GIL convoys between the k subflows of a message (on a 16-core host, the thread
pool this replaces cost ~0.3 ms per subflow per step). The first exception a task raises ends the run
and is re-raised (the remaining tasks are closed); no progress for ``timeout`` seconds raises
TimeoutError.
"""

from __future__ import annotations

import selectors
import socket
from collections import deque
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
CHUNK = 1 << 20  # bytes a send or receive call moves at most
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


@dataclass(frozen=True)
class Wait:
    """Sleep until ``sock`` is readable (READ) or writable (WRITE)."""

    sock: socket.socket
    event: int


@dataclass(frozen=True)
class All:
    """Run ``tasks`` concurrently; the waiting task resumes with their return values, in order."""

    tasks: list[Generator[Any, Any, Any]]


Task = Generator[Wait | All, Any, Any]


@dataclass
class _Group:
    parent: Task
    slot: tuple[_Group, int] | None
    left: int
    results: list[Any] = field(default_factory=list)


def run_tasks(tasks: Iterable[Task], timeout: float) -> list[Any]:
    """Run ``tasks`` to completion; their return values, in order."""
    roots = list(tasks)
    top = _Group(parent=None, slot=None, left=len(roots), results=[None] * len(roots))  # type: ignore[arg-type]
    ready: deque[tuple[Task, Any, tuple[_Group, int] | None]] = deque((t, None, (top, i)) for i, t in enumerate(roots))
    waiting: dict[int, dict[int, tuple[Task, tuple[_Group, int] | None]]] = {}
    live: set[Task] = set(roots)
    with selectors.DefaultSelector() as selector:
        try:
            while True:
                while ready:
                    task, value, slot = ready.popleft()
                    try:
                        command = task.send(value)
                    except StopIteration as stop:
                        live.discard(task)
                        _finish(slot, stop.value, ready)
                        continue
                    if isinstance(command, All):
                        group = _Group(task, slot, len(command.tasks), [None] * len(command.tasks))
                        if not command.tasks:
                            ready.append((task, [], slot))
                        live.update(command.tasks)
                        ready.extend((child, None, (group, i)) for i, child in enumerate(command.tasks))
                    else:
                        _wait(selector, waiting, command, task, slot)
                if not waiting:
                    return top.results
                events = selector.select(timeout)
                if not events:
                    raise TimeoutError(f"no progress for {timeout:g} s")
                for key, mask in events:
                    sleepers = waiting[key.fd]
                    for event in (READ, WRITE):
                        if mask & event and event in sleepers:
                            task, slot = sleepers.pop(event)
                            ready.append((task, None, slot))
                    _register(selector, key.fileobj, sleepers)
                    if not sleepers:
                        del waiting[key.fd]
        finally:
            for task in live:
                task.close()


def _finish(slot: tuple[_Group, int] | None, value: Any, ready: deque) -> None:
    if slot is None:
        return
    group, index = slot
    group.results[index] = value
    group.left -= 1
    if group.left == 0 and group.parent is not None:
        ready.append((group.parent, group.results, group.slot))


def _wait(selector: selectors.BaseSelector, waiting: dict, command: Wait, task: Task,
          slot: tuple[_Group, int] | None) -> None:
    sleepers = waiting.setdefault(command.sock.fileno(), {})
    if command.event in sleepers:
        raise RuntimeError(f"two tasks wait for the same event on socket {command.sock.fileno()}")
    sleepers[command.event] = (task, slot)
    _register(selector, command.sock, sleepers)


def _register(selector: selectors.BaseSelector, sock: Any, sleepers: dict) -> None:
    mask = 0
    for event in sleepers:
        mask |= event
    try:
        key = selector.get_key(sock)
    except KeyError:
        key = None
    if not mask:
        if key is not None:
            selector.unregister(sock)
    elif key is None:
        selector.register(sock, mask)
    elif key.events != mask:
        selector.modify(sock, mask)


def write_all(sock: socket.socket, view: memoryview) -> Task:
    """Write all of ``view`` to the non-blocking ``sock``."""
    pos = 0
    while pos < len(view):
        try:
            pos += sock.send(view[pos : pos + CHUNK])
        except BlockingIOError:
            yield Wait(sock, WRITE)


def read_exact(sock: socket.socket, view: memoryview, closed: type[Exception], what: str) -> Task:
    """Fill ``view`` from the non-blocking ``sock``; ``closed(...)`` if the peer closes first.

    Quick-ACK mode is re-armed before every read (Linux drops it after a while): delayed ACKs stalled
    many-flow collectives by ~40 ms per step on a shaped fabric."""
    got = 0
    while got < len(view):
        if _QUICKACK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        try:
            n = sock.recv_into(view[got:], min(CHUNK, len(view) - got))
        except BlockingIOError:
            yield Wait(sock, READ)
            continue
        if n == 0:
            raise closed(f"{what}: connection closed after {got} of {len(view)} bytes")
        got += n
