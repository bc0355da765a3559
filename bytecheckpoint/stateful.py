"""``framework=None``: objects following DCP's ``Stateful`` protocol are saved as their state dict.

An object with ``state_dict()`` and ``load_state_dict()`` (an ``nn.Module``, an LR scheduler, a
``StatefulDataLoader``, anything implementing ``torch.distributed.checkpoint.stateful.Stateful``)
anywhere in the nested state dict is saved as ``obj.state_dict()``. A load asks each one for a fresh
``state_dict()``, fills its tensors in place and its plain values into it, then calls
``obj.load_state_dict(filled)``. Dicts without such objects are used as they are, so plain loads
behave exactly as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import UnsupportedValueError
from .limits import MAX_DEPTH
from .metadata import Path, fqn_of

if TYPE_CHECKING:
    from .frameworks import SavedCheckpoint


def is_stateful(value: Any) -> bool:
    """Whether ``value`` follows the Stateful protocol (and is not itself a dict or tensor)."""
    if isinstance(value, (dict, torch.Tensor)):
        return False
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


class StatefulAdapter:
    """The adapter used when no framework is named (see frameworks.FrameworkAdapter)."""

    def save_state(self, checkpoint_state: dict) -> dict:
        return _with_state_dicts(checkpoint_state, ()) if isinstance(checkpoint_state, dict) else checkpoint_state

    def load_targets(self, checkpoint_state: dict, saved: SavedCheckpoint) -> dict:
        return self.save_state(checkpoint_state)

    def finish_load(self, checkpoint_state: dict, targets: dict) -> None:
        _apply(checkpoint_state, targets)


def _with_state_dicts(node: dict, prefix: Path) -> dict:
    """``node`` with every Stateful object replaced by its state dict: the same dict where there is
    none below it, else a shallow copy. Deeper than MAX_DEPTH is left to flatten_state to refuse."""
    if len(prefix) > MAX_DEPTH:
        return node
    out: dict | None = None
    for key, value in node.items():
        if is_stateful(value):
            new = value.state_dict()
            if not isinstance(new, dict):
                raise UnsupportedValueError(
                    f"{fqn_of((*prefix, key))}: {type(value).__qualname__}.state_dict() returned a "
                    f"{type(new).__name__}, not a dict"
                )
        elif isinstance(value, dict):
            new = _with_state_dicts(value, (*prefix, key))
        else:
            continue
        if new is not value:
            out = dict(node) if out is None else out
            out[key] = new
    return node if out is None else out


def _apply(node: dict, targets: dict) -> None:
    """Hand each Stateful object its loaded state dict, and copy what the load put into the dicts
    that ``_with_state_dicts`` had copied back into the caller's."""
    if targets is node:
        return
    for key, value in node.items():
        loaded = targets[key]
        if is_stateful(value):
            value.load_state_dict(loaded)
        elif isinstance(value, dict) and _holds_stateful(value, 1):
            _apply(value, loaded)
        else:
            node[key] = loaded


def _holds_stateful(node: dict, depth: int) -> bool:
    return depth <= MAX_DEPTH and any(
        is_stateful(v) or (isinstance(v, dict) and _holds_stateful(v, depth + 1)) for v in node.values()
    )
