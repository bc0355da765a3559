"""Reshardable objects (dataloaders) under Megatron: split by the data-parallel rank and size of
``parallel_state``, not the global rank. Ranks of one data-parallel replica (its TP and PP peers)
read the same data, so a TP or PP change keeps every sample exactly once."""

from __future__ import annotations

from bytecheckpoint import MissingKeyError, RankLocal

from ..reshardable import Reshardable


def data_parallel_rank_and_size() -> tuple[int, int]:
    """This rank's data-parallel rank and size from ``parallel_state`` (0, 1 when it is not initialized)."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


def save_dp_layout(obj: Reshardable) -> dict:
    replicated, mine = obj.reshard_state()
    dp_rank, dp_size = data_parallel_rank_and_size()
    return {"replicated": replicated, "per_rank": RankLocal({"dp_rank": dp_rank, "dp_size": dp_size, "state": mine})}


def apply_dp_layout(obj: Reshardable, loaded: dict, key: str) -> None:
    """Give ``obj`` one part per saved data-parallel rank (the first rank's copy of each)."""
    parts = loaded["per_rank"]
    if not isinstance(parts, dict) or not parts:
        raise MissingKeyError(f"{key!r}: no per-rank parts in the checkpoint, found {parts!r:.200}")
    by_dp: dict[int, object] = {}
    sizes = set()
    for _, part in sorted(parts.items()):
        if not isinstance(part, dict) or not {"dp_rank", "dp_size", "state"} <= set(part):
            raise MissingKeyError(f"{key!r}: a per-rank part without its data-parallel rank: {part!r:.200}")
        by_dp.setdefault(part["dp_rank"], part["state"])
        sizes.add(part["dp_size"])
    if len(sizes) != 1 or sorted(by_dp) != list(range(sizes.pop())):
        raise MissingKeyError(f"{key!r}: the saved parts do not cover data-parallel ranks 0..N-1 once: {sorted(by_dp)}")
    dp_rank, dp_size = data_parallel_rank_and_size()
    obj.load_reshard_state(loaded["replicated"], [by_dp[r] for r in range(len(by_dp))], dp_rank, dp_size)
