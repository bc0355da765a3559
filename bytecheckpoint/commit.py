"""Committing a save at a path that other saves and readers may use at the same time.

The rules (docs/FORMAT.md, "Concurrent saves and readers"):

- A save writes only under its own ``data/<save_id>/``. Its coordinator puts a lease there
  (``data/<save_id>/.lease``) before any rank writes a byte, and removes it after the commit or
  after removing the save's files when the save fails.
- Commits to one path are serialised by the commit lock ``.commit-lock`` (a lease taken by
  exclusive create). Holding it, a save publishes its metadata, deletes the data files of the
  metadata it replaced, and deletes the data folders that no metadata references and whose lease
  is stale (the save died). A folder with a live lease is never touched: its save is still writing.
- So two saves to one path both commit, one after the other, each whole (the later one wins); the
  previous checkpoint stays loadable until a new metadata replaces it; and a reader that meets a
  data file deleted under it can tell, by re-reading the metadata, that the checkpoint was replaced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import CheckpointError, CommitConflictError
from .leases import Lease, process_alive
from .metadata import METADATA_FILE, CheckpointMetadata
from .storage import Storage
from .storage.base import temp_file_owner

log = logging.getLogger(__name__)

DATA_DIR = "data"
COMMIT_LOCK = ".commit-lock"
SAVE_LEASE = ".lease"
#: a commit lock older than this is broken even if its holder (on another host) cannot be checked
COMMIT_LOCK_STALE_S = 600.0
#: a save lease older than this is stale even if its holder (on another host) cannot be checked
SAVE_LEASE_STALE_S = 24 * 3600.0


def save_folder(save_id: str) -> str:
    return f"{DATA_DIR}/{save_id}"


def save_lease_name(save_id: str) -> str:
    return f"{save_folder(save_id)}/{SAVE_LEASE}"


def begin_save(storage: Storage, save_id: str) -> None:
    """Take the lease of a new save (coordinator, before any rank writes into its folder)."""
    if not storage.create_exclusive(save_lease_name(save_id), Lease.mine().encode()):
        raise CommitConflictError(f"{storage.describe(save_folder(save_id))} already exists: save ids collided")


def abandon_save(storage: Storage, names: list[str], save_id: str | None = None) -> None:
    """Best-effort removal of a failed save's files, then (if ``save_id``) of its lease.

    What cannot be removed is unreferenced garbage; a folder whose lease remains is collected by a
    later commit once the lease is stale.
    """
    for name in [*names, *([save_lease_name(save_id)] if save_id else [])]:
        try:
            storage.delete(name)
        except Exception as exc:  # noqa: BLE001 - the save already failed; don't mask its error
            log.warning("could not remove %s after a failed save: %s", storage.describe(name), exc)


def commit_save(storage: Storage, save_id: str, encoded: bytes, data_files: list[str], timeout_s: float) -> None:
    """Publish ``encoded`` as the checkpoint's metadata, then remove what it made garbage.

    Raises CommitConflictError if another commit holds the lock for longer than ``timeout_s``.
    On failure the save's own files are removed unless the metadata did get published.
    """
    try:
        with commit_lock(storage, timeout_s):
            garbage = _replaced_data(storage, _read_if_present(storage, METADATA_FILE), set(data_files))
            marks = _mark_for_deletion(storage, garbage[0])
            try:
                storage.commit(METADATA_FILE, encoded)
            except BaseException:
                # the data is garbage unless the metadata got published anyway (e.g. only the
                # directory fsync failed): then it is a committed checkpoint's and must stay
                if not _is_committed(storage, encoded):
                    abandon_save(storage, [*data_files, *marks], save_id)  # the old checkpoint stays as it was
                raise
            _cleanup_after_commit(storage, save_id, garbage, set(data_files))
    except CommitConflictError:
        abandon_save(storage, data_files, save_id)
        raise


def _replaced_data(storage: Storage, replaced: bytes | None, keep: set[str]) -> tuple[set[str], list[str]]:
    """The data folders of the replaced checkpoint that the new one does not use, and its other files
    that the new one does not use (in folders it shares). Unreadable old metadata leaves nothing to
    remove (a warning): its data stays for a later ``gc``."""
    if replaced is None:
        return set(), []
    try:
        old = CheckpointMetadata.from_json(replaced, storage.describe(METADATA_FILE))
    except CheckpointError as exc:
        log.warning("cannot read the replaced metadata of %s; its data is left in place: %s", storage.url, exc)
        return set(), []
    kept_folders = {name.split("/")[1] for name in keep if name.count("/") >= 2}
    folders = {name.split("/")[1] for name in old.data_files if name.count("/") >= 2} - kept_folders
    loose = [name for name in old.data_files
             if name not in keep and (name.count("/") < 2 or name.split("/")[1] not in folders)]
    return folders, loose


def _mark_for_deletion(storage: Storage, folders: set[str]) -> list[str]:
    """Put this process's lease in each folder the commit is about to make garbage, so that if it
    dies before deleting them, a later commit finds them stale and collects them (a folder of a
    committed checkpoint has no lease of its own). Returns the leases written."""
    marks: list[str] = []
    try:
        for folder in sorted(folders):
            name = f"{DATA_DIR}/{folder}/{SAVE_LEASE}"
            storage.commit(name, Lease.mine().encode())
            marks.append(name)
    except (CheckpointError, OSError) as exc:
        log.warning("could not mark the replaced data of %s for deletion: %s", storage.url, exc)
    return marks


def _cleanup_after_commit(storage: Storage, save_id: str, garbage: tuple[set[str], list[str]],
                          keep: set[str]) -> None:
    """Drop the lease, the replaced checkpoint's data (``garbage``: its folders and loose files) and
    dead saves' folders (commit lock held)."""
    folders, loose = garbage
    try:
        storage.delete(save_lease_name(save_id))
        for name in loose:
            storage.delete(name)
        for folder in folders:
            delete_save_folder(storage, folder)
        collect_data_garbage(storage, keep)
    except (CheckpointError, OSError) as exc:
        # the new checkpoint is committed; what was not removed is garbage for a later commit
        log.warning("cleanup after committing %s failed: %s", storage.url, exc)


def collect_data_garbage(storage: Storage, keep: set[str], force: bool = False,
                         stale_s: float = SAVE_LEASE_STALE_S) -> list[str]:
    """Delete data folders that hold none of ``keep`` and whose save is dead; return their names.

    A folder whose lease is live is never deleted. One without a lease (left by a rank that died
    after its coordinator cleaned up, or by an older version) is deleted only with ``force``.
    Call it with the commit lock held and ``keep`` = the committed metadata's data files.
    """
    referenced = {name.split("/")[1] for name in keep if name.count("/") >= 2}
    removed = []
    for folder in storage.list_dirs(DATA_DIR):
        if folder in referenced:
            continue
        lease = Lease.read(storage, f"{DATA_DIR}/{folder}/{SAVE_LEASE}")
        if lease is not None and not lease.is_stale(stale_s):
            continue
        if lease is None and not force and not left_by_dead_writers(storage.list(f"{DATA_DIR}/{folder}")):
            continue
        delete_save_folder(storage, folder)
        removed.append(folder)
    if removed:
        log.info("removed the data of %d dead save(s) under %s: %s", len(removed), storage.url, removed)
    return removed


def delete_save_folder(storage: Storage, folder: str) -> None:
    """Delete ``data/<folder>``: its lease last, so a deletion cut short (a killed process) leaves
    the folder stale and collectable, never data without a lease."""
    prefix = f"{DATA_DIR}/{folder}"
    lease = f"{prefix}/{SAVE_LEASE}"
    for name in storage.list(prefix):
        if name != lease:
            storage.delete(name)
    storage.delete_prefix(prefix)


def left_by_dead_writers(names: list[str]) -> bool:
    """``names`` (a folder's files) are only temporary files of a lease or claim whose writers, on
    this host, died before publishing them. An empty folder is not garbage: a save may have just
    made it and be about to write its first file."""
    owners = [temp_file_owner(name) for name in names]
    return bool(names) and all(pid is not None and not process_alive(pid, "") for pid in owners)


@contextmanager
def commit_lock(storage: Storage, timeout_s: float, stale_s: float = COMMIT_LOCK_STALE_S) -> Iterator[None]:
    """Hold ``.commit-lock`` of ``storage``: wait for a live holder (up to ``timeout_s``), break a stale one."""
    mine = Lease.mine()
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    while not storage.create_exclusive(COMMIT_LOCK, mine.encode()):
        holder = Lease.read(storage, COMMIT_LOCK)
        if holder is None and not storage.exists(COMMIT_LOCK):
            continue  # released between our attempt and the read: try again at once
        if holder is None or holder.is_stale(stale_s):
            log.warning("breaking the stale commit lock of %s (%s)", storage.url,
                        holder.describe() if holder else "unreadable")
            again = Lease.read(storage, COMMIT_LOCK)
            if again == holder:  # still the stale one (not a newer holder's)
                storage.delete(COMMIT_LOCK)
            continue
        if time.monotonic() > deadline:
            raise CommitConflictError(
                f"{storage.describe(COMMIT_LOCK)} is held by another save ({holder.describe()}) for longer "
                f"than the timeout ({timeout_s:.0f}s); nothing was committed"
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    try:
        yield
    finally:
        current = Lease.read(storage, COMMIT_LOCK)
        if current is not None and current.token == mine.token:
            storage.delete(COMMIT_LOCK)
        else:
            log.warning("the commit lock of %s was taken from this save while it held it (%s)", storage.url,
                        current.describe() if current else "gone")


def _read_if_present(storage: Storage, name: str) -> bytes | None:
    try:
        return storage.read(name)
    except FileNotFoundError:
        return None


def _is_committed(storage: Storage, encoded: bytes) -> bool:
    """Whether the metadata now stored is ``encoded``; True when that cannot be told (keep data)."""
    try:
        return storage.read(METADATA_FILE) == encoded
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - unknown: err on the side of keeping the files
        return True
