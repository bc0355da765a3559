"""Parallelism-agnostic distributed checkpoints for PyTorch with load-time resharding.

    import bytecheckpoint as bcp
    bcp.save("/ckpt/step_100", {"model": {"w": w}, "step": 100})
    bcp.load("/ckpt/step_100", state)          # any world size, any layout
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import load, load_full, save, verify
from .async_save import AsyncSave
from .errors import (
    AllocationError,
    CheckpointChangedError,
    CheckpointError,
    CheckpointExistsError,
    ChecksumMismatchError,
    CommitConflictError,
    CorruptCheckpointError,
    DistributedCheckpointError,
    DtypeMismatchError,
    IncompleteCheckpointError,
    MetadataError,
    MissingDataFileError,
    MissingDependencyError,
    MissingKeyError,
    PlanError,
    ShapeMismatchError,
    StateMismatchError,
    StorageError,
    TruncatedDataError,
    UnexpectedKeyError,
    UnsafeFileError,
    UnsupportedValueError,
    UnsupportedVersionError,
)
from .events import EventLog, enable_event_log
from .loader import LoadSummary, VerifyReport
from .manager import CheckpointManager
from .saver import SaveSummary
from .shards import FlatShard, RankLocal, ShardedPieces, ShardedTensor
from .telemetry import CheckpointMetrics, enable_metrics, serve_metrics

__all__ = [
    "AllocationError",
    "AsyncSave",
    "CheckpointChangedError",
    "CheckpointError",
    "CheckpointExistsError",
    "CheckpointManager",
    "CheckpointMetrics",
    "ChecksumMismatchError",
    "CommitConflictError",
    "CorruptCheckpointError",
    "DistributedCheckpointError",
    "DtypeMismatchError",
    "EventLog",
    "FlatShard",
    "IncompleteCheckpointError",
    "LoadSummary",
    "MetadataError",
    "MissingDataFileError",
    "MissingDependencyError",
    "MissingKeyError",
    "PlanError",
    "RankLocal",
    "SaveSummary",
    "ShapeMismatchError",
    "ShardedPieces",
    "ShardedTensor",
    "StateMismatchError",
    "StorageError",
    "TruncatedDataError",
    "UnexpectedKeyError",
    "UnsafeFileError",
    "UnsupportedValueError",
    "UnsupportedVersionError",
    "VerifyReport",
    "__version__",
    "enable_event_log",
    "enable_metrics",
    "load",
    "load_full",
    "save",
    "serve_metrics",
    "verify",
]
