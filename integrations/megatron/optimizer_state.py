"""Megatron optimizer state in model space: each moment (and fp32 main parameter) is saved as boxes
of its parameter's global tensor, so it reshards with the parameter across TP, PP and DP.

Works for Megatron's plain optimizers (FP32Optimizer, Float16OptimizerWithFloat16Params) and the
distributed optimizer alike: a DistributedOptimizer rank owns a flat range of each local parameter,
which becomes regular boxes (no gather on save, no scatter on load), so a checkpoint saved with one
loads into the other. Layout: ``{"state": {key: {name: ShardedPieces}}, "step": n, "param_groups":
[[{hyperparameter: value}, ...] per sub-optimizer]}``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bytecheckpoint import ShardedPieces, StateMismatchError, UnsupportedValueError
from bytecheckpoint.dtypes import torch_dtype
from bytecheckpoint.frameworks import SavedCheckpoint

from ..optimizer_state import init_optimizer_state
from .layout import TensorLayout, clip_to

MOMENTS = ("exp_avg", "exp_avg_sq")
_PLAIN = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class OwnedParam:
    """The part of a model parameter one inner torch optimizer updates on this rank."""

    model_param: torch.Tensor
    state_key: torch.Tensor  # the tensor the inner optimizer keys its state by
    start: int
    stop: int
    main_param: torch.Tensor | None  # fp32 master copy of a 16-bit parameter, flat over [start, stop)


def sub_optimizers(optimizer: Any) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def _owned(opt: Any) -> Iterator[OwnedParam]:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.optimizer.optimizer import Float16OptimizerWithFloat16Params, FP32Optimizer

    if isinstance(opt, DistributedOptimizer):
        for models, shards in zip(opt.model_fp32_groups, opt.shard_fp32_groups):
            for p, shard in zip(models, shards):
                r = opt._get_model_param_range_map(p)["param"]
                yield OwnedParam(p, shard, r.start, r.end, None)
        for models, mains in zip(opt.model_float16_groups, opt.shard_fp32_from_float16_groups):
            for p, main in zip(models, mains):
                r = opt._get_model_param_range_map(p)["param"]
                yield OwnedParam(p, main, r.start, r.end, main)
    elif isinstance(opt, Float16OptimizerWithFloat16Params):
        for models, mains in zip(opt.float16_groups, opt.fp32_from_float16_groups):
            for p, main in zip(models, mains):
                yield OwnedParam(p, main, 0, p.numel(), main.view(-1))
        for group in opt.fp32_from_fp32_groups:
            for p in group:
                yield OwnedParam(p, p, 0, p.numel(), None)
    elif isinstance(opt, FP32Optimizer):
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                yield OwnedParam(p, p, 0, p.numel(), None)
    else:
        raise UnsupportedValueError(f"Megatron optimizer {type(opt).__qualname__} is not supported")


def _state_tensors(opt: Any, owned: OwnedParam) -> dict[str, torch.Tensor]:
    state = opt.optimizer.state.get(owned.state_key, {})
    out = {name: state[name].view(-1) for name in MOMENTS if name in state}
    extra = sorted(k for k, v in state.items() if k not in (*MOMENTS, "step") and isinstance(v, torch.Tensor))
    if extra:
        raise UnsupportedValueError(f"optimizer state {extra} of {type(opt.optimizer).__qualname__} is not supported")
    if owned.main_param is not None:
        out["main_param"] = owned.main_param.view(-1)
    return out


def _entries(optimizer: Any, layouts: dict[int, TensorLayout]) -> Iterator[tuple[TensorLayout, str, list]]:
    for opt in sub_optimizers(optimizer):
        for owned in _owned(opt):
            layout = layouts.get(id(owned.model_param))
            if layout is None:
                raise UnsupportedValueError(
                    f"the optimizer holds a parameter of shape {tuple(owned.model_param.shape)} that is not in the "
                    "model's sharded_state_dict()"
                )
            for name, flat in _state_tensors(opt, owned).items():
                yield layout, name, layout.pieces(flat, owned.start, owned.stop)


def _steps(optimizer: Any) -> set[float]:
    return {
        float(state["step"]) for opt in sub_optimizers(optimizer)
        for state in opt.optimizer.state.values() if "step" in state
    }


def _groups(optimizer: Any) -> list[list[dict]]:
    return [
        [{k: v for k, v in g.items() if k != "params" and isinstance(v, _PLAIN)} for g in opt.optimizer.param_groups]
        for opt in sub_optimizers(optimizer)
    ]


def optimizer_checkpoint(optimizer: Any, layouts: dict[int, TensorLayout]) -> dict:
    """The optimizer's checkpoint state (views into its live tensors)."""
    grouped: dict[str, dict[str, list]] = {}
    dtypes: dict[tuple[str, str], torch.dtype] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for layout, name, pieces in _entries(optimizer, layouts):
        grouped.setdefault(layout.key, {}).setdefault(name, []).extend(pieces)
        shapes[layout.key] = layout.global_shape
        if pieces:
            dtypes[(layout.key, name)] = pieces[0].data.dtype
    state = {
        key: {name: ShardedPieces(p, shapes[key], dtypes[(key, name)]) for name, p in names.items() if p}
        for key, names in grouped.items()
    }
    steps = _steps(optimizer)
    if len(steps) > 1:
        raise UnsupportedValueError(f"the optimizer's parameters are at different steps {sorted(steps)}")
    return {"state": {k: v for k, v in state.items() if v}, "step": steps.pop() if steps else None,
            "param_groups": _groups(optimizer)}


def optimizer_targets(optimizer: Any, layouts: dict[int, TensorLayout], saved: SavedCheckpoint, key: str) -> dict:
    """What to fill on load: this rank's boxes (clipped to a padded vocabulary's saved shape), and an
    empty placeholder for every saved tensor this rank holds none of."""
    for opt in sub_optimizers(optimizer):
        with warnings.catch_warnings():  # a distributed optimizer's params are views: torch warns on their .grad
            warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf")
            init_optimizer_state(opt.optimizer)
    grouped: dict[str, dict[str, list]] = {}
    for layout, name, pieces in _entries(optimizer, layouts):
        entry = saved.tensor((key, "state", layout.key, name))
        if entry is not None and layout.vocab_padding_differs(entry.shape):
            pieces = clip_to(pieces, entry.shape)
        grouped.setdefault(layout.key, {}).setdefault(name, []).extend(pieces)
    state: dict[str, dict[str, ShardedPieces]] = {}
    for path in saved.paths_under((key, "state")):
        entry = saved.tensor(path)
        if entry is None or len(path) != 4:
            continue
        tensor_key, name = path[2], path[3]
        pieces = grouped.get(tensor_key, {}).get(name, [])
        shape = pieces[0].global_shape if pieces else entry.shape
        state.setdefault(tensor_key, {})[name] = ShardedPieces(pieces, shape, torch_dtype(entry.dtype, ".".join(map(str, path))))
    return {"state": state, "step": None, "param_groups": None}


def apply_loaded(optimizer: Any, loaded: dict, key: str) -> None:
    """Set the step and hyperparameters (the moments were filled in place)."""
    subs = sub_optimizers(optimizer)
    groups = loaded["param_groups"]
    if len(groups) != len(subs) or any(len(g) != len(o.optimizer.param_groups) for g, o in zip(groups, subs)):
        raise StateMismatchError(
            f"{key!r}: the checkpoint has param groups of sizes {[len(g) for g in groups]} per sub-optimizer, the "
            f"optimizer {[len(o.optimizer.param_groups) for o in subs]}"
        )
    for opt, saved_groups in zip(subs, groups):
        for group, saved in zip(opt.optimizer.param_groups, saved_groups):
            group.update(saved)
        if loaded["step"] is not None:
            for state in opt.optimizer.state.values():
                if "step" in state:  # a tensor of its own per parameter (Megatron's load shares one)
                    state["step"] = torch.tensor(float(loaded["step"]), dtype=state["step"].dtype)
