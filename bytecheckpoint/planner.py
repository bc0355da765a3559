"""Save planning: each rank describes what it holds (local plan); the plans are merged into a
global plan that dedups replicas, checks that shards tile every tensor, and picks one writer per
box, balancing bytes across ranks (largest first, to the least-loaded holder).

The global plan is a pure function of all local plans, so every rank computes the same one from
the all-gathered local plans without another round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .boxes import ShardBox, check_tiling
from .dtypes import dtype_name, itemsize
from .errors import PlanError
from .metadata import Path, fqn_of
from .state import TensorItem, ValueItem
from .values import encode_value

BoxKey = tuple[Path, ShardBox]


@dataclass(frozen=True)
class LocalTensorPlan:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    boxes: tuple[ShardBox, ...]


@dataclass(frozen=True)
class LocalSavePlan:
    """What one rank holds: tensor boxes (no data) and encoded plain values."""

    tensors: tuple[LocalTensorPlan, ...]
    values: tuple[tuple[Path, Any], ...]


@dataclass(frozen=True)
class TensorSpec:
    path: Path
    dtype: str
    shape: tuple[int, ...]


@dataclass
class GlobalSavePlan:
    """The merged plan: every tensor's spec, which rank writes which box, and the plain values."""

    tensors: dict[Path, TensorSpec]
    writes: dict[int, list[BoxKey]]
    values: dict[Path, Any]
    bytes_per_rank: dict[int, int] = field(default_factory=dict)


def local_save_plan(
    tensors: list[TensorItem], values: list[ValueItem], allow_pickle: bool, rank: int = 0
) -> LocalSavePlan:
    """This rank's plan; rank-local values are stored under their path plus ``rank``."""
    return LocalSavePlan(
        tensors=tuple(
            LocalTensorPlan(t.path, dtype_name(t.dtype, t.fqn), t.global_shape, tuple(p.box for p in t.pieces))
            for t in tensors
        ),
        values=tuple(
            ((*v.path, rank) if v.rank_local else v.path, encode_value(v.value, v.fqn, allow_pickle)) for v in values
        ),
    )


def global_save_plan(plans: list[LocalSavePlan]) -> GlobalSavePlan:
    """Merge the ranks' local plans (index = rank). Raises PlanError naming tensor and ranks."""
    specs, writes, load = plan_tensors([p.tensors for p in plans])
    return GlobalSavePlan(specs, writes, merge_values(specs, [p.values for p in plans]), load)


def plan_tensors(
    tensor_plans: list[tuple[LocalTensorPlan, ...]],
) -> tuple[dict[Path, TensorSpec], dict[int, list[BoxKey]], dict[int, int]]:
    """Specs, writes and bytes per rank from every rank's tensor boxes (index = rank): replicas are
    written once, by the least-loaded holder; shards must tile each tensor."""
    specs: dict[Path, TensorSpec] = {}
    spec_rank: dict[Path, int] = {}
    holders: dict[BoxKey, list[int]] = {}
    for rank, tensors in enumerate(tensor_plans):
        for t in tensors:
            spec = TensorSpec(t.path, t.dtype, t.shape)
            known = specs.setdefault(t.path, spec)
            spec_rank.setdefault(t.path, rank)
            if known != spec:
                raise PlanError(
                    f"tensor {fqn_of(t.path)!r}: rank {spec_rank[t.path]} has dtype {known.dtype} shape "
                    f"{list(known.shape)}, rank {rank} has dtype {spec.dtype} shape {list(spec.shape)}"
                )
            for box in t.boxes:
                holders.setdefault((t.path, box), []).append(rank)

    boxes_by_tensor: dict[Path, list[ShardBox]] = {}
    for path, box in holders:
        boxes_by_tensor.setdefault(path, []).append(box)
    for path, spec in specs.items():
        problem = check_tiling(spec.shape, boxes_by_tensor.get(path, []))
        if problem:
            raise PlanError(f"tensor {fqn_of(path)!r} of shape {list(spec.shape)}: {problem}")

    load = {rank: 0 for rank in range(len(tensor_plans))}
    writes: dict[int, list[BoxKey]] = {rank: [] for rank in range(len(tensor_plans))}

    def nbytes(key: BoxKey) -> int:
        return key[1].numel * itemsize(specs[key[0]].dtype)

    # Boxes with a single holder are fixed; replicated ones go largest first to the least loaded.
    order = sorted(holders, key=lambda k: (len(holders[k]) > 1, -nbytes(k), fqn_of(k[0]), k[1].offsets))
    for key in order:
        rank = min(holders[key], key=lambda r: (load[r], r))
        writes[rank].append(key)
        load[rank] += nbytes(key)
    return specs, writes, load


def merge_values(specs: dict[Path, TensorSpec], rank_values: list[tuple[tuple[Path, Any], ...]]) -> dict[Path, Any]:
    """Plain values of all ranks (index = rank; the lowest rank's copy wins), checked against the
    tensors' paths."""
    values: dict[Path, Any] = {}
    for plan_values in rank_values:
        for path, encoded in plan_values:
            if path in specs:
                raise PlanError(f"{fqn_of(path)!r} is a tensor on some ranks and a plain value on others")
            values.setdefault(path, encoded)
    tensor_prefixes = {path[:i] for path in specs for i in range(1, len(path))}
    value_prefixes = {path[:i] for path in values for i in range(1, len(path))}
    for path in values:
        if path in tensor_prefixes:
            raise PlanError(f"{fqn_of(path)!r} is a plain value on some ranks but holds tensors on others")
        if path in value_prefixes:  # e.g. a plain value on one rank, a RankLocal (path + rank) on another
            raise PlanError(f"{fqn_of(path)!r} is a plain value on some ranks but holds other values on others")
    return values


def plan_bytes(plan: GlobalSavePlan) -> int:
    return sum(math.prod(s.shape) * itemsize(s.dtype) for s in plan.tensors.values())
