"""The exception hierarchy of bytecheckpoint: one root, each leaf also a matching builtin."""

from __future__ import annotations


class CheckpointError(Exception):
    """Root of every error raised by bytecheckpoint."""


class MetadataError(CheckpointError, ValueError):
    """The checkpoint's metadata is malformed or inconsistent."""


class UnsupportedVersionError(MetadataError):
    """The checkpoint was written in a format version this library cannot read."""


class IncompleteCheckpointError(CheckpointError, FileNotFoundError):
    """The checkpoint has no committed metadata: it was never finished, or the path is wrong."""


class CorruptCheckpointError(CheckpointError, OSError):
    """Stored bytes do not match what the metadata promises."""


class ChecksumMismatchError(CorruptCheckpointError):
    """A block of a data file hashes to another value than the one recorded at save time."""


class TruncatedDataError(CorruptCheckpointError):
    """A data file is shorter than the byte ranges the metadata points into."""


class MissingDataFileError(TruncatedDataError):
    """A data file the metadata points into does not exist (deleted, or the checkpoint was replaced)."""


class StateMismatchError(CheckpointError):
    """The state passed to load does not match the checkpoint."""


class ShapeMismatchError(StateMismatchError, ValueError):
    """A target tensor's global shape differs from the saved one."""


class DtypeMismatchError(StateMismatchError, TypeError):
    """A target tensor's dtype differs from the saved one."""


class MissingKeyError(StateMismatchError, KeyError):
    """The target state asks for keys that the checkpoint does not have (strict load)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnexpectedKeyError(StateMismatchError, KeyError):
    """The checkpoint has keys that the target state does not ask for (strict load)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedValueError(CheckpointError, TypeError):
    """A value in the state cannot be checkpointed safely (or not without opting in to pickle)."""


class PlanError(CheckpointError, ValueError):
    """Ranks disagree about a tensor, or the saved shards do not tile the global tensor."""


class StorageError(CheckpointError, OSError):
    """A storage backend failed to read, write, list or commit."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """A storage object does not exist (also a FileNotFoundError, as readers expect)."""


class MissingDependencyError(CheckpointError, ImportError):
    """A storage backend needs an optional package that is not installed; the message says what to install."""


class CheckpointExistsError(CheckpointError, FileExistsError):
    """Another save holds (or already committed) this checkpoint step."""


class CheckpointChangedError(CheckpointError):
    """The checkpoint was replaced or deleted by another process while it was being read."""


class CommitConflictError(CheckpointError):
    """Another save holds the commit of this checkpoint path and did not release it in time."""


class DistributedCheckpointError(CheckpointError):
    """One or more ranks failed; raised on every rank, naming the failed ranks and their errors."""

    def __init__(self, phase: str, failures: dict[int, str]) -> None:
        self.phase = phase
        self.failures = dict(sorted(failures.items()))
        ranks = ", ".join(str(r) for r in self.failures)
        details = "\n".join(f"  rank {r}: {msg}" for r, msg in self.failures.items())
        super().__init__(f"{phase} failed on rank(s) {ranks}:\n{details}")


class UnsafeFileError(CorruptCheckpointError):
    """A checkpoint file is not a regular file inside the checkpoint (a symlink, FIFO, device or
    directory); readers never follow or open such files."""


class AllocationError(CheckpointError, MemoryError):
    """Memory for a tensor of the checkpoint could not be allocated; names the tensor and its size."""
