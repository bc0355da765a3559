"""The protocol for state that must be redistributed when the data-parallel degree changes
(dataloaders, RNG streams): a replicated part plus one part per rank.

An object implements ``reshard_state() -> (replicated, per_rank)`` (plain JSON-able values) and
``load_reshard_state(replicated, per_rank_states, rank, world)``, where ``per_rank_states`` lists
the per-rank parts of every rank that saved (index = old rank) and ``rank``/``world`` are the
loading rank's. The adapter stores them at ``<key>.replicated`` and ``<key>.per_rank.<rank>`` (a RankLocal).
"""

from __future__ import annotations

import random
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from bytecheckpoint import MissingKeyError, RankLocal, StateMismatchError


@runtime_checkable
class Reshardable(Protocol):
    def reshard_state(self) -> tuple[Any, Any]: ...

    def load_reshard_state(self, replicated: Any, per_rank: list[Any], rank: int, world: int) -> None: ...


class _StatefulParts:
    """Any object with ``state_dict()``/``load_state_dict()`` (e.g. torchdata's StatefulDataLoader)
    as a Reshardable: each rank's state_dict is its part. Such state cannot be redistributed, so a
    load needs the world size that saved it."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def reshard_state(self) -> tuple[Any, Any]:
        return None, self.obj.state_dict()

    def load_reshard_state(self, replicated: Any, per_rank: list[Any], rank: int, world: int) -> None:
        if len(per_rank) != world:
            raise StateMismatchError(
                f"{type(self.obj).__qualname__} was saved by {len(per_rank)} ranks and is loaded by {world}: its "
                "state_dict() cannot be redistributed; implement the Reshardable protocol "
                "(integrations.reshardable) to change the data-parallel degree"
            )
        self.obj.load_state_dict(per_rank[rank])


def as_reshardable(value: Any) -> Reshardable | None:
    """``value`` itself if it is Reshardable, a per-rank wrapper if it only has state_dict()/
    load_state_dict(), else None (a plain value)."""
    if isinstance(value, Reshardable):
        return value
    if callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
        return _StatefulParts(value)
    return None


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save_layout(obj: Reshardable) -> dict:
    replicated, mine = obj.reshard_state()
    return {"replicated": replicated, "per_rank": RankLocal(mine)}


def load_layout() -> dict:
    """Placeholders for the replicated part and every saved rank's part."""
    return {"replicated": None, "per_rank": RankLocal()}


def apply_layout(obj: Reshardable, loaded: dict, key: str) -> None:
    parts = loaded["per_rank"]
    if not isinstance(parts, dict) or not parts or sorted(parts) != list(range(len(parts))):
        raise MissingKeyError(
            f"{key!r}: expected per-rank parts for ranks 0..N-1 in the checkpoint, found {parts!r:.200}"
        )
    per_rank = [parts[r] for r in range(len(parts))]
    rank, world = rank_and_world()
    obj.load_reshard_state(loaded["replicated"], per_rank, rank, world)


def _megatron_rng_tracker() -> Any:
    """Megatron-Core's model-parallel RNG tracker when Megatron is in use here and its tracker was
    created (never imports Megatron), else None."""
    module = sys.modules.get("megatron.core.tensor_parallel.random")
    return getattr(module, "_CUDA_RNG_STATE_TRACKER", None) if module is not None else None


class RNGState:
    """Put ``{"rng": RNGState()}`` in the checkpoint state to save and restore this rank's torch
    (CPU and CUDA), Python and numpy random generators, and Megatron-Core's model-parallel RNG
    tracker streams where Megatron is in use. After a world-size change, rank r takes the streams
    of old rank ``r % old_world``."""

    def reshard_state(self) -> tuple[Any, Any]:
        version, internal, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        mine = {
            "torch": bytes(torch.get_rng_state().numpy().tobytes()),
            "cuda": [bytes(s.numpy().tobytes()) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        }
        tracker = _megatron_rng_tracker()
        if tracker is not None:
            mine["megatron"] = {name: bytes(state.cpu().numpy().tobytes())
                                for name, state in tracker.get_states().items()}
        return None, mine

    def load_reshard_state(self, replicated: Any, per_rank: list[Any], rank: int, world: int) -> None:
        mine = per_rank[rank % len(per_rank)]
        torch.set_rng_state(torch.frombuffer(bytearray(mine["torch"]), dtype=torch.uint8))
        if mine["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in mine["cuda"]])
        version, internal, gauss = mine["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = mine["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        tracker = _megatron_rng_tracker()
        if tracker is not None and mine.get("megatron"):
            tracker.set_states({name: torch.frombuffer(bytearray(state), dtype=torch.uint8)
                                for name, state in mine["megatron"].items()})
