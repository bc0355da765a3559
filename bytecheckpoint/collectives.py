"""One thin wrapper over torch.distributed for the checkpoint protocol.

Works without an initialised process group (a world of one). Every phase of the protocol runs
through :meth:`Communicator.phase`: each rank runs its local step, the outcomes are all-gathered,
and a failure on any rank becomes the same error on every rank, naming the failed ranks. The
collectives run on a gloo group of our own with a timeout, so a dead rank yields an error, not a hang.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from . import errors
from .errors import CheckpointError, DistributedCheckpointError

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0
_groups: dict[tuple[int, float], Any] = {}


class Communicator:
    """Rank, world size and the object collectives the checkpoint protocol needs."""

    def __init__(self, group: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.distributed = dist.is_available() and dist.is_initialized()
        self.timeout_s = timeout_s
        if self.distributed:
            self.group = group if group is not None else checkpoint_group(timeout_s)
            self.rank = dist.get_rank(self.group)
            self.world_size = dist.get_world_size(self.group)
        else:
            self.group = None
            self.rank = 0
            self.world_size = 1

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj: Any, phase: str) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except Exception as exc:  # a rank died or the group timed out
            raise DistributedCheckpointError(
                phase, {r: f"no answer in the collective ({type(exc).__name__}: {exc})" for r in self._peers()}
            ) from exc
        return out

    def phase(self, name: str, step: Callable[[], T]) -> list[T]:
        """Run ``step`` on every rank; return all ranks' results, or raise one error everywhere."""
        try:
            outcome: tuple[bool, Any] = (True, step())
        except Exception as exc:
            if not self.distributed:
                raise
            log.debug("rank %d failed in %s: %s", self.rank, name, traceback.format_exc())
            outcome = (False, (type(exc).__name__, str(exc)))
            local_exc: BaseException | None = exc
        else:
            local_exc = None
        gathered = self.all_gather(outcome, name)
        failures = {r: payload for r, (ok, payload) in enumerate(gathered) if not ok}
        if failures:
            raise _combined_error(name, failures) from local_exc
        return [payload for _, payload in gathered]

    def from_coordinator(self, name: str, step: Callable[[], T]) -> T:
        """Run ``step`` on the coordinator only and hand its result (or its error) to every rank."""
        if not self.distributed:
            return step()
        outcome: list[Any] = [None]
        local_exc: BaseException | None = None
        if self.is_coordinator:
            try:
                outcome[0] = (True, step())
            except Exception as exc:  # noqa: BLE001 - the failure must reach the other ranks
                outcome[0] = (False, (type(exc).__name__, str(exc)))
                local_exc = exc
        try:
            dist.broadcast_object_list(outcome, src=dist.get_global_rank(self.group, 0), group=self.group)
        except Exception as exc:
            raise DistributedCheckpointError(name, {0: f"no answer from the coordinator ({exc})"}) from exc
        ok, payload = outcome[0]
        if not ok:
            raise _combined_error(name, {0: payload}) from local_exc
        return payload

    def _peers(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]


def checkpoint_group(timeout_s: float) -> Any:
    """A gloo group over the default group's ranks, created once per timeout (collectively)."""
    key = (id(dist.distributed_c10d._get_default_group()), float(timeout_s))
    group = _groups.get(key)
    if group is None:
        try:
            group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        except Exception as exc:  # a rank never arrived
            world = dist.get_world_size()
            raise DistributedCheckpointError(
                "checkpoint group setup",
                {r: f"did not join within {timeout_s:.0f}s ({type(exc).__name__}: {exc})"
                 for r in range(world) if r != dist.get_rank()},
            ) from exc
        _groups[key] = group
    return group


def _combined_error(phase: str, failures: dict[int, tuple[str, str]]) -> DistributedCheckpointError:
    """One error for all ranks; if every failed rank raised the same checkpoint error type, the
    combined error is an instance of that type too, so callers can catch it specifically."""
    messages = {r: f"{kind}: {msg}" for r, (kind, msg) in failures.items()}
    kinds = {kind for kind, _ in failures.values()}
    cls = getattr(errors, kinds.pop(), None) if len(kinds) == 1 else None
    if isinstance(cls, type) and issubclass(cls, CheckpointError) and cls is not DistributedCheckpointError:
        combined = type(f"Distributed{cls.__name__}", (DistributedCheckpointError, cls), {})
        return combined(phase, messages)
    return DistributedCheckpointError(phase, messages)
