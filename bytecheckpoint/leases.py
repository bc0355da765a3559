"""Leases: small JSON objects that say which process holds something (a step, a save, the commit).

A lease records the host, process id and process start time of its holder, when it was taken and a
random token. It is taken with the storage's exclusive create (link(2) on POSIX, ``If-None-Match``
on S3). A lease is stale when its holder is a dead process on this host, or when it is older than a
maximum age (a holder on another host cannot be checked).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from .storage import Storage


@dataclass(frozen=True)
class Lease:
    """Who holds a lease: host, process id and start time, creation time, a random token."""

    host: str
    pid: int
    start: str
    created: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def mine(cls) -> Lease:
        """A new lease held by this process."""
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()) or "", time.time())

    def encode(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "start": self.start, "created": self.created,
                           "token": self.token}).encode()

    @classmethod
    def read(cls, storage: Storage, name: str) -> Lease | None:
        """The lease stored at ``name``, or None if it is absent or unreadable."""
        try:
            d = json.loads(storage.read(name))
            return cls(str(d["host"]), int(d["pid"]), str(d.get("start", "")), float(d["created"]), str(d["token"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def is_stale(self, max_age_s: float) -> bool:
        """The holder is a dead process of this host, or the lease is older than ``max_age_s``."""
        if self.host == socket.gethostname() and not process_alive(self.pid, self.start):
            return True
        return time.time() - self.created > max_age_s

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, taken {time.time() - self.created:.0f}s ago"


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str) -> bool:
    """Whether ``pid`` runs and, where the start time is known, is still the same process."""
    if os.path.exists("/proc/self/stat"):
        now = process_start(pid)
        return now is not None and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
