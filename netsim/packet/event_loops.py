"""Ranks' event loops on one machine's CPUs, as a packet replay charges a rank's software work.

Every rank runs one event loop: its tasks run one at a time, in the order they became due, and each keeps
the loop busy for its cost. A task takes effect when its cost has passed, or as it begins (``at_start``:
a write, which goes out first and costs the kernel's work after). With ``cpus`` set, the ranks share
that many CPUs: a rank with a task due waits for a free CPU (first come, first served) and, once it
runs, keeps its CPU until it has no task left (the kernel does not preempt a running task for one that
woke later within its time slice, milliseconds here). ``cpus=None`` gives every rank a CPU of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from netsim.packet.links import Clock

_Task = tuple[float, Callable[..., None], tuple[Any, ...], bool]


class EventLoops:
    """The ranks' loops on ``cpus`` CPUs (None: as many as there are ranks)."""

    def __init__(self, clock: Clock, cpus: int | None = None) -> None:
        self.clock, self.cpus = clock, cpus
        self.idle_cpus = cpus
        self.tasks: dict[int, deque[_Task]] = {}
        self.running: set[int] = set()
        self.waiting: deque[int] = deque()  # ranks with a task due and no CPU yet

    def run(self, rank: int, cost: float, task: Callable[..., None], *args: Any, at_start: bool = False) -> None:
        """Queue ``task(*args)`` on ``rank``'s loop, which it keeps busy for ``cost`` seconds."""
        queue = self.tasks.setdefault(rank, deque())
        queue.append((cost, task, args, at_start))
        if rank in self.running or len(queue) > 1:
            return  # it runs when the loop gets to it (the rank is running, or waiting for a CPU)
        if self.idle_cpus is None or self.idle_cpus > 0:
            if self.idle_cpus is not None:
                self.idle_cpus -= 1
            self._start(rank)
        else:
            self.waiting.append(rank)

    def _start(self, rank: int) -> None:
        self.running.add(rank)
        cost, task, args, at_start = self.tasks[rank][0]
        if at_start:
            self.clock.at(self.clock.now, task, *args)
        self.clock.at(self.clock.now + cost, self._done, rank)

    def _done(self, rank: int) -> None:
        _, task, args, at_start = self.tasks[rank].popleft()
        if not at_start:
            task(*args)
        if self.tasks[rank]:
            self._start(rank)  # the rank keeps its CPU while it has work
            return
        self.running.discard(rank)
        if self.waiting:
            self._start(self.waiting.popleft())
        elif self.idle_cpus is not None:
            self.idle_cpus += 1
