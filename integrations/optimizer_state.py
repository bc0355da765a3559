"""Optimizer state keyed by parameter name (FQN), not index, so it reshards with its parameter.

Checkpoint layout: ``{"type": "torch.optim.adam.Adam", "state": {fqn: {name: value}},
"param_groups": [{hyperparameters..., "params": [fqn, ...]}]}``. State tensors shaped like their
parameter are cut like the parameter (see param_views); 0-d tensors (``step``) are replicated.
"""

from __future__ import annotations

from typing import Any

import torch

from bytecheckpoint import StateMismatchError, UnsupportedValueError
from bytecheckpoint.frameworks import SavedCheckpoint

from .param_views import ParamView


class OptimizerMismatchError(StateMismatchError, TypeError):
    """The checkpoint's optimizer is of another type than the one being loaded into."""


def optimizer_type(optim: torch.optim.Optimizer) -> str:
    return f"{type(optim).__module__}.{type(optim).__qualname__}"


def _views_by_param(optim: torch.optim.Optimizer, views: list[ParamView]) -> dict[int, ParamView]:
    by_id = {id(v.param): v for v in views}
    for group in optim.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise UnsupportedValueError(
                    f"optimizer {optimizer_type(optim)} holds a parameter of shape {tuple(p.shape)} that is not "
                    "a parameter of the model in the checkpoint state"
                )
    return by_id


def optimizer_checkpoint(optim: torch.optim.Optimizer, views: list[ParamView]) -> dict:
    """The optimizer's state as a checkpoint state (views into the live state tensors)."""
    by_id = _views_by_param(optim, views)
    state: dict[str, dict[str, Any]] = {}
    for group in optim.param_groups:
        for p in group["params"]:
            if not optim.state.get(p):
                continue  # no state (yet) on this rank, e.g. FSDP1 holds none of this parameter here
            view = by_id[id(p)]
            for fqn, cut in view.parts:
                state[fqn] = {name: _state_value(fqn, name, value, p, cut) for name, value in optim.state.get(p, {}).items()}
    groups = [
        {**{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in g.items() if k != "params"},
         "params": [fqn for p in g["params"] for fqn in by_id[id(p)].fqns]}
        for g in optim.param_groups
    ]
    return {"type": optimizer_type(optim), "state": state, "param_groups": groups}


def _state_value(fqn: str, name: str, value: Any, param: torch.Tensor, cut) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() > 0 and value.shape == param.shape:
        return cut(value)
    if value.dim() == 0:
        return value
    raise UnsupportedValueError(
        f"optimizer state {name!r} of parameter {fqn!r} has shape {tuple(value.shape)}, neither the parameter's "
        f"{tuple(param.shape)} nor a scalar; this optimizer's state cannot be resharded"
    )


def init_optimizer_state(optim: torch.optim.Optimizer) -> None:
    """Create the optimizer's lazily initialised state without changing any parameter: one step
    with zero gradients and a learning rate of 0, then the previous lr and gradients are restored."""
    params = [p for g in optim.param_groups for p in g["params"]]
    if all(optim.state.get(p) for p in params):
        return
    saved_lrs = [g["lr"] for g in optim.param_groups]
    saved_grads = [p.grad for p in params]
    for g in optim.param_groups:
        g["lr"] = torch.zeros_like(g["lr"]) if isinstance(g["lr"], torch.Tensor) else 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optim.step()
    for g, lr in zip(optim.param_groups, saved_lrs):
        g["lr"] = lr
    for p, grad in zip(params, saved_grads):
        p.grad = grad


def load_target(optim: torch.optim.Optimizer, views: list[ParamView], saved: SavedCheckpoint, key: str) -> dict | None:
    """What a load fills for ``optim`` saved under ``key``: views into its (initialised) state, or
    None where the checkpoint holds the optimizer as one plain value, without tensors (saved before
    the first ``optimizer.step()``, or an optimizer whose state has no tensors): it is then loaded
    whole and :func:`apply_loaded` takes the state from it."""
    whole = saved.value((key,))
    if isinstance(whole, dict):
        check_optimizer_type(optim, whole.get("type"), key)
        return None
    check_optimizer_type(optim, saved.value((key, "type")), key)
    init_optimizer_state(optim)
    return {**optimizer_checkpoint(optim, views), "type": None, "param_groups": None}


def check_optimizer_type(optim: torch.optim.Optimizer, saved_type: str | None, key: str) -> None:
    if saved_type is not None and saved_type != optimizer_type(optim):
        raise OptimizerMismatchError(
            f"{key!r}: the checkpoint holds {saved_type} state, but the optimizer being loaded is "
            f"{optimizer_type(optim)}"
        )


def apply_loaded(optim: torch.optim.Optimizer, views: list[ParamView], loaded: dict, key: str) -> None:
    """Put the loaded hyperparameters and non-tensor state into the optimizer (tensors were
    filled in place)."""
    by_id = _views_by_param(optim, views)
    groups, state = loaded.get("param_groups"), loaded.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise StateMismatchError(
            f"{key!r}: the checkpoint holds no optimizer param_groups and state here (found "
            f"{type(groups).__name__} and {type(state).__name__}); was it saved with a framework?"
        )
    if not state:  # saved before the first optimizer.step(): the optimizer starts fresh
        optim.state.clear()
    if len(groups) != len(optim.param_groups):
        raise StateMismatchError(
            f"{key!r}: the checkpoint has {len(groups)} param groups, the optimizer {len(optim.param_groups)}"
        )
    for i, (group, saved) in enumerate(zip(optim.param_groups, groups)):
        mine = [fqn for p in group["params"] for fqn in by_id[id(p)].fqns]
        if sorted(mine) != sorted(saved["params"]):
            missing = sorted(set(saved["params"]) - set(mine))
            extra = sorted(set(mine) - set(saved["params"]))
            raise StateMismatchError(
                f"{key!r} param group {i}: parameters differ (in checkpoint only: {missing[:5]}, "
                f"in optimizer only: {extra[:5]})"
            )
        for name, value in saved.items():
            if name == "params":
                continue
            group[name] = torch.tensor(value) if isinstance(group.get(name), torch.Tensor) else value
        for p in group["params"]:
            saved_state = state.get(by_id[id(p)].fqns[0], {})
            for name, value in saved_state.items():
                if not isinstance(optim.state[p].get(name), torch.Tensor):  # tensors were filled in place
                    optim.state[p][name] = value
