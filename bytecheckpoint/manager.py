"""A run's checkpoints, one per training step, under one root: save, restore latest, retention.

    mgr = bcp.CheckpointManager("s3://bucket/run1", keep_last=3)
    mgr.save(step, state)              # every rank; the coordinator claims the step first
    step = mgr.restore(state)          # every rank; the latest complete checkpoint

Layout (each step directory is an ordinary checkpoint, loadable with ``bcp.load`` alone)::

    <root>/step_00000100/.save-lock      the claim of the save writing this step (removed after commit)
    <root>/step_00000100/metadata.json   present iff the step is complete (see docs/FORMAT.md)
    <root>/step_00000100/data/<save_id>/rank00000.bin

Protocol of ``save``: (1) the coordinator claims the step by creating ``.save-lock`` exclusively
(hard link / If-None-Match); if another live save holds it or the step is already complete, every
rank gets CheckpointExistsError and nothing is written; a claim left by a dead process (same host,
process gone) or older than ``stale_lock_s`` is broken. (2) every rank saves into the step
directory (the commit is the metadata, written last). (3) the coordinator applies retention and
removes abandoned incomplete steps. A failed save removes what it wrote, its claim included.

Deleting a checkpoint removes its metadata first, so a deletion cut short leaves an incomplete
step (garbage), never a complete-looking one with missing data.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from . import api
from .async_save import AsyncSave, wait_for_pending_save
from .collectives import DEFAULT_TIMEOUT_S, Communicator
from .commit import left_by_dead_writers
from .errors import CheckpointChangedError, CheckpointExistsError, IncompleteCheckpointError, StorageError
from .events import OperationEvents
from .leases import Lease
from .loader import LoadSummary
from .metadata import METADATA_FILE
from .saver import SaveSummary
from .storage import Storage, resolve_storage

log = logging.getLogger(__name__)

LOCK_FILE = ".save-lock"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(step: int) -> str:
    """The directory name of ``step`` under the manager's root."""
    if step < 0:
        raise ValueError(f"checkpoint steps are non-negative integers, got {step}")
    return f"step_{step:08d}"


class CheckpointManager:
    """Checkpoints of one training run, keyed by step, with retention.

    Parameters
    ----------
    root
        A path or URL (``/ckpt/run1``, ``s3://bucket/run1``, ``memory://run1``) or a Storage.
    keep_last
        Keep the newest ``keep_last`` complete checkpoints; None keeps all.
    fsync
        Make local files durable before a save returns (local and fsspec-local backends).
    process_group, timeout
        Defaults for every save and restore (the checkpoint collectives' group and timeout).
    stale_lock_s
        A claim older than this is broken even if its owner cannot be checked (another host).
    storage_options
        Backend settings, e.g. ``{"part_size": 64 << 20, "concurrency": 16}`` for S3.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Storage,
        keep_last: int | None = None,
        *,
        fsync: bool = True,
        process_group: Any = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        stale_lock_s: float = 24 * 3600.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.storage = resolve_storage(root, fsync=fsync, **(storage_options or {}))
        self.keep_last = keep_last
        self.process_group = process_group
        self.timeout = timeout
        self.stale_lock_s = stale_lock_s
        self.last_load: LoadSummary | None = None  # what the latest restore read

    @property
    def url(self) -> str:
        return self.storage.url

    def checkpoint(self, step: int) -> Storage:
        """The storage of ``step``'s checkpoint (pass it to ``bcp.load``, ``bcp.verify``, ...)."""
        return self.storage.child(step_dir(step))

    # -- queries --------------------------------------------------------------------------------

    def _step_dirs(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for name in self.storage.list_dirs():
            m = _STEP_DIR.match(name)
            if m:
                found[int(m.group(1))] = name
        return found

    def steps(self) -> list[int]:
        """Steps with a complete (committed) checkpoint, ascending. Completeness is read from each
        step's metadata object, never inferred from the listing."""
        return sorted(s for s, name in self._step_dirs().items() if self.storage.child(name).exists(METADATA_FILE))

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def incomplete_steps(self) -> list[int]:
        """Steps that hold files but no committed metadata (being saved now, or abandoned). An
        empty step folder (local disk) holds nothing and is not listed: a save may have just made it."""
        return sorted(s for s, name in self._step_dirs().items()
                      if not self.storage.child(name).exists(METADATA_FILE) and self.storage.child(name).list())

    # -- save -----------------------------------------------------------------------------------

    def save(self, step: int, state: dict, framework: str | None = None, **options: Any) -> SaveSummary | AsyncSave:
        """Save ``state`` as ``step``; call it on every rank. Raises CheckpointExistsError (on every
        rank) if the step is complete already or another live save holds it.

        With ``async_save=True`` it returns an AsyncSave after the snapshot; retention and garbage
        collection run after the background commit."""
        wait_for_pending_save()
        options.setdefault("process_group", self.process_group)
        options.setdefault("timeout", self.timeout)
        options["step"] = step  # for events and metrics
        comm = Communicator(options["process_group"], options["timeout"])
        target = self.checkpoint(step)
        try:
            comm.from_coordinator("checkpoint claim", lambda: self._claim(step, target))
        except BaseException as exc:  # the save failed before it began: still a failed save
            OperationEvents("save", target.url, comm.rank, step).finish(exc)
            raise

        def finish(error: BaseException | None) -> None:
            if not comm.is_coordinator:
                return
            if error is not None:
                self._abandon(step, target)
                return
            try:
                # committed: the claim has done its job. Removing it now means a step whose metadata
                # is later deleted (retention cut short) has no live-looking claim and is garbage.
                target.delete(LOCK_FILE)
                self.apply_retention()
                self.collect_garbage()
            except Exception as exc:  # noqa: BLE001 - the checkpoint is committed; cleanup can wait
                log.warning("retention after saving step %d under %s failed: %s", step, self.url, exc)

        return api.start_save(target, state, framework, options, on_finish=finish)

    def _claim(self, step: int, target: Storage) -> None:
        claim = Lease.mine()
        if not target.create_exclusive(LOCK_FILE, claim.encode()):
            if target.exists(METADATA_FILE):
                raise CheckpointExistsError(f"step {step} is already saved at {target.url}")
            holder = Lease.read(target, LOCK_FILE)
            if holder is not None and not holder.is_stale(self.stale_lock_s):
                raise CheckpointExistsError(
                    f"step {step} at {target.url} is being saved by another process ({holder.describe()}); "
                    f"its claim {target.describe(LOCK_FILE)} is live"
                )
            log.warning("breaking the stale claim on step %d (%s)", step,
                        holder.describe() if holder else "unreadable claim")
            if holder is None or getattr(Lease.read(target, LOCK_FILE), "token", None) == holder.token:
                target.delete(LOCK_FILE)
            if not target.create_exclusive(LOCK_FILE, claim.encode()):
                raise CheckpointExistsError(f"step {step} at {target.url} was claimed by another save just now")
        if target.exists(METADATA_FILE):  # a checkpoint written there without the manager
            target.delete(LOCK_FILE)
            raise CheckpointExistsError(f"step {step} is already saved at {target.url}")

    def _abandon(self, step: int, target: Storage) -> None:
        """After a failed save: remove its files and claim, unless the metadata got committed."""
        try:
            if target.exists(METADATA_FILE):
                return
            _remove_step_files(target)
        except Exception as exc:  # noqa: BLE001 - keep the save's own error
            log.warning("could not clean up the failed save of step %d under %s: %s", step, self.url, exc)

    # -- retention and garbage ------------------------------------------------------------------

    def delete(self, step: int) -> None:
        """Delete ``step``'s checkpoint: a stale claim first (so a deletion cut short leaves garbage
        that garbage collection removes), then the metadata (it stops being complete), then the rest."""
        target = self.checkpoint(step)
        try:
            target.commit(LOCK_FILE, Lease("deleted", 0, "", 0.0).encode())  # taken at time 0: stale
        except StorageError as exc:  # another process is deleting the step too (its folder went away)
            log.debug("no stale claim for the deletion of step %d under %s: %s", step, self.url, exc)
        target.delete(METADATA_FILE)
        _remove_step_files(target)

    def apply_retention(self, dry_run: bool = False) -> list[int]:
        """Delete complete checkpoints beyond the newest ``keep_last``; return the deleted steps
        (with ``dry_run``, those it would delete, deleting nothing)."""
        if self.keep_last is None:
            return []
        doomed = self.steps()[: -self.keep_last]
        if dry_run:
            return doomed
        for step in doomed:
            self.delete(step)
        if doomed:
            log.info("retention under %s deleted step(s) %s", self.url, doomed)
        return doomed

    def collect_garbage(self, force: bool = False, dry_run: bool = False) -> list[int]:
        """Delete incomplete steps whose save is dead (claim stale); return those steps (with
        ``dry_run``, the steps it would delete, deleting nothing).

        A step being saved by a live process is left alone, and so is a claim from another host
        younger than ``stale_lock_s``, and a step without a claim (a save is creating it, or an older
        version left it). ``force=True`` deletes every incomplete step: call it when a job
        (re)starts on other hosts and knows that no other save of this run is in progress.
        """
        removed = []
        for step in self.incomplete_steps():
            target = self.checkpoint(step)
            claim = Lease.read(target, LOCK_FILE)
            if claim is not None and not claim.is_stale(self.stale_lock_s) and not force:
                continue
            # no claim: a save is creating it right now (or an older version left the step); only
            # ``force`` removes such a step, or one that holds nothing but a dead process's temp files
            if claim is None and not force and not left_by_dead_writers(target.list()):
                continue
            if target.exists(METADATA_FILE):  # committed meanwhile
                continue
            if not dry_run:
                _remove_step_files(target)
            removed.append(step)
        if removed and not dry_run:
            log.info("removed abandoned incomplete step(s) %s under %s", removed, self.url)
        return removed

    # -- restore --------------------------------------------------------------------------------

    def restore(self, state: dict, step: int | None = None, framework: str | None = None, strict: bool = True,
                **options: Any) -> int:
        """Fill ``state`` from ``step`` (default: the latest complete step); call it on every rank.
        Returns the step loaded. Raises IncompleteCheckpointError if there is none.

        If the chosen latest step is pruned while it is read (a save under the same root applied
        retention), the then-latest step is loaded instead, once."""
        wait_for_pending_save()
        options.setdefault("process_group", self.process_group)
        options.setdefault("timeout", self.timeout)
        comm = Communicator(options["process_group"], options["timeout"])

        def choose() -> int:
            chosen = self.latest_step() if step is None else step
            if chosen is None:
                raise IncompleteCheckpointError(f"{self.url}: no complete checkpoint to restore")
            return chosen

        for attempt in range(2):
            chosen = comm.from_coordinator("checkpoint choice", choose)
            try:
                self.last_load = api.load(self.checkpoint(chosen), state, framework=framework, strict=strict,
                                          **{**options, "step": chosen})
                return chosen
            except (CheckpointChangedError, IncompleteCheckpointError) as exc:
                if step is not None or attempt == 1:
                    raise
                log.warning("step %d under %s changed while it was read (%s); restoring the latest again",
                            chosen, self.url, exc)
        raise AssertionError("unreachable")


def _remove_step_files(target: Storage) -> None:
    """Delete a step's files, its claim last: an interrupted removal still has the claim that
    marks the rest as garbage."""
    for name in target.list():
        if name != LOCK_FILE:
            target.delete(name)
    target.delete(LOCK_FILE)
    target.delete_prefix("")  # what is left: empty folders on local disk
