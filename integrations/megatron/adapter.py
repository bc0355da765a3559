"""``framework="megatron"``: Megatron-Core models under ``parallel_state`` (tensor, pipeline and data
parallel), their optimizers (plain or distributed), the LR scheduler, RNG and extra state.

The checkpoint state is ``{"model": module, "optimizer": megatron_optimizer, "scheduler":
OptimizerParamScheduler, "rng": RNGState(), "dataloader": loader, "extra_state": {...}}`` (any
keys; the model may be wrapped in Megatron's DistributedDataParallel). Tensors are saved under
Megatron's global keys as boxes of their global tensors (see layout), so any TP x PP x DP layout
loads any other; replicas are written once. Reshardable objects (dataloaders) are split by the
data-parallel rank and size of ``parallel_state``, not the global rank, so a TP/PP change keeps
exactly-once data; ``RNGState`` follows the global rank.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bytecheckpoint import ShapeMismatchError, ShardedPieces, UnsupportedValueError
from bytecheckpoint.dtypes import torch_dtype
from bytecheckpoint.frameworks import SavedCheckpoint

from ..reshardable import RNGState, apply_layout, as_reshardable, load_layout, save_layout
from . import optimizer_state as optim
from .data_parallel import apply_dp_layout, save_dp_layout
from .layout import TensorLayout, clip_to, group_pieces, module_layouts
from .offline_layout import DESCRIPTION_KEY, describe_model

VOCAB_ATTR = "bcp_vocab_size"
VOCAB_KEY = "_vocab_size"  # beside the model's tensors: the declared unpadded vocabulary, or None


def declare_vocab_size(model: nn.Module, vocab_size: int) -> None:
    """Record the unpadded vocabulary of ``model``; a load may then change the vocabulary padding
    (another TP size) when both sides declare the same size. Without it a padded shape change is refused."""
    setattr(unwrap(model), VOCAB_ATTR, int(vocab_size))


def unwrap(model: nn.Module) -> nn.Module:
    """The Megatron module inside Megatron's (or torch's) DistributedDataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


class MegatronAdapter:
    """The adapter for ``framework="megatron"`` (see the module docstring for the state it takes)."""

    def _model(self, checkpoint_state: dict, key: str) -> nn.Module:
        modules = [v for v in checkpoint_state.values() if isinstance(v, nn.Module)]
        if len(modules) != 1:
            raise UnsupportedValueError(f"{key!r}: a Megatron optimizer needs exactly one model in the checkpoint state")
        return unwrap(modules[0])

    @staticmethod
    def _is_optimizer(value: Any) -> bool:
        from megatron.core.optimizer import MegatronOptimizer

        return isinstance(value, MegatronOptimizer)

    @staticmethod
    def _is_scheduler(value: Any) -> bool:
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        return isinstance(value, OptimizerParamScheduler)

    @staticmethod
    def _param_layouts(model: nn.Module) -> dict[int, TensorLayout]:
        layouts = module_layouts(model)
        return {id(p): layouts[name] for name, p in model.named_parameters() if name in layouts}

    def save_state(self, checkpoint_state: dict) -> dict:
        out: dict[str, Any] = {}
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                out[key] = _model_state(unwrap(value))
            elif self._is_optimizer(value):
                out[key] = optim.optimizer_checkpoint(value, self._param_layouts(self._model(checkpoint_state, key)))
            elif self._is_scheduler(value):
                out[key] = value.state_dict()
            elif isinstance(value, RNGState):
                out[key] = save_layout(value)
            elif (parts := as_reshardable(value)) is not None:
                out[key] = save_dp_layout(parts)
            else:
                out[key] = value
        return out

    def load_targets(self, checkpoint_state: dict, saved: SavedCheckpoint) -> dict:
        targets: dict[str, Any] = {}
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                targets[key] = {**_model_targets(unwrap(value), saved, key), VOCAB_KEY: None}
                if saved.has((key, DESCRIPTION_KEY)):  # absent from megatron_view saves
                    targets[key][DESCRIPTION_KEY] = None
            elif self._is_optimizer(value):
                layouts = self._param_layouts(self._model(checkpoint_state, key))
                targets[key] = optim.optimizer_targets(value, layouts, saved, key)
            elif self._is_scheduler(value):
                targets[key] = None
            elif isinstance(value, RNGState) or as_reshardable(value) is not None:
                targets[key] = load_layout()
            else:
                targets[key] = value
        return targets

    def finish_load(self, checkpoint_state: dict, targets: dict) -> None:
        for key, value in checkpoint_state.items():
            if isinstance(value, nn.Module):
                continue  # filled in place
            if self._is_optimizer(value):
                optim.apply_loaded(value, targets[key], key)
            elif self._is_scheduler(value):
                value.load_state_dict(targets[key])
            elif isinstance(value, RNGState):
                apply_layout(value, targets[key], key)
            elif (parts := as_reshardable(value)) is not None:
                apply_dp_layout(parts, targets[key], key)
            else:
                checkpoint_state[key] = targets[key]


def _local_entries(model: nn.Module, layouts: dict[str, TensorLayout]) -> list[tuple[TensorLayout, list]]:
    state = model.state_dict(keep_vars=True)
    entries = []
    for name, layout in layouts.items():
        tensor = state[name].detach()
        if not tensor.is_contiguous():
            raise UnsupportedValueError(f"{name}: Megatron tensor is not contiguous; it cannot be viewed as boxes")
        entries.append((layout, layout.pieces(tensor.view(-1))))
    return entries


def _model_state(model: nn.Module) -> dict[str, Any]:
    """The model's tensors as boxes of Megatron's global tensors, its declared vocabulary and the
    parallel description offline reshards use (offline_layout)."""
    from megatron.core import parallel_state as ps

    layouts = module_layouts(model)
    entries = _local_entries(model, layouts)
    parallel = {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
                "dp": ps.get_data_parallel_world_size()}
    return {**group_pieces(entries, {layout.key: pieces[0].data.dtype for layout, pieces in entries}),
            VOCAB_KEY: getattr(model, VOCAB_ATTR, None), DESCRIPTION_KEY: describe_model(model, layouts, parallel)}


def _model_targets(model: nn.Module, saved: SavedCheckpoint, key: str) -> dict[str, ShardedPieces]:
    entries = []
    for layout, pieces in _local_entries(model, module_layouts(model)):
        entry = saved.tensor((key, layout.key))
        if entry is not None and layout.vocab_padding_differs(entry.shape):
            _check_vocab(model, saved, key, layout, entry.shape)
            pieces = clip_to(pieces, entry.shape)
        entries.append((layout, pieces))
    dtypes = {layout.key: pieces[0].data.dtype for layout, pieces in entries if pieces}
    targets = group_pieces([(lay, p) for lay, p in entries if p], dtypes)
    for path in saved.paths_under((key,)):
        entry = saved.tensor(path)
        if entry is not None and len(path) == 2 and path[1] not in targets:
            targets[path[1]] = ShardedPieces((), entry.shape, torch_dtype(entry.dtype, f"{key}.{path[1]}"))
    return targets


def _check_vocab(model: nn.Module, saved: SavedCheckpoint, key: str, layout: TensorLayout, saved_shape) -> None:
    mine, theirs = getattr(model, VOCAB_ATTR, None), saved.value((key, VOCAB_KEY))
    if mine is None or theirs is None or mine != theirs:
        raise ShapeMismatchError(
            f"{key}.{layout.key}: the checkpoint's global shape is {tuple(saved_shape)}, the model's "
            f"{layout.global_shape}; a padded vocabulary may change only when saver and loader declare the same "
            f"vocabulary size with integrations.megatron.declare_vocab_size (saved: {theirs}, loading: {mine})"
        )
